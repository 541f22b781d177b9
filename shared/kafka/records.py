"""Records as the rest of the code sees them: plain values, no aiokafka types."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.errors import EsError
from shared.messages.codec import EncodedMessage, Headers


@dataclass(frozen=True)
class InboundRecord:
    """A record read from Kafka."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers = field(default_factory=list)
    timestamp_ms: int = 0

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode(errors="replace")
        return None


def from_consumer_record(message: Any) -> InboundRecord:
    """Convert an aiokafka ConsumerRecord (untyped) into an InboundRecord."""
    return InboundRecord(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        headers=list(message.headers or ()),
        timestamp_ms=message.timestamp,
    )


@dataclass(frozen=True)
class OutboundRecord:
    """A record to produce; `partition=None` lets the default partitioner (murmur2 of key) pick."""

    topic: str
    value: bytes | None
    key: bytes | None = None
    headers: Headers = field(default_factory=list)
    partition: int | None = None

    @classmethod
    def of(
        cls, topic: str, message: EncodedMessage, *, partition: int | None = None
    ) -> OutboundRecord:
        return cls(
            topic=topic,
            key=message.key,
            value=message.value,
            headers=list(message.headers),
            partition=partition,
        )


@dataclass(frozen=True)
class Delivered:
    """An output record and where the broker put it (inside a not yet committed transaction)."""

    record: OutboundRecord
    partition: int
    offset: int


def dead_letter(record: InboundRecord, error: BaseException, dlq_topic: str) -> OutboundRecord:
    """The record, unchanged, bound for a dead-letter topic with the reason in its headers.

    The original key is kept so that the DLQ preserves per-key order; the original position is
    in the headers so that an operator can find it in the source topic.
    """
    code = error.code if isinstance(error, EsError) else type(error).__name__
    reason = str(error.message if isinstance(error, EsError) else error)[:4000]
    headers: Headers = [h for h in record.headers if not h[0].startswith("dlq.")]
    headers += [
        ("dlq.error.code", code.encode()),
        ("dlq.error.message", reason.encode()),
        ("dlq.source.topic", record.topic.encode()),
        ("dlq.source.partition", str(record.partition).encode()),
        ("dlq.source.offset", str(record.offset).encode()),
    ]
    return OutboundRecord(topic=dlq_topic, key=record.key, value=record.value, headers=headers)
