"""A coordinator operation is one trace: the API request, the command on the host that
runs it, and the migration it starts on both agents.

Real processes on loopback (libvirt's test driver): a `nova-coordinator` and a
site of two agents, all exporting to an OTLP/HTTP receiver the test runs and
decodes. libvirt's test driver cannot migrate, so the migration's job fails;
its spans still show which trace it belongs to, which is what is checked.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from novacron.simulations.federation import Api, CoordinatorProcess, Site, tls_files, wait_until
from novacron.simulations.ports import free_port
from tests import otlp_receiver

pytestmark = pytest.mark.agents  # real agent processes on loopback

CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"  # the client's context


class Traced:
    def __init__(self, root: Path, api: Api, otlp: Path) -> None:
        self.root = root
        self.api = api
        self.otlp = otlp

    def spans(self, trace_id: bytes) -> list[tuple[str, str, Any]]:
        """(service, host, span) of every span of `trace_id` received so far."""
        return [
            (resource["service.name"], resource["host.name"], span)
            for resource, span in otlp_receiver.received(self.otlp)
            if span.trace_id == trace_id
        ]


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    root = tmp_path_factory.mktemp("traced")
    port = free_port()
    receiver = otlp_receiver.start("127.0.0.1", port, root / "otlp")
    tracing = ("--tracing-otlp", f"http://127.0.0.1:{port}")
    tls = tls_files(root / "tls")
    coordinator = CoordinatorProcess(root / "coordinator", tls)
    coordinator.directory.mkdir()
    token = coordinator.admin("site", "add", "lyon")["enrollment_token"]
    admin = coordinator.admin("token", "create", "ops", "--role", "admin")["secret"]
    site = Site(root / "lyon", "lyon", ("n1", "n2"))
    try:
        coordinator.start(extra=tracing)
        api = Api(coordinator.url, admin, tls[0])
        assert site.enroll(coordinator, token)[0] == 0
        for node in site.nodes:
            site.start(node, (coordinator.url,), tls[0], extra=tracing)
        wait_until(
            "lyon's hosts at the coordinator",
            lambda: {h["node_id"] for h in api.get("/v1/hosts?site=lyon")["items"]} == {"n1", "n2"},
        )
        yield Traced(root, api, root / "otlp")
    finally:
        site.stop()
        coordinator.stop()
        receiver.kill()
        receiver.wait(timeout=30)


def _operation(traced: Traced, method: str, path: str, body: Any) -> dict[str, Any]:
    status, op, _ = traced.api.call(method, path, body, {"traceparent": CALLER})
    assert status == 202, op
    return traced.api.wait_operation(op["id"])


def _trace(traced: Traced, names: set[str]) -> dict[str, tuple[str, str, Any]]:
    """The spans of the caller's trace, by name, once every one of `names` arrived."""
    trace_id = bytes.fromhex(CALLER.split("-")[1])

    def arrived() -> dict[str, tuple[str, str, Any]] | None:
        found = {span.name: (service, host, span) for service, host, span in traced.spans(trace_id)}
        return found if names <= set(found) else None

    return wait_until(f"spans {sorted(names)} of the caller's trace", arrived)  # type: ignore[no-any-return]


def test_a_create_through_the_coordinator_is_one_trace_down_to_the_host(traced: Traced) -> None:
    (traced.root / "vmlinuz").write_bytes(b"kernel")
    body = {"name": "t1", "vcpus": 1, "memory_mib": 64, "kernel": str(traced.root / "vmlinuz")}
    done = _operation(traced, "POST", "/v1/vms", body)
    assert done["status"] == "succeeded", done

    spans = _trace(traced, {"POST /v1/vms", "site command create"})

    service, _, request = spans["POST /v1/vms"]
    assert service == "nova-coordinator"
    assert request.parent_span_id == bytes.fromhex(CALLER.split("-")[2])
    service, host, command = spans["site command create"]
    assert (service, host) == ("nova-agent", done["result"]["host"])
    assert command.parent_span_id == request.span_id


def test_a_migration_through_the_coordinator_is_one_trace_on_both_agents(
    traced: Traced,
) -> None:
    (traced.root / "vmlinuz").write_bytes(b"kernel")
    body = {"name": "t2", "vcpus": 1, "memory_mib": 64, "kernel": str(traced.root / "vmlinuz")}
    created = traced.api.wait_operation(traced.api.call("POST", "/v1/vms", body)[1]["id"])
    source = created["result"]["host"]
    target = "n2" if source == "n1" else "n1"
    _operation(traced, "POST", "/v1/vms/lyon:t2/migrate", {"to": target})

    route = "POST /v1/vms/{id}/migrate"
    spans = _trace(traced, {route, "site command migrate", "migrate t2", "reserve t2"})

    request = spans[route][2]
    service, host, command = spans["site command migrate"]
    assert (service, host) == ("nova-agent", source)
    assert command.parent_span_id == request.span_id
    _, host, migration = spans["migrate t2"]
    assert host == source and migration.parent_span_id == command.span_id
    _, host, reservation = spans["reserve t2"]
    assert host == target and reservation.parent_span_id == migration.span_id
