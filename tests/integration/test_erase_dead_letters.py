"""The dead-letter rewrite of an erasure, on a real broker: the subject's records go (by key or
by aggregate_id), the others stay in order with their headers, and a rerun after an interrupted
rewrite keeps exactly one copy of each."""

from __future__ import annotations

import json

import pytest

from shared.kafka import make_producer
from shared.lifecycle.erase import REWRITTEN_FROM, rewrite_without_subject
from tests.conftest import TopicFactory
from tests.kafka_helpers import read_all

pytestmark = pytest.mark.integration


async def _send(
    bootstrap: str, topic: str, rows: list[tuple[bytes, bytes, list[tuple[str, bytes]]]]
) -> None:
    producer = make_producer(bootstrap)
    await producer.start()
    try:
        for key, value, headers in rows:
            await producer.send_and_wait(topic, value, key=key, partition=0, headers=headers)
    finally:
        await producer.stop()


async def test_rewrite_drops_the_subject_keeps_the_rest_and_survives_a_rerun(
    kafka_bootstrap: str, make_topic: TopicFactory
) -> None:
    topic = await make_topic("dlq")
    reason = [("dlq.error.code", b"invalid_payload")]
    await _send(
        kafka_bootstrap,
        topic,
        [
            (b"ada", b'{"broken": "Ada Lovelace', reason),  # 0: the subject's, by key
            (b"bob", b"bob-1", reason),  # 1
            (b"x", json.dumps({"aggregate_id": "ada", "n": "ada@x"}).encode(), reason),  # 2
            # 3: a copy of 1 left by an interrupted rewrite (appended, never deleted below)
            (b"bob", b"bob-1", [*reason, (REWRITTEN_FROM, b"1")]),
            (b"cyd", b"cyd-1", reason),  # 4
        ],
    )
    assert await rewrite_without_subject(kafka_bootstrap, topic, "ada") == 2
    kept = await read_all(kafka_bootstrap, topic, 1)
    assert [(r.key, r.value) for r in kept] == [(b"bob", b"bob-1"), (b"cyd", b"cyd-1")]
    assert [r.header(REWRITTEN_FROM) for r in kept] == ["3", "4"]
    assert all(r.header("dlq.error.code") == "invalid_payload" for r in kept)
    assert min(r.offset for r in kept) >= 5  # everything below the old end is deleted

    assert await rewrite_without_subject(kafka_bootstrap, topic, "ada") == 0  # nothing left of ada
    again = await read_all(kafka_bootstrap, topic, 1)
    assert [(r.offset, r.value) for r in again] == [(r.offset, r.value) for r in kept]
