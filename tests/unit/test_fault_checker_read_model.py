"""`read_model_mismatches` (tests/faults/checker.py): a read store that is the fold of the log
has none; an event applied twice, an event lost, or a row that differs each shows (SQLite)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from shared.kafka.records import InboundRecord
from shared.messages import encode_event
from shared.messages.blog import PostCreated, PostEdited, PostPublished
from shared.readmodel.pipeline import read_records
from shared.readmodel.store import PartitionBatch, ReadStore, generation_tables
from tests.faults.checker import read_model_mismatches


def log_of_two_posts() -> list[InboundRecord]:
    events = [
        ("p1", PostCreated(author_id="a", title="one", body="b", tags=["t"])),
        ("p2", PostCreated(author_id="a", title="two", body="b", tags=["u"])),
        ("p1", PostEdited(title="one, edited", tags=["t", "v"])),
        ("p1", PostPublished()),
    ]
    versions: dict[str, int] = {}
    records = []
    for offset, (post, event) in enumerate(events):
        versions[post] = versions.get(post, 0) + 1
        m = encode_event(
            event,
            event_id=uuid.uuid4(),
            aggregate_id=post,
            aggregate_version=versions[post],
            occurred_at=datetime(2026, 1, 1, 12, offset, tzinfo=UTC),
        )
        records.append(InboundRecord("t", 0, offset, m.key, m.value, m.headers))
    return records


async def project(url: str, records: list[InboundRecord]) -> None:
    store = ReadStore(url, writer=True)
    try:
        gen = await store.migrate()
        events, _ = read_records(records)
        start = records[0].offset
        batch = PartitionBatch(0, events, start_offset=start, next_offset=records[-1].offset + 1)
        await store.apply_batches(gen, [batch])
    finally:
        await store.close()


async def test_the_fold_of_the_log_has_no_mismatch_and_a_lost_event_shows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'read.sqlite3'}"
    log = log_of_two_posts()
    await project(url, log)
    assert await read_model_mismatches(url, log) == []

    # the log holds one more event than the model: lost by the projection
    extra = encode_event(
        PostEdited(title="two, edited"),
        event_id=uuid.uuid4(),
        aggregate_id="p2",
        aggregate_version=2,
        occurred_at=datetime(2026, 1, 1, 13, tzinfo=UTC),
    )
    longer = [*log, InboundRecord("t", 0, len(log), extra.key, extra.value, extra.headers)]
    found = await read_model_mismatches(url, longer)
    assert any(line.startswith("post p2: read model") for line in found), found
    assert any("read model holds 4 events, the log 5" in line for line in found), found
    assert any(line.startswith("event index of p2") for line in found), found


async def test_an_event_row_applied_twice_or_a_changed_row_shows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'read.sqlite3'}"
    log = log_of_two_posts()
    await project(url, log)
    t = generation_tables(1)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        row = conn.execute(sa.select(t.events).where(t.events.c.log_offset == 1)).mappings().one()
        # the same event a second time, at another position (as a double application would)
        conn.execute(sa.insert(t.events).values({**row, "log_offset": 99, "aggregate_version": 7}))
        conn.execute(sa.update(t.posts).where(t.posts.c.post_id == "p1").values(title="x"))
    engine.dispose()
    found = await read_model_mismatches(url, log)
    assert any("read model holds 5 events, the log 4" in line for line in found), found
    assert any(line.startswith("event index of p2") for line in found), found
    assert any(line.startswith("post p1: read model") for line in found), found
