"""What the owner of one partition knows: the state of its aggregates, the outcomes of its
commands, and how far its snapshots lag. Rebuilt from Kafka when the partition is assigned;
bounded where it could grow forever.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from command_service.dedup import OutcomeBook
from command_service.domain import AggregateState, evolve
from shared.errors import MalformedRecordError
from shared.kafka.records import InboundRecord
from shared.messages.codec import decode_event


@dataclass
class PartitionBook:
    """Everything the owner of one partition knows."""

    outcomes: OutcomeBook
    aggregates: dict[str, AggregateState] = field(default_factory=dict)
    events_applied: int = 0
    # snapshots (see command_service/snapshot_policy.py)
    from_snapshots: int = 0  # aggregates restored from snapshots
    log_end: int = 0  # next offset of events partition p, as far as this owner knows
    since_checkpoint: int = 0  # events appended (or replayed) since the last checkpoint
    dirty: set[str] = field(default_factory=set)  # aggregates changed since it

    def keep(self, aggregate_id: str, state: AggregateState, appended: int) -> None:
        """The state of an aggregate after `appended` new events."""
        self.aggregates[aggregate_id] = state
        self.dirty.add(aggregate_id)
        self.since_checkpoint += appended

    def fold_events(self, records: Sequence[InboundRecord]) -> None:
        """Events of the partition's log, in order (the restore)."""
        for record in records:
            decoded = decode_event(record.value)  # our own log: a failure here is corruption
            env = decoded.envelope
            state = self.aggregates.get(env.aggregate_id)
            expected = (state.version if state else 0) + 1
            if state is not None and env.aggregate_version < expected and self.from_snapshots:
                # a snapshot written after the checkpoint already holds this event
                continue
            if env.aggregate_version != expected:
                raise MalformedRecordError(
                    f"event log corrupt at {record.topic}[{record.partition}]@{record.offset}: "
                    f"{env.aggregate_id} version {env.aggregate_version}, expected {expected}"
                )
            self.aggregates[env.aggregate_id] = evolve(
                state, decoded.payload, aggregate_id=env.aggregate_id, at=env.occurred_at
            )
            self.events_applied += 1
            self.dirty.add(env.aggregate_id)
            self.outcomes.restore_event(env, record)


__all__ = ["PartitionBook"]
