"""The local API served on a unix socket for tests: fake controls, raw exchanges, parsing.

`served` (a fixture) runs the API's router in the test's loop over stand-ins
for the agent's controls (`View`, `Vms`, `Migrations`); `exchange` sends raw
bytes and reads whatever comes back; `answers` splits it into HTTP answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from novacron.agent import httpd
from novacron.agent.api import build_router
from novacron.agent.api_requests import MigrateRequest
from novacron.agent.core.migration.saga import MigrationInfo
from novacron.agent.core.refusals import RefusalKind, Refused
from novacron.agent.history import HistoryRow
from novacron.agent.httpd import HttpServer
from novacron.agent.migration_row import MigrationRow
from novacron.agent.recovery import Recovered
from novacron.agent.vms import VmCreated, VmDeleted, VmStarted, VmStopped
from novacron.agent.vmspec import VmSpec
from tests.fake_mesh import Fixed


def exchange(sock: str, data: bytes, half_close: bool = True, timeout: float = 10.0) -> bytes:
    """Send raw bytes, then read everything the server says until it closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(sock)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.sendall(data)
            if half_close:
                conn.shutdown(socket.SHUT_WR)
        chunks = []
        with contextlib.suppress(ConnectionResetError):
            while chunk := conn.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)


STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5][0-9]{2}) [^\r\n]*")


def answers(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split a connection's output into whole HTTP answers; assert it is nothing else."""
    found = []
    while raw:
        head, sep, raw = raw.partition(b"\r\n\r\n")
        assert sep, f"headers never end: {head[:200]!r}"
        lines = head.split(b"\r\n")
        status_line = STATUS_LINE.fullmatch(lines[0])
        assert status_line, f"not a status line: {lines[0][:200]!r}"
        status = int(status_line.group(1))
        headers = {}
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            assert colon, f"bad header line {line!r}"
            headers[name.decode().strip().lower()] = value.decode().strip()
        if status < 200:
            found.append((status, headers, b""))
            continue
        length = int(headers["content-length"])
        if length and (not raw or raw.startswith(b"HTTP/1.1 ")):
            body = b""  # the answer to a HEAD (bodies are JSON): the length, not the body
        else:
            assert len(raw) >= length, "body cut short"
            body, raw = raw[:length], raw[length:]
        found.append((status, headers, body))
    return found


def error_of(answer: tuple[int, dict[str, str], bytes]) -> str:
    status, headers, body = answer
    assert status >= 400 and headers["content-type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert isinstance(error, str) and error
    return error


# --- what the API serves --------------------------------------------------------------


class View:
    def status(self) -> Fixed:
        return Fixed({"node_id": "n1"})

    def members(self) -> list[Fixed]:
        return [Fixed({"id": "n1"})]

    def host(self, node_id: str | None) -> Fixed | None:
        return Fixed({"id": node_id or "n1"}) if node_id in (None, "n1") else None

    def conflicts(self) -> list[Fixed]:
        return []

    def vms(self) -> list[Fixed]:
        return []


class Vms:
    """Echoes in its answers what the API passed it (the uuid is the memory, what a stop
    did is its timeout, what a delete removed is whether it was forced); a VM named `fail`
    is a bug, one named `refuse-KIND` is refused."""

    async def create(self, spec: VmSpec, start: bool = False) -> VmCreated:
        if spec.name == "fail":
            raise RuntimeError("a bug")
        if spec.name.startswith("refuse-"):
            raise Refused(RefusalKind(spec.name.removeprefix("refuse-")), "refused on purpose")
        return VmCreated(spec.name, f"{spec.memory_mib} MiB", start, "n1")

    async def start(self, name: str) -> VmStarted:
        return VmStarted(name, True, "n1")

    async def stop(self, name: str, timeout: float) -> VmStopped:
        return VmStopped(name, f"within {timeout:g} s", "n1")

    async def delete(self, name: str, force: bool = False) -> VmDeleted:
        return VmDeleted(name, True, ["forced"] if force else [])


class Migrations:
    """One migration, m1, whose outcome the tests set; counts how often it is looked up."""

    def __init__(self) -> None:
        info = MigrationInfo(
            "m1", "vm1", "h1", "h2", "outbound", "migrating", 10.0, "", "", 0.0, None
        )
        self.row = MigrationRow(info, 1.0)
        self.looks = 0
        self.asked: list[tuple[str, MigrateRequest]] = []  # the moves asked, as the API read them
        self.waiting = 0  # held requests waiting for news right now
        self._news = asyncio.Event()

    def end(self, outcome: str) -> None:
        """m1 ends, and held requests hear of it (the migrator's `wait_change`)."""
        self.row = dataclasses.replace(
            self.row, info=dataclasses.replace(self.row.info, outcome=outcome)
        )
        self._news.set()

    async def wait_change(self, timeout: float) -> None:
        self.waiting += 1
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._news.wait(), timeout)
        finally:
            self.waiting -= 1

    async def migrate(self, vm: str, request: MigrateRequest) -> str:
        self.asked.append((vm, request))
        raise Refused(RefusalKind.UNKNOWN, f"unknown VM {vm}")

    async def cancel(self, migration_id: str) -> None:
        raise Refused(RefusalKind.CONFLICT, "not now")

    def migrations(self) -> list[MigrationRow]:
        return [self.row]

    async def vm_history(self, vm: str) -> list[HistoryRow]:
        return [HistoryRow(vm, local=self.row)]

    def migration(self, migration_id: str) -> MigrationRow | None:
        self.looks += 1
        return self.row if migration_id == "m1" else None


class Echoed(Recovered):
    """A recovery whose answer is only what the API passed in (the VM and the host)."""

    __slots__ = ()

    def to_json(self) -> dict[str, Any]:
        return {"vm": self.vm, "host": self.host}


class Recovery:
    """Echoes the host the API read from a recover request."""

    async def recover(self, vm: str, host: str) -> Recovered:
        return Echoed(vm, host, started=False, removed={}, was=None)


def router(migrations: Migrations | None = None) -> httpd.Router:
    return build_router(View(), migrations or Migrations(), vms=Vms(), recovery=Recovery())


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, HttpServer, Migrations]]:
    """The API on a unix socket in this test's loop: (socket, server, migrations)."""
    migrations = Migrations()
    server = HttpServer(router(migrations))
    sock = str(tmp_path / "api.sock")
    await server.start_unix(sock)
    yield sock, server, migrations
    await server.close()


async def serve_api(tmp_path: Path, view: Any = None, **controls: Any) -> tuple[str, HttpServer]:
    """The local API's router with `view` (default `View()`) and `controls`, served on a
    unix socket in `tmp_path`; (socket path, server: close it)."""
    server = HttpServer(build_router(view if view is not None else View(), **controls))
    sock = str(tmp_path / "api.sock")
    await server.start_unix(sock)
    return sock, server


async def raw_answer(sock: str, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    """(status, body bytes) of one request, as the API's socket answers it."""
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    ((status, _, answer),) = answers(await asyncio.to_thread(exchange, sock, head.encode() + body))
    return status, answer
