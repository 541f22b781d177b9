"""The message contract: encoding, headers, and typed errors for every kind of bad input."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.errors import (
    InvalidPayloadError,
    MalformedRecordError,
    MessageError,
    UnknownMessageTypeError,
    UnsupportedSchemaVersionError,
)
from shared.messages import (
    COMMANDS,
    EVENTS,
    MessageRegistry,
    decode_command,
    decode_event,
    encode_command,
    encode_event,
)
from shared.messages.base import Event
from shared.messages.blog import CreatePost, PostCreated, PublishPost, RegisterAuthor

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
CID = uuid.UUID("00000000-0000-4000-8000-000000000001")


def record(**fields: Any) -> bytes:
    body = {
        "type": "PublishPost",
        "command_id": str(CID),
        "aggregate_id": "post-1",
        "payload": {},
    } | fields
    return json.dumps(body).encode()


def test_command_round_trips_through_json_with_envelope_and_payload() -> None:
    """Given a command, when encoded and decoded, then envelope and payload are preserved."""
    cmd = CreatePost(author_id="author-1", title="Hello", body="text", tags=["kafka"])
    encoded = encode_command(
        cmd, command_id=CID, aggregate_id="post-1", expected_version=0, correlation_id="corr-1"
    )
    decoded = decode_command(encoded.value)
    assert decoded.payload == cmd
    assert decoded.envelope.command_id == CID
    assert decoded.envelope.aggregate_id == "post-1"
    assert decoded.envelope.expected_version == 0
    assert decoded.envelope.correlation_id == "corr-1"
    assert encoded.key == b"post-1"


def test_envelope_metadata_is_mirrored_in_kafka_headers() -> None:
    """Headers carry type, ids and versions so other clients can route without parsing JSON."""
    encoded = encode_command(
        PublishPost(),
        command_id=CID,
        aggregate_id="post-1",
        expected_version=3,
        causation_id="evt-9",
    )
    headers = {k: v.decode() for k, v in encoded.headers}
    assert headers["type"] == "PublishPost"
    assert headers["message_id"] == str(CID)
    assert headers["aggregate_id"] == "post-1"
    assert headers["expected_version"] == "3"
    assert headers["schema_version"] == "1"
    assert headers["correlation_id"] == str(CID)  # defaults to the command id
    assert headers["causation_id"] == "evt-9"
    assert headers["content-type"] == "application/json"


def test_event_round_trips_with_version_and_time() -> None:
    """An event keeps its aggregate version, time and causation through the codec."""
    event = PostCreated(author_id="a", title="t", body="b", tags=[])
    eid = uuid.uuid4()
    encoded = encode_event(
        event,
        event_id=eid,
        aggregate_id="post-1",
        aggregate_version=1,
        occurred_at=NOW,
        command_id=CID,
    )
    decoded = decode_event(encoded.value)
    assert decoded.payload == event
    assert decoded.envelope.aggregate_version == 1
    assert decoded.envelope.occurred_at == NOW
    assert decoded.envelope.command_id == CID
    assert dict(encoded.headers)["aggregate_version"] == b"1"


def test_messages_are_frozen() -> None:
    """Messages are values: assigning a field fails."""
    cmd = RegisterAuthor(name="Ada", email="ada@example.org")
    with pytest.raises(Exception, match="frozen"):
        cmd.name = "Bob"  # type: ignore[misc]


def test_the_documented_minimal_command_record_from_another_client_decodes() -> None:
    """The command record format of the README, with extra envelope fields, is accepted."""
    value = record(expected_version=3, source="go-client", type="PublishPost")
    decoded = decode_command(value)
    assert isinstance(decoded.payload, PublishPost)
    assert decoded.envelope.expected_version == 3


@pytest.mark.parametrize(
    ("value", "error", "reason"),
    [
        (b"not json", MalformedRecordError, "not JSON"),
        (b"\xff\xfe", MalformedRecordError, "not JSON"),
        (b"[1, 2]", MalformedRecordError, "JSON object, got list"),
        (None, MalformedRecordError, "no value"),
        (
            record(type="LaunchRocket"),
            UnknownMessageTypeError,
            "unknown message type 'LaunchRocket'",
        ),
        (record(command_id="nope"), MalformedRecordError, "command_id"),
        (record(aggregate_id=""), MalformedRecordError, "aggregate_id"),
        (record(expected_version=-1), MalformedRecordError, "expected_version"),
        (record(type="CreatePost", payload={"title": "x"}), InvalidPayloadError, "author_id"),
        (record(payload={"surprise": 1}), InvalidPayloadError, "surprise: Extra inputs"),
        (record(schema_version=7), UnsupportedSchemaVersionError, "newer than the supported 1"),
    ],
)
def test_bad_command_records_raise_typed_errors_with_reasons(
    value: bytes | None, error: type[MessageError], reason: str
) -> None:
    """Every kind of bad record gives a specific, non-retriable MessageError saying why."""
    with pytest.raises(error) as info:
        decode_command(value)
    assert reason in str(info.value)
    assert info.value.retriable is False
    assert info.value.code


def test_unknown_type_error_lists_the_known_types() -> None:
    """A person who misspelled a type is told which ones exist."""
    with pytest.raises(UnknownMessageTypeError, match="PublishPost"):
        decode_command(record(type="PublishPots"))


def test_bad_event_records_raise_typed_errors() -> None:
    """Events get the same treatment: unknown type and invalid payload are typed errors."""
    base = {
        "event_id": str(uuid.uuid4()),
        "aggregate_id": "p",
        "aggregate_version": 1,
        "occurred_at": NOW.isoformat(),
    }
    with pytest.raises(UnknownMessageTypeError):
        decode_event(json.dumps(base | {"type": "Nope"}).encode())
    with pytest.raises(InvalidPayloadError, match="reason"):
        decode_event(json.dumps(base | {"type": "PostRejected", "payload": {}}).encode())
    with pytest.raises(MalformedRecordError, match="aggregate_version"):
        decode_event(json.dumps(base | {"type": "PostPublished", "aggregate_version": 0}).encode())


def test_old_schema_versions_are_upcast_to_the_current_model() -> None:
    """A v1 payload is upcast step by step to the v3 model on read."""
    registry: MessageRegistry[Event] = MessageRegistry("event")

    @registry.register
    class Renamed(Event):
        schema_version = 3
        full_name: str
        source: str

    @registry.upcaster("Renamed", 1)
    def v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
        return {"full_name": payload["name"]}

    @registry.upcaster("Renamed", 2)
    def v2_to_v3(payload: dict[str, Any]) -> dict[str, Any]:
        return payload | {"source": "migrated"}

    upcast = registry.upcast("Renamed", 1, {"name": "Ada"})
    assert Renamed.model_validate(upcast) == Renamed(full_name="Ada", source="migrated")


def test_registry_refuses_two_classes_with_one_type_name() -> None:
    """Type names are unique: registering a second class under a used name fails."""
    registry: MessageRegistry[Event] = MessageRegistry("event")

    class A(Event):
        message_type = "Same"

    class B(Event):
        message_type = "Same"

    registry.register(A)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(B)


def test_every_command_and_event_has_a_registered_unique_type() -> None:
    """The blog contract registers commands in the imperative and events in the past tense."""
    assert set(COMMANDS.types()) >= {"RegisterAuthor", "CreatePost", "PublishPost", "ArchivePost"}
    assert set(EVENTS.types()) >= {"AuthorRegistered", "PostCreated", "PostPublished"}
    assert all(not name.endswith("ed") for name in COMMANDS.types())
    assert all(name.endswith(("ed", "Review", "Sent")) for name in EVENTS.types())
