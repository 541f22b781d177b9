"""Envelope encryption of the key store: every data key is stored wrapped by a key-encryption key.

The key store (`shared.keystore`) keeps one AES-256 *data key* per data subject; personal fields
are sealed with it (`shared.personal`). Stored as they are, those keys would open every personal
field for whoever reads the key table (a dump, a backup, a stolen disk, anyone with the database
password). So each data key is stored **wrapped**: encrypted with AES-256-GCM under a
*key-encryption key* (KEK) that lives outside the database (`KEY_ENCRYPTION_KEY`, or a file named
by `KEY_ENCRYPTION_KEY_FILE`, e.g. a mounted secret):

    wrapped = 0x01 | 12-byte nonce | AES-256-GCM(KEK, data key) | 16-byte tag        (61 bytes)

with the associated data `esctl/subject-key/v1 | KEK id | subject`: a wrapped key moved to another
subject's row, or relabelled with another KEK id, does not open. The row keeps the **KEK id** (the
first 16 hex digits of a SHA-256 over the KEK, which says which KEK wrapped it and nothing about the
key), so that a store can hold keys under two KEKs while it is rotated: the current KEK wraps
every new key, previous KEKs (`KEY_ENCRYPTION_KEY_PREVIOUS`) only unwrap, and `esctl keys
rotate-kek` rewraps what is left under them.

No KEK, no keys: a process without one cannot open the key store (`kek_missing`), and a key wrapped
under a KEK it was not given is an error that names both ids (`kek_unknown`), never a silent
fallback to something weaker.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.errors import ConfigurationError, EsError
from shared.settings import KeyEncryptionSettings

KEK_BYTES = 32
NONCE_BYTES = 12
#: the first byte of a wrapped key: the format (a later scheme gets another byte)
WRAP_FORMAT = b"\x01"
WRAPPED_BYTES = 1 + NONCE_BYTES + 32 + 16
_AD_PREFIX = b"esctl/subject-key/v1\x00"


class KekError(ConfigurationError):
    """The key-encryption key is missing, malformed, or not the one the keys were wrapped with:
    fix the configuration (retrying does not help)."""

    code = "kek_error"


class KeyUnwrapError(EsError):
    """A stored wrapped key does not open with the KEK its row names: the row was damaged or
    moved to another subject (AES-GCM authenticates the subject)."""

    code = "key_unwrap_failed"


def new_kek() -> bytes:
    """A fresh random key-encryption key."""
    return os.urandom(KEK_BYTES)


def encode_kek(kek: bytes) -> str:
    """How a KEK is written down: standard base64 (44 characters)."""
    return base64.b64encode(kek).decode()


def decode_kek(text: str, where: str) -> bytes:
    """A KEK from its base64 text; KekError naming `where` it came from when it is not one."""
    try:
        kek = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        kek = b""
    if len(kek) != KEK_BYTES:
        raise KekError(
            f"{where} is not a key-encryption key: expected the base64 of {KEK_BYTES} random "
            "bytes (`esctl keys new-kek` makes one)",
            code="kek_invalid",
        )
    return kek


def kek_id(kek: bytes) -> str:
    """The KEK's id as stored beside every key it wraps (a fingerprint; reveals nothing)."""
    return hashlib.sha256(b"esctl/kek-id\x00" + kek).hexdigest()[:16]


def _associated_data(kid: str, subject: str) -> bytes:
    return _AD_PREFIX + kid.encode() + b"\x00" + subject.encode()


class KeyRing:
    """The current KEK (wraps and unwraps) and previous ones (unwrap only, during a rotation)."""

    def __init__(self, current: bytes, previous: tuple[bytes, ...] = ()) -> None:
        self.current_id = kek_id(current)
        self._aead: dict[str, AESGCM] = {}
        for kek in (current, *previous):
            self._aead.setdefault(kek_id(kek), AESGCM(kek))

    @property
    def ids(self) -> tuple[str, ...]:
        """Every KEK id this ring opens, the current one first."""
        return tuple(self._aead)

    def wrap(self, subject: str, key: bytes) -> tuple[str, bytes]:
        """(KEK id, wrapped key) of `subject`'s data key, under the current KEK."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead[self.current_id].encrypt(
            nonce, key, _associated_data(self.current_id, subject)
        )
        return self.current_id, WRAP_FORMAT + nonce + sealed

    def unwrap(self, subject: str, kid: str, wrapped: bytes) -> bytes:
        """The data key of `subject` from its stored (KEK id, wrapped key)."""
        aead = self._aead.get(kid)
        if aead is None:
            raise KekError(
                f"the key store holds keys wrapped by key-encryption key {kid}, which this "
                f"process was not given (it has {', '.join(self.ids)}): set KEY_ENCRYPTION_KEY "
                "to that KEK, or give it as KEY_ENCRYPTION_KEY_PREVIOUS while rotating",
                code="kek_unknown",
            )
        if wrapped[:1] != WRAP_FORMAT or len(wrapped) != WRAPPED_BYTES:
            raise KeyUnwrapError(f"the stored key of {subject!r} is not a wrapped key (format)")
        try:
            return aead.decrypt(
                wrapped[1 : 1 + NONCE_BYTES],
                wrapped[1 + NONCE_BYTES :],
                _associated_data(kid, subject),
            )
        except InvalidTag:
            raise KeyUnwrapError(
                f"the stored key of {subject!r} does not open with key-encryption key {kid}: "
                "the row was damaged, or copied from another subject"
            ) from None

    @classmethod
    def from_settings(cls, settings: KeyEncryptionSettings) -> KeyRing:
        """The ring the settings give; KekError (`kek_missing`) when they give no KEK."""
        current = _configured(
            settings.key_encryption_key.get_secret_value(),
            settings.key_encryption_key_file,
            "KEY_ENCRYPTION_KEY",
        )
        if not current:
            raise KekError(
                "no key-encryption key: the key store's keys are stored wrapped, so set "
                "KEY_ENCRYPTION_KEY (base64 of 32 random bytes) or KEY_ENCRYPTION_KEY_FILE "
                "(`esctl keys new-kek` makes one; `esctl up` makes a local one by itself)",
                code="kek_missing",
            )
        if len(current) > 1:
            raise KekError(
                "KEY_ENCRYPTION_KEY holds more than one key; previous ones go in "
                "KEY_ENCRYPTION_KEY_PREVIOUS",
                code="kek_invalid",
            )
        previous = _configured(
            settings.key_encryption_key_previous.get_secret_value(),
            settings.key_encryption_key_previous_file,
            "KEY_ENCRYPTION_KEY_PREVIOUS",
        )
        return cls(current[0], tuple(previous))


def _configured(value: str, file: str, name: str) -> list[bytes]:
    """The KEKs of a variable or of its _FILE twin (not both): comma- or line-separated."""
    if value and file:
        raise KekError(f"set {name} or {name}_FILE, not both", code="kek_invalid")
    where = name
    if file:
        where = f"{name}_FILE ({file})"
        try:
            value = Path(file).read_text()
        except OSError as exc:
            raise KekError(
                f"cannot read {where}: {exc.strerror or exc}", code="kek_missing"
            ) from None
    parts = [p for p in value.replace(",", "\n").split() if p]
    return [decode_kek(p, where) for p in parts]


def ensure_kek_file(path: Path) -> bool:
    """A KEK in `path` (mode 0600), made when there is none: True if it was made now. For local
    use only (`esctl up`, tests): a KEK beside the keys protects nothing from whoever copies the
    directory; elsewhere give one from outside (a secret)."""
    if path.exists():
        decode_kek(path.read_text(), str(path))
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it a moment ago
        return False
    with os.fdopen(fd, "w") as out:
        out.write(encode_kek(new_kek()) + "\n")
    return True


__all__ = [
    "KekError",
    "KeyRing",
    "KeyUnwrapError",
    "decode_kek",
    "encode_kek",
    "ensure_kek_file",
    "kek_id",
    "new_kek",
]
