"""Sealing personal fields per subject (AES-GCM) and reading them back, or as erased."""

from __future__ import annotations

from shared.messages.blog import AuthorRegistered, AuthorRenamed, PostCreated, RegisterAuthor
from shared.personal import (
    PREFIX,
    new_key,
    open_tree,
    open_value,
    personal_fields,
    seal,
    seal_message,
    subject_of,
    subjects_in,
)


def test_fields_marked_personal_are_found_on_events_and_commands() -> None:
    assert personal_fields(AuthorRegistered) == ("name", "email")
    assert personal_fields(AuthorRenamed) == ("name",)
    assert personal_fields(RegisterAuthor) == ("name", "email")
    assert personal_fields(PostCreated) == ()
    schema = RegisterAuthor.model_json_schema()["properties"]
    assert schema["email"]["x-personal"] is True  # published for other teams' clients


def test_a_sealed_value_hides_the_plaintext_and_opens_with_the_subject_key() -> None:
    key = new_key()
    sealed = seal("Ada Lovelace", "ada", key)
    assert sealed.startswith(PREFIX + "ada:")
    assert "Ada" not in sealed and "Lovelace" not in sealed
    assert seal("Ada Lovelace", "ada", key) != sealed  # a fresh nonce each time
    assert subject_of(sealed) == "ada"
    assert open_value(sealed, {"ada": key}) == "Ada Lovelace"


def test_without_the_key_or_with_a_wrong_one_a_value_reads_as_erased() -> None:
    key = new_key()
    sealed = seal("ada@example.org", "ada", key)
    assert open_value(sealed, {}) is None
    assert open_value(sealed, {"ada": new_key()}) is None
    # bound to its subject: the same key filed under another subject does not open it
    moved = sealed.replace("pii:v1:ada:", "pii:v1:bob:")
    assert open_value(moved, {"bob": key}) is None
    assert open_value(PREFIX + "ada:not-base64!", {"ada": key}) is None  # damaged: no crash
    assert open_value("plain legacy text", {}) == "plain legacy text"


def test_subject_ids_with_colons_are_kept_whole() -> None:
    key = new_key()
    sealed = seal("x", "team:ada@org", key)
    assert subject_of(sealed) == "team:ada@org"
    assert open_value(sealed, {"team:ada@org": key}) == "x"


def test_sealing_a_message_touches_only_its_personal_fields() -> None:
    key = new_key()
    event = seal_message(AuthorRegistered(name="Ada", email="a@b.c"), "ada", key)
    assert open_value(event.name, {"ada": key}) == "Ada"
    assert open_value(event.email, {"ada": key}) == "a@b.c"
    assert seal_message(event, "ada", key) == event  # sealed values are not sealed twice
    post = PostCreated(author_id="ada", title="Hi", body="B")
    assert seal_message(post, "ada", key) is post


def test_trees_open_what_they_can_and_list_what_is_erased() -> None:
    ada, bob = new_key(), new_key()
    tree = {
        "a": {"name": seal("Ada", "ada", ada), "n": 1},
        "b": [seal("Bob", "bob", bob), "plain"],
    }
    assert subjects_in(tree) == {"ada", "bob"}
    opened, erased = open_tree(tree, {"bob": bob})
    assert opened == {"a": {"name": None, "n": 1}, "b": ["Bob", "plain"]}
    assert erased == ["a.name"]
