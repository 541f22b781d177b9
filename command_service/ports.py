"""The ports of the command handler: what it needs from outside, as small Protocols.

Adapters live in `command_service/adapters.py` (Kafka-backed and in-memory) and
`shared/keystore.py` (the subject keys).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from shared.kafka.records import InboundRecord


class AuthorDirectory(Protocol):
    """Which authors exist, across all partitions (committed registrations only)."""

    def known(self, author_id: str) -> bool: ...

    async def refresh(self, timeout_s: float) -> bool:
        """Wait until every registration committed before the call is known."""
        ...


class SubjectKeys(Protocol):
    """The per-subject keys personal fields are sealed with (shared.keystore.KeyStore)."""

    async def key_for(self, subject: str) -> bytes:
        """The subject's key, created on first use; SubjectErasedError once erased."""
        ...

    async def keys_for(self, subjects: Iterable[str]) -> dict[str, bytes]:
        """key_for of many at once (one round trip); erased subjects are absent."""
        ...

    async def keys(self, subjects: Iterable[str]) -> dict[str, bytes]: ...


class PartitionHistory(Protocol):
    """Where a partition's past comes from when it is assigned (the restore hook).

    The Kafka implementation reads the event log and the results topic; snapshots plug in here.
    """

    async def snapshots(self, partition: int) -> dict[bytes, bytes | None]:
        """The latest record per key of snapshots partition p."""
        ...

    async def replay(
        self,
        partition: int,
        on_events: Callable[[Sequence[InboundRecord]], None],
        on_outcomes: Callable[[Sequence[InboundRecord]], None],
        *,
        events_from: int = 0,
    ) -> int:
        """Events of partition p from `events_from`, then its outcomes; returns the events'
        end offset."""
        ...


__all__ = ["AuthorDirectory", "PartitionHistory", "SubjectKeys"]
