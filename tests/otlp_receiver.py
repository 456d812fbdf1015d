"""An OTLP/HTTP trace receiver for the tests, and a reader of what it received.

No collector is installable here, so the tests receive spans themselves: run as
`python tests/otlp_receiver.py ADDRESS PORT DIRECTORY` (in a lab host, or on
loopback with `start`), it answers every POST with 200 and keeps each body
as a file; `received` decodes those files with OpenTelemetry's own generated
classes.
"""

from __future__ import annotations

import http.server
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__)


def serve(address: str, port: int, out: Path) -> None:
    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            (out / f"{len(list(out.iterdir())):06d}.pb").write_bytes(body)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    http.server.HTTPServer((address, port), Receiver).serve_forever()


def start(
    address: str,
    port: int,
    out: Path,
    popen: Callable[..., subprocess.Popen[bytes]] = subprocess.Popen,
) -> subprocess.Popen[bytes]:
    """The receiver as a process (`popen`: a lab host's, to run it inside the host)."""
    out.mkdir(parents=True, exist_ok=True)
    return popen([sys.executable, str(HERE), address, str(port), str(out)])


def received(out: Path) -> list[tuple[dict[str, str], Any]]:
    """Every span received so far: (its resource's attributes, the span)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    found = []
    for path in sorted(out.glob("*.pb")):
        request = ExportTraceServiceRequest()
        request.ParseFromString(path.read_bytes())
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                found += [(attributes, span) for span in scope_spans.spans]
    return found


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))
