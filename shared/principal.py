"""Who is calling: the principal of an HTTP request, and the roles it can hold.

The authentication layer (bearer JWTs, see the README's Security section) sets
`request.state.principal`; routes read it with `Depends(current_principal)`. With
authentication off (an explicit setting for local demos) every request is `LOCAL_DEMO`: no
subject, every role, so nothing is denied and the domain checks no ownership.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from starlette.requests import Request

AUTHOR: Final = "author"
REVIEWER: Final = "reviewer"
#: publish, unpublish, archive, schedule
EDITOR: Final = "editor"
#: workflow actions, lag, rebuilds
OPERATOR: Final = "operator"
#: erasure
ADMIN: Final = "admin"

ROLES: Final[tuple[str, ...]] = (AUTHOR, REVIEWER, EDITOR, OPERATOR, ADMIN)


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller (`subject` is the token's `sub`) or nobody (`subject` None)."""

    subject: str | None
    roles: frozenset[str] = frozenset()
    #: False for anonymous callers and for everything while authentication is off
    authenticated: bool = False

    def has(self, *roles: str) -> bool:
        """The principal holds at least one of `roles`."""
        return not self.roles.isdisjoint(roles)


ANONYMOUS: Final = Principal(subject=None)
#: every request while authentication is off: all roles, no subject (no ownership checks)
LOCAL_DEMO: Final = Principal(subject=None, roles=frozenset(ROLES))


def current_principal(request: Request) -> Principal:
    """The caller of this request, as the authentication layer left it (anonymous if none)."""
    principal = getattr(request.state, "principal", None)
    return principal if isinstance(principal, Principal) else ANONYMOUS
