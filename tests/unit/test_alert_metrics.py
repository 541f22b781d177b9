"""The metrics that the alert rules (deploy/prometheus/rules.yml) need and that the services
set where their state changes: partitions restoring, stuck workflows, dead letters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import REGISTRY, generate_latest

from command_service.adapters import InMemoryPartitionHistory
from shared.kafka.metrics import dead_letter_counter
from shared.kafka.topics import Topics
from shared.settings import KafkaSettings, WorkflowSettings
from tests.unit.test_command_handler import handler
from workflow_service.bootstrap import stuck_counter, workflow_config
from workflow_service.engine import PartitionWorkflows, WorkflowEngine
from workflow_service.model import Timer, WorkflowState

NOW = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)


def restoring(partition: int) -> float | None:
    return REGISTRY.get_sample_value("esctl_partition_restoring", {"partition": str(partition)})


async def test_a_partition_is_exported_as_restoring_only_while_it_is_restored() -> None:
    """esctl_partition_restoring{partition} is 1 during the restore, 0 once restored, and gone
    once the partition is revoked (the rule CommandPartitionRestoringTooLong reads it)."""
    seen: list[float | None] = []

    class Watching(InMemoryPartitionHistory):
        async def replay(self, partition: int, on_events: Any, on_outcomes: Any, **kw: Any) -> int:
            seen.append(restoring(partition))
            return await super().replay(partition, on_events, on_outcomes, **kw)

    h = handler(Watching())
    await h.on_assigned(3)
    assert seen == [1.0]
    assert restoring(3) == 0.0
    await h.on_revoked(3)
    assert restoring(3) is None
    await h.on_revoked(3)  # revoked twice (a failed restore, then the rebalance): no error


def workflow(
    wid: str, *, updated: timedelta, status: str = "active", due: timedelta | None = None
) -> WorkflowState:
    timers = [Timer(id="t1", due_at=NOW + due, kind="deadline")] if due is not None else []
    return WorkflowState(
        workflow_id=wid,
        kind="review",
        post_id=f"post-{wid}",
        status=status,
        step="awaiting_decision",
        timers=timers,
        started_at=NOW - updated,
        updated_at=NOW - updated,
    )


async def test_stuck_workflows_are_counted_as_the_operator_view_counts_them() -> None:
    """esctl_workflows_stuck: running, no progress for STUCK_AFTER_S, no timer to come; only
    the workflows of partitions this instance owns (another owner counts the others)."""
    engine = WorkflowEngine(
        bootstrap_servers="127.0.0.1:1",
        topics=Topics.from_settings(KafkaSettings()),
        config=workflow_config(WorkflowSettings()),
        activities=None,  # type: ignore[arg-type]  # never called here
        clock=lambda: NOW,
    )
    owned = PartitionWorkflows()
    for state in (
        workflow("stuck", updated=timedelta(hours=2)),
        workflow("overdue-timer", updated=timedelta(hours=2), due=-timedelta(minutes=30)),
        workflow("waiting-for-its-timer", updated=timedelta(hours=2), due=timedelta(days=1)),
        workflow("recent", updated=timedelta(minutes=1)),
        workflow("finished", updated=timedelta(days=2), status="published"),
    ):
        owned.put(state)
    engine.partitions[0] = owned
    count = stuck_counter(engine, lambda: NOW, timedelta(minutes=10))
    assert count() == 2  # "stuck" and "overdue-timer"
    assert sorted(s.workflow_id for s in engine.running()) == [
        "overdue-timer",
        "recent",
        "stuck",
        "waiting-for-its-timer",
    ]
    assert stuck_counter(engine, lambda: NOW, timedelta(hours=3))() == 0
    del engine.partitions[0]  # revoked
    assert count() == 0


def test_a_dead_letter_topic_is_exported_at_zero_before_its_first_dead_letter() -> None:
    """So that `increase(esctl_dead_letters_total[...])` sees the first one."""
    topic = "alert-metrics-test.dlq"
    counter = dead_letter_counter(topic)
    text = generate_latest(REGISTRY).decode()
    assert f'esctl_dead_letters_total{{topic="{topic}"}} 0.0' in text
    counter.inc()
    assert REGISTRY.get_sample_value("esctl_dead_letters_total", {"topic": topic}) == 1.0
