"""The bytes on the wire are a contract: the codec's encoders produce, byte for byte, what the
first encoder did (an envelope `model_dump(mode="json", exclude_none=True)` through
`json.dumps(separators=(",", ":"), ensure_ascii=False)`, headers in the same order), for a
sample of every command and event type, with and without its optional fields, and with text
that JSON escapes (quotes, backslashes, control characters, non-ASCII, U+2028)."""

from __future__ import annotations

import json
import typing
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import BaseModel

from shared.messages.base import COMMANDS, EVENTS, CommandEnvelope, EventEnvelope, Message
from shared.messages.codec import (
    decode_command,
    decode_event,
    encode_command,
    encode_event,
)
from shared.messages.results import CommandOutcome, EventPosition

TEXT = 'Ünïcødé "quoted" back\\slash\nnew\ttab \x01 \u2028 😀 </script>'
WHEN = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
OTHER_ZONE = datetime(2026, 3, 4, 5, 6, 7, tzinfo=timezone(timedelta(hours=2)))
ID = uuid.UUID("12345678-1234-5678-1234-567812345678")


def _value(name: str, annotation: Any, metadata: list[Any], full: bool) -> Any:
    args = typing.get_args(annotation)
    if type(None) in args:
        if not full:
            return None
        annotation = next(a for a in args if a is not type(None))
    origin = typing.get_origin(annotation)
    if origin in (list, typing.List):  # noqa: UP006  # both spellings may appear
        return [TEXT, "b"]
    if annotation is datetime or "datetime" in str(annotation).lower():
        return OTHER_ZONE if name == "publish_at" else WHEN
    if name == "email":
        return "ü@example.org"
    if any(getattr(m, "pattern", None) for m in metadata):
        return "author-1"
    if annotation is int:
        return 3
    return TEXT


def _sample(cls: type[Message], full: bool) -> Message:
    values = {
        name: _value(name, info.annotation, info.metadata, full)
        for name, info in cls.model_fields.items()
    }
    return cls.model_validate(values)


def _reference_headers(values: dict[str, Any]) -> list[tuple[str, bytes]]:
    out = [("content-type", b"application/json")]
    for name, value in values.items():
        if value is None:
            continue
        text = value.isoformat() if isinstance(value, datetime) else str(value)
        out.append((name, text.encode()))
    return out


def _reference_dumps(body: BaseModel) -> bytes:
    obj = body.model_dump(mode="json", exclude_none=True)
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str).encode()


CASES = [(cls, full) for cls in COMMANDS.types().values() for full in (True, False)]
EVENT_CASES = [(cls, full) for cls in EVENTS.types().values() for full in (True, False)]


def _ids(case: tuple[type[Message], bool]) -> str:
    return f"{case[0].__name__}-{'full' if case[1] else 'minimal'}"


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("optional", [True, False])
def test_a_command_encodes_to_the_same_bytes_as_the_first_encoder(
    case: tuple[type[Message], bool], optional: bool
) -> None:
    """Every command type, with every envelope option set or left out, keeps its bytes."""
    cls, full = case
    command = _sample(cls, full)
    extra: dict[str, Any] = (
        {
            "expected_version": 4,
            "occurred_at": WHEN,
            "correlation_id": "corr-1",
            "causation_id": "cause-1",
            "issued_by": "erasure",
            "actor": TEXT,
            "actor_roles": ("reviewer", "author"),
        }
        if optional
        else {}
    )
    encoded = encode_command(command, command_id=ID, aggregate_id="agg-1", **extra)
    if optional:  # the roles are written sorted
        extra["actor_roles"] = ("author", "reviewer")
    envelope = CommandEnvelope(
        type=command.message_type,
        command_id=ID,
        aggregate_id="agg-1",
        schema_version=command.schema_version,
        correlation_id=extra.get("correlation_id") or str(ID),
        payload=command.model_dump(mode="json"),
        **{k: v for k, v in extra.items() if k != "correlation_id"},
    )
    assert encoded.key == b"agg-1"
    assert encoded.value == _reference_dumps(envelope)
    assert encoded.headers == _reference_headers(
        {
            "type": envelope.type,
            "message_id": ID,
            "schema_version": envelope.schema_version,
            "aggregate_id": "agg-1",
            "expected_version": extra.get("expected_version"),
            "correlation_id": envelope.correlation_id,
            "causation_id": extra.get("causation_id"),
            "issued_by": extra.get("issued_by"),
            "actor": extra.get("actor"),
        }
    )
    decoded = decode_command(encoded.value)
    assert decoded.payload == command
    assert (decoded.envelope.actor, decoded.envelope.actor_roles) == (
        extra.get("actor"),
        extra.get("actor_roles"),
    )


@pytest.mark.parametrize("case", EVENT_CASES, ids=_ids)
@pytest.mark.parametrize("optional", [True, False])
def test_an_event_encodes_to_the_same_bytes_as_the_first_encoder(
    case: tuple[type[Message], bool], optional: bool
) -> None:
    """Every event type, with and without command, correlation and causation ids and the
    actor, keeps its bytes."""
    cls, full = case
    event = _sample(cls, full)
    extra: dict[str, Any] = (
        {"command_id": ID, "correlation_id": "corr-1", "causation_id": "cause-1", "actor": TEXT}
        if optional
        else {}
    )
    event_id = uuid.uuid5(ID, cls.__name__)
    encoded = encode_event(
        event,
        event_id=event_id,
        aggregate_id="agg-1",
        aggregate_version=7,
        occurred_at=WHEN,
        **extra,
    )
    envelope = EventEnvelope(
        type=event.message_type,
        event_id=event_id,
        aggregate_id="agg-1",
        aggregate_version=7,
        schema_version=event.schema_version,
        occurred_at=WHEN,
        payload=event.model_dump(mode="json"),
        **extra,
    )
    assert encoded.key == b"agg-1"
    assert encoded.value == _reference_dumps(envelope)
    assert encoded.headers == _reference_headers(
        {
            "type": envelope.type,
            "message_id": event_id,
            "schema_version": envelope.schema_version,
            "aggregate_id": "agg-1",
            "aggregate_version": 7,
            "occurred_at": WHEN,
            "correlation_id": extra.get("correlation_id"),
            "causation_id": extra.get("causation_id"),
            "actor": extra.get("actor"),
        }
    )
    decoded = decode_event(encoded.value)
    assert decoded.payload == event
    assert decoded.envelope.actor == extra.get("actor")


@pytest.mark.parametrize(
    "outcome",
    [
        CommandOutcome(
            command_id=ID,
            status="accepted",
            command_type="CreatePost",
            aggregate_id="agg-1",
            version=2,
            events=[EventPosition(type="PostCreated", aggregate_version=2, partition=1, offset=9)],
            processed_at=WHEN,
        ),
        CommandOutcome(
            command_id=ID,
            status="rejected",
            code="conflict",
            message=TEXT,
            details={"expected": 1, "nested": {"a": [TEXT, None]}},
            duplicate=True,
        ),
    ],
    ids=["accepted", "rejected"],
)
def test_an_outcome_encodes_to_the_same_bytes_and_decodes_back(outcome: CommandOutcome) -> None:
    """A command outcome keeps its bytes and headers, and reads back equal."""
    encoded = outcome.encode()
    assert encoded.value == outcome.model_dump_json(exclude_none=True).encode()
    assert encoded.key == str(ID).encode()
    assert [h[0] for h in encoded.headers][:3] == ["type", "status", "content-type"]
    assert CommandOutcome.decode(encoded.value) == outcome


def test_every_type_has_a_sample() -> None:
    """The samples above cover every registered type (a new type gets one automatically)."""
    assert {c.__name__ for c, _ in CASES} == set(COMMANDS.types())
    assert {c.__name__ for c, _ in EVENT_CASES} == set(EVENTS.types())
