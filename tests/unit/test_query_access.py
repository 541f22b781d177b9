"""The query service's read rules as pure functions: who reads which post, name and email, and
how personal fields are withheld before anything is opened."""

from __future__ import annotations

import pytest

from query_service.access import (
    field_rule,
    may_read_email,
    may_read_history,
    may_read_name,
    may_read_post,
    post_for,
    withhold_sealed,
)
from shared.personal import new_key, seal
from shared.principal import ANONYMOUS, LOCAL_DEMO, Principal

ADA = Principal("ada", frozenset({"author"}), authenticated=True)
BOB = Principal("bob", frozenset({"author"}), authenticated=True)
OPERATOR = Principal("op", frozenset({"operator"}), authenticated=True)
REVIEWER = Principal("rev", frozenset({"reviewer"}), authenticated=True)
EDITOR = Principal("ed", frozenset({"editor"}), authenticated=True)
ADMIN = Principal("root", frozenset({"admin"}), authenticated=True)


@pytest.mark.parametrize("status", ["draft", "in_review", "approved", "unpublished", "archived"])
def test_only_published_posts_are_public(status: str) -> None:
    """A post in any status but published: its author, reviewers, editors, admins (and
    LOCAL_DEMO); not anonymous callers, other authors or operators."""
    post = {"status": status, "author_id": "ada"}
    readers = [c for c in (ANONYMOUS, ADA, BOB, OPERATOR, REVIEWER, EDITOR, ADMIN, LOCAL_DEMO)
               if may_read_post(c, post)]  # fmt: skip
    assert readers == [ADA, REVIEWER, EDITOR, ADMIN, LOCAL_DEMO]
    assert may_read_post(ANONYMOUS, {"status": "published", "author_id": "ada"})


def test_a_posts_history_and_review_are_for_its_author_and_the_readers_of_drafts() -> None:
    """Even on a published post, the history and the last rejection are withheld from others."""
    post = {"status": "published", "author_id": "ada", "last_rejection": "weak"}
    assert [c for c in (ANONYMOUS, ADA, BOB, REVIEWER) if may_read_history(c, post)] == [
        ADA,
        REVIEWER,
    ]
    assert post_for(BOB, post)["last_rejection"] is None
    assert post_for(ADA, post)["last_rejection"] == "weak"


def test_an_email_is_for_its_author_and_admins_a_name_once_published() -> None:
    """Email: self and admins; name: anyone once published, else self and the readers of
    drafts."""
    assert [c for c in (ANONYMOUS, ADA, BOB, EDITOR, ADMIN) if may_read_email(c, "ada")] == [
        ADA,
        ADMIN,
    ]
    assert may_read_name(ANONYMOUS, "ada", published=True)
    unpublished = [c for c in (ANONYMOUS, ADA, BOB, REVIEWER, OPERATOR)
                   if may_read_name(c, "ada", published=False)]  # fmt: skip
    assert unpublished == [ADA, REVIEWER]


def test_sealed_values_the_caller_may_not_read_are_withheld_before_opening() -> None:
    """A sealed email of another subject becomes None and is listed; the name of a published
    author stays sealed (to be opened); plain values are left alone."""
    key = new_key()
    payload = {
        "name": seal("Ada", "ada", key),
        "email": seal("ada@example.org", "ada", key),
        "reason": "plain",
    }
    out, withheld = withhold_sealed(payload, field_rule(BOB, published_authors={"ada"}))
    assert (out["name"], out["email"], out["reason"]) == (payload["name"], None, "plain")
    assert withheld == ["email"]
    out, withheld = withhold_sealed(payload, field_rule(ANONYMOUS, published_authors=set()))
    assert (out["name"], out["email"], withheld) == (None, None, ["name", "email"])
