"""A service process and its authentication settings at start: on without a key, it does not
start (one clear line, exit 2); off, it says so loudly."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from esctl.localstack.kafka import free_port
from tests.e2e.harness import ROOT


def start(module: str, **env: str) -> subprocess.CompletedProcess[str]:
    nowhere = f"127.0.0.1:{free_port()}"  # nothing listens: a service that gets that far stops
    return subprocess.run(
        [sys.executable, "-m", module],
        env=dict(os.environ)
        | {"KAFKA_BOOTSTRAP_SERVERS": nowhere, "KAFKA_STARTUP_WAIT_S": "0.5", "HTTP_PORT": "0"}
        | env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def log_lines(result: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    lines = []
    for line in (result.stdout + result.stderr).splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return lines


@pytest.mark.parametrize(
    "module", ["command_service", "query_service", "projector_service", "workflow_service"]
)
def test_a_service_with_authentication_on_and_no_key_does_not_start(module: str) -> None:
    """AUTH_ENABLED unset (on) and no AUTH_HS256_SECRET or AUTH_JWKS_URL: exit 2 at once, one
    error line `auth_not_configured` naming the settings, no traceback."""
    result = start(module, AUTH_HS256_SECRET="", AUTH_JWKS_URL="", LOG_FORMAT="json")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in log_lines(result) if line.get("level") == "error"]
    assert len(errors) == 1, result.stderr[-2000:]
    assert errors[0]["code"] == "auth_not_configured"
    assert "AUTH_HS256_SECRET" in str(errors[0]["error"])


def test_a_service_with_authentication_off_warns_at_start() -> None:
    """AUTH_ENABLED=false: the service logs `authentication_off` as a warning at start (here
    it then gives up on a Kafka that is not there)."""
    result = start("command_service", AUTH_ENABLED="false", AUTH_HS256_SECRET="", LOG_FORMAT="json")
    lines = log_lines(result)
    warned = [line for line in lines if line.get("event") == "authentication_off"]
    assert warned and warned[0]["level"] == "warning", result.stderr[-2000:]
    assert "EVERY REQUEST IS ALLOWED EVERYTHING" in str(warned[0]["warning"])
