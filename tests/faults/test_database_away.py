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
import contextlib
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from esctl.localstack.postgres import LocalPostgres
from shared.http import PROBLEM_JSON
from shared.kafka import make_transactional_producer
from tests.conftest import unique
from tests.e2e.harness import ServiceProcess, http_client
from tests.e2e.test_projector_crashes import PARTITIONS, prepare, wait_applied
from tests.e2e.test_read_side import POSTS, projector_env, send_next_event, stored_positions
from tests.faults.checker import judge, read_log, read_model_mismatches
from tests.kafka_helpers import read_all, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.faults]

#: how long PostgreSQL stays stopped in the second fault (the issue's figure)
OUTAGE_S = 30.0
#: the client's bound on one query: an answer slower than this counts as none (a hang)
REQUEST_TIMEOUT_S = 20.0
#: events written per second, in transactions of a tenth of it
EVENTS_PER_S = 300
QUERY_WORKERS = 3


@dataclass
class Phase:
    """What the database is doing now; answers are labelled with the phase they started AND
    ended in (`moving` when it changed while they were in flight)."""

    name: str = "up"
    changes: int = 0

    def set(self, name: str) -> None:
        self.name = name
        self.changes += 1


@dataclass
class Answer:
    phase: str
    what: str
    status: int | None  # None: no answer (a transport error or the client's timeout)
    code: str | None
    retry_after: str | None
    content_type: str
    seconds: float
    error: str = ""


@dataclass
class Load:
    answers: list[Answer] = field(default_factory=list)
    health: list[tuple[str, str, int | None, str]] = field(default_factory=list)
    token: str | None = None  # from the last answer's positions: the next event of a partition


async def timed_get(
    http: httpx.AsyncClient, phase: Phase, what: str, url: str, **kwargs: Any
) -> tuple[Answer, httpx.Response | None]:
    name, changes = phase.name, phase.changes
    started = time.monotonic()
    try:
        r = await http.get(url, **kwargs)
    except httpx.HTTPError as exc:
        seconds = time.monotonic() - started
        label = name if phase.changes == changes else "moving"
        return Answer(label, what, None, None, None, "", seconds, repr(exc)), None
    seconds = time.monotonic() - started
    label = name if phase.changes == changes else "moving"
    code = None
    content_type = r.headers.get("content-type", "")
    if content_type == PROBLEM_JSON:
        code = r.json().get("code")
    return Answer(
        label, what, r.status_code, code, r.headers.get("retry-after"), content_type, seconds
    ), r


async def query_load(
    query: ServiceProcess, phase: Phase, load: Load, stop: asyncio.Event, seed: int
) -> None:
    """Lists, posts, stats and reads with a consistency token, until `stop`."""
    rng = random.Random(seed)
    async with http_client(timeout=REQUEST_TIMEOUT_S) as http:
        while not stop.is_set():
            kind = rng.choice(["list", "post", "stats", "token"])
            kwargs: dict[str, Any] = {}
            if kind == "list":
                url = f"{query.url}/posts?limit=20"
            elif kind == "stats":
                url = f"{query.url}/stats"
            else:
                url = f"{query.url}/posts/{rng.choice(POSTS)}"
                if kind == "token" and load.token:
                    kwargs["headers"] = {"X-Consistency-Token": load.token}
            answer, response = await timed_get(http, phase, kind, url, **kwargs)
            load.answers.append(answer)
            if response is not None and response.status_code == 200:
                positions = response.headers.get("x-read-model-positions", "")
                # waits until the projector applies one more event of each partition
                load.token = positions or load.token
            await asyncio.sleep(0.05)


async def health_polls(
    services: dict[str, ServiceProcess], phase: Phase, load: Load, stop: asyncio.Event
) -> None:
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S) as http:
        while not stop.is_set():
            for name, svc in services.items():
                answer, r = await timed_get(http, phase, name, f"{svc.url}/health")
                reason = ""
                if r is not None and r.status_code != 200:
                    reason = str(r.json().get("reason", "")) + " " + str(r.json().get("read_store"))
                load.health.append((answer.phase, name, answer.status, reason))
            await asyncio.sleep(0.5)


async def write_steadily(bootstrap: str, topic: str, stop: asyncio.Event, *, seed: int) -> int:
    """Events of 400 posts at about EVENTS_PER_S, in transactions (key = post id, versions
    1..n), until `stop`; returns how many were written."""
    rng = random.Random(seed)
    producer = make_transactional_producer(bootstrap, f"test-writer-{uuid.uuid4().hex[:8]}")
    await producer.start()
    versions: dict[str, int] = {}
    written = 0
    per_transaction = max(1, EVENTS_PER_S // 10)
    try:
        while not stop.is_set():
            await producer.begin_transaction()
            for _ in range(per_transaction):
                await send_next_event(producer, topic, PARTITIONS, rng, versions, edit_tags=True)
                written += 1
            await producer.commit_transaction()
            await asyncio.sleep(0.1)
    finally:
        await producer.stop()
    return written


async def healthy_again(services: dict[str, ServiceProcess]) -> None:
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S) as http:

        async def all_ok() -> bool:
            for svc in services.values():
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"{svc.url}/health")).status_code != 200:
                        return False
            return True

        await wait_until(all_ok, timeout_s=60, what="both services healthy again")


async def applied_beyond(
    store_url: str, before: dict[int, int], services: dict[str, ServiceProcess]
) -> None:
    """Wait until the projector applied more than `before` on every partition: it resumed
    (a service that exited meanwhile fails at once, with the end of its log)."""

    async def moved() -> bool:
        for name, svc in services.items():
            if svc.proc is None or svc.proc.poll() is not None:
                raise AssertionError(f"the {name} exited:\n{svc.logs()[-2000:]}")
        with contextlib.suppress(Exception):  # the database may still be starting
            now = await stored_positions(store_url)
            return all(now.get(p, 0) > o for p, o in before.items())
        return False

    await wait_until(moved, timeout_s=60, what="the projector to apply events again")


def table(answers: list[Answer]) -> str:
    """Answers per phase: `status code` -> count, and the longest answer."""
    lines = []
    for name in dict.fromkeys(a.phase for a in answers):
        mine = [a for a in answers if a.phase == name]
        counts = Counter(f"{a.status or 'none'}{' ' + a.code if a.code else ''}" for a in mine)
        longest = max(a.seconds for a in mine)
        lines.append(
            f"  {name:<18} {len(mine):>5} answers, longest {longest:.3f}s: "
            + ", ".join(f"{k} x{v}" for k, v in counts.most_common())
        )
    return "\n".join(lines)


async def test_postgresql_restarted_and_stopped_under_load_queries_503_projector_resumes(
    kafka_bootstrap: str, own_postgres: LocalPostgres, tmp_path: Path
) -> None:
    pg = own_postgres
    prefix = unique("away") + "."
    topics = await prepare(kafka_bootstrap, prefix)
    env = projector_env(
        kafka_bootstrap,
        prefix,
        pg.url,
        BATCH_MAX_RECORDS="500",
        KEY_STORE_URL=f"sqlite:///{tmp_path / 'keys.sqlite3'}",
    )
    projector = ServiceProcess("projector_service", env, tmp_path, "projector")
    query = ServiceProcess("query_service", env, tmp_path, "query")
    services = {"projector": projector, "query": query}
    phase, load = Phase(), Load()
    stop_writing, stop_load = asyncio.Event(), asyncio.Event()
    tasks: list[asyncio.Task[Any]] = []
    try:
        projector.start()
        await projector.wait_healthy()
        query.start()
        await query.wait_healthy()
        pids = {name: svc.pid for name, svc in services.items()}
        writer = asyncio.create_task(
            write_steadily(kafka_bootstrap, topics.events, stop_writing, seed=19)
        )
        tasks.append(writer)
        tasks += [
            asyncio.create_task(query_load(query, phase, load, stop_load, seed=n))
            for n in range(QUERY_WORKERS)
        ]
        tasks.append(asyncio.create_task(health_polls(services, phase, load, stop_load)))
        await applied_beyond(pg.url, {p: 0 for p in range(PARTITIONS)}, services)
        await asyncio.sleep(2)

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

        stop_load.set()
        stop_writing.set()
        written = await writer
        await asyncio.gather(*tasks[1:])
        log = await read_all(kafka_bootstrap, topics.events, PARTITIONS, timeout_s=120)
        assert len(log) == written
        await wait_applied(pg.url, log)
        alive = {
            name: svc.proc is not None and svc.proc.poll() is None for name, svc in services.items()
        }
        same = {name: svc.pid for name, svc in services.items()} == pids
    finally:
        stop_load.set()
        stop_writing.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for svc in services.values():
            await svc.stop()

    outcomes, events = await read_log(kafka_bootstrap, prefix, PARTITIONS)
    verdict = judge([], outcomes, events)
    verdict.read_model_mismatches += await read_model_mismatches(pg.url, log)
    lost_in_crash = sum(seen.values()) - sum(recovered.values())
    down = [a for a in load.answers if a.phase == "down"]
    down_health = [h for h in load.health if h[0] == "down"]
    print(verdict.summary())  # noqa: T201  # the counts are the test's output
    print(  # noqa: T201
        f"database away: {len(load.answers)} query answers, by phase:\n{table(load.answers)}\n"
        f"  longest answer while down: {max((a.seconds for a in down), default=0):.3f}s; "
        f"/health polls while down: {Counter((h[1], h[2]) for h in down_health)}; "
        f"offsets committed but lost in the crash, re-applied from Kafka: {lost_in_crash}"
    )

    verdict.assert_clean()
    assert alive == {"projector": True, "query": True} and same, "a service was restarted"
    assert not [a for a in load.answers if a.status is None], "a query got no answer"
    assert not [a for a in load.answers if a.status == 500], "a query got 500"
    assert {a.status for a in load.answers} <= {200, 404, 503}
    for a in load.answers:
        if a.status == 503:
            assert a.content_type == PROBLEM_JSON and a.retry_after, a
            assert a.code in ("read_store_unavailable", "not_consistent_yet"), a
    assert down, "no query was answered while the database was down"
    assert {(a.status, a.code) for a in down} == {(503, "read_store_unavailable")}
    assert {h[1] for h in down_health} == {"projector", "query"}
    assert all(h[2] == 503 and h[3].startswith("read_store_unavailable") for h in down_health), (
        down_health[:4]
    )
    assert any(a.phase == "back" and a.status == 200 for a in load.answers)
    logs = projector.logs()
    assert "read_store_unavailable" in logs and "read_store_back" in logs
    assert "service_task_failed" not in logs + query.logs()
