"""A real `nats-server -js` (Debian's nats-server) on loopback, for the event stream's tests.

`NatsServer` runs the server with JetStream storing under a directory the test
owns, on a port it keeps across `stop()` and `start()`, so a test can take the
sink away and bring it back with what it had stored. It is stopped by its own
pid. A missing program fails the test with the package to install.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

MISSING = "install Debian package nats-server (sh scripts/install-system-deps.sh)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NatsServer:
    """On loopback by default; in a lab host with its address, `port` and `popen` (which
    starts a command inside the host: `LabHost.popen`)."""

    def __init__(
        self,
        store: Path,
        address: str = "127.0.0.1",
        port: int | None = None,
        popen: Callable[..., subprocess.Popen[bytes]] = subprocess.Popen,
    ) -> None:
        # Debian installs it in /usr/sbin, which an ordinary user's PATH lacks.
        program = shutil.which("nats-server", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
        if program is None:
            pytest.fail(f"nats-server not found: {MISSING}", pytrace=False)
        self.program = program
        self.store = store
        self.address = address
        self.port = port or free_port()
        self.url = f"nats://{address}:{self.port}"
        self.log = store / "nats.log"
        self._popen = popen
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.store.mkdir(parents=True, exist_ok=True)
        command = [self.program, "-js", "-a", self.address, "-p", str(self.port)]
        command += ["-sd", str(self.store / "js"), "-l", str(self.log)]
        seen = len(self._log_text())  # the log is appended to across restarts
        self._process = self._popen(command, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                pytest.fail(f"nats-server exited: {self.log.read_text(errors='replace')[-2000:]}")
            if "Server is ready" in self._log_text()[seen:]:
                return
            time.sleep(0.05)
        pytest.fail("nats-server was not ready within 30 s")

    def _log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)

    async def messages(self, stream: str) -> list[tuple[str, dict[str, Any]]]:
        """Every message the stream holds, in its order: (subject, decoded JSON body); none
        before the stream exists or while it is empty."""
        import json

        import nats
        from nats.js.errors import NotFoundError

        nc = await nats.connect(self.url, connect_timeout=5)
        try:
            js = nc.jetstream()
            try:
                info = await js.stream_info(stream)
            except NotFoundError:
                return []  # nothing was published yet
            out: list[tuple[str, dict[str, Any]]] = []
            if not info.state.messages:
                return out  # created, still empty: first_seq is 0, which no message has
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                msg = await js.get_msg(stream, seq)
                out.append((str(msg.subject), json.loads(msg.data or b"null")))
            return out
        finally:
            await nc.close()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    """Wait until `predicate()` holds, or fail saying `what` did not happen."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout} s")
        await asyncio.sleep(0.05)
