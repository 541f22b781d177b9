"""The read store's network (issue 19, item 2): Toxiproxy between the projector and the query
service on one side and PostgreSQL on the other, under projector and query load.

A PostgreSQL server of this test alone, a Toxiproxy proxy in front of it, and the projector and
the query service as real processes whose READ_STORE_URL is the proxy (a connect gives up after
`READ_STORE_CONNECT_TIMEOUT_S`, a statement after `READ_STORE_COMMAND_TIMEOUT_S`), under the
load of tests/faults/read_side.py: events written at a steady rate onto the events topic,
clients querying all the time. Faults on the PostgreSQL link, in order, each healed before the
next:

* latency: 200 ms, then 1 s added to every answer of the server (`latency`, downstream);
* a black hole: the server's answers held, never delivered, connections left open (`timeout`
  with timeout 0), for `BLACK_HOLE_S`;
* every connection reset (`reset_peer`, TCP RST) for `RESET_S`;
* a partition: the proxy disabled (connections closed, new ones refused) for `CUT_S`.

What must hold: every query gets an answer within the client's bound, never a 500; a slow link
is not taken for a gone one (no `read_store_unavailable` under latency); while the link is
black-holed, reset or cut every answer is 200/404 or 503 `read_store_unavailable`
(problem+json, Retry-After), and there are such answers (no query waits for the link to come
back); /health of both services answers 503 with `reason: read_store_unavailable` while the link
is black-holed or cut, and 200 after; both recover without a restart (the same processes); and
the fault checker finds the log clean and the read model the fold of the log, each event once
(the projector's batches whose commit reached the server but whose answer did not are applied
once: it resumes from the positions the database holds).

It prints the checker's line, the answers by phase and status with the longest answer of each
phase, and how long /health took to turn 503 and back.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest

from esctl.localstack.kafka import free_port
from esctl.localstack.postgres import LocalPostgres
from tests.e2e.harness import ServiceProcess
from tests.e2e.test_read_side import stored_positions
from tests.faults.read_side import (
    applied_beyond,
    assert_recovered,
    healthy_again,
    judged,
    read_side_under_load,
    table,
)
from tests.faults.test_network import wait_for_health
from tests.faults.toxiproxy import ToxiproxyServer

pytestmark = [pytest.mark.integration, pytest.mark.faults]

#: the services' READ_STORE_CONNECT_TIMEOUT_S and READ_STORE_COMMAND_TIMEOUT_S
CONNECT_TIMEOUT_S = 2
COMMAND_TIMEOUT_S = 3
#: how long the link has 200 ms, then 1 s of latency
LATENCY_S = (5.0, 10.0)
#: how long the link stays black-holed (at least until both /health answer 503)
BLACK_HOLE_S = 8.0
RESET_S = 5.0
CUT_S = 5.0
#: the phases in which the database cannot be reached: 200/404 or 503 read_store_unavailable
CUT_OFF = ("black hole", "reset", "disabled")


async def degraded_after(services: dict[str, ServiceProcess], since: float) -> float:
    """Seconds from `since` until /health of every service answers 503 read_store_unavailable."""
    await asyncio.gather(
        *(
            wait_for_health(
                svc,
                lambda s, b: s == 503 and b.get("reason") == "read_store_unavailable",
                f"/health of the {name} reporting the read store unavailable",
            )
            for name, svc in services.items()
        )
    )
    return time.monotonic() - since


async def recovered(store_url: str, services: dict[str, ServiceProcess], since: float) -> float:
    """Wait until both services are healthy and the projector applies events again: the
    seconds from `since` (the heal) until /health was 200."""
    await healthy_again(services)
    back = time.monotonic() - since
    await applied_beyond(store_url, await stored_positions(store_url), services)
    return back


async def test_postgresql_link_slowed_black_holed_reset_and_cut_services_degrade_and_recover(
    kafka_bootstrap: str,
    own_postgres: LocalPostgres,
    toxiproxy_server: ToxiproxyServer,
    tmp_path: Path,
) -> None:
    began = time.monotonic()
    pg = own_postgres
    listen = f"127.0.0.1:{free_port()}"
    proxy = toxiproxy_server.proxy("postgres", listen, f"127.0.0.1:{pg.port}")
    timings: dict[str, float] = {}
    async with read_side_under_load(
        kafka_bootstrap,
        pg.url,
        tmp_path,
        "pgnet",
        services_store_url=f"postgresql://postgres@{listen}/{pg.database}",
        READ_STORE_CONNECT_TIMEOUT_S=str(CONNECT_TIMEOUT_S),
        READ_STORE_COMMAND_TIMEOUT_S=str(COMMAND_TIMEOUT_S),
    ) as side:
        phase, services = side.phase, side.services
        # 1. latency on every answer of the server (one phase: at 1 s a query takes longer
        # than the toxic lasts, its answer would count as "moving")
        phase.set("latency")
        async with proxy.toxic("latency", latency=200):
            await asyncio.sleep(LATENCY_S[0])
        async with proxy.toxic("latency", latency=1000):
            await asyncio.sleep(LATENCY_S[1])
        phase.set("after latency")
        timings["/health 200 after latency"] = await recovered(pg.url, services, time.monotonic())

        # 2. a black hole: the server's answers never arrive, the connections stay open
        phase.set("black hole")
        started = time.monotonic()
        async with proxy.toxic("timeout", timeout=0):
            timings["/health 503 into black hole"] = await degraded_after(services, started)
            await asyncio.sleep(max(0.0, BLACK_HOLE_S - (time.monotonic() - started)))
        phase.set("after black hole")
        timings["/health 200 after black hole"] = await recovered(
            pg.url, services, time.monotonic()
        )

        # 3. every connection reset by the peer
        phase.set("reset")
        async with proxy.toxic("reset_peer", timeout=0):
            await asyncio.sleep(RESET_S)
        phase.set("after reset")
        timings["/health 200 after reset"] = await recovered(pg.url, services, time.monotonic())

        # 4. a partition: the proxy disabled, no connection at all
        phase.set("disabled")
        async with proxy.cut():
            await asyncio.sleep(CUT_S)
        phase.set("healed")
        timings["/health 200 after partition"] = await recovered(pg.url, services, time.monotonic())
        await asyncio.sleep(2)  # answers after the recovery, counted as "healed"

    verdict = await judged(kafka_bootstrap, side)
    load = side.load
    health_by_phase = Counter((h[0], h[1], h[2]) for h in load.health)
    print(  # noqa: T201  # the counts are the test's output
        f"read store network: {len(load.answers)} query answers, by phase:\n{table(load.answers)}\n"
        f"  /health polls (phase, service, status): {dict(health_by_phase)}\n"
        f"  {', '.join(f'{k} {v:.1f}s' for k, v in timings.items())}\n"
        f"  wall time {time.monotonic() - began:.1f}s"
    )

    assert_recovered(side, verdict)
    for name in ("latency", "healed"):
        assert any(a.phase == name and a.status == 200 for a in load.answers), name
    slowed = [a for a in load.answers if a.phase == "latency"]
    assert not [a for a in slowed if a.code == "read_store_unavailable"], "slow taken for gone"
    for name in CUT_OFF:
        mine = [a for a in load.answers if a.phase == name]
        assert mine, f"no query was answered during {name}"
        assert all(
            a.status in (200, 404) or (a.status, a.code) == (503, "read_store_unavailable")
            for a in mine
        ), (name, mine[:4])
    for name in ("black hole", "disabled"):
        polls = [h for h in load.health if h[0] == name]
        assert {h[1] for h in polls} == {"projector", "query"}, (name, polls)
        assert all(h[2] == 503 and h[3].startswith("read_store_unavailable") for h in polls), (
            name,
            polls[:4],
        )
