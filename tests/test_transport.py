"""The ZeroMQ transport on loopback: CurveZMQ, ZAP against the trust store, sender binding.

Real sockets on 127.0.0.1 (ports chosen by the OS), real certificates, no
mocks. Every wait has a timeout, so a broken handshake fails a test instead
of hanging it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import pytest
import zmq
import zmq.asyncio

from novacron.agent.security import PeerRefused, Refusal, TrustStore
from novacron.agent.transport import AddressInUse, Transport, raw_curve_key
from novacron.protocol import codec, z85
from novacron.protocol.certificates import Certificate, issue_certificate
from novacron.protocol.codec import Limits
from novacron.protocol.keys import Ed25519PrivateKey, NodeKey, key_id
from novacron.protocol.messages import Ack, Alive, Ping
from novacron.protocol.revocation import sign_revocation_list

T = TypeVar("T")
HOST = "127.0.0.1"
TIMEOUT = 5.0  # generous upper bound for anything on loopback
QUIET = 0.5  # how long "never arrives" is watched


@dataclass(frozen=True)
class Member:
    """A node's identity: what the operator's CA handed it."""

    node_id: str
    key: NodeKey
    cert: Certificate


_serials = iter(range(1, 1_000_000))


def enrol(ca: Ed25519PrivateKey, node_id: str) -> Member:
    key = NodeKey.generate()
    now = time.time()
    cert = issue_certificate(
        ca,
        node_id,
        key.signing_public,
        key.curve_public,
        not_before=now - 60,
        not_after=now + 3600,
        serial=next(_serials),
    )
    return Member(node_id, key, cert)


def trust_of(ca: Ed25519PrivateKey, *members: Member) -> TrustStore:
    trust = TrustStore(ca.public_key())
    for member in members:
        trust.add_certificate(member.cert.encoded)
    return trust


async def within(awaitable: Awaitable[T], timeout: float = TIMEOUT) -> T:
    return await asyncio.wait_for(awaitable, timeout)


async def eventually(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Wait for a condition caused by real network I/O (a handshake) to hold."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def never_arrives(transport: Transport) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(transport.recv(), QUIET)


@pytest.fixture
def ca() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def alpha(ca: Ed25519PrivateKey) -> Member:
    return enrol(ca, "alpha")


@pytest.fixture
def beta(ca: Ed25519PrivateKey) -> Member:
    return enrol(ca, "beta")


class Started:
    """Starts transports for a test and closes them all afterwards."""

    def __init__(self) -> None:
        self.transports: list[Transport] = []

    async def __call__(self, member: Member, trust: TrustStore, port: int = 0) -> Transport:
        transport = Transport(member.node_id, member.key, trust, HOST, port)
        self.transports.append(transport)
        await within(transport.start())
        return transport


@pytest.fixture
async def start() -> AsyncIterator[Started]:
    started = Started()
    yield started
    for transport in started.transports:
        await within(transport.close())


async def raw_sender(
    member: Member, to: Transport, server: Member
) -> tuple[zmq.asyncio.Context, zmq.asyncio.Socket]:
    """A bare DEALER holding `member`'s keys: lets a test put any bytes on the wire."""
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.curve_secretkey = member.key.curve_secret_z85().encode()
    sock.curve_publickey = member.key.curve_public_z85().encode()
    sock.curve_serverkey = server.key.curve_public_z85().encode()
    sock.connect(f"tcp://{to.address}")
    return ctx, sock


# --- the happy path ----------------------------------------------------------------


async def test_ping_and_ack_cross_both_ways(
    start: Started, ca: Ed25519PrivateKey, alpha: Member, beta: Member
) -> None:
    a = await start(alpha, trust_of(ca, alpha, beta))
    b = await start(beta, trust_of(ca, alpha, beta))

    assert await within(a.send("beta", b.address, Ping(seq=1, target="beta")))
    assert await within(b.recv()) == ("alpha", Ping(seq=1, target="beta"))
    assert await within(b.send("alpha", a.address, Ack(seq=1)))
    assert await within(a.recv()) == ("beta", Ack(seq=1))

    assert (a.stats.sent, a.stats.received, b.stats.sent, b.stats.received) == (1, 1, 1, 1)
    assert a.trust.refusals.total() == 0 and b.trust.refusals.total() == 0


async def test_a_peer_back_from_failure_is_reached_at_once_not_after_the_back_off(
    start: Started, ca: Ed25519PrivateKey, alpha: Member, beta: Member
) -> None:
    """While a peer is away, libzmq waits longer and longer between connects; told the
    peer is back (`reconnect`), the transport connects now. Here the wait is made a
    minute, so a frame sent over the old connection could not arrive in time."""
    trust = trust_of(ca, alpha, beta)
    a = Transport("alpha", alpha.key, trust, HOST, 0, reconnect_ms=(60_000, 60_000))
    start.transports.append(a)
    await within(a.start())
    b = await start(beta, trust_of(ca, alpha, beta))
    port = b.port
    assert await within(a.send("beta", b.address, Ping(seq=1, target="beta")))
    assert await within(b.recv()) == ("alpha", Ping(seq=1, target="beta"))

    await within(b.close())  # beta's host dies; alpha's connection waits a minute to retry
    await asyncio.sleep(QUIET)
    b = await start(beta, trust_of(ca, alpha, beta), port)  # back, at the same address
    a.reconnect("beta")
    assert await within(a.send("beta", b.address, Ping(seq=2, target="beta")))
    assert await within(b.recv()) == ("alpha", Ping(seq=2, target="beta"))


async def crosses(a: Transport, b: Transport, seq: int) -> None:
    """A Ping from alpha (`a`) reaches beta (`b`)."""
    assert await within(a.send("beta", b.address, Ping(seq=seq, target="beta")))
    assert await within(b.recv()) == ("alpha", Ping(seq=seq, target="beta"))


@pytest.fixture
async def pair(
    start: Started, ca: Ed25519PrivateKey, alpha: Member, beta: Member
) -> tuple[Transport, Transport]:
    """alpha's and beta's transports, started, trusting each other."""
    return await start(alpha, trust_of(ca, alpha, beta)), await start(
        beta, trust_of(ca, alpha, beta)
    )


async def test_each_end_of_a_rebuilt_connection_says_so_in_the_log(
    pair: tuple[Transport, Transport], caplog: pytest.LogCaptureFixture
) -> None:
    """The history of a link an operator reads when a peer stops answering: the sender
    connects anew, the receiver sees the peer's new connection; first contacts are quiet."""
    a, b = pair
    with caplog.at_level(logging.INFO, logger="novacron.agent.transport"):
        await crosses(a, b, 1)
        assert caplog.messages == []
        a.reconnect("beta")
        await crosses(a, b, 2)
    assert caplog.messages == [
        "connecting anew to beta: it came back",
        "alpha connected to us anew",
    ]


async def test_a_peer_that_answers_others_but_not_us_gets_a_new_connection_now_and_then(
    pair: tuple[Transport, Transport], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = pair
    await crosses(a, b, 1)
    with caplog.at_level(logging.INFO, logger="novacron.agent.transport"):
        a.unanswered("beta")
        await crosses(a, b, 2)
        a.unanswered("beta")  # said again at once: the new connection is kept a while
        await crosses(a, b, 3)
    rebuilt = "connecting anew to beta: it answers others, not us"
    assert caplog.messages == [rebuilt, "alpha connected to us anew"]


# --- refusals ----------------------------------------------------------------------


async def test_node_certified_by_another_ca_is_refused_and_the_reason_says_so(
    start: Started, ca: Ed25519PrivateKey, alpha: Member, beta: Member
) -> None:
    rogue_ca = Ed25519PrivateKey.generate()
    mallory = enrol(rogue_ca, "mallory")
    b_trust = trust_of(ca, alpha, beta)
    with pytest.raises(PeerRefused) as refused:
        b_trust.add_certificate(mallory.cert.encoded)
    assert refused.value.kind is Refusal.OTHER_CA
    b = await start(beta, b_trust)
    # Mallory knows beta's public certificate, and tries anyway.
    m = await start(mallory, trust_of(ca, beta))

    assert await within(m.send("beta", b.address, Ping(seq=7, target="beta")))
    await within(eventually(lambda: b.stats.refused_connections >= 1))
    await never_arrives(b)

    assert b.trust.refusals[Refusal.OTHER_CA] >= 2  # once when learnt, once per handshake
    assert b.trust.last_refusal is not None
    reason = b.trust.last_refusal.reason
    assert reason.startswith(f"certificate signed by another CA (key id {key_id(rogue_ca)})")
    assert "mallory" in reason

    a = await start(alpha, trust_of(ca, alpha, beta))  # members still get through
    await within(a.send("beta", b.address, Ping(seq=8, target="beta")))
    assert await within(b.recv()) == ("alpha", Ping(seq=8, target="beta"))


async def test_key_without_any_certificate_is_refused_as_unknown(
    start: Started, ca: Ed25519PrivateKey, alpha: Member, beta: Member
) -> None:
    b = await start(beta, trust_of(ca, beta))  # never learnt alpha's certificate
    a = await start(alpha, trust_of(ca, beta))

    await within(a.send("beta", b.address, Ping(seq=1, target="beta")))
    await within(eventually(lambda: b.stats.refused_connections >= 1))
    await never_arrives(b)
    assert b.trust.refusals[Refusal.UNKNOWN_KEY] >= 1
    assert alpha.key.curve_public_z85() in b.trust.last_refusal.reason  # type: ignore[union-attr]


async def test_revoked_certificate_is_refused_at_the_handshake(
    start: Started, ca: Ed25519PrivateKey, alpha: Member, beta: Member
) -> None:
    b_trust = trust_of(ca, alpha, beta)
    assert b_trust.update_revocations(
        sign_revocation_list(ca, [alpha.cert.serial], issued_at=time.time())
    )
    b = await start(beta, b_trust)
    a = await start(alpha, trust_of(ca, alpha, beta))

    await within(a.send("beta", b.address, Ping(seq=1, target="beta")))
    await within(eventually(lambda: b.stats.refused_connections >= 1))
    await never_arrives(b)
    assert b.trust.refusals[Refusal.REVOKED] >= 1
    assert "revoked" in b.trust.last_refusal.reason  # type: ignore[union-attr]


async def test_revocation_also_cuts_off_a_peer_already_connected(
    start: Started, ca: Ed25519PrivateKey, alpha: Member, beta: Member
) -> None:
    b = await start(beta, trust_of(ca, alpha, beta))
    a = await start(alpha, trust_of(ca, alpha, beta))
    await within(a.send("beta", b.address, Ping(seq=1, target="beta")))
    assert await within(b.recv()) == ("alpha", Ping(seq=1, target="beta"))

    b.trust.update_revocations(sign_revocation_list(ca, [alpha.cert.serial], time.time()))
    await within(a.send("beta", b.address, Ping(seq=2, target="beta")))
    await never_arrives(b)
    assert b.stats.unauthorized == 1


# --- hostile frames from certified peers ---------------------------------------------


async def test_garbage_from_an_authenticated_peer_is_counted_not_fatal(
    start: Started, ca: Ed25519PrivateKey, alpha: Member, beta: Member
) -> None:
    b = await start(beta, trust_of(ca, alpha, beta))
    ctx, raw = await raw_sender(alpha, b, beta)
    try:
        for junk in (b"\xc1 not msgpack", b"", codec.encode(Ack(seq=1), "alpha") + b"x"):
            await within(raw.send(junk))
        await within(raw.send_multipart([b"two", b"frames"]))
        # Same connection, so it arrives after the junk: recv() must have skipped all of it.
        await within(raw.send(codec.encode(Ack(seq=2), "alpha")))
        assert await within(b.recv()) == ("alpha", Ack(seq=2))
    finally:
        ctx.destroy(linger=0)
    assert b.stats.malformed == 4
    assert b.stats.received == 1


async def test_envelope_claiming_another_sender_is_refused(
    start: Started, ca: Ed25519PrivateKey, alpha: Member, beta: Member
) -> None:
    gamma = enrol(ca, "gamma")
    b = await start(beta, trust_of(ca, alpha, beta, gamma))
    ctx, raw = await raw_sender(alpha, b, beta)
    try:
        await within(raw.send(codec.encode(Ping(seq=1, target="beta"), sender="gamma")))
        await within(raw.send(codec.encode(Ping(seq=2, target="beta"), sender="alpha")))
        assert await within(b.recv()) == ("alpha", Ping(seq=2, target="beta"))
    finally:
        ctx.destroy(linger=0)
    assert b.stats.spoofed == 1


# --- operational errors --------------------------------------------------------------


async def test_port_in_use_is_a_clear_error_naming_the_address(
    start: Started, ca: Ed25519PrivateKey, alpha: Member, beta: Member
) -> None:
    b = await start(beta, trust_of(ca, beta))
    with pytest.raises(AddressInUse, match=rf"{HOST}:{b.port}: address already in use"):
        await start(alpha, trust_of(ca, alpha), port=b.port)


async def test_sending_to_a_peer_without_certificate_is_dropped(
    start: Started, ca: Ed25519PrivateKey, alpha: Member
) -> None:
    a = await start(alpha, trust_of(ca, alpha))
    assert not await within(a.send("nobody", f"{HOST}:9", Ping(seq=1, target="nobody")))
    assert a.stats.dropped_no_certificate == 1


async def test_frame_over_the_limit_is_not_sent(
    start: Started, ca: Ed25519PrivateKey, alpha: Member, beta: Member
) -> None:
    b = await start(beta, trust_of(ca, alpha, beta))
    a = Transport("alpha", alpha.key, trust_of(ca, alpha, beta), HOST, 0, limits=Limits(256))
    start.transports.append(a)
    await within(a.start())
    big = Alive(node_id="alpha", incarnation=1, certificate=b"x" * 300)
    assert not await within(a.send("beta", b.address, big))
    assert a.stats.dropped_too_large == 1 and a.stats.sent == 0


def test_zap_keys_are_accepted_raw_or_z85(alpha: Member) -> None:
    raw = alpha.key.curve_public
    assert raw_curve_key(raw) == raw
    assert raw_curve_key(z85.encode(raw).encode()) == raw
    assert raw_curve_key(z85.encode(raw)) == raw


# --- the trust store on its own (explicit `now`, no sockets) ---------------------------


def test_trust_store_refuses_a_key_once_its_certificate_expires(
    ca: Ed25519PrivateKey, alpha: Member
) -> None:
    trust = trust_of(ca, alpha)
    assert trust.admit(alpha.key.curve_public, now=alpha.cert.not_after - 1) == alpha.cert
    verdict = trust.judge(alpha.key.curve_public, now=alpha.cert.not_after)
    assert verdict.refusal is Refusal.EXPIRED and "expired" in verdict.reason
    assert trust.certificate_for("alpha", now=alpha.cert.not_after) is None
    assert trust.refusals == {Refusal.EXPIRED: 1}


def test_trust_store_keeps_only_the_newest_revocation_list(
    ca: Ed25519PrivateKey, alpha: Member
) -> None:
    trust = trust_of(ca, alpha)
    assert trust.update_revocations(sign_revocation_list(ca, [alpha.cert.serial], 200.0))
    assert not trust.update_revocations(sign_revocation_list(ca, [], 100.0))  # older: ignored
    assert trust.admit(alpha.key.curve_public) is None
    assert trust.update_revocations(sign_revocation_list(ca, [], 300.0))  # newer: un-revokes
    assert trust.admit(alpha.key.curve_public) == alpha.cert


def test_trust_store_refuses_bytes_that_are_no_certificate(ca: Ed25519PrivateKey) -> None:
    trust = TrustStore(ca.public_key())
    with pytest.raises(PeerRefused) as refused:
        trust.add_certificate(b"\x00garbage")
    assert refused.value.kind is Refusal.MALFORMED
    assert len(trust) == 0
