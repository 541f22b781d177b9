"""The workflow service as a real process next to a real command service and broker."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import subprocess
import sys
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from esctl.localstack.kafka import free_port
from shared.kafka.reader import read_latest_by_key
from shared.kafka.topics import Topics
from shared.messages import decode_command, decode_event, encode_command
from shared.messages.base import Command
from shared.messages.blog import (
    ApprovePost,
    CreatePost,
    RejectPost,
    SubmitPostForReview,
)
from shared.messages.results import CommandOutcome
from shared.settings import KafkaSettings
from tests.conftest import unique
from tests.e2e.harness import ROOT, ServiceProcess, command_service_env, http_client
from tests.kafka_helpers import produce, read_all, wait_until
from workflow_service.model import TERMINAL

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

PARTITIONS = 3


def workflow_env(bootstrap: str, prefix: str, store: Path, **extra: str) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "TOPIC_PREFIX": prefix,
        "PARTITIONS": str(PARTITIONS),
        "GROUP_ID": f"{prefix}workflow-service",
        "SESSION_TIMEOUT_MS": "6000",
        "WORKFLOW_STORE_URL": f"sqlite:///{store}",
        "REVIEWERS": "ann,ben,cid",
        **extra,
    }


class Stack:
    def __init__(self, bootstrap: str, tmp: Path, **workflow_extra: str) -> None:
        self.bootstrap = bootstrap
        self.prefix = unique("wf") + "."
        self.topics = Topics.from_settings(KafkaSettings(topic_prefix=self.prefix))
        self.store = tmp / "workflows.sqlite3"
        self.command = ServiceProcess(
            "command_service",
            command_service_env(bootstrap, self.prefix, PARTITIONS),
            tmp,
            "command",
        )
        self.workflow = ServiceProcess(
            "workflow_service",
            workflow_env(bootstrap, self.prefix, self.store, **workflow_extra),
            tmp,
            "workflow",
        )
        self.sent: list[uuid.UUID] = []

    async def start(self) -> None:
        self.command.start()
        await self.command.wait_healthy()
        self.workflow.start()
        await self.workflow.wait_healthy()

    async def stop(self) -> None:
        for svc in (self.workflow, self.command):
            await svc.stop()

    async def send(self, items: list[tuple[str, Command]]) -> None:
        """Produce commands onto the commands topic, as any Kafka client would."""
        records = []
        for aggregate, command in items:
            cid = uuid.uuid4()
            self.sent.append(cid)
            m = encode_command(command, command_id=cid, aggregate_id=aggregate)
            records.append((m.key, m.value))
        await produce(self.bootstrap, self.topics.commands, records)

    async def workflows(self, **params: Any) -> dict[str, Any]:
        async with http_client() as http:
            r = await http.get(f"{self.workflow.url}/workflows", params={"limit": 10_000, **params})
            r.raise_for_status()
            body: dict[str, Any] = r.json()
            return body

    async def show(self, workflow_id: str) -> dict[str, Any]:
        async with http_client() as http:
            r = await http.get(f"{self.workflow.url}/workflows/{workflow_id}")
            r.raise_for_status()
            body: dict[str, Any] = r.json()
            return body

    async def history(self) -> list[dict[str, Any]]:
        records = await read_all(self.bootstrap, self.topics.workflow_history, PARTITIONS)
        return [json.loads(r.value or b"{}") for r in records]

    async def events(self) -> list[Any]:
        records = await read_all(self.bootstrap, self.topics.events, PARTITIONS, timeout_s=60)
        return [decode_event(r.value) for r in records]


@pytest.fixture
async def make_stack(kafka_bootstrap: str, tmp_path: Path) -> AsyncIterator[Any]:
    stacks: list[Stack] = []

    async def factory(**workflow_extra: str) -> Stack:
        stack = Stack(kafka_bootstrap, tmp_path, **workflow_extra)
        stacks.append(stack)
        await stack.start()
        # Over HTTP, which answers once the registration is decided: posts may follow.
        async with http_client() as http:
            r = await http.post(
                f"{stack.command.url}/authors",
                json={"author_id": "ed", "name": "Ed Itor", "email": "ed@example.org"},
            )
            assert r.status_code == 201, r.text
        return stack

    yield factory
    for stack in stacks:
        await stack.stop()


@pytest.mark.crash_soak
async def test_500_review_workflows_survive_sigkill_each_ends_once_no_command_twice(
    make_stack: Any,
) -> None:
    """500 concurrent reviews in four groups (approve, reject, let the deadlines pass, approve
    with a publication time) while the workflow service is SIGKILLed at random moments and
    restarted: every workflow ends in exactly one terminal state (the one its group implies),
    every due timer fired exactly once, and no command was applied twice."""
    stack: Stack = await make_stack(
        REVIEW_REMINDER_AFTER_S="6",
        REVIEW_DEADLINE_AFTER_S="12",
        PUBLICATION_STEPS="search_index",
    )
    n = 500
    posts = [f"rv-{i}-{uuid.uuid4().hex[:6]}" for i in range(n)]
    group = {post: i % 4 for i, post in enumerate(posts)}  # 0 approve 1 reject 2 lapse 3 later
    # far enough ahead that most approvals reach the workflow before it, even on a loaded
    # machine (at 25 s, a load average of 17 left only 41 of 125 scheduled)
    publish_at = datetime.now(UTC) + timedelta(seconds=40)
    await stack.send([(p, CreatePost(author_id="ed", title=f"T {p}")) for p in posts])
    await stack.send(
        [(p, SubmitPostForReview(publish_at=publish_at if group[p] == 3 else None)) for p in posts]
    )
    rng = random.Random(7)
    kills = 0

    async def chaos() -> None:
        nonlocal kills
        for _ in range(4):
            await asyncio.sleep(rng.uniform(1.0, 4.0))
            await stack.workflow.kill()
            kills += 1
            await asyncio.sleep(rng.uniform(0.0, 1.0))
            stack.workflow.start()

    async def decisions() -> None:
        # People decide within ~3 s of the submission, spread over time (before the deadlines).
        order = list(posts)
        rng.shuffle(order)
        for chunk in range(0, len(order), 25):
            batch = []
            for p in order[chunk : chunk + 25]:
                if group[p] in (0, 3):
                    batch.append((p, ApprovePost(reviewer="ann")))
                elif group[p] == 1:
                    batch.append((p, RejectPost(reason="not yet", reviewer="ben")))
            await stack.send(batch)
            await asyncio.sleep(0.1)

    await asyncio.gather(chaos(), decisions())
    await stack.workflow.wait_healthy()

    async def all_finished() -> bool:
        body = await stack.workflows()
        rows = body["workflows"]
        reviews = [w for w in rows if w["kind"] == "review"]
        running = [w for w in rows if w["status"] not in TERMINAL]
        return len(reviews) == n and not running

    try:
        await wait_until(all_finished, timeout_s=120, interval_s=1.0, what="all finished")
    except TimeoutError:
        body = await stack.workflows()
        running = [w for w in body["workflows"] if w["status"] not in TERMINAL][:3]
        shown = [await stack.show(w["workflow_id"]) for w in running]
        raise AssertionError(f"unfinished: {body['counts']}: {json.dumps(shown)[:6000]}") from None
    assert kills == 4

    rows = (await stack.workflows())["workflows"]
    final = {w["workflow_id"]: w for w in rows}
    expected = {0: "published", 1: "rejected", 2: "auto_rejected", 3: "scheduled"}
    by_post_kind = {(w["post_id"], w["kind"]): w for w in rows}
    scheduled = 0
    for post in posts:
        review = by_post_kind[(post, "review")]
        if group[post] == 3 and review["status"] == "published":
            # approved, but the approval reached the workflow after the requested time (the
            # service was down): published at once, by policy; no schedule
            assert (post, "schedule") not in by_post_kind
            continue
        assert review["status"] == expected[group[post]], (post, review)
        if group[post] == 3:
            scheduled += 1
            assert by_post_kind[(post, "schedule")]["status"] == "published"
        if group[post] in (0, 3):
            assert by_post_kind[(post, "publication")]["status"] == "completed"

    # Exactly one terminal transition per workflow, in the (exactly-once) history topic.
    history = await stack.history()
    terminal_entries = Counter(h["workflow_id"] for h in history if h["what"] in TERMINAL)
    assert set(terminal_entries) == set(final)
    assert max(terminal_entries.values()) == 1
    # Every timer fired at most once; every timer of a lapsed review (reminder, deadline) and
    # every publication timer fired exactly once.
    fired = Counter(
        (h["workflow_id"], h["detail"]["timer"]) for h in history if h["what"] == "timer_fired"
    )
    assert max(fired.values()) == 1, [k for k, v in fired.items() if v > 1][:5]
    for post in posts:
        wid = by_post_kind[(post, "review")]["workflow_id"]
        if group[post] == 2:
            assert fired[(wid, "reminder")] == 1
            assert fired[(wid, "deadline")] == 1
        if (post, "schedule") in by_post_kind:
            assert fired[(by_post_kind[(post, "schedule")]["workflow_id"], "publish")] == 1
    assert scheduled >= n // 8, f"only {scheduled} scheduled publications were exercised"

    # No command applied twice: per post, the workflow's effects appear once in the event log.
    events = await stack.events()
    stream: dict[str, list[Any]] = defaultdict(list)  # per post, in log (= version) order
    for e in events:
        stream[e.envelope.aggregate_id].append(e)
    for aggregate, es in stream.items():
        vs = [e.envelope.aggregate_version for e in es]
        assert vs == list(range(1, len(vs) + 1)), (aggregate, vs)
    commands = await read_all(stack.bootstrap, stack.topics.commands, PARTITIONS, timeout_s=60)
    emitted_by: dict[tuple[str, str], Any] = {}  # (workflow id, step) -> command envelope
    for c in (decode_command(r.value) for r in commands):
        cause = c.envelope.causation_id or ""
        if cause.startswith("workflow:"):
            wid, step = cause.removeprefix("workflow:").rsplit("/", 1)
            emitted_by[(wid, step)] = c.envelope
    results = await read_all(stack.bootstrap, stack.topics.command_results, PARTITIONS)
    first_outcomes = [CommandOutcome.decode(r.value) for r in results]
    outcome_of = {o.command_id: o for o in first_outcomes if not o.duplicate}
    review_notes = ("ReviewerAssigned", "ReviewReminderSent")
    for post in posts:
        es, g = stream[post], group[post]
        types = [e.envelope.type for e in es]
        wid = by_post_kind[(post, "review")]["workflow_id"]
        # The review's annotations come before its decision. A lapsed review (group 2) has
        # both. In groups 0, 1 and 3 a person decides within seconds, racing the workflow's
        # AssignReviewer (the workflow may be down or behind) and its reminder (due after
        # 6 s): a command decided after the person is refused, so such a post has both, the
        # assignment only, or neither; never a reminder without an assignment.
        notes = tuple(t for t in types if t in review_notes)
        if g == 2:
            assert notes == review_notes, (post, types)
        else:
            assert notes in ((), review_notes[:1], review_notes), (post, types)
        decision = {
            0: ["PostApproved", "PostPublished"],
            1: ["PostRejected"],
            2: ["PostRejected"],
            3: ["PostApproved", "PublicationScheduled", "PostPublished"]
            if (post, "schedule") in by_post_kind
            else ["PostApproved", "PostPublished"],  # approved after the requested time
        }[g]
        assert types == ["PostCreated", "PostSubmittedForReview", *notes, *decision], (post, g)
        if g in (1, 2):  # the person's rejection, or the workflow's at the deadline
            assert es[-1].payload.reviewer == ("ben" if g == 1 else "workflow"), (post, g)
        # A present annotation is the workflow's own command, accepted; a missing assignment
        # was refused (the person decided first); a missing reminder was refused too, or never
        # sent (the workflow saw the decision before it was due).
        for step, note in (("assign-reviewer", "ReviewerAssigned"), ("reminder", review_notes[1])):
            command = emitted_by.get((wid, step))
            if note in notes:
                assert command is not None, (post, step)
                (event,) = [e for e in es if e.envelope.type == note]
                assert event.envelope.command_id == command.command_id, (post, step)
                assert outcome_of[command.command_id].status == "accepted", (post, step)
            elif command is not None or step == "assign-reviewer":
                assert command is not None, f"{post}: the review started without {step}"
                refused = outcome_of[command.command_id]
                assert (refused.status, refused.code) == ("rejected", "not_in_review"), (
                    post,
                    step,
                    refused,
                )

    # Each command a workflow emitted is on the commands topic once, with one outcome.
    emitted = Counter(
        c.envelope.command_id
        for c in (decode_command(r.value) for r in commands)
        if (c.envelope.causation_id or "").startswith("workflow:")
    )
    assert emitted, "the workflows emitted no command"
    assert max(emitted.values()) == 1
    outcomes = Counter(o.command_id for o in first_outcomes if not o.duplicate)
    assert all(outcomes[cid] == 1 for cid in emitted)
    # reviewers went round robin (per partition): all three were used
    assigned = Counter(e.payload.reviewer for e in events if e.envelope.type == "ReviewerAssigned")
    assert set(assigned) == {"ann", "ben", "cid"}


class Webhook:
    """A local HTTP receiver: `flaky-*` posts fail their first `failures` deliveries,
    `doomed-*` posts always fail; retractions always succeed."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[dict[str, Any]] = []
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        body["idempotency_key"] = request.headers.get("Idempotency-Key")
        self.calls.append(body)
        post, event = body["post_id"], body["event"]
        if event == "post.published":
            tries = sum(1 for c in self.calls if c["post_id"] == post and c["event"] == event)
            if post.startswith("doomed") or (post.startswith("flaky") and tries <= self.failures):
                return web.Response(status=500, text="receiver down")
        return web.json_response({"ok": True})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def published_calls(self, post: str) -> int:
        return sum(1 for c in self.calls if c["post_id"] == post and c["event"] == "post.published")


@pytest.fixture
async def webhook() -> AsyncIterator[Webhook]:
    hook = Webhook(failures=2)
    await hook.start()
    yield hook
    await hook.stop()


async def test_webhook_retries_then_succeeds_and_one_that_always_fails_is_compensated(
    make_stack: Any, webhook: Webhook
) -> None:
    stack: Stack = await make_stack(
        WEBHOOK_URL=webhook.url,
        PUBLICATION_STEPS="search_index,webhook",
        ACTIVITY_MAX_ATTEMPTS="4",
        ACTIVITY_BACKOFF_MS="100",
    )
    flaky, doomed = f"flaky-{uuid.uuid4().hex[:6]}", f"doomed-{uuid.uuid4().hex[:6]}"
    for post in (flaky, doomed):
        await stack.send([(post, CreatePost(author_id="ed", title="Hello"))])
        await stack.send([(post, SubmitPostForReview())])
        await stack.send([(post, ApprovePost(reviewer="ann"))])

    async def finished() -> bool:
        rows = (await stack.workflows(kind="publication"))["workflows"]
        return len(rows) == 2 and all(w["status"] in TERMINAL for w in rows)

    await wait_until(finished, timeout_s=60, interval_s=0.5, what="publication workflows")
    rows = {w["post_id"]: w for w in (await stack.workflows(kind="publication"))["workflows"]}

    # flaky: two failed deliveries, retried with backoff, then delivered: completed.
    ok = await stack.show(rows[flaky]["workflow_id"])
    assert ok["status"] == "completed"
    assert webhook.published_calls(flaky) == 3
    whats = [h["what"] for h in ok["history"]]
    assert whats.count("step_failed_retrying") == 2
    assert len(ok["failures"]) == 2
    assert "step_succeeded" in whats
    retry_at = [
        h["detail"]["retry_at"] for h in ok["history"] if h["what"] == "step_failed_retrying"
    ]
    assert len(set(retry_at)) == 2

    # doomed: four failed deliveries -> compensation of the search index -> post unpublished.
    failed = await stack.show(rows[doomed]["workflow_id"])
    assert failed["status"] == "failed"
    assert "webhook failed after 4 attempts" in failed["error"]
    assert webhook.published_calls(doomed) == 4
    whats = [h["what"] for h in failed["history"]]
    assert whats.count("step_failed_retrying") == 3
    assert (
        whats.index("step_failed")
        < whats.index("compensation_started")
        < whats.index("compensated")
    )
    assert failed["data"]["compensated"] == ["search_index"]
    # The webhook never succeeded for doomed, so it is not compensated (no retraction call).
    assert not [
        c for c in webhook.calls if c["post_id"] == doomed and c["event"] == "post.retracted"
    ]
    assert {c["idempotency_key"] for c in webhook.calls if c["post_id"] == flaky} == {
        f"{rows[flaky]['workflow_id']}/post.published"
    }

    # The same story in the event log and in the dead-letter topic.
    events = [e for e in await stack.events() if e.envelope.aggregate_id == doomed]
    assert [e.envelope.type for e in events][-2:] == ["PostPublished", "PostUnpublished"]
    assert "webhook failed after 4 attempts" in (events[-1].payload.reason or "")
    letters = await read_all(stack.bootstrap, stack.topics.workflow_dlq, PARTITIONS)
    assert [json.loads(r.value or b"{}")["post_id"] for r in letters] == [doomed]
    history = [h for h in await stack.history() if h["post_id"] == doomed]
    assert [h["what"] for h in history if h["kind"] == "publication"] == [
        h["what"] for h in failed["history"]
    ]
    # The search index (the activity's table) keeps the flaky post, not the doomed one.
    with sqlite3.connect(stack.store) as db:
        indexed = {row[0] for row in db.execute("SELECT post_id FROM search_index")}
    assert flaky in indexed
    assert doomed not in indexed


async def test_operator_skips_a_failing_step_with_esctl(make_stack: Any, webhook: Webhook) -> None:
    """A step that keeps failing (long backoff) is skipped by an operator with `esctl workflows
    skip`; `esctl workflows show` and `list` tell the story."""
    stack: Stack = await make_stack(
        WEBHOOK_URL=webhook.url,
        PUBLICATION_STEPS="webhook,search_index",
        ACTIVITY_MAX_ATTEMPTS="10",
        ACTIVITY_BACKOFF_MS="60000",
    )
    post = f"doomed-{uuid.uuid4().hex[:6]}"
    await stack.send([(post, CreatePost(author_id="ed", title="Hello"))])
    await stack.send([(post, SubmitPostForReview())])
    await stack.send([(post, ApprovePost())])

    async def waiting_retry() -> bool:
        rows = (await stack.workflows(kind="publication"))["workflows"]
        return bool(rows) and rows[0]["failures"] >= 1

    await wait_until(waiting_retry, timeout_s=60, interval_s=0.5, what="a failed attempt")
    wid = (await stack.workflows(kind="publication"))["workflows"][0]["workflow_id"]

    def esctl(*args: str) -> subprocess.CompletedProcess[str]:
        return esctl_workflows(stack, *args)

    shown = esctl("show", wid)
    assert shown.returncode == 0, shown.stderr
    assert "step_failed_retrying" in shown.stdout
    assert "activity:webhook:2" in shown.stdout  # the pending retry timer
    skipped = esctl("skip", wid, "--reason", "receiver retired")
    assert skipped.returncode == 0, skipped.stderr

    async def completed() -> bool:
        return (await stack.show(wid))["status"] == "completed"

    await wait_until(completed, timeout_s=30, interval_s=0.3, what="skip applied")
    state = await stack.show(wid)
    assert state["data"]["skipped"] == ["webhook"]
    assert state["data"]["done"] == ["search_index"]
    step = next(h for h in state["history"] if h["what"] == "step_skipped")
    assert step["detail"] == {"step": "webhook", "reason": "receiver retired"}
    listed = esctl("list", "--kind", "publication", "--json")
    assert json.loads(listed.stdout)["workflows"][0]["status"] == "completed"
    # a finished workflow refuses further actions, with the reason
    again = esctl("retry", wid)
    assert again.returncode == 1
    assert "finished" in again.stderr.lower() or "completed" in again.stderr
    unknown = esctl("show", "review:nope:v1")
    assert unknown.returncode == 1


async def test_finished_workflows_are_forgotten_after_their_retention(make_stack: Any) -> None:
    """WORKFLOW_RETENTION_S: finished workflows are tombstoned on workflows.state and leave the
    operator's view; a running one stays; a restart brings neither back nor loses it."""
    stack: Stack = await make_stack(WORKFLOW_RETENTION_S="3", PUBLICATION_STEPS="search_index")
    done, running = f"ret-done-{uuid.uuid4().hex[:6]}", f"ret-run-{uuid.uuid4().hex[:6]}"
    await stack.send(
        [
            (done, CreatePost(author_id="ed", title="A")),
            (running, CreatePost(author_id="ed", title="B")),
        ]
    )
    await stack.send([(done, SubmitPostForReview()), (running, SubmitPostForReview())])
    await stack.send([(done, ApprovePost())])

    async def of(post: str) -> list[dict[str, Any]]:
        return [w for w in (await stack.workflows())["workflows"] if w["post_id"] == post]

    async def both_finished() -> bool:
        rows = await of(done)
        return {w["kind"] for w in rows} == {"review", "publication"} and all(
            w["status"] in TERMINAL for w in rows
        )

    await wait_until(both_finished, timeout_s=60, interval_s=0.3, what="review and publication")
    finished = [w["workflow_id"] for w in await of(done)]

    async def forgotten() -> bool:
        return not await of(done)

    await wait_until(forgotten, timeout_s=30, interval_s=0.3, what="retention elapsed")
    latest: dict[bytes, bytes | None] = {}
    for p in range(PARTITIONS):
        latest |= await read_latest_by_key(stack.bootstrap, stack.topics.workflow_state, p)
    assert all(latest[wid.encode()] is None for wid in finished)  # tombstones, not just memory
    (review,) = await of(running)
    assert review["status"] not in TERMINAL

    await stack.workflow.stop()
    stack.workflow.start()
    await stack.workflow.wait_healthy()

    async def restored() -> bool:
        return len(await of(running)) == 1

    await wait_until(restored, timeout_s=30, interval_s=0.3, what="restore after restart")
    assert await of(done) == []
    async with http_client() as http:
        r = await http.get(f"{stack.workflow.url}/workflows/{finished[0]}")
        assert r.status_code == 404


def esctl_workflows(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """`esctl workflows ...` against the stack's workflow service, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "esctl", "workflows", *args, "--url", stack.workflow.url],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


async def publication_waiting_on_a_retry(stack: Stack, post: str) -> str:
    """Create, submit and approve `post`; wait until its publication workflow has failed a
    step once and waits for the (long) backoff; its id."""
    await stack.send([(post, CreatePost(author_id="ed", title="Hello"))])
    await stack.send([(post, SubmitPostForReview())])
    await stack.send([(post, ApprovePost())])

    async def waiting_retry() -> bool:
        rows = (await stack.workflows(kind="publication", post_id=post))["workflows"]
        return bool(rows) and rows[0]["failures"] >= 1

    await wait_until(waiting_retry, timeout_s=60, interval_s=0.3, what="a failed attempt")
    (row,) = (await stack.workflows(kind="publication", post_id=post))["workflows"]
    assert row["status"] == "active" and row["next_timer"]["id"] == "activity:webhook:2", row
    return str(row["workflow_id"])


async def test_operator_retry_with_esctl_runs_the_waiting_step_now(
    make_stack: Any, webhook: Webhook
) -> None:
    """`esctl workflows retry` runs a step that waits for its backoff at once: the webhook is
    called again before its 10-minute retry timer, and the workflow goes on from there."""
    webhook.failures = 1  # the receiver is back after one failure
    stack: Stack = await make_stack(
        WEBHOOK_URL=webhook.url,
        PUBLICATION_STEPS="webhook",
        ACTIVITY_MAX_ATTEMPTS="5",
        ACTIVITY_BACKOFF_MS="600000",
    )
    post = f"flaky-{uuid.uuid4().hex[:6]}"
    wid = await publication_waiting_on_a_retry(stack, post)
    assert webhook.published_calls(post) == 1

    retried = esctl_workflows(stack, "retry", wid, "--reason", "receiver is back")
    assert retried.returncode == 0, retried.stderr
    assert f"retry of {wid} sent" in retried.stderr.replace("\n", " ")

    async def completed() -> bool:
        return (await stack.show(wid))["status"] == "completed"

    await wait_until(completed, timeout_s=30, interval_s=0.3, what="the retried step")
    assert webhook.published_calls(post) == 2
    state = await stack.show(wid)
    assert state["pending_timers"] == [] and state["data"]["done"] == ["webhook"]
    retry = next(h for h in state["history"] if h["what"] == "operator_retry")
    assert retry["detail"] == {"step": "webhook", "reason": "receiver is back"}
    assert [h["what"] for h in state["history"]][-2:] == ["step_succeeded", "completed"]


async def test_operator_compensate_with_esctl_undoes_completed_steps_and_unpublishes(
    make_stack: Any, webhook: Webhook
) -> None:
    """`esctl workflows compensate` on a running publication compensates its completed steps in
    reverse order, fails the workflow with the operator's reason and unpublishes the post."""
    stack: Stack = await make_stack(
        WEBHOOK_URL=webhook.url,
        PUBLICATION_STEPS="search_index,webhook",
        ACTIVITY_MAX_ATTEMPTS="5",
        ACTIVITY_BACKOFF_MS="600000",
    )
    post = f"doomed-{uuid.uuid4().hex[:6]}"
    wid = await publication_waiting_on_a_retry(stack, post)
    assert (await stack.show(wid))["data"]["done"] == ["search_index"]
    with sqlite3.connect(stack.store) as db:
        assert db.execute("SELECT 1 FROM search_index WHERE post_id = ?", (post,)).fetchall()

    sent = esctl_workflows(stack, "compensate", wid, "--reason", "retracted by the editor")
    assert sent.returncode == 0, sent.stderr

    async def failed() -> bool:
        return (await stack.show(wid))["status"] == "failed"

    await wait_until(failed, timeout_s=30, interval_s=0.3, what="the compensation")
    state = await stack.show(wid)
    assert state["error"] == "operator: retracted by the editor"
    assert state["data"]["compensated"] == ["search_index"]
    whats = [h["what"] for h in state["history"]]
    assert (
        whats.index("operator_compensate")
        < whats.index("compensation_started")
        < whats.index("compensated")
    )
    with sqlite3.connect(stack.store) as db:
        assert not db.execute("SELECT 1 FROM search_index WHERE post_id = ?", (post,)).fetchall()
    assert webhook.published_calls(post) == 1  # not retried meanwhile
    assert not [c for c in webhook.calls if c["post_id"] == post and c["event"] == "post.retracted"]

    async def unpublished() -> bool:
        events = [e for e in await stack.events() if e.envelope.aggregate_id == post]
        return events[-1].envelope.type == "PostUnpublished"

    await wait_until(unpublished, timeout_s=30, interval_s=0.5, what="the post unpublished")
    last = [e for e in await stack.events() if e.envelope.aggregate_id == post][-1]
    assert "operator: retracted by the editor" in (last.payload.reason or "")
    # finished: further actions are refused, with the reason
    again = esctl_workflows(stack, "compensate", wid)
    assert again.returncode == 1 and "failed" in again.stderr
