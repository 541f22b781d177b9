"""Starting before the broker, as compose and `esctl up` do: the services wait for Kafka
quietly (no error lines, no exit and restart), say once that they are waiting and once how long
it took, then serve."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from esctl.localstack.kafka import free_port
from tests.conftest import unique
from tests.e2e.harness import ServiceProcess, command_service_env
from tests.kafka_helpers import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


@contextlib.asynccontextmanager
async def forwarder(port: int, target: str) -> AsyncIterator[None]:
    """From now on, 127.0.0.1:`port` forwards to `target` (the broker then advertises its own
    address, so clients go straight there after the first metadata request)."""
    host, target_port = target.rsplit(":", 1)
    pipes: set[asyncio.Task[None]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, int(target_port))
        for a, b in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(pipe(a, b))
            pipes.add(task)
            task.add_done_callback(pipes.discard)

    server = await asyncio.start_server(on_client, "127.0.0.1", port)
    try:
        yield
    finally:
        server.close()
        for task in list(pipes):
            task.cancel()
        await server.wait_closed()


def log_lines(service: ServiceProcess) -> list[dict[str, object]]:
    return [json.loads(x) for x in service.logs().splitlines() if x.startswith("{")]


async def test_services_started_before_kafka_wait_quietly_then_serve(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Command, projector and workflow services started while nothing answers on their Kafka
    address log `waiting_for_kafka` once, no error line, keep running, and once the broker
    answers log `kafka_reachable` once and become healthy."""
    prefix = unique("late-kafka") + "."
    port = free_port()
    late = f"127.0.0.1:{port}"
    common = {"TOPIC_PREFIX": prefix, "PARTITIONS": "2", "SESSION_TIMEOUT_MS": "6000"}
    services = [
        ServiceProcess(
            "command_service", command_service_env(late, prefix, 2), tmp_path, "command"
        ),
        ServiceProcess(
            "projector_service",
            common
            | {
                "KAFKA_BOOTSTRAP_SERVERS": late,
                "GROUP_ID": f"{prefix}projector",
                "READ_STORE_URL": f"sqlite:///{tmp_path / 'read.sqlite3'}",
            },
            tmp_path,
            "projector",
        ),
        ServiceProcess(
            "workflow_service",
            common
            | {
                "KAFKA_BOOTSTRAP_SERVERS": late,
                "GROUP_ID": f"{prefix}workflows",
                "WORKFLOW_STORE_URL": f"sqlite:///{tmp_path / 'wf.sqlite3'}",
            },
            tmp_path,
            "workflow",
        ),
    ]
    for s in services:
        s.start()
    try:

        async def all_waiting() -> bool:
            return all(
                any(line.get("event") == "waiting_for_kafka" for line in log_lines(s))
                for s in services
            )

        await wait_until(all_waiting, timeout_s=60, what="every service waiting for Kafka")
        pids = [s.pid for s in services]
        async with forwarder(port, kafka_bootstrap):
            for s in services:
                await s.wait_healthy(timeout_s=120)
            assert [s.pid for s in services] == pids
            assert all(s.proc is not None and s.proc.poll() is None for s in services)
            for s in services:
                lines = log_lines(s)
                events = [line.get("event") for line in lines]
                errors = [line for line in lines if line.get("level") in ("error", "critical")]
                assert errors == [], (s.module, errors)
                assert events.count("waiting_for_kafka") == 1, (s.module, events)
                assert events.count("kafka_reachable") == 1, (s.module, events)
                reachable = next(x for x in lines if x.get("event") == "kafka_reachable")
                assert isinstance(reachable["waited_s"], float | int)
                assert reachable["waited_s"] > 0
                assert events.count("service_started") == 1, (s.module, events)
            for s in services:
                await s.stop()
    finally:
        for s in services:
            await s.stop()
