"""The agent's views and rebalancing answers are typed inside the agent and JSON at the API.

Each test builds a typed answer, checks its fields, and checks that what the
API sends is byte for byte what the agent sent when these answers were dicts:
the same keys, in the same order, with the same values.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from novacron.agent.claims import ClaimVerdict
from novacron.agent.core.events import IdentityClash, MemberFailed, MemberJoined
from novacron.agent.core.membership.members import MemberInfo
from novacron.agent.core.membership.stats import NodeStats
from novacron.agent.core.placement.targets import libvirt_down
from novacron.agent.core.rebalancing.planner import Decision, Move
from novacron.agent.daemon_status import (
    CertificateStatus,
    DaemonStatus,
    RecentEvent,
    RevocationsPublished,
    TemplatesStatus,
)
from novacron.agent.event_stream import StreamStatus
from novacron.agent.gateway import LinkStatus, SiteLinkStatus
from novacron.agent.introduction import IntroductionStats
from novacron.agent.mesh_pull import PullStatus
from novacron.agent.otlp import ExporterStatus
from novacron.agent.rebalancer import MoveRow, RebalancePlan, RebalanceStatus, StartedMove
from novacron.agent.transport import TransportStats
from novacron.agent.view import Conflict, HostView, MemberRow, MeshStatus, MeshView, VmRow
from novacron.protocol.messages import (
    MemberState,
    NodeRecord,
    RebalanceSetting,
    Resources,
    VmSummary,
)
from tests.api_server import raw_answer, serve_api

WALL = 1_700_000_000.123456


def _bytes(old: object) -> bytes:
    """What the API sent for `old`, the dict an answer was before it was typed."""
    return json.dumps(old).encode()


# --- rebalancing ------------------------------------------------------------------------------

HOT = "h1 at 0.75 > mean 0.25 + 0.15"
FIRST = Move("vm0", "h1", "h2", 0.123456789, 2048.04, f"{HOT}: affinity group web", ("vm1",))
SECOND = Move("vm2", "h1", "h3", 0.05, 512.0, HOT)
STOPPED = Decision(None, "balanced: 0.25 within 0.15 of mean 0.25", 0.250000001, 0.2500004)
MOVED = Decision(SECOND, HOT, 0.74999999, 0.25)

FIRST_JSON = {  # `dataclasses.asdict` of the planner's move, as it was sent
    "vm": "vm0",
    "source": "h1",
    "target": "h2",
    "benefit": 0.123456789,
    "cost": 2048.04,
    "reason": f"{HOT}: affinity group web",
    "group": ["vm1"],
    "rejoin": False,
}
SECOND_JSON = {
    "vm": "vm2",
    "source": "h1",
    "target": "h3",
    "benefit": 0.05,
    "cost": 512.0,
    "reason": HOT,
    "group": [],
    "rejoin": False,
}
STOPPED_JSON = {  # `_decision_dict` as it was
    "move": None,
    "reason": "balanced: 0.25 within 0.15 of mean 0.25",
    "utilization": 0.25,
    "mean": 0.25,
}

STARTED = StartedMove("m1", "vm0", "h1", "h2", FIRST.reason, FIRST.benefit, FIRST.cost, WALL)
STARTED_JSON = {  # what `Rebalancer.round` kept, rounded as it was kept
    "migration_id": "m1",
    "vm": "vm0",
    "source": "h1",
    "target": "h2",
    "reason": f"{HOT}: affinity group web",
    "benefit": 0.123457,
    "cost_mib": 2048.0,
    "wall_time": 1_700_000_000.123,
}
STATUS = RebalanceStatus(
    "h1",
    True,
    RebalanceSetting(paused=True, since=WALL),
    STOPPED,
    (MoveRow(STARTED, "aborted", "cancelled by the operator"), MoveRow(STARTED, "running", "")),
)
STATUS_JSON = {  # as `Rebalancer.status` wrote it when it was a dict
    "node_id": "h1",
    "enabled": True,
    "paused": True,
    "setting": "paused@1700000000.123",
    "last_decision": STOPPED_JSON,
    "moves": [
        {**STARTED_JSON, "outcome": "aborted", "outcome_reason": "cancelled by the operator"},
        {**STARTED_JSON, "outcome": "running", "outcome_reason": ""},
    ],
}


def test_a_rebalance_status_is_typed_and_its_json_is_the_old_dict() -> None:
    assert STATUS.paused and STATUS.setting.since == WALL
    assert STATUS.last_decision is STOPPED
    assert [(row.move.vm, row.outcome) for row in STATUS.moves] == [
        ("vm0", "aborted"),
        ("vm0", "running"),
    ]
    assert STARTED.benefit == 0.123456789  # exact inside; rounded only in its JSON
    assert json.dumps(STARTED.to_json()) == json.dumps(STARTED_JSON)
    assert json.dumps(STATUS.to_json()) == json.dumps(STATUS_JSON)
    fresh = RebalanceStatus("h1", False, RebalanceSetting(), None)
    assert json.dumps(fresh.to_json()) == json.dumps(
        {
            "node_id": "h1",
            "enabled": False,
            "paused": False,
            "setting": "active@0.000",
            "last_decision": None,
            "moves": [],
        }
    )


def test_a_plan_with_moves_is_explained_by_its_first_move() -> None:
    plan = RebalancePlan(MOVED, (FIRST, SECOND))
    assert (plan.move, plan.reason) == (FIRST, FIRST.reason)
    assert plan.decision.utilization == 0.74999999
    # `preview` wrote the last decision, its moves, then the first move over the decision's.
    before = {"move": SECOND_JSON, "reason": HOT, "utilization": 0.75, "mean": 0.25}
    before["moves"] = [FIRST_JSON, SECOND_JSON]
    before["move"], before["reason"] = FIRST_JSON, FIRST.reason
    assert json.dumps(plan.to_json()) == json.dumps(before)


def test_a_plan_without_moves_says_why_not() -> None:
    plan = RebalancePlan(STOPPED)
    assert (plan.move, plan.reason, plan.moves) == (None, STOPPED.reason, ())
    assert json.dumps(plan.to_json()) == json.dumps({**STOPPED_JSON, "moves": []})


class _Rebalance:
    """A rebalancer whose answers are fixed: `STATUS`, and a plan of two moves."""

    def status(self) -> RebalanceStatus:
        return STATUS

    def preview(self) -> RebalancePlan:
        return RebalancePlan(MOVED, (FIRST, SECOND))

    async def pause(self) -> RebalanceStatus:
        return STATUS

    async def resume(self) -> RebalanceStatus:
        return RebalanceStatus("h1", True, RebalanceSetting(False, WALL + 1), STOPPED)


async def test_the_api_sends_rebalancings_json_byte_for_byte_as_before(tmp_path: Path) -> None:
    sock, server = await serve_api(tmp_path, rebalance=_Rebalance())
    try:
        assert await raw_answer(sock, "GET", "/v1/rebalance") == (200, _bytes(STATUS_JSON))
        assert await raw_answer(sock, "POST", "/v1/rebalance/pause") == (200, _bytes(STATUS_JSON))
        resumed = {
            **STATUS_JSON,
            "paused": False,
            "setting": "active@1700000001.123",
            "moves": [],
        }
        assert await raw_answer(sock, "POST", "/v1/rebalance/resume") == (200, _bytes(resumed))
        plan = {"move": FIRST_JSON, "reason": FIRST.reason, "utilization": 0.75, "mean": 0.25}
        plan["moves"] = [FIRST_JSON, SECOND_JSON]
        assert await raw_answer(sock, "GET", "/v1/rebalance/plan") == (200, _bytes(plan))
    finally:
        await server.close()


@pytest.mark.parametrize("answer", [STATUS, RebalancePlan(STOPPED), STARTED, STATUS.moves[0]])
def test_rebalancing_answers_are_frozen_values(answer: object) -> None:
    first = dataclasses.fields(answer)[0].name  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(answer, first, None)
    assert not hasattr(answer, "__dict__")  # slotted


# --- the mesh view ----------------------------------------------------------------------------

NOW = 1000.0
WEB = VmSummary("web", "u-web", "running", 2, 1024, 0.4567, labels={"tier": "front"})
DB = VmSummary("db", "u-db", "paused", 4, 4096, 1.0)
RECORDS = {
    "h1": NodeRecord(
        "h1",
        7,
        capacity=Resources(vcpus=8, memory_mib=16384, disk_gib=100),
        vms=(WEB, DB),
        load=0.5,
        addresses=("198.18.0.1", "fd00::1"),
    ),
    "h2": NodeRecord("h2", 3, vms=(WEB,), libvirt_unreachable_since=1_796_292_000.0),
    "h9": NodeRecord("h9", 1),  # a record whose host this agent does not know as a member
}
MEMBERS = [
    MemberInfo("h2", "198.18.0.2:7946", 4, MemberState.SUSPECT, NOW - 2.0004, NOW - 3.12345),
    MemberInfo("h1", "198.18.0.1:7946", 2, MemberState.ALIVE, NOW - 60.0, NOW),
    MemberInfo("h3", "198.18.0.3:7946", 1, MemberState.DEAD, NOW + 1, NOW - 90),  # clock step
]
VERDICTS = {"web": ClaimVerdict("web", ("h1",), {"h2": "h2's libvirt: not defined"}, (), 0.0)}


class _Core:
    """The membership core's reads `MeshView` makes: h1 is this host."""

    node_id, address, incarnation, awareness = "h1", "198.18.0.1:7946", 2, 1

    def __init__(self) -> None:
        self.stats = NodeStats(messages_received=5)

    def members(self) -> list[MemberInfo]:
        return MEMBERS

    def member(self, node_id: str) -> MemberInfo | None:
        return next((m for m in MEMBERS if m.node_id == node_id), None)

    def records(self) -> Mapping[str, NodeRecord]:
        return RECORDS

    def record_version(self, node_id: str) -> int:
        return RECORDS[node_id].version

    def pending_gossip(self) -> int:
        return 3


def _mesh() -> MeshView:
    return MeshView(
        lambda: _Core(),  # type: ignore[arg-type,return-value]
        lambda: NOW,
        _daemon,
        lambda: VERDICTS,
        lambda: {"h3": "revoked"},
    )


# What `MeshView` answered when its answers were dicts: its old code, kept here to compare.


def _old_status(core: _Core) -> dict[str, Any]:
    counts = {state.value: 0 for state in MemberState}
    for member in core.members():
        counts[member.state.value] += 1
    return {
        "node_id": core.node_id,
        "address": core.address,
        "incarnation": core.incarnation,
        "awareness": core.awareness,
        "members": counts,
        "record_version": core.record_version(core.node_id),
        "records": len(core.records()),
        "gossip_queued": core.pending_gossip(),
        "stats": core.stats.as_dict(),
        **DAEMON_JSON,
    }


def _old_members(core: _Core) -> list[dict[str, Any]]:
    rows = []
    for member in sorted(core.members(), key=lambda m: m.node_id):
        record = core.records().get(member.node_id)
        rows.append(
            {
                "node_id": member.node_id,
                "address": member.address,
                "state": member.state.value,
                "incarnation": member.incarnation,
                "load": record.load if record is not None else None,
                "last_heard_s": None
                if member.node_id == core.node_id
                else round(max(0.0, NOW - member.last_heard), 3),
                "state_for_s": round(max(0.0, NOW - member.state_since), 3),
                "self": member.node_id == core.node_id,
                "note": {"h3": "revoked"}.get(member.node_id),
            }
        )
    return rows


def _old_host(core: _Core, node_id: str) -> dict[str, Any]:
    member = core.member(node_id)
    record = core.records().get(node_id)
    data = dataclasses.asdict(record) if record is not None else None
    if data is not None and record is not None:
        data["addresses"] = list(record.addresses)
    return {
        "node_id": node_id,
        "state": member.state.value if member is not None else None,
        "incarnation": member.incarnation if member is not None else None,
        "address": member.address if member is not None else None,
        "record": data,
    }


def _old_vms(core: _Core) -> list[dict[str, Any]]:
    rows = []
    for host_id, record in sorted(core.records().items()):
        member = core.member(host_id)
        for vm in record.vms:
            rows.append(
                {
                    "name": vm.name,
                    "uuid": vm.uuid,
                    "state": vm.state,
                    "host": host_id,
                    "host_state": member.state.value if member is not None else "unknown",
                    "vcpus": vm.vcpus,
                    "memory_mib": vm.memory_mib,
                    "cpu_load": vm.cpu_load,
                    "libvirt_unreachable_since": libvirt_down(record),
                }
            )
    return sorted(rows, key=lambda row: (row["name"], row["host"]))


def _old_vms_and_conflicts(core: _Core) -> dict[str, Any]:
    vms, conflicts = [], []
    for row in _old_vms(core):
        verdict = VERDICTS.get(row["name"])
        why = verdict.denied.get(row["host"]) if verdict is not None else None
        if why and verdict is not None:
            conflicts.append({**row, "why": why, "runs_on": list(verdict.runs_on)})
        else:
            vms.append(row)
    return {"vms": vms, "conflicts": conflicts}


def test_the_mesh_status_is_typed_and_its_json_is_the_old_dict() -> None:
    status = _mesh().status()
    assert isinstance(status, MeshStatus)
    assert (status.node_id, status.record_version, status.records) == ("h1", 7, 3)
    assert status.members == {"alive": 1, "suspect": 1, "dead": 1, "left": 0}
    assert status.stats["messages_received"] == 5 and status.daemon == _daemon()
    assert json.dumps(status.to_json()) == json.dumps(_old_status(_Core()))


def test_members_are_typed_rows_and_their_json_is_the_old_dicts() -> None:
    rows = _mesh().members()
    assert [(r.node_id, r.state, r.is_self, r.note) for r in rows] == [
        ("h1", MemberState.ALIVE, True, None),
        ("h2", MemberState.SUSPECT, False, None),
        ("h3", MemberState.DEAD, False, "revoked"),
    ]
    assert rows[0].last_heard_s is None and rows[1].last_heard_s == pytest.approx(3.12345)
    assert rows[2].state_for_s == 0.0 and rows[2].load is None  # no record of h3
    assert all(isinstance(r, MemberRow) for r in rows)
    assert json.dumps([r.to_json() for r in rows]) == json.dumps(_old_members(_Core()))


@pytest.mark.parametrize("node_id", ["h1", "h2", "h3", "h9"])
def test_a_host_is_typed_and_its_json_is_the_old_dict(node_id: str) -> None:
    host = _mesh().host(node_id)
    assert isinstance(host, HostView) and host.node_id == node_id
    assert host.record is RECORDS.get(node_id)
    assert (host.state is None) == (node_id == "h9")
    assert json.dumps(host.to_json()) == json.dumps(_old_host(_Core(), node_id))


def test_this_host_is_the_host_without_a_name_and_an_unknown_one_is_none() -> None:
    assert _mesh().host(None) == _mesh().host("h1")
    assert _mesh().host("h7") is None


def test_vms_and_conflicts_are_typed_and_their_json_is_the_old_dicts() -> None:
    mesh = _mesh()
    vms, conflicts = mesh.vms(), mesh.conflicts()
    assert [(v.name, v.host, v.host_state) for v in vms] == [
        ("db", "h1", "alive"),
        ("web", "h1", "alive"),
    ]
    (conflict,) = conflicts
    assert isinstance(conflict, Conflict) and isinstance(conflict.vm, VmRow)
    assert (conflict.vm.host, conflict.runs_on) == ("h2", ("h1",))
    assert conflict.vm.libvirt_unreachable_since == "2026-12-03T10:00:00Z"
    answer = {"vms": [v.to_json() for v in vms], "conflicts": [c.to_json() for c in conflicts]}
    assert json.dumps(answer) == json.dumps(_old_vms_and_conflicts(_Core()))


async def test_the_api_sends_the_views_json_byte_for_byte_as_before(tmp_path: Path) -> None:
    sock, server = await serve_api(tmp_path, view=_mesh())
    core = _Core()
    try:
        assert await raw_answer(sock, "GET", "/v1/status") == (200, _bytes(_old_status(core)))
        members = {"members": _old_members(core)}
        assert await raw_answer(sock, "GET", "/v1/members") == (200, _bytes(members))
        assert await raw_answer(sock, "GET", "/v1/hosts/self") == (
            200,
            _bytes(_old_host(core, "h1")),
        )
        assert await raw_answer(sock, "GET", "/v1/hosts/h9") == (200, _bytes(_old_host(core, "h9")))
        assert (await raw_answer(sock, "GET", "/v1/hosts/h7"))[0] == 404
        assert await raw_answer(sock, "GET", "/v1/vms") == (
            200,
            _bytes(_old_vms_and_conflicts(core)),
        )
    finally:
        await server.close()


# --- the daemon's status, a reload, a revocation list ------------------------------------------

NOT_AFTER = 1_796_292_000.0  # 2026-12-03T10:00:00Z
CERTIFICATE = CertificateStatus(42, NOT_AFTER, 86_399.6, True)
CERTIFICATE_JSON = {  # as `Agent._certificate_status` wrote it
    "serial": 42,
    "not_after": "2026-12-03T10:00:00Z",
    "expires_in_s": 86_400,
    "expiring": True,
}
STREAM = StreamStatus("nats://127.0.0.1:4222", 3, 10, 1, "refused", 1_700_000_000.5)
EXPORTER = ExporterStatus("http://127.0.0.1:4318", 7, 0, None)
EVENT = RecentEvent(MemberJoined("h2", 3, "198.18.0.2:7946"), 1_700_000_000.1234)
EVENT_JSON = {  # as `Agent._log_event` kept it when it was a dict
    "event": "MemberJoined",
    "at": 1_700_000_000.123,
    "node_id": "h2",
    "incarnation": 3,
    "address": "198.18.0.2:7946",
}


def _daemon(**changes: Any) -> DaemonStatus:
    status = DaemonStatus(
        certificate=CERTIFICATE,
        revocations_issued_at=NOT_AFTER - 3600,
        revoked_members=("mallory",),
        identity_clashes={"h7": ["198.18.0.7:7946", "198.18.0.8:7946"]},
        uptime_s=12.46,
        libvirt_uri="qemu:///system",
        libvirt_connected=True,
        libvirt_warning=None,
        domain_type="kvm",
        domain_type_reason="/dev/kvm usable and libvirt offers kvm",
        transport=TransportStats(sent=5, bytes_sent=900),
        handling_failures=0,
        introductions=IntroductionStats(0, 2, 2, {}),
        refusals={"expired": 1},
        last_refusal="h9: certificate expired",
        recent_events=(EVENT,),
        site_link=None,
        site_commands_refused=0,
        event_stream=STREAM,
        tracing=EXPORTER,
        templates=TemplatesStatus("/var/lib/novacron/templates", 7947, 4, 4096, ("p1",), 2),
    )
    return dataclasses.replace(status, **changes)


DAEMON_JSON = {  # as `Agent._daemon_status` wrote it when it was a dict
    "certificate": CERTIFICATE_JSON,
    "revocations_issued_at": "2026-12-03T09:00:00Z",
    "revoked_members": ["mallory"],
    "identity_clashes": {"h7": ["198.18.0.7:7946", "198.18.0.8:7946"]},
    "uptime_s": 12.5,
    "libvirt_uri": "qemu:///system",
    "libvirt_connected": True,
    "libvirt_warning": None,
    "domain_type": "kvm",
    "domain_type_reason": "/dev/kvm usable and libvirt offers kvm",
    "transport": dataclasses.asdict(TransportStats(sent=5, bytes_sent=900)),
    "handling_failures": 0,
    "introductions": {"open": 0, "introduced": 2, "checked": 2, "refused": {}},
    "refusals": {"expired": 1},
    "last_refusal": "h9: certificate expired",
    "recent_events": [EVENT_JSON],
    "site_link": None,
    "site_commands_refused": 0,
    "event_stream": {
        "sink": "nats://127.0.0.1:4222",
        "backlog": 3,
        "delivered": 10,
        "dropped": 1,
        "last_error": "refused",
        "last_error_at": 1_700_000_000.5,
    },
    "tracing": {
        "endpoint": "http://127.0.0.1:4318",
        "exported": 7,
        "dropped": 0,
        "last_error": None,
    },
    "templates": {
        "dir": "/var/lib/novacron/templates",
        "image_port": 7947,
        "served_pieces": 4,
        "served_bytes": 4096,
        "pulls_running": ["p1"],
        "asks_waiting": 2,
    },
}


def test_the_daemons_status_is_typed_and_its_json_is_the_old_dict() -> None:
    status = _daemon()
    assert status.certificate.serial == 42 and status.certificate.expiring
    assert status.event_stream is not None and status.event_stream.backlog == 3
    assert status.tracing is not None and status.tracing.exported == 7
    assert status.transport.sent == 5 and status.templates.pulls_running == ("p1",)
    assert json.dumps(status.to_json()) == json.dumps(DAEMON_JSON)
    # Without a revocation list, a stream, traces or a verdict on the domain type yet:
    bare = _daemon(
        revocations_issued_at=0.0,
        event_stream=None,
        tracing=None,
        domain_type=None,
        domain_type_reason="not decided yet",
    )
    before = {**DAEMON_JSON, "revocations_issued_at": None, "event_stream": None, "tracing": None}
    before.update(domain_type=None, domain_type_reason="not decided yet")
    assert json.dumps(bare.to_json()) == json.dumps(before)


LINK = SiteLinkStatus(
    LinkStatus("h1", True, "wss://coordinator.example:8443", "lyon", "", 2, 5), "s-1", 3
)
LINK_JSON = {  # as `Gateway.as_dict` wrote it
    "gateway": "h1",
    "connected": True,
    "coordinator": "wss://coordinator.example:8443",
    "site": "lyon",
    "last_error": "",
    "attempts": 2,
    "commands_run": 5,
    "stream": "s-1",
    "unacknowledged": 3,
}
CLASH = RecentEvent(IdentityClash("h5", ("198.18.0.5:7946", "198.18.0.6:7946"), None), WALL)
CLASH_JSON = {
    "event": "IdentityClash",
    "at": 1_700_000_000.123,
    "node_id": "h5",
    "addresses": ["198.18.0.5:7946", "198.18.0.6:7946"],
    "this_life_began": None,
}
FAILED = RecentEvent(MemberFailed("h3", 4, "h2"), WALL + 1)
FAILED_JSON = {"event": "MemberFailed", "at": 1_700_000_001.123, "node_id": "h3"}
FAILED_JSON.update(incarnation=4, by="h2")


async def test_the_api_sends_the_site_link_and_events_byte_for_byte_as_before(
    tmp_path: Path,
) -> None:
    linked = _daemon(
        introductions=IntroductionStats(2, 9, 7, {"bad-signature": 1, "busy": 4}),
        recent_events=(EVENT, CLASH, FAILED),
        site_link=LINK,
    )
    view = MeshView(
        lambda: _Core(),  # type: ignore[arg-type,return-value]
        lambda: NOW,
        lambda: linked,
        lambda: VERDICTS,
        lambda: {"h3": "revoked"},
    )
    before = _old_status(_Core())
    before.update(
        introductions={
            "open": 2,
            "introduced": 9,
            "checked": 7,
            "refused": {"bad-signature": 1, "busy": 4},
        },
        recent_events=[EVENT_JSON, CLASH_JSON, FAILED_JSON],
        site_link=LINK_JSON,
    )
    sock, server = await serve_api(tmp_path, view=view)
    try:
        assert await raw_answer(sock, "GET", "/v1/status") == (200, _bytes(before))
    finally:
        await server.close()


def test_a_reload_and_a_revocation_list_answer_typed() -> None:
    assert json.dumps(CERTIFICATE.to_json()) == json.dumps(CERTIFICATE_JSON)
    published = RevocationsPublished(True, NOT_AFTER, ("mallory",))
    before = {"adopted": True, "issued_at": "2026-12-03T10:00:00Z", "revoked_members": ["mallory"]}
    assert json.dumps(published.to_json()) == json.dumps(before)


class _Identity:
    """Reloads to `CERTIFICATE`; any revocation list is adopted."""

    async def reload(self) -> CertificateStatus:
        return CERTIFICATE

    async def publish_revocations(self, data: bytes) -> RevocationsPublished:
        return RevocationsPublished(True, NOT_AFTER, ("mallory",))


async def test_the_api_sends_the_daemons_answers_byte_for_byte_as_before(tmp_path: Path) -> None:
    sock, server = await serve_api(tmp_path, view=_mesh(), identity=_Identity())
    try:
        assert await raw_answer(sock, "GET", "/v1/status") == (200, _bytes(_old_status(_Core())))
        assert await raw_answer(sock, "POST", "/v1/reload") == (200, _bytes(CERTIFICATE_JSON))
        revoked = {
            "adopted": True,
            "issued_at": "2026-12-03T10:00:00Z",
            "revoked_members": ["mallory"],
        }
        crl = b'{"crl": "AAAA"}'
        assert await raw_answer(sock, "POST", "/v1/revocations", crl) == (200, _bytes(revoked))
    finally:
        await server.close()


def test_a_pulls_json_is_what_it_was() -> None:
    pull = PullStatus("p1", "debian:12", "done", 10, 10, "added", started=5.0, ended=6.0)
    pull.sources["h2"] = 3
    assert json.dumps(pull.to_json()) == json.dumps(
        {
            "pull_id": "p1",
            "template": "debian:12",
            "state": "done",
            "done_bytes": 10,
            "total_bytes": 10,
            "outcome": "added",
            "error": "",
            "reason": "",
            "sources": {"h2": 3},
            "banned": {},
            "started": 5.0,
            "ended": 6.0,
        }
    )
