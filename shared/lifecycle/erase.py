"""Erasing a data subject (crypto-shredding), done by the command service, which owns the key
store (`POST /subjects/{id}/erase`; `esctl erase` calls it, so no tool can erase in a key store
other than the one the services seal with).

In this order, each step safe to repeat (run the erasure again after any failure):

0. refuse an id that never had personal data stored (no key, no tombstone): a typo or a post id
   would otherwise be marked erased for good; `force` marks it anyway;
1. send `EraseSubject`: the command service appends `SubjectErased` to the subject's stream and
   the projector redacts the author's row; the domain refuses a post id here, before anything is
   deleted;
2. delete the subject's key in the key store (final; a tombstone stops a new key): from here on
   every sealed copy of the subject's personal data, in the event log, snapshots, read stores,
   archives and backups, is unreadable;
3. verify in the same store: no key is left for the subject, and a value sealed with its key
   just before the deletion no longer opens; only then can the report say "complete";
4. purge the plaintext that clients sent: commands on `posts.commands` are plaintext as their
   senders wrote them, so the records the command service has processed are deleted
   (`DeleteRecords` below its group's committed offset; commands are requests, the events are
   the record); dead-letter topics keep what could not be processed, so their partitions are
   rewritten without the subject's records, those of aborted transactions included (the
   others' committed records are appended again, then everything below the old end is deleted).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from shared.errors import EsError, InfrastructureUnavailable
from shared.kafka.admin import Admin
from shared.kafka.clients import make_producer, running
from shared.kafka.commands import CommandClient
from shared.kafka.consumer import TopicConsumer
from shared.kafka.reader import read_partition_to_end
from shared.kafka.records import InboundRecord
from shared.kafka.topics import Topics
from shared.keystore import KeyStore
from shared.logging import get_logger
from shared.messages.blog import ERASURE_ISSUER, ERASURE_ROLES, EraseSubject
from shared.messages.codec import encode_command, utcnow
from shared.messages.results import CommandOutcome
from shared.personal import open_value, seal

log = get_logger(__name__)

#: header of a dead letter appended again by a rewrite: the offset it was copied from
REWRITTEN_FROM = "dlq.rewritten.from"

#: rejections of EraseSubject that still mean "erased": nothing (more) to append
SETTLED = {"already_erased", "author_not_found"}

#: the plaintext sealed with the subject's key just before its deletion, to prove it gone
PROBE = "erasure-probe"


class ErasureRefused(EsError):
    """The command service refused EraseSubject for a reason other than "already erased" or
    "no such author" (e.g. the id names a post): nothing was deleted."""

    code = "erasure_refused"


class NotADataSubject(EsError):
    """No personal data was ever stored for the id (no key, no tombstone): a typo, or a post
    id. Nothing was changed; `force` erases it anyway."""

    code = "not_a_data_subject"


@dataclass
class KeyCheck:
    """What the key store the erasure used says after the deletion."""

    key_store: str  # where it is, without credentials
    key_left: bool  # the store still returns a key for the subject
    tombstone: bool  # the subject is marked erased (no new key will be made)
    probe_opens: bool  # a value sealed with the deleted key still opens

    @property
    def confirmed(self) -> bool:
        return self.tombstone and not self.key_left and not self.probe_opens


@dataclass
class ErasureReport:
    subject: str
    key_deleted: bool = False
    outcome: dict[str, Any] | None = None
    key_check: KeyCheck | None = None
    commands_deleted_below: dict[int, int] = field(default_factory=dict)
    commands_pending: dict[int, int] = field(default_factory=dict)  # partition -> unprocessed
    dead_letters_removed: dict[str, int] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Everything this erasure must do is done and the key's deletion is confirmed in the
        store (else: run it again)."""
        settled = self.outcome is not None and (
            self.outcome.get("status") == "accepted" or self.outcome.get("code") in SETTLED
        )
        confirmed = self.key_check is not None and self.key_check.confirmed
        return settled and confirmed and not self.commands_pending

    def as_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "key_deleted": self.key_deleted,
            "key_check": None if self.key_check is None else asdict(self.key_check),
            "outcome": self.outcome,
            "commands_deleted_below": {str(p): o for p, o in self.commands_deleted_below.items()},
            "commands_pending": {str(p): n for p, n in self.commands_pending.items()},
            "dead_letters_removed": self.dead_letters_removed,
            "complete": self.complete,
        }


async def erase_subject(
    subject: str,
    *,
    bootstrap: str,
    topics: Topics,
    keys: KeyStore,
    client: CommandClient,
    group_id: str,
    reason: str | None = None,
    force: bool = False,
    wait_s: float = 30.0,
    on_step: Callable[[str], None] = lambda step: None,
) -> ErasureReport:
    """Erase `subject` (see the module docstring); the report says what was done and what the
    key store confirms."""
    key = (await keys.keys([subject])).get(subject)
    if key is None and not force and await keys.erased_at(subject) is None:
        raise NotADataSubject(
            f"{subject!r} never had personal data stored (the key store {keys.where} has no "
            "key for it): a typo, or a post id? Nothing was changed. To mark it erased anyway, "
            "so that personal data for it is refused from now on, use --force (HTTP: "
            '{"force": true})'
        )
    report = ErasureReport(subject)
    on_step("appending SubjectErased")
    report.outcome = await _append_subject_erased(subject, client, reason, wait_s)
    on_step("deleting the key")
    probe = seal(PROBE, subject, key) if key is not None else None
    report.key_deleted = await keys.erase(subject)
    report.key_check = await check_key_gone(keys, subject, probe)
    if not report.key_check.confirmed:
        log.error("subject_key_still_there", subject=subject, **asdict(report.key_check))
    on_step(f"purging processed commands from {topics.commands}")
    await _purge_processed_commands(bootstrap, topics.commands, group_id, wait_s, report)
    for dlq in (topics.commands_dlq, topics.events_dlq):
        on_step(f"rewriting {dlq} without the subject's records")
        removed = await rewrite_without_subject(bootstrap, dlq, subject)
        if removed:
            report.dead_letters_removed[dlq] = removed
    log.info("subject_erased", **report.as_dict())
    return report


async def _append_subject_erased(
    subject: str, client: CommandClient, reason: str | None, wait_s: float
) -> dict[str, Any]:
    """EraseSubject through the command topic; its outcome. The domain refuses an id that is
    no author (a post) here, before the erasure deletes anything."""
    command_id = uuid.uuid4()
    message = encode_command(
        EraseSubject(reason=reason),
        command_id=command_id,
        aggregate_id=subject,
        occurred_at=utcnow(),
        correlation_id=f"erase:{subject}",
        issued_by=ERASURE_ISSUER,
        actor=ERASURE_ISSUER,  # the erasure acts as its own principal
        actor_roles=ERASURE_ROLES,
    )
    outcome: CommandOutcome | None = await client.send(command_id, message, wait_s=wait_s)
    if outcome is None:
        raise InfrastructureUnavailable(
            f"SubjectErased for {subject!r} was not confirmed within {wait_s:g}s (the key is not "
            "deleted yet): is the command service consuming? Run the erasure again"
        )
    if outcome.status == "rejected" and outcome.code not in SETTLED:
        raise ErasureRefused(
            f"{subject}: {outcome.message}; nothing was deleted", code=outcome.code or "rejected"
        )
    return outcome.model_dump(mode="json", exclude_none=True)


async def check_key_gone(keys: KeyStore, subject: str, probe: str | None) -> KeyCheck:
    """Ask the key store, after the deletion, whether anything of the subject's key is left."""
    left = await keys.keys([subject])
    return KeyCheck(
        key_store=keys.where,
        key_left=subject in left,
        tombstone=await keys.erased_at(subject) is not None,
        probe_opens=probe is not None and open_value(probe, left) is not None,
    )


async def _visible_records(bootstrap: str, topic: str, partition: int, start: int, end: int) -> int:
    """How many committed records lie in [start, end) (transaction markers and aborted records
    take offsets but are no commands: a caught-up group may sit just below such a marker)."""
    count = 0

    def tally(batch: Sequence[InboundRecord]) -> None:
        nonlocal count
        count += sum(1 for r in batch if r.offset < end)

    await read_partition_to_end(bootstrap, topic, partition, tally, start_offset=start)
    return count


async def _purge_processed_commands(
    bootstrap: str, topic: str, group_id: str, wait_s: float, report: ErasureReport
) -> None:
    """Delete the commands the group has processed, once it has processed everything sent up
    to now (bounded wait); partitions it has not caught up on are reported as pending."""
    async with (
        running(
            TopicConsumer(bootstrap, topic), lambda exc: f"cannot purge {topic}: {exc}; run again"
        ) as consumer,
        running(Admin(bootstrap), lambda exc: f"cannot purge {topic}: {exc}; run again") as admin,
    ):
        partitions = await consumer.partitions()
        starts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        deadline = time.monotonic() + wait_s
        while True:
            offsets = await admin.group_offsets(group_id, topic, partitions)
            committed = {p: max(offsets.get(p, 0), starts[p]) for p in partitions}
            behind: dict[int, int] = {}
            for p in partitions:
                if committed[p] < ends[p]:
                    n = await _visible_records(bootstrap, topic, p, committed[p], ends[p])
                    if n:
                        behind[p] = n
            if not behind or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        below = {p: committed[p] if p in behind else ends[p] for p in partitions}
        deletions = {p: o for p, o in below.items() if o > starts[p]}
        await admin.delete_records_before(topic, deletions)
        report.commands_deleted_below = deletions
        report.commands_pending = behind


def _belongs_to(record: InboundRecord, subject: str) -> bool:
    if record.key == subject.encode():
        return True
    try:
        obj = json.loads(record.value or b"")
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(obj, dict) and obj.get("aggregate_id") == subject


async def rewrite_without_subject(bootstrap: str, topic: str, subject: str) -> int:
    """Rewrite each partition of a dead-letter topic that holds records of `subject` (committed
    or left by an aborted transaction): append the others' committed records again (same key,
    value and headers, plus where they came from), then delete everything below the old end.
    Returns the number of the subject's records removed."""
    async with running(TopicConsumer(bootstrap, topic), f"cannot read {topic}") as consumer:
        partitions = await consumer.partitions()
        starts = await consumer.beginning_offsets(partitions)
    removed = 0
    for partition in partitions:
        records: list[InboundRecord] = []

        def keep(batch: Sequence[InboundRecord], out: list[InboundRecord] = records) -> None:
            out.extend(batch)

        end = await read_partition_to_end(
            bootstrap, topic, partition, keep, start_offset=starts[partition]
        )
        # An aborted transaction's records stay in the log (read_uncommitted readers and the
        # segment files still hold them): the subject's are looked for among every record
        # below the same end, aborted ones included; only committed ones are kept below.
        every: list[InboundRecord] = []

        def look(batch: Sequence[InboundRecord], out: list[InboundRecord] = every) -> None:
            out.extend(batch)

        await read_partition_to_end(
            bootstrap,
            topic,
            partition,
            look,
            start_offset=starts[partition],
            until=end,
            isolation_level="read_uncommitted",
        )
        mine = [r for r in every if _belongs_to(r, subject)]
        if not mine:
            continue
        # A rewrite interrupted between appending and deleting left copies beside their
        # originals: keep one of each (the copy), so that running the erasure again is safe.
        copied = {int(v) for r in records if (v := r.header(REWRITTEN_FROM)) and v.isdigit()}
        others = [r for r in records if not _belongs_to(r, subject) and r.offset not in copied]
        await _append_and_delete_below(bootstrap, topic, partition, others, end)
        removed += len(mine)
        log.info("dead_letters_rewritten", topic=topic, partition=partition, removed=len(mine))
    return removed


async def _append_and_delete_below(
    bootstrap: str, topic: str, partition: int, keep: list[InboundRecord], end: int
) -> None:
    """Append `keep` again to the partition (marked with where each came from), then delete
    everything below `end`, the partition's end before the appends."""

    def failed(exc: BaseException) -> str:
        return f"rewriting {topic}[{partition}] failed ({exc}); run the erasure again"

    async with running(make_producer(bootstrap), failed) as producer:
        for r in keep:
            headers = [h for h in r.headers if h[0] != REWRITTEN_FROM]
            headers.append((REWRITTEN_FROM, str(r.offset).encode()))
            await producer.send(topic, r.value, key=r.key, partition=partition, headers=headers)
        await producer.flush()
    async with running(Admin(bootstrap), failed) as admin:
        await admin.delete_records_before(topic, {partition: end})


__all__ = [
    "REWRITTEN_FROM",
    "ErasureRefused",
    "ErasureReport",
    "KeyCheck",
    "NotADataSubject",
    "check_key_gone",
    "erase_subject",
    "rewrite_without_subject",
]
