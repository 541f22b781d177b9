"""The workflows of the blog, as pure policies: (state, input, context) -> Decision.

Three kinds, each started by one event type and identified by `<kind>:<post id>:v<version of
the starting event>` (so a post submitted twice has two review workflows):

* review       PostSubmittedForReview -> assign a reviewer (round robin) -> wait for approval or
               rejection; reminder at the first deadline, automatic rejection at the second;
               approved -> publish now, or schedule the publication at the requested time.
* schedule     PublicationScheduled -> at the due time, publish; cancellable; a newer schedule of
               the same post supersedes it.
* publication  PostPublished -> run the configured activities in order (retries with
               exponential backoff); one that fails for good -> compensate the completed ones in
               reverse order, then unpublish the post with the reason.

Nothing here reads a clock or does I/O: time comes in the context, effects go out in the
decision. Timer due times derive from event times, so they do not move when a restart delays
the processing of an event.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from shared.messages.base import Command
from shared.messages.blog import (
    AssignReviewer,
    PostApproved,
    PostArchived,
    PostPublished,
    PostRejected,
    PostSubmittedForReview,
    PostUnpublished,
    PublicationScheduleCancelled,
    PublicationScheduled,
    PublishPost,
    RejectPost,
    ReviewerAssigned,
    ReviewReminderSent,
    SchedulePublication,
    SendReviewReminder,
    UnpublishPost,
)
from workflow_service.model import (
    ACTIVE,
    COMPENSATING,
    ActivityDone,
    CommandToSend,
    Context,
    DeadLetter,
    Decision,
    EventInput,
    Input,
    OperatorAction,
    Refused,
    Timer,
    TimerFired,
    WorkflowState,
    record,
)

AUTO_REJECT_REVIEWER = "workflow"


def workflow_id(kind: str, post_id: str, version: int) -> str:
    return f"{kind}:{post_id}:v{version}"


def start(inp: EventInput, ctx: Context) -> Decision | None:
    """The workflow `inp` starts, if any."""
    env, event = inp.envelope, inp.event
    post, version, at = env.aggregate_id, env.aggregate_version, env.occurred_at
    if isinstance(event, PostSubmittedForReview):
        reviewers = ctx.config.reviewers
        reviewer = reviewers[ctx.round_robin % len(reviewers)]
        reminder = Timer(id="reminder", due_at=at + ctx.config.reminder_after, kind="reminder")
        deadline = Timer(id="deadline", due_at=at + ctx.config.deadline_after, kind="deadline")
        state = WorkflowState(
            workflow_id=workflow_id("review", post, version),
            kind="review",
            post_id=post,
            step="awaiting_decision",
            data={
                "reviewer": reviewer,
                "publish_at": event.publish_at.isoformat() if event.publish_at else None,
            },
            timers=[reminder, deadline],
            started_at=at,
            updated_at=ctx.now,
        )
        state = record(
            state,
            ctx.now,
            "started",
            reviewer=reviewer,
            reminder_at=reminder.due_at.isoformat(),
            deadline_at=deadline.due_at.isoformat(),
        )
        command = CommandToSend(post, AssignReviewer(reviewer=reviewer), "assign-reviewer")
        return Decision(state, [command], used_round_robin=True)
    if isinstance(event, PublicationScheduled):
        timer = Timer(id="publish", due_at=event.publish_at, kind="publish")
        state = WorkflowState(
            workflow_id=workflow_id("schedule", post, version),
            kind="schedule",
            post_id=post,
            step="waiting",
            data={"version": version, "publish_at": event.publish_at.isoformat()},
            timers=[timer],
            started_at=at,
            updated_at=ctx.now,
        )
        return Decision(record(state, ctx.now, "started", publish_at=timer.due_at.isoformat()))
    if isinstance(event, PostPublished) and ctx.config.publication_steps:
        steps = list(ctx.config.publication_steps)
        state = WorkflowState(
            workflow_id=workflow_id("publication", post, version),
            kind="publication",
            post_id=post,
            step=steps[0],
            data={"steps": steps, "done": [], "skipped": [], "to_compensate": []},
            timers=[_activity_timer(steps[0], 1, at, compensation=False)],
            started_at=at,
            updated_at=ctx.now,
        )
        return Decision(record(state, ctx.now, "started", steps=steps))
    return None


def decide(state: WorkflowState, inp: Input, ctx: Context) -> Decision:
    """The next state of a running workflow. Terminal workflows never change."""
    if state.terminal:
        if isinstance(inp, OperatorAction):
            raise Refused(f"{state.workflow_id} is {state.status}: it is finished")
        return Decision(state)
    if state.kind == "review":
        return _review(state, inp, ctx)
    if state.kind == "schedule":
        return _schedule(state, inp, ctx)
    return _publication(state, inp, ctx)


# ---------------------------------------------------------------------------------- helpers


def _fired(state: WorkflowState, timer: Timer, ctx: Context) -> WorkflowState:
    """Remove `timer` and record that it fired (and how late)."""
    late_ms = round((ctx.now - timer.due_at).total_seconds() * 1000)
    kept = [t for t in state.timers if t.id != timer.id]
    state = state.model_copy(update={"timers": kept})
    return record(
        state,
        ctx.now,
        "timer_fired",
        timer=timer.id,
        due_at=timer.due_at.isoformat(),
        late_ms=late_ms,
    )


def _finish(state: WorkflowState, status: str, at: datetime, **detail: Any) -> WorkflowState:
    state = state.model_copy(update={"status": status, "step": "done", "timers": []})
    return record(state, at, status, **detail)


def _retry_key(state: WorkflowState, step: str) -> str:
    return f"{step}-retry-{state.transitions}"


# ----------------------------------------------------------------------------------- review


def _review(state: WorkflowState, inp: Input, ctx: Context) -> Decision:
    post, now = state.post_id, ctx.now
    if isinstance(inp, EventInput):
        event = inp.event
        if isinstance(event, ReviewerAssigned):
            return Decision(record(state, now, "reviewer_assigned", reviewer=event.reviewer))
        if isinstance(event, ReviewReminderSent):
            return Decision(record(state, now, "reminder_sent", reviewer=event.reviewer))
        if isinstance(event, PostApproved):
            state = state.model_copy(update={"timers": []})
            state = record(state, now, "approved", approved_by=event.approved_by)
            publish_at = state.data.get("publish_at")
            if publish_at and datetime.fromisoformat(publish_at) > now:
                schedule = SchedulePublication(publish_at=datetime.fromisoformat(publish_at))
                state = _finish(state, "scheduled", now, publish_at=publish_at)
                return Decision(state, [CommandToSend(post, schedule, "schedule")])
            state = state.model_copy(update={"step": "publishing"})
            return Decision(state, [CommandToSend(post, PublishPost(), "publish")])
        if isinstance(event, PostPublished) and state.step == "publishing":
            return Decision(_finish(state, "published", now))
        if isinstance(event, PostRejected):
            # By the event, not by the step: a person's rejection may be decided before the
            # automatic one that this workflow sent meanwhile (which the domain then refuses).
            status = "auto_rejected" if event.reviewer == AUTO_REJECT_REVIEWER else "rejected"
            return Decision(_finish(state, status, now, reason=event.reason))
        if isinstance(event, PostArchived):
            return Decision(_finish(state, "cancelled", now, reason="post archived"))
        return Decision(state)
    if isinstance(inp, TimerFired):
        timer = state.timer(inp.timer.id)
        if timer is None:
            return Decision(state)  # cancelled meanwhile
        state = _fired(state, timer, ctx)
        reviewer = state.data.get("reviewer")
        if timer.kind == "reminder":
            remind = SendReviewReminder(reviewer=reviewer)
            return Decision(state, [CommandToSend(post, remind, "reminder")])
        state = state.model_copy(update={"step": "auto_rejecting"})
        waited = ctx.config.deadline_after.total_seconds()
        reject = RejectPost(
            reason=f"review deadline passed: no decision within {waited:g} s",
            reviewer=AUTO_REJECT_REVIEWER,
        )
        return Decision(state, [CommandToSend(post, reject, "auto-reject")])
    if isinstance(inp, OperatorAction):
        if inp.action != "retry":
            raise Refused(
                f"a review cannot be {'skipped' if inp.action == 'skip' else 'compensated'}: "
                "approve or reject the post instead"
            )
        # Re-send the command of the current step under a new id (the first one was decided).
        state = record(state, now, "operator_retry", step=state.step, reason=inp.reason)
        if state.step == "publishing":
            command: Command = PublishPost()
        elif state.step == "auto_rejecting":
            command = RejectPost(reason="review deadline passed", reviewer=AUTO_REJECT_REVIEWER)
        else:
            command = AssignReviewer(reviewer=state.data["reviewer"])
        return Decision(state, [CommandToSend(post, command, _retry_key(state, state.step))])
    return Decision(state)


# --------------------------------------------------------------------------------- schedule


def _schedule(state: WorkflowState, inp: Input, ctx: Context) -> Decision:
    post, now = state.post_id, ctx.now
    if isinstance(inp, EventInput):
        event, version = inp.event, inp.envelope.aggregate_version
        if isinstance(event, PublicationScheduled) and version > state.data["version"]:
            return Decision(_finish(state, "cancelled", now, reason=f"superseded by v{version}"))
        if isinstance(event, PublicationScheduleCancelled):
            return Decision(_finish(state, "cancelled", now, reason="schedule cancelled"))
        if isinstance(event, PostPublished):
            by = "this workflow" if state.step == "publishing" else "someone else"
            return Decision(_finish(state, "published", now, by=by))
        if isinstance(event, PostArchived):
            return Decision(_finish(state, "cancelled", now, reason="post archived"))
        return Decision(state)
    if isinstance(inp, TimerFired):
        timer = state.timer(inp.timer.id)
        if timer is None:
            return Decision(state)
        state = _fired(state, timer, ctx).model_copy(update={"step": "publishing"})
        return Decision(state, [CommandToSend(post, PublishPost(), "publish")])
    if isinstance(inp, OperatorAction):
        if inp.action != "retry":
            raise Refused(
                f"a scheduled publication cannot be {inp.action}ed: cancel the schedule instead"
            )
        state = record(state, now, "operator_retry", step=state.step, reason=inp.reason)
        state = state.model_copy(update={"timers": [], "step": "publishing"})
        return Decision(state, [CommandToSend(post, PublishPost(), _retry_key(state, "publish"))])
    return Decision(state)


# ------------------------------------------------------------------------------ publication


def _activity_timer(name: str, attempt: int, due: datetime, *, compensation: bool) -> Timer:
    prefix = "compensate" if compensation else "activity"
    return Timer(
        id=f"{prefix}:{name}:{attempt}",
        due_at=due,
        kind="activity",
        data={"activity": name, "attempt": attempt, "compensation": compensation},
    )


def backoff(attempt: int, ctx: Context) -> timedelta:
    """Delay before attempt `attempt + 1`: base * 2^(attempt - 1), capped."""
    delay: timedelta = ctx.config.backoff * (2 ** (attempt - 1))
    return min(delay, ctx.config.backoff_max)


def _next_step(state: WorkflowState, ctx: Context) -> WorkflowState:
    steps: list[str] = state.data["steps"]
    finished = set(state.data["done"]) | set(state.data["skipped"])
    remaining = [s for s in steps if s not in finished]
    if not remaining:
        return _finish(state, "completed", ctx.now)
    timer = _activity_timer(remaining[0], 1, ctx.now, compensation=False)
    return state.model_copy(update={"step": remaining[0], "timers": [timer]})


def _begin_compensation(
    state: WorkflowState, ctx: Context, reason: str, *, unpublish: bool = True
) -> Decision:
    to_compensate = list(reversed(state.data["done"]))
    data = state.data | {"to_compensate": to_compensate, "unpublish": unpublish}
    state = state.model_copy(
        update={"status": COMPENSATING, "error": reason, "data": data, "timers": []}
    )
    state = record(state, ctx.now, "compensation_started", reason=reason, steps=to_compensate)
    return _next_compensation(state, ctx)


def _next_compensation(state: WorkflowState, ctx: Context) -> Decision:
    pending: list[str] = state.data["to_compensate"]
    if pending:
        timer = _activity_timer(pending[0], 1, ctx.now, compensation=True)
        return Decision(
            state.model_copy(update={"step": f"compensate {pending[0]}", "timers": [timer]})
        )
    reason = state.error or "publication step failed"
    state = _finish(state, "failed", ctx.now, error=reason)
    if not state.data.get("unpublish", True):
        return Decision(state)
    unpublish = UnpublishPost(reason=f"publication side effects failed: {reason}"[:2000])
    return Decision(state, [CommandToSend(state.post_id, unpublish, "unpublish")])


def _publication(state: WorkflowState, inp: Input, ctx: Context) -> Decision:
    now = ctx.now
    if isinstance(inp, EventInput):
        if isinstance(inp.event, PostUnpublished | PostArchived) and state.status == ACTIVE:
            what = "unpublished" if isinstance(inp.event, PostUnpublished) else "archived"
            return _begin_compensation(state, ctx, f"post {what} meanwhile", unpublish=False)
        return Decision(state)
    if isinstance(inp, ActivityDone):
        timer = state.timer(inp.timer_id)
        if timer is None:
            return Decision(state)  # a result for a timer that is gone (retried, skipped)
        name, attempt = timer.data["activity"], timer.data["attempt"]
        compensation = bool(timer.data["compensation"])
        state = state.model_copy(update={"timers": [t for t in state.timers if t.id != timer.id]})
        if inp.ok:
            if compensation:
                data = state.data | {
                    "to_compensate": state.data["to_compensate"][1:],
                    "compensated": [*state.data.get("compensated", []), name],
                }
                state = record(
                    state.model_copy(update={"data": data}), now, "compensated", step=name
                )
                return _next_compensation(state, ctx)
            data = state.data | {"done": [*state.data["done"], name]}
            state = record(
                state.model_copy(update={"data": data}),
                now,
                "step_succeeded",
                step=name,
                attempt=attempt,
            )
            return Decision(_next_step(state, ctx))
        if attempt < ctx.config.max_attempts:
            retry_at = now + backoff(attempt, ctx)
            retry = _activity_timer(name, attempt + 1, retry_at, compensation=compensation)
            state = record(
                state.model_copy(update={"timers": [retry]}),
                now,
                "compensation_failed_retrying" if compensation else "step_failed_retrying",
                step=name,
                attempt=attempt,
                error=inp.error,
                retry_at=retry_at.isoformat(),
            )
            return Decision(state)
        error = f"{name} failed after {attempt} attempts: {inp.error}"
        letter = DeadLetter(
            reason=error,
            detail={"step": name, "attempts": attempt, "compensation": compensation},
        )
        if compensation:
            data = state.data | {
                "to_compensate": state.data["to_compensate"][1:],
                "compensation_failed": [*state.data.get("compensation_failed", []), name],
            }
            state = record(
                state.model_copy(update={"data": data}),
                now,
                "compensation_failed",
                step=name,
                error=inp.error,
            )
            decision = _next_compensation(state, ctx)
            return Decision(decision.state, decision.commands, [letter])
        state = record(state, now, "step_failed", step=name, attempts=attempt, error=inp.error)
        decision = _begin_compensation(state, ctx, error)
        return Decision(decision.state, decision.commands, [letter])
    if isinstance(inp, OperatorAction):
        pending = next((t for t in state.timers if t.kind == "activity"), None)
        if inp.action == "compensate":
            if state.status == COMPENSATING:
                raise Refused(f"{state.workflow_id} is already compensating")
            state = record(state, now, "operator_compensate", reason=inp.reason)
            return _begin_compensation(state, ctx, f"operator: {inp.reason or 'compensate'}")
        if pending is None:
            raise Refused(f"{state.workflow_id} has no step waiting (it is running one now)")
        if inp.action == "retry":
            again = _activity_timer(
                pending.data["activity"],
                pending.data["attempt"],
                now,
                compensation=bool(pending.data["compensation"]),
            )
            timers = [again if t.id == pending.id else t for t in state.timers]
            state = record(
                state.model_copy(update={"timers": timers}),
                now,
                "operator_retry",
                step=pending.data["activity"],
                reason=inp.reason,
            )
            return Decision(state)
        # skip
        if pending.data["compensation"]:
            data = state.data | {"to_compensate": state.data["to_compensate"][1:]}
            state = record(
                state.model_copy(update={"data": data, "timers": []}),
                now,
                "compensation_skipped",
                step=pending.data["activity"],
                reason=inp.reason,
            )
            return _next_compensation(state, ctx)
        data = state.data | {"skipped": [*state.data["skipped"], pending.data["activity"]]}
        state = record(
            state.model_copy(update={"data": data, "timers": []}),
            now,
            "step_skipped",
            step=pending.data["activity"],
            reason=inp.reason,
        )
        return Decision(_next_step(state, ctx))
    return Decision(state)
