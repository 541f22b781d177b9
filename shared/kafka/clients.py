"""Producer, consumer and admin factories with safe defaults.

Safe means: idempotent producers with `acks=all`; consumers that never auto-commit and read
only committed data (`read_committed`), so aborted transactions are invisible everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2
from aiokafka.producer import sender as _aiokafka_sender

from shared.errors import EsError, InfrastructureUnavailable, KafkaUnreachable
from shared.kafka.errors import (
    KafkaAccessDenied,
    KafkaAuthenticationFailed,
    access_denied,
    authentication_failure,
)
from shared.kafka.security import KafkaSecurity, process_security

C = TypeVar("C")

# After a commit the broker writes the transaction markers asynchronously; a new transaction
# that starts meanwhile is answered CONCURRENT_TRANSACTIONS and aiokafka retries after a fixed
# 20 ms (KAFKA-5477), which caps every transactional producer at ~40 transactions/s on a local
# broker. Measured here: 2 ms gives 95-120 transactions/s; the cost is a few extra, tiny
# requests to the transaction coordinator. aiokafka exposes no setting for it.
TXN_CONCURRENT_BACKOFF_S = 0.002
if hasattr(_aiokafka_sender, "BACKOFF_OVERRIDE"):
    _aiokafka_sender.BACKOFF_OVERRIDE = TXN_CONCURRENT_BACKOFF_S

# Batching: a few ms of linger lets the producer fill batches under load without adding
# noticeable latency to a lone command.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "enable_idempotence": True,
    "linger_ms": 5,
    "max_batch_size": 256 * 1024,
    "compression_type": None,
    "request_timeout_ms": 30_000,
}

CONSUMER_DEFAULTS: dict[str, Any] = {
    "enable_auto_commit": False,
    "isolation_level": "read_committed",
    "auto_offset_reset": "earliest",
    # Short: read_committed consumers are on the latency path of every command (outcomes)
    # and every read-your-writes query (projector); 100 ms cost about a fifth of end-to-end
    # throughput in the benchmark, 25 ms keeps idle fetches few.
    "fetch_max_wait_ms": 25,
    "max_partition_fetch_bytes": 4 * 1024 * 1024,
    "session_timeout_ms": 10_000,
    "heartbeat_interval_ms": 1_000,
}


def _secured(security: KafkaSecurity | None) -> dict[str, Any]:
    """The TLS/SASL arguments of a client: `security`, or the process's (see `security`)."""
    return (security or process_security()).client_kwargs()


def make_producer(
    bootstrap_servers: str, *, security: KafkaSecurity | None = None, **overrides: Any
) -> AIOKafkaProducer:
    """An idempotent `acks=all` producer (not started)."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        **(PRODUCER_DEFAULTS | _secured(security) | overrides),
    )


def make_transactional_producer(
    bootstrap_servers: str,
    transactional_id: str,
    *,
    security: KafkaSecurity | None = None,
    **overrides: Any,
) -> AIOKafkaProducer:
    """A transactional producer (not started). Starting it fences older owners of the id."""
    # linger 0: a transaction's records are sent back to back without yielding to the event
    # loop, so they batch anyway, and each phase of the transaction waits on its sends.
    settings = (
        PRODUCER_DEFAULTS
        | {"transaction_timeout_ms": 60_000, "linger_ms": 0}
        | _secured(security)
        | overrides
    )
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers, transactional_id=transactional_id, **settings
    )


async def stop_quietly(client: Any) -> None:
    """Stop (or, for an admin client, close) `client`, ignoring Kafka and network errors: it is
    stopped on the way out, often after a failure, and that failure is what the caller reports."""
    stop = getattr(client, "stop", None) or client.close
    with contextlib.suppress(KafkaError, OSError):
        await stop()


@contextlib.asynccontextmanager
async def running(client: C, failure: str | Callable[[BaseException], str]) -> AsyncIterator[C]:
    """Start `client` (any producer, consumer or admin of this package), yield it, stop it
    quietly. A Kafka error while starting or in the body, or a network error while starting,
    becomes `InfrastructureUnavailable`: `failure` names what failed (`"cannot read the end of
    t[0]"` gives `"cannot read the end of t[0]: <the error>"`), or makes the whole sentence.

    An `OSError` of the body passes unchanged: there it comes from the caller's own I/O (an
    archive file, say), not from the client, whose network errors are `KafkaError`s. An
    authorization failure becomes `KafkaAccessDenied`, which retrying does not fix."""
    started: Any = client
    try:
        try:
            await started.start()
        except OSError as exc:
            raise InfrastructureUnavailable(_failed(failure, exc)) from exc
        yield client
    except KafkaError as exc:
        denied = access_denied(exc, principal_of(client))
        if denied is not None:
            raise denied from exc
        raise InfrastructureUnavailable(_failed(failure, exc)) from exc
    finally:
        await stop_quietly(client)


def principal_of(client: Any) -> str:
    """The principal `client` (a producer, consumer or admin client) authenticates as."""
    # aiokafka's network client: `client` of a producer, `_client` of a consumer or admin
    inner = getattr(client, "_client", None) or getattr(client, "client", None)
    if getattr(inner, "_security_protocol", "PLAINTEXT") != "SASL_SSL":
        return "User:ANONYMOUS"
    return f"User:{getattr(inner, '_sasl_plain_username', '?')}"


def _failed(failure: str | Callable[[BaseException], str], exc: BaseException) -> str:
    return failure(exc) if callable(failure) else f"{failure}: {exc}"


def group_timing(session_timeout_ms: int) -> dict[str, int]:
    """Consumer overrides for a group member: its session timeout (how fast a dead instance's
    partitions move) and a heartbeat at a tenth of it (at least 500 ms)."""
    return {
        "session_timeout_ms": session_timeout_ms,
        "heartbeat_interval_ms": max(500, session_timeout_ms // 10),
    }


def make_consumer(
    bootstrap_servers: str,
    *topics: str,
    group_id: str | None = None,
    security: KafkaSecurity | None = None,
    **overrides: Any,
) -> AIOKafkaConsumer:
    """A `read_committed`, manually committing consumer (not started)."""
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap_servers,
        group_id=group_id,
        **(CONSUMER_DEFAULTS | _secured(security) | overrides),
    )


def make_admin(
    bootstrap_servers: str, *, security: KafkaSecurity | None = None, **overrides: Any
) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers, **(_secured(security) | overrides)
    )


async def why_no_connection(
    bootstrap_servers: str, security: KafkaSecurity | None = None, *, timeout_s: float = 5.0
) -> EsError | None:
    """What one connection to the first broker says that aiokafka's bootstrap keeps to its log
    (it answers every failed login with "Unable to bootstrap"): KafkaAuthenticationFailed when
    the broker refuses the credentials or the TLS handshake fails, KafkaUnreachable with a hint
    when a broker that speaks TLS closes on a PLAINTEXT client; None when a connection works
    (or fails for an ordinary reason: refused, no answer)."""
    sec = security or process_security()
    addresses = bootstrap_addresses(bootstrap_servers)
    if not addresses:
        return None
    host, port = addresses[0]
    try:
        conn = await asyncio.wait_for(
            create_conn(
                host,
                port,
                request_timeout_ms=int(timeout_s * 1000),
                **sec.client_kwargs(),
            ),
            timeout_s,
        )
    except ssl.SSLCertVerificationError as exc:
        return KafkaAuthenticationFailed(
            bootstrap_servers,
            sec.principal,
            f"its TLS certificate is not trusted ({exc.verify_message}); set KAFKA_SSL_CAFILE "
            "to the CA that signed it",
        )
    except ssl.SSLError as exc:
        return KafkaAuthenticationFailed(
            bootstrap_servers, sec.principal, f"TLS handshake failed ({exc.reason or exc})"
        )
    except KafkaError as exc:
        reason = authentication_failure(exc)
        if reason is not None:
            return KafkaAuthenticationFailed(
                bootstrap_servers,
                sec.principal,
                f"{reason}: check KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD(_FILE)",
            )
        if sec.protocol == "PLAINTEXT":
            return KafkaUnreachable(
                bootstrap_servers,
                "it closed the connection on a PLAINTEXT client: a broker with TLS/SASL does "
                "that; set KAFKA_SECURITY_PROTOCOL=SASL_SSL, KAFKA_SASL_USERNAME, "
                "KAFKA_SASL_PASSWORD(_FILE) and KAFKA_SSL_CAFILE",
            )
        return None
    except (OSError, TimeoutError):
        return None
    conn.close()
    return None


async def wait_for_brokers(
    bootstrap_servers: str,
    *,
    expected_brokers: int = 1,
    timeout_s: float = 60.0,
    security: KafkaSecurity | None = None,
) -> dict[str, Any]:
    """Wait until a metadata request answers with at least `expected_brokers` brokers.

    Credentials the broker refuses end the wait at once (KafkaAuthenticationFailed): they do
    not get better with time."""
    deadline = time.monotonic() + timeout_s
    last_error: str = "no answer"
    while time.monotonic() < deadline:
        admin = make_admin(bootstrap_servers, security=security, request_timeout_ms=5_000)
        try:
            await admin.start()
            cluster: dict[str, Any] = await admin.describe_cluster()
            if len(cluster.get("brokers", [])) >= expected_brokers:
                return cluster
            last_error = f"{len(cluster.get('brokers', []))} of {expected_brokers} brokers up"
        except (TimeoutError, KafkaError, OSError) as exc:
            last_error = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, KafkaError):
                why = await why_no_connection(bootstrap_servers, security)
                if isinstance(why, KafkaAuthenticationFailed):
                    raise why from None
                if isinstance(why, KafkaUnreachable):
                    last_error = why.reason
        finally:
            await stop_quietly(admin)  # also a client that never connected
        await asyncio.sleep(0.5)
    raise InfrastructureUnavailable(
        f"Kafka at {bootstrap_servers} did not answer a metadata request within "
        f"{timeout_s:.0f}s ({last_error})"
    )


def bootstrap_addresses(bootstrap_servers: str) -> list[tuple[str, int]]:
    """`host:port,host:port` (IPv6 as `[::1]:9092`; port 9092 when missing) as (host, port)."""
    out = []
    for raw in bootstrap_servers.split(","):
        item = raw.strip().removeprefix("PLAINTEXT://")
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not port.isdigit() or (host.count(":") and not host.startswith("[")):
            host, port = item, "9092"
        out.append((host.strip("[]"), int(port)))
    return out


def _why(exc: BaseException, timeout_s: float) -> str:
    """A few words on a failed connection attempt."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g}s"
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "host unreachable"
    return (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__).lower()


async def _connect(host: str, port: int, timeout_s: float) -> None:
    _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def ensure_reachable(
    bootstrap_servers: str, *, timeout_s: float = 5.0, security: KafkaSecurity | None = None
) -> None:
    """Raise KafkaUnreachable unless a broker of `bootstrap_servers` accepts a connection and
    answers a metadata request, each within `timeout_s` (for tools a person waits on, which
    should say in seconds, in one sentence, that the address is wrong or the broker is down);
    KafkaAuthenticationFailed when it refuses the credentials (`security`, or the process's)."""
    addresses = bootstrap_addresses(bootstrap_servers)
    if not addresses:
        raise KafkaUnreachable(bootstrap_servers or '""', "no address given")
    outcomes = await asyncio.gather(
        *(_connect(h, p, timeout_s) for h, p in addresses), return_exceptions=True
    )
    if all(isinstance(o, BaseException) for o in outcomes):
        reasons = sorted({_why(o, timeout_s) for o in outcomes if isinstance(o, BaseException)})
        raise KafkaUnreachable(bootstrap_servers, ", ".join(reasons))
    admin = make_admin(
        bootstrap_servers, security=security, request_timeout_ms=int(timeout_s * 1000)
    )
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
    except (TimeoutError, KafkaError, OSError) as exc:
        # a refused login or a TLS broker met in PLAINTEXT: say so rather than "no answer"
        why = await why_no_connection(bootstrap_servers, security, timeout_s=timeout_s)
        if why is not None:
            raise why from exc
        answer = "no answer" if isinstance(exc, TimeoutError) else "no Kafka answer"
        raise KafkaUnreachable(
            bootstrap_servers,
            f"it accepts connections, but {answer} to a metadata request within {timeout_s:g}s",
        ) from exc
    finally:
        await stop_quietly(admin)


def partition_for_key(key: bytes, partitions: int) -> int:
    """The partition Kafka's default (Java, aiokafka) partitioner picks for `key`: murmur2.

    librdkafka clients (kcat, confluent-kafka) default to a CRC32 partitioner instead; records
    they produce can land elsewhere, which the command processor detects with this function.
    """
    hashed: int = murmur2(key)
    return (hashed & 0x7FFFFFFF) % partitions


async def topic_partitions(consumer: Any, topic: str) -> list[int]:
    """Partition numbers of `topic`, asking the broker when the consumer's metadata lacks it
    (a consumer without subscriptions knows no topics right after start)."""
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        await consumer._client.force_metadata_update()  # no public API for this
        partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        # A metadata request for all topics leaves out those the principal may not describe;
        # asked by name, the broker says TOPIC_AUTHORIZATION_FAILED: say denied, not missing.
        await consumer._client.add_topic(topic)
        await consumer._client.force_metadata_update()
        if topic in consumer._client.cluster.unauthorized_topics:
            raise KafkaAccessDenied(principal_of(consumer), f"topic {topic}", "read")
        partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        raise InfrastructureUnavailable(f"topic {topic} does not exist (or has no partitions)")
    return sorted(partitions)
