"""The coordinator's end of the site links: one WebSocket per site, opened by the site.

A thin shell: the handshake checks (`authenticate`), the stream rules
(`stream.py` via `Store.apply_delta`) and the commands' state (the store)
decide; this module moves frames. A delta is acknowledged only after its
transaction committed. A site that connects again replaces its older link
(the newer gateway wins). Commands are sent whenever the link comes up and
whenever a new one is stored (`kick`); the site's pins and ledger make a
command sent twice run once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from novacron.protocol.certificates import decode_certificate, verify_certificate
from novacron.protocol.errors import IdentityError, ProtocolError
from novacron.protocol.keys import Ed25519PublicKey, signature_valid
from novacron.protocol.revocation import verify_revocation_list
from novacron.protocol.sitelink import (
    LIMITS,
    NONCE_BYTES,
    Ack,
    Challenge,
    Command,
    Delta,
    Hello,
    RefusalCode,
    Refused,
    Resync,
    Welcome,
    decode,
    encode,
    hello_bytes,
)

from .store import UNFINISHED_COMMANDS
from .stream import Verdict
from .validate import nul_at

if TYPE_CHECKING:
    from .service import Coordinator

log = logging.getLogger("novacron.coordinator.sitelink")

HELLO_TIMEOUT = 10.0  # seconds a site has to answer the challenge
HEARTBEAT = 15.0  # seconds between WebSocket pings (a dead site is noticed in ~2 of them)


RETRY_FIRST = 1.0  # seconds before a pass over a site's commands the database failed is retried
RETRY_MAX = 30.0


class LinkRefused(Exception):
    def __init__(self, code: RefusalCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass
class Link:
    """One site's connection."""

    site: str
    gateway: str
    ws: web.WebSocketResponse
    sent: set[str] = field(default_factory=set)  # command keys sent on this connection
    backlog_sent: bool = False  # one pass over every unfinished command has ended
    retry: float = RETRY_FIRST  # seconds before a failed pass is tried again (doubling)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(self, frame: bytes) -> None:
        async with self.lock:
            await self.ws.send_bytes(frame)


class SiteLinks:
    """The connected sites of this coordinator (only the leader holds any)."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.c = coordinator
        self.store = coordinator.store
        self._links: dict[str, Link] = {}
        self._kicks: set[asyncio.Task[None]] = set()

    def count(self) -> int:
        return len(self._links)

    def connected(self, site: str) -> bool:
        return site in self._links

    async def drop(self, site: str, why: str) -> None:
        link = self._links.pop(site, None)
        if link is not None:
            log.info("closing site link", extra={"fields": {"site": site, "why": why}})
            await link.ws.close(message=why.encode()[:120])

    async def close(self) -> None:
        for site in list(self._links):
            await self.drop(site, "coordinator stopping")
        for task in list(self._kicks):
            task.cancel()

    def kick(self, site: str) -> None:
        """Send `site` its commands not yet sent on its link (if it is connected)."""
        link = self._links.get(site)
        if link is None:
            return
        task = asyncio.create_task(self._send_commands(link), name=f"commands:{site}")
        self._kicks.add(task)
        task.add_done_callback(self._kicks.discard)

    async def _send_commands(self, link: Link) -> None:
        """Every unfinished command until one pass over them all has ended on this link
        (the last link may have lost what it carried), then only those never sent: a
        site slow to finish its commands must not make each new one cost more. A pass
        the database failed is tried again, sooner than the next command would."""
        backlog = not link.backlog_sent
        states = UNFINISHED_COMMANDS if backlog else ("pending",)
        try:
            for command in await self.store.commands_to_send(link.site, states=states):
                if command.key in link.sent or self._links.get(link.site) is not link:
                    continue
                frame = self._command_frame(command)
                link.sent.add(command.key)
                await link.send(frame)
                await self.store.command_sent(command.key)
        except (ConnectionError, RuntimeError):
            return  # the link is gone; the next one sends what is left
        except Exception as exc:
            log.warning(
                "could not send a site its commands; trying again",
                extra={"fields": {"site": link.site, "in_s": link.retry, "why": repr(exc)[:200]}},
            )
            asyncio.get_running_loop().call_later(link.retry, self._retry, link)
            link.retry = min(2 * link.retry, RETRY_MAX)
            return
        link.retry = RETRY_FIRST
        if backlog:
            link.backlog_sent = True

    def _retry(self, link: Link) -> None:
        if self._links.get(link.site) is link:
            self.kick(link.site)

    async def _send_pinned(self, link: Link, keys: set[str]) -> None:
        """The commands whose pins were just committed, pinned and signed for their host.

        The gateway runs a pinned command only as the coordinator signed it: the
        host checks that signature, which covers the host it runs on."""
        if not keys:
            return  # (no keys would read every unfinished command)
        with contextlib.suppress(ConnectionError, RuntimeError):
            for command in await self.store.commands_to_send(link.site, keys=keys):
                if command.host:
                    await link.send(self._command_frame(command))

    def _command_frame(self, command: Command) -> bytes:
        if self.c.signer is not None:
            command = self.c.signer.sign(command, self.c.now())
        return encode(command, self.c.node)

    # --- one connection ------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=LIMITS.max_frame, heartbeat=HEARTBEAT)
        await ws.prepare(request)
        peer = request.remote or "?"
        try:
            site, gateway = await self._handshake(ws)
        except LinkRefused as exc:
            log.warning(
                "site link refused",
                extra={"fields": {"peer": peer, "code": exc.code.value, "why": exc.reason}},
            )
            refused = Refused(exc.code, exc.reason, self.c.leader_url())
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_bytes(encode(refused, self.c.node))
            await ws.close()
            return ws
        link = Link(site, gateway, ws)
        old = self._links.get(site)
        self._links[site] = link
        if old is not None:
            await old.ws.close(message=b"replaced by a newer link of the site")
        log.info("site connected", extra={"fields": {"site": site, "gateway": gateway}})
        try:
            position = await self.store.position(site)
            await link.send(encode(Welcome(site, position.stream, position.applied), self.c.node))
            if not await self.store.link_changed(site, True, gateway):
                # Revoked between its handshake and now, before this link could be dropped.
                await self.drop(site, "the site was revoked")
                return ws
            self.kick(site)
            await self._receive(link)
        except (ConnectionError, RuntimeError):
            pass  # the link went down as it came up: recorded below, as any end of a link
        finally:
            if self._links.get(site) is link:
                del self._links[site]
                with contextlib.suppress(Exception):  # the database may be what failed
                    await self.store.link_changed(site, False, gateway)
            log.info("site disconnected", extra={"fields": {"site": site}})
        return ws

    async def _handshake(self, ws: web.WebSocketResponse) -> tuple[str, str]:
        if not self.c.is_leader():
            raise LinkRefused(RefusalCode.NOT_LEADER, "this coordinator does not lead")
        nonce = os.urandom(NONCE_BYTES)
        await ws.send_bytes(encode(Challenge(nonce, self.c.node), self.c.node))
        try:
            msg = await ws.receive(timeout=HELLO_TIMEOUT)
        except TimeoutError:
            raise LinkRefused(RefusalCode.BAD_HELLO, "no hello within 10 s") from None
        if msg.type != WSMsgType.BINARY:
            raise LinkRefused(RefusalCode.BAD_HELLO, "the first frame must be a binary hello")
        try:
            _, hello = decode(msg.data)
        except ProtocolError as exc:
            raise LinkRefused(RefusalCode.BAD_HELLO, f"bad hello: {exc}") from None
        if not isinstance(hello, Hello):
            raise LinkRefused(RefusalCode.BAD_HELLO, f"expected a hello, got {hello.TYPE}")
        site = await self.store.site_by_ca(hello.ca_public)
        return authenticate(hello, nonce, site, self.c.now()), _gateway_of(hello)

    async def _receive(self, link: Link) -> None:
        async for msg in link.ws:
            if msg.type != WSMsgType.BINARY:
                if msg.type == WSMsgType.ERROR:
                    return
                continue
            try:
                _, message = decode(msg.data)
            except ProtocolError as exc:
                log.warning(
                    "bad frame from site; closing",
                    extra={"fields": {"site": link.site, "why": str(exc)}},
                )
                await link.ws.close(message=b"protocol error")
                return
            if isinstance(message, Delta) and (nul := nul_at(message)) is not None:
                log.warning(
                    "a site's delta holds a NUL character; closing",
                    extra={"fields": {"site": link.site, "seq": message.seq, "at": nul}},
                )
                await link.ws.close(message=b"protocol error: a NUL character in a delta")
                return
            if isinstance(message, Delta):
                await self._delta(link, message)
            else:
                log.warning(
                    "unexpected message from site; ignored",
                    extra={"fields": {"site": link.site, "type": message.TYPE}},
                )

    async def _delta(self, link: Link, delta: Delta) -> None:
        applied = await self.store.apply_delta(link.site, delta)  # returns once committed
        if applied.verdict is Verdict.RESYNC:
            log.info(
                "site stream resync", extra={"fields": {"site": link.site, "why": applied.why}}
            )
            await link.send(encode(Resync(applied.why), self.c.node))
            return
        await link.send(encode(Ack(delta.stream, delta.seq, applied.refused), self.c.node))
        if delta.accepted:
            await self._send_pinned(link, {a.key for a in delta.accepted} - set(applied.refused))
        if delta.outcomes or delta.accepted:
            self.c.operations_changed()


def authenticate(hello: Hello, nonce: bytes, site: dict[str, Any] | None, now: float) -> str:
    """The name of the site `hello` proves to be, or `LinkRefused` saying why not."""
    if site is None:
        raise LinkRefused(
            RefusalCode.UNKNOWN_CA,
            "no site enrolled this cluster CA: enroll it with 'nova site enroll URL TOKEN'",
        )
    if site["state"] == "revoked":
        raise LinkRefused(RefusalCode.REVOKED_SITE, f"site {site['name']} was revoked")
    try:
        ca = Ed25519PublicKey.from_public_bytes(hello.ca_public)
        revocations = verify_revocation_list(hello.revocations, ca) if hello.revocations else None
        cert = verify_certificate(hello.certificate, ca, now, revocations)
    except IdentityError as exc:
        raise LinkRefused(RefusalCode.BAD_CERTIFICATE, f"certificate refused: {exc}") from None
    if not cert.is_member:
        raise LinkRefused(RefusalCode.BAD_CERTIFICATE, f"{cert.label} is not a node certificate")
    data = hello_bytes(nonce, hello.ca_public)
    if not signature_valid(cert.signing_public_key(), hello.signature, data):
        raise LinkRefused(
            RefusalCode.BAD_SIGNATURE,
            f"the hello is not signed by {cert.label}'s key: someone else's certificate",
        )
    return str(site["name"])


def _gateway_of(hello: Hello) -> str:
    return decode_certificate(hello.certificate).node_id
