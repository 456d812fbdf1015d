"""The local API's request bodies: what a well-formed one asks for, and why a bad one is
refused (before any control sees it), with the status `nova` shows."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from novacron.agent.api import http_status
from novacron.agent.api_requests import (
    CreateRequest,
    MigrateRequest,
    create_request,
    migrate_request,
    recover_request,
    stop_timeout,
)
from novacron.agent.core.migration.policy import PolicyOverrides
from novacron.agent.core.refusals import RefusalKind, Refused
from novacron.agent.vmspec import DiskSpec, VmSpec


@pytest.mark.parametrize(
    ("body", "asked"),
    [
        ({"to": "h2"}, MigrateRequest("h2")),
        ({"to": "h2", "auto": False}, MigrateRequest("h2")),
        ({"auto": True}, MigrateRequest(None)),
        (
            {"to": "h2", "bandwidth_mib_s": 5, "post_copy": True, "max_downtime_ms": None},
            MigrateRequest("h2", PolicyOverrides(bandwidth_mib_s=5, post_copy=True)),
        ),
        (
            {"auto": True, "auto_converge": False},
            MigrateRequest(None, PolicyOverrides(auto_converge=False)),
        ),
    ],
)
def test_a_migrate_request_names_the_target_or_auto_and_the_overrides(
    body: dict[str, Any], asked: MigrateRequest
) -> None:
    assert migrate_request(body) == asked


def test_a_recover_request_names_the_host() -> None:
    assert recover_request({"on": "h1"}) == "h1"


@pytest.mark.parametrize(
    ("parse", "body", "reason"),
    [
        (migrate_request, {}, "no target host given: say where to move the VM ('to' or 'auto')"),
        (migrate_request, {"to": ""}, "no target host given"),
        (migrate_request, {"to": 7}, "no target host given"),
        (migrate_request, {"auto": False}, "no target host given"),
        (migrate_request, {"to": "h2", "speed": 1, "at": 2}, "unknown setting(s): at, speed"),
        (migrate_request, {"to": "h2", "auto": True}, "give a target host ('to') or 'auto', not"),
        (migrate_request, {"to": "", "auto": True}, "give a target host ('to') or 'auto', not"),
        (migrate_request, {"auto": "yes"}, "'auto' must be true or false, got 'yes'"),
        (migrate_request, {"auto": 1}, "'auto' must be true or false, got 1"),
        (
            migrate_request,
            {"to": "h2", "max_downtime_ms": 1.5},
            "bad policy: policy setting 'max_downtime_ms' has the wrong type: 1.5",
        ),
        (
            migrate_request,
            {"auto": True, "bandwidth_mib_s": True},
            "bad policy: policy setting 'bandwidth_mib_s' has the wrong type: True",
        ),
        (
            migrate_request,
            {"to": "h2", "post_copy": "yes"},
            "bad policy: policy setting 'post_copy' has the wrong type: 'yes'",
        ),
        (recover_request, {}, "say where the VM is to run ('on': a host id)"),
        (recover_request, {"on": ""}, "say where the VM is to run"),
        (recover_request, {"on": ["h1"]}, "say where the VM is to run"),
        (recover_request, {"on": "h1", "force": True}, "unknown setting(s): force"),
    ],
)
def test_a_bad_migrate_or_recover_request_is_refused_as_invalid(
    parse: Callable[[dict[str, Any]], object], body: dict[str, Any], reason: str
) -> None:
    with pytest.raises(Refused) as refused:
        parse(body)
    assert refused.value.kind is RefusalKind.INVALID and http_status(refused.value) == 400
    assert str(refused.value).startswith(reason)


# --- VMs on this host -----------------------------------------------------------------


def test_a_create_request_is_the_vm_spec_and_whether_to_start_it() -> None:
    body = {
        "name": "web",
        "vcpus": 2,
        "memory_mib": 256,
        "kernel": "/boot/vmlinuz",
        "cmdline": "console=ttyS0",
        "disks": [{"base": "/img/base.qcow2", "size_mib": 1024}, {"base": "/img/data.qcow2"}],
        "labels": {"tier": "front", "n": 1},
        "start": True,
    }
    disks = (DiskSpec(Path("/img/base.qcow2"), 1024), DiskSpec(Path("/img/data.qcow2"), None))
    spec = VmSpec(
        "web",
        2,
        256,
        kernel=Path("/boot/vmlinuz"),
        cmdline="console=ttyS0",
        disks=disks,
        labels={"tier": "front", "n": "1"},
    )
    assert create_request(body) == CreateRequest(spec, start=True)
    assert (
        create_request({"name": "a", "vcpus": 1, "memory_mib": 64, "disks": [{"base": "/b"}]}).start
        is False
    )


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"vcpus": 1, "memory_mib": 128}, "missing field(s): name"),
        ({"name": "a", "vcpus": 1, "memory_mib": 128, "colour": "red"}, "unknown field(s): colour"),
        ({"name": "a", "vcpus": "1", "memory_mib": 128}, "field 'vcpus' must be int"),
        ({"name": "a", "vcpus": True, "memory_mib": 128}, "field 'vcpus' must be int"),
        ({"name": "a", "vcpus": 1, "memory_mib": 128, "start": 1}, "field 'start' must be bool"),
        ({"name": "a/b", "vcpus": 0, "memory_mib": 128}, "bad spec for VM 'a/b'"),
        ({"name": "a", "vcpus": 1, "memory_mib": 128, "disks": ["x"]}, "each disk must be"),
        (
            {
                "name": "a",
                "vcpus": 1,
                "memory_mib": 128,
                "disks": [{"base": "/b", "size_mib": 1.5}],
            },
            "whole number of MiB",
        ),
    ],
)
def test_bad_create_requests_say_what_is_wrong(body: dict[str, Any], error: str) -> None:
    with pytest.raises(Refused) as refused:
        create_request(body)
    assert http_status(refused.value) == 400
    assert error in str(refused.value)


@pytest.mark.parametrize(
    ("body", "seconds"), [({}, 30.0), ({"timeout": 0}, 0.0), ({"timeout": 2.5}, 2.5)]
)
def test_a_stop_request_gives_the_guest_its_timeout(body: dict[str, Any], seconds: float) -> None:
    assert stop_timeout(body) == seconds


@pytest.mark.parametrize("timeout", [-1, "10", True, None, [3]])
def test_a_bad_stop_timeout_is_refused_as_invalid(timeout: object) -> None:
    with pytest.raises(Refused) as refused:
        stop_timeout({"timeout": timeout})
    assert refused.value.kind is RefusalKind.INVALID and http_status(refused.value) == 400
    assert str(refused.value) == f"timeout must be a number of seconds >= 0, got {timeout!r}"
