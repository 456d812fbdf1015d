"""A client for the agent's local API over its unix socket, for tests of the API and its users.

`request` is http.client over a unix socket (keep-alive when given a
connection); `call` runs one request from a thread so the server's event
loop keeps running; `until` waits for what a request set going.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import time
from typing import Any


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket: keep-alive, as a long-lived client would use it."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def request(
    sock: str,
    method: str,
    path: str,
    json_body: Any = None,
    data: bytes | None = None,
    connection: UnixHTTPConnection | None = None,
) -> tuple[int, dict[str, str], Any]:
    """(status, headers, decoded JSON body or None) of one request."""
    conn = connection or UnixHTTPConnection(sock)
    headers = {}
    if json_body is not None:
        data = json.dumps(json_body).encode()
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        answer_headers = {k.lower(): v for k, v in response.getheaders()}
    finally:
        if connection is None:
            conn.close()
    return response.status, answer_headers, json.loads(raw) if raw else None


async def call(
    sock: str, method: str, path: str, json: Any = None, data: bytes | None = None
) -> tuple[int, Any]:
    """(status, JSON body) of one request, from a thread so the server's loop runs on."""
    status, _, body = await asyncio.to_thread(request, sock, method, path, json, data)
    return status, body


async def until(condition: Any, timeout: float = 5.0) -> None:
    """Return once `condition()` holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)
