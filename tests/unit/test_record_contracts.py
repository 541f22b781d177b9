"""Cross-process record formats, written once and read by both sides: the snapshot checkpoint
(command service -> prune) and the workflows changelog's meta record (engine -> operator view)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from command_service import snapshots as command_snapshots
from shared.messages.snapshots import (
    CHECKPOINT_KEY,
    UnreadableSnapshot,
    decode_checkpoint,
    encode_checkpoint,
)
from workflow_service import api, engine
from workflow_service.changelog import META_KEY, PartitionMeta


def test_the_checkpoint_record_keeps_its_key_and_fields() -> None:
    """The checkpoint is `__checkpoint__` -> JSON with snapshot_schema 1 and next_offset."""
    value = encode_checkpoint(42, 3, datetime(2025, 1, 2, tzinfo=UTC))
    assert CHECKPOINT_KEY == b"__checkpoint__"
    assert json.loads(value) == {
        "snapshot_schema": 1,
        "next_offset": 42,
        "aggregates": 3,
        "at": "2025-01-02T00:00:00+00:00",
    }
    assert decode_checkpoint(value) == 42


def test_a_checkpoint_of_another_schema_is_unreadable() -> None:
    """A checkpoint this code did not write is refused, not trusted."""
    with pytest.raises(UnreadableSnapshot):
        decode_checkpoint(b'{"snapshot_schema": 2, "next_offset": 10}')


def test_the_command_service_writes_the_shared_checkpoint_contract() -> None:
    """The command service's snapshot module uses the contract's key and codec, not copies."""
    assert command_snapshots.CHECKPOINT_KEY is CHECKPOINT_KEY
    assert command_snapshots.encode_checkpoint is encode_checkpoint
    assert command_snapshots.decode_checkpoint is decode_checkpoint


def test_the_changelog_meta_record_keeps_its_key_and_fields() -> None:
    """The meta record is `__partition__` -> {"round_robin", "control_next_offset"}."""
    assert META_KEY == b"__partition__"
    value = PartitionMeta(round_robin=3, control_next=7).encode()
    assert json.loads(value) == {"round_robin": 3, "control_next_offset": 7}
    assert PartitionMeta.decode(value) == PartitionMeta(3, 7)
    assert PartitionMeta.decode(b"{}") == PartitionMeta(0, 0)


def test_the_engine_and_the_operator_view_read_one_meta_key() -> None:
    """Writer and reader of the changelog take the meta key from the same contract module."""
    assert engine.META_KEY is META_KEY
    assert api.META_KEY is META_KEY
