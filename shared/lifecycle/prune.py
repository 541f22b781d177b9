"""Pruning the event log below a safe offset, after archiving what goes.

For each partition p of `posts.events` the safe offset is the lowest of:

* the first offset at or after `--before` (nothing newer is pruned);
* the partition's snapshot checkpoint (`posts.snapshots`, `__checkpoint__.next_offset`): every
  aggregate whose events go has a snapshot, so the command service still restores it;
* the committed offset of every consumer group reading the topic (projector, workflows, any
  other): no reader loses events it has not processed;
* nothing below the current log start is touched.

Then the records from the log start to the safe offset are written to the archive (files with a
manifest and checksums, `shared/lifecycle/archive.py`), and only after that deleted from the topic
(`DeleteRecords`). Projection rebuilds read the archive first, then the topic.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from aiokafka import TopicPartition
from aiokafka.admin import RecordsToDelete
from aiokafka.errors import KafkaError

from shared.errors import InfrastructureUnavailable
from shared.kafka.clients import make_admin, make_consumer, topic_partitions
from shared.kafka.reader import read_latest_by_key, read_partition_to_end
from shared.kafka.records import InboundRecord
from shared.kafka.topics import Topics
from shared.lifecycle import archive
from shared.logging import get_logger

log = get_logger(__name__)


@dataclass
class PartitionPlan:
    partition: int
    log_start: int
    log_end: int
    by_date: int
    checkpoint: int
    groups: dict[str, int] = field(default_factory=dict)

    @property
    def safe(self) -> int:
        return max(self.log_start, min(self.by_date, self.checkpoint, *self.groups.values()))

    @property
    def records(self) -> int:
        return self.safe - self.log_start

    def limited_by(self) -> str:
        limits = {"--before": self.by_date, "snapshot checkpoint": self.checkpoint}
        limits |= {f"group {g}": o for g, o in self.groups.items()}
        return min(limits, key=lambda k: limits[k])


async def _checkpoint(bootstrap: str, topic: str, partition: int) -> int:
    value = (await read_latest_by_key(bootstrap, topic, partition)).get(b"__checkpoint__")
    return int(json.loads(value).get("next_offset", 0)) if value else 0


async def _group_offsets(bootstrap: str, topic: str) -> dict[str, dict[int, int]]:
    """Committed offsets on `topic`, per consumer group that has any."""
    admin = make_admin(bootstrap)
    out: dict[str, dict[int, int]] = {}
    try:
        await admin.start()
        for group in await admin.list_consumer_groups():
            group_id = group[0]
            offsets = await admin.list_consumer_group_offsets(group_id)
            mine = {tp.partition: m.offset for tp, m in offsets.items() if tp.topic == topic}
            if mine:
                out[group_id] = mine
    finally:
        await admin.close()
    return out


async def plan(bootstrap: str, topics: Topics, before: datetime) -> list[PartitionPlan]:
    topic = topics.events
    consumer = make_consumer(bootstrap)
    try:
        await consumer.start()
        tps = [TopicPartition(topic, p) for p in await topic_partitions(consumer, topic)]
        starts = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        found = await consumer.offsets_for_times({tp: int(before.timestamp() * 1000) for tp in tps})
    except KafkaError as exc:
        raise InfrastructureUnavailable(f"cannot read the offsets of {topic}: {exc}") from exc
    finally:
        with contextlib.suppress(KafkaError):
            await consumer.stop()
    groups = await _group_offsets(bootstrap, topic)
    plans = []
    for tp in tps:
        hit = found.get(tp)
        plans.append(
            PartitionPlan(
                partition=tp.partition,
                log_start=starts[tp],
                log_end=ends[tp],
                by_date=hit.offset if hit is not None else ends[tp],
                checkpoint=await _checkpoint(bootstrap, topics.snapshots, tp.partition),
                # a group that never committed on a partition has read nothing of it
                groups={g: offs.get(tp.partition, 0) for g, offs in groups.items()},
            )
        )
    return plans


async def prune(
    bootstrap: str,
    topics: Topics,
    plans: list[PartitionPlan],
    archive_dir: Path,
    *,
    on_progress: Callable[[int, int, int], None] = lambda events, done, total: None,
) -> list[archive.ArchiveEntry]:
    """Archive, then delete, the records below each plan's safe offset.

    `on_progress(events, done, total)`: events archived so far; `done` of `total` offsets
    (transaction markers take offsets too, and only the offsets are known in advance)."""
    total = sum(p.records for p in plans)
    done = 0
    events = 0
    written = []
    for p in plans:
        if p.records <= 0:
            continue
        # streamed: read batch by batch into the archive file, whatever the partition's size
        writer = archive.ArchiveWriter(archive_dir, topics.events, p.partition)

        def keep(
            batch: Sequence[InboundRecord],
            p: PartitionPlan = p,
            w: archive.ArchiveWriter = writer,
            base: int = done,
            archived: int = events,
        ) -> None:
            w.add(r for r in batch if r.offset < p.safe)
            read = min(batch[-1].offset + 1 - p.log_start, p.records) if batch else 0
            on_progress(archived + w.count, base + read, total)

        try:
            await read_partition_to_end(
                bootstrap,
                topics.events,
                p.partition,
                keep,
                start_offset=p.log_start,
                until=p.safe,
            )
        except BaseException:
            writer.abort()
            raise
        entry = writer.finish(p.safe)
        written.append(entry)
        admin = make_admin(bootstrap)
        try:
            await admin.start()
            await admin.delete_records(
                {TopicPartition(topics.events, p.partition): RecordsToDelete(p.safe)}
            )
        except KafkaError as exc:
            raise InfrastructureUnavailable(
                f"archived {topics.events}[{p.partition}] up to {p.safe}, but deleting failed "
                f"({exc}); the archive is complete, run prune again"
            ) from exc
        finally:
            await admin.close()
        done += p.records
        events += entry.count
        on_progress(events, done, total)
        log.info(
            "partition_pruned",
            partition=p.partition,
            below=p.safe,
            archived=entry.count,
            file=entry.file,
        )
    return written
