"""`esctl kafka`: a real local Kafka broker (KRaft) without Docker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from esctl.common import STATE_DIR, DataDir, console, fail, say, say_and_exit
from esctl.localstack import kafka as lk
from esctl.output import print_line, print_table
from shared.errors import EsError

app = typer.Typer(help="A real local Kafka broker (KRaft) without Docker.", no_args_is_help=True)


@app.command("install")
def kafka_install() -> None:
    """Resolve the pinned broker jars with Maven into the cache (outside git)."""
    try:
        libs = lk.install(quiet=False)
    except EsError as exc:
        fail(exc)
    console.print(f"Kafka {lk.kafka_version()} jars in {libs}")


@app.command("start")
def kafka_start(
    port: Annotated[int, typer.Option(help="broker port of node 1 (nodes 2,3: +1,+2)")] = 9092,
    nodes: Annotated[int, typer.Option(help="1, or 3 for durability tests")] = 1,
    heap_mb: Annotated[int, typer.Option(help="JVM heap per node, MiB (<= 512)")] = 512,
    secure: Annotated[
        bool,
        typer.Option(
            "--secure",
            help="TLS + SASL/SCRAM-SHA-512 + ACLs: a local CA, one principal per service and "
            "`admin`, passwords in <data-dir>/security",
        ),
    ] = False,
    data_dir: DataDir = STATE_DIR / "kafka",
) -> None:
    """Format storage (first time), start the broker(s), wait for a metadata answer."""
    try:
        cluster = lk.LocalKafkaCluster.load(data_dir)
        if (
            cluster is None
            or len(cluster.state.nodes) != nodes
            or (cluster.state.nodes[0].broker_port != port)
            or cluster.state.secure != secure
        ):
            if cluster is not None and any(cluster.status().values()):
                say_and_exit(
                    f"a cluster is running in {data_dir} at {cluster.bootstrap_servers}: stop it "
                    "first (`esctl kafka stop`), or use another data dir (--data-dir; for "
                    "`esctl up`, ESCTL_STATE_DIR gives the whole stack its own)"
                )
            if cluster is not None and cluster.state.secure != secure:
                # a broker's security is fixed at format time (SCRAM credentials, listeners)
                say_and_exit(
                    f"the cluster in {data_dir} was made "
                    f"{'with' if cluster.state.secure else 'without'} --secure, which cannot "
                    "change once it is formatted: delete it first (`esctl kafka destroy`), or "
                    "use another data dir (--data-dir)"
                )
            cluster = lk.LocalKafkaCluster.create(
                data_dir, nodes=nodes, port=port, heap_mb=heap_mb, secure=secure
            )
        with console.status(f"starting Kafka {lk.kafka_version()} ({nodes} node(s))"):
            cluster.start()
    except EsError as exc:
        fail(exc)
        return
    console.print(f"Kafka {lk.kafka_version()} ready at {cluster.bootstrap_servers}")
    if cluster.state.secure:
        sec = cluster.security_dir
        console.print(
            f"SASL_SSL (SCRAM-SHA-512), ACLs on; CA {sec / 'ca.pem'}; credentials per principal "
            f"in {sec}/<principal>.env (admin, command-service, projector, query-service, "
            f"workflow-service): `set -a; . {sec}/admin.env; set +a`"
        )
    print(cluster.bootstrap_servers)


def _load(data_dir: Path) -> lk.LocalKafkaCluster:
    cluster = lk.LocalKafkaCluster.load(data_dir)
    if cluster is None:
        console.print(f"no local Kafka in {data_dir} (start one with `esctl kafka start`)")
        raise typer.Exit(1)
    return cluster


@app.command("stop")
def kafka_stop(data_dir: DataDir = STATE_DIR / "kafka") -> None:
    """Stop the nodes this data dir's cluster started (and nothing else)."""
    _load(data_dir).stop()
    console.print("stopped")


@app.command("status")
def kafka_status(
    data_dir: DataDir = STATE_DIR / "kafka",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show each node's process and whether the cluster answers a metadata request."""
    cluster = _load(data_dir)
    alive = cluster.status()
    answering = True
    try:
        cluster.wait_ready(timeout_s=3, expected=sum(alive.values()) or 1)
    except EsError:
        answering = False
    if as_json:
        print(
            json.dumps(
                {
                    "bootstrap_servers": cluster.bootstrap_servers,
                    "answering": answering,
                    "nodes": {str(k): v for k, v in alive.items()},
                }
            )
        )
    else:
        print_table(
            ["node", "broker port", "pid", "process"],
            [
                (n.node_id, n.broker_port, n.pid, "running" if alive[n.node_id] else "stopped")
                for n in cluster.state.nodes
            ],
        )
        print_line(
            f"bootstrap {cluster.bootstrap_servers}: "
            f"{'answering' if answering else 'NOT answering'}"
        )
    if not answering:
        raise typer.Exit(1)


@app.command("kill")
def kafka_kill(
    node: Annotated[int, typer.Option(help="node id to SIGKILL")],
    data_dir: DataDir = STATE_DIR / "kafka",
) -> None:
    """Crash one node (SIGKILL), for durability experiments."""
    _load(data_dir).kill(node)
    console.print(f"node {node} killed")


@app.command("restart")
def kafka_restart(
    node: Annotated[int, typer.Option(help="node id to start again")],
    data_dir: DataDir = STATE_DIR / "kafka",
) -> None:
    """Start one node again and wait until the whole cluster answers."""
    try:
        _load(data_dir).restart(node)
    except EsError as exc:
        fail(exc)
    console.print(f"node {node} running")


@app.command("destroy")
def kafka_destroy(data_dir: DataDir = STATE_DIR / "kafka") -> None:
    """Stop the cluster and delete its data (the stores `esctl up` keeps beside it are kept)."""
    _load(data_dir).destroy()
    console.print(f"deleted {data_dir}")
    # `esctl up` keeps its stores beside the broker's data dir: they describe the deleted log
    stores = [n for n in _LOCAL_STORES if (data_dir.parent / n).exists()]
    if stores:
        say(
            f"kept {', '.join(stores)} in {data_dir.parent}: they belong to the deleted log (the "
            "read model and its positions, the keys and erased subjects); delete them too before "
            "`esctl up` on a new broker, or it serves the old read model",
            label="note",
            style="yellow",
        )


#: The SQLite stores `esctl up` keeps in ESCTL_STATE_DIR, beside the broker's data dir.
_LOCAL_STORES = ("read-store.sqlite3", "keys.sqlite3", "workflows.sqlite3")
