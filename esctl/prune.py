"""`esctl prune`: archive, then delete, the events no reader needs any more."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from esctl.common import (
    STATE_DIR,
    console,
    reach_kafka,
    run_kafka,
    say,
    say_and_exit,
    settings_from_env,
)
from esctl.output import print_table


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
        say_and_exit(f"--before {before!r} is not an ISO 8601 date or time")
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    settings = settings_from_env(KafkaSettings)
    bootstrap = settings.kafka_bootstrap_servers
    reach_kafka(bootstrap)
    topics = Topics.from_settings(settings)
    plans = run_kafka(plan(bootstrap, topics, when), bootstrap)
    print_table(
        ["partition", "log start", "log end", "safe offset", "offsets to prune", "limited by"],
        [(p.partition, p.log_start, p.log_end, p.safe, p.records, p.limited_by()) for p in plans],
    )
    offsets = sum(p.records for p in plans)
    if dry_run:
        say(
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

        entries = run_kafka(
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
        say("nothing to prune", label="note", style="yellow")
