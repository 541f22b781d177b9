"""Erasure by crypto-shredding, with the services as real processes on a real broker and real
SQLite and PostgreSQL read stores: after erasing a subject, a byte search for its name and
email over every record of every topic, both read stores, the key store and the archive finds
nothing, while another subject stays whole and readable."""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest
from aiokafka import TopicPartition

from esctl.localstack.kafka import free_port
from shared.kafka import make_consumer
from shared.kafka.clients import (
    make_admin,
    make_transactional_producer,
    partition_for_key,
    topic_partitions,
)
from shared.kafka.topics import Topics
from shared.messages import encode_command
from shared.messages.blog import EditPost, RegisterAuthor
from shared.settings import KafkaSettings
from tests.conftest import unique
from tests.e2e.harness import ServiceProcess, bearer, command_service_env, esctl, http_client
from tests.kafka_helpers import produce, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

PARTITIONS = 3
TOKEN = "erasure-test-token"


async def every_record_of_every_topic(bootstrap: str) -> dict[str, bytes]:
    """topic -> the keys, values and header values of all its records, aborted ones included
    (read_uncommitted), from each partition's log start to its end."""
    admin = make_admin(bootstrap)
    await admin.start()
    try:
        topics = sorted(await admin.list_topics())
    finally:
        await admin.close()
    assert topics, "the broker lists no topics"
    consumer = make_consumer(bootstrap, isolation_level="read_uncommitted")
    await consumer.start()
    out: dict[str, bytearray] = {}
    try:
        tps = [TopicPartition(t, p) for t in topics for p in await topic_partitions(consumer, t)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        pending = {tp for tp in tps if ends[tp] > 0}
        while pending:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for tp, msgs in batch.items():
                buf = out.setdefault(tp.topic, bytearray())
                for m in msgs:
                    buf += (m.key or b"") + b"\0" + (m.value or b"") + b"\0"
                    for _, value in m.headers or ():
                        buf += value + b"\0"
            pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
    finally:
        await consumer.stop()
    return {t: bytes(b) for t, b in out.items()}


def files_under(*roots: Path) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every file under the roots; gzip files also decompressed."""
    for root in roots:
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in paths:
            data = path.read_bytes()
            yield str(path), data
            if path.suffix == ".gz":
                text = gzip.decompress(data)
                yield f"{path} (decompressed)", text
                if path.name.endswith(".jsonl.gz"):  # archived records: key and value base64
                    fields = [
                        base64.b64decode(line[k])
                        for line in map(json.loads, text.splitlines())
                        for k in ("key", "value")
                        if line.get(k)
                    ]
                    yield f"{path} (records)", b"\0".join(fields)


async def postgres_bytes(url: str) -> dict[str, bytes]:
    """Every row of every table of the database as text, and the tables' data files (after a
    CHECKPOINT) when this process can read them."""
    conn = await asyncpg.connect(url, timeout=10)
    out: dict[str, bytes] = {}
    try:
        await conn.execute("CHECKPOINT")
        data_dir = await conn.fetchval("SHOW data_directory")
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
        )
        for row in tables:
            name = row["tablename"]
            rows = await conn.fetch(f'SELECT t::text AS r FROM "{name}" t')  # noqa: S608
            out[f"table {name}"] = "\n".join(r["r"] for r in rows).encode()
            path = Path(data_dir) / await conn.fetchval(
                "SELECT pg_relation_filepath($1::regclass)", name
            )
            with contextlib.suppress(OSError):
                out[f"file of {name}"] = path.read_bytes()
    finally:
        await conn.close()
    return out


def find(needles: list[str], haystacks: dict[str, bytes]) -> list[str]:
    return [
        f"{needle!r} in {where}"
        for needle in needles
        for where, data in haystacks.items()
        if needle.encode() in data
    ]


async def test_erased_subjects_leave_no_readable_trace_and_others_stay_whole(
    kafka_bootstrap: str, pg_database: str, tmp_path: Path
) -> None:
    prefix = unique("erase") + "."
    topics = Topics.from_settings(KafkaSettings(topic_prefix=prefix))
    tag = uuid.uuid4().hex[:8]  # names and emails of this run only: no match from elsewhere
    ada = {"id": f"ada-{tag}", "name": f"Ada Lovelace {tag}", "email": f"ada.{tag}@example.org"}
    ada_new_name = f"Ada King {tag}"
    bob = {"id": f"bob-{tag}", "name": f"Bob Sender {tag}", "email": f"bob.{tag}@example.net"}
    cyd = {"id": f"cyd-{tag}", "name": f"Cyd Kept {tag}", "email": f"cyd.{tag}@example.com"}
    erased_needles = [ada["name"], ada["email"], ada_new_name, bob["name"], bob["email"]]
    sqlite_db = tmp_path / "read.sqlite3"
    keys_db = tmp_path / "keys.sqlite3"
    archive_dir = tmp_path / "archive"
    pg_url = pg_database
    common = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "TOPIC_PREFIX": prefix,
        "PARTITIONS": str(PARTITIONS),
        "KEY_STORE_URL": f"sqlite:///{keys_db}",
        "SESSION_TIMEOUT_MS": "6000",
    }
    cmd = ServiceProcess(
        "command_service",
        command_service_env(kafka_bootstrap, prefix, PARTITIONS, SNAPSHOT_EVERY_EVENTS="1")
        | {"KEY_STORE_URL": common["KEY_STORE_URL"], "ERASURE_TOKEN": TOKEN},
        tmp_path,
        "command",
    )
    projectors = [
        ServiceProcess(
            "projector_service",
            common | {"GROUP_ID": f"{prefix}projector", "READ_STORE_URL": f"sqlite:///{sqlite_db}"},
            tmp_path,
            "projector-sqlite",
        ),
        ServiceProcess(
            "projector_service",
            common | {"GROUP_ID": f"{prefix}projector-pg", "READ_STORE_URL": pg_url},
            tmp_path,
            "projector-pg",
        ),
    ]
    query = ServiceProcess(
        "query_service", common | {"READ_STORE_URL": f"sqlite:///{sqlite_db}"}, tmp_path, "query"
    )
    procs = [cmd, *projectors, query]
    for p in procs:
        p.start()
    try:
        for p in procs:
            await p.wait_healthy()
        async with http_client(timeout=30) as http:
            # ada over HTTP (registered, renamed, writes a post); cyd over HTTP
            for person in (ada, cyd):
                r = await http.post(
                    f"{cmd.url}/authors",
                    json={
                        "author_id": person["id"],
                        "name": person["name"],
                        "email": person["email"],
                    },
                )
                assert r.status_code == 201, r.text
            r = await http.patch(f"{cmd.url}/authors/{ada['id']}", json={"name": ada_new_name})
            assert r.status_code == 200, r.text
            r = await http.post(
                f"{cmd.url}/posts",
                json={"post_id": f"post-{tag}", "author_id": ada["id"], "title": "On engines"},
            )
            assert r.status_code == 201, r.text
            # bob by any Kafka client: a plaintext command record, and a broken one of his
            # (and one of cyd's) that lands in the dead-letter topic
            register = encode_command(
                RegisterAuthor(name=bob["name"], email=bob["email"]),
                command_id=uuid.uuid4(),
                aggregate_id=bob["id"],
            )
            broken = f'{{"type": "RenameAuthor", "payload": {{"name": "{bob["name"]}'.encode()
            broken_cyd = f'{{"type": "RenameAuthor", "payload": {{"name": "{cyd["name"]}'.encode()
            edits = [
                (
                    m.key,
                    m.value,
                )
                for i in range(6)
                for m in [
                    encode_command(
                        EditPost(title=f"v{i}"),
                        command_id=uuid.uuid4(),
                        aggregate_id=f"post-{tag}",
                    )
                ]
            ]
            await produce(
                kafka_bootstrap,
                topics.commands,
                [
                    (register.key, register.value),
                    (bob["id"].encode(), broken),
                    (cyd["id"].encode(), broken_cyd),
                    *edits,
                ],
            )

            async def projected() -> bool:
                for person in (ada, bob, cyd):
                    got = await http.get(f"{query.url}/authors/{person['id']}")
                    if got.status_code != 200:
                        return False
                post = await http.get(f"{query.url}/posts/post-{tag}")
                return post.status_code == 200 and post.json()["version"] == 7

            await wait_until(projected, timeout_s=60, what="authors and post projected")
            got = (await http.get(f"{query.url}/authors/{ada['id']}")).json()
            assert (got["name"], got["email"], got["erased"]) == (ada_new_name, ada["email"], False)

            # the byte search can find: before the erasure, plaintext is in the commands
            # topic (as clients sent it) and in the dead-letter topic
            before = await every_record_of_every_topic(kafka_bootstrap)
            assert find([ada["name"]], before) == [f"{ada['name']!r} in {topics.commands}"]
            assert f"{bob['name']!r} in {topics.commands_dlq}" in find([bob["name"]], before)
            # ... and nowhere else: events, snapshots, results hold sealed values only
            assert not find(
                erased_needles, {t: b for t, b in before.items() if "commands" not in t}
            )
            assert ada["id"].encode() in before[topics.snapshots]

            # prune with an archive: the archive then holds ada's (sealed) events
            prune = esctl(
                common,
                "prune",
                "--before",
                (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
                "--archive",
                str(archive_dir),
            )
            assert prune.returncode == 0, prune.stderr
            archived = b"".join(data for _, data in files_under(archive_dir))
            assert b"AuthorRegistered" in archived, prune.stderr
            assert f"pii:v1:{ada['id']}:".encode() in archived, prune.stderr  # sealed, archived

            # a command written in a transaction (as the workflow service writes them): its
            # partition ends with a commit marker the command group never commits past, which
            # must not keep the purge waiting
            txn = make_transactional_producer(kafka_bootstrap, f"{prefix}erase-test")
            await txn.start()
            try:
                edit = encode_command(
                    EditPost(title="v6"), command_id=uuid.uuid4(), aggregate_id=f"post-{tag}"
                )
                await txn.begin_transaction()
                await txn.send(topics.commands, edit.value, key=edit.key, headers=edit.headers)
                await txn.commit_transaction()
            finally:
                await txn.stop()

            async def edited() -> bool:
                post = await http.get(f"{query.url}/posts/post-{tag}")
                return bool(post.json()["version"] == 8)

            await wait_until(edited, timeout_s=30, what="the transactional command decided")

            # erase ada over HTTP: an admin only (here with the deprecated ERASURE_TOKEN)
            url = f"{cmd.url}/subjects/{ada['id']}/erase"
            async with httpx.AsyncClient(timeout=30) as anonymous:
                assert (await anonymous.post(url)).status_code == 401
                wrong = await anonymous.post(url, headers={"Authorization": "Bearer nope"})
                assert wrong.status_code == 401 and wrong.json()["code"] == "invalid_token"
                editor = await anonymous.post(url, headers=bearer("editor"))
                assert editor.status_code == 403 and editor.json()["code"] == "forbidden"
            r = await http.post(
                url, headers={"Authorization": f"Bearer {TOKEN}"}, json={"reason": "asked"}
            )
            assert r.status_code == 200, r.text
            report = r.json()
            assert report["complete"] and report["key_deleted"]
            assert report["outcome"]["status"] == "accepted"
            # erase bob with the CLI
            cli = esctl(
                {
                    "COMMAND_SERVICE_URL": cmd.url,
                    "QUERY_SERVICE_URL": query.url,
                    "ERASURE_TOKEN": TOKEN,
                },
                "erase",
                bob["id"],
                "--yes",
            )
            assert cli.returncode == 0, cli.stderr
            bob_report = json.loads(cli.stdout)
            assert bob_report["dead_letters_removed"] == {topics.commands_dlq: 1}

            async def redacted() -> bool:
                for person in (ada, bob):
                    got = (await http.get(f"{query.url}/authors/{person['id']}")).json()
                    if got.get("erased_at") is None:
                        return False
                conn = await asyncpg.connect(pg_url, timeout=10)
                try:
                    gen = await conn.fetchval(
                        "SELECT value FROM read_model_meta WHERE key = 'active_generation'"
                    )
                    n = await conn.fetchval(
                        f"SELECT count(*) FROM authors_g{gen} WHERE erased_at IS NOT NULL"  # noqa: S608
                    )
                finally:
                    await conn.close()
                return int(n) == 2

            await wait_until(redacted, timeout_s=60, what="SubjectErased projected in both stores")

            # queries, time travel and event streams show the fields as erased
            got = (await http.get(f"{query.url}/authors/{ada['id']}")).json()
            assert (got["name"], got["email"], got["erased"]) == (None, None, True)
            assert got["version"] == 3
            then = (await http.get(f"{query.url}/authors/{ada['id']}?version=2")).json()
            assert (then["name"], then["email"], then["erased"]) == (None, None, True)
            stream = (await http.get(f"{query.url}/streams/{ada['id']}/events")).json()["events"]
            assert [e["type"] for e in stream] == [
                "AuthorRegistered",
                "AuthorRenamed",
                "SubjectErased",
            ]
            assert stream[0]["payload"] == {"name": None, "email": None}
            assert stream[0]["erased_fields"] == ["name", "email"]
            assert stream[1]["erased_fields"] == ["name"]
            # a post is no data subject: it never had a key; forced, the domain refuses it
            auth = {"Authorization": f"Bearer {TOKEN}"}
            r = await http.post(f"{cmd.url}/subjects/post-{tag}/erase", headers=auth)
            assert r.status_code == 409 and r.json()["code"] == "not_a_data_subject", r.text
            r = await http.post(
                f"{cmd.url}/subjects/post-{tag}/erase", headers=auth, json={"force": True}
            )
            assert r.status_code == 409 and r.json()["code"] == "wrong_aggregate_type", r.text
            # the erased author accepts no personal data again; its posts are still there
            r = await http.patch(f"{cmd.url}/authors/{ada['id']}", json={"name": "Ada again"})
            assert r.status_code == 409 and r.json()["code"] == "subject_erased"
            assert (await http.get(f"{query.url}/posts/post-{tag}")).json()["title"] == "v6"

            # cyd is whole: readable now, at every version, in its stream; renamed after the
            # erasures, which every consumer still processes
            renamed = f"Cyd Renamed {tag}"
            r = await http.patch(f"{cmd.url}/authors/{cyd['id']}", json={"name": renamed})
            assert r.status_code == 200, r.text
            token = r.headers["X-Consistency-Token"]
            got = (
                await http.get(
                    f"{query.url}/authors/{cyd['id']}", headers={"X-Consistency-Token": token}
                )
            ).json()
            assert (got["name"], got["email"], got["erased"]) == (renamed, cyd["email"], False)
            first = (await http.get(f"{query.url}/authors/{cyd['id']}?version=1")).json()
            assert first["name"] == cyd["name"]
            stream = (await http.get(f"{query.url}/streams/{cyd['id']}/events")).json()["events"]
            assert stream[0]["payload"] == {"name": cyd["name"], "email": cyd["email"]}
            assert stream[0]["erased_fields"] == []
            for p in procs:
                assert p.proc is not None and p.proc.poll() is None, f"{p.module} died"

        # the byte search: every record of every topic, both read stores, the key store, the
        # archive (and the services' logs)
        after = await every_record_of_every_topic(kafka_bootstrap)
        for name, data in files_under(tmp_path):  # stores, archive, and the services' logs
            after[name] = data
        after |= await postgres_bytes(pg_url)
        assert str(sqlite_db) in after and str(keys_db) in after
        assert any("authors_g" in k for k in after)
        assert find(erased_needles, after) == []
        # ... which would have found what is still there: cyd's broken command kept in the DLQ
        assert find([cyd["name"]], after) == [f"{cyd['name']!r} in {topics.commands_dlq}"]
    finally:
        for p in procs:
            await p.stop()


async def test_erasure_removes_personal_data_an_aborted_transaction_left_in_the_log(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Records of an aborted transaction stay in the log, invisible to read_committed readers:
    when they hold the subject's personal data on a topic the erasure covers (commands, both
    dead-letter topics), the erasure removes them too, and keeps the others' dead letters."""
    prefix = unique("erase-aborted") + "."
    topics = Topics.from_settings(KafkaSettings(topic_prefix=prefix))
    tag = uuid.uuid4().hex[:8]
    ada = {"id": f"ada-{tag}", "name": f"Ada Aborted {tag}", "email": f"ada.{tag}@example.org"}
    cyd_letter = f"Cyd Kept {tag}"
    keys = f"sqlite:///{tmp_path / 'keys.sqlite3'}"
    cmd = ServiceProcess(
        "command_service",
        command_service_env(
            kafka_bootstrap, prefix, PARTITIONS, KEY_STORE_URL=keys, ERASURE_TOKEN=TOKEN
        ),
        tmp_path,
        "command",
    )
    cmd.start()
    try:
        await cmd.wait_healthy()
        async with http_client(timeout=30) as http:
            r = await http.post(
                f"{cmd.url}/authors",
                json={"author_id": ada["id"], "name": f"Ada {tag}", "email": f"a.{tag}@x.org"},
            )
            assert r.status_code == 201, r.text
        partition = partition_for_key(ada["id"].encode(), PARTITIONS)
        # another subject's dead letter, committed, in the partition the rewrite will touch
        await produce(
            kafka_bootstrap,
            topics.commands_dlq,
            [(b"cyd", f'{{"type": "RenameAuthor", "payload": {{"name": "{cyd_letter}'.encode())],
            partition=partition,
        )
        # a client's transaction with ada's personal data on every topic the erasure covers,
        # aborted: its records stay in the log
        register = encode_command(
            RegisterAuthor(name=ada["name"], email=ada["email"]),
            command_id=uuid.uuid4(),
            aggregate_id=ada["id"],
        )
        broken = f'{{"type": "RenameAuthor", "payload": {{"name": "{ada["name"]}'.encode()
        txn = make_transactional_producer(kafka_bootstrap, f"{prefix}aborting-client")
        await txn.start()
        try:
            await txn.begin_transaction()
            await txn.send(
                topics.commands, register.value, key=register.key, headers=register.headers
            )
            for dlq in (topics.commands_dlq, topics.events_dlq):
                await txn.send(dlq, broken, key=ada["id"].encode(), partition=partition)
            await txn.abort_transaction()
        finally:
            await txn.stop()

        needles = [ada["name"], ada["email"]]
        before = await every_record_of_every_topic(kafka_bootstrap)
        assert sorted(find([ada["name"]], before)) == sorted(
            f"{ada['name']!r} in {t}"
            for t in (topics.commands, topics.commands_dlq, topics.events_dlq)
        )

        erased = esctl(
            {
                "COMMAND_SERVICE_URL": cmd.url,
                "ERASURE_TOKEN": TOKEN,
                # no query service in this test: an address where nothing answers
                "QUERY_SERVICE_URL": f"http://127.0.0.1:{free_port()}",
            },
            "erase",
            ada["id"],
            "--yes",
        )
        assert erased.returncode == 0, erased.stderr
        report = json.loads(erased.stdout)
        assert report["complete"] and report["query_service"] == "not reachable"
        assert "was not asked" in erased.stderr

        after = await every_record_of_every_topic(kafka_bootstrap)
        assert find(needles, after) == []
        assert find([cyd_letter], after) == [f"{cyd_letter!r} in {topics.commands_dlq}"]
    finally:
        await cmd.stop()
