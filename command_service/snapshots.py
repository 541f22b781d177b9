"""Aggregate snapshots and partition checkpoints on `posts.snapshots` (compacted, partition p).

Policy: when `snapshot_every` events have been appended to events partition p since its last
checkpoint (or were replayed at restore), the owner writes, in its next transactions, a snapshot
of every aggregate changed since that checkpoint (at most `per_transaction` per transaction), and
when none is left, a checkpoint record `__checkpoint__` with the events offset it covers. Every
aggregate changed before that offset then has its latest state in the compacted topic, so a
restore reads the snapshots and replays only the events from the checkpoint on.

Snapshots are written in the same transactions as the events: they can never be ahead of the
log. A snapshot or checkpoint that cannot be read (another `snapshot_schema`, bad JSON) makes the
restore fall back to a full replay, with a warning. The key of the checkpoint and the format of
the records are the contract in `shared/messages/snapshots.py` (`esctl prune` reads checkpoints).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from typing import Any

from command_service.domain import AggregateState, AuthorState, PostState, PostStatus
from shared.messages.snapshots import (
    CHECKPOINT_KEY,
    SNAPSHOT_SCHEMA,
    UnreadableSnapshot,
    decode_checkpoint,
    encode_checkpoint,
    load_snapshot_value,
)


def encode_state(state: AggregateState) -> bytes:
    kind = "post" if isinstance(state, PostState) else "author"
    return json.dumps(
        {"snapshot_schema": SNAPSHOT_SCHEMA, "kind": kind, "state": asdict(state)},
        default=_json_default,
    ).encode()


def decode_state(value: bytes) -> AggregateState:
    obj = load_snapshot_value(value)
    try:
        s: dict[str, Any] = obj["state"]
        if obj["kind"] == "author":
            return AuthorState(
                s["id"], int(s["version"]), s["name"], s["email"], bool(s.get("erased", False))
            )
        return PostState(
            id=s["id"],
            version=int(s["version"]),
            author_id=s["author_id"],
            title=s["title"],
            body=s["body"],
            tags=tuple(s["tags"]),
            status=PostStatus(s["status"]),
            created_at=datetime.fromisoformat(s["created_at"]),
            updated_at=datetime.fromisoformat(s["updated_at"]),
            published_at=_dt(s.get("published_at")),
            last_rejection=s.get("last_rejection"),
            reviewer=s.get("reviewer"),
            scheduled_publish_at=_dt(s.get("scheduled_publish_at")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise UnreadableSnapshot(f"snapshot state unreadable: {exc!r}") from None


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, PostStatus):
        return value.value
    raise TypeError(f"cannot encode {type(value).__name__}")


__all__ = [
    "CHECKPOINT_KEY",
    "SNAPSHOT_SCHEMA",
    "UnreadableSnapshot",
    "decode_checkpoint",
    "decode_state",
    "encode_checkpoint",
    "encode_state",
]
