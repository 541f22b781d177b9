"""`esctl schema` and `esctl topics`: what other Kafka clients need, the command records'
JSON Schema and the system's topics."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from esctl.common import console, fail, reach_kafka, run_kafka, settings_from_env

schema_app = typer.Typer(help="The message contract for other languages.", no_args_is_help=True)
topics_app = typer.Typer(help="The system's Kafka topics.", no_args_is_help=True)


@schema_app.command("export")
def schema_export(
    out: Annotated[Path, typer.Option(help="directory for <Type>.json")] = Path("schemas/commands"),
) -> None:
    """Write the JSON Schema of every command record (what other Kafka clients produce)."""
    from shared.messages.schema import export_command_schemas

    for path in export_command_schemas(out):
        console.print(f"wrote {path}")


@schema_app.command("asyncapi")
def schema_asyncapi(
    out: Annotated[Path, typer.Option(help="the file to write (- for standard output)")] = Path(
        "schemas/asyncapi.yaml"
    ),
) -> None:
    """Write the AsyncAPI 3.0 document of every topic: keys, headers, payloads, who produces
    and consumes each."""
    from shared.asyncapi import asyncapi_yaml
    from shared.errors import EsError

    try:
        text = asyncapi_yaml()
    except EsError as exc:  # the code writes something the document does not describe
        fail(exc)
    if str(out) == "-":
        typer.echo(text, nl=False)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    console.print(f"wrote {out}")


@topics_app.command("create")
def topics_create() -> None:
    """Create the system's topics with their configs (idempotent), from the environment."""
    from shared.kafka.topics import bootstrap_system_topics
    from shared.settings import KafkaSettings

    settings = settings_from_env(KafkaSettings)
    reach_kafka(settings.kafka_bootstrap_servers)
    counts = run_kafka(bootstrap_system_topics(settings), settings.kafka_bootstrap_servers)
    for name, n in sorted(counts.items()):
        console.print(f"{name}: {n} partitions")
