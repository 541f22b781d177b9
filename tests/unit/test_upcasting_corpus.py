"""The committed corpus of sample event records, one per type and schema version
(`tests/corpus/events/<Type>.v<N>.json`), read through the upcasters into the current models.

Each file holds a record exactly as it sits on `posts.events` and, written by hand, the payload
the current model must read from it. Old records never change in the log: when a schema moves
on, its old samples stay here and must keep reading right.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from command_service.domain import PostState, evolve
from shared.messages import decode_event
from shared.messages.base import EVENTS
from shared.readmodel.views import apply_post

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "events"
FILES = sorted(CORPUS.glob("*.json"))


def load(path: Path) -> tuple[bytes, dict[str, Any]]:
    sample = json.loads(path.read_text())
    return json.dumps(sample["record"]).encode(), sample["current"]


def test_the_corpus_has_every_type_at_every_version() -> None:
    have = {p.stem for p in FILES}
    want = {
        f"{name}.v{version}"
        for name, cls in EVENTS.types().items()
        for version in range(1, cls.schema_version + 1)
    }
    assert want <= have, f"missing samples: {sorted(want - have)}"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_every_sample_reads_into_the_current_model(path: Path) -> None:
    record, current = load(path)
    decoded = decode_event(record)
    assert type(decoded.payload).schema_version == EVENTS.get(decoded.envelope.type).schema_version
    assert decoded.payload.model_dump(mode="json") == current


def test_real_changes_a_field_added_and_a_field_renamed() -> None:
    """PostSubmittedForReview v2 added `publish_at`; PostApproved v2 renamed `reviewer`."""
    old_submit, _ = load(CORPUS / "PostSubmittedForReview.v1.json")
    old_approve, _ = load(CORPUS / "PostApproved.v1.json")
    submitted = decode_event(old_submit).payload
    approved = decode_event(old_approve).payload
    assert submitted.publish_at is None  # type: ignore[attr-defined]
    assert approved.approved_by == "bob"  # type: ignore[attr-defined]
    assert "reviewer" not in approved.model_dump()


def test_old_records_fold_on_every_read_path() -> None:
    """Command restore (domain evolve), the projector (views) and time travel (the query
    service folds the same views) all receive upcast payloads: a v1 history folds."""
    history = [
        CORPUS / "PostCreated.v1.json",
        CORPUS / "PostSubmittedForReview.v1.json",
        CORPUS / "PostApproved.v1.json",
    ]
    state = None
    view = None
    for version, path in enumerate(history, start=1):
        record, _ = load(path)
        decoded = decode_event(record)
        env = decoded.envelope.model_copy(update={"aggregate_version": version})
        state = evolve(state, decoded.payload, aggregate_id=env.aggregate_id, at=env.occurred_at)
        view = apply_post(view, env, decoded.payload)
    assert isinstance(state, PostState)
    assert state.status.value == "approved" and state.version == 3
    assert view is not None and view["status"] == "approved" and view["version"] == 3


def test_a_record_newer_than_the_code_is_refused_with_the_reason() -> None:
    record, _ = load(CORPUS / "PostApproved.v2.json")
    newer = json.loads(record) | {"schema_version": 3}
    with pytest.raises(Exception, match="newer than the supported 2"):
        decode_event(json.dumps(newer).encode())
