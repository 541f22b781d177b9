"""Message base classes, envelopes and the type registry.

A *message* is a frozen pydantic model: its fields are the payload, its class variables name it
(`message_type`) and version it (`schema_version`). The *envelope* carries the metadata that every
record has (ids, aggregate, version, time, correlation). On the wire the two are one JSON object,
the envelope fields at the top level and the message under `payload`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, ClassVar, Generic, TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from shared.errors import UnknownMessageTypeError

AGGREGATE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,199}$"
ActorRole = Annotated[str, Field(min_length=1, max_length=50)]


class Message(BaseModel):
    """A payload model. Subclasses set `message_type`; unknown fields are refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    message_type: ClassVar[str] = ""
    schema_version: ClassVar[int] = 1


class Command(Message):
    """An intention, named in the imperative (`PublishPost`). May be rejected.

    A command only the system itself may issue names its issuers (`issuers`, matched against
    the envelope's `issued_by`) and what a person should do instead (`instead`); from anyone
    else it is refused with the `system_command` rejection."""

    issuers: ClassVar[frozenset[str]] = frozenset()
    instead: ClassVar[str] = ""


class Event(Message):
    """A fact, named in the past tense (`PostPublished`). Never rejected, only upcast."""


class _Envelope(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    type: str = Field(min_length=1, max_length=100)
    aggregate_id: str = Field(pattern=AGGREGATE_ID_PATTERN)
    schema_version: int = Field(default=1, ge=1)
    occurred_at: datetime | None = None
    correlation_id: str | None = Field(default=None, max_length=200)
    causation_id: str | None = Field(default=None, max_length=200)
    payload: dict[str, Any] = Field(default_factory=dict)


class CommandEnvelope(_Envelope):
    """The command record that any Kafka client produces onto the commands topic.

    Extra top-level fields are ignored, so clients may add their own metadata.
    """

    command_id: UUID
    expected_version: int | None = Field(default=None, ge=0)
    #: which part of the system issued the command (`workflow-service`, `erasure`); set by the
    #: system's own services, left out by everyone else
    issued_by: str | None = Field(default=None, max_length=100)
    #: who asks: the subject of the caller's token (the HTTP edge sets it from the token, never
    #: from a request body; the system's services name themselves). Absent: a trusted producer
    #: (the Kafka ACL on the commands topic is the boundary), and no ownership is checked
    actor: str | None = Field(default=None, min_length=1, max_length=200)
    #: the actor's roles: what it may do to aggregates it does not own (`editor`, `admin`)
    actor_roles: tuple[ActorRole, ...] | None = Field(default=None, max_length=10)


class EventEnvelope(_Envelope):
    """An event as stored in the event log."""

    event_id: UUID
    aggregate_version: int = Field(ge=1)
    occurred_at: datetime
    command_id: UUID | None = None
    #: the actor of the command that produced the event (the audit trail); None in events
    #: written before actors were recorded, and for commands of trusted producers that named none
    actor: str | None = Field(default=None, max_length=200)


M = TypeVar("M", bound=Message)
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class MessageRegistry(Generic[M]):
    """Maps the `type` string to its class, and holds upcasters for older schema versions."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._types: dict[str, type[M]] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}

    def register(self, cls: type[M]) -> type[M]:
        """Class decorator: register `cls` under its `message_type` (default: the class name)."""
        if not cls.__dict__.get("message_type"):
            cls.message_type = cls.__name__
        name = cls.message_type
        if name in self._types and self._types[name] is not cls:
            raise ValueError(f"{self.kind} type {name!r} registered twice")
        self._types[name] = cls
        return cls

    def upcaster(self, message_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Decorator: a function turning a version-`from_version` payload into the next version."""

        def decorate(fn: Upcaster) -> Upcaster:
            self._upcasters[(message_type, from_version)] = fn
            return fn

        return decorate

    def upcast(self, message_type: str, version: int, payload: dict[str, Any]) -> dict[str, Any]:
        """Apply upcasters from `version` to the current schema version of the type."""
        current = self.get(message_type).schema_version
        while version < current:
            step = self._upcasters.get((message_type, version))
            if step is None:
                raise KeyError(f"no upcaster for {message_type} v{version}")
            payload = step(payload)
            version += 1
        return payload

    def get(self, message_type: str) -> type[M]:
        try:
            return self._types[message_type]
        except KeyError:
            raise UnknownMessageTypeError(message_type, list(self._types)) from None

    def __contains__(self, message_type: object) -> bool:
        return message_type in self._types

    def types(self) -> dict[str, type[M]]:
        return dict(self._types)


COMMANDS: MessageRegistry[Command] = MessageRegistry("command")
EVENTS: MessageRegistry[Event] = MessageRegistry("event")
