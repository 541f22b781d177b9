"""aiokafka's errors, for code outside `shared.kafka` that must tell a Kafka failure apart
(an HTTP edge answering 503, a loop that backs off) without importing aiokafka itself; and the
errors of a secured broker, which retrying never fixes: a principal the broker does not accept,
or one its ACLs do not allow what was asked."""

from __future__ import annotations

from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
    UnsupportedSaslMechanismError,
)

from shared.errors import EsError

__all__ = [
    "KafkaAccessDenied",
    "KafkaAuthenticationFailed",
    "KafkaError",
    "access_denied",
]


class KafkaAuthenticationFailed(EsError):
    """The broker refused the process's credentials (SASL) or its TLS handshake failed."""

    code = "kafka_authentication_failed"
    retriable = False

    def __init__(self, bootstrap_servers: str, principal: str, reason: str) -> None:
        super().__init__(f"Kafka at {bootstrap_servers} refused {principal}: {reason}")
        self.bootstrap_servers = bootstrap_servers
        self.principal = principal
        self.reason = reason


class KafkaAccessDenied(EsError):
    """The broker's ACLs do not let this principal do that to that resource."""

    code = "kafka_access_denied"
    retriable = False

    def __init__(self, principal: str, resource: str, action: str = "use") -> None:
        super().__init__(
            f"Kafka denied {principal} to {action} {resource} (ACLs); ask an operator to grant "
            "it, or use the principal that has it"
        )
        self.principal = principal
        self.resource = resource
        self.action = action


def _names(arg: object) -> str:
    if isinstance(arg, (set, frozenset, list, tuple)):
        return ", ".join(sorted(str(a) for a in arg))
    return str(arg)


def access_denied(exc: BaseException, principal: str) -> KafkaAccessDenied | None:
    """`exc` as a KafkaAccessDenied when it is an authorization failure, else None.

    aiokafka raises these with the resource as the first argument: the topic (or the set of
    topics) for TopicAuthorizationFailedError, the group id, the transactional id."""
    if isinstance(exc, KafkaAccessDenied):
        return exc
    arg = _names(exc.args[0]) if exc.args else "?"
    if isinstance(exc, TopicAuthorizationFailedError):
        return KafkaAccessDenied(principal, f"topic {arg}")
    if isinstance(exc, GroupAuthorizationFailedError):
        return KafkaAccessDenied(principal, f"consumer group {arg}")
    if isinstance(exc, TransactionalIdAuthorizationFailed):
        return KafkaAccessDenied(principal, f"transactional id {arg}")
    if isinstance(exc, ClusterAuthorizationFailedError):
        return KafkaAccessDenied(principal, "the cluster", "act on")
    return None


def authentication_failure(exc: BaseException) -> str | None:
    """A few words when `exc` is the broker refusing a login, else None."""
    if isinstance(exc, SaslAuthenticationFailed):
        detail = str(exc.args[0]) if exc.args else ""
        return f"SASL authentication failed ({detail})" if detail else "SASL authentication failed"
    if isinstance(exc, UnsupportedSaslMechanismError):
        return str(exc.args[0]) if exc.args else "the SASL mechanism is not enabled"
    return None
