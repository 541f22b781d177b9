"""The `posts.snapshots` record contract: the schema of its values and the partition checkpoint.

Written by the command service (`command_service/snapshots.py`: aggregate snapshots and, per
partition, the checkpoint), read by it at restore and by `esctl prune`, which never prunes
events above a partition's checkpoint. Both sides import the key and format from here.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

#: version of every value on the snapshots topic; another version is unreadable (replay instead)
SNAPSHOT_SCHEMA = 1
#: key of each partition's checkpoint record: its value says up to which events offset every
#: aggregate changed below has a snapshot on the topic
CHECKPOINT_KEY = b"__checkpoint__"


class UnreadableSnapshot(Exception):
    """A snapshot record this code cannot read: replay instead."""


def encode_checkpoint(next_offset: int, aggregates: int, at: datetime) -> bytes:
    return json.dumps(
        {
            "snapshot_schema": SNAPSHOT_SCHEMA,
            "next_offset": next_offset,
            "aggregates": aggregates,
            "at": at.isoformat(),
        }
    ).encode()


def decode_checkpoint(value: bytes) -> int:
    """The events offset a checkpoint covers (every event below it is in a snapshot)."""
    obj = load_snapshot_value(value)
    try:
        return int(obj["next_offset"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UnreadableSnapshot(f"checkpoint without next_offset: {exc}") from None


def load_snapshot_value(value: bytes) -> dict[str, Any]:
    """A value of the snapshots topic as a JSON object of this code's `SNAPSHOT_SCHEMA`."""
    try:
        obj = json.loads(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UnreadableSnapshot(f"not JSON: {exc}") from None
    if not isinstance(obj, dict) or obj.get("snapshot_schema") != SNAPSHOT_SCHEMA:
        found = obj.get("snapshot_schema") if isinstance(obj, dict) else None
        raise UnreadableSnapshot(f"snapshot_schema {found!r}, this code reads {SNAPSHOT_SCHEMA}")
    return obj


__all__ = [
    "CHECKPOINT_KEY",
    "SNAPSHOT_SCHEMA",
    "UnreadableSnapshot",
    "decode_checkpoint",
    "encode_checkpoint",
    "load_snapshot_value",
]
