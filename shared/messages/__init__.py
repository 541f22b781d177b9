"""The message contract: envelopes, message classes, the type registry and the JSON codec."""

from shared.messages import blog
from shared.messages.base import (
    COMMANDS,
    EVENTS,
    Command,
    CommandEnvelope,
    Event,
    EventEnvelope,
    Message,
    MessageRegistry,
)
from shared.messages.codec import (
    DecodedCommand,
    DecodedEvent,
    EncodedMessage,
    decode_command,
    decode_event,
    encode_command,
    encode_event,
)

__all__ = [
    "COMMANDS",
    "EVENTS",
    "Command",
    "CommandEnvelope",
    "DecodedCommand",
    "DecodedEvent",
    "EncodedMessage",
    "Event",
    "EventEnvelope",
    "Message",
    "MessageRegistry",
    "blog",
    "decode_command",
    "decode_event",
    "encode_command",
    "encode_event",
]
