"""Topic configs of the README, the co-partitioning guard, and dead-letter records."""

from __future__ import annotations

import pytest

from shared.errors import ConfigurationError, InvalidPayloadError
from shared.kafka.records import InboundRecord, dead_letter
from shared.kafka.topics import Topics, check_co_partitioned, system_topic_specs
from shared.settings import KafkaSettings


def test_event_log_is_kept_forever_and_snapshots_are_compacted() -> None:
    """The event log never expires; snapshots keep the latest per aggregate."""
    specs = {s.name: s for s in system_topic_specs(KafkaSettings(partitions=4))}
    assert specs["posts.events"].configs["retention.ms"] == "-1"
    assert specs["posts.snapshots"].configs["cleanup.policy"] == "compact"
    assert specs["posts.commands"].partitions == specs["posts.events"].partitions == 4


def test_topic_prefix_applies_to_every_topic() -> None:
    """A prefix separates environments sharing one cluster."""
    topics = Topics.from_settings(KafkaSettings(topic_prefix="dev."))
    assert all(name.startswith("dev.") for name in topics.__dict__.values())


def test_commands_and_events_with_different_partition_counts_are_refused() -> None:
    """One writer per partition needs equal counts; the error says why and how to fix it."""
    with pytest.raises(ConfigurationError, match="must be equal") as info:
        check_co_partitioned({"c": 3, "e": 6}, "c", "e")
    assert info.value.retriable is False
    check_co_partitioned({"c": 6, "e": 6}, "c", "e")


def test_dead_letter_keeps_key_value_and_says_why_and_where_from() -> None:
    """A dead letter is the original record plus error and source position in its headers."""
    original = InboundRecord("posts.commands", 2, 41, b"post-1", b"{bad", [("type", b"X")])
    dlq = dead_letter(original, InvalidPayloadError("CreatePost", ["title: required"]), "dlq")
    headers = dict(dlq.headers)
    assert (dlq.topic, dlq.key, dlq.value) == ("dlq", b"post-1", b"{bad")
    assert headers["type"] == b"X"
    assert headers["dlq.error.code"] == b"invalid_payload"
    assert b"title: required" in headers["dlq.error.message"]
    assert (headers["dlq.source.partition"], headers["dlq.source.offset"]) == (b"2", b"41")
