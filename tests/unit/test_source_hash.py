"""The service image's tag hashes every file that the Dockerfile copies, tracked by git or not
(containers/source-hash.sh, used by containers/build-images.sh)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "containers" / "source-hash.sh"
CACHES = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".mypy_cache")


def source_hash(root: Path) -> str:
    done = subprocess.run(
        ["bash", str(SCRIPT), str(root)], capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.strip()


def git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of what the Dockerfile copies, as a git repository with everything committed."""
    copy = tmp_path / "project"
    copy.mkdir()
    for name in ("Dockerfile", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, copy / name)
    for package in (
        "shared",
        "command_service",
        "projector_service",
        "query_service",
        "workflow_service",
        "esctl",
    ):
        shutil.copytree(ROOT / package, copy / package, ignore=CACHES)
    (copy / "tests").mkdir()
    (copy / "tests" / "test_x.py").write_text("def test_x() -> None: ...\n")
    git(copy, "init", "-q")
    git(copy, "add", "-A")
    git(copy, "commit", "-qm", "copy")
    return copy


def test_an_untracked_source_file_changes_the_hash_and_caches_do_not(project: Path) -> None:
    """An untracked file under a copied directory makes a new hash (a new image); bytecode caches
    and files the Dockerfile does not copy leave it as it was."""
    before = source_hash(project)
    assert len(before) == 12 and before == source_hash(project)

    (project / "query_service" / "new_endpoint.py").write_text("ANSWER = 42\n")
    assert "new_endpoint.py" in git(project, "status", "--porcelain")  # untracked, not ignored
    with_new = source_hash(project)
    assert with_new != before

    cache = project / "query_service" / "__pycache__"
    cache.mkdir(exist_ok=True)
    (cache / "new_endpoint.cpython-311.pyc").write_bytes(b"\x00bytecode")
    (project / "tests" / "test_y.py").write_text("def test_y() -> None: ...\n")
    assert source_hash(project) == with_new

    (project / "README.md").write_text((project / "README.md").read_text() + "\nmore\n")
    assert source_hash(project) != with_new  # README.md is copied into the image too
