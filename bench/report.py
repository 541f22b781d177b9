"""The report: bench/RESULTS.md (or RESULTS.smoke.md) from the results of one run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common import Results


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def write_markdown(results: Results, path: Path, smoke: bool) -> None:
    r = results.rows
    m = results.machine

    def get(key: str, field_: str) -> Any:
        return r.get(key, {}).get(field_)

    lines = [
        "# Benchmark results" + (" (smoke run: tiny sizes, not figures)" if smoke else ""),
        "",
        f"Run {m['when']} on {m['cpus']} cores / {m['memory_gib']} GiB, {m['platform']}; "
        f"Python {m['python']}, Apache Kafka {m['kafka']} (local broker, heap "
        f"{m['broker_heap_mb']} MiB, same machine), aiokafka {m['aiokafka']}, eventsourcing "
        f"{m['eventsourcing']}. Broker and clients share the 2 cores. One run of "
        "`make bench`; ratios compare with the raw-Kafka limits of the same run.",
        "",
        "## Limits: raw aiokafka against the same broker",
        "",
        "| scenario | 200 B records/s | 1 KB records/s |",
        "|---|---:|---:|",
        f"| produce, idempotent, acks=all | {get('raw_produce_200B', 'records_per_s')} | "
        f"{get('raw_produce_1024B', 'records_per_s')} |",
    ]
    for batch in (100, 500):
        lines.append(
            f"| transactional produce, {batch} per transaction | "
            f"{get(f'raw_txn_produce_200B_batch{batch}', 'records_per_s')} | "
            f"{get(f'raw_txn_produce_1024B_batch{batch}', 'records_per_s')} |"
        )
    lines.append(
        f"| consume (`getmany`, read_committed) | "
        f"{get('raw_consume_200B', 'records_per_s')} | "
        f"{get('raw_consume_1024B', 'records_per_s')} |"
    )
    raw_txn = get("raw_txn_produce_200B_batch500", "records_per_s")
    lines += [
        "",
        "## Command pipeline (one command-service process, CreatePost, ~300 B)",
        "",
        "| max commands per transaction | commands/s | ratio to raw transactional "
        "produce (200 B, 500/txn) |",
        "|---:|---:|---:|",
    ]
    for key, row in r.items():
        if key.startswith("pipeline_batch"):
            lines.append(
                f"| {key.removeprefix('pipeline_batch')} | {row['commands_per_s']} | "
                f"{ratio(row['commands_per_s'], raw_txn)} |"
            )
    raw_consume_rate = get("raw_consume_200B", "records_per_s")
    lines += [
        "",
        "## Projector (one process, PostCreated events, ~400 B)",
        "",
        "| read store | events/s | ratio to raw consume (200 B) |",
        "|---|---:|---:|",
    ]
    for store in ("sqlite", "postgresql"):
        rate = get(f"projector_{store}", "events_per_s")
        lines.append(f"| {store} | {rate} | {ratio(rate, raw_consume_rate)} |")
    lines += [
        "",
        "## End to end: HTTP command accepted -> visible in the query service "
        "(with the consistency token), open loop",
        "",
        "| offered/s | achieved/s | p50 ms | p95 ms | p99 ms | errors | sustained |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for key, row in r.items():
        if key.startswith("e2e_") and "offered" in row:
            lines.append(
                f"| {row['offered']} | {row['achieved']} | {row['p50_ms']} | "
                f"{row['p95_ms']} | {row['p99_ms']} | {row['errors']} | "
                f"{'yes' if row['sustained'] else 'no'} |"
            )
    lines.append(
        f"\nHighest offered load sustained (no errors, >= 95 % achieved, p99 < 1 s): "
        f"{get('e2e_highest_sustained', 'commands_per_s')}/s. One client, sequential (no "
        f"queueing; {get('e2e_sequential', 'requests')} requests, run first): p50 "
        f"{get('e2e_sequential', 'p50_ms')} ms, p99 {get('e2e_sequential', 'p99_ms')} ms."
    )
    timers = r.get("workflow_timers")
    if timers:
        lines += [
            "",
            "## Workflow timers (scheduled publications, one workflow-service process)",
            "",
            "| timers | fired | late p50 ms | late p99 ms | late max ms | fired early |",
            "|---:|---:|---:|---:|---:|---:|",
            f"| {timers['timers']} | {timers['fired']} | {timers['p50_ms']} | "
            f"{timers['p99_ms']} | {timers['max_ms']} | {timers['early']} |",
        ]
    snap = r.get("snapshot_recovery")
    if snap:
        lines += [
            "",
            "## Recovery of one partition: full replay against snapshots",
            "",
            f"{snap['events']:,} events over {snap['aggregates']:,} aggregates in one partition. "
            "Restore = reading the partition's state (the service's "
            "`esctl_partition_restore_seconds`); ready = process start until it answered a "
            "command (includes Python start-up and the consumer-group join).",
            "",
            "| restore from | restore s | ready s |",
            "|---|---:|---:|",
            f"| full replay of the log | {snap['full_replay_restore_s']} | "
            f"{snap['full_replay_ready_s']} |",
            f"| snapshots + tail | {snap['with_snapshots_restore_s']} | "
            f"{snap['with_snapshots_ready_s']} |",
            "",
            f"Restore {snap['restore_speedup']}x faster with snapshots.",
        ]
    lines += [
        "",
        "## Recovery and memory of the command service",
        "",
        "| events (= aggregates) in its partitions | ready after start, s | events/s "
        "restored | RSS after restore, MB |",
        "|---:|---:|---:|---:|",
    ]
    for key, row in r.items():
        if key.startswith("recovery_"):
            lines.append(
                f"| {int(key.split('_')[1]):,} | {row['ready_s']} | "
                f"{row['events_per_s']} | {row['rss_mb']} |"
            )
    if "memory_per_100k_aggregates" in r:
        lines.append(
            f"\nMemory per 100k live aggregates: {r['memory_per_100k_aggregates']['mb']} MB."
        )
    lines += [
        "",
        "Peak RSS per service under the loads above:",
        "",
        "| process | peak RSS, MB |",
        "|---|---:|",
    ]
    for name, peak in sorted(r.get("peak_rss", {}).items()):
        lines.append(f"| {name} | {peak} |")
    lines += [
        "",
        "## A peer, side by side: the `eventsourcing` library",
        "",
        "Create-then-publish (two events per post), one client, sequential, same machine, "
        "same run.",
        "",
        "| persistence | eventsourcing events/s |",
        "|---|---:|",
    ]
    for name in ("memory", "sqlite", "postgresql"):
        lines.append(f"| {name} | {get(f'peer_eventsourcing_{name}', 'events_per_s')} |")
    path.write_text("\n".join(lines) + "\n")
