"""Composition root: settings in, a running command service out.

`build_app(settings, adapters)` builds the HTTP app without starting anything (the in-process
tests call it with in-memory adapters); `main(settings)` builds the Kafka adapters and serves.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from fastapi import FastAPI

from command_service.adapters import KafkaAuthorDirectory, KafkaPartitionHistory
from command_service.api import CommandSender, Eraser, build_api
from command_service.handler import CommandHandler
from shared.auth import secure
from shared.http import HealthCheck
from shared.kafka.clients import group_timing
from shared.kafka.commands import CommandClient
from shared.kafka.lag import report_lag_forever
from shared.kafka.processor import TransactionalPartitionProcessor
from shared.kafka.topics import Topics, bootstrap_system_topics
from shared.keystore import KeyStore
from shared.lifecycle.erase import ErasureReport, erase_subject
from shared.logging import get_logger
from shared.messages.codec import utcnow
from shared.principal import ADMIN, Principal
from shared.service import (
    kafka_health,
    open_key_store_at_start,
    serve,
    wait_for_kafka_at_start,
)
from shared.settings import CommandServiceSettings

log = get_logger(__name__)

#: Who a request with `Authorization: Bearer <ERASURE_TOKEN>` is (deprecated; an admin JWT).
ERASURE_TOKEN_PRINCIPAL = Principal(
    subject="erasure-token", roles=frozenset({ADMIN}), authenticated=True
)

#: The settings class this service reads (environment variables: `env_var_names(SETTINGS)`).
SETTINGS = CommandServiceSettings


def readiness(
    kafka: Callable[[], Awaitable[dict[str, object]]],
    owned: Callable[[], set[int]],
    restoring: Callable[[], set[int]],
) -> Callable[[], Awaitable[dict[str, object]]]:
    """/health: Kafka answers, and no assigned partition is still being restored (a restore of
    a long log takes a while; an orchestrator should not send traffic meanwhile)."""

    async def check() -> dict[str, object]:
        report = await kafka()
        busy = sorted(restoring())
        report["partitions"] = {"owned": sorted(owned()), "restoring": busy}
        if busy and report.get("status") == "ok":
            report["status"] = "restoring"
        return report

    return check


@dataclass
class CommandAdapters:
    """What the command service's HTTP edge talks to: Kafka in `main`, memory in the in-process
    tests (`InMemoryCommandClient`, a scripted eraser)."""

    client: CommandSender
    health: HealthCheck
    #: erasure over HTTP (None: off, for every caller)
    eraser: Eraser | None = None
    clock: Callable[[], datetime] = utcnow


def kafka_eraser(settings: CommandServiceSettings, keys: KeyStore, client: CommandClient) -> Eraser:
    """Erasure on the service's Kafka, in its own key store (the one it seals with)."""

    async def eraser(subject: str, reason: str | None, force: bool) -> ErasureReport:
        return await erase_subject(
            subject,
            bootstrap=settings.kafka_bootstrap_servers,
            topics=Topics.from_settings(settings),
            keys=keys,
            client=client,
            group_id=settings.group_id,
            reason=reason,
            force=force,
            wait_s=settings.command_timeout_ms / 1000,
        )

    return eraser


def build_app(settings: CommandServiceSettings, adapters: CommandAdapters) -> FastAPI:
    """The HTTP app on `adapters`; nothing is started or served."""
    app = build_api(
        service=settings.service_name,
        client=adapters.client,
        health=adapters.health,
        wait_s=settings.command_timeout_ms / 1000,
        body_limit=settings.http_body_limit_bytes,
        clock=adapters.clock,
        eraser=adapters.eraser,
    )
    # ERASURE_TOKEN, deprecated: the static credential of erasure before tokens had roles
    return secure(app, settings, static={settings.erasure_token: ERASURE_TOKEN_PRINCIPAL})


async def main(settings: CommandServiceSettings) -> None:
    if settings.erasure_token:
        log.warning(
            "erasure_token_deprecated",
            advice="ERASURE_TOKEN is a static admin credential of this service; use an admin "
            "JWT (`esctl token --sub you --role admin`) and unset it",
        )
    bootstrap = settings.kafka_bootstrap_servers
    topics = Topics.from_settings(settings)
    # first: a missing or wrong key-encryption key ends the process here, in one line
    keys = await open_key_store_at_start(settings.key_store_url, settings)
    # Idempotent; refuses to start when commands and events differ in partition count.
    await wait_for_kafka_at_start(settings)
    counts = await bootstrap_system_topics(settings)
    log.info("topics_ready", partitions=counts)
    authors = KafkaAuthorDirectory(bootstrap, topics)
    handler = CommandHandler(
        topics=topics,
        partitions=counts[topics.commands],
        authors=authors,
        history=KafkaPartitionHistory(bootstrap, topics),
        keys=keys,
        clock=utcnow,
        max_command_bytes=settings.max_command_bytes,
        author_wait_s=settings.author_wait_ms / 1000,
        snapshot_every=settings.snapshot_every_events,
    )
    processor = TransactionalPartitionProcessor(
        bootstrap_servers=bootstrap,
        service=settings.service_name,
        input_topic=topics.commands,
        group_id=settings.group_id,
        handler=handler,
        dlq_topic=topics.commands_dlq,
        max_records=settings.batch_max_records,
        max_wait_ms=settings.batch_max_wait_ms,
        consumer_overrides=group_timing(settings.session_timeout_ms),
        # the handler restores each partition on its own (PartitionBook per partition)
        fence_concurrently=True,
    )
    client = CommandClient(bootstrap, topics, enqueue_timeout_s=settings.enqueue_timeout_ms / 1000)

    async def startup() -> None:
        await authors.start()
        await client.start()
        await processor.start()

    async def shutdown() -> None:
        await processor.stop()
        await client.stop()
        await authors.stop()
        await keys.close()

    async def lag_gauges() -> None:
        await report_lag_forever(bootstrap, settings.group_id, settings.lag_report_interval_s)

    health = readiness(
        kafka_health(bootstrap),
        lambda: processor.owned_partitions,
        lambda: set(handler.restoring),
    )
    adapters = CommandAdapters(
        client=client, health=health, eraser=kafka_eraser(settings, keys, client)
    )
    await serve(
        settings,
        build_app(settings, adapters),
        startup=startup,
        background=[processor.run, lag_gauges],
        shutdown=shutdown,
    )
