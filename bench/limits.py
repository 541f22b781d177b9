"""The limits: raw aiokafka against the same broker (produce, transactional produce, consume)."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition

from bench.common import Results, Sizes, payload
from shared.kafka import make_consumer, make_producer, make_transactional_producer
from shared.kafka.topics import TopicSpec, ensure_topics


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


@dataclass(frozen=True)
class Template:
    """The value and headers of an output record of the real pipeline, copied as they are."""

    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)


#: stand-ins with the sizes of a PostCreated event and its accepted outcome, used only when no
#: record of the real pipeline was sampled in the run
FALLBACK_EVENT = Template(payload(420), [("type", b"PostCreated"), ("schema_version", b"1")])
FALLBACK_OUTCOME = Template(payload(260), [("type", b"CommandOutcome")])


@dataclass(frozen=True)
class EosRun:
    """One run of the raw exactly-once loop: commands, and the seconds from the first command
    taken from a fetch to the last transaction committed."""

    commands: int
    seconds: float
    #: CPU (user + system) of this process over the same interval, per command
    cpu_us_per_command: float = 0.0

    @property
    def commands_per_s(self) -> float:
        return self.commands / self.seconds


async def raw_eos_loop(
    bootstrap: str,
    *,
    commands: str,
    events: str,
    results: str,
    partitions: int,
    n: int,
    batch: int,
    event: Template,
    outcome: Template,
) -> EosRun:
    """The ceiling of the command pipeline in Python: its shape without its work.

    A group consumer (read_committed) fetches up to `batch` command records at a time; for each
    partition in the fetch, that partition's own transactional producer (one per partition, as
    the processor fences) begins a transaction, produces one event per command to the same
    partition of `events` and waits for the acks (the outcome carries the events' offsets),
    then one outcome per command to `results`, waits, sends the offsets to the transaction and
    commits; partitions run concurrently. No decoding, no deciding: the records are copies of
    `event` and `outcome` (sampled from the real pipeline in the same run), keyed as the
    commands. Same producer and consumer settings as the services (shared.kafka's factories).
    """
    group = f"bench-eos-{uuid.uuid4().hex[:8]}"
    producers = {
        p: make_transactional_producer(bootstrap, f"{group}.{commands}.{p}")
        for p in range(partitions)
    }
    consumer = make_consumer(bootstrap, commands, group_id=group, max_poll_records=batch)
    await asyncio.gather(*(p.start() for p in producers.values()))
    await consumer.start()

    async def transact(tp: TopicPartition, records: list[Any]) -> None:
        producer = producers[tp.partition]
        await producer.begin_transaction()
        sent = [
            await producer.send(
                events, event.value, key=r.key, partition=tp.partition, headers=event.headers
            )
            for r in records
        ]
        await asyncio.gather(*sent)
        sent = [
            await producer.send(
                results, outcome.value, key=r.key, partition=tp.partition, headers=outcome.headers
            )
            for r in records
        ]
        await asyncio.gather(*sent)
        await producer.send_offsets_to_transaction({tp: records[-1].offset + 1}, group)
        await producer.commit_transaction()

    try:
        done = 0
        first: float | None = None
        cpu0 = 0.0
        while done < n:
            fetched = await consumer.getmany(timeout_ms=20, max_records=batch)
            jobs = [transact(tp, recs) for tp, recs in fetched.items() if recs]
            if not jobs:
                continue
            if first is None:
                first, cpu0 = time.perf_counter(), time.process_time()
            await asyncio.gather(*jobs)
            done += sum(len(recs) for recs in fetched.values())
        assert first is not None
        cpu_us = (time.process_time() - cpu0) / done * 1e6
        return EosRun(done, time.perf_counter() - first, round(cpu_us, 1))
    finally:
        await consumer.stop()
        await asyncio.gather(*(p.stop() for p in producers.values()))


async def raw_eos_latency(
    bootstrap: str, topic: str, n: int, event: Template, outcome: Template
) -> dict[str, float]:
    """The floor of one command's transaction, sequential, in ms: begin, produce the event and
    wait for its ack, produce the outcome and wait, send an offset, commit (no fetch, no
    decision). The first 10 transactions warm up and are not counted."""
    group = f"bench-eos-lat-{uuid.uuid4().hex[:8]}"
    producer = make_transactional_producer(bootstrap, group)
    await producer.start()
    tp = TopicPartition(topic, 0)
    times: list[float] = []
    try:
        for i in range(n + 10):
            start = time.perf_counter()
            await producer.begin_transaction()
            await (await producer.send(topic, event.value, partition=0, headers=event.headers))
            await (await producer.send(topic, outcome.value, partition=0, headers=outcome.headers))
            await producer.send_offsets_to_transaction({tp: i + 1}, group)
            await producer.commit_transaction()
            if i >= 10:
                times.append((time.perf_counter() - start) * 1000)
    finally:
        await producer.stop()
    times.sort()
    return {
        "p50_ms": round(times[len(times) // 2], 1),
        "p99_ms": round(times[min(len(times) - 1, int(0.99 * len(times)))], 1),
        "transactions": len(times),
    }
