"""What the lifecycle tools (prune, erase) ask of Kafka's admin API, typed and in partition
numbers: consumer groups, their committed offsets, and deleting records below an offset."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka import TopicPartition
from aiokafka.admin import RecordsToDelete

from shared.kafka.clients import make_admin, stop_quietly


class Admin:
    """An admin client of the cluster at `bootstrap_servers` (start it, or use `running`)."""

    def __init__(self, bootstrap_servers: str, **overrides: Any) -> None:
        self._admin = make_admin(bootstrap_servers, **overrides)

    async def start(self) -> None:
        await self._admin.start()

    async def stop(self) -> None:
        await stop_quietly(self._admin)

    async def consumer_groups(self) -> list[str]:
        """The ids of every consumer group the cluster knows."""
        return [group[0] for group in await self._admin.list_consumer_groups()]

    async def group_offsets(
        self, group_id: str, topic: str, partitions: Iterable[int] | None = None
    ) -> dict[int, int]:
        """The group's committed offsets on `topic` (all its partitions the group committed on,
        or only `partitions`). Kafka answers -1 for an asked partition without a commit."""
        asked = None if partitions is None else [TopicPartition(topic, p) for p in partitions]
        found = await self._admin.list_consumer_group_offsets(group_id, partitions=asked)
        return {tp.partition: int(meta.offset) for tp, meta in found.items() if tp.topic == topic}

    async def delete_records_before(self, topic: str, offsets: Mapping[int, int]) -> None:
        """Delete every record of `topic` below `offsets[partition]` (DeleteRecords: the log
        start moves up; nothing is rewritten)."""
        if offsets:
            await self._admin.delete_records(
                {TopicPartition(topic, p): RecordsToDelete(o) for p, o in offsets.items()}
            )
