"""`esctl projections`: the read model, rebuilt beside the live one."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from esctl.common import console, reach_kafka, run_kafka, say, settings_from_env

app = typer.Typer(help="The read model.", no_args_is_help=True)


@app.command("rebuild")
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

    settings = settings_from_env(ProjectorSettings)
    bootstrap = settings.kafka_bootstrap_servers
    reach_kafka(bootstrap)
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
            result: RebuildResult = run_kafka(go(), bootstrap)
        except KeyboardInterrupt:
            say("interrupted; run the same command again to resume", label="note", style="yellow")
            raise typer.Exit(130) from None
    kept = f"; generation {result.previous} kept (--keep-old)" if keep_old else ""
    console.print(
        f"rebuilt the read model: generation {result.generation} is live (was "
        f"{result.previous}), {result.events:,} events applied in "
        f"{time.monotonic() - started:.1f}s{kept}",
        soft_wrap=True,
        highlight=False,
    )
