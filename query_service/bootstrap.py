"""Composition root: settings in, a running query service out.

`build_app(settings, adapters)` builds the HTTP app without starting anything (the in-process
tests call it with a SQLite read store and an in-memory key store); `main(settings)` opens the
configured stores and serves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI

from query_service.api import build_api
from shared.auth import secure
from shared.readmodel.pipeline import KeyReader
from shared.readmodel.store import ReadStore, ReadStoreUnavailable
from shared.service import open_key_store_at_start, serve
from shared.settings import QueryServiceSettings

#: The settings class this service reads (environment variables: `env_var_names(SETTINGS)`).
SETTINGS = QueryServiceSettings


@dataclass
class QueryAdapters:
    """What the query service reads: the read model, and the keys that open personal fields."""

    store: ReadStore
    keys: KeyReader


def build_app(settings: QueryServiceSettings, adapters: QueryAdapters) -> FastAPI:
    """The HTTP app on `adapters`; nothing is started or served."""
    store = adapters.store

    async def health() -> dict[str, Any]:
        try:
            fresh = await store.freshness()
        except ReadStoreUnavailable as exc:  # queries answer 503 read_store_unavailable meanwhile
            return {"status": "unavailable", "reason": exc.code, "read_store": exc.message}
        except Exception as exc:  # any database failure means "not healthy", with the reason
            return {"status": "unavailable", "read_store": repr(exc)}
        return {"status": "ok", "positions": {str(p): f["next_offset"] for p, f in fresh.items()}}

    app = build_api(
        service=settings.service_name,
        store=store,
        keys=adapters.keys,
        health=health,
        consistency_wait_s=settings.consistency_wait_ms / 1000,
        body_limit=settings.http_body_limit_bytes,
        consistency_poll_s=settings.consistency_poll_ms / 1000,
    )
    return secure(app, settings)


async def main(settings: QueryServiceSettings) -> None:
    keys = await open_key_store_at_start(settings.key_store_url, settings)
    store = ReadStore(
        settings.read_store_url,
        connect_timeout_s=settings.read_store_connect_timeout_s,
        command_timeout_s=settings.read_store_command_timeout_s,
    )

    async def startup() -> None:
        # The projector owns the schema; migrating here too lets either start first.
        migrator = ReadStore(settings.read_store_url, writer=True)
        try:
            await migrator.migrate()
        finally:
            await migrator.close()

    async def shutdown() -> None:
        await store.close()
        await keys.close()

    app = build_app(settings, QueryAdapters(store=store, keys=keys))
    await serve(settings, app, startup=startup, shutdown=shutdown)
