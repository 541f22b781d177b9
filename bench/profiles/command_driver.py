"""A driver for profiling the command pipeline: a backlog written BEFORE the service starts.

    python -m bench.profiles.command_driver --bootstrap 127.0.0.1:9092 [--commands 50000]
        [--batch 2000] [--workers 1] [--profile out.txt] [--env NAME=VALUE ...]

1. a command-service process creates the topics, registers one author, and stops;
2. `--commands` CreatePost records (about 300 B, one new post each, murmur2 keys) are written
   to the commands topic;
3. `--workers` command-service processes start in one group (optionally one sampled by
   `py-spy record -r 200 --format raw`), and the clock runs from the first offset committed by
   the group to the last: commands/s = commands / that time.

Prints one JSON line. Not a bench scenario (bench.pipeline is): a tool for A/B runs while
working on the hot path (see bench/profiles/command-service.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psutil
from aiokafka import TopicPartition

from bench.common import register_author, service_env
from esctl.localstack.services import ServiceProcess
from shared.kafka import make_consumer, make_producer
from shared.kafka.clients import partition_for_key
from shared.kafka.topics import Topics
from shared.messages import encode_command
from shared.messages.blog import CreatePost
from shared.settings import KafkaSettings

PARTITIONS = 6


async def _committed_total(consumer: object, topic: str) -> int:
    total = 0
    for p in range(PARTITIONS):
        total += await consumer.committed(TopicPartition(topic, p)) or 0  # type: ignore[attr-defined]
    return total


async def _produce_creates(bootstrap: str, topic: str, n: int, author: str) -> None:
    producer = make_producer(bootstrap, linger_ms=20)
    await producer.start()
    try:
        futures = []
        for i in range(n):
            m = encode_command(
                CreatePost(author_id=author, title=f"Post {i}", body="b" * 150, tags=["bench"]),
                command_id=uuid.uuid4(),
                aggregate_id=f"p-{uuid.uuid4().hex}",
            )
            futures.append(
                await producer.send(
                    topic,
                    m.value,
                    key=m.key,
                    headers=m.headers,
                    partition=partition_for_key(m.key, PARTITIONS),
                )
            )
            if len(futures) >= 5000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def _cpu_s(procs: list[psutil.Process]) -> float:
    """User + system CPU seconds of the processes so far."""
    return sum(sum(p.cpu_times()[:2]) for p in procs)


async def run(args: argparse.Namespace) -> dict[str, object]:
    prefix = f"drv-{uuid.uuid4().hex[:6]}."
    topics = Topics.from_settings(KafkaSettings(topic_prefix=prefix))
    extra = dict(e.split("=", 1) for e in args.env)
    env = service_env(
        args.bootstrap,
        prefix,
        BATCH_MAX_RECORDS=str(args.batch),
        BATCH_MAX_WAIT_MS="20",
        **extra,
    )
    workdir = Path(tempfile.mkdtemp(prefix="cmd-driver-"))
    setup = ServiceProcess("command_service", env, workdir, "setup")
    setup.start()
    try:
        await setup.wait_healthy()
        await register_author(args.bootstrap, topics, "bench-author")
    finally:
        await setup.stop()
    await _produce_creates(args.bootstrap, topics.commands, args.commands, "bench-author")
    group = f"{prefix}command-service"
    probe = make_consumer(args.bootstrap, group_id=group)
    await probe.start()
    base = await _committed_total(probe, topics.commands)
    end = base + args.commands
    services = [
        ServiceProcess("command_service", env, workdir, f"worker-{i}") for i in range(args.workers)
    ]
    spy: subprocess.Popen[bytes] | None = None
    try:
        for svc in services:
            svc.start()
        if args.profile:
            spy = subprocess.Popen(  # noqa: ASYNC220  # a sampler beside the run, never awaited
                [
                    args.py_spy,
                    "record",
                    "-r",
                    "200",
                    "--format",
                    "raw",
                    "-o",
                    args.profile,
                    "-p",
                    str(services[0].pid),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        procs = [psutil.Process(svc.pid) for svc in services if svc.pid is not None]
        first: float | None = None
        first_done = base
        first_cpu = 0.0
        deadline = time.perf_counter() + args.timeout
        while time.perf_counter() < deadline:
            done = await _committed_total(probe, topics.commands)
            now = time.perf_counter()
            if first is None and done > base:
                first, first_done, first_cpu = now, done, _cpu_s(procs)
            if done >= end:
                cpu = _cpu_s(procs) - first_cpu
                break
            await asyncio.sleep(0.02)
        else:
            raise TimeoutError(f"{done - base} of {args.commands} committed in {args.timeout}s")
        assert first is not None
        elapsed = now - first
        # The first poll that sees progress already counts the first transaction: rate the rest.
        counted = end - first_done
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        for svc in services:
            await svc.stop()
        await probe.stop()
    return {
        "commands": args.commands,
        "workers": args.workers,
        "batch": args.batch,
        "seconds": round(elapsed, 3),
        "commands_per_s": round(counted / max(elapsed, 1e-6)),
        # CPU of the service processes (user + system) per command over the same interval:
        # what the machine's other load changes least
        "cpu_us_per_command": round(cpu / max(counted, 1) * 1e6, 1),
        "env": extra,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--commands", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--profile", help="py-spy raw output file (samples the first worker)")
    parser.add_argument("--py-spy", default="py-spy")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the service")
    print(json.dumps(asyncio.run(run(parser.parse_args()))))


if __name__ == "__main__":
    main()
