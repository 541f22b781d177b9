"""Given inputs -> commands and timers, for every workflow policy and every compensation path."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from shared.messages.base import Event, EventEnvelope
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
    SchedulePublication,
    SendReviewReminder,
    UnpublishPost,
)
from workflow_service.api import is_stuck
from workflow_service.model import (
    ActivityDone,
    Context,
    Decision,
    EventInput,
    OperatorAction,
    Refused,
    TimerFired,
    WorkflowConfig,
    WorkflowState,
)
from workflow_service.policies import backoff, decide, start

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
CONFIG = WorkflowConfig(
    reviewers=("alice", "bob"),
    reminder_after=timedelta(hours=1),
    deadline_after=timedelta(hours=2),
    publication_steps=("search_index", "webhook", "newsletter"),
    max_attempts=3,
    backoff=timedelta(seconds=1),
    backoff_max=timedelta(seconds=3),
)


def ctx(at: datetime = T0, rr: int = 0) -> Context:
    return Context(now=at, config=CONFIG, round_robin=rr)


def ev(event: Event, version: int, at: datetime = T0, post: str = "p1") -> EventInput:
    envelope = EventEnvelope(
        type=event.message_type,
        aggregate_id=post,
        event_id=uuid.uuid4(),
        aggregate_version=version,
        occurred_at=at,
    )
    return EventInput(envelope, event)


def started(event: Event, version: int = 2, rr: int = 0) -> Decision:
    decision = start(ev(event, version), ctx(rr=rr))
    assert decision is not None
    return decision


def commands(decision: Decision) -> list[object]:
    return [c.command for c in decision.commands]


def fire(state: WorkflowState, timer_id: str, at: datetime) -> Decision:
    timer = state.timer(timer_id)
    assert timer is not None, f"no timer {timer_id} in {state.timers}"
    return decide(state, TimerFired(timer), ctx(at))


# ------------------------------------------------------------------------------------ review


def test_review_starts_with_round_robin_reviewer_and_two_deadlines() -> None:
    first = started(PostSubmittedForReview(), rr=0)
    second = started(PostSubmittedForReview(), rr=1)
    third = started(PostSubmittedForReview(), rr=2)
    assert commands(first) == [AssignReviewer(reviewer="alice")]
    assert commands(second) == [AssignReviewer(reviewer="bob")]
    assert commands(third) == [AssignReviewer(reviewer="alice")]
    assert first.used_round_robin
    state = first.state
    assert state.workflow_id == "review:p1:v2"
    assert {t.id: t.due_at for t in state.timers} == {
        "reminder": T0 + timedelta(hours=1),
        "deadline": T0 + timedelta(hours=2),
    }
    assert state.status == "active"
    assert state.step == "awaiting_decision"


def test_unrelated_events_start_nothing() -> None:
    assert start(ev(ReviewerAssigned(reviewer="x"), 3), ctx()) is None
    assert start(ev(PostApproved(), 3), ctx()) is None


def test_review_approved_publishes_now_then_ends_published() -> None:
    state = started(PostSubmittedForReview()).state
    state = decide(state, ev(ReviewerAssigned(reviewer="alice"), 3), ctx()).state
    approved = decide(state, ev(PostApproved(approved_by="alice"), 4), ctx())
    assert commands(approved) == [PublishPost()]
    assert approved.state.timers == []
    assert approved.state.step == "publishing"
    done = decide(approved.state, ev(PostPublished(), 5), ctx())
    assert done.state.status == "published"
    assert done.commands == []


def test_review_approved_with_future_time_schedules_the_publication() -> None:
    when = T0 + timedelta(days=3)
    state = started(PostSubmittedForReview(publish_at=when)).state
    approved = decide(state, ev(PostApproved(), 3), ctx())
    assert commands(approved) == [SchedulePublication(publish_at=when)]
    assert approved.state.status == "scheduled"


def test_review_approved_after_the_requested_time_publishes_now() -> None:
    state = started(PostSubmittedForReview(publish_at=T0 + timedelta(minutes=5))).state
    approved = decide(state, ev(PostApproved(), 3), ctx(T0 + timedelta(minutes=10)))
    assert commands(approved) == [PublishPost()]


def test_review_rejected_by_a_person_ends_rejected_and_cancels_timers() -> None:
    state = started(PostSubmittedForReview()).state
    rejected = decide(state, ev(PostRejected(reason="typos", reviewer="bob"), 3), ctx())
    assert rejected.state.status == "rejected"
    assert rejected.state.timers == []
    assert rejected.commands == []


def test_review_first_deadline_reminds_second_rejects_automatically() -> None:
    state = started(PostSubmittedForReview()).state
    reminded = fire(state, "reminder", T0 + timedelta(hours=1, seconds=1))
    assert commands(reminded) == [SendReviewReminder(reviewer="alice")]
    assert reminded.state.status == "active"
    assert [t.id for t in reminded.state.timers] == ["deadline"]
    fired = [h for h in reminded.state.history if h.what == "timer_fired"]
    assert fired[-1].detail["late_ms"] == 1000
    rejected = fire(reminded.state, "deadline", T0 + timedelta(hours=2))
    (reject,) = commands(rejected)
    assert isinstance(reject, RejectPost)
    assert reject.reviewer == "workflow"
    assert "deadline" in reject.reason
    assert rejected.state.step == "auto_rejecting"
    final = decide(
        rejected.state, ev(PostRejected(reason=reject.reason, reviewer=reject.reviewer), 4), ctx()
    )
    assert final.state.status == "auto_rejected"


def test_review_deadline_loses_to_an_approval_that_came_first() -> None:
    state = started(PostSubmittedForReview()).state
    rejected = fire(state, "deadline", T0 + timedelta(hours=2))
    # the approval was decided before the automatic rejection: the domain refuses the latter
    approved = decide(rejected.state, ev(PostApproved(), 3), ctx())
    assert commands(approved) == [PublishPost()]
    assert decide(approved.state, ev(PostPublished(), 4), ctx()).state.status == "published"


def test_a_cancelled_timer_that_fires_late_changes_nothing() -> None:
    state = started(PostSubmittedForReview()).state
    reminder = state.timer("reminder")
    assert reminder is not None
    done = decide(state, ev(PostRejected(reason="no"), 3), ctx()).state
    again = decide(done, TimerFired(reminder), ctx(T0 + timedelta(hours=5)))
    assert again.state is done
    assert again.commands == []


def test_review_archived_is_cancelled() -> None:
    state = started(PostSubmittedForReview()).state
    assert decide(state, ev(PostArchived(), 3), ctx()).state.status == "cancelled"


def test_review_operator_retry_resends_the_step_under_a_new_command_id() -> None:
    state = started(PostSubmittedForReview()).state
    publishing = decide(state, ev(PostApproved(), 3), ctx())
    retried = decide(publishing.state, OperatorAction("retry"), ctx())
    assert commands(retried) == [PublishPost()]
    wid = state.workflow_id
    assert retried.commands[0].command_id(wid) != publishing.commands[0].command_id(wid)
    with pytest.raises(Refused):
        decide(publishing.state, OperatorAction("skip"), ctx())
    with pytest.raises(Refused):
        decide(publishing.state, OperatorAction("compensate"), ctx())


def test_finished_workflows_ignore_inputs_and_refuse_actions() -> None:
    state = started(PostSubmittedForReview()).state
    done = decide(state, ev(PostRejected(reason="no"), 3), ctx()).state
    assert decide(done, ev(PostApproved(), 4), ctx()).state is done
    with pytest.raises(Refused, match="finished"):
        decide(done, OperatorAction("retry"), ctx())


def test_command_ids_are_deterministic_per_workflow_and_step() -> None:
    a = started(PostSubmittedForReview())
    b = started(PostSubmittedForReview())
    wid = a.state.workflow_id
    assert a.commands[0].command_id(wid) == b.commands[0].command_id(wid)
    assert a.commands[0].command_id(wid) != a.commands[0].command_id("review:p1:v9")


# ---------------------------------------------------------------------------------- schedule


def test_schedule_publishes_at_the_due_time() -> None:
    when = T0 + timedelta(minutes=30)
    state = started(PublicationScheduled(publish_at=when), version=5).state
    assert state.workflow_id == "schedule:p1:v5"
    assert [(t.id, t.due_at) for t in state.timers] == [("publish", when)]
    fired = fire(state, "publish", when + timedelta(milliseconds=200))
    assert commands(fired) == [PublishPost()]
    assert fired.state.timers == []
    assert decide(fired.state, ev(PostPublished(), 6), ctx()).state.status == "published"


def test_schedule_cancelled_and_superseded() -> None:
    state = started(PublicationScheduled(publish_at=T0 + timedelta(hours=1)), version=5).state
    cancelled = decide(state, ev(PublicationScheduleCancelled(), 6), ctx())
    assert cancelled.state.status == "cancelled"
    assert cancelled.state.timers == []
    newer = ev(PublicationScheduled(publish_at=T0 + timedelta(hours=2)), 6)
    superseded = decide(state, newer, ctx())
    assert superseded.state.status == "cancelled"
    assert "superseded" in superseded.state.history[-1].detail["reason"]
    # its own starting event (version 5) does not supersede it
    own = ev(PublicationScheduled(publish_at=T0 + timedelta(hours=1)), 5)
    assert decide(state, own, ctx()).state.status == "active"


def test_schedule_published_by_hand_meanwhile_ends_published() -> None:
    state = started(PublicationScheduled(publish_at=T0 + timedelta(hours=1)), version=5).state
    done = decide(state, ev(PostPublished(), 6), ctx())
    assert done.state.status == "published"
    assert done.state.history[-1].detail["by"] == "someone else"


def test_schedule_operator_retry_publishes_now() -> None:
    state = started(PublicationScheduled(publish_at=T0 + timedelta(hours=1)), version=5).state
    retried = decide(state, OperatorAction("retry"), ctx())
    assert commands(retried) == [PublishPost()]
    assert retried.state.timers == []


# ------------------------------------------------------------------------------- publication


def publication() -> WorkflowState:
    state = started(PostPublished(), version=7).state
    assert state.workflow_id == "publication:p1:v7"
    return state


def pending(state: WorkflowState) -> str:
    (timer,) = state.timers
    return timer.id


def succeed(state: WorkflowState, at: datetime = T0) -> Decision:
    return decide(state, ActivityDone(pending(state), ok=True), ctx(at))


def fail(state: WorkflowState, at: datetime = T0, error: str = "HTTP 500") -> Decision:
    return decide(state, ActivityDone(pending(state), ok=False, error=error), ctx(at))


def test_publication_runs_its_steps_in_order_and_completes() -> None:
    state = publication()
    assert pending(state) == "activity:search_index:1"
    state = succeed(state).state
    assert pending(state) == "activity:webhook:1"
    state = succeed(state).state
    assert pending(state) == "activity:newsletter:1"
    done = succeed(state)
    assert done.state.status == "completed"
    assert done.state.data["done"] == ["search_index", "webhook", "newsletter"]
    assert done.commands == []


def test_publication_retries_with_exponential_backoff_then_succeeds() -> None:
    assert [backoff(a, ctx()).total_seconds() for a in (1, 2, 3, 4)] == [1, 2, 3, 3]
    state = succeed(publication()).state
    once = fail(state)
    retry = once.state.timer("activity:webhook:2")
    assert retry is not None
    assert retry.due_at == T0 + timedelta(seconds=1)
    twice = fail(once.state, T0 + timedelta(seconds=1))
    retry = twice.state.timer("activity:webhook:3")
    assert retry is not None
    assert retry.due_at == T0 + timedelta(seconds=3)
    ok = succeed(twice.state, T0 + timedelta(seconds=3))
    assert pending(ok.state) == "activity:newsletter:1"
    whats = [h.what for h in ok.state.history]
    assert whats.count("step_failed_retrying") == 2
    assert ok.dead_letters == []


def test_publication_step_failing_for_good_compensates_in_reverse_then_unpublishes() -> None:
    state = succeed(succeed(publication()).state).state  # search_index, webhook done
    for _ in range(CONFIG.max_attempts - 1):
        state = fail(state).state
    failed = fail(state, error="HTTP 503")
    assert failed.state.status == "compensating"
    assert (
        failed.dead_letters
        and "newsletter failed after 3 attempts" in failed.dead_letters[0].reason
    )
    assert pending(failed.state) == "compensate:webhook:1"  # reverse order
    assert failed.commands == []
    state = succeed(failed.state).state
    assert pending(state) == "compensate:search_index:1"
    final = succeed(state)
    assert final.state.status == "failed"
    assert final.state.data["compensated"] == ["webhook", "search_index"]
    (unpublish,) = commands(final)
    assert isinstance(unpublish, UnpublishPost)
    assert unpublish.reason is not None and "newsletter failed" in unpublish.reason
    assert final.state.error is not None and "HTTP 503" in final.state.error


def test_first_step_failing_for_good_unpublishes_directly() -> None:
    state = publication()
    for _ in range(CONFIG.max_attempts - 1):
        state = fail(state).state
    final = fail(state)
    assert final.state.status == "failed"
    assert [type(c).__name__ for c in commands(final)] == ["UnpublishPost"]
    assert len(final.dead_letters) == 1


def test_a_compensation_failing_for_good_is_dead_lettered_and_the_rest_still_runs() -> None:
    state = succeed(succeed(publication()).state).state
    for _ in range(CONFIG.max_attempts):
        state = fail(state).state
    assert pending(state) == "compensate:webhook:1"
    for _ in range(CONFIG.max_attempts - 1):
        state = fail(state).state
        assert state.status == "compensating"
    broken = fail(state)
    assert len(broken.dead_letters) == 1
    assert broken.dead_letters[0].detail["compensation"] is True
    assert pending(broken.state) == "compensate:search_index:1"
    final = succeed(broken.state)
    assert final.state.status == "failed"
    assert final.state.data["compensation_failed"] == ["webhook"]
    assert [type(c).__name__ for c in commands(final)] == ["UnpublishPost"]


def test_operator_skip_moves_on_and_a_skipped_step_is_not_compensated() -> None:
    state = succeed(publication()).state  # search_index done, webhook waiting
    skipped = decide(state, OperatorAction("skip", "webhook down"), ctx()).state
    assert pending(skipped) == "activity:newsletter:1"
    assert skipped.data["skipped"] == ["webhook"]
    compensating = decide(skipped, OperatorAction("compensate"), ctx()).state
    assert pending(compensating) == "compensate:search_index:1"
    with pytest.raises(Refused, match="already compensating"):
        decide(compensating, OperatorAction("compensate"), ctx())
    final = succeed(compensating)
    assert final.state.status == "failed"
    assert final.state.data["compensated"] == ["search_index"]
    assert [type(c).__name__ for c in commands(final)] == ["UnpublishPost"]


def test_operator_retry_runs_the_waiting_attempt_now() -> None:
    state = fail(publication()).state
    timer = state.timer("activity:search_index:2")
    assert timer is not None
    assert timer.due_at > T0
    later = T0 + timedelta(milliseconds=10)
    retried = decide(state, OperatorAction("retry"), ctx(later)).state
    again = retried.timer("activity:search_index:2")
    assert again is not None
    assert again.due_at == later


def test_operator_actions_without_a_waiting_step_are_refused() -> None:
    state = publication().model_copy(update={"timers": []})  # the step is running now
    with pytest.raises(Refused, match="no step waiting"):
        decide(state, OperatorAction("retry"), ctx())
    with pytest.raises(Refused):
        decide(state, OperatorAction("skip"), ctx())


def test_operator_skip_of_a_compensation_goes_on_to_the_next() -> None:
    state = succeed(succeed(publication()).state).state
    state = decide(state, OperatorAction("compensate"), ctx()).state
    assert pending(state) == "compensate:webhook:1"
    skipped = decide(state, OperatorAction("skip"), ctx()).state
    assert pending(skipped) == "compensate:search_index:1"


def test_post_unpublished_meanwhile_compensates_without_unpublishing_again() -> None:
    state = succeed(publication()).state
    comp = decide(state, ev(PostUnpublished(reason="oops"), 8), ctx())
    assert pending(comp.state) == "compensate:search_index:1"
    final = succeed(comp.state)
    assert final.state.status == "failed"
    assert final.commands == []


def test_a_result_for_a_timer_that_is_gone_changes_nothing() -> None:
    state = publication()
    stale = decide(state, ActivityDone("activity:search_index:9", ok=False, error="x"), ctx())
    assert stale.state is state


def test_no_publication_workflow_without_steps() -> None:
    empty = Context(now=T0, config=WorkflowConfig(publication_steps=()))
    assert start(ev(PostPublished(), 3), empty) is None


# ------------------------------------------------------------------------- operator's view


def test_stuck_means_running_idle_past_the_threshold_and_nothing_scheduled() -> None:
    threshold = timedelta(minutes=10)
    waiting = started(PostSubmittedForReview()).state  # deadlines ahead: waiting, not stuck
    later = T0 + timedelta(minutes=30)
    assert not is_stuck(waiting, later, threshold)
    publishing = decide(waiting, ev(PostApproved(), 3), ctx()).state  # PublishPost sent
    assert not is_stuck(publishing, T0 + timedelta(minutes=5), threshold)
    assert is_stuck(publishing, later, threshold)  # no PostPublished came, nothing will move it
    done = decide(publishing, ev(PostPublished(), 4), ctx()).state
    assert not is_stuck(done, later, threshold)
    overdue = waiting.model_copy(update={"step": "x"})
    assert is_stuck(overdue, T0 + timedelta(hours=5), threshold)  # its timers are in the past
