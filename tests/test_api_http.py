"""The local API's HTTP plumbing (`agent/httpd.py`) over a real unix socket.

Routing, the error answers (400, 404, 405, 408, 413, 431, 500; 503 is in
test_hostile_api.py, with the other connection limits), keep-alive
and `Connection: close`, held requests, clients that hang up or stall, and a
fuzz test: whatever bytes arrive, the answer is well-formed HTTP or a clean
close, and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from novacron.agent import client, httpd
from novacron.agent.api import HTTP_STATUS, ApiServer
from novacron.agent.api_requests import MigrateRequest
from novacron.agent.core.migration.policy import PolicyOverrides
from novacron.agent.core.refusals import RefusalKind
from novacron.agent.httpd import HttpServer
from tests.api_client import UnixHTTPConnection, call, request, until
from tests.api_server import (
    Migrations,
    View,
    answers,
    error_of,
    exchange,
    router,
)


def vm(name: str, **more: Any) -> dict[str, Any]:
    """A well-formed create request for VM `name`."""
    return {"name": name, "vcpus": 1, "memory_mib": 64, "kernel": "/boot/vmlinuz", **more}


# --- routing and answers --------------------------------------------------------------


async def test_routes_take_path_parameters_and_query_strings(
    served: tuple[str, HttpServer, Migrations],
) -> None:
    sock, _, _ = served
    assert await call(sock, "GET", "/v1/status") == (200, {"node_id": "n1"})
    assert await call(sock, "GET", "/v1/hosts/self") == (200, {"id": "n1"})
    assert await call(sock, "GET", "/v1/hosts/n1") == (200, {"id": "n1"})
    assert await call(sock, "GET", "/v1/hosts/n9") == (
        404,
        {"error": "no host 'n9' in this agent's view of the mesh"},
    )
    assert await call(sock, "POST", "/v1/vms/my%20vm/start") == (
        200,
        {"name": "my vm", "started": True, "host": "n1"},
    )
    assert await call(sock, "DELETE", "/v1/vms/a?force=1&force=0") == (
        200,
        {"name": "a", "deleted": True, "removed": ["forced"]},
    )
    deleted = {"name": "a", "deleted": True, "removed": []}
    assert await call(sock, "DELETE", "/v1/vms/a") == (200, deleted)
    assert await call(sock, "POST", "/v1/vms/a/stop", json={"timeout": 3}) == (
        200,
        {"name": "a", "stopped": "within 3 s", "host": "n1"},
    )
    stopped = {"name": "a", "stopped": "within 30 s", "host": "n1"}
    assert await call(sock, "POST", "/v1/vms/a/stop") == (200, stopped)
    assert await call(sock, "POST", "/v1/vms", json=vm("a", start=True)) == (
        201,
        {"name": "a", "uuid": "64 MiB", "started": True, "host": "n1"},
    )


async def test_a_bad_body_is_a_400_that_reaches_no_control(
    served: tuple[str, HttpServer, Migrations],
) -> None:
    sock, _, migrations = served
    assert await call(sock, "POST", "/v1/vms", json={"name": "fail"}) == (
        400,
        {"error": "missing field(s): vcpus, memory_mib"},
    )
    assert await call(sock, "POST", "/v1/vms/a/stop", json={"timeout": -1}) == (
        400,
        {"error": "timeout must be a number of seconds >= 0, got -1"},
    )
    assert await call(sock, "POST", "/v1/vms/a/migrate", json={"to": "h2", "auto": True}) == (
        400,
        {"error": "give a target host ('to') or 'auto', not both"},
    )
    assert await call(sock, "POST", "/v1/vms/a/recover", json={}) == (
        400,
        {"error": "say where the VM is to run ('on': a host id)"},
    )
    assert migrations.asked == []
    asked = {"auto": True, "bandwidth_mib_s": 5}
    assert await call(sock, "POST", "/v1/vms/a/migrate", json=asked) == (
        404,
        {"error": "unknown VM a"},
    )
    assert migrations.asked == [("a", MigrateRequest(None, PolicyOverrides(bandwidth_mib_s=5)))]
    assert await call(sock, "POST", "/v1/vms/a/recover", json={"on": "h1"}) == (
        200,
        {"vm": "a", "host": "h1"},
    )


async def test_unknown_paths_and_methods_are_json_errors(
    served: tuple[str, HttpServer, Migrations],
) -> None:
    sock, _, _ = served
    for path in ("/v1/nope", "/v1/status/", "/v1//start", "/", "//x/v1/status", "*"):
        assert await call(sock, "GET", path) == (404, {"error": "Not Found"}), path
    status, headers, body = await asyncio.to_thread(request, sock, "DELETE", "/v1/status")
    assert (status, body) == (405, {"error": "Method Not Allowed"})
    assert headers["allow"] == "GET, HEAD"
    status, headers, body = await asyncio.to_thread(request, sock, "HEAD", "/v1/status")
    assert (status, body) == (200, None)  # a HEAD: the length of the body, not the body
    assert int(headers["content-length"]) == len(b'{"node_id": "n1"}')
    assert (await call(sock, "GET", "/v1/vms/%ff/start"))[0] == 400
    assert await call(sock, "GET", "http://localhost/v1/hosts/n1?x=1") == (200, {"id": "n1"})


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"not json", "the request body is not JSON"),
        (b"\xff\xfe", "the request body is not JSON"),
        (b"[" * 100_000, "the request body is not JSON"),  # nested too deep to parse
        (b"[1, 2]", "the request body must be a JSON object"),
        (b'"text"', "the request body must be a JSON object"),
    ],
)
async def test_a_body_that_is_not_a_json_object_is_refused(
    served: tuple[str, HttpServer, Migrations], data: bytes, error: str
) -> None:
    sock, _, _ = served
    assert await call(sock, "POST", "/v1/vms", data=data) == (400, {"error": error})


# What each kind of refusal answers over HTTP (kind, status): what `nova` and scripts rely on.
STATUSES = [("invalid", 400), ("forbidden", 403), ("unknown", 404), ("conflict", 409)]
STATUSES += [("unavailable", 503), ("no-answer", 504)]


def test_the_status_table_answers_every_kind_of_refusal() -> None:
    assert set(HTTP_STATUS) == set(RefusalKind)  # a new kind without a status fails here
    assert {kind for kind, _ in STATUSES} == {kind.value for kind in RefusalKind}


async def test_refusals_answer_their_kinds_status_and_a_bug_is_a_json_500(
    served: tuple[str, HttpServer, Migrations], caplog: pytest.LogCaptureFixture
) -> None:
    sock, _, _ = served
    for kind, status in STATUSES:
        refused = (status, {"error": "refused on purpose"})
        assert await call(sock, "POST", "/v1/vms", json=vm(f"refuse-{kind}")) == refused
    with caplog.at_level(logging.ERROR, logger="novacron.httpd"):
        assert await call(sock, "POST", "/v1/vms", json=vm("fail")) == (
            500,
            {"error": "Internal Server Error"},
        )
    assert "a bug" in caplog.text  # the traceback is logged, not sent
    assert (await call(sock, "GET", "/v1/status"))[0] == 200


async def test_the_clis_client_gets_answers_and_errors(
    served: tuple[str, HttpServer, Migrations],
) -> None:
    sock, _, _ = served
    assert await asyncio.to_thread(client.get, "/v1/members", sock) == {"members": [{"id": "n1"}]}
    answer = await asyncio.to_thread(client.post, "/v1/vms", vm("x"), sock)
    assert answer == {"name": "x", "uuid": "64 MiB", "started": False, "host": "n1"}
    with pytest.raises(client.AgentRequestFailed, match="unknown VM ghost") as failed:
        await asyncio.to_thread(client.post, "/v1/vms/ghost/migrate", {"to": "h2"}, sock)
    assert failed.value.status == 404
    with pytest.raises(client.AgentRequestFailed, match="Method Not Allowed"):
        await asyncio.to_thread(client.delete, "/v1/members", sock)


# --- connections ----------------------------------------------------------------------


async def test_keep_alive_serves_two_requests_on_one_connection(
    served: tuple[str, HttpServer, Migrations],
) -> None:
    sock, server, _ = served
    conn = UnixHTTPConnection(sock)
    try:
        first = await asyncio.to_thread(request, sock, "GET", "/v1/status", None, None, conn)
        assert server.connections == 1
        second = await asyncio.to_thread(request, sock, "GET", "/v1/nope", None, None, conn)
        assert server.connections == 1
        third = await asyncio.to_thread(request, sock, "GET", "/v1/members", None, None, conn)
    finally:
        conn.close()
    assert [first[0], second[0], third[0]] == [200, 404, 200]
    await until(lambda: server.connections == 0)


async def test_connection_close_is_honoured_and_pipelined_requests_answered_in_order(
    served: tuple[str, HttpServer, Migrations],
) -> None:
    sock, server, _ = served
    one = b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n"
    two = b"GET /v1/nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    # No half-close: the server itself must end the connection after `Connection: close`.
    raw = await asyncio.to_thread(exchange, sock, one + two, False)
    got = answers(raw)
    assert [status for status, _, _ in got] == [200, 404]
    assert json.loads(got[0][2]) == {"node_id": "n1"}
    assert got[1][1]["connection"] == "close"
    await until(lambda: server.connections == 0)


async def test_a_body_over_the_limit_is_refused_and_the_client_still_reads_why(
    served: tuple[str, HttpServer, Migrations],
) -> None:
    sock, _, _ = served
    big = b'{"name": "' + b"a" * (httpd.MAX_BODY_BYTES + 10) + b'"}'
    status, headers, body = await asyncio.to_thread(request, sock, "POST", "/v1/vms", None, big)
    assert (status, headers["connection"]) == (413, "close")
    assert "over 1048576 bytes" in body["error"]
    head = b"POST /v1/vms HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n"
    (answer,) = answers(await asyncio.to_thread(exchange, sock, head, False))
    assert answer[0] == 413 and "over" in error_of(answer)
    chunked = b"POST /v1/vms HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"%x\r\n%s\r\n" % (64 * 1024, b"a" * 64 * 1024)
    (answer,) = answers(await asyncio.to_thread(exchange, sock, chunked + chunk * 17))
    assert answer[0] == 413


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /v1/status\r\n\r\n", 400),  # no version
        (b"GET /v1/status HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
        (b"GET /v1/status HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n", 400),
        (b"POST /v1/vms HTTP/1.1\r\nHost: x\r\nContent-Length: ab\r\n\r\n", 400),
        (b"GET /v1/st\x00atus HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX: " + b"y" * 20_000 + b"\r\n\r\n", 431),
        (b"GET /v1/status HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 5_000 + b"\r\n", 431),
        (b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX: " + b"y" * 200_000, 431),  # never ends
        (b"GET /v1/status HTTP/1.1\r\nHost: x\r\n", 400),  # cut short, then the client closes
    ],
)
async def test_malformed_requests_get_a_json_error_and_a_close(
    served: tuple[str, HttpServer, Migrations], data: bytes, status: int
) -> None:
    sock, server, _ = served
    (answer,) = answers(await asyncio.to_thread(exchange, sock, data))
    assert answer[0] == status
    assert answer[1]["connection"] == "close"
    error_of(answer)
    assert (await call(sock, "GET", "/v1/status"))[0] == 200
    await until(lambda: server.connections == 0)


async def test_a_stalled_request_times_out_without_holding_up_others(
    served: tuple[str, HttpServer, Migrations], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, server, _ = served
    monkeypatch.setattr(httpd, "REQUEST_TIMEOUT", 0.5)
    reader, writer = await asyncio.open_unix_connection(sock)
    writer.write(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
    await writer.drain()
    assert await call(sock, "GET", "/v1/status") == (200, {"node_id": "n1"})
    started = time.monotonic()
    raw = await asyncio.wait_for(reader.read(), timeout=5)
    assert time.monotonic() - started < 2
    (answer,) = answers(raw)
    assert answer[0] == 408 and "did not arrive" in error_of(answer)
    writer.close()
    await until(lambda: server.connections == 0)


async def test_an_idle_connection_is_closed_quietly(
    served: tuple[str, HttpServer, Migrations], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, server, _ = served
    monkeypatch.setattr(httpd, "IDLE_TIMEOUT", 0.3)
    reader, writer = await asyncio.open_unix_connection(sock)
    assert await asyncio.wait_for(reader.read(), timeout=5) == b""
    writer.close()
    await until(lambda: server.connections == 0)


async def test_a_client_that_disconnects_mid_request_leaves_nothing_behind(
    served: tuple[str, HttpServer, Migrations], caplog: pytest.LogCaptureFixture
) -> None:
    sock, server, _ = served
    for partial in (
        b"GET /v1/sta",
        b"POST /v1/vms HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n{",
    ):
        _, writer = await asyncio.open_unix_connection(sock)
        writer.write(partial)
        await writer.drain()
        await until(lambda: server.connections == 1)
        writer.close()
        await until(lambda: server.connections == 0)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert (await call(sock, "GET", "/v1/status"))[0] == 200


async def test_the_api_socket_is_root_only_and_removed_on_close(tmp_path: Path) -> None:
    sock = tmp_path / "run" / "agent.sock"
    sock.parent.mkdir()
    sock.write_text("stale")  # left over by a crashed agent
    api = ApiServer(View(), str(sock))
    await api.start()
    try:
        assert sock.stat().st_mode & 0o777 == 0o600
        assert await call(str(sock), "GET", "/v1/status") == (200, {"node_id": "n1"})
        assert (await call(str(sock), "GET", "/v1/migrations"))[0] == 404  # no migrator given
    finally:
        await api.close()
    assert not sock.exists()


async def test_close_ends_held_requests_and_open_connections(tmp_path: Path) -> None:
    migrations = Migrations()
    server = HttpServer(router(migrations))
    sock = str(tmp_path / "api.sock")
    await server.start_unix(sock)
    reader, writer = await asyncio.open_unix_connection(sock)
    writer.write(b"GET /v1/migrations/m1?wait=10 HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await until(lambda: migrations.waiting == 1)
    await asyncio.wait_for(server.close(), timeout=5)
    assert server.connections == 0
    assert await asyncio.wait_for(reader.read(), timeout=5) == b""
    assert migrations.waiting == 0  # the held handler stopped
    writer.close()


# --- held requests --------------------------------------------------------------------


async def test_a_held_request_answers_when_the_migration_ends(
    served: tuple[str, HttpServer, Migrations],
) -> None:
    sock, _, migrations = served
    started = time.monotonic()
    waiting = asyncio.ensure_future(call(sock, "GET", "/v1/migrations/m1?wait=10"))
    await until(lambda: migrations.waiting == 1)
    assert not waiting.done() and migrations.looks == 1  # it waits for news, not a timer
    migrations.end("completed")
    status, body = await asyncio.wait_for(waiting, timeout=5)
    assert (status, body["migration"]["outcome"]) == (200, "completed")
    assert time.monotonic() - started < 5


async def test_a_held_request_answers_at_its_timeout(
    served: tuple[str, HttpServer, Migrations],
) -> None:
    sock, _, _ = served
    started = time.monotonic()
    status, body = await call(sock, "GET", "/v1/migrations/m1?wait=0.3")
    assert (status, body["migration"]["outcome"]) == (200, "")
    assert 0.3 <= time.monotonic() - started < 3
    assert (await call(sock, "GET", "/v1/migrations/m1?wait=soon"))[0] == 400
    assert (await call(sock, "GET", "/v1/migrations/m9?wait=1"))[0] == 404


async def test_a_client_that_hangs_up_during_a_held_request_cancels_it(
    served: tuple[str, HttpServer, Migrations],
) -> None:
    sock, server, migrations = served
    _, writer = await asyncio.open_unix_connection(sock)
    writer.write(b"GET /v1/migrations/m1?wait=10 HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await until(lambda: migrations.waiting == 1)
    writer.close()
    await until(lambda: server.connections == 0, timeout=2)
    assert migrations.waiting == 0  # the handler was cancelled, not left waiting
    assert (await call(sock, "GET", "/v1/status"))[0] == 200


async def test_a_client_that_only_half_closes_still_gets_its_held_answer(
    served: tuple[str, HttpServer, Migrations],
) -> None:
    sock, server, _ = served
    data = b"GET /v1/migrations/m1?wait=0.3 HTTP/1.1\r\nHost: x\r\n\r\n"
    (answer,) = answers(await asyncio.to_thread(exchange, sock, data, True))
    assert answer[0] == 200 and json.loads(answer[2])["migration"]["migration_id"] == "m1"
    await until(lambda: server.connections == 0)


# --- fuzz -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def threaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, HttpServer]]:
    """The API served from a thread's loop, for synchronous (hypothesis) tests."""
    sock = str(tmp_path_factory.mktemp("fuzz") / "api.sock")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    ended = Migrations()
    ended.end("completed")  # a mutated `?wait=` must not hold the fuzz up
    server = HttpServer(router(ended))
    asyncio.run_coroutine_threadsafe(server.start_unix(sock), loop).result(timeout=10)
    yield sock, server
    asyncio.run_coroutine_threadsafe(server.close(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()


SEEDS = [
    b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v1/migrations/m1?wait=0.01 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"HEAD /v1/members HTTP/1.1\r\nHost: x\r\n\r\n",
    b'POST /v1/vms HTTP/1.1\r\nHost: x\r\nContent-Length: 13\r\n\r\n{"name": "a"}',
    b"POST /v1/vms/a/stop HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"2\r\n{}\r\n0\r\n\r\n",
    b"DELETE /v1/vms/a?force=1 HTTP/1.0\r\n\r\n",
    b"POST /v1/vms HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}",
    b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/vms HTTP/1.1\r\nHost: x\r\n\r\n",
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        at = draw(st.integers(min_value=0, max_value=len(data)))
        kind = draw(st.sampled_from(["insert", "delete", "replace"]))
        noise = draw(st.binary(min_size=1, max_size=8))
        if kind == "insert":
            data[at:at] = noise
        elif kind == "delete":
            del data[at : at + len(noise)]
        else:
            data[at : at + len(noise)] = noise
    return bytes(data)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.one_of(st.binary(max_size=512), mutated()), half_close=st.booleans())
def test_arbitrary_bytes_get_well_formed_answers_and_the_server_keeps_serving(
    threaded: tuple[str, HttpServer],
    caplog: pytest.LogCaptureFixture,
    data: bytes,
    half_close: bool,
) -> None:
    sock, _ = threaded
    if half_close:
        got = answers(exchange(sock, data))
    else:  # the client closes without waiting: nothing to check but the server's health
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(sock)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                conn.sendall(data)
        got = []
    for answer in got:
        if answer[0] >= 400 and answer[2]:  # no body: the answer to a HEAD
            error_of(answer)
        elif answer[0] >= 200 and answer[2]:
            json.loads(answer[2])
    assert 500 not in [answer[0] for answer in got]  # (501: a transfer coding h11 lacks)
    assert request(sock, "GET", "/v1/status")[0] == 200
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_after_the_fuzz_no_connection_is_left_open(threaded: tuple[str, HttpServer]) -> None:
    sock, server = threaded
    request(sock, "GET", "/v1/status")
    deadline = time.monotonic() + 5
    while server.connections and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.connections == 0
