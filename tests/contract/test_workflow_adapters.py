"""One contract for the workflow API's adapters, run in memory and on a real Kafka broker: the
view of the `workflows.state` changelog, and the channel operator actions are sent on."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import pytest

from shared.kafka.clients import make_producer
from shared.kafka.records import InboundRecord
from shared.kafka.topics import Topics, TopicSpec, ensure_topics
from shared.settings import KafkaSettings
from tests.conftest import unique
from tests.kafka_helpers import delete_topics, read_all
from workflow_service.api import InMemoryWorkflowView, WorkflowView
from workflow_service.control import InMemoryControlChannel, KafkaControlChannel
from workflow_service.engine import META_KEY
from workflow_service.model import WorkflowState

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def state(workflow_id: str, step: str = "webhook") -> bytes:
    return (
        WorkflowState(
            workflow_id=workflow_id,
            kind="publication",
            post_id="p1",
            step=step,
            started_at=T0,
            updated_at=T0,
        )
        .model_dump_json()
        .encode()
    )


class Changelog(Protocol):
    view: Any
    control: Any

    async def write(self, records: Sequence[tuple[bytes, bytes | None]]) -> None: ...

    async def sent(self) -> list[tuple[bytes, bytes]]: ...


class MemoryChangelog:
    def __init__(self) -> None:
        self.view = InMemoryWorkflowView()
        self.control = InMemoryControlChannel()

    async def write(self, records: Sequence[tuple[bytes, bytes | None]]) -> None:
        offset = len(self.view.changelog)
        self.view.append(
            [
                InboundRecord("workflows.state", 0, offset + i, k, v)
                for i, (k, v) in enumerate(records)
            ]
        )

    async def sent(self) -> list[tuple[bytes, bytes]]:
        return list(self.control.records)


class KafkaChangelog:
    def __init__(self, bootstrap: str, topics: Topics) -> None:
        self.bootstrap, self.topics = bootstrap, topics
        self.view = WorkflowView(bootstrap, topics)
        self.control = KafkaControlChannel(bootstrap, topics.workflow_control)

    async def write(self, records: Sequence[tuple[bytes, bytes | None]]) -> None:
        producer = make_producer(self.bootstrap)
        await producer.start()
        try:
            for key, value in records:
                await producer.send_and_wait(self.topics.workflow_state, value, key=key)
        finally:
            await producer.stop()
        assert await self.view.caught_up(10.0)

    async def sent(self) -> list[tuple[bytes, bytes]]:
        records = await read_all(self.bootstrap, self.topics.workflow_control, 1, timeout_s=10.0)
        return [(r.key or b"", r.value or b"") for r in records]


@pytest.fixture(params=["memory", "kafka"])
async def changelog(request: pytest.FixtureRequest) -> AsyncIterator[Changelog]:
    if request.param == "memory":
        yield MemoryChangelog()
        return
    bootstrap: str = request.getfixturevalue("kafka_bootstrap")
    topics = Topics.from_settings(KafkaSettings(topic_prefix=f"{unique('contract')}."))
    names = [topics.workflow_state, topics.workflow_control]
    await ensure_topics(bootstrap, [TopicSpec(n, 1, 1) for n in names])
    kafka = KafkaChangelog(bootstrap, topics)
    await kafka.view.start()
    await kafka.control.start()
    try:
        yield kafka
    finally:
        await kafka.control.stop()
        await kafka.view.stop()
        await delete_topics(bootstrap, names)


async def test_the_view_holds_the_latest_state_per_workflow_and_forgets_tombstones(
    changelog: Changelog,
) -> None:
    """The last state of each workflow wins; a tombstone forgets it; the engine's meta record
    and an unreadable state are skipped."""
    await changelog.write(
        [
            (b"w1", state("w1", "search_index")),
            (b"w2", state("w2")),
            (b"w1", state("w1", "webhook")),
            (META_KEY, b'{"partition": 0}'),
            (b"w3", b"not a state"),
            (b"w2", None),
        ]
    )
    assert sorted(changelog.view.workflows) == ["w1"]
    assert changelog.view.workflows["w1"].step == "webhook"


async def test_actions_are_sent_in_order_with_their_keys(changelog: Changelog) -> None:
    """What `send` takes is what the control topic holds: key and value, in order."""
    await changelog.control.send(b"p1", b'{"action": "retry"}')
    await changelog.control.send(b"p2", b'{"action": "skip"}')
    assert await changelog.sent() == [
        (b"p1", b'{"action": "retry"}'),
        (b"p2", b'{"action": "skip"}'),
    ]
