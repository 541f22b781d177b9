"""End to end: HTTP command accepted -> visible in the query service, closed and open loop."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import aiohttp
import psutil

from bench.common import (
    Results,
    RssSampler,
    Sizes,
    broker_processes,
    percentile,
    service_env,
)
from esctl.localstack.services import ServiceProcess


async def scenario_end_to_end(
    bootstrap: str, sizes: Sizes, results: Results, workdir: Path, rss: RssSampler
) -> None:
    """Open loop: requests start on a fixed schedule whatever the answers; each creates a post
    over HTTP and reads it from the query service with the consistency token. The load
    generator (aiohttp, this process) shares the machine; its CPU use is reported too."""
    prefix = f"be2e-{uuid.uuid4().hex[:6]}."
    store_url = f"sqlite:///{workdir / 'e2e-read.sqlite3'}"
    env = service_env(bootstrap, prefix, READ_STORE_URL=store_url, CONSISTENCY_WAIT_MS="10000")
    cmd = ServiceProcess("command_service", env, workdir, "e2e-command")
    proj = ServiceProcess(
        "projector_service", env | {"GROUP_ID": f"{prefix}projector"}, workdir, "e2e-projector"
    )
    query = ServiceProcess("query_service", env, workdir, "e2e-query")
    cmd.start()
    await cmd.wait_healthy()
    proj.start()
    query.start()
    try:
        await proj.wait_healthy()
        await query.wait_healthy()
        for name, svc in (("command_service", cmd), ("projector", proj), ("query_service", query)):
            rss.watch(f"{name} (end to end)", svc.pid)
        connector = aiohttp.TCPConnector(limit=500)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            async with http.post(
                f"{cmd.url}/authors", json={"author_id": "e2e", "name": "E", "email": "e@x.y"}
            ) as r:
                assert r.status == 201, await r.text()
            best = 0
            # One client, sequential: the latency without queueing. It also warms the broker's
            # JIT and the services' caches, so the first open-loop rate is not a start-up figure.
            sequential = await _closed_loop(http, cmd.url, query.url, sizes.e2e_sequential)
            results.put(
                "e2e_sequential",
                requests=len(sequential),
                p50_ms=round(percentile(sequential, 0.5) * 1000, 1),
                p99_ms=round(percentile(sequential, 0.99) * 1000, 1),
            )
            me = psutil.Process()
            processes = {
                "command_service": psutil.Process(cmd.pid),
                "projector": psutil.Process(proj.pid),
                "query_service": psutil.Process(query.pid),
                "load_generator": me,
            } | broker_processes(bootstrap)
            for rate in sizes.e2e_rates:
                cpu0 = _cpu_seconds(processes)
                wall0 = time.perf_counter()
                latencies, errors, achieved = await _open_loop(
                    http, cmd.url, query.url, rate, sizes.e2e_seconds
                )
                cpu1 = _cpu_seconds(processes)
                wall = time.perf_counter() - wall0
                generator_cpu = (cpu1["load_generator"] - cpu0["load_generator"]) / wall
                answered = max(len(latencies), 1)
                cpu_ms = {
                    name: round((cpu1[name] - cpu0[name]) / answered * 1000, 2) for name in cpu1
                }
                sustained = (
                    errors == 0 and achieved >= 0.95 * rate and (percentile(latencies, 0.99) < 1.0)
                )
                best = rate if sustained else best
                results.put(
                    f"e2e_{rate}_per_s",
                    offered=rate,
                    achieved=round(achieved),
                    p50_ms=round(percentile(latencies, 0.5) * 1000, 1),
                    p95_ms=round(percentile(latencies, 0.95) * 1000, 1),
                    p99_ms=round(percentile(latencies, 0.99) * 1000, 1),
                    errors=errors,
                    sustained=sustained,
                    generator_cpu_cores=round(generator_cpu, 2),
                    # CPU (user + system) per answered command, by process, over the same
                    # interval: where the 2 cores go when the load is offered
                    cpu_ms_per_command=cpu_ms,
                )
            results.put("e2e_highest_sustained", commands_per_s=best)
    finally:
        for svc in (cmd, proj, query):
            await svc.stop()


def _cpu_seconds(processes: dict[str, psutil.Process]) -> dict[str, float]:
    out = {}
    for name, proc in processes.items():
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        out[name] = times.user + times.system
    return out


async def _create_then_read(
    http: aiohttp.ClientSession, cmd: str, query: str, post_id: str
) -> bool:
    """POST a post, then GET it from the query service with the consistency token."""
    async with http.post(
        f"{cmd}/posts", json={"post_id": post_id, "author_id": "e2e", "title": "t"}
    ) as created:
        if created.status != 201:
            return False
        token = created.headers["x-consistency-token"]
    async with http.get(f"{query}/posts/{post_id}", headers={"X-Consistency-Token": token}) as read:
        await read.read()
        return read.status == 200


async def _closed_loop(http: aiohttp.ClientSession, cmd: str, query: str, n: int) -> list[float]:
    latencies = []
    for i in range(n):
        start = time.perf_counter()
        if await _create_then_read(http, cmd, query, f"e2e-seq-{i}-{uuid.uuid4().hex[:6]}"):
            latencies.append(time.perf_counter() - start)
    return latencies


async def _open_loop(
    http: aiohttp.ClientSession, cmd: str, query: str, rate: int, seconds: float
) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    errors = 0
    n = int(rate * seconds)

    async def one(i: int) -> None:
        nonlocal errors
        start = time.perf_counter()
        post_id = f"e2e-{rate}-{i}-{uuid.uuid4().hex[:6]}"
        try:
            if not await _create_then_read(http, cmd, query, post_id):
                errors += 1
                return
            latencies.append(time.perf_counter() - start)
        except (aiohttp.ClientError, TimeoutError):
            errors += 1

    loop = asyncio.get_running_loop()
    t0 = loop.time()
    tasks = []
    for i in range(n):
        delay = t0 + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    # Beyond capacity the backlog would take minutes to drain: what is not done 10 s after the
    # last request was offered counts as an error (the load was not sustained).
    _, late = await asyncio.wait(tasks, timeout=10)
    for task in late:
        task.cancel()
    errors += len(late)
    elapsed = loop.time() - t0
    return latencies, errors, len(latencies) / elapsed
