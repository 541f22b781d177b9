"""Running a service process: logging, HTTP server and background tasks, clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import uvicorn
from fastapi import FastAPI

from shared import tracing
from shared.auth import check_at_start
from shared.errors import ConfigurationError, EsError, InfrastructureUnavailable
from shared.kafka.clients import wait_for_brokers
from shared.kafka.errors import access_denied
from shared.kafka.security import KafkaSecurity, process_security, use_security
from shared.kek import KeyRing
from shared.keystore import KeyStore
from shared.logging import configure_logging, get_logger
from shared.settings import KeyEncryptionSettings, ServiceSettings

log = get_logger(__name__)


async def serve(
    settings: ServiceSettings,
    app: FastAPI,
    *,
    startup: Callable[[], Coroutine[Any, Any, None]] | None = None,
    background: list[Callable[[], Coroutine[Any, Any, None]]] | None = None,
    shutdown: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> None:
    """Run `app` on the settings' host/port plus background loops until SIGTERM/SIGINT.

    A background loop that raises ends the process with an error: a service that cannot do
    its work should be restarted, not keep answering /health.
    """
    config = uvicorn.Config(
        # outermost: the request's span covers authentication and every answer
        tracing.TracingMiddleware(app) if tracing.ENABLED else app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if startup is not None:
        await startup()
    tasks = [asyncio.create_task(server.serve(), name="http")]
    tasks += [asyncio.create_task(fn(), name=fn.__name__) for fn in background or []]
    stopper = asyncio.create_task(stop.wait(), name="signal")
    log.info("service_started", port=settings.http_port)
    failure: BaseException | None = None
    try:
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopper and task.exception() is not None:
                failure = task.exception()
                assert failure is not None
                denied = access_denied(failure, process_security().principal)
                if denied is not None:  # one clear line: who may not do what
                    log.error(denied.code, task=task.get_name(), error=denied.message)
                else:
                    log.error("service_task_failed", task=task.get_name(), error=repr(failure))
    finally:
        server.should_exit = True
        if shutdown is not None:
            await shutdown()
        for task in [*tasks, stopper]:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        log.info("service_stopped")
    if failure is not None:
        raise SystemExit(1)


async def wait_for_kafka_at_start(settings: ServiceSettings) -> None:
    """Wait (up to KAFKA_STARTUP_WAIT_S) for Kafka before a service's first client starts, so
    that a service started with or before its broker (compose, `esctl up`) neither crash-loops
    nor logs an error per failed connection: aiokafka's own connection errors are silenced
    while waiting, and one line says how long it took."""
    bootstrap = settings.kafka_bootstrap_servers
    started = time.monotonic()
    aiokafka_log = logging.getLogger("aiokafka")
    level = aiokafka_log.level
    aiokafka_log.setLevel(logging.CRITICAL)
    try:
        try:
            await wait_for_brokers(bootstrap, timeout_s=2.0)
        except InfrastructureUnavailable as exc:
            log.info("waiting_for_kafka", kafka=bootstrap, reason=exc.message)
            await wait_for_brokers(bootstrap, timeout_s=settings.kafka_startup_wait_s)
    except EsError as final:
        # unreachable for good, or credentials the broker refuses (which waiting cannot fix)
        log.error(final.code, kafka=bootstrap, error=final.message)
        raise SystemExit(1) from None
    finally:
        aiokafka_log.setLevel(level)
    log.info("kafka_reachable", kafka=bootstrap, waited_s=round(time.monotonic() - started, 1))


async def open_key_store_at_start(url: str, settings: KeyEncryptionSettings) -> KeyStore:
    """The service's key store, opened before anything else starts: without a key-encryption
    key, or with one that does not open the stored keys, the process ends with one line
    (`key_store_refused`: the code and why) instead of failing on its first personal field. A
    database that does not answer yet is only noted: the first use opens the store."""
    try:
        ring = KeyRing.from_settings(settings)
    except EsError as exc:
        log.error("key_store_refused", code=exc.code, error=exc.message)
        raise SystemExit(1) from None
    store = KeyStore(url, ring)
    try:
        await store.open()
    except InfrastructureUnavailable as exc:
        log.warning("key_store_not_reachable_at_start", key_store=store.where, error=exc.message)
    except EsError as exc:
        await store.close()
        log.error("key_store_refused", code=exc.code, error=exc.message, key_store=store.where)
        raise SystemExit(1) from None
    else:
        log.info("key_store_opened", key_store=store.where, kek_id=ring.current_id)
    return store


def run(
    settings: ServiceSettings, main: Callable[[ServiceSettings], Coroutine[Any, Any, None]]
) -> None:
    """Entry point helper for `__main__`: configure logging and run `main` to completion."""
    configure_logging(settings.log_format, settings.log_level, service=settings.service_name)
    try:
        check_at_start(settings, settings.service_name)
    except ConfigurationError as exc:  # one clear line, no traceback: fix the settings
        log.error("service_not_started", code=exc.code, error=exc.message)
        raise SystemExit(2) from None
    try:
        if tracing.configure_tracing(settings.service_name):
            log.info("tracing_enabled", **tracing.describe())
    except ConfigurationError as exc:
        log.error("service_not_started", code=exc.code, error=exc.message)
        raise SystemExit(2) from None
    try:
        # the process's Kafka principal: every client it builds authenticates as this one
        use_security(KafkaSecurity.from_settings(settings))
    except EsError as exc:
        log.error(exc.code, error=exc.message)
        raise SystemExit(1) from None
    try:
        asyncio.run(main(settings))
    finally:
        tracing.shutdown_tracing()  # flush the spans of the last requests and records


def kafka_health(bootstrap_servers: str) -> Callable[[], Awaitable[dict[str, object]]]:
    """A /health check that reports whether Kafka answers a metadata request within 3 s."""

    async def check() -> dict[str, object]:
        try:
            await wait_for_brokers(bootstrap_servers, timeout_s=3.0)
        except EsError as exc:
            return {"status": "unavailable", "kafka": exc.message}
        return {"status": "ok", "kafka": "reachable"}

    return check
