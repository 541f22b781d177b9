"""Events out: personal fields sealed, then encoded into records of the event log.

The domain decides on plaintext and returns plaintext events; sealing (each personal field
encrypted with its subject's key, `shared/personal.py`) happens here, where events become
records, so no plaintext personal data reaches the topic. The handler folds the events as they
were written (sealed) into its state: its books and snapshots hold what a restore from the log
would, and no plaintext.

Keys are the subject's (the aggregate id of an author). A batch's keys are fetched in one round
trip (`prefetch`); partitions are decided concurrently, hence one prefetch per partition.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from command_service.domain import AggregateState, AuthorState
from command_service.ports import SubjectKeys
from shared.kafka.records import InboundRecord, OutboundRecord
from shared.keystore import SubjectErasedError
from shared.messages.base import CommandEnvelope, Event
from shared.messages.codec import encode_event
from shared.personal import open_value, personal_fields, seal_message

#: commands whose events carry personal fields (their subjects' keys are fetched per batch)
_SEALING_COMMANDS = frozenset({"RegisterAuthor", "RenameAuthor"})

# Deterministic event ids: a batch retried after an abort produces byte-identical events.
EVENT_ID_NAMESPACE = uuid.UUID("5b0c2f5e-3a56-4a38-9f0c-7c3f3c7a2b11")


@dataclass(frozen=True)
class Written:
    """An event as written to the log (personal fields sealed), and its record."""

    event: Event
    record: OutboundRecord


class EventEncoder:
    """Seals and encodes the events of a command for `topic` (the event log); with the same
    keys, opens an author's state for the decisions that compare its personal fields."""

    def __init__(self, topic: str, keys: SubjectKeys) -> None:
        self.topic = topic
        self.keys = keys
        # per partition: keys fetched for the batch being decided, and for which subjects
        self._batch_keys: dict[int, tuple[dict[str, bytes], set[str]]] = {}

    async def prefetch(self, partition: int, records: Sequence[InboundRecord]) -> None:
        """One key-store round trip for all the subjects of a batch's author commands (found
        by the `type` header: a hint only; records without it take the one-by-one path)."""
        subjects = {
            r.key.decode(errors="replace")
            for r in records
            if r.key and r.header("type") in _SEALING_COMMANDS
        }
        if len(subjects) < 2:  # nothing to gain
            self._batch_keys.pop(partition, None)
            return
        self._batch_keys[partition] = (await self.keys.keys_for(subjects), subjects)

    def forget(self, partition: int) -> None:
        self._batch_keys.pop(partition, None)

    async def encode(
        self,
        partition: int,
        command: CommandEnvelope,
        events: Sequence[Event],
        *,
        version: int,
        at: datetime,
    ) -> list[Written]:
        """The events of `command`, appended after `version` of its aggregate at time `at`.

        SubjectErasedError when they carry personal data of a subject whose key is gone.
        """
        subject = command.aggregate_id
        if any(personal_fields(type(e)) for e in events):
            key = await self._key(partition, subject)
            events = [seal_message(e, subject, key) for e in events]
        return [
            Written(
                event,
                OutboundRecord.of(
                    self.topic,
                    encode_event(
                        event,
                        event_id=uuid.uuid5(EVENT_ID_NAMESPACE, f"{command.command_id}/{i}"),
                        aggregate_id=subject,
                        aggregate_version=version + i,
                        occurred_at=at,
                        command_id=command.command_id,
                        correlation_id=command.correlation_id or str(command.command_id),
                        causation_id=str(command.command_id),
                        actor=command.actor,
                    ),
                    partition=partition,
                ),
            )
            for i, event in enumerate(events, start=1)
        ]

    async def opened(self, partition: int, state: AggregateState | None) -> AggregateState | None:
        """An author's state with its personal fields opened, for decisions that compare them
        (a rename to the same name); marked erased when its key is gone."""
        if not isinstance(state, AuthorState) or state.erased:
            return state
        key = self._batch_keys.get(partition, ({}, set()))[0].get(state.id)
        keys = {state.id: key} if key is not None else await self.keys.keys([state.id])
        name, email = open_value(state.name, keys), open_value(state.email, keys)
        if name is None or email is None:
            return replace(state, erased=True)  # key deleted, SubjectErased not here yet
        return replace(state, name=name, email=email)

    async def _key(self, partition: int, subject: str) -> bytes:
        """The subject's key: from the batch's prefetch, else from the key store."""
        keys, subjects = self._batch_keys.get(partition, ({}, set()))
        key = keys.get(subject)
        if key is not None:
            return key
        if subject in subjects:  # prefetched and absent: erased
            raise SubjectErasedError(subject)
        return await self.keys.key_for(subject)


__all__ = ["EVENT_ID_NAMESPACE", "EventEncoder", "Written"]
