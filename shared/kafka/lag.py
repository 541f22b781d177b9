"""Consumer lag per group and partition, in records and in seconds.

Records: log end offset (high watermark) minus the group's committed offset, exactly what
`kafka-consumer-groups --describe` prints. On transactional topics the last commit marker
occupies an offset: a group that commits "last record + 1" sits on it and shows a lag of 1 in
both (`lag_seconds` is 0 then, no data record is waiting); this system's services commit past
it (see the processor and the projector), so theirs show 0 once caught up.

Seconds: the age of the oldest unconsumed record (now minus the timestamp of the first record at
or after the committed offset).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import asdict, dataclass
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import Gauge

from shared.errors import InfrastructureUnavailable
from shared.kafka.clients import make_admin, make_consumer
from shared.logging import get_logger

log = get_logger(__name__)

LAG_RECORDS = Gauge(
    "esctl_consumer_lag_records", "Log end minus committed offset", ["group", "topic", "partition"]
)
LAG_SECONDS = Gauge(
    "esctl_consumer_lag_seconds",
    "Age of the oldest unconsumed record",
    ["group", "topic", "partition"],
)


@dataclass(frozen=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    committed: int | None
    log_end: int
    lag: int | None
    lag_seconds: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def list_groups(bootstrap_servers: str) -> list[str]:
    admin = make_admin(bootstrap_servers)
    try:
        await admin.start()
        groups = await admin.list_consumer_groups()
    except KafkaError as exc:
        raise InfrastructureUnavailable(f"cannot list consumer groups: {exc}") from exc
    finally:
        await admin.close()
    return sorted({g[0] for g in groups})


async def consumer_lag(
    bootstrap_servers: str,
    groups: list[str] | None = None,
    *,
    topic_prefix: str = "",
    with_seconds: bool = True,
) -> list[PartitionLag]:
    """Lag of `groups` (default: every group) on topics starting with `topic_prefix`."""
    names = groups if groups is not None else await list_groups(bootstrap_servers)
    admin = make_admin(bootstrap_servers)
    committed: dict[str, dict[TopicPartition, int]] = {}
    try:
        await admin.start()
        for group in names:
            offsets = await admin.list_consumer_group_offsets(group)
            committed[group] = {
                tp: meta.offset
                for tp, meta in offsets.items()
                if tp.topic.startswith(topic_prefix) and meta.offset >= 0
            }
    except KafkaError as exc:
        raise InfrastructureUnavailable(f"cannot read committed offsets: {exc}") from exc
    finally:
        await admin.close()
    tps = sorted({tp for offsets in committed.values() for tp in offsets})
    if not tps:
        return []
    # read_uncommitted: the high watermark, as the standard tool reports it.
    consumer = make_consumer(bootstrap_servers, isolation_level="read_uncommitted")
    try:
        await consumer.start()
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        rows = []
        now_ms = time.time() * 1000
        for group in sorted(committed):
            for tp, offset in sorted(committed[group].items()):
                lag = max(0, ends[tp] - offset)
                seconds: float | None = None
                if with_seconds:
                    seconds = 0.0
                    if lag > 0:
                        ts = await _timestamp_at(consumer, tp, offset)
                        seconds = max(0.0, (now_ms - ts) / 1000) if ts is not None else 0.0
                rows.append(
                    PartitionLag(group, tp.topic, tp.partition, offset, ends[tp], lag, seconds)
                )
        return rows
    except KafkaError as exc:
        raise InfrastructureUnavailable(f"cannot read log end offsets: {exc}") from exc
    finally:
        with contextlib.suppress(KafkaError):
            await consumer.stop()


async def _timestamp_at(consumer: Any, tp: TopicPartition, offset: int) -> int | None:
    consumer.assign([tp])
    consumer.seek(tp, offset)
    batch = await consumer.getmany(tp, timeout_ms=1500, max_records=1)
    records = batch.get(tp, [])
    return int(records[0].timestamp) if records else None


async def report_lag_forever(bootstrap_servers: str, group: str, interval_s: float = 10.0) -> None:
    """Keep the Prometheus gauges of `group` current (a service's background task)."""
    while True:
        try:
            for row in await consumer_lag(bootstrap_servers, [group]):
                labels = (row.group, row.topic, str(row.partition))
                LAG_RECORDS.labels(*labels).set(row.lag or 0)
                LAG_SECONDS.labels(*labels).set(row.lag_seconds or 0)
        except InfrastructureUnavailable as exc:
            log.warning("lag_report_failed", group=group, error=exc.message)
        await asyncio.sleep(interval_s)
