"""HTTP intake: each endpoint turns a request into a command on the commands topic and waits,
bounded, for its outcome from the results topic.

* 201 (create) / 200 (change): accepted; the body lists the events and their positions, and
  `X-Consistency-Token` carries the position of the last event for read-your-writes queries.
* 404 / 409 / 422: rejected, as `application/problem+json` with the rejection `code`.
* 202 + `Location: /commands/{id}`: the outcome did not arrive within the wait.
* 413: the body is larger than the limit (also for chunked bodies without Content-Length).
* `Idempotency-Key: <anything>` makes the command id a function of the key: a retried request
  returns the first outcome and appends nothing.
"""

from __future__ import annotations

import hmac
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import FastAPI, Header, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from command_service.domain.rejections import http_status
from shared.errors import EsError
from shared.http import HealthCheck, problem, service_app
from shared.kafka.commands import CommandClient
from shared.lifecycle.erase import ErasureRefused, ErasureReport, NotADataSubject
from shared.messages.base import AGGREGATE_ID_PATTERN, Command
from shared.messages.blog import (
    ApprovePost,
    ArchivePost,
    CancelScheduledPublication,
    CreatePost,
    EditPost,
    PublishPost,
    RegisterAuthor,
    RejectPost,
    RenameAuthor,
    SchedulePublication,
    SubmitPostForReview,
    UnpublishPost,
)
from shared.messages.codec import encode_command
from shared.messages.results import CommandOutcome

IDEMPOTENCY_NAMESPACE = uuid.UUID("d9b2d0a4-73c1-4bb5-b1f4-3b3a8f0c5e77")
AggregateId = Annotated[str, Path(pattern=AGGREGATE_ID_PATTERN, description="aggregate id")]
ExpectedVersion = Annotated[
    int | None,
    Query(ge=0, description="reject with version_conflict unless the aggregate is at it"),
]
IdempotencyKey = Annotated[
    str | None, Header(max_length=200, description="same key -> same command id")
]


#: erase(subject, reason, force) -> report (shared.lifecycle.erase.erase_subject, bound by
#: bootstrap to the service's own key store)
Eraser = Callable[[str, str | None, bool], Awaitable[ErasureReport]]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class RegisterAuthorRequest(_Request):
    author_id: str | None = Field(
        default=None, pattern=AGGREGATE_ID_PATTERN, description="chosen id; generated when absent"
    )
    name: str = Field(min_length=1, max_length=200)
    email: str = Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")


class EraseRequest(_Request):
    reason: str | None = Field(default=None, max_length=2000)
    force: bool = Field(
        default=False,
        description="erase an id that never had personal data stored (refused otherwise, as a "
        "likely typo); personal data for it is refused from then on",
    )


class RenameAuthorRequest(_Request):
    name: str = Field(min_length=1, max_length=200)


class CreatePostRequest(_Request):
    post_id: str | None = Field(default=None, pattern=AGGREGATE_ID_PATTERN)
    author_id: str = Field(pattern=AGGREGATE_ID_PATTERN)
    title: str
    body: str = ""
    tags: list[str] = Field(default_factory=list)


class EditPostRequest(_Request):
    title: str | None = None
    body: str | None = None
    tags: list[str] | None = None


class ApproveRequest(_Request):
    reviewer: str | None = None


class RejectRequest(_Request):
    reason: str = Field(min_length=1, max_length=2000)
    reviewer: str | None = None


class SubmitRequest(_Request):
    publish_at: AwareDatetime | None = Field(
        default=None, description="publish at this time once approved (ISO 8601 with offset)"
    )


class ScheduleRequest(_Request):
    publish_at: AwareDatetime = Field(description="ISO 8601 with offset")


class UnpublishRequest(_Request):
    reason: str | None = None


class CommandAccepted(BaseModel):
    """The outcome of an accepted command."""

    command_id: uuid.UUID
    status: str
    aggregate_id: str | None
    version: int | None
    events: list[dict[str, Any]]
    consistency_token: str | None
    duplicate: bool = False


class _TooLarge(HTTPException):
    """Raised while the body streams in. An HTTPException, because FastAPI turns any other
    exception raised while it reads a body into a 400 "error parsing the body"."""

    code = "request_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the body exceeds {limit} bytes")


class BodyLimit:
    """Refuse request bodies above `limit` bytes with 413, counting chunked bodies as they
    stream in (Content-Length alone cannot be trusted: it may be absent)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLarge(self.limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem(
            413,
            "request_too_large",
            "Request body too large",
            f"the body exceeds {self.limit} bytes",
        )
        await response(scope, receive, send)


def _outcome_response(outcome: CommandOutcome, created: bool) -> Response:
    if outcome.status == "rejected":
        code = outcome.code or "rejected"
        return problem(
            http_status(code),
            code,
            "Command rejected",
            outcome.message or code,
            command_id=str(outcome.command_id),
            aggregate_id=outcome.aggregate_id,
            current_version=outcome.version,
            details=outcome.details,
        )
    body = CommandAccepted(
        command_id=outcome.command_id,
        status=outcome.status,
        aggregate_id=outcome.aggregate_id,
        version=outcome.version,
        events=[e.model_dump() for e in outcome.events],
        consistency_token=outcome.consistency_token,
        duplicate=outcome.duplicate,
    )
    headers = (
        {"X-Consistency-Token": outcome.consistency_token} if outcome.consistency_token else {}
    )
    return JSONResponse(
        json.loads(body.model_dump_json()), status_code=201 if created else 200, headers=headers
    )


def build_api(
    *,
    service: str,
    client: CommandClient,
    health: HealthCheck,
    wait_s: float,
    body_limit: int,
    clock: Callable[[], datetime],
    new_id: Callable[[], uuid.UUID] = uuid.uuid4,
    eraser: Eraser | None = None,
    erasure_token: str = "",
) -> FastAPI:
    app = service_app(
        service,
        health=health,
        description="Commands for the blog: every endpoint enqueues a "
        "command on Kafka and waits for its outcome.",
        version="1",
    )
    app.add_middleware(BodyLimit, limit=body_limit)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> Response:
        errors = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return problem(422, "invalid_request", "Invalid request", "; ".join(errors))

    async def submit(
        command: Command,
        aggregate_id: str,
        *,
        expected_version: int | None,
        idempotency_key: str | None,
        created: bool = False,
    ) -> Response:
        command_id = (
            uuid.uuid5(IDEMPOTENCY_NAMESPACE, idempotency_key) if idempotency_key else new_id()
        )
        message = encode_command(
            command,
            command_id=command_id,
            aggregate_id=aggregate_id,
            expected_version=expected_version,
            occurred_at=clock(),
        )
        outcome = await client.send(command_id, message, wait_s=wait_s)
        if outcome is None:
            return JSONResponse(
                {
                    "command_id": str(command_id),
                    "status": "pending",
                    "detail": f"no outcome within {wait_s:g}s; poll the Location",
                },
                status_code=202,
                headers={"Location": f"/commands/{command_id}"},
            )
        return _outcome_response(outcome, created)

    documented: dict[int | str, dict[str, Any]] = {
        202: {"description": "enqueued; outcome not yet known (see Location)"},
        404: {"description": "aggregate not found (problem+json)"},
        409: {"description": "conflict with the aggregate's state or version (problem+json)"},
        413: {"description": "body too large"},
        422: {"description": "invalid command (problem+json)"},
    }

    @app.post(
        "/authors",
        status_code=201,
        response_model=CommandAccepted,
        responses=documented,
        tags=["authors"],
    )
    async def register_author(
        body: RegisterAuthorRequest, idempotency_key: IdempotencyKey = None
    ) -> Response:
        """Register an author (name and email are personal data)."""
        author_id = body.author_id or f"author-{new_id().hex[:16]}"
        return await submit(
            RegisterAuthor(name=body.name, email=body.email),
            author_id,
            expected_version=None,
            idempotency_key=idempotency_key,
            created=True,
        )

    @app.patch(
        "/authors/{author_id}",
        response_model=CommandAccepted,
        responses=documented,
        tags=["authors"],
    )
    async def rename_author(
        author_id: AggregateId,
        body: RenameAuthorRequest,
        expected_version: ExpectedVersion = None,
        idempotency_key: IdempotencyKey = None,
    ) -> Response:
        """Rename an author."""
        return await submit(
            RenameAuthor(name=body.name),
            author_id,
            expected_version=expected_version,
            idempotency_key=idempotency_key,
        )

    @app.post(
        "/posts",
        status_code=201,
        response_model=CommandAccepted,
        responses=documented,
        tags=["posts"],
    )
    async def create_post(
        body: CreatePostRequest, idempotency_key: IdempotencyKey = None
    ) -> Response:
        """Create a draft post by an existing author."""
        post_id = body.post_id or f"post-{new_id().hex[:16]}"
        command = CreatePost(
            author_id=body.author_id, title=body.title, body=body.body, tags=body.tags
        )
        return await submit(
            command, post_id, expected_version=None, idempotency_key=idempotency_key, created=True
        )

    @app.patch(
        "/posts/{post_id}", response_model=CommandAccepted, responses=documented, tags=["posts"]
    )
    async def edit_post(
        post_id: AggregateId,
        body: EditPostRequest,
        expected_version: ExpectedVersion = None,
        idempotency_key: IdempotencyKey = None,
    ) -> Response:
        """Edit title, body or tags (not while under review, never after archive)."""
        command = EditPost(title=body.title, body=body.body, tags=body.tags)
        return await submit(
            command, post_id, expected_version=expected_version, idempotency_key=idempotency_key
        )

    def transition(
        path: str, make: Callable[[Any], Command], model: type[BaseModel] | None, doc: str
    ) -> None:
        async def endpoint(
            post_id: AggregateId,
            request: Request,
            expected_version: ExpectedVersion = None,
            idempotency_key: IdempotencyKey = None,
        ) -> Response:
            body: Any = None
            if model is not None:
                raw = await request.body()
                try:
                    body = model.model_validate_json(raw or b"{}")
                except ValueError as exc:
                    return problem(422, "invalid_request", "Invalid request", str(exc))
            return await submit(
                make(body),
                post_id,
                expected_version=expected_version,
                idempotency_key=idempotency_key,
            )

        endpoint.__doc__ = doc
        extra: dict[str, Any] = {}
        if model is not None:
            extra["openapi_extra"] = {
                "requestBody": {
                    "content": {"application/json": {"schema": model.model_json_schema()}},
                    "required": False,
                }
            }
        app.post(
            f"/posts/{{post_id}}/{path}",
            response_model=CommandAccepted,
            responses=documented,
            tags=["posts"],
            name=f"{path}_post",
            **extra,
        )(endpoint)

    transition(
        "submit",
        lambda b: SubmitPostForReview(publish_at=b.publish_at if b else None),
        SubmitRequest,
        "Submit a draft for review (optionally with the publication time wanted on approval).",
    )
    transition(
        "schedule",
        lambda b: SchedulePublication(publish_at=b.publish_at),
        ScheduleRequest,
        "Publish an approved or unpublished post at a given time (replaces any earlier schedule).",
    )
    transition(
        "cancel-schedule",
        lambda _: CancelScheduledPublication(),
        None,
        "Cancel the pending scheduled publication.",
    )
    transition(
        "approve",
        lambda b: ApprovePost(reviewer=b.reviewer),
        ApproveRequest,
        "Approve a post in review.",
    )
    transition(
        "reject",
        lambda b: RejectPost(reason=b.reason, reviewer=b.reviewer),
        RejectRequest,
        "Reject a post in review; it returns to draft.",
    )
    transition("publish", lambda _: PublishPost(), None, "Publish an approved post.")
    transition(
        "unpublish",
        lambda b: UnpublishPost(reason=b.reason),
        UnpublishRequest,
        "Take a published post offline.",
    )
    transition("archive", lambda _: ArchivePost(), None, "Archive a post (final).")

    _erasure_route(app, eraser, erasure_token)

    @app.get("/commands/{command_id}", tags=["commands"])
    async def command_status(command_id: uuid.UUID) -> Response:
        """The outcome of a recent command (accepted or rejected), as seen by this instance."""
        outcome = client.lookup(command_id)
        if outcome is None:
            return problem(
                404,
                "command_unknown",
                "Unknown command",
                f"no outcome for {command_id} yet: still pending, or older than "
                "this instance's window",
            )
        return JSONResponse(
            json.loads(outcome.model_dump_json()) | {"consistency_token": outcome.consistency_token}
        )

    return app


def _erasure_route(app: FastAPI, eraser: Eraser | None, erasure_token: str) -> None:
    @app.post(
        "/subjects/{subject_id}/erase",
        tags=["erasure"],
        responses={
            401: {"description": "missing or wrong bearer token (problem+json)"},
            403: {"description": "erasure over HTTP is off: ERASURE_TOKEN is empty"},
            409: {
                "description": "the id is no data subject: never had personal data stored "
                "(`not_a_data_subject`, nothing changed; `force` erases it anyway), or a post "
                "(`wrong_aggregate_type`, nothing deleted)"
            },
            503: {"description": "a step did not finish; the key is deleted, call again"},
        },
    )
    async def erase_subject(
        subject_id: AggregateId,
        body: EraseRequest | None = None,
        authorization: Annotated[str | None, Header(max_length=500)] = None,
    ) -> Response:
        """Erase a data subject (an author) for good: its key is deleted, so its name and email
        are unreadable in every event, snapshot, read model and archive; `SubjectErased` is
        appended, the processed plaintext commands and its dead letters are purged.
        Needs `Authorization: Bearer <ERASURE_TOKEN>`. 200 with the report when complete:
        every step done and the key's deletion confirmed in this service's key store
        (`key_check`); 503 when a step is left (calling again finishes it)."""
        if not erasure_token or eraser is None:
            return problem(
                403,
                "erasure_disabled",
                "Erasure over HTTP is disabled",
                "set ERASURE_TOKEN on the command service to enable it (or use `esctl erase`)",
            )
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), erasure_token.encode()
        ):
            response = problem(
                401,
                "unauthorized",
                "Authentication required",
                "send Authorization: Bearer <ERASURE_TOKEN>",
            )
            response.headers["WWW-Authenticate"] = 'Bearer realm="erasure"'
            return response
        try:
            report = await eraser(
                subject_id, body.reason if body else None, body.force if body else False
            )
        except (ErasureRefused, NotADataSubject) as exc:
            return problem(409, exc.code, "Not a data subject", exc.message)
        except EsError as exc:
            return problem(503, exc.code, "Erasure not finished", exc.message)
        return JSONResponse(report.as_dict(), status_code=200 if report.complete else 503)


__all__ = ["BodyLimit", "build_api"]
