"""The local API's request bodies: what a well-formed one asks for, and why a bad one is
refused (before any control sees it), with the status `nova` shows."""

from __future__ import annotations

from typing import Any

import pytest

from novacron.agent.api import http_status
from novacron.agent.api_requests import MigrateRequest, migrate_request, recover_request
from novacron.agent.core.refusals import RefusalKind, Refused


@pytest.mark.parametrize(
    ("body", "asked"),
    [
        ({"to": "h2"}, MigrateRequest("h2")),
        ({"to": "h2", "auto": False}, MigrateRequest("h2")),
        ({"auto": True}, MigrateRequest(None)),
        (
            {"to": "h2", "bandwidth_mib_s": 5, "post_copy": True, "max_downtime_ms": None},
            MigrateRequest("h2", {"bandwidth_mib_s": 5, "post_copy": True}),
        ),
        ({"auto": True, "auto_converge": False}, MigrateRequest(None, {"auto_converge": False})),
    ],
)
def test_a_migrate_request_names_the_target_or_auto_and_the_overrides(
    body: dict[str, Any], asked: MigrateRequest
) -> None:
    assert migrate_request(body) == asked


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({}, "no target host given: say where to move the VM ('to' or 'auto')"),
        ({"to": ""}, "no target host given"),
        ({"to": 7}, "no target host given"),
        ({"auto": False}, "no target host given"),
        ({"to": "h2", "speed": 1, "at": 2}, "unknown setting(s): at, speed"),
        ({"to": "h2", "auto": True}, "give a target host ('to') or 'auto', not both"),
        ({"to": "", "auto": True}, "give a target host ('to') or 'auto', not both"),
        ({"auto": "yes"}, "'auto' must be true or false, got 'yes'"),
        ({"auto": 1}, "'auto' must be true or false, got 1"),
    ],
)
def test_a_bad_migrate_request_is_refused_as_invalid(body: dict[str, Any], reason: str) -> None:
    with pytest.raises(Refused) as refused:
        migrate_request(body)
    assert refused.value.kind is RefusalKind.INVALID and http_status(refused.value) == 400
    assert str(refused.value).startswith(reason)


def test_a_recover_request_names_the_host() -> None:
    assert recover_request({"on": "h1"}) == "h1"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({}, "say where the VM is to run ('on': a host id)"),
        ({"on": ""}, "say where the VM is to run"),
        ({"on": ["h1"]}, "say where the VM is to run"),
        ({"on": "h1", "force": True}, "unknown setting(s): force"),
    ],
)
def test_a_bad_recover_request_is_refused_as_invalid(body: dict[str, Any], reason: str) -> None:
    with pytest.raises(Refused) as refused:
        recover_request(body)
    assert refused.value.kind is RefusalKind.INVALID and http_status(refused.value) == 400
    assert str(refused.value).startswith(reason)
