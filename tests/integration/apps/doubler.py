"""A consume-transform-produce app on the transactional processor, run as a real process.

Each input record `v` (key k, partition p) becomes one output `v:out` with key k on partition p
of the output topic. `--kill-at-txn N` makes the process SIGKILL itself inside its N-th
transaction of any partition, after the outputs and offsets were sent and before the commit:
the outputs are then in the log, uncommitted.

    python -m tests.integration.apps.doubler --bootstrap B --input IN --output OUT --group G
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import Sequence

from shared.kafka import (
    InboundRecord,
    OutboundRecord,
    ProcessorHooks,
    TransactionalPartitionProcessor,
)
from shared.logging import configure_logging, get_logger

log = get_logger("doubler")


class Doubler:
    def __init__(self, output: str) -> None:
        self.output = output

    async def on_assigned(self, partition: int) -> None:
        log.info("assigned", partition=partition)

    async def on_revoked(self, partition: int) -> None:
        log.info("revoked", partition=partition)

    async def handle(
        self, partition: int, records: Sequence[InboundRecord]
    ) -> Sequence[OutboundRecord]:
        return [
            OutboundRecord(self.output, (r.value or b"") + b":out", key=r.key, partition=partition)
            for r in records
        ]


async def main(args: argparse.Namespace) -> None:
    hooks = ProcessorHooks()
    if args.kill_at_txn:

        async def before_commit(partition: int, txn: int) -> None:
            if txn >= args.kill_at_txn:
                log.warning("killing_self_before_commit", partition=partition, txn=txn)
                os.kill(os.getpid(), signal.SIGKILL)

        hooks.before_commit = before_commit
    processor = TransactionalPartitionProcessor(
        bootstrap_servers=args.bootstrap,
        service=args.service,
        input_topic=args.input,
        group_id=args.group,
        handler=Doubler(args.output),
        max_records=args.max_records,
        hooks=hooks,
        consumer_overrides={"session_timeout_ms": 6000, "heartbeat_interval_ms": 500},
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await processor.start()
    runner = asyncio.create_task(processor.run())
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait([runner, waiter], return_when=asyncio.FIRST_COMPLETED)
    await processor.stop()
    runner.cancel()
    if runner.done() and not runner.cancelled() and runner.exception():
        raise SystemExit(f"processor failed: {runner.exception()!r}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--service", default="doubler")
    parser.add_argument("--max-records", type=int, default=10)
    parser.add_argument("--kill-at-txn", type=int, default=0)
    configure_logging("console", "info")
    asyncio.run(main(parser.parse_args()))
