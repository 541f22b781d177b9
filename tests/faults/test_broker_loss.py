"""Broker loss under service load (issue 19, build 1).

Three Kafka nodes (KRaft, each broker and controller; heap 256 MB), every topic with replication
factor 3 and `min.insync.replicas=2`; the command service, projector (SQLite read store),
workflow service and query service as real processes on that cluster. While clients send
commands — over HTTP with an `Idempotency-Key`, and onto the commands topic with their own
command ids, each retrying the same request until it gets a definite answer — and posts go
through review (the workflow service assigns a reviewer, the test approves or rejects, short
deadlines end the rest), the broker that leads the busiest command and event partitions is
SIGKILLed and restarted a few seconds later, then another. After the load stops and everything
settles, the checker (tests/faults/checker.py) judges what the clients were told against the
whole log, the read model against the fold of the log, and the workflows' end states.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import TopicPartition

from esctl.localstack.kafka import LocalKafkaCluster
from shared.errors import InfrastructureUnavailable
from shared.kafka import make_admin, make_consumer
from shared.kafka.commands import CommandClient
from shared.kafka.topics import Topics, bootstrap_system_topics
from shared.messages import encode_command
from shared.messages.base import Command
from shared.messages.blog import ApprovePost, CreatePost, EditPost, RejectPost, SubmitPostForReview
from shared.settings import KafkaSettings
from tests.conftest import unique
from tests.e2e.harness import ServiceProcess, command_service_env, http_client
from tests.e2e.test_projector_crashes import wait_applied
from tests.e2e.test_read_side import projector_env
from tests.faults.checker import Sent, check_history, command_id_for
from tests.kafka_helpers import read_all, wait_until
from workflow_service.model import TERMINAL

pytestmark = [pytest.mark.integration, pytest.mark.faults]

PARTITIONS = 3
#: the token subject of `http_client()`: Idempotency-Keys are scoped by it
SUBJECT = "e2e-admin"
#: a client gives up on a command (answer "unknown") after so long without a definite answer
GIVE_UP_S = 30.0
#: the load runs so long before the first kill, and between the faults
BEFORE_FIRST_KILL_S = 5.0
BROKER_DOWN_S = 4.0
BETWEEN_FAULTS_S = 3.0


@dataclass
class History:
    """What the clients sent and were told, and what they saw on the way."""

    started: float = field(default_factory=time.monotonic)
    sent: list[Sent] = field(default_factory=list)
    #: HTTP statuses and transport errors the command clients met (retried or final)
    http: Counter[str] = field(default_factory=Counter)
    #: statuses of the query service's answers
    queries: Counter[str] = field(default_factory=Counter)
    kafka_retries: int = 0
    #: posts created (accepted), for the readers
    posts: list[str] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)

    def note(self, what: str) -> None:
        self.faults.append(f"t+{time.monotonic() - self.started:5.1f}s {what}")

    def answers_per_window(self, window_s: float = 5.0) -> str:
        """Definite answers per `window_s` of the run ("0-5s: 40 | 5-10s: 3 | ..."): where the
        faults stalled the clients."""
        counts: Counter[int] = Counter(
            int((s.answered_at - self.started) // window_s)
            for s in self.sent
            if s.answered_at is not None and s.answered_at >= self.started
        )
        last = max(counts, default=0)
        return " | ".join(
            f"{w * window_s:g}-{(w + 1) * window_s:g}s: {counts[w]}" for w in range(last + 1)
        )


class HttpCommands:
    """Commands over HTTP: one Idempotency-Key per command, retried with the same key and body on
    transport errors, 5xx and 202 (poll the Location a while, then send again) until a definite
    answer (2xx accepted, 4xx rejected) or GIVE_UP_S."""

    def __init__(self, http: httpx.AsyncClient, url: str, history: History) -> None:
        self.http, self.url, self.history = http, url, history

    async def send(
        self, method: str, path: str, aggregate_id: str, body: dict[str, Any] | None = None
    ) -> Sent:
        key = uuid.uuid4().hex
        now = time.monotonic()
        sent = Sent(command_id_for(key, SUBJECT), aggregate_id, "unknown", 0, now)
        self.history.sent.append(sent)
        deadline = now + GIVE_UP_S
        while time.monotonic() < deadline:
            sent.attempts += 1
            try:
                r = await self.http.request(
                    method,
                    f"{self.url}{path}",
                    json=body,
                    headers={"Idempotency-Key": key},
                    timeout=max(1.0, deadline - time.monotonic()),
                )
            except httpx.TransportError as exc:
                self.history.http[type(exc).__name__] += 1
                await asyncio.sleep(0.2)
                continue
            self.history.http[str(r.status_code)] += 1
            status = r.status_code
            if status == 202:
                status = await self._poll(sent, min(deadline, time.monotonic() + 3.0))
            if status in (200, 201):
                sent.answer, sent.answered_at = "accepted", time.monotonic()
                return sent
            if 400 <= status < 500:
                sent.answer, sent.answered_at = "rejected", time.monotonic()
                return sent
            await asyncio.sleep(0.2)  # 5xx, or no outcome yet: send the same request again
        return sent

    async def _poll(self, sent: Sent, until: float) -> int:
        """GET /commands/{id} until the outcome is there (200 accepted, 409 standing for any
        rejection) or `until` (0: none yet)."""
        while time.monotonic() < until:
            await asyncio.sleep(0.3)
            try:
                r = await self.http.get(f"{self.url}/commands/{sent.command_id}", timeout=5)
            except httpx.TransportError:
                continue
            if r.status_code == 200:
                return 200 if r.json()["status"] == "accepted" else 409
        return 0


class KafkaCommands:
    """Commands onto the commands topic with the client's own command ids (README, "The command
    record (for any Kafka client)"), the same record produced again until its outcome is read."""

    def __init__(self, client: CommandClient, history: History) -> None:
        self.client, self.history = client, history

    async def send(self, aggregate_id: str, command: Command) -> Sent:
        command_id = uuid.uuid4()
        message = encode_command(command, command_id=command_id, aggregate_id=aggregate_id)
        now = time.monotonic()
        sent = Sent(command_id, aggregate_id, "unknown", 0, now)
        self.history.sent.append(sent)
        deadline = now + GIVE_UP_S
        while time.monotonic() < deadline:
            sent.attempts += 1
            try:
                outcome = await asyncio.wait_for(
                    self.client.send(command_id, message, wait_s=5.0),
                    timeout=max(1.0, deadline - time.monotonic()),
                )
            except (InfrastructureUnavailable, TimeoutError):
                outcome = None
            if outcome is None:
                self.history.kafka_retries += 1
                continue
            sent.answer = "accepted" if outcome.status == "accepted" else "rejected"
            sent.answered_at = time.monotonic()
            return sent
        return sent


async def review(
    decide: Callable[[str, bool], Awaitable[Sent]], post: str, rng: random.Random
) -> None:
    """A reviewer's decision a moment after the submission: approve (the workflow publishes)
    or reject (back to draft). Some are left to the deadline (auto_rejected)."""
    roll = rng.random()
    if roll < 0.15:
        return
    await asyncio.sleep(rng.uniform(0.3, 2.0))
    await decide(post, roll < 0.6)


async def http_author(
    commands: HttpCommands, n: int, stop: asyncio.Event, history: History, seed: int
) -> None:
    """Posts over HTTP: create, edit, sometimes a stale edit (rejected: version_conflict),
    sometimes a submission for review followed by a decision."""
    rng = random.Random(seed)
    reviews: list[asyncio.Task[None]] = []

    async def decide(post: str, approve: bool) -> Sent:
        if approve:
            return await commands.send("POST", f"/posts/{post}/approve", post, {"reviewer": "ann"})
        return await commands.send("POST", f"/posts/{post}/reject", post, {"reason": "not yet"})

    i = 0
    while not stop.is_set():
        post = f"h{n}-{i}-{uuid.uuid4().hex[:6]}"
        i += 1
        body = {"post_id": post, "author_id": "ed", "title": f"T {post}", "tags": ["kafka"]}
        created = await commands.send("POST", "/posts", post, body)
        if created.answer != "accepted":
            continue
        history.posts.append(post)
        await commands.send("PATCH", f"/posts/{post}", post, {"title": f"T {post} 2"})
        if rng.random() < 0.3:  # stale: the post is past version 1 by now
            await commands.send("PATCH", f"/posts/{post}?expected_version=1", post, {"body": "x"})
        if rng.random() < 0.5:
            submitted = await commands.send("POST", f"/posts/{post}/submit", post, {})
            if submitted.answer == "accepted":
                reviews.append(asyncio.create_task(review(decide, post, rng)))
    await asyncio.gather(*reviews)


async def kafka_author(
    commands: KafkaCommands, n: int, stop: asyncio.Event, history: History, seed: int
) -> None:
    """Posts onto the commands topic: create, edit, submit, and a decision."""
    rng = random.Random(seed)
    reviews: list[asyncio.Task[None]] = []

    async def decide(post: str, approve: bool) -> Sent:
        command: Command = ApprovePost(reviewer="ben") if approve else RejectPost(reason="no")
        return await commands.send(post, command)

    i = 0
    while not stop.is_set():
        post = f"k{n}-{i}-{uuid.uuid4().hex[:6]}"
        i += 1
        created = await commands.send(post, CreatePost(author_id="ed", title=f"T {post}"))
        if created.answer != "accepted":
            continue
        history.posts.append(post)
        await commands.send(post, EditPost(body=f"body of {post}"))
        if rng.random() < 0.6:
            submitted = await commands.send(post, SubmitPostForReview())
            if submitted.answer == "accepted":
                reviews.append(asyncio.create_task(review(decide, post, rng)))
    await asyncio.gather(*reviews)


async def reader(url: str, stop: asyncio.Event, history: History, seed: int) -> None:
    """Queries on the query service while the brokers come and go (it reads the read store)."""
    rng = random.Random(seed)
    async with http_client(timeout=10) as http:
        while not stop.is_set():
            await asyncio.sleep(0.05)
            path = f"/posts/{rng.choice(history.posts)}" if history.posts else "/posts"
            try:
                r = await http.get(f"{url}{path}")
                history.queries[str(r.status_code)] += 1
            except httpx.TransportError as exc:
                history.queries[type(exc).__name__] += 1


async def describe(bootstrap: str, names: list[str]) -> list[dict[str, Any]]:
    admin = make_admin(bootstrap)
    await admin.start()
    try:
        topics: list[dict[str, Any]] = await admin.describe_topics(names)
        return topics
    finally:
        await admin.close()


async def busiest_broker(bootstrap: str, topics: Topics, exclude: set[int]) -> int:
    """The broker leading the partitions of the commands and events topics that hold the most
    records (ties: the one leading more of them)."""
    names = [topics.commands, topics.events]
    consumer = make_consumer(bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in names for p in range(PARTITIONS)]
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    load: Counter[int] = Counter()
    led: Counter[int] = Counter()
    for topic in await describe(bootstrap, names):
        for p in topic["partitions"]:
            leader = p["leader"]
            if leader >= 0 and leader not in exclude:
                load[leader] += ends[TopicPartition(topic["topic"], p["partition"])]
                led[leader] += 1
    return max(load, key=lambda b: (load[b], led[b]))


async def wait_fully_replicated(bootstrap: str, names: list[str], what: str) -> None:
    """Until every partition of `names` has its three replicas in sync again."""

    async def in_sync() -> bool:
        try:
            described = await describe(bootstrap, names)
        except Exception:  # a broker on its way back: ask again
            return False
        return all(len(p["isr"]) == 3 for t in described for p in t["partitions"])

    await wait_until(in_sync, timeout_s=60, interval_s=0.5, what=what)


async def chaos(cluster: LocalKafkaCluster, topics: Topics, history: History) -> list[int]:
    """Kill the broker leading the busiest partitions, restart it after a few seconds; then the
    same with another. Returns the brokers killed."""
    bootstrap = cluster.bootstrap_servers
    everything = [
        topics.commands,
        topics.events,
        topics.command_results,
        topics.workflow_state,
        topics.workflow_history,
    ]
    killed: list[int] = []
    await asyncio.sleep(BEFORE_FIRST_KILL_S)
    for _ in range(2):
        victim = await busiest_broker(bootstrap, topics, exclude=set(killed))
        await asyncio.to_thread(cluster.kill, victim)
        killed.append(victim)
        history.note(f"broker {victim} killed (SIGKILL)")
        await asyncio.sleep(BROKER_DOWN_S)
        await asyncio.to_thread(cluster.restart, victim)
        history.note(f"broker {victim} restarted")
        await wait_fully_replicated(bootstrap, everything, f"broker {victim} back in every ISR")
        history.note("every partition has its 3 replicas in sync")
        await asyncio.sleep(BETWEEN_FAULTS_S)
    return killed


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalKafkaCluster]:
    # this process's own clients would log every refused connection to a node starting or
    # killed (the services log theirs, to their files)
    aiokafka_log = logging.getLogger("aiokafka")
    level = aiokafka_log.level
    aiokafka_log.setLevel(logging.CRITICAL)
    cluster = LocalKafkaCluster.create(tmp_path / "cluster", nodes=3, heap_mb=384)
    try:
        await asyncio.to_thread(cluster.start)
        yield cluster
    finally:
        await asyncio.to_thread(cluster.destroy)
        aiokafka_log.setLevel(level)


async def workflows_by_id(url: str) -> dict[str, str]:
    async with http_client(timeout=10) as http:
        r = await http.get(f"{url}/workflows", params={"limit": 10_000})
        r.raise_for_status()
        return {w["workflow_id"]: w["status"] for w in r.json()["workflows"]}


async def test_brokers_killed_under_load_lose_nothing_and_every_answer_holds(
    cluster: LocalKafkaCluster, tmp_path: Path
) -> None:
    """SIGKILL the broker leading the busiest partitions while HTTP and Kafka clients send
    commands and reviews run, restart it, then another: every acknowledged command has its
    events exactly once, nothing answered rejected was written, versions are 1..n, the read
    model equals the fold of the log, every workflow ends in one terminal status, and every
    service stays up."""
    bootstrap = cluster.bootstrap_servers
    prefix = unique("brokerloss") + "."
    settings = KafkaSettings(
        kafka_bootstrap_servers=bootstrap,
        topic_prefix=prefix,
        partitions=PARTITIONS,
        replication_factor=3,
    )
    await bootstrap_system_topics(settings)
    topics = Topics.from_settings(settings)
    durable = {"REPLICATION_FACTOR": "3"}
    store_url = f"sqlite:///{tmp_path / 'read.sqlite3'}"
    read_env = projector_env(bootstrap, prefix, store_url, **durable)
    services = {
        "command": ServiceProcess(
            "command_service",
            command_service_env(
                bootstrap, prefix, PARTITIONS, COMMAND_TIMEOUT_MS="5000", **durable
            ),
            tmp_path,
            "command",
        ),
        "projector": ServiceProcess("projector_service", read_env, tmp_path, "projector"),
        "query": ServiceProcess("query_service", read_env, tmp_path, "query"),
        "workflow": ServiceProcess(
            "workflow_service",
            {
                "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "TOPIC_PREFIX": prefix,
                "PARTITIONS": str(PARTITIONS),
                "GROUP_ID": f"{prefix}workflow-service",
                "SESSION_TIMEOUT_MS": "6000",
                "WORKFLOW_STORE_URL": f"sqlite:///{tmp_path / 'workflows.sqlite3'}",
                "REVIEWERS": "ann,ben,cid",
                # every review ends in bounded time: undecided ones are auto-rejected
                "REVIEW_REMINDER_AFTER_S": "4",
                "REVIEW_DEADLINE_AFTER_S": "8",
                "PUBLICATION_STEPS": "search_index",
                **durable,
            },
            tmp_path,
            "workflow",
        ),
    }
    history = History()
    stop = asyncio.Event()
    client = CommandClient(bootstrap, topics)
    try:
        for svc in services.values():
            svc.start()
        for svc in services.values():
            await svc.wait_healthy(timeout_s=90)
        await client.start()
        async with http_client(timeout=30) as http:
            r = await http.post(
                f"{services['command'].url}/authors",
                json={"author_id": "ed", "name": "Ed Itor", "email": "ed@example.org"},
            )
            assert r.status_code == 201, r.text
            over_http = HttpCommands(http, services["command"].url, history)
            over_kafka = KafkaCommands(client, history)
            history.started = time.monotonic()
            load = [
                *(http_author(over_http, n, stop, history, seed=n) for n in range(6)),
                *(kafka_author(over_kafka, n, stop, history, seed=100 + n) for n in range(2)),
                reader(services["query"].url, stop, history, seed=7),
            ]
            tasks = [asyncio.create_task(job) for job in load]
            try:
                killed = await chaos(cluster, topics, history)
            finally:
                stop.set()
                history.note("load stopped")
                results = await asyncio.gather(*tasks, return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            assert not errors, errors
            history.note("every client has its answers")
        exited = {name: s.proc.poll() for name, s in services.items() if s.proc is not None}
        exited = {name: code for name, code in exited.items() if code is not None}
        assert not exited, f"services exited under broker loss: {exited}"

        # Settle: every workflow ends (decisions, deadlines), the projector applies the log.
        async def workflows_finished() -> bool:
            statuses = await workflows_by_id(services["workflow"].url)
            return bool(statuses) and all(s in TERMINAL for s in statuses.values())

        await wait_until(workflows_finished, timeout_s=60, what="every workflow to finish")
        workflows = await workflows_by_id(services["workflow"].url)
        log = await read_all(bootstrap, topics.events, PARTITIONS, timeout_s=60)
        await wait_applied(store_url, log)
        history.note("settled")
        verdict = await check_history(
            bootstrap,
            prefix,
            PARTITIONS,
            history.sent,
            workflows=workflows,
            read_store_url=store_url,
        )
    finally:
        stop.set()
        await client.stop()
        for svc in services.values():
            await svc.stop()

    kinds = Counter(w.split(":", 1)[0] + ":" + s for w, s in workflows.items())
    print("faults:", *history.faults, sep="\n  ")  # noqa: T201
    print(f"brokers killed: {killed}; workflows: {dict(sorted(kinds.items()))}")  # noqa: T201
    print(  # noqa: T201
        f"HTTP answers and errors met: {dict(history.http)}; Kafka client retries: "
        f"{history.kafka_retries}; queries: {dict(history.queries)}"
    )
    print(f"answers per 5 s: {history.answers_per_window()}")  # noqa: T201
    print(f"longest time without an answer: {verdict.longest_without_answer_s:.1f}s")  # noqa: T201
    verdict.assert_clean()
    assert verdict.acknowledged > 0 and len(workflows) > 0
    assert not [s for s in history.queries if s.startswith("5")], history.queries
