"""Running services as real processes, and checking the event log's invariants."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from shared.kafka.topics import Topics
from shared.localstack.kafka import free_port
from shared.messages import decode_event
from shared.messages.results import CommandOutcome
from shared.settings import KafkaSettings
from tests.kafka_helpers import read_all

ROOT = Path(__file__).resolve().parents[2]


class ServiceProcess:
    """One service process with its own port; logs go to a file for post-mortems."""

    def __init__(self, module: str, env: dict[str, str], log_dir: Path, name: str) -> None:
        self.module = module
        self.port = free_port()
        self.env = dict(os.environ) | env | {"HTTP_PORT": str(self.port), "LOG_FORMAT": "json"}
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115  # the child keeps it open
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module],
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    async def wait_healthy(self, timeout_s: float = 60.0) -> None:
        async with httpx.AsyncClient() as client, asyncio.timeout(timeout_s):
            while True:
                assert self.proc is not None and self.proc.poll() is None, self.logs()[-3000:]
                try:
                    if (await client.get(f"{self.url}/health", timeout=2)).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def kill(self) -> None:
        """SIGKILL, and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait, 10)

    async def stop(self) -> int | None:
        """SIGTERM, wait (SIGKILL after 20 s)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait, 10)
        return self.proc.returncode

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def command_service_env(
    bootstrap: str, prefix: str, partitions: int, **extra: str
) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "TOPIC_PREFIX": prefix,
        "PARTITIONS": str(partitions),
        "GROUP_ID": f"{prefix}command-service",
        "SESSION_TIMEOUT_MS": "6000",
        **extra,
    }


@dataclass
class LogCheck:
    outcomes: dict[uuid.UUID, CommandOutcome] = field(default_factory=dict)
    events_by_command: dict[uuid.UUID, list[tuple[int, int]]] = field(default_factory=dict)
    versions: dict[str, list[int]] = field(default_factory=dict)


async def check_log_invariants(
    bootstrap: str, prefix: str, partitions: int, sent: list[uuid.UUID]
) -> LogCheck:
    """Exactly-once outcomes and events; versions 1..n per aggregate; rejections append nothing."""
    topics = Topics.from_settings(KafkaSettings(topic_prefix=prefix))
    results = await read_all(bootstrap, topics.command_results, partitions, timeout_s=60)
    events = await read_all(bootstrap, topics.events, partitions, timeout_s=60)
    check = LogCheck()
    firsts = [CommandOutcome.decode(r.value) for r in results]
    counts = Counter(o.command_id for o in firsts if not o.duplicate)
    repeated = {cid: n for cid, n in counts.items() if n > 1}
    assert not repeated, f"outcomes written more than once: {list(repeated.items())[:5]}"
    check.outcomes = {o.command_id: o for o in firsts if not o.duplicate}
    missing = [cid for cid in sent if cid not in check.outcomes]
    assert not missing, f"{len(missing)} commands without outcome, e.g. {missing[:3]}"

    by_command: dict[uuid.UUID, list[tuple[int, int]]] = defaultdict(list)
    by_aggregate: dict[str, list[int]] = defaultdict(list)
    event_ids: Counter[uuid.UUID] = Counter()
    for record in events:
        env = decode_event(record.value).envelope
        event_ids[env.event_id] += 1
        by_aggregate[env.aggregate_id].append(env.aggregate_version)
        assert env.command_id is not None
        by_command[env.command_id].append((record.partition, record.offset))
    assert max(event_ids.values(), default=1) == 1, "an event was appended twice"
    for aggregate, versions in by_aggregate.items():
        assert versions == list(range(1, len(versions) + 1)), (
            f"{aggregate} versions are not 1..n: {versions}"
        )
    for cid, outcome in check.outcomes.items():
        logged = by_command.get(cid, [])
        if outcome.status == "rejected":
            assert not logged, f"rejected command {cid} appended events"
        else:
            assert logged == [(e.partition, e.offset) for e in outcome.events], (
                f"accepted command {cid}: outcome says {outcome.events}, log has {logged}"
            )
    check.events_by_command = dict(by_command)
    check.versions = dict(by_aggregate)
    return check
