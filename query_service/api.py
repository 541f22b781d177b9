"""Read-only HTTP API over the read model.

Read-your-writes: a request with `X-Consistency-Token: <partition>:<offset>[,...]` (from a
command response) waits, bounded, until the projection has applied those positions; if it has
not in time the answer is 503 with `Retry-After`. Every response says how fresh it is: the
`freshness` object of the body and the `X-Read-Model-Positions` / `X-Read-Model-Applied-At`
headers give, per partition, the next offset to apply and when the last batch was applied.

Every route answers by caller (`query_service/access.py`): published posts are public; other
posts only for their author, reviewers, editors and admins (404 for anyone else, as if there
were none: their existence is not revealed); an author's email only for that author and admins;
names public once their author has a published post. What a caller may not read of an author
is null and named in `withheld_fields`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse

from query_service.access import (
    field_rule,
    may_read_email,
    may_read_history,
    may_read_name,
    may_read_post,
    post_for,
    reads_unpublished,
    withhold_sealed,
)
from shared import tracing
from shared.access import ACCESS
from shared.http import (
    CONSISTENCY_TOKEN,
    DEFAULT_BODY_LIMIT,
    MAX_VERSION,
    RETRY_AFTER,
    DateTime,
    HealthCheck,
    header_doc,
    problem,
    problem_doc,
    service_app,
)
from shared.messages.base import AGGREGATE_ID_PATTERN
from shared.personal import subjects_in
from shared.principal import ADMIN, Principal, current_principal
from shared.readmodel.pipeline import KeyReader, event_of_row, open_author, open_rows
from shared.readmodel.store import ReadStore, ReadStoreUnavailable
from shared.readmodel.views import Apply, View, apply_author, apply_post, fold

Id = Annotated[str, Path(pattern=AGGREGATE_ID_PATTERN)]
#: who calls (the authentication layer's principal): what the answer may hold
Caller = Annotated[Principal, Depends(current_principal)]
Limit = Annotated[int, Query(ge=1, le=200, description="page size (max 200)")]
Cursor = Annotated[
    str | None,
    Query(max_length=500, pattern="^[A-Za-z0-9_-]*$", description="next_cursor of a page"),
]
Token = Annotated[
    str | None,
    Header(
        alias="X-Consistency-Token",
        pattern=CONSISTENCY_TOKEN,
        description="`<partition>:<offset>[,...]` from a command response: the answer waits "
        "until the read model has applied those positions (503 if it has not in time)",
    ),
]
Status = Literal["draft", "in_review", "approved", "published", "unpublished", "archived"]
Version = Annotated[int | None, Query(ge=1, le=MAX_VERSION, description="aggregate version")]
At = Annotated[DateTime | None, Query(description="RFC 3339 time with offset")]

#: The headers of every answer based on the read model: how fresh it is.
FRESHNESS_HEADERS = {
    "X-Read-Model-Positions": header_doc(
        "per partition, the next offset the read model will apply (`<partition>:<offset>,...`)",
        {"type": "string", "pattern": f"^$|{CONSISTENCY_TOKEN}"},
        required=True,
    ),
    "X-Read-Model-Applied-At": header_doc(
        "when the read model last applied a batch (absent before the first)",
        {"type": "string", "format": "date-time"},
    ),
}


def answers(not_found: str = "") -> dict[int | str, dict[str, Any]]:
    """The documented responses of a query: 200 with its freshness headers, 503 when the
    consistency token was not reached in time, and 404 `not_found` when given."""
    return {
        200: {"description": "the answer, with its freshness", "headers": FRESHNESS_HEADERS},
        503: problem_doc(
            "`not_consistent_yet`: the read model did not reach the consistency token's "
            "positions in time (`missing` lists them); `read_store_unavailable`: the read "
            "store's database does not answer (down, restarting, or slower than its timeouts); "
            "retry after Retry-After seconds",
            **{"Retry-After": RETRY_AFTER},
        ),
        **({404: problem_doc(not_found)} if not_found else {}),
    }


#: the Retry-After of a 503 `read_store_unavailable` (a restart of PostgreSQL takes seconds)
READ_STORE_RETRY_AFTER_S = 2


class NotConsistentYet(Exception):
    def __init__(self, missing: dict[int, int]) -> None:
        super().__init__(missing)
        self.missing = missing


def parse_token(token: str) -> dict[int, int]:
    """`"2:41,0:7"` -> {2: 41, 0: 7}; the highest offset wins per partition."""
    wanted: dict[int, int] = {}
    for part in token.split(","):
        partition, sep, offset = part.strip().partition(":")
        if not sep or not partition.isdigit() or not offset.isdigit():
            raise ValueError(f"bad consistency token part {part!r}: expected <partition>:<offset>")
        wanted[int(partition)] = max(wanted.get(int(partition), -1), int(offset))
    return wanted


class PositionWatcher:
    """One reader of the read model's positions per process, shared by all waiting requests.

    Reading per request would multiply database reads by the number of waiters; here the
    positions are read only while someone waits: soon after a waiter arrives or the positions
    moved (`min_interval_s`), then less often, doubling up to `interval_s`, while nothing moves.
    A fixed 10 ms poll made a sequential read-your-writes request wait 5 ms on average after
    the projector's commit; starting at 1 ms and backing off costs a few more reads per waiting
    request and halved that (`bench/profiles/end-to-end.md`). Never more than one read per
    `min_interval_s`.
    """

    def __init__(
        self, store: ReadStore, interval_s: float = 0.01, *, min_interval_s: float = 0.001
    ) -> None:
        self.store = store
        self.interval_s = interval_s
        self.min_interval_s = min(min_interval_s, interval_s)
        self.reads = 0
        self._latest: dict[int, dict[str, Any]] = {}
        self._changed = asyncio.Condition()
        self._waiters = 0
        self._task: asyncio.Task[None] | None = None
        #: the read store's absence, as the last read found it (waiters answer with it)
        self._error: ReadStoreUnavailable | None = None

    async def _read(self) -> None:
        try:
            self._latest = await self.store.freshness()
        except ReadStoreUnavailable as exc:
            self._error = exc
            raise
        self._error = None
        self.reads += 1

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        pause = self.min_interval_s / 2  # the first read without progress comes after the minimum
        while self._waiters > 0:
            started = loop.time()
            await asyncio.sleep(pause)
            if self._waiters == 0:
                break
            before = self._latest
            try:
                await self._read()
            except ReadStoreUnavailable:
                async with self._changed:
                    self._changed.notify_all()  # the waiters answer 503 read_store_unavailable
                break
            async with self._changed:
                self._changed.notify_all()
            moved = self._latest != before
            pause = self.min_interval_s if moved else min(pause * 2, self.interval_s)
            rest = started + self.min_interval_s - loop.time()
            if rest > 0:
                await asyncio.sleep(rest)

    async def wait_for(self, wanted: dict[int, int], timeout_s: float) -> dict[int, dict[str, Any]]:
        def missing() -> dict[int, int]:
            return {
                p: o
                for p, o in wanted.items()
                if self._latest.get(p, {}).get("next_offset", 0) <= o
            }

        await self._read()
        if not missing():
            return self._latest
        self._waiters += 1
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._poll())
        try:
            async with asyncio.timeout(timeout_s), self._changed:
                await self._changed.wait_for(lambda: self._error is not None or not missing())
        except TimeoutError:
            raise NotConsistentYet(missing()) from None
        finally:
            self._waiters -= 1
        if self._error is not None:
            raise self._error
        return self._latest


async def _wait(
    watcher: PositionWatcher, token: str, timeout_s: float
) -> dict[int, dict[str, Any]]:
    """The wait for a consistency token; with tracing on, a span of the request's trace: the
    token, how long it waited, and an error status when it was not reached in time."""
    wanted = parse_token(token)
    if not tracing.ENABLED:
        return await watcher.wait_for(wanted, timeout_s)
    with tracing.span("wait for consistency", **{"esctl.consistency.token": token}) as span:
        started = time.monotonic()
        try:
            return await watcher.wait_for(wanted, timeout_s)
        finally:
            waited_ms = round((time.monotonic() - started) * 1000, 3)
            span.set_attribute("esctl.consistency.waited_ms", waited_ms)


def _error_handlers(app: FastAPI, consistency_wait_s: float) -> None:
    @app.exception_handler(NotConsistentYet)
    async def not_yet(_: Request, exc: NotConsistentYet) -> Response:
        response = problem(
            503,
            "not_consistent_yet",
            "The read model has not caught up yet",
            f"waited {consistency_wait_s:g}s; still missing "
            + ", ".join(f"partition {p} up to offset {o}" for p, o in exc.missing.items()),
            missing={str(p): o for p, o in exc.missing.items()},
        )
        response.headers["Retry-After"] = "1"
        return response

    @app.exception_handler(ReadStoreUnavailable)
    async def store_gone(_: Request, exc: ReadStoreUnavailable) -> Response:
        # not a 500: nothing is wrong with the request or the service, and it passes
        response = problem(
            503, exc.code, "The read store is unavailable", exc.message, retriable=True
        )
        response.headers["Retry-After"] = str(READ_STORE_RETRY_AFTER_S)
        return response


def build_api(
    *,
    service: str,
    store: ReadStore,
    keys: KeyReader,
    health: HealthCheck,
    consistency_wait_s: float,
    body_limit: int = DEFAULT_BODY_LIMIT,
    consistency_poll_s: float = 0.01,
) -> FastAPI:
    """The query API. A consistency wait reads the positions every `consistency_poll_s` at the
    most (sooner right after a waiter arrives or the positions move)."""
    app = service_app(
        service,
        health=health,
        body_limit=body_limit,
        version="1",
        description="Queries over the blog's read model. Send the "
        "X-Consistency-Token of a command response to read your own writes.",
        access=ACCESS["query"],
    )

    _error_handlers(app, consistency_wait_s)

    watcher = PositionWatcher(store, consistency_poll_s)
    app.state.position_watcher = watcher

    async def freshness_after(token: str | None) -> dict[int, dict[str, Any]]:
        """Wait for the token (if any); return the freshness the answer is based on."""
        if not token:
            return await store.freshness()
        return await _wait(watcher, token, consistency_wait_s)

    def answer(
        body: dict[str, Any], fresh: dict[int, dict[str, Any]], status: int = 200
    ) -> JSONResponse:
        positions = ",".join(f"{p}:{f['next_offset']}" for p, f in sorted(fresh.items()))
        applied = max((f["applied_at"] for f in fresh.values()), default=None)
        body["freshness"] = {
            "positions": {str(p): f["next_offset"] for p, f in sorted(fresh.items())},
            "applied_at": applied,
            "last_event_at": max(
                (f["last_event_at"] for f in fresh.values() if f["last_event_at"]), default=None
            ),
        }
        headers = {"X-Read-Model-Positions": positions}
        if applied is not None:
            headers["X-Read-Model-Applied-At"] = applied.isoformat()
        return JSONResponse(jsonable_encoder(body), status_code=status, headers=headers)

    async def page(caller: Principal, token: str | None, **filters: Any) -> Response:
        """A page of posts the caller may read (filtered in the query: pages stay full)."""
        fresh = await freshness_after(token)
        try:
            items, next_cursor = await store.list_posts(
                **filters,
                published_only=not reads_unpublished(caller),
                also_by=caller.subject,
            )
        except ValueError as exc:
            return problem(422, "invalid_cursor", "Invalid cursor", str(exc))
        return answer(
            {"items": [post_for(caller, dict(v)) for v in items], "next_cursor": next_cursor},
            fresh,
        )

    @app.get("/posts", tags=["posts"], responses=answers())
    async def list_posts(
        caller: Caller,
        status: Status | None = None,
        author: str | None = None,
        tag: str | None = None,
        limit: Limit = 50,
        cursor: Cursor = None,
        token: Token = None,
    ) -> Response:
        """Posts, newest first; filter by status, author and tag; cursor pagination. Only the
        posts the caller may read: published ones, its own, and (reviewers, editors, admins)
        all."""
        return await page(
            caller, token, status=status, author_id=author, tag=tag, limit=limit, cursor=cursor
        )

    @app.get("/authors/{author_id}/posts", tags=["posts"], responses=answers())
    async def author_posts(
        author_id: Id,
        caller: Caller,
        status: Status | None = None,
        limit: Limit = 50,
        cursor: Cursor = None,
        token: Token = None,
    ) -> Response:
        """An author's posts, newest first (those the caller may read, as for GET /posts)."""
        return await page(
            caller, token, author_id=author_id, status=status, limit=limit, cursor=cursor
        )

    async def view_at(
        kind: str,
        aggregate_id: str,
        version: int | None,
        at: datetime | None,
        current: Callable[[str], Awaitable[View | None]],
        apply: Apply,
    ) -> View | Response:
        """The view now, or folded from its events up to `version` / time `at`; 404 if none."""
        if version is None and at is None:
            view = await current(aggregate_id)
        else:
            view = await _as_of(store, aggregate_id, version, at, apply)
        if view is None:
            return _not_found(kind, aggregate_id, as_of=bool(version or at))
        return view

    @app.get(
        "/posts/{post_id}",
        tags=["posts"],
        responses=answers(
            not_found="`post_not_found` (at that version or time), also for a post the caller "
            "may not read (not published, and not its author, a reviewer, editor or admin)"
        ),
    )
    async def get_post(
        post_id: Id,
        caller: Caller,
        token: Token = None,
        version: Version = None,
        at: At = None,
    ) -> Response:
        """A post now, or as it was at `version` or at time `at` (folded from its events).
        A post that is not published is 404 for a caller who may not read it; as it was, a
        post is shown only if the caller may read it both then and now."""
        fresh = await freshness_after(token)
        view = await view_at("post", post_id, version, at, store.get_post, apply_post)
        view = await _post_for(store, caller, view, as_of=version is not None or at is not None)
        return view if isinstance(view, Response) else answer(dict(view), fresh)

    @app.get(
        "/authors/{author_id}",
        tags=["authors"],
        responses=answers(
            not_found="`author_not_found` (at that version or time), also for an author the "
            "caller may read nothing of (no published post, and not that author, a reviewer, "
            "editor or admin)"
        ),
    )
    async def get_author(
        author_id: Id,
        caller: Caller,
        token: Token = None,
        version: Version = None,
        at: At = None,
    ) -> Response:
        """An author now, or as at `version` / time `at`. Personal fields (name, email) are
        opened with the author's key; once the author is erased they are null and listed in
        `erased_fields`, at every version. By caller: the email only for that author and
        admins, the name for anyone once the author has a published post (before: the
        author, reviewers, editors, admins); what is not shown is null and listed in
        `withheld_fields`."""
        fresh = await freshness_after(token)
        view = await view_at("author", author_id, version, at, store.get_author, apply_author)
        view = await _author_for(store, keys, caller, view, as_of=bool(version or at))
        return view if isinstance(view, Response) else answer(view, fresh)

    @app.get(
        "/streams/{aggregate_id}/events",
        tags=["events"],
        responses=answers(),
    )
    async def stream(
        aggregate_id: Id,
        caller: Caller,
        token: Token = None,
        from_version: Annotated[int, Query(ge=1, le=MAX_VERSION)] = 1,
        to_version: Version = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
    ) -> Response:
        """The events of one aggregate in version order, with their log positions and their
        `actor` (who asked for them: the audit trail). By caller: a post's events only for
        its author, reviewers, editors and admins, an author's only for who may read its
        name or email (an empty list otherwise, as for an unknown stream); personal fields
        the caller may not read are null and listed per event in `withheld_fields`."""
        fresh = await freshness_after(token)
        events = await _readable_events(
            store,
            caller,
            aggregate_id,
            await store.events(
                aggregate_id, from_version=from_version, to_version=to_version, limit=limit
            ),
        )
        # personal fields opened; those whose subject was erased read as null, listed per event
        return answer(
            {"aggregate_id": aggregate_id, "events": await open_rows(events, keys)}, fresh
        )

    @app.get("/stats", tags=["stats"], responses=answers())
    async def stats(caller: Caller, token: Token = None) -> Response:
        """Posts per status, tag counts, publications per day, authors, events. The tag
        counts are of published posts only for callers who may not read the others."""
        fresh = await freshness_after(token)
        return answer(await store.stats(published_tags_only=not reads_unpublished(caller)), fresh)

    @app.exception_handler(ValueError)
    async def bad_value(_: Request, exc: ValueError) -> Response:
        return problem(422, "invalid_request", "Invalid request", str(exc))

    return app


async def _as_of(
    store: ReadStore,
    aggregate_id: str,
    version: int | None,
    at: datetime | None,
    apply: Apply,
) -> View | None:
    """The view of an aggregate at `version` or time `at`, folded from its stored events."""
    rows = await store.events(aggregate_id, to_version=version, until=at)
    view = fold(map(event_of_row, rows), apply)
    if view is None or (version is not None and view["version"] != version):
        return None
    return view


def _not_found(kind: str, aggregate_id: str, *, as_of: bool) -> Response:
    """404; also what a caller gets for what it may not read (its existence unrevealed)."""
    return problem(
        404,
        f"{kind}_not_found",
        f"{kind.capitalize()} not found",
        f"no {kind} {aggregate_id}" + (" at that version/time" if as_of else ""),
    )


async def _post_for(
    store: ReadStore, caller: Principal, view: View | Response, *, as_of: bool
) -> View | Response:
    """The post `view` if `caller` may read it (as it was, with `as_of`: only if it may read the
    post now too; its review fields only for its author and the readers of unpublished posts),
    else 404 as for no post; a response (a 404 already) passes through."""
    if isinstance(view, Response) or reads_unpublished(caller):
        return view
    now = await store.get_post(view["post_id"]) if as_of else view
    if now is not None and may_read_post(caller, now) and may_read_post(caller, view):
        return post_for(caller, view)
    return _not_found("post", view["post_id"], as_of=as_of)


async def _readable_fields(
    store: ReadStore, caller: Principal, author_id: str
) -> tuple[bool, bool]:
    """Whether `caller` may read the author's (name, email)."""
    email = may_read_email(caller, author_id)
    # the published posts are looked up only when the caller's roles do not settle it
    name = may_read_name(caller, author_id, published=False) or bool(
        await store.authors_with_published_posts([author_id])
    )
    return name, email


async def _author_for(
    store: ReadStore, keys: KeyReader, caller: Principal, view: View | Response, *, as_of: bool
) -> dict[str, Any] | Response:
    """The author `view` for `caller`: what it may not read null and named in
    `withheld_fields` (never opened); 404 as for no author when it may read nothing of it; a
    response (a 404 already) passes through."""
    if isinstance(view, Response):
        return view
    name, email = await _readable_fields(store, caller, view["author_id"])
    if not (name or email):
        return _not_found("author", view["author_id"], as_of=as_of)
    withheld = [f for f, shown in (("name", name), ("email", email)) if not shown]
    # withheld before opening: a sealed value replaced by "" is not decrypted
    out = await open_author({**view, **dict.fromkeys(withheld, "")}, keys)
    out.update(dict.fromkeys(withheld), withheld_fields=withheld)
    return out


async def _readable_events(
    store: ReadStore, caller: Principal, aggregate_id: str, events: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The stream as the caller may read it: none of a post whose history it may not read, nor
    of an author it may read nothing of (as for a stream that does not exist); the personal
    fields it may not read withheld (null, listed in `withheld_fields`)."""
    if events and not caller.has(ADMIN):
        post = await store.get_post(aggregate_id)
        if post is not None:
            if not may_read_history(caller, post):
                return []
        elif await store.get_author(aggregate_id) is not None:
            if not any(await _readable_fields(store, caller, aggregate_id)):
                return []
        elif not reads_unpublished(caller):
            return []  # neither a post nor an author: for those who read everything
    published = await store.authors_with_published_posts(
        subjects_in([row["payload"] for row in events])
    )
    allowed = field_rule(caller, published)
    for row in events:
        row["payload"], row["withheld_fields"] = withhold_sealed(row["payload"], allowed)
    return events
