"""The actor through a real command service and broker: commands produced onto the commands
topic with an actor are decided on ownership, and every event in the log names its command's
actor (the audit trail)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from shared.kafka.commands import CommandClient
from shared.kafka.topics import Topics
from shared.messages.base import Command
from shared.messages.blog import CreatePost, EditPost, RegisterAuthor
from shared.messages.codec import decode_event, encode_command
from shared.messages.results import CommandOutcome
from shared.settings import KafkaSettings
from tests.conftest import unique
from tests.e2e.harness import ServiceProcess, command_service_env
from tests.kafka_helpers import read_all

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
PARTITIONS = 2


async def test_every_event_in_the_log_names_its_actor_and_a_wrong_owner_appends_nothing(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """ada registers and creates a post, bob's edit of it is rejected `not_owner`, an editor's
    is accepted, a trusted producer's (no actor) too: the log holds each event with the actor
    of its command (none for the trusted producer's)."""
    prefix = unique("actor") + "."
    topics = Topics.from_settings(KafkaSettings(topic_prefix=prefix))
    svc = ServiceProcess(
        "command_service", command_service_env(kafka_bootstrap, prefix, PARTITIONS), tmp_path, "s"
    )
    svc.start()
    client = CommandClient(kafka_bootstrap, topics, recent_window_s=0)
    try:
        await svc.wait_healthy()
        await client.start()

        async def send(
            command: Command, aggregate: str, actor: str | None, *roles: str
        ) -> CommandOutcome:
            cid = uuid.uuid4()
            message = encode_command(
                command,
                command_id=cid,
                aggregate_id=aggregate,
                actor=actor,
                actor_roles=roles if actor else None,
            )
            outcome = await client.send(cid, message, wait_s=60)
            assert outcome is not None
            return outcome

        register = RegisterAuthor(name="Ada", email="ada@example.org")
        assert (await send(register, "ada", "ada", "author")).status == "accepted"
        create = CreatePost(author_id="ada", title="Mine")
        assert (await send(create, "p1", "ada", "author")).status == "accepted"
        wrong = await send(EditPost(title="Bob's"), "p1", "bob", "author")
        assert (wrong.status, wrong.code) == ("rejected", "not_owner")
        assert (await send(EditPost(title="Edited"), "p1", "ed", "editor")).status == "accepted"
        assert (await send(EditPost(title="Trusted"), "p1", None)).status == "accepted"
    finally:
        await client.stop()
        await svc.stop()
    records = await read_all(kafka_bootstrap, topics.events, PARTITIONS)
    trail = sorted(
        (e.envelope.aggregate_id, e.envelope.aggregate_version, e.envelope.type, e.envelope.actor)
        for e in (decode_event(r.value) for r in records)
    )
    assert trail == [
        ("ada", 1, "AuthorRegistered", "ada"),
        ("p1", 1, "PostCreated", "ada"),
        ("p1", 2, "PostEdited", "ed"),
        ("p1", 3, "PostEdited", None),
    ]
