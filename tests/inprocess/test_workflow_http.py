"""The workflow service's HTTP edge in process: every route on `build_app` with the in-memory
workflow view (its changelog written as records) and the in-memory control channel."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI

from shared.asyncapi import asyncapi_document
from shared.http import PROBLEM_JSON
from shared.kafka.records import InboundRecord
from shared.settings import WorkflowSettings
from tests.inprocess.conftest import HTTPClient, healthy
from tests.inprocess.test_shared_http import call_chunked
from workflow_service.api import InMemoryWorkflowView
from workflow_service.bootstrap import WorkflowAdapters, build_app
from workflow_service.control import InMemoryControlChannel
from workflow_service.model import HistoryEntry, Timer, WorkflowState

route = pytest.mark.route
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LIMIT = 2048
ACTIONS = ("retry", "skip", "compensate")


def state(workflow_id: str, post_id: str, minutes_ago: int, **extra: Any) -> WorkflowState:
    at = NOW - timedelta(minutes=minutes_ago)
    fields: dict[str, Any] = {"kind": "publication", "step": "webhook"} | extra
    return WorkflowState(
        workflow_id=workflow_id, post_id=post_id, started_at=at, updated_at=at, **fields
    )


def records(*states: WorkflowState) -> list[InboundRecord]:
    return [
        InboundRecord("workflows.state", 0, i, s.workflow_id.encode(), s.model_dump_json().encode())
        for i, s in enumerate(states)
    ]


@pytest.fixture
def view() -> InMemoryWorkflowView:
    """`pub-1` stuck (no progress for an hour, a failure), `rev-1` a review with a reminder to
    come, `pub-2` published (terminal)."""
    view = InMemoryWorkflowView()
    view.append(
        records(
            state(
                "pub-1",
                "p1",
                60,
                history=[HistoryEntry(at=NOW, what="activity_failed", detail={"e": "500"})],
                error="webhook answered 500",
            ),
            state(
                "rev-1",
                "p2",
                30,
                kind="review",
                step="in_review",
                timers=[Timer(id="t", due_at=NOW + timedelta(hours=1), kind="reminder")],
            ),
            state("pub-2", "p3", 5, status="published"),
        )
    )
    return view


@pytest.fixture
def control() -> InMemoryControlChannel:
    return InMemoryControlChannel()


@pytest.fixture
def app(view: InMemoryWorkflowView, control: InMemoryControlChannel) -> FastAPI:
    settings = WorkflowSettings(stuck_after_s=600, http_body_limit_bytes=LIMIT)
    adapters = WorkflowAdapters(view=view, control=control, health=healthy, clock=lambda: NOW)
    return build_app(settings, adapters)


def assert_problem(r: Any, status: int, code: str) -> dict[str, Any]:
    assert (r.status_code, r.headers["content-type"]) == (status, PROBLEM_JSON), r.text
    body: dict[str, Any] = r.json()
    assert body["code"] == code, body
    return body


@route("workflow", "GET /workflows")
async def test_workflows_are_listed_newest_first_with_counts(
    http: HTTPClient, app: FastAPI
) -> None:
    """GET /workflows: every workflow, most recently updated first, with counts per status."""
    r = await http(app).get("/workflows")
    assert r.status_code == 200, r.text
    assert [w["workflow_id"] for w in r.json()["workflows"]] == ["pub-2", "rev-1", "pub-1"]
    assert r.json()["counts"] == {"active": 2, "published": 1}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"status": "running"}, ["rev-1", "pub-1"]),
        ({"status": "published"}, ["pub-2"]),
        ({"kind": "review"}, ["rev-1"]),
        ({"post_id": "p1"}, ["pub-1"]),
        ({"stuck": "true"}, ["pub-1"]),
        ({"stuck": "false"}, ["pub-2", "rev-1"]),
        ({"limit": 1}, ["pub-2"]),
    ],
)
@route("workflow", "GET /workflows")
async def test_workflows_are_filtered(
    http: HTTPClient, app: FastAPI, params: dict[str, Any], expected: list[str]
) -> None:
    """`status` (`running`: every non-terminal one), `kind`, `post_id`, `stuck` (no progress
    for STUCK_AFTER_S and no timer to come) and `limit` narrow the list."""
    r = await http(app).get("/workflows", params=params)
    assert [w["workflow_id"] for w in r.json()["workflows"]] == expected


@pytest.mark.parametrize(
    ("params", "field"),
    [({"kind": "saga"}, "query.kind"), ({"limit": 0}, "query.limit"),
     ({"stuck": "perhaps"}, "query.stuck")],
)  # fmt: skip
@route("workflow", "GET /workflows")
async def test_an_invalid_filter_is_a_422_naming_it(
    http: HTTPClient, app: FastAPI, params: dict[str, Any], field: str
) -> None:
    """An unknown kind, a limit below 1, a stuck that is no boolean: 422 naming the query."""
    r = await http(app).get("/workflows", params=params)
    assert [e["field"] for e in assert_problem(r, 422, "invalid_request")["errors"]] == [field]


@route("workflow", "GET /workflows/{workflow_id}")
async def test_one_workflow_shows_its_timers_failures_and_history(
    http: HTTPClient, app: FastAPI
) -> None:
    """GET /workflows/{id}: the summary plus data, pending timers, failures and history;
    an unknown id is 404 `workflow_not_found`."""
    r = await http(app).get("/workflows/pub-1")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["stuck"], body["error"], len(body["failures"])) == (
        True, "webhook answered 500", 1,
    )  # fmt: skip
    review = (await http(app).get("/workflows/rev-1")).json()
    assert [t["kind"] for t in review["pending_timers"]] == ["reminder"]
    assert_problem(await http(app).get("/workflows/nope"), 404, "workflow_not_found")


@pytest.mark.parametrize(
    "action", [pytest.param(a, marks=route("workflow", f"POST /workflows/{{workflow_id}}/{a}"))
               for a in ACTIONS],
)  # fmt: skip
async def test_an_action_is_a_control_record_keyed_by_the_post_and_202(
    http: HTTPClient, app: FastAPI, control: InMemoryControlChannel, action: str
) -> None:
    """POST /workflows/{id}/<action>: 202 with a request id; one record on the control channel,
    keyed by the workflow's post id (the owner's partition), naming action, reason and time."""
    r = await http(app).post(f"/workflows/pub-1/{action}", json={"reason": "ops"})
    assert r.status_code == 202, r.text
    assert (r.json()["accepted"], r.json()["action"]) == (True, action)
    [(key, value)] = control.records
    sent = json.loads(value)
    assert key == b"p1"
    assert (sent["workflow_id"], sent["action"], sent["reason"]) == ("pub-1", action, "ops")
    assert (sent["request_id"], sent["at"]) == (r.json()["request_id"], NOW.isoformat())
    # the record is the one the AsyncAPI document describes (schemas/asyncapi.yaml)
    schema = asyncapi_document()["components"]["schemas"]["OperatorAction"]
    assert set(schema["required"]) <= set(sent) <= set(schema["properties"])
    assert sent["action"] in schema["properties"]["action"]["enum"]


@pytest.mark.parametrize(
    "action", [pytest.param(a, marks=route("workflow", f"POST /workflows/{{workflow_id}}/{a}"))
               for a in ACTIONS],
)  # fmt: skip
async def test_an_action_on_an_unknown_or_finished_workflow_is_refused(
    http: HTTPClient, app: FastAPI, control: InMemoryControlChannel, action: str
) -> None:
    """Unknown workflow: 404 `workflow_not_found`; a finished one: 409 `workflow_finished`;
    nothing is sent. Without a body, the action is sent with no reason."""
    assert_problem(await http(app).post(f"/workflows/nope/{action}"), 404, "workflow_not_found")
    assert_problem(await http(app).post(f"/workflows/pub-2/{action}"), 409, "workflow_finished")
    assert control.records == []
    assert (await http(app).post(f"/workflows/rev-1/{action}")).status_code == 202
    assert json.loads(control.records[0][1])["reason"] is None


@pytest.mark.parametrize(
    "action", [pytest.param(a, marks=route("workflow", f"POST /workflows/{{workflow_id}}/{a}"))
               for a in ACTIONS],
)  # fmt: skip
async def test_an_action_kafka_does_not_take_is_503_kafka_unavailable(
    http: HTTPClient, app: FastAPI, control: InMemoryControlChannel, action: str
) -> None:
    """The control record is not written: 503 `kafka_unavailable` with the reason."""
    control.unavailable = "KafkaConnectionError: no broker"
    r = await http(app).post(f"/workflows/pub-1/{action}")
    assert (
        assert_problem(r, 503, "kafka_unavailable")["detail"] == "KafkaConnectionError: no broker"
    )


@pytest.mark.parametrize(
    "action", [pytest.param(a, marks=route("workflow", f"POST /workflows/{{workflow_id}}/{a}"))
               for a in ACTIONS],
)  # fmt: skip
async def test_an_invalid_or_oversized_action_body_is_refused(
    http: HTTPClient, app: FastAPI, control: InMemoryControlChannel, action: str
) -> None:
    """A reason over 2000 characters: 422 naming `body.reason`; a form body: 422; a body over
    the limit, declared or chunked: 413 `request_too_large`. Nothing is sent."""
    client = http(app)
    r = await client.post(f"/workflows/pub-1/{action}", json={"reason": "r" * 2001})
    assert [e["field"] for e in assert_problem(r, 422, "invalid_request")["errors"]] == [
        "body.reason"
    ]
    r = await client.post(f"/workflows/pub-1/{action}", data={"reason": "x"})
    assert_problem(r, 422, "invalid_request")
    big = json.dumps({"reason": "x" * LIMIT}).encode()
    r = await client.post(f"/workflows/pub-1/{action}", content=big)
    assert_problem(r, 413, "request_too_large")
    status, body = await call_chunked(app, f"/workflows/w1/{action}", [big[:1500], big[1500:]])
    assert status == 413 and b'"code":"request_too_large"' in body
    small, _ = await call_chunked(app, f"/workflows/w1/{action}", [b'{"reason": "x"}'])
    assert small == 404  # under the limit the route answers: no such workflow
    assert control.records == []
