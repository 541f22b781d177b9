"""One consumer of one topic, spoken to in partition numbers and `InboundRecord`s.

Two ways to own partitions, one class:

* a group member (`group_id`, `on_assigned`, `on_revoked`): Kafka assigns the partitions, the
  callbacks run inside the consumer's poll, before any record of a newly assigned partition is
  returned, so a callback can seek it to the position its owner stored (the projector: the read
  store; the transactional processor: the group's committed offset, after fencing);
* outside any group (`assign`): the caller picks partitions and positions (restore to the end,
  live tables, rebuilds, the workflow engine's operator actions).

`batches` is the consume loop every long-running reader uses; what to do with a fetch (and
with the partitions that got none) stays with the caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

from aiokafka import TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import IllegalStateError

from shared.kafka.clients import make_consumer, stop_quietly, topic_partitions
from shared.kafka.records import InboundRecord, from_consumer_record

PartitionsCallback = Callable[[list[int]], Awaitable[None]]
Fetched = dict[int, list[InboundRecord]]


class TopicConsumer:
    """A `read_committed`, never auto-committing consumer of `topic` (see the module docstring)."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        *,
        group_id: str | None = None,
        on_assigned: PartitionsCallback | None = None,
        on_revoked: PartitionsCallback | None = None,
        **overrides: Any,
    ) -> None:
        if (on_assigned is None) != (on_revoked is None) or (
            on_assigned is not None and group_id is None
        ):
            raise ValueError("on_assigned and on_revoked go together, with a group_id")
        self.topic = topic
        self.group_id = group_id
        self._consumer = make_consumer(bootstrap_servers, group_id=group_id, **overrides)
        self._listener = (
            _Listener(topic, on_assigned, on_revoked)
            if on_assigned is not None and on_revoked is not None
            else None
        )

    def _tp(self, partition: int) -> TopicPartition:
        return TopicPartition(self.topic, partition)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect; a group member also subscribes (its callbacks run from the next fetch on)."""
        if self._listener is not None:
            self._consumer.subscribe([self.topic], listener=self._listener)
        await self._consumer.start()

    async def stop(self) -> None:
        """Leave the group (if any) and close, quietly."""
        await stop_quietly(self._consumer)

    # -- where to read -----------------------------------------------------------------------

    async def partitions(self) -> list[int]:
        """The partition numbers of the topic (asking the broker if need be)."""
        return await topic_partitions(self._consumer, self.topic)

    def assign(self, partitions: Iterable[int]) -> None:
        """Read exactly `partitions` (outside any group); positions are the caller's to set."""
        self._consumer.assign([self._tp(p) for p in partitions])

    def seek(self, partition: int, offset: int) -> None:
        self._consumer.seek(self._tp(partition), offset)

    async def seek_to_beginning(self, *partitions: int) -> None:
        await self._consumer.seek_to_beginning(*(self._tp(p) for p in partitions))

    async def position(self, partition: int) -> int | None:
        """The offset of the next record to fetch; None if the partition is not (or no longer)
        assigned to this consumer: a rebalance took it while the caller was awaiting."""
        try:
            position: int = await self._consumer.position(self._tp(partition))
        except IllegalStateError:
            return None
        return position

    def pause(self, partition: int) -> None:
        """Fetch nothing more from `partition` (until it is assigned again)."""
        self._consumer.pause(self._tp(partition))

    # -- offsets -----------------------------------------------------------------------------

    async def committed(self, partition: int) -> int | None:
        """The group's committed offset of `partition` (None: the group never committed one)."""
        committed: int | None = await self._consumer.committed(self._tp(partition))
        return committed

    async def commit(self, offsets: Mapping[int, int]) -> None:
        """Commit `offsets` (partition -> next offset) for the group; raises KafkaError."""
        await self._consumer.commit({self._tp(p): o for p, o in offsets.items()})

    async def beginning_offsets(self, partitions: Iterable[int]) -> dict[int, int]:
        """The first offset still in each partition (above 0 once records were deleted)."""
        tps = [self._tp(p) for p in partitions]
        found = await self._consumer.beginning_offsets(tps)
        return {tp.partition: int(found[tp]) for tp in tps}

    async def end_offsets(self, partitions: Iterable[int]) -> dict[int, int]:
        """The end of each partition for this consumer's isolation level (`read_committed`: the
        last stable offset; `read_uncommitted`: the high watermark)."""
        tps = [self._tp(p) for p in partitions]
        found = await self._consumer.end_offsets(tps)
        return {tp.partition: int(found[tp]) for tp in tps}

    async def offsets_for_time(
        self, timestamp_ms: int, partitions: Iterable[int]
    ) -> dict[int, int | None]:
        """The first offset at or after `timestamp_ms` per partition (None: no such record)."""
        tps = [self._tp(p) for p in partitions]
        found = await self._consumer.offsets_for_times({tp: timestamp_ms for tp in tps})
        return {tp.partition: (found[tp].offset if found.get(tp) else None) for tp in tps}

    # -- reading -----------------------------------------------------------------------------

    async def fetch(
        self, *, timeout_ms: int, max_records: int, partitions: Iterable[int] = ()
    ) -> Fetched:
        """One fetch: the records waiting (up to `max_records`), by partition; only from
        `partitions` if given. Waits up to `timeout_ms` when nothing is waiting."""
        got = await self._consumer.getmany(
            *(self._tp(p) for p in partitions), timeout_ms=timeout_ms, max_records=max_records
        )
        return {
            tp.partition: [from_consumer_record(m) for m in messages]
            for tp, messages in got.items()
        }

    async def batches(
        self, stopping: asyncio.Event, *, timeout_ms: int, max_records: int
    ) -> AsyncIterator[Fetched]:
        """The consume loop: fetch after fetch (possibly empty, so that the caller also gets a
        turn when nothing arrives) until `stopping` is set."""
        while not stopping.is_set():
            yield await self.fetch(timeout_ms=timeout_ms, max_records=max_records)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # untyped base class
    """aiokafka's rebalance listener, turned into callbacks on partition numbers."""

    def __init__(
        self, topic: str, on_assigned: PartitionsCallback, on_revoked: PartitionsCallback
    ) -> None:
        self._topic = topic
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked

    def _mine(self, tps: Iterable[TopicPartition]) -> list[int]:
        return sorted(tp.partition for tp in tps if tp.topic == self._topic)

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._on_revoked(self._mine(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self._on_assigned(self._mine(assigned))
