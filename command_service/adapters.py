"""Adapters for the command service's ports, Kafka-backed and in memory, each pair held to one
contract suite: the handler's partition history and author directory
(tests/contract/test_command_adapters.py), and the HTTP edge's command client (on Kafka:
shared.kafka.commands; tests/contract/test_command_client.py)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from uuid import UUID

from shared.errors import ConfigurationError, InfrastructureUnavailable
from shared.kafka.reader import (
    TopicFollower,
    read_latest_by_key,
    read_partition_to_end,
    start_offset,
)
from shared.kafka.records import InboundRecord
from shared.kafka.topics import Topics
from shared.messages.codec import EncodedMessage
from shared.messages.results import CommandOutcome

#: The processor's part, played in memory: the outcome of a command, or None for "no outcome
#: within the wait" (a slow or stopped processor).
Answer = Callable[[UUID, EncodedMessage], CommandOutcome | None]


def _refuse_pruned(topic: str, partition: int, first: int, events_from: int) -> None:
    if events_from < first:
        raise ConfigurationError(
            f"{topic}[{partition}] was pruned below offset {first}, but the "
            f"restore needs it from {events_from} (no readable snapshot checkpoint covers "
            "the pruned range): refusing to decide on incomplete state"
        )


def _registered(records: Sequence[InboundRecord]) -> set[str]:
    """The author ids registered by these event records, read from the `type` header only."""
    return {
        record.key.decode()
        for record in records
        if record.key and record.header("type") == "AuthorRegistered"
    }


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
        _refuse_pruned(self.topics.events, partition, first, events_from)
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
        self._ids |= _registered(records)

    def known(self, author_id: str) -> bool:
        return author_id in self._ids

    async def refresh(self, timeout_s: float) -> bool:
        return await self._follower.caught_up(timeout_s)

    async def start(self) -> None:
        await self._follower.start()

    async def stop(self) -> None:
        await self._follower.stop()


class InMemoryAuthorDirectory:
    """A set of authors: given, or registered by event records passed to `append` (the event
    log's part, played in memory)."""

    def __init__(self, ids: set[str] | None = None) -> None:
        self.ids = set(ids or ())
        self.refreshes = 0

    def append(self, records: Sequence[InboundRecord]) -> None:
        self.ids |= _registered(records)

    def known(self, author_id: str) -> bool:
        return author_id in self.ids

    async def refresh(self, timeout_s: float) -> bool:
        self.refreshes += 1
        return True


class InMemoryPartitionHistory:
    """Histories held in lists: what was 'in Kafka' for each partition (`first_offsets`: where
    a pruned partition of the event log now starts)."""

    def __init__(self) -> None:
        self.events: dict[int, list[InboundRecord]] = {}
        self.outcomes: dict[int, list[InboundRecord]] = {}
        self.snapshot_records: dict[int, dict[bytes, bytes | None]] = {}
        self.first_offsets: dict[int, int] = {}
        self.topic = "posts.events"

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
        _refuse_pruned(self.topic, partition, self.first_offsets.get(partition, 0), events_from)
        events = self.events.get(partition, [])
        on_events([r for r in events if r.offset >= events_from])
        on_outcomes(self.outcomes.get(partition, []))
        return max((r.offset + 1 for r in events), default=0)


class InMemoryCommandClient:
    """The command client with the processor played by `answer`: `send` answers at once with
    the outcome (or None, as the Kafka client does when nothing arrives within the wait), and
    outcomes are kept for `lookup`; `deliver` is an outcome arriving after its wait ended.
    While `unavailable` holds a reason, `send` fails as it does when Kafka does not answer."""

    def __init__(self, answer: Answer, *, cache_size: int = 100_000) -> None:
        self.answer = answer
        self.sent: list[EncodedMessage] = []
        self.unavailable: str | None = None
        self._recent: OrderedDict[UUID, CommandOutcome] = OrderedDict()
        self._cache_size = cache_size

    async def send(
        self, command_id: UUID, message: EncodedMessage, *, wait_s: float
    ) -> CommandOutcome | None:
        if self.unavailable is not None:
            raise InfrastructureUnavailable(f"could not enqueue the command: {self.unavailable}")
        self.sent.append(message)
        outcome = self.answer(command_id, message)
        if outcome is not None:
            self.deliver(outcome)
        return outcome

    def deliver(self, outcome: CommandOutcome) -> None:
        self._recent[outcome.command_id] = outcome
        self._recent.move_to_end(outcome.command_id)
        if len(self._recent) > self._cache_size:
            self._recent.popitem(last=False)

    def lookup(self, command_id: UUID) -> CommandOutcome | None:
        return self._recent.get(command_id)
