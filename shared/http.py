"""The HTTP pieces every service shares: /health, /metrics, problem+json errors (answered and
documented), the streaming body limit, and the formats that requests and responses state in the
OpenAPI documents.

The OpenAPI document of each service is what other teams generate clients from, so it states
every status code a route answers, with its media type and schema (errors are
`application/problem+json`, schema `Problem`), the request headers with their formats, and the
response headers. A test fuzzes the running services against their documents (schemathesis).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Annotated, Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.access import OPERATIONS, PUBLIC, Rule, guard
from shared.errors import EsError

HealthCheck = Callable[[], Awaitable[dict[str, Any]]]

PROBLEM_JSON = "application/problem+json"
DEFAULT_BODY_LIMIT = 256 * 1024

# --------------------------------------------------------------------------------------------
# Formats. Patterns are written so that every regular-expression dialect reads them alike (the
# OpenAPI reader's ECMA-262, pydantic's Rust engine, Python's `re`): explicit character classes,
# no `\s`, `\d` or `\w`, whose meaning differs between them.

#: Every character that Python's `str.strip()` removes (and `\s` of Python's `re`).
WHITESPACE = (
    "\\x09-\\x0d\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
)
#: A string with at least one character that is not whitespace (what survives `strip()`).
NOT_BLANK = f"^[{WHITESPACE}]*[^{WHITESPACE}]"
#: An e-mail address as the command contract takes it: no whitespace, one `@`.
EMAIL = f"^[^@{WHITESPACE}]+@[^@{WHITESPACE}]+$"
#: `<partition>:<offset>[,<partition>:<offset>...]`: positions in the event log.
CONSISTENCY_TOKEN = "^[0-9]{1,10}:[0-9]{1,19}(,[0-9]{1,10}:[0-9]{1,19}){0,99}$"  # noqa: S105
#: The largest aggregate version a request may name (the read model stores 32-bit integers).
MAX_VERSION = 2**31 - 1

_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def _rfc3339(value: object) -> object:
    """Only an RFC 3339 date-time with its offset (the OpenAPI `date-time` format): pydantic
    alone would also take a Unix time ("1700000000") or a space instead of the `T`."""
    if isinstance(value, str) and not _RFC3339.fullmatch(value):
        raise ValueError("expected an RFC 3339 date-time with offset, e.g. 2025-01-31T09:30:00Z")
    return value


#: A point in time with its offset, as RFC 3339 writes it (`format: date-time`).
DateTime = Annotated[AwareDatetime, BeforeValidator(_rfc3339)]


def is_rfc3339(value: str) -> bool:
    return _RFC3339.fullmatch(value) is not None


# --------------------------------------------------------------------------------------------
# Problems


class FieldError(BaseModel):
    """One thing wrong with a request: where, and what."""

    field: str = Field(description="dotted location, e.g. `body.tags.0` or `query.limit`")
    message: str


class Problem(BaseModel):
    """An RFC 9457 problem. `code` is stable (clients branch on it); the other members that some
    problems carry are listed; more may be added."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": True})

    type: str = Field(description="`urn:esctl:problem:<code>`")
    title: str
    status: int = Field(ge=100, le=599)
    code: str = Field(description="stable machine-readable code")
    detail: str
    errors: list[FieldError] | None = Field(
        default=None, description="invalid_request: each field that is wrong and why"
    )
    retriable: bool | None = Field(default=None, description="retrying later can succeed")


def problem(status: int, code: str, title: str, detail: str = "", **extra: Any) -> JSONResponse:
    """An RFC 9457 problem response with a stable `code`."""
    body = {
        "type": f"urn:esctl:problem:{code}",
        "title": title,
        "status": status,
        "code": code,
        "detail": detail,
        **extra,
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON)


def invalid_request(errors: Iterable[Mapping[str, Any]], prefix: tuple[str, ...] = ()) -> Response:
    """422 `invalid_request` naming each wrong field and what is wrong with it (pydantic errors)."""
    fields = [
        {
            "field": ".".join(str(p) for p in (*prefix, *e.get("loc", ()))) or "request",
            "message": str(e.get("msg", "invalid")),
        }
        for e in errors
    ]
    detail = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
    return problem(422, "invalid_request", "Invalid request", detail, errors=fields)


PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


def problem_doc(description: str, **headers: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI response: a problem+json body, and the given response headers."""
    doc: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM_JSON: {"schema": PROBLEM_REF}},
    }
    if headers:
        doc["headers"] = headers
    return doc


def header_doc(description: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": schema}


RETRY_AFTER = header_doc("seconds to wait before retrying", {"type": "integer", "minimum": 0}, True)


def problems(statuses: Mapping[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses: one problem+json response per status, with its description."""
    return {status: problem_doc(text) for status, text in statuses.items()}


# --------------------------------------------------------------------------------------------
# The body limit


class _TooLarge(StarletteHTTPException):
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


# --------------------------------------------------------------------------------------------
# The app


class Health(BaseModel):
    """The service's readiness; services add their own members (positions, partitions...)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": True})

    service: str
    status: str = Field(description="`ok` when ready")


#: FastAPI 0.165+ makes its own request spans when a tracer provider is set; `shared.tracing`'s
#: middleware makes ours (with `traceresponse`, for any FastAPI version): one span per request
_NO_NATIVE_TRACING: dict[str, Any] = (
    {"telemetry": {"tracing": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)


def service_app(
    service: str,
    *,
    health: HealthCheck,
    registry: CollectorRegistry = REGISTRY,
    body_limit: int = DEFAULT_BODY_LIMIT,
    reads_elsewhere: str | None = None,
    access: Mapping[str, Rule] = OPERATIONS,
    **fastapi_kwargs: Any,
) -> FastAPI:
    """A FastAPI app with /health (200 ready / 503 not) and /metrics (Prometheus text); errors
    answered as problem+json (validation errors as 422 `invalid_request` naming the fields, also
    when a command or model built in a route does not validate; a body that is not JSON says
    where it breaks, or that JSON is expected); bodies above `body_limit` bytes refused with 413;
    and an OpenAPI document that says all of that. `reads_elsewhere` is added to the answer to a
    GET this service does not serve (the command service's pointer to the query service).
    Every API route is guarded by `access` (`shared.access`: who may call it; the caller is
    what the authentication middleware, `shared.auth`, left in `request.state.principal`), and
    the document states the bearer scheme and the 401/403 answers route by route."""
    app = FastAPI(
        title=service, dependencies=[guard(access)], **_NO_NATIVE_TRACING, **fastapi_kwargs
    )
    app.add_middleware(BodyLimit, limit=body_limit)

    health_doc = {
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}}
    }

    @app.get(
        "/health",
        tags=["operations"],
        responses={
            200: {"description": "ready", **health_doc},
            503: {"description": "not ready (Kafka or the store does not answer, or restoring)"}
            | health_doc,
        },
    )
    async def health_endpoint() -> Response:
        report = await health()
        status = 200 if report.get("status") == "ok" else 503
        return JSONResponse({"service": service, **report}, status_code=status)

    @app.get(
        "/metrics",
        tags=["operations"],
        response_class=Response,
        responses={
            200: {
                "description": "Prometheus text exposition",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    )
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
            # FastAPI's "error parsing the body" (400) for a JSON body that is not UTF-8; a body
            # that is not JSON is a 422 already: the same, for the same kind of fault
            return invalid_request([{"loc": ("body",), "msg": "the body is not UTF-8 JSON text"}])
        code = getattr(exc, "code", None) or f"http_{exc.status_code}"
        detail = str(exc.detail)
        if reads_elsewhere and request.method == "GET" and exc.status_code in (404, 405):
            detail = f"{detail}: {reads_elsewhere}"
        title = getattr(exc, "title", None) or str(exc.detail)
        response = problem(exc.status_code, code, title, detail)
        response.headers.update(exc.headers or {})  # e.g. Allow of a 405
        return response

    @app.exception_handler(RequestValidationError)
    async def request_invalid(request: Request, exc: RequestValidationError) -> Response:
        return invalid_request(_pointing(exc, request.headers.get("content-type", "")))

    @app.exception_handler(ValidationError)
    async def model_invalid(_: Request, exc: ValidationError) -> Response:
        # A model built from the request in a route (a command, say) did not validate: the
        # request is what is wrong, and the errors name its fields.
        return invalid_request(exc.errors(include_url=False))

    @app.exception_handler(EsError)
    async def es_error(_: Request, exc: EsError) -> Response:
        status = 503 if exc.retriable else 500
        return problem(status, exc.code, type(exc).__name__, exc.message, retriable=exc.retriable)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _document(app, access)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def not_json(content_type: str) -> str | None:
    """What is wrong with a request body's media type, if it is not JSON (a form, say)."""
    media = content_type.split(";", 1)[0].strip().lower()
    if not media or media == "application/json" or media.endswith("+json"):
        return None
    return f"the body must be JSON, sent with Content-Type: application/json (this one is {media})"


def _pointing(exc: RequestValidationError, content_type: str) -> list[Mapping[str, Any]]:
    """Validation errors that point the way: a body sent as a form (or anything but JSON) says
    JSON is expected; a JSON syntax error says at which line and column, and what is wrong
    there (FastAPI's own says "body.14: JSON decode error")."""
    errors = list(exc.errors())
    about_body = any(tuple(e.get("loc", ()))[:1] == ("body",) for e in errors)
    wrong_type = not_json(content_type)
    if about_body and wrong_type:
        return [{"loc": ("body",), "msg": wrong_type}]
    out: list[Mapping[str, Any]] = []
    for e in errors:
        if e.get("type") != "json_invalid":
            out.append(e)
            continue
        loc = tuple(e.get("loc", ()))
        pos = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else 0
        text = exc.body if isinstance(exc.body, str) else ""
        line = text.count("\n", 0, pos) + 1
        column = pos - text.rfind("\n", 0, pos)
        what = (e.get("ctx") or {}).get("error", "not JSON")
        where = f"line {line}, column {column}"
        out.append({"loc": ("body",), "msg": f"invalid JSON at {where}: {what}"})
    return out


def _no_null(schema: dict[str, Any]) -> None:
    """A query, header or path parameter cannot be JSON null: an optional one is left out
    (`required: false`). FastAPI documents `X | None` as `anyOf [X, null]`, which tells a
    client (and a fuzzer) to send the text "null"."""
    variants = schema.get("anyOf")
    if isinstance(variants, list) and {"type": "null"} in variants:
        kept = [v for v in variants if v != {"type": "null"}]
        del schema["anyOf"]
        if len(kept) == 1:
            schema.update(kept[0])
        else:
            schema["anyOf"] = kept
        if schema.get("default", "") is None:
            del schema["default"]


WWW_AUTHENTICATE = header_doc(
    '`Bearer realm="esctl"` (with `error` and `error_description` for a token refused)',
    {"type": "string"},
    True,
)
#: The security scheme of every service's document.
BEARER = {
    "type": "http",
    "scheme": "bearer",
    "bearerFormat": "JWT",
    "description": "a JWT with `sub` and `roles` (author, reviewer, editor, operator, admin); "
    "`esctl token` mints one for local use",
}


def _secure(operation: dict[str, Any], rule: Rule | None) -> None:
    """The operation's security requirement and its 401/403 answers, from its access rule."""
    responses = operation.setdefault("responses", {})
    if rule == PUBLIC:
        operation["security"] = [{}, {"bearer": []}]  # a token is optional (and checked)
        responses.setdefault(
            "401",
            problem_doc(
                "a token was sent and is not valid (`invalid_token`, `token_expired`...)",
                **{"WWW-Authenticate": WWW_AUTHENTICATE},
            ),
        )
        return
    operation["security"] = [{"bearer": []}]
    roles = ", ".join(sorted({*rule, "admin"})) if isinstance(rule, frozenset) else "admin"
    responses.setdefault(
        "401",
        problem_doc(
            "no bearer token (`unauthenticated`), or one that is not valid (`invalid_token`, "
            "`token_expired`...)",
            **{"WWW-Authenticate": WWW_AUTHENTICATE},
        ),
    )
    forbidden = f"`forbidden`: the roles allowed are {roles}"
    if "403" in responses:  # the route's own 403s (e.g. the domain's `not_owner`) as well
        mine = responses["403"]
        responses["403"] = {**mine, "description": f"{forbidden}; {mine.get('description', '')}"}
    else:
        responses["403"] = problem_doc(forbidden)


def _document(app: FastAPI, access: Mapping[str, Rule]) -> dict[str, Any]:
    """FastAPI's document, made true: every 422 is problem+json (FastAPI says application/json
    with its own schema), every operation with a body may answer 413, the shared schemas, and
    the bearer scheme with each operation's 401/403 (from the access table)."""
    doc = get_openapi(
        title=app.title,
        version=app.version,
        openapi_version=app.openapi_version,
        description=app.description,
        routes=app.routes,
    )
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for model in (Problem, FieldError, Health):
        found = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in found.pop("$defs", {}).items():
            schemas[name] = sub
        schemas[model.__name__] = found
    doc["components"].setdefault("securitySchemes", {})["bearer"] = BEARER
    for path, operations in doc.get("paths", {}).items():
        for method, operation in operations.items():
            _secure(operation, access.get(f"{method.upper()} {path}"))
            for parameter in operation.get("parameters", []):
                _no_null(parameter["schema"])
            responses = operation.setdefault("responses", {})
            if "422" in responses:
                responses["422"] = problem_doc(
                    "invalid request: `invalid_request` with `errors`, one per wrong field "
                    "(or a rejection code of the domain)"
                )
            if "requestBody" in operation:
                responses.setdefault("413", problem_doc("the body is larger than the limit"))
    return doc


__all__ = [
    "CONSISTENCY_TOKEN",
    "DEFAULT_BODY_LIMIT",
    "EMAIL",
    "MAX_VERSION",
    "NOT_BLANK",
    "PROBLEM_JSON",
    "BodyLimit",
    "DateTime",
    "HealthCheck",
    "Problem",
    "header_doc",
    "invalid_request",
    "problem",
    "problem_doc",
    "problems",
    "service_app",
]
