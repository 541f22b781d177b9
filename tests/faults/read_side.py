"""The read side under load, for the fault tests of its database (test_database_away.py: the
server restarted and stopped; test_database_network.py: its network link, through Toxiproxy).

`read_side_under_load` runs the projector and the query service as real processes on one read
store, writes events at a steady rate onto the events topic (transactions, as the command
service writes them), keeps `QUERY_WORKERS` clients querying all the time (lists, single posts,
stats, and reads with a consistency token one event ahead of the projection) and polls /health
of each service; every answer is labelled with the phase of the fault (`Phase`) it started and
ended in. Leaving the block stops the load and waits until the projector applied the whole log;
`judged` runs the fault checker on it and `assert_recovered` asserts what every such test
requires.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from shared.http import PROBLEM_JSON
from shared.kafka import make_transactional_producer
from shared.kafka.records import InboundRecord
from shared.kafka.topics import Topics
from tests.conftest import unique
from tests.e2e.harness import ServiceProcess, http_client
from tests.e2e.test_projector_crashes import PARTITIONS, prepare, wait_applied
from tests.e2e.test_read_side import POSTS, projector_env, send_next_event, stored_positions
from tests.faults.checker import Verdict, judge, read_log, read_model_mismatches
from tests.kafka_helpers import read_all, wait_until

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


@dataclass
class ReadSide:
    """The projector and the query service on one read store (`store_url`: the test's own way
    to it, which no fault touches), the load on them, and, after the block, the whole log."""

    projector: ServiceProcess
    query: ServiceProcess
    topics: Topics
    prefix: str
    store_url: str
    phase: Phase = field(default_factory=Phase)
    load: Load = field(default_factory=Load)
    log: list[InboundRecord] = field(default_factory=list)
    #: both processes still running at the end, the ones started first (no restart)
    same_processes: bool = False

    @property
    def services(self) -> dict[str, ServiceProcess]:
        return {"projector": self.projector, "query": self.query}


@contextlib.asynccontextmanager
async def read_side_under_load(
    kafka_bootstrap: str,
    store_url: str,
    tmp_path: Path,
    name: str,
    *,
    services_store_url: str | None = None,
    **settings: str,
) -> AsyncIterator[ReadSide]:
    """The services started (on `services_store_url`, default `store_url`; `settings`: more of
    their environment), the load running and the projector applying, for the block; leaving it
    normally stops the load, reads the log and waits until the projector applied all of it."""
    prefix = unique(name) + "."
    topics = await prepare(kafka_bootstrap, prefix)
    env = projector_env(
        kafka_bootstrap,
        prefix,
        services_store_url or store_url,
        BATCH_MAX_RECORDS="500",
        KEY_STORE_URL=f"sqlite:///{tmp_path / 'keys.sqlite3'}",
        **settings,
    )
    side = ReadSide(
        ServiceProcess("projector_service", env, tmp_path, "projector"),
        ServiceProcess("query_service", env, tmp_path, "query"),
        topics,
        prefix,
        store_url,
    )
    services = side.services
    stop_writing, stop_load = asyncio.Event(), asyncio.Event()
    tasks: list[asyncio.Task[Any]] = []
    try:
        for svc in services.values():
            svc.start()
            await svc.wait_healthy()
        pids = {name: svc.pid for name, svc in services.items()}
        writer = asyncio.create_task(
            write_steadily(kafka_bootstrap, topics.events, stop_writing, seed=19)
        )
        tasks.append(writer)
        tasks += [
            asyncio.create_task(query_load(side.query, side.phase, side.load, stop_load, seed=n))
            for n in range(QUERY_WORKERS)
        ]
        # one poller per service: a poll waits as long as the store does, the other goes on
        tasks += [
            asyncio.create_task(health_polls({name: svc}, side.phase, side.load, stop_load))
            for name, svc in services.items()
        ]
        await applied_beyond(store_url, {p: 0 for p in range(PARTITIONS)}, services)
        await asyncio.sleep(2)

        yield side

        stop_load.set()
        stop_writing.set()
        written = await writer
        await asyncio.gather(*tasks[1:])
        side.log = await read_all(kafka_bootstrap, topics.events, PARTITIONS, timeout_s=120)
        assert len(side.log) == written
        await wait_applied(store_url, side.log)
        side.same_processes = {
            name: svc.pid for name, svc in services.items() if svc.proc and svc.proc.poll() is None
        } == pids
    finally:
        stop_load.set()
        stop_writing.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for svc in services.values():
            await svc.stop()


async def judged(kafka_bootstrap: str, side: ReadSide) -> Verdict:
    """The fault checker on the whole log, with the read model compared with its fold (each
    event once); prints the checker's line."""
    outcomes, events = await read_log(kafka_bootstrap, side.prefix, PARTITIONS)
    verdict = judge([], outcomes, events)
    verdict.read_model_mismatches += await read_model_mismatches(side.store_url, side.log)
    print(verdict.summary())  # noqa: T201  # the counts are the test's output
    return verdict


def assert_recovered(side: ReadSide, verdict: Verdict) -> None:
    """A clean verdict; both services running, never restarted; every query answered within
    the client's bound, never a 500, every 503 a problem+json with Retry-After and a code of
    the read store's absence or of a consistency token not reached in time; the projector
    logged the store's absence and its end, and no task of either service failed."""
    answers = side.load.answers
    verdict.assert_clean()
    assert side.same_processes, "a service was restarted"
    assert not [a for a in answers if a.status is None], "a query got no answer"
    assert not [a for a in answers if a.status == 500], "a query got 500"
    assert {a.status for a in answers} <= {200, 404, 503}
    for a in answers:
        if a.status == 503:
            assert a.content_type == PROBLEM_JSON and a.retry_after, a
            assert a.code in ("read_store_unavailable", "not_consistent_yet"), a
    logs = side.projector.logs()
    assert "read_store_unavailable" in logs and "read_store_back" in logs
    assert "service_task_failed" not in logs + side.query.logs()
