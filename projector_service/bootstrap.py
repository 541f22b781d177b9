"""Composition root: settings in, a running service out."""

from __future__ import annotations

from fastapi import FastAPI

from shared.http import service_app
from shared.service import kafka_health, serve
from shared.settings import ProjectorSettings

#: The settings class this service reads (environment variables: `env_var_names(SETTINGS)`).
SETTINGS = ProjectorSettings


def build_app(settings: ProjectorSettings) -> FastAPI:
    return service_app(settings.service_name, health=kafka_health(settings.kafka_bootstrap_servers))


async def main(settings: ProjectorSettings) -> None:

    await serve(settings, build_app(settings), startup=None)
