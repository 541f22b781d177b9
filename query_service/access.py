"""Who may read what of the read model: posts by status and author, personal fields by subject.

Pure rules over the caller (`shared.principal.Principal`, as the authentication left it) and
rows; `query_service/api.py` applies them in every route that returns posts or personal fields.

* A published post is public. Every other status (draft, in_review, approved, unpublished,
  archived) is readable only by the post's author, reviewers, editors and admins.
* A post's review (`last_rejection`, the reason of its last rejection) is for the same people
  and its author: null for anyone else, also on a published post.
* A post's event stream (its history: drafts, edits, reviews) is readable by the same people,
  whatever the post's status now.
* An author's email: only that author and admins.
* An author's name: public once the author has a published post; before, only the author,
  reviewers, editors and admins.

With authentication off every caller is `LOCAL_DEMO`, which holds every role: it reads all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from shared.personal import is_sealed, subject_of
from shared.principal import ADMIN, EDITOR, REVIEWER, Principal

PUBLIC_STATUS = "published"
#: the roles that read every post, whatever its status, and every author's name
READ_UNPUBLISHED = (REVIEWER, EDITOR, ADMIN)
#: personal fields with the name's rule; every other personal field has the email's
NAME_FIELDS = frozenset({"name"})


def reads_unpublished(caller: Principal) -> bool:
    return caller.has(*READ_UNPUBLISHED)


def is_self(caller: Principal, author_id: str) -> bool:
    return caller.subject is not None and caller.subject == author_id


def may_read_post(caller: Principal, post: Mapping[str, Any]) -> bool:
    """A published post: anyone; any other: its author, reviewers, editors, admins."""
    return (
        post["status"] == PUBLIC_STATUS
        or reads_unpublished(caller)
        or is_self(caller, post["author_id"])
    )


#: the fields of a post view that belong to its review
REVIEW_FIELDS = ("last_rejection",)


def post_for(caller: Principal, post: dict[str, Any]) -> dict[str, Any]:
    """A readable post as `caller` may see it: its review fields null unless the caller reads
    unpublished posts or wrote it."""
    if reads_unpublished(caller) or is_self(caller, post["author_id"]):
        return post
    return {**post, **dict.fromkeys(REVIEW_FIELDS)}


def may_read_history(caller: Principal, post: Mapping[str, Any]) -> bool:
    """A post's events (drafts and reviews included): its author, reviewers, editors, admins."""
    return reads_unpublished(caller) or is_self(caller, post["author_id"])


def may_read_email(caller: Principal, author_id: str) -> bool:
    """An author's email (and any personal field but the name): that author and admins."""
    return caller.has(ADMIN) or is_self(caller, author_id)


def may_read_name(caller: Principal, author_id: str, *, published: bool) -> bool:
    """An author's name: anyone once it has a published post; before, the author, reviewers,
    editors and admins."""
    return published or reads_unpublished(caller) or is_self(caller, author_id)


def field_rule(caller: Principal, published_authors: set[str]) -> Callable[[str, str], bool]:
    """(subject, field) -> whether `caller` may read that personal field of that subject."""

    def allowed(subject: str, field: str) -> bool:
        if field in NAME_FIELDS:
            return may_read_name(caller, subject, published=subject in published_authors)
        return may_read_email(caller, subject)

    return allowed


def withhold_sealed(tree: Any, allowed: Callable[[str, str], bool]) -> tuple[Any, list[str]]:
    """A copy of a JSON-like tree whose sealed values the caller may not read are None, and
    their paths. Done before the values are opened: what is withheld is never decrypted."""
    withheld: list[str] = []

    def walk(node: Any, path: str, field: str) -> Any:
        if isinstance(node, str) and is_sealed(node):
            subject = subject_of(node)
            if subject is None or not allowed(subject, field):
                withheld.append(path)
                return None
            return node
        if isinstance(node, dict):
            return {k: walk(v, f"{path}.{k}" if path else str(k), str(k)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, f"{path}[{i}]", field) for i, v in enumerate(node)]
        return node

    return walk(tree, "", ""), withheld


__all__ = [
    "field_rule",
    "is_self",
    "may_read_email",
    "may_read_history",
    "may_read_name",
    "may_read_post",
    "post_for",
    "reads_unpublished",
    "withhold_sealed",
]
