"""Where the time of ONE command goes: HTTP POST accepted -> visible in the query service.

Starts the command service, the projector (SQLite read store) and the query service as
processes on a running broker, then one sequential client: POST /posts, then GET /posts/{id}
with the X-Consistency-Token of the answer. With `--probe` every service runs under
`latency_probe.py`, which timestamps the stages (command produced, transaction phases, outcome
seen, projection applied, consistency wait), and the report splits each request's time.

A/B: `--variant NAME=TREE[,ENV=VALUE...]` runs the services from source tree TREE (a checkout,
put first on PYTHONPATH) with extra environment; the variants' runs are interleaved
(A B A B ...) so that they share the machine's mood.

    python bench/profiles/latency_driver.py --bootstrap 127.0.0.1:9092 --runs 3 \
        --variant base=/tmp/base --variant new=. --probe
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from esctl.localstack.services import ServiceProcess  # noqa: E402
from shared.kek import ensure_kek_file  # noqa: E402


class ProbedService(ServiceProcess):
    """A service process started under the probe, from a given source tree."""

    def __init__(self, module: str, env: dict[str, str], log_dir: Path, name: str, tree: Path):
        super().__init__(module, env, log_dir, name, cwd=tree)
        self.tree = tree

    def start(self) -> None:
        import subprocess  # noqa: PLC0415

        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "latency_probe.py")],
            env=self.env | {"PROBE_TARGET": self.module, "PYTHONPATH": str(self.tree)},
            cwd=self.tree,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        ServiceProcess._started.add(self.proc)


@dataclass
class Variant:
    name: str
    tree: Path
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class RunResult:
    variant: str
    totals: list[float]  # seconds, POST start -> GET answered
    posts: list[float]  # seconds, POST start -> POST answered
    stages: list[dict[str, float]]  # per request, segment name -> seconds


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def one_run(
    bootstrap: str, variant: Variant, n: int, warmup: int, probe: bool, workdir: Path
) -> RunResult:
    prefix = f"lat-{uuid.uuid4().hex[:6]}."
    store = workdir / f"{prefix}read.sqlite3"
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "TOPIC_PREFIX": prefix,
        "PARTITIONS": "6",
        "GROUP_ID": f"{prefix}command-service",
        "LOG_LEVEL": "warning",
        "SESSION_TIMEOUT_MS": "6000",
        "READ_STORE_URL": f"sqlite:///{store}",
        "KEY_STORE_URL": f"sqlite:///{workdir / (prefix + 'keys.sqlite3')}",
        "CONSISTENCY_WAIT_MS": "10000",
        "AUTH_ENABLED": "false",  # as bench.common.service_env: the pipeline, not the tokens
    } | variant.env
    files = {m: workdir / f"{prefix}{m}.probe" for m in ("cmd", "proj", "query")}

    def svc(module: str, short: str, extra: dict[str, str] | None = None) -> ProbedService:
        e = env | (extra or {}) | ({"PROBE_FILE": str(files[short])} if probe else {})
        return ProbedService(module, e, workdir, f"{prefix}{short}", variant.tree)

    cmd = svc("command_service", "cmd")
    proj = svc("projector_service", "proj", {"GROUP_ID": f"{prefix}projector"})
    query = svc("query_service", "query")
    marks: list[tuple[float, float, float]] = []
    cmd.start()
    try:
        await cmd.wait_healthy()
        proj.start()
        query.start()
        await proj.wait_healthy()
        await query.wait_healthy()
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            author = {"author_id": "lat", "name": "L", "email": "l@x.y"}
            async with http.post(f"{cmd.url}/authors", json=author) as r:
                assert r.status == 201, await r.text()
            for i in range(warmup + n):
                post_id = f"lat-{i}-{uuid.uuid4().hex[:6]}"
                t0 = time.time()
                body = {"post_id": post_id, "author_id": "lat", "title": "t"}
                async with http.post(f"{cmd.url}/posts", json=body) as created:
                    assert created.status == 201, await created.text()
                    token = created.headers["x-consistency-token"]
                    await created.read()
                t1 = time.time()
                headers = {"X-Consistency-Token": token}
                async with http.get(f"{query.url}/posts/{post_id}", headers=headers) as read:
                    await read.read()
                    assert read.status == 200, read.status
                t2 = time.time()
                if i >= warmup:
                    marks.append((t0, t1, t2))
    finally:
        for s in (cmd, proj, query):
            await s.stop()
    stages = split(marks, files) if probe else []
    return RunResult(
        variant.name,
        [t2 - t0 for t0, _, t2 in marks],
        [t1 - t0 for t0, t1, _ in marks],
        stages,
    )


def _read(path: Path) -> list[tuple[float, str]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        ts, _, stage = line.partition(" ")
        out.append((float(ts), stage))
    return out


def split(
    marks: list[tuple[float, float, float]], files: dict[str, Path]
) -> list[dict[str, float]]:
    """Per request, the segments of its time (seconds), from the stages logged in its window."""
    logged = sorted(x for f in files.values() for x in _read(f))
    result = []
    j = 0
    for t0, t1, t2 in marks:
        while j < len(logged) and logged[j][0] < t0:
            j += 1
        window = []
        k = j
        while k < len(logged) and logged[k][0] <= t2:
            window.append(logged[k])
            k += 1

        def first(
            stage: str, after: float = t0, w: list[tuple[float, str]] = window
        ) -> float | None:
            return next((t for t, s in w if s == stage and t >= after), None)

        def count(stage: str, w: list[tuple[float, str]] = window) -> int:
            return sum(1 for _, s in w if s == stage)

        seg: dict[str, float] = {}
        ts = {
            "client_send": first("cmd.client_send.in"),
            "produced": first("cmd.produce_command.out"),
            "fetched": first("proc.transact.in"),
            "send1_in": first("proc.send_all.in"),
        }
        if None in ts.values():
            continue
        send1_out = first("proc.send_all.out", ts["send1_in"])  # type: ignore[arg-type]
        send2_in = first("proc.send_all.in", send1_out or t2)
        send2_out = first("proc.send_all.out", send2_in or t2)
        offsets_in = first("proc.send_offsets.in", send2_out or t2)
        offsets_out = first("proc.send_offsets.out", offsets_in or t2)
        commit_in = first("proc.commit.in", offsets_out or t2)
        commit_out = first("proc.commit.out", commit_in or t2)
        outcome = first("cmd.outcome_seen", commit_out or t2)
        proj_in = first("proj.apply.in", commit_out or t2)
        db_out = first("proj.db_apply.out", proj_in or t2)
        wait_in = first("query.wait_for.in", t1)
        wait_out = first("query.wait_for.out", wait_in or t2)
        points = [
            ("http_in_to_client_send", t0, ts["client_send"]),
            ("produce_command", ts["client_send"], ts["produced"]),
            ("processor_fetch_wait", ts["produced"], ts["fetched"]),
            ("decide", ts["fetched"], ts["send1_in"]),
            ("send_events_txn_ack", ts["send1_in"], send1_out),
            ("after_send", send1_out, send2_in),
            ("send_outcome_ack", send2_in, send2_out),
            ("send_offsets", offsets_in, offsets_out),
            ("commit", commit_in, commit_out),
            ("outcome_follower_wait", commit_out, outcome),
            ("http_answer", outcome, t1),
            ("projector_fetch_wait", commit_out, proj_in),
            ("projector_db_apply", proj_in, db_out),
            ("get_to_wait_for", t1, wait_in),
            ("consistency_wait", wait_in, wait_out),
            ("wait_for_to_answer", wait_out, t2),
            ("visible_after_post_answer", t1, wait_out),
            ("visible_after_projection", db_out, wait_out),
            ("post_total", t0, t1),
            ("get_total", t1, t2),
        ]
        for name, a, b in points:
            if a is not None and b is not None:
                seg[name] = b - a
        seg["freshness_polls"] = count("query.freshness.in")
        seg["transactions"] = count("proc.commit.in")
        seg["skipped_commits"] = count("proc.commit_skipped.in")
        result.append(seg)
    return result


def summarize(results: list[RunResult]) -> dict[str, object]:
    by_variant: dict[str, list[RunResult]] = {}
    for r in results:
        by_variant.setdefault(r.variant, []).append(r)
    out: dict[str, object] = {}
    for name, runs in by_variant.items():
        p50s = [pct(r.totals, 0.5) * 1000 for r in runs]
        p99s = [pct(r.totals, 0.99) * 1000 for r in runs]
        post50 = [pct(r.posts, 0.5) * 1000 for r in runs]
        stages: dict[str, list[float]] = {}
        for r in runs:
            for seg in r.stages:
                for k, v in seg.items():
                    stages.setdefault(k, []).append(v)
        slowest = sorted(
            (seg for r in runs for seg in r.stages),
            key=lambda g: -g.get("post_total", 0) - g.get("get_total", 0),
        )[: max(1, len(runs) * 2)]
        out[name] = {
            "runs": len(runs),
            "slowest_ms": [
                {
                    k: round(v * (1 if k in _COUNTS else 1000), 1)
                    for k, v in g.items()
                    if k in _COUNTS or v > 0.003
                }
                for g in slowest
            ],
            "p50_ms_each": [round(x, 1) for x in p50s],
            "p99_ms_each": [round(x, 1) for x in p99s],
            "p50_ms": round(statistics.median(p50s), 1),
            "p99_ms": round(statistics.median(p99s), 1),
            "post_p50_ms": round(statistics.median(post50), 1),
            "stages_median_ms": {
                k: round(statistics.median(v) * (1 if k in _COUNTS else 1000), 2)
                for k, v in stages.items()
            },
            "stages_deciles_ms": {
                k: [round(pct(v, q / 10) * (1 if k in _COUNTS else 1000), 1) for q in range(1, 10)]
                for k, v in stages.items()
            },
            "stages_p90_ms": {
                k: round(pct(v, 0.9) * (1 if k in _COUNTS else 1000), 2) for k, v in stages.items()
            },
        }
    return out


_COUNTS = {"freshness_polls", "transactions", "skipped_commits"}


def parse_variant(spec: str) -> Variant:
    name, _, rest = spec.partition("=")
    tree, *pairs = rest.split(",")
    env = dict(p.split("=", 1) for p in pairs if p)
    return Variant(name, Path(tree).resolve(), env)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--variant", action="append", default=[])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--probe", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    variants = [parse_variant(v) for v in args.variant] or [Variant("this", HERE.parents[1])]
    results = []
    with tempfile.TemporaryDirectory(prefix="latency-") as tmp:
        # a tree whose key store wraps its keys needs a KEK (older trees ignore the variable)
        if not (os.environ.get("KEY_ENCRYPTION_KEY") or os.environ.get("KEY_ENCRYPTION_KEY_FILE")):
            ensure_kek_file(Path(tmp) / "key-encryption-key")
            os.environ["KEY_ENCRYPTION_KEY_FILE"] = str(Path(tmp) / "key-encryption-key")
        for i in range(args.runs):
            for v in variants:
                r = await one_run(
                    args.bootstrap, v, args.requests, args.warmup, args.probe, Path(tmp)
                )
                print(
                    f"run {i + 1} {v.name}: p50 {pct(r.totals, 0.5) * 1000:.1f} ms, "
                    f"p99 {pct(r.totals, 0.99) * 1000:.1f} ms",
                    file=sys.stderr,
                    flush=True,
                )
                results.append(r)
    summary = summarize(results)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    asyncio.run(main())
