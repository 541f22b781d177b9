"""A deterministic mix of commands, and the outcome each must get (folding the domain).

Commands of one aggregate share a key, hence a partition, hence an order: the expected status
of each command follows from applying the commands of its aggregate in order.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass

from command_service.domain import AggregateState, Rejection, decide, evolve
from shared.kafka import make_producer
from shared.messages.base import Command
from shared.messages.blog import (
    ApprovePost,
    ArchivePost,
    CreatePost,
    EditPost,
    PublishPost,
    RejectPost,
    SubmitPostForReview,
    UnpublishPost,
)
from shared.messages.codec import encode_command, utcnow


@dataclass(frozen=True)
class Planned:
    command_id: uuid.UUID
    aggregate_id: str
    command: Command
    expected_version: int | None = None


def plan_posts(
    posts: int, per_post: int, authors: list[str], seed: int = 7
) -> tuple[list[Planned], dict[uuid.UUID, str]]:
    """`posts` aggregates with `per_post` commands each, interleaved; and expected statuses."""
    rng = random.Random(seed)
    queues: list[list[Planned]] = []
    expected: dict[uuid.UUID, str] = {}
    for i in range(posts):
        post_id = f"post-{seed}-{i}"
        state: AggregateState | None = None
        queue: list[Planned] = []
        for j in range(per_post):
            if j == 0:
                command: Command = CreatePost(
                    author_id=rng.choice(authors), title=f"T{i}", body="b", tags=["x"]
                )
            else:
                command = rng.choice(
                    [
                        EditPost(title=f"T{i}.{j}"),
                        SubmitPostForReview(),
                        ApprovePost(),
                        RejectPost(reason="r"),
                        PublishPost(),
                        PublishPost(),
                        UnpublishPost(),
                        EditPost(body=f"b{j}"),
                        ArchivePost() if rng.random() < 0.1 else PublishPost(),
                    ]
                )
            version = state.version if state else 0
            expected_version = rng.choice([None, None, version, max(0, version - 1)])
            planned = Planned(
                uuid.UUID(int=rng.getrandbits(128), version=4), post_id, command, expected_version
            )
            decision = decide(
                command,
                state,
                aggregate_id=post_id,
                expected_version=expected_version,
                author_exists=True,
            )
            if isinstance(decision, Rejection):
                expected[planned.command_id] = "rejected"
            else:
                expected[planned.command_id] = "accepted"
                for event in decision:
                    state = evolve(state, event, aggregate_id=post_id, at=utcnow())
            queue.append(planned)
        queues.append(queue)
    # Interleave aggregates, keeping each aggregate's own order.
    interleaved: list[Planned] = []
    while any(queues):
        for queue in queues:
            if queue:
                interleaved.append(queue.pop(0))
    return interleaved, expected


async def produce_planned(
    bootstrap: str, topic: str, planned: list[Planned], *, rate_per_s: float
) -> None:
    """Produce at about `rate_per_s`, in order (idempotent producer keeps per-key order)."""
    producer = make_producer(bootstrap)
    await producer.start()
    try:
        started = time.monotonic()
        futures = []
        for n, item in enumerate(planned):
            message = encode_command(
                item.command,
                command_id=item.command_id,
                aggregate_id=item.aggregate_id,
                expected_version=item.expected_version,
            )
            futures.append(
                await producer.send(topic, message.value, key=message.key, headers=message.headers)
            )
            ahead = n / rate_per_s - (time.monotonic() - started)
            if ahead > 0.01:
                await asyncio.sleep(ahead)
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
