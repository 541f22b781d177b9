"""Pruning the event log below a safe offset, after archiving what goes.

For each partition p of `posts.events` the safe offset is the lowest of:

* the first offset at or after `--before` (nothing newer is pruned);
* the partition's snapshot checkpoint (`posts.snapshots`, `__checkpoint__.next_offset`, the
  contract in `shared/messages/snapshots.py`): every aggregate whose events go has a snapshot,
  so the command service still restores it; a checkpoint it cannot read counts as 0;
* the committed offset of every consumer group reading the topic (projector, workflows, any
  other): no reader loses events it has not processed;
* nothing below the current log start is touched.

Then the records from the log start to the safe offset are written to the archive (files with a
manifest and checksums, `shared/lifecycle/archive.py`), and only after that deleted from the topic
(`DeleteRecords`). Projection rebuilds read the archive first, then the topic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from shared.kafka.admin import Admin
from shared.kafka.clients import running
from shared.kafka.consumer import TopicConsumer
from shared.kafka.reader import read_latest_by_key, read_partition_to_end
from shared.kafka.records import InboundRecord
from shared.kafka.topics import Topics
from shared.lifecycle import archive
from shared.logging import get_logger
from shared.messages.snapshots import CHECKPOINT_KEY, UnreadableSnapshot, decode_checkpoint

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
    value = (await read_latest_by_key(bootstrap, topic, partition)).get(CHECKPOINT_KEY)
    if not value:
        return 0
    try:
        return decode_checkpoint(value)
    except UnreadableSnapshot as exc:
        # the command service replays such a partition in full: it needs every event
        log.warning("checkpoint_unreadable", topic=topic, partition=partition, error=str(exc))
        return 0


async def _group_offsets(bootstrap: str, topic: str) -> dict[str, dict[int, int]]:
    """Committed offsets on `topic`, per consumer group that has any."""
    out: dict[str, dict[int, int]] = {}
    async with running(Admin(bootstrap), "cannot read the consumer groups") as admin:
        for group_id in await admin.consumer_groups():
            mine = await admin.group_offsets(group_id, topic)
            if mine:
                out[group_id] = mine
    return out


async def plan(bootstrap: str, topics: Topics, before: datetime) -> list[PartitionPlan]:
    topic = topics.events
    async with running(
        TopicConsumer(bootstrap, topic), f"cannot read the offsets of {topic}"
    ) as consumer:
        partitions = await consumer.partitions()
        starts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        found = await consumer.offsets_for_time(int(before.timestamp() * 1000), partitions)
    groups = await _group_offsets(bootstrap, topic)
    plans = []
    for p in partitions:
        hit = found[p]
        plans.append(
            PartitionPlan(
                partition=p,
                log_start=starts[p],
                log_end=ends[p],
                by_date=hit if hit is not None else ends[p],
                checkpoint=await _checkpoint(bootstrap, topics.snapshots, p),
                # a group that never committed on a partition has read nothing of it
                groups={g: offs.get(p, 0) for g, offs in groups.items()},
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

        def deleting_failed(exc: BaseException, p: PartitionPlan = p) -> str:
            return (
                f"archived {topics.events}[{p.partition}] up to {p.safe}, but deleting "
                f"failed ({exc}); the archive is complete, run prune again"
            )

        async with running(Admin(bootstrap), deleting_failed) as admin:
            await admin.delete_records_before(topics.events, {p.partition: p.safe})
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
