"""The alert rules' shape (deploy/prometheus/rules.yml), and that rules.test.yml tests each rule
both ways. `promtool test rules` (make test-contracts) runs the cases; this says that none is
missing: a rule added without a firing and a not-firing case fails here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
SEVERITIES = {"critical", "warning"}
CONFIGS = [HERE / "prometheus.yml", HERE / "prometheus-compose.yml"]
#: scrape job (the rules name them) -> (the service's module, its default port)
JOBS = {
    "command-service": ("command_service", 8001),
    "query-service": ("query_service", 8002),
    "projector": ("projector_service", 8003),
    "workflow-service": ("workflow_service", 8004),
}


def alerting_rules() -> list[dict[str, Any]]:
    rules = yaml.safe_load((HERE / "rules.yml").read_text())
    return [r for g in rules["groups"] for r in g["rules"] if "alert" in r]


def test_every_rule_waits_has_a_severity_and_says_what_happened_and_what_to_do() -> None:
    rules = alerting_rules()
    assert len(rules) >= 7
    for rule in rules:
        name = rule["alert"]
        assert rule.get("for"), f"{name}: no for:"
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook"}, name
        assert all(len(str(text).split()) >= 5 for text in annotations.values()), name


def test_every_rule_has_a_firing_and_a_not_firing_case() -> None:
    tests = yaml.safe_load((HERE / "rules.test.yml").read_text())
    assert tests["rule_files"] == ["rules.yml"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alerting_rules()}
    assert names - firing == set(), "rules without a case where they fire"
    assert names - quiet == set(), "rules without a case where they must not fire"
    assert (firing | quiet) - names == set(), "cases of rules that do not exist"


def test_the_scrape_configurations_have_one_job_per_service_on_its_port() -> None:
    """The rules name these jobs: both configurations scrape each service under that name,
    prometheus.yml on the service's default port."""
    for path in CONFIGS:
        config = yaml.safe_load(path.read_text())
        assert config["rule_files"] == ["rules.yml"], path.name
        jobs = {c["job_name"]: c for c in config["scrape_configs"]}
        assert set(jobs) == set(JOBS), path.name
        for job, scrape in jobs.items():
            assert scrape["authorization"]["credentials_file"] == "operator.token", (path, job)
            port = JOBS[job][1]
            if "static_configs" in scrape:
                assert scrape["static_configs"] == [{"targets": [f"127.0.0.1:{port}"]}]
            else:
                assert scrape["dns_sd_configs"] == [{"names": [job], "type": "A", "port": port}]
