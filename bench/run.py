"""Benchmarks: this system against raw Kafka and against a peer library, in one run.

    python -m bench.run [--smoke] [--repeat N] [--only NAME] [--out bench/results]
                                                            (also: make bench, esctl bench)

Every figure is measured in the same run on the same machine, and throughput is reported as a
ratio to the raw-Kafka limit measured minutes before: these machines are shared, so absolute
numbers drift and ratios do not (as much). Writes `<out>/results.json` and `bench/RESULTS.md`
(with `--smoke`: `<out>/RESULTS.smoke.md`, tiny sizes, seconds in all: CI runs it so that
every scenario keeps working; it asserts nothing about speed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from rich.progress import Progress

from bench.common import (
    ROOT,
    Results,
    RssSampler,
    Sizes,
    console,
    machine_facts,
    use_local_kek,
)
from bench.end_to_end import scenario_end_to_end
from bench.limits import scenario_limits
from bench.peer import scenario_peer
from bench.pipeline import scenario_pipeline, scenario_pipeline_durable
from bench.processes import scenario_processes
from bench.projector import scenario_projector
from bench.rebuild import scenario_rebuild
from bench.recovery import scenario_recovery
from bench.report import write_markdown
from bench.snapshot_recovery import scenario_snapshot_recovery
from bench.workflow_timers import scenario_workflow_timers
from esctl.localstack.kafka import LocalKafkaCluster
from esctl.localstack.postgres import LocalPostgres
from shared.logging import configure_logging

__all__ = ["Sizes", "cli", "main"]  # Sizes: what the smoke test sends


async def main(args: argparse.Namespace) -> Results:
    sizes = Sizes.smoke() if args.smoke else Sizes()
    if args.repeat is not None:
        sizes.repeat = args.repeat
    workdir = Path(tempfile.mkdtemp(prefix="esctl-bench-"))
    workdir.chmod(0o755)  # noqa: ASYNC240  # root-run PostgreSQL runs as `postgres`: let it in
    use_local_kek(workdir)
    results = Results(machine=machine_facts() | {"repeat": sizes.repeat})
    cluster: LocalKafkaCluster | None = None
    pg: LocalPostgres | None = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
    postgres_url = os.environ.get("TEST_POSTGRES_URL", "")
    rss = RssSampler()
    sampler = asyncio.create_task(rss.run())
    try:
        if not bootstrap:
            cluster = LocalKafkaCluster.create(workdir / "kafka", nodes=1, heap_mb=512)
            await asyncio.to_thread(cluster.start)
            bootstrap = cluster.bootstrap_servers
        if not postgres_url:
            from esctl.localstack.kafka import free_port  # noqa: PLC0415

            pg_dir = workdir / "pg"
            pg_dir.mkdir()
            pg_dir.chmod(0o755)
            pg = LocalPostgres(pg_dir / "data", port=free_port())
            await asyncio.to_thread(pg.start)
            postgres_url = pg.url
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("limits", lambda: scenario_limits(bootstrap, sizes, results)),
            (
                "command pipeline",
                lambda: scenario_pipeline(bootstrap, sizes, results, workdir, rss),
            ),
            (
                "processes (1 and 2 command services)",
                lambda: scenario_processes(bootstrap, sizes, results, workdir, rss),
            ),
            (
                "projector",
                lambda: scenario_projector(bootstrap, postgres_url, sizes, results, workdir),
            ),
            ("end to end", lambda: scenario_end_to_end(bootstrap, sizes, results, workdir, rss)),
            ("recovery", lambda: scenario_recovery(bootstrap, sizes, results, workdir, rss)),
            ("rebuild", lambda: scenario_rebuild(bootstrap, sizes, results, workdir)),
            (
                "workflow timers",
                lambda: scenario_workflow_timers(bootstrap, sizes, results, workdir),
            ),
            (
                "snapshot recovery",
                lambda: scenario_snapshot_recovery(bootstrap, sizes, results, workdir),
            ),
            (
                "peer",
                lambda: asyncio.to_thread(scenario_peer, postgres_url, sizes, results, workdir),
            ),
            (
                "durable pipeline (3 brokers)",
                lambda: scenario_pipeline_durable(sizes, results, workdir, rss),
            ),
        ]
        if args.only:
            steps = [(n, f) for n, f in steps if n.startswith(args.only)]
        with Progress(console=console, transient=False) as progress:
            task = progress.add_task("benchmarks", total=len(steps))
            for name, step in steps:
                progress.update(task, description=f"benchmark: {name}")
                try:
                    await step()
                except Exception as exc:  # one failed scenario must not lose the others
                    console.print(f"[red]{name} failed[/red]: {exc!r}")
                    results.rows[f"error_{name.replace(' ', '_')}"] = {"error": repr(exc)}
                    if args.smoke:
                        raise
                progress.advance(task)
        results.rows["peak_rss"] = {k: round(v / 2**20, 1) for k, v in rss.peaks.items()}
    finally:
        sampler.cancel()
        if cluster is not None:
            await asyncio.to_thread(cluster.destroy)
        if pg is not None:
            await asyncio.to_thread(pg.destroy)
    return results


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks it all runs")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument(
        "--only",
        default="",
        help="run the scenarios whose name starts so (development; RESULTS.md is then not written)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="runs behind each headline figure (median and spread; default 3, --smoke 1)",
    )
    args = parser.parse_args()
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be at least 1")
    configure_logging("console", "warning")
    results = asyncio.run(main(args))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(
        json.dumps(
            {
                "machine": results.machine,
                "rows": results.rows,
                "smoke": args.smoke,
                "repeat": args.repeat or (1 if args.smoke else Sizes().repeat),
            },
            indent=2,
            default=str,
        )
    )
    markdown = (
        args.out / "RESULTS.smoke.md" if args.smoke or args.only else ROOT / "bench" / "RESULTS.md"
    )
    write_markdown(results, markdown, args.smoke)
    console.print(f"wrote {args.out / 'results.json'} and {markdown}")


if __name__ == "__main__":
    cli()
