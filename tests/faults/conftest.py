"""Fixtures of the fault tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.toxiproxy import ToxiproxyServer


@pytest.fixture(scope="module")
def toxiproxy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ToxiproxyServer]:
    """A toxiproxy-server of the module's own (installed first when missing), stopped after."""
    server = ToxiproxyServer(tmp_path_factory.mktemp("toxiproxy") / "toxiproxy-server.log")
    try:
        server.start()
        yield server
    finally:
        server.stop()
