"""`esctl`'s tables read by a person and by a pipe, against a running stack (a real broker, the
command service and the workflow service as real processes), with identifiers longer than forty
characters: groups, topics, workflows."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from fcntl import ioctl
from pathlib import Path

import httpx
import pytest

from shared.kafka.topics import Topics
from shared.messages import encode_command
from shared.messages.blog import CreatePost, SubmitPostForReview
from shared.settings import KafkaSettings
from tests.conftest import unique
from tests.e2e.harness import ROOT, ServiceProcess, bearer, command_service_env, esctl
from tests.kafka_helpers import produce, read_all

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

PARTITIONS = 2
LONG = "an-operator-copies-identifiers-longer-than-forty-characters"
NOT_PLAIN = ("\x1b", "┃", "│", "━", "─", "┏", "└", "…")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass
class Stack:
    bootstrap: str
    prefix: str
    topics: Topics
    env: dict[str, str]
    groups: list[str]
    workflow_ids: list[str]
    tmp: Path


@pytest.fixture(autouse=True)
def no_service_outlives_its_test() -> Iterator[None]:
    """Here the services outlive each test on purpose: the module's `stack` stops them (this
    replaces the suite's per-test cleanup for this module only)."""
    yield


def _wait(what: str, predicate: object, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out after {timeout_s}s waiting for {what}"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One running stack for the module: two review workflows of posts with long ids."""
    tmp = tmp_path_factory.mktemp("operator-cli")
    prefix = unique(LONG) + "."
    command = ServiceProcess(
        "command_service", command_service_env(kafka_bootstrap, prefix, PARTITIONS), tmp, "command"
    )
    workflow = ServiceProcess(
        "workflow_service",
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "TOPIC_PREFIX": prefix,
            "PARTITIONS": str(PARTITIONS),
            "GROUP_ID": f"{prefix}workflow-service",
            "SESSION_TIMEOUT_MS": "6000",
            "WORKFLOW_STORE_URL": f"sqlite:///{tmp / 'workflows.sqlite3'}",
            "REVIEWERS": "ann,ben",
        },
        tmp,
        "workflow",
    )
    try:
        command.start()
        asyncio.run(command.wait_healthy())
        workflow.start()
        asyncio.run(workflow.wait_healthy())
        author = f"{LONG}-author"
        registered = httpx.post(
            f"{command.url}/authors",
            json={"author_id": author, "name": "Ann Operator", "email": "ann@example.org"},
            headers=bearer("admin"),
            timeout=30,
        )
        assert registered.status_code == 201, registered.text
        topics = Topics.from_settings(KafkaSettings(topic_prefix=prefix))
        posts = [f"{LONG}-post-{i}" for i in range(2)]
        records = []
        for post in posts:
            for cmd in (CreatePost(author_id=author, title="On logs"), SubmitPostForReview()):
                m = encode_command(cmd, command_id=uuid.uuid4(), aggregate_id=post)
                records.append((m.key, m.value))
        asyncio.run(produce(kafka_bootstrap, topics.commands, records))

        def both_in_review() -> bool:
            body = httpx.get(
                f"{workflow.url}/workflows", headers=bearer("operator"), timeout=10
            ).json()
            return len(body["workflows"]) == len(posts)

        _wait("two review workflows", both_in_review)
        listed = httpx.get(
            f"{workflow.url}/workflows", headers=bearer("operator"), timeout=10
        ).json()["workflows"]
        groups = [f"{prefix}command-service", f"{prefix}workflow-service"]
        ids = sorted(w["workflow_id"] for w in listed)
        # the premise of this module: what the tables must print whole is long
        assert min(len(i) for i in [*groups, *ids, topics.commands]) > 40
        yield Stack(
            bootstrap=kafka_bootstrap,
            prefix=prefix,
            topics=topics,
            env={
                "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                "TOPIC_PREFIX": prefix,
                "WORKFLOW_URL": workflow.url,
            },
            groups=groups,
            workflow_ids=ids,
            tmp=tmp,
        )
    finally:
        for service in (workflow, command):
            asyncio.run(service.stop())


def assert_plain(out: str, header: str) -> None:
    """Plain columns: the first line is the header row, no box drawing, no escape codes."""
    assert out.splitlines()[0].split()[0] == header, out
    assert not [c for c in NOT_PLAIN if c in out], out


def test_lag_in_a_pipe_prints_plain_columns_with_every_group_and_topic_whole(
    stack: Stack,
) -> None:
    """`esctl lag | cat`: a header row and plain columns, groups and topics whole."""
    args = ["lag", *(a for g in stack.groups for a in ("--group", g))]
    result = esctl(stack.env, *args)
    assert result.returncode == 0, result.stderr
    assert_plain(result.stdout, "GROUP")
    tokens = result.stdout.split()
    for value in [*stack.groups, stack.topics.commands, stack.topics.events]:
        assert value in tokens, f"{value} not whole in:\n{result.stdout}"


def test_workflows_list_in_a_pipe_prints_every_id_and_time_whole(stack: Stack) -> None:
    """`esctl workflows list | cat`: workflow ids, timer due times and update times whole."""
    result = esctl(stack.env, "workflows", "list")
    assert result.returncode == 0, result.stderr
    assert_plain(result.stdout, "WORKFLOW")
    listed = json.loads(esctl(stack.env, "workflows", "list", "--json").stdout)["workflows"]
    tokens = result.stdout.split()
    for row in listed:
        for value in (row["workflow_id"], row["updated_at"], row["next_timer"]["due_at"]):
            assert value in tokens, f"{value} not whole in:\n{result.stdout}"


def test_workflows_show_in_a_pipe_prints_the_id_timers_and_history_whole(stack: Stack) -> None:
    """`esctl workflows show ID | cat`: the id, each timer and each history time whole; an id
    copied from `workflows list` works as it is."""
    listed = esctl(stack.env, "workflows", "list").stdout.splitlines()
    copied = listed[1].split()[0]  # the first id, as an operator copies it from the table
    result = esctl(stack.env, "workflows", "show", copied)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == copied
    assert not [c for c in NOT_PLAIN if c in result.stdout], result.stdout
    shown = json.loads(esctl(stack.env, "workflows", "show", copied, "--json").stdout)
    tokens = result.stdout.split()
    for value in [
        *(t["id"] for t in shown["pending_timers"]),
        *(t["due_at"] for t in shown["pending_timers"]),
        *(h["at"] for h in shown["history"]),
    ]:
        assert value in tokens, f"{value} not whole in:\n{result.stdout}"
    assert {"PENDING-TIMER", "AT", "WHAT", "DETAIL"} <= set(tokens)


def test_prune_plan_in_a_pipe_prints_plain_columns(stack: Stack, tmp_path: Path) -> None:
    """`esctl prune --dry-run | cat`: the plan as plain columns, one row per partition."""
    result = esctl(
        stack.env, "prune", "--before", "2020-01-01", "--dry-run", "--archive", str(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    assert_plain(result.stdout, "PARTITION")
    rows = result.stdout.splitlines()[1:]
    assert [r.split()[0] for r in rows] == [str(p) for p in range(PARTITIONS)]


def on_a_terminal(env: dict[str, str], *args: str, columns: int = 80) -> str:
    """The output of esctl on a pseudo-terminal `columns` wide, escape codes removed."""
    main, child = pty.openpty()
    ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    environ = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "esctl", *args],
        cwd=ROOT,
        env=environ | env | {"TERM": "xterm-256color"},
        stdin=subprocess.DEVNULL,
        stdout=child,
        stderr=subprocess.PIPE,
    )
    os.close(child)
    chunks = []
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main)
    assert proc.wait(120) == 0, proc.stderr.read() if proc.stderr else ""
    return ANSI.sub("", b"".join(chunks).decode())


@pytest.mark.parametrize("command", ["workflows list", "lag"])
def test_on_an_80_column_terminal_no_id_is_cut(stack: Stack, command: str) -> None:
    """On a terminal too narrow for them, the tables still print every id whole."""
    args = command.split()
    if command == "lag":
        args += [a for g in stack.groups for a in ("--group", g)]
    out = on_a_terminal(stack.env, *args)
    expected = stack.workflow_ids if command != "lag" else stack.groups
    for value in expected:
        assert value in out, f"{value} not whole in:\n{out}"
    assert "…" not in out


def test_lag_answers_quickly_and_shows_a_caught_up_stack_at_zero(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    """On the running stack every group catches up to a lag of 0, transactional topics
    included (the final commit marker is not a record to read); the time `esctl lag` takes is
    printed (not asserted)."""
    args = ["lag", "--json", *(a for g in stack.groups for a in ("--group", g))]

    def caught_up() -> bool:
        rows = json.loads(esctl(stack.env, *args).stdout)
        return bool(rows) and all(r["lag"] in (0, None) for r in rows)

    _wait("the groups to catch up", caught_up)
    started = time.monotonic()
    result = esctl(stack.env, *args[:1], *args[2:])
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    committed = [r for r in rows if r[3] != "-"]
    assert committed and all(r[5] == "0" for r in committed), result.stdout
    with capsys.disabled():  # shown in every run: the figure, not a pass/fail criterion
        print(f"\nesctl lag took {took:.2f}s ({len(rows)} partitions, 2 groups)")  # noqa: T201


def test_workflows_list_says_when_none_match_and_names_the_valid_statuses(stack: Stack) -> None:
    """No workflow with a status: said on stderr, exit 0, nothing on stdout; an unknown status:
    one line listing the valid ones, exit 2."""
    none = esctl(stack.env, "workflows", "list", "--status", "failed")
    assert none.returncode == 0, none.stderr
    assert none.stdout == ""
    assert none.stderr.strip() == "note: no workflows with status failed (all workflows: 2 active)"
    unknown = esctl(stack.env, "workflows", "list", "--status", "nosuch")
    assert unknown.returncode == 2
    assert unknown.stderr.strip().startswith("error: unknown workflow status nosuch; valid: active")
    assert "compensating" in unknown.stderr and "running" in unknown.stderr


def test_projections_rebuild_reports_in_words(stack: Stack, tmp_path: Path) -> None:
    """`esctl projections rebuild` ends with a sentence: the generation now live, the one it
    replaced, and the number of events applied (every event of the topic), no Python repr."""
    events = asyncio.run(read_all(stack.bootstrap, stack.topics.events, PARTITIONS))
    env = stack.env | {"READ_STORE_URL": f"sqlite:///{tmp_path / 'read.sqlite3'}"}
    result = esctl(env, "projections", "rebuild")
    assert result.returncode == 0, result.stderr
    said = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(said) == 1, result.stderr
    assert said[0].startswith(
        f"rebuilt the read model: generation 2 is live (was 1), {len(events):,} events applied in "
    )
    assert "Result(" not in result.stderr + result.stdout
