"""`esctl token`: a bearer token the services accept, from the configured secret or the local
stack's; a wrong request is one line on stderr and exit 2."""

from __future__ import annotations

import subprocess
from pathlib import Path

import jwt
import pytest

from shared.auth import Authenticator
from tests.e2e.harness import esctl

SECRET = "unit-test-secret-of-at-least-32-bytes"


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_a_token_carries_the_subject_the_roles_and_the_lifetime_asked_for(tmp_path: Path) -> None:
    """`--sub alice --role author --role editor --ttl 2h`: signed with AUTH_HS256_SECRET, the
    whole token alone on stdout, and the services' authenticator takes it as alice with both
    roles; it expires two hours after it was issued."""
    env = {"AUTH_HS256_SECRET": SECRET, "ESCTL_CACHE_DIR": str(tmp_path)}
    result = esctl(env, "token", "--sub", "alice", "--role", "author", "--role", "editor",
                   "--ttl", "2h")  # fmt: skip
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert result.stdout == token + "\n"
    principal = Authenticator(hs256_secret=SECRET).verify(token)
    assert principal.subject == "alice" and principal.roles == {"author", "editor"}
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 7200


def test_without_a_configured_secret_the_local_stacks_is_used(tmp_path: Path) -> None:
    """AUTH_HS256_SECRET empty: the secret `esctl up` keeps in the cache directory signs."""
    kept = tmp_path / "local-stack" / "auth-hs256-secret"
    kept.parent.mkdir()
    kept.write_text(SECRET + "-local")
    env = {"AUTH_HS256_SECRET": "", "ESCTL_CACHE_DIR": str(tmp_path)}
    result = esctl(env, "token", "--sub", "ops", "--role", "operator")
    assert result.returncode == 0, result.stderr
    verified = Authenticator(hs256_secret=SECRET + "-local").verify(result.stdout.strip())
    assert verified.roles == {"operator"}


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--sub", "a", "--role", "root"], "unknown role root"),
        (["--sub", "a", "--role", "admin", "--ttl", "soon"], "--ttl"),
        (["--sub", "a", "--role", "admin", "--ttl", "90d"], "--ttl"),
        (["--sub", " ", "--role", "admin"], "--sub"),
    ],
    ids=["unknown-role", "bad-ttl", "ttl-too-long", "empty-sub"],
)
def test_a_wrong_request_is_one_line_and_exit_2(
    tmp_path: Path, args: list[str], words: str
) -> None:
    """An unknown role (the valid ones named), a lifetime that is no duration or over 30 days,
    an empty subject: one line on stderr, exit 2, nothing on stdout."""
    result = esctl({"AUTH_HS256_SECRET": SECRET, "ESCTL_CACHE_DIR": str(tmp_path)}, "token", *args)
    assert words in one_line_error(result)
    assert result.stdout == ""


def test_without_any_secret_it_says_where_one_comes_from(tmp_path: Path) -> None:
    """No AUTH_HS256_SECRET and no local stack's secret: one line naming both, exit 2."""
    result = esctl({"AUTH_HS256_SECRET": "", "ESCTL_CACHE_DIR": str(tmp_path)},
                   "token", "--sub", "a", "--role", "admin")  # fmt: skip
    line = one_line_error(result)
    assert "AUTH_HS256_SECRET" in line and "esctl up" in line
