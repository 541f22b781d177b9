"""When the owner of a partition writes snapshots and checkpoints, and how a restore uses them.

The policy, the record formats and the checkpoint key are described in
`command_service/snapshots.py`; this module applies them to a partition's book.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from command_service.book import PartitionBook
from command_service.ports import PartitionHistory
from command_service.snapshots import decode_state, encode_state
from shared.kafka.records import OutboundRecord
from shared.logging import get_logger
from shared.messages.snapshots import (
    CHECKPOINT_KEY,
    UnreadableSnapshot,
    decode_checkpoint,
    encode_checkpoint,
)

log = get_logger(__name__)


class SnapshotPolicy:
    """Every `every` events (0: never), snapshots of the changed aggregates on `topic`, at
    most `per_transaction` per transaction, then a checkpoint."""

    def __init__(
        self, topic: str, clock: Callable[[], datetime], every: int, per_transaction: int
    ) -> None:
        self.topic = topic
        self.clock = clock
        self.every = every
        self.per_transaction = per_transaction

    async def load(self, history: PartitionHistory, partition: int, book: PartitionBook) -> int:
        """Aggregates from the snapshots of partition p into `book`; the offset to replay
        events from (0: everything)."""
        if not self.every:
            return 0
        latest = await history.snapshots(partition)
        checkpoint = latest.get(CHECKPOINT_KEY)
        if checkpoint is None:
            return 0  # no complete checkpoint yet: loose snapshots alone prove nothing
        try:
            start = decode_checkpoint(checkpoint)
            states = {
                key.decode(): decode_state(value)
                for key, value in latest.items()
                if key != CHECKPOINT_KEY and value is not None
            }
        except (UnreadableSnapshot, UnicodeDecodeError) as exc:
            log.warning("snapshots_unreadable_full_replay", partition=partition, error=str(exc))
            return 0
        book.aggregates.update(states)
        book.from_snapshots = len(states)
        return start

    def records(self, partition: int, book: PartitionBook) -> list[OutboundRecord]:
        """The snapshot records due in this transaction (none until `every` events)."""
        if not self.every or book.since_checkpoint < self.every:
            return []
        out = []
        for _ in range(min(len(book.dirty), self.per_transaction)):
            aggregate = book.dirty.pop()
            out.append(
                OutboundRecord(
                    self.topic,
                    encode_state(book.aggregates[aggregate]),
                    aggregate.encode(),
                    [("type", b"Snapshot")],
                    partition,
                )
            )
        if not book.dirty:
            out.append(
                OutboundRecord(
                    self.topic,
                    encode_checkpoint(book.log_end, len(book.aggregates), self.clock()),
                    CHECKPOINT_KEY,
                    [("type", b"Checkpoint")],
                    partition,
                )
            )
            log.info(
                "snapshot_checkpoint",
                partition=partition,
                next_offset=book.log_end,
                snapshots=len(out) - 1,
                aggregates=len(book.aggregates),
            )
            book.since_checkpoint = 0
        return out


__all__ = ["SnapshotPolicy"]
