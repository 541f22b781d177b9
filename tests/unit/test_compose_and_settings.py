"""docker-compose.yml runs the real entry points with variables the settings really read."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

import yaml

from shared.settings import env_var_names

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"command_service", "projector_service", "query_service", "workflow_service"}


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def python_services() -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in compose()["services"].items()
        if svc.get("command", [None])[0] == "python"
    }


def test_compose_runs_each_of_the_four_services_by_its_module_entry_point() -> None:
    """Every service package is in the compose file, run as `python -m <package>`, and that
    package has a `__main__` module."""
    modules = set()
    for name, svc in python_services().items():
        command = svc["command"]
        assert command[:2] == ["python", "-m"], name
        module = command[2]
        assert importlib.util.find_spec(f"{module}.__main__") is not None, module
        modules.add(module)
    assert modules == PACKAGES


def test_compose_sets_only_environment_variables_that_the_settings_read() -> None:
    """A typo in the compose file (say KAFKA_BOOTSTRAP_SERVER) would be silently ignored at
    run time; here it fails."""
    for name, svc in python_services().items():
        module = svc["command"][2]
        settings_cls = importlib.import_module(f"{module}.bootstrap").SETTINGS
        main_source = (ROOT / module / "__main__.py").read_text()
        assert "run(SETTINGS()" in main_source, f"{module}.__main__ must use its SETTINGS"
        unknown = set(svc.get("environment", {})) - env_var_names(settings_cls)
        assert not unknown, f"{name} sets variables no setting reads: {sorted(unknown)}"


def test_compose_images_can_be_overridden_for_machines_without_a_registry() -> None:
    """Kafka and PostgreSQL images and the Python base image come from variables."""
    services = compose()["services"]
    assert services["kafka"]["image"].startswith("${KAFKA_IMAGE:-apache/kafka:")
    assert services["postgres"]["image"].startswith("${POSTGRES_IMAGE:-")
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ARG PYTHON_IMAGE" in dockerfile and "FROM ${PYTHON_IMAGE}" in dockerfile


def test_kafka_in_compose_is_configured_for_transactions_on_one_node() -> None:
    """Single-node transactions need replication factor 1 for the internal topics."""
    env = compose()["services"]["kafka"]["environment"]
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
