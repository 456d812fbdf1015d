"""Publishing to NATS JetStream over NATS' own text protocol, without a client library.

nats-py pulls in aiohttp for its WebSocket transport and costs an idle agent
about 10 MiB of RSS, a sixth of its footprint goal; what the event stream
needs of NATS is small: connect, make sure the stream exists, publish one
message with a header and wait for JetStream's acknowledgement. This is that,
on one TCP (or TLS) connection, one request at a time, as the NATS client
protocol describes it (INFO/CONNECT/PING/PONG, SUB, HPUB, MSG/HMSG, -ERR).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl
from typing import Any
from urllib.parse import urlsplit

MAX_LINE = 64 * 1024  # a control line longer than this is no NATS server's
MAX_PAYLOAD = 1 << 20  # answers (JetStream acks and API replies) are far smaller


class NatsError(Exception):
    """The server refused, said something this client cannot read, or went away."""


# Everything a connection can raise: refused, gone, cut mid-answer, garbled.
FAILURES = (OSError, ValueError, NatsError, asyncio.IncompleteReadError, asyncio.LimitOverrunError)


class NatsPublisher:
    """One connection to a NATS server that publishes to JetStream and waits for acks."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("nats", "tls") or not parts.hostname:
            raise NatsError(f"{url!r} is not a nats:// or tls:// URL")
        self.url = url
        self._host = parts.hostname
        self._port = parts.port or 4222
        self._tls = parts.scheme == "tls"
        self._user = parts.username
        self._password = parts.password
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._inbox = f"_INBOX.{secrets.token_hex(8)}"
        self._next = 0

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def connect(self) -> None:
        reader, writer = await asyncio.open_connection(self._host, self._port)
        self._reader, self._writer = reader, writer
        info = await self._line()
        if not info.startswith(b"INFO "):
            raise NatsError(f"{self.url} is not a NATS server (it said {info[:40]!r})")
        details = json.loads(info[5:])
        if self._tls or details.get("tls_required"):
            await writer.start_tls(ssl.create_default_context(), server_hostname=self._host)
        options: dict[str, Any] = {
            "verbose": False,
            "pedantic": False,
            "headers": True,
            "no_responders": True,
            "protocol": 1,
            "lang": "python",
            "version": "novacron",
            "name": "nova-agent",
        }
        if self._user:
            options.update(user=self._user, **({"pass": self._password} if self._password else {}))
        writer.write(b"CONNECT " + json.dumps(options).encode() + b"\r\nPING\r\n")
        writer.write(f"SUB {self._inbox}.* 1\r\n".encode())
        await writer.drain()
        while (line := await self._line()) != b"PONG":
            if line.startswith(b"-ERR"):
                raise NatsError(f"{self.url} refused the connection: {line[5:].decode()}")

    async def request(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Publish `payload` to `subject` and return the JSON answer (a JetStream ack or an
        API reply); NatsError when the server answers with an error or no one answers."""
        if self._writer is None:
            raise NatsError("not connected")
        self._next += 1
        reply = f"{self._inbox}.{self._next}"
        head = b""
        if headers:
            head = b"NATS/1.0\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items())
            head += b"\r\n"
            line = f"HPUB {subject} {reply} {len(head)} {len(head) + len(payload)}\r\n"
        else:
            line = f"PUB {subject} {reply} {len(payload)}\r\n"
        self._writer.write(line.encode() + head + payload + b"\r\n")
        await self._writer.drain()
        while True:
            to, header, body = await self._message()
            if to != reply:
                continue  # an answer to an earlier request that timed out
            if header.startswith(b"NATS/1.0 503"):
                raise NatsError(
                    f"no one answered on {subject} (is JetStream on, is the stream there?)"
                )
            answer = json.loads(body or b"{}")
            if not isinstance(answer, dict):
                raise NatsError(f"unexpected answer to {subject}: {body[:80]!r}")
            return answer

    async def _message(self) -> tuple[str, bytes, bytes]:
        """The next message for this connection's inbox: (subject, header, body)."""
        while True:
            line = await self._line()
            if line == b"PING":
                assert self._writer is not None
                self._writer.write(b"PONG\r\n")
                continue
            if line.startswith(b"-ERR"):
                raise NatsError(f"{self.url}: {line[5:].decode(errors='replace')}")
            words = line.split()
            if not words or words[0] not in (b"MSG", b"HMSG"):
                continue  # +OK, PONG, INFO updates
            if len(words) < (5 if words[0] == b"HMSG" else 4):
                raise NatsError(f"{self.url}: a malformed message line {line[:80]!r}")
            kind = words[0].decode()
            subject = words[1].decode()
            total = int(words[-1])
            header_size = int(words[-2]) if kind == "HMSG" else 0
            if total > MAX_PAYLOAD or header_size > total:
                raise NatsError(f"{self.url}: an answer of {total} bytes")
            assert self._reader is not None
            data = await self._reader.readexactly(total + 2)
            return subject, data[:header_size], data[header_size:total]

    async def _line(self) -> bytes:
        assert self._reader is not None
        line = await self._reader.readuntil(b"\r\n")
        if len(line) > MAX_LINE:
            raise NatsError(f"{self.url}: a line of {len(line)} bytes")
        return line[:-2]

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
