"""docker-compose.yml runs the real entry points with variables the settings really read."""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from shared.kek import decode_kek
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


# --- stores: secrets, key store apart, loopback (issue 17, item 5) ---------------------------

SECRET = re.compile(r"\$\{([A-Z_]+):\?[^}]+\}")


def test_compose_has_no_fixed_password_or_key() -> None:
    """Every password and the key-encryption key come from variables without a default
    (`${VAR:?...}`: compose refuses to start without them), in the URLs too."""
    for name, svc in compose()["services"].items():
        for var, raw in svc.get("environment", {}).items():
            value = str(raw)
            if "PASSWORD" in var or var == "KEY_ENCRYPTION_KEY":
                assert SECRET.fullmatch(value), f"{name}: {var}={value}"
            if "://" in value and "@" in value:
                password = value.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
                assert SECRET.fullmatch(password), f"{name}: {var} has a fixed password"


def test_compose_publishes_every_port_on_loopback_unless_asked_otherwise() -> None:
    for name, svc in compose()["services"].items():
        for port in svc.get("ports", []):
            assert str(port).startswith("${PUBLISH_ADDRESS:-127.0.0.1}:"), f"{name}: {port}"


def test_the_key_store_has_its_own_database_and_role_and_only_its_users_know_them() -> None:
    """The key store's role and database are not the read store's; only the command and query
    services get the key store's URL and the KEK, and no service connects as the administrator."""
    services = compose()["services"]

    def role_and_db(url: str) -> tuple[str, str]:
        rest = url.split("://", 1)[1]
        return rest.split(":", 1)[0], rest.rsplit("/", 1)[1]

    stores: dict[str, set[tuple[str, str]]] = {}
    for name, svc in python_services().items():
        env = svc.get("environment", {})
        for var in ("KEY_STORE_URL", "READ_STORE_URL", "WORKFLOW_STORE_URL"):
            if var in env:
                stores.setdefault(var, set()).add(role_and_db(str(env[var])))
        has_keys = {"KEY_STORE_URL", "KEY_ENCRYPTION_KEY"} & set(env)
        if name in ("command-service", "query-service"):
            assert has_keys == {"KEY_STORE_URL", "KEY_ENCRYPTION_KEY"}, name
        else:
            assert not has_keys and "KEY_STORE_PASSWORD" not in str(env), name
    assert stores["KEY_STORE_URL"] == {("keystore", "keystore")}
    assert stores["READ_STORE_URL"] == stores["WORKFLOW_STORE_URL"] == {("readstore", "readstore")}
    postgres = services["postgres"]
    assert postgres["environment"]["POSTGRES_USER"] not in {"keystore", "readstore"}
    init = (ROOT / "containers" / "postgres-init" / "10-stores.sh").read_text()
    assert "REVOKE ALL ON DATABASE keystore FROM PUBLIC" in init
    assert "NOSUPERUSER" in init


def test_compose_env_script_makes_the_secrets_once_with_mode_0600(tmp_path: Path) -> None:
    """`containers/compose-env.sh FILE` writes the five secrets compose needs, random, 0600;
    run again it changes nothing (a new KEK would orphan every stored key)."""
    env_file = tmp_path / ".env"
    script = ROOT / "containers" / "compose-env.sh"
    subprocess.run(["bash", str(script), str(env_file)], check=True, capture_output=True)
    first = env_file.read_text()
    values = dict(line.split("=", 1) for line in first.splitlines())
    assert set(values) == {
        "POSTGRES_PASSWORD",
        "READ_STORE_PASSWORD",
        "KEY_STORE_PASSWORD",
        "AUTH_HS256_SECRET",
        "KEY_ENCRYPTION_KEY",
    }
    assert len(set(values.values())) == 5
    assert len(decode_kek(values["KEY_ENCRYPTION_KEY"], "KEY_ENCRYPTION_KEY")) == 32
    assert all(
        re.fullmatch(r"[0-9a-f]{48}", v)
        for k, v in values.items()
        if "PASSWORD" in k or k == "AUTH_HS256_SECRET"
    )
    assert env_file.stat().st_mode & 0o777 == 0o600
    again = subprocess.run(["bash", str(script), str(env_file)], check=True, capture_output=True)
    assert env_file.read_text() == first
    assert b"nothing changed" in again.stderr
