"""The import contracts of `make check` (pyproject.toml, `[tool.importlinter]`) hold on the tree,
and each one breaks when a module crosses its boundary (checked on a copy of the tree)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = [
    "shared",
    "esctl",
    "command_service",
    "projector_service",
    "query_service",
    "workflow_service",
]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    # The tree's own directory first on the path: the copy, not the installed project, is linted.
    env = os.environ | {"PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(tree / "pyproject.toml")],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the packages and pyproject.toml, to break on purpose."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _prepend(module: Path, line: str) -> None:
    module.write_text(line + "\n" + module.read_text())


def test_the_import_contracts_hold_on_the_tree() -> None:
    """`lint-imports` keeps every contract of pyproject.toml on the project as it is."""
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        (
            "query_service/api.py",
            "import aiokafka",
            "Only shared.kafka imports aiokafka",
        ),
        (
            "shared/readmodel/store.py",
            "from aiokafka.errors import KafkaError",
            "Only shared.kafka imports aiokafka",
        ),
        (
            "query_service/api.py",
            "import command_service.api",
            "Services never import each other",
        ),
        (
            "esctl/lag.py",
            "from aiokafka import TopicPartition",
            "Only shared.kafka imports aiokafka",
        ),
        (
            "esctl/send.py",
            "import command_service.domain",
            "Services never import each other, nor the operator's tools",
        ),
        (
            "shared/http.py",
            "import esctl.output",
            "shared serves the services and the tools, and imports neither",
        ),
        (
            "workflow_service/policies.py",
            "import httpx",
            "Pure modules (domain, policies, views, message contract) import nothing",
        ),
        (
            "command_service/domain/decide.py",
            "from shared.kafka import clients",
            "Pure modules (domain, policies, views, message contract) import nothing",
        ),
        (
            "shared/messages/base.py",
            "import shared.keystore",
            "Pure modules (domain, policies, views, message contract) import nothing",
        ),
    ],
)
def test_a_module_crossing_a_boundary_breaks_its_contract(
    tree: Path, module: str, line: str, contract: str
) -> None:
    """An import across a boundary makes `lint-imports` fail and name the contract it breaks."""
    _prepend(tree / module, line)
    result = _lint_imports(tree)
    assert result.returncode != 0
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in " ".join(broken.split()), result.stdout
