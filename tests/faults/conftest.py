"""Fixtures of the fault tests, and their report: what each fault test printed (the checker's
counts, the answers by phase, the longest time without an answer) is shown at the end of the
run even when it passed, in a section of its own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.faults.toxiproxy import ToxiproxyServer

#: (test id, what it printed) of every fault test run so far
_PRINTED: list[tuple[str, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and "faults" in report.keywords and report.capstdout:
        _PRINTED.append((report.nodeid, report.capstdout))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _PRINTED:
        return
    terminalreporter.section("fault tests: what the checkers saw")
    for nodeid, printed in _PRINTED:
        terminalreporter.write_line(f"{nodeid}:")
        for line in printed.rstrip("\n").splitlines():
            terminalreporter.write_line(f"  {line}")


@pytest.fixture(scope="module")
def toxiproxy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ToxiproxyServer]:
    """A toxiproxy-server of the module's own (installed first when missing), stopped after."""
    server = ToxiproxyServer(tmp_path_factory.mktemp("toxiproxy") / "toxiproxy-server.log")
    try:
        server.start()
        yield server
    finally:
        server.stop()
