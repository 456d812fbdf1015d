"""The coordinator's traces: one span per API request, out over OTLP/HTTP.

Off unless `serve --tracing-otlp URL` names a collector. A request joins the
trace of its `traceparent` header (or starts one); a command it gives a site
carries the request span's context over the site link (`Command.traceparent`),
so the span of the command on the host that runs it, and a migration it
starts on both agents, are that request's children: one operation, one
trace, from the API to the hypervisors. The spans and the OTLP encoding are
the agent's (`core.observability.tracing`, `otlp`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from novacron.agent.core.observability.tracing import (
    Span,
    SpanKind,
    format_traceparent,
    parse_traceparent,
    start_span,
)
from novacron.agent.otlp import OtlpExporter

TRACEPARENT: web.RequestKey[str] = web.RequestKey("traceparent")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RequestTracing:
    def __init__(
        self,
        exporter: OtlpExporter,
        wall_ns: Callable[[], int] = time.time_ns,
        rng: random.Random | None = None,
    ) -> None:
        self.exporter = exporter
        self._wall_ns = wall_ns
        self._rng = rng or random.SystemRandom()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """A SERVER span around the request; its context is `request[TRACEPARENT]`."""
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unrouted"
        parent = parse_traceparent(request.headers.get("traceparent"))
        span = start_span(
            f"{request.method} {route}", SpanKind.SERVER, self._wall_ns(), parent, self._rng
        )
        span.attributes = {"http.request.method": request.method, "http.route": route}
        request[TRACEPARENT] = format_traceparent(span.context)
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            self._end(span, status)

    def _end(self, span: Span, status: int) -> None:
        span.end_ns = self._wall_ns()
        span.attributes["http.response.status_code"] = status
        span.error = f"HTTP {status}" if status >= 500 else None
        self.exporter.add([span])


def traceparent_of(request: web.Request) -> str:
    """The context a command given by `request` carries to its site ("" when untraced)."""
    return str(request.get(TRACEPARENT, ""))
