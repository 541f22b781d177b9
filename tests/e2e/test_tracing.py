"""One trace across the four services as real processes: an HTTP command, its produce, its
decision, its events, their projection, the query that waits for the consistency token, the
review workflow it starts and the command that workflow emits. Each service writes its spans
to its own file (ESCTL_TRACE_FILE); the test reads them after the services stopped (flushed)."""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from shared.kafka.topics import Topics
from shared.messages import encode_command
from shared.messages.blog import CreatePost
from shared.settings import KafkaSettings
from tests.conftest import unique
from tests.e2e.harness import ServiceProcess, command_service_env, http_client
from tests.kafka_helpers import produce, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

PARTITIONS = 3
SERVICES = ("command", "projector", "query", "workflow")


def spans_of(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class TracedStack:
    """The four services on one prefix, each tracing into `<tmp>/<name>.spans.jsonl`."""

    def __init__(self, bootstrap: str, tmp: Path) -> None:
        self.bootstrap = bootstrap
        self.tmp = tmp
        self.prefix = unique("trace") + "."
        self.topics = Topics.from_settings(KafkaSettings(topic_prefix=self.prefix))
        store_url = f"sqlite:///{tmp / 'read.sqlite3'}"

        def env(name: str, **extra: str) -> dict[str, str]:
            return {
                "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "TOPIC_PREFIX": self.prefix,
                "PARTITIONS": str(PARTITIONS),
                "SESSION_TIMEOUT_MS": "6000",
                "ESCTL_TRACE_FILE": str(self.spans_path(name)),
                "OTEL_BSP_SCHEDULE_DELAY": "100",
                **extra,
            }

        self.services = {
            "command": ServiceProcess(
                "command_service",
                command_service_env(
                    bootstrap,
                    self.prefix,
                    PARTITIONS,
                    ESCTL_TRACE_FILE=str(self.spans_path("command")),
                    OTEL_BSP_SCHEDULE_DELAY="100",
                ),
                tmp,
                "command",
            ),
            "projector": ServiceProcess(
                "projector_service",
                env("projector", GROUP_ID=f"{self.prefix}projector", READ_STORE_URL=store_url),
                tmp,
                "projector",
            ),
            "query": ServiceProcess(
                "query_service",
                env("query", GROUP_ID=f"{self.prefix}projector", READ_STORE_URL=store_url),
                tmp,
                "query",
            ),
            "workflow": ServiceProcess(
                "workflow_service",
                env(
                    "workflow",
                    GROUP_ID=f"{self.prefix}workflow-service",
                    WORKFLOW_STORE_URL=f"sqlite:///{tmp / 'workflows.sqlite3'}",
                    REVIEWERS="ann",
                    REVIEW_REMINDER_AFTER_S="1",  # a step fired by a timer, soon
                    REVIEW_DEADLINE_AFTER_S="3600",
                ),
                tmp,
                "workflow",
            ),
        }

    def spans_path(self, name: str) -> Path:
        return self.tmp / f"{name}.spans.jsonl"

    def spans(self, name: str) -> list[dict[str, Any]]:
        return spans_of(self.spans_path(name))

    def url(self, name: str) -> str:
        return self.services[name].url

    async def start(self) -> None:
        self.services["command"].start()
        await self.services["command"].wait_healthy()
        for name in ("projector", "query", "workflow"):
            self.services[name].start()
        for name in ("projector", "query", "workflow"):
            await self.services[name].wait_healthy()

    async def stop(self) -> None:
        for svc in self.services.values():
            await svc.stop()


@pytest.fixture
async def stack(kafka_bootstrap: str, tmp_path: Path) -> AsyncIterator[TracedStack]:
    traced = TracedStack(kafka_bootstrap, tmp_path)
    try:
        await traced.start()
        yield traced
    finally:
        await traced.stop()


def one(spans: list[dict[str, Any]], what: str, **where: Any) -> dict[str, Any]:
    """The one span matching `where` (name, trace_id, parent_span_id...)."""
    found = [s for s in spans if all(s.get(k) == v for k, v in where.items())]
    assert len(found) == 1, f"{what}: {len(found)} spans match {where} among {len(spans)}"
    return found[0]


async def test_one_http_command_makes_one_trace_across_the_four_services(
    stack: TracedStack,
) -> None:
    trace_id = secrets.token_hex(16)
    client_span = secrets.token_hex(8)
    traceparent = {"traceparent": f"00-{trace_id}-{client_span}-01"}
    post = f"traced-{uuid.uuid4().hex[:8]}"
    async with http_client(timeout=30) as http:
        r = await http.post(
            f"{stack.url('command')}/authors",
            json={"author_id": "ed", "name": "Ed Itor", "email": "ed@example.org"},
        )
        assert r.status_code == 201, r.text
        r = await http.post(
            f"{stack.url('command')}/posts",
            json={"post_id": post, "author_id": "ed", "title": "Traced"},
        )
        assert r.status_code == 201, r.text
        # the command under watch, in the client's trace
        submitted = await http.post(
            f"{stack.url('command')}/posts/{post}/submit", headers=traceparent
        )
        assert submitted.status_code == 200, submitted.text
        token = submitted.headers["x-consistency-token"]
        assert submitted.headers["traceresponse"].split("-")[1] == trace_id
        read = await http.get(
            f"{stack.url('query')}/posts/{post}",
            headers={"X-Consistency-Token": token, **traceparent},
        )
        assert read.status_code == 200, read.text
        assert read.json()["status"] == "in_review"

    # a command produced by a plain Kafka client, no headers at all (as kcat would)
    bare_id = uuid.uuid4()
    bare = encode_command(
        CreatePost(author_id="ed", title="Bare"), command_id=bare_id, aggregate_id="bare-post"
    )
    await produce(stack.bootstrap, stack.topics.commands, [(bare.key, bare.value)])

    async def all_there() -> bool:
        """Every span the assertions look at was written, in whatever trace (a broken link
        then fails an assertion below that names it, not this wait)."""
        command_names = {s["name"] for s in stack.spans("command")}
        return {
            "decide AssignReviewer",
            "decide SendReviewReminder",
            "decide CreatePost",
        } <= command_names and "apply PostSubmittedForReview" in {
            s["name"] for s in stack.spans("projector")
        }

    await wait_until(all_there, timeout_s=60, what="the spans of the workflow's command")
    await stack.stop()  # flushes every service's spans

    spans = {name: stack.spans(name) for name in SERVICES}
    traced = {name: [s for s in spans[name] if s["trace_id"] == trace_id] for name in SERVICES}
    assert all(traced[name] for name in SERVICES), (
        f"spans per service in the client's trace {trace_id}: "
        f"{ {n: len(t) for n, t in traced.items()} }"
    )

    # command service: HTTP span (child of the client's) -> send -> decide (via the headers)
    commands_topic = stack.topics.commands
    http_span = one(
        traced["command"],
        "HTTP span of the submit",
        name="POST /posts/{post_id}/submit",
        parent_span_id=client_span,
    )
    assert http_span["kind"] == "SERVER"
    assert http_span["attributes"]["http.response.status_code"] == 200
    # one span per request (FastAPI's own request spans are off), none for probes
    assert [s["name"] for s in spans["command"] if s["parent_span_id"] == client_span] == [
        "POST /posts/{post_id}/submit"
    ]
    assert not [s for name in SERVICES for s in spans[name] if "/health" in s["name"]]
    send = one(
        traced["command"],
        "producer span",
        name=f"send {commands_topic}",
        parent_span_id=http_span["span_id"],
    )
    assert send["kind"] == "PRODUCER"
    assert send["attributes"]["messaging.destination.name"] == commands_topic
    decide = one(traced["command"], "decision", name="decide SubmitPostForReview")
    assert decide["parent_span_id"] == send["span_id"]
    # its batch span: another trace, linked to the producer span
    batches = [
        s
        for s in spans["command"]
        if s["name"] == f"process {commands_topic}"
        and any(link["span_id"] == send["span_id"] for link in s["links"])
    ]
    assert len(batches) == 1, "no batch span of the command service links the producer span"
    assert batches[0]["attributes"]["messaging.batch.message_count"] >= 1
    assert batches[0]["trace_id"] != trace_id
    assert [link["span_id"] for link in decide["links"]] == [batches[0]["span_id"]]

    # projector: the event's apply span is a child of the decision (the event's context)
    applied = one(traced["projector"], "apply", name="apply PostSubmittedForReview")
    assert applied["parent_span_id"] == decide["span_id"]
    assert any(
        link["span_id"] == decide["span_id"]
        for s in spans["projector"]
        if s["name"] == f"process {stack.topics.events}"
        for link in s["links"]
    )

    # query service: the GET in the client's trace, its wait for the token under it
    get = one(traced["query"], "HTTP GET", name="GET /posts/{post_id}")
    assert get["parent_span_id"] == client_span
    waited = one(traced["query"], "consistency wait", name="wait for consistency")
    assert waited["parent_span_id"] == get["span_id"]
    assert waited["attributes"]["esctl.consistency.token"] == token
    assert waited["attributes"]["esctl.consistency.waited_ms"] >= 0

    # workflow service: the event's processing and the review's first step, then the
    # command it emitted decided by the command service in the same trace
    consumed = one(traced["workflow"], "workflow event", name="workflow PostSubmittedForReview")
    assert consumed["parent_span_id"] == decide["span_id"]
    step = one(
        traced["workflow"],
        "workflow step",
        name="workflow step review",
        parent_span_id=consumed["span_id"],
    )
    assert step["attributes"]["esctl.workflow.commands"] == 1
    assigned = one(traced["command"], "emitted command's decision", name="decide AssignReviewer")
    assert assigned["parent_span_id"] == step["span_id"]

    # log lines carry the trace: the workflow's line about the command it emitted
    lines = [
        json.loads(line)
        for line in stack.services["workflow"].log_path.read_text().splitlines()
        if line.startswith("{")
    ]
    emitted = [x for x in lines if x.get("event") == "workflow_command"]
    assert any(
        x.get("trace_id") == trace_id and x.get("span_id") == step["span_id"] for x in emitted
    ), emitted

    # the bare command: a new trace, its decision a root span
    [bare_decision] = [
        s
        for s in spans["command"]
        if s["name"] == "decide CreatePost"
        and s["attributes"].get("messaging.kafka.message.key") == "bare-post"
    ]
    assert bare_decision["parent_span_id"] is None
    assert bare_decision["trace_id"] != trace_id
    others = [s for s in spans["command"] if s["trace_id"] == bare_decision["trace_id"]]
    assert [s["span_id"] for s in others if s["parent_span_id"] is None] == [
        bare_decision["span_id"]
    ]

    # a step fired by a timer: a trace of its own, its command's decision in it
    [reminder] = [s for s in spans["command"] if s["name"] == "decide SendReviewReminder"]
    timer_step = one(spans["workflow"], "timer step", span_id=reminder["parent_span_id"])
    assert timer_step["name"] == "workflow step review"
    assert timer_step["parent_span_id"] is None and timer_step["trace_id"] != trace_id
