"""JSON encoding of messages, with the envelope mirrored into Kafka headers.

Headers let a non-Python client (or a router) see `type`, ids and versions without parsing the
body. The body is authoritative: on decode, headers are ignored.

Decoding never raises anything but a `MessageError` subclass, whatever the bytes are, so a
consumer can always turn a bad record into a rejection or a dead-letter record.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar
from uuid import UUID

from pydantic import ValidationError
from pydantic_core import to_json

from shared.errors import (
    InvalidPayloadError,
    MalformedRecordError,
    UnknownMessageTypeError,
    UnsupportedSchemaVersionError,
)
from shared.messages.base import (
    AGGREGATE_ID_PATTERN,
    COMMANDS,
    EVENTS,
    Command,
    CommandEnvelope,
    Event,
    EventEnvelope,
    MessageRegistry,
)

Headers = list[tuple[str, bytes]]
CONTENT_TYPE = "application/json"
MAX_RECORD_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class EncodedMessage:
    """A message ready for Kafka: key (aggregate id), JSON value, headers."""

    key: bytes
    value: bytes
    headers: Headers = field(default_factory=list)


C = TypeVar("C", bound=Command)
E = TypeVar("E", bound=Event)


@dataclass(frozen=True)
class DecodedCommand(Generic[C]):
    envelope: CommandEnvelope
    payload: C


@dataclass(frozen=True)
class DecodedEvent(Generic[E]):
    envelope: EventEnvelope
    payload: E


def _headers(values: dict[str, Any]) -> Headers:
    out: Headers = [("content-type", CONTENT_TYPE.encode())]
    for name, value in values.items():
        if value is None:
            continue
        text = value.isoformat() if isinstance(value, datetime) else str(value)
        out.append((name, text.encode()))
    return out


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str).encode()


_AGGREGATE_ID = re.compile(AGGREGATE_ID_PATTERN)


def _fits(text: str | None, limit: int) -> bool:
    return text is None or (isinstance(text, str) and len(text) <= limit)


def _roles_fit(roles: tuple[str, ...]) -> bool:
    return len(roles) <= 10 and all(isinstance(r, str) and 1 <= len(r) <= 50 for r in roles)


def _body(fields: list[tuple[str, Any]]) -> bytes:
    """The record body in one pydantic-core pass: the envelope's fields in its order, None left
    out (`exclude_none` of the envelope), the message itself serialized in place as its own
    `model_dump(mode="json")` would be (its None fields kept). Byte for byte what the envelope
    model dumped through `json.dumps(separators=(",", ":"), ensure_ascii=False)` gives:
    tests/unit/test_wire_bytes.py holds the two to each other."""
    return to_json({name: value for name, value in fields if value is not None})


def encode_command(
    command: Command,
    *,
    command_id: UUID,
    aggregate_id: str,
    expected_version: int | None = None,
    occurred_at: datetime | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    issued_by: str | None = None,
    actor: str | None = None,
    actor_roles: Iterable[str] | None = None,
) -> EncodedMessage:
    """Encode a command as the documented command record (key = aggregate id). `actor` and
    `actor_roles` say who asks (see CommandEnvelope); the roles are written sorted."""
    correlation_id = correlation_id or str(command_id)
    roles = tuple(sorted(actor_roles)) if actor_roles is not None else None
    if (
        isinstance(command_id, UUID)
        and isinstance(aggregate_id, str)
        and _AGGREGATE_ID.fullmatch(aggregate_id)
        and (expected_version is None or (type(expected_version) is int and expected_version >= 0))
        and (occurred_at is None or isinstance(occurred_at, datetime))
        and _fits(correlation_id, 200)
        and _fits(causation_id, 200)
        and _fits(issued_by, 100)
        and (actor is None or (isinstance(actor, str) and 1 <= len(actor) <= 200))
        and (roles is None or _roles_fit(roles))
        and 1 <= len(command.message_type) <= 100
    ):
        # The envelope's checks held: no model to build, validate and dump.
        value = _body(
            [
                ("type", command.message_type),
                ("aggregate_id", aggregate_id),
                ("schema_version", command.schema_version),
                ("occurred_at", occurred_at),
                ("correlation_id", correlation_id),
                ("causation_id", causation_id),
                ("payload", command),
                ("command_id", command_id),
                ("expected_version", expected_version),
                ("issued_by", issued_by),
                ("actor", actor),
                ("actor_roles", roles),
            ]
        )
        return EncodedMessage(
            key=aggregate_id.encode(),
            value=value,
            headers=_headers(
                {
                    "type": command.message_type,
                    "message_id": command_id,
                    "schema_version": command.schema_version,
                    "aggregate_id": aggregate_id,
                    "expected_version": expected_version,
                    "correlation_id": correlation_id,
                    "causation_id": causation_id,
                    "issued_by": issued_by,
                    "actor": actor,
                }
            ),
        )
    # Anything else goes through the envelope model, which coerces or refuses it.
    envelope = CommandEnvelope(
        type=command.message_type,
        command_id=command_id,
        aggregate_id=aggregate_id,
        expected_version=expected_version,
        issued_by=issued_by,
        actor=actor,
        actor_roles=roles,
        schema_version=command.schema_version,
        occurred_at=occurred_at,
        correlation_id=correlation_id or str(command_id),
        causation_id=causation_id,
        payload=command.model_dump(mode="json"),
    )
    body = envelope.model_dump(mode="json", exclude_none=True)
    return EncodedMessage(
        key=aggregate_id.encode(),
        value=_dumps(body),
        headers=_headers(
            {
                "type": envelope.type,
                "message_id": envelope.command_id,
                "schema_version": envelope.schema_version,
                "aggregate_id": aggregate_id,
                "expected_version": expected_version,
                "correlation_id": envelope.correlation_id,
                "causation_id": causation_id,
                "issued_by": issued_by,
                "actor": actor,
            }
        ),
    )


def encode_event(
    event: Event,
    *,
    event_id: UUID,
    aggregate_id: str,
    aggregate_version: int,
    occurred_at: datetime,
    command_id: UUID | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    actor: str | None = None,
) -> EncodedMessage:
    """Encode an event for the event log (key = aggregate id); `actor` is its command's."""
    if (
        isinstance(event_id, UUID)
        and isinstance(aggregate_id, str)
        and _AGGREGATE_ID.fullmatch(aggregate_id)
        and type(aggregate_version) is int
        and aggregate_version >= 1
        and isinstance(occurred_at, datetime)
        and (command_id is None or isinstance(command_id, UUID))
        and _fits(correlation_id, 200)
        and _fits(causation_id, 200)
        and _fits(actor, 200)
        and 1 <= len(event.message_type) <= 100
    ):
        # The envelope's checks held: no model to build, validate and dump (the hot path of
        # the command service: one of these per event).
        value = _body(
            [
                ("type", event.message_type),
                ("aggregate_id", aggregate_id),
                ("schema_version", event.schema_version),
                ("occurred_at", occurred_at),
                ("correlation_id", correlation_id),
                ("causation_id", causation_id),
                ("payload", event),
                ("event_id", event_id),
                ("aggregate_version", aggregate_version),
                ("command_id", command_id),
                ("actor", actor),
            ]
        )
        return EncodedMessage(
            key=aggregate_id.encode(),
            value=value,
            headers=_headers(
                {
                    "type": event.message_type,
                    "message_id": event_id,
                    "schema_version": event.schema_version,
                    "aggregate_id": aggregate_id,
                    "aggregate_version": aggregate_version,
                    "occurred_at": occurred_at,
                    "correlation_id": correlation_id,
                    "causation_id": causation_id,
                    "actor": actor,
                }
            ),
        )
    # Anything else goes through the envelope model, which coerces or refuses it.
    envelope = EventEnvelope(
        type=event.message_type,
        event_id=event_id,
        aggregate_id=aggregate_id,
        aggregate_version=aggregate_version,
        schema_version=event.schema_version,
        occurred_at=occurred_at,
        command_id=command_id,
        actor=actor,
        correlation_id=correlation_id,
        causation_id=causation_id,
        payload=event.model_dump(mode="json"),
    )
    body = envelope.model_dump(mode="json", exclude_none=True)
    return EncodedMessage(
        key=aggregate_id.encode(),
        value=_dumps(body),
        headers=_headers(
            {
                "type": envelope.type,
                "message_id": event_id,
                "schema_version": envelope.schema_version,
                "aggregate_id": aggregate_id,
                "aggregate_version": aggregate_version,
                "occurred_at": occurred_at,
                "correlation_id": correlation_id,
                "causation_id": causation_id,
                "actor": actor,
            }
        ),
    )


def _parse_object(value: bytes | None) -> dict[str, Any]:
    if value is None:
        raise MalformedRecordError("record has no value (tombstone?)")
    if len(value) > MAX_RECORD_BYTES:
        raise MalformedRecordError(f"record of {len(value)} bytes exceeds {MAX_RECORD_BYTES}")
    try:
        obj = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedRecordError(f"record value is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise MalformedRecordError(f"record value must be a JSON object, got {type(obj).__name__}")
    return obj


def _errors(exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(record)"
        out.append(f"{loc}: {err['msg']}")
    return out


def _payload(
    registry: MessageRegistry[Any], message_type: str, version: int, payload: dict[str, Any]
) -> Any:
    cls = registry.get(message_type)
    if version > cls.schema_version:
        raise UnsupportedSchemaVersionError(
            f"{message_type} schema_version {version} is newer than the "
            f"supported {cls.schema_version}"
        )
    try:
        payload = registry.upcast(message_type, version, payload)
    except KeyError as exc:
        raise UnsupportedSchemaVersionError(str(exc.args[0])) from None
    try:
        return cls.model_validate(payload)
    except ValidationError as exc:
        raise InvalidPayloadError(message_type, _errors(exc)) from None


def decode_command(value: bytes | None) -> DecodedCommand[Command]:
    """Parse a command record. Raises only `MessageError` subclasses, with the reason."""
    if value is not None and len(value) <= MAX_RECORD_BYTES:
        # The usual case in one pydantic-core pass over the bytes (no json.loads, no dict of
        # the whole record); any failure takes the path below, which names the reason.
        try:
            envelope = CommandEnvelope.model_validate_json(value)
        except ValidationError:
            pass
        else:
            if envelope.type not in COMMANDS:
                raise UnknownMessageTypeError(envelope.type, list(COMMANDS.types()))
            payload = _payload(COMMANDS, envelope.type, envelope.schema_version, envelope.payload)
            return DecodedCommand(envelope=envelope, payload=payload)
    obj = _parse_object(value)
    message_type = obj.get("type")
    if isinstance(message_type, str) and message_type not in COMMANDS:
        raise UnknownMessageTypeError(message_type, list(COMMANDS.types()))
    try:
        envelope = CommandEnvelope.model_validate(obj)
    except ValidationError as exc:
        raise MalformedRecordError("invalid command envelope: " + "; ".join(_errors(exc))) from None
    payload = _payload(COMMANDS, envelope.type, envelope.schema_version, envelope.payload)
    return DecodedCommand(envelope=envelope, payload=payload)


def decode_event(value: bytes | None) -> DecodedEvent[Event]:
    """Parse an event record, upcasting older schema versions to the current model."""
    if value is not None and len(value) <= MAX_RECORD_BYTES:
        try:  # one pydantic-core pass in the usual case, as in decode_command
            envelope = EventEnvelope.model_validate_json(value)
        except ValidationError:
            pass
        else:
            if envelope.type not in EVENTS:
                raise UnknownMessageTypeError(envelope.type, list(EVENTS.types()))
            payload = _payload(EVENTS, envelope.type, envelope.schema_version, envelope.payload)
            return DecodedEvent(envelope=envelope, payload=payload)
    obj = _parse_object(value)
    message_type = obj.get("type")
    if isinstance(message_type, str) and message_type not in EVENTS:
        raise UnknownMessageTypeError(message_type, list(EVENTS.types()))
    try:
        envelope = EventEnvelope.model_validate(obj)
    except ValidationError as exc:
        raise MalformedRecordError("invalid event envelope: " + "; ".join(_errors(exc))) from None
    payload = _payload(EVENTS, envelope.type, envelope.schema_version, envelope.payload)
    return DecodedEvent(envelope=envelope, payload=payload)


def utcnow() -> datetime:
    """The one clock read of the shells; the domain receives time as a value."""
    return datetime.now(UTC)
