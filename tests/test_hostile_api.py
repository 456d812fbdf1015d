"""A hostile (or merely broken) local client cannot exhaust the agent's API.

Over a real unix socket, against the real HTTP server (`agent/httpd.py`) and
routes (`agent/api.py`): pipelined requests whose answers are never read stop
being read too (the server holds a bounded amount, not tens of MB), and their
connection is freed once the client goes; `?wait=` values that are not a
finite, non-negative number of seconds are refused and huge ones held no
longer than the maximum; idle connections are closed to make room before a
new client is ever refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from pathlib import Path

import pytest

from novacron.agent import api, httpd
from novacron.agent.httpd import HttpServer
from tests.api_client import call, until
from tests.api_server import (
    Migrations,
    answers,
    error_of,
    exchange,
    router,
)

STATUS = b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n"


def _pipeline_without_reading(sock: str, limit: int, stall: float) -> int:
    """Send pipelined requests and never read an answer; return how many bytes went out
    before the sends stalled for `stall` seconds (or `limit`, the test's give-up point)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(sock)
        conn.settimeout(stall)
        burst = STATUS * 1000
        sent = 0
        with contextlib.suppress(TimeoutError, BrokenPipeError, ConnectionResetError):
            while sent < limit:
                sent += conn.send(burst)
        return sent


async def test_pipelined_requests_never_read_are_not_buffered_without_bound(
    served: tuple[str, HttpServer, Migrations],
) -> None:
    sock, server, _ = served
    limit = 16 << 20
    sent = await asyncio.to_thread(_pipeline_without_reading, sock, limit, 2.0)
    # What went out is what the kernel's socket buffers and the server's bounded
    # read-ahead hold: well under a few MiB, however long the client keeps sending.
    assert sent < 4 << 20, f"the server took {sent >> 20} MiB of unread pipelined requests"
    # The client has gone (closed without reading): its slot is free again at once,
    # not after the write timeout.
    await until(lambda: server.connections == 0, timeout=3)
    assert await call(sock, "GET", "/v1/status") == (200, {"node_id": "n1"})


async def test_a_client_that_pipelines_behind_a_held_request_and_hangs_up_frees_its_slot(
    served: tuple[str, HttpServer, Migrations],
) -> None:
    sock, server, migrations = served
    _, writer = await asyncio.open_unix_connection(sock)
    writer.write(b"GET /v1/migrations/m1?wait=10 HTTP/1.1\r\nHost: x\r\n\r\n")
    writer.write(STATUS * 8000)  # ~300 KiB queued behind it: more than the server reads ahead
    await until(lambda: migrations.waiting == 1)
    writer.close()
    # The hang-up is noticed although the server stopped reading: the held handler
    # is cancelled and the slot freed, without waiting out the 10 s.
    await until(lambda: server.connections == 0 and migrations.waiting == 0, timeout=3)


@pytest.mark.parametrize("wait", ["nan", "NaN", "inf", "-inf", "-1", "-0.5", "1e400"])
async def test_a_wait_that_is_not_a_finite_non_negative_number_is_refused(
    served: tuple[str, HttpServer, Migrations], wait: str
) -> None:
    sock, _, migrations = served
    status, body = await asyncio.wait_for(
        call(sock, "GET", f"/v1/migrations/m1?wait={wait}"), timeout=5
    )
    assert status == 400
    assert "wait must be" in body["error"]
    assert migrations.waiting == 0


async def test_a_huge_wait_is_held_no_longer_than_the_maximum(
    served: tuple[str, HttpServer, Migrations], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, _, _ = served
    monkeypatch.setattr(api, "MAX_WAIT", 0.3)
    started = time.monotonic()
    status, body = await asyncio.wait_for(
        call(sock, "GET", "/v1/migrations/m1?wait=1e300"), timeout=5
    )
    assert (status, body["migration"]["outcome"]) == (200, "")
    assert time.monotonic() - started >= 0.3


async def test_idle_connections_are_closed_before_a_new_client_is_refused(
    served: tuple[str, HttpServer, Migrations], caplog: pytest.LogCaptureFixture
) -> None:
    sock, server, _ = served
    idle = [await asyncio.open_unix_connection(sock) for _ in range(httpd.MAX_CONNECTIONS)]
    await until(lambda: server.connections == httpd.MAX_CONNECTIONS)
    try:
        # Every slot is taken by a connection that sends nothing: a new client is
        # still served, because the longest idle one makes room.
        for _ in range(3):
            assert await call(sock, "GET", "/v1/status") == (200, {"node_id": "n1"})
        closed = 0
        for reader, _ in idle:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    if await reader.read() == b"":
                        closed += 1
        assert 1 <= closed <= 3  # only as many as were needed, the oldest ones
        assert server.connections <= httpd.MAX_CONNECTIONS
    finally:
        for _, writer in idle:
            writer.close()
    await until(lambda: server.connections == 0)
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_connection_in_the_middle_of_a_request_is_not_closed_to_make_room(
    tmp_path: Path,
) -> None:
    migrations = Migrations()
    server = HttpServer(router(migrations), max_connections=2)
    sock = str(tmp_path / "api.sock")
    await server.start_unix(sock)
    try:
        held = []
        for _ in range(2):  # both slots hold a request waiting for news: busy, not idle
            reader, writer = await asyncio.open_unix_connection(sock)
            writer.write(b"GET /v1/migrations/m1?wait=10 HTTP/1.1\r\nHost: x\r\n\r\n")
            held.append((reader, writer))
        await until(lambda: migrations.waiting == 2)
        (answer,) = answers(await asyncio.to_thread(exchange, sock, STATUS))
        assert answer[0] == 503 and "too many" in error_of(answer)
        migrations.end("completed")
        for reader, writer in held:
            (done,) = answers(await asyncio.wait_for(reader.readuntil(b"}}"), timeout=5))
            assert done[0] == 200
            writer.close()
        await until(lambda: server.connections == 0)
    finally:
        await server.close()
