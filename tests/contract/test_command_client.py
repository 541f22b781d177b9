"""One contract for the command client the HTTP edge sends through, run in memory
(`InMemoryCommandClient`) and on a real Kafka broker (`CommandClient`, with a responder that
plays the processor on the commands and command-results topics): accepted and rejected
answers, no answer within the wait, a late outcome found by command id, the bounded window of
recent outcomes; and, in memory only (see its test), a send while Kafka is down."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import pytest

from command_service.adapters import Answer, InMemoryCommandClient
from shared.errors import InfrastructureUnavailable
from shared.kafka.clients import make_producer
from shared.kafka.commands import CommandClient
from shared.kafka.reader import TopicFollower
from shared.kafka.records import InboundRecord
from shared.kafka.topics import Topics, TopicSpec, ensure_topics
from shared.messages.blog import CreatePost
from shared.messages.codec import EncodedMessage, decode_command, encode_command
from shared.messages.results import CommandOutcome, EventPosition
from shared.settings import KafkaSettings
from tests.conftest import unique
from tests.kafka_helpers import delete_topics, wait_until

PARTITIONS = 2
CACHE_SIZE = 3  # outcomes a client remembers for lookup
WAIT_S = 0.5  # how long a send waits for its outcome (the HTTP edge's command timeout)
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def command(post_id: str = "p1") -> tuple[uuid.UUID, EncodedMessage]:
    """A command as the HTTP edge encodes it, and its id."""
    command_id = uuid.uuid4()
    message = encode_command(
        CreatePost(author_id="ada", title="T"),
        command_id=command_id,
        aggregate_id=post_id,
        expected_version=None,
        occurred_at=T0,
    )
    return command_id, message


def accepted(command_id: uuid.UUID, aggregate_id: str = "p1") -> CommandOutcome:
    return CommandOutcome(
        command_id=command_id,
        status="accepted",
        command_type="CreatePost",
        aggregate_id=aggregate_id,
        version=1,
        events=[EventPosition(type="PostCreated", aggregate_version=1, partition=1, offset=7)],
        processed_at=T0,
    )


def rejected(command_id: uuid.UUID) -> CommandOutcome:
    return CommandOutcome(
        command_id=command_id,
        status="rejected",
        command_type="CreatePost",
        aggregate_id="p1",
        version=0,
        code="unknown_author",
        message="author ada is not registered",
        details={"author_id": "ada"},
        processed_at=T0,
    )


def silent(command_id: uuid.UUID, message: EncodedMessage) -> CommandOutcome | None:
    return None


class Processor:
    """Plays the command processor for both clients: `reply` decides each command's outcome
    (None: nothing within the wait); `received` is what reached it."""

    def __init__(self) -> None:
        self.reply: Answer = silent
        self.received: list[tuple[uuid.UUID, EncodedMessage]] = []

    def __call__(self, command_id: uuid.UUID, message: EncodedMessage) -> CommandOutcome | None:
        self.received.append((command_id, message))
        return self.reply(command_id, message)


class Harness(Protocol):
    client: Any
    processor: Processor

    async def deliver(self, outcome: CommandOutcome) -> None:
        """An outcome the processor writes outside any wait (late, or for a command another
        instance sent); returns once the client has seen it."""


class MemoryHarness:
    def __init__(self) -> None:
        self.processor = Processor()
        self.client = InMemoryCommandClient(self.processor, cache_size=CACHE_SIZE)

    async def deliver(self, outcome: CommandOutcome) -> None:
        self.client.deliver(outcome)


class KafkaHarness:
    """The real client, and a responder that reads the commands topic and writes each outcome
    as the processor does: `CommandOutcome.encode()`, on the command's partition number."""

    def __init__(self, bootstrap: str, topics: Topics) -> None:
        self.topics = topics
        self.processor = Processor()
        self.client = CommandClient(bootstrap, topics, cache_size=CACHE_SIZE)
        self._producer = make_producer(bootstrap)
        self._commands = TopicFollower(bootstrap, topics.commands, self._on_commands)
        self._partitions: dict[uuid.UUID, int] = {}
        self._writes: set[asyncio.Task[None]] = set()

    def _on_commands(self, records: Sequence[InboundRecord]) -> None:
        for record in records:
            assert record.key is not None and record.value is not None
            command_id = decode_command(record.value).envelope.command_id
            self._partitions[command_id] = record.partition
            message = EncodedMessage(record.key, record.value, list(record.headers))
            outcome = self.processor(command_id, message)
            if outcome is not None:
                task = asyncio.create_task(self._write(outcome, record.partition))
                self._writes.add(task)
                task.add_done_callback(self._writes.discard)

    async def _write(self, outcome: CommandOutcome, partition: int) -> None:
        encoded = outcome.encode()
        await self._producer.send_and_wait(
            self.topics.command_results,
            encoded.value,
            key=encoded.key,
            headers=encoded.headers,
            partition=partition,
        )

    async def deliver(self, outcome: CommandOutcome) -> None:
        # Outcomes of commands this test never sent go to partition 0, so they arrive in order.
        await self._write(outcome, self._partitions.get(outcome.command_id, 0))

        async def seen() -> bool:
            return bool(self.client.lookup(outcome.command_id) == outcome)

        await wait_until(seen, timeout_s=10.0, interval_s=0.02, what="the client saw it")

    async def start(self) -> None:
        await self._producer.start()
        await self._commands.start()
        await self.client.start()

    async def stop(self) -> None:
        await self.client.stop()
        await self._commands.stop()
        await self._producer.stop()


def contract_topics() -> Topics:
    return Topics.from_settings(KafkaSettings(topic_prefix=f"{unique('contract')}."))


@pytest.fixture(params=["memory", "kafka"])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    if request.param == "memory":
        yield MemoryHarness()
        return
    bootstrap: str = request.getfixturevalue("kafka_bootstrap")
    topics = contract_topics()
    names = [topics.commands, topics.command_results]
    await ensure_topics(bootstrap, [TopicSpec(n, PARTITIONS, 1) for n in names])
    kafka = KafkaHarness(bootstrap, topics)
    try:
        await kafka.start()
        yield kafka
    finally:
        with contextlib.suppress(Exception):
            await kafka.stop()
        await delete_topics(bootstrap, names)


async def test_an_accepted_command_answers_accepted_with_its_events_and_version(
    harness: Harness,
) -> None:
    """The command reaches the processor as encoded; its accepted outcome (version, event
    positions, consistency token) is the send's answer and can be looked up by id."""
    harness.processor.reply = lambda command_id, message: accepted(command_id)
    command_id, message = command()
    outcome = await harness.client.send(command_id, message, wait_s=10.0)
    assert outcome == accepted(command_id)
    assert (outcome.version, outcome.consistency_token) == (1, "1:7")
    assert harness.processor.received == [(command_id, message)]
    assert harness.client.lookup(command_id) == accepted(command_id)


async def test_a_rejected_command_answers_rejected_with_its_code_and_message(
    harness: Harness,
) -> None:
    """A rejection comes back with its code, message and details, and no events."""
    harness.processor.reply = lambda command_id, message: rejected(command_id)
    command_id, message = command()
    outcome = await harness.client.send(command_id, message, wait_s=10.0)
    assert outcome == rejected(command_id)
    assert (outcome.status, outcome.code, outcome.message) == (
        "rejected",
        "unknown_author",
        "author ada is not registered",
    )
    assert outcome.events == [] and outcome.consistency_token is None
    assert harness.client.lookup(command_id) == rejected(command_id)


async def test_no_outcome_within_the_wait_answers_none_and_a_late_one_is_found_by_id(
    harness: Harness,
) -> None:
    """A silent processor: the send answers None after its wait and the command is unknown;
    the outcome written afterwards is what `lookup` returns for its id."""
    command_id, message = command()
    assert await harness.client.send(command_id, message, wait_s=WAIT_S) is None
    assert [c for c, _ in harness.processor.received] == [command_id]
    assert harness.client.lookup(command_id) is None
    await harness.deliver(accepted(command_id))
    assert harness.client.lookup(command_id) == accepted(command_id)


async def test_lookup_knows_outcomes_of_commands_it_did_not_send_and_not_unknown_ids(
    harness: Harness,
) -> None:
    """Any outcome the processor writes is found by id (another instance sent the command);
    an id with no outcome is None."""
    other = uuid.uuid4()
    await harness.deliver(rejected(other))
    assert harness.client.lookup(other) == rejected(other)
    assert harness.client.lookup(uuid.uuid4()) is None


async def test_the_latest_outcome_of_an_id_wins_and_only_the_most_recent_ids_are_kept(
    harness: Harness,
) -> None:
    """A repeated outcome (a duplicate's answer) replaces the earlier one and counts as recent;
    past the cache size the least recently answered id is forgotten."""
    a, b, c, d = (uuid.uuid4() for _ in range(4))
    await harness.deliver(accepted(a))
    await harness.deliver(accepted(b))
    await harness.deliver(accepted(c))
    duplicate = accepted(a).model_copy(update={"duplicate": True})
    await harness.deliver(duplicate)
    await harness.deliver(accepted(d))
    assert harness.client.lookup(b) is None
    assert harness.client.lookup(a) == duplicate
    assert [harness.client.lookup(i) for i in (c, d)] == [accepted(c), accepted(d)]


async def test_a_send_while_kafka_is_down_raises_infrastructure_unavailable() -> None:
    """The command cannot be enqueued: InfrastructureUnavailable (the HTTP edge's 503), not a
    None that would read as 'pending', and nothing reaches the processor.

    In memory only: the Kafka client meets this rule when its producer's send fails, and a
    killed broker of its own did not make it fail within minutes (aiokafka's idempotent sender
    keeps retrying a node that is not ready rather than expiring the batch), so no cheap and
    deterministic Kafka twin of this case exists."""
    processor = Processor()
    client = InMemoryCommandClient(processor)
    client.unavailable = "the broker is down"
    command_id, message = command()
    with pytest.raises(InfrastructureUnavailable, match="could not enqueue the command"):
        await client.send(command_id, message, wait_s=WAIT_S)
    assert processor.received == [] and client.lookup(command_id) is None
