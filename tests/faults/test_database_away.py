"""A database that goes away (issue 19, "Build 3"): PostgreSQL restarted, then stopped for
`OUTAGE_S`, under projector and query load.

A PostgreSQL server of this test alone (never the session's), the projector and the query service
as real processes on it, events written at a steady rate onto the events topic (transactions, as
the command service writes them), and query load all the time: lists, single posts, stats, and
reads with a consistency token. Faults, in order: a fast restart (`pg_ctl stop -m fast`, start),
an immediate shutdown (a crash: relaxed commits not yet in the WAL are lost) and start, then a
stop of `OUTAGE_S` seconds and a start. What must hold:

* every query gets an answer: 200/404 while the database answers, and while it is down 503
  `read_store_unavailable` (problem+json, Retry-After): never a 500, never no answer (each
  request is bounded by the client at `REQUEST_TIMEOUT_S`; the longest answer while down is
  printed, not asserted);
* /health of both services is 503 with `reason: read_store_unavailable` while it is down, and 200
  again after;
* both recover without a restart (the same processes);
* the projector resumes from its stored positions: at the end the read model is the fold of the
  log (every row, each event once in the event index) and the log itself is clean (the checker's
  counts: no duplicated event, versions 1..n).

The answers are counted by phase and status and printed with the checker's summary line.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from esctl.localstack.postgres import LocalPostgres
from tests.e2e.test_read_side import stored_positions
from tests.faults.read_side import (
    applied_beyond,
    assert_recovered,
    healthy_again,
    judged,
    read_side_under_load,
    table,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

#: how long PostgreSQL stays stopped in the second fault (the issue's figure)
OUTAGE_S = 30.0


async def test_postgresql_restarted_and_stopped_under_load_queries_503_projector_resumes(
    kafka_bootstrap: str, own_postgres: LocalPostgres, tmp_path: Path
) -> None:
    pg = own_postgres
    async with read_side_under_load(kafka_bootstrap, pg.url, tmp_path, "away") as side:
        phase, services = side.phase, side.services
        # 1. restarts under load: fast (sessions terminated), then immediate (a crash)
        phase.set("restart fast")
        await asyncio.to_thread(pg.stop, "fast")
        await asyncio.to_thread(pg.start)
        phase.set("recovering")
        await applied_beyond(pg.url, await stored_positions(pg.url), services)
        phase.set("restart immediate")
        seen = await stored_positions(pg.url)
        await asyncio.to_thread(pg.stop, "immediate")
        await asyncio.to_thread(pg.start)  # crash recovery
        phase.set("recovering")
        recovered = await stored_positions(pg.url)
        await healthy_again(services)
        await applied_beyond(pg.url, seen, services)

        # 2. stopped for OUTAGE_S under load, then started
        phase.set("stopping")
        before_outage = await stored_positions(pg.url)
        await asyncio.to_thread(pg.stop, "fast")
        phase.set("down")
        await asyncio.sleep(OUTAGE_S)
        phase.set("starting")
        await asyncio.to_thread(pg.start)
        phase.set("back")
        await healthy_again(services)
        await applied_beyond(pg.url, before_outage, services)
        await asyncio.sleep(2)  # answers after the recovery, counted as "back"

    verdict = await judged(kafka_bootstrap, side)
    load = side.load
    lost_in_crash = sum(seen.values()) - sum(recovered.values())
    down = [a for a in load.answers if a.phase == "down"]
    down_health = [h for h in load.health if h[0] == "down"]
    print(  # noqa: T201  # the counts are the test's output
        f"database away: {len(load.answers)} query answers, by phase:\n{table(load.answers)}\n"
        f"  longest answer while down: {max((a.seconds for a in down), default=0):.3f}s; "
        f"/health polls while down: {Counter((h[1], h[2]) for h in down_health)}; "
        f"offsets committed but lost in the crash, re-applied from Kafka: {lost_in_crash}"
    )

    assert_recovered(side, verdict)
    assert down, "no query was answered while the database was down"
    assert {(a.status, a.code) for a in down} == {(503, "read_store_unavailable")}
    assert {h[1] for h in down_health} == {"projector", "query"}
    assert all(h[2] == 503 and h[3].startswith("read_store_unavailable") for h in down_health), (
        down_health[:4]
    )
    assert any(a.phase == "back" and a.status == 200 for a in load.answers)
