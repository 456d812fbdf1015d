"""ZeroMQ transport with CurveZMQ: frames in, frames out, and who really sent them.

The Zyre pattern: each node binds one ROUTER (a CurveZMQ server) that every
peer sends to, and keeps one DEALER (a CurveZMQ client) per peer it sends to.
All traffic for a node therefore arrives on its ROUTER, where the ZAP
handler has already admitted the peer's Curve key through the `TrustStore`.

Who sent a frame is decided by the Curve key, not by the frame: ZAP hands
libzmq the client's key as the connection's User-Id, and on every frame the
key is mapped to the node id of its certificate. An envelope whose `sender`
differs is refused, so a certified node cannot speak for another one.

Thin on purpose: no protocol decisions. Bad input (undecodable frames,
spoofed senders, keys revoked after connecting) is counted and logged, never
raised; the caller sees only `(sender_id, message)` it can trust.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from dataclasses import dataclass
from types import TracebackType

import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator

from novacron.protocol import codec, z85
from novacron.protocol.codec import DEFAULT_LIMITS, Limits
from novacron.protocol.errors import ProtocolError
from novacron.protocol.keys import RAW_KEY_SIZE, NodeKey
from novacron.protocol.messages import Message

from .logs import Throttle
from .security import Refusal, TrustStore, key_text

log = logging.getLogger(__name__)

ZAP_DOMAIN = "*"  # pyzmq's default domain: every socket of this context
SEND_HWM = 1000  # frames queued per peer before sends are dropped (gossip is lossy)
RECV_HWM = 10_000  # frames queued on the ROUTER before libzmq pushes back on senders
RECONNECT_MS = 100  # first wait before connecting again to a peer that is down (libzmq's)
RECONNECT_MAX_MS = 2_000  # back-off cap when a peer is down: retry, but not in a tight loop
# A link that drops for a minute leaves TCP retransmitting on a back-off that
# reaches two minutes, so a connection could stay silent long after the link
# returned. ZMTP heartbeats notice a connection that carries nothing back and
# have libzmq drop it and connect anew; a connect gets its own short timeout
# for the same reason (SYN retries back off too). The ROUTER beats as well, so
# a peer's connection whose far end vanished with the link is closed, not kept.
HEARTBEAT_S = 2.0  # default: PING a peer every this many seconds...
HEARTBEAT_MISSES = 3  # ...and drop the connection after this many intervals without a word
CONNECT_TIMEOUT_MS = 2_000  # a TCP connect still pending after this is retried
RESET_AFTER = 5.0  # seconds between rebuilds of a DEALER whose sends keep failing
MAX_TRACKED_CONNECTIONS = 20_000  # peers whose connections to us are told apart (logs only)
LOG_INTERVAL = 5.0  # seconds between repeated warnings about the same peer and problem


class TransportError(Exception):
    """The transport cannot do what was asked (bind, start)."""


class AddressInUse(TransportError):
    """Another process (or transport) already listens on the address."""


@dataclass(slots=True)
class TransportStats:
    """Counters for the daemon's statistics; all start at zero."""

    sent: int = 0  # frames handed to libzmq
    bytes_sent: int = 0  # their encoded size
    dropped_queue_full: int = 0  # a peer's send queue was full (peer slow or down)
    dropped_no_certificate: int = 0  # no valid certificate known for the peer
    dropped_bad_address: int = 0  # libzmq could not use the peer's address
    dropped_too_large: int = 0  # encoded frame over the limit (peers would disconnect)
    received: int = 0  # messages returned by recv()
    bytes_received: int = 0  # their encoded size
    malformed: int = 0  # frames that failed to decode (ProtocolError) or bad framing
    spoofed: int = 0  # envelope sender differed from the node id of the Curve key
    unauthorized: int = 0  # frames from a key no longer admitted (revoked, expired)
    refused_connections: int = 0  # ZAP refusals of connecting peers


class _WarnOnce:
    """Warnings about peers, rate-limited per peer and problem (a peer cannot flood the log)."""

    def __init__(self, interval: float = LOG_INTERVAL) -> None:
        self._throttle = Throttle(log, interval)

    def __call__(
        self, peer: str, kind: str, text: str, *args: object, level: int = logging.WARNING
    ) -> None:
        self._throttle((peer, kind), level, text, *args)


def raw_curve_key(key: bytes | str) -> bytes:
    """The 32 raw bytes of a Curve key as pyzmq hands it to ZAP callbacks.

    pyzmq passes the key Z85-encoded (40 bytes) in current versions and raw
    (32 bytes) in old ones; accept both, and text too.
    """
    if isinstance(key, str):
        key = key.encode("ascii", "replace")
    if len(key) == RAW_KEY_SIZE:
        return bytes(key)
    try:
        return z85.decode(key.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return bytes(key)  # not a key at all; the trust store will not know it


class _TrustProvider:
    """pyzmq's CURVE credentials provider: asks the trust store about each client key."""

    def __init__(self, trust: TrustStore, stats: TransportStats, warn: _WarnOnce) -> None:
        self._trust = trust
        self._stats = stats
        self._warn = warn

    def callback(self, domain: str, key: bytes | str) -> bool:
        raw = raw_curve_key(key)
        verdict = self._trust.judge(raw)
        if verdict.admitted:
            return True
        self._stats.refused_connections += 1
        # A key we have no certificate for is mostly a member that restarted and has
        # not been introduced again yet: normal life, retried in seconds. A refused
        # certificate (another CA, revoked, expired) is worth a warning.
        level = logging.INFO if verdict.refusal is Refusal.UNKNOWN_KEY else logging.WARNING
        self._warn(key_text(raw), "zap", "peer refused: %s", verdict.reason, level=level)
        return False


def tcp_endpoint(host: str, port: int | str) -> str:
    """`tcp://host:port`, with IPv6 hosts in brackets as libzmq wants them."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"tcp://{host}:{port}"


class Transport:
    """One node's ROUTER plus one DEALER per peer, all under CurveZMQ and ZAP."""

    def __init__(
        self,
        node_id: str,
        key: NodeKey,
        trust: TrustStore,
        bind: str,
        port: int,
        *,
        limits: Limits = DEFAULT_LIMITS,
        linger: float = 0.2,
        heartbeat: float = HEARTBEAT_S,
        queue: int = RECV_HWM,
        reconnect_ms: tuple[int, int] = (RECONNECT_MS, RECONNECT_MAX_MS),
    ) -> None:
        self.node_id = node_id  # our sender id on every frame
        self.trust = trust  # decides which Curve keys may connect
        self.stats = TransportStats()
        self._key = key
        self._bind = bind
        self._port = port  # 0: let the OS choose; see `port` after start()
        self._limits = limits  # MAXMSGSIZE and the decoder use the same bound
        self._queue = queue  # frames queued each way (so a queue costs queue * max_frame)
        self._linger_ms = int(linger * 1000)  # how long close() lets queued frames drain
        self._heartbeat_ms = int(heartbeat * 1000)  # 0: TCP's own back-off alone, as before
        self._reconnect_ms = reconnect_ms  # first and longest wait between connects
        self._ctx: zmq.asyncio.Context | None = None  # own context: ZAP is per context
        self._auth: AsyncioAuthenticator | None = None
        self._router: zmq.asyncio.Socket | None = None
        self._dealers: dict[str, tuple[str, bytes, zmq.asyncio.Socket]] = {}  # peer -> ...
        self._resets: dict[str, float] = {}  # peer -> when its DEALER was last rebuilt
        self._connections: dict[str, bytes] = {}  # peer -> routing id of its latest connection
        self._warn = _WarnOnce()

    # --- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Start the ZAP handler, then bind the ROUTER (never accept before ZAP runs)."""
        self._ctx = zmq.asyncio.Context()
        self._auth = AsyncioAuthenticator(self._ctx, log=logging.getLogger(f"{__name__}.zap"))
        self._auth.start()
        provider = _TrustProvider(self.trust, self.stats, self._warn)
        self._auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=provider)
        router = self._socket(zmq.ROUTER)
        router.curve_server = True
        router.rcvhwm = self._queue
        self._beat(router)
        self._router = router
        try:
            self._bind_router(router)
        except BaseException:
            await self.close()
            raise

    def _bind_router(self, router: zmq.asyncio.Socket) -> None:
        port = "*" if self._port == 0 else str(self._port)
        endpoint = tcp_endpoint(self._bind, port)
        router.ipv6 = ":" in self._bind
        try:
            router.bind(endpoint)
        except zmq.ZMQError as exc:
            where = f"{self._bind}:{self._port}"
            if exc.errno == errno.EADDRINUSE:
                raise AddressInUse(
                    f"cannot listen on {where}: address already in use "
                    "(another agent running? choose another port)"
                ) from exc
            raise TransportError(f"cannot listen on {where}: {exc}") from exc

    def _socket(self, kind: int) -> zmq.asyncio.Socket:
        """A socket with our Curve keys, bounded frames, and a short linger."""
        assert self._ctx is not None, "Transport.start() was not called"
        sock = self._ctx.socket(kind)
        sock.curve_secretkey = self._key.curve_secret_z85().encode()
        sock.curve_publickey = self._key.curve_public_z85().encode()
        sock.maxmsgsize = self._limits.max_frame
        sock.linger = self._linger_ms
        return sock

    def _beat(self, sock: zmq.asyncio.Socket) -> None:
        """ZMTP heartbeats and a connect timeout on `sock`, unless heartbeats are off (the
        connect timeout only matters to the DEALERs, which connect)."""
        if self._heartbeat_ms > 0:
            sock.heartbeat_ivl = self._heartbeat_ms
            sock.heartbeat_timeout = self._heartbeat_ms * HEARTBEAT_MISSES
            sock.connect_timeout = CONNECT_TIMEOUT_MS

    @property
    def port(self) -> int:
        """The port the ROUTER listens on (the chosen one when started with port 0)."""
        if self._router is None:
            return self._port
        endpoint = self._router.last_endpoint  # b"tcp://127.0.0.1:40123"
        text = endpoint.decode() if isinstance(endpoint, bytes) else str(endpoint)
        return int(text.rsplit(":", 1)[1])

    @property
    def address(self) -> str:
        """`host:port` as peers pass it to `send`."""
        host = f"[{self._bind}]" if ":" in self._bind else self._bind
        return f"{host}:{self.port}"

    async def close(self) -> None:
        """Stop ZAP, close every socket (letting queued frames drain for `linger`)."""
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        for _, _, dealer in self._dealers.values():
            dealer.close()
        self._dealers.clear()
        if self._router is not None:
            self._router.close()
            self._router = None
        if self._ctx is not None:
            ctx, self._ctx = self._ctx, None
            await asyncio.to_thread(ctx.term)  # waits up to linger; off the loop

    async def __aenter__(self) -> Transport:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- sending -----------------------------------------------------------------

    async def send(self, peer_id: str, address: str, message: Message) -> bool:
        """Queue `message` for `peer_id` at `address` (`host:port`); False if dropped.

        Never waits for the peer: a full queue (peer slow or down) drops the
        frame, as lossy gossip expects. The peer's Curve key comes from its
        certificate, so we only ever talk to the node we meant to.
        """
        try:
            dealer = self._dealer(peer_id, address)
        except zmq.ZMQError as exc:  # addresses come from gossip: do not trust them
            self.stats.dropped_bad_address += 1
            self._warn(peer_id, "addr", "not sending to %s at %r: %s", peer_id, address[:80], exc)
            return False
        if dealer is None:
            self.stats.dropped_no_certificate += 1
            self._warn(peer_id, "nocert", "not sending to %s: no valid certificate known", peer_id)
            return False
        frame = codec.encode(message, self.node_id)
        if len(frame) > self._limits.max_frame:
            # The peer's MAXMSGSIZE would drop the whole connection, not just this frame.
            self.stats.dropped_too_large += 1
            log.error(
                "not sending %d-byte %s to %s: over the frame limit",
                len(frame),
                message.TYPE,
                peer_id,
            )
            return False
        try:
            # copy=False: a 1 MiB image piece is handed to ZeroMQ without a copy (pyzmq
            # still copies frames under its 64 KiB threshold, where that is cheaper).
            await dealer.send(frame, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.stats.dropped_queue_full += 1
            self._warn(peer_id, "full", "send queue to %s at %s is full", peer_id, address)
            self._reset_stuck(peer_id)
            return False
        self.stats.sent += 1
        self.stats.bytes_sent += len(frame)
        return True

    def _dealer(self, peer_id: str, address: str) -> zmq.asyncio.Socket | None:
        """The DEALER to `peer_id`, made anew if its address or certified key changed."""
        cert = self.trust.certificate_for(peer_id)
        if cert is None:
            return None
        known = self._dealers.get(peer_id)
        if known is not None and known[0] == address and known[1] == cert.curve_key:
            return known[2]
        self.forget(peer_id)
        dealer = self._socket(zmq.DEALER)
        dealer.curve_serverkey = cert.curve_public_z85().encode()
        dealer.sndhwm = min(SEND_HWM, self._queue)
        dealer.rcvhwm = 1  # peers never answer on this socket; do not buffer if they try
        dealer.reconnect_ivl, dealer.reconnect_ivl_max = self._reconnect_ms
        self._beat(dealer)
        dealer.ipv6 = address.startswith("[")
        try:
            dealer.connect(f"tcp://{address}")
        except zmq.ZMQError:
            dealer.close(linger=0)
            raise
        self._dealers[peer_id] = (address, cert.curve_key, dealer)
        return dealer

    def _reset_stuck(self, peer_id: str, why: str = "its send queue is full") -> None:
        """Rebuild a DEALER that cannot send, at most every `RESET_AFTER` seconds.

        libzmq may give up on a connection for good after the peer's ZAP
        handler refused it once (libzmq #3519): a restarted peer refuses us
        until it has learnt our certificate, and the old DEALER would then
        never reach it again. A new socket means a new handshake.
        """
        now = time.monotonic()
        if now - self._resets.get(peer_id, -RESET_AFTER) >= RESET_AFTER:
            self._resets[peer_id] = now
            self._rebuild(peer_id, why)

    def unanswered(self, peer_id: str) -> None:
        """`peer_id` answers our probes only through relays, probe after probe: rebuild
        our connection to it (at most every `RESET_AFTER` seconds; a rebuild drops the
        frames queued on the old connection).

        libzmq may leave a connection that a peer's ZAP handler refused once
        neither connected nor failing (libzmq #3519): frames queue on it and
        are never sent, and no send ever says so. A new socket means a new
        handshake; if the path itself is broken, the new one fails as the old.
        """
        self._reset_stuck(peer_id, "it answers others, not us")

    def reconnect(self, peer_id: str) -> None:
        """Connect anew to `peer_id`, which has just come back from failure.

        While a peer is unreachable libzmq retries its connection with a back-off
        (and a connection that carried frames into the void also waits on TCP's
        retransmissions), so the old connection may be seconds from its next try
        when the peer is back. The membership sees the return first: from then
        on the peer is alive to everyone, and a request to it must get through
        now. A new DEALER connects at once. Frames queued on the old one go with
        it; they were sent while the peer was unreachable, and a peer that
        restarted does not get those even from the old connection.
        """
        self._rebuild(peer_id, "it came back")

    def _rebuild(self, peer_id: str, why: str) -> None:
        """Drop our connection to `peer_id`, saying why; the next send makes a new one."""
        if peer_id in self._dealers:
            log.info("connecting anew to %s: %s", peer_id, why)
        self.forget(peer_id)

    def forget(self, peer_id: str) -> None:
        """Close the connection to `peer_id` (it left, died, or moved)."""
        known = self._dealers.pop(peer_id, None)
        if known is not None:
            known[2].close(linger=0)

    # --- receiving ---------------------------------------------------------------

    async def recv(self) -> tuple[str, Message]:
        """The next message from an admitted peer, as `(sender_id, message)`.

        Frames that do not decode, that claim another sender, or that come
        from a key no longer admitted are counted, logged and skipped.
        """
        if self._router is None:
            raise TransportError("Transport.start() was not called")
        while True:
            frames = await self._router.recv_multipart(copy=False)
            received = self._accept(frames)
            if received is not None:
                self.stats.received += 1
                self.stats.bytes_received += len(frames[1])
                return received

    def _accept(self, frames: list[zmq.Frame]) -> tuple[str, Message] | None:
        """Check one ROUTER message: [routing id, envelope] from a certified key."""
        if len(frames) != 2:
            self.stats.malformed += 1
            self._warn("?", "framing", "dropped a message of %d frames (want 1)", len(frames) - 1)
            return None
        node_id = self._authenticated_node(frames[1])
        if node_id is None:
            return None
        self._note_connection(node_id, frames[0].bytes)
        try:
            envelope = codec.decode(frames[1].bytes, self._limits)
        except ProtocolError as exc:
            self.stats.malformed += 1
            self._warn(node_id, "decode", "dropped a frame from %s: %s", node_id, exc)
            return None
        if envelope.sender != node_id:
            self.stats.spoofed += 1
            self._warn(
                node_id,
                "spoof",
                "dropped a frame from %s claiming to be sent by %r",
                node_id,
                envelope.sender[:80],
            )
            return None
        return node_id, envelope.message

    def _note_connection(self, node_id: str, routing_id: bytes) -> None:
        """Log a peer's new connection to us: with ours to it, the history of a link."""
        known = self._connections.get(node_id)
        if known != routing_id:
            if known is not None:  # rate-limited: a member cannot flood the log by reconnecting
                self._warn(node_id, "anew", "%s connected to us anew", node_id, level=logging.INFO)
            if len(self._connections) >= MAX_TRACKED_CONNECTIONS:
                self._connections.clear()
            self._connections[node_id] = routing_id

    def _authenticated_node(self, frame: zmq.Frame) -> str | None:
        """The node id certified for the Curve key that ZAP authenticated for `frame`."""
        try:
            user_id = frame.get("User-Id")
        except zmq.ZMQError:
            user_id = ""
        raw = raw_curve_key(str(user_id))
        verdict = self.trust.judge(raw)
        if verdict.certificate is None:
            self.stats.unauthorized += 1
            self._warn(key_text(raw), "unauth", "dropped a frame: %s", verdict.reason)
            return None
        return verdict.certificate.node_id

    @property
    def peers(self) -> list[str]:
        """Peers we hold a connection to."""
        return list(self._dealers)
