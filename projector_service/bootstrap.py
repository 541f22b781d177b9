"""Composition root: settings in, a running projector out.

`build_app(settings, adapters)` builds the HTTP app (/health, /metrics) without starting
anything; `main(settings)` builds the projector on Kafka and the read store, and serves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI

from projector_service.projector import Projector
from shared.access import ACCESS
from shared.auth import secure
from shared.http import HealthCheck, service_app
from shared.kafka.clients import group_timing
from shared.kafka.lag import report_lag_forever
from shared.kafka.topics import Topics, bootstrap_system_topics
from shared.readmodel.store import ReadStore, ReadStoreUnavailable
from shared.service import kafka_health, serve, wait_for_kafka_at_start
from shared.settings import ProjectorSettings

#: The settings class this service reads (environment variables: `env_var_names(SETTINGS)`).
SETTINGS = ProjectorSettings


@dataclass
class ProjectorAdapters:
    """What the projector's /health looks at: Kafka, and the read store it writes."""

    store: ReadStore
    kafka: HealthCheck


def build_app(settings: ProjectorSettings, adapters: ProjectorAdapters) -> FastAPI:
    """The HTTP app on `adapters`; nothing is started or served."""

    async def health() -> dict[str, Any]:
        report: dict[str, Any] = dict(await adapters.kafka())
        try:
            report["positions"] = {
                str(p): f["next_offset"] for p, f in (await adapters.store.freshness()).items()
            }
        except ReadStoreUnavailable as exc:  # the projector waits for it and resumes
            report |= {"status": "unavailable", "reason": exc.code, "read_store": exc.message}
        except Exception as exc:  # any database failure means "not healthy", with the reason
            report |= {"status": "unavailable", "read_store": repr(exc)}
        return report

    app = service_app(
        settings.service_name,
        health=health,
        body_limit=settings.http_body_limit_bytes,
        access=ACCESS["projector"],
    )
    return secure(app, settings)


async def main(settings: ProjectorSettings) -> None:
    topics = Topics.from_settings(settings)
    # relaxed: its rows and positions commit together and are rebuildable from Kafka (README)
    store = ReadStore(
        settings.read_store_url,
        writer=True,
        relaxed_durability=True,
        connect_timeout_s=settings.read_store_connect_timeout_s,
        command_timeout_s=settings.read_store_command_timeout_s,
    )
    projector = Projector(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        topic=topics.events,
        group_id=settings.group_id,
        store=store,
        dlq_topic=topics.events_dlq,
        max_records=settings.batch_max_records,
        consumer_overrides=group_timing(settings.session_timeout_ms),
    )

    async def startup() -> None:
        # Idempotent: whichever service starts first creates the topics.
        await wait_for_kafka_at_start(settings)
        await bootstrap_system_topics(settings)
        await projector.start()

    async def shutdown() -> None:
        await projector.stop()
        await store.close()

    async def lag_gauges() -> None:
        await report_lag_forever(
            settings.kafka_bootstrap_servers, settings.group_id, settings.lag_report_interval_s
        )

    await serve(
        settings,
        build_app(
            settings,
            ProjectorAdapters(store=store, kafka=kafka_health(settings.kafka_bootstrap_servers)),
        ),
        startup=startup,
        background=[projector.run, lag_gauges],
        shutdown=shutdown,
    )
