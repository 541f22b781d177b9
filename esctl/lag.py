"""`esctl lag`: the consumer lag of every group, per partition, once or watched.

Watched (`--watch S`), each refresh also shows per group its total lag and whether it is catching
up: the change since the previous refresh and over the last minute, the rates at which the group
consumes and its topics are written, and a trend (see esctl.lag_trend, which does the arithmetic).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from esctl.common import fail, reach_kafka, run_kafka, say, settings_from_env
from esctl.output import Column, print_table

#: On a terminal, the trend in colour: red when it needs someone, green when it does not.
TREND_STYLES = {
    "falling behind": "bold red",
    "stalled": "bold red",
    "catching up": "yellow",
    "caught up": "green",
}

if TYPE_CHECKING:
    from esctl.lag_trend import Trend, TrendTracker
    from shared.kafka.lag import LagReport


def lag(
    group: Annotated[list[str] | None, typer.Option(help="only these groups (repeatable)")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="for scripts: a JSON list of rows (one per refresh)")
    ] = False,
    watch: Annotated[
        float, typer.Option(help="refresh every N seconds until Ctrl-C (0: once)", min=0)
    ] = 0.0,
    partitions: Annotated[
        bool,
        typer.Option(
            "--partitions/--groups-only",
            help="with --watch: the partitions under the groups' summary, or the summary only",
        ),
    ] = True,
    window: Annotated[
        float,
        typer.Option(
            help="with --watch: the seconds the trend, rates and estimate are measured over",
            min=1,
        ),
    ] = 10.0,
) -> None:
    """Consumer lag of every group (or each --group), per partition: the columns of Kafka's
    `kafka-consumer-groups --describe` and the lag in seconds (age of the oldest unread record).

    CURRENT-OFFSET is the committed offset (`-`: a member holds the partition, nothing committed
    yet), LOG-END-OFFSET the high watermark, LAG what a read_committed consumer still has to read:
    0 for a caught-up group on a transactional topic, where Kafka's tool shows 1 (the commit
    marker). With --watch, each refresh first shows per group its lag, its change since the
    previous refresh and over the last minute, the offsets consumed and produced per second and
    the trend over the --window: `↑ falling behind`, `↓ catching up, caught up in ~40s`,
    `→ steady`, `→ stalled` (lag, nothing consumed), `caught up`; with --json every row gains
    these as `group_*` fields. Kafka failing during --watch is one line on stderr and the next
    refresh tries again. Exit code: 0 (Ctrl-C ends --watch); 1 a --group that does not exist;
    2 Kafka unreachable or an error.
    """
    from esctl.lag_trend import TrendTracker
    from shared.errors import EsError
    from shared.kafka.errors import KafkaError
    from shared.kafka.lag import lag_report
    from shared.settings import KafkaSettings

    settings = settings_from_env(KafkaSettings)
    bootstrap, prefix = settings.kafka_bootstrap_servers, settings.topic_prefix
    reach_kafka(bootstrap)
    watching = watch > 0
    tracker = TrendTracker(window_s=window)

    def show() -> LagReport | None:
        coro = lag_report(bootstrap, group, topic_prefix=prefix)
        if not watching:
            report: LagReport = run_kafka(coro, bootstrap)
        else:
            try:
                report = asyncio.run(coro)
            except EsError as exc:
                if not exc.retriable:  # refused (authorization...): retrying will not help
                    fail(exc)
                say(f"{exc.message}; still watching, next try in {watch:g}s")
                return None
            except (KafkaError, ConnectionError, TimeoutError) as exc:
                # Kafka failing for a while is what one may be watching for: say it, go on
                say(f"{type(exc).__name__} {exc}; still watching, next try in {watch:g}s")
                return None
        trends = _trends(tracker, report) if watching else {}
        if as_json:
            # watching, every row gains its group's trend (the `group_*` fields)
            rows = [r.as_dict() | _json_trend(trends.get(r.group)) for r in report.rows]
            # flushed: with --watch, a pipe reader (`| jq`) gets each refresh when it is made
            print(json.dumps(rows), flush=True)
        else:
            _print_lag(report, trends, watching=watching, partitions=partitions)
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
        while watching:
            next_at = max(next_at + watch, time.monotonic())
            time.sleep(next_at - time.monotonic())
            report = show()
    except KeyboardInterrupt:  # the way to end --watch
        raise typer.Exit(0) from None
    if report is not None and report.missing:
        raise typer.Exit(1)


def _trends(tracker: TrendTracker, report: LagReport) -> dict[str, Trend]:
    """This refresh's samples, one per group with rows, given to the tracker."""
    from esctl.lag_trend import GroupSample, PartitionSample

    by_group: dict[str, dict[tuple[str, int], PartitionSample]] = {}
    oldest: dict[str, float | None] = {}
    for r in report.rows:
        by_group.setdefault(r.group, {})[(r.topic, r.partition)] = PartitionSample(
            r.committed, r.log_end, r.lag
        )
        if r.lag_seconds is not None:
            oldest[r.group] = max(oldest.get(r.group) or 0.0, r.lag_seconds)
    return tracker.update(
        {
            name: GroupSample(report.read_at, parts, oldest.get(name))
            for name, parts in by_group.items()
        }
    )


def _json_trend(trend: Trend | None) -> dict[str, Any]:
    if trend is None:
        return {}
    return trend.as_dict()


def _signed(value: int | None) -> str | None:
    return None if value is None else f"{value:+d}" if value else "0"


def _rate(value: float | None) -> str | None:
    if value is None:
        return None
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _seconds(value: float | None) -> str | None:
    return None if value is None else f"{value:.1f}"


def _summary(trends: dict[str, Trend]) -> tuple[list[Column | str], list[Any]]:
    """The groups' table of a refresh: one row per group, the trend last (free text)."""
    columns: list[Column | str] = [
        "group",
        "lag",
        "lag-seconds",
        "change",
        "change-1m",
        "consumed/s",
        "produced/s",
        Column("trend", wrap=True),
    ]
    rows = [
        (
            name,
            t.lag,
            _seconds(t.lag_seconds),
            _signed(t.change),
            _signed(t.minute_change),
            _rate(t.consumed_per_s),
            _rate(t.produced_per_s),
            Text(t.words(), style=TREND_STYLES.get(t.state or "", "")),
        )
        for name, t in sorted(trends.items())
    ]
    return columns, rows


def _print_lag(
    report: Any,
    trends: dict[str, Trend],
    *,
    watching: bool,
    partitions: bool = True,
) -> None:
    """One block of `esctl lag`: on a terminal a table (cleared and redrawn when watching); in
    a pipe plain columns, and when watching each block under a line with its time. Watching,
    the groups' summary comes first, then (unless --groups-only) the partitions."""
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
            _seconds(r.lag_seconds),
        )
        for r in report.rows
    ]
    if stdout_is_terminal():
        title: str | None = time.strftime("consumer lag at %H:%M:%S")
        if watching:
            Console().clear()
            if trends:
                print_table(*_summary(trends), title=title)
                title = None
        if not watching or partitions or not trends:
            print_table(columns, rows, title=title)
        return
    if not watching:
        if rows:
            print_table(columns, rows)
        return
    from datetime import datetime

    print("consumer lag at " + datetime.now().astimezone().isoformat(timespec="seconds"))
    if trends:
        print_table(*_summary(trends))
    if rows and partitions:
        if trends:
            print()  # the groups, a blank line, the partitions
        print_table(columns, rows)
    print(flush=True)  # a blank line ends the refresh
