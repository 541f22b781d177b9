"""The limits: raw aiokafka against the same broker (produce, transactional produce, consume)."""

from __future__ import annotations

import asyncio
import time
import uuid

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
