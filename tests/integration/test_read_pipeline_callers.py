"""The read pipeline's callers on a real broker: what each does with an unreadable event
(shared/readmodel/pipeline.py). The projector parks it in the dead-letter topic and goes on;
the rebuild skips it and goes on; neither folds it."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from projector_service.projector import Projector
from shared.messages import encode_event
from shared.messages.blog import PostCreated, PostPublished
from shared.readmodel.rebuild import rebuild
from shared.readmodel.store import ReadStore
from tests.conftest import TopicFactory, unique
from tests.kafka_helpers import produce, read_all, wait_until

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
BAD = b"\xffnot json"


def records() -> list[tuple[bytes | None, bytes]]:
    """PostCreated, an undecodable record, PostPublished: offsets 0, 1, 2 of one partition."""
    created = encode_event(
        PostCreated(author_id="ada", title="On engines", body="Notes.", tags=[]),
        event_id=uuid.uuid4(),
        aggregate_id="post-1",
        aggregate_version=1,
        occurred_at=T0,
    )
    published = encode_event(
        PostPublished(),
        event_id=uuid.uuid4(),
        aggregate_id="post-1",
        aggregate_version=2,
        occurred_at=T0,
    )
    return [(b"post-1", created.value), (b"post-1", BAD), (b"post-1", published.value)]


async def test_the_projector_dead_letters_an_unreadable_event_and_folds_the_ones_after_it(
    kafka_bootstrap: str, make_topic: TopicFactory, tmp_path: Path
) -> None:
    """The bad record lands in the DLQ with its code and position; the post is published."""
    topic = await make_topic("events")
    dlq = await make_topic("events-dlq")
    await produce(kafka_bootstrap, topic, records(), partition=0)
    store = ReadStore(f"sqlite:///{tmp_path / 'read.sqlite3'}", writer=True)
    projector = Projector(
        bootstrap_servers=kafka_bootstrap,
        topic=topic,
        group_id=unique("projector"),
        store=store,
        dlq_topic=dlq,
    )
    await projector.start()
    running = asyncio.create_task(projector.run())
    try:

        async def caught_up() -> bool:
            return (await store.positions(1)).get(0) == 3

        await wait_until(caught_up, timeout_s=60, what="the projector to apply offsets 0-2")
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await projector.stop()
    try:
        post = await store.get_post("post-1")
        assert post is not None and (post["status"], post["version"]) == ("published", 2)
        assert [e["log_offset"] for e in await store.events("post-1")] == [0, 2]
    finally:
        await store.close()
    parked = await read_all(kafka_bootstrap, dlq, 1)
    assert [r.value for r in parked] == [BAD]
    assert parked[0].header("dlq.error.code") == "malformed_record"
    assert parked[0].header("dlq.source.offset") == "1"
    assert parked[0].header("dlq.source.partition") == "0"


async def test_a_rebuild_skips_an_unreadable_event_and_folds_the_ones_after_it(
    kafka_bootstrap: str, make_topic: TopicFactory, tmp_path: Path
) -> None:
    """The rebuilt model holds both readable events; the count of applied events is 2."""
    topic = await make_topic("events")
    await produce(kafka_bootstrap, topic, records(), partition=0)
    store = ReadStore(f"sqlite:///{tmp_path / 'read.sqlite3'}", writer=True)
    try:
        result = await rebuild(store, kafka_bootstrap, topic, swap_grace_s=0)
        assert result.events == 2
        post = await store.get_post("post-1")
        assert post is not None and (post["status"], post["version"]) == ("published", 2)
        assert [e["log_offset"] for e in await store.events("post-1")] == [0, 2]
    finally:
        await store.close()
