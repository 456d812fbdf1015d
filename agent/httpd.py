"""A small HTTP/1.1 server for the agent's local API: asyncio streams on a unix socket, h11.

The plumbing only, nothing about the agent: requests and responses, a router
with `{name}` path parameters, and one task per connection that reads a
request (h11 parses it), runs its handler and writes the answer. Keep-alive
and pipelining work as HTTP/1.1 says; `Connection: close` is honoured.

Bad input gets a JSON error (`{"error": "..."}`) and never reaches a handler:
a malformed request 400, headers over `MAX_HEADER_BYTES` 431, a body over
`MAX_BODY_BYTES` 413, a request that does not arrive within `REQUEST_TIMEOUT`
408, an unknown path 404, a known path with another method 405. A client
that hangs up while its request is being handled has its handler cancelled;
one that only half-closes (shuts down its sending side) still gets the answer.

Every client costs bounded memory and a slot only while it uses it: at most
`MAX_PIPELINED_BYTES` of requests are read ahead of the one being answered
(a client that pipelines without reading its answers stops being read, then
is dropped after `WRITE_TIMEOUT`), and when all `MAX_CONNECTIONS` slots are
taken the connection idle the longest (waiting for its next request, none of
it sent) is closed to make room; a new client is refused (503) only when
every connection is busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import select
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import h11

from .tasks import cancel_and_wait

log = logging.getLogger("novacron.httpd")

MAX_BODY_BYTES = 1 << 20  # a request body larger than this is refused (413)
MAX_HEADER_BYTES = 16 * 1024  # request line and headers larger than this are refused (431)
REQUEST_TIMEOUT = 10.0  # from a request's first byte until all of it has arrived
IDLE_TIMEOUT = 30.0  # a connection with no request in flight is closed after this
WRITE_TIMEOUT = 10.0  # a client that does not read its answer is dropped after this
LINGER = 1.0  # after an error that closes the connection: unread input drained this long
LINGER_BYTES = 16 * MAX_BODY_BYTES  # and at most this much of it
MAX_CONNECTIONS = 64  # past this, the longest idle is closed; if none is idle, 503
READ_CHUNK = 64 * 1024
MAX_PIPELINED_BYTES = 64 * 1024  # unparsed input held while a handler runs (read: hang-ups)
HANGUP_POLL = 0.5  # seconds between hang-up checks while that input is full and not read


class HttpError(Exception):
    """An HTTP error answer: `status`, and `reason` as the JSON body's "error"; `details`,
    facts a client can act on, go beside it in the body."""

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        details: Mapping[str, object] | None = None,
    ) -> None:
        reason = reason or _phrase(status)
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = tuple(headers)
        self.details = dict(details or {})


@dataclass(frozen=True)
class Request:
    """A whole request: the body has been read (it is at most `MAX_BODY_BYTES`)."""

    method: str
    path: str  # percent-decoded
    query: Mapping[str, str]  # the first value of each name: `?a=1&a=2` gives a="1"
    headers: tuple[tuple[str, str], ...]  # names in lower case
    body: bytes
    params: Mapping[str, str] = field(default_factory=dict)  # from the route's `{name}`s


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[Request], Awaitable[Response]]


def json_response(data: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(data).encode())


def error_response(
    status: int,
    reason: str,
    headers: Iterable[tuple[str, str]] = (),
    details: Mapping[str, object] | None = None,
) -> Response:
    """`{"error": reason}` with `status`: every error this server sends looks like this
    (with a refusal's `details` beside the reason)."""
    body = {**(details or {}), "error": reason}
    return replace(json_response(body, status), headers=tuple(headers))


class Router:
    """Routes by method and path; a `{name}` segment matches one non-empty path segment.

    Routes are tried in the order they were added, so a literal route added
    before a parameter route at the same place wins (`/hosts/self`, then
    `/hosts/{node_id}`). A GET route answers HEAD too, without the body.
    """

    def __init__(self) -> None:
        self._routes: list[tuple[tuple[str, ...], dict[str, Handler]]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        parts = tuple(pattern.split("/"))
        for existing, methods in self._routes:
            if existing == parts:
                methods[method] = handler
                return
        self._routes.append((parts, {method: handler}))

    def get(self, pattern: str, handler: Handler) -> None:
        self.add("GET", pattern, handler)

    def post(self, pattern: str, handler: Handler) -> None:
        self.add("POST", pattern, handler)

    def delete(self, pattern: str, handler: Handler) -> None:
        self.add("DELETE", pattern, handler)

    def resolve(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        """The handler and path parameters for a request, or `HttpError` 404 or 405."""
        segments = path.split("/")
        allowed: set[str] = set()
        for parts, methods in self._routes:
            params = _match(parts, segments)
            if params is None:
                continue
            handler = methods.get(method) or (methods.get("GET") if method == "HEAD" else None)
            if handler is not None:
                return handler, params
            allowed.update(methods)
        if allowed:
            if "GET" in allowed:
                allowed.add("HEAD")
            raise HttpError(405, headers=[("Allow", ", ".join(sorted(allowed)))])
        raise HttpError(404)


def _match(parts: tuple[str, ...], segments: list[str]) -> dict[str, str] | None:
    if len(parts) != len(segments):
        return None
    params: dict[str, str] = {}
    for part, segment in zip(parts, segments, strict=True):
        if part.startswith("{") and part.endswith("}"):
            if not segment:
                return None
            params[part[1:-1]] = segment
        elif part != segment:
            return None
    return params


def parse_request(event: h11.Request, body: bytes) -> Request:
    """A `Request` from h11's request event; 400 if its path is not UTF-8 once decoded."""
    target = event.target.decode("ascii")  # h11 admits visible ASCII only
    if target.startswith("/"):
        raw_path, _, raw_query = target.partition("?")
    else:  # absolute form, `http://host/path?query` (or `*`, which no route matches)
        split = urlsplit(target)
        raw_path, raw_query = split.path, split.query
    try:
        path = "/".join(unquote(part, errors="strict") for part in raw_path.split("/"))
    except UnicodeDecodeError:
        raise HttpError(400, "the request path is not UTF-8") from None
    query: dict[str, str] = {}
    for name, value in parse_qsl(raw_query, keep_blank_values=True, errors="replace"):
        query.setdefault(name, value)
    headers = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers)
    return Request(event.method.decode("ascii"), path, query, headers, body)


class HttpServer:
    """Serves a `Router` on a unix socket or a TCP address, one task per connection."""

    def __init__(self, router: Router, max_connections: int = MAX_CONNECTIONS) -> None:
        self.router = router
        self.max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[Any], _Connection] = {}  # each holds a slot
        self._evicted: set[asyncio.Task[Any]] = set()  # idle ones closed for room, ending
        self._closing = False

    async def start_unix(self, path: str) -> None:
        self._server = await asyncio.start_unix_server(self._accept, path)

    async def start_tcp(self, host: str, port: int) -> None:
        """Listen on `host`:`port` (raises OSError when the address is in use or not ours)."""
        self._server = await asyncio.start_server(self._accept, host, port)

    @property
    def tcp_port(self) -> int | None:
        """The TCP port listened on (port 0 picks one), or None when not on TCP."""
        if self._server is None or not self._server.sockets:
            return None
        name = self._server.sockets[0].getsockname()
        return int(name[1]) if isinstance(name, tuple) else None

    async def close(self) -> None:
        """Stop listening, cancel what connections are doing, and wait until they closed."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        await cancel_and_wait([*self._connections, *self._evicted])
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    @property
    def connections(self) -> int:
        """Connections open now (tests check that none leak)."""
        return len(self._connections)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connection = _Connection(self.router, reader, writer)
        if self._closing:  # accepted just before `close()`
            writer.close()
            return
        if len(self._connections) >= self.max_connections and not self._close_longest_idle():
            with contextlib.suppress(Exception):
                await connection.refuse(HttpError(503, "too many connections to the agent's API"))
            return
        self._connections[task] = connection
        try:
            await connection.serve()
        finally:
            self._connections.pop(task, None)

    def _close_longest_idle(self) -> bool:
        """Free the slot of the connection idle the longest; False if none is idle.

        Closing an idle keep-alive connection is every HTTP server's right; its
        client opens a new one for its next request. The socket is closed rather
        than the task cancelled: its read then ends as a hang-up would, and the
        task ends normally.
        """
        idle = [(conn.idle_since, task) for task, conn in self._connections.items()]
        waiting = [(since, task) for since, task in idle if since is not None]
        if not waiting:
            return False
        _, task = min(waiting, key=lambda pair: pair[0])
        self._connections.pop(task).writer.close()
        self._evicted.add(task)
        task.add_done_callback(self._evicted.discard)
        return True


class _Connection:
    """One client connection: read a request, answer it, and again while it stays open."""

    def __init__(
        self, router: Router, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.router = router
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        self._head = False  # the request being answered is a HEAD: no body in the answer
        # Loop time since which the client has sent nothing of its next request; None
        # while a request is arriving or being answered. The longest idle makes room.
        self.idle_since: float | None = asyncio.get_running_loop().time()

    async def serve(self) -> None:
        try:
            while True:
                try:
                    received = await self._read_request()
                except HttpError as exc:
                    await self.refuse(exc)
                    return
                if received is None:
                    return
                response = await self._respond(*received)
                if response is None:
                    return  # the client hung up before its answer was ready
                await self._send(response)
                if self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE:
                    return  # `Connection: close`, HTTP/1.0, or the client closed its side
                self.h11.start_next_cycle()
        except (ConnectionError, TimeoutError):
            pass  # the client went away, or stopped reading its answer
        except Exception:
            log.exception("the API connection failed")
        finally:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()

    async def refuse(self, error: HttpError) -> None:
        """Answer `error` and close (after draining what the client still sends, briefly)."""
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return  # an answer is already on its way: nothing sensible to add
        headers = [("Connection", "close"), *error.headers]
        try:
            await self._send(error_response(error.status, error.reason, headers))
            if self.writer.can_write_eof():
                self.writer.write_eof()
            # Closing with unread input can make the client's send fail before it reads
            # our answer; drain a little first.
            async with asyncio.timeout(LINGER):
                drained = 0
                while drained < LINGER_BYTES:
                    data = await self.reader.read(READ_CHUNK)
                    if not data:
                        break
                    drained += len(data)
        except (ConnectionError, TimeoutError):
            pass
        finally:
            self.writer.close()

    async def _read_request(self) -> tuple[h11.Request, bytes] | None:
        """The next request and its body; None when the client closed or stayed idle."""
        loop = asyncio.get_running_loop()
        idle_until = loop.time() + IDLE_TIMEOUT
        request_until = loop.time() + REQUEST_TIMEOUT if self.h11.trailing_data[0] else None
        if request_until is not None:
            self.idle_since = None  # a pipelined request is already here
        start: h11.Request | None = None
        body = bytearray()
        self._head = False
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                if status == 431:
                    raise HttpError(431, f"request headers over {MAX_HEADER_BYTES} bytes") from None
                raise HttpError(status, f"malformed request: {exc}") from None
            if event is h11.NEED_DATA:
                if self.h11.they_are_waiting_for_100_continue:
                    self.writer.write(
                        self._encode(h11.InformationalResponse(status_code=100, headers=[]))
                    )
                deadline = idle_until if request_until is None else request_until
                if request_until is None and self.idle_since is None:
                    self.idle_since = loop.time()
                try:
                    async with asyncio.timeout_at(deadline):
                        data = await self.reader.read(READ_CHUNK)
                except TimeoutError:
                    if request_until is None:
                        return None  # idle: close quietly
                    late = f"the request did not arrive within {REQUEST_TIMEOUT:g} s"
                    raise HttpError(408, late) from None
                self.idle_since = None
                if data and request_until is None:
                    request_until = loop.time() + REQUEST_TIMEOUT
                self.h11.receive_data(data)
            elif isinstance(event, h11.Request):
                start = event
                self._head = event.method == b"HEAD"
                # h11 bounds only what is still incomplete: a whole head that arrived
                # in one read is measured here.
                size = len(event.method) + len(event.target) + 12
                size += sum(len(name) + len(value) + 4 for name, value in event.headers.raw_items())
                if size > MAX_HEADER_BYTES:
                    raise HttpError(431, f"request headers over {MAX_HEADER_BYTES} bytes")
                length = _content_length(event)
                if length is not None and length > MAX_BODY_BYTES:
                    raise HttpError(413, f"the request body is over {MAX_BODY_BYTES} bytes")
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY_BYTES:
                    raise HttpError(413, f"the request body is over {MAX_BODY_BYTES} bytes")
            elif isinstance(event, h11.EndOfMessage):
                assert start is not None
                return start, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def _respond(self, start: h11.Request, body: bytes) -> Response | None:
        """Run the request's handler; None if the client hung up (the handler is cancelled)."""
        task = asyncio.create_task(self._handle(start, body))
        try:
            await self._until_done_or_hung_up(task)
            if task.done():
                return task.result()
            return None
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait([task])

    async def _handle(self, start: h11.Request, body: bytes) -> Response:
        method, target = start.method.decode("ascii"), start.target.decode("ascii")
        try:
            request = parse_request(start, body)
            handler, params = self.router.resolve(request.method, request.path)
            response = await handler(replace(request, params=params))
        except HttpError as exc:
            response = error_response(exc.status, exc.reason, exc.headers, exc.details)
        except Exception:
            log.exception("API request failed", extra={"fields": {"request": f"{method} {target}"}})
            response = error_response(500, _phrase(500))
        log.debug(
            "API request",
            extra={"fields": {"request": f"{method} {target}", "status": response.status}},
        )
        return response

    async def _until_done_or_hung_up(self, task: asyncio.Task[Response]) -> None:
        """Wait for `task`, reading meanwhile so that a client's hang-up is noticed.

        What is read is kept for h11 (pipelined next requests) while h11 holds
        less than `MAX_PIPELINED_BYTES` unparsed, over every request of the
        connection; past that, or once the client half-closed, nothing more is
        read and a hang-up is found by polling the socket instead.
        """
        while not task.done():
            unparsed, closed = self.h11.trailing_data
            if closed:
                await asyncio.wait([task])
                return
            if len(unparsed) >= MAX_PIPELINED_BYTES:
                await asyncio.wait([task], timeout=HANGUP_POLL)
                if _hung_up(self.writer):
                    return
                continue
            read = asyncio.ensure_future(self.reader.read(READ_CHUNK))
            try:
                await asyncio.wait([task, read], return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not read.done():
                    read.cancel()
                    await asyncio.wait([read])
            if read.cancelled():
                continue
            if read.exception() is not None:
                return  # the connection broke
            data = read.result()
            self.h11.receive_data(data)
            if not data and _hung_up(self.writer):
                return

    async def _send(self, response: Response) -> None:
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            *response.headers,
        ]
        data = self._encode(
            h11.Response(
                status_code=response.status, headers=headers, reason=_phrase(response.status)
            )
        )
        if not self._head:
            data += self._encode(h11.Data(data=response.body))
        data += self._encode(h11.EndOfMessage())
        self.writer.write(data)
        async with asyncio.timeout(WRITE_TIMEOUT):
            await self.writer.drain()

    def _encode(self, event: h11.Event) -> bytes:
        data = self.h11.send(event)
        assert data is not None  # None only for ConnectionClosed
        return data


def _content_length(event: h11.Request) -> int | None:
    for name, value in event.headers:
        if name == b"content-length":
            return int(value)  # h11 checked that it is digits
    return None


def _hung_up(writer: asyncio.StreamWriter) -> bool:
    """Whether the client closed its socket, not only its sending side (Linux: POLLHUP)."""
    sock = writer.get_extra_info("socket")
    if sock is None or sock.fileno() < 0:
        return True
    poller = select.poll()
    poller.register(sock.fileno(), 0)  # POLLHUP and POLLERR are always reported
    return any(events & (select.POLLHUP | select.POLLERR) for _, events in poller.poll(0))


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
