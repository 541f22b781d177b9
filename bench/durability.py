"""What each side of a comparison promises on a crash, read from the running systems (not
assumed): Kafka's replication and flush settings, the peer's SQLite and PostgreSQL settings."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

BROKER_KEYS = (
    "min.insync.replicas",
    "default.replication.factor",
    "log.flush.interval.messages",
    "log.flush.interval.ms",
    "unclean.leader.election.enable",
)
TOPIC_KEYS = ("min.insync.replicas", "flush.messages", "flush.ms")


def _entries(response: Any) -> dict[str, str]:
    """{name: value} of a DescribeConfigs response (one resource)."""
    out: dict[str, str] = {}
    for resource in response.resources:
        for entry in resource[4]:
            out[entry[0]] = entry[1]
    return out


async def kafka_durability(bootstrap: str, topic: str) -> dict[str, Any]:
    """Brokers, replication factor and in-sync minimum of `topic`, and the flush policy."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
        partitions = described[0]["partitions"]
        brokers = len((await admin.describe_cluster())["brokers"])
        broker_id = partitions[0]["leader"]
        broker_cfg = _entries(
            (
                await admin.describe_configs(
                    [ConfigResource(ConfigResourceType.BROKER, str(broker_id), None)]
                )
            )[0]
        )
        topic_cfg = _entries(
            (await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)]))[0]
        )
    finally:
        await admin.close()
    flush_messages = topic_cfg.get("flush.messages", broker_cfg.get("log.flush.interval.messages"))
    return {
        "brokers": brokers,
        "replication_factor": len(partitions[0]["replicas"]),
        "min_insync_replicas": int(topic_cfg.get("min.insync.replicas", "1")),
        "flush_messages": flush_messages,
        "flush_ms": topic_cfg.get("flush.ms"),
        "fsync_per_write": flush_messages == "1",
        "unclean_leader_election": broker_cfg.get("unclean.leader.election.enable"),
        "acks": "all",
    }


def sqlite_durability(path: Path) -> dict[str, Any]:
    """The journal mode and `synchronous` level a new connection to `path` gets: the
    `eventsourcing` library sets WAL and leaves `synchronous` at the connection default."""
    con = sqlite3.connect(path)
    try:
        journal = con.execute("PRAGMA journal_mode").fetchone()[0]
        level = int(con.execute("PRAGMA synchronous").fetchone()[0])
    finally:
        con.close()
    names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
    return {"journal_mode": journal, "synchronous": names.get(level, str(level))}


async def postgres_durability(url: str) -> dict[str, Any]:
    """fsync, synchronous_commit and the WAL sync method of the server at `url`."""
    import asyncpg  # noqa: PLC0415

    con = await asyncpg.connect(url)
    try:
        return {
            key: await con.fetchval(f"SHOW {key}")
            for key in ("fsync", "synchronous_commit", "wal_sync_method", "full_page_writes")
        }
    finally:
        await con.close()
