"""Reading partitions outside consumer groups: restore to the end, and live tables."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence

from shared.errors import InfrastructureUnavailable
from shared.kafka.clients import running
from shared.kafka.consumer import TopicConsumer
from shared.kafka.records import InboundRecord
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
    reader = TopicConsumer(
        bootstrap_servers,
        topic,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        isolation_level=isolation_level,
    )
    async with running(reader, f"cannot read {topic}[{partition}]"):
        reader.assign([partition])
        end = (await reader.end_offsets([partition]))[partition]
        if until is not None:
            end = min(end, until)
        if start_offset >= end:
            return max(start_offset, end)

        reader.seek(partition, start_offset)
        deadline = time.monotonic() + timeout_s
        while (await reader.position(partition) or 0) < end:
            if time.monotonic() > deadline:
                raise InfrastructureUnavailable(
                    f"reading {topic}[{partition}] to offset {end} took over {timeout_s}s"
                )
            fetched = await reader.fetch(timeout_ms=200, max_records=5000, partitions=[partition])
            records = [r for r in fetched.get(partition, []) if r.offset < end]
            if records:
                result = on_batch(records)
                if result is not None:
                    await result
        return end


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
    reader = TopicConsumer(bootstrap_servers, topic)
    async with running(reader, f"cannot read the start of {topic}[{partition}]"):
        return (await reader.beginning_offsets([partition]))[partition]


async def end_offset(bootstrap_servers: str, topic: str, partition: int) -> int:
    """The end of one partition for a `read_committed` reader (its last stable offset)."""
    reader = TopicConsumer(bootstrap_servers, topic)
    async with running(reader, f"cannot read the end of {topic}[{partition}]"):
        return (await reader.end_offsets([partition]))[partition]


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
        self._consumer = TopicConsumer(bootstrap_servers, topic)
        self._partitions: list[int] = []
        self._task: asyncio.Task[None] | None = None
        self._progress = asyncio.Condition()
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        await self._consumer.start()
        self._partitions = await self._consumer.partitions()
        self._consumer.assign(self._partitions)
        if self._start_at_ms is None:
            await self._consumer.seek_to_beginning(*self._partitions)
        else:
            found = await self._consumer.offsets_for_time(self._start_at_ms, self._partitions)
            ends = await self._consumer.end_offsets(self._partitions)
            for p in self._partitions:
                at = found[p]
                self._consumer.seek(p, at if at is not None else ends[p])
        self._task = asyncio.create_task(self._run(), name=f"follow-{self.topic}")

    async def _run(self) -> None:
        try:
            await self._follow()
        except Exception as exc:
            log.error("topic_follower_failed", topic=self.topic, error=repr(exc))
            raise

    async def _follow(self) -> None:
        async for fetched in self._consumer.batches(
            self._stopping, timeout_ms=100, max_records=5000
        ):
            for records in fetched.values():
                result = self._on_batch(records)
                if result is not None:
                    await result
            async with self._progress:
                self._progress.notify_all()

    async def caught_up(self, timeout_s: float = 5.0) -> bool:
        """True once all records committed before this call were delivered (False on timeout)."""
        ends = await self._consumer.end_offsets(self._partitions)

        async def reached() -> bool:
            for p in self._partitions:
                if (await self._consumer.position(p) or 0) < ends[p]:
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
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._consumer.stop()
