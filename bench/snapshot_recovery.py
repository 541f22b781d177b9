"""Recovery of one partition: full replay against snapshots plus the tail."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from bench.common import Results, Sizes, register_author, service_env
from command_service.snapshots import CHECKPOINT_KEY
from esctl.localstack.services import ServiceProcess
from shared.kafka import make_transactional_producer
from shared.kafka.reader import read_latest_by_key
from shared.kafka.topics import Topics, bootstrap_system_topics
from shared.messages import encode_event
from shared.messages.blog import PostCreated, PostEdited
from shared.settings import KafkaSettings


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
            service_env(
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
            await register_author(bootstrap, topics, f"snap-author-{run}", wait_s=900)
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
