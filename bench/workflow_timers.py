"""Workflow timers: lateness of scheduled publications in one workflow-service process."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiokafka import TopicPartition

from bench.common import Results, Sizes, percentile, service_env
from esctl.localstack.services import ServiceProcess
from shared.kafka import make_consumer, make_transactional_producer
from shared.kafka.topics import Topics, bootstrap_system_topics
from shared.messages import encode_event
from shared.messages.blog import PublicationScheduled
from shared.settings import KafkaSettings


async def scenario_workflow_timers(
    bootstrap: str, sizes: Sizes, results: Results, workdir: Path
) -> None:
    """Scheduled publications: `timers` PublicationScheduled events written straight to the
    event log (due 6-8 s later), one workflow-service process; lateness of each timer (fired
    minus due) from the `timer_fired` records of `workflows.history`."""
    prefix = f"bwf-{uuid.uuid4().hex[:6]}."
    settings = KafkaSettings(kafka_bootstrap_servers=bootstrap, topic_prefix=prefix, partitions=6)
    await bootstrap_system_topics(settings)
    topics = Topics.from_settings(settings)
    env = service_env(
        bootstrap,
        prefix,
        GROUP_ID=f"{prefix}workflow-service",
        PUBLICATION_STEPS="",
        WORKFLOW_STORE_URL=f"sqlite:///{workdir / 'bench-workflows.sqlite3'}",
    )
    svc = ServiceProcess("workflow_service", env, workdir, "workflow-timers")
    svc.start()
    try:
        await svc.wait_healthy()
        producer = make_transactional_producer(bootstrap, f"bench-sched-{uuid.uuid4().hex[:8]}")
        await producer.start()
        start = datetime.now(UTC) + timedelta(seconds=6)
        try:
            await producer.begin_transaction()
            futures = []
            for i in range(sizes.timers):
                due = start + timedelta(seconds=2 * i / sizes.timers)
                m = encode_event(
                    PublicationScheduled(publish_at=due),
                    event_id=uuid.uuid4(),
                    aggregate_id=f"sched-{i}",
                    aggregate_version=1,
                    occurred_at=datetime.now(UTC),
                )
                futures.append(
                    await producer.send(topics.events, m.value, key=m.key, headers=m.headers)
                )
            await asyncio.gather(*futures)
            await producer.commit_transaction()
        finally:
            await producer.stop()
        late: list[float] = []
        deadline = time.monotonic() + 60
        while len(late) < sizes.timers and time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            late = await _timer_lateness(bootstrap, topics.workflow_history)
        results.put(
            "workflow_timers",
            timers=sizes.timers,
            fired=len(late),
            p50_ms=round(percentile(late, 0.5), 1),
            p99_ms=round(percentile(late, 0.99), 1),
            max_ms=round(max(late, default=float("nan")), 1),
            early=sum(1 for x in late if x < 0),
        )
    finally:
        await svc.stop()


async def _timer_lateness(bootstrap: str, topic: str) -> list[float]:
    consumer = make_consumer(bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(6)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[float] = []
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                for m in messages:
                    entry = json.loads(m.value)
                    if entry["what"] == "timer_fired":
                        out.append(float(entry["detail"]["late_ms"]))
        return out
    finally:
        await consumer.stop()
