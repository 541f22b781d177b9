"""The services as local child processes (used by `esctl up`'s kin: tests and benchmarks)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import httpx

from esctl.localstack import kafka_security as ks
from esctl.localstack.kafka import LocalKafkaCluster, free_port, run_sync
from shared.errors import InfrastructureUnavailable


class ServiceProcess:
    """One service process (`python -m <module>`) on a free port, logging to a file."""

    #: every process started and not yet reaped, for `terminate_leftovers`
    _started: ClassVar[set[subprocess.Popen[bytes]]] = set()

    def __init__(
        self, module: str, env: dict[str, str], log_dir: Path, name: str, cwd: Path | None = None
    ) -> None:
        self.module = module
        self.port = free_port()
        self.env = dict(os.environ) | env | {"HTTP_PORT": str(self.port), "LOG_FORMAT": "json"}
        self.log_path = log_dir / f"{name}.log"
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        self._as_own_kafka_principal()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module],
            env=self.env,
            cwd=self.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()  # the child has its own descriptor
        ServiceProcess._started.add(self.proc)

    def _as_own_kafka_principal(self) -> None:
        """On a secure local cluster (ESCTL_KAFKA_SECURITY_DIR set): run the service as its own
        principal, with its ACLs granted on the topic prefix and group it is started with."""
        security_dir = self.env.get(ks.SECURITY_DIR_ENV)
        if not security_dir:
            return
        directory = Path(security_dir)
        self.env = ks.service_env(directory, self.module, self.env)
        bindings = ks.service_bindings(self.module, self.env)
        # granted on the cluster itself: the service may be pointed at a proxy of it, or at
        # an address where it is about to appear
        cluster = LocalKafkaCluster.load(directory.parent)
        if bindings and cluster is not None:
            run_sync(ks.grant(directory, cluster.bootstrap_servers, bindings))

    @classmethod
    def terminate_leftovers(cls) -> list[int]:
        """Stop every process started here that is still running (a test that failed before
        stopping its services, say); returns their pids. SIGTERM, SIGKILL after 10 s."""
        alive = [p for p in cls._started if p.poll() is None]
        for p in alive:
            p.send_signal(signal.SIGCONT)
            p.terminate()
        for p in alive:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        cls._started.clear()
        return [p.pid for p in alive]

    async def wait_healthy(self, timeout_s: float = 60.0) -> None:
        async with httpx.AsyncClient() as client:
            deadline = asyncio.get_running_loop().time() + timeout_s
            while asyncio.get_running_loop().time() < deadline:
                if self.proc is None or self.proc.poll() is not None:
                    raise InfrastructureUnavailable(f"{self.module} exited:\n{self.logs()[-3000:]}")
                try:
                    if (await client.get(f"{self.url}/health", timeout=2)).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
        raise InfrastructureUnavailable(f"{self.module} not healthy in {timeout_s}s")

    def signal(self, sig: signal.Signals) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)

    async def kill(self) -> None:
        """SIGKILL, and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait, 10)

    async def stop(self) -> int | None:
        """SIGTERM (after SIGCONT, in case it was paused); SIGKILL after 20 s."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait, 10)
        return self.proc.returncode

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
