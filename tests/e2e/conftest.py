"""The end-to-end tier's report: what the API fuzz runs did, in the terminal summary (and so in
the CI log)."""

from __future__ import annotations

import sys

import pytest
from _pytest.nodeid import coerce_node_id
from _pytest.nodes import Node

# schemathesis.pytest.from_fixture (4.32) renames each operation's subtest through
# `node._nodeid`, which pytest 9.2 replaced by `node._id` (a NodeId): give it that name back.
if not hasattr(Node, "_nodeid"):

    def _set_nodeid(node: Node, value: str) -> None:
        node._id = coerce_node_id(value)

    Node._nodeid = property(lambda node: node.nodeid, _set_nodeid)  # type: ignore[attr-defined]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    fuzzed = sys.modules.get("tests.e2e.test_api_fuzz")
    if fuzzed is None or not fuzzed.RUNS:
        return
    terminalreporter.section("schemathesis")
    for run in fuzzed.RUNS.values():
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(run.statuses.items()))
        terminalreporter.write_line(
            f"{run.api}: {run.cases} cases over {run.operations} operations in "
            f"{run.seconds:.1f} s (max_examples={fuzzed.MAX_EXAMPLES} per operation, "
            f"derandomized; statuses {statuses})"
        )
