"""Network faults between the command service and the broker (issue 19, item 2), with Toxiproxy.

A broker of this module's own has two client listeners: PLAINTEXT, reached directly (the
test's own clients, the checker, a second command-service instance), and PROXIED, advertised
as the address of a Toxiproxy proxy in front of it. A command service given the proxy as its
bootstrap server learns the proxy's address from the metadata too, so every connection it makes
(its producers, its consumers, the group and transaction coordinators) goes through the proxy,
where the test adds latency, resets connections, or cuts it off.

Clients send commands over HTTP and retry with the same Idempotency-Key until the answer is
definite (201/200 accepted, a 4xx rejection), as a client of this API should; the checker of
tests/faults/checker.py then reads the log and prints its counts. Each case asserts a clean
history, and what the service shows while the fault lasts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from esctl.localstack.kafka import LocalKafkaCluster, free_port
from tests.conftest import unique
from tests.e2e.harness import ServiceProcess, command_service_env, http_client
from tests.faults.checker import Sent, check_history, command_id_for
from tests.faults.toxiproxy import Proxy, ToxiproxyServer
from tests.kafka_helpers import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.faults]

PARTITIONS = 3
#: the shortest the settings allow: partitions of a cut-off instance move after 6 s
SESSION_TIMEOUT_MS = 6000
#: the subject of `http_client()`'s admin token: the scope of its Idempotency-Keys
SUBJECT = "e2e-admin"


@dataclass
class ProxiedKafka:
    """The module's broker: `direct` for whoever must not be disturbed, `proxied` (through
    `proxy`) for the service under test."""

    direct: str
    proxied: str
    proxy: Proxy


@pytest.fixture(scope="module")
def proxied_kafka(toxiproxy_server: ToxiproxyServer) -> Iterator[ProxiedKafka]:
    cluster = LocalKafkaCluster.create(
        Path(tempfile.mkdtemp(prefix="esctl-test-kafka-faults-")), nodes=1, heap_mb=384
    )
    try:
        listen = f"127.0.0.1:{free_port()}"
        upstream = cluster.add_proxied_listener(1, advertised=listen)
        cluster.start()
        proxy = toxiproxy_server.proxy("kafka", listen, f"127.0.0.1:{upstream}")
        yield ProxiedKafka(cluster.bootstrap_servers, listen, proxy)
    finally:
        cluster.destroy()


# -- clients that retry until the answer is definite -------------------------------------------


@dataclass
class Load:
    """Writers, each renaming its own author over and over through `urls` (an attempt that
    gets no definite answer is retried on the next url, with the same Idempotency-Key), and
    what they were told. `phase` names the fault of the moment: each command is counted in the
    phase it was first sent in."""

    urls: list[str]
    phase: str = "before"
    sent: list[Sent] = field(default_factory=list)
    phases: dict[str, list[Sent]] = field(default_factory=lambda: defaultdict(list))
    #: the answers to single attempts, by status ("transport" when none came)
    attempts: Counter[str] = field(default_factory=Counter)
    attempt_timeout_s: float = 15.0
    give_up_after_s: float = 120.0
    #: round robin over `urls`, as a load balancer would: each command starts on the next one
    turn: Iterator[int] = field(default_factory=itertools.count)

    async def command(
        self, http: httpx.AsyncClient, method: str, path: str, body: dict[str, Any], key: str
    ) -> Sent:
        aggregate = path.split("/")[2] if path.count("/") >= 2 else str(body["author_id"])
        sent = Sent(command_id_for(key, SUBJECT), aggregate, "unknown", attempts=0)
        sent.first_sent_at = time.monotonic()
        self.phases[self.phase].append(sent)
        backoff, first = 0.1, next(self.turn)
        while time.monotonic() - sent.first_sent_at < self.give_up_after_s:
            url = self.urls[(first + sent.attempts) % len(self.urls)]
            sent.attempts += 1
            try:
                r = await http.request(
                    method,
                    url + path,
                    json=body,
                    headers={"Idempotency-Key": key},
                    timeout=self.attempt_timeout_s,
                )
            except httpx.TransportError as exc:
                self.attempts[f"transport ({type(exc).__name__})"] += 1
            else:
                self.attempts[str(r.status_code)] += 1
                if r.status_code in (200, 201):
                    sent.answer = "accepted"
                elif 400 <= r.status_code < 500 and r.status_code not in (408, 429):
                    sent.answer = "rejected"
                if sent.answer != "unknown":
                    sent.answered_at = time.monotonic()
                    return sent
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)
        return sent

    async def writer(self, n: int, stop: asyncio.Event) -> None:
        author = f"writer-{n}"
        async with http_client() as http:
            sent = await self.command(
                http,
                "POST",
                "/authors",
                {"author_id": author, "name": "W", "email": f"{author}@example.org"},
                f"{author}-0",
            )
            self.sent.append(sent)
            version = 1
            while not stop.is_set():
                version += 1
                sent = await self.command(
                    http,
                    "PATCH",
                    f"/authors/{author}",
                    {"name": f"W{version}"},
                    f"{author}-{version}",
                )
                self.sent.append(sent)

    @contextlib.asynccontextmanager
    async def running(self, writers: int = 4) -> AsyncIterator[Load]:
        """The writers run for the duration of the block; leaving it waits for each one's
        command in flight to get its definite answer (or to give up)."""
        stop = asyncio.Event()
        tasks = [asyncio.create_task(self.writer(n, stop)) for n in range(writers)]
        try:
            yield self
        finally:
            stop.set()
            await asyncio.gather(*tasks)

    def report(self) -> str:
        lines = [f"attempts answered: {dict(sorted(self.attempts.items()))}"]
        for phase, sent in self.phases.items():
            waits = [s.answered_at - s.first_sent_at for s in sent if s.answered_at is not None]
            median = f"{statistics.median(waits):.2f}s" if waits else "-"
            answers = Counter(s.answer for s in sent)
            lines.append(
                f"phase {phase!r}: commands {len(sent)} {dict(answers)}, "
                f"median time to a definite answer {median}, "
                f"attempts {sum(s.attempts for s in sent)}"
            )
        return "\n".join(lines)


# -- the service ---------------------------------------------------------------------------------


async def health(svc: ServiceProcess) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient() as http:
        try:
            r = await http.get(f"{svc.url}/health", timeout=10)
        except httpx.TransportError as exc:
            return 0, {"error": repr(exc)}
    return r.status_code, r.json()


async def wait_for_health(
    svc: ServiceProcess,
    wanted: Callable[[int, dict[str, Any]], bool],
    what: str,
    timeout_s: float = 60.0,
) -> dict[str, Any]:
    """Poll /health until `wanted(status, body)`; the body that satisfied it."""
    seen: list[dict[str, Any]] = []

    async def check() -> bool:
        status, body = await health(svc)
        seen[:] = [body | {"http_status": status}]
        return wanted(status, body)

    try:
        await wait_until(check, timeout_s=timeout_s, interval_s=0.5, what=what)
    except TimeoutError as exc:
        raise AssertionError(f"{what}: last /health was {seen}") from exc
    return seen[0]


def owned(body: dict[str, Any]) -> set[int]:
    return set(body.get("partitions", {}).get("owned", []))


@contextlib.asynccontextmanager
async def command_services(
    tmp_path: Path, prefix: str, *bootstraps: str, **extra: str
) -> AsyncIterator[list[ServiceProcess]]:
    """One command-service instance per bootstrap address (one group), started in turn;
    `extra`: more settings of each."""
    services = []
    try:
        for n, bootstrap in enumerate(bootstraps):
            env = command_service_env(
                bootstrap,
                prefix,
                PARTITIONS,
                SESSION_TIMEOUT_MS=str(SESSION_TIMEOUT_MS),
                **extra,
            )
            svc = ServiceProcess("command_service", env, tmp_path, f"command-service-{n}")
            services.append(svc)
            svc.start()
            await svc.wait_healthy(timeout_s=90)
        yield services
    finally:
        for svc in services:
            await svc.stop()


async def judged(kafka: ProxiedKafka, prefix: str, load: Load) -> None:
    """Print what the clients were told and the checker's counts; assert a clean history in
    which every command got a definite answer."""
    print(load.report())  # noqa: T201  # the test's output
    verdict = await check_history(kafka.direct, prefix, PARTITIONS, load.sent)
    verdict.assert_clean()
    assert verdict.unknown == 0, verdict.summary()
    for phase, sent in load.phases.items():
        assert any(s.answer == "accepted" for s in sent), f"nothing accepted in phase {phase!r}"


async def during(seconds: float, *checks: Awaitable[Any]) -> None:
    """Let the load run for `seconds` (and `checks` meanwhile)."""
    await asyncio.gather(asyncio.sleep(seconds), *checks)


# -- the cases -----------------------------------------------------------------------------------


async def test_latency_to_the_broker_slows_answers_and_the_history_stays_clean(
    proxied_kafka: ProxiedKafka, tmp_path: Path
) -> None:
    """100 ms, then 1 s added to every answer of the broker to the command service (each
    transaction is several round trips): answers come slower, some only after a 202 and a
    retry, all of them definite, and the log holds each accepted command once."""
    kafka, prefix = proxied_kafka, unique("lat") + "."
    await kafka.proxy.reset()
    async with command_services(tmp_path, prefix, kafka.proxied) as [svc]:
        load = Load([svc.url])
        async with load.running():
            await during(3)
            load.phase = "latency 100 ms"
            async with kafka.proxy.toxic("latency", latency=100):
                await during(6)
            load.phase = "latency 1 s"
            async with kafka.proxy.toxic("latency", latency=1000):
                await during(10)
            load.phase = "after"
            await during(3)
        await wait_for_health(svc, lambda s, _: s == 200, "the service healthy after latency")
    await judged(kafka, prefix, load)


async def test_connections_reset_mid_transaction_lose_nothing_and_write_nothing_twice(
    proxied_kafka: ProxiedKafka, tmp_path: Path
) -> None:
    """Every connection of the command service reset by the peer (TCP RST) 200 ms into it,
    three times under load. aiokafka reconnects and resends the requests a reset cut (the
    broker drops an idempotent producer's resent batch it already has); a request that fails
    for good aborts its transaction, which is redone from its first record; clients retry with
    their key. Nothing is lost or written twice. (How many transactions aborted is printed:
    none, in the runs so far.)"""
    kafka, prefix = proxied_kafka, unique("rst") + "."
    await kafka.proxy.reset()
    async with command_services(tmp_path, prefix, kafka.proxied) as [svc]:
        load = Load([svc.url])
        async with load.running():
            await during(3)
            for n in range(3):
                load.phase = f"resets {n + 1}"
                async with kafka.proxy.toxic("reset_peer", timeout=200):
                    await during(1.5)
                await during(3)
            load.phase = "after"
            await during(2)
        await wait_for_health(svc, lambda s, _: s == 200, "the service healthy after resets")
        aborted = svc.logs().count("transaction_aborted_retrying")
    print(f"transactions aborted and retried: {aborted}")  # noqa: T201
    await judged(kafka, prefix, load)


async def test_an_instance_cut_off_longer_than_its_session_is_fenced_and_rejoins(
    proxied_kafka: ProxiedKafka, tmp_path: Path
) -> None:
    """Two instances in one group, the first behind the proxy. Cut off for longer than its
    session timeout, the first one answers /health 503 with the reason, and its partitions
    move to the second; when the link is back it is fenced (what it had started is refused),
    rejoins and takes partitions again, without a restart; the history is clean."""
    kafka, prefix = proxied_kafka, unique("cut") + "."
    await kafka.proxy.reset()
    everything = set(range(PARTITIONS))
    # a cut shorter than the default 10 s would only delay answers: 3 s shows the 503
    async with command_services(
        tmp_path, prefix, kafka.proxied, kafka.direct, ENQUEUE_TIMEOUT_MS="3000"
    ) as [cut, other]:
        for svc in (cut, other):
            await wait_for_health(svc, lambda s, b: s == 200 and bool(owned(b)), "owns some")
        pid = cut.pid
        load = Load([cut.url, other.url])
        async with load.running():
            await during(3)
            # a slow link first (300 ms a round trip), so that the instance is inside a
            # transaction when the link breaks: the writes it retries afterwards are refused
            load.phase = "slow, then cut off"
            async with kafka.proxy.toxic("latency", latency=300):
                await during(2)
                async with kafka.proxy.cut():
                    degraded = await wait_for_health(
                        cut, lambda s, _: s == 503, "the cut-off instance reporting it"
                    )
                    await wait_for_health(
                        other,
                        lambda s, b: s == 200 and owned(b) == everything,
                        "the partitions moving to the other instance",
                    )
                load.phase = "healed"
            rejoined = await wait_for_health(
                cut, lambda s, b: s == 200 and bool(owned(b)), "the instance rejoining"
            )
            await during(3)
        assert cut.pid == pid and cut.proc is not None and cut.proc.poll() is None
        logs = cut.logs()
    print(f"/health while cut off: {degraded}")  # noqa: T201
    print(f"/health after: {rejoined}")  # noqa: T201
    fenced, revoked = logs.count('"partition_fenced"'), logs.count('"reason": "revoked"')
    # The new owner's fence (InitProducerId) always bumps the epoch of the partitions'
    # transactional ids; the old owner meets it (`partition_fenced`: a write refused) when it
    # had a transaction in flight at the cut, else the rebalance revokes its partitions first.
    print(f"cut-off instance: partitions fenced {fenced}, revoked {revoked}")  # noqa: T201
    assert fenced + revoked > 0, "the cut-off instance never let go of its partitions"
    assert degraded["status"] == "unavailable" and "did not answer" in degraded["kafka"]
    await judged(kafka, prefix, load)
