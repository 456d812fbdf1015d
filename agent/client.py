"""`nova`'s side of the local control API: plain HTTP over the agent's unix socket.

Synchronous on purpose: the CLI makes one or two requests and exits. The
request is written and the answer read by hand (HTTP/1.1, one request per
connection, `Connection: close`): `http.client` drags in the `email` package
and `ssl`, a third of the CLI's start-up, and every `nova` command pays that.
"""

from __future__ import annotations

import json
import os
import re
import socket
from typing import Any

DEFAULT_SOCKET = "/run/novacron/agent.sock"
SOCKET_ENV = "NOVACRON_SOCKET"
MAX_ANSWER = 64 * 1024 * 1024  # no answer of the local API is near this; stop a runaway
_DIGITS = re.compile(r"[0-9]{1,12}")


class AgentUnavailable(Exception):
    """The agent cannot be reached; the message says why and what to do."""


class AgentPermissionDenied(AgentUnavailable):
    """The agent's socket is there, but this user may not use it (not root)."""


class AgentRequestFailed(Exception):
    """The agent answered with an error."""

    def __init__(self, status: int, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.details = details or {}  # the answer's other fields: facts to act on


class MalformedAnswer(Exception):
    """What came back is not an HTTP/1.x answer."""


def socket_path(explicit: str | None = None) -> str:
    """`--socket`, else $NOVACRON_SOCKET, else /run/novacron/agent.sock."""
    return explicit or os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def get(path: str, socket_file: str | None = None, timeout: float = 10.0) -> Any:
    """GET `path` from the agent and return the decoded JSON body."""
    return _request("GET", path, None, socket_file, timeout)


def post(
    path: str, body: dict[str, Any], socket_file: str | None = None, timeout: float = 10.0
) -> Any:
    """POST `body` as JSON to `path` and return the decoded JSON answer."""
    return _request("POST", path, body, socket_file, timeout)


def delete(path: str, socket_file: str | None = None, timeout: float = 10.0) -> Any:
    """DELETE `path` and return the decoded JSON answer."""
    return _request("DELETE", path, None, socket_file, timeout)


def _request(
    method: str, path: str, body: dict[str, Any] | None, socket_file: str | None, timeout: float
) -> Any:
    """One request; `AgentUnavailable` or `AgentRequestFailed` (with the agent's reason)."""
    where = socket_path(socket_file)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(where)
            sock.sendall(encode_request(method, path, body))
            status, data = parse_answer(_read_all(sock))
    except FileNotFoundError:
        raise AgentUnavailable(
            f"the agent is not running: no socket at {where} "
            "(start it with 'systemctl start novacron-agent', or pass --socket)"
        ) from None
    except ConnectionRefusedError:
        raise AgentUnavailable(
            f"the agent is not running: {where} refuses connections (stale socket?)"
        ) from None
    except PermissionError:
        raise AgentPermissionDenied(f"permission denied on {where}: run nova as root") from None
    except (TimeoutError, OSError, MalformedAnswer) as exc:
        raise AgentUnavailable(f"the agent at {where} did not answer: {exc}") from None
    return _decode(status, data)


def encode_request(method: str, path: str, body: dict[str, Any] | None) -> bytes:
    """The request's bytes: one request, then the agent closes the connection."""
    payload = b"" if body is None else json.dumps(body).encode()
    head = [
        f"{method} {path} HTTP/1.1",
        "Host: localhost",
        "Accept: application/json",
        "Connection: close",
        f"Content-Length: {len(payload)}",
    ]
    if body is not None:
        head.append("Content-Type: application/json")
    trace = os.environ.get("TRACEPARENT", "")  # a caller's trace: the agent joins it
    if trace and all(c in "0123456789abcdef-" for c in trace) and len(trace) <= 64:
        head.append(f"traceparent: {trace}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


def _read_all(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := sock.recv(65536):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_ANSWER:
            raise MalformedAnswer(f"answer larger than {MAX_ANSWER} bytes")
    return b"".join(chunks)


def parse_answer(raw: bytes) -> tuple[int, bytes]:
    """(status, body) of a whole HTTP/1.x answer read to the connection's end."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:
        raise MalformedAnswer("the connection closed before the answer's headers ended")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not _DIGITS.fullmatch(parts[1]):
        raise MalformedAnswer(f"not an HTTP answer: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            raise MalformedAnswer(f"bad header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return int(parts[1]), _dechunk(rest)
    length = headers.get("content-length")
    if length is None:
        return int(parts[1]), rest  # the body runs to the connection's end
    if not _DIGITS.fullmatch(length) or int(length) > len(rest):
        raise MalformedAnswer("the connection closed before the answer's body ended")
    return int(parts[1]), rest[: int(length)]


def _dechunk(data: bytes) -> bytes:
    body = bytearray()
    while True:
        size_line, sep, data = data.partition(b"\r\n")
        digits = size_line.split(b";")[0].strip()
        if not re.fullmatch(rb"[0-9a-fA-F]{1,8}", digits):
            raise MalformedAnswer(f"bad chunk size {size_line[:20]!r}")
        size = int(digits, 16)
        if not sep or len(data) < size + 2:
            raise MalformedAnswer("the connection closed inside a chunk")
        if size == 0:
            return bytes(body)
        body += data[:size]
        data = data[size + 2 :]


def _decode(status: int, body: bytes) -> Any:
    try:
        data = json.loads(body)
    except ValueError:
        raise AgentRequestFailed(status, "the agent sent a non-JSON answer") from None
    if status >= 400:
        details = dict(data) if isinstance(data, dict) else {}
        message = details.pop("error", None)
        raise AgentRequestFailed(status, str(message or f"HTTP {status}"), details)
    return data
