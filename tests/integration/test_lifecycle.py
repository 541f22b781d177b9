"""Pruning and rebuilding from the archive on a real broker, without the services: the safe
offset honours a lagging consumer group, and a rebuild refuses an archive file that does not
match its checksum."""

from __future__ import annotations

import base64
import gzip
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from command_service.snapshots import CHECKPOINT_KEY, encode_checkpoint
from shared.kafka import InboundRecord, make_consumer, make_producer, make_transactional_producer
from shared.kafka.topics import Topics, bootstrap_system_topics
from shared.lifecycle import archive
from shared.lifecycle.prune import plan, prune
from shared.messages import encode_event
from shared.messages.blog import PostCreated, PostEdited
from shared.readmodel.store import ReadStore
from shared.settings import KafkaSettings
from tests.conftest import unique
from tests.kafka_helpers import commit_offsets, delete_topics, read_all

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


async def system_topics(bootstrap: str, partitions: int) -> Topics:
    settings = KafkaSettings(
        kafka_bootstrap_servers=bootstrap, topic_prefix=unique("life") + ".", partitions=partitions
    )
    await bootstrap_system_topics(settings)
    return Topics.from_settings(settings)


async def write_posts(
    bootstrap: str, topic: str, partition: int, posts: int, edits: int
) -> list[InboundRecord]:
    """Events of `posts` posts (created, then edited `edits` times) into one partition, one
    transaction per round, as the command service writes them; returns the partition's log."""
    producer = make_transactional_producer(bootstrap, f"test-events-{uuid.uuid4().hex[:8]}")
    await producer.start()
    try:
        for version in range(1, edits + 2):
            await producer.begin_transaction()
            for i in range(posts):
                post = f"post-{partition}-{i}"
                event = (
                    PostCreated(author_id="ada", title=f"{post} v1", body="b", tags=["t"])
                    if version == 1
                    else PostEdited(title=f"{post} v{version}")
                )
                m = encode_event(
                    event,
                    event_id=uuid.uuid4(),
                    aggregate_id=post,
                    aggregate_version=version,
                    occurred_at=datetime.now(UTC) - timedelta(days=1),
                )
                await producer.send(
                    topic, m.value, key=m.key, headers=m.headers, partition=partition
                )
            await producer.commit_transaction()
    finally:
        await producer.stop()
    return [r for r in await read_all(bootstrap, topic, partition + 1) if r.partition == partition]


async def checkpoint_at_end(bootstrap: str, topics: Topics, partitions: int) -> dict[int, int]:
    """A snapshot checkpoint covering each events partition up to its end: the snapshots do
    not limit pruning, so what does is the consumer groups."""
    consumer = make_consumer(bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topics.events, p) for p in range(partitions)]
        ends = {tp.partition: o for tp, o in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()
    producer = make_producer(bootstrap)
    await producer.start()
    try:
        for p, end in ends.items():
            value = encode_checkpoint(end, aggregates=0, at=datetime.now(UTC))
            await producer.send_and_wait(topics.snapshots, value, key=CHECKPOINT_KEY, partition=p)
    finally:
        await producer.stop()
    return ends


async def test_prune_stops_at_a_lagging_groups_committed_offset_and_keeps_the_rest(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The safe offset of a partition is the committed offset of its most lagging consumer
    group (none committed: 0); only what lies below it is archived and deleted."""
    topics = await system_topics(kafka_bootstrap, 2)
    try:
        log0 = await write_posts(kafka_bootstrap, topics.events, 0, posts=4, edits=4)
        log1 = await write_posts(kafka_bootstrap, topics.events, 1, posts=3, edits=1)
        ends = await checkpoint_at_end(kafka_bootstrap, topics, 2)
        tp0, tp1 = TopicPartition(topics.events, 0), TopicPartition(topics.events, 1)
        # a caught-up reader, and one that stopped in the middle of partition 0 and never
        # committed on partition 1
        await commit_offsets(kafka_bootstrap, unique("caught-up"), {tp0: ends[0], tp1: ends[1]})
        lagging = unique("lagging")
        held = log0[9].offset  # a record in the middle of the partition
        await commit_offsets(kafka_bootstrap, lagging, {tp0: held})

        plans = {
            p.partition: p
            for p in await plan(kafka_bootstrap, topics, datetime.now(UTC) + timedelta(hours=1))
        }
        assert (plans[0].safe, plans[0].limited_by()) == (held, f"group {lagging}")
        assert (plans[1].safe, plans[1].records) == (0, 0)

        archive_dir = tmp_path / "archive"
        entries = await prune(kafka_bootstrap, topics, list(plans.values()), archive_dir)

        below = [r for r in log0 if r.offset < held]
        assert [(e.partition, e.end, e.count) for e in entries] == [(0, held, len(below))]
        archived = list(archive.read(archive_dir, topics.events, 0))
        assert [(r.offset, r.value) for r in archived] == [(r.offset, r.value) for r in below]
        after = await read_all(kafka_bootstrap, topics.events, 2)
        kept0 = [(r.offset, r.value) for r in after if r.partition == 0]
        assert kept0 == [(r.offset, r.value) for r in log0 if r.offset >= held]
        assert [r.value for r in after if r.partition == 1] == [r.value for r in log1]
    finally:
        await delete_topics(kafka_bootstrap, list(topics.__dict__.values()))


async def test_a_rebuild_refuses_an_archive_file_that_does_not_match_its_checksum(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """`esctl projections rebuild --archive` verifies each archive file against the manifest's
    SHA-256: a changed file is refused with the reason and the live read model stays; the
    original file rebuilds."""
    topics = await system_topics(kafka_bootstrap, 1)
    try:
        log = await write_posts(kafka_bootstrap, topics.events, 0, posts=5, edits=2)
        await checkpoint_at_end(kafka_bootstrap, topics, 1)
        plans = await plan(kafka_bootstrap, topics, datetime.now(UTC) + timedelta(hours=1))
        archive_dir = tmp_path / "archive"
        (entry,) = await prune(kafka_bootstrap, topics, plans, archive_dir)
        assert entry.count == len(log) > 0
        path = archive_dir / entry.file
        original = path.read_bytes()
        # a valid file with one title changed, as a careless edit or a bad copy would leave it
        lines = [json.loads(line) for line in gzip.decompress(original).splitlines()]
        value = base64.b64decode(lines[3]["value"])
        assert b"post-0-3 v1" in value
        lines[3]["value"] = base64.b64encode(value.replace(b"post-0-3 v1", b"post-0-3 vX")).decode()
        path.write_bytes(gzip.compress(b"\n".join(json.dumps(x).encode() for x in lines) + b"\n"))

        db = tmp_path / "read.sqlite3"
        env = dict(os.environ) | {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "TOPIC_PREFIX": topics.events.removesuffix("posts.events"),
            "READ_STORE_URL": f"sqlite:///{db}",
        }

        def rebuild() -> subprocess.CompletedProcess[str]:
            args = ["projections", "rebuild", "--archive", str(archive_dir)]
            return subprocess.run(
                [sys.executable, "-m", "esctl", *args],
                capture_output=True,
                text=True,
                cwd=ROOT,
                env=env,
                timeout=120,
                check=False,
            )

        refused = rebuild()
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "does not match its manifest checksum" in refused.stderr.replace("\n", " ")
        store = ReadStore(f"sqlite:///{db}")
        try:
            assert await store.active_generation() == 1
            assert (await store.stats())["events"] == 0

            path.write_bytes(original)
            rebuilt = rebuild()
            assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
            store._active_cache = None  # read the new generation right away
            assert await store.active_generation() == 2
            assert (await store.stats())["events"] == len(log)
            post = await store.get_post("post-0-3")
            assert post is not None and post["title"] == "post-0-3 v3"
        finally:
            await store.close()
    finally:
        await delete_topics(kafka_bootstrap, list(topics.__dict__.values()))
