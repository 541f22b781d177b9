"""Adapters for the command handler's ports: Kafka-backed and in-memory (for unit tests)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from shared.errors import ConfigurationError
from shared.kafka.reader import (
    TopicFollower,
    read_latest_by_key,
    read_partition_to_end,
    start_offset,
)
from shared.kafka.records import InboundRecord
from shared.kafka.topics import Topics


class KafkaPartitionHistory:
    """Restores a partition from the event log, then the outcomes from the results topic.

    Both reads stop at the last stable offset taken when each starts. That is complete because
    the processor calls this only after its new transactional producer fenced the previous
    owner, so no transaction on these partitions can still be open.
    """

    def __init__(self, bootstrap_servers: str, topics: Topics) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topics = topics

    async def snapshots(self, partition: int) -> dict[bytes, bytes | None]:
        """The latest snapshot record per key of snapshots partition p (compaction's view)."""
        return await read_latest_by_key(self.bootstrap_servers, self.topics.snapshots, partition)

    async def replay(
        self,
        partition: int,
        on_events: Callable[[Sequence[InboundRecord]], None],
        on_outcomes: Callable[[Sequence[InboundRecord]], None],
        *,
        events_from: int = 0,
    ) -> int:
        first = await start_offset(self.bootstrap_servers, self.topics.events, partition)
        if events_from < first:
            raise ConfigurationError(
                f"{self.topics.events}[{partition}] was pruned below offset {first}, but the "
                f"restore needs it from {events_from} (no readable snapshot checkpoint covers "
                "the pruned range): refusing to decide on incomplete state"
            )
        end = await read_partition_to_end(
            self.bootstrap_servers,
            self.topics.events,
            partition,
            on_events,
            start_offset=events_from,
        )
        await read_partition_to_end(
            self.bootstrap_servers, self.topics.command_results, partition, on_outcomes
        )
        return end


class KafkaAuthorDirectory:
    """The set of registered author ids, followed from every partition of the event log.

    Reads only the `type` header of each event, so following the log costs no JSON parsing.
    Consistency: an author whose registration was committed before a `refresh()` call is
    known after it; a registration still in flight (its outcome not yet received) may not be.
    """

    def __init__(self, bootstrap_servers: str, topics: Topics) -> None:
        self._ids: set[str] = set()
        self._follower = TopicFollower(bootstrap_servers, topics.events, self._on_batch)

    def _on_batch(self, records: Sequence[InboundRecord]) -> None:
        for record in records:
            if record.key and record.header("type") == "AuthorRegistered":
                self._ids.add(record.key.decode())

    def known(self, author_id: str) -> bool:
        return author_id in self._ids

    async def refresh(self, timeout_s: float) -> bool:
        return await self._follower.caught_up(timeout_s)

    async def start(self) -> None:
        await self._follower.start()

    async def stop(self) -> None:
        await self._follower.stop()


class InMemoryAuthorDirectory:
    """A fixed set of authors."""

    def __init__(self, ids: set[str] | None = None) -> None:
        self.ids = set(ids or ())
        self.refreshes = 0

    def known(self, author_id: str) -> bool:
        return author_id in self.ids

    async def refresh(self, timeout_s: float) -> bool:
        self.refreshes += 1
        return True


class InMemoryPartitionHistory:
    """Histories held in lists: what was 'in Kafka' for each partition."""

    def __init__(self) -> None:
        self.events: dict[int, list[InboundRecord]] = {}
        self.outcomes: dict[int, list[InboundRecord]] = {}
        self.snapshot_records: dict[int, dict[bytes, bytes | None]] = {}

    async def snapshots(self, partition: int) -> dict[bytes, bytes | None]:
        return dict(self.snapshot_records.get(partition, {}))

    async def replay(
        self,
        partition: int,
        on_events: Callable[[Sequence[InboundRecord]], None],
        on_outcomes: Callable[[Sequence[InboundRecord]], None],
        *,
        events_from: int = 0,
    ) -> int:
        events = self.events.get(partition, [])
        on_events([r for r in events if r.offset >= events_from])
        on_outcomes(self.outcomes.get(partition, []))
        return max((r.offset + 1 for r in events), default=0)
