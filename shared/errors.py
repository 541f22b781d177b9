"""Errors that say what went wrong and whether retrying can help.

Every error of this project derives from `EsError`. `retriable` tells a caller (a processor loop,
an HTTP edge, a person) whether the same operation may succeed later without anyone changing
anything: a broker that is restarting is retriable, a malformed message is not.
"""

from __future__ import annotations


class EsError(Exception):
    """Base error: a stable machine-readable `code`, a human sentence, and `retriable`."""

    code: str = "error"
    retriable: bool = False

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


class ConfigurationError(EsError):
    """The system is configured in a way that cannot work; fix the settings and restart."""

    code = "configuration_error"


class InfrastructureUnavailable(EsError):
    """A broker or database did not answer in time. Retrying later can help."""

    code = "infrastructure_unavailable"
    retriable = True


class KafkaUnreachable(InfrastructureUnavailable):
    """No broker of the bootstrap list answered: the address, and why (refused, no answer...)."""

    code = "kafka_unreachable"

    def __init__(self, bootstrap_servers: str, reason: str) -> None:
        super().__init__(f"cannot reach Kafka at {bootstrap_servers} ({reason})")
        self.bootstrap_servers = bootstrap_servers
        self.reason = reason


class ProducerFencedError(EsError):
    """A newer owner of the same transactional id exists; this owner must stop writing."""

    code = "producer_fenced"
    retriable = False


class MessageError(EsError):
    """A record could not be turned into a message. Never retriable: the bytes will not change."""

    code = "invalid_message"


class MalformedRecordError(MessageError):
    """The record is not a JSON object with the envelope fields."""

    code = "malformed_record"


class UnknownMessageTypeError(MessageError):
    """The record names a `type` that the registry does not know."""

    code = "unknown_message_type"

    def __init__(self, message_type: str, known: list[str]) -> None:
        hint = ", ".join(sorted(known)[:20])
        super().__init__(f"unknown message type {message_type!r}; known types: {hint}")
        self.message_type = message_type


class InvalidPayloadError(MessageError):
    """The envelope is fine but the payload does not validate against the message model."""

    code = "invalid_payload"

    def __init__(self, message_type: str, errors: list[str]) -> None:
        super().__init__(f"invalid payload for {message_type}: " + "; ".join(errors))
        self.message_type = message_type
        self.errors = errors


class UnsupportedSchemaVersionError(MessageError):
    """The record was written with a schema version newer than this code understands."""

    code = "unsupported_schema_version"
