"""Authentication of HTTP requests: bearer JWTs in, a `shared.principal.Principal` out.

Keys: an HS256 secret for local use (`AUTH_HS256_SECRET`; `esctl token` mints with it), and/or a
JWKS (`AUTH_JWKS_URL`: a file path, `file://` or `https://` URL) of RS256/ES256 keys for
production, with optional issuer and audience checks. The `roles` claim (a list, or one string)
names the roles; unknown roles are ignored. `sub` is the subject.

`AuthMiddleware` runs before every route (one place): no `Authorization` header -> `ANONYMOUS`;
a valid bearer token -> its principal; anything else -> 401 problem+json (`invalid_token`,
`token_expired`, ...) with `WWW-Authenticate: Bearer ...`, whatever the route (a client that
sends a broken token learns it at once). A token whose key must be fetched from a JWKS URL that
does not answer -> 503 `auth_unavailable` with `Retry-After` (cannot tell now). With
authentication off (`AUTH_ENABLED=false`, local demos only) every request is `LOCAL_DEMO`.
Which route each principal may call is decided by `shared.access` (the route guard), not here.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import urlparse

import jwt
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.errors import ConfigurationError
from shared.http import problem
from shared.logging import get_logger
from shared.principal import ANONYMOUS, LOCAL_DEMO, ROLES, Principal

log = get_logger(__name__)

#: A local HS256 secret shorter than this is refused (RFC 7518 §3.2: at least the hash size).
MIN_SECRET_BYTES: Final = 32
#: what a 503 `auth_unavailable` (the JWKS URL not answering) tells the client to wait
JWKS_RETRY_AFTER_S: Final = 5
ASYMMETRIC: Final = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384")


class AuthSettingsLike(Protocol):
    """The authentication fields of `shared.settings.ServiceSettings`."""

    @property
    def auth_enabled(self) -> bool: ...
    @property
    def auth_hs256_secret(self) -> str: ...
    @property
    def auth_jwks_url(self) -> str: ...
    @property
    def auth_issuer(self) -> str: ...
    @property
    def auth_audience(self) -> str: ...
    @property
    def auth_leeway_s(self) -> float: ...


class TokenRejected(Exception):
    """A bearer token that does not authenticate anyone: `code` is stable, `message` says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class KeysUnavailable(Exception):
    """The keys a token needs cannot be fetched now (the JWKS URL does not answer): nobody can
    be authenticated with them until it does, which is the server's trouble, not the caller's
    (503, try again), unlike a token that is wrong (401)."""


class _Keys(Protocol):
    def key_for(self, token: str, header: Mapping[str, Any]) -> jwt.PyJWK: ...


class _JwksFile:
    """The keys of a JWKS document read once (a file, or a `file://` URL)."""

    def __init__(self, path: Path) -> None:
        try:
            self.keys = jwt.PyJWKSet.from_json(path.read_text())
        except (OSError, jwt.PyJWKSetError, ValueError) as exc:
            raise ConfigurationError(
                f"AUTH_JWKS_URL: cannot read a JWKS from {path}: {exc}"
            ) from exc

    def key_for(self, token: str, header: Mapping[str, Any]) -> jwt.PyJWK:
        kid = header.get("kid")
        found = [k for k in self.keys.keys if kid is None or k.key_id == kid]
        if not found:
            raise TokenRejected("invalid_token", f"no key with kid {kid!r} in the JWKS")
        return found[0]


class _JwksUrl:
    """The keys behind a JWKS URL, fetched when a token names a key id not seen yet (PyJWT's
    client caches them)."""

    def __init__(self, url: str) -> None:
        self.client = jwt.PyJWKClient(url, cache_keys=True, lifespan=300, timeout=5)

    def key_for(self, token: str, header: Mapping[str, Any]) -> jwt.PyJWK:
        try:
            return self.client.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as exc:
            # keys already fetched stay usable (PyJWT's cache): only a key id not seen yet
            # needs the URL, and while it does not answer the token cannot be checked either way
            log.warning("jwks_unavailable", url=self.client.uri, error=str(exc))
            raise KeysUnavailable(
                f"the JWKS at {self.client.uri} could not be fetched: {exc}"
            ) from exc
        except jwt.PyJWKClientError as exc:
            raise TokenRejected("invalid_token", str(exc)) from exc


def _jwks(location: str) -> _Keys:
    parsed = urlparse(location)
    if parsed.scheme in ("http", "https"):
        return _JwksUrl(location)
    if parsed.scheme == "file":
        return _JwksFile(Path(parsed.path))
    return _JwksFile(Path(location))


@dataclass
class Authenticator:
    """Verifies bearer tokens. `static` maps fixed credentials to a principal (the deprecated
    ERASURE_TOKEN of the command service); they are compared in constant time."""

    hs256_secret: str = ""
    jwks: _Keys | None = None
    issuer: str = ""
    audience: str = ""
    leeway_s: float = 30.0
    static: Mapping[str, Principal] = field(default_factory=dict)

    def verify(self, token: str) -> Principal:
        for credential, principal in self.static.items():
            if credential and hmac.compare_digest(token.encode(), credential.encode()):
                return principal
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise TokenRejected("invalid_token", f"not a JWT: {exc}") from exc
        algorithm = header.get("alg")
        if algorithm == "HS256" and self.hs256_secret:
            key: Any = self.hs256_secret
        elif algorithm in ASYMMETRIC and self.jwks is not None:
            jwk = self.jwks.key_for(token, header)
            # the key decides the algorithm (a token cannot choose another for it)
            key, algorithm = jwk.key, jwk.algorithm_name
        else:
            raise TokenRejected(
                "invalid_token", f"tokens signed with {algorithm!r} are not accepted here"
            )
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[str(algorithm)],
                audience=self.audience or None,
                issuer=self.issuer or None,
                leeway=self.leeway_s,
                options={"require": ["exp", "sub"], "verify_aud": bool(self.audience)},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenRejected("token_expired", "the token has expired") from exc
        except jwt.InvalidTokenError as exc:
            raise TokenRejected("invalid_token", str(exc)) from exc
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject.strip():
            raise TokenRejected("invalid_token", "the token's `sub` is not a non-empty string")
        return Principal(subject=subject, roles=roles_of(claims), authenticated=True)


def roles_of(claims: Mapping[str, Any]) -> frozenset[str]:
    """The known roles the `roles` claim names (a list of strings, or one string)."""
    raw = claims.get("roles", [])
    names: Iterable[Any] = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []
    return frozenset(n for n in names if isinstance(n, str) and n in ROLES)


def authenticator(
    settings: AuthSettingsLike, static: Mapping[str, Principal] | None = None
) -> Authenticator | None:
    """The authenticator the settings describe; None when authentication is off. Raises
    ConfigurationError when it is on without a key (a service must not start accepting
    everything), or with a key that cannot work."""
    if not settings.auth_enabled:
        return None
    secret = settings.auth_hs256_secret
    if not secret and not settings.auth_jwks_url:
        raise ConfigurationError(
            "authentication is on (AUTH_ENABLED=true) but no key is configured: set "
            "AUTH_HS256_SECRET (local use; `esctl token` mints with it) or AUTH_JWKS_URL "
            "(production), or AUTH_ENABLED=false for a local demo without authentication",
            code="auth_not_configured",
        )
    if secret and len(secret.encode()) < MIN_SECRET_BYTES:
        raise ConfigurationError(
            f"AUTH_HS256_SECRET is too short: at least {MIN_SECRET_BYTES} bytes "
            "(e.g. `openssl rand -hex 32`)",
            code="auth_not_configured",
        )
    return Authenticator(
        hs256_secret=secret,
        jwks=_jwks(settings.auth_jwks_url) if settings.auth_jwks_url else None,
        issuer=settings.auth_issuer,
        audience=settings.auth_audience,
        leeway_s=settings.auth_leeway_s,
        static={k: v for k, v in (static or {}).items() if k},
    )


def check_at_start(settings: AuthSettingsLike, service: str) -> None:
    """At a service's start: refuse to start when authentication is on without a key (raises
    ConfigurationError), and warn loudly when it is off."""
    if authenticator(settings) is None:
        log.warning(
            "authentication_off",
            service=service,
            warning="AUTH_ENABLED=false: EVERY REQUEST IS ALLOWED EVERYTHING (local demos only; "
            "never on a network)",
        )


def mint(
    secret: str,
    subject: str,
    roles: Iterable[str],
    *,
    ttl_s: float = 3600,
    issuer: str = "",
    audience: str = "",
    now: float | None = None,
) -> str:
    """An HS256 token for `subject` with `roles` (local use: `esctl token`, tests)."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "sub": subject,
        "roles": sorted(set(roles)),
        "iat": issued,
        "exp": issued + int(ttl_s),
        "jti": uuid.uuid4().hex,
    }
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm="HS256")


def unauthorized(code: str, detail: str, error: str = "invalid_token") -> JSONResponse:
    """401 problem+json with the `WWW-Authenticate` challenge of RFC 6750."""
    response = problem(401, code, "Authentication required", detail)
    if error:
        quoted = json.dumps(detail[:200])
        response.headers["WWW-Authenticate"] = (
            f'Bearer realm="esctl", error="{error}", error_description={quoted}'
        )
    else:
        response.headers["WWW-Authenticate"] = 'Bearer realm="esctl"'
    return response


class AuthMiddleware:
    """Sets `scope["state"]["principal"]` (what `request.state.principal` reads) on every
    HTTP request, or answers 401 for a token that does not authenticate."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator | None) -> None:
        self.app = app
        self.authenticator = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        if self.authenticator is None:
            state["principal"] = LOCAL_DEMO
            await self.app(scope, receive, send)
            return
        header = _authorization(scope)
        if header is None:
            state["principal"] = ANONYMOUS
            await self.app(scope, receive, send)
            return
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            response = unauthorized(
                "invalid_token", "send `Authorization: Bearer <JWT>`", error="invalid_request"
            )
            await response(scope, receive, send)
            return
        try:
            if isinstance(self.authenticator.jwks, _JwksUrl):  # may fetch: not on the loop
                principal = await asyncio.to_thread(self.authenticator.verify, token)
            else:
                principal = self.authenticator.verify(token)
        except TokenRejected as exc:
            await unauthorized(exc.code, exc.message)(scope, receive, send)
            return
        except KeysUnavailable as exc:
            response = problem(503, "auth_unavailable", "Authentication unavailable", str(exc))
            response.headers["Retry-After"] = str(JWKS_RETRY_AFTER_S)
            await response(scope, receive, send)
            return
        state["principal"] = principal
        await self.app(scope, receive, send)


def secure(
    app: FastAPI, settings: AuthSettingsLike, static: Mapping[str, Principal] | None = None
) -> FastAPI:
    """`app` with the authentication middleware the settings describe (raises
    ConfigurationError when authentication is on without a key)."""
    app.add_middleware(AuthMiddleware, authenticator=authenticator(settings, static))
    return app


def _authorization(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            return str(value.decode("latin-1"))
    return None


__all__ = [
    "AuthMiddleware",
    "Authenticator",
    "KeysUnavailable",
    "TokenRejected",
    "authenticator",
    "check_at_start",
    "mint",
    "roles_of",
    "secure",
    "unauthorized",
]
