"""`esctl`: one CLI for people running the system.

Groups: `kafka`, `postgres`, `topics`, `schema`, `projections`, `workflows`, `keys`; and `lag`,
`send`, `bench`, `up`, `token`. One module per group (`esctl.kafka`, ...); this one assembles
them, in the order `esctl --help` lists them. Every module imports what only some commands use
inside those commands, so that `esctl kafka stop` does not pay for pydantic models it never uses.
"""

from __future__ import annotations

import os
import sys

import typer

from esctl import (
    contract,
    erase,
    kafka,
    keys,
    lag,
    local,
    postgres,
    projections,
    prune,
    send,
    tokens,
    workflows,
)

app = typer.Typer(help="Operate the event-sourced blog system on Kafka.", no_args_is_help=True)
app.add_typer(kafka.app, name="kafka")
app.add_typer(postgres.app, name="postgres")
app.add_typer(contract.schema_app, name="schema")
app.add_typer(contract.topics_app, name="topics")
app.command("lag")(lag.lag)
app.add_typer(projections.app, name="projections")
app.command("prune")(prune.prune_command)
app.command("erase")(erase.erase_command)
app.add_typer(keys.app, name="keys")
app.command("send")(send.send)
app.command("bench")(local.bench)
app.add_typer(workflows.app, name="workflows")
app.command("up")(local.up)
app.command("token")(tokens.token_command)


def main() -> None:
    # logs to stderr (stdout carries the JSON answers of send, erase...), warnings and above
    import logging

    from shared.logging import configure_logging

    configure_logging("console", "warning")
    # aiokafka logs every failed connection attempt and retry as an error; esctl says in one
    # line what failed and what to check instead (`reach_kafka`, `run_kafka`).
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        app()
    except BrokenPipeError:  # `esctl lag --watch 5 | head`: the reader is gone, end quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(0)


if __name__ == "__main__":
    main()
