"""Schemathesis against the coordinator's served OpenAPI document: no 5xx, no answer that
violates the document, bad input refused, whatever the generated request.

A real `nova-coordinator` process on loopback (on SQLite, then on the suite's
PostgreSQL), with an admin token:
every operation of the document gets generated requests, valid and invalid,
and every answer is checked against the document (status codes, content
types, schemas, headers).
"""

from __future__ import annotations

import os
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import positive_data_acceptance

from novacron.simulations.federation import BIN, wait_until
from novacron.simulations.ports import free_port

from .agent_process import notifications
from .fuzzing import FULL

EXAMPLES = 15 if FULL else 8  # generated requests per operation (bounded: make test's time)


class Plain:
    """The coordinator over plain HTTP on loopback (TLS is the federation tests' business)."""

    def __init__(self, directory: Path, database: str) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [str(BIN / "nova-coordinator"), "--data-dir", str(directory)]
        if database:
            self.command += ["--database", database]

    def admin(self, *args: str) -> str:
        out = subprocess.run(
            [*self.command, *args], capture_output=True, text=True, timeout=60, check=True
        )
        return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def notify(tmp_path_factory: pytest.TempPathFactory) -> Iterator[socket.socket]:
    """A NOTIFY_SOCKET as systemd gives a Type=notify service."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path_factory.mktemp("systemd") / "notify.sock"))
        sock.settimeout(30)
        yield sock


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def coordinator(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    notify: socket.socket,
) -> Iterator[tuple[str, str]]:
    database = ""
    if request.param == "postgresql":
        database = request.getfixturevalue("postgres").database()
    plain = Plain(tmp_path_factory.mktemp("fuzzed"), database)
    token = plain.admin("token", "create", "fuzzer", "--role", "admin")
    plain.admin("site", "add", "lyon")
    log = open(plain.directory / "log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [*plain.command, "serve", "--listen", f"127.0.0.1:{plain.port}", "--rate", "0"],
        stdout=log, stderr=log, env={**os.environ, "NOTIFY_SOCKET": notify.getsockname()},
    )  # fmt: skip
    try:
        wait_until("the coordinator", lambda: _answers(plain.url), 30)
        yield plain.url, token
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        assert b"Traceback" not in (plain.directory / "log").read_bytes()


def test_the_coordinator_tells_systemd_it_is_ready_once_it_serves(
    coordinator: tuple[str, str], notify: socket.socket
) -> None:
    """What the unit's Type=notify waits for (systemd/novacron-coordinator.service)."""
    assert "READY=1" in notifications(notify, "READY=1")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/v1/openapi.json", timeout=2) as answer:
            return answer.status == 200  # type: ignore[no-any-return]
    except OSError:
        return False


def test_every_operation_answers_as_its_document_says(coordinator: tuple[str, str]) -> None:
    """Each operation of the served document, with generated requests (valid and not)."""
    url, token = coordinator
    schema = schemathesis.openapi.from_url(url + "/v1/openapi.json")
    headers = {"Authorization": f"Bearer {token}"}
    tried = 0
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the served document has a broken operation: {result}"
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def check(case: schemathesis.Case[Any]) -> None:
            if isinstance(case.query, dict) and isinstance(case.query.get("wait"), str):
                case.query["wait"] = "50ms"  # held requests would only make the run slow
            if isinstance(case.query, dict) and isinstance(case.query.get("timeout"), int | float):
                case.query["timeout"] = min(case.query["timeout"], 0.05)
            # Every check but "a schema-valid request is accepted": a well-formed request may
            # still name a site that does not exist (404), conflict (409) or carry a cursor
            # this API never gave out (400), and refusing those is right.
            case.call_and_validate(
                base_url=url, headers=headers, excluded_checks=[positive_data_acceptance]
            )

        check()
        tried += 1
    assert tried == sum(
        1 for item in schema.raw_schema["paths"].values() for m in item if m != "parameters"
    )
