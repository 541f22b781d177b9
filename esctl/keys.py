"""`esctl keys`: the key store's key-encryption keys (KEK): make one, see which wraps what, rotate.

The key store (`KEY_STORE_URL`) keeps each data subject's key wrapped by a KEK
(`KEY_ENCRYPTION_KEY` or `KEY_ENCRYPTION_KEY_FILE`; see `shared/kek.py` and the README's
"Security: key store and deployment").
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from esctl.common import console, fail, say_and_exit, settings_from_env

app = typer.Typer(
    help="The key store's key-encryption keys: make one, see which wraps what, rotate.",
    no_args_is_help=True,
)


@app.command("new-kek")
def new_kek_command(
    out: Annotated[
        Path | None,
        typer.Option(help="write it to this file (mode 0600; never over an existing file)"),
    ] = None,
) -> None:
    """Make a new key-encryption key (base64 of 32 random bytes): printed, or written to --out.
    Give it to every process that opens the key store (KEY_ENCRYPTION_KEY, or
    KEY_ENCRYPTION_KEY_FILE naming the file), and keep a copy where the database's backups are
    not: without it no key of the store opens."""
    from shared.kek import encode_kek, kek_id, new_kek

    kek = new_kek()
    if out is None:
        print(encode_kek(kek))
    else:
        try:
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            say_and_exit(f"{out} exists: a KEK is never overwritten (its keys would be lost)")
        except OSError as exc:
            say_and_exit(f"cannot write {out}: {exc.strerror or exc}")
        with os.fdopen(fd, "w") as f:
            f.write(encode_kek(kek) + "\n")
        console.print(f"key-encryption key {kek_id(kek)} written to {out} (mode 0600)")
        return
    console.print(f"key-encryption key {kek_id(kek)}")


def _status_dict(status: Any, current: str | None, known: tuple[str, ...]) -> dict[str, Any]:
    return {
        "key_store": status.where,
        "keys": status.keys,
        "by_kek": status.by_kek,
        "unwrapped": status.unwrapped,
        "erased": status.erased,
        "current_kek": current,
        "configured_keks": list(known),
        "needs_rotation": sum(n for k, n in status.by_kek.items() if k != current)
        + status.unwrapped,
        "unknown_keks": sorted(set(status.by_kek) - set(known)),
    }


@app.command("status")
def status_command(
    as_json: Annotated[bool, typer.Option("--json", help="for scripts: one JSON object")] = False,
) -> None:
    """How many keys the key store (KEY_STORE_URL) holds under which KEK, how many are in the
    clear (a store from before wrapping) or erased, and whether the configured KEKs open them
    (no KEK needed to count). Exit code 1 when a key is under a KEK not configured, in the
    clear, or under a previous KEK (a rotation to finish)."""
    import asyncio

    from esctl.output import print_table
    from shared.errors import EsError
    from shared.kek import KeyRing
    from shared.keystore import KeyStore
    from shared.settings import KeyStoreSettings

    settings = settings_from_env(KeyStoreSettings)
    ring: KeyRing | None
    try:
        ring = KeyRing.from_settings(settings)
    except EsError as exc:
        if exc.code != "kek_missing":
            fail(exc)
        ring = None
    store = KeyStore(settings.key_store_url, None)

    async def read() -> Any:
        try:
            return await store.status()
        finally:
            await store.close()

    try:
        status = asyncio.run(read())
    except EsError as exc:
        fail(exc)
    current = ring.current_id if ring else None
    known = ring.ids if ring else ()
    report = _status_dict(status, current, known)
    if as_json:
        print(json.dumps(report))
    else:
        rows: list[tuple[object, ...]] = [
            (
                kid,
                n,
                "current" if kid == current else "previous" if kid in known else "NOT CONFIGURED",
            )
            for kid, n in sorted(status.by_kek.items())
        ]
        if status.unwrapped:
            rows.append(("(in the clear)", status.unwrapped, "wrapped on the next open"))
        print_table(["kek", "keys", "configured as"], rows, title=f"key store {status.where}")
        console.print(
            f"{status.keys} keys, {status.erased} erased; current KEK: "
            + (current or "none configured (KEY_ENCRYPTION_KEY)"),
            highlight=False,
        )
        if report["unknown_keks"]:
            console.print(
                "[red]keys under a KEK not configured[/red]: no process with this "
                "configuration can open them",
            )
        elif report["needs_rotation"] and current:
            console.print(
                f"{report['needs_rotation']} keys not under the current KEK: "
                "`esctl keys rotate-kek` rewraps them",
            )
    if report["unknown_keks"] or report["needs_rotation"]:
        raise typer.Exit(1)


@app.command("rotate-kek")
def rotate_kek_command() -> None:
    """Rewrap every key of the key store (KEY_STORE_URL) under the current KEK
    (KEY_ENCRYPTION_KEY), reading those under previous KEKs (KEY_ENCRYPTION_KEY_PREVIOUS) and
    wrapping any still in the clear. 500 keys per transaction, with progress on stderr; safe to
    stop and run again, and beside the running services (start them with the new KEK and the
    previous one first: see the README's rotation procedure). A key erased meanwhile stays
    erased."""
    import asyncio

    from shared.errors import EsError
    from shared.kek import KeyRing
    from shared.keystore import KeyStore
    from shared.settings import KeyStoreSettings

    settings = settings_from_env(KeyStoreSettings)
    try:
        ring = KeyRing.from_settings(settings)
    except EsError as exc:
        fail(exc)
    store = KeyStore(settings.key_store_url, ring)

    def progress(done: int, total: int) -> None:
        console.print(f"rewrapped {done}/{total}", highlight=False)

    async def rotate() -> tuple[int, Any]:
        try:
            return await store.rotate(progress), await store.status()
        finally:
            await store.close()

    try:
        rewrapped, status = asyncio.run(rotate())
    except EsError as exc:
        fail(exc)
    print(
        json.dumps(
            {"key_store": status.where, "rewrapped": rewrapped, "kek": ring.current_id}
            | {"keys": status.keys, "by_kek": status.by_kek, "erased": status.erased}
        )
    )
    console.print(
        f"[green]done[/green]: {rewrapped} rewrapped now; all {status.keys} keys under "
        f"{ring.current_id}. Previous KEKs can be removed from the configuration once every "
        "process runs without them (backups taken before still need them)",
        highlight=False,
    )
