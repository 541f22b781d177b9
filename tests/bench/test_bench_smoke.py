"""Every benchmark scenario still runs (a seconds-long smoke; no timing is asserted)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import SOAK_BEGIN, SOAK_END
from bench.run import Sizes
from workflow_service.model import TERMINAL

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = [
    "raw_produce_200B",
    "raw_txn_produce_200B_batch500",
    "raw_consume_1024B",
    "pipeline_batch50",
    "pipeline_batch500",
    "raw_eos_pipeline_batch50",
    "raw_eos_pipeline_batch500",
    "raw_eos_latency_pipeline",
    "durability_pipeline",
    "pipeline_rf3_batch500",
    "raw_eos_pipeline_rf3_batch500",
    "raw_eos_latency_pipeline_rf3",
    "durability_pipeline_rf3",
    "pipeline_processes1",
    "pipeline_processes2",
    "rebuild_sqlite",
    "projector_sqlite",
    "projector_postgresql",
    "e2e_20_per_s",
    "e2e_highest_sustained",
    "recovery_1000_events",
    "workflow_timers",
    "snapshot_recovery",
    "e2e_sequential",
    "peer_eventsourcing_memory",
    "peer_eventsourcing_sqlite",
    "peer_eventsourcing_postgresql",
]


def run_bench(tmp_path: Path, module: str, **env: str) -> None:
    """`python -m <module> --smoke --out tmp_path` against the test's broker (and database)."""
    run = subprocess.run(
        [sys.executable, "-m", module, "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        env=dict(os.environ, **env),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:]


@pytest.mark.integration
@pytest.mark.slow
def test_bench_smoke_runs_every_scenario_and_writes_the_report(
    kafka_bootstrap: str, postgres_url: str, tmp_path: Path
) -> None:
    """`python -m bench.run --smoke` measures every scenario against the real broker and
    database (figures measured, counts as sent; never a speed) and writes results.json and a
    Markdown table."""
    run_bench(
        tmp_path,
        "bench.run",
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        TEST_POSTGRES_URL=postgres_url,
    )
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    missing = [s for s in SCENARIOS if s not in rows]
    assert not missing, missing
    for name in SCENARIOS:  # measured: no NaN (an empty sample) and no infinity
        numbers = [v for v in rows[name].values() if isinstance(v, int | float)]
        assert numbers and all(math.isfinite(v) for v in numbers), (name, rows[name])
    sizes = Sizes.smoke()  # what the smoke run sends
    # throughputs: measured, so positive; over the count that was sent
    for name, row in rows.items():
        for field in ("records_per_s", "commands_per_s", "events_per_s"):
            if field in row and name != "e2e_highest_sustained":
                assert row[field] > 0, (name, row)
    for key, batches in (
        ("pipeline", sizes.pipeline_batches),
        ("pipeline_rf3", sizes.durable_batches),
    ):
        for batch in batches:
            for row in (rows[f"{key}_batch{batch}"], rows[f"raw_eos_{key}_batch{batch}"]):
                assert row["commands"] == sizes.pipeline, row
                assert len(row["runs"]) == sizes.repeat and row["min"] <= row["max"], row
            assert rows[f"{key}_batch{batch}"]["ratio_to_raw_eos"] > 0
            # the CPU each side spent per command: sampled from the processes, so positive
            assert rows[f"{key}_batch{batch}"]["cpu_us_per_command"] > 0
            assert rows[f"raw_eos_{key}_batch{batch}"]["cpu_us_per_command"] > 0
    # 1 and 2 processes: each over the same (doubled) backlog, a ratio from the pairs
    for processes in (1, 2):
        row = rows[f"pipeline_processes{processes}"]
        assert (row["processes"], row["commands"]) == (processes, 2 * sizes.pipeline), row
        assert len(row["runs"]) == sizes.repeat and row["min"] <= row["max"], row
    assert rows["pipeline_processes2"]["ratio_to_one"] > 0
    assert "## One or two command-service processes" in (tmp_path / "RESULTS.smoke.md").read_text()
    # the durable rows ran where they say: 3 brokers, the service's topics at RF 3, min ISR 2
    durable = rows["durability_pipeline_rf3"]
    assert (durable["brokers"], durable["replication_factor"], durable["min_insync_replicas"]) == (
        3,
        3,
        2,
    ), durable
    assert rows["durability_pipeline"]["replication_factor"] == 1
    assert rows["rebuild_sqlite"]["events"] >= sizes.rebuild  # its log may hold the author too
    for store in ("sqlite", "postgresql"):
        projected = rows[f"projector_{store}"]
        assert projected["events"] == sizes.projector, projected
        assert projected["seconds"] > 0, projected  # an interval, not a guard against 0
    # latencies: every sequential request answered; percentiles of real samples, in order
    sequential = rows["e2e_sequential"]
    assert sequential["requests"] == sizes.e2e_sequential
    assert 0 < sequential["p50_ms"] <= sequential["p99_ms"], sequential
    for rate in sizes.e2e_rates:
        row = rows[f"e2e_{rate}_per_s"]
        assert row["offered"] == rate and row["achieved"] > 0, row
        # CPU per command of every process of the run, the services' and the broker's included
        cpu = row["cpu_ms_per_command"]
        assert {"command_service", "projector", "query_service", "broker"} <= set(cpu), row
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"], row
    sustained = [rate for rate in sizes.e2e_rates if rows[f"e2e_{rate}_per_s"]["sustained"]]
    assert rows["e2e_highest_sustained"]["commands_per_s"] == max(sustained, default=0)
    recovered = rows[f"recovery_{sizes.recovery[0]}_events"]
    assert recovered["ready_s"] > 0 and recovered["rss_mb"] > 0, recovered
    # every timer fired once; lateness from the timers' own records, in order
    timers = rows["workflow_timers"]
    assert timers["timers"] == timers["fired"] == sizes.timers, timers
    assert 0 <= timers["p50_ms"] <= timers["p99_ms"] <= timers["max_ms"], timers
    # the restore (the service's own metric, so it was exported) is part of the time to ready
    snapshot = rows["snapshot_recovery"]
    assert (snapshot["events"], snapshot["aggregates"]) == (
        sizes.snapshot_events,
        sizes.snapshot_aggregates,
    )
    for start in ("full_replay", "with_snapshots"):
        assert 0 <= snapshot[f"{start}_restore_s"] <= snapshot[f"{start}_ready_s"], snapshot
    assert rows["peak_rss"] and all(v > 0 for v in rows["peak_rss"].values()), rows["peak_rss"]
    report = (tmp_path / "RESULTS.smoke.md").read_text()
    assert "## A peer, side by side" in report and "| sqlite |" in report
    # the targets table: every target listed, a verdict computed from the run's figures (the
    # smoke run offers no 250/s and restores one log size, so those two are "not measured")
    table = report.split("## Targets", 1)[1].splitlines()
    targets = [t for t in table if t.startswith("| ") and not t.startswith("| target ")]
    assert len(targets) == 9, targets
    verdicts = [t.rsplit("|", 2)[1].strip() for t in targets]
    assert set(verdicts) <= {"met", "not met", "not measured"}, verdicts
    unmeasured = [t for t, v in zip(targets, verdicts, strict=True) if v == "not measured"]
    assert len(unmeasured) == 2 and "250" in unmeasured[0] and "RSS" in unmeasured[1], targets


@pytest.mark.integration
@pytest.mark.slow
def test_soak_smoke_samples_every_service_and_drains(kafka_bootstrap: str, tmp_path: Path) -> None:
    """`python -m bench.soak --smoke` (45 s of mixed traffic at low rates) samples the four
    services and the broker over time, and ends drained: every workflow terminal, every consumer
    group caught up. Figures are printed, never judged."""
    run_bench(tmp_path, "bench.soak", KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap)
    result = json.loads((tmp_path / "soak.json").read_text())
    totals, samples = result["totals"], result["samples"]
    print(totals)  # noqa: T201
    services = {"command", "projector", "query", "workflow"}
    groups = {"command_service", "projector_service", "workflow_service"}
    # every post offered began its life; the HTTP and the Kafka clients both had answers
    assert totals["posts offered"] > 0 and totals["posts created"] > 0, totals
    assert totals.get("kafka accepted", 0) > 0 and totals.get("command 201", 0) > 0, totals
    assert totals["reviews submitted"] > 0 and totals.get("query 200", 0) > 0, totals
    assert not [k for k in totals if k.startswith("error") and " 5" in k], totals
    # a sample every 5 s: each one with every service's RSS and every group's lag
    assert len(samples) >= 5, samples
    for sample in samples:
        assert services <= set(sample["rss_mb"]), sample
        assert groups <= set(sample["lag"]), sample
        assert sample["commands_per_s"] > 0 and sample["queries_per_s"] > 0, sample
    assert sorted(s["t_s"] for s in samples) == [s["t_s"] for s in samples]
    # drained: no workflow still running, every group's lag 0 after the load
    assert set(result["drain"]["workflows"]) <= TERMINAL, result["drain"]
    assert sum(result["drain"]["workflows"].values()) >= totals["reviews submitted"]
    assert result["final"]["lag"] and not any(result["final"]["lag"].values()), result["final"]
    assert services <= set(result["memory"]), result["memory"]
    report = (tmp_path / "RESULTS.soak.smoke.md").read_text()
    assert report.startswith(SOAK_BEGIN) and report.rstrip().endswith(SOAK_END)
    for name in services:
        assert f"| {name} |" in report, report
