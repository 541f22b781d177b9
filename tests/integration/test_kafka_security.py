"""A `--secure` local broker (TLS, SASL/SCRAM-SHA-512, ACLs): who cannot connect, and what a
service principal cannot do outside its ACLs (a clear error, nothing written)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from esctl.localstack import kafka_security as ks
from esctl.localstack.kafka import LocalKafkaCluster
from esctl.localstack.services import ServiceProcess
from shared.errors import KafkaUnreachable
from shared.kafka.acls import COMMAND, PROJECTOR, QUERY, WORKFLOW
from shared.kafka.clients import (
    ensure_reachable,
    make_consumer,
    make_producer,
    make_transactional_producer,
    running,
    topic_partitions,
    wait_for_brokers,
)
from shared.kafka.errors import KafkaAccessDenied, KafkaAuthenticationFailed
from shared.kafka.security import KafkaSecurity
from shared.kafka.topics import Topics, ensure_topics, system_topic_specs
from shared.settings import KafkaSettings
from tests import infra

pytestmark = pytest.mark.timeout(300)


@dataclasses.dataclass(frozen=True)
class Secure:
    bootstrap: str
    security_dir: Path

    def as_(self, principal: str) -> KafkaSecurity:
        return ks.client_security(self.security_dir, principal)


@pytest.fixture(scope="module")
def secure(request: pytest.FixtureRequest) -> Iterator[Secure]:
    """The session's broker when the session runs secure, else a secure one of this module."""
    if infra.kafka_secure():
        bootstrap = request.getfixturevalue("kafka_bootstrap")
        yield Secure(bootstrap, Path(os.environ[ks.SECURITY_DIR_ENV]))
        return
    cluster = LocalKafkaCluster.create(
        Path(tempfile.mkdtemp(prefix="esctl-test-secure-")), nodes=1, heap_mb=384, secure=True
    )
    try:
        cluster.start()
        yield Secure(cluster.bootstrap_servers, cluster.security_dir)
    finally:
        cluster.destroy()


@pytest.fixture
async def system(secure: Secure) -> AsyncIterator[Topics]:
    """The system's topics under a prefix of this test, with every service's ACLs on them."""
    prefix = f"sec-{uuid.uuid4().hex[:10]}."
    settings = KafkaSettings(topic_prefix=prefix, partitions=2)
    await ensure_topics(
        secure.bootstrap, system_topic_specs(settings), security=secure.as_("admin")
    )
    await ks.grant(secure.security_dir, secure.bootstrap, ks.default_bindings(prefix))
    yield Topics.from_settings(settings)


async def end_offsets(secure: Secure, topic: str) -> dict[int, int]:
    """The log end of each partition, read_uncommitted (records of aborted transactions too),
    as `admin` sees it."""
    consumer = make_consumer(
        secure.bootstrap, security=secure.as_("admin"), isolation_level="read_uncommitted"
    )
    async with running(consumer, "cannot read the end offsets") as c:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
        if not tps:
            await c._client.force_metadata_update()
            tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
        ends = await c.end_offsets(tps)
    return {tp.partition: offset for tp, offset in ends.items()}


async def test_a_client_without_credentials_cannot_connect_and_is_told_why(
    secure: Secure,
) -> None:
    """A PLAINTEXT client (no TLS, no credentials) gets no answer, and the error names the
    settings that are missing."""
    with pytest.raises(KafkaUnreachable) as caught:
        await ensure_reachable(secure.bootstrap, timeout_s=5, security=KafkaSecurity())
    assert "KAFKA_SECURITY_PROTOCOL=SASL_SSL" in caught.value.message


async def test_a_wrong_password_is_refused_at_once_with_the_principal_named(
    secure: Secure,
) -> None:
    """Credentials the broker refuses end the wait for Kafka at once (no retrying for minutes):
    KafkaAuthenticationFailed names the principal and says SASL authentication failed."""
    wrong = dataclasses.replace(secure.as_(PROJECTOR), password="not-the-password")
    with pytest.raises(KafkaAuthenticationFailed) as caught:
        await wait_for_brokers(secure.bootstrap, timeout_s=120, security=wrong)
    assert "User:projector" in caught.value.message
    assert "SASL authentication failed" in caught.value.message
    assert not caught.value.retriable


async def test_a_client_that_does_not_trust_the_ca_is_refused(secure: Secure) -> None:
    """Without the cluster's CA the TLS handshake fails, and the error says to set
    KAFKA_SSL_CAFILE."""
    untrusting = dataclasses.replace(secure.as_(PROJECTOR), cafile="")
    with pytest.raises(KafkaAuthenticationFailed) as caught:
        await ensure_reachable(secure.bootstrap, timeout_s=5, security=untrusting)
    assert "KAFKA_SSL_CAFILE" in caught.value.message


async def test_each_service_principal_connects_with_its_own_password(secure: Secure) -> None:
    """Every service principal authenticates (SCRAM-SHA-512 over TLS)."""
    for principal in (COMMAND, PROJECTOR, QUERY, WORKFLOW):
        await ensure_reachable(secure.bootstrap, timeout_s=10, security=secure.as_(principal))


async def test_the_projector_cannot_send_commands_and_nothing_is_written(
    secure: Secure, system: Topics
) -> None:
    """posts.commands is the trust boundary: the projector principal, which has no WRITE on it,
    gets KafkaAccessDenied naming itself and the topic, and the topic stays empty."""
    producer = make_producer(secure.bootstrap, security=secure.as_(PROJECTOR))
    with pytest.raises(KafkaAccessDenied) as caught:
        async with running(producer, "cannot send") as p:
            await p.send_and_wait(system.commands, b"{}", key=b"author-1")
    assert caught.value.principal == "User:projector"
    assert system.commands in caught.value.resource
    assert not caught.value.retriable
    assert set((await end_offsets(secure, system.commands)).values()) == {0}


async def test_the_workflow_service_may_send_commands(secure: Secure, system: Topics) -> None:
    """The workflow principal has WRITE on posts.commands: its record lands (the positive side
    of the check above, so that the denial is the ACL's and not a broken producer)."""
    producer = make_producer(secure.bootstrap, security=secure.as_(WORKFLOW))
    async with running(producer, "cannot send") as p:
        await p.send_and_wait(system.commands, b"{}", key=b"author-1", partition=0)
    assert (await end_offsets(secure, system.commands))[0] == 1


async def test_the_query_service_cannot_read_the_event_log(secure: Secure, system: Topics) -> None:
    """The query service reads its read store, never Kafka: to its principal the events topic
    is not even visible, and the error says it is denied (not that the topic is missing)."""
    consumer = make_consumer(secure.bootstrap, security=secure.as_(QUERY))
    with pytest.raises(KafkaAccessDenied) as caught:
        async with running(consumer, "cannot read") as c:
            await topic_partitions(c, system.events)
    assert caught.value.principal == "User:query-service"
    assert system.events in caught.value.resource


async def test_the_projector_cannot_read_commands(secure: Secure, system: Topics) -> None:
    """The projector may see that posts.commands exists (its partition count is checked at
    start) but not read it: the fetch is denied."""
    consumer = make_consumer(secure.bootstrap, security=secure.as_(PROJECTOR))
    tp = TopicPartition(system.commands, 0)
    with pytest.raises(KafkaAccessDenied) as caught:
        async with running(consumer, "cannot read") as c:
            c.assign([tp])
            await c.seek_to_beginning(tp)
            await c.getmany(timeout_ms=10_000)
    assert caught.value.principal == "User:projector"
    assert system.commands in caught.value.resource


async def test_the_projector_cannot_join_another_services_group(
    secure: Secure, system: Topics
) -> None:
    """A principal may only use its own consumer group: the projector joining the command
    service's group is denied."""
    consumer = make_consumer(
        secure.bootstrap, system.events, group_id="command-service", security=secure.as_(PROJECTOR)
    )
    with pytest.raises(KafkaAccessDenied) as caught:
        async with running(consumer, "cannot consume") as c:
            await c.getmany(timeout_ms=10_000)
    assert "consumer group command-service" in caught.value.resource


async def test_the_projector_cannot_take_the_command_services_transactional_ids(
    secure: Secure, system: Topics
) -> None:
    """Transactional ids are ACL'd by prefix: the projector cannot start a producer with the
    command service's id (which would fence the real owner of partition 0)."""
    txn_id = f"command-service.{system.commands}.0"
    producer = make_transactional_producer(secure.bootstrap, txn_id, security=secure.as_(PROJECTOR))
    with pytest.raises(KafkaAccessDenied) as caught:
        async with running(producer, "cannot start"):
            pass
    assert f"transactional id {txn_id}" in caught.value.resource


async def test_a_service_with_a_wrong_password_exits_at_once_and_says_why(
    secure: Secure, tmp_path: Path
) -> None:
    """A service whose password the broker refuses does not wait KAFKA_STARTUP_WAIT_S (300 s)
    for a broker that answers: it logs one kafka_authentication_failed line naming its
    principal and exits 1."""
    wrong = tmp_path / "password"
    wrong.write_text("not-the-password")
    env = (
        ks.client_env(secure.security_dir, PROJECTOR)
        | {
            "KAFKA_BOOTSTRAP_SERVERS": secure.bootstrap,
            "KAFKA_SASL_PASSWORD_FILE": str(wrong),
            ks.SECURITY_DIR_ENV: "",  # no launcher help: this process has the wrong password
            "TOPIC_PREFIX": f"sec-{uuid.uuid4().hex[:10]}.",
            "READ_STORE_URL": f"sqlite:///{tmp_path / 'read.sqlite3'}",
        }
    )
    service = ServiceProcess("projector_service", env, tmp_path, "projector")
    service.start()
    assert service.proc is not None
    try:
        code = await asyncio.to_thread(service.proc.wait, 120)
    finally:
        await service.stop()
    assert code == 1, service.logs()[-2000:]
    lines = [json.loads(x) for x in service.logs().splitlines() if x.startswith("{")]
    failed = [x for x in lines if x.get("event") == "kafka_authentication_failed"]
    assert len(failed) == 1, lines
    assert "User:projector" in str(failed[0]["error"])
