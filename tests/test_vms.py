"""VM lifecycle through the local API (`agent/vms.py`, `agent/api.py`), on libvirt's test driver.

The test driver defines, starts, stops and deletes domains in memory, so the
request handling, the refusals and the HTTP answers are checked in
milliseconds. Real QEMU guests go through the same code in
tests/test_vm_control_lab.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from novacron.agent.api import ApiServer
from novacron.agent.hypervisor import Hypervisor
from novacron.agent.vms import VmControl
from tests.api_client import call
from tests.fake_mesh import NoView


class Host:
    """What VmControl asks of the daemon, settable by the tests."""

    def __init__(self) -> None:
        self.draining = False
        self.migrating: set[str] = set()
        self.free_mib: int | None = 4096


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "vmlinuz").write_bytes(b"kernel")
    (tmp_path / "initrd").write_bytes(b"initrd")
    return {"kernel": str(tmp_path / "vmlinuz"), "initrd": str(tmp_path / "initrd")}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[str, Host]]:
    """(the API's socket, the host's settable state): the real server on a unix socket."""
    host = Host()
    hypervisor = Hypervisor(
        "test:///default", domain_type="qemu", disk_dir=tmp_path / "disks", console_dir=tmp_path
    )
    vms = VmControl(
        hypervisor,
        "h1",
        draining=lambda: host.draining,
        migrating=lambda name: name in host.migrating,
        free_memory_mib=lambda: host.free_mib,
    )
    server = ApiServer(NoView(), str(tmp_path / "api.sock"), vms=vms)
    await server.start()
    yield str(server.socket_path), host
    await server.close()
    await hypervisor.close()


async def test_create_start_stop_delete(api: tuple[str, Host], files: dict[str, str]) -> None:
    http, _ = api
    body = {"name": "vm1", "vcpus": 1, "memory_mib": 128, **files, "labels": {"team": "edge"}}
    status, created = await call(http, "POST", "/v1/vms", json=body)
    assert (status, created["name"], created["started"], created["host"]) == (
        201,
        "vm1",
        False,
        "h1",
    )
    status, other = await call(http, "POST", "/v1/vms", json={**body, "name": "vm2"})
    assert status == 201 and other["uuid"] != created["uuid"]
    status, again = await call(http, "POST", "/v1/vms", json=body)
    assert status == 409 and "already exists" in again["error"]
    assert await call(http, "POST", "/v1/vms/vm1/start") == (
        200,
        {"name": "vm1", "started": True, "host": "h1"},
    )
    status, refused = await call(http, "DELETE", "/v1/vms/vm1")
    assert (status, refused["error"]) == (
        409,
        "VM vm1 is running: stop it first, or delete it with --force (?force=1 over HTTP)",
    )
    status, stopped = await call(http, "POST", "/v1/vms/vm1/stop", json={"timeout": 1})
    assert (status, stopped["stopped"]) == (200, "graceful")
    assert await call(http, "DELETE", "/v1/vms/vm1") == (
        200,
        {"name": "vm1", "deleted": True, "removed": []},
    )
    status, gone = await call(http, "POST", "/v1/vms/vm1/start")
    assert status == 404 and "unknown VM" in gone["error"]
    assert (await call(http, "DELETE", "/v1/vms/vm2?force=1"))[0] == 200


async def test_refusals_change_nothing(api: tuple[str, Host], files: dict[str, str]) -> None:
    http, host = api
    body = {"name": "vm3", "vcpus": 1, "memory_mib": 128, **files, "start": True}
    host.draining = True
    status, answer = await call(http, "POST", "/v1/vms", json=body)
    assert (status, answer["error"]) == (409, "host draining: h1 takes no new VMs")
    host.draining = False
    host.free_mib = 100
    status, answer = await call(http, "POST", "/v1/vms", json=body)
    assert (status, answer["error"]) == (409, "no capacity: h1 has 100 MiB free, 128 MiB needed")
    host.free_mib = 4096
    status, answer = await call(http, "POST", "/v1/vms/vm3/start")
    assert status == 404  # none of the refused creates defined it
    status, answer = await call(http, "POST", "/v1/vms", json=body)
    assert (status, answer["started"]) == (201, True)
    host.migrating.add("vm3")
    for method, path in (("POST", "/v1/vms/vm3/stop"), ("DELETE", "/v1/vms/vm3?force=1")):
        status, answer = await call(http, method, path)
        assert status == 409 and "is migrating" in answer["error"]
    host.migrating.clear()
    status, answer = await call(http, "POST", "/v1/vms/vm3/stop", json={"timeout": -1})
    assert status == 400 and "timeout" in answer["error"]
    assert (await call(http, "DELETE", "/v1/vms/vm3?force=1"))[0] == 200


async def test_a_create_with_missing_files_is_refused(
    api: tuple[str, Host],
) -> None:
    http, _ = api
    body = {"name": "vm4", "vcpus": 1, "memory_mib": 128, "kernel": "/nonexistent/vmlinuz"}
    status, answer = await call(http, "POST", "/v1/vms", json=body)
    assert status == 400 and "/nonexistent/vmlinuz" in answer["error"]
