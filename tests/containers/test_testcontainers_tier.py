"""Kafka and PostgreSQL started by testcontainers (image names from the environment), the four
services as processes on them: create -> review -> publish -> query, over HTTP and over the
commands topic."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.kafka.topics import Topics
from shared.messages import encode_command
from shared.messages.base import Command
from shared.messages.blog import ApprovePost, CreatePost, SubmitPostForReview
from shared.settings import KafkaSettings
from tests.conftest import unique
from tests.e2e.harness import ServiceProcess, http_client
from tests.kafka_helpers import produce, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.containers]


@pytest.fixture
async def services(
    container_kafka: str, container_postgres: str, tmp_path: Path
) -> AsyncIterator[dict[str, Any]]:
    prefix = unique("tc") + "."
    common = {
        "KAFKA_BOOTSTRAP_SERVERS": container_kafka,
        "TOPIC_PREFIX": prefix,
        "PARTITIONS": "3",
        "SESSION_TIMEOUT_MS": "6000",
        "READ_STORE_URL": container_postgres,
        "WORKFLOW_STORE_URL": container_postgres,
        "KEY_STORE_URL": container_postgres,
    }
    procs = {
        "command": ServiceProcess(
            "command_service", common | {"GROUP_ID": f"{prefix}cmd"}, tmp_path, "command"
        ),
        "projector": ServiceProcess(
            "projector_service", common | {"GROUP_ID": f"{prefix}proj"}, tmp_path, "projector"
        ),
        "query": ServiceProcess("query_service", common, tmp_path, "query"),
        "workflow": ServiceProcess(
            "workflow_service", common | {"GROUP_ID": f"{prefix}wf"}, tmp_path, "workflow"
        ),
    }
    procs["command"].start()
    await procs["command"].wait_healthy()
    for name in ("projector", "query", "workflow"):
        procs[name].start()
    for svc in procs.values():
        await svc.wait_healthy()
    yield {"prefix": prefix, "bootstrap": container_kafka, **procs}
    for svc in procs.values():
        await svc.stop()


async def _published(http: httpx.AsyncClient, query: str, post: str) -> bool:
    r = await http.get(f"{query}/posts/{post}")
    return r.status_code == 200 and r.json()["status"] == "published"


async def test_create_review_publish_query_over_http_and_over_the_commands_topic(
    services: dict[str, Any],
) -> None:
    cmd, query = services["command"].url, services["query"].url
    workflow = services["workflow"].url
    async with http_client(timeout=30) as http:
        r = await http.post(
            f"{cmd}/authors", json={"author_id": "tc-ada", "name": "Ada", "email": "a@b.c"}
        )
        assert r.status_code == 201, r.text

        # over HTTP: the review workflow assigns a reviewer; approval publishes through it
        post = f"tc-http-{uuid.uuid4().hex[:6]}"
        r = await http.post(
            f"{cmd}/posts", json={"post_id": post, "author_id": "tc-ada", "title": "Hello"}
        )
        assert r.status_code == 201, r.text
        token = r.headers["x-consistency-token"]
        r = await http.get(f"{query}/posts/{post}", headers={"X-Consistency-Token": token})
        assert r.status_code == 200 and r.json()["status"] == "draft"
        assert (await http.post(f"{cmd}/posts/{post}/submit")).status_code == 200
        assert (await http.post(f"{cmd}/posts/{post}/approve")).status_code == 200

        async def published() -> bool:
            return await _published(http, query, post)

        await wait_until(published, timeout_s=60, what="published by the review workflow")

        # The read model can show the post published a moment before the workflow service has
        # read PostPublished back from the events topic and finished its workflow: wait for both.
        async def review_finished() -> bool:
            r = await http.get(f"{workflow}/workflows", params={"post_id": post})
            statuses = {w["kind"]: w["status"] for w in r.json()["workflows"]}
            return statuses.get("review") == "published"

        await wait_until(review_finished, timeout_s=60, what="the review workflow published")

        # over the commands topic, as any Kafka client would
        other = f"tc-kafka-{uuid.uuid4().hex[:6]}"
        topics = Topics.from_settings(KafkaSettings(topic_prefix=services["prefix"]))
        commands: list[Command] = [
            CreatePost(author_id="tc-ada", title="Via Kafka"),
            SubmitPostForReview(),
            ApprovePost(reviewer="ann"),
        ]
        for command in commands:
            m = encode_command(command, command_id=uuid.uuid4(), aggregate_id=other)
            await produce(services["bootstrap"], topics.commands, [(m.key, m.value)])

        async def other_published() -> bool:
            return await _published(http, query, other)

        await wait_until(other_published, timeout_s=60, what="the Kafka-produced post published")
        r = await http.get(f"{query}/streams/{other}/events")
        types = [e["type"] for e in r.json()["events"]]
        assert types[:2] == ["PostCreated", "PostSubmittedForReview"]
        assert "PostApproved" in types and types[-1] == "PostPublished"
