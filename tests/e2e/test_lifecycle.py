"""Pruning the event log with an archive, with the services as real processes: the projection
rebuilt from archive plus topic equals the one built before pruning, and the command service
restarts (from its snapshots) and accepts commands on old aggregates with the right versions."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition

from shared.kafka import make_consumer
from shared.kafka.clients import partition_for_key
from shared.kafka.reader import read_latest_by_key
from shared.kafka.topics import Topics
from shared.lifecycle import archive
from shared.lifecycle.prune import plan, prune
from shared.messages import encode_command
from shared.messages.base import Command
from shared.messages.blog import CreatePost, EditPost
from shared.settings import KafkaSettings
from tests.conftest import unique
from tests.e2e.harness import (
    ServiceProcess,
    check_log_invariants,
    command_service_env,
    esctl,
    http_client,
)
from tests.kafka_helpers import end_offsets, produce, read_all, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

PARTITIONS = 3


def rows(db: Path) -> dict[str, dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        gen = conn.execute("SELECT value FROM read_model_meta WHERE key = 'active_generation'")
        active = gen.fetchone()[0]
        cur = conn.execute(f"SELECT * FROM posts_g{active} ORDER BY post_id")  # noqa: S608
        names = [c[0] for c in cur.description]
        return {r[0]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}


async def log_starts(bootstrap: str, topic: str, partitions: int = PARTITIONS) -> dict[int, int]:
    consumer = make_consumer(bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return {tp.partition: o for tp, o in (await consumer.beginning_offsets(tps)).items()}
    finally:
        await consumer.stop()


async def test_prune_archive_rebuild_and_restart_on_old_aggregates(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Pruned down to the snapshot checkpoints: the rebuild from archive and topic equals the
    projection before, and each partition of a restart restores from its snapshots."""
    prefix = unique("prune") + "."
    topics = Topics.from_settings(KafkaSettings(topic_prefix=prefix))
    db = tmp_path / "read.sqlite3"
    common = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "TOPIC_PREFIX": prefix,
        "PARTITIONS": str(PARTITIONS),
        "READ_STORE_URL": f"sqlite:///{db}",
    }
    cmd = ServiceProcess(
        "command_service",
        command_service_env(kafka_bootstrap, prefix, PARTITIONS, SNAPSHOT_EVERY_EVENTS="20"),
        tmp_path,
        "command",
    )
    proj = ServiceProcess(
        "projector_service",
        common | {"GROUP_ID": f"{prefix}projector", "SESSION_TIMEOUT_MS": "6000"},
        tmp_path,
        "projector",
    )
    cmd.start()
    await cmd.wait_healthy()
    proj.start()
    await proj.wait_healthy()
    try:
        async with http_client(timeout=30) as http:
            r = await http.post(
                f"{cmd.url}/authors",
                json={"author_id": "pr-ada", "name": "Ada", "email": "ada@example.org"},
            )
            assert r.status_code == 201, r.text
        # 14 posts on each partition: each one reaches SNAPSHOT_EVERY_EVENTS (20) by the
        # second wave, so each one has snapshots and a checkpoint to be pruned down to
        posts: list[str] = []
        while len(posts) < 14 * PARTITIONS:
            post = f"pr-{len(posts)}-{uuid.uuid4().hex[:4]}"
            on = partition_for_key(post.encode(), PARTITIONS)
            if sum(partition_for_key(p.encode(), PARTITIONS) == on for p in posts) < 14:
                posts.append(post)
        sent: list[uuid.UUID] = []
        commands: list[tuple[str, Command]] = [
            (p, CreatePost(author_id="pr-ada", title="v1")) for p in posts
        ]
        commands += [(p, EditPost(title="v2")) for p in posts]
        commands += [(p, EditPost(title="v3")) for p in posts]
        records = []
        for post, command in commands:
            cid = uuid.uuid4()
            sent.append(cid)
            m = encode_command(command, command_id=cid, aggregate_id=post)
            records.append((m.key, m.value))
        wave = len(posts)
        for chunk in range(0, len(records), wave):  # three waves: several transactions
            await produce(kafka_bootstrap, topics.commands, records[chunk : chunk + wave])

            async def decided(upto: int = chunk + wave) -> bool:
                try:
                    await check_log_invariants(kafka_bootstrap, prefix, PARTITIONS, sent[:upto])
                except AssertionError:
                    return False
                return True

            await wait_until(decided, timeout_s=60, what="commands decided")

        async def projected() -> bool:
            got = rows(db) if db.exists() else {}
            return len(got) == len(posts) and all(v["version"] == 3 for v in got.values())

        await wait_until(projected, timeout_s=60, what="the projection caught up")
        before = rows(db)
        env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "TOPIC_PREFIX": prefix}
        future = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
        archive_dir = tmp_path / "archive"

        dry = esctl(env, "prune", "--before", future, "--archive", str(archive_dir), "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "dry run" in dry.stderr
        assert not archive_dir.exists()

        pruned = esctl(env, "prune", "--before", future, "--archive", str(archive_dir))
        assert pruned.returncode == 0, pruned.stderr + pruned.stdout
        starts = await log_starts(kafka_bootstrap, topics.events)
        assert sum(starts.values()) > 0, f"nothing was pruned: {pruned.stdout}"
        entries = archive.entries(archive_dir)
        assert {e.partition: e.end for e in entries} == {p: s for p, s in starts.items() if s}
        archived = [r for p in starts for r in archive.read(archive_dir, topics.events, p)]
        assert len(archived) == sum(e.count for e in entries) > 0
        manifest = json.loads((archive_dir / "manifest.json").read_text())
        assert all(len(e["sha256"]) == 64 for e in manifest["entries"])

        # a rebuild without the archive refuses, with the reason
        store_env = env | {"READ_STORE_URL": f"sqlite:///{db}"}
        refused = esctl(store_env, "projections", "rebuild")
        assert refused.returncode == 2
        assert "pruned" in refused.stdout + refused.stderr
        # with it: archive first, then the topic; the same projection as before pruning
        rebuilt = esctl(store_env, "projections", "rebuild", "--archive", str(archive_dir))
        assert rebuilt.returncode == 0, rebuilt.stderr + rebuilt.stdout
        after = rows(db)
        assert after == before

        # the command service restarts from its snapshots and goes on with the right versions
        await cmd.kill()
        logged_before = len(cmd.logs())
        checkpoints: dict[int, int | None] = {}  # what the restart finds (it may write more)
        for p in range(PARTITIONS):
            latest = await read_latest_by_key(kafka_bootstrap, topics.snapshots, p)
            checkpoint = latest.get(b"__checkpoint__")
            checkpoints[p] = json.loads(checkpoint)["next_offset"] if checkpoint else None
        cmd.start()
        await cmd.wait_healthy()

        def restores() -> list[dict[str, Any]]:
            return [
                json.loads(line)
                for line in cmd.logs()[logged_before:].splitlines()
                if line.startswith("{") and '"partition_restored"' in line
            ]

        async def all_restored() -> bool:
            return {r["partition"] for r in restores()} == set(range(PARTITIONS))

        await wait_until(all_restored, timeout_s=60, what="every partition restored")
        async with http_client(timeout=30) as http:
            for post in posts[:5]:
                r = await http.patch(
                    f"{cmd.url}/posts/{post}",
                    params={"expected_version": 3},
                    json={"title": "v4"},
                )
                assert r.status_code == 200, r.text
                assert r.json()["version"] == 4
            stale = await http.patch(
                f"{cmd.url}/posts/{posts[5]}", params={"expected_version": 2}, json={"title": "x"}
            )
            assert stale.status_code == 409
            assert stale.json()["current_version"] == 3
        # every restore of the restart read all its aggregates from the snapshots and replayed
        # the log from its checkpoint, at or above the pruned log start
        author_on = partition_for_key(b"pr-ada", PARTITIONS)
        for restored in restores():
            p = restored["partition"]
            aggregates = 14 + (p == author_on)
            assert (restored["from_snapshots"], restored["events_from"]) == (
                aggregates,
                checkpoints[p],
            ), restored
            assert 0 < starts[p] <= (checkpoints[p] or 0), (restored, starts)
    finally:
        for svc in (cmd, proj):
            await svc.stop()


async def test_a_restore_that_would_replay_across_a_pruned_gap_refuses_to_decide(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """When no readable snapshot checkpoint covers the pruned part of a partition, the command
    service refuses to restore it (and exits with the reason) instead of deciding commands on
    incomplete state: nothing is appended, no outcome is written."""
    prefix = unique("gap") + "."
    topics = Topics.from_settings(KafkaSettings(topic_prefix=prefix))
    env = command_service_env(kafka_bootstrap, prefix, 1, SNAPSHOT_EVERY_EVENTS="1")
    cmd = ServiceProcess("command_service", env, tmp_path, "command")
    cmd.start()
    try:
        await cmd.wait_healthy()
        async with http_client(timeout=30) as http:
            r = await http.post(
                f"{cmd.url}/authors",
                json={"author_id": "gap-ada", "name": "Ada", "email": "ada@example.org"},
            )
            assert r.status_code == 201, r.text
            r = await http.post(
                f"{cmd.url}/posts",
                json={"post_id": "gap-post", "author_id": "gap-ada", "title": "v1"},
            )
            assert r.status_code == 201, r.text
            r = await http.patch(f"{cmd.url}/posts/gap-post", json={"title": "v2"})
            assert r.status_code == 200, r.text
        await cmd.stop()

        # prune below the snapshot checkpoint, as `esctl prune` does
        plans = await plan(kafka_bootstrap, topics, datetime.now(UTC) + timedelta(minutes=1))
        assert plans[0].safe > 0 and plans[0].limited_by() == "snapshot checkpoint", plans
        await prune(kafka_bootstrap, topics, plans, tmp_path / "archive")
        pruned_at = (await log_starts(kafka_bootstrap, topics.events, 1))[0]
        assert pruned_at == plans[0].safe
        # ... then the checkpoint becomes unreadable (written by a newer snapshot schema)
        await produce(
            kafka_bootstrap,
            topics.snapshots,
            [(b"__checkpoint__", json.dumps({"snapshot_schema": 99, "next_offset": 1}).encode())],
            partition=0,
        )
        events_end = await end_offsets(kafka_bootstrap, topics.events, 1)
        edit = uuid.uuid4()
        m = encode_command(EditPost(title="v3"), command_id=edit, aggregate_id="gap-post")
        await produce(kafka_bootstrap, topics.commands, [(m.key, m.value)])

        cmd.start()
        assert cmd.proc is not None
        try:
            code: int | None = await asyncio.to_thread(cmd.proc.wait, 60)
        except subprocess.TimeoutExpired:
            code = None
        assert code not in (0, None), "the command service restored across the pruned gap"
        assert "refusing to decide on incomplete state" in cmd.logs()
        assert await end_offsets(kafka_bootstrap, topics.events, 1) == events_end
        outcomes = await read_all(kafka_bootstrap, topics.command_results, 1)
        assert str(edit).encode() not in [r.key for r in outcomes]
    finally:
        await cmd.stop()
