"""Workflow state, inputs and decisions: plain values, serialisable to the changelog.

A workflow (saga) instance is one `WorkflowState`. Its policy is a pure function
`(state, input, context) -> Decision`; the engine (`engine.py`) feeds it events from
`posts.events`, fired timers, activity results and operator actions, and writes what it decides
(the new state, commands, history, dead letters) in one Kafka transaction.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.messages.base import Command, Event, EventEnvelope

#: Namespace of the deterministic command ids of workflows (uuid5 of workflow id and step).
COMMAND_ID_NAMESPACE = uuid.UUID("6f1c3c0e-52a4-4b8e-9a53-0d7c4b8f1e21")

HISTORY_KEPT = 100  # entries kept in the state; the full history is in workflows.history

ACTIVE = "active"
COMPENSATING = "compensating"
#: Terminal statuses: a workflow in one of them never changes again.
TERMINAL = frozenset(
    {"published", "scheduled", "rejected", "auto_rejected", "cancelled", "completed", "failed"}
)


class Timer(BaseModel):
    """A durable timer: fires once at or after `due_at` (unless cancelled before)."""

    model_config = ConfigDict(frozen=True)

    id: str
    due_at: datetime
    kind: Literal["reminder", "deadline", "publish", "activity"]
    data: dict[str, Any] = Field(default_factory=dict)


class HistoryEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    at: datetime
    what: str
    detail: dict[str, Any] = Field(default_factory=dict)


class WorkflowState(BaseModel):
    """One saga instance, as kept in the compacted `workflows.state` topic."""

    workflow_id: str
    kind: Literal["review", "schedule", "publication"]
    post_id: str
    status: str = ACTIVE
    step: str
    data: dict[str, Any] = Field(default_factory=dict)
    timers: list[Timer] = Field(default_factory=list)
    error: str | None = None
    started_at: datetime
    updated_at: datetime
    transitions: int = 0
    history: list[HistoryEntry] = Field(default_factory=list)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def timer(self, timer_id: str) -> Timer | None:
        return next((t for t in self.timers if t.id == timer_id), None)


# --------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class EventInput:
    envelope: EventEnvelope
    event: Event


@dataclass(frozen=True)
class TimerFired:
    timer: Timer


@dataclass(frozen=True)
class ActivityDone:
    """The result of running an activity (a step or a compensation) once."""

    timer_id: str
    ok: bool
    error: str | None = None


@dataclass(frozen=True)
class OperatorAction:
    action: Literal["retry", "skip", "compensate"]
    reason: str | None = None


Input = EventInput | TimerFired | ActivityDone | OperatorAction


# ------------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class CommandToSend:
    """A command for the command service; `step` makes its id deterministic."""

    aggregate_id: str
    command: Command
    step: str

    def command_id(self, workflow_id: str) -> uuid.UUID:
        return uuid.uuid5(COMMAND_ID_NAMESPACE, f"{workflow_id}/{self.step}")


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    state: WorkflowState
    commands: list[CommandToSend] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    used_round_robin: bool = False


class Refused(Exception):
    """An operator action that does not apply to the workflow in its present state."""


@dataclass(frozen=True)
class WorkflowConfig:
    reviewers: tuple[str, ...] = ("alice", "bob", "carol")
    reminder_after: timedelta = timedelta(days=1)
    deadline_after: timedelta = timedelta(days=2)
    publication_steps: tuple[str, ...] = ("search_index", "webhook")
    max_attempts: int = 5
    backoff: timedelta = timedelta(milliseconds=500)
    backoff_max: timedelta = timedelta(seconds=60)


@dataclass(frozen=True)
class Context:
    """What a policy may know besides its state and input: the time, the configuration, and
    the partition's round-robin counter (for reviewer assignment)."""

    now: datetime
    config: WorkflowConfig
    round_robin: int = 0


def record(state: WorkflowState, at: datetime, what: str, **detail: Any) -> WorkflowState:
    """A copy of `state` with one more history entry and one more transition."""
    entry = HistoryEntry(at=at, what=what, detail=detail)
    history = [*state.history, entry][-HISTORY_KEPT:]
    return state.model_copy(
        update={"history": history, "updated_at": at, "transitions": state.transitions + 1}
    )
