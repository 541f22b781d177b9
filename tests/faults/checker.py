"""The checker of the fault tests: what the clients were told, against what the log holds.

Jepsen's queue checkers, for this system. Clients send commands (over HTTP with an
`Idempotency-Key`, or onto the commands topic with their own command id) and retry with the same
key until they get a definite answer; each command is one `Sent` with the answer the client
finally got. After the faults, `check_history` reads the outcome and event topics to their ends
(read_committed: what any reader sees) and `judge` counts:

* acknowledged   the client was told "accepted";
* lost           acknowledged, but the log has no accepted outcome for it, or not its events;
* duplicated     a command with two outcomes that are not marked duplicates, an event id twice
                 in the log, or a command's events written by two transactions (the log holds
                 events of the command that its outcome does not list);
* aborted reads  the log holds events of a command the client was told was rejected or failed
                 (written although the answer said it was not);
* contradicted   the client was told "rejected" and the log says accepted, or the reverse;
* version gaps   an aggregate whose versions in the log are not exactly 1..n;
* unknown        the client never got a definite answer; the log decides what happened to it
                 (reported, not an error: an ambiguous answer is allowed, a wrong one is not).

The read model and the workflows are judged by the tests that have them (`read_model_mismatches`
and `workflows_not_terminal` are filled by the caller; see `Verdict`; `read_model_mismatches()`
compares a read store with the fold of the log, row by row). `Verdict.summary()` is the
one line the tests print; `Verdict.problems()` lists what breaks a guarantee.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from shared.kafka.records import InboundRecord
from shared.kafka.topics import Topics
from shared.messages import decode_event
from shared.messages.results import CommandOutcome
from shared.readmodel.pipeline import IndexedEvent, read_records
from shared.readmodel.store import ReadStore
from shared.readmodel.views import fold_batch
from shared.settings import KafkaSettings
from tests.kafka_helpers import read_all

#: what a client was finally told about one command
Answer = Literal["accepted", "rejected", "failed", "unknown"]

#: the namespace of command ids made from an Idempotency-Key (command_service.api)
IDEMPOTENCY_NAMESPACE = uuid.UUID("d9b2d0a4-73c1-4bb5-b1f4-3b3a8f0c5e77")


def command_id_for(idempotency_key: str, subject: str | None) -> uuid.UUID:
    """The command id the command service gives a request with this key from this caller (the
    token's subject; None with authentication off)."""
    scoped = f"{subject}\n{idempotency_key}" if subject else idempotency_key
    return uuid.uuid5(IDEMPOTENCY_NAMESPACE, scoped)


@dataclass
class Sent:
    """One command as its client saw it, after all its retries."""

    command_id: uuid.UUID
    aggregate_id: str
    answer: Answer
    attempts: int = 1
    #: monotonic times: the first attempt, and the definite answer (None: never answered)
    first_sent_at: float = 0.0
    answered_at: float | None = None


@dataclass(frozen=True)
class LoggedEvent:
    command_id: uuid.UUID | None
    event_id: uuid.UUID
    aggregate_id: str
    version: int
    partition: int
    offset: int


@dataclass
class Verdict:
    sent: int = 0
    acknowledged: int = 0
    rejected: int = 0
    failed: int = 0
    unknown: int = 0
    #: of the unknown ones, what the log says: accepted, rejected, or nothing
    unknown_in_log: Counter[str] = field(default_factory=Counter)
    lost: list[uuid.UUID] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    aborted_reads: list[uuid.UUID] = field(default_factory=list)
    contradicted: list[uuid.UUID] = field(default_factory=list)
    version_gaps: list[str] = field(default_factory=list)
    #: filled by tests that compare a read model with the fold of the log
    read_model_mismatches: list[str] = field(default_factory=list)
    #: filled by tests with workflows: ids of workflows that did not end in a terminal status
    workflows_not_terminal: list[str] = field(default_factory=list)
    events_in_log: int = 0
    longest_without_answer_s: float = 0.0

    def problems(self) -> list[str]:
        """What breaks a guarantee, one line each (empty: the history is clean)."""
        out = []
        for name in (
            "lost",
            "duplicated",
            "aborted_reads",
            "contradicted",
            "version_gaps",
            "read_model_mismatches",
            "workflows_not_terminal",
        ):
            found = getattr(self, name)
            if found:
                out.append(f"{name}: {len(found)}, e.g. {[str(x) for x in found[:3]]}")
        return out

    def summary(self) -> str:
        """One line with every count (what the fault tests print)."""
        unknown = ", ".join(f"{k} {v}" for k, v in sorted(self.unknown_in_log.items()))
        return (
            f"checker: sent={self.sent} acknowledged={self.acknowledged} "
            f"rejected={self.rejected} failed={self.failed} unknown={self.unknown}"
            + (f" (in the log: {unknown})" if unknown else "")
            + f" lost={len(self.lost)} duplicated={len(self.duplicated)}"
            f" aborted_reads={len(self.aborted_reads)} contradicted={len(self.contradicted)}"
            f" version_gaps={len(self.version_gaps)}"
            f" read_model_mismatches={len(self.read_model_mismatches)}"
            f" workflows_not_terminal={len(self.workflows_not_terminal)}"
            f" events_in_log={self.events_in_log}"
            f" longest_without_answer={self.longest_without_answer_s:.1f}s"
        )

    def assert_clean(self) -> None:
        problems = self.problems()
        assert not problems, self.summary() + "\n" + "\n".join(problems)


def longest_without_answer(sent: Iterable[Sent]) -> float:
    """The longest stretch of the run during which no client got a definite answer while at
    least one was waiting for one (seconds)."""
    waits = sorted((s.first_sent_at, s.answered_at) for s in sent if s.answered_at is not None)
    answers = sorted(a for _, a in waits if a is not None)
    if not answers:
        return 0.0
    longest, previous = 0.0, min(start for start, _ in waits)
    for at in answers:
        longest = max(longest, at - previous)
        previous = max(previous, at)
    return longest


def judge(
    sent: Sequence[Sent], outcomes: Iterable[CommandOutcome], events: Iterable[LoggedEvent]
) -> Verdict:
    """Count what the log did with what the clients were told (pure: see the module)."""
    verdict = Verdict(sent=len(sent))
    first: dict[uuid.UUID, CommandOutcome] = {}
    for outcome in outcomes:
        if outcome.duplicate:
            continue
        if outcome.command_id in first:
            verdict.duplicated.append(f"two outcomes of command {outcome.command_id}")
            continue
        first[outcome.command_id] = outcome

    by_command: defaultdict[uuid.UUID | None, list[LoggedEvent]] = defaultdict(list)
    by_aggregate: defaultdict[str, list[int]] = defaultdict(list)
    event_ids: Counter[uuid.UUID] = Counter()
    for event in events:
        verdict.events_in_log += 1
        event_ids[event.event_id] += 1
        by_command[event.command_id].append(event)
        by_aggregate[event.aggregate_id].append(event.version)
    verdict.duplicated += [f"event {e} appended {n} times" for e, n in event_ids.items() if n > 1]
    for aggregate, versions in sorted(by_aggregate.items()):
        if versions != list(range(1, len(versions) + 1)):
            verdict.version_gaps.append(f"{aggregate}: {versions[:10]}")
    for command_id, logged in by_command.items():
        if command_id is None:
            continue
        outcome = first.get(command_id)
        listed = {(e.partition, e.offset) for e in outcome.events} if outcome else set()
        extra = [e for e in logged if (e.partition, e.offset) not in listed]
        if extra and outcome is not None and outcome.status == "accepted":
            verdict.duplicated.append(f"command {command_id}: events beyond its outcome's")

    for s in sent:
        outcome = first.get(s.command_id)
        logged = by_command.get(s.command_id, [])
        in_log = outcome.status if outcome is not None else ("events" if logged else "nothing")
        if s.answer == "accepted":
            verdict.acknowledged += 1
            wanted = {(e.partition, e.offset) for e in outcome.events} if outcome else set()
            have = {(e.partition, e.offset) for e in logged}
            if outcome is None or outcome.status != "accepted" or not wanted <= have:
                verdict.lost.append(s.command_id)
        elif s.answer in ("rejected", "failed"):
            if s.answer == "rejected":
                verdict.rejected += 1
            else:
                verdict.failed += 1
            if logged:
                verdict.aborted_reads.append(s.command_id)
            elif s.answer == "rejected" and in_log == "accepted":
                verdict.contradicted.append(s.command_id)
        else:
            verdict.unknown += 1
            verdict.unknown_in_log[in_log] += 1
    verdict.longest_without_answer_s = longest_without_answer(sent)
    return verdict


async def read_log(
    bootstrap: str, prefix: str, partitions: int, *, timeout_s: float = 120.0
) -> tuple[list[CommandOutcome], list[LoggedEvent]]:
    """The outcomes and events of the topics with this prefix, to their ends (read_committed)."""
    topics = Topics.from_settings(KafkaSettings(topic_prefix=prefix))
    results = await read_all(bootstrap, topics.command_results, partitions, timeout_s=timeout_s)
    records = await read_all(bootstrap, topics.events, partitions, timeout_s=timeout_s)
    outcomes = [CommandOutcome.decode(r.value) for r in results]
    events = []
    for record in records:
        env = decode_event(record.value).envelope
        events.append(
            LoggedEvent(
                command_id=env.command_id,
                event_id=env.event_id,
                aggregate_id=env.aggregate_id,
                version=env.aggregate_version,
                partition=record.partition,
                offset=record.offset,
            )
        )
    return outcomes, events


async def read_model_mismatches(store_url: str, log: Sequence[InboundRecord]) -> list[str]:
    """How the read model at `store_url` differs from the fold of `log` (the event records, to
    their end) by the pure views, one line each (empty: it is the fold). Compared: every post
    and author row, the tag counts, and the event index, which must hold each event once, in
    its stream's order, at its log position (an event lost or applied twice shows there).
    Non-asserting: the caller puts the lines in `Verdict.read_model_mismatches`."""
    out: list[str] = []
    events, unreadable = read_records(list(log))
    out += [f"unreadable event at {u.partition}:{u.offset}: {u.reason}" for u in unreadable]
    posts, authors = fold_batch({}, {}, events)
    store = ReadStore(store_url)
    try:
        stored: dict[str, dict[str, object]] = {}
        cursor = None
        while True:
            page, cursor = await store.list_posts(limit=500, cursor=cursor)
            stored.update({row["post_id"]: row for row in page})
            if cursor is None:
                break
        out += [f"post {i}: in the log, not in the model" for i in sorted(posts.keys() - stored)]
        out += [f"post {i}: in the model, not in the log" for i in sorted(stored.keys() - posts)]
        out += [
            f"post {i}: model {stored[i]} != fold {posts[i]}"
            for i in sorted(posts.keys() & stored.keys())
            if stored[i] != posts[i]
        ]
        for author_id, view in sorted(authors.items()):
            if (row := await store.get_author(author_id)) != view:
                out.append(f"author {author_id}: model {row} != fold {view}")
        stats = await store.stats()
        if stats["events"] != len(events):
            out.append(f"event index holds {stats['events']} events, the log {len(events)}")
        if stats["authors"] != len(authors):
            out.append(f"{stats['authors']} authors in the model, {len(authors)} in the log")
        tags = Counter(tag for view in posts.values() for tag in view["tags"])
        if {t["tag"]: t["posts"] for t in stats["tags"]} != dict(tags.most_common(50)):
            out.append(f"tag counts {stats['tags'][:5]} != the fold's {tags.most_common(5)}")
        streams: defaultdict[str, list[IndexedEvent]] = defaultdict(list)
        for e in events:
            streams[e.envelope.aggregate_id].append(e)
        for aggregate, stream in sorted(streams.items()):
            rows = await store.events(aggregate, limit=len(stream) + 1)
            have = [(r["log_partition"], r["log_offset"], r["event_id"]) for r in rows]
            want = [(e.partition, e.offset, str(e.envelope.event_id)) for e in stream]
            if have != want:
                out.append(f"events of {aggregate}: index {have[:3]}... != log {want[:3]}...")
    finally:
        await store.close()
    return out


async def check_history(
    bootstrap: str,
    prefix: str,
    partitions: int,
    sent: Sequence[Sent],
    *,
    workflows: Mapping[str, str] | None = None,
) -> Verdict:
    """Read the log and judge `sent` against it; `workflows` (id -> status), when given, must
    all be terminal. Prints the summary line (shown by pytest with -s, and in the report of a
    failing test)."""
    from workflow_service.model import TERMINAL  # noqa: PLC0415  # only the tests with workflows

    outcomes, events = await read_log(bootstrap, prefix, partitions)
    verdict = judge(sent, outcomes, events)
    for workflow_id, status in sorted((workflows or {}).items()):
        if status not in TERMINAL:
            verdict.workflows_not_terminal.append(f"{workflow_id}: {status}")
    print(verdict.summary())  # noqa: T201  # the counts are the test's output
    return verdict
