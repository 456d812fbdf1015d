"""A real Prometheus (Debian's `prometheus`) and `promtool`, for the observability tests.

`PrometheusServer` starts the server on loopback with a scrape configuration the
test writes, answers PromQL through its HTTP API, and stops it (by its own pid)
afterwards. A missing program fails the test with the package to install: no
test here skips.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "observability" / "prometheus" / "rules.yml"
GRAFANA = ROOT / "observability" / "grafana"
MISSING = "install Debian package prometheus (sh scripts/install-system-deps.sh)"


def program(name: str) -> str:
    """The path of `name` (promtool, prometheus), or the test fails saying what to install."""
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: {MISSING}", pytrace=False)
    return found


def promtool(*args: str, stdin: bytes | None = None, cwd: Path | None = None) -> str:
    """Run promtool; its output, or the test fails with it."""
    done = subprocess.run(
        [program("promtool"), *args], input=stdin, capture_output=True, cwd=cwd, timeout=60
    )
    output = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def dashboard_queries() -> list[str]:
    """Every PromQL expression of every checked-in dashboard."""
    return [
        target["expr"]
        for path in sorted(GRAFANA.glob("*.json"))
        for panel in json.loads(path.read_text())["panels"]
        for target in panel.get("targets", [])
    ]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str, bytes]:
    """(status, content type, body) of a GET, errors included."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status, answer.headers.get("Content-Type", ""), answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


class PrometheusServer:
    """One Prometheus process on 127.0.0.1, scraping `targets` (agents) every second and,
    with a bearer token, `coordinators` as docs/metrics.md says to."""

    def __init__(
        self,
        directory: Path,
        targets: Sequence[str],
        coordinators: Sequence[str] = (),
        token: str = "",
    ) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        jobs: list[dict[str, Any]] = [
            {
                "job_name": "novacron-agent",
                "scrape_timeout": "1s",
                "static_configs": [{"targets": list(targets)}],
            }
        ]
        if coordinators:
            token_file = directory / "coordinator.token"
            token_file.write_text(token)
            jobs.append(
                {
                    "job_name": "novacron-coordinator",
                    "scrape_timeout": "1s",
                    "authorization": {"credentials_file": str(token_file)},
                    "static_configs": [{"targets": list(coordinators)}],
                }
            )
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": jobs,
        }
        self.config_file = directory / "prometheus.yml"
        self.config_file.write_text(yaml.safe_dump(config))
        self.log_file = directory / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [
            program("prometheus"),
            f"--config.file={self.config_file}",
            f"--storage.tsdb.path={self.directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=1h",
        ]
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self.wait_for(lambda: http_get(f"{self.url}/-/ready", 2)[0] == 200, 30, "ready")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def api(self, path: str, **params: str) -> Any:
        """The `data` of a successful API answer (the test fails on an error answer)."""
        query = urllib.parse.urlencode(params)
        status, _, body = http_get(f"{self.url}/api/v1/{path}?{query}")
        answer = json.loads(body)
        assert status == 200 and answer["status"] == "success", f"{path} {params}: {answer}"
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's vector: [{"metric": {...}, "value": [time, "text"]}, ...]."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", f"{expr}: {data['resultType']}"
        return list(data["result"])

    def values(self, expr: str) -> dict[str, float]:
        """An instant query's values, keyed by each series' labels in text (but its name)."""
        return {
            ",".join(
                f"{k}={v}" for k, v in sorted(row["metric"].items()) if k != "__name__"
            ): float(row["value"][1])
            for row in self.query(expr)
        }

    def wait_for(self, condition: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited:\n{self.log_file.read_text()[-3000:]}")
            try:
                if condition():
                    return
            except (OSError, AssertionError) as exc:
                last = exc  # not up yet, or no answer yet
            time.sleep(0.2)
        raise AssertionError(f"prometheus: not {what} within {timeout} s (last: {last})")


@contextmanager
def running_prometheus(
    directory: Path, targets: Sequence[str], coordinators: Sequence[str] = (), token: str = ""
) -> Iterator[PrometheusServer]:
    server = PrometheusServer(directory, targets, coordinators, token)
    try:
        server.start()
        yield server
    finally:
        server.stop()
