"""Toxiproxy (Shopify's TCP fault proxy) for the network fault tests: the server as a child
process, and a small client of its HTTP API (https://github.com/Shopify/toxiproxy#http-api).

The server is installed by `scripts/toxiproxy.sh` (a pinned `go install` into the cache outside
the checkout, skipped when there); `ToxiproxyServer.start()` runs it when it is missing, so a
developer running one test needs nothing else. Each server listens on a free port of its own and
`stop()` stops exactly that process.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import httpx

from esctl.localstack.kafka import free_port

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "scripts" / "toxiproxy.sh"

Stream = Literal["upstream", "downstream"]


def install() -> Path:
    """The toxiproxy-server binary, `go install`ed first when the cache lacks it."""
    done = subprocess.run(
        ["bash", str(INSTALL)], capture_output=True, text=True, check=False, timeout=600
    )
    if done.returncode != 0:
        raise RuntimeError(f"{INSTALL} failed:\n{done.stderr[-3000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


class ToxiproxyError(RuntimeError):
    """The API refused a call (the status and body are in the message)."""


def _body(response: httpx.Response) -> Any:
    if response.status_code >= 300:
        raise ToxiproxyError(
            f"toxiproxy {response.request.method} {response.request.url.path}: "
            f"{response.status_code} {response.text}"
        )
    return response.json() if response.content else {}


class Proxy:
    """One proxy, `listen` -> `upstream`, whose toxics are added and removed over the API (a
    client per call: the tests' event loops come and go, the proxy stays)."""

    def __init__(self, api_url: str, name: str, listen: str, upstream: str) -> None:
        self.api_url = api_url
        self.name = name
        self.listen = listen
        self.upstream = upstream

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        async with httpx.AsyncClient(base_url=self.api_url, timeout=10) as api:
            return _body(await api.request(method, path, json=body))

    async def add_toxic(
        self,
        kind: str,
        *,
        stream: Stream = "downstream",
        name: str | None = None,
        toxicity: float = 1.0,
        **attributes: int,
    ) -> str:
        """Add a toxic (`latency`, `reset_peer`, `timeout`, `bandwidth`...): its name."""
        toxic = name or f"{kind}_{stream}"
        await self._call(
            "POST",
            f"/proxies/{self.name}/toxics",
            {
                "name": toxic,
                "type": kind,
                "stream": stream,
                "toxicity": toxicity,
                "attributes": attributes,
            },
        )
        return toxic

    async def remove_toxic(self, name: str) -> None:
        await self._call("DELETE", f"/proxies/{self.name}/toxics/{name}")

    async def set_enabled(self, enabled: bool) -> None:
        """Disabled, the proxy closes every connection through it and refuses new ones."""
        await self._call("POST", f"/proxies/{self.name}", {"enabled": enabled})

    async def reset(self) -> None:
        """Enabled, and without toxics (what a test starts from)."""
        await self.set_enabled(True)
        found = await self._call("GET", f"/proxies/{self.name}/toxics")
        for toxic in found if isinstance(found, list) else []:
            await self.remove_toxic(toxic["name"])

    @contextlib.asynccontextmanager
    async def toxic(self, kind: str, **kwargs: Any) -> AsyncIterator[str]:
        """The toxic for the duration of the block (removed also when the block fails)."""
        name = await self.add_toxic(kind, **kwargs)
        try:
            yield name
        finally:
            await self.remove_toxic(name)

    @contextlib.asynccontextmanager
    async def cut(self) -> AsyncIterator[None]:
        """No connection through the proxy for the duration of the block: the ones open are
        closed, new ones refused."""
        await self.set_enabled(False)
        try:
            yield
        finally:
            await self.set_enabled(True)


class ToxiproxyServer:
    """toxiproxy-server on 127.0.0.1 and a free port, a child process of this one."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> None:
        binary = install()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(binary), "-host", "127.0.0.1", "-port", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=os.environ | {"LOG_LEVEL": "info"},  # not its per-packet trace
            )
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise ToxiproxyError(
                    f"toxiproxy-server exited:\n{self.log_path.read_text()[-2000:]}"
                )
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/version", timeout=2).status_code == 200:
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise ToxiproxyError(f"toxiproxy-server did not answer within {timeout_s:g}s")
            time.sleep(0.1)

    def proxy(self, name: str, listen: str, upstream: str) -> Proxy:
        """A new proxy listening on `listen` (host:port) that forwards to `upstream`."""
        _body(
            httpx.post(
                f"{self.url}/proxies",
                json={"name": name, "listen": listen, "upstream": upstream, "enabled": True},
                timeout=10,
            )
        )
        return Proxy(self.url, name, listen, upstream)

    def stop(self) -> None:
        """Stop the server this object started (and nothing else)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
