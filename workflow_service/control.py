"""Where operator actions go: records on `workflows.control`, keyed by post id so that they land
on the partition of the workflow's owner, which applies them exactly once. On Kafka in the
service, in memory in the in-process tests; one contract for both:
tests/contract/test_workflow_adapters.py.
"""

from __future__ import annotations

from typing import Protocol

from shared.errors import InfrastructureUnavailable
from shared.kafka.clients import make_producer, stop_quietly
from shared.kafka.errors import KafkaError


class ControlSender(Protocol):
    async def send(self, key: bytes, value: bytes) -> None:
        """Append one action record; raises InfrastructureUnavailable when it is not written."""


class KafkaControlChannel:
    """An idempotent producer to the control topic (start before sending, stop at shutdown)."""

    def __init__(self, bootstrap_servers: str, topic: str) -> None:
        self.topic = topic
        self._producer = make_producer(bootstrap_servers)

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await stop_quietly(self._producer)

    async def send(self, key: bytes, value: bytes) -> None:
        try:
            await self._producer.send_and_wait(self.topic, value, key=key)
        except KafkaError as exc:
            raise InfrastructureUnavailable(str(exc)) from exc


class InMemoryControlChannel:
    """The action records in a list, in the order sent. While `unavailable` holds a reason,
    `send` fails as the Kafka channel does when no broker takes the record."""

    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes]] = []
        self.unavailable: str | None = None

    async def send(self, key: bytes, value: bytes) -> None:
        if self.unavailable is not None:
            raise InfrastructureUnavailable(self.unavailable)
        self.records.append((key, value))
