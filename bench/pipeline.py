"""The command pipeline: commands/s through one command-service process, and the raw
exactly-once loop of the same shape (its ceiling in Python) in the same minute.

The method (issue 16): the backlog of CreatePost commands is written while no command service
runs. One process registers the author and stops; the backlog is produced; a fresh process
starts and works through it. The clock runs from the first command decided (the earliest
`processed_at` of the backlog's outcomes: the handler's clock when it started deciding the
first batch) to the moment the group's committed offsets were seen at the backlog's end (polled
every 20 ms), and every command of the backlog is counted. Start-up, restore and the group join
are outside the interval; no command is counted that was decided before the clock started.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bench.common import Results, RssSampler, Sizes, register_author, service_env, spread
from bench.durability import kafka_durability
from bench.limits import (
    FALLBACK_EVENT,
    FALLBACK_OUTCOME,
    EosRun,
    Template,
    raw_eos_latency,
    raw_eos_loop,
)
from esctl.localstack.kafka import LocalKafkaCluster
from esctl.localstack.services import ServiceProcess
from shared.kafka import make_consumer, make_producer
from shared.kafka.topics import Topics, TopicSpec, ensure_topics
from shared.messages import encode_command
from shared.messages.blog import CreatePost
from shared.settings import KafkaSettings

PARTITIONS = 6
AUTHOR = "bench-author"


@dataclass(frozen=True)
class PipelineRun:
    commands: int
    seconds: float
    event: Template | None
    outcome: Template | None
    events_topic: str
    #: the service's CPU (user + system) from the clock's start to its end, per command
    cpu_us_per_command: float

    @property
    def commands_per_s(self) -> float:
        return self.commands / self.seconds


async def _end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = make_consumer(bootstrap, isolation_level="read_uncommitted")
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)])
        return {tp.partition: int(offset) for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def _first_records_after(
    bootstrap: str, topic: str, starts: dict[int, int], timeout_s: float = 60
) -> list[Any]:
    """The first committed record at or after `starts[p]` of every partition that has one."""
    consumer = make_consumer(bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        ends = await consumer.end_offsets(tps)
        want = [tp for tp in tps if ends[tp] > starts[tp.partition]]
        consumer.assign(want)
        for tp in want:
            consumer.seek(tp, starts[tp.partition])
        firsts: dict[TopicPartition, Any] = {}
        deadline = time.monotonic() + timeout_s
        while len(firsts) < len(want) and time.monotonic() < deadline:
            got = await consumer.getmany(timeout_ms=500, max_records=100)
            for tp, records in got.items():
                if records and tp not in firsts:
                    firsts[tp] = records[0]
                    consumer.pause(tp)
        return list(firsts.values())
    finally:
        await consumer.stop()


async def produce_creates(bootstrap: str, topic: str, n: int, author: str) -> None:
    """n CreatePost commands (~300 B, one new post each), keyed by post (murmur2, as the
    services partition)."""
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


async def _wait_committed(
    bootstrap: str,
    group: str,
    topic: str,
    end: int,
    svc: ServiceProcess,
    timeout_s: float,
    cpu: list[tuple[float, float]] | None = None,
) -> float:
    """Poll the group's committed offsets until they reach `end`; the wall time it was seen.
    With `cpu`, append (wall time, the service's CPU seconds) at every poll."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    process = psutil.Process(svc.pid) if cpu is not None and svc.pid is not None else None
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process is not None and cpu is not None:
                times = process.cpu_times()
                cpu.append((time.time(), times.user + times.system))
            offsets = await admin.list_consumer_group_offsets(group)
            done = sum(m.offset for tp, m in offsets.items() if tp.topic == topic and m.offset > 0)
            if done >= end:
                return time.time()
            if svc.proc is not None and svc.proc.poll() is not None:
                raise RuntimeError(f"command service exited:\n{svc.logs()[-3000:]}")
            await asyncio.sleep(0.02)
        raise TimeoutError(f"{group} did not commit {topic} to {end} within {timeout_s}s")
    finally:
        await admin.close()


def _template(record: Any) -> Template:
    return Template(bytes(record.value), [(k, bytes(v)) for k, v in record.headers])


async def run_pipeline_once(
    bootstrap: str,
    n: int,
    batch: int,
    workdir: Path,
    rss: RssSampler,
    *,
    replication: int = 1,
    label: str = "",
) -> PipelineRun:
    """One measured run of one command-service process over a backlog of n CreatePost."""
    prefix = f"bp{batch}{label}-{uuid.uuid4().hex[:6]}."
    topics = Topics.from_settings(KafkaSettings(topic_prefix=prefix))
    group = f"{prefix}command-service"
    env = service_env(
        bootstrap,
        prefix,
        BATCH_MAX_RECORDS=str(batch),
        BATCH_MAX_WAIT_MS="20",
        REPLICATION_FACTOR=str(replication),
    )
    # 1. the author exists (a first process registers it and stops cleanly)
    setup = ServiceProcess("command_service", env, workdir, f"pipeline{label}-{batch}-setup")
    setup.start()
    try:
        await setup.wait_healthy()
        await register_author(bootstrap, topics, AUTHOR)
    finally:
        await setup.stop()
    # 2. the backlog, written while no command service runs
    results_start = await _end_offsets(bootstrap, topics.command_results)
    events_start = await _end_offsets(bootstrap, topics.events)
    await produce_creates(bootstrap, topics.commands, n, AUTHOR)
    end = sum((await _end_offsets(bootstrap, topics.commands)).values())
    # 3. a fresh process works through it
    svc = ServiceProcess("command_service", env, workdir, f"pipeline{label}-{batch}")
    svc.start()
    try:
        rss.watch(f"command_service (pipeline{label}, batch {batch})", svc.pid)
        cpu: list[tuple[float, float]] = []
        finished = await _wait_committed(
            bootstrap, group, topics.commands, end, svc, timeout_s=max(120.0, n / 50), cpu=cpu
        )
    finally:
        await svc.stop()
    outcomes = await _first_records_after(bootstrap, topics.command_results, results_start)
    events = await _first_records_after(bootstrap, topics.events, events_start)
    decided = [json.loads(r.value)["processed_at"] for r in outcomes]
    if not decided:
        raise RuntimeError("the pipeline wrote no outcome for the backlog")
    started = min(datetime.fromisoformat(d.replace("Z", "+00:00")).timestamp() for d in decided)
    # the service's CPU at the clock's start: the last sample before it (polls are 20 ms apart)
    cpu_start = max((c for t, c in cpu if t <= started), default=cpu[0][1] if cpu else 0.0)
    cpu_end = cpu[-1][1] if cpu else 0.0
    return PipelineRun(
        commands=n,
        seconds=max(finished - started, 1e-6),
        event=_template(events[0]) if events else None,
        outcome=_template(outcomes[0]) if outcomes else None,
        events_topic=topics.events,
        cpu_us_per_command=round((cpu_end - cpu_start) / n * 1e6, 1),
    )


async def run_raw_eos_once(
    bootstrap: str, n: int, batch: int, event: Template, outcome: Template, *, replication: int
) -> EosRun:
    """The raw exactly-once loop over its own backlog of the same commands."""
    base = f"bench-eos-{uuid.uuid4().hex[:6]}"
    durable = {"min.insync.replicas": str(min(2, replication))}
    names = [f"{base}.commands", f"{base}.events", f"{base}.results"]
    await ensure_topics(bootstrap, [TopicSpec(t, PARTITIONS, replication, durable) for t in names])
    await produce_creates(bootstrap, names[0], n, AUTHOR)
    return await raw_eos_loop(
        bootstrap,
        commands=names[0],
        events=names[1],
        results=names[2],
        partitions=PARTITIONS,
        n=n,
        batch=batch,
        event=event,
        outcome=outcome,
    )


async def scenario_pipeline(
    bootstrap: str,
    sizes: Sizes,
    results: Results,
    workdir: Path,
    rss: RssSampler,
    *,
    batches: tuple[int, ...] | None = None,
    replication: int = 1,
    key: str = "pipeline",
) -> None:
    """Per batch size, `sizes.repeat` times: the pipeline, then the raw loop, pair by pair
    (rows `<key>_batch<b>` and `raw_eos_<key>_batch<b>`; the ratio is the median of the
    pairs' ratios)."""
    label = "" if replication == 1 else f"-rf{replication}"
    event, outcome = FALLBACK_EVENT, FALLBACK_OUTCOME
    sampled = False
    events_topic = ""
    for batch in batches or sizes.pipeline_batches:
        pipeline_rates: list[float] = []
        raw_rates: list[float] = []
        pipeline_cpu: list[float] = []
        raw_cpu: list[float] = []
        for _ in range(sizes.repeat):
            run = await run_pipeline_once(
                bootstrap, sizes.pipeline, batch, workdir, rss, replication=replication, label=label
            )
            if not sampled and run.event is not None and run.outcome is not None:
                event, outcome, sampled = run.event, run.outcome, True
            events_topic = run.events_topic
            pipeline_rates.append(run.commands_per_s)
            pipeline_cpu.append(run.cpu_us_per_command)
            raw = await run_raw_eos_once(
                bootstrap, sizes.pipeline, batch, event, outcome, replication=replication
            )
            raw_rates.append(raw.commands_per_s)
            raw_cpu.append(raw.cpu_us_per_command)
        pipe, raw_spread = spread(pipeline_rates), spread(raw_rates)
        pairs = spread([p / r for p, r in zip(pipeline_rates, raw_rates, strict=True)])
        results.put(
            f"{key}_batch{batch}",
            commands_per_s=round(pipe["median"]),
            min=round(pipe["min"]),
            max=round(pipe["max"]),
            runs=[round(v) for v in pipe["runs"]],
            commands=sizes.pipeline,
            replication_factor=replication,
            ratio_to_raw_eos=pairs["median"],
            ratio_to_raw_eos_min=pairs["min"],
            ratio_to_raw_eos_max=pairs["max"],
            cpu_us_per_command=spread(pipeline_cpu)["median"],
        )
        results.put(
            f"raw_eos_{key}_batch{batch}",
            commands_per_s=round(raw_spread["median"]),
            min=round(raw_spread["min"]),
            max=round(raw_spread["max"]),
            runs=[round(v) for v in raw_spread["runs"]],
            cpu_us_per_command=spread(raw_cpu)["median"],
            commands=sizes.pipeline,
            replication_factor=replication,
            event_bytes=len(event.value),
            outcome_bytes=len(outcome.value),
            sampled_from_pipeline=sampled,
        )
    # what the broker promised while it was measured (the service's own events topic)
    results.put(f"durability_{key}", **await kafka_durability(bootstrap, events_topic))
    latency_topic = f"bench-eos-latency-{uuid.uuid4().hex[:6]}"
    min_isr = {"min.insync.replicas": str(min(2, replication))}
    await ensure_topics(bootstrap, [TopicSpec(latency_topic, 1, replication, min_isr)])
    results.put(
        f"raw_eos_latency_{key}",
        replication_factor=replication,
        **await raw_eos_latency(bootstrap, latency_topic, sizes.latency, event, outcome),
    )


async def scenario_pipeline_durable(
    sizes: Sizes, results: Results, workdir: Path, rss: RssSampler
) -> None:
    """The same rows on the durable configuration a team would run: 3 local brokers (`esctl
    kafka start --nodes 3`'s cluster), the service's topics at replication factor 3 with
    min.insync.replicas=2 (REPLICATION_FACTOR=3), the raw loop's topics likewise."""
    cluster = LocalKafkaCluster.create(workdir / "kafka3", nodes=3, heap_mb=sizes.durable_heap_mb)
    await asyncio.to_thread(cluster.start)
    try:
        await scenario_pipeline(
            cluster.bootstrap_servers,
            sizes,
            results,
            workdir,
            rss,
            batches=sizes.durable_batches,
            replication=3,
            key="pipeline_rf3",
        )
    finally:
        await asyncio.to_thread(cluster.destroy)
