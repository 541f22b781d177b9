"""Every rule and every rejection code of the blog domain, given-when-then, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from command_service.domain import (
    AggregateState,
    AuthorState,
    PostState,
    PostStatus,
    Rejection,
    decide,
    evolve,
)
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

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
POST = "post-1"
AUTHOR = "author-1"


def given(*events: Event, aggregate_id: str = POST) -> AggregateState | None:
    state: AggregateState | None = None
    for i, event in enumerate(events):
        state = evolve(state, event, aggregate_id=aggregate_id, at=T0 + timedelta(minutes=i))
    return state


def when(
    command: Command,
    state: AggregateState | None,
    *,
    aggregate_id: str = POST,
    expected_version: int | None = None,
    author_exists: bool = True,
) -> list[Event] | Rejection:
    return decide(
        command,
        state,
        aggregate_id=aggregate_id,
        expected_version=expected_version,
        author_exists=author_exists,
    )


def rejected(decision: list[Event] | Rejection, code: str) -> Rejection:
    assert isinstance(decision, Rejection), f"expected rejection {code}, got {decision}"
    assert decision.code == code
    assert len(decision.message) > 10  # a sentence, not a code
    return decision


CREATED = PostCreated(author_id=AUTHOR, title="Hello", body="Body", tags=["a"])
SUBMITTED = (CREATED, PostSubmittedForReview())
APPROVED = (*SUBMITTED, PostApproved(approved_by="rev"))
PUBLISHED = (*APPROVED, PostPublished())
UNPUBLISHED = (*PUBLISHED, PostUnpublished(reason="typo"))
ARCHIVED = (CREATED, PostArchived())
REGISTERED = AuthorRegistered(name="Ada", email="ada@example.org")


def create(**overrides: object) -> CreatePost:
    fields: dict[str, object] = {
        "author_id": AUTHOR,
        "title": "Hello",
        "body": "Body",
        "tags": ["a"],
    }
    return CreatePost.model_validate(fields | overrides)


# -- authors -----------------------------------------------------------------------------------


def test_registering_a_new_author_records_name_and_email() -> None:
    """Given no author, when RegisterAuthor, then AuthorRegistered with the personal data."""
    decision = when(RegisterAuthor(name="Ada", email="ada@example.org"), None, aggregate_id=AUTHOR)
    assert decision == [REGISTERED]


def test_registering_an_author_twice_is_rejected_with_author_already_registered() -> None:
    """Given a registered author, when RegisterAuthor again, then author_already_registered."""
    state = given(REGISTERED, aggregate_id=AUTHOR)
    rejected(
        when(RegisterAuthor(name="Ada", email="a@b.c"), state, aggregate_id=AUTHOR),
        "author_already_registered",
    )


def test_renaming_an_author_records_the_new_name_and_bumps_the_version() -> None:
    """Given an author, when RenameAuthor, then AuthorRenamed; the fold has the new name."""
    state = given(REGISTERED, aggregate_id=AUTHOR)
    decision = when(RenameAuthor(name="Ada L."), state, aggregate_id=AUTHOR)
    assert decision == [AuthorRenamed(name="Ada L.")]
    after = given(REGISTERED, AuthorRenamed(name="Ada L."), aggregate_id=AUTHOR)
    assert isinstance(after, AuthorState) and after.name == "Ada L." and after.version == 2


def test_renaming_a_missing_author_is_rejected_with_author_not_found() -> None:
    """Given no author, when RenameAuthor, then author_not_found."""
    rejected(when(RenameAuthor(name="X"), None, aggregate_id=AUTHOR), "author_not_found")


def test_renaming_to_the_same_name_is_rejected_with_nothing_to_change() -> None:
    """Given an author named Ada, when renamed to Ada, then nothing_to_change."""
    state = given(REGISTERED, aggregate_id=AUTHOR)
    rejected(when(RenameAuthor(name="Ada"), state, aggregate_id=AUTHOR), "nothing_to_change")


def test_erasing_an_author_appends_subject_erased_and_empties_the_state() -> None:
    """Given an author, when EraseSubject, then SubjectErased naming the erased fields; the
    fold keeps the author (its id and version) without name and email."""
    state = given(REGISTERED, aggregate_id=AUTHOR)
    decision = when(EraseSubject(reason="asked"), state, aggregate_id=AUTHOR)
    assert decision == [SubjectErased(fields=["name", "email"], reason="asked")]
    after = given(REGISTERED, *decision, aggregate_id=AUTHOR)
    assert isinstance(after, AuthorState)
    assert (after.name, after.email, after.erased, after.version) == ("", "", True, 2)


def test_an_erased_author_accepts_no_personal_data_and_is_erased_once() -> None:
    """Given an erased author: RenameAuthor -> subject_erased, EraseSubject -> already_erased,
    RegisterAuthor -> author_already_registered (its id is not free again)."""
    state = given(REGISTERED, SubjectErased(fields=["name", "email"]), aggregate_id=AUTHOR)
    rejected(when(RenameAuthor(name="Ada"), state, aggregate_id=AUTHOR), "subject_erased")
    rejected(when(EraseSubject(), state, aggregate_id=AUTHOR), "already_erased")
    again = RegisterAuthor(name="Ada", email="ada@example.org")
    rejected(when(again, state, aggregate_id=AUTHOR), "author_already_registered")
    rejected(when(EraseSubject(), None, aggregate_id=AUTHOR), "author_not_found")


def test_posts_of_an_erased_author_stay_possible() -> None:
    """Posts are not personal data: an erased author's id still names an author."""
    assert when(create(), None, author_exists=True) == [CREATED]


# -- creating posts ----------------------------------------------------------------------------


def test_creating_a_post_by_a_known_author_makes_a_draft_at_version_1() -> None:
    """Given no post and a known author, when CreatePost, then PostCreated; state is draft v1."""
    decision = when(create(title="  Hello  "), None)
    assert decision == [PostCreated(author_id=AUTHOR, title="Hello", body="Body", tags=["a"])]
    state = given(CREATED)
    assert isinstance(state, PostState)
    assert (state.status, state.version, state.created_at) == (PostStatus.DRAFT, 1, T0)


def test_creating_a_post_for_an_unknown_author_is_rejected_with_author_not_found() -> None:
    """Given the author does not exist, when CreatePost, then author_not_found."""
    decision = rejected(when(create(), None, author_exists=False), "author_not_found")
    assert decision.details == {"author_id": AUTHOR}


def test_creating_an_existing_post_is_rejected_with_post_already_exists() -> None:
    """Given a post, when CreatePost with its id, then post_already_exists."""
    rejected(when(create(), given(CREATED)), "post_already_exists")


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"title": ""}, "title_required"),
        ({"title": "   "}, "title_required"),
        ({"title": "x" * 201}, "title_too_long"),
        ({"body": "é" * 60_000}, "body_too_large"),  # 120,000 bytes in UTF-8
        ({"tags": [f"t{i}" for i in range(11)]}, "too_many_tags"),
        ({"tags": ["x" * 51]}, "invalid_tag"),
        ({"tags": ["Kafka", "kafka"]}, "invalid_tag"),
    ],
)
def test_invalid_post_content_is_rejected_with_a_specific_code(
    overrides: dict[str, object], code: str
) -> None:
    """Given nothing, when CreatePost with bad content, then a code naming the problem."""
    rejected(when(create(**overrides), None), code)


def test_limits_are_inclusive() -> None:
    """A 200-character title, a 100 KB body and 10 tags are accepted."""
    decision = when(
        create(title="x" * 200, body="b" * 100 * 1024, tags=[f"t{i}" for i in range(10)]), None
    )
    assert isinstance(decision, list)


# -- life cycle --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("history", "command", "event", "status"),
    [
        ((CREATED,), SubmitPostForReview(), PostSubmittedForReview(), PostStatus.IN_REVIEW),
        (SUBMITTED, ApprovePost(reviewer="r"), PostApproved(approved_by="r"), PostStatus.APPROVED),
        (
            SUBMITTED,
            RejectPost(reason="too short"),
            PostRejected(reason="too short"),
            PostStatus.DRAFT,
        ),
        (APPROVED, PublishPost(), PostPublished(), PostStatus.PUBLISHED),
        (PUBLISHED, UnpublishPost(reason="r"), PostUnpublished(reason="r"), PostStatus.UNPUBLISHED),
        (UNPUBLISHED, PublishPost(), PostPublished(), PostStatus.PUBLISHED),
        ((CREATED,), ArchivePost(), PostArchived(), PostStatus.ARCHIVED),
        (PUBLISHED, ArchivePost(), PostArchived(), PostStatus.ARCHIVED),
    ],
)
def test_allowed_transitions_emit_one_event_and_move_the_status(
    history: tuple[Event, ...], command: Command, event: Event, status: PostStatus
) -> None:
    """Given a post in a state, when an allowed command, then its event and the next state."""
    state = given(*history)
    assert when(command, state) == [event]
    after = given(*history, event)
    assert isinstance(after, PostState)
    assert after.status is status and after.version == len(history) + 1


def test_rejection_returns_the_post_to_draft_with_the_reason() -> None:
    """Given a rejected post, its state is draft and remembers why."""
    state = given(*SUBMITTED, PostRejected(reason="needs sources"))
    assert isinstance(state, PostState)
    assert state.status is PostStatus.DRAFT and state.last_rejection == "needs sources"


def test_publishing_sets_published_at_to_the_event_time() -> None:
    """The publication time is the event's time, passed in, not read from a clock."""
    state = given(*PUBLISHED)
    assert isinstance(state, PostState) and state.published_at == T0 + timedelta(minutes=3)


def test_publishing_a_missing_post_is_rejected_with_post_not_found() -> None:
    """Given no post, when PublishPost, then post_not_found."""
    rejected(when(PublishPost(), None), "post_not_found")


def test_publishing_twice_is_rejected_with_already_published() -> None:
    """Given a published post, when PublishPost, then already_published."""
    rejected(when(PublishPost(), given(*PUBLISHED)), "already_published")


@pytest.mark.parametrize("history", [(CREATED,), SUBMITTED])
def test_publishing_without_approval_is_rejected_with_not_approved(
    history: tuple[Event, ...],
) -> None:
    """Given a draft or a post in review, when PublishPost, then not_approved."""
    rejected(when(PublishPost(), given(*history)), "not_approved")


@pytest.mark.parametrize("history", [SUBMITTED, APPROVED, PUBLISHED])
def test_submitting_anything_but_a_draft_is_rejected_with_not_a_draft(
    history: tuple[Event, ...],
) -> None:
    """Given a post that is not a draft, when submitted, then not_a_draft."""
    rejected(when(SubmitPostForReview(), given(*history)), "not_a_draft")


@pytest.mark.parametrize("command", [ApprovePost(), RejectPost(reason="no")])
def test_approving_or_rejecting_outside_review_is_rejected_with_not_in_review(
    command: Command,
) -> None:
    """Given a draft, when approved or rejected, then not_in_review."""
    rejected(when(command, given(CREATED)), "not_in_review")


def test_unpublishing_an_unpublished_post_is_rejected_with_not_published() -> None:
    """Given an approved (never published) post, when unpublished, then not_published."""
    rejected(when(UnpublishPost(), given(*APPROVED)), "not_published")


# -- edits -------------------------------------------------------------------------------------


@pytest.mark.parametrize("history", [(CREATED,), PUBLISHED, UNPUBLISHED])
def test_editing_a_draft_or_published_post_records_only_the_given_fields(
    history: tuple[Event, ...],
) -> None:
    """Given an editable post, when EditPost(title), then PostEdited with just the title."""
    state = given(*history)
    assert when(EditPost(title="New"), state) == [PostEdited(title="New")]
    after = given(*history, PostEdited(title="New"))
    assert isinstance(after, PostState) and after.title == "New" and after.body == "Body"


@pytest.mark.parametrize("history", [SUBMITTED, APPROVED])
def test_editing_under_review_is_rejected_with_post_in_review(
    history: tuple[Event, ...],
) -> None:
    """Given a post in review or approved, when edited, then post_in_review."""
    rejected(when(EditPost(title="New"), given(*history)), "post_in_review")


def test_editing_nothing_or_the_same_content_is_rejected_with_nothing_to_change() -> None:
    """An edit without fields, or with the current values, changes nothing and is refused."""
    state = given(CREATED)
    rejected(when(EditPost(), state), "nothing_to_change")
    rejected(when(EditPost(title="Hello", tags=["a"]), state), "nothing_to_change")


def test_edits_follow_the_same_content_rules_as_creation() -> None:
    """Given a draft, when edited with a too-long title, then title_too_long."""
    rejected(when(EditPost(title="x" * 201), given(CREATED)), "title_too_long")


@pytest.mark.parametrize(
    "command",
    [
        EditPost(title="x"),
        PublishPost(),
        SubmitPostForReview(),
        ArchivePost(),
        UnpublishPost(),
        ApprovePost(),
    ],
)
def test_an_archived_post_cannot_change_post_archived(command: Command) -> None:
    """Given an archived post, when any command, then post_archived."""
    rejected(when(command, given(*ARCHIVED)), "post_archived")


# -- versions and aggregate types --------------------------------------------------------------


def test_a_stale_expected_version_is_rejected_with_version_conflict_and_the_current_version() -> (
    None
):
    """Given a post at version 3, when a command expects version 2, then version_conflict
    saying the current version is 3."""
    decision = rejected(
        when(PublishPost(), given(*APPROVED), expected_version=2), "version_conflict"
    )
    assert decision.details["current_version"] == 3


def test_the_right_expected_version_is_accepted() -> None:
    """Given a post at version 3, when a command expects 3, then it is decided normally."""
    assert when(PublishPost(), given(*APPROVED), expected_version=3) == [PostPublished()]


def test_expected_version_zero_means_must_not_exist() -> None:
    """expected_version=0 on an existing post is a conflict; on a new id it is accepted."""
    rejected(when(create(), given(CREATED), expected_version=0), "version_conflict")
    assert isinstance(when(create(), None, expected_version=0), list)


def test_a_post_command_on_an_author_is_rejected_with_wrong_aggregate_type() -> None:
    """Given an author id, when a post command targets it, then wrong_aggregate_type."""
    state = given(REGISTERED, aggregate_id=AUTHOR)
    rejected(when(PublishPost(), state, aggregate_id=AUTHOR), "wrong_aggregate_type")
    rejected(when(RenameAuthor(name="x"), given(CREATED)), "wrong_aggregate_type")


def test_events_for_a_missing_aggregate_cannot_be_folded() -> None:
    """The log is corrupt if an aggregate's first event is not its creation; evolve refuses."""
    with pytest.raises(ValueError, match="no creation event"):
        given(PostPublished())


# -- workflow commands (review and scheduling) ---------------------------------------------


def test_submitting_with_a_publication_time_keeps_it_in_the_event() -> None:
    """The requested publication time travels with the submission, for the review workflow."""
    when_ = T0 + timedelta(days=1)
    assert when(SubmitPostForReview(publish_at=when_), given(CREATED)) == [
        PostSubmittedForReview(publish_at=when_)
    ]


def test_a_reviewer_is_assigned_only_in_review_and_only_once_per_name() -> None:
    state = given(*SUBMITTED)
    assert when(AssignReviewer(reviewer="bob"), state) == [ReviewerAssigned(reviewer="bob")]
    assigned = given(*SUBMITTED, ReviewerAssigned(reviewer="bob"))
    assert isinstance(assigned, PostState) and assigned.reviewer == "bob"
    assert assigned.status is PostStatus.IN_REVIEW and assigned.version == 3
    rejected(when(AssignReviewer(reviewer="bob"), assigned), "nothing_to_change")
    rejected(when(AssignReviewer(reviewer="bob"), given(*APPROVED)), "not_in_review")


def test_a_reminder_names_the_assigned_reviewer_and_needs_a_post_in_review() -> None:
    assigned = given(*SUBMITTED, ReviewerAssigned(reviewer="bob"))
    assert when(SendReviewReminder(), assigned) == [ReviewReminderSent(reviewer="bob")]
    rejected(when(SendReviewReminder(), given(CREATED)), "not_in_review")


def test_scheduling_needs_an_approved_or_unpublished_post() -> None:
    at = T0 + timedelta(hours=5)
    assert when(SchedulePublication(publish_at=at), given(*APPROVED)) == [
        PublicationScheduled(publish_at=at)
    ]
    assert when(SchedulePublication(publish_at=at), given(*UNPUBLISHED)) == [
        PublicationScheduled(publish_at=at)
    ]
    rejected(when(SchedulePublication(publish_at=at), given(*SUBMITTED)), "not_approved")
    scheduled = given(*APPROVED, PublicationScheduled(publish_at=at))
    assert isinstance(scheduled, PostState) and scheduled.scheduled_publish_at == at


def test_cancelling_needs_a_pending_schedule_and_publication_settles_it() -> None:
    at = T0 + timedelta(hours=5)
    rejected(when(CancelScheduledPublication(), given(*APPROVED)), "no_scheduled_publication")
    scheduled = (*APPROVED, PublicationScheduled(publish_at=at))
    assert when(CancelScheduledPublication(), given(*scheduled)) == [PublicationScheduleCancelled()]
    cancelled = given(*scheduled, PublicationScheduleCancelled())
    assert isinstance(cancelled, PostState) and cancelled.scheduled_publish_at is None
    published = given(*scheduled, PostPublished())
    assert isinstance(published, PostState) and published.scheduled_publish_at is None
    rejected(when(CancelScheduledPublication(), published), "no_scheduled_publication")


def test_scheduling_needs_a_time_zone() -> None:
    """A naive time is refused at the contract: it would mean different instants to each reader."""
    with pytest.raises(ValueError, match="timezone"):
        SchedulePublication.model_validate({"publish_at": "2026-12-01T10:00:00"})
