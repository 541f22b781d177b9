"""Recovery and memory of the command service against the number of events in its log."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import psutil

from bench.common import Results, RssSampler, Sizes, event_log, register_author, service_env
from esctl.localstack.services import ServiceProcess
from shared.kafka.topics import Topics
from shared.settings import KafkaSettings


async def scenario_recovery(
    bootstrap: str, sizes: Sizes, results: Results, workdir: Path, rss: RssSampler
) -> None:
    """Time from a command-service process start until it has restored its partitions and
    answered a command, against the number of events (one aggregate each) in the log."""
    for n in sizes.recovery:
        prefix = await event_log(bootstrap, n)  # the rebuild scenario reads it again
        topics = Topics.from_settings(KafkaSettings(topic_prefix=prefix))
        svc = ServiceProcess(
            "command_service",
            service_env(bootstrap, prefix, SNAPSHOT_EVERY_EVENTS="0"),  # full replay
            workdir,
            f"recovery-{n}",
        )
        start = time.perf_counter()
        svc.start()
        try:
            await svc.wait_healthy(timeout_s=600)
            rss.watch(f"command_service (recovery {n:,})", svc.pid)
            # /health answers 200 before the group assigns anything (nothing is restoring
            # yet): wait until the process owns all six partitions and restores none.
            await all_partitions_restored(svc.url, 6, timeout_s=900)
            # Ready = its partitions are restored and it answers a command.
            await register_author(bootstrap, topics, "rec-author", wait_s=900)
            ready = time.perf_counter() - start
            info = psutil.Process(svc.pid).memory_info().rss if svc.pid else 0
            results.put(
                f"recovery_{n}_events",
                ready_s=round(ready, 2),
                events_per_s=round(n / ready),
                rss_mb=round(info / 2**20, 1),
            )
        finally:
            await svc.stop()
    if len(sizes.recovery) >= 2:
        small, large = sizes.recovery[0], sizes.recovery[-1]
        a = results.rows[f"recovery_{small}_events"]["rss_mb"]
        b = results.rows[f"recovery_{large}_events"]["rss_mb"]
        results.put("memory_per_100k_aggregates", mb=round((b - a) / ((large - small) / 1e5), 1))


async def all_partitions_restored(url: str, partitions: int, timeout_s: float) -> None:
    """Until the service's /health reports `partitions` owned and none restoring."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=5.0) as client:
        while True:
            body = (await client.get(f"{url}/health")).json()
            state = body.get("partitions", {})
            if len(state.get("owned", [])) == partitions and not state.get("restoring"):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"partitions not restored in {timeout_s} s: {state}")
            await asyncio.sleep(0.05)
