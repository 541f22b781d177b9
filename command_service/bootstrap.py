"""Composition root: settings in, a running service out."""

from __future__ import annotations

from fastapi import FastAPI

from shared.http import service_app
from shared.kafka.topics import bootstrap_system_topics
from shared.logging import get_logger
from shared.service import kafka_health, serve
from shared.settings import CommandServiceSettings

log = get_logger(__name__)

#: The settings class this service reads (environment variables: `env_var_names(SETTINGS)`).
SETTINGS = CommandServiceSettings


def build_app(settings: CommandServiceSettings) -> FastAPI:
    return service_app(settings.service_name, health=kafka_health(settings.kafka_bootstrap_servers))


async def main(settings: CommandServiceSettings) -> None:

    async def startup() -> None:
        # Idempotent; refuses to start when commands and events differ in partition count.
        counts = await bootstrap_system_topics(settings)
        log.info("topics_ready", partitions=counts)

    await serve(settings, build_app(settings), startup=startup)
