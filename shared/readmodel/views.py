"""Pure projections: `apply(view, event) -> view` for post and author views.

Views are plain dicts (rows of the read store). The projector loads the current row of every
aggregate a batch touches, folds the batch's events over them with these functions, and writes
the rows back; the query service folds an aggregate's indexed events for time travel.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

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


def is_post_event(event: Event) -> bool:
    return isinstance(event, POST_EVENTS)


def is_author_event(event: Event) -> bool:
    return isinstance(event, AUTHOR_EVENTS)
