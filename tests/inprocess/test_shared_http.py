"""What every service's app does alike (shared.http.service_app), checked on a bare app: the
helpers the per-service tests use to send a chunked body live here too."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field
from starlette.types import Message

from shared.access import PUBLIC
from shared.http import PROBLEM_JSON, service_app
from tests.inprocess.conftest import HTTPClient, healthy, token


async def call_chunked(app: FastAPI, path: str, chunks: list[bytes]) -> tuple[int, bytes]:
    """POST `chunks` as a chunked body (no Content-Length) straight to the ASGI app (as an
    admin)."""
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
        "headers": [
            (b"content-type", b"application/json"),
            (b"transfer-encoding", b"chunked"),
            (b"authorization", f"Bearer {token('admin')}".encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body


async def test_a_model_built_in_a_route_that_does_not_validate_is_a_422_naming_the_field(
    http: HTTPClient,
) -> None:
    """Any pydantic ValidationError raised while a route builds a model from the request is
    422 `invalid_request` with the field and what is wrong (one mechanism for every route)."""

    class Inner(BaseModel):
        tags: list[str] = Field(max_length=1)

    app = service_app("t", health=healthy, access={"POST /things": PUBLIC})

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
