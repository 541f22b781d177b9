"""Ownership in the blog domain, given-when-then: who may create, edit and submit which posts
and register or rename which author profiles, when a command names its actor."""

from __future__ import annotations

import pytest

from command_service.domain import Actor, AggregateState, Rejection, decide
from command_service.domain import actor as domain_actor
from shared import principal
from shared.messages.base import Command, Event
from shared.messages.blog import (
    ApprovePost,
    ArchivePost,
    CreatePost,
    EditPost,
    PostSubmittedForReview,
    PublishPost,
    RegisterAuthor,
    RenameAuthor,
    SubmitPostForReview,
)
from tests.unit.test_domain import AUTHOR, CREATED, POST, REGISTERED, given

ADA = Actor(AUTHOR, frozenset({"author"}))  # the author of POST
BOB = Actor("author-2", frozenset({"author"}))
EDITOR = Actor("ed", frozenset({"editor"}))
ADMIN = Actor("root", frozenset({"admin"}))
REVIEWER = Actor("rev", frozenset({"reviewer"}))


def when(
    command: Command,
    state: AggregateState | None,
    actor: Actor | None,
    *,
    aggregate_id: str = POST,
    expected_version: int | None = None,
) -> list[Event] | Rejection:
    return decide(
        command,
        state,
        aggregate_id=aggregate_id,
        expected_version=expected_version,
        author_exists=True,
        actor=actor,
    )


def not_owner(decision: list[Event] | Rejection, actor: Actor) -> Rejection:
    assert isinstance(decision, Rejection), f"expected not_owner, got {decision}"
    assert decision.code == "not_owner"
    assert actor.subject in decision.message and len(decision.message) > 40  # a sentence
    assert decision.details == {"actor": actor.subject}
    return decision


def accepted(decision: list[Event] | Rejection) -> list[Event]:
    assert isinstance(decision, list), f"expected events, got {decision}"
    return decision


def test_the_domain_role_names_are_the_principals() -> None:
    """The domain's editor and admin are the roles the authentication layer hands out."""
    assert domain_actor.EDITOR == principal.EDITOR
    assert domain_actor.ADMIN == principal.ADMIN


def test_an_author_creates_a_post_as_itself() -> None:
    """Given no post, when ada creates one as ada, then PostCreated."""
    accepted(when(CreatePost(author_id=AUTHOR, title="T"), None, ADA))


def test_an_author_creating_a_post_as_someone_else_is_rejected_with_not_owner() -> None:
    """Given no post, when bob creates one as ada, then not_owner (nothing appended)."""
    not_owner(when(CreatePost(author_id=AUTHOR, title="T"), None, BOB), BOB)


@pytest.mark.parametrize("actor", [EDITOR, ADMIN], ids=["editor", "admin"])
def test_editors_and_admins_create_posts_as_anyone(actor: Actor) -> None:
    """Given no post, when an editor or admin creates one as ada, then PostCreated."""
    accepted(when(CreatePost(author_id=AUTHOR, title="T"), None, actor))


@pytest.mark.parametrize(
    "command", [EditPost(title="New"), SubmitPostForReview()], ids=["edit", "submit"]
)
def test_an_author_edits_and_submits_its_own_post(command: Command) -> None:
    """Given ada's draft, when ada edits or submits it, then the event."""
    accepted(when(command, given(CREATED), ADA))


@pytest.mark.parametrize(
    "command", [EditPost(title="New"), SubmitPostForReview()], ids=["edit", "submit"]
)
@pytest.mark.parametrize("actor", [BOB, REVIEWER], ids=["other-author", "reviewer"])
def test_editing_or_submitting_another_authors_post_is_rejected_with_not_owner(
    command: Command, actor: Actor
) -> None:
    """Given ada's draft, when another author (or a reviewer) edits or submits it, then
    not_owner."""
    not_owner(when(command, given(CREATED), actor), actor)


@pytest.mark.parametrize(
    "command", [EditPost(title="New"), SubmitPostForReview()], ids=["edit", "submit"]
)
@pytest.mark.parametrize("actor", [EDITOR, ADMIN], ids=["editor", "admin"])
def test_editors_and_admins_edit_and_submit_any_post(command: Command, actor: Actor) -> None:
    """Given ada's draft, when an editor or admin edits or submits it, then the event."""
    accepted(when(command, given(CREATED), actor))


def test_not_owner_comes_before_the_version_and_the_state() -> None:
    """Given ada's post in review, when bob edits it with a stale version, then not_owner: a
    non-owner learns neither the version nor the status."""
    state = given(CREATED, PostSubmittedForReview())
    not_owner(when(EditPost(title="X"), state, BOB, expected_version=7), BOB)


def test_without_an_actor_no_ownership_is_checked() -> None:
    """Given ada's draft, when a trusted producer (no actor) edits it, then PostEdited."""
    accepted(when(EditPost(title="New"), given(CREATED), None))


@pytest.mark.parametrize(
    ("command", "events"),
    [
        (ApprovePost(), (CREATED, PostSubmittedForReview())),
        (PublishPost(), None),
        (ArchivePost(), (CREATED,)),
    ],
    ids=["approve", "publish", "archive"],
)
def test_review_publication_and_archive_are_not_a_matter_of_ownership(
    command: Command, events: tuple[Event, ...] | None
) -> None:
    """Given a post of ada's, when a reviewer or editor (not its owner) approves, publishes or
    archives it, then no not_owner (those are checked by role where they are asked for)."""
    state = given(*events) if events else None
    decision = when(command, state, REVIEWER if isinstance(command, ApprovePost) else EDITOR)
    assert not (isinstance(decision, Rejection) and decision.code == "not_owner"), decision


def test_an_author_registers_and_renames_only_its_own_profile() -> None:
    """Given no profile, when ada registers `author-1` (her subject), then AuthorRegistered;
    when bob registers or renames `author-1`, then not_owner."""
    register = RegisterAuthor(name="Ada", email="ada@example.org")
    accepted(when(register, None, ADA, aggregate_id=AUTHOR))
    not_owner(when(register, None, BOB, aggregate_id=AUTHOR), BOB)
    registered = given(REGISTERED, aggregate_id=AUTHOR)
    accepted(when(RenameAuthor(name="Ada L."), registered, ADA, aggregate_id=AUTHOR))
    not_owner(when(RenameAuthor(name="Bob"), registered, BOB, aggregate_id=AUTHOR), BOB)


def test_only_admins_act_on_another_authors_profile() -> None:
    """Given ada's profile, when an editor renames it, then not_owner; an admin, accepted."""
    registered = given(REGISTERED, aggregate_id=AUTHOR)
    rename = RenameAuthor(name="Ada L.")
    not_owner(when(rename, registered, EDITOR, aggregate_id=AUTHOR), EDITOR)
    accepted(when(rename, registered, ADMIN, aggregate_id=AUTHOR))
