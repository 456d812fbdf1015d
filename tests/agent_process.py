"""`nova-agent` as a process on loopback, with libvirt's test driver: start it, talk to it.

For tests of the agent as a whole (tests/test_daemon.py, tests/test_domain_type.py);
the lab tests run agents in real hosts instead (simulations/lab/agents.py).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from novacron.agent.cli import main as nova
from novacron.simulations.ports import free_port_pair as free_port_pair  # for the tests

BIN = Path(sys.executable).parent  # where this venv installed nova and nova-agent


def make_ca(tmp: Path) -> Path:
    """A cluster CA in `tmp`/ca and node n1's certificate and key in `tmp`."""
    assert nova(["ca", "init", "--dir", str(tmp / "ca")]) == 0
    assert nova(["ca", "issue", "n1", "--dir", str(tmp / "ca"), "--out", str(tmp)]) == 0
    return tmp


def agent_args(tmp: Path, port: int, node: str = "n1") -> list[str]:
    """The nova-agent command line for `node` with its files in `tmp` (see make_ca)."""
    return [
        str(BIN / "nova-agent"),
        "--config", str(tmp / "absent.toml"),
        "--ca-file", str(tmp / "ca" / "ca.pub"),
        "--cert-file", str(tmp / f"{node}.crt"),
        "--key-file", str(tmp / f"{node}.key"),
        "--bind-address", "127.0.0.1",
        "--port", str(port),
        "--no-mdns",
        "--libvirt-uri", "test:///default",
        "--data-dir", str(tmp / "data"),
        "--api-socket", str(tmp / "agent.sock"),
    ]  # fmt: skip


@contextmanager
def running_agent(
    tmp: Path, extra: Sequence[str] = ()
) -> Iterator[tuple[subprocess.Popen[str], socket.socket, Path]]:
    """Agent n1 (files from make_ca) running, with the socket its systemd notifications reach."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp / "notify.sock"))
    notify.settimeout(20)
    args = [*agent_args(tmp, free_port_pair()), *extra]
    (tmp / "absent.toml").write_text("")
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp / "notify.sock")}
    proc = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
    try:
        yield proc, notify, tmp
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        notify.close()


def notifications(notify: socket.socket, until: str) -> list[str]:
    """The agent's systemd notifications, read until one contains `until`."""
    seen: list[str] = []
    while not any(until in line for line in seen):
        seen += notify.recv(4096).decode().splitlines()
    return seen
