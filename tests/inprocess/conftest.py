"""The in-process tier: each service's app built by its composition root (`build_app`) on
in-memory adapters, called through httpx's ASGI transport. No broker, no server, no process.

Authentication is on, as in production: every app verifies HS256 tokens signed with
`TEST_SECRET` (set in the environment for each test), and `http(app)` is a client that sends an
admin token; `http(app, caller=None)` sends none, `http(app, caller="author", sub="alice")` a
token of that role and subject.

Every test names the routes it exercises with `@pytest.mark.route(service, "METHOD /path")`;
the client records the routes each request reached, and a test that names a route it never
called fails (so the route list of test_every_route_is_tested.py cannot be satisfied on paper).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest
from fastapi import FastAPI
from starlette.routing import Match
from starlette.types import Receive, Scope, Send

from command_service import bootstrap as command
from command_service.adapters import InMemoryCommandClient
from projector_service import bootstrap as projector
from query_service import bootstrap as query
from shared.auth import mint
from shared.keystore import InMemoryKeyStore
from shared.principal import ADMIN, LOCAL_DEMO, Principal, current_principal
from shared.readmodel.store import ReadStore
from workflow_service import bootstrap as workflow
from workflow_service.api import InMemoryWorkflowView
from workflow_service.control import InMemoryControlChannel

#: The HS256 secret of the in-process apps (AUTH_HS256_SECRET while a test runs).
TEST_SECRET = "in-process-test-secret-0123456789abcdef"


def token(*roles: str, sub: str = "tester") -> str:
    """A valid bearer token of `roles` for `sub`, as the in-process apps accept it."""
    return mint(TEST_SECRET, sub, roles)


def bearer(*roles: str, sub: str = "tester") -> dict[str, str]:
    return {"Authorization": f"Bearer {token(*roles, sub=sub)}"}


class HTTPClient(Protocol):
    def __call__(
        self, app: FastAPI, *, caller: str | None = ADMIN, sub: str | None = None
    ) -> httpx.AsyncClient:
        """A client of `app` that sends a token of the role `caller` (None: no token)."""
        ...


AppMaker = Callable[..., FastAPI]
SERVICES = ("command", "projector", "query", "workflow")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "route(service, operation): the test calls `METHOD /path` of that service"
    )


class _Recorder:
    """Wraps an app; notes `METHOD /route-path` of every request a route of it takes (a route
    that would answer 405 to the method does not count)."""

    def __init__(self, app: FastAPI, hits: set[str]) -> None:
        self.app = app
        self.hits = hits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            probe = {**scope, "path_params": {}}
            for route in self.app.routes:
                if route.matches(probe)[0] is Match.FULL:
                    self.hits.add(f"{scope['method']} {route.path}")  # type: ignore[attr-defined]
                    break
        await self.app(scope, receive, send)


@pytest.fixture(autouse=True)
def auth_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every app built in a test verifies tokens signed with TEST_SECRET."""
    monkeypatch.setenv("AUTH_HS256_SECRET", TEST_SECRET)
    for name in ("AUTH_ENABLED", "AUTH_JWKS_URL", "AUTH_ISSUER", "AUTH_AUDIENCE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def hits() -> set[str]:
    """`METHOD /path` of every route this test's requests reached."""
    return set()


@pytest.fixture(autouse=True)
def named_routes_are_called(request: pytest.FixtureRequest, hits: set[str]) -> Iterator[None]:
    yield
    named = {m.args[1] for m in request.node.iter_markers("route")}
    never = sorted(named - hits)
    assert not never, f"{request.node.name} names routes it never called: {never}"


@pytest.fixture
async def http(hits: set[str]) -> AsyncIterator[HTTPClient]:
    """connect(app) -> an httpx client talking to the app in process, with an admin token
    (`caller=` another role, or None for no token)."""
    clients: list[httpx.AsyncClient] = []

    def connect(
        app: FastAPI, *, caller: str | None = ADMIN, sub: str | None = None
    ) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(_Recorder(app, hits))
        headers = bearer(caller, sub=sub or f"test-{caller}") if caller else {}
        client = httpx.AsyncClient(transport=transport, base_url="http://test", headers=headers)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        await client.aclose()


def as_caller(app: FastAPI, principal: Principal = LOCAL_DEMO) -> FastAPI:
    """`app` with every request made by `principal` (the authentication layer's part, played
    by overriding `current_principal`); by default `LOCAL_DEMO`, every request while
    authentication is off, which may read and do everything."""
    app.dependency_overrides[current_principal] = lambda: principal
    return app


async def healthy() -> dict[str, Any]:
    return {"status": "ok", "kafka": "reachable"}


async def kafka_down() -> dict[str, Any]:
    return {"status": "unavailable", "kafka": "cannot reach Kafka at 127.0.0.1:1"}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ReadStore]:
    s = ReadStore(f"sqlite:///{tmp_path / 'read.sqlite3'}", writer=True)
    await s.migrate()
    yield s
    await s.close()


@pytest.fixture
def make(store: ReadStore) -> AppMaker:
    """make(service, kafka=healthy, read_store=an empty SQLite store) -> the service's app on
    in-memory adapters, as its composition root builds it."""

    def build(service: str, kafka: Any = healthy, read_store: Any = store) -> FastAPI:
        if service == "command":
            client = InMemoryCommandClient(lambda command_id, message: None)
            return command.build_app(
                command.SETTINGS(), command.CommandAdapters(client=client, health=kafka)
            )
        if service == "projector":
            ports = projector.ProjectorAdapters(store=read_store, kafka=kafka)
            return projector.build_app(projector.SETTINGS(), ports)
        if service == "query":
            keys = InMemoryKeyStore()
            return query.build_app(query.SETTINGS(), query.QueryAdapters(read_store, keys))
        view, control = InMemoryWorkflowView(), InMemoryControlChannel()
        adapters = workflow.WorkflowAdapters(view=view, control=control, health=kafka)
        return workflow.build_app(workflow.SETTINGS(), adapters)

    return build
