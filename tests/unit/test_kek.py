"""The key-encryption key: where it comes from (variable or file, never both, never missing),
what a wrapped key is bound to (its subject and its KEK id), and the local one made 0600."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from shared.kek import (
    KekError,
    KeyRing,
    KeyUnwrapError,
    decode_kek,
    encode_kek,
    ensure_kek_file,
    kek_id,
    new_kek,
)
from shared.personal import new_key
from shared.settings import KeyEncryptionSettings


def settings(**values: str) -> KeyEncryptionSettings:
    """These values and nothing from the environment (the test session sets a KEK there)."""
    secret = {"key_encryption_key", "key_encryption_key_previous"}
    return KeyEncryptionSettings.model_construct(
        **{k: SecretStr(v) if k in secret else v for k, v in values.items()}
    )


def test_a_wrapped_key_unwraps_with_its_subject_and_kek_only() -> None:
    """Given a key wrapped for ada, when it is unwrapped for ada it is the key; for bob, or
    labelled with another KEK id, it is refused."""
    ring, key = KeyRing(new_kek()), new_key()
    kid, wrapped = ring.wrap("ada", key)
    assert kid == ring.current_id and len(wrapped) == 61 and key not in wrapped
    assert ring.unwrap("ada", kid, wrapped) == key
    with pytest.raises(KeyUnwrapError, match="copied from another subject"):
        ring.unwrap("bob", kid, wrapped)
    other = KeyRing(new_kek(), (ring_kek := new_kek(),))
    with pytest.raises(KeyUnwrapError):  # a KEK it has, but not the one that wrapped it
        other.unwrap("ada", kek_id(ring_kek), wrapped)


def test_previous_keks_unwrap_and_the_current_one_wraps() -> None:
    old, new = new_kek(), new_kek()
    kid, wrapped = KeyRing(old).wrap("ada", b"k" * 32)
    ring = KeyRing(new, (old,))
    assert ring.ids == (kek_id(new), kek_id(old))
    assert ring.unwrap("ada", kid, wrapped) == b"k" * 32
    assert ring.wrap("ada", b"k" * 32)[0] == kek_id(new)


def test_a_kek_comes_from_the_variable_or_its_file(tmp_path: Path) -> None:
    kek, old = new_kek(), new_kek()
    file = tmp_path / "kek"
    file.write_text(encode_kek(kek) + "\n")
    assert KeyRing.from_settings(settings(key_encryption_key=encode_kek(kek))).ids == (kek_id(kek),)
    ring = KeyRing.from_settings(
        settings(key_encryption_key_file=str(file), key_encryption_key_previous=encode_kek(old))
    )
    assert ring.ids == (kek_id(kek), kek_id(old))


@pytest.mark.parametrize(
    ("values", "code", "words"),
    [
        ({}, "kek_missing", "no key-encryption key"),
        ({"key_encryption_key": "c2hvcnQ="}, "kek_invalid", "base64 of 32 random bytes"),
        ({"key_encryption_key": "not base64!"}, "kek_invalid", "KEY_ENCRYPTION_KEY is not"),
        (
            {"key_encryption_key": encode_kek(b"a" * 32), "key_encryption_key_file": "/x"},
            "kek_invalid",
            "not both",
        ),
        ({"key_encryption_key_file": "/nonexistent/kek"}, "kek_missing", "cannot read"),
        (
            {"key_encryption_key": f"{encode_kek(b'a' * 32)},{encode_kek(b'b' * 32)}"},
            "kek_invalid",
            "KEY_ENCRYPTION_KEY_PREVIOUS",
        ),
    ],
)
def test_a_missing_or_malformed_kek_is_refused_with_a_reason(
    values: dict[str, str], code: str, words: str
) -> None:
    with pytest.raises(KekError) as refused:
        KeyRing.from_settings(settings(**values))
    assert refused.value.code == code
    assert words in refused.value.message
    assert encode_kek(b"a" * 32) not in refused.value.message  # never the key itself


def test_the_local_kek_is_made_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "var" / "key-encryption-key"
    assert ensure_kek_file(path) is True
    assert path.stat().st_mode & 0o777 == 0o600
    first = path.read_text()
    assert len(decode_kek(first, "it")) == 32
    assert ensure_kek_file(path) is False
    assert path.read_text() == first  # never replaced: the keys under it would be lost
