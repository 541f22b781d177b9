"""The command service as a real process against a real broker: concurrency, crashes,
rebalances, zombies, other clients and bad input."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import uuid
import zlib
from pathlib import Path
from typing import Any

import psutil
import pytest

from shared.kafka.clients import partition_for_key
from shared.kafka.commands import CommandClient
from shared.kafka.security import process_security
from shared.kafka.topics import Topics
from shared.messages.blog import RegisterAuthor
from shared.messages.codec import encode_command
from shared.messages.results import CommandOutcome
from shared.settings import KafkaSettings
from tests.conftest import unique
from tests.e2e.harness import ServiceProcess, check_log_invariants, command_service_env, http_client
from tests.e2e.workload import plan_posts, produce_planned
from tests.kafka_helpers import committed_offsets, end_offsets, produce, read_all, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def topics_for(prefix: str) -> Topics:
    return Topics.from_settings(KafkaSettings(topic_prefix=prefix))


async def register_authors(bootstrap: str, prefix: str, ids: list[str]) -> None:
    client = CommandClient(bootstrap, topics_for(prefix), recent_window_s=0)
    await client.start()
    try:
        for author in ids:
            cid = uuid.uuid4()
            outcome = await client.send(
                cid,
                encode_command(
                    RegisterAuthor(name=author, email=f"{author}@example.org"),
                    command_id=cid,
                    aggregate_id=author,
                ),
                wait_s=30,
            )
            assert outcome is not None and outcome.status == "accepted", outcome
    finally:
        await client.stop()


async def wait_all_consumed(
    bootstrap: str, prefix: str, partitions: int, timeout_s: float = 120
) -> None:
    topics = topics_for(prefix)
    ends = await end_offsets(bootstrap, topics.commands, partitions)

    async def done() -> bool:
        committed = await committed_offsets(
            bootstrap, f"{prefix}command-service", topics.commands, partitions
        )
        return all((committed[p] or 0) >= ends[p] for p in range(partitions))

    await wait_until(done, timeout_s=timeout_s, what="command service to consume all commands")


@pytest.fixture
def prefix() -> str:
    return unique("cs") + "."


async def test_http_commands_answer_with_events_positions_and_problem_codes(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    """Over HTTP: 201 with the event position and X-Consistency-Token, 404/409/422 problem
    bodies with the rejection code, and Idempotency-Key replays the first outcome."""
    svc = ServiceProcess(
        "command_service", command_service_env(kafka_bootstrap, prefix, 2), tmp_path, "svc"
    )
    svc.start()
    try:
        await svc.wait_healthy()
        async with http_client(base_url=svc.url, timeout=30) as http:
            r = await http.post(
                "/authors", json={"author_id": "ada", "name": "Ada", "email": "ada@example.org"}
            )
            assert r.status_code == 201, r.text
            r = await http.post(
                "/posts", json={"post_id": "p1", "author_id": "ada", "title": "Hello"}
            )
            assert r.status_code == 201, r.text
            body = r.json()
            event = body["events"][0]
            assert event["type"] == "PostCreated" and event["aggregate_version"] == 1
            assert r.headers["x-consistency-token"] == f"{event['partition']}:{event['offset']}"
            assert event["partition"] == partition_for_key(b"p1", 2)

            r = await http.post("/posts", json={"author_id": "nobody", "title": "x"})
            assert (r.status_code, r.json()["code"]) == (404, "author_not_found")
            assert r.headers["content-type"] == "application/problem+json"
            r = await http.post("/posts/p1/publish")
            assert (r.status_code, r.json()["code"]) == (409, "not_approved")
            r = await http.post("/posts", json={"author_id": "ada", "title": "x" * 201})
            assert (r.status_code, r.json()["code"]) == (422, "title_too_long")
            r = await http.post("/posts/p1/submit?expected_version=7")
            assert (r.status_code, r.json()["code"]) == (409, "version_conflict")
            assert r.json()["current_version"] == 1

            first = await http.post("/posts/p1/submit", headers={"Idempotency-Key": "k1"})
            again = await http.post("/posts/p1/submit", headers={"Idempotency-Key": "k1"})
            assert first.status_code == again.status_code == 200
            assert again.json()["duplicate"] is True
            assert again.json()["events"] == first.json()["events"]
            r = await http.get(f"/commands/{first.json()['command_id']}")
            assert r.status_code == 200 and r.json()["status"] == "accepted"
    finally:
        await svc.stop()
    check = await check_log_invariants(kafka_bootstrap, prefix, 2, [])
    assert check.versions["p1"] == [1, 2]


async def test_a_slow_outcome_answers_202_with_a_location_that_later_has_it(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    """With no time to wait, the API answers 202 + Location; polling it yields the outcome."""
    env = command_service_env(kafka_bootstrap, prefix, 1, COMMAND_TIMEOUT_MS="0")
    svc = ServiceProcess("command_service", env, tmp_path, "svc")
    svc.start()
    try:
        await svc.wait_healthy()
        async with http_client(base_url=svc.url, timeout=30) as http:
            r = await http.post("/authors", json={"name": "Ada", "email": "a@example.org"})
            assert r.status_code == 202, r.text
            location = r.headers["location"]
            assert location == f"/commands/{r.json()['command_id']}"

            async def known() -> bool:
                return (await http.get(location)).status_code == 200

            await wait_until(known, timeout_s=30, what="outcome at Location")
            assert (await http.get(location)).json()["status"] == "accepted"
    finally:
        await svc.stop()


async def test_fifty_concurrent_publishers_with_the_same_expected_version_exactly_one_wins(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    """50 clients publish the same approved post expecting version 3: one 200, 49 conflicts,
    and the log holds one PostPublished."""
    svc = ServiceProcess(
        "command_service", command_service_env(kafka_bootstrap, prefix, 3), tmp_path, "svc"
    )
    svc.start()
    try:
        await svc.wait_healthy()
        async with http_client(base_url=svc.url, timeout=60) as http:
            assert (
                await http.post(
                    "/authors", json={"author_id": "ada", "name": "Ada", "email": "a@example.org"}
                )
            ).status_code == 201
            assert (
                await http.post(
                    "/posts", json={"post_id": "race", "author_id": "ada", "title": "Race"}
                )
            ).status_code == 201
            assert (await http.post("/posts/race/submit")).status_code == 200
            assert (await http.post("/posts/race/approve")).status_code == 200
            responses = await asyncio.gather(
                *[http.post("/posts/race/publish?expected_version=3") for _ in range(50)]
            )
    finally:
        await svc.stop()
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [409] * 49
    assert {r.json()["code"] for r in responses if r.status_code == 409} == {"version_conflict"}
    check = await check_log_invariants(kafka_bootstrap, prefix, 3, [])
    assert check.versions["race"] == [1, 2, 3, 4]


@pytest.mark.crash_soak
async def test_sigkill_at_random_moments_during_5000_commands_loses_and_repeats_nothing(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    """The service is SIGKILLed three times while 5,000 commands flow, and restarted: every
    command has exactly one outcome, the one the domain predicts; accepted commands' events
    appear once; versions run 1..n; rejected commands appended nothing."""
    partitions = 4
    env = command_service_env(kafka_bootstrap, prefix, partitions, BATCH_MAX_RECORDS="20")
    svc = ServiceProcess("command_service", env, tmp_path, "svc-0")
    svc.start()
    await svc.wait_healthy()
    authors = ["ann", "bob", "cyd"]
    await register_authors(kafka_bootstrap, prefix, authors)
    planned, expected = plan_posts(posts=250, per_post=20, authors=authors, seed=11)
    assert len(planned) == 5000
    rng = random.Random(5)
    producing = asyncio.create_task(
        produce_planned(kafka_bootstrap, topics_for(prefix).commands, planned, rate_per_s=120)
    )
    kills = 0
    try:
        for n in range(3):
            current = svc

            async def owns_partitions(proc: ServiceProcess = current) -> bool:
                return "partition_acquired" in proc.logs()

            # A dead member keeps its partitions until its session times out: wait until this
            # generation really owns partitions, then kill it at a random moment of its work.
            await wait_until(owns_partitions, timeout_s=60, what=f"generation {n} to own")
            await asyncio.sleep(rng.uniform(0.2, 1.2))
            assert not producing.done(), "the kill must land while commands still flow"
            await svc.kill()
            kills += 1
            svc = ServiceProcess("command_service", env, tmp_path, f"svc-{n + 1}")
            svc.start()
        await producing
        await wait_all_consumed(kafka_bootstrap, prefix, partitions)
    finally:
        producing.cancel()
        await svc.stop()
    assert kills == 3
    # Each killed generation owned partitions, and was killed while commands still flowed.
    for n in range(3):
        log = (tmp_path / f"svc-{n}.log").read_text()
        assert "partition_acquired" in log, f"generation {n} never owned a partition"
    check = await check_log_invariants(
        kafka_bootstrap, prefix, partitions, [p.command_id for p in planned]
    )
    wrong = {
        cid: (check.outcomes[cid].status, want)
        for cid, want in expected.items()
        if check.outcomes[cid].status != want
    }
    assert not wrong, (
        f"{len(wrong)} outcomes differ from the domain's, e.g. {list(wrong.items())[:3]}"
    )
    assert 500 < sum(s == "accepted" for s in expected.values()) < 4500


async def test_two_instances_in_one_group_with_one_joining_and_leaving_mid_run(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    """A second instance joins and later leaves while commands flow: partitions move twice
    and every invariant still holds."""
    partitions = 4
    env = command_service_env(kafka_bootstrap, prefix, partitions, BATCH_MAX_RECORDS="50")
    first = ServiceProcess("command_service", env, tmp_path, "first")
    second = ServiceProcess("command_service", env, tmp_path, "second")
    first.start()
    await first.wait_healthy()
    authors = ["ann", "bob"]
    await register_authors(kafka_bootstrap, prefix, authors)
    planned, expected = plan_posts(posts=150, per_post=20, authors=authors, seed=12)
    producing = asyncio.create_task(
        produce_planned(kafka_bootstrap, topics_for(prefix).commands, planned, rate_per_s=300)
    )
    try:
        await asyncio.sleep(2)
        second.start()
        await second.wait_healthy()

        async def second_owns_some() -> bool:
            return "partition_acquired" in second.logs()

        await wait_until(second_owns_some, timeout_s=60, what="second instance to own partitions")
        await asyncio.sleep(2)
        assert await second.stop() == 0
        await producing
        await wait_all_consumed(kafka_bootstrap, prefix, partitions)
    finally:
        producing.cancel()
        await first.stop()
        await second.stop()
    check = await check_log_invariants(
        kafka_bootstrap, prefix, partitions, [p.command_id for p in planned]
    )
    assert all(check.outcomes[cid].status == want for cid, want in expected.items())


def log_events(text: str) -> list[dict[str, Any]]:
    """The structured (JSON) lines of a service log, in order (not one being written)."""
    events = []
    for line in text.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
    return events


def fenced_before_acquiring(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The `partition_fenced` lines before the first `partition_acquired` among `events`: the
    producers the instance had before were refused (a later acquisition has a new one)."""
    fenced = []
    for e in events:
        if e["event"] == "partition_acquired":
            break
        if e["event"] == "partition_fenced":
            fenced.append(e)
    return fenced


async def test_a_paused_old_owner_resumed_after_its_partitions_moved_cannot_append(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    """SIGSTOP the owner mid-stream, let another instance take its partitions, SIGCONT it: it
    tries to write with its stale producer and is fenced, so the log still has each event once
    and versions 1..n."""
    partitions = 2
    env = command_service_env(kafka_bootstrap, prefix, partitions, BATCH_MAX_RECORDS="20")
    old = ServiceProcess("command_service", env, tmp_path, "old")
    new = ServiceProcess("command_service", env, tmp_path, "new")
    old.start()
    await old.wait_healthy()
    await register_authors(kafka_bootstrap, prefix, ["ann"])
    planned, expected = plan_posts(posts=100, per_post=20, authors=["ann"], seed=13)
    producing = asyncio.create_task(
        produce_planned(kafka_bootstrap, topics_for(prefix).commands, planned, rate_per_s=300)
    )
    group, commands = f"{prefix}command-service", topics_for(prefix).commands
    try:

        async def old_at_work() -> bool:
            done = await committed_offsets(kafka_bootstrap, group, commands, partitions)
            return all((done[p] or 0) > 0 for p in range(partitions))

        await wait_until(
            old_at_work, timeout_s=60, what="the old owner to commit on each partition"
        )
        # Paused while commands flow: its fetch in flight is answered meanwhile, so it resumes
        # with commands of partitions it still believes it owns.
        assert not producing.done(), "the pause must land while commands still flow"
        old.signal(signal.SIGSTOP)

        async def stopped() -> bool:
            return psutil.Process(old.pid).status() == psutil.STATUS_STOPPED

        await wait_until(stopped, timeout_s=10, what="the old owner to stop")
        paused_at = len(old.logs())  # a stopped process writes nothing more
        new.start()

        async def new_owns_all() -> bool:
            return new.logs().count("partition_acquired") >= partitions

        await wait_until(new_owns_all, timeout_s=60, what="new instance to own every partition")
        old.signal(signal.SIGCONT)

        async def old_fenced() -> bool:
            return bool(fenced_before_acquiring(log_events(old.logs()[paused_at:])))

        await wait_until(old_fenced, timeout_s=60, what="the resumed old owner to be fenced")
        await producing
        await wait_all_consumed(kafka_bootstrap, prefix, partitions)
    finally:
        producing.cancel()
        old.signal(signal.SIGCONT)
        await old.stop()
        await new.stop()
    # Resumed, the old owner went on with the producers of its partitions and the broker refused
    # them (ProducerFenced): it logged the fence before it acquired anything anew (its group
    # membership had expired; it rejoins and may get a partition back, with a new producer).
    before = log_events(old.logs()[:paused_at])
    owned = {e["partition"] for e in before if e["event"] == "partition_acquired"}
    assert owned == set(range(partitions)), before
    fenced = fenced_before_acquiring(log_events(old.logs()[paused_at:]))
    for e in fenced:
        assert e["partition"] in owned and e["error"].startswith("ProducerFenced"), e
        assert e["transactional_id"] == f"command-service.{commands}.{e['partition']}", e
    # Nothing it wrote after resuming was committed: the new owner decided every command from
    # the committed offsets on, so a committed zombie batch would show as a second outcome or
    # a repeated event here.
    check = await check_log_invariants(
        kafka_bootstrap, prefix, partitions, [p.command_id for p in planned]
    )
    assert all(check.outcomes[cid].status == want for cid, want in expected.items())


def kcat_binary() -> str | None:
    found = shutil.which("kcat") or shutil.which("kafkacat")
    if found is None and os.environ.get("CI"):
        pytest.fail("kcat is not installed; .ci/run installs it (apt-get install kcat)")
    return found


def librdkafka_version(kcat: str) -> tuple[int, ...]:
    """The librdkafka version `kcat -V` names ((0,) when it names none)."""
    out = subprocess.run([kcat, "-V"], capture_output=True, text=True, check=False).stdout
    found = re.search(r"librdkafka (\d+(?:\.\d+)*)", out)
    return tuple(int(x) for x in found.group(1).split(".")) if found else (0,)


def kcat_security() -> list[str]:
    """kcat's options for this process's Kafka principal (librdkafka speaks SASL_SSL too)."""
    sec = process_security()
    if sec.protocol == "PLAINTEXT":
        return []
    options = {"security.protocol": sec.protocol.lower(), "ssl.ca.location": sec.cafile}
    if sec.sasl:
        options |= {
            "sasl.mechanisms": sec.mechanism,
            "sasl.username": sec.username,
            "sasl.password": sec.password,
        }
    return [arg for k, v in options.items() if v for arg in ("-X", f"{k}={v}")]


async def test_a_command_produced_by_kcat_is_processed_even_with_librdkafkas_partitioner(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    """kcat (librdkafka, CRC32 partitioner) produces a command whose key hashes elsewhere than
    Kafka's murmur2: the service re-routes it to the owning partition and processes it."""
    kcat = kcat_binary()
    if kcat is None:
        pytest.skip("kcat not installed (apt-get install kcat)")
    librdkafka = librdkafka_version(kcat)
    if process_security().sasl and librdkafka < (2, 6, 1):
        # only on a --secure broker: the same credentials work with aiokafka and Java
        pytest.skip(
            f"kcat's librdkafka {'.'.join(map(str, librdkafka))} fails SCRAM-SHA-512 against "
            "Kafka 4 brokers (fixed in librdkafka 2.6.1; edenhill/kcat#462)"
        )
    partitions = 4
    key = next(
        k
        for k in (f"author-{i}" for i in range(100))
        if zlib.crc32(k.encode()) % partitions != partition_for_key(k.encode(), partitions)
    )
    svc = ServiceProcess(
        "command_service", command_service_env(kafka_bootstrap, prefix, partitions), tmp_path, "svc"
    )
    svc.start()
    try:
        await svc.wait_healthy()
        topics = topics_for(prefix)
        cid = uuid.uuid4()
        record = json.dumps(
            {
                "type": "RegisterAuthor",
                "command_id": str(cid),
                "aggregate_id": key,
                "payload": {"name": "K", "email": "k@x.y"},
            }
        )
        produced = await asyncio.to_thread(
            subprocess.run,
            [
                kcat,
                "-b",
                kafka_bootstrap,
                *kcat_security(),
                "-t",
                topics.commands,
                "-P",
                "-k",
                key,
                "-H",
                "type=RegisterAuthor",
            ],
            input=record.encode(),
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert produced.returncode == 0, produced.stderr.decode()

        async def outcome_arrived() -> bool:
            results = await read_all(kafka_bootstrap, topics.command_results, partitions)
            return any(CommandOutcome.decode(r.value).command_id == cid for r in results)

        await wait_until(outcome_arrived, timeout_s=60, what="outcome of the kcat command")
    finally:
        await svc.stop()
    results = await read_all(kafka_bootstrap, topics.command_results, partitions)
    outcome = next(
        o for o in map(lambda r: CommandOutcome.decode(r.value), results) if o.command_id == cid
    )
    assert outcome.status == "accepted"
    assert outcome.events[0].partition == partition_for_key(key.encode(), partitions)
    commands = await read_all(kafka_bootstrap, topics.commands, partitions)
    assert sorted(r.partition for r in commands) == sorted(
        [zlib.crc32(key.encode()) % partitions, partition_for_key(key.encode(), partitions)]
    )


async def test_malformed_records_are_dead_lettered_with_reasons_and_later_commands_flow(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    """Not JSON, unknown type, invalid payload, no key, oversized, key/aggregate mismatch:
    each lands in the DLQ with its error code; those with a readable command id also get a
    rejected outcome; a valid command after them is accepted."""
    env = command_service_env(kafka_bootstrap, prefix, 1, MAX_COMMAND_BYTES="2048")
    svc = ServiceProcess("command_service", env, tmp_path, "svc")
    svc.start()
    topics = topics_for(prefix)
    ids = {
        name: uuid.uuid4() for name in ("unknown", "invalid", "nokey", "big", "mismatch", "good")
    }

    def command(name: str, type_: str, payload: dict[str, object], agg: str = "a1") -> bytes:
        return json.dumps(
            {"type": type_, "command_id": str(ids[name]), "aggregate_id": agg, "payload": payload}
        ).encode()

    try:
        await svc.wait_healthy()
        await produce(
            kafka_bootstrap,
            topics.commands,
            [
                (b"a1", b"{not json"),
                (b"a1", command("unknown", "LaunchRocket", {})),
                (b"a1", command("invalid", "RegisterAuthor", {"name": ""})),
                (None, command("nokey", "RegisterAuthor", {"name": "N", "email": "n@x.y"})),
                (b"a1", command("big", "RegisterAuthor", {"name": "x" * 3000, "email": "b@x.y"})),
                (
                    b"a1",
                    command(
                        "mismatch", "RegisterAuthor", {"name": "M", "email": "m@x.y"}, agg="other"
                    ),
                ),
                (b"a1", command("good", "RegisterAuthor", {"name": "G", "email": "g@x.y"})),
            ],
            partition=0,
        )

        async def good_done() -> bool:
            results = await read_all(kafka_bootstrap, topics.command_results, 1)
            return any(CommandOutcome.decode(r.value).command_id == ids["good"] for r in results)

        await wait_until(good_done, timeout_s=60, what="the valid command's outcome")
    finally:
        await svc.stop()
    stopped = [
        json.loads(line)
        for line in svc.logs().splitlines()
        if line.startswith("{") and '"processor_stopped"' in line
    ]
    assert [s["stats"]["dead_letters"] for s in stopped] == [6], stopped
    dead = await read_all(kafka_bootstrap, topics.commands_dlq, 1)
    assert [r.header("dlq.error.code") for r in dead] == [
        "malformed_record",
        "unknown_message_type",
        "invalid_payload",
        "missing_key",
        "record_too_large",
        "key_mismatch",
    ]
    assert all(r.header("dlq.error.message") for r in dead)
    outcomes = {
        o.command_id: o
        for o in (
            CommandOutcome.decode(r.value)
            for r in await read_all(kafka_bootstrap, topics.command_results, 1)
        )
    }
    assert outcomes[ids["good"]].status == "accepted"
    for name, code in [
        ("unknown", "unknown_message_type"),
        ("invalid", "invalid_payload"),
        ("nokey", "missing_key"),
        ("big", "record_too_large"),
        ("mismatch", "key_mismatch"),
    ]:
        assert (outcomes[ids[name]].status, outcomes[ids[name]].code) == ("rejected", code)
