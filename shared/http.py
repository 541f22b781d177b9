"""The HTTP pieces every service shares: /health, /metrics, problem+json errors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.errors import EsError

HealthCheck = Callable[[], Awaitable[dict[str, Any]]]


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
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


def service_app(
    service: str,
    *,
    health: HealthCheck,
    registry: CollectorRegistry = REGISTRY,
    **fastapi_kwargs: Any,
) -> FastAPI:
    """A FastAPI app with /health (200 ready / 503 not) and /metrics (Prometheus text)."""
    app = FastAPI(title=service, **fastapi_kwargs)

    @app.get("/health", tags=["operations"])
    async def health_endpoint() -> Response:
        report = await health()
        status = 200 if report.get("status") == "ok" else 503
        return JSONResponse({"service": service, **report}, status_code=status)

    @app.get("/metrics", tags=["operations"])
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        code = getattr(exc, "code", None) or f"http_{exc.status_code}"
        return problem(exc.status_code, code, str(exc.detail), str(exc.detail))

    @app.exception_handler(EsError)
    async def es_error(_: Request, exc: EsError) -> Response:
        status = 503 if exc.retriable else 500
        return problem(status, exc.code, type(exc).__name__, exc.message, retriable=exc.retriable)

    return app
