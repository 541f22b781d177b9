"""decide and evolve for authors and posts.

Life cycle of a post:

    draft --submit--> in_review --approve--> approved --publish--> published <--> unpublished
      ^                   |
      +------reject-------+                  (any state but archived) --archive--> archived (final)

Workflow annotations (no status change): ReviewerAssigned and ReviewReminderSent while in review;
PublicationScheduled (approved or unpublished) until published or cancelled.

Edits are allowed in draft, published and unpublished; a post under review (in_review, approved)
is locked so that what was approved is what gets published.

Ownership (when the command names an actor, see `domain/actor.py`): an author creates posts
only as itself, edits and submits only its own posts, registers and renames only its own
profile; editors and admins act on any post, admins on any profile. Otherwise `not_owner`.
The other post commands (review, publication, archive) are a matter of role, checked where
the command is asked for (the HTTP routes), not of ownership.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from command_service.domain.actor import Actor
from command_service.domain.rejections import Rejection
from command_service.domain.state import AggregateState, AuthorState, PostState, PostStatus
from shared.messages.base import Command, Event
from shared.messages.blog import (
    ApprovePost,
    ArchivePost,
    AssignReviewer,
    AuthorRegistered,
    AuthorRenamed,
    CancelScheduledPublication,
    CreatePost,
    EditPost,
    EraseSubject,
    PostApproved,
    PostArchived,
    PostCreated,
    PostEdited,
    PostPublished,
    PostRejected,
    PostSubmittedForReview,
    PostUnpublished,
    PublicationScheduleCancelled,
    PublicationScheduled,
    PublishPost,
    RegisterAuthor,
    RejectPost,
    RenameAuthor,
    ReviewerAssigned,
    ReviewReminderSent,
    SchedulePublication,
    SendReviewReminder,
    SubjectErased,
    SubmitPostForReview,
    UnpublishPost,
)

TITLE_MAX = 200
BODY_MAX_BYTES = 100 * 1024
TAGS_MAX = 10
TAG_MAX = 50

Decision = list[Event] | Rejection

_AUTHOR_COMMANDS = (RegisterAuthor, RenameAuthor, EraseSubject)


def decide(
    command: Command,
    state: AggregateState | None,
    *,
    aggregate_id: str,
    expected_version: int | None = None,
    author_exists: bool = False,
    actor: Actor | None = None,
) -> Decision:
    """Decide on `command` given the current `state` of its aggregate (None: never seen).

    `author_exists` is the shell's answer for `CreatePost.author_id` (ignored otherwise);
    `actor` who asks (None: a trusted producer, no ownership checked).
    """
    if actor is not None:
        refused = _not_owner(command, state, aggregate_id, actor)
        if refused is not None:
            return refused
    current = state.version if state is not None else 0
    if expected_version is not None and expected_version != current:
        return Rejection(
            "version_conflict",
            f"{aggregate_id} is at version {current}, not at the expected {expected_version}; "
            "reload it and try again",
            {"current_version": current, "expected_version": expected_version},
        )
    is_author_command = isinstance(command, _AUTHOR_COMMANDS)
    if state is not None and isinstance(state, AuthorState) != is_author_command:
        kind = "an author" if isinstance(state, AuthorState) else "a post"
        return Rejection(
            "wrong_aggregate_type",
            f"{aggregate_id} is {kind}; {command.message_type} does not apply to it",
        )
    if is_author_command:
        return _decide_author(
            command, state if isinstance(state, AuthorState) else None, aggregate_id
        )
    post = state if isinstance(state, PostState) else None
    return _decide_post(command, post, aggregate_id, author_exists)


#: the post commands an author may give only for its own posts (the rest are by role)
_OWNER_POST_COMMANDS = (EditPost, SubmitPostForReview)


def _not_owner(
    command: Command, state: AggregateState | None, aggregate_id: str, actor: Actor
) -> Rejection | None:
    """`not_owner` when `actor` asks for what only the owner (or an editor/admin) may do. Checked
    first: who may not act on an aggregate learns nothing of its version or content."""
    if isinstance(command, RegisterAuthor | RenameAuthor):
        if actor.owns_or_may_act_on_author(aggregate_id):
            return None
        verb = "register" if isinstance(command, RegisterAuthor) else "rename"
        why = (
            f"{actor.subject} may not {verb} the author profile {aggregate_id}: an author "
            "registers and renames only its own profile (the one with its id); an admin any"
        )
    elif isinstance(command, CreatePost):
        if actor.owns_or_may_act_on_post(command.author_id):
            return None
        why = (
            f"{actor.subject} may not create a post as author {command.author_id}: an author "
            "creates posts only as itself; an editor or admin as anyone"
        )
    elif isinstance(command, _OWNER_POST_COMMANDS) and isinstance(state, PostState):
        if actor.owns_or_may_act_on_post(state.author_id):
            return None
        verb = "edit" if isinstance(command, EditPost) else "submit"
        why = (
            f"{actor.subject} may not {verb} post {aggregate_id}: only its author, an editor "
            "or an admin may"
        )
    else:
        return None
    return Rejection("not_owner", why, {"actor": actor.subject})


def _decide_author(command: Command, state: AuthorState | None, aggregate_id: str) -> Decision:
    if isinstance(command, RegisterAuthor):
        if state is not None:
            return Rejection(
                "author_already_registered", f"author {aggregate_id} is already registered"
            )
        return [AuthorRegistered(name=command.name, email=command.email)]
    if state is None:
        return Rejection("author_not_found", f"author {aggregate_id} does not exist")
    if state.erased:
        if isinstance(command, EraseSubject):
            return Rejection("already_erased", f"author {aggregate_id} was erased before")
        return Rejection(
            "subject_erased",
            f"author {aggregate_id} was erased; no personal data is accepted for it",
        )
    if isinstance(command, RenameAuthor):
        # the shell gives decide the opened (plaintext) state of an author
        if command.name == state.name:
            return Rejection("nothing_to_change", f"author {aggregate_id} already has that name")
        return [AuthorRenamed(name=command.name)]
    if isinstance(command, EraseSubject):
        return [SubjectErased(fields=["name", "email"], reason=command.reason)]
    raise TypeError(f"not an author command: {command.message_type}")  # pragma: no cover


def _check_title(title: str) -> Rejection | None:
    if not title.strip():
        return Rejection("title_required", "a post needs a title")
    if len(title) > TITLE_MAX:
        return Rejection(
            "title_too_long",
            f"the title has {len(title)} characters; at most {TITLE_MAX} are allowed",
            {"length": len(title), "max": TITLE_MAX},
        )
    return None


def _check_body(body: str) -> Rejection | None:
    size = len(body.encode())
    if size > BODY_MAX_BYTES:
        return Rejection(
            "body_too_large",
            f"the body is {size} bytes; at most {BODY_MAX_BYTES} (100 KB) are allowed",
            {"bytes": size, "max": BODY_MAX_BYTES},
        )
    return None


def _check_tags(tags: list[str]) -> Rejection | None:
    if len(tags) > TAGS_MAX:
        return Rejection(
            "too_many_tags",
            f"{len(tags)} tags given; a post has at most {TAGS_MAX}",
            {"count": len(tags), "max": TAGS_MAX},
        )
    for tag in tags:
        if not tag.strip() or len(tag) > TAG_MAX:
            return Rejection(
                "invalid_tag", f"tag {tag!r} must be 1-{TAG_MAX} characters", {"tag": tag}
            )
    if len({t.lower() for t in tags}) != len(tags):
        return Rejection("invalid_tag", "tags must be unique (case-insensitive)")
    return None


def _first(*checks: Rejection | None) -> Rejection | None:
    return next((c for c in checks if c is not None), None)


def content_rejection(
    *,
    title: str | None = None,
    body: str | None = None,
    tags: list[str] | None = None,
    edit: bool = False,
) -> Rejection | None:
    """The rules on a post's content whatever its state (an edit must change something), on the
    values as given. The HTTP edge checks a request with them as it was sent, before the command
    (which strips whitespace) is built."""
    if edit and title is None and body is None and tags is None:
        return Rejection("nothing_to_change", "an edit needs a title, body or tags")
    return _first(
        _check_title(title) if title is not None else None,
        _check_body(body) if body is not None else None,
        _check_tags(tags) if tags is not None else None,
    )


def _decide_post(
    command: Command, post: PostState | None, aggregate_id: str, author_exists: bool
) -> Decision:
    if isinstance(command, CreatePost):
        if post is not None:
            return Rejection("post_already_exists", f"post {aggregate_id} already exists")
        invalid = content_rejection(title=command.title, body=command.body, tags=command.tags)
        if invalid:
            return invalid
        if not author_exists:
            return Rejection(
                "author_not_found",
                f"author {command.author_id} does not exist (or its registration was not "
                "yet committed)",
                {"author_id": command.author_id},
            )
        return [
            PostCreated(
                author_id=command.author_id,
                title=command.title.strip(),
                body=command.body,
                tags=command.tags,
            )
        ]
    if post is None:
        return Rejection("post_not_found", f"post {aggregate_id} does not exist")
    if post.status is PostStatus.ARCHIVED:
        return Rejection(
            "post_archived", f"post {aggregate_id} is archived; archived posts cannot change"
        )
    return _transition(command, post, aggregate_id)


def _wrong_state(code: str, post: PostState, action: str, needs: str) -> Rejection:
    return Rejection(
        code,
        f"cannot {action} post {post.id}: it is {post.status.value}, it must be {needs}",
        {"status": post.status.value},
    )


def _transition(command: Command, post: PostState, aggregate_id: str) -> Decision:
    s = post.status
    if isinstance(command, EditPost):
        if s in (PostStatus.IN_REVIEW, PostStatus.APPROVED):
            return _wrong_state(
                "post_in_review", post, "edit", "draft, published or unpublished (not under review)"
            )
        invalid = content_rejection(
            title=command.title, body=command.body, tags=command.tags, edit=True
        )
        if invalid:
            return invalid
        title = command.title.strip() if command.title is not None else None
        if (
            (title is None or title == post.title)
            and (command.body is None or command.body == post.body)
            and (command.tags is None or tuple(command.tags) == post.tags)
        ):
            return Rejection("nothing_to_change", f"post {aggregate_id} already has that content")
        return [PostEdited(title=title, body=command.body, tags=command.tags)]
    if isinstance(command, SubmitPostForReview):
        if s is not PostStatus.DRAFT:
            return _wrong_state("not_a_draft", post, "submit", "a draft")
        return [PostSubmittedForReview(publish_at=command.publish_at)]
    if isinstance(command, AssignReviewer):
        if s is not PostStatus.IN_REVIEW:
            return _wrong_state("not_in_review", post, "assign a reviewer to", "in review")
        if command.reviewer == post.reviewer:
            return Rejection("nothing_to_change", f"{command.reviewer} already reviews {post.id}")
        return [ReviewerAssigned(reviewer=command.reviewer)]
    if isinstance(command, SendReviewReminder):
        if s is not PostStatus.IN_REVIEW:
            return _wrong_state("not_in_review", post, "remind the reviewer of", "in review")
        return [ReviewReminderSent(reviewer=command.reviewer or post.reviewer)]
    if isinstance(command, SchedulePublication):
        if s not in (PostStatus.APPROVED, PostStatus.UNPUBLISHED):
            return _wrong_state("not_approved", post, "schedule", "approved or unpublished")
        return [PublicationScheduled(publish_at=command.publish_at)]
    if isinstance(command, CancelScheduledPublication):
        if post.scheduled_publish_at is None:
            return Rejection(
                "no_scheduled_publication",
                f"post {aggregate_id} has no scheduled publication to cancel",
            )
        return [PublicationScheduleCancelled()]
    if isinstance(command, ApprovePost):
        if s is not PostStatus.IN_REVIEW:
            return _wrong_state("not_in_review", post, "approve", "in review")
        return [PostApproved(approved_by=command.reviewer)]
    if isinstance(command, RejectPost):
        if s is not PostStatus.IN_REVIEW:
            return _wrong_state("not_in_review", post, "reject", "in review")
        return [PostRejected(reason=command.reason, reviewer=command.reviewer)]
    if isinstance(command, PublishPost):
        if s is PostStatus.PUBLISHED:
            return Rejection("already_published", f"post {aggregate_id} is already published")
        if s not in (PostStatus.APPROVED, PostStatus.UNPUBLISHED):
            return _wrong_state("not_approved", post, "publish", "approved or unpublished")
        return [PostPublished()]
    if isinstance(command, UnpublishPost):
        if s is not PostStatus.PUBLISHED:
            return _wrong_state("not_published", post, "unpublish", "published")
        return [PostUnpublished(reason=command.reason)]
    if isinstance(command, ArchivePost):
        return [PostArchived()]
    raise TypeError(f"not a post command: {command.message_type}")  # pragma: no cover


def evolve(
    state: AggregateState | None, event: Event, *, aggregate_id: str, at: datetime
) -> AggregateState:
    """Apply one event; `at` is the event's time. The version goes up by one per event."""
    if isinstance(event, AuthorRegistered):
        return AuthorState(aggregate_id, 1, event.name, event.email)
    if isinstance(event, PostCreated):
        return PostState(
            aggregate_id,
            1,
            event.author_id,
            event.title,
            event.body,
            tuple(event.tags),
            PostStatus.DRAFT,
            at,
            at,
        )
    if state is None:
        raise ValueError(f"{event.message_type} for {aggregate_id}, which has no creation event")
    version = state.version + 1
    if isinstance(state, AuthorState):
        if isinstance(event, AuthorRenamed):
            return replace(state, version=version, name=event.name)
        if isinstance(event, SubjectErased):
            return replace(state, version=version, name="", email="", erased=True)
        raise ValueError(f"{event.message_type} does not apply to author {aggregate_id}")
    return _evolve_post(state, event, version, at)


_STATUS_AFTER: dict[type[Event], PostStatus] = {
    PostSubmittedForReview: PostStatus.IN_REVIEW,
    PostApproved: PostStatus.APPROVED,
    PostRejected: PostStatus.DRAFT,
    PostPublished: PostStatus.PUBLISHED,
    PostUnpublished: PostStatus.UNPUBLISHED,
    PostArchived: PostStatus.ARCHIVED,
}


def _evolve_post(post: PostState, event: Event, version: int, at: datetime) -> PostState:
    if isinstance(event, ReviewerAssigned):
        return replace(post, version=version, updated_at=at, reviewer=event.reviewer)
    if isinstance(event, ReviewReminderSent):
        return replace(post, version=version, updated_at=at)
    if isinstance(event, PublicationScheduled):
        return replace(post, version=version, updated_at=at, scheduled_publish_at=event.publish_at)
    if isinstance(event, PublicationScheduleCancelled):
        return replace(post, version=version, updated_at=at, scheduled_publish_at=None)
    if isinstance(event, PostEdited):
        return replace(
            post,
            version=version,
            updated_at=at,
            title=event.title if event.title is not None else post.title,
            body=event.body if event.body is not None else post.body,
            tags=tuple(event.tags) if event.tags is not None else post.tags,
        )
    status = _STATUS_AFTER.get(type(event))
    if status is None:
        raise ValueError(f"{event.message_type} does not apply to post {post.id}")
    return replace(
        post,
        version=version,
        updated_at=at,
        status=status,
        published_at=at if status is PostStatus.PUBLISHED else post.published_at,
        last_rejection=event.reason if isinstance(event, PostRejected) else post.last_rejection,
        # A publication (or leaving the approved state) settles any pending schedule.
        scheduled_publish_at=None
        if status is not PostStatus.APPROVED
        else post.scheduled_publish_at,
    )


def replay(events: list[tuple[Event, datetime]], *, aggregate_id: str) -> AggregateState | None:
    """Fold a history (event, time) from nothing."""
    state: AggregateState | None = None
    for event, at in events:
        state = evolve(state, event, aggregate_id=aggregate_id, at=at)
    return state
