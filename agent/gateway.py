"""The site's link to the coordinator, held by whichever agent is the site's gateway.

Every agent configured with coordinator URLs runs this loop beside its
others; only the one `core/gateway.elect` names from its own view connects.
It dials out (WebSocket over TLS, aiohttp's client, the coordinator's
certificate verified against `coordinator_ca` or the system's trust), proves
the site with its node key (`protocol/sitelink.py`), then streams the view
and carries commands, with the bookkeeping in the sans-IO `SiteStream`.

The edge never waits for it: nothing in the mesh awaits this loop, a
coordinator that is gone costs one connection attempt per backoff step
(doubling to `MAX_BACKOFF`, with jitter), and commands run through the
agent's own controls (`site_commands.py`). aiohttp is imported only by the
agent that holds the link, so no other agent pays its memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import ssl
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from novacron.protocol.errors import ProtocolError
from novacron.protocol.messages import MemberState, NodeRecord
from novacron.protocol.sitelink import (
    LIMITS,
    PATH,
    Ack,
    Challenge,
    Command,
    Hello,
    HostState,
    Outcome,
    Refused,
    Resync,
    Welcome,
    decode,
    encode,
    hello_bytes,
)

from .core.federation.gateway import elect
from .core.federation.sitelink import SiteStream, pin_host
from .core.membership.node import MembershipNode
from .core.migration.saga import MigrationConfig
from .identity import NodeIdentity
from .site_commands import SiteCommands

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger("novacron.gateway")

CHECK_INTERVAL = 1.0  # seconds between looks at who the gateway is
SETTLE = 3.0  # seconds after start before the first election: the view fills in first
PUSH_INTERVAL = 0.5  # seconds between deltas (changes within it travel together)
FIRST_BACKOFF = 1.0  # seconds before the first retry of a failed connection
# The longest wait between attempts while the coordinator is away: a site is back
# within 10 s of its uplink healing (at most 7.5 s with the jitter, then the handshake
# and the snapshot); each absent site costs the coordinator one attempt per ~5 s.
MAX_BACKOFF = 5.0
HANDSHAKE_TIMEOUT = 15.0
HEARTBEAT = 15.0  # seconds between WebSocket pings: a dead link is noticed within ~2 of them
AGENT_VERSION = "novacron-agent/1"


class LinkDown(Exception):
    """The link cannot go on; the message says why (logged, then retried)."""


@dataclass
class LinkStatus:
    """What `nova status` shows about the site link."""

    gateway: str | None = None  # the site's gateway in this agent's view
    connected: bool = False
    coordinator: str = ""  # the URL connected to, or last tried
    site: str = ""  # the name the coordinator knows the site by
    last_error: str = ""
    attempts: int = 0
    commands_run: int = 0


@dataclass(frozen=True, slots=True)
class SiteLinkStatus:
    """The site link in `nova status`: the link's state and the stream it carries."""

    link: LinkStatus  # a copy: the live one goes on changing
    stream: str  # the id of the stream of deltas to the coordinator
    unacknowledged: int  # deltas sent and not yet acknowledged

    def to_json(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self.link),
            "stream": self.stream,
            "unacknowledged": self.unacknowledged,
        }


class Gateway:
    def __init__(
        self,
        urls: tuple[str, ...],
        tls: ssl.SSLContext,
        *,
        identity: Callable[[], NodeIdentity],
        core: Callable[[], MembershipNode],
        revocations: Callable[[], bytes],
        commands: SiteCommands,
        migration: MigrationConfig,
        rng: random.Random | None = None,
    ) -> None:
        self._urls = urls
        self._tls = tls
        self._identity = identity
        self._core = core
        self._revocations = revocations
        self._commands = commands
        self._migration = migration
        self._rng = rng or random.Random()
        self.status = LinkStatus()
        self._stream = SiteStream(self._new_stream_id())
        self._running: set[str] = set()  # command keys being run from this gateway
        self._tasks: set[asyncio.Task[None]] = set()
        self._send_lock = asyncio.Lock()

    def _new_stream_id(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128)))

    @property
    def node_id(self) -> str:
        return self._identity().node_id

    # --- the loop -----------------------------------------------------------------------

    async def run(self) -> None:
        """Forever: hold the link while this agent is the gateway, retry with backoff."""
        backoff = FIRST_BACKOFF
        attempt = 0
        await asyncio.sleep(SETTLE)
        while not self._elected():
            await asyncio.sleep(CHECK_INTERVAL)
        import aiohttp  # only once this agent holds the link: a candidate never loads it

        async with aiohttp.ClientSession() as session:
            while True:
                if not self._elected():
                    backoff = FIRST_BACKOFF
                    await asyncio.sleep(CHECK_INTERVAL)
                    continue
                url = self._urls[attempt % len(self._urls)]
                attempt += 1
                self.status.coordinator = url
                self.status.attempts += 1
                try:
                    await self._session(session, url)
                    backoff = FIRST_BACKOFF  # a link that was up: try again at once
                except (LinkDown, aiohttp.ClientError, OSError, TimeoutError) as exc:
                    self._note_error(url, exc)
                except Exception as exc:  # a bug here must cost the link, never the agent
                    log.error("site link failed", exc_info=True)
                    self._note_error(url, exc)
                finally:
                    self.status.connected = False  # commands under way go on; outcomes wait
                await asyncio.sleep(backoff * (0.5 + self._rng.random()))
                backoff = min(backoff * 2, MAX_BACKOFF)

    def _elected(self) -> bool:
        core = self._core()
        self.status.gateway = elect(core.members(), core.records())
        return self.status.gateway == self.node_id

    def _note_error(self, url: str, exc: BaseException) -> None:
        text = str(exc) or type(exc).__name__
        if text != self.status.last_error:
            log.warning("site link down", extra={"fields": {"coordinator": url, "why": text}})
        self.status.last_error = text

    async def close(self) -> None:
        await self._cancel_tasks()

    async def _cancel_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._running.clear()

    # --- one connection -------------------------------------------------------------------

    async def _session(self, session: aiohttp.ClientSession, url: str) -> None:
        async with session.ws_connect(
            url.rstrip("/") + PATH,
            ssl=self._tls,
            heartbeat=HEARTBEAT,
            max_msg_size=LIMITS.max_frame,
            timeout=aiohttp_timeout(),
        ) as ws:
            welcome = await self._handshake(ws)
            self.status.connected = True
            self.status.site = welcome.site
            self.status.last_error = ""
            log.info("site link up", extra={"fields": {"coordinator": url, "site": welcome.site}})
            for delta in self._stream.welcome(welcome, self._new_stream_id()):
                await self._send(ws, delta)
            pusher = asyncio.create_task(self._push(ws), name="site-link-push")
            try:
                await self._receive(ws)
            finally:
                pusher.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pusher

    async def _handshake(self, ws: aiohttp.ClientWebSocketResponse) -> Welcome:
        challenge = await self._next(ws, HANDSHAKE_TIMEOUT)
        if isinstance(challenge, Refused):
            raise LinkDown(f"refused ({challenge.code.value}): {challenge.reason}")
        if not isinstance(challenge, Challenge):
            raise LinkDown(f"expected a challenge, got {challenge.TYPE}")
        identity = self._identity()
        ca = identity.ca_public.public_bytes_raw()
        hello = Hello(
            ca_public=ca,
            certificate=identity.certificate_bytes,
            signature=identity.key.signing.sign(hello_bytes(challenge.nonce, ca)),
            revocations=self._revocations(),
            stream=self._stream.stream,
            agent_version=AGENT_VERSION,
        )
        await self._send(ws, hello)
        answer = await self._next(ws, HANDSHAKE_TIMEOUT)
        if isinstance(answer, Refused):
            raise LinkDown(f"refused ({answer.code.value}): {answer.reason}")
        if not isinstance(answer, Welcome):
            raise LinkDown(f"expected a welcome, got {answer.TYPE}")
        return answer

    async def _next(self, ws: aiohttp.ClientWebSocketResponse, timeout: float | None) -> Any:
        import aiohttp

        msg = await ws.receive(timeout=timeout)
        if msg.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSED,
            aiohttp.WSMsgType.CLOSING,
        ):
            raise LinkDown(f"the coordinator closed the link ({msg.extra or 'no reason'})")
        if msg.type == aiohttp.WSMsgType.ERROR:
            raise LinkDown(f"link error: {ws.exception()}")
        if msg.type != aiohttp.WSMsgType.BINARY:
            raise LinkDown("the coordinator sent a text frame")
        try:
            _, message = decode(msg.data)
        except ProtocolError as exc:
            raise LinkDown(f"bad frame from the coordinator: {exc}") from None
        return message

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            message = await self._next(ws, None)
            if isinstance(message, Ack):
                # A pin it covers runs once the coordinator sends that command pinned and
                # signed (right after the ack): the pinned host runs only what it signed.
                self._stream.ack(message)
            elif isinstance(message, Command):
                self._command(message)
            elif isinstance(message, Resync):
                log.info(
                    "coordinator asks for a new stream", extra={"fields": {"why": message.reason}}
                )
                self._stream.restart(self._new_stream_id())
            else:
                log.warning(
                    "unexpected frame on the site link", extra={"fields": {"type": message.TYPE}}
                )
            if not self._elected():
                raise LinkDown("another agent is the site's gateway now")

    async def _push(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            if not self._elected():  # another agent holds the link now: let it
                await ws.close(message=b"another agent is the site's gateway now")
                return
            for delta in self._stream.observe(self.view()):
                await self._send(ws, delta)
            await asyncio.sleep(PUSH_INTERVAL)

    async def _send(self, ws: aiohttp.ClientWebSocketResponse, message: Any) -> None:
        async with self._send_lock:
            await ws.send_bytes(encode(message, self.node_id))

    def view(self) -> dict[str, HostState]:
        """The site as this agent sees it: every member with its latest record."""
        core = self._core()
        records = core.records()
        return {
            m.node_id: HostState(
                m.node_id, m.state, records.get(m.node_id) or NodeRecord(m.node_id, 0)
            )
            for m in core.members()
            if m.state is not MemberState.LEFT
        }

    # --- commands ----------------------------------------------------------------------

    def _command(self, command: Command) -> None:
        """A command from the coordinator: run it if pinned, else pin it (it runs on the ack)."""
        if command.key in self._running or self._stream.pinned(command.key):
            return  # already on its way (the coordinator sent it again)
        if command.host:
            self._start(command)
            return
        core = self._core()
        host, why = pin_host(
            command,
            core.records(),
            core.member,
            self._migration.limits,
            self._migration.reservations.vcpu_overcommit,
        )
        if host is None:
            self._stream.report(Outcome(command.key, ok=False, status=409, detail=why))
            return
        self._stream.pin(command, host)

    def _start(self, command: Command) -> None:
        self._running.add(command.key)
        task = asyncio.create_task(self._run(command), name=f"site-command:{command.key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, command: Command) -> None:
        try:
            outcome = await self._commands.run(command)
        finally:
            self._running.discard(command.key)
        self.status.commands_run += 1
        self._stream.report(outcome)

    def link_status(self) -> SiteLinkStatus:
        """For `nova status`: the link now, with the stream it carries."""
        return SiteLinkStatus(
            dataclasses.replace(self.status), self._stream.stream, self._stream.unacked
        )


def aiohttp_timeout() -> Any:
    import aiohttp

    return aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0)


def client_tls(ca_file: str) -> ssl.SSLContext:
    """Verifies the coordinator's certificate: against `ca_file` if given, else the system's."""
    context = ssl.create_default_context(cafile=ca_file or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
