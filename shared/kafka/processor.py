"""The partition-owned transactional processor: consume -> decide -> produce, exactly once.

Used by the command service and the workflow service. For every input partition this instance
owns, it keeps ONE transactional producer whose `transactional_id` is derived from
(service, input topic, partition). A batch of input records, the output records the handler
makes of them, and the consumed offsets go into one Kafka transaction.

Why one producer per partition: aiokafka has no KIP-447 (fencing by consumer-group generation),
so the only fencing available is the classic one by `transactional_id`. When partition p moves
to another instance, the new owner's producer starts with the same id; the broker bumps the
producer epoch, aborts whatever the old owner left open, and refuses any further write or
commit from the old owner (`ProducerFenced`). A zombie can therefore never commit.

Failure handling, per batch of one partition:

* fenced             -> the partition is dropped (paused, state forgotten); no retry;
* infrastructure     -> abort, rewind to the first record, rebuild the handler's state, back off,
                        try again;
* handler exception  -> abort, rebuild, retry record by record; a record that still fails alone
                        goes to the dead-letter topic with the error in its headers, in a
                        transaction with its offset, so it is never lost and never blocks the
                        partition.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError, ProducerFenced

from shared import tracing
from shared.errors import EsError
from shared.kafka.clients import make_transactional_producer, stop_quietly
from shared.kafka.consumer import TopicConsumer
from shared.kafka.errors import access_denied
from shared.kafka.metrics import dead_letter_counter
from shared.kafka.records import Delivered, InboundRecord, OutboundRecord, dead_letter
from shared.kafka.security import process_security
from shared.logging import get_logger

log = get_logger(__name__)
T = TypeVar("T")


def transactional_id_for(service: str, topic: str, partition: int) -> str:
    """Stable transactional id of the owner of `topic` partition `partition` in `service`."""
    return f"{service}.{topic}.{partition}"


class PartitionHandler(Protocol):
    """What a processor drives. State is per partition; methods run under that partition's lock."""

    async def on_assigned(self, partition: int) -> None:
        """Build the state of `partition` (restore hook: snapshots + tail of the log)."""

    async def on_revoked(self, partition: int) -> None:
        """Forget the state of `partition`."""

    async def handle(
        self, partition: int, records: Sequence[InboundRecord]
    ) -> Sequence[OutboundRecord]:
        """Decide on a batch; return the records to produce in the same transaction.

        Should turn bad input into rejections or dead letters itself; an exception is treated
        as a poison record (see the module docstring), except `EsError`s with `retriable=True`,
        which are retried.
        """


class TwoPhaseHandler(PartitionHandler, Protocol):
    """A handler that also needs the positions of its first outputs (e.g. event offsets in a
    command outcome). `after_send` runs in the same transaction, after `handle`'s outputs were
    acknowledged by the broker; its records are produced before the commit."""

    async def after_send(
        self, partition: int, delivered: Sequence[Delivered]
    ) -> Sequence[OutboundRecord]: ...


@dataclass
class ProcessorHooks:
    """Observation points for tests and metrics. `before_commit(partition, txn_number)` runs
    after the outputs and offsets are sent to the transaction and before it commits."""

    before_commit: Callable[[int, int], Awaitable[None]] | None = None


@dataclass
class ProcessorStats:
    transactions: int = 0
    records_in: int = 0
    records_out: int = 0
    dead_letters: int = 0
    aborts: int = 0
    fenced: int = 0


@dataclass
class _Owned:
    tp: TopicPartition
    producer: Any  # AIOKafkaProducer (untyped library)
    committed: int  # the group's committed offset (or the start position) of the partition
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    transactions: int = 0
    active: bool = True


class _Poison(Exception):
    """A handler raised on input that will not change: isolate it."""


class TransactionalPartitionProcessor:
    """Consume `input_topic` in group `group_id`, hand batches to `handler`, produce in txns."""

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        service: str,
        input_topic: str,
        group_id: str,
        handler: PartitionHandler,
        dlq_topic: str | None = None,
        max_records: int = 500,
        max_wait_ms: int = 20,
        hooks: ProcessorHooks | None = None,
        consumer_overrides: dict[str, Any] | None = None,
        producer_overrides: dict[str, Any] | None = None,
        fence_concurrently: bool = False,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.service = service
        self.input_topic = input_topic
        self.group_id = group_id
        self.handler = handler
        self.dlq_topic = dlq_topic
        self.max_records = max_records
        self.max_wait_ms = max_wait_ms
        self.hooks = hooks or ProcessorHooks()
        self.stats = ProcessorStats()
        self._dead_letters = dead_letter_counter(dlq_topic) if dlq_topic else None
        self._producer_overrides = producer_overrides or {}
        # Partitions assigned together are fenced at once (InitProducerId per partition: a round
        # trip to the transaction coordinator, which also waits for the old owner's open
        # transaction to be aborted), then restored one by one. The assignment callback runs
        # while the member must rejoin in time, so fencing six partitions in turn could outlast
        # the session timeout; restoring them at once, though, made a 1M-event recovery 7x
        # slower and 6x larger (six replays competing for one core and all held in memory).
        self.fence_concurrently = fence_concurrently
        self._consumer = TopicConsumer(
            bootstrap_servers,
            input_topic,
            group_id=group_id,
            on_assigned=self._on_assigned,
            on_revoked=self._on_revoked,
            max_poll_records=max_records,
            **(consumer_overrides or {}),
        )
        self._owned: dict[int, _Owned] = {}
        self._stopping = asyncio.Event()
        self._fatal: BaseException | None = None
        self._changed = asyncio.Condition()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self._consumer.start()
        log.info(
            "processor_started", service=self.service, topic=self.input_topic, group=self.group_id
        )

    async def run(self) -> None:
        """Process until `stop()`; raises if the processor cannot go on (e.g. restore failed)."""
        backoff = 0.1
        if self._fatal is not None:
            raise self._fatal
        async for batches in self._consumer.batches(
            self._stopping, timeout_ms=self.max_wait_ms or 1, max_records=self.max_records
        ):
            if self._fatal is not None:
                raise self._fatal
            jobs = []
            for partition, records in batches.items():
                owned = self._owned.get(partition)
                if owned is None or not owned.active or not records:
                    continue  # not (yet) ours: never commit, the owner seeks on acquisition
                jobs.append(self._process(owned, records))
            jobs += [
                self._commit_skipped(owned)
                for owned in list(self._owned.values())
                if owned.active and not batches.get(owned.tp.partition)
            ]
            results = await asyncio.gather(*jobs, return_exceptions=True)
            failures = [r for r in results if isinstance(r, BaseException)]
            for failure in failures:
                if not isinstance(failure, Exception):
                    raise failure
                denied = access_denied(failure, process_security().principal)
                if denied is not None:  # the ACLs will not change by themselves: stop here
                    raise denied from failure
            if failures:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            else:
                backoff = 0.1

    async def stop(self) -> None:
        self._stopping.set()
        for partition in list(self._owned):
            await self._release(partition, reason="stopping")
        await self._consumer.stop()
        log.info("processor_stopped", service=self.service, stats=self.stats.__dict__)

    @property
    def owned_partitions(self) -> set[int]:
        return {p for p, o in self._owned.items() if o.active}

    async def wait_owned(self, partitions: set[int], timeout_s: float = 60.0) -> None:
        """Wait until this instance owns (at least) `partitions`."""
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: partitions <= self.owned_partitions)

    # -- ownership ---------------------------------------------------------------------------

    async def _on_assigned(self, partitions: list[int]) -> None:
        new = [p for p in partitions if p not in self._owned]
        if self.fence_concurrently:
            fenced = await asyncio.gather(*(self._fence(p) for p in new), return_exceptions=True)
            pending = dict(zip(new, fenced, strict=True))
            try:
                for partition, producer in list(pending.items()):
                    del pending[partition]
                    if isinstance(producer, BaseException):
                        self._acquire_failed(partition, producer)
                    else:
                        await self._acquire_or_fail(partition, producer)
            finally:  # cancelled half way: the producers not handed over are stopped
                for producer in pending.values():
                    if not isinstance(producer, BaseException):
                        await stop_quietly(producer)
        else:
            for partition in new:
                await self._acquire_or_fail(partition)

    async def _acquire_or_fail(self, partition: int, producer: Any = None) -> None:
        try:
            await self._acquire(TopicPartition(self.input_topic, partition), producer)
        except Exception as exc:
            self._acquire_failed(partition, exc)

    def _acquire_failed(self, partition: int, exc: BaseException) -> None:
        # aiokafka swallows listener errors; surface it to run() instead of idling.
        log.error("partition_acquire_failed", partition=partition, error=repr(exc))
        self._fatal = access_denied(exc, process_security().principal) or exc

    async def _fence(self, partition: int) -> Any:
        """A started transactional producer for `partition`: starting it (InitProducerId)
        fences any older owner of the id and makes the broker abort (and finish aborting) the
        transaction that owner left open."""
        txn_id = transactional_id_for(self.service, self.input_topic, partition)
        producer = make_transactional_producer(
            self.bootstrap_servers, txn_id, **self._producer_overrides
        )
        await producer.start()
        return producer

    async def _on_revoked(self, partitions: list[int]) -> None:
        for partition in partitions:
            await self._release(partition, reason="revoked")

    async def _acquire(self, tp: TopicPartition, producer: Any = None) -> None:
        txn_id = transactional_id_for(self.service, tp.topic, tp.partition)
        # Only after the fence is the committed offset below the last word on where the old
        # owner stopped.
        if producer is None:
            producer = await self._fence(tp.partition)
        try:
            await self.handler.on_assigned(tp.partition)
            committed = await self._consumer.committed(tp.partition)
            if committed is None:
                await self._consumer.seek_to_beginning(tp.partition)
            else:
                self._consumer.seek(tp.partition, committed)
            on_position = getattr(self.handler, "on_position", None)
            if on_position is not None:  # optional: handlers that track their progress
                on_position(tp.partition, committed or 0)
            start = (
                committed
                if committed is not None
                else await self._consumer.position(tp.partition) or 0
            )
        except BaseException:
            await stop_quietly(producer)
            raise
        self._owned[tp.partition] = _Owned(tp=tp, producer=producer, committed=start)
        log.info(
            "partition_acquired",
            partition=tp.partition,
            transactional_id=txn_id,
            committed=committed,
        )
        await self._notify()

    async def _release(self, partition: int, *, reason: str) -> None:
        owned = self._owned.get(partition)
        if owned is None:
            return
        async with owned.lock:
            owned.active = False
            self._owned.pop(partition, None)
            with contextlib.suppress(Exception):
                await self.handler.on_revoked(partition)
            await stop_quietly(owned.producer)
        log.info("partition_released", partition=partition, reason=reason)
        await self._notify()

    async def _drop_fenced(self, owned: _Owned, exc: BaseException) -> None:
        """Another owner took over: forget the partition and stop fetching it."""
        self.stats.fenced += 1
        owned.active = False
        self._owned.pop(owned.tp.partition, None)
        with contextlib.suppress(Exception):
            self._consumer.pause(owned.tp.partition)
        with contextlib.suppress(Exception):
            await self.handler.on_revoked(owned.tp.partition)
        with contextlib.suppress(Exception):
            await owned.producer.stop()
        log.warning(
            "partition_fenced",
            partition=owned.tp.partition,
            transactional_id=transactional_id_for(self.service, owned.tp.topic, owned.tp.partition),
            error=str(exc),
        )
        await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- processing --------------------------------------------------------------------------

    async def transact(
        self, partition: int, make: Callable[[], Awaitable[Sequence[OutboundRecord]]]
    ) -> bool:
        """Run `make` and produce its records in one transaction of `partition`'s producer,
        under the partition's lock: inputs that are not records of the input topic (fired
        timers, activity results, operator actions) get the same exactly-once writes and the
        same fencing as batches. Returns False if this instance does not own `partition` (or
        was fenced); raises on other failures, after the handler rebuilt its state (the
        aborted transaction may have changed it)."""
        owned = self._owned.get(partition)
        if owned is None or not owned.active:
            return False
        async with owned.lock:
            if not owned.active:
                return False
            producer = owned.producer

            async def body() -> list[OutboundRecord]:
                outputs = list(await make())
                await self._send_all(producer, outputs)
                return outputs

            try:
                outputs = await self._in_transaction(producer, body)
            except ProducerFenced as exc:
                await self._drop_fenced(owned, exc)
                return False
            except Exception:
                await self.handler.on_revoked(partition)
                await self.handler.on_assigned(partition)
                raise
            owned.transactions += 1
            self.stats.transactions += 1
            self.stats.records_out += len(outputs)
        return True

    async def _process(self, owned: _Owned, records: list[InboundRecord]) -> None:
        if not tracing.ENABLED:
            await self._process_batch(owned, records)
            return
        # the batch's span links each record's context; the handler's spans per record are
        # children of those contexts (tasks of gather: the attached context is this task's)
        started = tracing.start_batch(self.input_topic, owned.tp.partition, records, self.group_id)
        try:
            await self._process_batch(owned, records)
        except BaseException as exc:
            tracing.end(started, exc)
            raise
        tracing.end(started)

    async def _process_batch(self, owned: _Owned, records: list[InboundRecord]) -> None:
        async with owned.lock:
            if not owned.active:
                return
            try:
                await self._transact(owned, records)
            except ProducerFenced as exc:
                await self._drop_fenced(owned, exc)
            except _Poison as poison:
                await self._rewind(owned, records[0].offset)
                await self._isolate(owned, records, poison.__cause__ or poison)
            except (KafkaError, OSError, EsError) as exc:
                # Retriable by nature (broker moved, timeout) or flagged so: rebuild and retry.
                await self._rewind(owned, records[0].offset)
                log.warning(
                    "transaction_aborted_retrying", partition=owned.tp.partition, error=repr(exc)
                )
                raise

    async def _in_transaction(
        self, producer: Any, body: Callable[[], Awaitable[list[OutboundRecord]]]
    ) -> list[OutboundRecord]:
        """begin; body; commit — or abort on any failure but fencing (nothing to abort then)."""
        await producer.begin_transaction()
        try:
            outputs = await body()
            await producer.commit_transaction()
        except ProducerFenced:
            raise
        except BaseException:
            self.stats.aborts += 1
            with contextlib.suppress(KafkaError):
                await producer.abort_transaction()
            raise
        return outputs

    async def _transact(self, owned: _Owned, records: Sequence[InboundRecord]) -> None:
        producer = owned.producer
        partition = owned.tp.partition

        async def body() -> list[OutboundRecord]:
            outputs = list(await _guard(self.handler.handle(partition, records)))
            delivered = await self._send_all(producer, outputs)
            after_send = getattr(self.handler, "after_send", None)
            if after_send is not None:
                more = await _guard(after_send(partition, delivered))
                await self._send_all(producer, more)
                outputs.extend(more)
            await producer.send_offsets_to_transaction(
                {owned.tp: records[-1].offset + 1}, self.group_id
            )
            if self.hooks.before_commit is not None:
                await self.hooks.before_commit(partition, owned.transactions + 1)
            return outputs

        outputs = await self._in_transaction(producer, body)
        owned.committed = records[-1].offset + 1
        owned.transactions += 1
        self.stats.transactions += 1
        self.stats.records_in += len(records)
        self.stats.records_out += len(outputs)
        # the handler's own dead letters (records it could not read) count with the processor's
        letters = sum(1 for o in outputs if o.topic == self.dlq_topic)
        if letters:
            self.stats.dead_letters += letters
            if self._dead_letters is not None:
                self._dead_letters.inc(letters)

    async def _commit_skipped(self, owned: _Owned) -> None:
        """Commit the consumer's position when it passed offsets that hold no record for us:
        the commit (or abort) marker of a transaction, an aborted transaction's records. The
        offsets of a batch stop after its last record, so without this a caught-up group
        would sit on the marker that ends a transactional topic and show a lag of 1 forever
        (KAFKA-6607). Runs between fetches, when every record fetched has been processed: a
        position past the committed offset then means only such offsets lie in between."""
        if not owned.active or await self._skipped_to(owned) is None:
            return  # the usual case, checked without waiting for the partition's lock
        async with owned.lock:
            position = await self._skipped_to(owned) if owned.active else None
            if position is None:
                return

            async def body() -> list[OutboundRecord]:
                await owned.producer.send_offsets_to_transaction(
                    {owned.tp: position}, self.group_id
                )
                return []

            try:
                await self._in_transaction(owned.producer, body)
            except ProducerFenced as exc:
                await self._drop_fenced(owned, exc)
                return
            except (KafkaError, OSError) as exc:
                log.warning(
                    "skipped_offsets_commit_failed", partition=owned.tp.partition, error=repr(exc)
                )
                raise
            owned.committed = position
            owned.transactions += 1
            self.stats.transactions += 1

    async def _skipped_to(self, owned: _Owned) -> int | None:
        """The consumer's position if it is past the committed offset, else None (also when
        the partition is no longer assigned: a rebalance is under way)."""
        position = await self._consumer.position(owned.tp.partition)
        return position if position is not None and position > owned.committed else None

    @staticmethod
    async def _send_all(producer: Any, outputs: Sequence[OutboundRecord]) -> list[Delivered]:
        futures = [
            await producer.send(
                out.topic,
                out.value,
                key=out.key,
                partition=out.partition,
                headers=out.headers or None,
            )
            for out in outputs
        ]
        # Wait for delivery so that a delivery error aborts this transaction, not the next.
        metadata = await asyncio.gather(*futures) if futures else []
        return [
            Delivered(out, m.partition, m.offset) for out, m in zip(outputs, metadata, strict=True)
        ]

    async def _rewind(self, owned: _Owned, offset: int) -> None:
        """Seek back and rebuild the handler's state: it may hold effects of aborted records."""
        self._consumer.seek(owned.tp.partition, offset)
        await self.handler.on_revoked(owned.tp.partition)
        await self.handler.on_assigned(owned.tp.partition)

    async def _isolate(
        self, owned: _Owned, records: list[InboundRecord], cause: BaseException
    ) -> None:
        """Retry one by one; dead-letter a record that fails alone. Runs under the lock."""
        log.warning(
            "batch_failed_isolating",
            partition=owned.tp.partition,
            size=len(records),
            error=repr(cause),
        )
        for record in records:
            try:
                await self._transact(owned, [record])
                continue
            except _Poison as poison:
                error = poison.__cause__ or poison
            await self._rewind(owned, record.offset)
            await self._dead_letter(owned, record, error)
        # Everything up to the last record is committed: continue after it.
        self._consumer.seek(owned.tp.partition, records[-1].offset + 1)

    async def _dead_letter(
        self, owned: _Owned, record: InboundRecord, error: BaseException
    ) -> None:
        if self.dlq_topic is None:
            raise RuntimeError(
                f"record {record.topic}/{record.partition}@{record.offset} failed and no "
                f"dead-letter topic is configured"
            ) from error
        producer = owned.producer
        dlq_topic = self.dlq_topic

        async def body() -> list[OutboundRecord]:
            letter = dead_letter(record, error, dlq_topic)
            await self._send_all(producer, [letter])
            await producer.send_offsets_to_transaction({owned.tp: record.offset + 1}, self.group_id)
            return [letter]

        await self._in_transaction(producer, body)
        owned.committed = record.offset + 1
        self.stats.dead_letters += 1
        if self._dead_letters is not None:
            self._dead_letters.inc()
        log.error(
            "record_dead_lettered",
            partition=record.partition,
            offset=record.offset,
            dlq=self.dlq_topic,
            error=repr(error),
        )


async def _guard(call: Awaitable[T]) -> T:
    """Run handler code: retriable errors pass through, anything else marks the input poison."""
    try:
        return await call
    except EsError as exc:
        if exc.retriable:
            raise
        raise _Poison() from exc
    except (KafkaError, OSError):
        raise
    except Exception as exc:
        raise _Poison() from exc
