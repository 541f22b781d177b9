"""Who may ask: the issuer of a command the system alone issues, and the author a post names.

Both answers are values the pure domain cannot find out by itself: the issuer check refuses
before any decision; the author check gives `decide` its `author_exists`.
"""

from __future__ import annotations

from collections.abc import Container

from command_service.domain import Rejection
from command_service.ports import AuthorDirectory
from shared.messages.base import Command


def issuer_refusal(command: Command, issued_by: str | None) -> Rejection | None:
    """A command only the system may issue, sent by someone else: refused, with what to do
    instead (alone it would do half a job: EraseSubject without deleting the key, say)."""
    if not command.issuers or issued_by in command.issuers:
        return None
    return Rejection(
        "system_command",
        f"{command.message_type} is issued by the system itself "
        f"({', '.join(sorted(command.issuers))}), not by clients: {command.instead}",
    )


class AuthorCheck:
    """Whether an author exists: in the partition's own state, else in the directory."""

    def __init__(self, directory: AuthorDirectory, wait_s: float) -> None:
        self.directory = directory
        self.wait_s = wait_s

    async def exists(self, author_id: str, here: Container[str]) -> bool:
        # Same partition (`here`): its registration may even be in this very transaction, which
        # then commits or aborts with this decision. Other partitions: the committed directory,
        # refreshed once (read-your-writes for registrations accepted before this command).
        if author_id in here or self.directory.known(author_id):
            return True
        await self.directory.refresh(self.wait_s)
        return self.directory.known(author_id)


__all__ = ["AuthorCheck", "issuer_refusal"]
