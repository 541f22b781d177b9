"""The projector positions newly assigned partitions even when the read store is gone at that
moment: it waits for the store instead of leaving them without a position (the consumer swallows
a rebalance callback's error: they would be skipped silently until the next rebalance)."""

from __future__ import annotations

from projector_service.projector import Projector
from shared.readmodel.store import ReadStoreUnavailable


class ComesBack:
    """A read store that is gone for its first `down` reads of the positions."""

    def __init__(self, down: int) -> None:
        self.down = down
        self.calls = 0

    async def active_generation(self) -> int:
        return 1

    async def positions(self, gen: int) -> dict[int, int]:
        self.calls += 1
        if self.calls <= self.down:
            raise ReadStoreUnavailable("the read store at db:5432/x does not answer (refused)")
        return {0: 7, 1: 3}


async def test_an_assignment_while_the_store_is_gone_waits_and_seeks_to_the_stored_positions() -> (
    None
):
    store = ComesBack(down=3)
    projector = Projector(
        bootstrap_servers="127.0.0.1:1",
        topic="t",
        group_id="g",
        store=store,  # type: ignore[arg-type]
        dlq_topic="t.dlq",
    )
    projector.store_retry_s = (0.001, 0.002)
    seeks: list[tuple[int, int]] = []
    projector._consumer.seek = lambda p, o: seeks.append((p, o))  # type: ignore[method-assign]
    try:
        await projector._position_assigned([0, 1])
    finally:
        await projector.stop()
    assert store.calls == 4
    assert seeks == [(0, 7), (1, 3)]
    assert projector._next == {0: 7, 1: 3}
