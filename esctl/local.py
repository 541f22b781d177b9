"""Running from this machine: `esctl up` (a broker and the four services in the foreground) and
`esctl bench` (the benchmarks of a source checkout)."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from esctl.common import STATE_DIR, DataDir, console, say
from esctl.kafka import kafka_start
from esctl.localstack import kafka as lk
from esctl.localstack.kafka_security import KAFKA_SECURITY_VARIABLES

SERVICES = {
    "command_service": 8001,
    "query_service": 8002,
    "projector_service": 8003,
    "workflow_service": 8004,
}


def _local_key_store_url() -> str:
    """The key store `esctl up` gives the services: under ESCTL_STATE_DIR, made absolute."""
    return f"sqlite:///{(STATE_DIR / 'keys.sqlite3').resolve()}"


def local_erasure_token_file(command_port: int) -> Path:
    """Where `esctl up` keeps the erasure token it gives its command service on that port (an
    absolute place, whatever the working directory: `esctl erase` reads it from anywhere). One
    file per port: a second stack beside the first (`esctl up --command-port ...`) does not
    replace the first one's token."""
    return lk.cache_dir() / "local-stack" / f"erasure-token-{command_port}"


def bench(
    smoke: Annotated[bool, typer.Option(help="tiny sizes: checks that every scenario runs")] = (
        False
    ),
) -> None:
    """Run the benchmarks (bench/run.py of a source checkout) and write bench/RESULTS.md."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "bench" / "run.py").exists():
        console.print("the benchmarks live in the source checkout (bench/); run from there")
        raise typer.Exit(2)
    args = [sys.executable, "-m", "bench.run"] + (["--smoke"] if smoke else [])
    raise typer.Exit(subprocess.run(args, cwd=root, check=False).returncode)


def up(
    port: Annotated[int, typer.Option(help="Kafka broker port")] = 9092,
    data_dir: DataDir = STATE_DIR / "kafka",
    command_port: Annotated[int, typer.Option(help="command service HTTP port")] = SERVICES[
        "command_service"
    ],
    query_port: Annotated[int, typer.Option(help="query service HTTP port")] = SERVICES[
        "query_service"
    ],
    projector_port: Annotated[int, typer.Option(help="projector HTTP port")] = SERVICES[
        "projector_service"
    ],
    workflow_port: Annotated[int, typer.Option(help="workflow service HTTP port")] = SERVICES[
        "workflow_service"
    ],
) -> None:
    """Run the whole system locally, in the foreground: a Kafka broker, then the four services.

    The services create the topics and log to the terminal. Ctrl-C stops everything this
    command started: the four services, and the broker unless it was already running (then it
    keeps running, with its data). `esctl kafka destroy` deletes the broker's data.
    """
    ports = {
        "command_service": command_port,
        "query_service": query_port,
        "projector_service": projector_port,
        "workflow_service": workflow_port,
    }
    existing = lk.LocalKafkaCluster.load(data_dir)
    broker_was_running = existing is not None and any(existing.status().values())
    procs: dict[str, subprocess.Popen[bytes]] = {}
    dead: list[str] = []
    token_file, token = local_erasure_token_file(command_port), None
    try:
        kafka_start(port=port, nodes=1, heap_mb=512, data_dir=data_dir)
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        # the broker started here is PLAINTEXT: the services talk to it so, whatever
        # KAFKA_SECURITY_PROTOCOL and KAFKA_SASL_* this shell has for another broker
        env = {k: v for k, v in os.environ.items() if k not in KAFKA_SECURITY_VARIABLES}
        env |= {"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}", "LOG_FORMAT": "console"}
        env.setdefault(
            "READ_STORE_URL", f"sqlite:///{(STATE_DIR / 'read-store.sqlite3').resolve()}"
        )
        env.setdefault(
            "WORKFLOW_STORE_URL", f"sqlite:///{(STATE_DIR / 'workflows.sqlite3').resolve()}"
        )
        env.setdefault("KEY_STORE_URL", _local_key_store_url())
        if not env.get("ERASURE_TOKEN"):  # `esctl erase` finds it there, from any directory
            token_file.parent.mkdir(parents=True, exist_ok=True)
            token_file.touch(mode=0o600)
            token_file.write_text(secrets.token_urlsafe(24))
            env["ERASURE_TOKEN"] = token = token_file.read_text()
        for module, http_port in ports.items():
            procs[module] = subprocess.Popen(
                [sys.executable, "-m", module], env=env | {"HTTP_PORT": str(http_port)}
            )
        for module, http_port in ports.items():
            console.print(f"{module}: http://127.0.0.1:{http_port}", highlight=False)
        console.print(
            "Ctrl-C stops the four services"
            + (
                "; the broker was running before and keeps running (`esctl kafka stop`)"
                if broker_was_running
                else " and the broker"
            ),
            soft_wrap=True,
        )
        while all(p.poll() is None for p in procs.values()):
            time.sleep(0.5)
        dead = [f"{m} (exit code {p.returncode})" for m, p in procs.items() if p.poll() is not None]
        say(f"{', '.join(dead)}; stopping the others", label="exited")
    except KeyboardInterrupt:
        say("stopping what `esctl up` started", label="Ctrl-C", style="yellow")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        with contextlib.suppress(OSError):  # the token is of no use without the services
            if token is not None and token_file.read_text() == token:
                token_file.unlink()
        started = lk.LocalKafkaCluster.load(data_dir)
        if not broker_was_running and started is not None:
            started.stop()  # only the node processes this data dir's cluster started
            console.print("services and broker stopped")
        else:
            where = started.bootstrap_servers if started is not None else f"127.0.0.1:{port}"
            console.print(
                f"services stopped; the broker at {where} keeps running "
                "(`esctl kafka stop` stops it)",
                soft_wrap=True,
                highlight=False,
            )
    if dead:
        raise typer.Exit(1)
