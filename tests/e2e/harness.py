"""Running services as real processes, and checking the event log's invariants.

Authentication is on in this tier, as in production: the services verify HS256 tokens signed
with E2E_SECRET (AUTH_HS256_SECRET, set for this process and so for every service and esctl
process it starts, unless already set), and `http_client()` is an httpx client with an admin
token."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from esctl.localstack.services import ServiceProcess
from shared.auth import mint
from shared.kafka.topics import Topics
from shared.messages import decode_event
from shared.messages.results import CommandOutcome
from shared.settings import KafkaSettings
from tests.kafka_helpers import read_all

ROOT = Path(__file__).resolve().parents[2]
#: The services' HS256 secret (tests/conftest.py sets one per test session, unless configured).
E2E_SECRET = os.environ.setdefault("AUTH_HS256_SECRET", secrets.token_urlsafe(32))
__all__ = [
    "E2E_SECRET",
    "ROOT",
    "ServiceProcess",
    "bearer",
    "check_log_invariants",
    "command_service_env",
    "http_client",
]


def bearer(*roles: str, sub: str = "e2e") -> dict[str, str]:
    """The Authorization header of a token of `roles` (valid for 6 hours)."""
    return {"Authorization": f"Bearer {mint(E2E_SECRET, sub, roles or ['admin'], ttl_s=6 * 3600)}"}


def http_client(**kwargs: Any) -> httpx.AsyncClient:
    """An httpx client that sends an admin token (headers given here add to it)."""
    headers = bearer("admin", sub="e2e-admin") | dict(kwargs.pop("headers", None) or {})
    return httpx.AsyncClient(headers=headers, **kwargs)


def esctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a person would, with `env` on top of this process's environment."""
    return subprocess.run(
        [sys.executable, "-m", "esctl", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ) | env,
        timeout=300,
        check=False,
    )


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
