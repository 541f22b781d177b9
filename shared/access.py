"""Who may call which route: the one ACCESS table of the four services, and the guard that
applies it to every route of an app (`shared.http.service_app` installs it).

A route is public (anyone, also without a token) or lists the roles that may call it; `admin`
may call everything. The guard reads the caller with `Depends(current_principal)` (tests can
override it): a route the caller may not call answers 401 `unauthenticated` to an anonymous
caller, 403 `forbidden` to an authenticated one. A route missing from the table answers 403
`route_not_in_access_table` to everyone but admin (a new route is closed until it is listed; a
test checks that every route is listed).

The route level is coarse by design: ownership (an author edits only their own posts) is the
command domain's decision, and what a public read route shows to whom (drafts, emails) is the
query service's, both from the same `Principal`. The README's table is `markdown_table()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Final

from fastapi import Depends, Request
from starlette.exceptions import HTTPException

from shared.principal import (
    ADMIN,
    AUTHOR,
    EDITOR,
    OPERATOR,
    REVIEWER,
    ROLES,
    Principal,
    current_principal,
)

#: The rule of a public route: anyone, with a token or without.
PUBLIC: Final = "public"
Rule = frozenset[str] | str

#: The documents FastAPI serves (no guard runs on them: they are not API routes), and /health.
_OPEN: Final[dict[str, Rule]] = {
    "GET /health": PUBLIC,
    "GET /openapi.json": PUBLIC,
    "GET /docs": PUBLIC,
    "GET /docs/oauth2-redirect": PUBLIC,
    "GET /redoc": PUBLIC,
}
#: What every service serves (`service_app`'s default table).
OPERATIONS: Final[dict[str, Rule]] = {**_OPEN, "GET /metrics": frozenset({OPERATOR})}
#: every role that issues commands may poll the outcome of one (the 202's Location)
_ANY_ROLE: Final = frozenset({AUTHOR, REVIEWER, EDITOR, OPERATOR})
_AUTHORING: Final = frozenset({AUTHOR, EDITOR})
_REVIEWING: Final = frozenset({REVIEWER, EDITOR})
_EDITING: Final = frozenset({EDITOR})

#: service -> `METHOD /path` -> the rule (admin may call every route besides).
ACCESS: Final[dict[str, dict[str, Rule]]] = {
    "command": {
        **OPERATIONS,
        "POST /authors": frozenset({AUTHOR}),
        "PATCH /authors/{author_id}": frozenset({AUTHOR}),
        "POST /posts": _AUTHORING,
        "PATCH /posts/{post_id}": _AUTHORING,
        "POST /posts/{post_id}/submit": _AUTHORING,
        "POST /posts/{post_id}/approve": _REVIEWING,
        "POST /posts/{post_id}/reject": _REVIEWING,
        "POST /posts/{post_id}/schedule": _EDITING,
        "POST /posts/{post_id}/cancel-schedule": _EDITING,
        "POST /posts/{post_id}/publish": _EDITING,
        "POST /posts/{post_id}/unpublish": _EDITING,
        "POST /posts/{post_id}/archive": _EDITING,
        "GET /commands/{command_id}": _ANY_ROLE,
        "POST /subjects/{subject_id}/erase": frozenset({ADMIN}),
    },
    # Public at route level: published posts are for everyone; the query service filters what
    # each caller sees inside the routes (drafts, reviews, emails).
    "query": {
        **OPERATIONS,
        "GET /posts": PUBLIC,
        "GET /posts/{post_id}": PUBLIC,
        "GET /authors/{author_id}": PUBLIC,
        "GET /authors/{author_id}/posts": PUBLIC,
        "GET /streams/{aggregate_id}/events": PUBLIC,
        "GET /stats": PUBLIC,
    },
    "projector": dict(OPERATIONS),
    "workflow": {
        **OPERATIONS,
        "GET /workflows": frozenset({OPERATOR}),
        "GET /workflows/{workflow_id}": frozenset({OPERATOR}),
        "POST /workflows/{workflow_id}/retry": frozenset({OPERATOR}),
        "POST /workflows/{workflow_id}/skip": frozenset({OPERATOR}),
        "POST /workflows/{workflow_id}/compensate": frozenset({OPERATOR}),
    },
}

#: The callers of the README's table: nobody, then one column per role.
CALLERS: Final[tuple[str, ...]] = ("anonymous", *ROLES)


class Denied(HTTPException):
    """401 / 403 raised by the guard; `service_app` answers it as problem+json with `code`."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        headers = {"WWW-Authenticate": 'Bearer realm="esctl"'} if status == 401 else None
        super().__init__(status, detail, headers=headers)
        self.code = code
        self.title = "Authentication required" if status == 401 else "Forbidden"


def decide(rule: Rule | None, principal: Principal) -> int | None:
    """None: the principal may call a route with `rule`; else 401 (nobody is authenticated and
    the route is not public) or 403 (authenticated, but without a role the route allows)."""
    if rule == PUBLIC or principal.has(ADMIN):
        return None
    if isinstance(rule, frozenset) and principal.has(*rule):
        return None
    if not principal.authenticated and not principal.roles:
        return 401
    return 403


def allowed(service: str, route: str, caller: str) -> bool:
    """Whether `caller` (`anonymous` or a role) may call `route` of `service`."""
    principal = (
        Principal(subject=None)
        if caller == "anonymous"
        else Principal(subject="someone", roles=frozenset({caller}), authenticated=True)
    )
    return decide(ACCESS[service].get(route), principal) is None


def guard(table: Mapping[str, Rule]) -> Any:
    """The dependency `service_app` puts on every API route of an app: applies `table`."""

    async def authorize(
        request: Request, principal: Annotated[Principal, Depends(current_principal)]
    ) -> None:
        route = request.scope.get("route")
        path = getattr(route, "path", request.url.path)
        key = f"{request.method} {path}"
        if request.method == "HEAD":
            key = f"GET {path}"
        rule = table.get(key)
        status = decide(rule, principal)
        if status is None:
            return
        if status == 401:
            raise Denied(
                401,
                "unauthenticated",
                f"{key} needs a bearer token: send `Authorization: Bearer <JWT>`",
            )
        if rule is None:
            raise Denied(
                403, "route_not_in_access_table", f"{key} is not in the access table: closed"
            )
        roles = sorted({*rule, ADMIN}) if isinstance(rule, frozenset) else [ADMIN]
        raise Denied(
            403,
            "forbidden",
            f"{key} needs one of the roles {', '.join(roles)}; the token has "
            f"{', '.join(sorted(principal.roles)) or 'none'}",
        )

    return Depends(authorize)


def markdown_table() -> str:
    """The README's route x caller table: `yes`, or the status a denied caller gets."""
    head = ["service", "route", *CALLERS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for service, table in ACCESS.items():
        for route in table:
            cells = []
            for caller in CALLERS:
                if allowed(service, route, caller):
                    cells.append("yes")
                else:
                    cells.append("401" if caller == "anonymous" else "403")
            lines.append(f"| {service} | `{route}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


__all__ = [
    "ACCESS",
    "CALLERS",
    "OPERATIONS",
    "PUBLIC",
    "Denied",
    "Rule",
    "allowed",
    "decide",
    "guard",
]
