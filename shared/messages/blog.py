"""The blog-publishing message contract: every command and every event, one class each.

Types here are structural (what a field is and hard upper bounds that protect consumers); the
business rules a person would expect (title length, tag count, life cycle) live in the domain of
the command service and answer with their own rejection codes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AwareDatetime, Field

from shared.messages.base import AGGREGATE_ID_PATTERN, COMMANDS, EVENTS, Command, Event
from shared.personal import PERSONAL

# Hard caps so that one record can never exhaust a consumer; the domain enforces tighter rules.
_TEXT_CAP = 1_000_000
Tag = Annotated[str, Field(min_length=1, max_length=100)]

#: `issued_by` of the commands the system issues itself (see Command.issuers); also their
#: `actor`: the system's services act as their own principals
WORKFLOW_ISSUER = "workflow-service"
ERASURE_ISSUER = "erasure"
#: the roles those principals act with: the workflow assigns reviewers, reminds, publishes on
#: schedule and unpublishes (compensation), an editor's work; the erasure is an admin's
WORKFLOW_ROLES = ("editor",)
ERASURE_ROLES = ("admin",)

# ---------------------------------------------------------------------------------------------
# Commands (imperative)


@COMMANDS.register
class RegisterAuthor(Command):
    """Register an author. `name` and `email` are personal data (x-personal): the events
    hold them sealed with the author's key, and erasing the author makes them unreadable."""

    name: str = Field(min_length=1, max_length=200, json_schema_extra=PERSONAL)
    email: str = Field(
        min_length=3,
        max_length=320,
        pattern=r"^[^@\s]+@[^@\s]+$",
        json_schema_extra=PERSONAL,
    )


@COMMANDS.register
class RenameAuthor(Command):
    """Change an author's display name (personal data)."""

    name: str = Field(min_length=1, max_length=200, json_schema_extra=PERSONAL)


@COMMANDS.register
class EraseSubject(Command):
    """Erase the personal data of a data subject (an author): sent by the erasure (`esctl
    erase`, `POST /subjects/{id}/erase`), which then deletes the subject's key. Accepted once
    per subject; from anyone else refused, since alone it would erase nothing."""

    issuers = frozenset({ERASURE_ISSUER})
    instead = (
        "erase a data subject with `esctl erase ID` or POST /subjects/{id}/erase on the command "
        "service: they delete its key, then send this command"
    )

    reason: str | None = Field(default=None, max_length=2000)


@COMMANDS.register
class CreatePost(Command):
    """Create a draft post by an existing author."""

    author_id: str = Field(pattern=AGGREGATE_ID_PATTERN)
    title: str = Field(max_length=_TEXT_CAP)
    body: str = Field(default="", max_length=_TEXT_CAP)
    tags: list[Tag] = Field(default_factory=list, max_length=1000)


@COMMANDS.register
class EditPost(Command):
    """Change any of title, body, tags of a post that is not archived."""

    title: str | None = Field(default=None, max_length=_TEXT_CAP)
    body: str | None = Field(default=None, max_length=_TEXT_CAP)
    tags: list[Tag] | None = Field(default=None, max_length=1000)


@COMMANDS.register
class SubmitPostForReview(Command):
    """Move a draft into review; `publish_at` asks for publication at that time once approved
    (the editorial-review workflow schedules it)."""

    publish_at: AwareDatetime | None = None


@COMMANDS.register
class AssignReviewer(Command):
    """Give a post in review its reviewer (sent by the editorial-review workflow only)."""

    issuers = frozenset({WORKFLOW_ISSUER})
    instead = (
        "reviewers are assigned by the review workflow when a post is submitted; find it with "
        "`esctl workflows list --kind review` (its id is review:POST_ID:vN) and re-send the "
        "assignment with `esctl workflows retry review:POST_ID:vN`"
    )

    reviewer: str = Field(min_length=1, max_length=200)


@COMMANDS.register
class SendReviewReminder(Command):
    """Remind the reviewer of a post in review that its deadline passed (sent by the
    editorial-review workflow's timer only)."""

    issuers = frozenset({WORKFLOW_ISSUER})
    instead = (
        "reminders are sent by the review workflow when a review is overdue (its reminder "
        "timer: `esctl workflows show review:POST_ID:vN`, the id from "
        "`esctl workflows list --kind review`); send it now with "
        "`esctl workflows retry review:POST_ID:vN`"
    )

    reviewer: str | None = Field(default=None, max_length=200)


@COMMANDS.register
class ApprovePost(Command):
    """Approve a post in review."""

    reviewer: str | None = Field(default=None, max_length=200)


@COMMANDS.register
class RejectPost(Command):
    """Reject a post in review; it returns to draft with the reason."""

    reason: str = Field(min_length=1, max_length=2000)
    reviewer: str | None = Field(default=None, max_length=200)


@COMMANDS.register
class PublishPost(Command):
    """Publish an approved (or unpublished) post."""


@COMMANDS.register
class SchedulePublication(Command):
    """Publish an approved (or unpublished) post at `publish_at` (the scheduled-publication
    workflow sends PublishPost then). A new schedule replaces the previous one."""

    publish_at: AwareDatetime


@COMMANDS.register
class CancelScheduledPublication(Command):
    """Cancel the pending scheduled publication of a post."""


@COMMANDS.register
class UnpublishPost(Command):
    """Take a published post offline."""

    reason: str | None = Field(default=None, max_length=2000)


@COMMANDS.register
class ArchivePost(Command):
    """Archive a post. Final: nothing changes an archived post."""


# ---------------------------------------------------------------------------------------------
# Events (past tense)


@EVENTS.register
class AuthorRegistered(Event):
    """v2: `name` and `email` are sealed (`pii:v1:<subject>:<ciphertext>`, see shared.personal);
    v1 records hold them in plaintext and read as they are."""

    schema_version = 2
    name: str = Field(json_schema_extra=PERSONAL)
    email: str = Field(json_schema_extra=PERSONAL)


@EVENTS.register
class AuthorRenamed(Event):
    """v2: `name` is sealed, as in AuthorRegistered v2."""

    schema_version = 2
    name: str = Field(json_schema_extra=PERSONAL)


# v1 -> v2 keeps the values: a plaintext value stays readable as it is (a reader cannot seal it;
# the README's "Erasure" says what to do with plaintext written before sealing existed).
@EVENTS.upcaster("AuthorRegistered", 1)
@EVENTS.upcaster("AuthorRenamed", 1)
def _personal_v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
    return dict(payload)


@EVENTS.register
class SubjectErased(Event):
    """The subject's key was deleted: its personal fields in every earlier event, snapshot,
    read model and archive are unreadable from now on. `fields` names what was erased."""

    fields: list[str] = Field(default_factory=list)
    reason: str | None = None


@EVENTS.register
class PostCreated(Event):
    author_id: str
    title: str
    body: str
    tags: list[str] = Field(default_factory=list)


@EVENTS.register
class PostEdited(Event):
    title: str | None = None
    body: str | None = None
    tags: list[str] | None = None


@EVENTS.register
class PostSubmittedForReview(Event):
    """v2 added `publish_at` (v1 records read as None)."""

    schema_version = 2
    publish_at: datetime | None = None


@EVENTS.upcaster("PostSubmittedForReview", 1)
def _submitted_v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
    return {**payload, "publish_at": payload.get("publish_at")}


@EVENTS.register
class ReviewerAssigned(Event):
    reviewer: str


@EVENTS.register
class ReviewReminderSent(Event):
    reviewer: str | None = None


@EVENTS.register
class PostApproved(Event):
    """v2 renamed `reviewer` to `approved_by` (the command keeps `reviewer`)."""

    schema_version = 2
    approved_by: str | None = None


@EVENTS.upcaster("PostApproved", 1)
def _approved_v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
    rest = {k: v for k, v in payload.items() if k != "reviewer"}
    return {**rest, "approved_by": payload.get("reviewer")}


@EVENTS.register
class PostRejected(Event):
    reason: str
    reviewer: str | None = None


@EVENTS.register
class PostPublished(Event):
    pass


@EVENTS.register
class PublicationScheduled(Event):
    publish_at: datetime


@EVENTS.register
class PublicationScheduleCancelled(Event):
    pass


@EVENTS.register
class PostUnpublished(Event):
    reason: str | None = None


@EVENTS.register
class PostArchived(Event):
    pass


__all__ = [
    "ApprovePost",
    "ArchivePost",
    "AssignReviewer",
    "AuthorRegistered",
    "AuthorRenamed",
    "CancelScheduledPublication",
    "CreatePost",
    "EditPost",
    "EraseSubject",
    "PostApproved",
    "PostArchived",
    "PostCreated",
    "PostEdited",
    "PostPublished",
    "PostRejected",
    "PostSubmittedForReview",
    "PostUnpublished",
    "PublicationScheduleCancelled",
    "PublicationScheduled",
    "PublishPost",
    "RegisterAuthor",
    "RejectPost",
    "RenameAuthor",
    "ReviewReminderSent",
    "ReviewerAssigned",
    "SchedulePublication",
    "SendReviewReminder",
    "SubjectErased",
    "SubmitPostForReview",
    "UnpublishPost",
]
