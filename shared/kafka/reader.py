"""Reading partitions outside consumer groups: restore to the end, and live tables."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from shared.errors import InfrastructureUnavailable
from shared.kafka.clients import make_consumer, topic_partitions
from shared.kafka.records import InboundRecord, from_consumer_record
from shared.logging import get_logger

log = get_logger(__name__)

BatchCallback = Callable[[Sequence[InboundRecord]], Awaitable[None] | None]


async def read_partition_to_end(
    bootstrap_servers: str,
    topic: str,
    partition: int,
    on_batch: BatchCallback,
    *,
    start_offset: int = 0,
    until: int | None = None,
    timeout_s: float = 300.0,
    isolation_level: str = "read_committed",
) -> int:
    """Read committed records of one partition from `start_offset` to the current end (or to
    `until`, if that comes first).

    The end is the last stable offset at the time of the call (`read_committed`): everything
    committed before is delivered, nothing of an open or aborted transaction. Returns the next
    offset to read. With `isolation_level="read_uncommitted"` the records of aborted (and open)
    transactions are delivered too, up to the high watermark (bound it with `until`).
    """
    consumer = make_consumer(
        bootstrap_servers,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        isolation_level=isolation_level,
    )
    tp = TopicPartition(topic, partition)
    try:
        await consumer.start()
        consumer.assign([tp])
        end: int = (await consumer.end_offsets([tp]))[tp]
        if until is not None:
            end = min(end, until)
        if start_offset >= end:
            return max(start_offset, end)

        consumer.seek(tp, start_offset)
        deadline = time.monotonic() + timeout_s
        while await consumer.position(tp) < end:
            if time.monotonic() > deadline:
                raise InfrastructureUnavailable(
                    f"reading {topic}[{partition}] to offset {end} took over {timeout_s}s"
                )
            batches = await consumer.getmany(tp, timeout_ms=200, max_records=5000)
            records = [from_consumer_record(m) for m in batches.get(tp, []) if m.offset < end]
            if records:
                result = on_batch(records)
                if result is not None:
                    await result
        return end
    except KafkaError as exc:
        raise InfrastructureUnavailable(f"cannot read {topic}[{partition}]: {exc}") from exc
    finally:
        with contextlib.suppress(KafkaError):
            await consumer.stop()


async def read_latest_by_key(
    bootstrap_servers: str, topic: str, partition: int
) -> dict[bytes, bytes | None]:
    """The last committed value of every key of one partition (a compacted topic's table);
    `None` for a key whose last record is a tombstone."""
    latest: dict[bytes, bytes | None] = {}

    def collect(records: Sequence[InboundRecord]) -> None:
        for r in records:
            if r.key is not None:
                latest[r.key] = r.value

    await read_partition_to_end(bootstrap_servers, topic, partition, collect)
    return latest


async def start_offset(bootstrap_servers: str, topic: str, partition: int) -> int:
    """The first offset still in one partition (above 0 once the partition was pruned)."""
    consumer = make_consumer(bootstrap_servers)
    tp = TopicPartition(topic, partition)
    try:
        await consumer.start()
        start: int = (await consumer.beginning_offsets([tp]))[tp]
        return start
    except KafkaError as exc:
        raise InfrastructureUnavailable(
            f"cannot read the start of {topic}[{partition}]: {exc}"
        ) from exc
    finally:
        with contextlib.suppress(KafkaError):
            await consumer.stop()


async def end_offset(bootstrap_servers: str, topic: str, partition: int) -> int:
    """The end of one partition for a `read_committed` reader (its last stable offset)."""
    consumer = make_consumer(bootstrap_servers)
    tp = TopicPartition(topic, partition)
    try:
        await consumer.start()
        end: int = (await consumer.end_offsets([tp]))[tp]
        return end
    except KafkaError as exc:
        raise InfrastructureUnavailable(
            f"cannot read the end of {topic}[{partition}]: {exc}"
        ) from exc
    finally:
        with contextlib.suppress(KafkaError):
            await consumer.stop()


class TopicFollower:
    """Follows every partition of a topic (no group), from the beginning or from a time.

    `caught_up()` waits until everything committed before the call has been delivered: a
    read-your-writes barrier for tables built from a topic.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        on_batch: BatchCallback,
        *,
        start_at_ms: int | None = None,
    ) -> None:
        self.topic = topic
        self._on_batch = on_batch
        self._start_at_ms = start_at_ms
        self._consumer = make_consumer(bootstrap_servers)
        self._tps: list[TopicPartition] = []
        self._task: asyncio.Task[None] | None = None
        self._progress = asyncio.Condition()

    async def start(self) -> None:
        await self._consumer.start()
        partitions = await topic_partitions(self._consumer, self.topic)
        self._tps = [TopicPartition(self.topic, p) for p in partitions]
        self._consumer.assign(self._tps)
        if self._start_at_ms is None:
            await self._consumer.seek_to_beginning(*self._tps)
        else:
            found = await self._consumer.offsets_for_times(
                {tp: self._start_at_ms for tp in self._tps}
            )
            ends = await self._consumer.end_offsets(self._tps)
            for tp in self._tps:
                self._consumer.seek(tp, found[tp].offset if found.get(tp) else ends[tp])
        self._task = asyncio.create_task(self._run(), name=f"follow-{self.topic}")

    async def _run(self) -> None:
        try:
            await self._follow()
        except Exception as exc:
            log.error("topic_follower_failed", topic=self.topic, error=repr(exc))
            raise

    async def _follow(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=100, max_records=5000)
            for messages in batches.values():
                records = [from_consumer_record(m) for m in messages]
                result = self._on_batch(records)
                if result is not None:
                    await result
            async with self._progress:
                self._progress.notify_all()

    async def caught_up(self, timeout_s: float = 5.0) -> bool:
        """True once all records committed before this call were delivered (False on timeout)."""
        ends = await self._consumer.end_offsets(self._tps)

        async def reached() -> bool:
            for tp in self._tps:
                if await self._consumer.position(tp) < ends[tp]:
                    return False
            return True

        try:
            async with asyncio.timeout(timeout_s):
                while not await reached():
                    async with self._progress:
                        await self._progress.wait()
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        with contextlib.suppress(KafkaError):
            await self._consumer.stop()
