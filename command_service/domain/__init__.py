"""The pure domain of the blog: `decide(command, state) -> events | rejection`, `evolve`.

No I/O, no clock, no random ids: the shell passes the time, the ids and what it knows about other
aggregates (whether an author exists) in as values.
"""

from command_service.domain.actor import Actor
from command_service.domain.decide import Decision, decide, evolve, replay
from command_service.domain.rejections import Rejection
from command_service.domain.state import AggregateState, AuthorState, PostState, PostStatus

__all__ = [
    "Actor",
    "AggregateState",
    "AuthorState",
    "Decision",
    "PostState",
    "PostStatus",
    "Rejection",
    "decide",
    "evolve",
    "replay",
]
