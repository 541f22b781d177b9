"""Is a consumer group catching up? The arithmetic behind `esctl lag --watch`, pure (no I/O).

Each refresh of the watch gives, per group, a `GroupSample`: when it was taken (seconds on a
monotonic clock) and, per partition, the committed offset, the log-end offset and the lag in
records; and the group's lag in seconds (its oldest waiting record). `TrendTracker.update` keeps
the samples of each group over a sliding window and answers, per group, a `Trend`:

* `lag`: the group's lag in records (the sum over the partitions whose lag is known; None when
  none is: nothing committed yet), `lag_seconds` the largest lag in seconds of its partitions;
* `change`: the lag now minus the lag at the previous refresh; `minute_change` the same over the
  last minute (since the oldest refresh at most `MINUTE_S` old that knew the lag: since the start
  of the watch while it is younger), the context; `window_change` the same over the window, the
  trend: `window_s` (10 s by default; since the previous refresh when that is older;
  `window_span_s` says which span it covers). A short window, so that the trend turns within
  seconds of the group turning (a minute-long one said "falling behind" for two refreshes of
  a group consuming at 90 records/s, and gave 8 minutes for what took 40 s); a consumer that
  commits every few seconds moves it by that much, a longer `window_s` smooths that;
* `consumed_per_s` / `produced_per_s`: how fast the committed offsets and the log-end offsets
  advanced over the window (offsets per second, transaction markers included). A partition whose
  offset went backwards (the group's offsets reset, the topic deleted and created again) or
  that has no earlier value counts 0 for that step, like a counter reset, and `reset` says so;
* `direction`: "rising", "falling" or "steady" (the lag over the window), None on the first
  refresh; `state` the words for it: "caught up" (lag 0), "catching up", "falling behind",
  "steady" (lag unchanged, being consumed), "stalled" (lag unchanged above 0, nothing consumed),
  "no offsets committed" (no lag known); `caught_up_in_s` the lag divided by the rate it falls at.

A group missing from an update (deleted, or no longer asked about) is forgotten: if it comes back,
its trend starts again from a first refresh.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

#: The span `window_change`, the rates, the trend and the estimate cover.
DEFAULT_WINDOW_S = 10.0
#: The span of `minute_change`.
MINUTE_S = 60.0

RISING, FALLING, STEADY = "rising", "falling", "steady"
ARROWS = {RISING: "↑", FALLING: "↓", STEADY: "→", None: ""}
CAUGHT_UP = "caught up"
CATCHING_UP = "catching up"
FALLING_BEHIND = "falling behind"
STALLED = "stalled"
NO_OFFSETS = "no offsets committed"


@dataclass(frozen=True)
class PartitionSample:
    committed: int | None
    log_end: int
    lag: int | None


@dataclass(frozen=True)
class GroupSample:
    """One group at one refresh. `partitions` is keyed by (topic, partition)."""

    at: float
    partitions: Mapping[tuple[str, int], PartitionSample]
    lag_seconds: float | None = None

    @property
    def lag(self) -> int | None:
        known = [p.lag for p in self.partitions.values() if p.lag is not None]
        return sum(known) if known else None


@dataclass(frozen=True)
class Trend:
    lag: int | None
    lag_seconds: float | None
    change: int | None = None
    minute_change: int | None = None
    window_change: int | None = None
    window_span_s: float | None = None
    consumed_per_s: float | None = None
    produced_per_s: float | None = None
    direction: str | None = None
    state: str | None = None
    caught_up_in_s: float | None = None
    reset: bool = False

    @property
    def arrow(self) -> str:
        return ARROWS[self.direction]

    def words(self) -> str:
        """The trend for a person: `↓ catching up, caught up in ~40s`, `↑ falling behind`;
        on a first refresh only what one sample tells (`caught up`), often nothing (``)."""
        text = " ".join(w for w in (self.arrow, self.state) if w)
        if self.caught_up_in_s is not None:
            text += f", caught up in {duration(self.caught_up_in_s)}"
        elif (
            self.state == FALLING_BEHIND and self.consumed_per_s == 0 and self.lag
        ):  # rising and nobody reads: the first thing on-call wants to know
            text += ", nothing consumed"
        if self.reset:
            text += " (offsets went back: reset or topic recreated)"
        return text

    def as_dict(self) -> dict[str, Any]:
        """The `--json --watch` fields of every row of the group."""
        return {
            "group_lag": self.lag,
            "group_lag_seconds": self.lag_seconds,
            "group_lag_change": self.change,
            "group_lag_change_1m": self.minute_change,
            "group_lag_change_window": self.window_change,
            "group_window_s": _round(self.window_span_s),
            "group_consumed_per_s": _round(self.consumed_per_s),
            "group_produced_per_s": _round(self.produced_per_s),
            "group_trend": self.direction,
            "group_state": self.state,
            "group_caught_up_in_s": _round(self.caught_up_in_s),
            "group_offsets_reset": self.reset,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def duration(seconds: float) -> str:
    """`~40s`, `~12m`, `~3h`: an estimate, so no more precision than that."""
    if seconds < 100:
        return f"~{max(1, round(seconds))}s"
    if seconds < 100 * 60:
        return f"~{round(seconds / 60)}m"
    return f"~{round(seconds / 3600)}h"


@dataclass(frozen=True)
class _Point:
    at: float
    lag: int | None
    consumed: int  # cumulative offsets committed since the first sample (resets count 0)
    produced: int  # cumulative offsets written since the first sample (resets count 0)


@dataclass
class _Series:
    last: GroupSample
    points: deque[_Point] = field(default_factory=deque)


def _advance(before: int | None, after: int | None) -> tuple[int, bool]:
    """How far an offset moved forward between two samples, and whether it went back."""
    if before is None or after is None:
        return 0, False
    if after < before:
        return 0, True
    return after - before, False


class TrendTracker:
    """The samples of every watched group over the last minute (or `window_s`, if longer)."""

    def __init__(self, window_s: float = DEFAULT_WINDOW_S) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self.window_s = window_s
        self._series: dict[str, _Series] = {}

    def update(self, samples: Mapping[str, GroupSample]) -> dict[str, Trend]:
        """Add one refresh (every group it shows) and return each group's trend."""
        for gone in set(self._series) - set(samples):
            del self._series[gone]
        return {group: self._add(group, sample) for group, sample in samples.items()}

    def _add(self, group: str, sample: GroupSample) -> Trend:
        series = self._series.get(group)
        if series is None or sample.at <= series.last.at:
            # first refresh of the group (or a clock that did not advance: start again)
            self._series[group] = _Series(sample, deque([_Point(sample.at, sample.lag, 0, 0)]))
            return _first(sample)
        consumed = produced = 0
        reset = False
        for key, now in sample.partitions.items():
            before = series.last.partitions.get(key)
            if before is None:  # a partition new to the group (or to the watch): no step yet
                continue
            step, back = _advance(before.committed, now.committed)
            consumed += step
            reset = reset or back
            step, back = _advance(before.log_end, now.log_end)
            produced += step
            reset = reset or back
        previous = series.points[-1]
        point = _Point(
            sample.at, sample.lag, previous.consumed + consumed, previous.produced + produced
        )
        series.points.append(point)
        series.last = sample
        # drop what is older than both spans, but keep the previous refresh whatever its age
        keep = max(self.window_s, MINUTE_S)
        while len(series.points) > 2 and series.points[0].at < sample.at - keep:
            series.points.popleft()
        window = _base(series.points, sample.at - self.window_s)
        minute = _base(series.points, sample.at - MINUTE_S)
        trend = _trend(sample, previous, window, point, reset=reset)
        if minute.lag is not None and point.lag is not None:
            trend = replace(trend, minute_change=point.lag - minute.lag)
        return trend


def _base(points: deque[_Point], since: float) -> _Point:
    """What a span ending now starts from: the oldest refresh since `since` that knew the lag
    (a group with nothing committed at first has a trend from its second refresh with a lag);
    the previous refresh when none is that recent; the oldest one when none knew the lag."""
    before = list(points)[:-1]
    recent = [p for p in before if p.at >= since] or before[-1:]
    known = [p for p in recent if p.lag is not None]
    return known[0] if known else recent[0]


def _first(sample: GroupSample) -> Trend:
    lag = sample.lag
    state = NO_OFFSETS if lag is None else CAUGHT_UP if lag == 0 else None
    return Trend(lag=lag, lag_seconds=sample.lag_seconds, state=state)


def _trend(
    sample: GroupSample, previous: _Point, base: _Point, now: _Point, *, reset: bool
) -> Trend:
    lag = now.lag
    span = now.at - base.at
    consumed_per_s = (now.consumed - base.consumed) / span
    produced_per_s = (now.produced - base.produced) / span
    common = Trend(
        lag=lag,
        lag_seconds=sample.lag_seconds,
        window_span_s=span,
        consumed_per_s=consumed_per_s,
        produced_per_s=produced_per_s,
        reset=reset,
    )
    if lag is None:
        return replace(common, state=NO_OFFSETS)
    change = None if previous.lag is None else lag - previous.lag
    if base.lag is None:  # the first lag known in the window: no trend from it yet
        return replace(common, change=change, state=CAUGHT_UP if lag == 0 else None)
    window_change = lag - base.lag
    direction = RISING if window_change > 0 else FALLING if window_change < 0 else STEADY
    caught_up_in_s = None
    if lag == 0:
        state = CAUGHT_UP
    elif direction == RISING:
        state = FALLING_BEHIND
    elif direction == FALLING:
        state = CATCHING_UP
        caught_up_in_s = lag / (-window_change / span)
    else:
        state = STALLED if consumed_per_s == 0 else STEADY
    return replace(
        common,
        change=change,
        window_change=window_change,
        direction=direction,
        state=state,
        caught_up_in_s=caught_up_in_s,
    )
