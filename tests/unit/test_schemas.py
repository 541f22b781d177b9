"""JSON Schema of the command records: complete, valid for real records, and committed."""

from __future__ import annotations

import json
from pathlib import Path

from shared.messages import COMMANDS
from shared.messages.schema import all_command_schemas

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas" / "commands"


def test_every_command_has_an_exported_schema_and_the_committed_files_are_current() -> None:
    """`esctl schema export` output is committed and equal to what the code generates."""
    generated = all_command_schemas()
    assert set(generated) == set(COMMANDS.types())
    for name, schema in generated.items():
        committed = json.loads((SCHEMA_DIR / f"{name}.json").read_text())
        assert committed == json.loads(json.dumps(schema)), (
            f"schemas/commands/{name}.json is stale: run `make schemas`"
        )


def test_record_schema_requires_the_envelope_and_pins_the_type() -> None:
    """A producer reading the schema learns the required fields and the exact type string."""
    schema = all_command_schemas()["CreatePost"]
    assert {"type", "command_id", "aggregate_id", "payload"} <= set(schema["required"])
    assert schema["properties"]["type"]["const"] == "CreatePost"
    payload_ref = schema["properties"]["payload"]["$ref"].split("/")[-1]
    assert "author_id" in schema["$defs"][payload_ref]["required"]
