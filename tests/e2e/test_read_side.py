"""The read side as real processes: a crash-proof projector, read-your-writes, lag, rebuilds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from shared.kafka import make_consumer, make_producer, make_transactional_producer
from shared.kafka.clients import partition_for_key
from shared.kafka.lag import consumer_lag
from shared.kafka.topics import Topics, bootstrap_system_topics
from shared.messages import decode_event, encode_command, encode_event
from shared.messages.base import Event
from shared.messages.blog import (
    EditPost,
    PostApproved,
    PostCreated,
    PostEdited,
    PostPublished,
    PostRejected,
    PostSubmittedForReview,
    PostUnpublished,
)
from shared.readmodel.rebuild import RebuildProgress, rebuild
from shared.readmodel.store import ReadStore
from shared.settings import KafkaSettings
from tests.conftest import unique
from tests.e2e.harness import ROOT, ServiceProcess, command_service_env, esctl, http_client
from tests.kafka_helpers import (
    end_offsets,
    kafka_consumer_groups_describe,
    produce,
    read_all,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def projector_env(bootstrap: str, prefix: str, store_url: str, **extra: str) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "TOPIC_PREFIX": prefix,
        "GROUP_ID": f"{prefix}projector",
        "READ_STORE_URL": store_url,
        "SESSION_TIMEOUT_MS": "6000",
        **extra,
    }


def independent_fold(events: list[Any]) -> dict[str, dict[str, Any]]:
    """The expected post rows, folded here without the projector's code."""
    status_after = {
        "PostSubmittedForReview": "in_review",
        "PostApproved": "approved",
        "PostRejected": "draft",
        "PostPublished": "published",
        "PostUnpublished": "unpublished",
        "PostArchived": "archived",
    }
    posts: dict[str, dict[str, Any]] = {}
    for record in events:
        decoded = decode_event(record.value)
        env, payload = decoded.envelope, decoded.payload.model_dump()
        if env.type == "PostCreated":
            posts[env.aggregate_id] = {
                "title": payload["title"],
                "body": payload["body"],
                "tags": payload["tags"],
                "status": "draft",
            }
        elif env.aggregate_id in posts:
            post = posts[env.aggregate_id]
            if env.type == "PostEdited":
                post.update({k: v for k, v in payload.items() if v is not None})
            elif env.type in status_after:
                post["status"] = status_after[env.type]
        else:
            continue
        posts[env.aggregate_id]["version"] = env.aggregate_version
    return posts


async def all_rows(store: ReadStore) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    cursor = None
    while True:
        page, cursor = await store.list_posts(limit=200, cursor=cursor)
        for p in page:
            rows[p["post_id"]] = {k: p[k] for k in ("title", "body", "tags", "status", "version")}
        if cursor is None:
            return rows


POSTS = [f"post-{i}" for i in range(400)]
MOVES: list[Event] = [
    PostSubmittedForReview(),
    PostApproved(),
    PostPublished(),
    PostUnpublished(),
    PostRejected(reason="r"),
]


async def send_next_event(
    producer: Any,
    topic: str,
    partitions: int,
    rng: random.Random,
    versions: dict[str, int],
    *,
    edit_tags: bool = False,
) -> None:
    """Send the next event of one of 400 posts the way the command service does: key = post id,
    partition = murmur2(key), versions 1..n (`versions` keeps them); edits change tags too when
    `edit_tags`."""
    post = rng.choice(POSTS)
    version = versions.get(post, 0) + 1
    versions[post] = version
    event: Event
    if version == 1:
        event = PostCreated(author_id="a", title=f"{post} v1", body="b", tags=["t"])
    elif rng.random() < 0.4:
        tags = rng.sample(["t", "u", "v", "w"], rng.randint(0, 3)) if edit_tags else None
        event = PostEdited(title=f"{post} v{version}", tags=tags)
    else:
        event = rng.choice(MOVES)
    m = encode_event(
        event,
        event_id=uuid.uuid4(),
        aggregate_id=post,
        aggregate_version=version,
        occurred_at=datetime.now(UTC),
    )
    await producer.send(
        topic, m.value, key=m.key, headers=m.headers, partition=partition_for_key(m.key, partitions)
    )


async def write_events(
    bootstrap: str, topic: str, partitions: int, total: int, *, rate_per_s: float, seed: int = 3
) -> None:
    """Write `total` events of many posts the way the command service does: transactionally,
    key = post id, partition = murmur2(key), versions 1..n."""
    rng = random.Random(seed)
    producer = make_transactional_producer(bootstrap, f"test-writer-{uuid.uuid4().hex[:8]}")
    await producer.start()
    versions: dict[str, int] = {}
    loop = asyncio.get_running_loop()
    started = loop.time()
    written = 0
    try:
        while written < total:
            await producer.begin_transaction()
            for _ in range(100):
                await send_next_event(producer, topic, partitions, rng, versions)
                written += 1
            await producer.commit_transaction()
            ahead = written / rate_per_s - (loop.time() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
    finally:
        await producer.stop()


def first_positions(proc: ServiceProcess) -> dict[int, int]:
    """Where a projector process first sought each partition (its `projector_positioned` log
    lines, oldest first): partition -> offset."""
    first: dict[int, int] = {}
    for line in proc.logs().splitlines():
        if '"projector_positioned"' not in line:
            continue
        with contextlib.suppress(ValueError):  # the line being written right now
            for partition, offset in json.loads(line)["positions"].items():
                first.setdefault(int(partition), int(offset))
    return first


async def stored_positions(store_url: str) -> dict[int, int]:
    store = ReadStore(store_url)
    try:
        return await store.positions(await store.active_generation())
    finally:
        await store.close()


async def test_projector_killed_at_random_moments_during_20000_events_applies_each_once(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """SIGKILL the projector three times while 20,000 events flow: each successor resumes at
    the positions stored with the read model, which ends equal to the fold of the whole log,
    with each event in the event index exactly once."""
    prefix = unique("proj") + "."
    settings = KafkaSettings(
        kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=prefix, partitions=4
    )
    await bootstrap_system_topics(settings)
    topics = Topics.from_settings(settings)
    store_url = f"sqlite:///{tmp_path / 'read.sqlite3'}"
    env = projector_env(kafka_bootstrap, prefix, store_url, BATCH_MAX_RECORDS="300")
    proj = ServiceProcess("projector_service", env, tmp_path, "proj-0")
    proj.start()
    writing = asyncio.create_task(
        write_events(kafka_bootstrap, topics.events, 4, 20_000, rate_per_s=2000)
    )
    rng = random.Random(9)
    instances = [proj]
    stored: dict[int, int] = {}  # the read store's positions when `proj` started
    try:
        for n in range(4):
            current = proj

            async def positioned(p: ServiceProcess = current) -> bool:
                return set(first_positions(p)) == {0, 1, 2, 3}

            await wait_until(positioned, timeout_s=60, what=f"projector {n} to own every partition")
            # The read store is the truth, not Kafka's committed offsets: the successor of a
            # killed projector seeks exactly where the last committed batch of each partition
            # ended (nothing ran in between: the killed one was reaped first).
            assert first_positions(proj) == {p: stored.get(p, 0) for p in range(4)}, n
            if n == 3:
                break
            await asyncio.sleep(rng.uniform(0.5, 2.0))
            await proj.kill()
            stored = await stored_positions(store_url)
            proj = ServiceProcess("projector_service", env, tmp_path, f"proj-{n + 1}")
            instances.append(proj)
            proj.start()
        assert sum(stored.values()) > 0, "the projectors were killed before applying anything"
        await writing
        log = await read_all(kafka_bootstrap, topics.events, 4, timeout_s=120)
        assert len(log) == 20_000
        wanted = {}
        for r in log:
            wanted[r.partition] = max(wanted.get(r.partition, 0), r.offset + 1)
        store = ReadStore(store_url)

        async def caught_up() -> bool:
            have = await store.positions(await store.active_generation())
            return all(have.get(p, 0) >= o for p, o in wanted.items())

        await wait_until(caught_up, timeout_s=120, what="projector to apply the whole log")
    finally:
        writing.cancel()
        await proj.stop()
    # One writer at a time: no instance found its stored positions moved under it.
    assert not [p.log_path.name for p in instances if "projector_repositioning" in p.logs()]
    stats = await store.stats()
    assert stats["events"] == 20_000, "an event was applied twice or lost"
    assert await all_rows(store) == independent_fold(log)
    await store.close()


@pytest.fixture
async def stack(kafka_bootstrap: str, tmp_path: Path) -> Any:
    """Command service, projector and query service as processes on one SQLite read store."""
    prefix = unique("stack") + "."
    store_url = f"sqlite:///{tmp_path / 'read.sqlite3'}"
    cmd = ServiceProcess(
        "command_service", command_service_env(kafka_bootstrap, prefix, 3), tmp_path, "command"
    )
    cmd.start()
    await cmd.wait_healthy()
    common = projector_env(kafka_bootstrap, prefix, store_url)
    proj = ServiceProcess("projector_service", common, tmp_path, "projector")
    query = ServiceProcess("query_service", common, tmp_path, "query")
    proj.start()
    query.start()
    await proj.wait_healthy()
    await query.wait_healthy()
    yield {
        "prefix": prefix,
        "store_url": store_url,
        "command": cmd,
        "query": query,
        "projector": proj,
    }
    for svc in (cmd, proj, query):
        await svc.stop()


async def test_read_your_writes_1000_times_with_the_consistency_token(stack: Any) -> None:
    """1,000 posts created over HTTP and read back at once with the token: zero misses; a read
    without the token states how fresh it is."""
    cmd, query = stack["command"], stack["query"]
    misses: list[str] = []
    async with http_client(timeout=30) as http:
        r = await http.post(
            f"{cmd.url}/authors", json={"author_id": "ada", "name": "Ada", "email": "a@x.y"}
        )
        assert r.status_code == 201, r.text
        counter = iter(range(1000))

        async def worker() -> None:
            for i in counter:
                post_id = f"ryw-{i}"
                created = await http.post(
                    f"{cmd.url}/posts",
                    json={"post_id": post_id, "author_id": "ada", "title": f"T{i}"},
                )
                assert created.status_code == 201, created.text
                token = created.headers["x-consistency-token"]
                read = await http.get(
                    f"{query.url}/posts/{post_id}", headers={"X-Consistency-Token": token}
                )
                if read.status_code != 200 or read.json()["title"] != f"T{i}":
                    misses.append(f"{post_id}: {read.status_code}")

        await asyncio.gather(*[worker() for _ in range(20)])
        assert misses == []
        plain = await http.get(f"{query.url}/posts", params={"limit": 5})
        assert plain.status_code == 200
        freshness = plain.json()["freshness"]
        assert sum(freshness["positions"].values()) > 1000
        assert freshness["applied_at"] and plain.headers["x-read-model-positions"]


async def test_a_token_the_projection_cannot_reach_in_time_gets_503_with_retry_after(
    stack: Any,
) -> None:
    """A position beyond the log end is never reached: 503, Retry-After, a problem body."""
    async with http_client(timeout=30) as http:
        r = await http.get(
            f"{stack['query'].url}/stats", headers={"X-Consistency-Token": "0:999999"}
        )
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"
        assert r.json()["code"] == "not_consistent_yet"
        bad = await http.get(f"{stack['query'].url}/stats", headers={"X-Consistency-Token": "zero"})
        assert (bad.status_code, bad.json()["code"]) == (422, "invalid_request")


async def test_queries_keep_answering_during_a_rebuild_and_the_swapped_model_is_complete(
    stack: Any, kafka_bootstrap: str
) -> None:
    """While `esctl projections rebuild` runs, queries answer and new posts keep coming; after
    the swap the model equals the fold of the whole log, new posts included."""
    cmd, query, prefix = stack["command"], stack["query"], stack["prefix"]
    async with http_client(timeout=30) as http:
        await http.post(
            f"{cmd.url}/authors", json={"author_id": "ada", "name": "A", "email": "a@x.y"}
        )
        for i in range(150):
            r = await http.post(
                f"{cmd.url}/posts", json={"post_id": f"old-{i}", "author_id": "ada", "title": "old"}
            )
            assert r.status_code == 201
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "TOPIC_PREFIX": prefix,
            "READ_STORE_URL": stack["store_url"],
        }
        # Output to a file: an undrained pipe would block the rebuild once it fills.
        log_path = stack["command"].log_path.parent / "rebuild.log"
        output = log_path.open("wb")
        rebuild = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "esctl",
            "projections",
            "rebuild",
            "--batch",
            "50",
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        answered = 0
        new = 0
        last_token = ""
        while rebuild.returncode is None:
            for path in ("/posts?limit=10", "/stats", "/posts/old-1"):
                r = await http.get(f"{query.url}{path}")
                assert r.status_code == 200, (path, r.text)
                answered += 1
            created = await http.post(
                f"{cmd.url}/posts",
                json={"post_id": f"new-{new}", "author_id": "ada", "title": "new"},
            )
            assert created.status_code == 201
            last_token = created.headers["x-consistency-token"]
            new += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(rebuild.wait(), 0.05)
        output.close()
        printed = log_path.read_text()  # small file, test code
        assert rebuild.returncode == 0, printed[-2000:]
        assert "rebuilt" in printed
        assert answered > 3 and new > 0
        # One more write after the swap, then read everything with its token.
        created = await http.post(
            f"{cmd.url}/posts", json={"post_id": "after", "author_id": "ada", "title": "after"}
        )
        tokens = [last_token, created.headers["x-consistency-token"]]
        r = await http.get(
            f"{query.url}/posts/after", headers={"X-Consistency-Token": ",".join(tokens)}
        )
        assert r.status_code == 200, r.text
    store = ReadStore(stack["store_url"])
    assert await store.active_generation() == 2
    log = await read_all(
        kafka_bootstrap, Topics.from_settings(KafkaSettings(topic_prefix=prefix)).events, 3
    )
    assert await all_rows(store) == independent_fold(log)
    assert len([p for p in await all_rows(store) if p.startswith("new-")]) == new
    await store.close()


async def test_esctl_lag_agrees_with_kafkas_consumer_groups_tool(
    kafka_bootstrap: str, make_topic: Any
) -> None:
    """For the same group at the same moment, `esctl lag --json` and kafka-consumer-groups
    (run from the same broker jars) report the same committed offsets, log ends and lags; the
    lag in seconds is the age of the first record not consumed (0 when none waits)."""
    topic = await make_topic("lag", partitions=2)
    # Partition 0: the group will have consumed offsets 0-11 (an hour old); 12, the first
    # waiting record, is ten minutes old, 13-29 five minutes (the record times are given).
    now_ms = int(time.time() * 1000)
    first_waiting_ms = now_ms - 600_000
    producer = make_producer(kafka_bootstrap)
    await producer.start()
    try:
        for offset in range(30):
            at = now_ms - 3_600_000 if offset < 12 else now_ms - 300_000
            await producer.send_and_wait(
                topic,
                b"x",
                key=b"a",
                partition=0,
                timestamp_ms=first_waiting_ms if offset == 12 else at,
            )
    finally:
        await producer.stop()
    await produce(kafka_bootstrap, topic, [(b"b", b"y")] * 20, partition=1)
    group = unique("lag-group")
    consumer = make_consumer(kafka_bootstrap, group_id=group)
    await consumer.start()
    consumer.assign([TopicPartition(topic, 0), TopicPartition(topic, 1)])
    await consumer.commit({TopicPartition(topic, 0): 12, TopicPartition(topic, 1): 20})
    await consumer.stop()

    asked = time.time()
    ours = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "esctl",
        "lag",
        "--json",
        "--group",
        group,
        cwd=ROOT,
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    (our_out, our_err), theirs = await asyncio.gather(
        ours.communicate(),
        asyncio.to_thread(kafka_consumer_groups_describe, kafka_bootstrap, group),
    )
    answered = time.time()
    assert ours.returncode == 0, our_err.decode()
    mine = {
        (r["topic"], r["partition"]): (r["committed"], r["log_end"], r["lag"])
        for r in json.loads(our_out)
    }
    assert theirs == {(topic, 0): (12, 30, 18), (topic, 1): (20, 20, 0)}
    assert mine == theirs
    seconds = {r["partition"]: r["lag_seconds"] for r in json.loads(our_out)}
    assert seconds[1] == 0.0
    # the age of offset 12 at the moment esctl looked, which was between `asked` and `answered`
    assert asked - first_waiting_ms / 1000 <= seconds[0] <= answered - first_waiting_ms / 1000


async def lag_gauges(svc: ServiceProcess) -> dict[tuple[str, str, int], tuple[float, float]]:
    """(group, topic, partition) -> (esctl_consumer_lag_records, esctl_consumer_lag_seconds)
    from a service's /metrics."""
    async with http_client(timeout=10) as http:
        text = (await http.get(f"{svc.url}/metrics")).text
    values: dict[tuple[str, str, int], dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name in ("esctl_consumer_lag_records", "esctl_consumer_lag_seconds"):
            for sample in family.samples:
                labels = sample.labels
                key = (labels["group"], labels["topic"], int(labels["partition"]))
                values.setdefault(key, {})[family.name] = sample.value
    return {
        k: (v["esctl_consumer_lag_records"], v["esctl_consumer_lag_seconds"])
        for k, v in values.items()
    }


async def test_caught_up_groups_on_transactional_topics_show_lag_0_in_every_tool(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A group that has processed everything of a transactional topic (whose last offset is
    the commit marker) shows lag 0, and 0 seconds, in Kafka's consumer-groups tool, in
    `esctl lag --json` and in its service's esctl_consumer_lag_* gauges alike."""
    prefix = unique("lag0") + "."
    topics = Topics.from_settings(KafkaSettings(topic_prefix=prefix))
    fast_gauges = {"LAG_REPORT_INTERVAL_S": "0.5"}
    cmd = ServiceProcess(
        "command_service",
        command_service_env(kafka_bootstrap, prefix, 1, **fast_gauges),
        tmp_path,
        "command",
    )
    store_url = f"sqlite:///{tmp_path / 'read.sqlite3'}"
    proj = ServiceProcess(
        "projector_service",
        projector_env(kafka_bootstrap, prefix, store_url, PARTITIONS="1", **fast_gauges),
        tmp_path,
        "projector",
    )
    groups = {
        f"{prefix}command-service": (cmd, topics.commands),
        f"{prefix}projector": (proj, topics.events),
    }
    cmd.start()
    try:
        await cmd.wait_healthy()
        proj.start()
        await proj.wait_healthy()
        async with http_client(timeout=30) as http:
            r = await http.post(
                f"{cmd.url}/authors", json={"author_id": "ada", "name": "A", "email": "a@x.y"}
            )
            assert r.status_code == 201, r.text
            r = await http.post(
                f"{cmd.url}/posts", json={"post_id": "p1", "author_id": "ada", "title": "T"}
            )
            assert r.status_code == 201, r.text
        # the events topic is written in transactions by the command service; the commands
        # topic gets one too, as the workflow service writes commands
        txn = make_transactional_producer(kafka_bootstrap, f"{prefix}txn-client")
        await txn.start()
        try:
            edit = uuid.uuid4()
            m = encode_command(EditPost(title="T2"), command_id=edit, aggregate_id="p1")
            await txn.begin_transaction()
            await txn.send(topics.commands, m.value, key=m.key, headers=m.headers)
            await txn.commit_transaction()
        finally:
            await txn.stop()

        async def processed() -> bool:
            outcomes = await read_all(kafka_bootstrap, topics.command_results, 1)
            events = await read_all(kafka_bootstrap, topics.events, 1)
            store = ReadStore(store_url)
            try:
                applied = (await store.positions(await store.active_generation())).get(0, 0)
            finally:
                await store.close()
            return str(edit).encode() in [o.key for o in outcomes] and applied == (
                events[-1].offset + 1
            )

        await wait_until(processed, timeout_s=60, what="everything decided and projected")
        ends = await end_offsets(kafka_bootstrap, topics.events, 1)
        assert ends[0] > (await read_all(kafka_bootstrap, topics.events, 1))[-1].offset + 1

        rows: list[Any] = []

        async def caught_up() -> bool:
            nonlocal rows
            rows = await consumer_lag(kafka_bootstrap, list(groups))
            return len(rows) == 2 and all(r.lag == 0 for r in rows)

        try:
            await wait_until(caught_up, timeout_s=20, what="caught-up groups at lag 0")
        except TimeoutError:
            raise AssertionError(f"caught-up groups do not show lag 0: {rows}") from None

        for group, (svc, topic) in groups.items():
            ours = await asyncio.to_thread(
                esctl,
                {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap},
                "lag",
                "--json",
                "--group",
                group,
            )
            assert ours.returncode == 0, ours.stderr
            mine = {
                (r["topic"], r["partition"]): (r["committed"], r["log_end"], r["lag"])
                for r in json.loads(ours.stdout)
            }
            theirs = await asyncio.to_thread(kafka_consumer_groups_describe, kafka_bootstrap, group)
            assert mine == theirs
            ((committed, log_end, lag),) = theirs.values()
            assert (lag, committed) == (0, log_end), group
            assert [r["lag_seconds"] for r in json.loads(ours.stdout)] == [0.0]

            async def gauges_agree(s: ServiceProcess = svc, g: str = group, t: str = topic) -> bool:
                return (await lag_gauges(s)).get((g, t, 0)) == (0.0, 0.0)

            try:
                await wait_until(gauges_agree, timeout_s=20, what=f"the lag gauges of {group}")
            except TimeoutError:
                raise AssertionError(f"lag gauges of {group}: {await lag_gauges(svc)}") from None
    finally:
        for svc in (cmd, proj):
            await svc.stop()


async def test_an_interrupted_rebuild_resumes_where_it_stopped(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A rebuild stopped halfway keeps its generation and positions; the next run continues
    from there (reporting that it resumed) and ends with every event applied once."""
    prefix = unique("resume") + "."
    settings = KafkaSettings(
        kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=prefix, partitions=2
    )
    await bootstrap_system_topics(settings)
    topic = Topics.from_settings(settings).events
    await write_events(kafka_bootstrap, topic, 2, 3000, rate_per_s=1_000_000)
    store = ReadStore(f"sqlite:///{tmp_path / 'read.sqlite3'}", writer=True)
    await store.migrate()

    class Interrupted(Exception):
        pass

    def stop_midway(progress: RebuildProgress) -> None:
        if progress.done > 1000:
            raise Interrupted

    with pytest.raises(Interrupted):
        await rebuild(store, kafka_bootstrap, topic, batch=200, on_progress=stop_midway)
    assert await store.meta("rebuild_generation") == "2"
    assert await store.active_generation() == 1
    halfway = sum((await store.positions(2)).values())
    assert 1000 < halfway < 6000

    seen: list[RebuildProgress] = []
    result = await rebuild(
        store, kafka_bootstrap, topic, batch=200, on_progress=seen.append, swap_grace_s=0
    )
    assert seen[0].resumed and seen[0].done == 0 and seen[0].total < 6000 - 1000
    assert (result.generation, result.previous) == (2, 1)
    assert await store.active_generation() == 2
    store._active_cache = None  # read the new generation right away
    assert (await store.stats())["events"] == 3000
    await store.close()
