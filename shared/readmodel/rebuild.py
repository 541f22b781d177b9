"""Rebuilding the read model from the start of the log without downtime.

A new generation of tables is filled from offset 0 of every partition while the live generation
keeps answering queries and the live projector keeps writing it. When the new generation has
caught up with the log end, one transaction makes it active. The live projector notices (its
next batch is refused as stale), re-reads positions (now the new generation's) and goes on from
there, so events that arrived during the rebuild are applied to the new generation too.

Interrupted (Ctrl-C, crash), a rebuild resumes where it stopped: its generation number and its
positions are in the database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shared.errors import ConfigurationError
from shared.kafka.clients import running
from shared.kafka.consumer import TopicConsumer
from shared.kafka.records import InboundRecord
from shared.lifecycle import archive
from shared.logging import get_logger
from shared.readmodel.pipeline import read_records
from shared.readmodel.store import ReadStore

log = get_logger(__name__)

REBUILD_KEY = "rebuild_generation"


@dataclass
class RebuildProgress:
    """`done` of `total` offsets read (markers included: the only total known in advance);
    `events` applied so far by this run (the archive's included)."""

    generation: int
    done: int
    total: int
    resumed: bool
    events: int = 0


@dataclass(frozen=True)
class RebuildResult:
    generation: int
    previous: int
    events: int


async def rebuild(
    store: ReadStore,
    bootstrap_servers: str,
    topic: str,
    *,
    batch: int = 5000,
    keep_old: bool = False,
    on_progress: Callable[[RebuildProgress], None] = lambda _: None,
    swap_grace_s: float = 2.0,
    archive_dir: Path | None = None,
) -> RebuildResult:
    """Fill a new generation from the archive of pruned events (if any), then the topic."""
    active = await store.migrate()
    pending = await store.meta(REBUILD_KEY)
    resumed = pending is not None
    target = int(pending) if pending else active + 1
    if not resumed:
        await store.drop_generation(target)  # leftovers of an older, abandoned attempt
        await store.set_meta(REBUILD_KEY, str(target))
    await store.create_generation(target)
    positions = await store.positions(target)
    consumer = TopicConsumer(bootstrap_servers, topic, max_partition_fetch_bytes=8 * 1024 * 1024)
    applied = 0
    async with running(consumer, f"rebuild could not read {topic}"):
        partitions = await consumer.partitions()
        consumer.assign(partitions)
        starts = await consumer.beginning_offsets(partitions)
        for p in partitions:
            if positions.get(p, 0) < starts[p]:
                applied += await _from_archive(
                    store, target, positions, archive_dir, topic, p, starts[p], batch
                )
            consumer.seek(p, positions.get(p, 0))
        start_total = sum(positions.values())
        while True:
            ends = await consumer.end_offsets(partitions)
            total = sum(ends.values())
            done = sum(positions.get(p, 0) for p in partitions)
            on_progress(
                RebuildProgress(target, done - start_total, total - start_total, resumed, applied)
            )
            # Within one offset of the end everywhere: what is left is at most a commit marker
            # or one event that the live projector applies to the new generation after the
            # swap (it continues from this generation's positions), so nothing is lost.
            if all(ends[p] - positions.get(p, 0) <= 1 for p in partitions):
                break
            fetched = await consumer.fetch(timeout_ms=500, max_records=batch)
            for records in fetched.values():
                if records:
                    applied += await _apply_records(store, target, positions, records)
    previous = await store.swap_generation(target)
    await store.set_meta(REBUILD_KEY, None)
    log.info("rebuild_swapped", generation=target, previous=previous, events=applied)
    if not keep_old:
        await asyncio.sleep(swap_grace_s)  # queries cache the active generation for 1 s
        await store.drop_generation(previous)
    return RebuildResult(target, previous, applied)


async def _from_archive(
    store: ReadStore,
    target: int,
    positions: dict[int, int],
    archive_dir: Path | None,
    topic: str,
    partition: int,
    log_start: int,
    batch: int,
) -> int:
    """Apply the archived (pruned) events of a partition up to the topic's log start."""
    if archive_dir is None or archive.archived_end(archive_dir, topic, partition) < log_start:
        raise ConfigurationError(
            f"{topic}[{partition}] starts at offset {log_start}: the events below were pruned. "
            "Rebuild with the archive they were written to (--archive DIR)."
        )
    applied = 0
    chunk: list[InboundRecord] = []
    for record in archive.read(archive_dir, topic, partition):
        if record.offset < positions.get(partition, 0):
            continue  # a resumed rebuild applied it already
        chunk.append(record)
        if len(chunk) >= batch:
            applied += await _apply_records(store, target, positions, chunk)
            chunk = []
    if chunk:
        applied += await _apply_records(store, target, positions, chunk)
    # The topic is read from the stored position on: a seek below its log start (the archive's
    # last slot may be a commit marker) lands on the log start, which the store accepts.
    log.info("rebuild_read_archive", partition=partition, events=applied, up_to=log_start)
    return applied


async def _apply_records(
    store: ReadStore, target: int, positions: dict[int, int], records: list[InboundRecord]
) -> int:
    events, unreadable = read_records(records)
    for bad in unreadable:
        log.error(
            "rebuild_skipped_event", partition=bad.partition, offset=bad.offset, error=bad.reason
        )
    partition = records[0].partition
    await store.apply_batch(
        target,
        partition,
        events,
        start_offset=positions.get(partition, 0),
        next_offset=records[-1].offset + 1,
        require_active=False,
    )
    positions[partition] = records[-1].offset + 1
    return len(events)
