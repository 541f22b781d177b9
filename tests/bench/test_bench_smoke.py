"""Every benchmark scenario still runs (a seconds-long smoke; no timing is asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = [
    "raw_produce_200B",
    "raw_txn_produce_200B_batch500",
    "raw_consume_1024B",
    "pipeline_batch50",
    "pipeline_batch500",
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


@pytest.mark.integration
@pytest.mark.slow
def test_bench_smoke_runs_every_scenario_and_writes_the_report(
    kafka_bootstrap: str, postgres_url: str, tmp_path: Path
) -> None:
    """`python -m bench.run --smoke` measures every scenario against the real broker and
    database and writes results.json and a Markdown table."""
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, TEST_POSTGRES_URL=postgres_url)
    run = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    missing = [s for s in SCENARIOS if s not in rows]
    assert not missing, missing
    for name in SCENARIOS:
        numbers = [v for v in rows[name].values() if isinstance(v, int | float)]
        assert numbers and all(v >= 0 for v in numbers), (name, rows[name])
    assert rows["workflow_timers"]["fired"] == rows["workflow_timers"]["timers"]
    assert rows["workflow_timers"]["early"] == 0  # a timer never fires before it is due
    report = (tmp_path / "RESULTS.smoke.md").read_text()
    assert "## A peer, side by side" in report and "| sqlite |" in report
