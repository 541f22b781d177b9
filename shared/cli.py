"""`esctl`: one CLI for people running the system.

Groups: `kafka`, `postgres`, `topics`, `schema`, `projections`, `workflows`; and `lag`, `send`,
`bench`, `up`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from shared.errors import EsError
from shared.localstack import kafka as lk
from shared.localstack import postgres as lp

app = typer.Typer(help="Operate the event-sourced blog system on Kafka.", no_args_is_help=True)
kafka_app = typer.Typer(
    help="A real local Kafka broker (KRaft) without Docker.", no_args_is_help=True
)
pg_app = typer.Typer(
    help="A local PostgreSQL on loopback (Debian's packages).", no_args_is_help=True
)
schema_app = typer.Typer(help="The message contract for other languages.", no_args_is_help=True)
topics_app = typer.Typer(help="The system's Kafka topics.", no_args_is_help=True)
app.add_typer(kafka_app, name="kafka")
app.add_typer(pg_app, name="postgres")
app.add_typer(schema_app, name="schema")
app.add_typer(topics_app, name="topics")

console = Console(stderr=True)
STATE_DIR = Path(os.environ.get("ESCTL_STATE_DIR", "./var"))

DataDir = Annotated[Path, typer.Option(help="where the cluster keeps its data and state")]


def _fail(exc: EsError) -> NoReturn:
    hint = " (retrying may help)" if exc.retriable else ""
    console.print(f"[red]error[/red] {exc}{hint}")
    raise typer.Exit(2)


# --------------------------------------------------------------------------------- kafka


@kafka_app.command("install")
def kafka_install() -> None:
    """Resolve the pinned broker jars with Maven into the cache (outside git)."""
    try:
        libs = lk.install(quiet=False)
    except EsError as exc:
        _fail(exc)
    console.print(f"Kafka {lk.kafka_version()} jars in {libs}")


@kafka_app.command("start")
def kafka_start(
    port: Annotated[int, typer.Option(help="broker port of node 1 (nodes 2,3: +1,+2)")] = 9092,
    nodes: Annotated[int, typer.Option(help="1, or 3 for durability tests")] = 1,
    heap_mb: Annotated[int, typer.Option(help="JVM heap per node, MiB (<= 512)")] = 512,
    data_dir: DataDir = STATE_DIR / "kafka",
) -> None:
    """Format storage (first time), start the broker(s), wait for a metadata answer."""
    try:
        cluster = lk.LocalKafkaCluster.load(data_dir)
        if (
            cluster is None
            or len(cluster.state.nodes) != nodes
            or (cluster.state.nodes[0].broker_port != port)
        ):
            if cluster is not None and any(cluster.status().values()):
                console.print(f"a cluster is running in {data_dir}; `esctl kafka stop` first")
                raise typer.Exit(1)
            cluster = lk.LocalKafkaCluster.create(data_dir, nodes=nodes, port=port, heap_mb=heap_mb)
        with console.status(f"starting Kafka {lk.kafka_version()} ({nodes} node(s))"):
            cluster.start()
    except EsError as exc:
        _fail(exc)
        return
    console.print(f"Kafka {lk.kafka_version()} ready at {cluster.bootstrap_servers}")
    print(cluster.bootstrap_servers)


def _load(data_dir: Path) -> lk.LocalKafkaCluster:
    cluster = lk.LocalKafkaCluster.load(data_dir)
    if cluster is None:
        console.print(f"no local Kafka in {data_dir} (start one with `esctl kafka start`)")
        raise typer.Exit(1)
    return cluster


@kafka_app.command("stop")
def kafka_stop(data_dir: DataDir = STATE_DIR / "kafka") -> None:
    """Stop the nodes this data dir's cluster started (and nothing else)."""
    _load(data_dir).stop()
    console.print("stopped")


@kafka_app.command("status")
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
        table = Table("node", "broker port", "pid", "process")
        for n in cluster.state.nodes:
            table.add_row(
                str(n.node_id),
                str(n.broker_port),
                str(n.pid or "-"),
                "running" if alive[n.node_id] else "stopped",
            )
        Console().print(table)
        Console().print(
            f"bootstrap {cluster.bootstrap_servers}: "
            f"{'answering' if answering else 'NOT answering'}"
        )
    if not answering:
        raise typer.Exit(1)


@kafka_app.command("kill")
def kafka_kill(
    node: Annotated[int, typer.Option(help="node id to SIGKILL")],
    data_dir: DataDir = STATE_DIR / "kafka",
) -> None:
    """Crash one node (SIGKILL), for durability experiments."""
    _load(data_dir).kill(node)
    console.print(f"node {node} killed")


@kafka_app.command("restart")
def kafka_restart(
    node: Annotated[int, typer.Option(help="node id to start again")],
    data_dir: DataDir = STATE_DIR / "kafka",
) -> None:
    """Start one node again and wait until the whole cluster answers."""
    try:
        _load(data_dir).restart(node)
    except EsError as exc:
        _fail(exc)
    console.print(f"node {node} running")


@kafka_app.command("destroy")
def kafka_destroy(data_dir: DataDir = STATE_DIR / "kafka") -> None:
    """Stop the cluster and delete its data."""
    _load(data_dir).destroy()
    console.print(f"deleted {data_dir}")


# ------------------------------------------------------------------------------ postgres


def _pg(port: int, data_dir: Path | None) -> lp.LocalPostgres:
    return lp.LocalPostgres(data_dir or lp.default_data_dir(port, STATE_DIR), port=port)


PgPort = Annotated[int, typer.Option(help="port on 127.0.0.1")]
PgDir = Annotated[Path | None, typer.Option(help="data directory (default depends on user)")]


@pg_app.command("install")
def pg_install() -> None:
    """Install Debian's PostgreSQL server when it is missing (needs root)."""
    try:
        bin_dir = lp.ensure_installed()
    except EsError as exc:
        _fail(exc)
    console.print(f"PostgreSQL server binaries in {bin_dir}")


@pg_app.command("start")
def pg_start(port: PgPort = 5433, data_dir: PgDir = None) -> None:
    """Install Debian's PostgreSQL if missing, start a cluster, create the database."""
    pg = _pg(port, data_dir)
    try:
        with console.status("starting PostgreSQL"):
            pg.start()
    except EsError as exc:
        _fail(exc)
    console.print(f"PostgreSQL ready ({pg.data_dir})")
    print(pg.url)


@pg_app.command("stop")
def pg_stop(port: PgPort = 5433, data_dir: PgDir = None) -> None:
    """Stop the cluster started by `esctl postgres start`."""
    _pg(port, data_dir).stop()
    console.print("stopped")


@pg_app.command("status")
def pg_status(port: PgPort = 5433, data_dir: PgDir = None) -> None:
    """Whether the cluster runs; prints its URL when it does."""
    pg = _pg(port, data_dir)
    if not pg.is_running():
        console.print("not running")
        raise typer.Exit(1)
    print(pg.url)


# -------------------------------------------------------------------------- schema/topics


@schema_app.command("export")
def schema_export(
    out: Annotated[Path, typer.Option(help="directory for <Type>.json")] = Path("schemas/commands"),
) -> None:
    """Write the JSON Schema of every command record (what other Kafka clients produce)."""
    from shared.messages.schema import export_command_schemas

    for path in export_command_schemas(out):
        console.print(f"wrote {path}")


@topics_app.command("create")
def topics_create() -> None:
    """Create the system's topics with their configs (idempotent), from the environment."""
    from shared.kafka.topics import bootstrap_system_topics
    from shared.settings import KafkaSettings

    try:
        counts = asyncio.run(bootstrap_system_topics(KafkaSettings()))
    except EsError as exc:
        _fail(exc)
    for name, n in sorted(counts.items()):
        console.print(f"{name}: {n} partitions")


# ----------------------------------------------------------------------------------- lag


@app.command("lag")
def lag(
    group: Annotated[list[str] | None, typer.Option(help="only these groups (repeatable)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines for scripts")] = False,
    watch: Annotated[float, typer.Option(help="refresh every N seconds (0: once)")] = 0.0,
) -> None:
    """Consumer lag of every group, per partition: committed, log end, records, seconds."""
    from shared.kafka.lag import consumer_lag
    from shared.settings import KafkaSettings

    settings = KafkaSettings()

    def show() -> None:
        try:
            rows = asyncio.run(
                consumer_lag(
                    settings.kafka_bootstrap_servers, group, topic_prefix=settings.topic_prefix
                )
            )
        except EsError as exc:
            _fail(exc)
        if as_json:
            # flushed: with --watch, a pipe reader (`| jq`) gets each refresh when it is made
            print(json.dumps([r.as_dict() for r in rows]), flush=True)
            return
        table = Table(
            "group",
            "topic",
            "partition",
            "committed",
            "log end",
            "lag",
            "lag (s)",
            title=time.strftime("consumer lag at %H:%M:%S"),
        )
        for r in rows:
            table.add_row(
                r.group,
                r.topic,
                str(r.partition),
                str(r.committed),
                str(r.log_end),
                str(r.lag),
                f"{r.lag_seconds:.1f}" if r.lag_seconds is not None else "-",
            )
        Console().print(table)

    show()
    while watch > 0:
        time.sleep(watch)
        if not as_json:
            Console().clear()
        show()


# --------------------------------------------------------------------------- projections

projections_app = typer.Typer(help="The read model.", no_args_is_help=True)
app.add_typer(projections_app, name="projections")


@projections_app.command("rebuild")
def projections_rebuild(
    batch: Annotated[int, typer.Option(help="events per database transaction")] = 5000,
    keep_old: Annotated[bool, typer.Option(help="keep the previous tables")] = False,
    archive: Annotated[
        Path | None, typer.Option(help="the archive of pruned events (read before the topic)")
    ] = None,
) -> None:
    """Rebuild the read model from the start of the log beside the live one, then swap.

    Queries keep answering from the live tables meanwhile. Interrupt with Ctrl-C and run again
    to resume.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from shared.kafka.topics import Topics
    from shared.readmodel.rebuild import RebuildProgress, rebuild
    from shared.readmodel.store import ReadStore
    from shared.settings import ProjectorSettings

    settings = ProjectorSettings()
    store = ReadStore(settings.read_store_url, writer=True)
    columns = (
        TextColumn("[bold]generation {task.fields[gen]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} events/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("rebuild", total=None, gen="?", rate="-")

        def on_progress(p: RebuildProgress) -> None:
            speed = progress.tasks[0].speed
            progress.update(
                task,
                total=max(p.total, 1),
                completed=p.done,
                gen=p.generation,
                rate=f"{speed:,.0f}" if speed else "-",
            )

        async def go() -> object:
            try:
                return await rebuild(
                    store,
                    settings.kafka_bootstrap_servers,
                    Topics.from_settings(settings).events,
                    batch=batch,
                    keep_old=keep_old,
                    on_progress=on_progress,
                    archive_dir=archive,
                )
            finally:
                await store.close()

        try:
            result = asyncio.run(go())
        except KeyboardInterrupt:
            console.print("interrupted; run the same command again to resume")
            raise typer.Exit(130) from None
        except EsError as exc:
            _fail(exc)
    console.print(f"rebuilt: {result}")


# ---------------------------------------------------------------------------------- prune


@app.command("prune")
def prune_command(
    before: Annotated[str, typer.Option(help="prune events older than this (ISO 8601 date/time)")],
    archive: Annotated[Path, typer.Option(help="where the pruned records are archived")] = (
        STATE_DIR / "archive"
    ),
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="show the plan, change nothing")
    ] = False,
) -> None:
    """Archive, then delete, the events below the safe offset of each partition: the lowest of
    --before, the snapshot checkpoint and every consumer group's committed offset."""
    from datetime import UTC, datetime

    from shared.kafka.topics import Topics
    from shared.lifecycle.prune import plan, prune
    from shared.settings import KafkaSettings

    try:
        when = datetime.fromisoformat(before)
    except ValueError:
        console.print(f"[red]error[/red] --before {before!r} is not an ISO 8601 date or time")
        raise typer.Exit(2) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    settings = KafkaSettings()
    topics = Topics.from_settings(settings)
    try:
        plans = asyncio.run(plan(settings.kafka_bootstrap_servers, topics, when))
    except EsError as exc:
        _fail(exc)
    table = Table("partition", "log start", "log end", "safe offset", "records", "limited by")
    for p in plans:
        table.add_row(
            str(p.partition),
            str(p.log_start),
            str(p.log_end),
            str(p.safe),
            str(p.records),
            p.limited_by(),
        )
    Console().print(table)
    if dry_run:
        console.print(
            f"dry run: {sum(p.records for p in plans)} records would be archived and pruned"
        )
        return
    from rich.progress import Progress

    with Progress(console=console) as progress:
        task = progress.add_task("archive and prune", total=max(1, sum(p.records for p in plans)))
        try:
            entries = asyncio.run(
                prune(
                    settings.kafka_bootstrap_servers,
                    topics,
                    plans,
                    archive,
                    on_progress=lambda done, _total: progress.update(task, completed=done),
                )
            )
        except EsError as exc:
            _fail(exc)
    for e in entries:
        console.print(
            f"archived {e.topic}[{e.partition}] below {e.end}: {e.count} records -> {e.file}"
        )


# --------------------------------------------------------------------------------- erase


def _local_key_store_url() -> str:
    """The key store `esctl up` gives the services: under ESCTL_STATE_DIR, made absolute."""
    return f"sqlite:///{(STATE_DIR / 'keys.sqlite3').resolve()}"


def local_erasure_token_file() -> Path:
    """Where `esctl up` keeps the erasure token it gives the command service (an absolute
    place, whatever the working directory: `esctl erase` reads it from anywhere)."""
    return lk.cache_dir() / "local-stack" / "erasure-token"


def _erasure_token() -> str:
    token = os.environ.get("ERASURE_TOKEN", "")
    if token:
        return token
    with contextlib.suppress(OSError):
        return local_erasure_token_file().read_text().strip()
    return ""


CommandUrl = Annotated[
    str,
    typer.Option(envvar="COMMAND_SERVICE_URL", help="the command service (any instance)"),
]
QueryUrl = Annotated[
    str,
    typer.Option(
        envvar="QUERY_SERVICE_URL",
        help="the query service, asked afterwards whether anything of the subject still opens",
    ),
]


@app.command("erase")
def erase_command(
    subject: Annotated[str, typer.Argument(help="the data subject: an author id")],
    reason: Annotated[str | None, typer.Option(help="why (kept in SubjectErased)")] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="erase an id that never had personal data stored (else refused as a likely "
            "typo): personal data for it is refused from then on",
        ),
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the erasure")] = 120.0,
    url: CommandUrl = "http://127.0.0.1:8001",
    query_url: QueryUrl = "http://127.0.0.1:8002",
) -> None:
    """Erase a data subject's personal data for good (crypto-shredding), through the command
    service, which owns the key store: it appends SubjectErased, deletes the key, confirms in
    its key store that the key is gone, and purges the processed plaintext commands and the
    subject's dead letters. The query service is then asked whether any of the subject's
    personal fields still opens.

    Prints the report as JSON. Exit code: 0 complete (confirmed), 1 incomplete (run again),
    2 refused or error (the reason on stderr). The bearer token is ERASURE_TOKEN, else the one
    `esctl up` gave its command service."""
    import httpx

    if not yes and not typer.confirm(
        f"Erase {subject}? Its name and email become unreadable everywhere, for good."
    ):
        raise typer.Exit(2)
    token = _erasure_token()
    if not token:
        _say_and_exit(
            "no erasure token: set ERASURE_TOKEN to the command service's (the local stack's "
            f"is in {local_erasure_token_file()} while `esctl up` runs)"
        )
    endpoint = f"{url.rstrip('/')}/subjects/{subject}/erase"
    console.print(f"[dim]erasing {subject} through {url}...[/dim]")
    try:
        response = httpx.post(
            endpoint,
            json={"reason": reason, "force": force},
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )
    except httpx.HTTPError as exc:
        _say_and_exit(
            f"the command service at {url} does not answer ({exc.__class__.__name__}): is it "
            "running? (--url or COMMAND_SERVICE_URL names another)"
        )
    body = _json_or_none(response)
    if not isinstance(body, dict) or "subject" not in body:  # a problem, not a report
        problem = body if isinstance(body, dict) else {"detail": response.text[:300]}
        code = problem.get("code", f"HTTP {response.status_code}")
        _say_and_exit(f"erasure of {subject} refused ({code}): {problem.get('detail', '')}")
    report: dict[str, Any] = body
    if report.get("complete"):
        leaks = _still_opening(query_url, subject)
        report["query_service"] = leaks if leaks is not None else "not reachable"
        if leaks:
            report["complete"] = False
            print(json.dumps(report))
            _say_and_exit(
                f"the key is gone from the command service's key store, yet the query service "
                f"at {query_url} still opens {', '.join(leaks)} of {subject}: it reads another "
                "key store (give it the command service's KEY_STORE_URL)"
            )
        if leaks is None:
            console.print(
                f"[yellow]note[/yellow]: the query service at {query_url} does not answer; "
                "it was not asked whether anything still opens"
            )
    print(json.dumps(report))
    if not report.get("complete"):
        console.print(
            "[yellow]incomplete[/yellow]: a step is left (see the report); run the erasure "
            "again to finish it"
        )
        raise typer.Exit(1)
    outcome = report.get("outcome")
    if isinstance(outcome, dict) and outcome.get("code") == "author_not_found":
        console.print(
            f"[yellow]marked erased[/yellow] {subject} (--force): nothing was stored for it; "
            "personal data for this id is refused from now on"
        )
        return
    console.print(f"[green]erased[/green] {subject}")


def _json_or_none(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _still_opening(query_url: str, subject: str) -> list[str] | None:
    """The personal fields of `subject` the query service still returns opened (None: it does
    not answer): `/streams/{id}/events` opens every event's fields with its key store."""
    import httpx

    from shared.personal import is_sealed

    try:
        response = httpx.get(f"{query_url.rstrip('/')}/streams/{subject}/events", timeout=10)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    opened: list[str] = []
    for event in response.json().get("events", []):
        payload = event.get("payload") or {}
        for name in _personal_fields_of(event.get("type", "")):
            value = payload.get(name)
            if isinstance(value, str) and not is_sealed(value):
                opened.append(f"{name} (version {event.get('aggregate_version')})")
    return opened


def _personal_fields_of(event_type: str) -> tuple[str, ...]:
    from shared.errors import EsError as _EsError
    from shared.messages import EVENTS
    from shared.personal import personal_fields

    try:
        return personal_fields(EVENTS.get(event_type))
    except _EsError:
        return ()


def _say_and_exit(message: str) -> NoReturn:
    console.print(f"[red]error[/red] {message}")
    raise typer.Exit(2)


# ---------------------------------------------------------------------------------- send


@app.command("send")
def send(
    command_type: Annotated[str, typer.Argument(metavar="TYPE", help="e.g. PublishPost")],
    aggregate: Annotated[str, typer.Option("--aggregate", "-a", help="aggregate id (the key)")],
    payload: Annotated[str, typer.Option("--json", "-j", help="payload as JSON")] = "{}",
    expected_version: Annotated[int | None, typer.Option(help="optimistic check")] = None,
    command_id: Annotated[str | None, typer.Option(help="UUID; random by default")] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the outcome")] = 10.0,
) -> None:
    """Produce a command onto the commands topic and print its outcome (JSON on stdout).

    Exit code: 0 accepted, 1 rejected, 3 no outcome within the timeout, 2 invalid input.
    """
    import uuid

    from shared.kafka.commands import CommandClient
    from shared.kafka.topics import Topics
    from shared.messages import COMMANDS, encode_command
    from shared.messages.codec import utcnow
    from shared.settings import KafkaSettings

    try:
        cls = COMMANDS.get(command_type)
        if cls.issuers:
            _say_and_exit(
                f"{command_type} is issued by the system itself, not sent by people: {cls.instead}"
            )
        command = cls.model_validate_json(payload)
        cid = uuid.UUID(command_id) if command_id else uuid.uuid4()
    except EsError as exc:
        _fail(exc)
    except ValueError as exc:
        console.print(f"[red]invalid {command_type}[/red]: {exc}")
        raise typer.Exit(2) from None
    settings = KafkaSettings()
    message = encode_command(
        command,
        command_id=cid,
        aggregate_id=aggregate,
        expected_version=expected_version,
        occurred_at=utcnow(),
    )

    async def go() -> object:
        client = CommandClient(
            settings.kafka_bootstrap_servers, Topics.from_settings(settings), recent_window_s=0
        )
        await client.start()
        try:
            return await client.send(cid, message, wait_s=timeout)
        finally:
            await client.stop()

    try:
        outcome = asyncio.run(go())
    except EsError as exc:
        _fail(exc)
    if outcome is None:
        print(json.dumps({"command_id": str(cid), "status": "pending"}))
        console.print(f"no outcome within {timeout}s (is the command service running?)")
        raise typer.Exit(3)
    from shared.messages.results import CommandOutcome

    assert isinstance(outcome, CommandOutcome)
    print(outcome.model_dump_json())
    if outcome.status == "rejected":
        console.print(f"[yellow]rejected[/yellow] {outcome.code}: {outcome.message}")
        raise typer.Exit(1)


# --------------------------------------------------------------------------------- bench


@app.command("bench")
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


# ------------------------------------------------------------------------------------ up

SERVICES = {
    "command_service": 8001,
    "query_service": 8002,
    "projector_service": 8003,
    "workflow_service": 8004,
}


# ----------------------------------------------------------------------------- workflows

workflows_app = typer.Typer(
    help="Workflows (sagas): list, inspect, retry, skip, compensate. Talks to the workflow "
    "service's HTTP API.",
    no_args_is_help=True,
)
app.add_typer(workflows_app, name="workflows")
WorkflowUrl = Annotated[
    str,
    typer.Option(envvar="WORKFLOW_URL", help="the workflow service (any instance)"),
]


def _workflow_call(method: str, url: str, **kwargs: object) -> dict[str, object]:
    import httpx

    try:
        response = httpx.request(method, url, timeout=10.0, **kwargs)  # type: ignore[arg-type]
    except httpx.HTTPError as exc:
        console.print(f"[red]error[/red] the workflow service at {url} does not answer: {exc}")
        raise typer.Exit(2) from None
    body: dict[str, object] = response.json()
    if response.status_code >= 400:
        console.print(f"[red]{body.get('title', 'error')}[/red] {body.get('detail', '')}")
        raise typer.Exit(1)
    return body


@workflows_app.command("list")
def workflows_list(
    url: WorkflowUrl = "http://127.0.0.1:8004",
    status: Annotated[
        str | None, typer.Option(help="a status, or `running` for every unfinished one")
    ] = None,
    kind: Annotated[str | None, typer.Option(help="review, schedule or publication")] = None,
    stuck: Annotated[bool, typer.Option("--stuck", help="only workflows without progress")] = False,
    limit: int = 100,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Workflows, newest first, with their step, next timer and failures."""
    params: dict[str, object] = {"limit": limit}
    if status:
        params["status"] = status
    if kind:
        params["kind"] = kind
    if stuck:
        params["stuck"] = "true"
    body = _workflow_call("GET", f"{url}/workflows", params=params)
    if as_json:
        print(json.dumps(body))
        return
    table = Table("workflow", "status", "step", "next timer", "failures", "stuck", "updated")
    for row in body["workflows"]:  # type: ignore[attr-defined]
        timer = row.get("next_timer") or {}
        table.add_row(
            row["workflow_id"],
            row["status"],
            row["step"],
            f"{timer.get('id')} @ {timer.get('due_at')}" if timer else "-",
            str(row["failures"]),
            "STUCK" if row["stuck"] else "",
            str(row["updated_at"]),
        )
    Console().print(table)
    Console().print(f"counts: {body['counts']}")


@workflows_app.command("show")
def workflows_show(
    workflow_id: str,
    url: WorkflowUrl = "http://127.0.0.1:8004",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """State, history, pending timers, current step and failures of one workflow."""
    body = _workflow_call("GET", f"{url}/workflows/{workflow_id}")
    if as_json:
        print(json.dumps(body))
        return
    out = Console()
    out.print(
        f"[bold]{body['workflow_id']}[/bold]  {body['status']}  step: {body['step']}"
        + ("  [red]STUCK[/red]" if body["stuck"] else "")
    )
    if body.get("error"):
        out.print(f"[red]error:[/red] {body['error']}")
    timers = Table("pending timer", "due at", title=None)
    for t in body["pending_timers"]:  # type: ignore[attr-defined]
        timers.add_row(t["id"], t["due_at"])
    out.print(timers)
    history = Table("at", "what", "detail")
    for h in body["history"]:  # type: ignore[attr-defined]
        history.add_row(h["at"], h["what"], json.dumps(h["detail"]))
    out.print(history)


def _action(name: str) -> None:
    def command(
        workflow_id: str,
        url: WorkflowUrl = "http://127.0.0.1:8004",
        reason: Annotated[str | None, typer.Option(help="recorded in the history")] = None,
    ) -> None:
        body = _workflow_call(
            "POST", f"{url}/workflows/{workflow_id}/{name}", json={"reason": reason}
        )
        console.print(
            f"{name} of {body['workflow_id']} sent (request {body['request_id']}); "
            f"`esctl workflows show {workflow_id}` shows its effect"
        )

    command.__doc__ = {
        "retry": "Run the waiting step now (or re-send the current command).",
        "skip": "Skip the waiting step of a publication workflow and go on.",
        "compensate": "Compensate the completed steps now and unpublish the post.",
    }[name]
    workflows_app.command(name)(command)


for _name in ("retry", "skip", "compensate"):
    _action(_name)


@app.command("up")
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
    """Run the whole system locally: Kafka, topics, the four services. Ctrl-C stops everything
    it started (a broker that was already running is left running)."""
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
    try:
        kafka_start(port=port, nodes=1, heap_mb=512, data_dir=data_dir)
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{port}", LOG_FORMAT="console")
        env.setdefault(
            "READ_STORE_URL", f"sqlite:///{(STATE_DIR / 'read-store.sqlite3').resolve()}"
        )
        env.setdefault(
            "WORKFLOW_STORE_URL", f"sqlite:///{(STATE_DIR / 'workflows.sqlite3').resolve()}"
        )
        env.setdefault("KEY_STORE_URL", _local_key_store_url())
        if not env.get("ERASURE_TOKEN"):  # `esctl erase` finds it there, from any directory
            token_file = local_erasure_token_file()
            token_file.parent.mkdir(parents=True, exist_ok=True)
            token_file.touch(mode=0o600)
            token_file.write_text(secrets.token_urlsafe(24))
            env["ERASURE_TOKEN"] = token_file.read_text()
        for module, http_port in ports.items():
            procs[module] = subprocess.Popen(
                [sys.executable, "-m", module], env=env | {"HTTP_PORT": str(http_port)}
            )
        console.print("services: " + ", ".join(f"{m} :{p}" for m, p in ports.items()))
        console.print(
            "Ctrl-C stops the services" + ("" if broker_was_running else " and the broker")
        )
        while all(p.poll() is None for p in procs.values()):
            time.sleep(0.5)
        dead = [m for m, p in procs.items() if p.poll() is not None]
        console.print(f"[red]exited:[/red] {', '.join(dead)}")
    except KeyboardInterrupt:
        pass
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
        started = lk.LocalKafkaCluster.load(data_dir)
        if not broker_was_running and started is not None:
            started.stop()  # only the node processes this data dir's cluster started
            console.print("Kafka stopped")
    if dead:
        raise typer.Exit(1)


def main() -> None:
    # logs to stderr (stdout carries the JSON answers of send, erase...), warnings and above
    from shared.logging import configure_logging

    configure_logging("console", "warning")
    app()


if __name__ == "__main__":
    main()
