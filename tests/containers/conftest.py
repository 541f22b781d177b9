"""The container tier: Kafka and PostgreSQL from images (testcontainers), the compose stack.

Runs after the other tiers (`make test-containers`, called by `make test`), against Docker with
the official images or podman with the locally built ones (`containers/tier.sh` sets the engine
and the image names). With `ESCTL_CONTAINER_TIER=1` (CI) a missing engine is a failure; otherwise
the tier is skipped with the reason.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests import infra

REQUIRED = os.environ.get("ESCTL_CONTAINER_TIER") == "1"


def _engine_or_skip() -> None:
    try:
        reachable = infra.container_engine_reachable()
    except Exception as exc:  # ESCTL_TEST_INFRA=container re-raises the reason
        reachable = False
        reason = repr(exc)
    else:
        reason = "no container engine answers (set DOCKER_HOST, or run `make test-containers`)"
    if reachable:
        return
    if REQUIRED:
        pytest.fail(f"the container tier is required here (ESCTL_CONTAINER_TIER=1): {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def container_kafka() -> Iterator[str]:
    _engine_or_skip()
    with infra.kafka_container(infra.KAFKA_IMAGE) as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def container_postgres() -> Iterator[str]:
    _engine_or_skip()
    with infra.postgres_container(infra.POSTGRES_IMAGE) as url:
        yield url


@pytest.fixture(scope="session")
def engine_ready() -> None:
    _engine_or_skip()
