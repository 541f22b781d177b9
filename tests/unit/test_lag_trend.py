"""The trend arithmetic of `esctl lag --watch` (esctl.lag_trend): samples in, trends out; and
the watch loop when a refresh fails (the lag report stubbed: the real one runs in
tests/integration/test_lag_watch_trend.py)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import esctl.lag
import shared.kafka.lag
from esctl.app import app
from esctl.lag_trend import (
    CATCHING_UP,
    CAUGHT_UP,
    FALLING,
    FALLING_BEHIND,
    NO_OFFSETS,
    RISING,
    STALLED,
    STEADY,
    GroupSample,
    PartitionSample,
    Trend,
    TrendTracker,
    duration,
)
from shared.errors import InfrastructureUnavailable
from shared.kafka.errors import KafkaAccessDenied
from shared.kafka.lag import LagReport, PartitionLag


def sample(
    at: float, *parts: tuple[int | None, int], lag_seconds: float | None = None
) -> GroupSample:
    """A sample: (committed, log_end) per partition of topic t; lag = log_end - committed."""
    return GroupSample(
        at,
        {
            ("t", i): PartitionSample(c, end, None if c is None else end - c)
            for i, (c, end) in enumerate(parts)
        },
        lag_seconds,
    )


def feed(tracker: TrendTracker, *samples: GroupSample, group: str = "g") -> list[Trend]:
    return [tracker.update({group: s})[group] for s in samples]


def test_the_first_refresh_has_no_trend_only_the_lag() -> None:
    (first,) = feed(TrendTracker(), sample(0, (10, 50), (0, 20), lag_seconds=3.5))
    assert (first.lag, first.lag_seconds) == (60, 3.5)
    assert first.change is None and first.window_change is None
    assert first.consumed_per_s is None and first.produced_per_s is None
    assert first.direction is None and first.state is None and first.words() == ""
    assert all(
        v is None
        for k, v in first.as_dict().items()
        if k not in ("group_lag", "group_lag_seconds", "group_offsets_reset")
    )


def test_a_group_at_zero_is_caught_up_from_the_first_refresh() -> None:
    assert feed(TrendTracker(), sample(0, (50, 50)))[0].words() == CAUGHT_UP


def test_producing_without_consuming_is_falling_behind_with_nothing_consumed() -> None:
    trends = feed(TrendTracker(), sample(0, (10, 50)), sample(2, (10, 70)), sample(4, (10, 90)))
    last = trends[-1]
    assert (last.lag, last.change, last.window_change) == (80, 20, 40)
    assert (last.consumed_per_s, last.produced_per_s) == (0, 10)
    assert (last.direction, last.state) == (RISING, FALLING_BEHIND)
    assert last.caught_up_in_s is None
    assert last.words() == "↑ falling behind, nothing consumed"


def test_consuming_faster_than_producing_is_catching_up_with_an_estimate() -> None:
    # 100 behind; consumes 30/s, 10/s written: the lag falls 20/s, 40 left -> 2 s
    trends = feed(TrendTracker(), sample(0, (0, 100)), sample(3, (90, 130)))
    last = trends[-1]
    assert (last.lag, last.change, last.window_change) == (40, -60, -60)
    assert (last.consumed_per_s, last.produced_per_s) == (30, 10)
    assert (last.direction, last.state) == (FALLING, CATCHING_UP)
    assert last.caught_up_in_s == pytest.approx(2.0)
    assert last.words() == "↓ catching up, caught up in ~2s"


def test_reaching_zero_is_caught_up_with_the_arrow_of_the_fall() -> None:
    last = feed(TrendTracker(), sample(0, (0, 100)), sample(1, (100, 100)))[-1]
    assert (last.lag, last.direction, last.state, last.caught_up_in_s) == (
        0,
        FALLING,
        CAUGHT_UP,
        None,
    )
    assert last.words() == "↓ caught up"


def test_an_unchanged_lag_is_steady_while_consumed_and_stalled_when_not() -> None:
    keeping_pace = feed(TrendTracker(), sample(0, (0, 10)), sample(1, (5, 15)))[-1]
    assert (keeping_pace.direction, keeping_pace.state) == (STEADY, STEADY)
    assert keeping_pace.words() == "→ steady"
    idle = feed(TrendTracker(), sample(0, (0, 10)), sample(1, (0, 10)))[-1]
    assert (idle.direction, idle.state) == (STEADY, STALLED)
    assert idle.words() == "→ stalled"


def test_the_window_covers_the_last_window_s_seconds_and_the_change_the_last_refresh() -> None:
    tracker = TrendTracker(window_s=10)
    # the lag rises for 20 s (1/s), then falls for 6 s (2/s)
    samples = [sample(t, (0, t)) for t in range(0, 21, 2)]
    samples += [sample(t, (2 * (t - 20), 20 + 0 * t)) for t in range(22, 27, 2)]
    trends = feed(tracker, *samples)
    rising = trends[10]  # t=20: over 10 s, +10
    assert (rising.window_change, rising.window_span_s, rising.direction) == (10, 10, RISING)
    last = trends[-1]  # t=26: lag 20 - 12 = 8; 10 s ago (t=16) it was 16
    assert (last.lag, last.change, last.window_change, last.window_span_s) == (8, -4, -8, 10)
    assert last.direction == FALLING
    assert last.consumed_per_s == pytest.approx(1.2) and last.produced_per_s == pytest.approx(0.4)
    assert last.caught_up_in_s == pytest.approx(10.0)
    assert last.minute_change == 8  # the context: since the start (younger than a minute)


def test_the_minute_change_covers_a_minute_the_trend_only_the_window() -> None:
    """A group 100 behind for a long while, that consumes 50 in the last 10 s: over the window
    it is catching up; over the last minute its lag is down 50; older refreshes are dropped."""
    tracker = TrendTracker(window_s=10)
    trends = feed(
        tracker, *[sample(t, (0, 100)) for t in range(0, 111, 10)], sample(120, (50, 100))
    )
    last = trends[-1]
    assert (last.minute_change, last.window_change, last.state) == (-50, -50, CATCHING_UP)
    assert trends[-2].minute_change == 0 and trends[-2].state == STALLED
    assert [p.at for p in tracker._series["g"].points] == [60, 70, 80, 90, 100, 110, 120]


def test_a_refresh_older_than_the_window_is_still_the_base() -> None:
    """Refreshes further apart than the window: the trend is over the last interval."""
    last = feed(TrendTracker(window_s=5), sample(0, (0, 10)), sample(30, (0, 40)))[-1]
    assert (last.window_change, last.window_span_s, last.produced_per_s) == (30, 30, 1)


def test_offsets_going_back_count_no_progress_and_are_flagged() -> None:
    """The topic deleted and created again: the log end falls to a new counter; the group's
    offsets reset to the start: its committed offset falls. Neither is a negative rate."""
    tracker = TrendTracker()
    recreated = feed(tracker, sample(0, (90, 100)), sample(2, (0, 6)))[-1]
    assert recreated.reset and (recreated.consumed_per_s, recreated.produced_per_s) == (0, 0)
    assert (recreated.lag, recreated.change, recreated.state) == (6, -4, CATCHING_UP)
    assert recreated.words().endswith("(offsets went back: reset or topic recreated)")
    after = feed(tracker, sample(4, (4, 10)))[-1]  # counting again from the new offsets
    assert not after.reset
    assert (after.consumed_per_s, after.produced_per_s) == (1, 1)  # 4 and 4 over 4 s


def test_partitions_appearing_or_without_a_committed_offset_count_no_step() -> None:
    tracker = TrendTracker()
    trends = feed(
        tracker,
        sample(0, (None, 5)),  # a member holds it, nothing committed yet
        sample(1, (None, 8)),
        sample(2, (3, 8), (0, 4)),  # committed at last; a second partition appears
        sample(3, (8, 8), (2, 6)),
    )
    assert [t.lag for t in trends] == [None, None, 9, 4]
    assert [t.state for t in trends[:2]] == [NO_OFFSETS, NO_OFFSETS]
    assert trends[1].produced_per_s == 3  # the log end moved even with nothing committed
    assert trends[2].change is None and trends[2].direction is None  # the first lag known
    assert trends[2].consumed_per_s == 0  # None -> 3 is not a step we can measure
    assert (trends[3].change, trends[3].direction) == (-5, FALLING)
    assert (trends[3].consumed_per_s, trends[3].produced_per_s) == (7, 2)  # over 1 s


def test_a_group_that_disappears_starts_again_when_it_comes_back() -> None:
    tracker = TrendTracker()
    feed(tracker, sample(0, (0, 10)), sample(1, (0, 20)))
    assert tracker.update({"other": sample(2, (0, 1))})["other"].direction is None
    again = tracker.update({"g": sample(3, (0, 30))})["g"]
    assert again.change is None and again.direction is None


def test_groups_are_tracked_apart() -> None:
    tracker = TrendTracker()
    tracker.update({"a": sample(0, (0, 10)), "b": sample(0, (0, 10))})
    trends = tracker.update({"a": sample(1, (0, 20)), "b": sample(1, (10, 10))})
    assert (trends["a"].state, trends["b"].state) == (FALLING_BEHIND, CAUGHT_UP)


def test_a_clock_that_does_not_advance_starts_the_group_again() -> None:
    tracker = TrendTracker()
    feed(tracker, sample(5, (0, 10)))
    assert feed(tracker, sample(5, (0, 20)))[0].direction is None  # no division by zero


def test_the_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="window_s"):
        TrendTracker(window_s=0)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.2, "~1s"), (40.4, "~40s"), (99, "~99s"), (100, "~2m"), (725, "~12m"), (6000, "~2h")],
)
def test_durations_are_estimates(seconds: float, text: str) -> None:
    assert duration(seconds) == text


# ------------------------------------------------------------------ the watch loop's failures


class _Script:
    """Stands for shared.kafka.lag.lag_report: answers (or raises) from a list, then Ctrl-C."""

    def __init__(self, *steps: object) -> None:
        self.steps = list(steps)

    async def __call__(self, *args: object, **kwargs: object) -> object:
        if not self.steps:
            raise KeyboardInterrupt
        step = self.steps.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step


def _run_watch(monkeypatch: pytest.MonkeyPatch, script: _Script) -> tuple[int, str, str]:
    monkeypatch.setattr(esctl.lag, "reach_kafka", lambda bootstrap: None)
    monkeypatch.setattr(shared.kafka.lag, "lag_report", script)
    result = CliRunner().invoke(app, ["lag", "--watch", "0.01", "--groups-only"])
    return result.exit_code, result.stdout, result.stderr


def _report(committed: int, end: int) -> LagReport:
    row = PartitionLag("g", "t", 0, committed, end, end - committed, 1.0)
    return LagReport(rows=[row], groups=["g"])


def test_a_watch_says_a_failed_refresh_in_one_line_and_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Kafka failing between two refreshes: one line on stderr, the next refresh shows the lag
    and its change since the last refresh that worked; Ctrl-C ends it with exit code 0."""
    down = InfrastructureUnavailable("cannot read the consumer groups: KafkaConnectionError")
    code, out, err = _run_watch(monkeypatch, _Script(_report(0, 10), down, _report(0, 30)))
    assert code == 0, err
    assert err.splitlines() == [
        "error: cannot read the consumer groups: KafkaConnectionError; still watching, next try "
        "in 0.01s"
    ]
    refreshes = [b for b in out.split("consumer lag at ") if b]
    assert len(refreshes) == 2
    assert refreshes[1].splitlines()[2].split()[:4] == ["g", "30", "1.0", "+20"]  # since 10


def test_a_watch_ends_on_an_error_that_retrying_does_not_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Refused (not authorized, say): one line and exit code 2, not a retry every refresh."""
    denied = KafkaAccessDenied("User:alice", "group g", "describe")
    code, _out, err = _run_watch(monkeypatch, _Script(_report(0, 10), denied))
    assert code == 2
    assert len(err.splitlines()) == 1 and "still watching" not in err
