"""The alert rules against the services as processes: every metric that a rule of
deploy/prometheus/rules.yml names is exported by the running services (by the service of the
scrape job when the rule selects one), with the labels the rule groups by and its annotations
name. The expressions are parsed with promql-parser (the PromQL grammar, not a regular
expression); the exported names are the sample names of the Prometheus text format, so a
counter is `<name>_total` and a histogram `<name>_bucket`, `_sum`, `_count`, as a rule must name
them."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import promql_parser as pp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from shared.kafka.topics import Topics
from shared.settings import KafkaSettings
from tests.conftest import unique
from tests.e2e.harness import ROOT, ServiceProcess, command_service_env, http_client
from tests.kafka_helpers import produce, wait_until
from tests.unit.test_alert_rules import JOBS

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
#: what Prometheus makes itself, not the services: the target labels and the scrape's series
PROMETHEUS_LABELS = frozenset({"job", "instance"})
PROMETHEUS_METRICS = frozenset({"up"})

Samples = dict[str, list[Sample]]  # sample name -> its samples (labels, value)


@dataclass(frozen=True)
class Need:
    """A metric a rule selects: from which job's service (None: any), with which labels."""

    rule: str
    metric: str
    job: str | None
    labels: frozenset[str]


def selectors(
    node: Any, grouping: frozenset[str] | None = None, matched: frozenset[str] = frozenset()
) -> Iterator[tuple[Any, frozenset[str] | None, frozenset[str]]]:
    """Every vector selector of a PromQL expression, with the labels that the aggregations
    around it group by (None: no aggregation around it) and the labels that the binary
    operations around it match `on`."""
    if isinstance(node, pp.VectorSelector):
        yield node, grouping, matched
    elif isinstance(node, pp.MatrixSelector):
        yield from selectors(node.vector_selector, grouping, matched)
    elif isinstance(node, pp.AggregateExpr):
        by = frozenset()
        if node.modifier is not None and node.modifier.type == pp.AggModifierType.By:
            by = frozenset(node.modifier.labels)
        yield from selectors(node.expr, (grouping or frozenset()) | by, matched)
        if node.param is not None:
            yield from selectors(node.param, grouping, matched)
    elif isinstance(node, pp.BinaryExpr):
        matching = node.modifier.matching if node.modifier is not None else None
        if matching is not None and matching.type == pp.LabelModifierType.Include:
            matched = matched | frozenset(matching.labels)
        for side in (node.lhs, node.rhs):
            yield from selectors(side, grouping, matched)
    elif isinstance(node, pp.ParenExpr | pp.UnaryExpr | pp.SubqueryExpr):
        yield from selectors(node.expr, grouping, matched)
    elif isinstance(node, pp.Call):
        for arg in node.args:
            yield from selectors(arg, grouping, matched)
    elif not isinstance(node, pp.NumberLiteral | pp.StringLiteral):
        raise TypeError(f"a PromQL node this test does not know: {type(node).__name__} {node}")


def needs_of(rules: Mapping[str, Any]) -> tuple[list[Need], list[str]]:
    """What each alerting rule needs of the services, and what is wrong in the rules alone (an
    annotation naming a label that the expression's result does not have)."""
    needs: list[Need] = []
    problems: list[str] = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            annotations = " ".join(str(v) for v in (rule.get("annotations") or {}).values())
            named = set(re.findall(r"\$labels\.([A-Za-z_][A-Za-z0-9_]*)", annotations))
            named -= PROMETHEUS_LABELS
            found = list(selectors(pp.parse(rule["expr"])))
            grouped = frozenset().union(*(g for _, g, _ in found if g is not None))
            aggregated = any(g is not None for _, g, _ in found)
            if aggregated and not named <= grouped:
                problems.append(
                    f"{name}: the annotations name {sorted(named - grouped)}, which the "
                    f"aggregation drops (it keeps {sorted(grouped)})"
                )
            for selector, grouping, matched in found:
                matchers = selector.matchers.matchers
                metric = selector.name or next(
                    (m.value for m in matchers if m.name == "__name__"), None
                )
                if metric is None or any(
                    m.name == "__name__" and m.op != pp.MatchOp.Equal for m in matchers
                ):
                    problems.append(f"{name}: a selector without one metric name: {selector}")
                    continue
                jobs = [m.value for m in matchers if m.name == "job" and m.op == pp.MatchOp.Equal]
                labels = frozenset(m.name for m in matchers) - {"__name__"}
                labels |= matched | (grouping if grouping is not None else frozenset(named))
                needs.append(
                    Need(name, metric, jobs[0] if jobs else None, labels - PROMETHEUS_LABELS)
                )
    return needs, problems


def missing(needs: list[Need], exported: Mapping[str, Samples]) -> list[str]:
    """Each need that the services' exports (job -> samples) do not meet, said plainly."""
    problems = []
    for need in needs:
        if need.metric in PROMETHEUS_METRICS:
            if need.job is not None and need.job not in JOBS:
                problems.append(f"{need.rule}: {need.metric} of an unknown job {need.job}")
            continue
        if need.job is not None and need.job not in JOBS:
            problems.append(f"{need.rule}: {need.metric}: no scrape job {need.job!r}")
            continue
        jobs = [need.job] if need.job is not None else list(exported)
        samples = [s for job in jobs for s in exported[job].get(need.metric, [])]
        where = need.job or "any service"
        if not samples:
            problems.append(f"{need.rule}: {need.metric} is not exported by {where}")
            continue
        lacking = {label for s in samples for label in need.labels if label not in s.labels}
        if lacking:
            problems.append(
                f"{need.rule}: {need.metric} of {where} lacks the labels {sorted(lacking)} "
                f"(it has {sorted({k for s in samples for k in s.labels})})"
            )
    return problems


def parse_exposition(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


async def test_every_metric_a_rule_names_is_exported_by_the_running_services(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Scrape /metrics of the four services (as Prometheus would, with a token that may read
    it) once they report their lag, and check each rule's metrics and labels against it; a
    command record that cannot be read shows up in esctl_dead_letters_total. Then the same
    check on rules with a wrong name, label or histogram series must fail."""
    prefix = unique("alerts") + "."
    topics = Topics.from_settings(KafkaSettings(topic_prefix=prefix))
    common = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "TOPIC_PREFIX": prefix,
        "PARTITIONS": "2",
        "SESSION_TIMEOUT_MS": "6000",
        "LAG_REPORT_INTERVAL_S": "1",
        "READ_STORE_URL": f"sqlite:///{tmp_path / 'read.sqlite3'}",
    }
    services = {
        "command-service": ServiceProcess(
            "command_service",
            command_service_env(kafka_bootstrap, prefix, 2, LAG_REPORT_INTERVAL_S="1"),
            tmp_path,
            "command",
        ),
        "query-service": ServiceProcess(
            "query_service", common | {"GROUP_ID": f"{prefix}query"}, tmp_path, "query"
        ),
        "projector": ServiceProcess(
            "projector_service", common | {"GROUP_ID": f"{prefix}projector"}, tmp_path, "projector"
        ),
        "workflow-service": ServiceProcess(
            "workflow_service",
            common
            | {
                "GROUP_ID": f"{prefix}workflow-service",
                "WORKFLOW_STORE_URL": f"sqlite:///{tmp_path / 'workflows.sqlite3'}",
            },
            tmp_path,
            "workflow",
        ),
    }
    assert {JOBS[job][0] for job in services} == {s.module for s in services.values()}
    dlq = topics.commands_dlq
    exported: dict[str, Samples] = {}
    try:
        for service in services.values():
            service.start()
        for service in services.values():
            await service.wait_healthy(timeout_s=120)
        # a record no client could have meant as a command: dead-lettered by the command service
        await produce(kafka_bootstrap, topics.commands, [(b"k", b"not a command")], partition=0)

        async with http_client(timeout=10) as http:

            async def scrape() -> dict[str, Samples]:
                out = {}
                for job, service in services.items():
                    r = await http.get(f"{service.url}/metrics")
                    assert r.status_code == 200, (job, r.status_code, r.text)
                    out[job] = parse_exposition(r.text)
                return out

            def value(job: str, metric: str, **labels: str) -> float | None:
                """The value of the sample of `metric` with (at least) `labels`, if any."""
                return next(
                    (
                        s.value
                        for s in exported.get(job, {}).get(metric, [])
                        if labels.items() <= s.labels.items()
                    ),
                    None,
                )

            async def ready() -> bool:
                exported.update(await scrape())
                return (
                    all(
                        value(job, "esctl_consumer_lag_seconds", group=f"{prefix}{job}") is not None
                        for job in ("command-service", "projector", "workflow-service")
                    )
                    and value("command-service", "esctl_partition_restoring", partition="1") == 0
                    and value("command-service", "esctl_dead_letters_total", topic=dlq) == 1
                )

            await wait_until(
                ready,
                timeout_s=120,
                what="the lag of the three consumer groups reported, both partitions restored, "
                "the unreadable command record counted as a dead letter",
            )
    finally:
        for service in services.values():
            await service.stop()

    needs, problems = needs_of(yaml.safe_load(RULES.read_text()))
    assert {n.rule for n in needs} >= {
        "ConsumerLagHigh",
        "DeadLettersGrowing",
        "WorkflowStuck",
        "ProjectorNotApplying",
        "CommandPartitionRestoringTooLong",
        "ServiceDown",
        "ServiceTargetMissing",
    }
    problems += missing(needs, exported)
    assert problems == [], "\n".join(problems)
    # the other dead-letter topics are exported at 0 before their first dead letter
    for job, topic in (("workflow-service", topics.workflow_dlq), ("projector", topics.events_dlq)):
        letters = exported[job]["esctl_dead_letters_total"]
        assert [(s.labels, s.value) for s in letters] == [({"topic": topic}, 0.0)]

    # The check fails on what a rule could get wrong: a name nobody exports, a counter without
    # its _total, a histogram by its bare name, a label the series lack.
    wrong = RULES.read_text()
    for before, after, said in (
        ("(esctl_consumer_lag_seconds)", "(esctl_consumer_lag_second)", "is not exported"),
        ("esctl_dead_letters_total[", "esctl_dead_letters[", "is not exported"),
        ("esctl_workflows_stuck > 0", "esctl_projector_batch_seconds > 0", "is not exported"),
        ("sum by (topic)", "sum by (dlq_topic)", "lacks the labels ['dlq_topic']"),
    ):
        assert before in wrong, before
        broken_needs, _ = needs_of(yaml.safe_load(wrong.replace(before, after, 1)))
        found = missing(broken_needs, exported)
        assert any(said in p for p in found), (after, found)
