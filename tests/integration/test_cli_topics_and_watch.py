"""`esctl` commands that need a real broker but none of the services: `topics create` and
`lag --watch`, run as a person runs them (a subprocess of the real CLI)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from shared.kafka.topics import Topics
from shared.settings import KafkaSettings
from tests.conftest import TopicFactory, unique
from tests.e2e.harness import esctl
from tests.kafka_helpers import commit_offsets, delete_topics, produce, topic_configs

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

DAY_MS = 24 * 3600 * 1000


async def test_esctl_topics_create_makes_the_system_topics_with_their_configs_idempotently(
    kafka_bootstrap: str,
) -> None:
    """`esctl topics create` creates every system topic with the partitions and configs of the
    README's topic table; run again, it succeeds and changes nothing."""
    prefix = unique("topics") + "."
    t = Topics.from_settings(KafkaSettings(topic_prefix=prefix))
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "TOPIC_PREFIX": prefix, "PARTITIONS": "2"}
    # the README's table, written out here (not taken from the code under test)
    expected = {
        t.commands: {"cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS)},
        t.events: {"cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "-1"},
        t.command_results: {"cleanup.policy": "delete", "retention.ms": str(DAY_MS)},
        t.snapshots: {"cleanup.policy": "compact"},
        t.commands_dlq: {"cleanup.policy": "delete", "retention.ms": str(30 * DAY_MS)},
        t.events_dlq: {"cleanup.policy": "delete", "retention.ms": str(30 * DAY_MS)},
        t.workflow_state: {"cleanup.policy": "compact"},
        t.workflow_control: {"cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS)},
        t.workflow_history: {"cleanup.policy": "delete", "retention.ms": str(90 * DAY_MS)},
        t.workflow_dlq: {"cleanup.policy": "delete", "retention.ms": str(30 * DAY_MS)},
    }
    names = sorted(expected)
    try:
        first = esctl(env, "topics", "create")
        assert first.returncode == 0, first.stderr
        assert all(f"{name}: 2 partitions" in first.stderr for name in names), first.stderr
        created = await topic_configs(kafka_bootstrap, names)
        for name, configs in expected.items():
            got = {k: created[name][k] for k in configs}
            assert got == configs, name
            assert created[name]["min.insync.replicas"] == "1"  # min(2, replication factor 1)

        again = esctl(env, "topics", "create")
        assert again.returncode == 0, again.stderr
        assert all(f"{name}: 2 partitions" in again.stderr for name in names), again.stderr
        assert await topic_configs(kafka_bootstrap, names) == created
    finally:
        await delete_topics(kafka_bootstrap, names)


async def test_esctl_lag_watch_refreshes_at_its_interval_until_interrupted(
    kafka_bootstrap: str, make_topic: TopicFactory
) -> None:
    """`esctl lag --watch S` prints the lag again every S seconds, showing what changed in
    between (JSON lines with --json, a titled table without), until Ctrl-C stops it."""
    topic = await make_topic("watch")
    await produce(kafka_bootstrap, topic, [(b"k", b"v")] * 10)
    group = unique("watch-group")
    tp = TopicPartition(topic, 0)
    await commit_offsets(kafka_bootstrap, group, {tp: 3})
    # as in a shell pipe (`esctl lag --json --watch 5 | jq`): stdout is not a terminal, and
    # nothing asks Python for unbuffered output
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env["KAFKA_BOOTSTRAP_SERVERS"] = kafka_bootstrap

    async def watch(*extra: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "esctl",
            "lag",
            "--group",
            group,
            "--watch",
            "0.5",
            *extra,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    async def next_line(proc: asyncio.subprocess.Process) -> str:
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
        except TimeoutError:
            raise AssertionError("esctl lag --watch printed no line within 30 s") from None
        assert line, "esctl lag --watch ended its output"
        return line.decode()

    as_json, as_table = await watch("--json"), await watch()
    try:
        first = json.loads(await next_line(as_json))
        assert [(r["committed"], r["log_end"], r["lag"]) for r in first] == [(3, 10, 7)]
        await commit_offsets(kafka_bootstrap, group, {tp: 8})
        refreshes = [first]
        while refreshes[-1][0]["committed"] != 8:  # bounded: next_line times out
            refreshes.append(json.loads(await next_line(as_json)))
            assert len(refreshes) < 60, "no refresh showed the new committed offset"
        assert (refreshes[-1][0]["committed"], refreshes[-1][0]["lag"]) == (8, 2)

        titles = 0
        while titles < 2:  # two tables, each under its "consumer lag at" title
            line = await next_line(as_table)
            titles += "consumer lag at" in line
        for proc in (as_json, as_table):
            proc.send_signal(signal.SIGINT)  # Ctrl-C
            await asyncio.wait_for(proc.wait(), timeout=30)
            assert proc.stderr is not None
            assert b"Traceback" not in await proc.stderr.read()
    finally:
        for proc in (as_json, as_table):
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
