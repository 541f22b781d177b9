"""`shared.kafka.clients.running`: one way to start, use and stop a Kafka client."""

from __future__ import annotations

import pytest

from shared.errors import InfrastructureUnavailable
from shared.kafka.clients import running
from shared.kafka.errors import KafkaError


class FakeClient:
    """Records start/stop; fails where told to."""

    def __init__(self, *, fail_start: BaseException | None = None, fail_stop: bool = False):
        self.fail_start = fail_start
        self.fail_stop = fail_stop
        self.started = False
        self.stopped = False

    async def start(self) -> None:
        if self.fail_start is not None:
            raise self.fail_start
        self.started = True

    async def stop(self) -> None:
        self.stopped = True
        if self.fail_stop:
            raise KafkaError("broker gone while stopping")


class FakeAdmin:
    """An admin client closes instead of stopping."""

    def __init__(self) -> None:
        self.closed = False

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        self.closed = True


async def test_running_starts_yields_and_stops_the_client() -> None:
    """The body gets the started client; it is stopped on the way out."""
    client = FakeClient()
    async with running(client, "cannot read t") as inside:
        assert inside is client and client.started
    assert client.stopped


async def test_running_closes_an_admin_client() -> None:
    """A client without stop() (aiokafka's admin) is closed."""
    admin = FakeAdmin()
    async with running(admin, "cannot describe topics"):
        pass
    assert admin.closed


@pytest.mark.parametrize("error", [KafkaError("no leader"), ConnectionRefusedError("refused")])
async def test_a_failed_start_is_infrastructure_unavailable_naming_what_failed(
    error: BaseException,
) -> None:
    """A Kafka or network error while starting becomes InfrastructureUnavailable with the
    caller's words first, and the client is stopped anyway."""
    client = FakeClient(fail_start=error)
    with pytest.raises(InfrastructureUnavailable) as raised:
        async with running(client, "cannot read the end of t[0]"):
            pytest.fail("the body must not run")
    assert raised.value.message == f"cannot read the end of t[0]: {error}"
    assert raised.value.__cause__ is error
    assert client.stopped


async def test_a_kafka_error_in_the_body_is_infrastructure_unavailable() -> None:
    """A KafkaError of the body is mapped; a callable makes the whole sentence."""
    client = FakeClient()
    with pytest.raises(InfrastructureUnavailable) as raised:
        async with running(client, lambda exc: f"cannot purge t: {exc}; run again"):
            raise KafkaError("timed out")
    assert raised.value.message == "cannot purge t: KafkaError: timed out; run again"
    assert client.stopped


async def test_an_os_error_of_the_body_passes_unchanged() -> None:
    """The body's own I/O (an archive file) is not reported as Kafka being unavailable."""
    client = FakeClient()
    with pytest.raises(OSError, match="disk full"):
        async with running(client, "cannot read t"):
            raise OSError("disk full")
    assert client.stopped


async def test_a_failing_stop_is_quiet_and_keeps_the_bodys_error() -> None:
    """Stopping after a failure never hides that failure behind its own."""
    client = FakeClient(fail_stop=True)
    with pytest.raises(ValueError, match="the body's"):
        async with running(client, "cannot read t"):
            raise ValueError("the body's")
    assert client.stopped
