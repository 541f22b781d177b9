"""Bad input at the HTTP edges, in process: clear 4xx problems instead of 500s, the streaming
body limit on every service, and OpenAPI documents that say what the services answer."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel, Field
from starlette.types import Message

from command_service.api import build_api as command_api
from query_service.api import build_api as query_api
from shared.http import CONSISTENCY_TOKEN, PROBLEM_JSON, service_app
from shared.kafka.topics import Topics
from shared.messages.results import CommandOutcome, EventPosition
from shared.settings import KafkaSettings
from workflow_service.api import build_api as workflow_api


async def healthy() -> dict[str, Any]:
    return {"status": "ok"}


class AcceptingClient:
    """Stands in for the Kafka command client: every command is accepted as version 1."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send(self, command_id: uuid.UUID, message: Any, wait_s: float) -> CommandOutcome:
        self.sent.append(message.value)
        return CommandOutcome(
            command_id=command_id,
            status="accepted",
            aggregate_id="p1",
            version=1,
            events=[EventPosition(type="PostCreated", aggregate_version=1, partition=0, offset=7)],
        )

    def lookup(self, command_id: uuid.UUID) -> CommandOutcome | None:
        return None


class EmptyStore:
    """A read store with nothing in it."""

    async def freshness(self) -> dict[int, dict[str, Any]]:
        return {}

    async def events(self, aggregate_id: str, **_: Any) -> list[dict[str, Any]]:
        return []

    async def get_post(self, post_id: str) -> None:
        return None


def command_app(client: AcceptingClient | None = None) -> FastAPI:
    return command_api(
        service="command-service",
        client=client or AcceptingClient(),  # type: ignore[arg-type]
        health=healthy,
        wait_s=1,
        body_limit=2048,
        clock=lambda: datetime.now(UTC),
    )


def query_app() -> FastAPI:
    return query_api(
        service="query-service",
        store=EmptyStore(),  # type: ignore[arg-type]
        keys=None,  # type: ignore[arg-type]
        health=healthy,
        consistency_wait_s=0.1,
    )


async def workflow_app(body_limit: int = 2048) -> FastAPI:
    class NoWorkflows:
        workflows: dict[str, Any] = {}  # noqa: RUF012

    app, _, _ = workflow_api(
        service="workflow-service",
        view=NoWorkflows(),  # type: ignore[arg-type]
        topics=Topics.from_settings(KafkaSettings()),
        bootstrap_servers="127.0.0.1:1",
        health=healthy,
        clock=lambda: datetime.now(UTC),
        stuck_after=timedelta(minutes=10),
        body_limit=body_limit,
    )
    return app


@pytest.fixture
async def http() -> AsyncIterator[Any]:
    clients: list[httpx.AsyncClient] = []

    def connect(app: FastAPI) -> httpx.AsyncClient:
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t")
        clients.append(client)
        return client

    yield connect
    for client in clients:
        await client.aclose()


@pytest.mark.parametrize(("method", "path"), [("POST", "/posts"), ("PATCH", "/posts/p1")])
async def test_an_empty_tag_is_a_422_problem_naming_the_tag_not_a_500(
    http: Any, method: str, path: str
) -> None:
    """`"tags": [""]` on create and edit: 422 problem+json `invalid_tag` naming the tag; nothing
    is sent to Kafka."""
    client = AcceptingClient()
    r = await http(command_app(client)).request(
        method,
        path,
        json={"author_id": "ada", "title": "T", "tags": [""]}
        if method == "POST"
        else {"tags": [""]},
    )
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == PROBLEM_JSON
    assert (r.json()["code"], r.json()["details"]) == ("invalid_tag", {"tag": ""})
    assert client.sent == []


async def test_a_model_built_in_a_route_that_does_not_validate_is_a_422_naming_the_field(
    http: Any,
) -> None:
    """Any pydantic ValidationError raised while a route builds a model from the request is
    422 `invalid_request` with the field and what is wrong (one mechanism for every route)."""

    class Inner(BaseModel):
        tags: list[str] = Field(max_length=1)

    app = service_app("t", health=healthy)

    @app.post("/things")
    async def things(body: dict[str, Any]) -> dict[str, Any]:
        return Inner(tags=body["tags"]).model_dump()

    r = await http(app).post("/things", json={"tags": ["a", "b"]})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == PROBLEM_JSON
    problem = r.json()
    assert problem["code"] == "invalid_request"
    assert problem["errors"] == [
        {"field": "tags", "message": "List should have at most 1 item after validation, not 2"}
    ]
    assert "tags: List should have at most 1 item" in problem["detail"]


async def test_a_version_beyond_any_stored_one_is_a_422_problem(http: Any) -> None:
    """`?version=66821475735271825408` (beyond 64 bits) is 422 naming `query.version`, not 500."""
    r = await http(query_app()).get("/posts/p1", params={"version": "66821475735271825408"})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == PROBLEM_JSON
    assert [e["field"] for e in r.json()["errors"]] == ["query.version"]


async def test_a_malformed_consistency_token_is_refused_before_any_wait(http: Any) -> None:
    """An X-Consistency-Token that is not `<partition>:<offset>[,...]` is 422 naming the header."""
    r = await http(query_app()).get("/stats", headers={"X-Consistency-Token": "0:1,"})
    assert r.status_code == 422, r.text
    assert [e["field"] for e in r.json()["errors"]] == ["header.X-Consistency-Token"]


async def test_a_method_the_route_lacks_is_405_with_allow(http: Any) -> None:
    """405 problem+json keeps the `Allow` header that lists the route's methods."""
    r = await http(command_app()).delete("/posts")
    assert r.status_code == 405
    assert r.headers["content-type"] == PROBLEM_JSON
    assert r.headers["allow"] == "POST"


async def call_chunked(app: FastAPI, path: str, chunks: list[bytes]) -> tuple[int, bytes]:
    """POST `chunks` as a chunked body (no Content-Length) straight to the ASGI app."""
    pending = list(chunks)
    sent: list[Message] = []

    async def receive() -> Message:
        body = pending.pop(0) if pending else b""
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body


async def test_the_workflow_api_refuses_a_chunked_body_over_its_limit_with_413() -> None:
    """The workflow service counts a chunked body as it streams in: past the limit, 413
    problem+json `request_too_large`, before the route runs."""
    app = await workflow_app(body_limit=2048)
    chunk = b'{"reason": "' + b"x" * 1000
    status, body = await call_chunked(app, "/workflows/w1/retry", [chunk, b"x" * 1000, b"x" * 100])
    assert status == 413
    assert b'"code":"request_too_large"' in body
    small, _ = await call_chunked(app, "/workflows/w1/retry", [b'{"reason": "x"}'])
    assert small == 404  # under the limit the route answers: no such workflow


async def test_every_error_every_route_documents_is_problem_json() -> None:
    """In all three OpenAPI documents, every 4xx/5xx response of every route (but /health's
    503) is application/problem+json with the Problem schema, and the token header has its
    pattern."""
    apps = {"command": command_app(), "query": query_app(), "workflow": await workflow_app()}
    for name, app in apps.items():
        doc = app.openapi()
        assert "Problem" in doc["components"]["schemas"], name
        for path, operations in doc["paths"].items():
            for method, operation in operations.items():
                for status, response in operation["responses"].items():
                    if int(status) < 400 or path == "/health":
                        continue
                    content = response.get("content", {})
                    assert PROBLEM_JSON in content, (name, method, path, status)
                    assert content[PROBLEM_JSON]["schema"] == {
                        "$ref": "#/components/schemas/Problem"
                    }
    token = next(
        p
        for p in apps["query"].openapi()["paths"]["/stats"]["get"]["parameters"]
        if p["name"] == "X-Consistency-Token"
    )
    assert (token["in"], token["required"]) == ("header", False)
    assert token["schema"]["type"] == "string"  # never the text "null"
    assert token["schema"]["pattern"] == CONSISTENCY_TOKEN
    assert re.fullmatch(CONSISTENCY_TOKEN, "2:41,0:7") and not re.fullmatch(CONSISTENCY_TOKEN, "0")


async def test_a_body_that_is_not_utf8_json_is_a_422_naming_the_body(http: Any) -> None:
    """Bytes that are not UTF-8 as a JSON body: 422 `invalid_request` on `body` (was 400)."""
    r = await http(command_app()).post(
        "/posts", content=b"\xff", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == PROBLEM_JSON
    assert [e["field"] for e in r.json()["errors"]] == ["body"]


async def test_erasure_asks_for_credentials_before_it_says_it_is_off(http: Any) -> None:
    """Erasure without credentials: 401 with WWW-Authenticate, also while it is off; with a
    bearer token while it is off: 403 `erasure_disabled`."""
    client = http(command_app())
    r = await client.post("/subjects/ada/erase")
    assert (r.status_code, r.json()["code"]) == (401, "unauthorized")
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = await client.post("/subjects/ada/erase", headers={"Authorization": "Bearer x"})
    assert (r.status_code, r.json()["code"]) == (403, "erasure_disabled")


async def test_a_transition_whose_body_has_required_fields_documents_it_as_required() -> None:
    """`schedule` needs `publish_at`: its body is required in the document; `submit`'s is not."""
    paths = command_app().openapi()["paths"]
    assert paths["/posts/{post_id}/schedule"]["post"]["requestBody"]["required"] is True
    assert paths["/posts/{post_id}/submit"]["post"]["requestBody"]["required"] is False


@pytest.mark.parametrize("path", ["/posts", "/posts/p1/reject"])
async def test_a_json_syntax_error_says_at_which_line_and_column(http: Any, path: str) -> None:
    """A body that breaks JSON: 422 naming the line and column where, and what is wrong."""
    r = await http(command_app()).post(
        path,
        content=b'{"post_id": "p1",\n "reason": }',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == PROBLEM_JSON
    [error] = r.json()["errors"]
    assert error["field"] == "body"
    assert re.search(r"line 2,? column 12", error["message"]), error


@pytest.mark.parametrize("path", ["/posts", "/posts/p1/reject", "/authors"])
async def test_a_form_encoded_body_is_told_that_json_is_expected(http: Any, path: str) -> None:
    """A form post (what `curl -d a=b` sends): 422 saying the body must be JSON, with its
    content type, and nothing is sent to Kafka."""
    client = AcceptingClient()
    r = await http(command_app(client)).post(path, data={"title": "x", "reason": "y"})
    assert r.status_code == 422, r.text
    [error] = r.json()["errors"]
    assert error["field"] == "body"
    assert "must be JSON" in error["message"]
    assert "application/x-www-form-urlencoded" in error["message"]
    assert client.sent == []


@pytest.mark.parametrize("path", ["/posts/p1", "/posts", "/authors/ada", "/"])
async def test_a_read_on_the_command_service_points_to_the_query_service(
    http: Any, path: str
) -> None:
    """GET of a read path (or of nothing) on the command service: the 404/405 problem says
    that reads are served by the query service and where."""
    r = await http(command_app()).get(path)
    assert r.status_code in (404, 405), r.text
    assert r.headers["content-type"] == PROBLEM_JSON
    assert "query service" in r.json()["detail"] and "8002" in r.json()["detail"]
