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
from rich.text import Text

from shared.cli_output import Column, print_line, print_table
from shared.errors import EsError, KafkaUnreachable
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

# soft_wrap: a message is never wrapped at the terminal width (an id or a URL cut across lines
# cannot be copied); the terminal wraps long lines by itself
console = Console(stderr=True, soft_wrap=True)
STATE_DIR = Path(os.environ.get("ESCTL_STATE_DIR", "./var"))

DataDir = Annotated[Path, typer.Option(help="where the cluster keeps its data and state")]


#: Exit code of an error: invalid input, Kafka or a service unreachable, refused (see --help).
EXIT_ERROR = 2
#: How long a person waits for Kafka to accept a connection before being told it does not.
CONNECT_TIMEOUT_S = 5.0


def _say(message: str, *, label: str = "error", style: str = "red") -> None:
    """One line on stderr, whatever its length (never wrapped, markup never interpreted)."""
    console.print(Text.assemble((f"{label}:", style), " ", message), soft_wrap=True)


def _say_and_exit(message: str) -> NoReturn:
    _say(message)
    raise typer.Exit(EXIT_ERROR)


def _fail(exc: EsError) -> NoReturn:
    if isinstance(exc, KafkaUnreachable):
        _say_and_exit(
            f"{exc.message}: is the broker running, and is that its address? Check "
            "KAFKA_BOOTSTRAP_SERVERS (`esctl kafka status` shows the local broker)"
        )
    _say_and_exit(exc.message + (" (retrying may help)" if exc.retriable else ""))


def _settings(cls: type[Any]) -> Any:
    """The settings from the environment; an invalid variable is named in one line, exit 2."""
    from pydantic import ValidationError

    try:
        return cls()
    except ValidationError as exc:
        _say_and_exit("invalid setting " + _validation_words(exc, env=True))


def _validation_words(exc: Any, *, env: bool = False, fields: list[str] | None = None) -> str:
    """A pydantic ValidationError in words: `field: what is wrong; other: ...`, no URLs."""
    import difflib

    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error["loc"]) or "(the whole value)"
        if env:
            where = where.upper()
        what = str(error["msg"])
        what = what[:1].lower() + what[1:]
        if error["type"] == "extra_forbidden":
            what = "unknown field"
            close = difflib.get_close_matches(str(error["loc"][-1]), fields or [], n=1)
            if close:
                what += f" (did you mean {close[0]}?)"
        parts.append(f"{where}: {what}")
    return "; ".join(parts)


def _reach_kafka(bootstrap_servers: str) -> None:
    """Stop here, in seconds and in one line, when no broker answers at `bootstrap_servers`."""
    from shared.kafka.clients import ensure_reachable

    try:
        asyncio.run(ensure_reachable(bootstrap_servers, timeout_s=CONNECT_TIMEOUT_S))
    except EsError as exc:
        _fail(exc)


def _run_kafka(coro: Any, bootstrap_servers: str) -> Any:
    """Run a coroutine talking to Kafka: any failure becomes one line on stderr and exit 2."""
    from shared.kafka.errors import KafkaError

    try:
        return asyncio.run(coro)
    except EsError as exc:
        _fail(exc)
    except (KafkaError, ConnectionError, TimeoutError) as exc:
        _say_and_exit(
            f"Kafka at {bootstrap_servers} failed: {type(exc).__name__} {exc}".rstrip()
            + " (retrying may help)"
        )
    except OSError as exc:  # a file of the archive, say
        _say_and_exit(str(exc))


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
                _say_and_exit(
                    f"a cluster is running in {data_dir} at {cluster.bootstrap_servers}: stop it "
                    "first (`esctl kafka stop`), or use another data dir (--data-dir; for "
                    "`esctl up`, ESCTL_STATE_DIR gives the whole stack its own)"
                )
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
    """Stop the cluster and delete its data (the stores `esctl up` keeps beside it are kept)."""
    _load(data_dir).destroy()
    console.print(f"deleted {data_dir}")
    # `esctl up` keeps its stores beside the broker's data dir: they describe the deleted log
    stores = [n for n in _LOCAL_STORES if (data_dir.parent / n).exists()]
    if stores:
        _say(
            f"kept {', '.join(stores)} in {data_dir.parent}: they belong to the deleted log (the "
            "read model and its positions, the keys and erased subjects); delete them too before "
            "`esctl up` on a new broker, or it serves the old read model",
            label="note",
            style="yellow",
        )


#: The SQLite stores `esctl up` keeps in ESCTL_STATE_DIR, beside the broker's data dir.
_LOCAL_STORES = ("read-store.sqlite3", "keys.sqlite3", "workflows.sqlite3")


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

    settings = _settings(KafkaSettings)
    _reach_kafka(settings.kafka_bootstrap_servers)
    counts = _run_kafka(bootstrap_system_topics(settings), settings.kafka_bootstrap_servers)
    for name, n in sorted(counts.items()):
        console.print(f"{name}: {n} partitions")


# ----------------------------------------------------------------------------------- lag


@app.command("lag")
def lag(
    group: Annotated[list[str] | None, typer.Option(help="only these groups (repeatable)")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="for scripts: a JSON list of rows (one per refresh)")
    ] = False,
    watch: Annotated[
        float, typer.Option(help="refresh every N seconds until Ctrl-C (0: once)", min=0)
    ] = 0.0,
) -> None:
    """Consumer lag of every group (or each --group), per partition: the columns of Kafka's
    `kafka-consumer-groups --describe` and the lag in seconds (age of the oldest unread record).

    CURRENT-OFFSET is the committed offset (`-`: a member holds the partition, nothing committed
    yet), LOG-END-OFFSET the high watermark, LAG what a read_committed consumer still has to read:
    0 for a caught-up group on a transactional topic, where Kafka's tool shows 1 (the commit
    marker). Exit code: 0; 1 a --group that does not exist; 2 Kafka unreachable or an error.
    """
    from shared.kafka.lag import LagReport, lag_report
    from shared.settings import KafkaSettings

    settings = _settings(KafkaSettings)
    bootstrap, prefix = settings.kafka_bootstrap_servers, settings.topic_prefix
    _reach_kafka(bootstrap)

    def show() -> LagReport:
        report: LagReport = _run_kafka(lag_report(bootstrap, group, topic_prefix=prefix), bootstrap)
        if as_json:
            # flushed: with --watch, a pipe reader (`| jq`) gets each refresh when it is made
            print(json.dumps([r.as_dict() for r in report.rows]), flush=True)
        else:
            _print_lag(report, watching=watch > 0)
        for name in report.missing:
            _say(f"no consumer group {name}", label="note", style="yellow")
        if not report.rows and not report.missing:
            where = f" on topics starting with {prefix!r}" if prefix else ""
            what = "the consumer groups have" if report.groups else "there are no consumer groups:"
            _say(f"nothing to show: {what} no committed offsets or members{where}", label="note")
        return report

    try:
        report = show()
        next_at = time.monotonic()
        while watch > 0:
            next_at = max(next_at + watch, time.monotonic())
            time.sleep(next_at - time.monotonic())
            report = show()
    except KeyboardInterrupt:  # the way to end --watch
        raise typer.Exit(0) from None
    if report.missing:
        raise typer.Exit(1)


def _print_lag(report: Any, *, watching: bool) -> None:
    """One block of `esctl lag`: on a terminal a table (cleared and redrawn when watching); in
    a pipe plain columns, and when watching each block under a line with its time."""
    from shared.cli_output import stdout_is_terminal

    columns = [
        "group",
        "topic",
        "partition",
        "current-offset",
        "log-end-offset",
        "lag",
        "lag-seconds",
    ]
    rows = [
        (
            r.group,
            r.topic,
            r.partition,
            r.committed,
            r.log_end,
            r.lag,
            f"{r.lag_seconds:.1f}" if r.lag_seconds is not None else None,
        )
        for r in report.rows
    ]
    if stdout_is_terminal():
        if watching:
            Console().clear()
        print_table(columns, rows, title=time.strftime("consumer lag at %H:%M:%S"))
        return
    title = None
    if watching:
        from datetime import datetime

        title = "consumer lag at " + datetime.now().astimezone().isoformat(timespec="seconds")
    if rows:
        print_table(columns, rows, title=title)
    elif title:
        print(title)
    if watching:
        print(flush=True)


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
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from shared.kafka.topics import Topics
    from shared.readmodel.rebuild import RebuildProgress, RebuildResult, rebuild
    from shared.readmodel.store import ReadStore
    from shared.settings import ProjectorSettings

    settings = _settings(ProjectorSettings)
    bootstrap = settings.kafka_bootstrap_servers
    _reach_kafka(bootstrap)
    store = ReadStore(settings.read_store_url, writer=True)
    # The bar moves with the offsets read (the only total known in advance: transaction
    # markers take offsets too); the count and the rate are of events.
    columns = (
        TextColumn("[bold]generation {task.fields[gen]}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[events]} events"),
        TextColumn("{task.fields[rate]} events/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    started = time.monotonic()
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("rebuild", total=None, gen="?", events="0", rate="-")

        def on_progress(p: RebuildProgress) -> None:
            elapsed = time.monotonic() - started
            progress.update(
                task,
                total=max(p.total, 1),
                completed=p.done,
                gen=p.generation,
                events=f"{p.events:,}",
                rate=f"{p.events / elapsed:,.0f}" if elapsed > 0 and p.events else "-",
            )

        async def go() -> RebuildResult:
            try:
                return await rebuild(
                    store,
                    bootstrap,
                    Topics.from_settings(settings).events,
                    batch=batch,
                    keep_old=keep_old,
                    on_progress=on_progress,
                    archive_dir=archive,
                )
            finally:
                await store.close()

        try:
            result: RebuildResult = _run_kafka(go(), bootstrap)
        except KeyboardInterrupt:
            _say("interrupted; run the same command again to resume", label="note", style="yellow")
            raise typer.Exit(130) from None
    kept = f"; generation {result.previous} kept (--keep-old)" if keep_old else ""
    console.print(
        f"rebuilt the read model: generation {result.generation} is live (was "
        f"{result.previous}), {result.events:,} events applied in "
        f"{time.monotonic() - started:.1f}s{kept}",
        soft_wrap=True,
        highlight=False,
    )


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
        _say_and_exit(f"--before {before!r} is not an ISO 8601 date or time")
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    settings = _settings(KafkaSettings)
    bootstrap = settings.kafka_bootstrap_servers
    _reach_kafka(bootstrap)
    topics = Topics.from_settings(settings)
    plans = _run_kafka(plan(bootstrap, topics, when), bootstrap)
    print_table(
        ["partition", "log start", "log end", "safe offset", "offsets to prune", "limited by"],
        [(p.partition, p.log_start, p.log_end, p.safe, p.records, p.limited_by()) for p in plans],
    )
    offsets = sum(p.records for p in plans)
    if dry_run:
        _say(
            f"{offsets} offsets (events and transaction markers) would be archived and pruned",
            label="dry run",
            style="bold",
        )
        return
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

    columns = (
        TextColumn("archive and prune"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[events]} events archived"),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("prune", total=max(1, offsets), events="0")

        def on_progress(events: int, done: int, _total: int) -> None:
            progress.update(task, completed=done, events=f"{events:,}")

        entries = _run_kafka(
            prune(bootstrap, topics, plans, archive, on_progress=on_progress), bootstrap
        )
    for e in entries:
        console.print(
            f"archived {e.topic}[{e.partition}] below offset {e.end}: {e.count:,} events "
            f"-> {e.file}",
            soft_wrap=True,
            highlight=False,
        )
    if not entries:
        _say("nothing to prune", label="note", style="yellow")


# --------------------------------------------------------------------------------- erase


def _local_key_store_url() -> str:
    """The key store `esctl up` gives the services: under ESCTL_STATE_DIR, made absolute."""
    return f"sqlite:///{(STATE_DIR / 'keys.sqlite3').resolve()}"


def local_erasure_token_file(command_port: int) -> Path:
    """Where `esctl up` keeps the erasure token it gives its command service on that port (an
    absolute place, whatever the working directory: `esctl erase` reads it from anywhere). One
    file per port: a second stack beside the first (`esctl up --command-port ...`) does not
    replace the first one's token."""
    return lk.cache_dir() / "local-stack" / f"erasure-token-{command_port}"


def _port_of(url: str) -> int:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


def _erasure_token(url: str) -> str:
    token = os.environ.get("ERASURE_TOKEN", "")
    if token:
        return token
    with contextlib.suppress(OSError, ValueError):
        return local_erasure_token_file(_port_of(url)).read_text().strip()
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
    2 refused, not confirmed or error (the reason on stderr). The bearer token is ERASURE_TOKEN,
    else the one `esctl up` gave its command service on --url's port."""
    import httpx

    if not yes:
        try:
            confirmed = typer.confirm(
                f"Erase {subject}? Its name and email become unreadable everywhere, for good.",
                err=True,
            )
        except typer.Abort:  # Ctrl-C, or end of input (nothing to answer: no terminal)
            console.print()
            confirmed = False
        if not confirmed:
            _say_and_exit(f"{subject} not erased: not confirmed (--yes: do not ask)")
    token = _erasure_token(url)
    if not token:
        _say_and_exit(
            "no erasure token: set ERASURE_TOKEN to the command service's (a local stack's is "
            f"in {local_erasure_token_file(_port_of(url))} while `esctl up` runs)"
        )
    endpoint = f"{url.rstrip('/')}/subjects/{subject}/erase"
    try:
        with console.status(f"erasing {subject} through {url}"):  # on a terminal only
            response = httpx.post(
                endpoint,
                json={"reason": reason, "force": force},
                headers={"Authorization": f"Bearer {token}"},
                timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT_S),
            )
    except httpx.HTTPError as exc:
        _say_and_exit(
            f"the command service at {url} does not answer ({_http_why(exc)}): is it running? "
            "(--url or COMMAND_SERVICE_URL names another)"
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


def _http_why(exc: Exception) -> str:
    """A few words on a failed HTTP request: `connection refused`, `no answer within 5s`..."""
    import httpx

    if isinstance(exc, httpx.TimeoutException):
        return "no answer in time"
    cause = exc.__cause__ or exc.__context__
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if cause is not None and getattr(cause, "strerror", None):
        return str(cause.strerror).lower()
    text = str(exc)
    if "Connection refused" in text:
        return "connection refused"
    return text.split("] ", 1)[-1].lower() or type(exc).__name__


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

    Exit code: 0 accepted, 1 rejected, 3 no outcome within the timeout, 2 invalid input or
    Kafka unreachable (the reason in one line on stderr).
    """
    import uuid

    from shared.kafka.commands import CommandClient
    from shared.kafka.topics import Topics
    from shared.messages import COMMANDS, encode_command
    from shared.messages.codec import utcnow
    from shared.settings import KafkaSettings

    cls = _command_class(command_type, COMMANDS.types())
    if cls.issuers:
        _say_and_exit(
            f"{command_type} is issued by the system itself, not sent by people: {cls.instead}"
        )
    command = _parse_command(cls, payload)
    try:
        cid = uuid.UUID(command_id) if command_id else uuid.uuid4()
    except ValueError:
        _say_and_exit(f"--command-id {command_id!r} is not a UUID")
    settings = _settings(KafkaSettings)
    bootstrap = settings.kafka_bootstrap_servers
    _reach_kafka(bootstrap)
    message = encode_command(
        command,
        command_id=cid,
        aggregate_id=aggregate,
        expected_version=expected_version,
        occurred_at=utcnow(),
    )

    async def go() -> object:
        client = CommandClient(bootstrap, Topics.from_settings(settings), recent_window_s=0)
        await client.start()
        try:
            return await client.send(cid, message, wait_s=timeout)
        finally:
            await client.stop()

    outcome = _run_kafka(go(), bootstrap)
    if outcome is None:
        print(json.dumps({"command_id": str(cid), "status": "pending"}))
        _say(
            f"no outcome within {timeout:g}s: is the command service running?",
            label="pending",
            style="yellow",
        )
        raise typer.Exit(3)
    from shared.messages.results import CommandOutcome

    assert isinstance(outcome, CommandOutcome)
    print(outcome.model_dump_json())
    if outcome.status == "rejected":
        _say(f"{outcome.code}: {outcome.message}", label="rejected", style="yellow")
        raise typer.Exit(1)


def _command_class(name: str, known: dict[str, Any]) -> Any:
    """The command type called `name`; else one line with the closest name, exit 2."""
    import difflib

    if name in known:
        return known[name]
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    if not close:  # a case slip: createpost
        close = [k for k in known if k.lower() == name.lower()]
    for_people = sorted(k for k, cls in known.items() if not cls.issuers)
    hint = f"did you mean {close[0]}?" if close else "known: " + ", ".join(for_people)
    _say_and_exit(f"unknown command type {name}; {hint}")


def _parse_command(cls: Any, payload: str) -> Any:
    """The command from --json; invalid JSON says where, an invalid payload says which field
    and what is wrong (one line, exit 2)."""
    from pydantic import ValidationError

    try:
        value = json.loads(payload)
    except json.JSONDecodeError as exc:
        _say_and_exit(
            f"invalid JSON in --json at line {exc.lineno}, column {exc.colno}: "
            f"{exc.msg[:1].lower()}{exc.msg[1:]}"
        )
    if not isinstance(value, dict):
        kinds = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
        _say_and_exit(
            f"--json must be a JSON object ({{...}}) with the fields of {cls.__name__}, "
            f"not {kinds.get(type(value), 'a number')}"
        )
    try:
        return cls.model_validate_json(payload)
    except ValidationError as exc:
        words = _validation_words(exc, fields=list(cls.model_fields))
        _say_and_exit(f"invalid {cls.__name__}: {words}")


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


def _workflow_call(method: str, base_url: str, path: str, **kwargs: object) -> dict[str, object]:
    """One request to the workflow service; any failure is one line on stderr (exit 2 when it
    does not answer or the request is invalid, 1 when it refuses: unknown, finished...)."""
    import httpx

    try:
        response = httpx.request(
            method,
            f"{base_url.rstrip('/')}{path}",
            timeout=httpx.Timeout(10.0, connect=CONNECT_TIMEOUT_S),
            **kwargs,  # type: ignore[arg-type]
        )
    except httpx.HTTPError as exc:
        _say_and_exit(
            f"the workflow service at {base_url} does not answer ({_http_why(exc)}): is it "
            "running? (--url or WORKFLOW_URL names another)"
        )
    body = _json_or_none(response)
    if not isinstance(body, dict):
        _say_and_exit(
            f"{base_url} answered HTTP {response.status_code} without a JSON object: is it the "
            "workflow service? (--url or WORKFLOW_URL)"
        )
    if response.status_code == 422 and isinstance(body.get("detail"), list):  # FastAPI's
        words = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', [])[1:])}: {str(e.get('msg', '')).lower()}"
            for e in body["detail"]
            if isinstance(e, dict)
        )
        _say_and_exit(f"invalid request: {words}")
    if response.status_code >= 400:
        _say(f"{body.get('detail', '')}", label=str(body.get("title", "error")))
        raise typer.Exit(1)
    return body


#: The statuses of a workflow (workflow_service/model.py; a unit test keeps them equal), and
#: `running`, which --status takes for every unfinished one.
WORKFLOW_STATUSES = (
    "active",
    "compensating",
    "published",
    "scheduled",
    "rejected",
    "auto_rejected",
    "cancelled",
    "completed",
    "failed",
)


@workflows_app.command("list")
def workflows_list(
    url: WorkflowUrl = "http://127.0.0.1:8004",
    status: Annotated[
        str | None,
        typer.Option(
            help=f"{', '.join(WORKFLOW_STATUSES)}, or running (every unfinished one)",
        ),
    ] = None,
    kind: Annotated[str | None, typer.Option(help="review, schedule or publication")] = None,
    stuck: Annotated[bool, typer.Option("--stuck", help="only workflows without progress")] = False,
    limit: int = 100,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Workflows, newest first, with their step, next timer and failures; the counts of all
    workflows per status on stderr.

    None matching: a note on stderr, exit 0. An unknown --status: exit 2, with the valid ones.
    """
    import difflib

    params: dict[str, object] = {"limit": limit}
    if status:
        if status not in (*WORKFLOW_STATUSES, "running"):
            close = difflib.get_close_matches(status, [*WORKFLOW_STATUSES, "running"], n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            _say_and_exit(
                f"unknown workflow status {status}; {hint}valid: "
                f"{', '.join(WORKFLOW_STATUSES)}, running (every unfinished one)"
            )
        params["status"] = status
    if kind:
        params["kind"] = kind
    if stuck:
        params["stuck"] = "true"
    body = _workflow_call("GET", url, "/workflows", params=params)
    if as_json:
        print(json.dumps(body))
        return
    rows: list[dict[str, Any]] = body["workflows"]  # type: ignore[assignment]
    counts: dict[str, int] = body["counts"]  # type: ignore[assignment]
    everything = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"
    if not rows:
        asked = [f"{k} {v}" for k, v in (("status", status), ("kind", kind)) if v]
        asked += ["stuck"] if stuck else []
        which = f" with {', '.join(asked)}" if asked else ""
        _say(f"no workflows{which} (all workflows: {everything})", label="note", style="yellow")
        return
    print_table(
        ["workflow", "status", "step", "next timer", "due at", "failures", "stuck", "updated"],
        [
            (
                row["workflow_id"],
                row["status"],
                row["step"],
                (row.get("next_timer") or {}).get("id"),
                (row.get("next_timer") or {}).get("due_at"),
                row["failures"],
                "STUCK" if row["stuck"] else "no",
                row["updated_at"],
            )
            for row in rows
        ],
    )
    sys.stdout.flush()  # the table first, where both streams go to one place (`2>&1`)
    _say(everything, label="all workflows", style="bold")  # on stderr: stdout is the table only


@workflows_app.command("show")
def workflows_show(
    workflow_id: str,
    url: WorkflowUrl = "http://127.0.0.1:8004",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """State, history, pending timers, current step and failures of one workflow."""
    from urllib.parse import quote

    body = _workflow_call("GET", url, f"/workflows/{quote(workflow_id, safe=':')}")
    if as_json:
        print(json.dumps(body))
        return
    stuck = "  STUCK" if body["stuck"] else ""
    print_line(f"{body['workflow_id']}  {body['status']}  step: {body['step']}{stuck}")
    if body.get("error"):
        print_line(f"error: {body['error']}", style="red")
    timers: list[dict[str, Any]] = body["pending_timers"]  # type: ignore[assignment]
    print_line("")
    if timers:
        print_table(["pending timer", "due at"], [(t["id"], t["due_at"]) for t in timers])
    else:
        print_line("no pending timers")
    history: list[dict[str, Any]] = body["history"]  # type: ignore[assignment]
    print_line("")
    print_table(
        ["at", "what", Column("detail", wrap=True)],
        [(h["at"], h["what"], json.dumps(h["detail"]) if h["detail"] else None) for h in history],
    )


def _action(name: str) -> None:
    def command(
        workflow_id: str,
        url: WorkflowUrl = "http://127.0.0.1:8004",
        reason: Annotated[str | None, typer.Option(help="recorded in the history")] = None,
    ) -> None:
        from urllib.parse import quote

        path = f"/workflows/{quote(workflow_id, safe=':')}/{name}"
        body = _workflow_call("POST", url, path, json={"reason": reason})
        console.print(
            f"{name} of {body['workflow_id']} sent (request {body['request_id']}); "
            f"`esctl workflows show {workflow_id}` shows its effect",
            soft_wrap=True,
            highlight=False,
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
        env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{port}", LOG_FORMAT="console")
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
        _say(f"{', '.join(dead)}; stopping the others", label="exited")
    except KeyboardInterrupt:
        _say("stopping what `esctl up` started", label="Ctrl-C", style="yellow")
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


def main() -> None:
    # logs to stderr (stdout carries the JSON answers of send, erase...), warnings and above
    import logging

    from shared.logging import configure_logging

    configure_logging("console", "warning")
    # aiokafka logs every failed connection attempt and retry as an error; esctl says in one
    # line what failed and what to check instead (`_reach_kafka`, `_run_kafka`).
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        app()
    except BrokenPipeError:  # `esctl lag --watch 5 | head`: the reader is gone, end quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(0)


if __name__ == "__main__":
    main()
