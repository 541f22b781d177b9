"""What every benchmark scenario shares: the sizes, the results, the services' environment,
memory sampling and the event writers."""

from __future__ import annotations

import asyncio
import os
import platform
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console

from esctl.localstack.kafka import kafka_version
from shared.kafka import make_transactional_producer
from shared.kafka.clients import partition_for_key
from shared.kafka.commands import CommandClient
from shared.kafka.topics import Topics
from shared.kek import ensure_kek_file
from shared.messages import encode_command, encode_event
from shared.messages.blog import PostCreated, RegisterAuthor

ROOT = Path(__file__).resolve().parents[1]
console = Console(stderr=True)


@dataclass
class Sizes:
    raw: int = 100_000
    pipeline: int = 20_000
    projector: int = 100_000
    e2e_seconds: float = 10.0
    e2e_sequential: int = 200
    e2e_rates: tuple[int, ...] = (25, 50, 100, 250, 500, 2000)
    recovery: tuple[int, ...] = (100_000, 1_000_000)
    peer: int = 2_000
    timers: int = 1_000
    snapshot_events: int = 1_000_000
    snapshot_aggregates: int = 10_000
    pipeline_batches: tuple[int, ...] = (100, 500, 2000)
    #: batch sizes of the 3-broker rows (replication factor 3, min.insync.replicas=2)
    durable_batches: tuple[int, ...] = (2000,)
    #: events of the read-model rebuild row
    rebuild: int = 1_000_000
    #: runs behind every headline figure (its median and spread)
    repeat: int = 3
    #: broker heap of the 3-broker cluster, per node
    durable_heap_mb: int = 512
    #: sequential one-command transactions of the latency floor rows
    latency: int = 200

    @classmethod
    def smoke(cls) -> Sizes:
        return cls(
            raw=2_000,
            pipeline=500,
            projector=2_000,
            e2e_seconds=2.0,
            e2e_sequential=10,
            e2e_rates=(20, 50),
            recovery=(1_000,),
            peer=50,
            timers=20,
            snapshot_events=1_000,
            snapshot_aggregates=100,
            pipeline_batches=(50, 500),
            durable_batches=(500,),
            rebuild=1_000,
            repeat=1,
            durable_heap_mb=256,
            latency=20,
        )


@dataclass
class Results:
    machine: dict[str, Any] = field(default_factory=dict)
    rows: dict[str, Any] = field(default_factory=dict)

    def put(self, key: str, **values: Any) -> None:
        self.rows[key] = values
        console.print(f"[green]{key}[/green] {values}")


def spread(values: list[float]) -> dict[str, Any]:
    """A headline figure of repeated runs: their median, min and max, and every run."""
    ordered = sorted(values)
    n = len(ordered)
    mid = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    return {
        "median": round(mid, 2),
        "min": round(ordered[0], 2),
        "max": round(ordered[-1], 2),
        "runs": [round(v, 2) for v in values],
    }


def machine_facts() -> dict[str, Any]:
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "kafka": kafka_version(),
        "aiokafka": _version("aiokafka"),
        "eventsourcing": _version("eventsourcing"),
        "broker_heap_mb": 512,
    }


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def payload(size: int) -> bytes:
    return (b"x" * size)[:size]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class RssSampler:
    """Samples the resident memory of watched processes; reports each one's peak."""

    def __init__(self) -> None:
        self.peaks: dict[str, int] = {}
        self._watched: dict[str, psutil.Process] = {}
        self._task: asyncio.Task[None] | None = None

    def watch(self, name: str, pid: int | None) -> None:
        if pid is not None:
            self._watched[name] = psutil.Process(pid)

    async def run(self) -> None:
        while True:
            for name, proc in list(self._watched.items()):
                try:
                    rss = proc.memory_info().rss
                except psutil.Error:
                    self._watched.pop(name)
                    continue
                self.peaks[name] = max(self.peaks.get(name, 0), rss)
            await asyncio.sleep(0.1)


def use_local_kek(workdir: Path) -> None:
    """The services' key store wraps its keys (shared/kek.py): unless a KEK is configured, one
    of this run's, as `esctl up` makes one, inherited by every service process started. The
    key store too, unless configured: the default (`./var/keys.sqlite3` of the working
    directory) would outlive the run and hold keys wrapped by its KEK, which the next run's
    services refuse (`kek_unknown`)."""
    os.environ.setdefault("KEY_STORE_URL", f"sqlite:///{workdir / 'keys.sqlite3'}")
    if not (os.environ.get("KEY_ENCRYPTION_KEY") or os.environ.get("KEY_ENCRYPTION_KEY_FILE")):
        kek = workdir / "key-encryption-key"
        ensure_kek_file(kek)
        os.environ["KEY_ENCRYPTION_KEY_FILE"] = str(kek)


def broker_processes(bootstrap: str) -> dict[str, psutil.Process]:
    """The broker process(es) listening on the bootstrap ports of this machine (none when the
    broker is elsewhere)."""
    ports = {int(address.rsplit(":", 1)[1]) for address in bootstrap.split(",")}
    found: dict[str, psutil.Process] = {}
    try:
        for conn in psutil.net_connections("tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port in ports and conn.pid:
                name = "broker" if len(ports) == 1 else f"broker:{conn.laddr.port}"
                found[name] = psutil.Process(conn.pid)
    except psutil.AccessDenied:  # not root on macOS: no broker row
        pass
    return found


def service_env(bootstrap: str, prefix: str, **extra: str) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "TOPIC_PREFIX": prefix,
        "PARTITIONS": "6",
        "GROUP_ID": f"{prefix}command-service",
        "LOG_LEVEL": "warning",
        "SESSION_TIMEOUT_MS": "6000",
        # The benchmarks measure the pipeline, as before authentication existed; verifying an
        # HS256 token costs tens of microseconds per request (not measured here).
        "AUTH_ENABLED": "false",
        **extra,
    }


async def register_author(bootstrap: str, topics: Topics, author: str, wait_s: float = 60) -> None:
    client = CommandClient(bootstrap, topics, recent_window_s=0)
    await client.start()
    try:
        cid = uuid.uuid4()
        out = await client.send(
            cid,
            encode_command(
                RegisterAuthor(name="A", email="a@b.c"), command_id=cid, aggregate_id=author
            ),
            wait_s=wait_s,
        )
        if out is None or out.status != "accepted":
            raise RuntimeError(f"no accepted outcome for RegisterAuthor within {wait_s}s: {out}")
    finally:
        await client.stop()


_EVENT_LOGS: dict[tuple[str, int], str] = {}


async def event_log(bootstrap: str, n: int) -> str:
    """The topic prefix of a system whose events topic holds n PostCreated events (6
    partitions), written once per run and shared by the scenarios that only read it."""
    from shared.kafka.topics import bootstrap_system_topics  # noqa: PLC0415
    from shared.settings import KafkaSettings  # noqa: PLC0415

    if (bootstrap, n) not in _EVENT_LOGS:
        prefix = f"blog{n}-{uuid.uuid4().hex[:6]}."
        await bootstrap_system_topics(
            KafkaSettings(kafka_bootstrap_servers=bootstrap, topic_prefix=prefix, partitions=6)
        )
        topics = Topics.from_settings(KafkaSettings(topic_prefix=prefix))
        await write_fake_events(bootstrap, topics.events, 6, n)
        _EVENT_LOGS[(bootstrap, n)] = prefix
    return _EVENT_LOGS[(bootstrap, n)]


async def write_fake_events(
    bootstrap: str, topic: str, partitions: int, n: int, *, distinct: bool = True, txn: int = 500
) -> None:
    """n PostCreated events (one aggregate each), written like the command service does."""
    producer = make_transactional_producer(bootstrap, f"bench-writer-{uuid.uuid4().hex[:8]}")
    await producer.start()
    now = datetime.now(UTC)
    try:
        for first in range(0, n, txn):
            await producer.begin_transaction()
            futures = []
            for i in range(first, min(n, first + txn)):
                post = f"post-{i}" if distinct else f"post-{i % 1000}"
                m = encode_event(
                    PostCreated(
                        author_id="a", title=f"T{i}", body="b" * 150, tags=["bench", f"t{i % 20}"]
                    ),
                    event_id=uuid.uuid4(),
                    aggregate_id=post,
                    aggregate_version=1,
                    occurred_at=now,
                )
                futures.append(
                    await producer.send(
                        topic,
                        m.value,
                        key=m.key,
                        headers=m.headers,
                        partition=partition_for_key(m.key, partitions),
                    )
                )
            await asyncio.gather(*futures)
            await producer.commit_transaction()
    finally:
        await producer.stop()
