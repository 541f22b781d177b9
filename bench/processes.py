"""The command pipeline in 1 and in 2 command-service processes of one consumer group: does a
second process on the same machine add throughput?

Here the processes start first and the backlog comes after: with two processes, a backlog
waiting at start would be worked by whichever joined first, then rebalanced mid-run, and the row
would measure the rebalance. So: the author is registered, N processes start and the group
settles (Stable, N members); then the backlog is written in ONE transaction, which the services'
read_committed consumers see all at once when it commits. The clock runs as in the pipeline rows
(`bench/pipeline.py`): from the first command decided to the group's committed offsets at the
backlog's end. 1 and 2 processes alternate, `sizes.repeat` times each, pair by pair.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import datetime
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from bench.common import Results, RssSampler, Sizes, register_author, service_env, spread
from bench.pipeline import AUTHOR, _end_offsets, _first_records_after
from esctl.localstack.services import ServiceProcess
from shared.kafka import make_transactional_producer
from shared.kafka.clients import partition_for_key
from shared.kafka.topics import Topics
from shared.messages import encode_command
from shared.messages.blog import CreatePost
from shared.settings import KafkaSettings

PARTITIONS = 6
BATCH = 2000


async def _group_settled(bootstrap: str, group: str, members: int, timeout_s: float = 120) -> None:
    """Wait until the group is Stable with `members` members."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            described = await admin.describe_consumer_groups([group])
            for response in described:
                for (
                    _error,
                    group_id,
                    state,
                    _ptype,
                    _protocol,
                    group_members,
                    *_,
                ) in response.groups:
                    if group_id == group and state == "Stable" and len(group_members) == members:
                        return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"group {group} not Stable with {members} members in {timeout_s}s")
    finally:
        await admin.close()


async def _produce_in_one_transaction(bootstrap: str, topic: str, n: int) -> dict[int, int]:
    """n CreatePost in one transaction; how many went to each partition."""
    counts = dict.fromkeys(range(PARTITIONS), 0)
    producer = make_transactional_producer(bootstrap, f"bench-backlog-{uuid.uuid4().hex[:8]}")
    await producer.start()
    try:
        await producer.begin_transaction()
        futures = []
        for i in range(n):
            m = encode_command(
                CreatePost(author_id=AUTHOR, title=f"Post {i}", body="b" * 150, tags=["bench"]),
                command_id=uuid.uuid4(),
                aggregate_id=f"p-{uuid.uuid4().hex}",
            )
            partition = partition_for_key(m.key, PARTITIONS)
            counts[partition] += 1
            futures.append(
                await producer.send(
                    topic, m.value, key=m.key, headers=m.headers, partition=partition
                )
            )
        await asyncio.gather(*futures)
        await producer.commit_transaction()
    finally:
        await producer.stop()
    return counts


async def _wait_consumed(
    bootstrap: str, group: str, topic: str, target: dict[int, int], services: list[ServiceProcess]
) -> float:
    """Poll the group's committed offsets until every partition reached its target (the
    offsets after the backlog's records, its commit marker aside); the wall time it was seen."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + max(120.0, sum(target.values()) / 50)
        while time.monotonic() < deadline:
            offsets = await admin.list_consumer_group_offsets(group)
            committed = {tp.partition: m.offset for tp, m in offsets.items() if tp.topic == topic}
            if all(committed.get(p, -1) >= end for p, end in target.items()):
                return time.time()
            for svc in services:
                if svc.proc is not None and svc.proc.poll() is not None:
                    raise RuntimeError(f"command service exited:\n{svc.logs()[-3000:]}")
            await asyncio.sleep(0.02)
        raise TimeoutError(f"{group} did not commit {topic} to {target}")
    finally:
        await admin.close()


async def run_processes_once(
    bootstrap: str, n: int, processes: int, workdir: Path, rss: RssSampler
) -> float:
    """Commands/s of `processes` command-service processes in one group over n CreatePost."""
    prefix = f"bw{processes}-{uuid.uuid4().hex[:6]}."
    topics = Topics.from_settings(KafkaSettings(topic_prefix=prefix))
    group = f"{prefix}command-service"
    env = service_env(bootstrap, prefix, BATCH_MAX_RECORDS=str(BATCH), BATCH_MAX_WAIT_MS="20")
    services = [
        ServiceProcess("command_service", env, workdir, f"processes{processes}-{i}")
        for i in range(processes)
    ]
    try:
        services[0].start()
        await services[0].wait_healthy()
        await register_author(bootstrap, topics, AUTHOR)
        for svc in services[1:]:
            svc.start()
        for i, svc in enumerate(services):
            await svc.wait_healthy()
            rss.watch(f"command_service (pipeline, {processes} processes, #{i + 1})", svc.pid)
        await _group_settled(bootstrap, group, processes)
        results_start = await _end_offsets(bootstrap, topics.command_results)
        before = await _end_offsets(bootstrap, topics.commands)
        counts = await _produce_in_one_transaction(bootstrap, topics.commands, n)
        target = {p: before[p] + c for p, c in counts.items() if c}
        finished = await _wait_consumed(bootstrap, group, topics.commands, target, services)
    finally:
        for svc in services:
            await svc.stop()
    outcomes = await _first_records_after(bootstrap, topics.command_results, results_start)
    decided = [json.loads(r.value)["processed_at"] for r in outcomes]
    if not decided:
        raise RuntimeError("the processes wrote no outcome for the backlog")
    started = min(datetime.fromisoformat(d.replace("Z", "+00:00")).timestamp() for d in decided)
    return n / max(finished - started, 1e-6)


async def scenario_processes(
    bootstrap: str, sizes: Sizes, results: Results, workdir: Path, rss: RssSampler
) -> None:
    """Rows `pipeline_processes1` and `pipeline_processes2` (batch 2000, twice the pipeline
    rows' backlog), and the ratio of 2 to 1, the median of the pairs' ratios."""
    n = sizes.pipeline * 2
    rates: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(sizes.repeat):
        for processes in (1, 2):
            rates[processes].append(await run_processes_once(bootstrap, n, processes, workdir, rss))
    pairs = spread([two / one for one, two in zip(rates[1], rates[2], strict=True)])
    for processes, values in rates.items():
        s = spread(values)
        results.put(
            f"pipeline_processes{processes}",
            commands_per_s=round(s["median"]),
            min=round(s["min"]),
            max=round(s["max"]),
            runs=[round(v) for v in s["runs"]],
            commands=n,
            batch=BATCH,
            processes=processes,
            ratio_to_one=pairs["median"] if processes == 2 else 1.0,
            ratio_to_one_min=pairs["min"] if processes == 2 else 1.0,
            ratio_to_one_max=pairs["max"] if processes == 2 else 1.0,
        )
