"""The projector: events/s of one projector into SQLite and into PostgreSQL."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import Results, Sizes, spread, write_fake_events
from projector_service.projector import Projector
from shared.kafka.topics import Topics, bootstrap_system_topics
from shared.readmodel.store import ReadStore
from shared.settings import KafkaSettings


class _TimedProjector(Projector):
    """A projector that notes when it was first positioned: the start of its measurement."""

    positioned_at: float | None = None

    async def seek_to_stored(self, partitions: list[int]) -> None:
        await super().seek_to_stored(partitions)
        if self.positioned_at is None:
            self.positioned_at = time.perf_counter()


async def project_all(
    bootstrap: str, prefix: str, store_url: str, n: int, group: str
) -> dict[str, Any]:
    """Run one projector (in this process) over n events, timed from its positioning (the
    group joined, the stored offsets sought) to the last event applied: events/s, seconds.

    Not from its first applied batch: a small log is applied in one batch, which would leave
    no interval to measure."""
    topics = Topics.from_settings(KafkaSettings(topic_prefix=prefix))
    store = ReadStore(store_url, writer=True, relaxed_durability=True)  # as the service runs
    projector = _TimedProjector(
        bootstrap_servers=bootstrap,
        topic=topics.events,
        group_id=group,
        store=store,
        dlq_topic=topics.events_dlq,
        max_records=5000,
    )
    await projector.start()
    runner = asyncio.create_task(projector.run())
    try:
        while projector.applied < n:
            if runner.done():
                runner.result()
            await asyncio.sleep(0.01)
        if projector.positioned_at is None:
            raise RuntimeError("the projector applied events without being positioned")
        seconds = time.perf_counter() - projector.positioned_at
        return {"events_per_s": round(n / seconds), "events": n, "seconds": round(seconds, 3)}
    finally:
        await projector.stop()
        runner.cancel()
        await store.close()


async def scenario_projector(
    bootstrap: str, postgres_url: str, sizes: Sizes, results: Results, workdir: Path
) -> None:
    prefix = f"bproj-{uuid.uuid4().hex[:6]}."
    await bootstrap_system_topics(
        KafkaSettings(kafka_bootstrap_servers=bootstrap, topic_prefix=prefix, partitions=6)
    )
    topics = Topics.from_settings(KafkaSettings(topic_prefix=prefix))
    await write_fake_events(bootstrap, topics.events, 6, sizes.projector)
    import asyncpg  # noqa: PLC0415

    admin = await asyncpg.connect(postgres_url)
    runs: dict[str, list[dict[str, Any]]] = {"sqlite": [], "postgresql": []}
    try:
        # Each run is a new consumer group over the same events into an empty store; the
        # stores alternate so that both see the same moments of a noisy machine.
        for run in range(sizes.repeat):
            runs["sqlite"].append(
                await project_all(
                    bootstrap,
                    prefix,
                    f"sqlite:///{workdir / f'bench-read-{run}.sqlite3'}",
                    sizes.projector,
                    f"{prefix}projector-sqlite-{run}",
                )
            )
            database = f"bench_{uuid.uuid4().hex[:8]}"
            await admin.execute(f'CREATE DATABASE "{database}"')
            try:
                url = postgres_url.rsplit("/", 1)[0] + f"/{database}"
                runs["postgresql"].append(
                    await project_all(
                        bootstrap, prefix, url, sizes.projector, f"{prefix}projector-pg-{run}"
                    )
                )
            finally:
                await admin.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
    finally:
        await admin.close()
    for store, measured in runs.items():
        figure = spread([m["events_per_s"] for m in measured])
        results.put(
            f"projector_{store}",
            events_per_s=round(figure["median"]),
            min=round(figure["min"]),
            max=round(figure["max"]),
            runs=[round(v) for v in figure["runs"]],
            events=sizes.projector,
            seconds=sorted(m["seconds"] for m in measured)[len(measured) // 2],
        )
