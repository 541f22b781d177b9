"""Running from this machine: `esctl up` (a broker and the four services in the foreground) and
`esctl bench` (the benchmarks of a source checkout)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from esctl.common import STATE_DIR, DataDir, console, say, say_and_exit
from esctl.kafka import kafka_start
from esctl.localstack import kafka as lk
from esctl.localstack.kafka_security import KAFKA_SECURITY_VARIABLES
from esctl.tokens import local_auth_secret_file, local_secret

SERVICES = {
    "command_service": 8001,
    "query_service": 8002,
    "projector_service": 8003,
    "workflow_service": 8004,
}


def _local_key_store_url() -> str:
    """The key store `esctl up` gives the services: under ESCTL_STATE_DIR, made absolute."""
    return f"sqlite:///{(STATE_DIR / 'keys.sqlite3').resolve()}"


#: The key-encryption key `esctl up` makes for its key store when none is configured.
LOCAL_KEK_FILE = "key-encryption-key"


def local_key_encryption_key(env: dict[str, str]) -> None:
    """Give the services a key-encryption key: the configured one (KEY_ENCRYPTION_KEY or
    KEY_ENCRYPTION_KEY_FILE), else the local one under ESCTL_STATE_DIR, made (mode 0600) the
    first time. Local only: a KEK beside the keys protects nothing from whoever copies the
    directory."""
    from shared.errors import EsError
    from shared.kek import ensure_kek_file

    if env.get("KEY_ENCRYPTION_KEY") or env.get("KEY_ENCRYPTION_KEY_FILE"):
        return
    path = (STATE_DIR / LOCAL_KEK_FILE).resolve()
    try:
        made = ensure_kek_file(path)
    except (EsError, OSError) as exc:
        say_and_exit(f"the local key-encryption key {path}: {exc}")
    env["KEY_ENCRYPTION_KEY_FILE"] = str(path)
    say(
        f"no KEY_ENCRYPTION_KEY set: the key store's keys are wrapped with the local "
        f"key-encryption key in {path}" + (" (made now, mode 0600)" if made else ""),
        label="keys",
        style="yellow",
    )


#: How long the tokens `esctl up` prints stay valid.
PRINTED_TOKEN_TTL_S = 12 * 3600


def _print_tokens(secret_file: Path) -> None:
    """Ready-to-use tokens for the stack, on stdout in full (never cut: one per line)."""
    from esctl.tokens import mint_local

    admin = mint_local("admin", ["admin"], PRINTED_TOKEN_TTL_S)
    author = mint_local("alice", ["author"], PRINTED_TOKEN_TTL_S)
    secret = (
        "AUTH_HS256_SECRET"
        if os.environ.get("AUTH_HS256_SECRET")
        else f"the secret in {secret_file}"
    )
    console.print(
        f"authentication on: tokens valid 12 h (signed with {secret}; "
        "`esctl token --sub NAME --role ROLE` mints more)",
        highlight=False,
    )
    print(f"ADMIN_TOKEN={admin}", flush=True)  # what the person copies, on stdout
    print(f"AUTHOR_TOKEN={author}  # sub alice", flush=True)


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


class _Signalled(Exception):
    """SIGTERM or SIGHUP reached `esctl up`: stop what it started, as Ctrl-C does."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.name = signal.Signals(signum).name


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _raise_signalled(signum: int, _frame: object) -> None:
    raise _Signalled(signum)


def _stop_on_signals() -> None:
    """SIGTERM (`kill`, a supervisor, `timeout`) and SIGHUP (the terminal closed) stop the
    services and the broker the way Ctrl-C does; without this, Python dies at once on them and
    leaves its children running. SIGINT is put back too: a shell without job control starts a
    background `esctl up &` with SIGINT ignored, so `kill -INT` did nothing."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_signalled)
    signal.signal(signal.SIGHUP, _raise_signalled)


def _stop_started(
    procs: dict[str, subprocess.Popen[bytes]],
    data_dir: Path,
    port: int,
    *,
    broker_was_running: bool,
) -> None:
    """Stop the services `esctl up` started, then its broker unless it was running before."""
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs.values():
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    started = lk.LocalKafkaCluster.load(data_dir)
    if not broker_was_running and started is not None:
        started.stop()  # only the node processes this data dir's cluster started
        console.print("services and broker stopped")
    else:
        where = started.bootstrap_servers if started is not None else f"127.0.0.1:{port}"
        console.print(
            f"services stopped; the broker at {where} keeps running (`esctl kafka stop` stops it)",
            soft_wrap=True,
            highlight=False,
        )


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
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="no authentication (AUTH_ENABLED=false): every request may do everything",
        ),
    ] = False,
) -> None:
    """Run the whole system locally, in the foreground: a Kafka broker, then the four services.

    Authentication is on: the services verify tokens signed with AUTH_HS256_SECRET, or with a
    local secret made at the first run and kept (`esctl token` mints with it); an admin and an
    author token are printed. `--insecure` turns authentication off instead.

    The services create the topics and log to the terminal. Ctrl-C (or SIGTERM, SIGHUP) stops
    everything this command started: the four services, and the broker unless it was already
    running (then it keeps running, with its data). `esctl kafka destroy` deletes the broker's data.
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
    _stop_on_signals()
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
        local_key_encryption_key(env)
        if insecure:
            env["AUTH_ENABLED"] = "false"
            say(
                "authentication is OFF (--insecure): anyone who reaches the ports may do "
                "everything; for a local demo only",
                label="warning",
                style="bold red",
            )
        else:
            env["AUTH_ENABLED"] = "true"
            env["AUTH_HS256_SECRET"] = local_secret(create=True)
        for module, http_port in ports.items():
            procs[module] = subprocess.Popen(
                [sys.executable, "-m", module], env=env | {"HTTP_PORT": str(http_port)}
            )
        for module, http_port in ports.items():
            console.print(f"{module}: http://127.0.0.1:{http_port}", highlight=False)
        if not insecure:
            _print_tokens(local_auth_secret_file())
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
    except _Signalled as stop:
        say("stopping what `esctl up` started", label=stop.name, style="yellow")
    finally:
        for sig in _STOP_SIGNALS:  # a second signal must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        _stop_started(procs, data_dir, port, broker_was_running=broker_was_running)
    if dead:
        raise typer.Exit(1)
