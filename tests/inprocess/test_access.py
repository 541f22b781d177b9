"""Who may call which route, in process with real tokens: every cell of the README's route x
caller table (`shared.access.ACCESS`) is a case here, the README's table is the table the code
applies, and the authentication layer refuses every token that does not authenticate."""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from command_service import bootstrap as command
from command_service.adapters import InMemoryCommandClient
from esctl.localstack.kafka import free_port
from query_service import bootstrap as query
from shared.access import ACCESS, CALLERS, PUBLIC, allowed, markdown_table
from shared.auth import mint
from shared.errors import ConfigurationError
from shared.http import PROBLEM_JSON
from shared.keystore import InMemoryKeyStore
from shared.principal import ADMIN, AUTHOR, EDITOR, LOCAL_DEMO, Principal, current_principal
from shared.readmodel.store import ReadStore
from tests.inprocess.conftest import TEST_SECRET, AppMaker, HTTPClient, healthy, token
from tests.inprocess.test_every_route_is_tested import served_routes

README = Path(__file__).resolve().parents[2] / "README.md"
#: the problem codes of authentication and authorization (nothing else answers them)
AUTH_CODES = {"unauthenticated", "forbidden", "invalid_token", "token_expired"}
IDS = {
    "post_id": "post-1",
    "author_id": "author-1",
    "subject_id": "author-1",
    "aggregate_id": "post-1",
    "workflow_id": "wf-1",
    "command_id": str(uuid.UUID(int=7)),
}


def readme_cells() -> dict[tuple[str, str, str], str]:
    """(service, route, caller) -> `yes`, `401` or `403`, as the README's table says."""
    cells = {}
    for line in README.read_text().splitlines():
        found = re.fullmatch(r"\| (\w+) \| `([A-Z]+ [^`]+)` \| (.+) \|", line)
        if found and found.group(1) in ACCESS:
            answers = [c.strip() for c in found.group(3).split("|")]
            for caller, answer in zip(CALLERS, answers, strict=True):
                cells[(found.group(1), found.group(2), caller)] = answer
    return cells


def _cells() -> list[Any]:
    """Every cell of the README's table (the expectation), one case each."""
    return [
        pytest.param(
            service,
            route,
            caller,
            answer,
            marks=pytest.mark.route(service, route),
            id=f"{service} {route} {caller}",
        )
        for (service, route, caller), answer in readme_cells().items()
    ]


def command_app(client: InMemoryCommandClient) -> FastAPI:
    settings = command.SETTINGS(command_timeout_ms=0)
    return command.build_app(settings, command.CommandAdapters(client=client, health=healthy))


@pytest.mark.parametrize(("service", "route", "caller", "answer"), _cells())
async def test_each_route_answers_each_caller_as_the_readme_table_says(
    http: HTTPClient, make: AppMaker, service: str, route: str, caller: str, answer: str
) -> None:
    """`yes`: the route's own answer (no authentication or authorization problem). `401`:
    `unauthenticated` with a Bearer challenge (no token); `403`: `forbidden` (a token of that
    role). A denied command is not sent."""
    sent = InMemoryCommandClient(lambda command_id, message: None)
    app = command_app(sent) if service == "command" else make(service)
    client = http(app, caller=None if caller == "anonymous" else caller)
    method, path = route.split(" ", 1)
    body = {"not_a_field": 1} if method in ("POST", "PATCH") else None
    r = await client.request(method, path.format(**IDS), json=body)
    code = r.json().get("code") if r.headers.get("content-type") == PROBLEM_JSON else None
    if answer == "yes":
        assert code not in AUTH_CODES, r.text
        return
    assert sent.sent == []
    if answer == "401":
        assert (r.status_code, code) == (401, "unauthenticated"), r.text
        assert r.json()["title"] == "Authentication required"
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    else:
        assert (answer, r.status_code, code) == ("403", 403, "forbidden"), r.text
        assert r.json()["title"] == "Forbidden" and caller in r.json()["detail"]


def test_the_readme_table_is_the_access_table() -> None:
    """The README's route x caller table is rendered from ACCESS, character for character, and
    has a cell for every route and caller of it (so the cases above cover every one)."""
    assert len(readme_cells()) == sum(len(t) for t in ACCESS.values()) * len(CALLERS)
    assert markdown_table() in README.read_text(), (
        "README's access table differs from shared/access.py: paste "
        "`python -c 'from shared.access import markdown_table; print(markdown_table())'`"
    )


def test_every_route_served_is_in_the_access_table_and_nothing_else(make: AppMaker) -> None:
    """The routes of the four apps and the rows of ACCESS are the same (a new route is closed
    until it is listed, and this fails until then)."""
    for service, table in ACCESS.items():
        served = {route for _, route in served_routes(service, make(service))}
        assert sorted(served - set(table)) == [], f"{service}: routes not in ACCESS"
        assert sorted(set(table) - served) == [], f"{service}: ACCESS names routes not served"


def test_admin_may_call_everything_and_public_routes_anyone() -> None:
    """The two rules every table follows: the admin column is all `yes`; a public route is
    `yes` in every column."""
    for service, table in ACCESS.items():
        for route, rule in table.items():
            assert allowed(service, route, ADMIN)
            if rule == PUBLIC:
                assert all(allowed(service, route, c) for c in CALLERS)


@pytest.mark.route("command", "POST /posts")
async def test_an_expired_token_is_401_token_expired_even_on_a_public_route(
    http: HTTPClient, make: AppMaker
) -> None:
    """A token past its `exp` (beyond the leeway): 401 `token_expired`, RFC 6750 challenge."""
    expired = mint(TEST_SECRET, "alice", [AUTHOR], ttl_s=60, now=time.time() - 3600)
    headers = {"Authorization": f"Bearer {expired}"}
    client = http(make("command"), caller=None)
    r = await client.post("/posts", json={}, headers=headers)
    assert (r.status_code, r.json()["code"]) == (401, "token_expired")
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    r = await http(make("query"), caller=None).get("/health", headers=headers)
    assert (r.status_code, r.json()["code"]) == (401, "token_expired")


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(f"Bearer {mint('another-secret-of-32-bytes-or-more!!', 'a', [ADMIN])}",
                     id="wrong-secret"),
        pytest.param("Bearer not.a.jwt", id="not-a-jwt"),
        pytest.param(
            "Bearer " + jwt.encode({"sub": "a", "roles": [ADMIN], "exp": time.time() + 60},
                                   None, algorithm="none"),
            id="alg-none",
        ),
        pytest.param(
            "Bearer " + jwt.encode({"roles": [ADMIN], "exp": time.time() + 60},
                                   TEST_SECRET, algorithm="HS256"),
            id="no-sub",
        ),
        pytest.param(
            "Bearer " + jwt.encode({"sub": "a", "roles": [ADMIN]}, TEST_SECRET, algorithm="HS256"),
            id="no-exp",
        ),
        pytest.param(f"Basic {TEST_SECRET}", id="basic"),
        pytest.param("Bearer", id="empty"),
    ],
)  # fmt: skip
@pytest.mark.route("workflow", "GET /workflows")
async def test_a_token_that_does_not_authenticate_is_401_invalid_token(
    http: HTTPClient, make: AppMaker, authorization: str
) -> None:
    """Wrong signature, not a JWT, `alg: none`, no `sub`, no `exp`, another scheme, nothing
    after Bearer: 401 `invalid_token` as problem+json with a Bearer challenge; the route never
    runs."""
    r = await http(make("workflow"), caller=None).get(
        "/workflows", headers={"Authorization": authorization}
    )
    assert r.status_code == 401, r.text
    assert r.headers["content-type"] == PROBLEM_JSON
    assert r.json()["code"] == "invalid_token"
    assert r.headers["WWW-Authenticate"].startswith("Bearer realm=")


@pytest.mark.route("workflow", "GET /workflows")
async def test_a_token_without_a_known_role_is_403_on_a_guarded_route(
    http: HTTPClient, make: AppMaker
) -> None:
    """A valid token whose `roles` are unknown (or absent): authenticated, but no role: 403."""
    headers = {"Authorization": f"Bearer {mint(TEST_SECRET, 'x', ['superuser'])}"}
    r = await http(make("workflow"), caller=None).get("/workflows", headers=headers)
    assert (r.status_code, r.json()["code"]) == (403, "forbidden")


@pytest.mark.route("workflow", "GET /workflows")
async def test_with_authentication_off_every_request_may_do_everything(
    http: HTTPClient, make: AppMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AUTH_ENABLED=false (local demos): no token needed anywhere, the caller is LOCAL_DEMO."""
    monkeypatch.setenv("AUTH_ENABLED", "false")
    monkeypatch.delenv("AUTH_HS256_SECRET")
    r = await http(make("workflow"), caller=None).get("/workflows")
    assert r.status_code == 200, r.text


def test_a_service_with_authentication_on_and_no_key_refuses_to_build(
    make: AppMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Authentication on (the default) without AUTH_HS256_SECRET or AUTH_JWKS_URL: the app is
    not built (ConfigurationError `auth_not_configured` naming the settings); a secret shorter
    than 32 bytes neither."""
    monkeypatch.delenv("AUTH_HS256_SECRET")
    for service in ("command", "query", "workflow", "projector"):
        with pytest.raises(ConfigurationError) as raised:
            make(service)
        assert raised.value.code == "auth_not_configured"
        assert "AUTH_HS256_SECRET" in raised.value.message
    monkeypatch.setenv("AUTH_HS256_SECRET", "short")
    with pytest.raises(ConfigurationError, match="too short"):
        make("query")


@pytest.mark.route("workflow", "GET /workflows")
async def test_the_guard_reads_the_caller_through_current_principal(
    http: HTTPClient, make: AppMaker
) -> None:
    """Overriding `current_principal` (as tests of other parts do) decides the guard too."""
    app = make("workflow")
    app.dependency_overrides[current_principal] = lambda: Principal("op", frozenset({"operator"}))
    assert (await http(app, caller=None).get("/workflows")).status_code == 200
    app.dependency_overrides[current_principal] = lambda: Principal("ed", frozenset({EDITOR}), True)
    assert (await http(app, caller=None).get("/workflows")).status_code == 403
    app.dependency_overrides[current_principal] = lambda: LOCAL_DEMO
    assert (await http(app, caller=None).get("/workflows")).status_code == 200


def _jwks_file(tmp_path: Path, public: Any, kid: str, algorithm: str) -> Path:
    jwk = (RSAAlgorithm if algorithm == "RS256" else ECAlgorithm).to_jwk(public, as_dict=True)
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk | {"kid": kid, "use": "sig", "alg": algorithm}]}))
    return path


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
async def test_tokens_of_a_jwks_are_verified_with_issuer_and_audience(
    tmp_path: Path, store: ReadStore, algorithm: str
) -> None:
    """A JWKS file (production keys): a token signed by its key with the configured issuer and
    audience is accepted (its roles count); another audience, another issuer, an unknown key
    id, or an HS256 token while no secret is set: 401."""
    key: Any = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if algorithm == "RS256"
        else ec.generate_private_key(ec.SECP256R1())
    )
    jwks = _jwks_file(tmp_path, key.public_key(), "k1", algorithm)
    settings = query.SETTINGS(
        auth_hs256_secret="",
        auth_jwks_url=jwks.as_uri(),
        auth_issuer="https://idp.example",
        auth_audience="blog",
    )
    app = query.build_app(settings, query.QueryAdapters(store, InMemoryKeyStore()))

    def signed(kid: str = "k1", **claims: Any) -> dict[str, str]:
        body = {
            "sub": "ops",
            "roles": ["operator"],
            "exp": time.time() + 60,
            "iss": "https://idp.example",
            "aud": "blog",
        } | claims
        encoded = jwt.encode(body, key, algorithm=algorithm, headers={"kid": kid})
        return {"Authorization": f"Bearer {encoded}"}

    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/metrics", headers=signed())).status_code == 200
        for refused in (signed(aud="other"), signed(iss="https://evil"), signed(kid="k9")):
            r = await client.get("/metrics", headers=refused)
            assert r.status_code == 401, r.text
        hs = {"Authorization": f"Bearer {token('operator')}"}
        assert (await client.get("/metrics", headers=hs)).status_code == 401
        assert (await client.get("/metrics")).status_code == 401


@pytest.mark.route("query", "GET /openapi.json")
async def test_the_documents_state_the_bearer_scheme_and_each_routes_401_and_403(
    http: HTTPClient, make: AppMaker
) -> None:
    """Every operation states its security (a public one: a token is optional) and its 401; a
    guarded one its 403 too, naming the roles allowed."""
    for service in ("command", "query", "workflow", "projector"):
        doc = (await http(make(service), caller=None).get("/openapi.json")).json()
        assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        for path, operations in doc["paths"].items():
            for method, operation in operations.items():
                rule = ACCESS[service][f"{method.upper()} {path}"]
                assert "401" in operation["responses"], (service, path)
                if rule == PUBLIC:
                    assert operation["security"] == [{}, {"bearer": []}]
                    continue
                assert operation["security"] == [{"bearer": []}]
                assert re.search("admin", operation["responses"]["403"]["description"])


async def test_keys_from_a_jwks_url_are_fetched_and_a_url_that_does_not_answer_is_a_503(
    tmp_path: Path, store: ReadStore
) -> None:
    """AUTH_JWKS_URL over HTTP (an identity provider's endpoint, served here by a local
    server): a token signed by a key it lists is accepted, an unknown key id is a 401. Once the
    server is gone, keys already fetched still verify (PyJWT's cache), while a service that has
    not fetched them yet cannot check any token: 503 `auth_unavailable` with Retry-After, not a
    401 telling the caller its token is bad."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    document = _jwks_file(tmp_path, key.public_key(), "k1", "RS256").read_text()
    fetched: list[str] = []

    async def serve(request: web.Request) -> web.Response:
        fetched.append(request.path)
        return web.Response(text=document, content_type="application/json")

    web_app = web.Application()
    web_app.router.add_get("/jwks.json", serve)
    runner = web.AppRunner(web_app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    settings = query.SETTINGS(
        auth_hs256_secret="", auth_jwks_url=f"http://127.0.0.1:{port}/jwks.json"
    )

    def app() -> FastAPI:
        return query.build_app(settings, query.QueryAdapters(store, InMemoryKeyStore()))

    def signed(kid: str) -> dict[str, str]:
        body = {"sub": "ops", "roles": ["operator"], "exp": time.time() + 60}
        encoded = jwt.encode(body, key, algorithm="RS256", headers={"kid": kid})
        return {"Authorization": f"Bearer {encoded}"}

    def client(app: FastAPI) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test")

    async with client(app()) as early, client(app()) as late:
        try:
            assert (await early.get("/metrics", headers=signed("k1"))).status_code == 200
            assert fetched == ["/jwks.json"]
            assert (await early.get("/metrics", headers=signed("k9"))).status_code == 401
        finally:
            await runner.cleanup()
        assert (await early.get("/metrics", headers=signed("k1"))).status_code == 200
        r = await late.get("/metrics", headers=signed("k1"))
        assert r.status_code == 503, r.text
        assert r.json()["code"] == "auth_unavailable"
        assert f"127.0.0.1:{port}" in r.json()["detail"]
        assert r.headers["Retry-After"] == "5"
        assert "WWW-Authenticate" not in r.headers
