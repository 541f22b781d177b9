"""Prometheus metrics that more than one service exports, for the alert rules
(`deploy/prometheus/rules.yml`).

`esctl_dead_letters_total{topic}` counts every record written to a dead-letter topic, by that
topic: the command service's and the workflow service's (through the transactional processor)
and the projector's. Each writer calls `dead_letter_counter(topic)` once when it is built, so the
series exists at 0 before the first dead letter: an alert on `increase()` then sees the first one
(a counter that appears at 1 has no increase to Prometheus).
"""

from __future__ import annotations

from prometheus_client import Counter

DEAD_LETTERS = Counter(
    "esctl_dead_letters_total", "Records written to a dead-letter topic, by that topic", ["topic"]
)


def dead_letter_counter(topic: str) -> Counter:
    """The counter of `topic`'s dead letters, exported (at 0) from now on."""
    child: Counter = DEAD_LETTERS.labels(topic)
    return child
