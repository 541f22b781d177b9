"""Pure projections: `apply(view, event) -> view` for post and author views, and the folds.

Views are plain dicts (rows of the read store). The read store loads the current row of every
aggregate a batch touches, folds the batch's events over them (`fold_batch`), and writes the
rows back; the query service folds an aggregate's stored events for time travel (`fold`). The
events come out of the read pipeline (`shared/readmodel/pipeline.py`), readable and upcast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, Protocol

from shared.messages.base import Event, EventEnvelope
from shared.messages.blog import (
    AuthorRegistered,
    AuthorRenamed,
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
    ReviewerAssigned,
    ReviewReminderSent,
    SubjectErased,
)

View = dict[str, Any]
Apply = Callable[[View | None, EventEnvelope, Event], View]


class Readable(Protocol):
    """A readable event, as the read pipeline yields it (`pipeline.IndexedEvent`)."""

    @property
    def envelope(self) -> EventEnvelope: ...

    @property
    def payload(self) -> Event: ...


_STATUS = {
    PostSubmittedForReview: "in_review",
    PostApproved: "approved",
    PostRejected: "draft",
    PostPublished: "published",
    PostUnpublished: "unpublished",
    PostArchived: "archived",
}

# Events of the review and scheduling workflows: they move the version, not the status (the
# details are in the event stream of the post, GET /posts/{id}/events).
_ANNOTATIONS = (
    ReviewerAssigned,
    ReviewReminderSent,
    PublicationScheduled,
    PublicationScheduleCancelled,
)

POST_EVENTS = (PostCreated, PostEdited, *_ANNOTATIONS, *_STATUS)
AUTHOR_EVENTS = (AuthorRegistered, AuthorRenamed, SubjectErased)


def apply_post(view: View | None, envelope: EventEnvelope, event: Event) -> View:
    """The post view after `event`. Raises ValueError for an event that does not fit."""
    at: datetime = envelope.occurred_at
    if isinstance(event, PostCreated):
        return {
            "post_id": envelope.aggregate_id,
            "author_id": event.author_id,
            "title": event.title,
            "body": event.body,
            "tags": list(event.tags),
            "status": "draft",
            "version": envelope.aggregate_version,
            "created_at": at,
            "updated_at": at,
            "published_at": None,
            "last_rejection": None,
        }
    if view is None:
        raise ValueError(f"{event.message_type} before PostCreated for {envelope.aggregate_id}")
    new = dict(view, version=envelope.aggregate_version, updated_at=at)
    if isinstance(event, PostEdited):
        for name in ("title", "body", "tags"):
            value = getattr(event, name)
            if value is not None:
                new[name] = list(value) if name == "tags" else value
        return new
    if isinstance(event, _ANNOTATIONS):
        return new
    status = _STATUS.get(type(event))
    if status is None:
        raise ValueError(f"{event.message_type} is not a post event")
    new["status"] = status
    if isinstance(event, PostPublished):
        new["published_at"] = at
    if isinstance(event, PostRejected):
        new["last_rejection"] = event.reason
    return new


def apply_author(view: View | None, envelope: EventEnvelope, event: Event) -> View:
    at = envelope.occurred_at
    if isinstance(event, AuthorRegistered):
        return {
            "author_id": envelope.aggregate_id,
            "name": event.name,
            "email": event.email,
            "version": envelope.aggregate_version,
            "registered_at": at,
            "erased_at": None,
        }
    if view is None or not isinstance(event, AuthorRenamed | SubjectErased):
        raise ValueError(f"{event.message_type} does not apply to author {envelope.aggregate_id}")
    if isinstance(event, SubjectErased):
        # redacted: the sealed values are unreadable anyway once the key is gone; the view
        # drops them and says since when
        return dict(view, name="", email="", erased_at=at, version=envelope.aggregate_version)
    return dict(view, name=event.name, version=envelope.aggregate_version)


_KIND: dict[type, str | None] = {}  # event class -> "post", "author" or None


def _kind(event: Event) -> str | None:
    # by class, looked up once: isinstance against these tuples goes through ABCMeta (pydantic
    # models) on every call, 2 % of the projector's time for the two tests of every event
    cls = type(event)
    kind = _KIND.get(cls, "")
    if kind == "":
        kind = (
            "post"
            if issubclass(cls, POST_EVENTS)
            else "author"
            if issubclass(cls, AUTHOR_EVENTS)
            else None
        )
        _KIND[cls] = kind
    return kind


def is_post_event(event: Event) -> bool:
    return _kind(event) == "post"


def is_author_event(event: Event) -> bool:
    return _kind(event) == "author"


def fold(events: Iterable[Readable], apply: Apply) -> View | None:
    """One aggregate's view folded from its events in version order; None when there are none,
    or when one does not fit `apply` (the id names an aggregate of another kind)."""
    view: View | None = None
    for event in events:
        try:
            view = apply(view, event.envelope, event.payload)
        except ValueError:
            return None
    return view


def fold_batch(
    posts: dict[str, View], authors: dict[str, View], events: Iterable[Readable]
) -> tuple[dict[str, View], dict[str, View]]:
    """The post and author views (by aggregate id) after a batch of events in log order, from
    the views before it. Events of neither kind leave both alone; an event that does not fit
    its view raises ValueError."""
    posts, authors = dict(posts), dict(authors)
    for e in events:
        agg = e.envelope.aggregate_id
        if is_post_event(e.payload):
            posts[agg] = apply_post(posts.get(agg), e.envelope, e.payload)
        elif is_author_event(e.payload):
            authors[agg] = apply_author(authors.get(agg), e.envelope, e.payload)
    return posts, authors
