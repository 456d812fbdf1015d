"""A coordinator served in the test's event loop on loopback, and a site speaking its link.

`served(database)` runs the real aiohttp application on 127.0.0.1 with a
token of each role; `FakeSite` is a site's gateway reduced to the wire: it
proves a real cluster CA's certificate, sends the deltas a test writes and
reads what the coordinator answers. Used with SQLite and with PostgreSQL.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from novacron.agent.cli import main as nova
from novacron.agent.identity import NodeIdentity, load_identity
from novacron.coordinator.db import Database, open_database
from novacron.coordinator.service import Coordinator, ServiceConfig
from novacron.coordinator.store import LOCAL_ADMIN, Store
from novacron.protocol import sitelink as wire
from novacron.protocol.messages import MemberState, NodeRecord, Resources, VmSummary

ROLES = ("reader", "operator", "admin")


@dataclass
class Served:
    url: str
    coordinator: Coordinator
    store: Store
    tokens: dict[str, str] = field(default_factory=dict)  # role -> bearer

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        role: str | None = "admin",
        token: str | None = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        bearer = token if token is not None else (self.tokens[role] if role else "")
        sent = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method,
                self.url + path,
                json=body if raw is None and body is not None else None,
                data=raw,
                headers={**sent, **(headers or {})},
                allow_redirects=False,
            ) as answer,
        ):
            text = await answer.read()
            try:
                data = await answer.json(content_type=None) if text else None
            except ValueError:
                data = text.decode(errors="replace")
            return answer.status, data, CIMultiDict(answer.headers)  # type: ignore[return-value]


async def open_db(database: str, directory: Path) -> Database:
    return await open_database(database, directory)


@asynccontextmanager
async def served(
    database: str,
    directory: Path,
    *,
    rate: float = 0.0,
    leader: bool = True,
    leader_url: str = "",
    clock: Any = time.time,
    template_max_bytes: int = 64 << 20,
) -> AsyncIterator[Served]:
    db = await open_database(database, directory)
    store = Store(db, clock=clock, poll=0.2)
    coordinator = Coordinator(
        store,
        ServiceConfig(
            node="test-coordinator",
            rate=rate,
            burst=max(2 * rate, 1),
            templates=str(directory / "templates"),
            template_max_bytes=template_max_bytes,
        ),
        is_leader=lambda: leader,
        leader_url=lambda: leader_url,
        clock=clock,
    )
    runner = web.AppRunner(coordinator.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    result = Served(f"http://127.0.0.1:{port}", coordinator, store)
    for role in ROLES:
        _, secret = await store.create_token(f"test-{role}", role, "", LOCAL_ADMIN)
        result.tokens[role] = secret
    try:
        yield result
    finally:
        await coordinator.links.close()
        await runner.cleanup()
        await db.close()


def site_identity(directory: Path, node: str = "g1") -> NodeIdentity:
    """A fresh cluster CA in `directory` and the identity of its node `node`."""
    assert nova(["ca", "init", "--dir", str(directory / "ca")]) == 0
    assert nova(["ca", "issue", node, "--dir", str(directory / "ca"), "--out", str(directory)]) == 0
    return load_identity(
        directory / "ca" / "ca.pub",
        directory / f"{node}.crt",
        directory / f"{node}.key",
        None,
        time.time(),
    )


def enrollment(identity: NodeIdentity, token: str) -> dict[str, str]:
    ca = identity.ca_public.public_bytes_raw()
    return {
        "token": token,
        "ca_public": base64.b64encode(ca).decode(),
        "certificate": base64.b64encode(identity.certificate_bytes).decode(),
        "signature": base64.b64encode(
            identity.key.signing.sign(wire.enroll_bytes(token, ca))
        ).decode(),
    }


async def enrolled_site(served: Served, name: str, directory: Path, **labels: str) -> NodeIdentity:
    """A site added through the API and enrolled with a fresh CA."""
    status, added, _ = await served.call("POST", "/v1/sites", {"name": name, "labels": labels})
    assert status == 201, added
    identity = site_identity(directory)
    status, site, _ = await served.call(
        "POST", "/v1/enroll", enrollment(identity, added["enrollment_token"]), role=None
    )
    assert status == 200, site
    return identity


def host_state(
    node: str, version: int, vms: int = 0, *, prefix: str = "vm", memory: int = 16384, **labels: str
) -> wire.HostState:
    summaries = tuple(
        VmSummary(f"{prefix}{i:04}", uuid=f"u-{node}-{i}", state="running", vcpus=1,
                  memory_mib=64, labels={"tier": "web" if i % 2 else "db", **labels})
        for i in range(vms)
    )  # fmt: skip
    record = NodeRecord(
        node, version, capacity=Resources(vcpus=8, memory_mib=memory), vms=summaries
    )
    return wire.HostState(node, MemberState.ALIVE, record)


class FakeSite:
    """One gateway connection to the coordinator, at the level of the wire."""

    def __init__(self, url: str, identity: NodeIdentity) -> None:
        self.url = url.replace("http://", "ws://") + wire.PATH
        self.identity = identity
        self._session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    async def connect(self, *, sign_with: NodeIdentity | None = None) -> Any:
        """Handshake; the coordinator's Welcome or Refused."""
        self._session = aiohttp.ClientSession()
        self.ws = await self._session.ws_connect(self.url)
        challenge = await self._frame()
        assert isinstance(challenge, wire.Challenge)
        ca = self.identity.ca_public.public_bytes_raw()
        signer = sign_with or self.identity
        hello = wire.Hello(
            ca,
            signer.certificate_bytes,
            signer.key.signing.sign(wire.hello_bytes(challenge.nonce, ca)),
        )
        await self.ws.send_bytes(wire.encode(hello, signer.node_id))
        answer = await self._frame()
        if isinstance(answer, wire.Welcome):
            self._reader = asyncio.create_task(self._read())
        return answer

    async def _frame(self) -> Any:
        assert self.ws is not None
        msg = await self.ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.BINARY, msg
        return wire.decode(msg.data)[1]

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                await self.inbox.put(wire.decode(msg.data)[1])
        await self.inbox.put(None)

    async def send(self, delta: wire.Delta) -> Any:
        """Send a delta; the coordinator's answer to it (Ack or Resync)."""
        assert self.ws is not None
        await self.ws.send_bytes(wire.encode(delta, self.identity.node_id))
        return await self.next(wire.Ack, wire.Resync)

    async def next(self, *kinds: type) -> Any:
        while True:
            message = await asyncio.wait_for(self.inbox.get(), 10)
            if message is None or isinstance(message, kinds):
                return message

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
