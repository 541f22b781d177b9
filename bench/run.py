"""Benchmarks: this system against raw Kafka and against a peer library, in one run.

    python -m bench.run [--smoke] [--out bench/results]      (also: make bench, esctl bench)

Every figure is measured in the same run on the same machine, and throughput is reported as a
ratio to the raw-Kafka limit measured minutes before: these machines are shared, so absolute
numbers drift and ratios do not (as much). Writes `<out>/results.json` and `bench/RESULTS.md`
(with `--smoke`: `<out>/RESULTS.smoke.md`, tiny sizes, seconds in all: CI runs it so that
every scenario keeps working; it asserts nothing about speed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from aiokafka import TopicPartition
from rich.console import Console
from rich.progress import Progress

from command_service.snapshots import CHECKPOINT_KEY
from esctl.localstack.kafka import LocalKafkaCluster, kafka_version
from esctl.localstack.postgres import LocalPostgres
from esctl.localstack.services import ServiceProcess
from projector_service.projector import Projector
from shared.kafka import make_consumer, make_producer, make_transactional_producer
from shared.kafka.clients import partition_for_key
from shared.kafka.commands import CommandClient
from shared.kafka.reader import read_latest_by_key
from shared.kafka.topics import Topics, TopicSpec, bootstrap_system_topics, ensure_topics
from shared.logging import configure_logging
from shared.messages import encode_command, encode_event
from shared.messages.blog import (
    CreatePost,
    PostCreated,
    PostEdited,
    PublicationScheduled,
    RegisterAuthor,
)
from shared.readmodel.store import ReadStore
from shared.settings import KafkaSettings

ROOT = Path(__file__).resolve().parents[1]
console = Console(stderr=True)


@dataclass
class Sizes:
    raw: int = 100_000
    pipeline: int = 20_000
    projector: int = 100_000
    e2e_seconds: float = 10.0
    e2e_sequential: int = 200
    e2e_rates: tuple[int, ...] = (25, 50, 100, 250, 500, 2000)
    recovery: tuple[int, ...] = (100_000, 1_000_000)
    peer: int = 2_000
    timers: int = 1_000
    snapshot_events: int = 1_000_000
    snapshot_aggregates: int = 10_000
    pipeline_batches: tuple[int, ...] = (100, 500, 2000)

    @classmethod
    def smoke(cls) -> Sizes:
        return cls(
            raw=2_000,
            pipeline=500,
            projector=2_000,
            e2e_seconds=2.0,
            e2e_sequential=10,
            e2e_rates=(20, 50),
            recovery=(1_000,),
            peer=50,
            timers=20,
            snapshot_events=1_000,
            snapshot_aggregates=100,
            pipeline_batches=(50, 500),
        )


@dataclass
class Results:
    machine: dict[str, Any] = field(default_factory=dict)
    rows: dict[str, Any] = field(default_factory=dict)

    def put(self, key: str, **values: Any) -> None:
        self.rows[key] = values
        console.print(f"[green]{key}[/green] {values}")


def machine_facts() -> dict[str, Any]:
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "kafka": kafka_version(),
        "aiokafka": _version("aiokafka"),
        "eventsourcing": _version("eventsourcing"),
        "broker_heap_mb": 512,
    }


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def payload(size: int) -> bytes:
    return (b"x" * size)[:size]


# ------------------------------------------------------------------------------- raw Kafka


async def raw_produce(bootstrap: str, topic: str, n: int, size: int) -> float:
    """Idempotent, acks=all, fire-and-forget with a final wait: records/s."""
    producer = make_producer(bootstrap)
    await producer.start()
    value = payload(size)
    try:
        start = time.perf_counter()
        futures = [await producer.send(topic, value, key=str(i % 1000).encode()) for i in range(n)]
        await asyncio.gather(*futures)
        return n / (time.perf_counter() - start)
    finally:
        await producer.stop()


async def raw_txn_produce(bootstrap: str, topic: str, n: int, size: int, batch: int) -> float:
    """Transactions of `batch` records, as the command processor commits them: records/s."""
    producer = make_transactional_producer(bootstrap, f"bench-{uuid.uuid4().hex[:8]}")
    await producer.start()
    value = payload(size)
    try:
        start = time.perf_counter()
        for first in range(0, n, batch):
            await producer.begin_transaction()
            futures = [
                await producer.send(topic, value, key=str(i % 1000).encode())
                for i in range(first, min(n, first + batch))
            ]
            await asyncio.gather(*futures)
            await producer.commit_transaction()
        return n / (time.perf_counter() - start)
    finally:
        await producer.stop()


async def raw_consume(bootstrap: str, topic: str, partitions: int, n: int) -> float:
    """`getmany` from the beginning, read_committed: records/s."""
    consumer = make_consumer(bootstrap, max_partition_fetch_bytes=8 * 1024 * 1024)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        got = 0
        start = time.perf_counter()
        while got < n:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            got += sum(len(v) for v in batch.values())
        return got / (time.perf_counter() - start)
    finally:
        await consumer.stop()


async def scenario_limits(bootstrap: str, sizes: Sizes, results: Results) -> None:
    for size in (200, 1024):
        topic = f"bench-raw-{size}-{uuid.uuid4().hex[:6]}"
        txn_topic = topic + "-txn"
        await ensure_topics(bootstrap, [TopicSpec(topic, 6, 1), TopicSpec(txn_topic, 6, 1)])
        results.put(
            f"raw_produce_{size}B",
            records_per_s=round(await raw_produce(bootstrap, topic, sizes.raw, size)),
        )
        for batch in (100, 500):
            results.put(
                f"raw_txn_produce_{size}B_batch{batch}",
                records_per_s=round(
                    await raw_txn_produce(bootstrap, txn_topic, sizes.raw // 2, size, batch)
                ),
            )
        results.put(
            f"raw_consume_{size}B",
            records_per_s=round(await raw_consume(bootstrap, topic, 6, sizes.raw)),
        )


# ------------------------------------------------------------------------ the write side


def _service_env(bootstrap: str, prefix: str, **extra: str) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "TOPIC_PREFIX": prefix,
        "PARTITIONS": "6",
        "GROUP_ID": f"{prefix}command-service",
        "LOG_LEVEL": "warning",
        "SESSION_TIMEOUT_MS": "6000",
        **extra,
    }


async def _committed_total(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    consumer = make_consumer(bootstrap, group_id=group)
    await consumer.start()
    try:
        total = 0
        for p in range(partitions):
            total += await consumer.committed(TopicPartition(topic, p)) or 0
        return total
    finally:
        await consumer.stop()


async def _end_total(bootstrap: str, topic: str, partitions: int) -> int:
    consumer = make_consumer(bootstrap, isolation_level="read_uncommitted")
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
        return int(sum(ends.values()))
    finally:
        await consumer.stop()


async def _register_author(bootstrap: str, topics: Topics, author: str, wait_s: float = 60) -> None:
    client = CommandClient(bootstrap, topics, recent_window_s=0)
    await client.start()
    try:
        cid = uuid.uuid4()
        out = await client.send(
            cid,
            encode_command(
                RegisterAuthor(name="A", email="a@b.c"), command_id=cid, aggregate_id=author
            ),
            wait_s=wait_s,
        )
        if out is None or out.status != "accepted":
            raise RuntimeError(f"no accepted outcome for RegisterAuthor within {wait_s}s: {out}")
    finally:
        await client.stop()


async def _produce_creates(bootstrap: str, topic: str, n: int, author: str) -> None:
    producer = make_producer(bootstrap)
    await producer.start()
    try:
        futures = []
        for i in range(n):
            m = encode_command(
                CreatePost(author_id=author, title=f"Post {i}", body="b" * 150, tags=["bench"]),
                command_id=uuid.uuid4(),
                aggregate_id=f"p-{uuid.uuid4().hex}",
            )
            futures.append(await producer.send(topic, m.value, key=m.key, headers=m.headers))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def scenario_pipeline(
    bootstrap: str, sizes: Sizes, results: Results, workdir: Path, rss: RssSampler
) -> None:
    """Commands/s through one command-service process: a backlog of CreatePost commands is
    produced, then the clock runs from the first to the last committed offset."""
    for batch in sizes.pipeline_batches:
        prefix = f"bp{batch}-{uuid.uuid4().hex[:6]}."
        topics = Topics.from_settings(KafkaSettings(topic_prefix=prefix))
        svc = ServiceProcess(
            "command_service",
            _service_env(bootstrap, prefix, BATCH_MAX_RECORDS=str(batch), BATCH_MAX_WAIT_MS="20"),
            workdir,
            f"pipeline-{batch}",
        )
        svc.start()
        try:
            await svc.wait_healthy()
            rss.watch(f"command_service (pipeline, batch {batch})", svc.pid)
            await _register_author(bootstrap, topics, "bench-author")
            base = await _committed_total(bootstrap, f"{prefix}command-service", topics.commands, 6)
            await _produce_creates(bootstrap, topics.commands, sizes.pipeline, "bench-author")
            end = await _end_total(bootstrap, topics.commands, 6)
            start = time.perf_counter()
            first_progress: float | None = None
            while True:
                done = await _committed_total(
                    bootstrap, f"{prefix}command-service", topics.commands, 6
                )
                if first_progress is None and done > base:
                    first_progress = time.perf_counter()
                if done >= end:
                    break
                await asyncio.sleep(0.05)
            elapsed = time.perf_counter() - (first_progress or start)
            results.put(
                f"pipeline_batch{batch}",
                commands_per_s=round(sizes.pipeline / max(elapsed, 1e-6)),
                commands=sizes.pipeline,
            )
        finally:
            await svc.stop()


# ------------------------------------------------------------------------- the read side


async def write_fake_events(
    bootstrap: str, topic: str, partitions: int, n: int, *, distinct: bool = True, txn: int = 500
) -> None:
    """n PostCreated events (one aggregate each), written like the command service does."""
    producer = make_transactional_producer(bootstrap, f"bench-writer-{uuid.uuid4().hex[:8]}")
    await producer.start()
    now = datetime.now(UTC)
    try:
        for first in range(0, n, txn):
            await producer.begin_transaction()
            futures = []
            for i in range(first, min(n, first + txn)):
                post = f"post-{i}" if distinct else f"post-{i % 1000}"
                m = encode_event(
                    PostCreated(
                        author_id="a", title=f"T{i}", body="b" * 150, tags=["bench", f"t{i % 20}"]
                    ),
                    event_id=uuid.uuid4(),
                    aggregate_id=post,
                    aggregate_version=1,
                    occurred_at=now,
                )
                futures.append(
                    await producer.send(
                        topic,
                        m.value,
                        key=m.key,
                        headers=m.headers,
                        partition=partition_for_key(m.key, partitions),
                    )
                )
            await asyncio.gather(*futures)
            await producer.commit_transaction()
    finally:
        await producer.stop()


class _TimedProjector(Projector):
    """A projector that notes when it was first positioned: the start of its measurement."""

    positioned_at: float | None = None

    async def seek_to_stored(self, partitions: list[int]) -> None:
        await super().seek_to_stored(partitions)
        if self.positioned_at is None:
            self.positioned_at = time.perf_counter()


async def project_all(
    bootstrap: str, prefix: str, store_url: str, n: int, group: str
) -> dict[str, Any]:
    """Run one projector (in this process) over n events, timed from its positioning (the
    group joined, the stored offsets sought) to the last event applied: events/s, seconds.

    Not from its first applied batch: a small log is applied in one batch, which would leave
    no interval to measure."""
    topics = Topics.from_settings(KafkaSettings(topic_prefix=prefix))
    store = ReadStore(store_url, writer=True)
    projector = _TimedProjector(
        bootstrap_servers=bootstrap,
        topic=topics.events,
        group_id=group,
        store=store,
        dlq_topic=topics.events_dlq,
        max_records=5000,
    )
    await projector.start()
    runner = asyncio.create_task(projector.run())
    try:
        while projector.applied < n:
            if runner.done():
                runner.result()
            await asyncio.sleep(0.01)
        if projector.positioned_at is None:
            raise RuntimeError("the projector applied events without being positioned")
        seconds = time.perf_counter() - projector.positioned_at
        return {"events_per_s": round(n / seconds), "events": n, "seconds": round(seconds, 3)}
    finally:
        await projector.stop()
        runner.cancel()
        await store.close()


async def scenario_projector(
    bootstrap: str, postgres_url: str, sizes: Sizes, results: Results, workdir: Path
) -> None:
    prefix = f"bproj-{uuid.uuid4().hex[:6]}."
    await bootstrap_system_topics(
        KafkaSettings(kafka_bootstrap_servers=bootstrap, topic_prefix=prefix, partitions=6)
    )
    topics = Topics.from_settings(KafkaSettings(topic_prefix=prefix))
    await write_fake_events(bootstrap, topics.events, 6, sizes.projector)
    results.put(
        "projector_sqlite",
        **await project_all(
            bootstrap,
            prefix,
            f"sqlite:///{workdir / 'bench-read.sqlite3'}",
            sizes.projector,
            f"{prefix}projector-sqlite",
        ),
    )
    database = f"bench_{uuid.uuid4().hex[:8]}"
    import asyncpg  # noqa: PLC0415

    admin = await asyncpg.connect(postgres_url)
    await admin.execute(f'CREATE DATABASE "{database}"')
    try:
        url = postgres_url.rsplit("/", 1)[0] + f"/{database}"
        # A second group over the same events: the projector reads them again.
        results.put(
            "projector_postgresql",
            **await project_all(bootstrap, prefix, url, sizes.projector, f"{prefix}projector-pg"),
        )
    finally:
        await admin.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
        await admin.close()


# --------------------------------------------------------------------------- end to end


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def scenario_end_to_end(
    bootstrap: str, sizes: Sizes, results: Results, workdir: Path, rss: RssSampler
) -> None:
    """Open loop: requests start on a fixed schedule whatever the answers; each creates a post
    over HTTP and reads it from the query service with the consistency token. The load
    generator (aiohttp, this process) shares the machine; its CPU use is reported too."""
    prefix = f"be2e-{uuid.uuid4().hex[:6]}."
    store_url = f"sqlite:///{workdir / 'e2e-read.sqlite3'}"
    env = _service_env(bootstrap, prefix, READ_STORE_URL=store_url, CONSISTENCY_WAIT_MS="10000")
    cmd = ServiceProcess("command_service", env, workdir, "e2e-command")
    proj = ServiceProcess(
        "projector_service", env | {"GROUP_ID": f"{prefix}projector"}, workdir, "e2e-projector"
    )
    query = ServiceProcess("query_service", env, workdir, "e2e-query")
    cmd.start()
    await cmd.wait_healthy()
    proj.start()
    query.start()
    try:
        await proj.wait_healthy()
        await query.wait_healthy()
        for name, svc in (("command_service", cmd), ("projector", proj), ("query_service", query)):
            rss.watch(f"{name} (end to end)", svc.pid)
        connector = aiohttp.TCPConnector(limit=500)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            async with http.post(
                f"{cmd.url}/authors", json={"author_id": "e2e", "name": "E", "email": "e@x.y"}
            ) as r:
                assert r.status == 201, await r.text()
            best = 0
            # One client, sequential: the latency without queueing. It also warms the broker's
            # JIT and the services' caches, so the first open-loop rate is not a start-up figure.
            sequential = await _closed_loop(http, cmd.url, query.url, sizes.e2e_sequential)
            results.put(
                "e2e_sequential",
                requests=len(sequential),
                p50_ms=round(percentile(sequential, 0.5) * 1000, 1),
                p99_ms=round(percentile(sequential, 0.99) * 1000, 1),
            )
            me = psutil.Process()
            for rate in sizes.e2e_rates:
                cpu0 = me.cpu_times()
                wall0 = time.perf_counter()
                latencies, errors, achieved = await _open_loop(
                    http, cmd.url, query.url, rate, sizes.e2e_seconds
                )
                cpu1 = me.cpu_times()
                generator_cpu = ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / (
                    time.perf_counter() - wall0
                )
                sustained = (
                    errors == 0 and achieved >= 0.95 * rate and (percentile(latencies, 0.99) < 1.0)
                )
                best = rate if sustained else best
                results.put(
                    f"e2e_{rate}_per_s",
                    offered=rate,
                    achieved=round(achieved),
                    p50_ms=round(percentile(latencies, 0.5) * 1000, 1),
                    p95_ms=round(percentile(latencies, 0.95) * 1000, 1),
                    p99_ms=round(percentile(latencies, 0.99) * 1000, 1),
                    errors=errors,
                    sustained=sustained,
                    generator_cpu_cores=round(generator_cpu, 2),
                )
            results.put("e2e_highest_sustained", commands_per_s=best)
    finally:
        for svc in (cmd, proj, query):
            await svc.stop()


async def _create_then_read(
    http: aiohttp.ClientSession, cmd: str, query: str, post_id: str
) -> bool:
    """POST a post, then GET it from the query service with the consistency token."""
    async with http.post(
        f"{cmd}/posts", json={"post_id": post_id, "author_id": "e2e", "title": "t"}
    ) as created:
        if created.status != 201:
            return False
        token = created.headers["x-consistency-token"]
    async with http.get(f"{query}/posts/{post_id}", headers={"X-Consistency-Token": token}) as read:
        await read.read()
        return read.status == 200


async def _closed_loop(http: aiohttp.ClientSession, cmd: str, query: str, n: int) -> list[float]:
    latencies = []
    for i in range(n):
        start = time.perf_counter()
        if await _create_then_read(http, cmd, query, f"e2e-seq-{i}-{uuid.uuid4().hex[:6]}"):
            latencies.append(time.perf_counter() - start)
    return latencies


async def _open_loop(
    http: aiohttp.ClientSession, cmd: str, query: str, rate: int, seconds: float
) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    errors = 0
    n = int(rate * seconds)

    async def one(i: int) -> None:
        nonlocal errors
        start = time.perf_counter()
        post_id = f"e2e-{rate}-{i}-{uuid.uuid4().hex[:6]}"
        try:
            if not await _create_then_read(http, cmd, query, post_id):
                errors += 1
                return
            latencies.append(time.perf_counter() - start)
        except (aiohttp.ClientError, TimeoutError):
            errors += 1

    loop = asyncio.get_running_loop()
    t0 = loop.time()
    tasks = []
    for i in range(n):
        delay = t0 + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    # Beyond capacity the backlog would take minutes to drain: what is not done 10 s after the
    # last request was offered counts as an error (the load was not sustained).
    _, late = await asyncio.wait(tasks, timeout=10)
    for task in late:
        task.cancel()
    errors += len(late)
    elapsed = loop.time() - t0
    return latencies, errors, len(latencies) / elapsed


# ------------------------------------------------------------------ recovery and memory


class RssSampler:
    """Samples the resident memory of watched processes; reports each one's peak."""

    def __init__(self) -> None:
        self.peaks: dict[str, int] = {}
        self._watched: dict[str, psutil.Process] = {}
        self._task: asyncio.Task[None] | None = None

    def watch(self, name: str, pid: int | None) -> None:
        if pid is not None:
            self._watched[name] = psutil.Process(pid)

    async def run(self) -> None:
        while True:
            for name, proc in list(self._watched.items()):
                try:
                    rss = proc.memory_info().rss
                except psutil.Error:
                    self._watched.pop(name)
                    continue
                self.peaks[name] = max(self.peaks.get(name, 0), rss)
            await asyncio.sleep(0.1)


async def scenario_workflow_timers(
    bootstrap: str, sizes: Sizes, results: Results, workdir: Path
) -> None:
    """Scheduled publications: `timers` PublicationScheduled events written straight to the
    event log (due 6-8 s later), one workflow-service process; lateness of each timer (fired
    minus due) from the `timer_fired` records of `workflows.history`."""
    prefix = f"bwf-{uuid.uuid4().hex[:6]}."
    settings = KafkaSettings(kafka_bootstrap_servers=bootstrap, topic_prefix=prefix, partitions=6)
    await bootstrap_system_topics(settings)
    topics = Topics.from_settings(settings)
    env = _service_env(
        bootstrap,
        prefix,
        GROUP_ID=f"{prefix}workflow-service",
        PUBLICATION_STEPS="",
        WORKFLOW_STORE_URL=f"sqlite:///{workdir / 'bench-workflows.sqlite3'}",
    )
    svc = ServiceProcess("workflow_service", env, workdir, "workflow-timers")
    svc.start()
    try:
        await svc.wait_healthy()
        producer = make_transactional_producer(bootstrap, f"bench-sched-{uuid.uuid4().hex[:8]}")
        await producer.start()
        start = datetime.now(UTC) + timedelta(seconds=6)
        try:
            await producer.begin_transaction()
            futures = []
            for i in range(sizes.timers):
                due = start + timedelta(seconds=2 * i / sizes.timers)
                m = encode_event(
                    PublicationScheduled(publish_at=due),
                    event_id=uuid.uuid4(),
                    aggregate_id=f"sched-{i}",
                    aggregate_version=1,
                    occurred_at=datetime.now(UTC),
                )
                futures.append(
                    await producer.send(topics.events, m.value, key=m.key, headers=m.headers)
                )
            await asyncio.gather(*futures)
            await producer.commit_transaction()
        finally:
            await producer.stop()
        late: list[float] = []
        deadline = time.monotonic() + 60
        while len(late) < sizes.timers and time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            late = await _timer_lateness(bootstrap, topics.workflow_history)
        results.put(
            "workflow_timers",
            timers=sizes.timers,
            fired=len(late),
            p50_ms=round(percentile(late, 0.5), 1),
            p99_ms=round(percentile(late, 0.99), 1),
            max_ms=round(max(late, default=float("nan")), 1),
            early=sum(1 for x in late if x < 0),
        )
    finally:
        await svc.stop()


async def _timer_lateness(bootstrap: str, topic: str) -> list[float]:
    consumer = make_consumer(bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(6)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[float] = []
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                for m in messages:
                    entry = json.loads(m.value)
                    if entry["what"] == "timer_fired":
                        out.append(float(entry["detail"]["late_ms"]))
        return out
    finally:
        await consumer.stop()


async def scenario_recovery(
    bootstrap: str, sizes: Sizes, results: Results, workdir: Path, rss: RssSampler
) -> None:
    """Time from a command-service process start until it has restored its partitions and
    answered a command, against the number of events (one aggregate each) in the log."""
    for n in sizes.recovery:
        prefix = f"brec{n}-{uuid.uuid4().hex[:6]}."
        await bootstrap_system_topics(
            KafkaSettings(kafka_bootstrap_servers=bootstrap, topic_prefix=prefix, partitions=6)
        )
        topics = Topics.from_settings(KafkaSettings(topic_prefix=prefix))
        await write_fake_events(bootstrap, topics.events, 6, n)
        svc = ServiceProcess(
            "command_service",
            _service_env(bootstrap, prefix, SNAPSHOT_EVERY_EVENTS="0"),  # full replay
            workdir,
            f"recovery-{n}",
        )
        start = time.perf_counter()
        svc.start()
        try:
            await svc.wait_healthy(timeout_s=600)
            rss.watch(f"command_service (recovery {n:,})", svc.pid)
            # Ready = its partitions are restored and it answers a command.
            await _register_author(bootstrap, topics, "rec-author", wait_s=900)
            ready = time.perf_counter() - start
            info = psutil.Process(svc.pid).memory_info().rss if svc.pid else 0
            results.put(
                f"recovery_{n}_events",
                ready_s=round(ready, 2),
                events_per_s=round(n / ready),
                rss_mb=round(info / 2**20, 1),
            )
        finally:
            await svc.stop()
    if len(sizes.recovery) >= 2:
        small, large = sizes.recovery[0], sizes.recovery[-1]
        a = results.rows[f"recovery_{small}_events"]["rss_mb"]
        b = results.rows[f"recovery_{large}_events"]["rss_mb"]
        results.put("memory_per_100k_aggregates", mb=round((b - a) / ((large - small) / 1e5), 1))


async def _write_histories(
    bootstrap: str, topic: str, events: int, aggregates: int, txn: int = 1000
) -> None:
    """`events` events over `aggregates` posts (PostCreated, then PostEdited), versions 1..n."""
    producer = make_transactional_producer(bootstrap, f"bench-hist-{uuid.uuid4().hex[:8]}")
    await producer.start()
    now = datetime.now(UTC)
    try:
        for version in range(1, events // aggregates + 1):
            for first in range(0, aggregates, txn):
                await producer.begin_transaction()
                futures = []
                for a in range(first, min(aggregates, first + txn)):
                    event = (
                        PostCreated(author_id="a", title="T1", body="b" * 100, tags=["x"])
                        if version == 1
                        else PostEdited(title=f"T{version}")
                    )
                    m = encode_event(
                        event,
                        event_id=uuid.uuid4(),
                        aggregate_id=f"snap-{a}",
                        aggregate_version=version,
                        occurred_at=now,
                    )
                    futures.append(
                        await producer.send(topic, m.value, key=m.key, headers=m.headers)
                    )
                await asyncio.gather(*futures)
                await producer.commit_transaction()
    finally:
        await producer.stop()


async def _has_checkpoint(bootstrap: str, topic: str) -> bool:
    return CHECKPOINT_KEY in await read_latest_by_key(bootstrap, topic, 0)


async def _restore_seconds(url: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.startswith("esctl_partition_restore_seconds_sum"):
                return float(line.split()[-1])
    return float("nan")


async def scenario_snapshot_recovery(
    bootstrap: str, sizes: Sizes, results: Results, workdir: Path
) -> None:
    """One partition holding `snapshot_events` events over `snapshot_aggregates` aggregates:
    restore by full replay (first start; its first transaction then writes the snapshots and a
    checkpoint), then restore from the snapshots plus the tail (second start)."""
    prefix = f"bsnap-{uuid.uuid4().hex[:6]}."
    settings = KafkaSettings(kafka_bootstrap_servers=bootstrap, topic_prefix=prefix, partitions=1)
    await bootstrap_system_topics(settings)
    topics = Topics.from_settings(settings)
    await _write_histories(
        bootstrap, topics.events, sizes.snapshot_events, sizes.snapshot_aggregates
    )
    figures: dict[str, float] = {}
    for run in ("full_replay", "with_snapshots"):
        svc = ServiceProcess(
            "command_service",
            _service_env(
                bootstrap,
                prefix,
                PARTITIONS="1",
                SNAPSHOT_EVERY_EVENTS=str(min(10_000, sizes.snapshot_events // 2)),
            ),
            workdir,
            f"snapshot-recovery-{run}",
        )
        start = time.perf_counter()
        svc.start()
        try:
            await svc.wait_healthy(timeout_s=600)
            await _register_author(bootstrap, topics, f"snap-author-{run}", wait_s=900)
            figures[f"{run}_ready_s"] = round(time.perf_counter() - start, 2)
            figures[f"{run}_restore_s"] = round(await _restore_seconds(svc.url), 2)
        finally:
            await svc.stop()
        if run == "full_replay" and not await _has_checkpoint(bootstrap, topics.snapshots):
            raise RuntimeError("the first start wrote no snapshot checkpoint")
    results.put(
        "snapshot_recovery",
        events=sizes.snapshot_events,
        aggregates=sizes.snapshot_aggregates,
        **figures,
        restore_speedup=round(
            figures["full_replay_restore_s"] / max(figures["with_snapshots_restore_s"], 1e-3), 1
        ),
    )


# --------------------------------------------------------------------------- the peer


def scenario_peer(postgres_url: str, sizes: Sizes, results: Results, workdir: Path) -> None:
    """The `eventsourcing` library, same workload: create a post, then publish it (two events),
    one client, sequential; in memory, SQLite and PostgreSQL."""
    from eventsourcing.application import Application  # noqa: PLC0415
    from eventsourcing.domain import Aggregate, event  # noqa: PLC0415

    class Post(Aggregate):  # type: ignore[misc]  # untyped library base
        @event("Created")  # type: ignore[misc]
        def __init__(self, title: str) -> None:
            self.title = title
            self.published = False

        @event("Published")  # type: ignore[misc]
        def publish(self) -> None:
            self.published = True

    class Blog(Application):  # type: ignore[misc,type-arg]
        def create_then_publish(self, title: str) -> None:
            post = Post(title)
            self.save(post)
            post = self.repository.get(post.id)
            post.publish()
            self.save(post)

    from urllib.parse import urlparse  # noqa: PLC0415

    pg = urlparse(postgres_url)
    envs = {
        "memory": {},
        "sqlite": {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(workdir / "peer.sqlite3"),
        },
        "postgresql": {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": pg.path.lstrip("/"),
            "POSTGRES_HOST": pg.hostname or "",
            "POSTGRES_PORT": str(pg.port or 5432),
            "POSTGRES_USER": pg.username or "",
            "POSTGRES_PASSWORD": pg.password or "",
            "POSTGRES_SCHEMA": "public",
            "CREATE_TABLE": "y",
        },
    }
    for name, env in envs.items():
        app = Blog(env=env)
        start = time.perf_counter()
        for i in range(sizes.peer):
            app.create_then_publish(f"t{i}")
        rate = 2 * sizes.peer / (time.perf_counter() - start)
        results.put(f"peer_eventsourcing_{name}", events_per_s=round(rate))
        app.close()


# ------------------------------------------------------------------------------ reporting


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def write_markdown(results: Results, path: Path, smoke: bool) -> None:
    r = results.rows
    m = results.machine

    def get(key: str, field_: str) -> Any:
        return r.get(key, {}).get(field_)

    lines = [
        "# Benchmark results" + (" (smoke run: tiny sizes, not figures)" if smoke else ""),
        "",
        f"Run {m['when']} on {m['cpus']} cores / {m['memory_gib']} GiB, {m['platform']}; "
        f"Python {m['python']}, Apache Kafka {m['kafka']} (local broker, heap "
        f"{m['broker_heap_mb']} MiB, same machine), aiokafka {m['aiokafka']}, eventsourcing "
        f"{m['eventsourcing']}. Broker and clients share the 2 cores. One run of "
        "`make bench`; ratios compare with the raw-Kafka limits of the same run.",
        "",
        "## Limits: raw aiokafka against the same broker",
        "",
        "| scenario | 200 B records/s | 1 KB records/s |",
        "|---|---:|---:|",
        f"| produce, idempotent, acks=all | {get('raw_produce_200B', 'records_per_s')} | "
        f"{get('raw_produce_1024B', 'records_per_s')} |",
    ]
    for batch in (100, 500):
        lines.append(
            f"| transactional produce, {batch} per transaction | "
            f"{get(f'raw_txn_produce_200B_batch{batch}', 'records_per_s')} | "
            f"{get(f'raw_txn_produce_1024B_batch{batch}', 'records_per_s')} |"
        )
    lines.append(
        f"| consume (`getmany`, read_committed) | "
        f"{get('raw_consume_200B', 'records_per_s')} | "
        f"{get('raw_consume_1024B', 'records_per_s')} |"
    )
    raw_txn = get("raw_txn_produce_200B_batch500", "records_per_s")
    lines += [
        "",
        "## Command pipeline (one command-service process, CreatePost, ~300 B)",
        "",
        "| max commands per transaction | commands/s | ratio to raw transactional "
        "produce (200 B, 500/txn) |",
        "|---:|---:|---:|",
    ]
    for key, row in r.items():
        if key.startswith("pipeline_batch"):
            lines.append(
                f"| {key.removeprefix('pipeline_batch')} | {row['commands_per_s']} | "
                f"{ratio(row['commands_per_s'], raw_txn)} |"
            )
    raw_consume_rate = get("raw_consume_200B", "records_per_s")
    lines += [
        "",
        "## Projector (one process, PostCreated events, ~400 B)",
        "",
        "| read store | events/s | ratio to raw consume (200 B) |",
        "|---|---:|---:|",
    ]
    for store in ("sqlite", "postgresql"):
        rate = get(f"projector_{store}", "events_per_s")
        lines.append(f"| {store} | {rate} | {ratio(rate, raw_consume_rate)} |")
    lines += [
        "",
        "## End to end: HTTP command accepted -> visible in the query service "
        "(with the consistency token), open loop",
        "",
        "| offered/s | achieved/s | p50 ms | p95 ms | p99 ms | errors | sustained |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for key, row in r.items():
        if key.startswith("e2e_") and "offered" in row:
            lines.append(
                f"| {row['offered']} | {row['achieved']} | {row['p50_ms']} | "
                f"{row['p95_ms']} | {row['p99_ms']} | {row['errors']} | "
                f"{'yes' if row['sustained'] else 'no'} |"
            )
    lines.append(
        f"\nHighest offered load sustained (no errors, >= 95 % achieved, p99 < 1 s): "
        f"{get('e2e_highest_sustained', 'commands_per_s')}/s. One client, sequential (no "
        f"queueing; {get('e2e_sequential', 'requests')} requests, run first): p50 "
        f"{get('e2e_sequential', 'p50_ms')} ms, p99 {get('e2e_sequential', 'p99_ms')} ms."
    )
    timers = r.get("workflow_timers")
    if timers:
        lines += [
            "",
            "## Workflow timers (scheduled publications, one workflow-service process)",
            "",
            "| timers | fired | late p50 ms | late p99 ms | late max ms | fired early |",
            "|---:|---:|---:|---:|---:|---:|",
            f"| {timers['timers']} | {timers['fired']} | {timers['p50_ms']} | "
            f"{timers['p99_ms']} | {timers['max_ms']} | {timers['early']} |",
        ]
    snap = r.get("snapshot_recovery")
    if snap:
        lines += [
            "",
            "## Recovery of one partition: full replay against snapshots",
            "",
            f"{snap['events']:,} events over {snap['aggregates']:,} aggregates in one partition. "
            "Restore = reading the partition's state (the service's "
            "`esctl_partition_restore_seconds`); ready = process start until it answered a "
            "command (includes Python start-up and the consumer-group join).",
            "",
            "| restore from | restore s | ready s |",
            "|---|---:|---:|",
            f"| full replay of the log | {snap['full_replay_restore_s']} | "
            f"{snap['full_replay_ready_s']} |",
            f"| snapshots + tail | {snap['with_snapshots_restore_s']} | "
            f"{snap['with_snapshots_ready_s']} |",
            "",
            f"Restore {snap['restore_speedup']}x faster with snapshots.",
        ]
    lines += [
        "",
        "## Recovery and memory of the command service",
        "",
        "| events (= aggregates) in its partitions | ready after start, s | events/s "
        "restored | RSS after restore, MB |",
        "|---:|---:|---:|---:|",
    ]
    for key, row in r.items():
        if key.startswith("recovery_"):
            lines.append(
                f"| {int(key.split('_')[1]):,} | {row['ready_s']} | "
                f"{row['events_per_s']} | {row['rss_mb']} |"
            )
    if "memory_per_100k_aggregates" in r:
        lines.append(
            f"\nMemory per 100k live aggregates: {r['memory_per_100k_aggregates']['mb']} MB."
        )
    lines += [
        "",
        "Peak RSS per service under the loads above:",
        "",
        "| process | peak RSS, MB |",
        "|---|---:|",
    ]
    for name, peak in sorted(r.get("peak_rss", {}).items()):
        lines.append(f"| {name} | {peak} |")
    lines += [
        "",
        "## A peer, side by side: the `eventsourcing` library",
        "",
        "Create-then-publish (two events per post), one client, sequential, same machine, "
        "same run.",
        "",
        "| persistence | eventsourcing events/s |",
        "|---|---:|",
    ]
    for name in ("memory", "sqlite", "postgresql"):
        lines.append(f"| {name} | {get(f'peer_eventsourcing_{name}', 'events_per_s')} |")
    path.write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------ main


async def main(args: argparse.Namespace) -> Results:
    sizes = Sizes.smoke() if args.smoke else Sizes()
    workdir = Path(tempfile.mkdtemp(prefix="esctl-bench-"))
    workdir.chmod(0o755)  # noqa: ASYNC240  # root-run PostgreSQL runs as `postgres`: let it in
    results = Results(machine=machine_facts())
    cluster: LocalKafkaCluster | None = None
    pg: LocalPostgres | None = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
    postgres_url = os.environ.get("TEST_POSTGRES_URL", "")
    rss = RssSampler()
    sampler = asyncio.create_task(rss.run())
    try:
        if not bootstrap:
            cluster = LocalKafkaCluster.create(workdir / "kafka", nodes=1, heap_mb=512)
            await asyncio.to_thread(cluster.start)
            bootstrap = cluster.bootstrap_servers
        if not postgres_url:
            from esctl.localstack.kafka import free_port  # noqa: PLC0415

            pg_dir = workdir / "pg"
            pg_dir.mkdir()
            pg_dir.chmod(0o755)
            pg = LocalPostgres(pg_dir / "data", port=free_port())
            await asyncio.to_thread(pg.start)
            postgres_url = pg.url
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("limits", lambda: scenario_limits(bootstrap, sizes, results)),
            (
                "command pipeline",
                lambda: scenario_pipeline(bootstrap, sizes, results, workdir, rss),
            ),
            (
                "projector",
                lambda: scenario_projector(bootstrap, postgres_url, sizes, results, workdir),
            ),
            ("end to end", lambda: scenario_end_to_end(bootstrap, sizes, results, workdir, rss)),
            ("recovery", lambda: scenario_recovery(bootstrap, sizes, results, workdir, rss)),
            (
                "workflow timers",
                lambda: scenario_workflow_timers(bootstrap, sizes, results, workdir),
            ),
            (
                "snapshot recovery",
                lambda: scenario_snapshot_recovery(bootstrap, sizes, results, workdir),
            ),
            (
                "peer",
                lambda: asyncio.to_thread(scenario_peer, postgres_url, sizes, results, workdir),
            ),
        ]
        if args.only:
            steps = [(n, f) for n, f in steps if n.startswith(args.only)]
        with Progress(console=console, transient=False) as progress:
            task = progress.add_task("benchmarks", total=len(steps))
            for name, step in steps:
                progress.update(task, description=f"benchmark: {name}")
                try:
                    await step()
                except Exception as exc:  # one failed scenario must not lose the others
                    console.print(f"[red]{name} failed[/red]: {exc!r}")
                    results.rows[f"error_{name.replace(' ', '_')}"] = {"error": repr(exc)}
                    if args.smoke:
                        raise
                progress.advance(task)
        results.rows["peak_rss"] = {k: round(v / 2**20, 1) for k, v in rss.peaks.items()}
    finally:
        sampler.cancel()
        if cluster is not None:
            await asyncio.to_thread(cluster.destroy)
        if pg is not None:
            await asyncio.to_thread(pg.destroy)
    return results


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks it all runs")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument(
        "--only",
        default="",
        help="run the scenarios whose name starts so (development; RESULTS.md is then not written)",
    )
    args = parser.parse_args()
    configure_logging("console", "warning")
    results = asyncio.run(main(args))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(
        json.dumps(
            {"machine": results.machine, "rows": results.rows, "smoke": args.smoke},
            indent=2,
            default=str,
        )
    )
    markdown = (
        args.out / "RESULTS.smoke.md" if args.smoke or args.only else ROOT / "bench" / "RESULTS.md"
    )
    write_markdown(results, markdown, args.smoke)
    console.print(f"wrote {args.out / 'results.json'} and {markdown}")


if __name__ == "__main__":
    cli()
