"""The soak's report (bench/soak.py): its section of RESULTS.md, slopes and sparklines."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.common import Results
from bench.report import SOAK_BEGIN, SOAK_END, replace_soak_section, soak_section, write_markdown
from bench.soak import Sample, memory_slopes, sparkline


def sample(t_s: float, rss: dict[str, float]) -> Sample:
    return Sample(t_s, 1.0, 1.0, 2.0, 1.0, 1.0, 2.0, 0, 0, {"g": 0}, rss, 0, 0, 0.5)


def test_the_soak_section_is_appended_once_then_replaced_in_place() -> None:
    text = "# Results\n\n## Limits\n\nrows\n"
    once = replace_soak_section(text, "## Soak\n\nfirst\n")
    assert once.startswith(text) and once.count(SOAK_BEGIN) == 1 and "first" in once
    again = replace_soak_section(once + "\n## After\n", "## Soak\n\nsecond\n")
    assert "first" not in again and "second" in again and again.count(SOAK_END) == 1
    assert again.startswith(text) and again.rstrip().endswith("## After")
    assert soak_section(text) is None


def test_a_benchmark_run_rewrites_results_md_and_keeps_the_soak_section(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text(replace_soak_section("# old figures\n", "## Soak\n\nkept 123\n"))
    machine = {
        "when": "now",
        "cpus": 2,
        "memory_gib": 24,
        "platform": "linux",
        "python": "3.11",
        "kafka": "4.1.1",
        "broker_heap_mb": 512,
        "aiokafka": "0.12",
        "eventsourcing": "9",
    }
    write_markdown(Results(machine=machine), path, smoke=False)
    text = path.read_text()
    assert "# old figures" not in text
    assert soak_section(text) is not None and "kept 123" in text


def test_memory_slope_is_the_least_squares_line_after_the_warm_up() -> None:
    # 100 MB during the warm-up, then 10 MB more every 360 s (100 MB/h) for the command service;
    # the query service flat
    samples = [sample(0, {"command": 300.0, "query": 80.0})] + [
        sample(360 * i, {"command": 100.0 + 10 * i, "query": 80.0}) for i in range(1, 11)
    ]
    slopes = memory_slopes(samples, warmup_s=360)
    assert slopes["command"]["mb_per_h"] == pytest.approx(100.0)
    assert slopes["query"]["mb_per_h"] == pytest.approx(0.0)
    assert (slopes["command"]["start_mb"], slopes["command"]["end_mb"]) == (110.0, 200.0)
    assert slopes["command"]["peak_mb"] == 200.0


def test_sparkline_spans_lowest_to_highest() -> None:
    assert sparkline([0, 7, 14]) == "▁▅█"
    assert sparkline([5, 5]) == "▁▁"
    assert sparkline([]) == ""
