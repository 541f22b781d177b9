"""Consumer lag per group and partition, in offsets and in seconds.

The columns of `kafka-consumer-groups.sh --describe`, computed the way it computes them, except
for the lag of a group that reads committed data on a transactional topic:

* `committed` (CURRENT-OFFSET): the group's committed offset; None (printed `-`, as Kafka's tool
  prints it) for a partition assigned to a member of the group that has committed nothing there.
* `log_end` (LOG-END-OFFSET): the high watermark, as Kafka's tool reports it.
* `lag` (LAG): Kafka's figure for a `read_committed` consumer (every consumer of this system):
  the last stable offset minus the committed offset (the last stable offset is the log end
  unless a transaction is open), except that it is 0 when no committed record lies between the
  committed offset and the end, only transaction markers (or aborted records). On a topic written
  without transactions this is exactly Kafka's LAG. On a transactional topic the final commit
  marker takes an offset: Kafka's tool shows a lag of 1 for a caught-up group that committed "last
  record + 1" there, this shows 0 (and with records waiting, both count that marker). This
  system's own services commit past such markers (see the processor and the projector), so
  Kafka's tool shows 0 for them too once they are caught up. None when nothing is committed.
* `lag_seconds`: the age of the oldest unconsumed record (now minus the timestamp of that first
  waiting record); 0 when nothing waits; None when unknown (no committed offset, or the record
  was not fetched within the probe's time).

Everything is asked concurrently: the groups' committed offsets and members, the high watermarks
and last stable offsets, and one fetch of every lagging partition at once from its committed offset
(a second round only for partitions that two groups have committed at different offsets), each
with a short wait, instead of one slow fetch per partition.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import KafkaError

from shared.errors import InfrastructureUnavailable
from shared.kafka.clients import make_admin, make_consumer, running, stop_quietly
from shared.logging import get_logger

log = get_logger(__name__)


@functools.cache
def _gauges() -> tuple[Any, Any]:
    """The services' lag gauges, registered on first use (importing prometheus_client costs
    `esctl lag` a sixth of a second it does not need)."""
    from prometheus_client import Gauge  # noqa: PLC0415  # see above

    records = Gauge(
        "esctl_consumer_lag_records",
        "Lag in offsets of a read_committed consumer (0 when only transaction markers remain)",
        ["group", "topic", "partition"],
    )
    seconds = Gauge(
        "esctl_consumer_lag_seconds",
        "Age of the oldest unconsumed record",
        ["group", "topic", "partition"],
    )
    return records, seconds


#: How long the fetch of the first waiting records may take in all, before their lag in seconds
#: is reported as unknown (None) rather than waited for.
PROBE_TIMEOUT_S = 2.0
#: A group without members or offsets is reported by the broker in this state.
DEAD = "Dead"


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


@dataclass
class LagReport:
    """The rows, and which of the groups asked for exist on the cluster."""

    rows: list[PartitionLag] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    #: When the offsets were read (time.monotonic()): what a trend over refreshes measures from.
    read_at: float = field(default_factory=time.monotonic)


async def list_groups(bootstrap_servers: str) -> list[str]:
    async with running(make_admin(bootstrap_servers), "cannot list consumer groups") as admin:
        groups = await admin.list_consumer_groups()
    return sorted({g[0] for g in groups})


async def consumer_lag(
    bootstrap_servers: str,
    groups: list[str] | None = None,
    *,
    topic_prefix: str = "",
    with_seconds: bool = True,
) -> list[PartitionLag]:
    """Lag of `groups` (default: every group) on topics starting with `topic_prefix`."""
    report = await lag_report(
        bootstrap_servers, groups, topic_prefix=topic_prefix, with_seconds=with_seconds
    )
    return report.rows


async def lag_report(
    bootstrap_servers: str,
    groups: list[str] | None = None,
    *,
    topic_prefix: str = "",
    with_seconds: bool = True,
    probe_timeout_s: float = PROBE_TIMEOUT_S,
) -> LagReport:
    """Lag of `groups` (default: every group), and the groups asked for that do not exist."""
    async with running(make_admin(bootstrap_servers), "cannot read the consumer groups") as admin:
        names = groups if groups is not None else sorted({g[0] for g in await _list(admin)})
        found = await asyncio.gather(*(_group_partitions(admin, g, topic_prefix) for g in names))
        topics = set(await admin.list_topics())
    report = LagReport()
    assigned: dict[str, dict[TopicPartition, int | None]] = {}
    for name, partitions in zip(names, found, strict=True):
        if partitions is None:
            report.missing.append(name)
            continue
        report.groups.append(name)
        # a topic deleted since the group committed on it has nothing left to read
        assigned[name] = {tp: o for tp, o in partitions.items() if tp.topic in topics}
    tps = sorted({tp for partitions in assigned.values() for tp in partitions})
    if not tps:
        return report
    high = make_consumer(bootstrap_servers, isolation_level="read_uncommitted")
    stable = make_consumer(bootstrap_servers, max_partition_fetch_bytes=1024 * 1024)
    try:
        await asyncio.gather(high.start(), stable.start())
        log_ends, stable_ends = await asyncio.gather(high.end_offsets(tps), stable.end_offsets(tps))
        report.read_at = time.monotonic()
        lagging = {
            (tp, offset)
            for partitions in assigned.values()
            for tp, offset in partitions.items()
            if offset is not None and offset < stable_ends[tp]
        }
        now_ms = time.time() * 1000
        first = await _first_waiting(stable, lagging, stable_ends, probe_timeout_s)
    except KafkaError as exc:
        raise InfrastructureUnavailable(f"cannot read the log end offsets: {exc}") from exc
    finally:
        await asyncio.gather(stop_quietly(high), stop_quietly(stable))
    for name in sorted(assigned):
        for tp, committed in sorted(assigned[name].items()):
            lag, seconds = _lag(committed, stable_ends[tp], first, tp, now_ms)
            report.rows.append(
                PartitionLag(
                    name,
                    tp.topic,
                    tp.partition,
                    committed,
                    log_ends[tp],
                    lag,
                    seconds if with_seconds else None,
                )
            )
    return report


def _lag(
    committed: int | None,
    stable_end: int,
    first: dict[tuple[TopicPartition, int], tuple[int, int] | None],
    tp: TopicPartition,
    now_ms: float,
) -> tuple[int | None, float | None]:
    """(lag in records, lag in seconds) of one group's partition; see the module's docstring."""
    if committed is None:
        return None, None
    if committed >= stable_end:
        return 0, 0.0
    if (tp, committed) not in first:  # not fetched in time: the offsets are all we know
        return stable_end - committed, None
    hit = first[(tp, committed)]
    if hit is None or hit[0] >= stable_end:  # only markers (or aborted records) were left
        return 0, 0.0
    return stable_end - committed, max(0.0, (now_ms - hit[1]) / 1000)


async def _list(admin: Any) -> list[tuple[Any, ...]]:
    groups: list[tuple[Any, ...]] = await admin.list_consumer_groups()
    return groups


async def _group_partitions(
    admin: Any, group: str, topic_prefix: str
) -> dict[TopicPartition, int | None] | None:
    """The partitions of `group` on topics starting with `topic_prefix`, with their committed
    offsets (None: assigned to a member, nothing committed); None when the group does not exist."""
    coordinator = await admin.find_coordinator(group)
    offsets, described = await asyncio.gather(
        admin.list_consumer_group_offsets(group, group_coordinator_id=coordinator),
        admin.describe_consumer_groups([group], group_coordinator_id=coordinator),
    )
    out: dict[TopicPartition, int | None] = {
        tp: meta.offset if meta.offset >= 0 else None
        for tp, meta in offsets.items()
        if tp.topic.startswith(topic_prefix)
    }
    exists = bool(offsets)
    for response in described:
        for description in response.groups:
            error, _name, state, protocol_type, _protocol, members = description[:6]
            exists = exists or (error == 0 and state != DEAD)
            if protocol_type != "consumer":
                continue
            for member in members:
                assignment = member[4]
                if not assignment:
                    continue
                for tp in ConsumerProtocolMemberAssignment.decode(assignment).partitions():
                    if tp.topic.startswith(topic_prefix):
                        out.setdefault(tp, None)
    return out if exists else None


async def _first_waiting(
    consumer: AIOKafkaConsumer,
    lagging: set[tuple[TopicPartition, int]],
    ends: dict[TopicPartition, int],
    timeout_s: float,
) -> dict[tuple[TopicPartition, int], tuple[int, int] | None]:
    """For each (partition, committed offset): the (offset, timestamp) of the first committed
    record at or after that offset, or None when the consumer reaches `ends` (the last stable
    offset) without one. All partitions are fetched at once, with a short wait each round; what
    is not answered within `timeout_s` is left out."""
    rounds: dict[TopicPartition, list[int]] = defaultdict(list)
    for tp, offset in sorted(lagging):
        rounds[tp].append(offset)
    found: dict[tuple[TopicPartition, int], tuple[int, int] | None] = {}
    deadline = time.monotonic() + timeout_s
    depth = max((len(v) for v in rounds.values()), default=0)
    for k in range(depth):  # round k: the k-th distinct committed offset of each partition
        starts = {tp: offsets[k] for tp, offsets in rounds.items() if len(offsets) > k}
        consumer.assign(list(starts))
        for tp, offset in starts.items():
            consumer.seek(tp, offset)
        pending = set(starts)
        while pending and time.monotonic() < deadline:
            wait_ms = max(1, min(100, int((deadline - time.monotonic()) * 1000)))
            batch = await consumer.getmany(*pending, timeout_ms=wait_ms)
            for tp, records in batch.items():
                if tp in pending and records:
                    found[(tp, starts[tp])] = (records[0].offset, records[0].timestamp)
                    pending.discard(tp)
                    consumer.pause(tp)
            for tp in list(pending):
                # a fetch that held only markers moved the position without returning records
                if await consumer.position(tp) >= ends[tp]:
                    found[(tp, starts[tp])] = None
                    pending.discard(tp)
                    consumer.pause(tp)
    return found


async def report_lag_forever(bootstrap_servers: str, group: str, interval_s: float = 10.0) -> None:
    """Keep the Prometheus gauges of `group` current (a service's background task)."""
    lag_records, lag_seconds = _gauges()
    while True:
        try:
            for row in await consumer_lag(bootstrap_servers, [group]):
                labels = (row.group, row.topic, str(row.partition))
                lag_records.labels(*labels).set(row.lag or 0)
                lag_seconds.labels(*labels).set(row.lag_seconds or 0)
        except InfrastructureUnavailable as exc:
            log.warning("lag_report_failed", group=group, error=exc.message)
        await asyncio.sleep(interval_s)
