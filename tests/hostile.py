"""The hostile-peer harness: real agents on loopback, and a certified member that lies.

`Mesh` runs `nova-agent` processes (libvirt's test driver, static seeds, no
mDNS) with certificates from a fresh CA, and reads them through their local
API as an operator would. `Mallory` holds a certificate of the same CA, so
every agent admits her connections; she speaks the real wire protocol over
real CurveZMQ sockets, but says whatever she likes: forged claims, absurd
records, raw frames the codec would never produce.

Nothing here is a mock: what the agents do with her frames is what a real
agent would do on a real LAN.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from novacron.agent import client
from novacron.agent.introduction import introduce
from novacron.agent.security import TrustStore
from novacron.agent.transport import Transport
from novacron.protocol import keyfiles
from novacron.protocol.certificates import Certificate, issue_certificate
from novacron.protocol.claims import sign_claim
from novacron.protocol.keys import Ed25519PrivateKey, NodeKey
from novacron.protocol.messages import (
    Ack,
    Alive,
    Digest,
    MemberDigest,
    MemberState,
    Message,
    Ping,
)
from novacron.protocol.revocation import sign_revocation_list
from novacron.simulations.ports import free_port_pair

BIN = Path(sys.executable).parent
DAY = 86400.0


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` (every 0.2 s) until it holds; fail naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout:g} s: {what}")


async def eventually(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """`wait_until` for a test whose own event loop must keep running meanwhile (a Mallory
    answering pings: blocked, she misses them and the agents fail her): `condition` is
    polled in a thread."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(condition):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"not within {timeout:g} s: {what}")


class CertificateAuthority:
    """The operator's CA: issues node certificates and signs revocation lists."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.key = Ed25519PrivateKey.generate()
        self.public_file = directory / "ca.pub"
        self._serial = 0
        self.revoked: list[int] = []
        directory.mkdir(parents=True, exist_ok=True)
        keyfiles.write_ca_public(self.public_file, self.key.public_key())

    def issue(
        self, node_id: str, *, valid_for: float = 30 * DAY, key: NodeKey | None = None
    ) -> tuple[NodeKey, Certificate]:
        """A key pair (new unless given) and a certificate for `node_id`, also as files."""
        key = key or NodeKey.generate()
        self._serial += 1
        now = time.time()
        cert = issue_certificate(
            self.key,
            node_id,
            key.signing_public,
            key.curve_public,
            not_before=now - 60,
            not_after=now + valid_for,
            serial=self._serial,
        )
        keyfiles.write_node_key(self.directory / f"{node_id}.key", key, node_id)
        keyfiles.write_certificate(self.directory / f"{node_id}.crt", cert.encoded)
        return key, cert

    def revoke(self, serial: int) -> Path:
        """A newer signed revocation list adding `serial`, written to crl.pem."""
        self.revoked.append(serial)
        path = self.directory / "crl.pem"
        data = sign_revocation_list(self.key, self.revoked, time.time())
        keyfiles.write_revocation_list(path, data)
        return path


@dataclass
class AgentProcess:
    """One `nova-agent` process and where to reach it."""

    node_id: str
    port: int
    directory: Path
    proc: subprocess.Popen[bytes]
    log_file: Path

    @property
    def socket_file(self) -> str:
        return str(self.directory / "agent.sock")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def api(self, path: str, timeout: float = 5.0) -> Any:
        return client.get(path, self.socket_file, timeout=timeout)

    def post(self, path: str, body: dict[str, Any], timeout: float = 10.0) -> Any:
        return client.post(path, body, self.socket_file, timeout=timeout)

    def members(self) -> dict[str, dict[str, Any]]:
        """This agent's member table by node id (`nova members --json`)."""
        return {row["node_id"]: row for row in self.api("/v1/members")["members"]}

    def state_of(self, node_id: str) -> str | None:
        row = self.members().get(node_id)
        return None if row is None else str(row["state"])

    def status(self) -> dict[str, Any]:
        return dict(self.api("/v1/status"))

    def running(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")


@dataclass
class Mesh:
    """Real agents on loopback, all certified by `ca`, joined through the first one."""

    root: Path
    ca: CertificateAuthority = field(init=False)
    agents: dict[str, AgentProcess] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ca = CertificateAuthority(self.root / "ca")

    def start(self, count: int, extra: Sequence[str] = ()) -> list[AgentProcess]:
        started = [self.start_agent(f"n{i}", extra) for i in range(1, count + 1)]
        self.wait_converged()
        return started

    def start_agent(
        self,
        node_id: str,
        extra: Sequence[str] = (),
        *,
        certify: bool = True,
        name: str | None = None,
        wait: bool = True,
        seed: str | None = None,
        port: int | None = None,
    ) -> AgentProcess:
        """Start `node_id`'s agent (issuing its certificate unless `certify` is False);
        `name` tells apart two processes of one node id (a clone)."""
        name = name or node_id
        if certify:
            self.ca.issue(node_id)
        directory = self.root / name
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "agent.toml").write_text("")  # every setting from flags below
        port = port or free_port_pair()
        seeds = [a.address for a in self.agents.values() if a.running()]
        if seed is not None:  # "": none, as the first agent of a mesh
            seeds = [self.agents[seed].address] if seed else []
        args = [
            str(BIN / "nova-agent"),
            "--config", str(directory / "agent.toml"),
            "--ca-file", str(self.ca.public_file),
            "--cert-file", str(self.ca.directory / f"{node_id}.crt"),
            "--key-file", str(self.ca.directory / f"{node_id}.key"),
            "--bind-address", "127.0.0.1",
            "--port", str(port),
            "--no-mdns",
            "--no-rebalance",
            "--libvirt-uri", "test:///default",
            "--data-dir", str(directory / "data"),
            "--api-socket", str(directory / "agent.sock"),
            "--inventory-interval", "2",
            *(["--seeds", ",".join(seeds[:1])] if seeds else []),
            *extra,
        ]  # fmt: skip
        log_file = directory / "agent.log"
        with open(log_file, "ab") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        agent = AgentProcess(node_id, port, directory, proc, log_file)
        self.agents[name] = agent
        if wait:
            wait_until(lambda: _answers(agent), 20, f"{name}'s API answers")
        return agent

    def wait_converged(self, timeout: float = 30) -> None:
        ids = {n for n, a in self.agents.items() if a.running()}

        def converged() -> bool:
            for node_id in ids:
                rows = self.agents[node_id].members()
                if {n for n, r in rows.items() if r["state"] == "alive"} < ids:
                    return False
            return True

        wait_until(converged, timeout, f"every agent sees {sorted(ids)} alive")

    def stop(self) -> None:
        for agent in self.agents.values():
            if agent.running():
                agent.proc.send_signal(signal.SIGTERM)
        for agent in self.agents.values():
            try:
                agent.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                agent.proc.kill()
                agent.proc.wait()

    def __getitem__(self, node_id: str) -> AgentProcess:
        return self.agents[node_id]


def _answers(agent: AgentProcess) -> bool:
    if not agent.running():
        raise AssertionError(f"{agent.node_id} exited ({agent.proc.returncode}):\n{agent.log()}")
    try:
        agent.api("/v1/status", timeout=2)
    except client.AgentUnavailable:
        return False
    return True


class Mallory:
    """A certified member that lies: real CurveZMQ sockets, forged content.

    She answers pings (so the agents keep her as a member) and otherwise
    sends only what a test tells her to.
    """

    def __init__(self, mesh: Mesh, node_id: str = "mallory") -> None:
        self.node_id = node_id
        self.key, self.certificate = mesh.ca.issue(node_id)
        self.trust = TrustStore(mesh.ca.key.public_key())
        self.trust.add_certificate(self.certificate.encoded)
        self.port = free_port_pair()
        self.transport = Transport(node_id, self.key, self.trust, "127.0.0.1", self.port)
        self.incarnation = 1
        self._responder: asyncio.Task[None] | None = None
        self.received: list[tuple[str, Message]] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def __aenter__(self) -> Mallory:
        await self.transport.start()
        self._responder = asyncio.create_task(self._answer_pings())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._responder is not None:
            self._responder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._responder
        await self.transport.close()

    async def _answer_pings(self) -> None:
        while True:
            sender, message = await self.transport.recv()
            self.received.append((sender, message))
            if isinstance(message, Ping) and message.target == self.node_id:
                address = self._addresses.get(sender)
                if address is not None:
                    await self.transport.send(sender, address, Ack(message.seq))

    _addresses: dict[str, str] = {}

    async def join(self, *agents: AgentProcess) -> None:
        """Introduce herself to each agent and push her signed Alive, as a member would."""
        self._addresses = dict(self._addresses)
        for agent in agents:
            await introduce(self.certificate.encoded, self.trust, "127.0.0.1", agent.port)
            self._addresses[agent.node_id] = agent.address
            line = self.own_line()
            await self.send(agent, Digest(members=(line,), reply=False))

    def own_line(self) -> MemberDigest:
        alive = self.alive(self.node_id, self.incarnation, self.address)
        return MemberDigest(
            self.node_id,
            self.incarnation,
            MemberState.ALIVE,
            self.address,
            signature=alive.signature,
            certificate=self.certificate.encoded,
        )

    def alive(self, node_id: str, incarnation: int, address: str) -> Alive:
        """An Alive signed with her own key, whoever it is about."""
        unsigned = Alive(node_id, incarnation, address)
        return Alive(node_id, incarnation, address, signature=sign_claim(self.key, unsigned))

    async def send(self, agent: AgentProcess, message: Message) -> None:
        assert await self.transport.send(agent.node_id, agent.address, message), "not sent"

    async def send_raw(self, agent: AgentProcess, frame: bytes) -> None:
        """Bytes on her authenticated connection to `agent`, as a patched client would send."""
        dealer = self.transport._dealer(agent.node_id, agent.address)  # the real socket
        assert dealer is not None
        await dealer.send(frame, zmq.NOBLOCK)


def kill(agent: AgentProcess) -> None:
    """SIGKILL an agent of this mesh (by its own pid) and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(agent.proc.pid, signal.SIGKILL)
    agent.proc.wait()
