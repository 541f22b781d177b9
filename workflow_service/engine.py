"""The saga engine: workflow state in a compacted changelog, written in the same Kafka
transaction as the commands it emits and the events it consumed.

Why Kafka and not a database for the state: the engine runs on the partition-owned
transactional processor (the one the command service uses). The owner of `posts.events`
partition p owns the workflows of the posts of p; a batch of events, the new workflow states
(`workflows.state`, partition p), the commands they emit (`posts.commands`), their history
(`workflows.history`) and the consumed offsets commit or abort together. A crash anywhere
leaves either all of it or none of it, and a restarted owner reads the state of partition p
back from the changelog: no two-phase commit with a database, no outbox, and a zombie owner is
fenced by its transactional id like a command-service zombie.

Inputs besides events go through `TransactionalPartitionProcessor.transact` (same producer,
same lock, same fencing):

* timers   kept in the workflow state; a heap per partition wakes the timer loop at the earliest
           due time; firing removes the timer in the transaction that emits its command, so a due
           timer fires exactly once (a crash before the commit fires it again, after it never).
* activity results  activities run outside transactions (at least once, idempotent on their
           side); their result is recorded like a timer.
* operator actions  records on `workflows.control` (partition p); the next offset to read is
           kept in the partition's meta record of the changelog, written in the same
           transaction as the action's effects: each action applies once.

Emitted commands carry ids derived from (workflow id, step), so if a step is emitted twice
(it cannot be under exactly-once, but also an operator retry re-sends under a new step key
deliberately), the command service answers the second with the first outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import json
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from prometheus_client import Counter, Gauge, Histogram

from shared import tracing
from shared.errors import InfrastructureUnavailable
from shared.kafka.consumer import TopicConsumer
from shared.kafka.errors import KafkaError
from shared.kafka.processor import TransactionalPartitionProcessor
from shared.kafka.reader import end_offset, read_latest_by_key
from shared.kafka.records import InboundRecord, OutboundRecord
from shared.kafka.topics import Topics
from shared.logging import get_logger, message_context
from shared.messages.blog import WORKFLOW_ISSUER, WORKFLOW_ROLES
from shared.messages.codec import decode_event, encode_command
from workflow_service.activities import Activities, ActivityCall, ActivityFailed
from workflow_service.changelog import META_KEY, PartitionMeta
from workflow_service.model import (
    ActivityDone,
    Context,
    Decision,
    EventInput,
    OperatorAction,
    Refused,
    TimerFired,
    WorkflowConfig,
    WorkflowState,
    record,
)
from workflow_service.policies import decide, start

log = get_logger(__name__)

TIMER_LATENESS = Histogram(
    "esctl_workflow_timer_lateness_seconds",
    "How late timers fired after their due time",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 30, 300),
)
ACTIVITY_RUNS = Counter(
    "esctl_workflow_activity_runs_total",
    "Activity runs by activity and result",
    ["activity", "result"],
)
WORKFLOWS_FORGOTTEN = Counter(
    "esctl_workflows_forgotten_total", "Finished workflows tombstoned after their retention"
)
WORKFLOWS_ACTIVE = Gauge("esctl_workflows_active", "Running workflows owned by this instance")
#: set to a function of the engine where the service is composed (bootstrap.py): counted when
#: scraped, from the workflows in memory
WORKFLOWS_STUCK = Gauge(
    "esctl_workflows_stuck",
    "Running workflows owned by this instance without progress for STUCK_AFTER_S and no timer "
    "to come (what `esctl workflows list --stuck` shows)",
)
STATUS_CHANGES = Counter(
    "esctl_workflow_status_total", "Workflows that reached a status", ["kind", "status"]
)


@dataclass
class PartitionWorkflows:
    """The workflows of one owned partition (memory), rebuilt from the changelog."""

    workflows: dict[str, WorkflowState] = field(default_factory=dict)
    active_by_post: dict[str, set[str]] = field(default_factory=dict)
    timers: list[tuple[datetime, str, str]] = field(default_factory=list)  # heap
    round_robin: int = 0
    control_next: int = 0
    # Timers wait until the events of the partition that were in the log when it was
    # assigned have been processed: after a restart, a deadline must not fire ahead of the
    # approval that came before it and is still in the backlog.
    catch_up_to: int = 0
    position: int = -1
    caught_up: bool = False
    # finished workflows are forgotten (tombstoned) `retention` after their last transition
    retention: timedelta = timedelta(days=7)
    expiries: list[tuple[datetime, str]] = field(default_factory=list)  # heap

    def advance(self, position: int) -> None:
        self.position = max(self.position, position)
        # -1: the last record of a transactional partition is its commit marker, never delivered
        if self.position >= self.catch_up_to - 1:
            self.caught_up = True

    def put(self, state: WorkflowState) -> None:
        self.workflows[state.workflow_id] = state
        ids = self.active_by_post.setdefault(state.post_id, set())
        if state.terminal:
            ids.discard(state.workflow_id)
            if not ids:
                del self.active_by_post[state.post_id]
            heapq.heappush(self.expiries, (state.updated_at + self.retention, state.workflow_id))
        else:
            ids.add(state.workflow_id)
            for timer in state.timers:
                heapq.heappush(self.timers, (timer.due_at, state.workflow_id, timer.id))

    def expired(self, now: datetime) -> list[WorkflowState]:
        """Pop the finished workflows whose retention ran out (stale heap entries dropped)."""
        out = []
        while self.expiries and self.expiries[0][0] <= now:
            expire_at, wid = heapq.heappop(self.expiries)
            state = self.workflows.get(wid)
            if (
                state is not None
                and state.terminal
                and state.updated_at + self.retention == expire_at
            ):
                out.append(state)
        return out

    def meta(self) -> bytes:
        return PartitionMeta(self.round_robin, self.control_next).encode()

    @property
    def active(self) -> int:
        return sum(len(ids) for ids in self.active_by_post.values())


class WorkflowEngine:
    """The `PartitionHandler` of the workflow service, plus its timer and control loops."""

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        topics: Topics,
        config: WorkflowConfig,
        activities: Activities,
        clock: Callable[[], datetime],
        retention: timedelta = timedelta(days=7),
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topics = topics
        self.config = config
        self.activities = activities
        self.clock = clock
        self.retention = retention
        self.processor: TransactionalPartitionProcessor | None = None
        self.partitions: dict[int, PartitionWorkflows] = {}
        self._inflight: set[tuple[str, str]] = set()
        self._positions: dict[int, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._control = TopicConsumer(bootstrap_servers, topics.workflow_control)
        self._control_started = False

    def attach(self, processor: TransactionalPartitionProcessor) -> None:
        self.processor = processor

    def running(self) -> Iterator[WorkflowState]:
        """The running (not finished) workflows of the partitions this instance owns."""
        for part in list(self.partitions.values()):
            for ids in list(part.active_by_post.values()):
                for wid in list(ids):
                    yield part.workflows[wid]

    # -- PartitionHandler --------------------------------------------------------------------

    async def on_assigned(self, partition: int) -> None:
        part = PartitionWorkflows(retention=self.retention)
        latest = await read_latest_by_key(
            self.bootstrap_servers, self.topics.workflow_state, partition
        )
        for key, value in latest.items():
            if value is None:
                continue
            if key == META_KEY:
                meta = PartitionMeta.decode(value)
                part.round_robin = meta.round_robin
                part.control_next = meta.control_next
            else:
                part.put(WorkflowState.model_validate_json(value))
        part.catch_up_to = await end_offset(self.bootstrap_servers, self.topics.events, partition)
        # A rebuild after a failed transaction keeps the consumer where it was.
        part.advance(self._positions.get(partition, -1))
        self.partitions[partition] = part
        await self._assign_control()
        WORKFLOWS_ACTIVE.set(sum(p.active for p in self.partitions.values()))
        log.info(
            "workflows_restored",
            partition=partition,
            workflows=len(part.workflows),
            active=part.active,
            control_next=part.control_next,
        )
        self._wake.set()

    def on_position(self, partition: int, offset: int) -> None:
        """Where the processor starts reading events of `partition` (its committed offset)."""
        self._positions[partition] = max(offset, self._positions.get(partition, -1))
        part = self.partitions.get(partition)
        if part is not None:
            part.advance(offset)
            self._wake.set()

    async def on_revoked(self, partition: int) -> None:
        self.partitions.pop(partition, None)
        with contextlib.suppress(Exception):
            await self._assign_control()

    async def handle(
        self, partition: int, records: Sequence[InboundRecord]
    ) -> Sequence[OutboundRecord]:
        part = self.partitions[partition]
        outputs: list[OutboundRecord] = []
        meta_before = part.meta()
        for rec in records:
            # tracing on: a span per event in the event's trace, a span per workflow step
            # under it (`_apply`), whose context the step's commands and records carry
            traced = (
                tracing.start_record(rec, f"workflow {rec.header('type') or 'event'}")
                if tracing.ENABLED
                else None
            )
            try:
                decoded = decode_event(rec.value)  # a record that cannot be read goes to the DLQ
                inp = EventInput(decoded.envelope, decoded.payload)
                post = decoded.envelope.aggregate_id
                for wid in sorted(part.active_by_post.get(post, ())):
                    state = part.workflows[wid]
                    decision = decide(state, inp, self._ctx(part))
                    outputs += self._apply(partition, part, state, decision)
                started = start(inp, self._ctx(part))
                if started is not None and started.state.workflow_id not in part.workflows:
                    outputs += self._apply(partition, part, None, started)
            finally:
                if traced is not None:  # with the error, if one is on its way
                    tracing.end(traced, sys.exc_info()[1])
        if records:
            self._positions[partition] = records[-1].offset + 1
        if records and not part.caught_up:
            part.advance(records[-1].offset + 1)
            if part.caught_up:
                log.info("workflow_partition_caught_up", partition=partition)
                self._wake.set()
        return outputs + self._meta_if_changed(partition, part, meta_before)

    # -- decisions to records ----------------------------------------------------------------

    def _ctx(self, part: PartitionWorkflows) -> Context:
        return Context(now=self.clock(), config=self.config, round_robin=part.round_robin)

    def _meta_if_changed(
        self, partition: int, part: PartitionWorkflows, before: bytes
    ) -> list[OutboundRecord]:
        meta = part.meta()
        if meta == before:
            return []
        return [OutboundRecord(self.topics.workflow_state, meta, META_KEY, [], partition)]

    def _apply(
        self,
        partition: int,
        part: PartitionWorkflows,
        old: WorkflowState | None,
        decision: Decision,
    ) -> list[OutboundRecord]:
        if not tracing.ENABLED:
            return self._records_of(partition, part, old, decision)
        new = decision.state
        with tracing.span(
            f"workflow step {new.kind}",
            **{
                "esctl.workflow.id": new.workflow_id,
                "esctl.workflow.step": new.step,
                "esctl.workflow.status": new.status,
                "esctl.workflow.commands": len(decision.commands),
            },
        ):
            return [tracing.traced(r) for r in self._records_of(partition, part, old, decision)]

    def _records_of(
        self,
        partition: int,
        part: PartitionWorkflows,
        old: WorkflowState | None,
        decision: Decision,
    ) -> list[OutboundRecord]:
        new = decision.state
        if old is not None and new is old and not decision.commands:
            return []
        wid = new.workflow_id
        if decision.used_round_robin:
            part.round_robin += 1
        part.put(new)
        key = wid.encode()
        out = [
            OutboundRecord(
                self.topics.workflow_state, new.model_dump_json().encode(), key, [], partition
            )
        ]
        fresh = new.transitions - (old.transitions if old else 0)
        for entry in new.history[-fresh:] if fresh > 0 else []:
            value = {
                "workflow_id": wid,
                "kind": new.kind,
                "post_id": new.post_id,
                "status": new.status,
                "at": entry.at.isoformat(),
                "what": entry.what,
                "detail": entry.detail,
            }
            out.append(
                OutboundRecord(
                    self.topics.workflow_history,
                    json.dumps(value, default=str).encode(),
                    key,
                    [("what", entry.what.encode())],
                    partition,
                )
            )
            if entry.what == "timer_fired":
                TIMER_LATENESS.observe(max(0.0, entry.detail.get("late_ms", 0) / 1000))
        for cmd in decision.commands:
            command_id = cmd.command_id(wid)
            message = encode_command(
                cmd.command,
                command_id=command_id,
                aggregate_id=cmd.aggregate_id,
                occurred_at=self.clock(),
                correlation_id=wid,
                causation_id=f"workflow:{wid}/{cmd.step}",
                issued_by=WORKFLOW_ISSUER,
                actor=WORKFLOW_ISSUER,  # the workflow acts as its own principal
                actor_roles=WORKFLOW_ROLES,
            )
            out.append(OutboundRecord.of(self.topics.commands, message))
            log.info(
                "workflow_command",
                workflow_id=wid,
                command=cmd.command.message_type,
                command_id=str(command_id),
                step=cmd.step,
            )
        for letter in decision.dead_letters:
            value = {
                "workflow_id": wid,
                "post_id": new.post_id,
                "reason": letter.reason,
                "detail": letter.detail,
                "at": self.clock().isoformat(),
            }
            out.append(
                OutboundRecord(
                    self.topics.workflow_dlq,
                    json.dumps(value).encode(),
                    key,
                    [("error", letter.reason[:1000].encode())],
                    partition,
                )
            )
            log.error("workflow_dead_letter", workflow_id=wid, reason=letter.reason)
        if new.status != (old.status if old else None):
            STATUS_CHANGES.labels(new.kind, new.status).inc()
            log.info("workflow_status", workflow_id=wid, status=new.status, step=new.step)
        WORKFLOWS_ACTIVE.set(sum(p.active for p in self.partitions.values()))
        self._wake.set()
        return out

    # -- timers and activities ---------------------------------------------------------------

    def _due(self, part: PartitionWorkflows, now: datetime) -> list[tuple[str, str]]:
        """Pop the (workflow, timer) pairs due at `now`; stale heap entries are dropped."""
        due = []
        while part.timers and part.timers[0][0] <= now:
            due_at, wid, timer_id = heapq.heappop(part.timers)
            state = part.workflows.get(wid)
            timer = state.timer(timer_id) if state is not None else None
            if timer is not None and timer.due_at == due_at and not state.terminal:  # type: ignore[union-attr]
                due.append((wid, timer_id))
        return due

    def _requeue(
        self, partition: int, part: PartitionWorkflows, items: list[tuple[str, str]]
    ) -> None:
        """Put timers back that were taken for a transaction that did not happen (the
        partition was moving, or Kafka failed); a partition restored meanwhile has its own."""
        if self.partitions.get(partition) is not part:
            return
        for wid, timer_id in items:
            state = part.workflows.get(wid)
            timer = state.timer(timer_id) if state is not None else None
            if timer is not None:
                heapq.heappush(part.timers, (timer.due_at, wid, timer_id))

    async def _forget(
        self, partition: int, part: PartitionWorkflows, expired: list[WorkflowState]
    ) -> None:
        """Tombstone finished workflows on the changelog (in a transaction), then drop them
        from memory; their steps stay on the history topic for its retention."""

        async def tombstones() -> list[OutboundRecord]:
            return [
                OutboundRecord(
                    self.topics.workflow_state, None, s.workflow_id.encode(), [], partition
                )
                for s in expired
            ]

        if not await self._transact(partition, tombstones):
            for s in expired:  # retried on the next round
                heapq.heappush(part.expiries, (s.updated_at + self.retention, s.workflow_id))
            return
        for s in expired:
            # an operator action may have revived it meanwhile: then its new state was written
            # after the tombstone and stays
            if part.workflows.get(s.workflow_id) is s:
                del part.workflows[s.workflow_id]
        WORKFLOWS_FORGOTTEN.inc(len(expired))
        log.info("workflows_forgotten", partition=partition, workflows=len(expired))

    def next_due(self) -> datetime | None:
        heads = [p.timers[0][0] for p in self.partitions.values() if p.timers]
        heads += [p.expiries[0][0] for p in self.partitions.values() if p.expiries]
        return min(heads) if heads else None

    async def run_timers(self) -> None:
        """Fire due timers (in transactions) and start due activities, forever."""
        while True:
            now = self.clock()
            owned = self.processor.owned_partitions if self.processor else set()
            for partition, part in list(self.partitions.items()):
                if partition not in owned or not part.caught_up:
                    continue  # not yet acquired, or still reading the backlog of events
                expired = part.expired(now)
                if expired:
                    await self._forget(partition, part, expired)
                due = self._due(part, now)
                if not due:
                    continue
                plain = []
                for wid, timer_id in due:
                    timer = part.workflows[wid].timer(timer_id)
                    if timer is not None and timer.kind == "activity":
                        self._start_activity(partition, wid, timer_id)
                    else:
                        plain.append((wid, timer_id))
                if plain:
                    fired = await self._transact(
                        partition, functools.partial(self._fire, partition, plain)
                    )
                    if not fired:
                        self._requeue(partition, part, plain)
            self._wake.clear()
            nxt = self.next_due()
            wait = 0.5 if nxt is None else min(0.5, max(0.0, (nxt - self.clock()).total_seconds()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)

    async def _transact(
        self, partition: int, make: Callable[[], Awaitable[Sequence[OutboundRecord]]]
    ) -> bool:
        assert self.processor is not None
        try:
            return await self.processor.transact(partition, make)
        except (KafkaError, OSError, InfrastructureUnavailable) as exc:
            log.warning("workflow_transaction_failed", partition=partition, error=repr(exc))
            await asyncio.sleep(0.5)
            return False

    async def _fire(self, partition: int, due: list[tuple[str, str]]) -> list[OutboundRecord]:
        part = self.partitions[partition]
        out: list[OutboundRecord] = []
        for wid, timer_id in due:
            state = part.workflows.get(wid)
            timer = state.timer(timer_id) if state is not None else None
            if state is None or timer is None:
                continue
            with message_context(correlation_id=wid):
                out += self._apply(
                    partition, part, state, decide(state, TimerFired(timer), self._ctx(part))
                )
        return out

    def _start_activity(self, partition: int, wid: str, timer_id: str) -> None:
        if (wid, timer_id) in self._inflight:
            return
        self._inflight.add((wid, timer_id))
        task = asyncio.create_task(self._run_activity(partition, wid, timer_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_activity(self, partition: int, wid: str, timer_id: str) -> None:
        try:
            part = self.partitions.get(partition)
            state = part.workflows.get(wid) if part else None
            timer = state.timer(timer_id) if state else None
            if state is None or timer is None:
                return
            call = ActivityCall(
                name=timer.data["activity"],
                compensation=bool(timer.data["compensation"]),
                workflow_id=wid,
                post_id=state.post_id,
                attempt=int(timer.data["attempt"]),
            )
            try:
                await self.activities.run(call)
                result = ActivityDone(timer_id, ok=True)
            except ActivityFailed as exc:
                result = ActivityDone(timer_id, ok=False, error=str(exc))
            except Exception as exc:  # a bug in an activity fails the attempt, not the engine
                result = ActivityDone(timer_id, ok=False, error=repr(exc))
            ACTIVITY_RUNS.labels(call.name, "ok" if result.ok else "failed").inc()
            log.info(
                "activity_ran",
                workflow_id=wid,
                activity=call.name,
                compensation=call.compensation,
                attempt=call.attempt,
                ok=result.ok,
                error=result.error,
            )

            async def record_result() -> list[OutboundRecord]:
                part = self.partitions[partition]
                current = part.workflows.get(wid)
                if current is None:
                    return []
                return self._apply(
                    partition, part, current, decide(current, result, self._ctx(part))
                )

            if not await self._transact(partition, record_result) and part is not None:
                self._requeue(partition, part, [(wid, timer_id)])
        finally:
            self._inflight.discard((wid, timer_id))
            self._wake.set()

    # -- operator actions --------------------------------------------------------------------

    async def _assign_control(self) -> None:
        if not self._control_started:
            await self._control.start()
            self._control_started = True
        partitions = list(self.partitions)
        self._control.assign(partitions)
        # Positions come from the changelog's meta record, never from the consumer.
        for p in partitions:
            self._control.seek(p, self.partitions[p].control_next)

    async def run_control(self) -> None:
        """Apply operator actions of owned partitions, each exactly once."""
        while True:
            if not self.partitions or not self._control_started:
                await asyncio.sleep(0.2)
                continue
            try:
                batches = await self._control.fetch(timeout_ms=200, max_records=500)
            # IllegalStateError (a KafkaError) and AssertionError: aiokafka's answers to a
            # fetch racing a re-assignment of the control partitions
            except (KafkaError, AssertionError) as exc:
                log.warning("control_fetch_failed", error=repr(exc))
                await asyncio.sleep(0.5)
                continue
            for partition, records in batches.items():
                done = await self._transact(
                    partition, functools.partial(self._controls, partition, records)
                )
                part = self.partitions.get(partition)
                if not done and part is not None:
                    self._control.seek(partition, part.control_next)

    async def _controls(
        self, partition: int, messages: list[InboundRecord]
    ) -> list[OutboundRecord]:
        part = self.partitions[partition]
        meta_before = part.meta()
        out: list[OutboundRecord] = []
        for m in messages:
            if m.offset < part.control_next:
                continue  # applied before (a re-assignment rewound the consumer)
            part.control_next = m.offset + 1
            try:
                body = json.loads(m.value or b"")
                wid, action = body["workflow_id"], body["action"]
                if action not in ("retry", "skip", "compensate"):
                    raise ValueError(f"unknown action {action!r}")
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("control_record_invalid", offset=m.offset, error=repr(exc))
                continue
            state = part.workflows.get(wid)
            if state is None:
                log.warning("control_for_unknown_workflow", workflow_id=wid)
                continue
            ctx = self._ctx(part)
            try:
                decision = decide(state, OperatorAction(action, body.get("reason")), ctx)
            except Refused as refused:
                refused_state = record(
                    state, ctx.now, "operator_refused", action=action, reason=str(refused)
                )
                decision = Decision(refused_state)
            log.info("operator_action", workflow_id=wid, action=action)
            out += self._apply(partition, part, state, decision)
        return out + self._meta_if_changed(partition, part, meta_before)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._control_started:
            await self._control.stop()
