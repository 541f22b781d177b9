"""Activities: the side effects of the publication workflow, and their compensations.

An activity runs outside any transaction (it talks to the world), at least once: after a crash
between its effect and the record of its result, it runs again. Each one is therefore
idempotent on its side: the webhook carries an `Idempotency-Key` (workflow id + step), the
search index is an upsert/delete by post id.

* `search_index`  upsert a row (post id, workflow, time) into the `search_index` table of the
                  workflow store; compensation: delete it.
* `webhook`       POST `{"event": "post.published", ...}` to the configured URL (2xx = done);
                  compensation: POST `{"event": "post.retracted", ...}`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from shared.db import async_url
from shared.logging import get_logger

log = get_logger(__name__)

_md = sa.MetaData()
SEARCH_INDEX = sa.Table(
    "search_index",
    _md,
    sa.Column("post_id", sa.String(200), primary_key=True),
    sa.Column("workflow_id", sa.String(300), nullable=False),
    sa.Column("indexed_at", sa.DateTime(timezone=True), nullable=False),
)


class ActivityFailed(Exception):
    """The activity did not do its job this time (it may be retried)."""


@dataclass(frozen=True)
class ActivityCall:
    name: str
    compensation: bool
    workflow_id: str
    post_id: str
    attempt: int


class Activities:
    """Runs activities by name; unknown names fail (so that a typo in the configuration shows
    up as a failed workflow with a clear error rather than a silent no-op)."""

    def __init__(self, *, store_url: str, webhook_url: str, timeout_s: float) -> None:
        self.webhook_url = webhook_url
        self._sqlite_path = (
            Path(store_url.removeprefix("sqlite:///"))
            if store_url.startswith("sqlite:///")
            else None
        )
        self._engine: AsyncEngine = create_async_engine(async_url(store_url, "WORKFLOW_STORE_URL"))
        self._http = httpx.AsyncClient(timeout=timeout_s)
        self._registry: dict[str, Callable[[ActivityCall], Awaitable[None]]] = {
            "search_index": self._search_index,
            "webhook": self._webhook,
        }

    async def start(self) -> None:
        if self._sqlite_path is not None:
            self._sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        async with self._engine.begin() as conn:
            await conn.run_sync(_md.create_all)

    async def close(self) -> None:
        await self._http.aclose()
        await self._engine.dispose()

    async def run(self, call: ActivityCall) -> None:
        """Do it once; raises `ActivityFailed` with the reason when it did not work."""
        action = self._registry.get(call.name)
        if action is None:
            raise ActivityFailed(
                f"unknown activity {call.name!r} (known: {', '.join(sorted(self._registry))})"
            )
        try:
            await action(call)
        except ActivityFailed:
            raise
        except (httpx.HTTPError, sa.exc.SQLAlchemyError, OSError) as exc:
            raise ActivityFailed(f"{type(exc).__name__}: {exc}") from exc

    async def _search_index(self, call: ActivityCall) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                sa.delete(SEARCH_INDEX).where(SEARCH_INDEX.c.post_id == call.post_id)
            )
            if not call.compensation:
                await conn.execute(
                    sa.insert(SEARCH_INDEX).values(
                        post_id=call.post_id,
                        workflow_id=call.workflow_id,
                        indexed_at=datetime.now(UTC),
                    )
                )

    async def indexed(self) -> set[str]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(sa.select(SEARCH_INDEX.c.post_id))
            return {r[0] for r in rows}

    async def _webhook(self, call: ActivityCall) -> None:
        if not self.webhook_url:
            raise ActivityFailed("no WEBHOOK_URL is configured for the webhook step")
        event = "post.retracted" if call.compensation else "post.published"
        response = await self._http.post(
            self.webhook_url,
            json={
                "event": event,
                "post_id": call.post_id,
                "workflow_id": call.workflow_id,
                "attempt": call.attempt,
            },
            headers={"Idempotency-Key": f"{call.workflow_id}/{event}"},
        )
        if not response.is_success:
            raise ActivityFailed(f"webhook answered HTTP {response.status_code}")
