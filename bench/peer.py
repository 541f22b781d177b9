"""A peer, side by side: the `eventsourcing` library on the same workload."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from bench.common import Results, Sizes, spread
from bench.durability import postgres_durability, sqlite_durability


def scenario_peer(postgres_url: str, sizes: Sizes, results: Results, workdir: Path) -> None:
    """The `eventsourcing` library, same workload: create a post, then publish it (two events),
    one client, sequential; in memory, SQLite and PostgreSQL."""
    from eventsourcing.application import Application  # noqa: PLC0415
    from eventsourcing.domain import Aggregate, event  # noqa: PLC0415

    class Post(Aggregate):  # type: ignore[misc]  # untyped library base
        @event("Created")  # type: ignore[misc]
        def __init__(self, title: str) -> None:
            self.title = title
            self.published = False

        @event("Published")  # type: ignore[misc]
        def publish(self) -> None:
            self.published = True

    class Blog(Application):  # type: ignore[misc,type-arg]
        def create_then_publish(self, title: str) -> None:
            post = Post(title)
            self.save(post)
            post = self.repository.get(post.id)
            post.publish()
            self.save(post)

    from urllib.parse import urlparse  # noqa: PLC0415

    pg = urlparse(postgres_url)
    envs = {
        "memory": {},
        "sqlite": {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(workdir / "peer.sqlite3"),
        },
        "postgresql": {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": pg.path.lstrip("/"),
            "POSTGRES_HOST": pg.hostname or "",
            "POSTGRES_PORT": str(pg.port or 5432),
            "POSTGRES_USER": pg.username or "",
            "POSTGRES_PASSWORD": pg.password or "",
            "POSTGRES_SCHEMA": "public",
            "CREATE_TABLE": "y",
        },
    }
    for name, env in envs.items():
        rates = []
        for run in range(sizes.repeat):
            run_env = dict(env)
            if name == "sqlite":  # a new database file per run, as each run starts empty
                run_env["SQLITE_DBNAME"] = str(workdir / f"peer-{run}.sqlite3")
            app = Blog(env=run_env)
            start = time.perf_counter()
            for i in range(sizes.peer):
                app.create_then_publish(f"t{run}-{i}")
            rates.append(2 * sizes.peer / (time.perf_counter() - start))
            app.close()
        figure = spread(rates)
        results.put(
            f"peer_eventsourcing_{name}",
            events_per_s=round(figure["median"]),
            min=round(figure["min"]),
            max=round(figure["max"]),
            runs=[round(v) for v in figure["runs"]],
        )
    results.put(
        "durability_peer",
        sqlite=sqlite_durability(workdir / "peer-0.sqlite3"),
        postgresql=asyncio.run(postgres_durability(postgres_url)),
    )
