"""The projector's profiling driver (bench/profiles/projector.md): one projector, one store, timed.

    python bench/profiles/projector_driver.py write --bootstrap B --prefix P --events 50000
    python bench/profiles/projector_driver.py run --bootstrap B --prefix P --events 50000 \
        --store sqlite:///tmp/x.sqlite3 | postgresql://...   (a fresh database each run)

`write` puts N PostCreated events (the bench's `write_fake_events`: one new post each, 6
partitions, transactions of 500) on `<prefix>posts.events` once; `run` projects all of them into
an empty store with a fresh consumer group, exactly as the bench's projector scenario does
(`bench.projector.project_all`: timed from the projector's positioning to the last event
applied), and prints one JSON line. `--durable`: PostgreSQL commits wait for their WAL flush
(`synchronous_commit` on), as before the projector relaxed them. Several `run`s reuse one
`write`, so A/B runs read the same log; run under `py-spy record` for a profile.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script from any checkout: that checkout's code
    sys.path.insert(0, str(ROOT))

from bench.common import write_fake_events  # noqa: E402
from bench.projector import project_all  # noqa: E402
from shared.kafka.topics import Topics, bootstrap_system_topics  # noqa: E402
from shared.logging import configure_logging  # noqa: E402
from shared.settings import KafkaSettings  # noqa: E402


async def write(args: argparse.Namespace) -> None:
    settings = KafkaSettings(
        kafka_bootstrap_servers=args.bootstrap, topic_prefix=args.prefix, partitions=6
    )
    await bootstrap_system_topics(settings)
    await write_fake_events(args.bootstrap, Topics.from_settings(settings).events, 6, args.events)


async def run(args: argparse.Namespace) -> None:
    store = args.store
    database = None
    if store.startswith("postgresql://"):
        import asyncpg  # noqa: PLC0415

        database = f"prof_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(store)
        await admin.execute(f'CREATE DATABASE "{database}"')
        await admin.close()
        store = store.rsplit("/", 1)[0] + f"/{database}"
    elif store.startswith("sqlite:///"):
        path = Path(store.removeprefix("sqlite:///"))
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)  # noqa: ASYNC240  # before it starts
    if args.durable:  # PostgreSQL commits wait for their WAL flush, as before issue 16
        import bench.projector  # noqa: PLC0415

        bench.projector.ReadStore = functools.partial(  # type: ignore[misc]
            bench.projector.ReadStore, relaxed_durability=False
        )
    try:
        result = await project_all(
            args.bootstrap, args.prefix, store, args.events, f"{args.prefix}prof-{uuid.uuid4()}"
        )
    finally:
        if database is not None:
            import asyncpg  # noqa: PLC0415

            admin = await asyncpg.connect(args.store)
            await admin.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
            await admin.close()
    print(json.dumps({"store": store.split(":", 1)[0], **result}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["write", "run"])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--store", default="")
    parser.add_argument("--durable", action="store_true", help="synchronous_commit stays on")
    args = parser.parse_args()
    configure_logging("console", "warning")
    asyncio.run(write(args) if args.action == "write" else run(args))


if __name__ == "__main__":
    main()
