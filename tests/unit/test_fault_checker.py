"""The fault tests' checker (tests/faults/checker.py) finds each kind of wrong history."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.messages.results import CommandOutcome, EventPosition
from tests.faults.checker import LoggedEvent, Sent, command_id_for, judge, longest_without_answer


def accepted(command_id: uuid.UUID, *positions: tuple[int, int]) -> CommandOutcome:
    return CommandOutcome(
        command_id=command_id,
        status="accepted",
        events=[
            EventPosition(type="PostCreated", aggregate_version=1, partition=p, offset=o)
            for p, o in positions
        ],
    )


def event(command_id: uuid.UUID, aggregate: str, version: int, offset: int) -> LoggedEvent:
    return LoggedEvent(command_id, uuid.uuid4(), aggregate, version, 0, offset)


def test_a_clean_history_has_no_problem_and_counts_each_answer() -> None:
    a, b, c, d = (uuid.uuid4() for _ in range(4))
    sent = [
        Sent(a, "p1", "accepted"),
        Sent(b, "p1", "rejected"),
        Sent(c, "p2", "failed"),
        Sent(d, "p2", "unknown"),
    ]
    outcomes = [
        accepted(a, (0, 0)),
        CommandOutcome(command_id=b, status="rejected", code="x"),
        accepted(d, (0, 1)),
        CommandOutcome(command_id=a, status="accepted", duplicate=True),  # a retry's answer
    ]
    verdict = judge(sent, outcomes, [event(a, "p1", 1, 0), event(d, "p2", 1, 1)])
    assert verdict.problems() == []
    assert (verdict.acknowledged, verdict.rejected, verdict.failed, verdict.unknown) == (1, 1, 1, 1)
    assert verdict.unknown_in_log == {"accepted": 1}
    assert "lost=0 duplicated=0 aborted_reads=0" in verdict.summary()


def test_an_acknowledged_command_without_its_events_is_lost() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    sent = [Sent(a, "p1", "accepted"), Sent(b, "p2", "accepted")]
    verdict = judge(sent, [accepted(a, (0, 0)), accepted(b, (0, 1))], [event(a, "p1", 1, 0)])
    assert verdict.lost == [b]
    no_outcome = judge([Sent(a, "p1", "accepted")], [], [event(a, "p1", 1, 0)])
    assert no_outcome.lost == [a]


def test_two_outcomes_an_event_twice_or_events_beyond_the_outcome_are_duplicates() -> None:
    a = uuid.uuid4()
    twice = judge([Sent(a, "p1", "accepted")], [accepted(a, (0, 0))] * 2, [event(a, "p1", 1, 0)])
    assert len(twice.duplicated) == 1
    e = event(a, "p1", 1, 0)
    same_id = LoggedEvent(a, e.event_id, "p1", 2, 0, 1)
    assert len(judge([], [accepted(a, (0, 0), (0, 1))], [e, same_id]).duplicated) == 1
    extra = judge([], [accepted(a, (0, 0))], [e, event(a, "p1", 2, 1)])
    assert extra.duplicated == [f"command {a}: events beyond its outcome's"]


def test_events_of_a_command_answered_failed_or_rejected_are_aborted_reads() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    sent = [Sent(a, "p1", "failed"), Sent(b, "p2", "rejected")]
    verdict = judge(sent, [accepted(a, (0, 0))], [event(a, "p1", 1, 0), event(b, "p2", 1, 1)])
    assert verdict.aborted_reads == [a, b]
    told_rejected = judge([Sent(b, "p2", "rejected")], [accepted(b)], [])
    assert told_rejected.contradicted == [b]


def test_versions_must_be_one_to_n_per_aggregate() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    verdict = judge([], [], [event(a, "p1", 1, 0), event(b, "p1", 3, 1)])
    assert verdict.version_gaps == ["p1: [1, 3]"]


def test_the_longest_time_without_an_answer() -> None:
    sent = [
        Sent(uuid.uuid4(), "p", "accepted", first_sent_at=0.0, answered_at=1.0),
        Sent(uuid.uuid4(), "p", "accepted", first_sent_at=0.5, answered_at=7.5),
        Sent(uuid.uuid4(), "p", "accepted", first_sent_at=7.6, answered_at=8.0),
        Sent(uuid.uuid4(), "p", "unknown", first_sent_at=2.0),
    ]
    assert longest_without_answer(sent) == 6.5
    assert longest_without_answer([]) == 0.0


def test_command_ids_from_idempotency_keys_are_the_command_services() -> None:
    from command_service.api import _command_id  # noqa: PLC0415
    from shared.principal import Principal  # noqa: PLC0415

    caller = Principal("ada", frozenset({"author"}))
    assert _command_id("k1", caller, uuid.uuid4) == command_id_for("k1", "ada")


async def test_the_read_model_is_compared_with_the_fold_of_the_log(tmp_path: Path) -> None:
    """Equal after the projector's own store applied the log; a missed event, and a row changed
    behind the store's back, each show as a line."""
    from shared.kafka.records import InboundRecord  # noqa: PLC0415
    from shared.messages import encode_event  # noqa: PLC0415
    from shared.messages.blog import PostCreated, PostEdited  # noqa: PLC0415
    from shared.readmodel.pipeline import read_records  # noqa: PLC0415
    from shared.readmodel.store import ReadStore  # noqa: PLC0415
    from tests.faults.checker import read_model_mismatches  # noqa: PLC0415

    def record(offset: int, post: str, version: int, event: Any) -> InboundRecord:
        m = encode_event(
            event,
            event_id=uuid.uuid4(),
            aggregate_id=post,
            aggregate_version=version,
            occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
        )
        return InboundRecord("events", 0, offset, m.key, m.value, list(m.headers), 0)

    log = [
        record(0, "p1", 1, PostCreated(author_id="a", title="one", body="b", tags=["x"])),
        record(1, "p2", 1, PostCreated(author_id="a", title="two", body="b", tags=[])),
        record(2, "p1", 2, PostEdited(title="one, edited")),
    ]
    url = f"sqlite:///{tmp_path / 'read.sqlite3'}"
    store = ReadStore(url)
    try:
        gen = await store.migrate()
        events, _ = read_records(log[:2])
        await store.apply_batch(gen, 0, events, start_offset=0, next_offset=2)
    finally:
        await store.close()
    assert await read_model_mismatches(url, log[:2]) == []
    behind = await read_model_mismatches(url, log)
    assert "read model holds 2 events, the log 3" in behind
    assert any(line.startswith("post p1: read model") for line in behind)
