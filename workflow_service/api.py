"""The operator's view: every workflow of the system, read from the `workflows.state` changelog.

Any instance answers for all workflows (the view follows every partition of the changelog, not
only the owned ones), so the HTTP endpoints need no routing. Actions (retry, skip, compensate)
are records on `workflows.control`, keyed by post id so that they land on the partition of the
workflow's owner, which applies them exactly once.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from shared.access import ACCESS
from shared.errors import InfrastructureUnavailable
from shared.http import DEFAULT_BODY_LIMIT, problem, problem_doc, service_app
from shared.kafka.reader import TopicFollower
from shared.kafka.records import InboundRecord
from shared.kafka.topics import Topics
from shared.logging import get_logger
from workflow_service.changelog import META_KEY
from workflow_service.control import ControlSender
from workflow_service.model import WorkflowState

log = get_logger(__name__)


def fold_changelog(workflows: dict[str, WorkflowState], records: Sequence[InboundRecord]) -> None:
    """Apply records of the `workflows.state` changelog: a state replaces the one of its id, a
    tombstone forgets it, the engine's meta record and unreadable states are skipped."""
    for r in records:
        if r.key is None or r.key == META_KEY:
            continue
        if r.value is None:
            workflows.pop(r.key.decode(), None)
            continue
        try:
            state = WorkflowState.model_validate_json(r.value)
        except ValueError as exc:
            log.warning("workflow_state_unreadable", offset=r.offset, error=str(exc))
            continue
        workflows[state.workflow_id] = state


class WorkflowReader(Protocol):
    """All workflows by id, as the changelog says."""

    @property
    def workflows(self) -> Mapping[str, WorkflowState]: ...


class WorkflowView:
    """All workflows by id, from the changelog (eventually consistent, usually within ~100 ms)."""

    def __init__(self, bootstrap_servers: str, topics: Topics) -> None:
        self.workflows: dict[str, WorkflowState] = {}
        self._follower = TopicFollower(bootstrap_servers, topics.workflow_state, self._on_batch)

    def _on_batch(self, records: Sequence[InboundRecord]) -> None:
        fold_changelog(self.workflows, records)

    async def start(self) -> None:
        await self._follower.start()

    async def stop(self) -> None:
        await self._follower.stop()

    async def caught_up(self, timeout_s: float = 5.0) -> bool:
        return await self._follower.caught_up(timeout_s)


class InMemoryWorkflowView:
    """The same view over a changelog held in memory: `append` is a write to the topic."""

    def __init__(self) -> None:
        self.workflows: dict[str, WorkflowState] = {}
        self.changelog: list[InboundRecord] = []

    def append(self, records: Sequence[InboundRecord]) -> None:
        self.changelog.extend(records)
        fold_changelog(self.workflows, records)

    async def caught_up(self, timeout_s: float = 5.0) -> bool:
        return True


def is_stuck(state: WorkflowState, now: datetime, threshold: timedelta) -> bool:
    """Running, no progress for `threshold`, and no timer still to come: nothing will move it."""
    if state.terminal or now - state.updated_at < threshold:
        return False
    return not any(t.due_at > now for t in state.timers)


def summary(state: WorkflowState, now: datetime, threshold: timedelta) -> dict[str, Any]:
    timers = sorted(state.timers, key=lambda t: t.due_at)
    failures = [h for h in state.history if "failed" in h.what]
    return {
        "workflow_id": state.workflow_id,
        "kind": state.kind,
        "post_id": state.post_id,
        "status": state.status,
        "step": state.step,
        "started_at": state.started_at,
        "updated_at": state.updated_at,
        "next_timer": timers[0].model_dump(mode="json") if timers else None,
        "error": state.error,
        "failures": len(failures),
        "stuck": is_stuck(state, now, threshold),
    }


def detail(state: WorkflowState, now: datetime, threshold: timedelta) -> dict[str, Any]:
    failures = [h.model_dump(mode="json") for h in state.history if "failed" in h.what]
    return summary(state, now, threshold) | {
        "data": state.data,
        "pending_timers": [t.model_dump(mode="json") for t in state.timers],
        "failures": failures,
        "history": [h.model_dump(mode="json") for h in state.history],
        "transitions": state.transitions,
    }


class ActionRequest(BaseModel):
    reason: str | None = Field(default=None, max_length=2000)


class ActionAccepted(BaseModel):
    """The action is on `workflows.control`; the workflow's owner applies it (or records in the
    history why it does not apply)."""

    accepted: bool
    workflow_id: str
    action: Literal["retry", "skip", "compensate"]
    request_id: uuid.UUID


UNKNOWN = problem_doc("`workflow_not_found`: no such workflow (or it was forgotten)")


def build_api(
    *,
    service: str,
    view: WorkflowReader,
    control: ControlSender,
    health: Callable[[], Awaitable[dict[str, object]]],
    clock: Callable[[], datetime],
    stuck_after: timedelta,
    body_limit: int = DEFAULT_BODY_LIMIT,
) -> FastAPI:
    """The FastAPI app: workflows read from `view`, operator actions sent on `control`."""
    app = service_app(
        service,
        health=health,
        body_limit=body_limit,
        version="1",
        description="Workflows (sagas) of the blog: list, inspect and drive them.",
        access=ACCESS["workflow"],
    )

    def encode(value: Any) -> Any:
        return json.loads(json.dumps(value, default=lambda v: v.isoformat()))

    @app.get("/workflows", tags=["workflows"])
    async def list_workflows(
        status: str | None = None,
        kind: Literal["review", "schedule", "publication"] | None = None,
        post_id: str | None = None,
        stuck: bool | None = Query(default=None, description="only stuck (true) or not (false)"),
        limit: int = Query(default=100, ge=1, le=10_000),
    ) -> Response:
        """Workflows, newest first; `status=running` for every non-terminal one."""
        now = clock()
        rows = []
        for state in sorted(view.workflows.values(), key=lambda s: s.updated_at, reverse=True):
            if status == "running" and state.terminal:
                continue
            if status not in (None, "running") and state.status != status:
                continue
            if (kind and state.kind != kind) or (post_id and state.post_id != post_id):
                continue
            row = summary(state, now, stuck_after)
            if stuck is not None and row["stuck"] != stuck:
                continue
            rows.append(row)
            if len(rows) >= limit:
                break
        counts: dict[str, int] = {}
        for state in view.workflows.values():
            counts[state.status] = counts.get(state.status, 0) + 1
        return JSONResponse(encode({"workflows": rows, "counts": counts}))

    @app.get("/workflows/{workflow_id}", tags=["workflows"], responses={404: UNKNOWN})
    async def show_workflow(workflow_id: str) -> Response:
        """State, pending timers, current step, failures and (recent) history of one workflow."""
        state = view.workflows.get(workflow_id)
        if state is None:
            return problem(404, "workflow_not_found", "Unknown workflow", workflow_id)
        return JSONResponse(encode(detail(state, clock(), stuck_after)))

    def action(name: Literal["retry", "skip", "compensate"], doc: str) -> None:
        async def endpoint(workflow_id: str, body: ActionRequest | None = None) -> Response:
            state = view.workflows.get(workflow_id)
            if state is None:
                return problem(404, "workflow_not_found", "Unknown workflow", workflow_id)
            if state.terminal:
                return problem(
                    409,
                    "workflow_finished",
                    "Workflow finished",
                    f"{workflow_id} is {state.status}; {name} applies to running workflows",
                )
            request_id = str(uuid.uuid4())
            value = {
                "workflow_id": workflow_id,
                "action": name,
                "reason": body.reason if body else None,
                "request_id": request_id,
                "at": clock().isoformat(),
            }
            try:
                await control.send(state.post_id.encode(), json.dumps(value).encode())
            except InfrastructureUnavailable as exc:
                return problem(503, "kafka_unavailable", "Kafka unavailable", exc.message)
            log.info("operator_action_sent", workflow_id=workflow_id, action=name)
            return JSONResponse(
                {
                    "accepted": True,
                    "workflow_id": workflow_id,
                    "action": name,
                    "request_id": request_id,
                },
                status_code=202,
            )

        endpoint.__doc__ = doc
        app.post(
            f"/workflows/{{workflow_id}}/{name}",
            status_code=202,
            tags=["workflows"],
            response_model=ActionAccepted,
            responses={
                404: UNKNOWN,
                409: problem_doc("`workflow_finished`: the action applies to running workflows"),
                503: problem_doc("`kafka_unavailable`: the action could not be sent; retry"),
            },
        )(endpoint)

    action("retry", "Run the waiting step (or re-send the current command) now.")
    action("skip", "Skip the waiting step of a publication workflow and go on.")
    action("compensate", "Compensate the completed steps now and unpublish the post.")

    return app
