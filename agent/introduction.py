"""Certificate introductions: how two nodes learn each other's Curve keys.

CurveZMQ needs the server's public key before connecting, and our ZAP
handler admits only keys bound to a certificate of this cluster's CA. Two
nodes that have never met therefore swap certificates first, on a small
plain-ZeroMQ socket next to the gossip port (gossip port + 1): the client
sends its certificate, the server verifies it against the CA and answers with
its own (or with the reason it refused). Certificates are public and signed by
the CA, so this channel needs no secrecy; nothing else is ever accepted on it,
and frames larger than a certificate are refused by libzmq.

After the first contact, certificates also travel in `Alive` messages, so a
member learns the others' keys through gossip; introductions are for
bootstrapping (mDNS peers, static seeds) and for members learnt by push-pull.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import zmq
import zmq.asyncio

from novacron.protocol.certificates import Certificate

from .security import PeerRefused, TrustStore

log = logging.getLogger(__name__)

PROTOCOL = b"novacron-intro/1"
MAX_FRAME = 4096  # a certificate is a few hundred bytes
PORT_OFFSET = 1  # introductions listen on gossip port + 1


class IntroductionFailed(Exception):
    """The peer could not be introduced: unreachable, refused us, or not certified."""


class IntroductionServer:
    """Answers introductions: verifies the caller's certificate, returns ours."""

    def __init__(self, certificate: bytes, trust: TrustStore, bind: str, port: int) -> None:
        self._certificate = certificate  # ours, as issued by the CA
        self._trust = trust  # learns every certificate that verifies
        self._endpoint = f"tcp://{bind}:{port}"
        self._ctx = zmq.asyncio.Context()  # own context: no ZAP here, NULL mechanism
        self._socket: zmq.asyncio.Socket | None = None
        self._task: asyncio.Task[None] | None = None
        self.refused = 0  # introductions we turned down

    def set_certificate(self, certificate: bytes) -> None:
        """Answer with `certificate` from now on (a renewed one, after a reload)."""
        self._certificate = certificate

    async def start(self) -> None:
        sock = self._ctx.socket(zmq.ROUTER)
        sock.maxmsgsize = MAX_FRAME
        sock.linger = 0
        try:
            sock.bind(self._endpoint)
        except zmq.ZMQError as exc:
            sock.close()
            raise OSError(f"cannot listen for introductions on {self._endpoint}: {exc}") from None
        self._socket = sock
        self._task = asyncio.create_task(self._serve(sock), name="introductions")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._socket is not None:
            self._socket.close(linger=0)
        self._ctx.term()

    async def _serve(self, sock: zmq.asyncio.Socket) -> None:
        while True:
            frames = await sock.recv_multipart()
            reply = self._answer(frames[1:])
            await sock.send_multipart([frames[0], *reply])

    def _answer(self, request: list[bytes]) -> list[bytes]:
        if len(request) != 2 or request[0] != PROTOCOL:
            self.refused += 1
            return [b"refused", b"not a novacron introduction"]
        try:
            cert = self._trust.add_certificate(request[1])
        except PeerRefused as exc:
            self.refused += 1
            log.warning("introduction refused: %s", exc.reason)
            return [b"refused", exc.reason.encode()[:1024]]
        log.debug("introduced to %s", cert.node_id)
        return [b"ok", self._certificate]


async def introduce(
    certificate: bytes, trust: TrustStore, host: str, gossip_port: int, timeout: float = 3.0
) -> Certificate:
    """Swap certificates with the node at `host`; return its verified certificate.

    Raises `IntroductionFailed` with the reason (its refusal, ours, or silence).
    """
    ctx = zmq.asyncio.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.maxmsgsize = MAX_FRAME
    sock.linger = 0
    endpoint = f"tcp://{host}:{gossip_port + PORT_OFFSET}"
    try:
        sock.connect(endpoint)
        await sock.send_multipart([PROTOCOL, certificate])
        reply = await asyncio.wait_for(sock.recv_multipart(), timeout)
    except TimeoutError:
        raise IntroductionFailed(f"no answer from {endpoint} within {timeout:g}s") from None
    except zmq.ZMQError as exc:
        raise IntroductionFailed(f"cannot reach {endpoint}: {exc}") from None
    finally:
        sock.close(linger=0)
    return _accept_reply(reply, trust, endpoint)


def _accept_reply(reply: list[bytes], trust: TrustStore, endpoint: str) -> Certificate:
    if len(reply) != 2:
        raise IntroductionFailed(f"{endpoint} sent a malformed introduction reply")
    status, payload = reply
    if status == b"refused":
        reason = payload.decode(errors="replace")
        raise IntroductionFailed(f"{endpoint} refused our certificate: {reason}")
    if status != b"ok":
        raise IntroductionFailed(f"{endpoint} sent a malformed introduction reply")
    try:
        return trust.add_certificate(payload)
    except PeerRefused as exc:
        raise IntroductionFailed(f"{endpoint} is not a member: {exc.reason}") from None
