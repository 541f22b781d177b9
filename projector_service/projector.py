"""The projector: events topic -> read store, with exactly-once effect.

Kafka offsets are NOT the source of truth here; the read store is. Each batch's rows and the
partition's next offset are committed in one database transaction (compare-and-set on the stored
offset). On assignment the projector seeks to the offsets stored in the database. After each
database commit it also commits the offset to Kafka, only so that standard tooling
(kafka-consumer-groups, `esctl lag`) shows the projector's lag; and when the consumer passed a
transaction marker after the last event, its position, so that a caught-up projector shows 0.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from shared import tracing
from shared.kafka.clients import make_producer, stop_quietly
from shared.kafka.consumer import TopicConsumer
from shared.kafka.errors import KafkaError
from shared.kafka.metrics import dead_letter_counter
from shared.kafka.records import InboundRecord, dead_letter
from shared.logging import get_logger
from shared.readmodel.pipeline import IndexedEvent, read_records
from shared.readmodel.store import PartitionBatch, ReadStore, ReadStoreUnavailable, StaleBatch

log = get_logger(__name__)

EVENTS_APPLIED = Counter("esctl_projector_events_total", "Events applied to the read store")
BAD_EVENTS = Counter("esctl_projector_dead_letters_total", "Undecodable events dead-lettered")
BATCH_SECONDS = Histogram("esctl_projector_batch_seconds", "Time to apply one batch")
POSITION = Gauge("esctl_projector_next_offset", "Next offset to apply", ["partition"])
STORE_UNAVAILABLE = Counter(
    "esctl_projector_read_store_unavailable_total",
    "Batches that found the read store gone (each is applied again once it answers)",
)
EVENT_AGE = Histogram(
    "esctl_projector_event_age_seconds",
    "Time from an event's occurred_at to its projection's commit (last event of each batch)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


class Projector:
    def __init__(
        self,
        *,
        bootstrap_servers: str,
        topic: str,
        group_id: str,
        store: ReadStore,
        dlq_topic: str,
        max_records: int = 2000,
        consumer_overrides: dict[str, Any] | None = None,
    ) -> None:
        self.topic = topic
        self.group_id = group_id
        self.store = store
        self.dlq_topic = dlq_topic
        self._dead_letters = dead_letter_counter(dlq_topic)
        self.max_records = max_records
        self._consumer = TopicConsumer(
            bootstrap_servers,
            topic,
            group_id=group_id,
            on_assigned=self._position_assigned,
            on_revoked=self.forget,
            max_poll_records=max_records,
            **(consumer_overrides or {}),
        )
        self._dlq = make_producer(bootstrap_servers)
        self._generation = 0
        self._next: dict[int, int] = {}
        self._committed: dict[int, int] = {}  # offsets committed to Kafka (for tooling)
        self._stopping = asyncio.Event()
        self.applied = 0
        #: first and longest pause while the read store is gone (then doubling up to the last)
        self.store_retry_s = (0.5, 5.0)

    async def start(self) -> None:
        self._generation = await self.store.migrate()
        await self._dlq.start()
        await self._consumer.start()

    async def stop(self) -> None:
        self._stopping.set()
        await self._consumer.stop()
        await stop_quietly(self._dlq)

    async def seek_to_stored(self, partitions: list[int]) -> None:
        """Position the consumer at the offsets stored with the read model."""
        self._generation = await self.store.active_generation()
        stored = await self.store.positions(self._generation)
        for p in partitions:
            offset = stored.get(p, 0)
            self._next[p] = offset
            self._consumer.seek(p, offset)
        log.info(
            "projector_positioned",
            generation=self._generation,
            positions={p: self._next[p] for p in partitions},
        )

    async def _position_assigned(self, partitions: list[int]) -> None:
        """`seek_to_stored` for newly assigned partitions, waiting (backing off) while the read
        store is gone: the consumer swallows a callback's error, and a partition left without a
        position would be skipped silently until the next rebalance."""
        pause, longest = self.store_retry_s
        while True:
            try:
                await self.seek_to_stored(partitions)
                return
            except ReadStoreUnavailable as exc:
                if self._stopping.is_set():
                    raise
                log.warning(
                    "read_store_unavailable",
                    error=exc.message,
                    retry_in_s=pause,
                    assigned=partitions,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), pause)
            pause = min(pause * 2, longest)

    async def forget(self, partitions: list[int]) -> None:
        for p in partitions:
            self._next.pop(p, None)
            self._committed.pop(p, None)

    async def run(self) -> None:
        async for batches in self._consumer.batches(
            self._stopping, timeout_ms=200, max_records=self.max_records
        ):
            owned = {p: records for p, records in batches.items() if p in self._next and records}
            if owned:
                try:
                    await self._apply(owned)
                except StaleBatch as exc:
                    # A rebuild swapped generations, or another instance took a partition.
                    log.info("projector_repositioning", reason=str(exc))
                    await self.seek_to_stored(sorted(self._next))
                    continue
                except ReadStoreUnavailable as exc:
                    await self._resume_when_the_store_answers(exc)
                    continue
            applied = set(owned)
            await self._commit_skipped([p for p in list(self._next) if p not in applied])

    async def _resume_when_the_store_answers(self, error: ReadStoreUnavailable) -> None:
        """The database went away during a batch: wait for it (backing off), then seek to the
        positions it stored. Whether the failed batch committed is unknown (a commit may have
        reached the server before the connection broke, and a server crash may have lost
        commits made with `synchronous_commit=off`): the stored positions say, and the
        compare-and-set keeps each event applied once. The process keeps running; /health is
        503 with the reason meanwhile (it asks the store too)."""
        STORE_UNAVAILABLE.inc()
        loop = asyncio.get_running_loop()
        started = loop.time()
        pause, longest = self.store_retry_s
        log.warning("read_store_unavailable", error=error.message, retry_in_s=pause)
        attempts = 0
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), pause)
            if self._stopping.is_set():
                return
            attempts += 1
            try:
                await self.seek_to_stored(sorted(self._next))
            except ReadStoreUnavailable as again:
                pause = min(pause * 2, longest)
                if attempts % 10 == 0:  # one line every few tens of seconds, not per attempt
                    log.warning("read_store_unavailable", error=again.message, retry_in_s=pause)
                continue
            log.info(
                "read_store_back",
                unavailable_s=round(loop.time() - started, 1),
                attempts=attempts,
            )
            return

    async def _commit_skipped(self, partitions: list[int]) -> None:
        """Commit to Kafka the consumer's position where it passed offsets that hold no event:
        the commit marker that ends each transaction of the command service (or an aborted
        transaction). The offset stored with a batch stops after its last event, so without
        this a caught-up projector would show a lag of 1 in `esctl lag` and
        kafka-consumer-groups forever. Only Kafka's offset moves: the read store's position
        stays where its events end (the next batch starts there)."""
        offsets = {}
        for p in partitions:
            position = await self._consumer.position(p)
            if position is None:
                continue  # no longer assigned: a rebalance is under way
            # `p in self._next` again: a rebalance may have forgotten it during the await
            if p in self._next and position > max(self._next[p], self._committed.get(p, 0)):
                offsets[p] = position
        if offsets:
            await self._commit_to_kafka(offsets)

    async def _commit_to_kafka(self, offsets: dict[int, int]) -> None:
        """Kafka's copy of the positions, for tooling (lag); the database holds the truth, so
        a failed commit is only logged."""
        try:
            await self._consumer.commit(offsets)
        except KafkaError as exc:  # CommitFailedError included (a rebalance under way)
            log.warning("kafka_offset_commit_failed", error=repr(exc))
            return
        for p, offset in offsets.items():
            self._committed[p] = offset

    async def _decode(self, records: list[InboundRecord]) -> list[IndexedEvent]:
        """The readable events of `records`; the unreadable ones are parked (the read
        pipeline's rule, shared/readmodel/pipeline.py)."""
        events, unreadable = read_records(records)
        for bad in unreadable:
            # Never block the partition: keep the record, with the reason, in the DLQ.
            BAD_EVENTS.inc()
            self._dead_letters.inc()
            log.error(
                "event_dead_lettered",
                partition=bad.partition,
                offset=bad.offset,
                error=bad.reason,
            )
            out = dead_letter(bad.record, bad.error, self.dlq_topic)
            await self._dlq.send_and_wait(out.topic, out.value, key=out.key, headers=out.headers)
        return events

    async def _apply(self, fetched: dict[int, list[InboundRecord]]) -> None:
        if not tracing.ENABLED:
            await self._apply_fetched(fetched)
            return
        # A span for the fetch, linked to every event's context, and per event an `apply`
        # span in the event's trace (child of its context) that lasts until the database
        # transaction that applied it committed.
        records = [r for rs in fetched.values() for r in rs]
        partition = next(iter(fetched)) if len(fetched) == 1 else None
        started = tracing.start_batch(self.topic, partition, records, self.group_id)
        applies = [
            tracing.child_of(
                r,
                f"apply {r.header('type') or 'event'}",
                **{"db.operation.batch.size": len(records)},
            )
            for r in records
        ]
        error: BaseException | None = None
        try:
            await self._apply_fetched(fetched)
        except BaseException as exc:
            error = exc
            raise
        finally:
            for span in applies:
                tracing.finish(span, error)
            tracing.end(started, error)

    async def _apply_fetched(self, fetched: dict[int, list[InboundRecord]]) -> None:
        """Every partition of one fetch in one database transaction, then one Kafka commit."""
        batches = [
            PartitionBatch(
                p,
                await self._decode(records),
                start_offset=self._next[p],
                next_offset=records[-1].offset + 1,
            )
            for p, records in fetched.items()
        ]
        with BATCH_SECONDS.time():
            await self.store.apply_batches(self._generation, batches)
        committed_at = datetime.now(UTC)
        offsets = {}
        for p, batch in zip(fetched, batches, strict=True):
            if batch.events:
                age = committed_at - batch.events[-1].envelope.occurred_at
                EVENT_AGE.observe(max(0.0, age.total_seconds()))
            self._next[p] = batch.next_offset
            self.applied += len(batch.events)
            EVENTS_APPLIED.inc(len(batch.events))
            POSITION.labels(str(p)).set(batch.next_offset)
            offsets[p] = batch.next_offset
        await self._commit_to_kafka(offsets)
