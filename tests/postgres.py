"""A real PostgreSQL for the coordinator's tests, started by the tests themselves.

Debian's server binaries (`scripts/install-system-deps.sh` installs
`postgresql`): `initdb` in a temporary directory and `pg_ctl start` on a free
loopback port, as the `postgres` user when the tests run as root (PostgreSQL
refuses to run as root), as the current user otherwise; stopped and removed
afterwards. One server per test session (the `postgres` fixture, registered
in conftest.py); each test gets a database of its own. Missing binaries fail
the test with what to install: they never skip it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from novacron.simulations.ports import free_port

BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def _binary(name: str) -> str:
    for directory in BIN_DIRS:
        if (directory / name).exists():
            return str(directory / name)
    raise AssertionError(
        f"PostgreSQL's {name} is missing: install Debian's postgresql package "
        "(sh scripts/install-system-deps.sh, as root)"
    )


def _as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class Postgres:
    """One running server; `database()` makes a fresh database and returns its URL."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self._count = 0

    def url(self, database: str = "postgres") -> str:
        user = "postgres" if os.geteuid() == 0 else os.environ.get("USER", "postgres")
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        self._count += 1
        name = f"coord_{os.getpid()}_{self._count}"
        subprocess.run(
            _as_owner([_binary("createdb"), "-h", "127.0.0.1", "-p", str(self.port), name]),
            check=True,
            capture_output=True,
            timeout=60,
        )
        return self.url(name)


@contextmanager
def running_postgres() -> Iterator[Postgres]:
    directory = Path(tempfile.mkdtemp(prefix="novacron-pg-"))
    data = directory / "data"
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
    port = free_port()
    run = {"check": True, "capture_output": True, "timeout": 120}
    subprocess.run(
        _as_owner([_binary("initdb"), "-D", str(data), "--auth=trust", "-E", "UTF8", "--no-sync"]),
        **run,  # type: ignore[call-overload]
    )
    options = f"-p {port} -c listen_addresses=127.0.0.1 -k {directory} -c fsync=off"
    subprocess.run(
        _as_owner(
            [
                _binary("pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(directory / "log"),
                "-w",
                "start",
            ]
        ),
        **run,  # type: ignore[call-overload]
    )
    try:
        yield Postgres(directory, port)
    finally:
        subprocess.run(
            _as_owner([_binary("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """The session's one server (started only if a test asks for it)."""
    with running_postgres() as server:
        yield server
