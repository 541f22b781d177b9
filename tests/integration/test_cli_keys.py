"""`esctl keys` as an operator runs a KEK rotation: make the KEKs, see which wraps what, rotate
(with progress, again with nothing to do), and a wrong KEK told in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.kek import KeyRing, decode_kek, kek_id
from shared.keystore import KeyStore
from tests.e2e.harness import esctl
from tests.integration.test_cli import one_line_error

pytestmark = pytest.mark.integration


async def test_a_kek_rotation_with_esctl_keys(tmp_path: Path) -> None:
    old_file = tmp_path / "old.kek"
    made = esctl({}, "keys", "new-kek", "--out", str(old_file))
    assert made.returncode == 0, made.stderr
    old = decode_kek(old_file.read_text(), "old")
    assert old_file.stat().st_mode & 0o777 == 0o600
    assert kek_id(old) in made.stderr and made.stdout == ""
    again = esctl({}, "keys", "new-kek", "--out", str(old_file))
    assert again.returncode == 2 and "never overwritten" in one_line_error(again)

    url = f"sqlite:///{tmp_path / 'keys.sqlite3'}"
    store = KeyStore(url, KeyRing(old))
    try:
        await store.keys_for(["ada", "bob", "cyd"])
        await store.erase("cyd")
        keys = await store.keys(["ada", "bob"])
    finally:
        await store.close()
    under_old = {"KEY_STORE_URL": url, "KEY_ENCRYPTION_KEY_FILE": str(old_file)}
    status = esctl(under_old, "keys", "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout) | {"key_store": None} == {
        "key_store": None,
        "keys": 2,
        "by_kek": {kek_id(old): 2},
        "unwrapped": 0,
        "erased": 1,
        "current_kek": kek_id(old),
        "configured_keks": [kek_id(old)],
        "needs_rotation": 0,
        "unknown_keks": [],
    }

    new_text = esctl({}, "keys", "new-kek").stdout.strip()
    new = decode_kek(new_text, "new")
    rotating = {
        "KEY_STORE_URL": url,
        "KEY_ENCRYPTION_KEY": new_text,
        "KEY_ENCRYPTION_KEY_FILE": "",
        "KEY_ENCRYPTION_KEY_PREVIOUS_FILE": str(old_file),
    }
    pending = esctl(rotating, "keys", "status", "--json")
    assert pending.returncode == 1 and json.loads(pending.stdout)["needs_rotation"] == 2
    rotated = esctl(rotating, "keys", "rotate-kek")
    assert rotated.returncode == 0, rotated.stderr
    assert json.loads(rotated.stdout)["rewrapped"] == 2
    assert "rewrapped 2/2" in rotated.stderr
    rerun = esctl(rotating, "keys", "rotate-kek")
    assert rerun.returncode == 0 and json.loads(rerun.stdout)["rewrapped"] == 0

    only_new = rotating | {"KEY_ENCRYPTION_KEY_PREVIOUS_FILE": ""}
    done = esctl(only_new, "keys", "status")
    assert done.returncode == 0, done.stdout + done.stderr
    assert kek_id(new) in done.stdout and "current" in done.stdout
    store = KeyStore(url, KeyRing(new))
    try:
        assert await store.keys(["ada", "bob", "cyd"]) == keys
    finally:
        await store.close()

    wrong = esctl(under_old, "keys", "rotate-kek")
    assert wrong.returncode == 2
    line = one_line_error(wrong)
    assert kek_id(new) in line and kek_id(old) in line and "KEY_ENCRYPTION_KEY" in line
    unknown = esctl(under_old, "keys", "status", "--json")
    assert unknown.returncode == 1 and json.loads(unknown.stdout)["unknown_keks"] == [kek_id(new)]
