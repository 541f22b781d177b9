"""JSON Schema of every command record, for producers written in other languages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import create_model

from shared.messages.base import COMMANDS, EVENTS, CommandEnvelope, EventEnvelope


def command_record_model(message_type: str) -> type[CommandEnvelope]:
    """The full command record (envelope + that command's payload) as one model."""
    cls = COMMANDS.get(message_type)
    return create_model(
        f"{message_type}Record",
        __base__=CommandEnvelope,
        __doc__=(cls.__doc__ or message_type).strip()
        + "\n\nProduce onto the commands topic with key = aggregate_id (UTF-8).",
        type=(Literal[message_type], ...),  # type: ignore[arg-type]  # a literal built at runtime
        payload=(cls, ...),
    )


def event_record_model(message_type: str) -> type[EventEnvelope]:
    """The full event record (envelope + that event's payload, current version) as one model."""
    cls = EVENTS.get(message_type)
    return create_model(
        f"{message_type}Record",
        __base__=EventEnvelope,
        __doc__=(cls.__doc__ or message_type).strip(),
        type=(Literal[message_type], ...),  # type: ignore[arg-type]  # a literal built at runtime
        payload=(cls, ...),
    )


def command_record_schema(message_type: str) -> dict[str, Any]:
    """The JSON Schema of one full command record (envelope + that command's payload)."""
    cls = COMMANDS.get(message_type)
    record = command_record_model(message_type)
    schema = record.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"urn:esctl:command:{message_type}:v{cls.schema_version}"
    if cls.issuers:  # other clients need not produce it: it is refused from them
        schema["x-issued-by"] = sorted(cls.issuers)
        schema["description"] += (
            f"\n\nIssued by the system itself ({', '.join(sorted(cls.issuers))}); from any "
            f"other client refused with `system_command`: {cls.instead}."
        )
    return schema


def all_command_schemas() -> dict[str, dict[str, Any]]:
    return {name: command_record_schema(name) for name in sorted(COMMANDS.types())}


def export_command_schemas(directory: Path) -> list[Path]:
    """Write `<Type>.json` for every command into `directory`; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in all_command_schemas().items():
        path = directory / f"{name}.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
