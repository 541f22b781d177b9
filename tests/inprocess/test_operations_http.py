"""The operations routes every service has, in process: /health (200 ready, 503 not, with the
reason), /metrics, and the documents (/openapi.json, /docs, /docs/oauth2-redirect, /redoc)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from command_service import bootstrap as command
from command_service.adapters import InMemoryCommandClient
from shared.http import CONSISTENCY_TOKEN, PROBLEM_JSON
from tests.inprocess.conftest import SERVICES, AppMaker, HTTPClient, healthy, kafka_down

DOCUMENTS = ("/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")


class BrokenStore:
    """A read store whose database does not answer."""

    async def freshness(self) -> dict[int, dict[str, Any]]:
        raise ConnectionRefusedError("database down")


def on_every_service(operation: str) -> pytest.MarkDecorator:
    return pytest.mark.parametrize(
        "service",
        [pytest.param(s, marks=pytest.mark.route(s, operation)) for s in SERVICES],
    )


@on_every_service("GET /health")
async def test_health_is_200_when_ready_and_names_the_service(
    http: HTTPClient, make: AppMaker, service: str
) -> None:
    """GET /health when its dependencies answer: 200, `status: ok`, the service's name."""
    r = await http(make(service)).get("/health")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "ok" and r.json()["service"] == make(service).title


@pytest.mark.parametrize(
    "service",
    [pytest.param(s, marks=pytest.mark.route(s, "GET /health")) for s in SERVICES if s != "query"],
)
async def test_health_is_503_with_the_reason_when_kafka_does_not_answer(
    http: HTTPClient, make: AppMaker, service: str
) -> None:
    """Kafka unreachable: 503, `status: unavailable`, and why (the query service has no Kafka)."""
    r = await http(make(service, kafka=kafka_down)).get("/health")
    assert r.status_code == 503, r.text
    assert r.json()["status"] == "unavailable" and "cannot reach Kafka" in r.json()["kafka"]


@pytest.mark.parametrize(
    "service",
    [pytest.param(s, marks=pytest.mark.route(s, "GET /health")) for s in ("projector", "query")],
)
async def test_health_is_503_with_the_reason_when_the_read_store_fails(
    http: HTTPClient, make: AppMaker, service: str
) -> None:
    """The read store does not answer: 503 with the database error; positions when it does."""
    assert (await http(make(service)).get("/health")).json()["positions"] == {}
    r = await http(make(service, read_store=BrokenStore())).get("/health")
    assert r.status_code == 503, r.text
    assert r.json()["status"] == "unavailable" and "database down" in r.json()["read_store"]


@pytest.mark.route("command", "GET /health")
async def test_the_command_services_health_says_restoring_until_partitions_are_restored(
    http: HTTPClient,
) -> None:
    """While an owned partition is restoring: 503 `status: restoring` listing owned and
    restoring partitions; once restored, 200."""
    restoring = {1}
    health = command.readiness(healthy, lambda: {0, 1}, lambda: restoring)
    client = InMemoryCommandClient(lambda command_id, message: None)
    app = command.build_app(command.SETTINGS(), command.CommandAdapters(client, health))
    r = await http(app).get("/health")
    assert (r.status_code, r.json()["status"]) == (503, "restoring")
    assert r.json()["partitions"] == {"owned": [0, 1], "restoring": [1]}
    restoring.clear()
    assert (await http(app).get("/health")).status_code == 200


@on_every_service("GET /metrics")
async def test_metrics_are_prometheus_text(http: HTTPClient, make: AppMaker, service: str) -> None:
    """GET /metrics: the Prometheus text exposition."""
    r = await http(make(service)).get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert "# TYPE python_info gauge" in r.text or "# HELP" in r.text


@pytest.mark.parametrize(
    ("service", "document"),
    [
        pytest.param(s, d, marks=pytest.mark.route(s, f"GET {d}"))
        for s in SERVICES
        for d in DOCUMENTS[1:]
    ],
)
async def test_the_documentation_pages_are_served(
    http: HTTPClient, make: AppMaker, service: str, document: str
) -> None:
    """/docs, /docs/oauth2-redirect and /redoc: HTML pages."""
    r = await http(make(service)).get(document)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")


@on_every_service("GET /openapi.json")
async def test_every_error_every_route_documents_is_problem_json(
    http: HTTPClient, make: AppMaker, service: str
) -> None:
    """In every OpenAPI document, every 4xx/5xx response of every route (but /health's 503) is
    application/problem+json with the Problem schema, and every route is documented."""
    app = make(service)
    r = await http(app).get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert "Problem" in doc["components"]["schemas"]
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) < 400 or path == "/health":
                    continue
                content = response.get("content", {})
                assert PROBLEM_JSON in content, (method, path, status)
                assert content[PROBLEM_JSON]["schema"] == {"$ref": "#/components/schemas/Problem"}
    served = {r.path for r in app.routes if r.path not in DOCUMENTS}  # type: ignore[attr-defined]
    assert served == set(doc["paths"])


@pytest.mark.route("query", "GET /openapi.json")
async def test_the_consistency_token_header_is_documented_with_its_pattern(
    http: HTTPClient, make: AppMaker
) -> None:
    """The query service documents X-Consistency-Token as an optional string header with its
    pattern (never the text "null")."""
    doc = (await http(make("query")).get("/openapi.json")).json()
    token = next(
        p for p in doc["paths"]["/stats"]["get"]["parameters"] if p["name"] == "X-Consistency-Token"
    )
    assert (token["in"], token["required"]) == ("header", False)
    assert token["schema"]["type"] == "string"
    assert token["schema"]["pattern"] == CONSISTENCY_TOKEN
    assert re.fullmatch(CONSISTENCY_TOKEN, "2:41,0:7") and not re.fullmatch(CONSISTENCY_TOKEN, "0")
