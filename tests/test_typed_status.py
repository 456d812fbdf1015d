"""The parts of `nova status` that other modules hand the daemon are typed values.

The introduction port's statistics, the site link's state and the recent
membership events were dicts passed from module to module; each test here
builds the typed value from the real object and checks that its JSON is what
the old dict was: the same keys, in the same order, with the same values.
"""

from __future__ import annotations

import dataclasses
import json
import random
import ssl
from typing import Any, cast

from novacron.agent.core.events import (
    Event,
    IdentityClash,
    MemberAlive,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberRevoked,
    MemberSuspected,
    RecordRejected,
)
from novacron.agent.core.membership.node import MembershipNode
from novacron.agent.core.migration.saga import MigrationConfig
from novacron.agent.daemon_status import RecentEvent
from novacron.agent.gateway import Gateway, LinkStatus, SiteLinkStatus
from novacron.agent.identity import NodeIdentity
from novacron.agent.introduction import IntroductionServer, IntroductionStats
from novacron.agent.security import TrustStore
from novacron.agent.site_commands import SiteCommands


def same_json(value: object, expected: object) -> bool:
    """Equal as the API's bytes: keys in the same order too."""
    return json.dumps(value) == json.dumps(expected)


# --- the introduction port -------------------------------------------------------------------


def _server() -> IntroductionServer:
    """A server never started: its counters are all `stats` reads."""
    return IntroductionServer(b"", cast(TrustStore, None), "127.0.0.1", 0, clock=lambda: 0.0)


def _old_stats(server: IntroductionServer) -> dict[str, Any]:
    """What `IntroductionServer.stats` returned when it was a dict."""
    return {
        "open": server._gate.open,
        "introduced": server.introduced,
        "checked": server.checked,
        "refused": dict(sorted(server._tally.total.items())),
    }


def test_the_introduction_ports_statistics_are_typed_and_their_json_is_the_old_dict() -> None:
    server = _server()
    assert same_json(server.stats().to_json(), _old_stats(server))
    server.introduced, server.checked = 4, 3
    server._tally.total.update({"busy": 2, "bad-signature": 1})
    stats = server.stats()
    assert stats == IntroductionStats(0, 4, 3, {"bad-signature": 1, "busy": 2})
    assert list(stats.refused) == ["bad-signature", "busy"]  # sorted, as the dict was
    assert same_json(stats.to_json(), _old_stats(server))


# --- the site link ---------------------------------------------------------------------------


def _gateway() -> Gateway:
    """A gateway that never runs: its status and stream are all `link_status` reads."""
    return Gateway(
        ("wss://coordinator.example:8443",),
        cast(ssl.SSLContext, None),
        identity=lambda: cast(NodeIdentity, None),
        core=lambda: cast(MembershipNode, None),
        revocations=lambda: b"",
        commands=cast(SiteCommands, None),
        migration=MigrationConfig(),
        rng=random.Random(7),
    )


def _old_link(gateway: Gateway) -> dict[str, Any]:
    """What `Gateway.as_dict` returned."""
    return {
        **gateway.status.__dict__,
        "stream": gateway._stream.stream,
        "unacknowledged": gateway._stream.unacked,
    }


def test_the_site_links_status_is_typed_and_its_json_is_the_old_dict() -> None:
    gateway = _gateway()
    assert same_json(gateway.link_status().to_json(), _old_link(gateway))
    gateway.status.gateway, gateway.status.connected = "h1", True
    gateway.status.coordinator, gateway.status.site = "wss://coordinator.example:8443", "lyon"
    gateway.status.last_error, gateway.status.attempts = "refused", 3
    gateway.status.commands_run = 2
    status = gateway.link_status()
    assert status.link.site == "lyon" and status.unacknowledged == 0
    assert same_json(status.to_json(), _old_link(gateway))


def test_the_site_links_status_is_a_copy_the_link_goes_on_without() -> None:
    gateway = _gateway()
    status = gateway.link_status()
    gateway.status.attempts = 9
    assert status.link.attempts == 0
    assert status == SiteLinkStatus(LinkStatus(), gateway._stream.stream, 0)


# --- recent membership events ----------------------------------------------------------------

AT = 1_700_000_000.123456
EVENTS: list[Event] = [
    MemberJoined("h2", 1, "198.18.0.2:7946"),
    MemberAlive("h2", 2),
    MemberSuspected("h3", 4, "h1"),
    MemberFailed("h3", 4, "h2"),
    MemberLeft("h4", 7),
    MemberRevoked("mallory"),
    IdentityClash("h5", ("198.18.0.5:7946", "198.18.0.6:7946"), None),
    IdentityClash("h1", ("198.18.0.1:7946",), 1_700_000_000.5),
    RecordRejected("h6", 12, "stale"),
]


def _old_event(event: Event, at: float) -> dict[str, Any]:
    """What `Agent._log_event` kept for `nova status` when events were dicts."""
    kind = type(event).__name__
    fields = {k: v for k, v in dataclasses.asdict(event).items() if k != "record"}
    return {"event": kind, "at": round(at, 3), **fields}


def test_recent_events_are_the_cores_events_and_their_json_is_the_old_dicts() -> None:
    for event in EVENTS:
        recent = RecentEvent(event, AT)
        assert recent.event is event
        assert same_json(recent.to_json(), _old_event(event, AT)), event
