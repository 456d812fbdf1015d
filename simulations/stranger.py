"""A stranger at an agent's introduction port: the attacks, over real sockets.

Someone who can reach the port (gossip port + 1) and holds no certificate of
the cluster: it floods forged certificates as fast as one process can, holds
idle connections, sends half requests and announces huge ones. Each
connection comes from the next of the stranger's `addresses` (a machine on a
LAN may take many), which must be local to where it runs. The hostile tests
(on loopback) and `benchmarks/intro_flood.py` (in the lab) use it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import resource
import selectors
import socket
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from novacron.agent.introduction import PORT_OFFSET, PROTOCOL, request_bytes
from novacron.protocol import codec
from novacron.protocol.sealed import Sealed

RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close with a reset, no TIME_WAIT
GIVE_UP = 2.0  # seconds a flood connection may take to be answered before it is dropped


def forged_certificates(genuine: bytes) -> Iterator[bytes]:
    """Certificates that name the cluster's CA and are well formed, each with its own
    random signature: none is in any cache, and each needs the Ed25519 check to fail."""
    sealed = codec.unpack_struct(Sealed, genuine)
    while True:
        yield codec.pack_struct(Sealed(body=sealed.body, signature=os.urandom(64)))


@dataclass
class FloodCount:
    """What a flood did, as the stranger saw it."""

    connections: int = 0  # opened
    sent: int = 0  # introductions sent whole
    answered: int = 0  # connections the agent answered or closed
    dropped: int = 0  # given up on (no answer within GIVE_UP, or an error)


def room_for_descriptors(wanted: int) -> None:
    """Raise this process's open-file limit towards `wanted`, as far as the hard limit lets
    an ordinary user (a login's soft limit is often 1,024: a stranger holding thousands
    of connections would stop at it and test nothing)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < ceiling:
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))


class Stranger:
    """Attacks the introduction port of the agent at `host`:`gossip_port` + 1."""

    def __init__(self, host: str, gossip_port: int, addresses: Sequence[str]) -> None:
        self.target = (host, gossip_port + PORT_OFFSET)
        self.addresses = list(addresses)
        self._next_address = itertools.cycle(self.addresses)

    def _socket(self) -> socket.socket:
        conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        conn.bind((next(self._next_address), 0))
        return conn

    def _connect(self) -> socket.socket:
        conn = self._socket()
        conn.settimeout(2)
        conn.connect(self.target)
        return conn

    @contextlib.contextmanager
    def idle(self, count: int) -> Iterator[list[socket.socket]]:
        """`count` connections that never send a byte (fewer if connecting stalls)."""
        room_for_descriptors(count + 256)
        held: list[socket.socket] = []
        try:
            for _ in range(count):
                try:
                    held.append(self._connect())
                except OSError:
                    break
            yield held
        finally:
            for conn in held:
                conn.close()

    @contextlib.contextmanager
    def half_requests(self, count: int) -> Iterator[list[socket.socket]]:
        """`count` connections that each send the first half of a request, then stall."""
        whole = request_bytes(b"\x00" * 300)
        with self.idle(count) as held:
            for conn in held:
                with contextlib.suppress(OSError):
                    conn.sendall(whole[: len(whole) // 2])
            yield held

    def huge_frame(self, limit: int, stall: float) -> int:
        """Announce a certificate far over the limit and stream it; return how much went
        out before the agent hung up (or `limit`, or what went before a send stalled)."""
        conn = self._connect()
        conn.settimeout(stall)
        junk = b"\xaa" * (1 << 20)
        sent = 0
        try:
            conn.sendall(PROTOCOL + (0xFFFF).to_bytes(2, "big"))
            while sent < limit:
                sent += conn.send(junk)
        except (ConnectionResetError, BrokenPipeError, TimeoutError):
            pass
        finally:
            conn.close()
        return sent

    def flood(
        self, certificates: Iterator[bytes], seconds: float, in_flight: int = 128
    ) -> FloodCount:
        """Introduce `certificates` as fast as this process can for `seconds`: `in_flight`
        connections at once, each closed with a reset once the agent answers or hangs up."""
        count = FloodCount()
        selector = selectors.DefaultSelector()
        opened: dict[socket.socket, float] = {}  # connection -> when

        def drop(conn: socket.socket) -> None:
            selector.unregister(conn)
            del opened[conn]
            conn.close()

        until = time.monotonic() + seconds
        while (now := time.monotonic()) < until:
            while len(opened) < in_flight:
                conn = self._socket()
                conn.setblocking(False)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
                with contextlib.suppress(BlockingIOError):
                    conn.connect(self.target)
                selector.register(conn, selectors.EVENT_WRITE, next(certificates))
                opened[conn] = now
                count.connections += 1
            for key, _ in selector.select(timeout=0.05):
                conn = key.fileobj  # type: ignore[assignment]
                if key.data is None:  # an answer, or the end: either way, the next one
                    count.answered += 1
                    drop(conn)
                    continue
                try:
                    conn.send(request_bytes(key.data))
                    count.sent += 1
                    selector.modify(conn, selectors.EVENT_READ, None)
                except OSError:
                    count.dropped += 1
                    drop(conn)
            for conn in [c for c, t in opened.items() if now - t > GIVE_UP]:
                count.dropped += 1
                drop(conn)
        for conn in list(opened):
            drop(conn)
        selector.close()
        return count
