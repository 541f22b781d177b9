"""`esctl postgres`: a local PostgreSQL on loopback (Debian's packages)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from esctl.common import STATE_DIR, console, fail
from esctl.localstack import postgres as lp
from shared.errors import EsError

app = typer.Typer(help="A local PostgreSQL on loopback (Debian's packages).", no_args_is_help=True)


def _pg(port: int, data_dir: Path | None) -> lp.LocalPostgres:
    return lp.LocalPostgres(data_dir or lp.default_data_dir(port, STATE_DIR), port=port)


PgPort = Annotated[int, typer.Option(help="port on 127.0.0.1")]
PgDir = Annotated[Path | None, typer.Option(help="data directory (default depends on user)")]


@app.command("install")
def pg_install() -> None:
    """Install Debian's PostgreSQL server when it is missing (needs root)."""
    try:
        bin_dir = lp.ensure_installed()
    except EsError as exc:
        fail(exc)
    console.print(f"PostgreSQL server binaries in {bin_dir}")


@app.command("start")
def pg_start(port: PgPort = 5433, data_dir: PgDir = None) -> None:
    """Install Debian's PostgreSQL if missing, start a cluster, create the database."""
    pg = _pg(port, data_dir)
    try:
        with console.status("starting PostgreSQL"):
            pg.start()
    except EsError as exc:
        fail(exc)
    console.print(f"PostgreSQL ready ({pg.data_dir})")
    print(pg.url)


@app.command("stop")
def pg_stop(port: PgPort = 5433, data_dir: PgDir = None) -> None:
    """Stop the cluster started by `esctl postgres start`."""
    _pg(port, data_dir).stop()
    console.print("stopped")


@app.command("status")
def pg_status(port: PgPort = 5433, data_dir: PgDir = None) -> None:
    """Whether the cluster runs; prints its URL when it does."""
    pg = _pg(port, data_dir)
    if not pg.is_running():
        console.print("not running")
        raise typer.Exit(1)
    print(pg.url)
