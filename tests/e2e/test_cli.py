"""`esctl` as a person runs it, against the services as real processes: `send` and its exit
codes, and `up` (the whole system in the foreground) stopped with Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import psutil
import pytest

from esctl.localstack.kafka import LocalKafkaCluster, free_port
from esctl.localstack.kafka_security import KAFKA_SECURITY_VARIABLES
from shared.kafka.topics import Topics
from shared.settings import KafkaSettings
from tests.conftest import unique
from tests.e2e.harness import ServiceProcess, command_service_env, esctl
from tests.kafka_helpers import end_offsets, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

PARTITIONS = 2


async def test_esctl_send_exits_0_accepted_1_rejected_2_invalid_3_no_outcome(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """`esctl send` prints the outcome as JSON and exits 0 when the command is accepted, 1 when
    it is rejected, 2 on invalid input (nothing is sent) and 3 when no outcome comes in time."""
    prefix = unique("send") + "."
    topics = Topics.from_settings(KafkaSettings(topic_prefix=prefix))
    cmd = ServiceProcess(
        "command_service",
        command_service_env(kafka_bootstrap, prefix, PARTITIONS),
        tmp_path,
        "command",
    )
    cmd.start()
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "TOPIC_PREFIX": prefix}
    author = f"ada-{uuid.uuid4().hex[:6]}"
    try:
        await cmd.wait_healthy()
        accepted = await asyncio.to_thread(
            esctl,
            env,
            "send",
            "RegisterAuthor",
            "-a",
            author,
            "-j",
            '{"name": "Ada", "email": "ada@example.org"}',
        )
        assert accepted.returncode == 0, accepted.stderr
        outcome = json.loads(accepted.stdout)
        assert (outcome["status"], outcome["version"]) == ("accepted", 1)
        assert [e["type"] for e in outcome["events"]] == ["AuthorRegistered"]

        rejected = await asyncio.to_thread(
            esctl,
            env,
            "send",
            "RenameAuthor",
            "-a",
            author,
            "-j",
            '{"name": "Ada K"}',
            "--expected-version",
            "5",
        )
        assert rejected.returncode == 1, rejected.stderr
        outcome = json.loads(rejected.stdout)
        assert (outcome["status"], outcome["code"]) == ("rejected", "version_conflict")

        sent_before = await end_offsets(kafka_bootstrap, topics.commands, PARTITIONS)
        invalid = [
            ("NoSuchCommand", "-a", author),  # unknown type
            ("RenameAuthor", "-a", author, "-j", '{"name": 42}'),  # invalid payload
            ("RenameAuthor", "-a", author, "-j", '{"name": "A'),  # not JSON
            ("RenameAuthor", "-a", author, "-j", '{"name": "A"}', "--command-id", "nope"),
        ]
        answers = await asyncio.gather(
            *[asyncio.to_thread(esctl, env, "send", *args) for args in invalid]
        )
        assert [a.returncode for a in answers] == [2] * len(invalid), [a.stderr for a in answers]
        assert all(a.stdout == "" for a in answers)
        assert await end_offsets(kafka_bootstrap, topics.commands, PARTITIONS) == sent_before

        await cmd.stop()  # nobody decides any more
        pending = await asyncio.to_thread(
            esctl,
            env,
            "send",
            "RenameAuthor",
            "-a",
            author,
            "-j",
            '{"name": "Ada K"}',
            "--timeout",
            "2",
        )
        assert pending.returncode == 3, pending.stderr
        assert json.loads(pending.stdout)["status"] == "pending"
        after = await end_offsets(kafka_bootstrap, topics.commands, PARTITIONS)
        assert sum(after.values()) == sum(sent_before.values()) + 1  # it was sent
    finally:
        await cmd.stop()


def _listening(port: int) -> bool:
    return any(
        c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN
        for c in psutil.net_connections("tcp")
    )


@pytest.mark.parametrize("insecure", [False, True], ids=["tokens", "insecure"])
async def test_esctl_up_serves_the_system_and_ctrl_c_stops_everything_it_started(
    tmp_path: Path, insecure: bool
) -> None:
    """`esctl up` starts a broker and the four services, which answer over HTTP to the admin
    token it prints (and 401 without one; with `--insecure`: no token printed, a warning, and
    no token needed); Ctrl-C (SIGINT; SIGTERM in the insecure case) stops every process it
    started (the services and the broker) and frees their ports."""
    state = tmp_path / "var"
    data_dir = state / "kafka"
    kafka_port = free_port()
    ports = {
        "command_service": free_port(),
        "query_service": free_port(),
        "projector_service": free_port(),
        "workflow_service": free_port(),
    }
    # its own state dir, broker and stores: nothing of the test session's
    session = {
        "KAFKA_BOOTSTRAP_SERVERS",
        "TOPIC_PREFIX",
        "PARTITIONS",
        "GROUP_ID",
        "KEY_STORE_URL",
        "KEY_ENCRYPTION_KEY",
        "KEY_ENCRYPTION_KEY_FILE",
        "READ_STORE_URL",
        "WORKFLOW_STORE_URL",
        "AUTH_HS256_SECRET",  # esctl up's own (the local stack's secret)
        *KAFKA_SECURITY_VARIABLES,
    }
    env = {k: v for k, v in os.environ.items() if k not in session}
    env["ESCTL_STATE_DIR"] = str(state)
    log_path = tmp_path / "up.log"
    args = ["up", "--port", str(kafka_port), "--data-dir", str(data_dir)]
    args += ["--insecure"] if insecure else []
    for module, port in ports.items():
        args += [f"--{module.split('_')[0]}-port", str(port)]
    with log_path.open("wb") as log:
        up = subprocess.Popen(
            [str(Path(sys.executable).parent / "esctl"), *args],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as in a terminal
        )
    try:
        async with httpx.AsyncClient(timeout=5) as http:

            async def all_healthy() -> bool:
                assert up.poll() is None, log_path.read_text()[-3000:]
                for port in ports.values():
                    try:
                        r = await http.get(f"http://127.0.0.1:{port}/health")
                    except httpx.TransportError:
                        return False
                    if r.status_code != 200:
                        return False
                return True

            await wait_until(all_healthy, timeout_s=180, interval_s=0.5, what="esctl up healthy")
            printed = log_path.read_text()
            admin = re.search(r"^ADMIN_TOKEN=(\S+)$", printed, re.MULTILINE)
            author = f"ada-{uuid.uuid4().hex[:6]}"
            url = f"http://127.0.0.1:{ports['command_service']}/authors"
            body = {"author_id": author, "name": "Ada", "email": "ada@example.org"}
            if insecure:
                assert admin is None and "authentication is OFF" in printed, printed
            else:
                assert admin and re.search(r"^AUTHOR_TOKEN=\S+", printed, re.MULTILINE), printed
                r = await http.post(url, json=body, timeout=30)
                assert r.status_code == 401, r.text
                http.headers["Authorization"] = f"Bearer {admin.group(1)}"
            r = await http.post(url, json=body, timeout=30)
            assert r.status_code == 201, r.text
            token = r.headers["x-consistency-token"]
            read = await http.get(
                f"http://127.0.0.1:{ports['query_service']}/authors/{author}",
                headers={"X-Consistency-Token": token},
                timeout=30,
            )
            assert read.status_code == 200, read.text
            assert read.json()["name"] == "Ada"
        # no KEK configured: a local one, made for its key store (0600) and said so
        kek = state / "key-encryption-key"
        assert kek.stat().st_mode & 0o777 == 0o600
        assert f"key-encryption key in {kek.resolve()} (made now" in log_path.read_text()

        cluster = LocalKafkaCluster.load(data_dir)
        assert cluster is not None and cluster.status() == {1: True}
        broker = cluster.state.nodes[0].pid
        services = [c for c in psutil.Process(up.pid).children(recursive=True) if c.pid != broker]
        assert {c.cmdline()[-1] for c in services} == set(ports)

        # Ctrl-C (or SIGTERM: `kill`, a supervisor); to esctl alone (a terminal signals the
        # services too, which stop on SIGINT themselves): esctl must stop what it started
        up.send_signal(signal.SIGTERM if insecure else signal.SIGINT)
        code = await asyncio.to_thread(up.wait, 90)
        assert code == 0, log_path.read_text()[-3000:]
        _, alive = psutil.wait_procs(services, timeout=5)
        assert alive == [], f"services left running: {alive}"
        assert cluster.status() == {1: False}, "esctl up left its broker running"
        assert not psutil.pid_exists(broker) or psutil.Process(broker).status() == "zombie"
        for port in [kafka_port, *ports.values()]:
            assert not _listening(port), f"port {port} still listens"
    finally:
        # whatever is left of its process group (esctl, services it failed to stop)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(up.pid, signal.SIGKILL)
        up.wait(10)
        leftover = LocalKafkaCluster.load(data_dir)
        if leftover is not None:
            leftover.destroy()  # only kills a node this data dir's cluster started
