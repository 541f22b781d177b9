"""The partition-owned transactional processor against a real broker."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from shared.kafka import (
    InboundRecord,
    OutboundRecord,
    TransactionalPartitionProcessor,
)
from tests.conftest import TopicFactory, unique
from tests.kafka_helpers import committed_offsets, end_offsets, produce, read_all, wait_until

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def start_doubler(
    bootstrap: str, inp: str, out: str, group: str, *extra: str
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.integration.apps.doubler",
            "--bootstrap",
            bootstrap,
            "--input",
            inp,
            "--output",
            out,
            "--group",
            group,
            *extra,
        ],
        cwd=ROOT,
    )


async def wait_exit(proc: subprocess.Popen[bytes], timeout_s: float) -> int:
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.run_in_executor(None, proc.wait), timeout_s)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_kill_between_produce_and_commit_then_restart_yields_each_output_exactly_once(
    kafka_bootstrap: str, make_topic: TopicFactory
) -> None:
    """SIGKILL inside a transaction (outputs sent, not committed), restart: read_committed
    readers see every output exactly once, on its input's partition, although the raw log
    holds the aborted copies."""
    inp = await make_topic("in", partitions=2)
    out = await make_topic("out", partitions=2)
    group = unique("g")
    n = 300
    # Record i on partition i % 2 whatever its key hashes to: the output partition must follow
    # the input's partition, which for about half the keys differs from the key's hash.
    for partition in (0, 1):
        records = [(f"k{i}".encode(), f"v{i}".encode()) for i in range(partition, n, 2)]
        await produce(kafka_bootstrap, inp, records, partition=partition)

    crashed = start_doubler(kafka_bootstrap, inp, out, group, "--kill-at-txn", "3")
    try:
        code = await wait_exit(crashed, 90)
    finally:
        stop(crashed)
    assert code == -9, "the first process should have killed itself inside a transaction"

    restarted = start_doubler(kafka_bootstrap, inp, out, group)
    try:
        input_ends = await end_offsets(kafka_bootstrap, inp, 2)

        async def all_consumed() -> bool:
            done = await committed_offsets(kafka_bootstrap, group, inp, 2)
            return all(done[p] == input_ends[p] for p in range(2))

        await wait_until(all_consumed, timeout_s=90, what="restarted processor to commit all input")
    finally:
        stop(restarted)

    committed = await read_all(kafka_bootstrap, out, 2)
    values = Counter(r.value for r in committed)
    assert len(committed) == n
    assert values == Counter(f"v{i}:out".encode() for i in range(n))
    # each output has its input's key, on its input's partition number
    placed = sorted((r.key or b"", r.value or b"", r.partition) for r in committed)
    assert placed == sorted((f"k{i}".encode(), f"v{i}:out".encode(), i % 2) for i in range(n))
    raw = await read_all(kafka_bootstrap, out, 2, isolation_level="read_uncommitted")
    assert len(raw) > n, "the killed transaction's outputs should be in the log, aborted"


class Recorder:
    """Handler that tags outputs with its name; can block on one record while in a txn."""

    def __init__(self, name: str, output: str, block_on: bytes | None = None) -> None:
        self.name = name
        self.output = output
        self.block_on = block_on
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def on_assigned(self, partition: int) -> None:
        pass

    async def on_revoked(self, partition: int) -> None:
        pass

    async def handle(
        self, partition: int, records: Sequence[InboundRecord]
    ) -> Sequence[OutboundRecord]:
        outputs = []
        for r in records:
            if r.value == b"poison":
                raise ValueError("cannot digest poison")
            if self.block_on is not None and r.value == self.block_on:
                self.entered.set()
                await self.release.wait()
            outputs.append(
                OutboundRecord(self.output, f"{self.name}:".encode() + (r.value or b""), key=r.key)
            )
        return outputs


async def test_older_owner_of_a_partition_is_fenced_and_cannot_commit(
    kafka_bootstrap: str, make_topic: TopicFactory
) -> None:
    """Two processors own partition 0 (a zombie and its successor): the successor's producer
    fences the older one, whose commit fails; it drops the partition and nothing it wrote
    becomes visible."""
    inp = await make_topic("in")
    out = await make_topic("out")
    old_handler = Recorder("old", out, block_on=b"r1")
    old = TransactionalPartitionProcessor(
        bootstrap_servers=kafka_bootstrap,
        service="fence",
        input_topic=inp,
        group_id=unique("g-old"),
        handler=old_handler,
    )
    await old.start()
    old_run = asyncio.create_task(old.run())
    new = None
    new_run = None
    try:
        await old.wait_owned({0}, timeout_s=60)
        await produce(kafka_bootstrap, inp, [(b"k", b"r1")])
        await asyncio.wait_for(old_handler.entered.wait(), 30)
        # The successor: same service, same input partition -> same transactional id. (A
        # different group stands in for "the group moved the partition while the old owner
        # was paused"; fencing is by transactional id, not by group.)
        new = TransactionalPartitionProcessor(
            bootstrap_servers=kafka_bootstrap,
            service="fence",
            input_topic=inp,
            group_id=unique("g-new"),
            handler=Recorder("new", out),
        )
        await new.start()
        new_run = asyncio.create_task(new.run())
        await new.wait_owned({0}, timeout_s=60)

        async def new_output_visible() -> bool:
            return len(await read_all(kafka_bootstrap, out, 1)) >= 1

        await wait_until(new_output_visible, timeout_s=30, what="successor's output")
        old_handler.release.set()

        async def old_dropped() -> bool:
            return old.stats.fenced == 1 and old.owned_partitions == set()

        await wait_until(old_dropped, timeout_s=30, what="old owner to be fenced")
    finally:
        old_handler.release.set()
        await old.stop()
        old_run.cancel()
        if new is not None:
            await new.stop()
        if new_run is not None:
            new_run.cancel()

    visible = [r.value for r in await read_all(kafka_bootstrap, out, 1)]
    assert visible == [b"new:r1"]
    assert old.stats.transactions == 0


async def test_a_record_that_makes_the_handler_raise_goes_to_the_dead_letter_topic(
    kafka_bootstrap: str, make_topic: TopicFactory
) -> None:
    """A poison record is isolated from its batch and dead-lettered with the reason; the
    records around it are processed and the partition keeps moving."""
    inp = await make_topic("in")
    out = await make_topic("out")
    dlq = await make_topic("dlq")
    group = unique("g")
    processor = TransactionalPartitionProcessor(
        bootstrap_servers=kafka_bootstrap,
        service=unique("svc"),
        input_topic=inp,
        group_id=group,
        handler=Recorder("p", out),
        dlq_topic=dlq,
    )
    await produce(kafka_bootstrap, inp, [(b"a", b"1"), (b"b", b"poison"), (b"c", b"2")])
    await processor.start()
    runner = asyncio.create_task(processor.run())
    try:

        async def consumed_all() -> bool:
            return (await committed_offsets(kafka_bootstrap, group, inp, 1))[0] == 3

        await wait_until(consumed_all, timeout_s=60, what="all three records committed")
    finally:
        await processor.stop()
        runner.cancel()

    assert [r.value for r in await read_all(kafka_bootstrap, out, 1)] == [b"p:1", b"p:2"]
    dead = await read_all(kafka_bootstrap, dlq, 1)
    assert [r.value for r in dead] == [b"poison"]
    assert dead[0].key == b"b"
    assert dead[0].header("dlq.error.code") == "ValueError"
    assert dead[0].header("dlq.error.message") == "cannot digest poison"
    assert dead[0].header("dlq.source.offset") == "1"
    assert processor.stats.dead_letters == 1
    # what the alert DeadLettersGrowing reads (deploy/prometheus/rules.yml)
    assert REGISTRY.get_sample_value("esctl_dead_letters_total", {"topic": dlq}) == 1
