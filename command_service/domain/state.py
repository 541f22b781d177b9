"""Aggregate states: immutable values rebuilt by folding events."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class PostStatus(StrEnum):
    DRAFT = "draft"
    IN_REVIEW = "in_review"
    APPROVED = "approved"
    PUBLISHED = "published"
    UNPUBLISHED = "unpublished"
    ARCHIVED = "archived"


@dataclass(frozen=True)
class AuthorState:
    id: str
    version: int
    name: str  # sealed (pii:v1:...) in the command service's books and snapshots
    email: str
    erased: bool = False  # SubjectErased: name and email are "" from then on


@dataclass(frozen=True)
class PostState:
    id: str
    version: int
    author_id: str
    title: str
    body: str
    tags: tuple[str, ...]
    status: PostStatus
    created_at: datetime
    updated_at: datetime
    published_at: datetime | None = None
    last_rejection: str | None = None
    reviewer: str | None = None
    scheduled_publish_at: datetime | None = None


AggregateState = AuthorState | PostState
