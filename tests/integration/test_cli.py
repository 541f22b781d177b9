"""`esctl` as a new operator meets it: the real command in a subprocess (standard output a pipe,
not a terminal), against a real broker or against an address where nothing listens."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition

from esctl.localstack.kafka import LocalKafkaCluster, free_port
from shared.kafka import make_consumer, make_transactional_producer
from tests.conftest import TopicFactory, unique
from tests.e2e.harness import ROOT, esctl
from tests.kafka_helpers import produce

pytestmark = pytest.mark.integration

NOT_PLAIN = ("\x1b", "┃", "│", "━", "─", "┏", "└")


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single non-empty line of stderr of a failed command (asserting there is one)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert "Traceback" not in result.stderr and "Unclosed" not in result.stderr
    return lines[0]


# ------------------------------------------------------------------ nothing listening


@pytest.mark.parametrize(
    "args",
    [
        ["send", "CreatePost", "-a", "p1", "-j", '{"author_id": "a1", "title": "t"}'],
        ["lag"],
        ["lag", "--watch", "1"],
        ["topics", "create"],
        ["prune", "--before", "2026-01-01", "--dry-run"],
        ["prune", "--before", "2026-01-01"],
        ["projections", "rebuild"],
    ],
    ids=[
        "send",
        "lag",
        "lag --watch",
        "topics create",
        "prune --dry-run",
        "prune",
        "projections rebuild",
    ],
)
def test_every_kafka_command_says_in_one_line_that_kafka_is_unreachable(
    args: list[str], tmp_path: Path
) -> None:
    """With no broker at KAFKA_BOOTSTRAP_SERVERS, every command that needs Kafka prints one
    line naming the address and what to check, and exits 2: no traceback, no unclosed client."""
    address = f"127.0.0.1:{free_port()}"
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": address,
        "READ_STORE_URL": f"sqlite:///{tmp_path / 'read.sqlite3'}",
    }
    result = esctl(env, *args)
    line = one_line_error(result)
    assert result.returncode == 2, result.stderr
    assert address in line
    assert "connection refused" in line and "KAFKA_BOOTSTRAP_SERVERS" in line
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "variable"),
    [
        (["erase", "author-1", "--yes"], "COMMAND_SERVICE_URL"),
        (["workflows", "list"], "WORKFLOW_URL"),
        (["workflows", "show", "review:p1:v1"], "WORKFLOW_URL"),
        (["workflows", "retry", "review:p1:v1"], "WORKFLOW_URL"),
    ],
    ids=["erase", "workflows list", "workflows show", "workflows retry"],
)
def test_http_commands_say_in_one_line_that_the_service_does_not_answer(
    args: list[str], variable: str
) -> None:
    """With nothing listening at the service's URL, `erase` and `workflows` print one line
    with the URL and the variable that names another, and exit 2."""
    url = f"http://127.0.0.1:{free_port()}"
    result = esctl({variable: url, "ERASURE_TOKEN": "t"}, *args)
    line = one_line_error(result)
    assert result.returncode == 2, result.stderr
    assert url in line and "connection refused" in line and variable in line


def test_kafka_status_in_a_pipe_prints_plain_columns(tmp_path: Path) -> None:
    """`esctl kafka status | cat` of a stopped local cluster: node table as plain columns."""
    cluster = LocalKafkaCluster.create(tmp_path / "kafka", nodes=1)
    cluster.save()
    result = esctl({}, "kafka", "status", "--data-dir", str(tmp_path / "kafka"))
    assert result.returncode == 1  # not answering
    assert not [c for c in NOT_PLAIN if c in result.stdout], result.stdout
    header, row, status = result.stdout.splitlines()
    assert header.split() == ["NODE", "BROKER-PORT", "PID", "PROCESS"]
    assert row.split() == ["1", str(cluster.state.nodes[0].broker_port), "-", "stopped"]
    assert status == f"bootstrap {cluster.bootstrap_servers}: NOT answering"


# ------------------------------------------------------------------ invalid input


def test_send_names_each_invalid_field_and_what_is_wrong() -> None:
    """A payload that does not validate is described field by field in words (no pydantic dump,
    no URL), exit 2, before anything is sent."""
    env = {"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"}
    result = esctl(env, "send", "CreatePost", "-a", "p1", "-j", '{"title": 5}')
    line = one_line_error(result)
    assert result.returncode == 2
    assert line == (
        "error: invalid CreatePost: author_id: field required; "
        "title: input should be a valid string"
    )
    typo = esctl(env, "send", "CreatePost", "-a", "p1", "-j", '{"author_id": "a", "titel": "t"}')
    assert "titel: unknown field (did you mean title?)" in one_line_error(typo)


def test_send_says_where_the_json_is_invalid() -> None:
    """Invalid JSON in --json is reported with its line and column, exit 2."""
    env = {"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"}
    result = esctl(env, "send", "CreatePost", "-a", "p1", "-j", '{"title": "t",\n "body" "b"}')
    line = one_line_error(result)
    assert result.returncode == 2
    assert "invalid JSON in --json at line 2, column 9" in line


def test_send_suggests_the_closest_command_type() -> None:
    """An unknown command type gets the closest known name as a suggestion, exit 2."""
    env = {"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"}
    result = esctl(env, "send", "PublishPots", "-a", "p1")
    assert one_line_error(result) == (
        "error: unknown command type PublishPots; did you mean PublishPost?"
    )
    assert result.returncode == 2


def test_up_help_says_what_ctrl_c_stops() -> None:
    """`esctl up --help` says what Ctrl-C (and SIGTERM, SIGHUP) stops: the four services, and
    the broker unless it was already running."""
    result = esctl({"COLUMNS": "200"}, "up", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "Ctrl-C (or SIGTERM, SIGHUP) stops everything this command started: the four" in text
    assert "the broker unless it was already running" in text


# ------------------------------------------------------------------ lag on a real broker


@pytest.fixture
async def member(kafka_bootstrap: str) -> AsyncIterator[Any]:
    """Start a consumer that joins a group and holds partitions (stopped afterwards)."""
    consumers: list[Any] = []

    async def join(group: str, topic: str, partitions: int) -> Any:
        consumer = make_consumer(kafka_bootstrap, group_id=group)
        await consumer.start()
        consumers.append(consumer)
        consumer.subscribe([topic])
        deadline = time.monotonic() + 60
        while len(consumer.assignment()) < partitions:
            assert time.monotonic() < deadline, "the member got no partitions in 60s"
            await consumer.getmany(timeout_ms=200)
        return consumer

    yield join
    for consumer in consumers:
        await consumer.stop()


async def run_esctl(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """The CLI in a subprocess without blocking the event loop (a member keeps heartbeating)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "esctl",
        *args,
        cwd=ROOT,
        env=dict(os.environ) | env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_lag_counts_what_a_read_committed_consumer_has_left(
    kafka_bootstrap: str, make_topic: TopicFactory, member: Any
) -> None:
    """A group caught up on a transactional partition has lag 0 (the commit marker is not
    waiting); with committed records waiting, lag is Kafka's figure and lag_seconds the age of the
    oldest; a partition a member holds without a committed offset shows `-` like Kafka's tool."""
    topic = await make_topic("lag-txn", partitions=2)
    group = unique("lag-txn-group")
    producer = make_transactional_producer(kafka_bootstrap, unique("lag-txn"))
    await producer.start()
    try:
        await producer.begin_transaction()
        for i in range(3):
            await producer.send(topic, b"v", key=b"k%d" % i, partition=0)
        await producer.commit_transaction()  # offsets 0-2, the commit marker at 3
        consumer = await member(group, topic, 2)
        await consumer.commit({TopicPartition(topic, 0): 3})
        env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}

        code, out, err = await run_esctl(env, "lag", "--json", "--group", group)
        assert code == 0, err
        rows = {r["partition"]: r for r in json.loads(out)}
        assert rows[0] == {
            "group": group,
            "topic": topic,
            "partition": 0,
            "committed": 3,
            "log_end": 4,
            "lag": 0,
            "lag_seconds": 0.0,
        }
        assert (rows[1]["committed"], rows[1]["lag"], rows[1]["lag_seconds"]) == (None, None, None)

        # two records written a minute ago (their create time) wait behind the committed offset
        await producer.begin_transaction()
        minute_ago = int(time.time() * 1000) - 60_000
        for i in range(2):
            await producer.send(topic, b"v", key=b"n%d" % i, partition=0, timestamp_ms=minute_ago)
        await producer.commit_transaction()  # offsets 4-5, the marker at 6
    finally:
        await producer.stop()
    code, out, err = await run_esctl(env, "lag", "--json", "--group", group)
    assert code == 0, err
    waiting = next(r for r in json.loads(out) if r["partition"] == 0)
    assert (waiting["committed"], waiting["log_end"], waiting["lag"]) == (3, 7, 4)
    assert 59 <= waiting["lag_seconds"] < 3600

    code, out, err = await run_esctl(env, "lag", "--group", group)
    assert code == 0, err
    header, *lines = out.splitlines()
    assert header.split() == [
        "GROUP",
        "TOPIC",
        "PARTITION",
        "CURRENT-OFFSET",
        "LOG-END-OFFSET",
        "LAG",
        "LAG-SECONDS",
    ]
    table = {int(cols[2]): cols for cols in (line.split() for line in lines)}
    assert table[0][:6] == [group, topic, "0", "3", "7", "4"]
    assert table[1] == [group, topic, "1", "-", "0", "-", "-"]


async def test_lag_of_a_group_that_does_not_exist_says_so(kafka_bootstrap: str) -> None:
    """`esctl lag --group <unknown>` says there is no such group (stderr) and exits 1."""
    group = unique("no-such-group")
    code, out, err = await run_esctl(
        {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}, "lag", "--group", group
    )
    assert code == 1
    assert out == ""
    assert err.strip() == f"note: no consumer group {group}"


async def test_lag_watch_in_a_pipe_prints_a_new_timestamped_block_at_each_refresh(
    kafka_bootstrap: str, make_topic: TopicFactory
) -> None:
    """`esctl lag --watch 1 | ...` prints block after block, each under a line with its time,
    showing the lag as it changes (the groups' summary, then the partitions); Ctrl-C (SIGINT)
    ends it with exit code 0."""
    topic = await make_topic("lag-watch", partitions=1)
    group = unique("lag-watch-group")
    consumer = make_consumer(kafka_bootstrap, group_id=group)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, 0)])
        await consumer.commit({TopicPartition(topic, 0): 0})
    finally:
        await consumer.stop()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "esctl",
        "lag",
        "--watch",
        "1",
        "--group",
        group,
        cwd=ROOT,
        env=dict(os.environ) | {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    blocks: list[list[str]] = []

    async def section() -> list[str]:
        lines = []
        while (line := (await proc.stdout.readline()).decode()) not in ("\n", ""):  # type: ignore[union-attr]
            lines.append(line.rstrip("\n"))
        return lines

    async def next_block() -> list[str]:
        """A refresh: its time and the groups' summary, a blank line, the partitions, a blank
        line; the time and the partitions returned (tests/integration/test_lag_watch_trend.py
        reads the summary)."""
        title, summary_header, summary = await section()
        assert summary_header.split()[:2] == ["GROUP", "LAG"] and summary.split()[0] == group
        return [title, *await section()]

    try:
        blocks.append(await asyncio.wait_for(next_block(), 60))
        await produce(kafka_bootstrap, topic, [(b"k", b"v")] * 5)
        deadline = time.monotonic() + 60
        while blocks[-1][2].split()[3:6] != ["0", "5", "5"]:
            assert time.monotonic() < deadline, f"the lag never showed 5: {blocks[-1]}"
            blocks.append(await asyncio.wait_for(next_block(), 60))
        blocks.append(await asyncio.wait_for(next_block(), 60))
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert blocks[0][2].split()[3:6] == ["0", "0", "0"]
    times = []
    for block in blocks:
        title, header, row = block
        assert title.startswith("consumer lag at ")
        times.append(title.removeprefix("consumer lag at "))
        assert header.split()[0] == "GROUP" and row.split()[:2] == [group, topic]
    assert times == sorted(times) and times[0] < times[-1]
