"""Who may ask: the issuer of a command the system alone issues, the actor a command names, and
the author a post names.

These are values the pure domain cannot find out by itself: the issuer check refuses before
any decision; the actor (`actor_of`) lets `decide` check ownership; the author check gives
`decide` its `author_exists`.
"""

from __future__ import annotations

from collections.abc import Container

from command_service.domain import Actor, Rejection
from command_service.ports import AuthorDirectory
from shared.messages.base import Command, CommandEnvelope


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


def actor_of(envelope: CommandEnvelope) -> Actor | None:
    """The actor a command record names, with its roles; None when it names none (a trusted
    producer: the Kafka ACL on the commands topic decides who may produce)."""
    if envelope.actor is None:
        return None
    return Actor(envelope.actor, frozenset(envelope.actor_roles or ()))


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


__all__ = ["AuthorCheck", "actor_of", "issuer_refusal"]
