"""`esctl lag`: the consumer lag of every group, per partition, once or watched."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer
from rich.console import Console

from esctl.common import reach_kafka, run_kafka, say, settings_from_env
from esctl.output import print_table


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

    settings = settings_from_env(KafkaSettings)
    bootstrap, prefix = settings.kafka_bootstrap_servers, settings.topic_prefix
    reach_kafka(bootstrap)

    def show() -> LagReport:
        report: LagReport = run_kafka(lag_report(bootstrap, group, topic_prefix=prefix), bootstrap)
        if as_json:
            # flushed: with --watch, a pipe reader (`| jq`) gets each refresh when it is made
            print(json.dumps([r.as_dict() for r in report.rows]), flush=True)
        else:
            _print_lag(report, watching=watch > 0)
        for name in report.missing:
            say(f"no consumer group {name}", label="note", style="yellow")
        if not report.rows and not report.missing:
            where = f" on topics starting with {prefix!r}" if prefix else ""
            what = "the consumer groups have" if report.groups else "there are no consumer groups:"
            say(f"nothing to show: {what} no committed offsets or members{where}", label="note")
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
    from esctl.output import stdout_is_terminal

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
