"""Certificate introductions (`agent/introduction.py`) over real TCP sockets on loopback,
and the bookkeeping of their limits (`agent/introduction_limits.py`).

The server and `introduce()` run in the test's loop; a stranger's connections
come from their own loopback addresses (127.0.0.x), as other hosts would.
The attacks on a running agent are in test_hostile_intro.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from novacron.agent.introduction import (
    PROTOCOL,
    IntroductionFailed,
    IntroductionServer,
    introduce,
    request_bytes,
)
from novacron.agent.introduction_limits import (
    IntroductionLimits,
    RefusalTally,
    RememberedVerdicts,
    SourceGate,
    TokenBucket,
    Verdict,
)
from novacron.agent.security import Refusal, TrustStore
from novacron.protocol.certificates import Certificate, issue_certificate
from novacron.protocol.keys import Ed25519PrivateKey, NodeKey
from novacron.simulations.stranger import forged_certificates

NOW = time.time()


def _issue(ca: Ed25519PrivateKey, node_id: str, not_after: float = NOW + 3600) -> Certificate:
    key = NodeKey.generate()
    return issue_certificate(
        ca,
        node_id,
        key.signing_public,
        key.curve_public,
        not_before=NOW - 3600,
        not_after=not_after,
        serial=7,
    )


@dataclass
class Cluster:
    ca: Ed25519PrivateKey
    n1: Certificate  # the server's
    n2: Certificate  # a member introducing itself
    server: IntroductionServer
    trust: TrustStore  # the server's trust store
    port: int  # the gossip port: introductions listen on port + 1

    def client_trust(self) -> TrustStore:
        return TrustStore(self.ca.public_key())

    async def introduce(self, cert: bytes) -> Certificate:
        introduced = await introduce(cert, self.client_trust(), "127.0.0.1", self.port)
        return introduced.certificate


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1]) - 1


async def _serving(limits: IntroductionLimits | None = None) -> Cluster:
    ca = Ed25519PrivateKey.generate()
    n1, n2 = _issue(ca, "n1"), _issue(ca, "n2")
    trust = TrustStore(ca.public_key())
    for _ in range(20):
        port = _free_port()
        server = IntroductionServer(n1.encoded, trust, "127.0.0.1", port + 1, limits=limits)
        with contextlib.suppress(OSError):
            await server.start()
            return Cluster(ca, n1, n2, server, trust, port)
    raise RuntimeError("no free port")


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    found = await _serving()
    yield found
    await found.server.close()


async def _exchange(
    port: int, data: bytes, source: str = "127.0.0.1", half_close: bool = False
) -> bytes:
    """Send raw bytes from `source` (then stop sending, with `half_close`) and read the
    answer until the server closes; b"" if it reset the connection."""
    conn = socket.socket()
    conn.bind((source, 0))
    conn.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(conn, ("127.0.0.1", port + 1))
        await loop.sock_sendall(conn, data)
        if half_close:
            conn.shutdown(socket.SHUT_WR)
        answer = b""
        async with asyncio.timeout(10):
            while chunk := await loop.sock_recv(conn, 4096):
                answer += chunk
        return answer
    except ConnectionError:  # reset, or closed while we were still sending
        return b""
    finally:
        conn.close()


def _refusal_text(answer: bytes) -> str:
    assert answer[:1] == b"-", answer[:40]
    size = int.from_bytes(answer[1:3], "big")
    assert len(answer) == 3 + size
    return answer[3:].decode()


# --- the exchange ------------------------------------------------------------------------


async def test_a_member_is_introduced_and_each_side_learns_the_other(cluster: Cluster) -> None:
    met = await cluster.introduce(cluster.n2.encoded)
    assert met.node_id == "n1" and met.encoded == cluster.n1.encoded
    known = cluster.trust.certificate_for("n2")
    assert known is not None and known.encoded == cluster.n2.encoded
    again = await cluster.introduce(cluster.n2.encoded)  # from memory, no second check
    assert again.node_id == "n1"
    assert cluster.server.stats().introduced == 2 and cluster.server.checked == 1


async def test_a_host_the_resolver_refuses_is_an_introduction_that_failed(
    cluster: Cluster,
) -> None:
    """asyncio raises UnicodeError, not OSError, for such a host (an address read from a
    file or told by a peer): it must fail as any unreachable address does, not escape."""
    for host in ("a..b", "x" * 64 + ".example"):
        with pytest.raises(IntroductionFailed, match="cannot reach"):
            await introduce(cluster.n2.encoded, cluster.client_trust(), host, cluster.port)


async def test_refusals_name_their_cause(cluster: Cluster) -> None:
    other_ca = Ed25519PrivateKey.generate()
    cases = [
        (_issue(other_ca, "n3").encoded, "certificate signed by another CA"),
        (_issue(cluster.ca, "n4", not_after=NOW - 60).encoded, "certificate expired"),
        (b"\x93not a certificate", "malformed certificate"),
        (next(forged_certificates(cluster.n2.encoded)), "signature does not verify"),
    ]
    for index, (cert, cause) in enumerate(cases):
        source = f"127.0.1.{index + 1}"  # each its own address: a refusal bars an address
        answer = _refusal_text(await _exchange(cluster.port, request_bytes(cert), source))
        assert cause in answer
    with pytest.raises(IntroductionFailed, match="refused our certificate: certificate signed"):
        await cluster.introduce(cases[0][0])  # the client's view of the first


async def test_a_forged_certificate_sent_again_is_answered_from_memory(cluster: Cluster) -> None:
    forged = next(forged_certificates(cluster.n2.encoded))
    answers = [await _exchange(cluster.port, request_bytes(forged)) for _ in range(5)]
    assert all("signature does not verify" in _refusal_text(a) for a in answers)
    assert cluster.server.checked == 1  # the signature was checked once, not five times
    assert cluster.trust.refusals[Refusal.BAD_SIGNATURE] == 1


async def test_an_address_that_sent_a_forged_certificate_gets_no_new_one_checked(
    cluster: Cluster,
) -> None:
    forgeries = forged_certificates(cluster.n2.encoded)
    first = await _exchange(cluster.port, request_bytes(next(forgeries)), "127.0.2.1")
    assert "signature does not verify" in _refusal_text(first)
    second = await _exchange(cluster.port, request_bytes(next(forgeries)), "127.0.2.1")
    assert second == b""  # reset unanswered: over a limit, an answer is not worth its cost
    assert cluster.server.checked == 1
    assert cluster.server.stats().refused == {"bad-signature": 1, "busy": 1}
    # Another address is not held responsible.
    honest = await _exchange(cluster.port, request_bytes(cluster.n2.encoded), "127.0.2.2")
    assert honest[:1] == b"+"


async def test_an_address_over_its_rate_is_refused_before_anything_is_read() -> None:
    cluster = await _serving(IntroductionLimits(source_rate=0.01, source_burst=3))
    try:
        for _ in range(3):
            assert (await cluster.introduce(cluster.n2.encoded)).node_id == "n1"
        with pytest.raises(IntroductionFailed, match="closed the connection without answering"):
            await cluster.introduce(cluster.n2.encoded)
        assert cluster.server.stats().refused == {"busy": 1}
        # Another address has its own rate.
        other = await _exchange(cluster.port, request_bytes(cluster.n2.encoded), "127.0.3.1")
        assert other[:1] == b"+"
    finally:
        await cluster.server.close()


async def test_anything_else_is_turned_away_at_its_first_wrong_byte(cluster: Cluster) -> None:
    started = time.monotonic()
    answer = await _exchange(cluster.port, b"GET / HTTP/1.1\r\n\r\n")
    assert "not a novacron introduction" in _refusal_text(answer)
    assert time.monotonic() - started < cluster.server.limits.request_timeout  # not waited out
    oversize = PROTOCOL + (5000).to_bytes(2, "big")
    assert "over the limit of 4096" in _refusal_text(await _exchange(cluster.port, oversize))


async def test_a_request_that_never_completes_is_dropped_at_its_deadline() -> None:
    cluster = await _serving(IntroductionLimits(request_timeout=0.3))
    try:
        half = request_bytes(cluster.n2.encoded)[:40]
        reader, writer = await asyncio.open_connection("127.0.0.1", cluster.port + 1)
        writer.write(half)
        answer = await asyncio.wait_for(reader.read(), timeout=5)
        assert "did not arrive within 0.3 s" in _refusal_text(answer)
        writer.close()
        assert cluster.server.stats().open == 0
    finally:
        await cluster.server.close()


async def test_when_every_slot_is_taken_the_oldest_arriving_request_makes_room() -> None:
    cluster = await _serving(IntroductionLimits(max_connections=3, request_timeout=30))
    try:
        stalled = []
        for host in range(1, 4):
            where = ("127.0.0.1", cluster.port + 1)
            stalled.append(socket.create_connection(where, 5, (f"127.0.4.{host}", 0)))
        while cluster.server.stats().open < 3:
            await asyncio.sleep(0.01)
        met = await cluster.introduce(cluster.n2.encoded)  # a fourth, honest and quick
        assert met.node_id == "n1"
        stalled[0].settimeout(5)
        assert await asyncio.to_thread(stalled[0].recv, 4096) != b"-"  # closed to make room
        for conn in stalled:
            conn.close()
    finally:
        await cluster.server.close()


async def test_refusals_are_logged_as_a_summary_with_counts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster = await _serving(IntroductionLimits(log_interval=0.5))
    try:
        with caplog.at_level(logging.WARNING, logger="novacron.agent.introduction"):
            for host in range(1, 31):
                await _exchange(cluster.port, b"nonsense", f"127.0.5.{host}")
            await asyncio.sleep(1.0)
        lines = [r for r in caplog.records if r.getMessage() == "introductions refused"]
        assert len(lines) == 2  # the first at once, the other 29 in one summary
        counts = [r.fields["count"] for r in lines]  # type: ignore[attr-defined]
        assert counts == [1, 29]
        assert "not-an-introduction:29" in lines[1].fields["kinds"]  # type: ignore[attr-defined]
        assert lines[1].fields["from"] == "127.0.5.30"  # type: ignore[attr-defined]
    finally:
        await cluster.server.close()


async def test_a_port_in_use_is_named() -> None:
    cluster = await _serving()
    try:
        ca = Ed25519PrivateKey.generate()
        other = IntroductionServer(b"", TrustStore(ca.public_key()), "127.0.0.1", cluster.port + 1)
        with pytest.raises(OSError, match=rf"127\.0\.0\.1:{cluster.port + 1}.*in use"):
            await other.start()
    finally:
        await cluster.server.close()


# --- the client against a hostile server -------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"", "closed the connection without answering"),
        (b"?" + (3).to_bytes(2, "big") + b"abc", "malformed introduction answer"),
        (b"+" + (60000).to_bytes(2, "big"), "malformed introduction answer"),
        (b"+" + (3).to_bytes(2, "big") + b"abc", "is not a member: malformed certificate"),
        (b"-" + (4).to_bytes(2, "big") + b"nope", "refused our certificate: nope"),
        (None, "no answer from"),
    ],
)
async def test_the_client_names_what_a_bad_server_did(answer: bytes | None, error: str) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if answer is None:
            await asyncio.sleep(5)
        else:
            writer.write(answer)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    ca = Ed25519PrivateKey.generate()
    try:
        with pytest.raises(IntroductionFailed, match=re.escape(error)):
            cert = _issue(ca, "n2").encoded
            await introduce(cert, TrustStore(ca.public_key()), "127.0.0.1", port - 1, timeout=0.5)
    finally:
        server.close()


# --- fuzz: whatever a stranger sends -------------------------------------------------------


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    data=st.one_of(
        st.binary(max_size=600),
        st.binary(max_size=400).map(lambda tail: PROTOCOL + tail),
        st.binary(max_size=400).map(lambda body: request_bytes(body)),
    )
)
def test_whatever_a_stranger_sends_gets_a_refusal_or_a_close(data: bytes) -> None:
    async def exchange() -> None:
        cluster = await _serving()
        try:
            # The stranger then stops sending: a request cut short is refused at once
            # (the deadline of one that stalls has its own test).
            answer = await _exchange(cluster.port, data, "127.0.6.1", half_close=True)
            if answer:
                _refusal_text(answer)
            met = await cluster.introduce(cluster.n2.encoded)  # and it keeps serving
            assert met.node_id == "n1"
        finally:
            await cluster.server.close()

    asyncio.run(exchange())


# --- the bookkeeping ---------------------------------------------------------------------


def test_a_token_bucket_allows_its_burst_then_its_rate() -> None:
    bucket = TokenBucket(rate=2, burst=3, now=0)
    assert [bucket.take(0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.4) is False  # 0.8 of a token
    assert bucket.take(0.5) is True
    assert [bucket.take(100) for _ in range(4)] == [True, True, True, False]  # never over burst


def test_the_source_gate_caps_each_address_and_bars_forgers() -> None:
    gate = SourceGate(IntroductionLimits(max_connections=5, max_per_source=2, barred_for=60))
    assert gate.admit("a", 0) is None and gate.admit("a", 0) is None
    assert "at once" in (gate.admit("a", 0) or "")
    for name in "bcd":
        assert gate.admit(name, 0) is None
    assert gate.open == 5 and not gate.over_capacity()
    assert gate.admit("e", 0) is None and gate.over_capacity()
    gate.release("e")
    gate.release("a")
    assert gate.admit("a", 0) is None
    assert gate.may_check("a", 0)
    gate.bar("a", 10)
    assert not gate.may_check("a", 69) and gate.may_check("a", 70) and gate.may_check("b", 10)


def test_remembered_verdicts_expire_and_forget_the_least_recent() -> None:
    verdicts = RememberedVerdicts(size=2, ttl=10)
    verdicts.remember(b"x", Verdict(kind="bad-signature", reason="forged"), 0)
    verdicts.remember(b"y", Verdict(node_id="n2"), 0)
    assert verdicts.get(b"x", 5) == Verdict(kind="bad-signature", reason="forged")
    verdicts.remember(b"z", Verdict(node_id="n3"), 5)  # y is now the least recent
    assert verdicts.get(b"y", 5) is None and verdicts.get(b"x", 9.9) is not None
    assert verdicts.get(b"x", 10) is None and len(verdicts) == 1


def test_the_refusal_tally_summarises_at_most_once_per_interval() -> None:
    tally = RefusalTally(interval=10)
    first = tally.note("busy", "too many", "a", 0)
    assert first is not None and first.count == 1
    assert all(tally.note("malformed", "junk", "b", t) is None for t in (1, 2, 3))
    assert tally.pending and tally.next_line == 10
    assert tally.due(9.9) is None
    later = tally.due(10)
    assert later is not None and later.count == 3 and later.kinds == {"malformed": 3}
    assert (later.last_reason, later.last_source) == ("junk", "b")
    assert tally.total == {"busy": 1, "malformed": 3} and not tally.pending
