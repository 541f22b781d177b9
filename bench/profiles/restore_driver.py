"""A driver for profiling the command service's restore (full replay, no snapshots).

    python -m bench.profiles.restore_driver [--bootstrap HOST:PORT] [--events 300000]
        [--profile out.txt] [--py-spy py-spy]

1. `--events` PostCreated events (one aggregate each, the bench's shape) are written to the
   events topic of a new system (6 partitions), as bench.recovery does;
2. one command-service process starts with snapshots off (optionally sampled from its start by
   `py-spy record -r 200 --format raw`); the clock runs until its /health reports all six
   partitions owned and none restoring.

Prints one JSON line: events/s restored, the process's CPU seconds, its RSS. With no
`--bootstrap` it starts (and destroys) a local broker. Not a bench scenario (bench.recovery is):
a tool for A/B runs on the restore path (see bench/profiles/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

from bench.common import event_log, service_env
from bench.recovery import all_partitions_restored
from esctl.localstack.kafka import LocalKafkaCluster
from esctl.localstack.services import ServiceProcess


async def restore(bootstrap: str, events: int, profile: str, py_spy: str) -> dict[str, object]:
    prefix = await event_log(bootstrap, events)
    workdir = Path(tempfile.mkdtemp(prefix="esctl-restore-"))
    svc = ServiceProcess(
        "command_service",
        service_env(bootstrap, prefix, SNAPSHOT_EVERY_EVENTS="0"),
        workdir,
        "restore",
    )
    start = time.perf_counter()
    svc.start()
    spy = None
    if profile and svc.pid:
        spy = subprocess.Popen(  # noqa: ASYNC220  # a sampler beside the run, stopped below
            [py_spy, "record", "-r", "200", "--format", "raw", "-o", profile, "--pid", str(svc.pid)]
        )
    try:
        await svc.wait_healthy(timeout_s=600)
        await all_partitions_restored(svc.url, 6, timeout_s=1800)
        seconds = time.perf_counter() - start
        process = psutil.Process(svc.pid)
        cpu = process.cpu_times()
        return {
            "events": events,
            "seconds": round(seconds, 2),
            "events_per_s": round(events / seconds),
            "cpu_s": round(cpu.user + cpu.system, 2),
            "cpu_us_per_event": round((cpu.user + cpu.system) / events * 1e6, 1),
            "rss_mb": round(process.memory_info().rss / 2**20, 1),
        }
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
        await svc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default="")
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--profile", default="", help="py-spy raw output file")
    parser.add_argument("--py-spy", default="py-spy")
    args = parser.parse_args()
    cluster = None
    bootstrap = args.bootstrap
    if not bootstrap:
        cluster = LocalKafkaCluster.create(
            Path(tempfile.mkdtemp(prefix="esctl-restore-kafka-")), nodes=1, heap_mb=512
        )
        cluster.start()
        bootstrap = cluster.bootstrap_servers
    try:
        print(json.dumps(asyncio.run(restore(bootstrap, args.events, args.profile, args.py_spy))))
    finally:
        if cluster is not None:
            cluster.destroy()


if __name__ == "__main__":
    main()
