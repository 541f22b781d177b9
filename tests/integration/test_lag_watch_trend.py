"""`esctl lag --watch` answers "is it catching up": the real command (the venv's `esctl`), its
standard output a pipe, against a real broker, while the test writes to a topic nobody reads and
then a real consumer of the group reads and commits.

No timing is asserted: each step waits (a bounded number of refreshes) for the first refresh that
shows what the step did, and the trend of that refresh follows from the offsets alone. The window
is 1 s, and between steps the test waits for `stalled` (nothing moved for a whole window), so
that the window of the refresh after a step holds nothing from before the previous step.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition

from shared.kafka import make_consumer
from tests.conftest import TopicFactory, unique
from tests.kafka_helpers import produce

pytestmark = pytest.mark.integration

ESCTL = Path(sys.executable).with_name("esctl")  # the console script `make install` puts there
#: A bound on the refreshes a step may take to show (each takes 0.5 s and a little more).
MAX_REFRESHES = 120


@dataclass
class Refresh:
    """What one refresh said of the test's group."""

    lag: int | None
    change: str
    trend: str
    state: str | None
    partitions: list[tuple[int, int | None, int]]  # (partition, committed, log end)
    raw: str


class Watch:
    """`esctl lag --watch 0.5 --window 1 --group G [--json]` in a subprocess, read refresh by
    refresh from its standard output (a pipe)."""

    def __init__(self, proc: asyncio.subprocess.Process, group: str, as_json: bool) -> None:
        self.proc, self.group, self.as_json = proc, group, as_json
        self.seen: list[Refresh] = []

    async def _line(self) -> str:
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout=60)
        except TimeoutError:
            raise AssertionError("esctl lag --watch printed no line within 60 s") from None
        assert line, f"esctl lag --watch ended: {await self._stderr()}"
        return line.decode().rstrip("\n")

    async def _stderr(self) -> str:
        assert self.proc.stderr is not None
        return (await self.proc.stderr.read()).decode()

    async def next(self) -> Refresh:
        refresh = await (self._next_json() if self.as_json else self._next_text())
        self.seen.append(refresh)
        return refresh

    async def _next_json(self) -> Refresh:
        raw = await self._line()
        rows = [r for r in json.loads(raw) if r["group"] == self.group]
        assert rows, raw
        first = rows[0]
        # every row of the group carries the group's figures, the old fields unchanged
        keys = {"group", "topic", "partition", "committed", "log_end", "lag", "lag_seconds"}
        keys |= {"group_lag_change_1m", "group_consumed_per_s", "group_produced_per_s"}
        assert all(keys <= r.keys() and r["group_lag"] == first["group_lag"] for r in rows)
        change = first["group_lag_change"]
        return Refresh(
            lag=first["group_lag"],
            change="-" if change is None else f"{change:+d}" if change else "0",
            trend=first["group_trend"] or "",
            state=first["group_state"],
            partitions=[(r["partition"], r["committed"], r["log_end"]) for r in rows],
            raw=raw,
        )

    async def _next_text(self) -> Refresh:
        title = await self._line()
        assert title.startswith("consumer lag at "), title
        summary = await self._section()
        partitions = await self._section()
        raw = "\n".join([title, *summary, "", *partitions])
        # GROUP LAG LAG-SECONDS CHANGE CHANGE-1M CONSUMED/S PRODUCED/S TREND (free text, last)
        assert summary[0].split() == [
            "GROUP",
            "LAG",
            "LAG-SECONDS",
            "CHANGE",
            "CHANGE-1M",
            "CONSUMED/S",
            "PRODUCED/S",
            "TREND",
        ], raw
        (row,) = [r for r in summary[1:] if r.split()[0] == self.group]
        cells = row.split(maxsplit=7)
        assert partitions[0].split()[:3] == ["GROUP", "TOPIC", "PARTITION"], raw
        parts = [p.split() for p in partitions[1:] if p.split()[0] == self.group]
        return Refresh(
            lag=None if cells[1] == "-" else int(cells[1]),
            change=cells[3],
            trend="" if cells[7] == "-" else cells[7],  # `-`: an empty cell
            state=None,
            partitions=[(int(p[2]), None if p[3] == "-" else int(p[3]), int(p[4])) for p in parts],
            raw=raw,
        )

    async def _section(self) -> list[str]:
        lines = []
        while line := await self._line():
            lines.append(line)
        return lines

    async def until(self, what: str, shows: Callable[[Refresh], bool]) -> Refresh:
        for _ in range(MAX_REFRESHES):
            refresh = await self.next()
            if shows(refresh):
                return refresh
        raise AssertionError(f"no refresh showed {what}; the last:\n{self.seen[-1].raw}")

    async def stop(self) -> tuple[int, str]:
        """Ctrl-C, as a person ends it: the exit code and standard error."""
        self.proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout=30)
        except TimeoutError:
            raise AssertionError("esctl lag --watch did not end on SIGINT") from None
        assert self.proc.returncode is not None
        return self.proc.returncode, await self._stderr()


@pytest.fixture
async def start_watch(kafka_bootstrap: str) -> AsyncIterator[Callable[..., Any]]:
    procs: list[asyncio.subprocess.Process] = []
    # as in a shell pipe: stdout is not a terminal, and nothing asks for unbuffered output
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env["KAFKA_BOOTSTRAP_SERVERS"] = kafka_bootstrap

    async def start(group: str, *extra: str) -> Watch:
        proc = await asyncio.create_subprocess_exec(
            str(ESCTL),
            "lag",
            "--watch",
            "0.5",
            "--window",
            "1",
            "--group",
            group,
            *extra,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        procs.append(proc)
        return Watch(proc, group, as_json="--json" in extra)

    yield start
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def consume(bootstrap: str, group: str, tp: TopicPartition, start: int, count: int) -> int:
    """A member of `group` reads `count` records of `tp` from `start`, then commits after them
    (as a consumer does); the offset committed."""
    consumer = make_consumer(bootstrap, group_id=group)
    await consumer.start()
    try:
        consumer.assign([tp])
        consumer.seek(tp, start)
        read: list[Any] = []
        for _ in range(600):  # 100 ms each: a minute at most
            batch = await consumer.getmany(tp, timeout_ms=100, max_records=count - len(read))
            read.extend(batch.get(tp, []))
            if len(read) >= count:
                break
        assert len(read) == count, f"read {len(read)} of {count} records"
        await consumer.commit({tp: read[-1].offset + 1})
        return int(read[-1].offset + 1)
    finally:
        await consumer.stop()


@pytest.mark.parametrize("output", ["table", "json"])
async def test_lag_watch_shows_the_lag_rising_then_catching_up_then_caught_up(
    kafka_bootstrap: str, make_topic: TopicFactory, start_watch: Any, output: str
) -> None:
    """Piped, `esctl lag --watch` says per group: no trend on its first refresh, `stalled` while
    nothing moves, `falling behind` (nothing consumed) while records are written and nobody
    reads, `catching up` with an estimate while a consumer reads, `caught up` at lag 0; every
    refresh has the partitions (the table below, the rows with --json). Ctrl-C ends it, exit 0."""
    topic = await make_topic("lag-trend")
    group = unique("lag-trend-group")
    tp = TopicPartition(topic, 0)
    await produce(kafka_bootstrap, topic, [(b"k", b"v")] * 100)
    committed = await consume(kafka_bootstrap, group, tp, 0, 20)  # 80 behind
    watch = await start_watch(group, *(["--json"] if output == "json" else []))

    first = await watch.next()
    assert (first.lag, first.change, first.trend) == (80, "-", "")
    assert first.partitions == [(0, 20, 100)]
    stalled = await watch.until("stalled", lambda r: "stalled" in r.trend + str(r.state))
    assert (stalled.lag, stalled.change) == (80, "0")

    await produce(kafka_bootstrap, topic, [(b"k", b"v")] * 30)  # nobody reads
    rising = await watch.until("the 30 new records", lambda r: r.partitions == [(0, 20, 130)])
    assert (rising.lag, rising.change) == (110, "+30")
    if output == "json":
        assert (rising.trend, rising.state) == ("rising", "falling behind")
    else:
        assert rising.trend == "↑ falling behind, nothing consumed"
    await watch.until("stalled", lambda r: "stalled" in r.trend + str(r.state))

    committed = await consume(kafka_bootstrap, group, tp, committed, 50)  # a member reads
    falling = await watch.until("the 50 read", lambda r: r.partitions == [(0, 70, 130)])
    assert (falling.lag, falling.change) == (60, "-50")
    if output == "json":
        assert (falling.trend, falling.state) == ("falling", "catching up")
        row = json.loads(falling.raw)[0]
        assert row["group_caught_up_in_s"] > 0 and row["group_consumed_per_s"] > 0
    else:
        assert falling.trend.startswith("↓ catching up, caught up in ~"), falling.raw

    await consume(kafka_bootstrap, group, tp, committed, 60)  # the rest
    done = await watch.until("the rest read", lambda r: r.partitions == [(0, 130, 130)])
    assert (done.lag, done.change) == (0, "-60")
    if output == "json":
        assert (done.trend, done.state) == ("falling", "caught up")
    else:
        assert done.trend == "↓ caught up"

    code, err = await watch.stop()
    assert code == 0, err
    assert "Traceback" not in err
