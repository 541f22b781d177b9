"""The report: bench/RESULTS.md (or RESULTS.smoke.md) from the results of one run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common import Results

#: The soak's section of RESULTS.md (bench/soak.py) lies between these markers; `bench.run`
#: rewrites the rest of the file and keeps it, `bench.soak` rewrites only it.
SOAK_BEGIN = "<!-- soak:begin (written by python -m bench.soak) -->"
SOAK_END = "<!-- soak:end -->"


def soak_section(text: str) -> str | None:
    """The soak section of a RESULTS.md text, markers included (None: it has none)."""
    if SOAK_BEGIN not in text or SOAK_END not in text:
        return None
    return SOAK_BEGIN + text.split(SOAK_BEGIN, 1)[1].split(SOAK_END, 1)[0] + SOAK_END + "\n"


def replace_soak_section(text: str, section: str) -> str:
    """`text` with its soak section replaced by `section` (appended when it has none)."""
    block = f"{SOAK_BEGIN}\n{section.strip()}\n{SOAK_END}\n"
    old = soak_section(text)
    if old is not None:
        return text.replace(old, block, 1)
    return (text.rstrip("\n") + "\n\n" if text.strip() else "") + block


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def figure(row: dict[str, Any] | None, field_: str = "commands_per_s") -> str:
    """A headline figure: the median, with the spread of the runs when there were several."""
    if not row or row.get(field_) is None:
        return "-"
    runs = row.get("runs") or []
    if len(runs) > 1:
        return f"{row[field_]} ({row['min']}-{row['max']})"
    return str(row[field_])


def _durability_text(d: dict[str, Any] | None) -> str:
    if not d:
        return "not measured"
    flush = "fsync per write" if d["fsync_per_write"] else "no fsync per write (page cache;"
    flush += "" if d["fsync_per_write"] else f" flush.messages={d['flush_messages']})"
    return (
        f"{d['brokers']} broker(s), replication factor {d['replication_factor']}, "
        f"min.insync.replicas={d['min_insync_replicas']}, acks=all, {flush}, "
        f"unclean leader election {d['unclean_leader_election']}"
    )


def _best_pipeline(r: dict[str, Any], key: str) -> tuple[str, dict[str, Any]] | None:
    rows = [
        (k, v)
        for k, v in r.items()
        if k.startswith(f"{key}_batch") and isinstance(v, dict) and "commands_per_s" in v
    ]
    return max(rows, key=lambda kv: kv[1]["commands_per_s"]) if rows else None


def targets(r: dict[str, Any]) -> list[str]:
    """The issue's targets, each with its same-run figure, yardstick and verdict."""

    def get(key: str, field_: str) -> Any:
        row = r.get(key)
        return row.get(field_) if isinstance(row, dict) else None

    peer = get("peer_eventsourcing_memory", "events_per_s")
    rows: list[tuple[str, str, str, float | None, float, bool]] = []
    # (target, figure, yardstick, value, threshold, higher is better)
    best = _best_pipeline(r, "pipeline")
    pipe = best[1]["commands_per_s"] if best else None
    label = f"(batch {best[0].removeprefix('pipeline_batch')})" if best else ""
    rows.append(
        (
            "command pipeline, one process >= 1.0x the peer in memory (events/s)",
            f"{pipe} events/s {label}",
            f"peer in memory {peer} events/s",
            pipe / peer if pipe and peer else None,
            1.0,
            True,
        )
    )
    raw_eos = get(f"raw_eos_{best[0]}", "commands_per_s") if best else None
    rows.append(
        (
            "command pipeline, one process >= 0.5x the raw exactly-once loop",
            f"{pipe} commands/s {label}",
            f"raw EOS loop {raw_eos} commands/s (same batch)",
            best[1].get("ratio_to_raw_eos") if best else None,
            0.5,
            True,
        )
    )
    for store, need in (("sqlite", 2.0), ("postgresql", 1.0)):
        rate = get(f"projector_{store}", "events_per_s")
        rows.append(
            (
                f"projector into {store} >= {need}x the peer in memory",
                f"{rate} events/s",
                f"peer in memory {peer} events/s",
                rate / peer if rate and peer else None,
                need,
                True,
            )
        )
    p50 = get("e2e_sequential", "p50_ms")
    rows.append(
        ("end to end, one sequential client p50 <= 15 ms", f"{p50} ms", "-", p50, 15, False)
    )
    p99 = get("e2e_250_per_s", "p99_ms")
    rows.append(
        ("end to end, p99 <= 100 ms at 250 commands/s offered", f"{p99} ms", "-", p99, 100, False)
    )
    top = get("e2e_highest_sustained", "commands_per_s")
    rows.append(("end to end, highest sustained >= 1,000/s", f"{top}/s", "-", top, 1000, True))
    recoveries = [k for k in r if k.startswith("recovery_") and k.endswith("_events")]
    largest = max(recoveries, key=lambda k: int(k.split("_")[1]), default=None)
    rec = get(largest, "events_per_s") if largest else None
    consume = get("raw_consume_200B", "records_per_s")
    rows.append(
        (
            "full-replay recovery >= 0.3x raw consume",
            f"{rec} events/s ({int(largest.split('_')[1]):,} events)" if largest else "-",
            f"raw consume (200 B) {consume} records/s",
            rec / consume if rec and consume else None,
            0.3,
            True,
        )
    )
    mem = get("memory_per_100k_aggregates", "mb")
    rows.append(("RSS per 100k live aggregates <= 30 MB", f"{mem} MB", "-", mem, 30, False))
    lines = [
        "| target | this run | same-run yardstick | ratio / value | met |",
        "|---|---|---|---:|---|",
    ]
    for target, fig_, yardstick_, value, threshold, higher in rows:
        fig = "-" if "None" in fig_ else fig_  # a figure the run did not measure
        yardstick = "-" if "None" in yardstick_ else yardstick_
        if value is None:
            verdict, shown = "not measured", "-"
        else:
            met = value >= threshold if higher else value <= threshold
            verdict, shown = ("met" if met else "not met"), f"{value:.2f}"
        lines.append(f"| {target} | {fig} | {yardstick} | {shown} | {verdict} |")
    return lines


def _get(r: dict[str, Any], key: str, field_: str) -> Any:
    row = r.get(key)
    return row.get(field_) if isinstance(row, dict) else None


def _pipeline_section(r: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    raw_txn = _get(r, "raw_txn_produce_200B_batch500", "records_per_s")
    peer_memory = _get(r, "peer_eventsourcing_memory", "events_per_s")
    lines += [
        "",
        "## Command pipeline (one command-service process, CreatePost: ~440 B value, "
        "~200 B of headers)",
        "",
        "A backlog of CreatePost commands (one new post each) is written while no command "
        "service runs (a first process registered the author and stopped). A fresh process "
        "then works through it; the clock runs from the first command decided (the earliest "
        "`processed_at` of the backlog's outcomes) to the moment the group's committed offsets "
        "were seen at the end of the backlog (polled every 20 ms), and every command of the "
        "backlog is counted: start-up and restore are outside, nothing decided before the "
        "clock started is counted. Each CreatePost makes one event, so commands/s = events/s.",
        "",
        "The raw exactly-once loop is the same shape without the work, in the same minute: a "
        "group consumer fetches up to the batch size of the same CreatePost records, and per "
        "partition its own transactional producer (as the processor fences) produces one "
        "event per command and waits for the acks, then one outcome per command and waits, "
        "sends the offsets to the transaction and commits; the event and outcome are copies "
        "of records the pipeline wrote in this run (sizes below), no decoding or deciding. The "
        "pipeline also writes snapshots, which the loop does not. CPU per command: user + "
        "system time of the command-service process (the raw loop: of its own process) over "
        "the clock's interval, divided by the commands (medians of the runs); what the "
        "machine's other load changes least, and what shows where the time goes: both sides "
        "run one Python process on one core.",
        "",
        "| brokers | max commands per transaction | commands/s | raw EOS loop commands/s "
        "| ratio to raw EOS loop | ratio to raw transactional produce (200 B, 500/txn) "
        "| ratio to the peer in memory | CPU us per command: service / raw loop |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for prefix, brokers in (("pipeline", "1, RF 1"), ("pipeline_rf3", "3, RF 3, min ISR 2")):
        for key, row in r.items():
            if not key.startswith(f"{prefix}_batch"):
                continue
            raw_eos = r.get(f"raw_eos_{key}", {})
            pairs = row.get("ratio_to_raw_eos")
            pair_text = "-"
            if pairs is not None:
                pair_text = f"{pairs:.2f}"
                if len(row.get("runs", [])) > 1:
                    pair_text += (
                        f" ({row['ratio_to_raw_eos_min']:.2f}-{row['ratio_to_raw_eos_max']:.2f})"
                    )
            lines.append(
                f"| {brokers} | {key.removeprefix(f'{prefix}_batch')} | {figure(row)} | "
                f"{figure(raw_eos)} | {pair_text} | "
                f"{ratio(row['commands_per_s'], raw_txn) if prefix == 'pipeline' else '-'} | "
                f"{ratio(row['commands_per_s'], peer_memory)} | "
                f"{row.get('cpu_us_per_command', '-')} / {raw_eos.get('cpu_us_per_command', '-')} |"
            )
    sample = next((v for k, v in r.items() if k.startswith("raw_eos_pipeline_batch")), None)
    if sample:
        lines.append(
            f"\nRecords of the raw loop: event value {sample['event_bytes']} B, outcome value "
            f"{sample['outcome_bytes']} B"
            + (
                " (copied from the pipeline's output in this run)."
                if sample.get("sampled_from_pipeline")
                else " (stand-ins: no pipeline record was sampled)."
            )
        )
    latency = [
        (brokers, r[key])
        for key, brokers in (
            ("raw_eos_latency_pipeline", "1, RF 1"),
            ("raw_eos_latency_pipeline_rf3", "3, RF 3, min ISR 2"),
        )
        if key in r
    ]
    if latency:
        lines += [
            "",
            "Floor of one command's transaction, sequential (begin, event + ack, outcome + ack, "
            "offsets, commit; no fetch, no decision; after 10 of warm-up):",
            "",
            "| brokers | transactions | p50 ms | p99 ms |",
            "|---|---:|---:|---:|",
        ]
        for brokers, row in latency:
            lines.append(
                f"| {brokers} | {row['transactions']} | {row['p50_ms']} | {row['p99_ms']} |"
            )
    return lines


def _processes_section(r: dict[str, Any]) -> list[str]:
    rows = [r[k] for k in ("pipeline_processes1", "pipeline_processes2") if k in r]
    if not rows:
        return []
    lines = [
        "",
        "## One or two command-service processes (one consumer group, 1 broker, batch 2000)",
        "",
        "The processes start first and the group settles (Stable, all members); then the "
        "backlog is written in one transaction, which their read_committed consumers see at "
        "once; the clock as above (first command decided -> committed offsets at the end). "
        "Broker, processes and the producer of the backlog share the 2 cores.",
        "",
        "| processes | commands | commands/s | ratio to 1 process (pair by pair) |",
        "|---:|---:|---:|---:|",
    ]
    for row in rows:
        pair = f"{row['ratio_to_one']:.2f}"
        if row["processes"] > 1 and len(row.get("runs", [])) > 1:
            pair += f" ({row['ratio_to_one_min']:.2f}-{row['ratio_to_one_max']:.2f})"
        lines.append(f"| {row['processes']} | {row['commands']} | {figure(row)} | {pair} |")
    return lines


def _e2e_cpu_section(r: dict[str, Any]) -> list[str]:
    """Where the CPU of one end-to-end command goes, per offered rate and process."""
    rows = [
        (row["offered"], row["cpu_ms_per_command"])
        for key, row in r.items()
        if key.startswith("e2e_") and isinstance(row, dict) and row.get("cpu_ms_per_command")
    ]
    if not rows:
        return []
    names = sorted({name for _, cpu in rows for name in cpu})
    lines = [
        "",
        "CPU per answered command (user + system ms, each process over the same interval; the "
        "broker found by its listening port; at low rates its own background work, spread over "
        "few commands, dominates). Their sum bounds what 2 cores can sustain: 2000 / sum "
        "commands/s.",
        "",
        "| offered/s | " + " | ".join(names) + " | sum | 2 cores / sum, commands/s |",
        "|---:|" + "---:|" * (len(names) + 2),
    ]
    for offered, cpu in rows:
        total = sum(cpu.values())
        cells = " | ".join(f"{cpu[n]:.2f}" if n in cpu else "-" for n in names)
        bound = round(2000 / total) if total else "-"
        lines.append(f"| {offered} | {cells} | {total:.2f} | {bound} |")
    return lines


def _durability_section(r: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    peer_d = r.get("durability_peer", {})
    sqlite_d, pg_d = peer_d.get("sqlite"), peer_d.get("postgresql")
    lines += [
        "",
        "## Durability of each side, as configured in this run (read from the running systems)",
        "",
        "| side | what a crash can lose |",
        "|---|---|",
        f"| this system, Kafka, 1 broker | {_durability_text(r.get('durability_pipeline'))} |",
        f"| this system, Kafka, 3 brokers | {_durability_text(r.get('durability_pipeline_rf3'))} |",
        "| `eventsourcing`, in memory | everything (no persistence) |",
        "| `eventsourcing`, SQLite | "
        + (
            f"journal_mode={sqlite_d['journal_mode']}, synchronous={sqlite_d['synchronous']} "
            "(the library leaves the connection default)"
            if sqlite_d
            else "not measured"
        )
        + " |",
        "| `eventsourcing`, PostgreSQL | "
        + (
            f"fsync={pg_d['fsync']}, synchronous_commit={pg_d['synchronous_commit']}, "
            f"wal_sync_method={pg_d['wal_sync_method']}, one server, no replica"
            if pg_d
            else "not measured"
        )
        + " |",
        "",
        "Kafka acknowledges a write once the in-sync replicas have it in memory (page cache); "
        "without fsync per write, one broker promises less than a store that syncs each commit "
        "to disk (a power loss can lose acknowledged writes), and three brokers with "
        "min.insync.replicas=2 promise more (a write survives the loss of any one machine).",
        "",
        "## Targets (issue 16), from this run's figures",
        "",
        *targets(r),
    ]
    return lines


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
        "`make bench`; ratios compare with the raw-Kafka limits and the peer of the same run. "
        f"Headline figures (pipeline, raw exactly-once loop, projector, peer) are the median of "
        f"{m.get('repeat', 1)} run(s), with the spread (min-max) in brackets; a ratio to the "
        "raw exactly-once loop is the median of the ratios of runs made pair by pair, a "
        "minute apart.",
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
    peer_memory = get("peer_eventsourcing_memory", "events_per_s")
    lines += _pipeline_section(r)
    lines += _processes_section(r)
    raw_consume_rate = get("raw_consume_200B", "records_per_s")
    lines += [
        "",
        "## Projector (one process, PostCreated events, ~600 B value)",
        "",
        "| read store | events/s | ratio to raw consume (200 B) | ratio to the peer in memory |",
        "|---|---:|---:|---:|",
    ]
    for store in ("sqlite", "postgresql"):
        rate = get(f"projector_{store}", "events_per_s")
        lines.append(
            f"| {store} | {figure(r.get(f'projector_{store}'), 'events_per_s')} | "
            f"{ratio(rate, raw_consume_rate)} | {ratio(rate, peer_memory)} |"
        )
    rebuilt = r.get("rebuild_sqlite")
    if rebuilt:
        lines.append(
            f"\nRebuild of the read model (`esctl projections rebuild`'s function, a new "
            f"generation of SQLite tables filled from offset 0): {rebuilt['events']:,} events in "
            f"{rebuilt['seconds']} s, {rebuilt['events_per_s']} events/s "
            f"({ratio(rebuilt['events_per_s'], raw_consume_rate)} of raw consume)."
        )
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
    lines += _e2e_cpu_section(r)
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
        lines.append(f"| {name} | {figure(r.get(f'peer_eventsourcing_{name}'), 'events_per_s')} |")
    lines += _durability_section(r)
    text = "\n".join(lines) + "\n"
    kept = soak_section(path.read_text()) if path.exists() else None
    path.write_text(f"{text}\n{kept}" if kept else text)
