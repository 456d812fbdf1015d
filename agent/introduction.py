"""Certificate introductions: how two nodes learn each other's Curve keys.

CurveZMQ needs the server's public key before connecting, and our ZAP
handler admits only keys bound to a certificate of this cluster's CA. Two
nodes that have never met therefore swap certificates first, on a small plain
TCP port next to the gossip port (gossip port + 1): the client sends its
certificate, the server checks it against the CA and answers with its own (or
with the reason it refused). Certificates are public and signed by the CA, so
this channel needs no secrecy. After the first contact, members learn the
others' certificates from push-pull and by asking whoever told them of a
node (the core's `CertificateRequest`); introductions are for bootstrapping
(mDNS peers, static seeds) and for peers the transport must reach first.

The wire, one exchange per connection:

    request:  b"novacron-intro/2", length (2 bytes, big-endian), certificate
    answer:   b"+", our certificate, and the address at which we know the
              caller's node id alive ("" if we do not), or b"-" and why not
              (UTF-8), each after its length (2 bytes, big-endian)

The address is how a second agent started with an identity already in use
finds out (`daemon._introduce_and_join`): a peer knows that id alive
elsewhere, and something there answers with the same certificate.

This port answers anyone before any authentication, so what a stranger may
cost is bounded here (`IntroductionLimits`), and that is why it is a listening
socket of our own rather than a ZeroMQ ROUTER. libzmq accepts every
connection on a bound socket, each with its file descriptor, its buffers and
ZMQ_HANDSHAKE_IVL (30 s) to finish its greeting; it has no cap on connections
in all or per address (ZMQ_MAX_SOCKETS counts sockets, not connections),
queues up to RCVHWM (1000) whole messages per connection, names a message's
source only once the message is whole (ZMQ_MAXMSGSIZE bounds only its size),
and cannot close one peer's connection. With our own socket and framing:

- connections are capped in all and per address, and each address has a rate;
  one over a limit is reset at accept, before a byte is read, unanswered (an
  answer would cost as much again as the accept);
- a request must arrive whole within `request_timeout`, read into a buffer of
  exactly its announced size, which is refused at once if over the limit;
  when every slot is taken the oldest connection still sending is closed to
  make room (an honest request arrives in milliseconds);
- checks run cheapest first: the verdict remembered for these exact bytes
  (an honest peer always sends the same ones), then, for an address not
  barred (one whose certificate failed the checks gets no new ones checked
  for a minute) and within a rate shared by all addresses, decoding, the
  issuer, the validity window and the revocation list, and only then the
  Ed25519 signature (the trust store's `add_certificate`);
- accepting is done in batches, each request in its own task, so a flood
  never holds the event loop: gossip and the local API run between them;
- refusals are counted by kind and logged as a summary at most once per
  `log_interval` (`nova status` shows the counts).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from novacron.protocol.certificates import (
    Certificate,
    check_issuer,
    check_not_revoked,
    check_validity,
    decode_certificate,
)
from novacron.protocol.errors import IdentityError

from .introduction_limits import (
    BUSY,
    INCOMPLETE,
    NOT_AN_INTRODUCTION,
    TOO_LARGE,
    IntroductionLimits,
    RefusalSummary,
    RefusalTally,
    RememberedVerdicts,
    SourceGate,
    TokenBucket,
    Verdict,
)
from .security import PeerRefused, TrustStore

log = logging.getLogger(__name__)

PROTOCOL = b"novacron-intro/2"
PORT_OFFSET = 1  # introductions listen on gossip port + 1
MAX_CERTIFICATE = 4096  # bytes; a certificate is a few hundred
MAX_REASON = 1024  # bytes of a refusal's sentence
MAX_ADDRESS = 256  # bytes of the address at which the caller's id is known
INTRODUCED = b"+"
REFUSED = b"-"
_LENGTH = 2  # bytes of every length prefix
BACKLOG = 128  # connections the kernel holds until we accept them
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on with 0 s: close() sends a reset
ACCEPT_PAUSE = 1.0  # seconds without accepting after the process ran out of descriptors


class IntroductionFailed(Exception):
    """The peer could not be introduced: unreachable, refused us, or not certified."""


class _Refused(Exception):
    """An introduction turned down: `kind` counts it, `reason` is sent and logged."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def _framed(payload: bytes) -> bytes:
    return len(payload).to_bytes(_LENGTH, "big") + payload


def request_bytes(certificate: bytes) -> bytes:
    """What a client sends: the protocol's name, then its certificate."""
    return PROTOCOL + _framed(certificate)


def _answer(status: bytes, payload: bytes) -> bytes:
    return status + _framed(payload)


def _refusal(reason: str) -> bytes:
    return _answer(REFUSED, reason.encode()[:MAX_REASON])


@dataclass
class _Connection:
    """An admitted connection, while it is being served."""

    sock: socket.socket
    source: str  # the peer's address: its per-address counts
    since: float  # when it was accepted (monotonic)
    receiving: bool = True  # its request is still arriving: it may be closed for room
    released: bool = False  # its slot was given back (served, or closed for room)


@dataclass(frozen=True, slots=True)
class IntroductionStats:
    """What the introduction port has done since start (`nova status` shows it)."""

    open: int  # connections open now
    introduced: int  # introductions answered with our certificate
    checked: int  # certificates given the full checks
    refused: Mapping[str, int]  # refusals by kind, sorted by kind

    def to_json(self) -> dict[str, Any]:
        return {
            "open": self.open,
            "introduced": self.introduced,
            "checked": self.checked,
            "refused": dict(self.refused),
        }


class IntroductionServer:
    """Answers introductions: checks the caller's certificate, returns ours."""

    def __init__(
        self,
        certificate: bytes,
        trust: TrustStore,
        bind: str,
        port: int,
        *,
        limits: IntroductionLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        known_at: Callable[[str], str] = lambda node_id: "",
        on_twin: Callable[[str], None] = lambda source: None,
    ) -> None:
        self._certificate = certificate  # ours, as issued by the CA
        self._known_at = known_at  # where the mesh has a node id alive ("" if nowhere)
        self._on_twin = on_twin  # told the source of an introduction with our own certificate
        self._trust = trust  # learns every certificate that verifies
        self._address = (bind, port)
        self.limits = limits or IntroductionLimits()
        self._clock = clock  # rates, deadlines and memories
        self._wall_clock = wall_clock  # certificate validity windows are in unix seconds
        self._gate = SourceGate(self.limits)
        self._checks = TokenBucket(self.limits.check_rate, self.limits.check_burst, clock())
        self._verdicts = RememberedVerdicts(self.limits.remembered, self.limits.remember_for)
        self._tally = RefusalTally(self.limits.log_interval)
        self._listener: socket.socket | None = None
        self._serving: dict[asyncio.Task[None], _Connection] = {}  # until each task ended
        self._summary_timer: asyncio.TimerHandle | None = None  # logs pending refusals
        self._resume_timer: asyncio.TimerHandle | None = None  # accepts again after a pause
        self.introduced = 0  # introductions answered with our certificate
        self.checked = 0  # certificates given the full checks (the costly part)

    @property
    def refused(self) -> int:
        """Introductions and connections turned down since start."""
        return sum(self._tally.total.values())

    def stats(self) -> IntroductionStats:
        """For `nova status`: connections open now, introductions made, refusals by kind."""
        return IntroductionStats(
            self._gate.open,
            self.introduced,
            self.checked,
            dict(sorted(self._tally.total.items())),
        )

    # --- lifecycle -----------------------------------------------------------------

    def set_certificate(self, certificate: bytes) -> None:
        """Answer with `certificate` from now on (a renewed one, after a reload)."""
        self._certificate = certificate

    async def start(self) -> None:
        bind, port = self._address
        family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(self._address)
            listener.listen(BACKLOG)
        except OSError as exc:
            listener.close()
            why = exc.strerror or str(exc)
            raise OSError(f"cannot listen for introductions on {bind}:{port}: {why}") from None
        listener.setblocking(False)
        self._listener = listener
        asyncio.get_running_loop().add_reader(listener.fileno(), self._accept_some)

    async def close(self) -> None:
        for timer in (self._resume_timer, self._summary_timer):
            if timer is not None:
                timer.cancel()
        if self._listener is not None:
            asyncio.get_running_loop().remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
        tasks = list(self._serving)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._log_summary(self._tally.due(float("inf")))

    # --- accepting -----------------------------------------------------------------

    def _accept_some(self) -> None:
        """Accept up to a batch; the rest wait for the next turn of the loop."""
        assert self._listener is not None
        for _ in range(self.limits.accept_batch):
            try:
                conn, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors or buffers: pause, as asyncio does
                self._pause_accepting(exc)
                return
            self._admit(conn, str(address[0]))

    def _pause_accepting(self, error: OSError) -> None:
        assert self._listener is not None
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._listener.fileno())
        self._note(BUSY, f"cannot accept introductions: {error.strerror or error}", "")

        def resume() -> None:
            self._resume_timer = None
            if self._listener is not None:
                loop.add_reader(self._listener.fileno(), self._accept_some)

        self._resume_timer = loop.call_later(ACCEPT_PAUSE, resume)

    def _admit(self, conn: socket.socket, source: str) -> None:
        conn.setblocking(False)
        reason = self._gate.admit(source, self._clock())
        if reason is None and self._gate.over_capacity() and not self._close_oldest_receiving():
            self._gate.release(source)
            reason = "too many introductions at once: try again in a few seconds"
        if reason is not None:
            self._note(BUSY, reason, source)
            _reset(conn)
            return
        connection = _Connection(conn, source, self._clock())
        task = asyncio.get_running_loop().create_task(self._serve(connection))
        self._serving[task] = connection
        task.add_done_callback(self._served)

    def _close_oldest_receiving(self) -> bool:
        """Make room: close the connection whose request has been arriving the longest."""
        receiving = [
            (c.since, t) for t, c in self._serving.items() if c.receiving and not c.released
        ]
        if not receiving:
            return False
        _, task = min(receiving, key=lambda pair: pair[0])
        connection = self._serving[task]
        self._give_back(connection)
        why = "closed to make room: its introduction was still arriving"
        self._note(INCOMPLETE, why, connection.source)
        task.cancel()  # its socket is closed by the task, once its read is unregistered
        return True

    def _give_back(self, connection: _Connection) -> None:
        """Give the connection's slot back, at once: a done callback would run a turn of
        the loop later, and the accepts of this turn would find no room."""
        if not connection.released:
            connection.released = True
            self._gate.release(connection.source)

    def _served(self, task: asyncio.Task[None]) -> None:
        """After the task, however it ended (one cancelled before it ran did nothing)."""
        connection = self._serving.pop(task)
        connection.sock.close()
        self._give_back(connection)
        if not task.cancelled() and task.exception() is not None:
            log.error("an introduction failed", exc_info=task.exception())

    # --- one introduction ------------------------------------------------------------

    async def _serve(self, connection: _Connection) -> None:
        loop = asyncio.get_running_loop()
        conn = connection.sock
        try:
            try:
                async with asyncio.timeout(self.limits.request_timeout):
                    data = await self._read_request(conn)
                connection.receiving = False
                answer = self._judge(data, connection.source)
            except TimeoutError:
                late = f"the introduction did not arrive within {self.limits.request_timeout:g} s"
                raise _Refused(INCOMPLETE, late) from None
            async with asyncio.timeout(self.limits.reply_timeout):
                await loop.sock_sendall(conn, answer)
        except _Refused as refused:
            self._note(refused.kind, refused.reason, connection.source)
            if refused.kind == BUSY:
                _reset(conn)
            else:
                _refuse_at_once(conn, refused.reason)
        except (OSError, TimeoutError):
            pass  # the stranger went away or does not read its answer
        finally:
            conn.close()
            self._give_back(connection)

    async def _read_request(self, conn: socket.socket) -> bytes:
        head = await _receive(conn, len(PROTOCOL) + _LENGTH, prefix=PROTOCOL)
        size = int.from_bytes(head[len(PROTOCOL) :], "big")
        if size > MAX_CERTIFICATE:
            why = f"a certificate of {size} bytes is over the limit of {MAX_CERTIFICATE}"
            raise _Refused(TOO_LARGE, why)
        return await _receive(conn, size)

    def _judge(self, data: bytes, source: str) -> bytes:
        """Our answer to a certificate: cheap checks first, the signature last."""
        now = self._clock()
        verdict = self._verdicts.get(data, now)
        if verdict is not None and verdict.kind:
            raise _Refused(verdict.kind, verdict.reason)
        if verdict is None or not self._still_admitted(verdict.node_id, data):
            if not self._gate.may_check(source, now):
                barred = self.limits.barred_for
                why = f"a certificate from {source} was refused within the last {barred:g} s"
                raise _Refused(BUSY, why)
            if not self._checks.take(now):
                raise _Refused(BUSY, "too many introductions to check: try again in a few seconds")
            self.checked += 1
            try:
                cert = self._check(data)
            except PeerRefused as exc:
                self._verdicts.remember(data, Verdict(kind=str(exc.kind), reason=exc.reason), now)
                self._gate.bar(source, now)
                raise _Refused(str(exc.kind), exc.reason) from None
            verdict = Verdict(node_id=cert.node_id)
            self._verdicts.remember(data, verdict, now)
            log.debug("introduced to %s", cert.node_id)
        self.introduced += 1
        if data == self._certificate:
            self._on_twin(source)  # another process holds our key and our certificate
        known_at = self._known_at(verdict.node_id).encode()[:MAX_ADDRESS]
        return _answer(INTRODUCED, self._certificate) + _framed(known_at)

    def _still_admitted(self, node_id: str, data: bytes) -> bool:
        """Whether `data` is still the current certificate the trust store holds for `node_id`
        (the store checks its window and the revocation list)."""
        held = self._trust.certificate_for(node_id)
        return held is not None and held.encoded == data

    def _check(self, data: bytes) -> Certificate:
        """Admit `data` into the trust store, or raise `PeerRefused`.

        Everything that needs no signature check comes first; the trust store
        then verifies the CA's signature (and repeats those checks, the one truth).
        """
        cert: Certificate | None = None
        try:
            cert = decode_certificate(data)
            check_issuer(cert, self._trust.ca_key_id)
            check_validity(cert, self._wall_clock())
            if self._trust.revocations is not None:
                check_not_revoked(cert, self._trust.revocations)
        except IdentityError as exc:
            raise self._trust.refuse(exc, cert) from None
        return self._trust.add_certificate(data)

    # --- refusals --------------------------------------------------------------------

    def _note(self, kind: str, reason: str, source: str) -> None:
        self._log_summary(self._tally.note(kind, reason, source, self._clock()))
        if self._tally.pending and self._summary_timer is None:
            delay = max(0.0, self._tally.next_line - self._clock())
            self._summary_timer = asyncio.get_running_loop().call_later(delay, self._summarise)

    def _summarise(self) -> None:
        self._summary_timer = None
        self._log_summary(self._tally.due(self._clock()))

    def _log_summary(self, summary: RefusalSummary | None) -> None:
        if summary is None:
            return
        kinds = " ".join(f"{kind}:{n}" for kind, n in sorted(summary.kinds.items()))
        fields = {"count": summary.count, "kinds": kinds, "last": summary.last_reason}
        if summary.last_source:
            fields["from"] = summary.last_source
        log.warning("introductions refused", extra={"fields": fields})


def _reset(conn: socket.socket) -> None:
    """Close with a reset and no answer: what a connection over a limit gets.

    Answering costs a send, which on loopback and veth links runs the peer's
    side of TCP too: as much again as accepting, in a flood. A reset also
    leaves no TIME_WAIT behind. The reason is in the log's summary.
    """
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    conn.close()


def _refuse_at_once(conn: socket.socket, reason: str) -> None:
    """Send the refusal if the socket takes it now, and close; never wait for a stranger.

    What the client already sent is read first: closing with unread input
    would reset the connection, and the client would lose the reason.
    """
    with contextlib.suppress(OSError):
        conn.recv(len(PROTOCOL) + _LENGTH + MAX_CERTIFICATE)
    with contextlib.suppress(OSError):
        conn.send(_refusal(reason))
    conn.close()


async def _receive(conn: socket.socket, size: int, prefix: bytes = b"") -> bytes:
    """Exactly `size` bytes, read into a buffer of that size (never more from the socket).

    With `prefix`, the bytes must begin with it: a stranger is turned away at
    its first wrong byte, not after the whole header.
    """
    loop = asyncio.get_running_loop()
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = await loop.sock_recv_into(conn, view[got:])
        if n == 0:
            raise _Refused(INCOMPLETE, "the connection closed before the introduction was whole")
        got += n
        seen = min(got, len(prefix))
        if buffer[:seen] != prefix[:seen]:
            raise _Refused(NOT_AN_INTRODUCTION, "not a novacron introduction (novacron-intro/2)")
    return bytes(buffer)


# --- the client ----------------------------------------------------------------------------


class Introduction(NamedTuple):
    """What an introduction brought: the peer's verified certificate, and where the
    peer knows our node id alive ("" if nowhere)."""

    certificate: Certificate
    known_at: str


async def introduce(
    certificate: bytes, trust: TrustStore, host: str, gossip_port: int, timeout: float = 3.0
) -> Introduction:
    """Swap certificates with the node at `host`: its verified certificate, and where it
    knows us.

    Raises `IntroductionFailed` with the reason (its refusal, ours, or silence).
    """
    endpoint = f"{host}:{gossip_port + PORT_OFFSET}"
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            try:
                reader, writer = await asyncio.open_connection(host, gossip_port + PORT_OFFSET)
            except OSError as exc:
                if exc.errno == errno.ECONNRESET:  # it accepted, then reset us: see below
                    raise
                why = exc.strerror or str(exc)
                raise IntroductionFailed(f"cannot reach {endpoint}: {why}") from None
            except ValueError as exc:  # a host the resolver refuses outright (UnicodeError)
                raise IntroductionFailed(f"cannot reach {endpoint}: {exc}") from None
            writer.write(request_bytes(certificate))
            await writer.drain()
            status = await reader.readexactly(1)
            size = int.from_bytes(await reader.readexactly(_LENGTH), "big")
            if size > MAX_CERTIFICATE:
                raise IntroductionFailed(f"{endpoint} sent a malformed introduction answer")
            payload = await reader.readexactly(size)
            known_at = await _known_at(reader) if status == INTRODUCED else b""
    except TimeoutError:
        raise IntroductionFailed(f"no answer from {endpoint} within {timeout:g}s") from None
    except (asyncio.IncompleteReadError, OSError):
        why = f"{endpoint} closed the connection without answering"
        hint = "it refuses introductions over its limits that way: try again later"
        raise IntroductionFailed(f"{why} ({hint})") from None
    finally:
        if writer is not None:
            writer.close()
    peer = _accept_answer(status, payload, trust, endpoint)
    return Introduction(peer, known_at.decode(errors="replace"))


async def _known_at(reader: asyncio.StreamReader) -> bytes:
    """The answer's last field, where the peer knows our id; b"" if it sent none."""
    try:
        size = int.from_bytes(await reader.readexactly(_LENGTH), "big")
        return await reader.readexactly(min(size, MAX_ADDRESS))
    except (asyncio.IncompleteReadError, OSError):
        return b""  # optional: a certificate alone is a whole answer


def _accept_answer(status: bytes, payload: bytes, trust: TrustStore, endpoint: str) -> Certificate:
    if status == REFUSED:
        reason = payload.decode(errors="replace")
        raise IntroductionFailed(f"{endpoint} refused our certificate: {reason}")
    if status != INTRODUCED:
        raise IntroductionFailed(f"{endpoint} sent a malformed introduction answer")
    try:
        return trust.add_certificate(payload)
    except PeerRefused as exc:
        raise IntroductionFailed(f"{endpoint} is not a member: {exc.reason}") from None
