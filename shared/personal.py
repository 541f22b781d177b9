"""Personal data, sealed per data subject (crypto-shredding).

A message field is *personal* when its pydantic `Field` carries `json_schema_extra=PERSONAL`
(it shows as `"x-personal": true` in the published JSON Schemas). The command service seals the
personal fields of every event it writes with the AES-256-GCM key of the event's data subject
(the aggregate id: an author is the subject of its own events). A sealed value is a string:

    pii:v1:<subject>:<base64url(12-byte nonce | ciphertext | 16-byte tag)>

with the subject as associated data, so a sealed value cannot be moved to another subject.
Erasing a subject deletes its key (see `shared.keystore`); every copy of its sealed values, in
topics, snapshots, read stores, archives and backups, is then unreadable. Readers open sealed
values with `open_value` / `open_tree`: a value whose key is gone reads as `None` (erased), never
as an exception, so no consumer stops on it. Strings that are not sealed (events written before
personal fields were sealed) read as they are.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
from collections.abc import Mapping
from typing import Any, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel

#: `Field(json_schema_extra=PERSONAL)` marks a field as personal data.
PERSONAL: dict[str, Any] = {"x-personal": True}
PREFIX = "pii:v1:"
NONCE_BYTES = 12
KEY_BYTES = 32

M = TypeVar("M", bound=BaseModel)


def new_key() -> bytes:
    """A fresh random AES-256 key."""
    return AESGCM.generate_key(bit_length=KEY_BYTES * 8)


@functools.cache
def personal_fields(cls: type[BaseModel]) -> tuple[str, ...]:
    """The names of the fields of `cls` marked personal."""
    return tuple(
        name
        for name, info in cls.model_fields.items()
        if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("x-personal")
    )


def seal(value: str, subject: str, key: bytes) -> str:
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(key).encrypt(nonce, value.encode(), subject.encode())
    return f"{PREFIX}{subject}:{base64.urlsafe_b64encode(nonce + sealed).decode()}"


def is_sealed(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def _parse(value: str) -> tuple[str, str] | None:
    """(subject, base64 blob) of a sealed value; None if it is not one."""
    if not is_sealed(value):
        return None
    subject, sep, blob = value.removeprefix(PREFIX).rpartition(":")
    return (subject, blob) if sep and subject else None


def subject_of(value: str) -> str | None:
    """The subject a sealed value belongs to (None: not a sealed value)."""
    parsed = _parse(value)
    return parsed[0] if parsed else None


def open_value(value: str, keys: Mapping[str, bytes]) -> str | None:
    """The plaintext of a sealed value; None when its subject's key is gone (erased) or the
    value is damaged; a value that is not sealed is returned as it is."""
    if not is_sealed(value):
        return value
    parsed = _parse(value)
    key = keys.get(parsed[0]) if parsed else None
    if parsed is None or key is None:
        return None
    subject, blob = parsed
    try:
        raw = base64.urlsafe_b64decode(blob.encode())
        plain = AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], subject.encode())
        return plain.decode()
    except (binascii.Error, InvalidTag, ValueError):
        return None


def seal_message(message: M, subject: str, key: bytes) -> M:
    """`message` with its personal string fields sealed for `subject` (sealed ones kept)."""
    update = {
        name: seal(value, subject, key)
        for name in personal_fields(type(message))
        if isinstance(value := getattr(message, name), str) and not is_sealed(value)
    }
    return message.model_copy(update=update) if update else message


def subjects_in(tree: Any) -> set[str]:
    """The subjects of every sealed value in a JSON-like tree."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, str):
            subject = subject_of(node)
            if subject:
                found.add(subject)
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list | tuple):
            for value in node:
                walk(value)

    walk(tree)
    return found


def open_tree(tree: Any, keys: Mapping[str, bytes]) -> tuple[Any, list[str]]:
    """A copy of a JSON-like tree with sealed values opened, and the paths of those that read
    as erased (their value is None in the copy)."""
    erased: list[str] = []

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, str) and is_sealed(node):
            plain = open_value(node, keys)
            if plain is None:
                erased.append(path)
            return plain
        if isinstance(node, dict):
            return {k: walk(v, f"{path}.{k}" if path else str(k)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, f"{path}[{i}]") for i, v in enumerate(node)]
        return node

    return walk(tree, ""), erased


__all__ = [
    "PERSONAL",
    "PREFIX",
    "is_sealed",
    "new_key",
    "open_tree",
    "open_value",
    "personal_fields",
    "seal",
    "seal_message",
    "subject_of",
    "subjects_in",
]
