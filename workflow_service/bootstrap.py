"""Composition root: settings in, a running workflow service out.

`build_app(settings, adapters)` builds the HTTP app without starting anything (the in-process
tests call it with an in-memory view and control channel); `main(settings)` builds the engine
and the Kafka adapters, and serves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from fastapi import FastAPI

from shared.auth import secure
from shared.http import HealthCheck
from shared.kafka.clients import group_timing
from shared.kafka.lag import report_lag_forever
from shared.kafka.processor import TransactionalPartitionProcessor
from shared.kafka.topics import Topics, bootstrap_system_topics
from shared.logging import get_logger
from shared.messages.codec import utcnow
from shared.service import kafka_health, serve, wait_for_kafka_at_start
from shared.settings import WorkflowSettings
from workflow_service.activities import Activities
from workflow_service.api import WorkflowReader, WorkflowView, build_api, is_stuck
from workflow_service.control import ControlSender, KafkaControlChannel
from workflow_service.engine import WORKFLOWS_STUCK, WorkflowEngine
from workflow_service.model import WorkflowConfig

log = get_logger(__name__)

#: The settings class this service reads (environment variables: `env_var_names(SETTINGS)`).
SETTINGS = WorkflowSettings


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def workflow_config(settings: WorkflowSettings) -> WorkflowConfig:
    steps = _names(settings.publication_steps)
    if not settings.webhook_url:
        steps = tuple(s for s in steps if s != "webhook")
    return WorkflowConfig(
        reviewers=_names(settings.reviewers) or ("editor",),
        reminder_after=timedelta(seconds=settings.review_reminder_after_s),
        deadline_after=timedelta(seconds=settings.review_deadline_after_s),
        publication_steps=steps,
        max_attempts=settings.activity_max_attempts,
        backoff=timedelta(milliseconds=settings.activity_backoff_ms),
        backoff_max=timedelta(milliseconds=settings.activity_backoff_max_ms),
    )


@dataclass
class WorkflowAdapters:
    """What the workflow service's HTTP edge talks to: the workflows as the changelog says, and
    the channel operator actions go to."""

    view: WorkflowReader
    control: ControlSender
    health: HealthCheck
    clock: Callable[[], datetime] = utcnow


def build_app(settings: WorkflowSettings, adapters: WorkflowAdapters) -> FastAPI:
    """The HTTP app on `adapters`; nothing is started or served."""
    app = build_api(
        service=settings.service_name,
        view=adapters.view,
        control=adapters.control,
        health=adapters.health,
        clock=adapters.clock,
        stuck_after=timedelta(seconds=settings.stuck_after_s),
        body_limit=settings.http_body_limit_bytes,
    )
    return secure(app, settings)


def stuck_counter(
    engine: WorkflowEngine, clock: Callable[[], datetime], stuck_after: timedelta
) -> Callable[[], float]:
    """How many workflows of `engine` are stuck now (the API's rule, `is_stuck`): the value
    of `esctl_workflows_stuck`, counted when /metrics is scraped."""

    def count() -> float:
        now = clock()
        return sum(1 for state in engine.running() if is_stuck(state, now, stuck_after))

    return count


async def main(settings: WorkflowSettings) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    topics = Topics.from_settings(settings)
    await wait_for_kafka_at_start(settings)
    counts = await bootstrap_system_topics(settings)
    log.info("topics_ready", partitions=counts)
    config = workflow_config(settings)
    activities = Activities(
        store_url=settings.workflow_store_url,
        webhook_url=settings.webhook_url,
        timeout_s=settings.activity_timeout_ms / 1000,
    )
    engine = WorkflowEngine(
        bootstrap_servers=bootstrap,
        topics=topics,
        config=config,
        activities=activities,
        clock=utcnow,
        retention=timedelta(seconds=settings.workflow_retention_s),
    )
    processor = TransactionalPartitionProcessor(
        bootstrap_servers=bootstrap,
        service=settings.service_name,
        input_topic=topics.events,
        group_id=settings.group_id,
        handler=engine,
        dlq_topic=topics.workflow_dlq,
        consumer_overrides=group_timing(settings.session_timeout_ms),
    )
    engine.attach(processor)
    WORKFLOWS_STUCK.set_function(
        stuck_counter(engine, utcnow, timedelta(seconds=settings.stuck_after_s))
    )
    view = WorkflowView(bootstrap, topics)
    control = KafkaControlChannel(bootstrap, topics.workflow_control)
    app = build_app(
        settings, WorkflowAdapters(view=view, control=control, health=kafka_health(bootstrap))
    )
    log.info(
        "workflow_config",
        reviewers=list(config.reviewers),
        publication_steps=list(config.publication_steps),
        reminder_after_s=config.reminder_after.total_seconds(),
        deadline_after_s=config.deadline_after.total_seconds(),
    )

    async def startup() -> None:
        await activities.start()
        await view.start()
        await control.start()
        await processor.start()

    async def shutdown() -> None:
        await processor.stop()
        await engine.stop()
        await control.stop()
        await view.stop()
        await activities.close()

    async def lag_gauges() -> None:
        await report_lag_forever(bootstrap, settings.group_id, settings.lag_report_interval_s)

    await serve(
        settings,
        app,
        startup=startup,
        background=[processor.run, engine.run_timers, engine.run_control, lag_gauges],
        shutdown=shutdown,
    )
