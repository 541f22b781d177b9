"""The read model rebuilt from the whole event log (`esctl projections rebuild`'s function)."""

from __future__ import annotations

import time
from pathlib import Path

from bench.common import Results, Sizes, event_log
from shared.kafka.topics import Topics
from shared.readmodel.rebuild import rebuild
from shared.readmodel.store import ReadStore
from shared.settings import KafkaSettings


async def scenario_rebuild(bootstrap: str, sizes: Sizes, results: Results, workdir: Path) -> None:
    """A new generation of SQLite tables filled from offset 0 of the events topic (the log
    the recovery scenario restored, when it had this size), timed from the call to the swap."""
    prefix = await event_log(bootstrap, sizes.rebuild)
    topic = Topics.from_settings(KafkaSettings(topic_prefix=prefix)).events
    store = ReadStore(f"sqlite:///{workdir / 'bench-rebuild.sqlite3'}", writer=True)
    try:
        start = time.perf_counter()
        done = await rebuild(store, bootstrap, topic, swap_grace_s=0)
        seconds = time.perf_counter() - start
    finally:
        await store.close()
    results.put(
        "rebuild_sqlite",
        events=done.events,
        seconds=round(seconds, 2),
        events_per_s=round(done.events / seconds),
    )
