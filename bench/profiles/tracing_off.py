"""What tracing costs the command handler per record: off (the default) and on.

`python -m bench.profiles.tracing_off [--on FILE]` from the repository's root: the command
handler (in-memory history, author directory and key store, so only the handler's own work is
timed) decides batches of 500 CreatePost commands (each a new post, all accepted) and writes
their outcomes; prints the best of 7 runs in µs per record. Run it on a tree without
`shared/tracing.py` for the "before" figure (README.md, section Traces, has the figures).
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from datetime import UTC, datetime

from command_service.adapters import InMemoryAuthorDirectory, InMemoryPartitionHistory
from command_service.handler import CommandHandler
from shared.kafka.records import Delivered, InboundRecord
from shared.kafka.topics import Topics
from shared.keystore import InMemoryKeyStore
from shared.messages import encode_command
from shared.messages.blog import CreatePost
from shared.settings import KafkaSettings

BATCH = 500
BATCHES = 40
RUNS = 7
TOPICS = Topics.from_settings(KafkaSettings())
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def batches(run: int) -> list[list[InboundRecord]]:
    out = []
    for b in range(BATCHES):
        records = []
        for i in range(BATCH):
            m = encode_command(
                CreatePost(author_id="ada", title="T"),
                command_id=uuid.uuid4(),
                aggregate_id=f"p-{run}-{b}-{i}",
            )
            records.append(InboundRecord(TOPICS.commands, 0, i, m.key, m.value, m.headers))
        out.append(records)
    return out


async def one_run(run: int) -> float:
    handler = CommandHandler(
        topics=TOPICS,
        partitions=1,
        authors=InMemoryAuthorDirectory({"ada"}),
        history=InMemoryPartitionHistory(),
        keys=InMemoryKeyStore(),
        clock=lambda: NOW,
    )
    await handler.on_assigned(0)
    work = batches(run)
    started = time.perf_counter()
    for records in work:
        outputs = await handler.handle(0, records)
        delivered = [Delivered(o, 0, i) for i, o in enumerate(outputs)]
        await handler.after_send(0, delivered)
    return (time.perf_counter() - started) / (BATCH * BATCHES) * 1e6


def micro() -> None:
    """The per-record guard alone (what the handler's loop adds when tracing is off), against
    the same loop without it, and the log processor's cost per line; best of 20 x 1M."""
    import timeit  # noqa: PLC0415

    from shared import tracing  # noqa: PLC0415
    from shared.logging import add_trace_ids  # noqa: PLC0415

    setup = "records = list(range(1000)); outputs = []\ndef body(r): pass"
    plain = "for r in records:\n    body(r)"
    guarded = (
        "for r in records:\n"
        "    traced = start(r) if tracing.ENABLED else None\n"
        "    first = len(outputs)\n"
        "    try:\n"
        "        body(r)\n"
        "    finally:\n"
        "        if traced is not None:\n"
        "            end(traced)\n"
    )
    names = {"tracing": tracing, "start": None, "end": None}
    for label, stmt in (("loop without guard", plain), ("loop with guard", guarded)):
        best = min(timeit.repeat(stmt, setup, repeat=20, number=1000, globals=names))
        print(f"{label}: {best / 1000 / 1000 * 1e9:.1f} ns/record")
    event = {"event": "x"}
    best = min(timeit.repeat(lambda: add_trace_ids(None, "info", event), repeat=20, number=100_000))
    print(f"log processor, tracing off: {best / 100_000 * 1e9:.1f} ns/line")


async def main() -> None:
    if "--micro" in sys.argv:
        micro()
        return
    if "--on" in sys.argv:
        from shared import tracing  # noqa: PLC0415

        path = sys.argv[sys.argv.index("--on") + 1]
        assert tracing.configure_tracing("bench", {"ESCTL_TRACE_FILE": path})
    figures = sorted([await one_run(run) for run in range(RUNS)])
    print(f"best {figures[0]:.2f} µs/record, median {figures[RUNS // 2]:.2f} (runs: {RUNS})")


if __name__ == "__main__":
    asyncio.run(main())
