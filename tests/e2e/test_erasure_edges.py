"""Erasure at its edges, as an operator meets them: `esctl erase` run from another directory
against services whose key store is PostgreSQL erases for real (through the command service,
which owns the keys) and says "complete" only once nothing of the subject opens; a query
service that reads another key store makes it refuse; a typo and a post id are refused before
anything is deleted; commands only the system issues are refused from clients."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest

from shared.kafka.commands import CommandClient
from shared.kafka.topics import Topics
from shared.keystore import KeyStore
from shared.messages import encode_command
from shared.messages.blog import AssignReviewer, EraseSubject
from shared.settings import KafkaSettings
from tests.conftest import session_keyring, unique
from tests.e2e.harness import ServiceProcess, command_service_env, http_client
from tests.kafka_helpers import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

PARTITIONS = 2
TOKEN = "edge-token"


def esctl_elsewhere(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI run from a directory that is not the repository (no ./var, no key store)."""
    return subprocess.run(
        [sys.executable, "-m", "esctl", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={k: v for k, v in os.environ.items() if k != "KEY_STORE_URL"} | env,
        timeout=300,
        check=False,
    )


async def key_rows(pg_url: str, subject: str) -> list[tuple[bool, bool]]:
    """(has a key, is erased) of the subject's rows in the PostgreSQL key store."""
    conn = await asyncpg.connect(pg_url, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT key IS NOT NULL AS k, erased_at IS NOT NULL AS e FROM subject_keys "
            "WHERE subject = $1",
            subject,
        )
    finally:
        await conn.close()
    return [(r["k"], r["e"]) for r in rows]


async def test_esctl_erase_from_elsewhere_erases_in_the_services_key_store_or_refuses(
    kafka_bootstrap: str, pg_database: str, tmp_path: Path
) -> None:
    """From another directory, with the services on a PostgreSQL key store: a typo and a post
    id are refused (exit 2) with nothing deleted; a real subject is erased for real and the
    report says complete only after its key is confirmed gone and the query service opens
    nothing; a query service reading another key store turns "complete" into a refusal."""
    prefix = unique("erase-edge") + "."
    tag = uuid.uuid4().hex[:8]
    ada, cyd, post = f"ada-{tag}", f"cyd-{tag}", f"post-{tag}"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    common = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "TOPIC_PREFIX": prefix,
        "PARTITIONS": str(PARTITIONS),
        "KEY_STORE_URL": pg_database,
        "SESSION_TIMEOUT_MS": "6000",
    }
    read_store = f"sqlite:///{tmp_path / 'read.sqlite3'}"
    other_keys = f"sqlite:///{tmp_path / 'other-keys.sqlite3'}"
    cmd = ServiceProcess(
        "command_service",
        command_service_env(kafka_bootstrap, prefix, PARTITIONS)
        | {"KEY_STORE_URL": pg_database, "ERASURE_TOKEN": TOKEN},
        tmp_path,
        "command",
    )
    projector = ServiceProcess(
        "projector_service",
        common | {"GROUP_ID": f"{prefix}projector", "READ_STORE_URL": read_store},
        tmp_path,
        "projector",
    )
    query = ServiceProcess(
        "query_service", common | {"READ_STORE_URL": read_store}, tmp_path, "query"
    )
    # a misconfigured query service: same read store, another key store
    stray = ServiceProcess(
        "query_service",
        common | {"READ_STORE_URL": read_store, "KEY_STORE_URL": other_keys},
        tmp_path,
        "query-stray",
    )
    procs = [cmd, projector, query, stray]
    for p in procs:
        p.start()
    try:
        for p in procs:
            await p.wait_healthy()
        cli_env = {
            "COMMAND_SERVICE_URL": cmd.url,
            "QUERY_SERVICE_URL": query.url,
            "ERASURE_TOKEN": TOKEN,
        }
        async with http_client(timeout=30) as http:
            for author in (ada, cyd):
                r = await http.post(
                    f"{cmd.url}/authors",
                    json={
                        "author_id": author,
                        "name": f"Name {author}",
                        "email": f"{author}@x.org",
                    },
                )
                assert r.status_code == 201, r.text
            r = await http.post(
                f"{cmd.url}/posts", json={"post_id": post, "author_id": ada, "title": "T"}
            )
            assert r.status_code == 201, r.text

            async def projected() -> bool:
                got = await http.get(f"{query.url}/streams/{cyd}/events")
                return got.status_code == 200 and len(got.json()["events"]) == 1

            await wait_until(projected, timeout_s=60, what="the authors projected")
            # the stray query service opens cyd's data with its own copy of cyd's key (as
            # wrapped in the command service's store, under the same KEK)
            stray_keys = KeyStore(other_keys, session_keyring())
            try:
                await stray_keys.keys_for(["warm-up"])  # creates the table
            finally:
                await stray_keys.close()
            conn = await asyncpg.connect(pg_database, timeout=10)
            try:
                row = await conn.fetchrow(
                    "SELECT key, kek_id FROM subject_keys WHERE subject = $1", cyd
                )
            finally:
                await conn.close()
            assert row is not None
            with sqlite3.connect(other_keys.removeprefix("sqlite:///")) as db:
                db.execute(
                    "INSERT INTO subject_keys (subject, key, kek_id, created_at) "
                    "VALUES (?, ?, ?, '2026-01-01 00:00:00')",
                    (cyd, bytes(row["key"]), row["kek_id"]),
                )
            stray_view = (await http.get(f"{stray.url}/streams/{cyd}/events")).json()
            assert stray_view["events"][0]["payload"]["name"] == f"Name {cyd}"

        # a typo: refused, nothing written to the key store
        typo = esctl_elsewhere(elsewhere, cli_env, "erase", f"ada-{tag}x", "--yes")
        assert typo.returncode == 2, typo.stderr
        assert "--force" in typo.stderr and "never had personal data" in typo.stderr
        assert typo.stdout == ""
        assert await key_rows(pg_database, f"ada-{tag}x") == []
        # a post id, even forced: refused by the domain before anything is deleted
        forced_post = esctl_elsewhere(elsewhere, cli_env, "erase", post, "--yes", "--force")
        assert forced_post.returncode == 2, forced_post.stderr
        assert "wrong_aggregate_type" in forced_post.stderr and "nothing was deleted" in (
            forced_post.stderr
        )
        assert await key_rows(pg_database, post) == []
        # a typo forced: marked erased for good, and said so
        forced = esctl_elsewhere(elsewhere, cli_env, "erase", f"nobody-{tag}", "--yes", "--force")
        assert forced.returncode == 0, forced.stderr
        assert "marked erased" in forced.stderr
        assert await key_rows(pg_database, f"nobody-{tag}") == [(False, True)]

        # ada, for real, from elsewhere: the services' PostgreSQL key store loses her key
        done = esctl_elsewhere(elsewhere, cli_env, "erase", ada, "--yes")
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["complete"] is True and report["key_deleted"] is True
        assert report["key_check"]["key_left"] is False
        assert report["key_check"]["tombstone"] is True
        assert report["key_check"]["probe_opens"] is False
        assert report["query_service"] == []
        assert await key_rows(pg_database, ada) == [(False, True)]
        assert not (elsewhere / "var").exists()  # no stray key store made where it ran
        async with http_client(timeout=30) as http:
            first = (await http.get(f"{query.url}/authors/{ada}?version=1")).json()
            assert (first["name"], first["email"]) == (None, None)
            stream = (await http.get(f"{query.url}/streams/{ada}/events")).json()["events"]
            assert stream[0]["payload"] == {"name": None, "email": None}

        # cyd, checked against the stray query service: its key is gone from the services'
        # store, yet that query service still opens cyd's data: no "complete", exit 2
        mismatch = esctl_elsewhere(
            elsewhere, cli_env | {"QUERY_SERVICE_URL": stray.url}, "erase", cyd, "--yes"
        )
        assert mismatch.returncode == 2, mismatch.stderr
        assert "reads another key store" in mismatch.stderr
        report = json.loads(mismatch.stdout)
        assert report["complete"] is False
        assert report["query_service"] == ["name (version 1)", "email (version 1)"]
        assert await key_rows(pg_database, cyd) == [(False, True)]
    finally:
        for p in procs:
            await p.stop()


async def test_commands_only_the_system_issues_are_refused_from_clients(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """`esctl send EraseSubject|AssignReviewer|SendReviewReminder` refuses before producing
    (exit 2, what to do instead); the same commands produced by a plain Kafka client are
    rejected by the command service with `system_command`."""
    prefix = unique("system-cmd") + "."
    topics = Topics.from_settings(KafkaSettings(topic_prefix=prefix))
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "TOPIC_PREFIX": prefix}
    for command_type, pointer in [
        ("EraseSubject", "esctl erase"),
        ("AssignReviewer", "esctl workflows"),
        ("SendReviewReminder", "esctl workflows retry"),
    ]:
        sent = esctl_elsewhere(tmp_path, env, "send", command_type, "-a", "someone", "-j", "{}")
        assert sent.returncode == 2, sent.stderr
        assert "issued by the system" in sent.stderr and pointer in sent.stderr
        assert sent.stdout == ""

    cmd = ServiceProcess(
        "command_service",
        command_service_env(kafka_bootstrap, prefix, PARTITIONS),
        tmp_path,
        "command",
    )
    cmd.start()
    try:
        await cmd.wait_healthy()
        client = CommandClient(kafka_bootstrap, topics, recent_window_s=0)
        await client.start()
        try:
            outcomes = []
            for command, aggregate in [
                (EraseSubject(reason="by hand"), "some-author"),
                (AssignReviewer(reviewer="mallory"), "some-post"),
            ]:
                command_id = uuid.uuid4()
                message = encode_command(command, command_id=command_id, aggregate_id=aggregate)
                outcome = await client.send(command_id, message, wait_s=30)
                assert outcome is not None
                outcomes.append((outcome.status, outcome.code))
        finally:
            await client.stop()
        assert outcomes == [("rejected", "system_command")] * 2
    finally:
        await cmd.stop()
