"""`docker-compose.yml` for real: Kafka, PostgreSQL and the four services in containers (podman-
compose with the local images, or Docker Compose with the official ones), with the command
service scaled to two replicas: all healthy by the compose file's own health checks, a smoke
scenario through them, and every command processed exactly once by the two replicas."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from esctl.localstack.kafka import free_port
from shared.kafka.clients import wait_for_brokers
from shared.kafka.topics import Topics
from shared.kek import KeyRing, decode_kek
from shared.messages import encode_command
from shared.messages.blog import CreatePost, EditPost, PublishPost
from shared.settings import KafkaSettings
from tests.e2e.harness import E2E_SECRET, ROOT, check_log_invariants, http_client
from tests.kafka_helpers import produce, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.containers, pytest.mark.slow]

COMPOSE = shlex.split(os.environ.get("COMPOSE_CMD", "podman-compose"))
ENGINE = os.environ.get("CONTAINER_CLI", "podman")
SERVICES = (
    "kafka",
    "postgres",
    "command-service",
    "projector",
    "query-service",
    "workflow-service",
)


def compose_secrets(where: Path) -> dict[str, str]:
    """The stack's secrets, made by the script the README names (`containers/compose-env.sh`)."""
    env_file = where / "compose.env"
    subprocess.run(["bash", str(ROOT / "containers" / "compose-env.sh"), str(env_file)], check=True)
    assert env_file.stat().st_mode & 0o777 == 0o600
    pairs = (line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    return dict(pairs)


class Stack:
    def __init__(self, secrets: dict[str, str]) -> None:
        self.project = f"esctl{uuid.uuid4().hex[:8]}"
        self.secrets = secrets
        self.ports = {
            "KAFKA_PORT": free_port(),
            "POSTGRES_PORT": free_port(),
            "query": free_port(),
            "projector": free_port(),
            "workflow": free_port(),
        }
        self.env = (
            dict(os.environ)
            | secrets
            | {
                "KAFKA_PORT": str(self.ports["KAFKA_PORT"]),
                "POSTGRES_PORT": str(self.ports["POSTGRES_PORT"]),
                # one free host port per replica: the command service is scaled
                "COMMAND_SERVICE_PORTS": ":8001",
                "QUERY_SERVICE_PORTS": f"{self.ports['query']}:8002",
                "PROJECTOR_PORTS": f"{self.ports['projector']}:8003",
                "WORKFLOW_SERVICE_PORTS": f"{self.ports['workflow']}:8004",
                # the services verify tokens signed with it; http_client sends an admin token
                "AUTH_HS256_SECRET": E2E_SECRET,
            }
        )

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.ports['KAFKA_PORT']}"

    def compose(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*COMPOSE, "-p", self.project, "-f", str(ROOT / "docker-compose.yml"), *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def containers(self) -> dict[str, list[str]]:
        """Container names by compose service."""
        out = subprocess.run(
            [
                ENGINE,
                "ps",
                "-a",
                "--filter",
                f"label=com.docker.compose.project={self.project}",
                "--format",
                '{{.Names}} {{index .Labels "com.docker.compose.service"}}',
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        names: dict[str, list[str]] = {}
        for line in out.splitlines():
            if line.strip():
                name, service = line.split()
                names.setdefault(service, []).append(name)
        return names

    def health(self, container: str) -> bool:
        """Run the compose file's health check of `container` now (podman runs health checks
        from systemd timers, absent here, so they are run on demand; Docker reports its own)."""
        if ENGINE == "podman":
            run = subprocess.run(
                [ENGINE, "healthcheck", "run", container], capture_output=True, check=False
            )
            return run.returncode == 0
        status = subprocess.run(
            [ENGINE, "inspect", "--format", "{{.State.Health.Status}}", container],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        return status == "healthy"

    def http_port(self, container: str, port: int) -> int:
        out = subprocess.run(
            [ENGINE, "port", container, f"{port}/tcp"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return int(out.strip().splitlines()[0].rsplit(":", 1)[1])

    def remove_leftovers(self) -> None:
        """Remove what `down` left: podman-compose 1.6 does not stop the extra replicas of a
        scaled service, which keeps the project's pod and network alive. Only this project's
        containers, pod and network are touched."""
        leftovers = [c for cs in self.containers().values() for c in cs]
        if leftovers:
            subprocess.run(
                [ENGINE, "rm", "-f", "-t", "2", *leftovers], capture_output=True, check=False
            )
        if ENGINE == "podman":
            subprocess.run(
                [ENGINE, "pod", "rm", "-f", "-t", "2", f"pod_{self.project}"],
                capture_output=True,
                check=False,
            )
        subprocess.run(
            [ENGINE, "network", "rm", "-f", f"{self.project}_default"],
            capture_output=True,
            check=False,
        )
        assert not self.containers(), f"containers of {self.project} survived"

    def logs(self, container: str) -> str:
        run = subprocess.run(
            [ENGINE, "logs", container], capture_output=True, text=True, check=False
        )
        return run.stdout + run.stderr


@pytest.fixture(scope="module")
def stack(engine_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(compose_secrets(tmp_path_factory.mktemp("compose")))
    up = stack.compose("up", "-d", "--scale", "command-service=2")
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        yield stack
    finally:
        names = stack.containers()
        for service, containers in names.items():
            for c in containers:
                print(f"--- {service} {c}\n{stack.logs(c)[-1500:]}")  # noqa: T201  # on failure
        stack.compose("down", "-v", "-t", "5", timeout=300)
        stack.remove_leftovers()


async def test_the_stack_comes_up_healthy_by_its_own_health_checks(stack: Stack) -> None:
    names = stack.containers()
    assert set(SERVICES) <= set(names), names
    assert len(names["command-service"]) == 2

    async def all_healthy() -> bool:
        return all(stack.health(c) for cs in names.values() for c in cs)

    await wait_until(all_healthy, timeout_s=240, interval_s=2, what="every container healthy")


async def test_a_smoke_scenario_passes_through_the_containers(stack: Stack) -> None:
    cmd_port = stack.http_port(stack.containers()["command-service"][0], 8001)
    cmd = f"http://127.0.0.1:{cmd_port}"
    query = f"http://127.0.0.1:{stack.ports['query']}"
    workflow = f"http://127.0.0.1:{stack.ports['workflow']}"
    async with http_client(timeout=30) as http:

        async def ready() -> bool:
            try:
                codes = [
                    (await http.get(f"{url}/health")).status_code for url in (cmd, query, workflow)
                ]
            except httpx.HTTPError:
                return False
            return codes == [200, 200, 200]

        await wait_until(ready, timeout_s=240, interval_s=2, what="services answering")
        r = await http.post(
            f"{cmd}/authors", json={"author_id": "cz-ada", "name": "Ada", "email": "a@b.c"}
        )
        assert r.status_code == 201, r.text
        post = f"cz-{uuid.uuid4().hex[:6]}"
        r = await http.post(
            f"{cmd}/posts", json={"post_id": post, "author_id": "cz-ada", "title": "Hi"}
        )
        assert r.status_code == 201, r.text
        r = await http.get(
            f"{query}/posts/{post}",
            headers={"X-Consistency-Token": r.headers["x-consistency-token"]},
        )
        assert r.status_code == 200, r.text
        assert (await http.post(f"{cmd}/posts/{post}/submit")).status_code == 200
        assert (await http.post(f"{cmd}/posts/{post}/approve")).status_code == 200

        async def published() -> bool:
            r = await http.get(f"{query}/posts/{post}")
            return r.status_code == 200 and r.json()["status"] == "published"

        await wait_until(published, timeout_s=60, what="published by the workflow (in PostgreSQL)")

        async def review_finished() -> bool:
            # the workflow service learns of PostPublished from the event log, like the
            # projector, and may see it a moment after the read model does
            r = await http.get(f"{workflow}/workflows", params={"post_id": post})
            kinds = {w["kind"]: w["status"] for w in r.json()["workflows"]}
            return kinds.get("review") == "published"

        await wait_until(review_finished, timeout_s=60, what="the review workflow published")


async def test_two_command_service_replicas_process_every_command_exactly_once(
    stack: Stack,
) -> None:
    await wait_for_brokers(stack.bootstrap, timeout_s=120)
    topics = Topics.from_settings(KafkaSettings())
    sent: list[uuid.UUID] = []
    records: list[tuple[bytes | None, bytes]] = []
    for i in range(300):
        post = f"sc-{i}-{uuid.uuid4().hex[:4]}"
        for command in (
            CreatePost(author_id="cz-ada", title=f"T{i}"),
            EditPost(title=f"T{i} (edited)"),
            PublishPost(),  # rejected: not approved (rejections are outcomes too)
        ):
            cid = uuid.uuid4()
            sent.append(cid)
            m = encode_command(command, command_id=cid, aggregate_id=post)
            records.append((m.key, m.value))

    async def author() -> bool:
        async with http_client(timeout=10) as http:
            port = stack.http_port(stack.containers()["command-service"][0], 8001)
            r = await http.post(
                f"http://127.0.0.1:{port}/authors",
                json={"author_id": "cz-ada", "name": "Ada", "email": "a@b.c"},
            )
            return r.status_code in (201, 409)

    await wait_until(author, timeout_s=120, interval_s=2, what="the author registered")
    await produce(stack.bootstrap, topics.commands, records)

    async def all_decided() -> bool:
        try:
            await check_log_invariants(stack.bootstrap, "", 6, sent)
        except AssertionError:
            return False
        return True

    await wait_until(all_decided, timeout_s=180, interval_s=3, what="every command decided")
    check = await check_log_invariants(stack.bootstrap, "", 6, sent)
    statuses = [check.outcomes[c].status for c in sent]
    assert statuses.count("accepted") == 600
    assert statuses.count("rejected") == 300
    # both replicas took part: each owned partitions of the commands topic
    owners = [
        c
        for c in stack.containers()["command-service"]
        if any(
            json.loads(line).get("event") == "partition_acquired"
            for line in stack.logs(c).splitlines()
            if line.startswith("{")
        )
    ]
    assert len(owners) == 2, "one replica owned no partition"


async def test_the_key_store_is_apart_its_keys_wrapped_and_the_ports_on_loopback(
    stack: Stack,
) -> None:
    """The key store has its own database and role: the read store's role cannot even connect
    to it; its table holds only keys wrapped by the stack's KEK (none of them in the clear in
    the dump); every published port is bound to 127.0.0.1."""
    port = stack.http_port(stack.containers()["command-service"][0], 8001)

    async def author() -> bool:
        async with http_client(timeout=10) as http:
            try:
                r = await http.post(
                    f"http://127.0.0.1:{port}/authors",
                    json={"author_id": "cz-ada", "name": "Ada", "email": "a@b.c"},
                )
            except httpx.HTTPError:
                return False
            return r.status_code in (201, 409)

    await wait_until(author, timeout_s=240, interval_s=2, what="an author registered")
    pg = f"127.0.0.1:{stack.ports['POSTGRES_PORT']}"
    read_role = f"postgresql://readstore:{stack.secrets['READ_STORE_PASSWORD']}@{pg}"
    with pytest.raises(asyncpg.PostgresError, match="permission denied"):
        await asyncpg.connect(f"{read_role}/keystore", timeout=10)
    conn = await asyncpg.connect(
        f"postgresql://keystore:{stack.secrets['KEY_STORE_PASSWORD']}@{pg}/keystore", timeout=10
    )
    try:
        dump = [dict(r) for r in await conn.fetch("SELECT * FROM subject_keys")]
    finally:
        await conn.close()
    ring = KeyRing(decode_kek(stack.secrets["KEY_ENCRYPTION_KEY"], "KEY_ENCRYPTION_KEY"))
    assert "cz-ada" in {r["subject"] for r in dump}
    raw = b"".join(bytes(r["key"]) for r in dump if r["key"] is not None)
    for row in dump:
        if row["key"] is not None:
            assert row["kek_id"] == ring.current_id
            assert ring.unwrap(row["subject"], row["kek_id"], bytes(row["key"])) not in raw
    for containers in stack.containers().values():
        for name in containers:
            published = subprocess.run(
                [ENGINE, "port", name], capture_output=True, text=True, check=True
            ).stdout.split()
            hosts = {p.rsplit(":", 1)[0] for p in published if ":" in p and "->" not in p}
            assert hosts <= {"127.0.0.1"}, f"{name} publishes on {hosts}"
