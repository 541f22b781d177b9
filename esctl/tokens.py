"""`esctl token`: bearer JWTs for local use, signed with the local HS256 secret; and the token
the other commands of esctl send to the services (`bearer_headers`).

The secret is AUTH_HS256_SECRET, else the one `esctl up` keeps for the local stack
(`local_auth_secret_file()`, made at the first `esctl up` and kept, so that tokens minted
earlier stay valid). Tokens of a production identity provider are not minted here: pass them
to esctl in ESCTL_TOKEN.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Annotated

import typer

from esctl.common import say_and_exit
from esctl.localstack import kafka as lk
from shared.principal import ADMIN, ROLES

#: `30s`, `15m`, `1h`, `7d`, or seconds
_TTL = re.compile(r"^([0-9]+)([smhd]?)$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
#: the longest a local token may live
MAX_TTL_S = 30 * 86400


def local_auth_secret_file() -> Path:
    """Where `esctl up` keeps the HS256 secret of the local stack (an absolute place, whatever
    the working directory: `esctl token` reads it from anywhere)."""
    return lk.cache_dir() / "local-stack" / "auth-hs256-secret"


def local_secret(create: bool = False) -> str:
    """AUTH_HS256_SECRET, else the local stack's secret ("" when there is none; made when
    `create`)."""
    configured = os.environ.get("AUTH_HS256_SECRET", "")
    if configured:
        return configured
    path = local_auth_secret_file()
    try:
        return path.read_text().strip()
    except OSError:
        if not create:
            return ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(secrets.token_urlsafe(48))
    return path.read_text().strip()


def ttl_seconds(text: str) -> int:
    """`1h` -> 3600; ValueError with the reason for anything else."""
    found = _TTL.fullmatch(text.strip())
    if not found:
        raise ValueError(f"--ttl {text!r}: expected a number with s, m, h or d (e.g. 1h)")
    seconds = int(found.group(1)) * _UNIT[found.group(2)]
    if not 0 < seconds <= MAX_TTL_S:
        raise ValueError(f"--ttl {text!r}: between 1s and {MAX_TTL_S // 86400}d")
    return seconds


def mint_local(subject: str, roles: list[str], ttl_s: int) -> str:
    """A token signed with the local secret, with the configured issuer and audience."""
    from shared.auth import mint

    secret = local_secret()
    if not secret:
        say_and_exit(
            "no secret to sign with: set AUTH_HS256_SECRET to the services' (or start the "
            f"local stack with `esctl up`, which keeps one in {local_auth_secret_file()})"
        )
    return mint(
        secret,
        subject,
        roles,
        ttl_s=ttl_s,
        issuer=os.environ.get("AUTH_ISSUER", ""),
        audience=os.environ.get("AUTH_AUDIENCE", ""),
    )


def bearer_headers(role: str = ADMIN) -> dict[str, str]:
    """The Authorization header esctl sends to a service: ESCTL_TOKEN, else a short-lived
    token of `role` (subject `esctl`) minted with the local secret, else none (the service
    answers 401 if it needs one, and esctl says so)."""
    token = os.environ.get("ESCTL_TOKEN", "").strip()
    if not token and local_secret():
        token = mint_local("esctl", [role], 300)
    return {"Authorization": f"Bearer {token}"} if token else {}


def token_command(
    sub: Annotated[str, typer.Option("--sub", help="the subject: who the token speaks for")],
    role: Annotated[
        list[str],
        typer.Option("--role", help=f"a role (repeat for more): {', '.join(ROLES)}"),
    ],
    ttl: Annotated[str, typer.Option(help="lifetime: 30s, 15m, 1h, 7d (at most 30d)")] = "1h",
) -> None:
    """Mint a bearer token (HS256) for local use, signed with AUTH_HS256_SECRET or the local
    stack's secret; prints it on stdout (`curl -H "Authorization: Bearer $(esctl token ...)"`)."""
    if not sub.strip():
        say_and_exit("--sub must not be empty")
    unknown = sorted(set(role) - set(ROLES))
    if unknown:
        say_and_exit(f"unknown role {', '.join(unknown)}: the roles are {', '.join(ROLES)}")
    try:
        seconds = ttl_seconds(ttl)
    except ValueError as exc:
        say_and_exit(str(exc))
    print(mint_local(sub.strip(), role, seconds))  # the answer, alone on stdout
