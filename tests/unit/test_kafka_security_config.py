"""Kafka security without a broker: settings to client arguments, aiokafka's authorization
errors to KafkaAccessDenied, and the services' ACLs (least privilege on the trust boundary)."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)

from shared.errors import ConfigurationError
from shared.kafka.acls import (
    COMMAND,
    PROJECTOR,
    QUERY,
    SERVICE_PRINCIPALS,
    WORKFLOW,
    Op,
    Pattern,
    Resource,
    service_acls,
)
from shared.kafka.errors import KafkaAccessDenied, access_denied
from shared.kafka.security import KafkaSecurity
from shared.kafka.topics import Topics
from shared.settings import KafkaSettings

TOPICS = Topics.from_settings(KafkaSettings(topic_prefix="dev."))


def test_plaintext_adds_no_client_arguments() -> None:
    """The default is a broker without security: aiokafka's defaults, nothing added."""
    assert KafkaSecurity.from_settings(KafkaSettings()).client_kwargs() == {}


def test_sasl_ssl_gives_every_client_the_mechanism_credentials_and_a_tls_context(
    tmp_path: Path,
) -> None:
    """SASL_SSL with a password file: the file's password (stripped), the mechanism, and an SSL
    context that checks host names."""
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    settings = KafkaSettings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username="projector",
        kafka_sasl_password="ignored",
        kafka_sasl_password_file=str(secret),
    )
    security = KafkaSecurity.from_settings(settings)
    kwargs = security.client_kwargs()
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kwargs["sasl_plain_username"] == "projector"
    assert kwargs["sasl_plain_password"] == "s3cret"
    assert kwargs["ssl_context"].check_hostname
    assert security.principal == "User:projector"
    assert "s3cret" not in repr(security)


def test_sasl_without_a_password_is_a_configuration_error() -> None:
    """SASL_SSL with a user name and no password cannot work: said at once, naming the
    variables."""
    with pytest.raises(ConfigurationError, match="KAFKA_SASL_PASSWORD"):
        KafkaSecurity.from_settings(
            KafkaSettings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="x")
        )


def test_a_missing_password_file_is_named() -> None:
    """KAFKA_SASL_PASSWORD_FILE that does not exist: a configuration error naming the file."""
    with pytest.raises(ConfigurationError, match="/no/such/file"):
        KafkaSecurity.from_settings(KafkaSettings(kafka_sasl_password_file="/no/such/file"))


@pytest.mark.parametrize(
    ("error", "resource"),
    [
        (TopicAuthorizationFailedError("dev.posts.commands"), "topic dev.posts.commands"),
        (TopicAuthorizationFailedError({"b", "a"}), "topic a, b"),
        (GroupAuthorizationFailedError("projector"), "consumer group projector"),
        (TransactionalIdAuthorizationFailed("cs.t.0"), "transactional id cs.t.0"),
    ],
)
def test_authorization_failures_become_access_denied_naming_principal_and_resource(
    error: Exception, resource: str
) -> None:
    """Each aiokafka authorization failure is a non-retriable KafkaAccessDenied that says who
    was denied what."""
    denied = access_denied(error, "User:projector")
    assert isinstance(denied, KafkaAccessDenied)
    assert denied.resource == resource
    assert not denied.retriable
    assert "User:projector" in denied.message and resource in denied.message


def test_other_kafka_errors_are_no_access_denial() -> None:
    """A connection error stays what it is (retriable), not an ACL denial."""
    assert access_denied(KafkaConnectionError(), "User:x") is None


def _writers_of(topic: str) -> set[str]:
    return {
        b.principal
        for p in SERVICE_PRINCIPALS
        for b in service_acls(p, TOPICS, group_id=p, service_name=p)
        if b.resource is Resource.TOPIC and b.name == topic and b.operation is Op.WRITE
    }


def test_only_the_command_and_workflow_services_may_write_commands() -> None:
    """posts.commands is the trust boundary: no other service principal may write it."""
    assert _writers_of(TOPICS.commands) == {COMMAND, WORKFLOW}


def test_only_the_command_service_may_write_events() -> None:
    """The event log has one writer, the command service (its transactional processor)."""
    assert _writers_of(TOPICS.events) == {COMMAND}


def test_the_query_service_has_no_acl() -> None:
    """The query service never talks to Kafka: nothing is granted to it."""
    assert service_acls(QUERY, TOPICS, group_id="q", service_name="q") == []


def test_every_acl_names_the_prefixed_topics_the_given_group_and_the_services_txn_ids() -> None:
    """ACLs follow TOPIC_PREFIX, GROUP_ID and SERVICE_NAME: nothing outside them is granted."""
    for principal in (COMMAND, PROJECTOR, WORKFLOW):
        bindings = service_acls(principal, TOPICS, group_id="g1", service_name="svc")
        for b in bindings:
            if b.resource is Resource.TOPIC:
                assert b.name.startswith("dev.") and b.pattern is Pattern.LITERAL
            elif b.resource is Resource.GROUP:
                assert b.name == "g1" and b.pattern is Pattern.LITERAL
            else:
                assert b.resource is Resource.TRANSACTIONAL_ID
                assert b.pattern is Pattern.PREFIXED
                assert b.name.startswith("svc.dev.posts.")
