"""Debian's PostgreSQL as a local process on loopback, installed when missing.

As root (CI, these machines) the server runs as the `postgres` system user, which PostgreSQL
requires; its data directory then defaults to `/var/tmp/esctl/postgres-<port>` because the
`postgres` user may not be able to enter a checkout under a private home directory.
Authentication is `trust` on 127.0.0.1 only: this is a development and test database.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from shared.errors import ConfigurationError, InfrastructureUnavailable

DEFAULT_DB = "esctl"


def find_bin_dir() -> Path | None:
    """The newest `/usr/lib/postgresql/<v>/bin` with initdb and pg_ctl, if any."""
    root = Path("/usr/lib/postgresql")
    if not root.exists():
        return None
    candidates = sorted(
        (p / "bin" for p in root.iterdir() if (p / "bin" / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    return candidates[-1] if candidates else None


def ensure_installed() -> Path:
    """Return the server's bin directory, installing Debian's `postgresql` package if needed."""
    found = find_bin_dir()
    if found is not None:
        return found
    if os.geteuid() != 0:
        raise ConfigurationError(
            "PostgreSQL server is not installed; run: sudo apt-get install -y postgresql"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"],
    ):
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise InfrastructureUnavailable(
                f"{' '.join(cmd)} failed:\n{result.stdout[-1500:]}{result.stderr[-1500:]}"
            )
    found = find_bin_dir()
    if found is None:
        raise InfrastructureUnavailable("postgresql installed but no initdb found")
    return found


def _as_root() -> bool:
    return os.geteuid() == 0


def default_data_dir(port: int, state_dir: Path) -> Path:
    if _as_root():
        return Path("/var/tmp/esctl") / f"postgres-{port}"  # noqa: S108  # a fixed, documented place
    return state_dir / f"postgres-{port}"


@dataclass
class LocalPostgres:
    """One PostgreSQL cluster in `data_dir`, listening on 127.0.0.1:`port`."""

    data_dir: Path
    port: int = 5433
    database: str = DEFAULT_DB

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    def _run(self, args: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = args
        if _as_root():
            cmd = ["runuser", "-u", "postgres", "--", *args]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if check and result.returncode != 0:
            raise InfrastructureUnavailable(
                f"{' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout[-1500:]}{result.stderr[-1500:]}"
            )
        return result

    def _prepare_dir(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if _as_root():
            pg = pwd.getpwnam("postgres")
            os.chown(self.data_dir, pg.pw_uid, pg.pw_gid)
            check = subprocess.run(
                ["runuser", "-u", "postgres", "--", "test", "-x", str(self.data_dir)], check=False
            )
            if check.returncode != 0:
                raise ConfigurationError(
                    f"the postgres user cannot enter {self.data_dir}: a parent directory is "
                    "private (mode 0700?). Use a data dir under /var/tmp, or chmod o+x its "
                    "parents."
                )
        self.data_dir.chmod(0o700)

    def start(self) -> None:
        """initdb (first time), start on loopback, create the database; idempotent."""
        bin_dir = ensure_installed()
        self._prepare_dir()
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                ]
            )
        if not self.is_running():
            options = (
                f"-p {self.port} -c listen_addresses=127.0.0.1 "
                f"-c unix_socket_directories={self.data_dir} "
                "-c fsync=on -c max_connections=200"
            )
            self._run(
                [
                    str(bin_dir / "pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-o",
                    options,
                    "-l",
                    str(self.data_dir / "server.log"),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]
            )
        self._create_database(bin_dir)

    def _create_database(self, bin_dir: Path) -> None:
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", self.database):
            raise ConfigurationError(f"invalid database name {self.database!r}")
        psql = [
            str(bin_dir / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-tAc",
        ]
        exists = self._run([*psql, f"SELECT 1 FROM pg_database WHERE datname='{self.database}'"])  # noqa: S608  # name checked above
        if exists.stdout.strip() != "1":
            self._run([*psql, f'CREATE DATABASE "{self.database}"'])

    def is_running(self) -> bool:
        bin_dir = find_bin_dir()
        if bin_dir is None or not (self.data_dir / "PG_VERSION").exists():
            return False
        result = self._run(
            [str(bin_dir / "pg_ctl"), "-D", str(self.data_dir), "status"], check=False
        )
        return result.returncode == 0

    def stop(self, mode: str = "fast") -> None:
        """`pg_ctl stop -m <mode>`: fast, or immediate (a crash: recovery at the next start)."""
        bin_dir = find_bin_dir()
        if bin_dir is None or not self.is_running():
            return
        self._run(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-m",
                mode,
                "-w",
                "-t",
                "60",
                "stop",
            ]
        )

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
