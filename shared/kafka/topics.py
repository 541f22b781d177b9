"""Topic names and configs in one place, and an idempotent topic bootstrap."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from aiokafka.admin import NewTopic

from shared.errors import ConfigurationError
from shared.kafka.clients import make_admin, running
from shared.kafka.security import KafkaSecurity
from shared.logging import get_logger
from shared.settings import KafkaSettings

log = get_logger(__name__)

TOPIC_ALREADY_EXISTS = 36
TOPIC_AUTHORIZATION_FAILED = 29


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    configs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Topics:
    """The names of the system's topics (prefix applied)."""

    commands: str
    events: str
    command_results: str
    snapshots: str
    commands_dlq: str
    events_dlq: str
    workflow_state: str
    workflow_control: str
    workflow_history: str
    workflow_dlq: str

    @classmethod
    def from_settings(cls, settings: KafkaSettings) -> Topics:
        p = settings.topic_prefix
        return cls(
            commands=f"{p}posts.commands",
            events=f"{p}posts.events",
            command_results=f"{p}posts.command-results",
            snapshots=f"{p}posts.snapshots",
            commands_dlq=f"{p}posts.commands.dlq",
            events_dlq=f"{p}posts.events.dlq",
            workflow_state=f"{p}workflows.state",
            workflow_control=f"{p}workflows.control",
            workflow_history=f"{p}workflows.history",
            workflow_dlq=f"{p}workflows.dlq",
        )


def system_topic_specs(settings: KafkaSettings) -> list[TopicSpec]:
    """The topics of the README's Topics table with their configs (commands and events share a
    partition count)."""
    t = Topics.from_settings(settings)
    n, rf = settings.partitions, settings.replication_factor
    min_isr = str(min(2, rf))
    durable = {"min.insync.replicas": min_isr}
    return [
        TopicSpec(
            t.commands,
            n,
            rf,
            durable
            | {"cleanup.policy": "delete", "retention.ms": str(settings.commands_retention_ms)},
        ),
        # The event log is the source of truth: never deleted by time or size.
        TopicSpec(
            t.events,
            n,
            rf,
            durable | {"cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "-1"},
        ),
        TopicSpec(
            t.command_results,
            n,
            rf,
            durable
            | {"cleanup.policy": "delete", "retention.ms": str(settings.results_retention_ms)},
        ),
        TopicSpec(t.snapshots, n, rf, durable | {"cleanup.policy": "compact"}),
        TopicSpec(
            t.commands_dlq,
            n,
            rf,
            durable | {"cleanup.policy": "delete", "retention.ms": str(30 * 24 * 3600 * 1000)},
        ),
        TopicSpec(
            t.events_dlq,
            n,
            rf,
            durable | {"cleanup.policy": "delete", "retention.ms": str(30 * 24 * 3600 * 1000)},
        ),
        # Workflows: partition p of each belongs to the owner of events partition p.
        # state: the saga changelog (last state per workflow id + one record per partition);
        # control: operator actions; history: every step of every workflow, for people.
        TopicSpec(t.workflow_state, n, rf, durable | {"cleanup.policy": "compact"}),
        TopicSpec(
            t.workflow_control,
            n,
            rf,
            durable | {"cleanup.policy": "delete", "retention.ms": str(7 * 24 * 3600 * 1000)},
        ),
        TopicSpec(
            t.workflow_history,
            n,
            rf,
            durable | {"cleanup.policy": "delete", "retention.ms": str(90 * 24 * 3600 * 1000)},
        ),
        TopicSpec(
            t.workflow_dlq,
            n,
            rf,
            durable | {"cleanup.policy": "delete", "retention.ms": str(30 * 24 * 3600 * 1000)},
        ),
    ]


async def describe_partition_counts(
    bootstrap_servers: str, names: list[str], *, security: KafkaSecurity | None = None
) -> dict[str, int]:
    """Partition count of each existing topic among `names` (missing topics are absent, and so
    are those the principal may not describe)."""
    async with running(
        make_admin(bootstrap_servers, security=security), "cannot describe topics"
    ) as admin:
        described = await admin.describe_topics(names)
    return {
        t["topic"]: len(t["partitions"])
        for t in described
        if t.get("error_code", 0) == 0 and t.get("partitions")
    }


async def ensure_topics(
    bootstrap_servers: str,
    specs: list[TopicSpec],
    *,
    timeout_s: float = 30.0,
    security: KafkaSecurity | None = None,
) -> dict[str, int]:
    """Create missing topics (idempotent); return the partition count of each."""
    async with running(
        make_admin(bootstrap_servers, security=security), "cannot create topics"
    ) as admin:
        response = await admin.create_topics(
            [
                NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=s.configs)
                for s in specs
            ]
        )
        not_ours: set[str] = set()
        for topic, code, *rest in response.topic_errors:
            if code == TOPIC_AUTHORIZATION_FAILED:
                # On a broker with ACLs a principal may create only the topics it uses (and
                # the broker says so whether the topic exists or not): the others are another
                # principal's to create, and not waited for here.
                not_ours.add(topic)
                continue
            if code not in (0, TOPIC_ALREADY_EXISTS):
                message = rest[0] if rest else ""
                raise ConfigurationError(f"cannot create topic {topic}: error {code} {message}")
            if code == 0:
                log.info("topic_created", topic=topic)
    # The controller answers CreateTopics before every broker's metadata cache knows the new
    # topics: wait until a metadata request lists them all.
    names = [s.name for s in specs if s.name not in not_ours]
    deadline = time.monotonic() + timeout_s
    while True:
        counts = await describe_partition_counts(bootstrap_servers, names, security=security)
        if len(counts) == len(names) or time.monotonic() > deadline:
            return counts
        await asyncio.sleep(0.1)


async def bootstrap_system_topics(settings: KafkaSettings) -> dict[str, int]:
    """Create the system's topics and refuse to go on if commands and events disagree.

    One writer per partition relies on command partition p and event partition p belonging to
    the same aggregates; with different counts the key hashes land on different numbers.
    """
    bootstrap = settings.kafka_bootstrap_servers
    counts = await ensure_topics(bootstrap, system_topic_specs(settings))
    t = Topics.from_settings(settings)
    # a principal that may not create one of them (ACLs) waits for the one who may
    deadline = time.monotonic() + 30.0
    while not {t.commands, t.events} <= counts.keys() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        counts |= await describe_partition_counts(bootstrap, [t.commands, t.events])
    check_co_partitioned(counts, t.commands, t.events)
    return counts


def check_co_partitioned(counts: dict[str, int], commands: str, events: str) -> None:
    if commands not in counts or events not in counts:
        raise ConfigurationError(f"topics {commands} and {events} must both exist")
    if counts[commands] != counts[events]:
        raise ConfigurationError(
            f"{commands} has {counts[commands]} partitions but {events} has {counts[events]}: "
            "they must be equal, because command partition p is the only writer of event "
            "partition p. Recreate or expand one of them (kafka-topics --alter --partitions)."
        )
