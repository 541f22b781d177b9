"""Who asks for a command, as the domain sees it: a subject and its roles.

The shell builds it from the command record's `actor` and `actor_roles` (set by the HTTP edge
from the caller's token). A command without an actor comes from a trusted producer (the Kafka
ACL on the commands topic is the boundary) and is decided without ownership checks.

The role names are those of `shared.principal` (a unit test holds the two together); the domain
imports no web framework to learn them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

#: may act on any post (publish, unpublish, archive, schedule; edit and submit too)
EDITOR: Final = "editor"
#: may act on any post and on any author profile
ADMIN: Final = "admin"


@dataclass(frozen=True)
class Actor:
    """The subject of the caller's token and the roles it holds."""

    subject: str
    roles: frozenset[str] = frozenset()

    def owns_or_may_act_on_post(self, author_id: str) -> bool:
        """Posts belong to their author; editors and admins act on any."""
        return author_id == self.subject or not self.roles.isdisjoint((EDITOR, ADMIN))

    def owns_or_may_act_on_author(self, author_id: str) -> bool:
        """An author profile belongs to the subject of the same id; admins act on any."""
        return author_id == self.subject or ADMIN in self.roles
