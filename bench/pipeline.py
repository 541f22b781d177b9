"""The command pipeline: commands/s through one command-service process."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

from aiokafka import TopicPartition

from bench.common import Results, RssSampler, Sizes, register_author, service_env
from esctl.localstack.services import ServiceProcess
from shared.kafka import make_consumer, make_producer
from shared.kafka.topics import Topics
from shared.messages import encode_command
from shared.messages.blog import CreatePost
from shared.settings import KafkaSettings


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
            service_env(bootstrap, prefix, BATCH_MAX_RECORDS=str(batch), BATCH_MAX_WAIT_MS="20"),
            workdir,
            f"pipeline-{batch}",
        )
        svc.start()
        try:
            await svc.wait_healthy()
            rss.watch(f"command_service (pipeline, batch {batch})", svc.pid)
            await register_author(bootstrap, topics, "bench-author")
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
