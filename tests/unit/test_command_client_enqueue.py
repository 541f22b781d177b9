"""The command client's bound on the broker taking a command (ENQUEUE_TIMEOUT_MS): aiokafka's
idempotent producer retries until the broker answers, however long a network cut lasts."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from shared.errors import InfrastructureUnavailable
from shared.kafka.commands import CommandClient
from shared.kafka.topics import Topics
from shared.messages.codec import EncodedMessage
from shared.settings import KafkaSettings


class UnreachableBroker:
    """A producer whose sends are never acknowledged until `release()`."""

    def __init__(self) -> None:
        self.released = asyncio.Event()
        self.delivered = 0

    async def send_and_wait(self, *args: Any, **kwargs: Any) -> None:
        await self.released.wait()
        self.delivered += 1

    async def stop(self) -> None:
        self.released.set()


def client_with(producer: UnreachableBroker, timeout_s: float | None) -> CommandClient:
    client = CommandClient(
        "127.0.0.1:1", Topics.from_settings(KafkaSettings()), enqueue_timeout_s=timeout_s
    )
    client._producer = producer
    return client


def message() -> EncodedMessage:
    return EncodedMessage(key=b"a", value=b"{}", headers=[])


async def test_a_command_the_broker_does_not_take_in_time_is_a_retriable_503() -> None:
    broker = UnreachableBroker()
    client = client_with(broker, timeout_s=0.05)
    try:
        with pytest.raises(InfrastructureUnavailable, match="same Idempotency-Key") as raised:
            await client.send(uuid.uuid4(), message(), wait_s=5)
        assert raised.value.retriable
        assert not client._waiters  # nobody waits for its outcome any more
        # the record stays with the producer, which delivers it when the broker is back
        broker.released.set()
        await asyncio.sleep(0.01)
        assert broker.delivered == 1
    finally:
        await client.stop()


async def test_without_a_bound_the_send_waits_for_the_broker() -> None:
    broker = UnreachableBroker()
    client = client_with(broker, timeout_s=None)
    try:
        sending = asyncio.create_task(client.send(uuid.uuid4(), message(), wait_s=0))
        await asyncio.sleep(0.1)
        assert not sending.done()
        broker.released.set()
        assert await sending is None  # taken; no outcome within wait_s=0
    finally:
        await client.stop()
