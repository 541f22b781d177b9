"""One contract for the command handler's history and author directory, run in memory and on a
real Kafka broker: what a restore reads (events from an offset, outcomes, the latest snapshot
per key, a pruned log refused) and which authors are known after a refresh."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import RecordsToDelete

from command_service.adapters import (
    InMemoryAuthorDirectory,
    InMemoryPartitionHistory,
    KafkaAuthorDirectory,
    KafkaPartitionHistory,
)
from shared.errors import ConfigurationError
from shared.kafka.clients import make_admin, make_producer
from shared.kafka.records import InboundRecord
from shared.kafka.topics import Topics, TopicSpec, ensure_topics
from shared.settings import KafkaSettings
from tests.conftest import unique
from tests.kafka_helpers import delete_topics

PARTITIONS = 2
Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]


def event(key: str, kind: str = "PostCreated") -> Record:
    return (
        key.encode(),
        f'{{"type": "{kind}", "key": "{key}"}}'.encode(),
        [("type", kind.encode())],
    )


class Log(Protocol):
    """The topics a command service restores from, written by the test."""

    history: Any
    authors: Any

    async def write(self, topic: str, partition: int, records: Sequence[Record]) -> None: ...

    async def prune(self, partition: int, below: int) -> None: ...


class MemoryLog:
    def __init__(self) -> None:
        self.history = InMemoryPartitionHistory()
        self.authors = InMemoryAuthorDirectory()

    async def write(self, topic: str, partition: int, records: Sequence[Record]) -> None:
        if topic == "snapshots":
            table = self.history.snapshot_records.setdefault(partition, {})
            for key, value, _ in records:
                assert key is not None
                table[key] = value
            return
        log = (self.history.events if topic == "events" else self.history.outcomes).setdefault(
            partition, []
        )
        inbound = [
            InboundRecord(topic, partition, len(log) + i, key, value, list(headers))
            for i, (key, value, headers) in enumerate(records)
        ]
        log.extend(inbound)
        if topic == "events":
            self.authors.append(inbound)

    async def prune(self, partition: int, below: int) -> None:
        self.history.first_offsets[partition] = below
        events = self.history.events.get(partition, [])
        self.history.events[partition] = [r for r in events if r.offset >= below]


class KafkaLog:
    def __init__(self, bootstrap: str, topics: Topics) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.history = KafkaPartitionHistory(bootstrap, topics)
        self.authors = KafkaAuthorDirectory(bootstrap, topics)
        self.names = {
            "events": topics.events,
            "outcomes": topics.command_results,
            "snapshots": topics.snapshots,
        }

    async def write(self, topic: str, partition: int, records: Sequence[Record]) -> None:
        producer = make_producer(self.bootstrap)
        await producer.start()
        try:
            for key, value, headers in records:
                await producer.send_and_wait(
                    self.names[topic], value, key=key, partition=partition, headers=headers
                )
        finally:
            await producer.stop()

    async def prune(self, partition: int, below: int) -> None:
        admin = make_admin(self.bootstrap)
        await admin.start()
        try:
            tp = TopicPartition(self.topics.events, partition)
            await admin.delete_records(
                {tp: RecordsToDelete(before_offset=below)}, timeout_ms=10_000
            )
        finally:
            await admin.close()


@pytest.fixture(params=["memory", "kafka"])
async def log(request: pytest.FixtureRequest) -> AsyncIterator[Log]:
    if request.param == "memory":
        yield MemoryLog()
        return
    bootstrap: str = request.getfixturevalue("kafka_bootstrap")
    topics = Topics.from_settings(KafkaSettings(topic_prefix=f"{unique('contract')}."))
    names = [topics.events, topics.command_results, topics.snapshots]
    await ensure_topics(bootstrap, [TopicSpec(n, PARTITIONS, 1) for n in names])
    kafka = KafkaLog(bootstrap, topics)
    await kafka.authors.start()
    try:
        yield kafka
    finally:
        with contextlib.suppress(Exception):
            await kafka.authors.stop()
        await delete_topics(bootstrap, names)


async def replay(
    log: Log, partition: int, events_from: int = 0
) -> tuple[list[Any], list[Any], int]:
    events: list[InboundRecord] = []
    outcomes: list[InboundRecord] = []
    end = await log.history.replay(
        partition, events.extend, outcomes.extend, events_from=events_from
    )
    return [(r.offset, r.key) for r in events], [r.key for r in outcomes], end


async def test_an_empty_partition_replays_nothing_and_ends_at_zero(log: Log) -> None:
    """Nothing written: no events, no outcomes, end offset 0, no snapshots."""
    assert await replay(log, 0) == ([], [], 0)
    assert await log.history.snapshots(0) == {}


async def test_a_replay_reads_its_partitions_events_from_an_offset_and_all_its_outcomes(
    log: Log,
) -> None:
    """Events of the partition in offset order from `events_from`, its outcomes, and the end
    offset (next to read); the other partition's records are not part of it."""
    await log.write("events", 1, [event("p1"), event("p2"), event("p3")])
    await log.write("events", 0, [event("other")])
    await log.write("outcomes", 1, [(b"c1", b"{}", []), (b"c2", b"{}", [])])
    assert await replay(log, 1) == ([(0, b"p1"), (1, b"p2"), (2, b"p3")], [b"c1", b"c2"], 3)
    assert await replay(log, 1, events_from=2) == ([(2, b"p3")], [b"c1", b"c2"], 3)
    assert await replay(log, 0) == ([(0, b"other")], [], 1)


async def test_snapshots_are_the_latest_value_per_key_tombstones_as_none(log: Log) -> None:
    """The snapshots of a partition read as compaction would leave them: the last value of
    each key, None for a key whose last record is a tombstone."""
    await log.write(
        "snapshots", 0, [(b"a", b"1", []), (b"b", b"1", []), (b"a", b"2", []), (b"b", None, [])]
    )
    await log.write("snapshots", 1, [(b"c", b"1", [])])
    assert await log.history.snapshots(0) == {b"a": b"2", b"b": None}


async def test_a_restore_that_needs_pruned_events_is_refused(log: Log) -> None:
    """The event log pruned below offset 2: a replay from 0 raises ConfigurationError naming
    the partition and offset; from 2 it reads what is left."""
    await log.write("events", 0, [event("p1"), event("p2"), event("p3")])
    await log.prune(0, 2)
    with pytest.raises(ConfigurationError, match=r"\[0\] was pruned below offset 2"):
        await replay(log, 0)
    assert await replay(log, 0, events_from=2) == ([(2, b"p3")], [], 3)


async def test_an_author_is_known_after_its_registration_and_a_refresh(log: Log) -> None:
    """AuthorRegistered (by its `type` header, on any partition) makes the author known once
    `refresh` says it caught up; other events and unregistered ids are not authors."""
    assert not log.authors.known("ada")
    await log.write("events", 0, [event("ada", "AuthorRegistered"), event("p1")])
    await log.write("events", 1, [event("bob", "AuthorRegistered")])
    assert await log.authors.refresh(10.0) is True
    assert log.authors.known("ada") and log.authors.known("bob")
    assert not log.authors.known("p1") and not log.authors.known("carol")
