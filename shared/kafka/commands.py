"""Sending commands onto the commands topic and waiting for their outcome.

Used by the HTTP intake of the command service and by `esctl send`. One idempotent producer,
and one follower of the command-results topic that resolves waiters by command id and keeps a
bounded cache of recent outcomes (for `GET /commands/{id}`).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Sequence
from uuid import UUID

from aiokafka.errors import KafkaError

from shared import tracing
from shared.errors import InfrastructureUnavailable, MessageError
from shared.kafka.clients import make_producer, stop_quietly
from shared.kafka.reader import TopicFollower
from shared.kafka.records import InboundRecord
from shared.kafka.topics import Topics
from shared.logging import get_logger
from shared.messages.codec import EncodedMessage, Headers
from shared.messages.results import CommandOutcome

log = get_logger(__name__)


def _command_id(record: InboundRecord) -> UUID | None:
    """Outcome records are keyed by their command id (see CommandOutcome.encode)."""
    if not record.key:
        return None
    try:
        return UUID(record.key.decode())
    except (ValueError, UnicodeDecodeError):
        return None


def _log_late_failure(sending: asyncio.Future[object]) -> None:
    """What became of a command whose caller stopped waiting for the broker to take it."""
    if sending.cancelled():
        return
    exc = sending.exception()
    if exc is not None:
        log.warning("command_not_enqueued_after_timeout", error=repr(exc))
    else:
        log.info("command_enqueued_after_timeout")


class CommandClient:
    """Produce commands; await outcomes from the results topic."""

    def __init__(
        self,
        bootstrap_servers: str,
        topics: Topics,
        *,
        recent_window_s: float = 600.0,
        cache_size: int = 100_000,
        enqueue_timeout_s: float | None = None,
    ) -> None:
        self.topics = topics
        # aiokafka's idempotent producer retries a batch until the broker takes it (it has no
        # delivery.timeout.ms): without a bound here, a process cut off from the broker keeps
        # its callers waiting for as long as the cut lasts (None: no bound, for `esctl send`)
        self._enqueue_timeout_s = enqueue_timeout_s
        # No linger: a person waits on each command (linger 1 cost 1.1 ms of the produce's 2.1,
        # bench/profiles/end-to-end.md); under load batches still form behind the request in
        # flight, since the sender sends one request per partition at a time.
        self._producer = make_producer(bootstrap_servers, linger_ms=0)
        self._follower = TopicFollower(
            bootstrap_servers,
            topics.command_results,
            self._on_results,
            start_at_ms=int((time.time() - recent_window_s) * 1000),
        )
        self._waiters: dict[UUID, list[asyncio.Future[CommandOutcome]]] = {}
        # Raw outcome records by command id, decoded only when someone asks: the follower sees
        # every outcome of the system, and validating each one was 13 % of this process's CPU
        # in the pipeline benchmark (py-spy), for outcomes nobody here waits for.
        self._recent: OrderedDict[UUID, bytes] = OrderedDict()
        self._cache_size = cache_size

    async def start(self) -> None:
        """Start the producer and the follower; on failure stop both (nothing left unclosed)."""
        try:
            await self._producer.start()
            await self._follower.start()
        except BaseException as exc:
            await self.stop()
            if isinstance(exc, KafkaError):
                raise InfrastructureUnavailable(f"cannot start the command client: {exc}") from exc
            raise

    async def stop(self) -> None:
        await self._follower.stop()
        await stop_quietly(self._producer)

    def _on_results(self, records: Sequence[InboundRecord]) -> None:
        for record in records:
            command_id = _command_id(record)
            if command_id is None or record.value is None:
                log.warning("unreadable_outcome", offset=record.offset, partition=record.partition)
                continue
            self._recent[command_id] = record.value
            self._recent.move_to_end(command_id)
            if len(self._recent) > self._cache_size:
                self._recent.popitem(last=False)
            waiters = self._waiters.pop(command_id, None)
            if not waiters:
                continue
            try:
                outcome = CommandOutcome.decode(record.value)
            except MessageError:
                log.warning("unreadable_outcome", offset=record.offset, partition=record.partition)
                continue
            for future in waiters:
                if not future.done():
                    future.set_result(outcome)

    def lookup(self, command_id: UUID) -> CommandOutcome | None:
        """A recent outcome seen by this client (None: unknown to it, or still pending)."""
        raw = self._recent.get(command_id)
        if raw is None:
            return None
        try:
            return CommandOutcome.decode(raw)
        except MessageError:
            return None

    async def _produce(self, key: bytes | None, value: bytes | None, headers: Headers) -> None:
        sending = asyncio.ensure_future(
            self._producer.send_and_wait(self.topics.commands, value, key=key, headers=headers)
        )
        try:
            # shielded: on a timeout the record stays with the producer, which may still
            # deliver it (and whose failure then is only logged)
            await asyncio.wait_for(asyncio.shield(sending), self._enqueue_timeout_s)
        except TimeoutError as exc:
            sending.add_done_callback(_log_late_failure)
            raise InfrastructureUnavailable(
                f"the broker did not take the command within {self._enqueue_timeout_s:g}s; it "
                "may still be enqueued later: retry with the same Idempotency-Key"
            ) from exc
        except KafkaError as exc:
            raise InfrastructureUnavailable(f"could not enqueue the command: {exc}") from exc

    async def send(
        self, command_id: UUID, message: EncodedMessage, *, wait_s: float
    ) -> CommandOutcome | None:
        """Produce the command; return its outcome, or None if it did not arrive in `wait_s`."""
        future: asyncio.Future[CommandOutcome] = asyncio.get_running_loop().create_future()
        # Register before producing so that a fast outcome cannot slip past us.
        self._waiters.setdefault(command_id, []).append(future)
        try:
            if tracing.ENABLED:
                with tracing.producing(self.topics.commands, message.key):
                    await self._produce(message.key, message.value, tracing.inject(message.headers))
            else:
                await self._produce(message.key, message.value, message.headers)
            try:
                return await asyncio.wait_for(asyncio.shield(future), wait_s)
            except TimeoutError:
                return None
        finally:
            waiters = self._waiters.get(command_id, [])
            if future in waiters:
                waiters.remove(future)
                if not waiters:
                    self._waiters.pop(command_id, None)
