"""`nova`'s side of the local control API: plain HTTP over the agent's unix socket.

Synchronous on purpose: the CLI makes one or two requests and exits.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from typing import Any

DEFAULT_SOCKET = "/run/novacron/agent.sock"
SOCKET_ENV = "NOVACRON_SOCKET"


class AgentUnavailable(Exception):
    """The agent cannot be reached; the message says why and what to do."""


class AgentRequestFailed(Exception):
    """The agent answered with an error."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


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
    connection = _UnixConnection(where, timeout)
    headers = {"Accept": "application/json"}
    payload = None
    if body is not None:
        payload = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        data = response.read()
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
        raise AgentUnavailable(f"permission denied on {where}: run nova as root") from None
    except (TimeoutError, OSError, http.client.HTTPException) as exc:
        raise AgentUnavailable(f"the agent at {where} did not answer: {exc}") from None
    finally:
        connection.close()
    return _decode(response.status, data)


def _decode(status: int, body: bytes) -> Any:
    try:
        data = json.loads(body)
    except ValueError:
        raise AgentRequestFailed(status, "the agent sent a non-JSON answer") from None
    if status >= 400:
        message = data.get("error") if isinstance(data, dict) else None
        raise AgentRequestFailed(status, str(message or f"HTTP {status}"))
    return data
