"""One lone client's view of the coordinator during a load: `GET /v1/status`, 20 a second.

    python -m benchmarks.latency_probe URL TOKEN SECONDS [DELAY]

Run beside the load generator by `benchmarks/coordinator_load.py`, from
DELAY seconds on (once the load is up). One blocking connection, one request
at a time, timed around the request alone: what an operator's script sees,
without the load generator's event loop in the figure (it may share the
generator's core). Prints {count, p50_ms, p90_ms, p99_ms, max_ms} as JSON.
"""

from __future__ import annotations

import http.client
import json
import sys
import time
from urllib.parse import urlsplit

from novacron.simulations.metrics import percentile, rounded

INTERVAL = 0.05  # seconds between requests


def measure(url: str, token: str, seconds: float) -> list[float]:
    """Milliseconds each request took, for `seconds`."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    headers = {"Authorization": f"Bearer {token}"}
    took = []
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        began = time.perf_counter()
        conn.request("GET", "/v1/status", headers=headers)
        answer = conn.getresponse()
        answer.read()
        took.append((time.perf_counter() - began) * 1000)
        if answer.status != 200:
            raise RuntimeError(f"GET /v1/status answered {answer.status}")
        time.sleep(INTERVAL)
    return took


def summary(took: list[float]) -> dict[str, float | None]:
    def at(fraction: float) -> float | None:
        return rounded(percentile(took, fraction), 2)

    return {"count": len(took), "p50_ms": at(0.5), "p90_ms": at(0.9), "p99_ms": at(0.99),
            "max_ms": at(1.0)}  # fmt: skip


def main() -> None:
    url, token, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    time.sleep(float(sys.argv[4]) if len(sys.argv) > 4 else 0.0)
    print(json.dumps(summary(measure(url, token, seconds))))


if __name__ == "__main__":
    main()
