"""HTTP intake: each endpoint turns a request into a command on the commands topic and waits,
bounded, for its outcome from the results topic.

* 201 (create) / 200 (change): accepted; the body lists the events and their positions, and
  `X-Consistency-Token` carries the position of the last event for read-your-writes queries.
* 404 / 409 / 422: rejected, as `application/problem+json` with the rejection `code`.
* 202 + `Location: /commands/{id}`: the outcome did not arrive within the wait.
* 413: the body is larger than the limit (also for chunked bodies without Content-Length).
* `Idempotency-Key: <anything>` makes the command id a function of the key: a retried request
  returns the first outcome and appends nothing.
* The command names its actor: the subject of the caller's token and its roles (from the
  principal the authentication left on the request, never from the body); the domain decides
  ownership with it (403 `not_owner`). With authentication off there is no subject: no actor.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, Literal, Protocol

from fastapi import Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
)
from pydantic.config import JsonDict

from command_service.domain import Rejection
from command_service.domain.decide import (
    BODY_MAX_BYTES,
    TAG_MAX,
    TAGS_MAX,
    TITLE_MAX,
    content_rejection,
)
from command_service.records import RECORD_CODES, RECORD_TOO_LARGE
from shared.access import ACCESS
from shared.errors import EsError
from shared.http import (
    CONSISTENCY_TOKEN,
    EMAIL,
    MAX_VERSION,
    NOT_BLANK,
    BodyLimit,
    DateTime,
    HealthCheck,
    header_doc,
    invalid_request,
    not_json,
    problem,
    problem_doc,
    service_app,
)
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
from shared.messages.codec import EncodedMessage, encode_command
from shared.messages.results import CommandOutcome
from shared.principal import Principal, current_principal

IDEMPOTENCY_NAMESPACE = uuid.UUID("d9b2d0a4-73c1-4bb5-b1f4-3b3a8f0c5e77")
AggregateId = Annotated[str, Path(pattern=AGGREGATE_ID_PATTERN, description="aggregate id")]
ExpectedVersion = Annotated[
    int | None,
    Query(
        ge=0,
        le=MAX_VERSION,
        description="reject with version_conflict unless the aggregate is at it",
    ),
]
#: who calls (the authentication layer's principal): the actor of the command
Caller = Annotated[Principal, Depends(current_principal)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        max_length=200,
        description="any text: the same key maps to the same command id, so a retried request "
        "gets the first outcome and appends nothing",
    ),
]


class CommandSender(Protocol):
    """Puts a command on the commands topic and awaits its outcome (on Kafka:
    `shared.kafka.commands.CommandClient`; in memory: `command_service.adapters.
    InMemoryCommandClient`)."""

    async def send(
        self, command_id: uuid.UUID, message: EncodedMessage, *, wait_s: float
    ) -> CommandOutcome | None:
        """The outcome, or None when it did not arrive within `wait_s`; raises
        InfrastructureUnavailable when the command could not be enqueued."""

    def lookup(self, command_id: uuid.UUID) -> CommandOutcome | None:
        """A recent outcome (None: unknown, or still pending)."""


#: erase(subject, reason, force) -> report (shared.lifecycle.erase.erase_subject, bound by
#: bootstrap to the service's own key store)
Eraser = Callable[[str, str | None, bool], Awaitable[ErasureReport]]


def _documented(**rules: Any) -> Callable[[JsonDict], None]:
    """Rules the schema states and the domain enforces with its own rejection codes (the route
    checks the request with `content_rejection` as sent, so the two agree). A field that may be
    left out but not sent as null is documented without `null` and without a default."""

    def extra(schema: JsonDict) -> None:
        variants = schema.pop("anyOf", None)
        if isinstance(variants, list):  # `X | None`: null is refused, leaving the field out is not
            for variant in variants:
                if isinstance(variant, dict) and variant != {"type": "null"}:
                    schema.update(variant)
            schema.pop("default", None)
        schema.update(rules)

    return extra


TITLE_RULES = {"minLength": 1, "maxLength": TITLE_MAX, "pattern": NOT_BLANK}
BODY_RULES = {
    "maxLength": BODY_MAX_BYTES,
    "description": f"at most {BODY_MAX_BYTES} bytes as UTF-8 (body_too_large)",
}
TAGS_RULES = {
    "maxItems": TAGS_MAX,
    "uniqueItems": True,
    "items": {"type": "string", "minLength": 1, "maxLength": TAG_MAX, "pattern": NOT_BLANK},
    "description": "unique, also case-insensitively (invalid_tag)",
}
NAME = Field(min_length=1, max_length=200, pattern=NOT_BLANK)


class _Request(BaseModel):
    """A request body. Fields are checked as sent (the command built from them strips
    whitespace): what the schema states is what is accepted."""

    model_config = ConfigDict(extra="forbid")


class _Edit(_Request):
    @field_validator("*", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("must not be null: leave the field out to keep it as it is")
        return value


class RegisterAuthorRequest(_Request):
    author_id: str | None = Field(
        default=None, pattern=AGGREGATE_ID_PATTERN, description="chosen id; generated when absent"
    )
    name: str = NAME
    email: str = Field(min_length=3, max_length=320, pattern=EMAIL)


class EraseRequest(_Request):
    reason: str | None = Field(default=None, max_length=2000)
    force: StrictBool = Field(  # a JSON boolean (not 0/1, not "false"), as the schema says
        default=False,
        description="erase an id that never had personal data stored (refused otherwise, as a "
        "likely typo); personal data for it is refused from then on",
    )


class RenameAuthorRequest(_Request):
    name: str = NAME


class CreatePostRequest(_Request):
    post_id: str | None = Field(
        default=None, pattern=AGGREGATE_ID_PATTERN, description="chosen id; generated when absent"
    )
    author_id: str = Field(pattern=AGGREGATE_ID_PATTERN)
    title: str = Field(json_schema_extra=_documented(**TITLE_RULES))
    body: str = Field(default="", json_schema_extra=_documented(**BODY_RULES))
    tags: list[str] = Field(default_factory=list, json_schema_extra=_documented(**TAGS_RULES))


class EditPostRequest(_Edit):
    model_config = ConfigDict(json_schema_extra={"minProperties": 1})

    title: str | None = Field(default=None, json_schema_extra=_documented(**TITLE_RULES))
    body: str | None = Field(default=None, json_schema_extra=_documented(**BODY_RULES))
    tags: list[str] | None = Field(default=None, json_schema_extra=_documented(**TAGS_RULES))


class ApproveRequest(_Request):
    reviewer: str | None = Field(default=None, max_length=200)


class RejectRequest(_Request):
    reason: str = Field(min_length=1, max_length=2000, pattern=NOT_BLANK)
    reviewer: str | None = Field(default=None, max_length=200)


class SubmitRequest(_Request):
    publish_at: DateTime | None = Field(
        default=None, description="publish at this time once approved (RFC 3339 with offset)"
    )


class ScheduleRequest(_Request):
    publish_at: DateTime = Field(description="RFC 3339 with offset")


class UnpublishRequest(_Request):
    reason: str | None = Field(default=None, max_length=2000)


class CommandAccepted(BaseModel):
    """The outcome of an accepted command."""

    command_id: uuid.UUID
    status: str
    aggregate_id: str | None
    version: int | None
    events: list[dict[str, Any]]
    consistency_token: str | None
    duplicate: bool = False


class Pending(BaseModel):
    """The command is on the topic; its outcome did not arrive within the wait."""

    command_id: uuid.UUID
    status: Literal["pending"]
    detail: str


class CommandStatus(CommandOutcome):
    """The outcome of a recent command, and its consistency token."""

    token: str | None = Field(
        default=None,
        alias="consistency_token",
        pattern=CONSISTENCY_TOKEN,
        description="position of the last event (accepted commands)",
    )


CONSISTENCY_HEADER = {
    "X-Consistency-Token": header_doc(
        "`<partition>:<offset>` of the last event: send it to the query service to read this "
        "write (absent when the command appended nothing)",
        {"type": "string", "pattern": CONSISTENCY_TOKEN},
    )
}


def command_responses(success: int) -> dict[int | str, dict[str, Any]]:
    """What a command endpoint answers besides 422 (and 413, for a body): see the module doc."""
    return {
        success: {"description": "accepted", "headers": CONSISTENCY_HEADER},
        202: {
            "description": "enqueued; the outcome did not arrive within the wait (see Location)",
            "model": Pending,
            "headers": {
                "Location": header_doc(
                    "`/commands/{command_id}`: poll it for the outcome", {"type": "string"}, True
                )
            },
        },
        403: problem_doc(
            "`not_owner`: the caller may not act on what another author owns (its posts, its "
            "profile); `system_command`: only the system issues this command"
        ),
        404: problem_doc("the aggregate (or a post's author) does not exist"),
        409: problem_doc("conflict with the aggregate's state or version"),
        422: problem_doc("invalid request, or invalid content (the domain's rejection code)"),
        503: problem_doc("Kafka did not answer; retrying later can succeed"),
    }


# code -> HTTP status. 404: the thing is not there; 409: it is there but in another state or
# version; 422: the command itself is invalid whatever the state. Codes not listed: 422.
HTTP_STATUS: dict[str, int] = {
    "post_not_found": 404,
    "author_not_found": 404,
    "version_conflict": 409,
    "post_already_exists": 409,
    "author_already_registered": 409,
    "already_published": 409,
    "not_published": 409,
    "not_approved": 409,
    "not_in_review": 409,
    "not_a_draft": 409,
    "post_in_review": 409,
    "post_archived": 409,
    "no_scheduled_publication": 409,
    "wrong_aggregate_type": 409,
    "subject_erased": 409,
    "already_erased": 409,
    "title_required": 422,
    "title_too_long": 422,
    "body_too_large": 422,
    "too_many_tags": 422,
    "invalid_tag": 422,
    "nothing_to_change": 422,
    "system_command": 403,  # only the system issues it (the message says what to do instead)
    "not_owner": 403,  # the actor does not own the post or author profile (and may not act on it)
    # A command record that could not be read (command_service/records.py): no decision.
    **dict.fromkeys(RECORD_CODES, 422),
    RECORD_TOO_LARGE: 413,
}


def http_status(code: str) -> int:
    return HTTP_STATUS.get(code, 422)


def _rejected(rejection: Rejection) -> Response:
    """A rejection decided at the edge, as the command service would answer it."""
    return problem(
        http_status(rejection.code),
        rejection.code,
        "Command rejected",
        rejection.message,
        details=rejection.details,
    )


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


def _command_id(
    idempotency_key: str | None, caller: Principal, new_id: Callable[[], uuid.UUID]
) -> uuid.UUID:
    """A new id, or the id the idempotency key names. Keys are per actor: two callers' equal
    keys name two commands, so nobody gets the outcome of another's command back (without a
    subject, authentication off, the key alone names it, as before)."""
    if not idempotency_key:
        return new_id()
    scoped = f"{caller.subject}\n{idempotency_key}" if caller.subject else idempotency_key
    return uuid.uuid5(IDEMPOTENCY_NAMESPACE, scoped)


def build_api(
    *,
    service: str,
    client: CommandSender,
    health: HealthCheck,
    wait_s: float,
    body_limit: int,
    clock: Callable[[], datetime],
    new_id: Callable[[], uuid.UUID] = uuid.uuid4,
    eraser: Eraser | None = None,
) -> FastAPI:
    app = service_app(
        service,
        health=health,
        body_limit=body_limit,
        reads_elsewhere="this is the command service, which takes commands; reads (posts, "
        "authors, streams, stats) are served by the query service (port 8002 by default, "
        "e.g. GET /posts/{id} there)",
        description="Commands for the blog: every endpoint enqueues a "
        "command on Kafka and waits for its outcome.",
        version="1",
        access=ACCESS["command"],
    )

    async def submit(
        command: Callable[[], Command],
        aggregate_id: str,
        *,
        caller: Principal,
        expected_version: int | None,
        idempotency_key: str | None,
        created: bool = False,
    ) -> Response:
        """Build the command (a request whose values the command refuses is answered 422 by
        the app's ValidationError handler, naming the fields), send it, await the outcome.
        The caller's subject and roles are the command's actor (none without a subject)."""
        command_id = _command_id(idempotency_key, caller, new_id)
        message = encode_command(
            command(),
            command_id=command_id,
            aggregate_id=aggregate_id,
            expected_version=expected_version,
            occurred_at=clock(),
            actor=caller.subject,
            actor_roles=caller.roles if caller.subject is not None else None,
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

    @app.post(
        "/authors",
        status_code=201,
        response_model=CommandAccepted,
        responses=command_responses(201),
        tags=["authors"],
    )
    async def register_author(
        body: RegisterAuthorRequest, caller: Caller, idempotency_key: IdempotencyKey = None
    ) -> Response:
        """Register an author (name and email are personal data). Without `author_id` the
        profile is the caller's own (its token's subject), or a generated id when there is no
        subject (authentication off)."""
        author_id = body.author_id or caller.subject or f"author-{new_id().hex[:16]}"
        return await submit(
            lambda: RegisterAuthor(name=body.name, email=body.email),
            author_id,
            caller=caller,
            expected_version=None,
            idempotency_key=idempotency_key,
            created=True,
        )

    @app.patch(
        "/authors/{author_id}",
        response_model=CommandAccepted,
        responses=command_responses(200),
        tags=["authors"],
    )
    async def rename_author(
        author_id: AggregateId,
        body: RenameAuthorRequest,
        caller: Caller,
        expected_version: ExpectedVersion = None,
        idempotency_key: IdempotencyKey = None,
    ) -> Response:
        """Rename an author (an author renames only itself; an admin anyone)."""
        return await submit(
            lambda: RenameAuthor(name=body.name),
            author_id,
            caller=caller,
            expected_version=expected_version,
            idempotency_key=idempotency_key,
        )

    @app.post(
        "/posts",
        status_code=201,
        response_model=CommandAccepted,
        responses=command_responses(201),
        tags=["posts"],
    )
    async def create_post(
        body: CreatePostRequest, caller: Caller, idempotency_key: IdempotencyKey = None
    ) -> Response:
        """Create a draft post by an existing author (an author creates posts only as itself;
        an editor or admin as anyone)."""
        invalid = content_rejection(title=body.title, body=body.body, tags=body.tags)
        if invalid:
            return _rejected(invalid)
        post_id = body.post_id or f"post-{new_id().hex[:16]}"
        return await submit(
            lambda: CreatePost(
                author_id=body.author_id, title=body.title, body=body.body, tags=body.tags
            ),
            post_id,
            caller=caller,
            expected_version=None,
            idempotency_key=idempotency_key,
            created=True,
        )

    @app.patch(
        "/posts/{post_id}",
        response_model=CommandAccepted,
        responses=command_responses(200),
        tags=["posts"],
    )
    async def edit_post(
        post_id: AggregateId,
        body: EditPostRequest,
        caller: Caller,
        expected_version: ExpectedVersion = None,
        idempotency_key: IdempotencyKey = None,
    ) -> Response:
        """Edit title, body or tags (not while under review, never after archive; an author
        edits only its own posts, an editor or admin any)."""
        invalid = content_rejection(title=body.title, body=body.body, tags=body.tags, edit=True)
        if invalid:
            return _rejected(invalid)
        return await submit(
            lambda: EditPost(title=body.title, body=body.body, tags=body.tags),
            post_id,
            caller=caller,
            expected_version=expected_version,
            idempotency_key=idempotency_key,
        )

    def transition(
        path: str, make: Callable[[Any], Command], model: type[BaseModel] | None, doc: str
    ) -> None:
        async def endpoint(
            post_id: AggregateId,
            request: Request,
            caller: Caller,
            expected_version: ExpectedVersion = None,
            idempotency_key: IdempotencyKey = None,
        ) -> Response:
            body: Any = None
            if model is not None:
                raw = await request.body()
                wrong_type = not_json(request.headers.get("content-type", "")) if raw else None
                if wrong_type:
                    return invalid_request([{"loc": ("body",), "msg": wrong_type}])
                try:
                    body = model.model_validate_json(raw or b"{}")
                except ValidationError as exc:
                    return invalid_request(exc.errors(include_url=False), prefix=("body",))
            return await submit(
                lambda: make(body),
                post_id,
                caller=caller,
                expected_version=expected_version,
                idempotency_key=idempotency_key,
            )

        endpoint.__doc__ = doc
        extra: dict[str, Any] = {}
        if model is not None:
            schema = model.model_json_schema()
            extra["openapi_extra"] = {
                "requestBody": {
                    "content": {"application/json": {"schema": schema}},
                    # optional unless a field is required (schedule's publish_at, say)
                    "required": bool(schema.get("required")),
                }
            }
        app.post(
            f"/posts/{{post_id}}/{path}",
            response_model=CommandAccepted,
            responses=command_responses(200),
            tags=["posts"],
            name=f"{path}_post",
            **extra,
        )(endpoint)

    transition(
        "submit",
        lambda b: SubmitPostForReview(publish_at=b.publish_at if b else None),
        SubmitRequest,
        "Submit a draft for review (optionally with the publication time wanted on approval; "
        "an author submits only its own posts, an editor or admin any).",
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

    _erasure_route(app, eraser)

    @app.get(
        "/commands/{command_id}",
        tags=["commands"],
        responses={
            200: {"description": "the outcome", "model": CommandStatus},
            404: problem_doc("no outcome yet, or older than this instance's window"),
        },
    )
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


class KeyCheckBody(BaseModel):
    """What the key store says after the deletion (all must hold for `complete`)."""

    key_store: str = Field(description="where the store is, without credentials")
    key_left: bool = Field(description="the store still returns a key for the subject")
    tombstone: bool = Field(description="the subject is marked erased (no new key is made)")
    probe_opens: bool = Field(description="a value sealed with the deleted key still opens")


class ErasureReportBody(BaseModel):
    """What an erasure did (POST /subjects/{id}/erase)."""

    subject: str
    key_deleted: bool
    key_check: KeyCheckBody | None = Field(
        description="the key store's confirmation; null when the erasure stopped before it"
    )
    outcome: dict[str, Any] | None = Field(description="the EraseSubject outcome")
    commands_deleted_below: dict[str, int]
    commands_pending: dict[str, int]
    dead_letters_removed: dict[str, int]
    complete: bool


def _erasure_route(app: FastAPI, eraser: Eraser | None) -> None:
    @app.post(
        "/subjects/{subject_id}/erase",
        tags=["erasure"],
        responses={
            200: {"description": "erased: the report", "model": ErasureReportBody},
            403: problem_doc(
                "`forbidden`: the admin role is needed; `erasure_disabled`: this instance has "
                "no key store to erase in"
            ),
            409: problem_doc(
                "the id is no data subject: never had personal data stored "
                "(`not_a_data_subject`, nothing changed; `force` erases it anyway), or a post "
                "(`wrong_aggregate_type`, nothing deleted)"
            ),
            503: {
                "description": "a step did not finish (the report, or a problem); the key is "
                "deleted, call again",
                "model": ErasureReportBody,
                "content": problem_doc("")["content"],
            },
        },
    )
    async def erase_subject(
        subject_id: AggregateId,
        body: EraseRequest | None = None,
    ) -> Response:
        """Erase a data subject (an author) for good: its key is deleted, so its name and email
        are unreadable in every event, snapshot, read model and archive; `SubjectErased` is
        appended, the processed plaintext commands and its dead letters are purged.
        Needs the admin role (a JWT; the deprecated ERASURE_TOKEN still counts as an admin
        credential of this service). 200 with the report when complete:
        every step done and the key's deletion confirmed in this service's key store
        (`key_check`); 503 when a step is left (calling again finishes it)."""
        if eraser is None:  # the caller is an admin (the access table): no key store here
            return problem(
                403,
                "erasure_disabled",
                "Erasure over HTTP is disabled",
                "this instance has no key store to erase in (use `esctl erase`)",
            )
        try:
            done = await eraser(
                subject_id, body.reason if body else None, body.force if body else False
            )
        except (ErasureRefused, NotADataSubject) as exc:
            return problem(409, exc.code, "Not a data subject", exc.message)
        except EsError as exc:
            return problem(503, exc.code, "Erasure not finished", exc.message)
        return JSONResponse(done.as_dict(), status_code=200 if done.complete else 503)


__all__ = ["BodyLimit", "CommandSender", "Eraser", "build_api"]
