"""A soak: the whole system under steady mixed traffic for half an hour, sampled over time.

    python -m bench.soak [--minutes 30] [--posts-per-s 10] [--queries-per-s 40]
                         [--sample-s 30] [--warmup-s 300] [--smoke] [--out bench/results]
                                                                        (also: make soak)

The four services run as processes on one broker (the environment's `KAFKA_BOOTSTRAP_SERVERS`,
or a local one started here), with SQLite read and workflow stores. Load is offered open loop (on
a fixed schedule, whatever the answers): every 1/`posts-per-s` seconds a post's life begins
(created, edited, half of them submitted for review; of those the reviewer approves 45 %,
rejects 40 %, and leaves 15 % to the review deadline); one in ten posts is written by a Kafka
client onto the commands topic instead of over HTTP. Queries run at their own rate: the recent
posts (70 %), a page of the list (20 %), and reads of a post just written with its consistency
token (10 %). Every `sample-s` the run records commands and queries per second with their p50
and p99, errors, the lag of each consumer group, the RSS of each service and of the broker, and
the workflows still running. At the end the load stops and the system drains (every workflow
terminal, every group's lag 0).

The memory slope of each process is the least-squares line through its RSS samples after the
warm-up, in MB per hour; with the posts created per hour it gives the bytes each post adds (the
command service keeps every live aggregate in memory, the workflow service every workflow: a
steady growth per post is that state, not a leak; growth without posts would be).

Writes `<out>/soak.json` and the soak section of `bench/RESULTS.md` (between its markers, the
rest of the file untouched); with `--smoke` (45 s, low rates) `<out>/RESULTS.soak.smoke.md`
instead. Nothing here asserts a speed: it is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.common import (
    ROOT,
    broker_processes,
    console,
    machine_facts,
    percentile,
    service_env,
    use_local_kek,
)
from bench.report import replace_soak_section
from esctl.localstack.kafka import LocalKafkaCluster
from esctl.localstack.services import ServiceProcess
from shared.errors import InfrastructureUnavailable
from shared.kafka.commands import CommandClient
from shared.kafka.lag import lag_report, list_groups
from shared.kafka.topics import Topics, bootstrap_system_topics
from shared.logging import configure_logging
from shared.messages import encode_command
from shared.messages.base import Command
from shared.messages.blog import ApprovePost, CreatePost, EditPost, RejectPost, SubmitPostForReview
from shared.settings import KafkaSettings
from workflow_service.model import TERMINAL

PARTITIONS = 6
AUTHOR = "soak-author"
SERVICES = ("command_service", "projector_service", "query_service", "workflow_service")
#: one HTTP request (or Kafka command) waits so long before it counts as an error
REQUEST_TIMEOUT_S = 30.0


@dataclass
class Plan:
    minutes: float = 30.0
    posts_per_s: float = 10.0
    queries_per_s: float = 40.0
    sample_s: float = 30.0
    warmup_s: float = 300.0
    #: the workflow service's review reminder and deadline (a review left alone ends by then)
    reminder_s: float = 20.0
    deadline_s: float = 40.0

    @classmethod
    def smoke(cls) -> Plan:
        return cls(
            minutes=0.75,
            posts_per_s=4.0,
            queries_per_s=10.0,
            sample_s=5.0,
            warmup_s=10.0,
            reminder_s=3.0,
            deadline_s=8.0,
        )


@dataclass
class Window:
    """What the clients saw since the last sample."""

    commands: list[float] = field(default_factory=list)
    queries: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


@dataclass
class Load:
    """The open-loop clients; their totals and the current window."""

    command_url: str
    query_url: str
    kafka: CommandClient
    plan: Plan
    rng: random.Random = field(default_factory=lambda: random.Random(19))  # noqa: S311
    window: Window = field(default_factory=Window)
    totals: Counter[str] = field(default_factory=Counter)
    #: posts created, newest last
    posts: list[str] = field(default_factory=list)
    #: the consistency token of each post's last accepted HTTP command (read your writes)
    tokens: dict[str, str | None] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def spawn(self, job: Any) -> None:
        task = asyncio.create_task(job)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def error(self, what: str) -> None:
        self.window.errors[what] += 1
        self.totals[f"error {what}"] += 1

    async def command(
        self, http: httpx.AsyncClient, method: str, path: str, body: dict[str, Any]
    ) -> tuple[str, str | None]:
        """One command over HTTP: ("accepted" | "rejected" | "pending" | "error", token)."""
        start = time.perf_counter()
        try:
            r = await http.request(method, f"{self.command_url}{path}", json=body)
        except httpx.HTTPError as exc:
            self.error(type(exc).__name__)
            return "error", None
        self.window.commands.append(time.perf_counter() - start)
        self.totals[f"command {r.status_code}"] += 1
        if r.status_code in (200, 201):
            return "accepted", r.headers.get("x-consistency-token")
        if r.status_code == 202:  # taken, no outcome within COMMAND_TIMEOUT_MS
            return "pending", None
        if 400 <= r.status_code < 500:
            return "rejected", None
        self.error(f"command {r.status_code}")
        return "error", None

    async def kafka_command(self, post: str, command: Command) -> str:
        """One command onto the commands topic, waiting for its outcome."""
        command_id = uuid.uuid4()
        message = encode_command(command, command_id=command_id, aggregate_id=post)
        start = time.perf_counter()
        try:
            outcome = await self.kafka.send(command_id, message, wait_s=REQUEST_TIMEOUT_S)
        except InfrastructureUnavailable:
            self.error("kafka client unavailable")
            return "error"
        if outcome is None:
            self.error("kafka no outcome")
            return "error"
        self.window.commands.append(time.perf_counter() - start)
        self.totals[f"kafka {outcome.status}"] += 1
        return "accepted" if outcome.status == "accepted" else "rejected"

    async def post_life(self, http: httpx.AsyncClient, n: int) -> None:
        """Create, edit, maybe submit for review and decide (or leave it to the deadline)."""
        rng = random.Random(n)  # noqa: S311  # a load, not a secret
        post = f"soak-{n}-{uuid.uuid4().hex[:8]}"
        over_kafka = rng.random() < 0.1
        if over_kafka:
            if await self.kafka_command(post, CreatePost(author_id=AUTHOR, title=post)) != (
                "accepted"
            ):
                return
            self.posts.append(post)
            self.totals["posts created"] += 1
            await self.kafka_command(post, EditPost(body=f"the body of {post}"))
        else:
            body = {"post_id": post, "author_id": AUTHOR, "title": post, "tags": ["soak"]}
            created, token = await self.command(http, "POST", "/posts", body)
            if created != "accepted":
                return
            self.posts.append(post)
            self.tokens[post] = token
            self.totals["posts created"] += 1
            edited, token = await self.command(
                http, "PATCH", f"/posts/{post}", {"body": f"the body of {post}"}
            )
            if edited == "accepted":
                self.tokens[post] = token
        if rng.random() >= 0.5:
            return
        if over_kafka:
            submitted = await self.kafka_command(post, SubmitPostForReview())
        else:
            submitted, _ = await self.command(http, "POST", f"/posts/{post}/submit", {})
        if submitted != "accepted":
            return
        self.totals["reviews submitted"] += 1
        roll = rng.random()
        if roll >= 0.85:  # left to the deadline: auto_rejected by the workflow service
            return
        await asyncio.sleep(rng.uniform(1.0, 3.0))
        approve = roll < 0.45
        if over_kafka:
            decision: Command = ApprovePost(reviewer="ann") if approve else RejectPost(reason="no")
            await self.kafka_command(post, decision)
        elif approve:
            await self.command(http, "POST", f"/posts/{post}/approve", {"reviewer": "ann"})
        else:
            await self.command(http, "POST", f"/posts/{post}/reject", {"reason": "not yet"})

    async def query(self, http: httpx.AsyncClient) -> None:
        roll = self.rng.random()
        headers: dict[str, str] = {}
        if not self.posts or 0.7 <= roll < 0.9:
            path = "/posts?limit=20"
        else:
            post = self.posts[-1 - self.rng.randrange(min(50, len(self.posts)))]
            path = f"/posts/{post}"
            token = self.tokens.get(post)
            if roll >= 0.9 and token:  # read your writes
                headers["X-Consistency-Token"] = token
        start = time.perf_counter()
        try:
            r = await http.get(f"{self.query_url}{path}", headers=headers)
        except httpx.HTTPError as exc:
            self.error(f"query {type(exc).__name__}")
            return
        self.window.queries.append(time.perf_counter() - start)
        self.totals[f"query {r.status_code}"] += 1
        if r.status_code >= 500:
            self.error(f"query {r.status_code} {_code(r)}")

    async def offer(self, until: float) -> None:
        """Start post lives and queries on their schedules until `until` (loop time)."""
        loop = asyncio.get_running_loop()
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits) as http:
            t0 = loop.time()
            posts = queries = 0
            while (now := loop.time()) < until:
                while t0 + posts / self.plan.posts_per_s <= now:
                    self.spawn(self.post_life(http, posts))
                    posts += 1
                while t0 + queries / self.plan.queries_per_s <= now:
                    self.spawn(self.query(http))
                    queries += 1
                await asyncio.sleep(0.01)
            self.totals["posts offered"] = posts
            self.totals["queries offered"] = queries
            # every life begun runs to its end (its review decided), on the same client
            while self.tasks:
                await asyncio.gather(*list(self.tasks))


def _code(r: httpx.Response) -> str:
    try:
        return str(r.json().get("code", ""))
    except ValueError:
        return ""


@dataclass
class Sample:
    t_s: float
    commands_per_s: float
    command_p50_ms: float
    command_p99_ms: float
    queries_per_s: float
    query_p50_ms: float
    query_p99_ms: float
    errors: int
    in_flight: int
    lag: dict[str, int]
    rss_mb: dict[str, float]
    workflows_running: int
    workflows: int
    #: the machine's 1-minute load average (other jobs on the machine show here)
    load_avg: float


class System:
    """The four services on one broker, watched from outside."""

    def __init__(self, bootstrap: str, workdir: Path, plan: Plan) -> None:
        self.bootstrap = bootstrap
        self.prefix = f"soak-{uuid.uuid4().hex[:6]}."
        self.topics = Topics.from_settings(KafkaSettings(topic_prefix=self.prefix))
        env = service_env(
            bootstrap,
            self.prefix,
            READ_STORE_URL=f"sqlite:///{workdir / 'soak-read.sqlite3'}",
            WORKFLOW_STORE_URL=f"sqlite:///{workdir / 'soak-workflows.sqlite3'}",
            REVIEWERS="ann,ben,cid",
            REVIEW_REMINDER_AFTER_S=str(plan.reminder_s),
            REVIEW_DEADLINE_AFTER_S=str(plan.deadline_s),
            PUBLICATION_STEPS="search_index",
        )
        self.services = {
            name: ServiceProcess(
                name, env | {"GROUP_ID": f"{self.prefix}{name}"}, workdir, f"soak-{name}"
            )
            for name in SERVICES
        }
        self.processes: dict[str, psutil.Process] = {}

    async def start(self) -> None:
        await bootstrap_system_topics(
            KafkaSettings(
                kafka_bootstrap_servers=self.bootstrap,
                topic_prefix=self.prefix,
                partitions=PARTITIONS,
            )
        )
        for svc in self.services.values():
            svc.start()
        for name, svc in self.services.items():
            await svc.wait_healthy(timeout_s=120)
            self.processes[name] = psutil.Process(svc.pid)
        self.processes |= broker_processes(self.bootstrap)

    async def stop(self) -> None:
        for svc in self.services.values():
            await svc.stop()

    def exited(self) -> dict[str, int]:
        return {
            name: code
            for name, svc in self.services.items()
            if svc.proc is not None and (code := svc.proc.poll()) is not None
        }

    def rss_mb(self) -> dict[str, float]:
        out = {}
        for name, proc in self.processes.items():
            with contextlib.suppress(psutil.Error):
                out[name.removesuffix("_service")] = round(proc.memory_info().rss / 2**20, 1)
        return out

    async def lag(self) -> dict[str, int]:
        """Records not yet consumed, summed per consumer group of this system."""
        groups = [g for g in await list_groups(self.bootstrap) if g.startswith(self.prefix)]
        report = await lag_report(
            self.bootstrap, groups, topic_prefix=self.prefix, with_seconds=False
        )
        total: Counter[str] = Counter()
        for row in report.rows:
            total[row.group.removeprefix(self.prefix)] += row.lag or 0
        return dict(sorted(total.items()))

    async def workflows(self, http: httpx.AsyncClient) -> dict[str, int]:
        r = await http.get(f"{self.services['workflow_service'].url}/workflows?limit=1")
        r.raise_for_status()
        counts: dict[str, int] = r.json()["counts"]
        return counts


def _sample(t_s: float, window: Window, seconds: float, **rest: Any) -> Sample:
    return Sample(
        t_s=round(t_s, 1),
        commands_per_s=round(len(window.commands) / seconds, 2),
        command_p50_ms=round(percentile(window.commands, 0.5) * 1000, 1),
        command_p99_ms=round(percentile(window.commands, 0.99) * 1000, 1),
        queries_per_s=round(len(window.queries) / seconds, 2),
        query_p50_ms=round(percentile(window.queries, 0.5) * 1000, 1),
        query_p99_ms=round(percentile(window.queries, 0.99) * 1000, 1),
        errors=sum(window.errors.values()),
        **rest,
    )


async def watch(system: System, load: Load, plan: Plan, t0: float, until: float) -> list[Sample]:
    """A sample every `plan.sample_s` until `until` (loop time); stops if a service exits."""
    loop = asyncio.get_running_loop()
    samples: list[Sample] = []
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S) as http:
        last = loop.time()
        while last < until:
            await asyncio.sleep(min(plan.sample_s, max(0.0, until - last)))
            now = loop.time()
            window, load.window = load.window, Window()
            if exited := system.exited():
                raise RuntimeError(f"services exited during the soak: {exited}")
            counts = await system.workflows(http)
            sample = _sample(
                now - t0,
                window,
                now - last,
                in_flight=len(load.tasks),
                lag=await system.lag(),
                rss_mb=system.rss_mb(),
                workflows_running=sum(n for s, n in counts.items() if s not in TERMINAL),
                workflows=sum(counts.values()),
                load_avg=round(os.getloadavg()[0], 2),
            )
            samples.append(sample)
            last = now
            console.print(
                f"t={sample.t_s:6.0f}s commands/s={sample.commands_per_s:6.1f} "
                f"p99={sample.command_p99_ms:7.1f}ms queries/s={sample.queries_per_s:6.1f} "
                f"errors={sample.errors} in_flight={sample.in_flight} lag={sample.lag} "
                f"rss={sample.rss_mb} workflows_running={sample.workflows_running}"
            )
    return samples


async def drain(system: System, timeout_s: float) -> dict[str, Any]:
    """After the load: every workflow terminal and every group caught up; how long it took."""
    started = time.monotonic()
    counts: dict[str, int] = {}
    lag: dict[str, int] = {}
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S) as http:
        while time.monotonic() - started < timeout_s:
            counts = await system.workflows(http)
            lag = await system.lag()
            if not set(counts) - TERMINAL and not any(lag.values()):
                return {"seconds": round(time.monotonic() - started, 1), "workflows": counts}
            await asyncio.sleep(1.0)
    raise TimeoutError(
        f"the system did not drain within {timeout_s:.0f}s: workflows {counts}, lag {lag}"
    )


def memory_slopes(samples: list[Sample], warmup_s: float) -> dict[str, dict[str, float]]:
    """Per process: RSS after the warm-up and at the end, and the least-squares slope, MB/h."""
    after = [s for s in samples if s.t_s >= warmup_s] or samples[-2:]
    out: dict[str, dict[str, float]] = {}
    for name in sorted({n for s in after for n in s.rss_mb}):
        points = [(s.t_s / 3600, s.rss_mb[name]) for s in after if name in s.rss_mb]
        if len(points) < 2:
            continue
        hours, mb = zip(*points, strict=True)
        slope = statistics.linear_regression(hours, mb).slope
        out[name] = {"start_mb": mb[0], "end_mb": mb[-1], "peak_mb": max(mb), "mb_per_h": slope}
    return out


@contextlib.asynccontextmanager
async def broker(workdir: Path) -> AsyncIterator[str]:
    """The environment's broker, or a local one of this run (heap 512 MB)."""
    if bootstrap := os.environ.get("KAFKA_BOOTSTRAP_SERVERS", ""):
        yield bootstrap
        return
    cluster = LocalKafkaCluster.create(workdir / "kafka", nodes=1, heap_mb=512)
    await asyncio.to_thread(cluster.start)
    try:
        yield cluster.bootstrap_servers
    finally:
        await asyncio.to_thread(cluster.destroy)


async def main(plan: Plan) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="esctl-soak-"))
    use_local_kek(workdir)
    async with broker(workdir) as bootstrap:
        system = System(bootstrap, workdir, plan)
        kafka = CommandClient(bootstrap, system.topics)
        try:
            await system.start()
            await kafka.start()
            async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S) as http:
                r = await http.post(
                    f"{system.services['command_service'].url}/authors",
                    json={"author_id": AUTHOR, "name": "Soak", "email": "soak@example.org"},
                )
                r.raise_for_status()
            load = Load(
                system.services["command_service"].url,
                system.services["query_service"].url,
                kafka,
                plan,
            )
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            until = t0 + plan.minutes * 60
            offering = asyncio.create_task(load.offer(until))
            samples = await watch(system, load, plan, t0, until)
            await asyncio.wait_for(offering, timeout=plan.deadline_s + 4 * REQUEST_TIMEOUT_S)
            drained = await drain(system, timeout_s=max(120.0, 3 * plan.deadline_s))
            final = {"rss_mb": system.rss_mb(), "lag": await system.lag()}
            if exited := system.exited():
                raise RuntimeError(f"services exited during the soak: {exited}")
        finally:
            await kafka.stop()
            await system.stop()
    seconds = plan.minutes * 60
    posts = load.totals["posts created"]
    return {
        "machine": machine_facts(),
        "plan": asdict(plan),
        "totals": dict(sorted(load.totals.items())),
        "posts_per_hour": round(posts / seconds * 3600),
        "samples": [asdict(s) for s in samples],
        "memory": memory_slopes(samples, plan.warmup_s),
        "drain": drained,
        "final": final,
    }


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float]) -> str:
    """One character per value, scaled between the values' min and max."""
    if not values:
        return ""
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(SPARKS[min(7, int((v - low) / span * 8))] for v in values)


def markdown(result: dict[str, Any], smoke: bool) -> str:
    plan, totals, samples = result["plan"], result["totals"], result["samples"]
    machine = result["machine"]
    commands = [s["commands_per_s"] for s in samples]
    posts = totals.get("posts created", 0)
    per_hour = result["posts_per_hour"]
    lines = [
        "## Soak: the whole system under steady mixed traffic"
        + (" (SMOKE: 45 s, low rates)" if smoke else ""),
        "",
        f"`python -m bench.soak` (`make soak`), {machine['when']}, {machine['cpus']} cores, "
        f"Kafka {machine['kafka']}, one broker (512 MB heap), SQLite read and workflow stores: "
        f"{plan['minutes']:g} minutes offering {plan['posts_per_s']:g} new posts/s (create, "
        f"edit, half submitted for review: approved, rejected or left to the "
        f"{plan['deadline_s']:g}-s deadline; one in ten over a Kafka client) and "
        f"{plan['queries_per_s']:g} queries/s, sampled every {plan['sample_s']:g} s; memory "
        f"slopes from the samples after {plan['warmup_s']:g} s of warm-up.",
        "",
        f"Totals: {posts:,} posts created ({per_hour:,}/h), "
        + ", ".join(f"{k}: {v:,}" for k, v in totals.items() if k != "posts created")
        + f". Commands per second over the run: median {statistics.median(commands):.1f}, "
        f"command p99 at most {max(s['command_p99_ms'] for s in samples):,.0f} ms, "
        f"query p99 at most {max(s['query_p99_ms'] for s in samples):,.0f} ms; "
        f"drained (every workflow terminal, every lag 0) {result['drain']['seconds']} s after "
        "the load stopped. The machine's 1-minute load average: median "
        f"{statistics.median(s['load_avg'] for s in samples):.1f}, max "
        f"{max(s['load_avg'] for s in samples):.1f}.",
        "",
        "| process | RSS after warm-up, MB | at the end, MB | peak, MB | slope, MB/h | "
        "bytes per post created | RSS over time |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, m in result["memory"].items():
        per_post = m["mb_per_h"] * 2**20 / per_hour if per_hour else float("nan")
        trend = sparkline([s["rss_mb"][name] for s in samples if name in s["rss_mb"]])
        lines.append(
            f"| {name} | {m['start_mb']:.1f} | {m['end_mb']:.1f} | {m['peak_mb']:.1f} | "
            f"{m['mb_per_h']:+.1f} | {per_post:,.0f} | `{trend}` |"
        )
    groups = sorted({g for s in samples for g in s["lag"]})
    lines += [
        "",
        "Lag of each consumer group over time (records not yet consumed, at each sample; "
        "min..max):",
        "",
        "| group | lag over time | max |",
        "|---|---|---:|",
    ]
    for group in groups:
        values = [s["lag"].get(group, 0) for s in samples]
        lines.append(f"| {group} | `{sparkline(values)}` | {max(values):,} |")
    step = max(1, len(samples) // 15)
    lines += [
        "",
        "| t, s | commands/s | command p50 / p99, ms | queries/s | query p50 / p99, ms | "
        "errors | lag (sum) | workflows running | RSS command / projector / query / workflow, "
        "MB | load average |",
        "|---:|---:|---|---:|---|---:|---:|---:|---|---:|",
    ]
    for s in samples[::step]:
        rss = " / ".join(
            f"{s['rss_mb'].get(n, float('nan')):.0f}"
            for n in ("command", "projector", "query", "workflow")
        )
        lines.append(
            f"| {s['t_s']:.0f} | {s['commands_per_s']:.1f} | {s['command_p50_ms']:.0f} / "
            f"{s['command_p99_ms']:.0f} | {s['queries_per_s']:.1f} | {s['query_p50_ms']:.0f} / "
            f"{s['query_p99_ms']:.0f} | {s['errors']} | {sum(s['lag'].values()):,} | "
            f"{s['workflows_running']} | {rss} | {s['load_avg']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=None)
    parser.add_argument("--posts-per-s", type=float, default=None)
    parser.add_argument("--queries-per-s", type=float, default=None)
    parser.add_argument("--sample-s", type=float, default=None)
    parser.add_argument("--warmup-s", type=float, default=None)
    parser.add_argument("--smoke", action="store_true", help="45 s at low rates: checks it runs")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    plan = Plan.smoke() if args.smoke else Plan()
    for name in ("minutes", "posts_per_s", "queries_per_s", "sample_s", "warmup_s"):
        value = getattr(args, name)
        if value is not None:
            if value <= 0 and name != "warmup_s":
                parser.error(f"--{name.replace('_', '-')} must be positive")
            setattr(plan, name, value)
    configure_logging("console", "warning")
    result = asyncio.run(main(plan))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(result, indent=2, default=str))
    section = markdown(result, args.smoke)
    target = args.out / "RESULTS.soak.smoke.md" if args.smoke else ROOT / "bench" / "RESULTS.md"
    existing = target.read_text() if target.exists() and not args.smoke else ""
    target.write_text(replace_soak_section(existing, section))
    console.print(f"wrote {args.out / 'soak.json'} and {target}")


if __name__ == "__main__":
    cli()
