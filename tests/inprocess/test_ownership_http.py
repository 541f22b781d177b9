"""Ownership through the command service's HTTP edge, in process: the caller's subject and roles
become the command's actor (never the body), the real domain decides ownership, and a wrong
owner is answered 403 `not_owner`."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
from fastapi import FastAPI

from command_service.adapters import InMemoryCommandClient
from command_service.authors import actor_of
from command_service.domain import AggregateState, Rejection, decide, evolve
from shared.messages.blog import CreatePost
from shared.messages.codec import EncodedMessage, decode_command
from shared.messages.results import CommandOutcome, EventPosition
from shared.principal import LOCAL_DEMO, Principal
from tests.inprocess.conftest import HTTPClient, as_caller
from tests.inprocess.test_command_http import assert_problem, command_app, sent

route = pytest.mark.route
NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
ADA = Principal("ada", frozenset({"author"}), authenticated=True)
BOB = Principal("bob", frozenset({"author"}), authenticated=True)
EDITOR = Principal("ed", frozenset({"editor"}), authenticated=True)


class DomainProcessor:
    """Plays the command processor with the real domain: decodes each command, takes its actor
    as the handler does (`actor_of`), decides on the states it holds (every registered author
    exists) and answers the outcome."""

    def __init__(self) -> None:
        self.states: dict[str, AggregateState] = {}
        self.offset = 0

    def __call__(self, command_id: uuid.UUID, message: EncodedMessage) -> CommandOutcome:
        env, command = (d := decode_command(message.value)).envelope, d.payload
        state = self.states.get(env.aggregate_id)
        current = state.version if state else 0
        decision = decide(
            command,
            state,
            aggregate_id=env.aggregate_id,
            expected_version=env.expected_version,
            author_exists=isinstance(command, CreatePost) and command.author_id in self.states,
            actor=actor_of(env),
        )
        if isinstance(decision, Rejection):
            return CommandOutcome(
                command_id=command_id,
                status="rejected",
                aggregate_id=env.aggregate_id,
                version=current,
                code=decision.code,
                message=decision.message,
                details=decision.details,
            )
        positions = []
        for event in decision:
            state = evolve(state, event, aggregate_id=env.aggregate_id, at=NOW)
            self.offset += 2
            positions.append(
                EventPosition(
                    type=event.message_type,
                    aggregate_version=state.version,
                    partition=0,
                    offset=self.offset,
                )
            )
        assert state is not None
        self.states[env.aggregate_id] = state
        return CommandOutcome(
            command_id=command_id,
            status="accepted",
            aggregate_id=env.aggregate_id,
            version=state.version,
            events=positions,
        )


@pytest.fixture
def client() -> InMemoryCommandClient:
    return InMemoryCommandClient(DomainProcessor())


@pytest.fixture
def app(client: InMemoryCommandClient) -> FastAPI:
    return command_app(client)


REGISTER = {"name": "Ada", "email": "ada@example.org"}


@route("command", "POST /authors")
@route("command", "POST /posts")
@route("command", "PATCH /posts/{post_id}")
@route("command", "POST /posts/{post_id}/submit")
async def test_a_wrong_owner_is_403_not_owner_and_an_editor_may(
    http: HTTPClient, app: FastAPI, client: InMemoryCommandClient
) -> None:
    """Ada registers (her profile is her subject) and creates a post; bob's edit, submit and
    create-as-ada are 403 `not_owner` problems; an editor's edit of ada's post is 200."""
    api = http(as_caller(app, ADA))
    r = await api.post("/authors", json=REGISTER)
    assert r.status_code == 201 and r.json()["aggregate_id"] == "ada", r.text
    r = await api.post("/posts", json={"post_id": "p1", "author_id": "ada", "title": "Mine"})
    assert r.status_code == 201, r.text

    as_caller(app, BOB)
    body = assert_problem(await api.patch("/posts/p1", json={"title": "Bob's"}), 403, "not_owner")
    assert "bob" in body["detail"] and body["details"] == {"actor": "bob"}
    assert_problem(await api.post("/posts/p1/submit"), 403, "not_owner")
    r = await api.post("/posts", json={"post_id": "p2", "author_id": "ada", "title": "Fake"})
    assert_problem(r, 403, "not_owner")

    as_caller(app, EDITOR)
    r = await api.patch("/posts/p1", json={"title": "Edited by the editor"})
    assert r.status_code == 200, r.text


@route("command", "POST /posts")
@route("command", "PATCH /authors/{author_id}")
async def test_the_actor_is_the_callers_subject_and_roles_never_the_body(
    http: HTTPClient, app: FastAPI, client: InMemoryCommandClient
) -> None:
    """The command record names the caller's subject and sorted roles as its actor; a body
    naming an actor is refused (422) and sends nothing; renaming another's profile is
    403 `not_owner`."""
    api = http(as_caller(app, Principal("ada", frozenset({"reviewer", "author"}), True)))
    await api.post("/authors", json=REGISTER)
    await api.post("/posts", json={"post_id": "p1", "author_id": "ada", "title": "Mine"})
    records = sent(client)
    assert [(r["actor"], r["actor_roles"]) for r in records] == [
        ("ada", ["author", "reviewer"]),
        ("ada", ["author", "reviewer"]),
    ]
    r = await api.post("/posts", json={"author_id": "ada", "title": "T", "actor": "bob"})
    assert r.status_code == 422 and len(client.sent) == 2, r.text

    as_caller(app, BOB)
    assert_problem(await api.patch("/authors/ada", json={"name": "Not Ada"}), 403, "not_owner")


@route("command", "POST /posts")
async def test_with_authentication_off_commands_name_no_actor_and_nothing_is_owned(
    http: HTTPClient, app: FastAPI, client: InMemoryCommandClient
) -> None:
    """LOCAL_DEMO (authentication off) has no subject: the record names no actor, and a post
    may be created for any author, as before ownership existed."""
    api = http(as_caller(app, LOCAL_DEMO))
    await api.post("/authors", json=REGISTER | {"author_id": "ada"})
    r = await api.post("/posts", json={"author_id": "ada", "title": "T"})
    assert r.status_code == 201, r.text
    assert all("actor" not in json.loads(m.value) for m in client.sent)


@route("command", "POST /authors")
async def test_an_idempotency_key_names_one_command_per_actor(
    http: HTTPClient, app: FastAPI, client: InMemoryCommandClient
) -> None:
    """The same Idempotency-Key from two callers names two commands (neither gets the other's
    outcome back); from one caller, a retry names the same command."""
    api = http(as_caller(app, ADA))
    key = {"Idempotency-Key": "same"}
    first = await api.post("/authors", json=REGISTER, headers=key)
    retry = await api.post("/authors", json=REGISTER, headers=key)
    as_caller(app, BOB)
    bobs = await api.post("/authors", json=REGISTER | {"email": "bob@example.org"}, headers=key)
    assert first.json()["command_id"] == retry.json()["command_id"]
    assert bobs.status_code == 201 and bobs.json()["aggregate_id"] == "bob", bobs.text
    assert bobs.json()["command_id"] != first.json()["command_id"]
