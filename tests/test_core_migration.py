"""`MigrationCore` one rule at a time: the saga between two cores, refusals, reservations,
limits, escalation, cancel, and bad inputs. Virtual clock, no I/O."""

from __future__ import annotations

import dataclasses
import random

import pytest

from novacron.agent.core.events import (
    AbortLibvirtMigration,
    MigrationAccepted,
    MigrationCancelRefused,
    MigrationCompleted,
    MigrationEscalated,
    MigrationFailed,
    MigrationInDoubt,
    MigrationProgressed,
    MigrationProposed,
    MigrationRefused,
    ReconcileVm,
    ReservationMade,
    ReservationRefused,
    ReservationReleased,
    StartLibvirtMigration,
    SwitchToPostCopy,
)
from novacron.agent.core.migration.inbound import COMMIT, Inbound, next_inbound
from novacron.agent.core.migration.location import Presence, Where
from novacron.agent.core.migration.policy import (
    MigrationLimits,
    MigrationPolicy,
    PolicyOverrides,
)
from novacron.agent.core.migration.reservations import ReservationConfig
from novacron.agent.core.migration.saga import (
    TRANSITIONS,
    MigrationConfig,
    MigrationCore,
    Phase,
    Trigger,
    next_phase,
)
from novacron.agent.core.placement.targets import ANTI_AFFINITY_LABEL
from novacron.agent.core.refusals import RefusalKind
from novacron.agent.core.templates import TEMPLATE_LABEL
from novacron.protocol.messages import (
    JobPhase,
    MemberState,
    MigrationAbort,
    MigrationAccept,
    MigrationCommit,
    MigrationProgress,
    MigrationPropose,
    MigrationRefuse,
    Ping,
    VmSummary,
)
from novacron.simulations.migrations import Mesh, View, host, seen, vm


def two_hosts(**kwargs: object) -> Mesh:
    """h1 runs vm1 (1 GiB, 1 vCPU); h2 is empty with 8 GiB and 4 cores."""
    return Mesh([host("h1", vm("vm1")), host("h2")], **kwargs)  # type: ignore[arg-type]


def started(mesh: Mesh, source: str = "h1") -> StartLibvirtMigration:
    return mesh.of(source, StartLibvirtMigration)[-1]


def propose(mid: str = "m1", source: str = "h1", memory_mib: int = 1024) -> MigrationPropose:
    return MigrationPropose(mid, f"vm-{mid}", source, "h2", 1, memory_mib)


# --- the transition table -------------------------------------------------------------


def test_terminal_phases_have_no_way_out() -> None:
    for phase in (Phase.COMMITTED, Phase.ABORTED):
        assert all(next_phase(phase, t) is None for t in Trigger)


def test_postcopy_cannot_be_cancelled_or_aborted() -> None:
    assert next_phase(Phase.POSTCOPY, Trigger.CANCEL) is None
    assert next_phase(Phase.POSTCOPY, Trigger.TIMEOUT_ABORT) is None
    assert {p for (p, t) in TRANSITIONS if t is Trigger.FINISHED_FAILED} == {
        Phase.MIGRATING,
        Phase.POSTCOPY,
        Phase.ABORTING,
    }
    assert all(
        TRANSITIONS[(p, Trigger.FINISHED_FAILED)] is Phase.RECONCILING
        for p in (Phase.MIGRATING, Phase.POSTCOPY, Phase.ABORTING)
    )


# --- happy path -------------------------------------------------------------------------


def test_happy_path_between_two_cores() -> None:
    mesh = two_hosts()
    mesh.request("h1", "vm1", "h2")
    (proposed,) = mesh.of("h1", MigrationProposed)
    mid = proposed.migration_id
    assert len(mid) == 16 and int(mid, 16) >= 0
    (made,) = mesh.of("h2", ReservationMade)
    assert (made.vm, made.source, made.memory_mib) == ("vm1", "h1", 1024)
    assert made.expires == pytest.approx(30.0)
    (accepted,) = mesh.of("h1", MigrationAccepted)
    assert accepted.target == "h2"
    action = started(mesh)
    assert action.target_uri == "qemu+tcp://h2/system"
    assert action.migration_uri == "tcp://h2"
    assert action.policy == MigrationPolicy()
    assert mesh.core("h1").phase_of(mid) is Phase.MIGRATING

    mesh.now = 1.0
    mesh.call("h1", "migration_progress", mid, MigrationProgress(mid, percent=50.0))
    assert [e.percent for e in mesh.of("h1", MigrationProgressed)] == [50.0]
    assert [e.percent for e in mesh.of("h2", MigrationProgressed)] == [50.0]
    (inbound,) = [m for m in mesh.core("h2").migrations() if m.direction == "inbound"]
    assert (inbound.percent, inbound.outcome, inbound.ended) == (50.0, "", None)

    mesh.now = 2.0
    mesh.call("h1", "migration_finished", mid, True, "")
    (done,) = mesh.of("h1", MigrationCompleted)
    assert (done.vm, done.source, done.target, done.duration) == ("vm1", "h1", "h2", 2.0)
    (released,) = mesh.of("h2", ReservationReleased)
    assert released.outcome == "committed"
    out_info = mesh.core("h1").migrations()[0]
    assert (out_info.outcome, out_info.phase, out_info.percent) == ("committed", "committed", 100)
    assert (out_info.started, out_info.ended, out_info.direction) == (0.0, 2.0, "outbound")
    in_info = mesh.core("h2").migrations()[0]
    assert (in_info.outcome, in_info.direction, in_info.vm) == ("committed", "inbound", "vm1")

    # The room stays held until h2's own record shows the VM, then it is settled.
    assert [r.landed for r in mesh.core("h2").reservations()] == [True]
    mesh.view.move_vm("vm1", "h1", "h2")
    mesh.run(3.0)
    assert mesh.core("h2").reservations() == []
    assert mesh.core("h1").outbound() == 0 and not mesh.core("h1").busy("vm1")


def test_ids_come_from_the_injected_rng() -> None:
    a, b = two_hosts(), two_hosts()
    a.request("h1", "vm1", "h2")
    b.request("h1", "vm1", "h2")
    ida = a.of("h1", MigrationProposed)[0].migration_id
    assert ida == b.of("h1", MigrationProposed)[0].migration_id
    assert ida == f"{random.Random('h1/0').getrandbits(64):016x}"


def test_overrides_reach_the_driver() -> None:
    mesh = two_hosts()
    mesh.request("h1", "vm1", "h2", PolicyOverrides(bandwidth_mib_s=30, post_copy=False))
    policy = started(mesh).policy
    assert (policy.bandwidth_mib_s, policy.post_copy) == (30, False)


def test_progress_forwarding_is_rate_limited_but_renews_the_lease() -> None:
    mesh = two_hosts()
    mesh.request("h1", "vm1", "h2")
    mid = started(mesh).migration_id
    mesh.view.arriving("vm1", "h1", "h2")  # h2's libvirt shows the incoming domain
    for i in range(10):  # ten samples within one second: one forward
        mesh.now = 0.1 * (i + 1)
        mesh.call("h1", "migration_progress", mid, MigrationProgress(mid, percent=i))
    assert len(mesh.sent_of(MigrationProgress)) == 1
    # With the driver silent, the core still renews every renew_interval: no expiry.
    mesh.run(100.0)
    assert mesh.of("h2", ReservationReleased) == []
    assert len(mesh.sent_of(MigrationProgress)) >= 100 / 5
    assert mesh.core("h2").reservations()[0].expires > 100.0


# --- refusals at the source ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("setup", "name", "target", "reason", "kind"),
    [
        ({}, "vm9", "h2", "unknown VM: vm9 does not run on h1", RefusalKind.UNKNOWN),
        ({}, "vm1", "h9", "unknown host: h9", RefusalKind.UNKNOWN),
        ({}, "vm1", "h1", "cannot migrate to itself: vm1 already runs on h1", RefusalKind.CONFLICT),
        ({"state": "shutoff"}, "vm1", "h2", "VM not running: vm1 is shutoff", RefusalKind.CONFLICT),
        (
            {"state": "unknown"},
            "vm1",
            "h2",
            "VM state unknown: vm1's libvirt on h1 is not answering; try again when it answers",
            RefusalKind.CONFLICT,
        ),
        (
            {"draining": True},
            "vm1",
            "h2",
            "host draining: h2 takes no new VMs",
            RefusalKind.CONFLICT,
        ),
        (
            {"memory": 2048},
            "vm1",
            "h2",
            "no capacity: target h2 has 512 MiB free, 2048 MiB needed",
            RefusalKind.CONFLICT,
        ),
        (
            {"vcpus": 5, "memory": 256},
            "vm1",
            "h2",
            "no capacity: target h2 has 4 vCPUs free, 5 needed",
            RefusalKind.CONFLICT,
        ),
        ({"dead": True}, "vm1", "h2", "host h2 is dead", RefusalKind.CONFLICT),
        (
            {"inbound": "2"},
            "vm1",
            "h2",
            "too many migrations: h2 already receives 2 inbound",
            RefusalKind.CONFLICT,
        ),
        (
            {"cluster": "2"},
            "vm1",
            "h2",
            "too many migrations: 2 running in the cluster, limit 2",
            RefusalKind.CONFLICT,
        ),
    ],
)
def test_source_refuses_with_a_reason_and_changes_nothing(
    setup: dict[str, object], name: str, target: str, reason: str, kind: RefusalKind
) -> None:
    memory = int(setup.get("memory", 1024))  # type: ignore[call-overload]
    vcpus = int(setup.get("vcpus", 1))  # type: ignore[call-overload]
    records = [
        host("h1", vm("vm1", memory, vcpus, str(setup.get("state", "running")))),
        host(
            "h2",
            vm("big", 8192 - 512, 0),
            memory_mib=8192,
            vcpus=1.0,
            draining=bool(setup.get("draining")),
            inbound=int(str(setup.get("inbound", "0"))),
        ),
        host("h3", outbound=int(str(setup.get("cluster", "0")))),
    ]
    mesh = Mesh(records, config=MigrationConfig(reservations=ReservationConfig()))
    if setup.get("dead"):
        mesh.view.states["h2"] = MemberState.DEAD
    out = mesh.request("h1", name, target)
    assert out.events == [MigrationRefused(name, target, reason, "", "h1", kind)]
    assert out.sends == [] and out.actions == []
    core = mesh.core("h1")
    assert core.outbound() == 0 and core.migrations() == []
    assert core.stats.refused_locally == 1


def test_bad_policy_is_refused() -> None:
    mesh = two_hosts()
    (event,) = mesh.request("h1", "vm1", "h2", PolicyOverrides(max_downtime_ms=0)).events
    assert isinstance(event, MigrationRefused)
    assert event.reason == "bad policy: max downtime must be >= 1 ms, got 0"
    assert event.kind is RefusalKind.INVALID  # the request's fault, not the state of things


def test_a_vm_already_migrating_is_refused() -> None:
    mesh = Mesh([host("h1", vm("vm1")), host("h2"), host("h3")])
    mesh.request("h1", "vm1", "h2")
    mid = mesh.of("h1", MigrationProposed)[0].migration_id
    (event,) = mesh.request("h1", "vm1", "h3").events
    assert isinstance(event, MigrationRefused)
    assert event.reason == f"VM vm1 is already migrating ({mid})"


def test_outbound_limit() -> None:
    mesh = Mesh([host("h1", vm("a"), vm("b"), vm("c")), host("h2"), host("h3"), host("h4")])
    mesh.request("h1", "a", "h2")
    mesh.request("h1", "b", "h3")
    (event,) = mesh.request("h1", "c", "h4").events
    assert isinstance(event, MigrationRefused)
    assert event.reason == "too many migrations: h1 already runs 2 outbound"
    published = mesh.core("h1").with_counts(host("h1"))
    assert (published.migrations_out, published.migrations_in) == (2, 0)


def test_cluster_limit_derived_from_alive_hosts() -> None:
    # 12 hosts: the derived ceiling is max(2, ceil(0.25 * 12)) = 3.
    records = [host("h1", vm("vm1"))] + [host(f"x{i}") for i in range(11)]
    records[1] = host("x0", outbound=2)
    mesh = Mesh(records)
    assert mesh.request("h1", "vm1", "x1").events[0].__class__ is MigrationProposed
    records[2] = host("x1", outbound=1)
    mesh2 = Mesh(records)
    (event,) = mesh2.request("h1", "vm1", "x2").events
    assert isinstance(event, MigrationRefused)
    assert event.reason == "too many migrations: 3 running in the cluster, limit 3"


# --- the target: admission and reservations -------------------------------------------------


def test_two_concurrent_proposals_cannot_share_the_last_room() -> None:
    """h1 and h3 each send a 5 GiB VM to h2 (8 GiB) at once: the second is refused."""
    mesh = Mesh([host("h1", vm("a", 5120)), host("h3", vm("b", 5120)), host("h2")])
    mesh.request("h1", "a", "h2")
    mesh.request("h3", "b", "h2")
    assert len(mesh.of("h1", StartLibvirtMigration)) == 1
    (refused,) = mesh.of("h3", MigrationRefused)
    assert refused.by == "h2" and refused.migration_id
    assert refused.reason == "no capacity: target h2 has 3072 MiB free, 5120 MiB needed"
    (seen,) = mesh.of("h2", ReservationRefused)
    assert seen.reason == refused.reason and seen.source == "h3"
    info = mesh.core("h3").migrations()[0]
    assert (info.outcome, info.reason) == ("refused", refused.reason)
    assert not mesh.core("h3").busy("b")


def test_released_reservation_frees_room() -> None:
    mesh = Mesh([host("h1", vm("a", 5120)), host("h3", vm("b", 5120)), host("h2")])
    mesh.request("h1", "a", "h2")
    mid = started(mesh).migration_id
    mesh.call("h1", "cancel", mid)
    mesh.call("h1", "migration_finished", mid, False, "operation aborted")
    mesh.call("h1", "vm_presence", "a", seen("h1"))
    assert mesh.core("h2").reservations() == []
    mesh.request("h3", "b", "h2")
    assert len(mesh.of("h3", StartLibvirtMigration)) == 1


def test_reservation_of_a_vm_already_listed_is_not_counted_twice() -> None:
    core = MigrationCore("h2", view=View([host("h2", vm("a", 4096))]), rng=random.Random(1))
    core.receive("h1", propose("m1", memory_mib=2048), 0.0)
    # The incoming domain shows in the inventory while pre-copy runs.
    record = host("h2", vm("a", 4096), vm("vm-m1", 2048))
    core2 = MigrationCore("h2", view=View([record, host("h1")]), rng=random.Random(1))
    core2.receive("h1", propose("m1", memory_mib=2048), 0.0)
    out = core2.receive("h3", propose("m2", "h3", memory_mib=2048), 0.0)
    assert isinstance(out.sends[0][1], MigrationAccept)  # 8192 - 4096 - 2048 = 2048 left
    out = core2.receive("h4", propose("m3", "h4", memory_mib=1), 0.0)
    assert isinstance(out.sends[0][1], MigrationRefuse)  # inbound limit (2) reached


def test_target_side_refusals() -> None:
    view = View([host("h2", vm("here")), host("h1"), host("h3"), host("h4")])
    core = MigrationCore("h2", view=view, rng=random.Random(1))

    def answer(message: MigrationPropose, sender: str = "h1") -> str:
        ((dest, reply),) = core.receive(sender, message, 0.0).sends
        assert dest == sender
        return reply.reason if isinstance(reply, MigrationRefuse) else "accepted"

    assert answer(MigrationPropose("m0", "here", "h1", "h2", 1, 1)) == "VM here already runs on h2"
    assert answer(propose("m1")) == "accepted"
    assert answer(MigrationPropose("m2", "vm-m1", "h3", "h2", 1, 1), "h3") == (
        "VM vm-m1 is already arriving on h2"
    )
    assert answer(propose("m3", "h3"), "h3") == "accepted"
    assert answer(propose("m4", "h4"), "h4") == "too many migrations: h2 already receives 2 inbound"
    view.update("h2", draining=True)
    assert answer(propose("m5", "h4"), "h4") == "host draining: h2 takes no new VMs"
    assert core.stats.proposals_refused == 4


def grouped(name: str, group: str) -> VmSummary:
    return dataclasses.replace(vm(name), labels={ANTI_AFFINITY_LABEL: group})


def test_two_sources_cannot_bring_one_anti_affinity_group_together() -> None:
    """h1 and h3 each send a VM of group "db" to the empty h2 at once: only the first may
    land; neither source could see the other's move, so the target is the arbiter."""
    mesh = Mesh([host("h1", grouped("db-1", "db")), host("h3", grouped("db-2", "db")), host("h2")])
    mesh.request("h1", "db-1", "h2")
    mesh.request("h3", "db-2", "h2")
    assert len(mesh.of("h1", StartLibvirtMigration)) == 1
    (refused,) = mesh.of("h3", MigrationRefused)
    assert (refused.by, refused.reason) == (
        "h2",
        "anti-affinity: db-1 of group db is already arriving here",
    )
    assert not mesh.core("h3").busy("db-2")


def test_the_target_refuses_a_vm_whose_group_already_runs_there() -> None:
    view = View([host("h2", grouped("db-1", "db")), host("h1")])
    core = MigrationCore("h2", view=view, rng=random.Random(1))
    arriving = MigrationPropose("m1", "db-2", "h1", "h2", 1, 1024, anti_affinity="db")
    ((_, reply),) = core.receive("h1", arriving, 0.0).sends
    assert isinstance(reply, MigrationRefuse)
    assert reply.reason == "anti-affinity: a VM of group db runs on h2"
    assert core.reservations() == []
    other_group = dataclasses.replace(arriving, anti_affinity="web")
    ((_, reply),) = core.receive("h1", other_group, 0.0).sends
    assert isinstance(reply, MigrationAccept)


def test_the_source_says_why_before_proposing_into_a_group_clash() -> None:
    mesh = Mesh([host("h1", grouped("db-2", "db")), host("h2", grouped("db-1", "db"))])
    mesh.request("h1", "db-2", "h2")
    (refused,) = mesh.of("h1", MigrationRefused)
    assert refused.reason == "anti-affinity: a VM of group db runs there"
    assert mesh.of("h2", ReservationRefused) == []  # nothing was sent


def test_target_without_inventory_refuses() -> None:
    core = MigrationCore("h2", view=View([host("h1")]), rng=random.Random(1))
    ((_, reply),) = core.receive("h1", propose(), 0.0).sends
    assert isinstance(reply, MigrationRefuse)
    assert reply.reason == "not ready: h2 has no inventory yet"


def test_reservation_expires_when_the_source_goes_quiet() -> None:
    mesh = two_hosts()
    mesh.request("h1", "vm1", "h2")
    mid = started(mesh).migration_id
    mesh.view.arriving("vm1", "h1", "h2")
    mesh.kill_agent("h1")
    mesh.run(29.5)
    assert len(mesh.core("h2").reservations()) == 1
    assert mesh.core("h2").next_deadline() == pytest.approx(30.0)
    mesh.run(30.0)
    (released,) = mesh.of("h2", ReservationReleased)
    assert (released.outcome, released.reason) == ("expired", "no word from h1 for 30 s")
    (reconcile,) = mesh.of("h2", ReconcileVm)
    assert (reconcile.vm, reconcile.migration_id, reconcile.hosts) == ("vm1", mid, ("h1", "h2"))
    assert mesh.core("h2").reservations() == []
    assert mesh.core("h2").stats.reservations_expired == 1
    mesh.call("h2", "vm_presence", "vm1", seen("h2"))
    info = mesh.core("h2").migrations()[0]
    assert info.outcome == "committed"
    assert info.reason == "no word from h1 for 30 s; reconcile found vm1 on h2"


def test_landed_hold_ends_even_if_the_record_never_shows_the_vm() -> None:
    mesh = two_hosts()
    mesh.request("h1", "vm1", "h2")
    mesh.call("h1", "migration_finished", started(mesh).migration_id, True, "")
    assert len(mesh.core("h2").reservations()) == 1
    mesh.run(31.0)
    assert mesh.core("h2").reservations() == []
    assert mesh.of("h2", ReconcileVm) == []  # a landed hold lapsing is not a fault


def test_a_vm_that_landed_and_left_again_may_come_back_at_once() -> None:
    """The landed hold is capacity bookkeeping, not an arrival: it must not refuse the VM."""
    mesh = two_hosts()
    mesh.request("h1", "vm1", "h2")
    mesh.call("h1", "migration_finished", started(mesh).migration_id, True, "")
    mesh.now = 3.0  # moved back to h1 by hand before h2's record ever listed it
    mesh.request("h1", "vm1", "h2")
    assert mesh.of("h2", ReservationRefused) == []
    assert len(mesh.of("h1", StartLibvirtMigration)) == 2
    assert [r.landed for r in mesh.core("h2").reservations()] == [False]


def test_a_vm_sent_back_at_once_is_not_refused_for_the_record_it_just_left() -> None:
    """h1's record lists vm1 until h1's inventory reads libvirt again; h1 knows vm1 left
    for h2 (it committed that move), so h2 sending it straight back is no duplicate."""
    mesh = two_hosts()
    mesh.request("h1", "vm1", "h2")
    mesh.call("h1", "migration_finished", started(mesh).migration_id, True, "")
    mesh.view.arriving("vm1", "h1", "h2")  # h2 lists it; h1's record is not read again yet
    mesh.view.update(
        "h2", vms=tuple(v if v.name != "vm1" else vm("vm1") for v in mesh.view.recs["h2"].vms)
    )
    mesh.now = 1.0
    mesh.request("h2", "vm1", "h1")
    assert mesh.of("h1", ReservationRefused) == []
    assert len(mesh.of("h2", StartLibvirtMigration)) == 1


def test_a_grouped_vm_sent_back_at_once_does_not_clash_with_itself() -> None:
    """An anti-affinity VM's stale listing on the host it left is no group member there."""
    mesh = Mesh([host("h1", grouped("vm1", "db")), host("h2")])
    mesh.request("h1", "vm1", "h2")
    mesh.call("h1", "migration_finished", started(mesh).migration_id, True, "")
    mesh.view.update("h2", vms=(grouped("vm1", "db"),))  # h1's record still lists it too
    mesh.now = 1.0
    mesh.request("h2", "vm1", "h1")
    assert mesh.of("h2", MigrationRefused) == [] and mesh.of("h1", ReservationRefused) == []
    assert len(mesh.of("h2", StartLibvirtMigration)) == 1


def test_a_vm_that_came_back_is_refused_as_present_again() -> None:
    """Once vm1 is back on h1, a proposal from the host it left is a duplicate again."""
    mesh = two_hosts()
    mesh.request("h1", "vm1", "h2")
    mesh.call("h1", "migration_finished", started(mesh).migration_id, True, "")
    mesh.view.move_vm("vm1", "h1", "h2")
    mesh.now = 1.0
    mesh.request("h2", "vm1", "h1")
    mesh.call("h2", "migration_finished", started(mesh, "h2").migration_id, True, "")
    mesh.view.arriving("vm1", "h2", "h1")
    mesh.view.update("h1", vms=(vm("vm1"),))  # running on h1, still listed by h2 as well
    mesh.now = 2.0
    mesh.request("h2", "vm1", "h1")
    (refused,) = mesh.of("h1", ReservationRefused)
    assert refused.reason == "VM vm1 already runs on h1"


def test_duplicate_propose_is_answered_once_reserved() -> None:
    core = MigrationCore("h2", view=View([host("h2"), host("h1")]), rng=random.Random(1))
    first = core.receive("h1", propose(), 0.0).sends
    again = core.receive("h1", propose(), 1.0).sends
    assert first == again and isinstance(first[0][1], MigrationAccept)
    assert len(core.reservations()) == 1 and core.stats.duplicates == 1


def test_propose_overtaken_by_its_abort_is_refused() -> None:
    core = MigrationCore("h2", view=View([host("h2"), host("h1")]), rng=random.Random(1))
    core.receive("h1", MigrationAbort("m1", "cancelled by operator"), 0.0)
    ((_, reply),) = core.receive("h1", propose(), 0.1).sends
    assert isinstance(reply, MigrationRefuse)
    assert reply.reason == "migration m1 already ended here"
    assert core.reservations() == []
    assert core.migrations() == []  # a tombstone is not a migration to show


def test_inbound_limit_through_the_mesh() -> None:
    mesh = Mesh([host("a", vm("va")), host("b", vm("vb")), host("c", vm("vc")), host("h2")])
    for source in ("a", "b", "c"):
        mesh.request(source, f"v{source}", "h2")
    assert [len(mesh.of(s, StartLibvirtMigration)) for s in "abc"] == [1, 1, 0]
    (refused,) = mesh.of("c", MigrationRefused)
    assert refused.reason == "too many migrations: h2 already receives 2 inbound"
    assert mesh.core("h2").inbound() == 2


# --- timeouts and escalation ----------------------------------------------------------------


def test_no_answer_resends_then_gives_up() -> None:
    mesh = two_hosts()
    mesh.cut.add(frozenset(("h1", "h2")))
    mesh.request("h1", "vm1", "h2")
    mesh.run(4.5)
    assert len(mesh.sent_of(MigrationPropose)) == 5  # at 0, 1, 2, 3, 4
    assert mesh.of("h1", MigrationFailed) == []
    mesh.run(5.0)
    (failed,) = mesh.of("h1", MigrationFailed)
    assert failed.reason == "no answer from h2 within 5 s"
    assert mesh.sent_of(MigrationAbort, "h1")[-1].reason == failed.reason
    assert mesh.core("h1").outbound() == 0


def test_lost_propose_is_recovered_by_resending() -> None:
    mesh = two_hosts()
    mesh.cut.add(frozenset(("h1", "h2")))
    mesh.request("h1", "vm1", "h2")
    mesh.cut.clear()
    mesh.run(1.0)
    assert len(mesh.of("h1", StartLibvirtMigration)) == 1


def test_target_failing_before_answering_ends_the_saga() -> None:
    mesh = two_hosts()
    mesh.cut.add(frozenset(("h1", "h2")))
    mesh.request("h1", "vm1", "h2")
    mesh.view.states["h2"] = MemberState.DEAD
    mesh.run(1.0)
    (failed,) = mesh.of("h1", MigrationFailed)
    assert failed.reason == "target h2 failed before answering"


def test_escalation_to_postcopy_after_the_per_gib_timeout() -> None:
    mesh = Mesh([host("h1", vm("vm1", 2048)), host("h2")])
    mesh.request("h1", "vm1", "h2")
    mid = started(mesh).migration_id
    mesh.view.arriving("vm1", "h1", "h2")
    assert mesh.core("h1").next_deadline() == pytest.approx(5.0)  # lease renewal first
    mesh.run(59.5)
    assert mesh.of("h1", SwitchToPostCopy) == []
    mesh.run(60.0)
    assert mesh.of("h1", SwitchToPostCopy) == [SwitchToPostCopy(mid, "vm1")]
    (escalated,) = mesh.of("h1", MigrationEscalated)
    assert escalated.step == "postcopy"
    assert escalated.reason == "did not converge within 60 s (30 s per GiB of 2 GiB)"
    assert mesh.core("h1").phase_of(mid) is Phase.POSTCOPY
    mesh.run(100.0)  # no further escalation, no abort, lease kept alive
    assert mesh.of("h1", AbortLibvirtMigration) == []
    assert mesh.of("h2", ReservationReleased) == []
    mesh.call("h1", "migration_finished", mid, True, "")
    assert len(mesh.of("h1", MigrationCompleted)) == 1
    (row,) = mesh.core("h1").migrations()
    assert (row.outcome, row.escalation) == (
        "committed",
        "post-copy after 60.0 s: did not converge within 60 s (30 s per GiB of 2 GiB)",
    )


def test_escalation_is_also_checked_on_progress() -> None:
    mesh = Mesh([host("h1", vm("vm1", 256)), host("h2")])
    mesh.request("h1", "vm1", "h2")
    mid = started(mesh).migration_id
    mesh.now = 10.0  # the 10 s floor applies to small guests
    mesh.call("h1", "migration_progress", mid, MigrationProgress(mid, percent=90))
    assert len(mesh.of("h1", SwitchToPostCopy)) == 1


def test_escalation_aborts_when_postcopy_is_not_allowed() -> None:
    mesh = Mesh([host("h1", vm("vm1", 2048)), host("h2")])
    mesh.request(
        "h1", "vm1", "h2", PolicyOverrides(post_copy=False, completion_timeout_per_gib=10.0)
    )
    mid = started(mesh).migration_id
    mesh.view.arriving("vm1", "h1", "h2")
    mesh.run(20.0)
    assert mesh.of("h1", AbortLibvirtMigration) == [AbortLibvirtMigration(mid, "vm1")]
    assert mesh.of("h1", MigrationEscalated)[0].step == "abort"
    mesh.call("h1", "migration_finished", mid, False, "operation aborted")
    assert mesh.of("h1", ReconcileVm)[-1].hosts == ("h1", "h2")
    mesh.call("h1", "vm_presence", "vm1", seen("h1"))
    (failed,) = mesh.of("h1", MigrationFailed)
    assert failed.reason == "did not converge within 20 s (10 s per GiB of 2 GiB)"
    assert mesh.sent_of(MigrationAbort)[-1].reason == failed.reason
    assert mesh.of("h2", ReservationReleased)[-1].outcome == "aborted"
    assert mesh.core("h1").migrations()[0].escalation.startswith("aborted after 20.0 s")


def paused_for_switchover(mesh: Mesh, mid: str, at: float, left: int = 0) -> None:
    """A job sample at `at`: the source paused for the final copy, `left` bytes to send."""
    mesh.now = at
    sample = MigrationProgress(mid, percent=100.0, data_remaining=left, phase=JobPhase.SWITCHOVER)
    mesh.call("h1", "migration_progress", mid, sample)


def test_a_switchover_that_stalls_is_aborted_and_the_vm_located() -> None:
    mesh = Mesh([host("h1", vm("vm1", 256)), host("h2")])  # completion timeout 10 s
    mesh.request("h1", "vm1", "h2")
    mid = started(mesh).migration_id
    for at in (7.0, 7.5, 11.5):  # paused 4.5 s: QEMU may still finish
        paused_for_switchover(mesh, mid, at)
    assert mesh.of("h1", AbortLibvirtMigration) == []
    assert mesh.of("h1", SwitchToPostCopy) == []  # the 10 s completion timeout waits too
    paused_for_switchover(mesh, mid, 12.0)
    assert mesh.of("h1", AbortLibvirtMigration) == [AbortLibvirtMigration(mid, "vm1")]
    (escalated,) = mesh.of("h1", MigrationEscalated)
    why = "stalled at the switchover: the VM sat paused 5 s, nothing copied for 5 s"
    assert (escalated.step, escalated.reason) == ("abort", why)
    mesh.call("h1", "migration_finished", mid, False, "operation aborted")
    mesh.call("h1", "vm_presence", "vm1", seen("h2"))  # the abort let it finish on the target
    assert len(mesh.of("h1", MigrationCompleted)) == 1
    (row,) = mesh.core("h1").migrations()
    assert (row.outcome, row.escalation) == ("committed", f"aborted after 12.0 s: {why}")


def test_a_stalled_switchover_is_aborted_even_when_the_job_samples_stop() -> None:
    mesh = Mesh([host("h1", vm("vm1", 256)), host("h2")])  # completion timeout 10 s
    mesh.request("h1", "vm1", "h2")
    mid = started(mesh).migration_id
    paused_for_switchover(mesh, mid, 9.0)  # the last sample: QEMU holds on from here
    assert mesh.core("h1").next_deadline() == pytest.approx(14.0)  # not the past 10 s timeout
    mesh.run(13.9)
    assert mesh.of("h1", AbortLibvirtMigration) == []
    mesh.run(14.1)
    assert mesh.of("h1", AbortLibvirtMigration) == [AbortLibvirtMigration(mid, "vm1")]
    assert "nothing copied for 5 s" in mesh.of("h1", MigrationEscalated)[0].reason
    assert mesh.core("h1").next_deadline() > 14.1  # nothing left due: no busy loop


def test_a_final_copy_that_trickles_past_the_timeout_is_aborted_not_switched() -> None:
    mesh = Mesh([host("h1", vm("vm1", 256)), host("h2")])  # completion timeout 10 s
    mesh.request("h1", "vm1", "h2")
    mid = started(mesh).migration_id
    for at, left in ((8.0, 900), (11.0, 800), (12.9, 700)):  # paused, still copying
        paused_for_switchover(mesh, mid, at, left)
    assert mesh.of("h1", MigrationEscalated) == []  # 5 s into the pause not yet reached
    paused_for_switchover(mesh, mid, 13.0, 600)
    assert mesh.of("h1", SwitchToPostCopy) == []  # post-copy cannot start in the final copy
    (escalated,) = mesh.of("h1", MigrationEscalated)
    assert (escalated.step, escalated.reason) == (
        "abort",
        "did not converge within 10 s (30 s per GiB of 0.25 GiB)",
    )


def test_a_switchover_pause_that_ends_or_still_copies_is_not_a_stall() -> None:
    mesh = two_hosts()
    mesh.request("h1", "vm1", "h2")
    mid = started(mesh).migration_id
    paused_for_switchover(mesh, mid, 2.0)
    mesh.now = 6.0  # it ran again (a switchover that failed and resumed pre-copy)
    mesh.call("h1", "migration_progress", mid, MigrationProgress(mid, percent=90.0))
    for at, left in ((7.0, 900), (11.0, 600), (15.0, 300), (19.0, 0)):  # slow, but copying
        paused_for_switchover(mesh, mid, at, left)
    assert mesh.of("h1", AbortLibvirtMigration) == []
    mesh.call("h1", "migration_finished", mid, True, "")
    assert len(mesh.of("h1", MigrationCompleted)) == 1


def test_stuck_abort_turns_into_reconcile() -> None:
    mesh = two_hosts()
    mesh.request("h1", "vm1", "h2")
    mid = started(mesh).migration_id
    mesh.call("h1", "cancel", mid)
    mesh.run(30.0)
    assert len(mesh.of("h1", AbortLibvirtMigration)) == 2
    assert mesh.core("h1").phase_of(mid) is Phase.RECONCILING
    mesh.run(40.0)  # no answer yet: ask again
    assert len(mesh.of("h1", ReconcileVm)) == 2
    holding = seen(None, h1=Presence(Where.MIGRATING, "paused (migrating)"))
    mesh.call("h1", "vm_presence", "vm1", holding)  # a job still holds it: look again soon
    assert mesh.of("h1", MigrationInDoubt)[-1].reason == "h1: paused (migrating)"
    assert mesh.core("h1").phase_of(mid) is Phase.RECONCILING
    assert mesh.core("h1").next_deadline() == pytest.approx(41.0)
    mesh.call("h1", "vm_presence", "vm1", seen("h1"))
    assert mesh.of("h1", MigrationFailed)[0].reason == "cancelled by operator"


# --- cancel ----------------------------------------------------------------------------------


def test_cancel_before_accept() -> None:
    mesh = two_hosts(max_delay=0.4)
    mesh.request("h1", "vm1", "h2")
    mid = mesh.of("h1", MigrationProposed)[0].migration_id
    mesh.call("h1", "cancel", mid)
    (failed,) = mesh.of("h1", MigrationFailed)
    assert failed.reason == "cancelled by operator"
    assert mesh.sent_of(MigrationAbort, "h1") == [MigrationAbort(mid, "cancelled by operator")]
    mesh.run(2.0)  # whatever order Propose and Abort arrive in, nothing stays reserved
    assert mesh.core("h2").reservations() == []
    assert mesh.of("h1", StartLibvirtMigration) == []


def test_cancel_during_libvirt_migration() -> None:
    mesh = two_hosts()
    mesh.request("h1", "vm1", "h2")
    mid = started(mesh).migration_id
    mesh.call("h1", "cancel_vm", "vm1")
    assert mesh.of("h1", AbortLibvirtMigration) == [AbortLibvirtMigration(mid, "vm1")]
    assert mesh.core("h1").phase_of(mid) is Phase.ABORTING
    mesh.call("h1", "migration_finished", mid, False, "operation aborted")
    mesh.call("h1", "vm_presence", "vm1", seen("h1"))
    (failed,) = mesh.of("h1", MigrationFailed)
    assert failed.reason == "cancelled by operator"
    assert mesh.of("h2", ReservationReleased)[0].outcome == "aborted"


def test_cancel_that_comes_too_late_still_commits() -> None:
    mesh = two_hosts()
    mesh.request("h1", "vm1", "h2")
    mid = started(mesh).migration_id
    mesh.call("h1", "cancel", mid)
    mesh.call("h1", "migration_finished", mid, True, "")
    (done,) = mesh.of("h1", MigrationCompleted)
    assert done.note == "cancel came too late"


def test_cancel_refusals() -> None:
    mesh = two_hosts()
    mesh.request("h1", "vm1", "h2")
    mid = started(mesh).migration_id
    mesh.call("h1", "migration_progress", mid, MigrationProgress(mid, 80, phase=JobPhase.POSTCOPY))
    assert mesh.core("h1").phase_of(mid) is Phase.POSTCOPY
    mesh.call("h1", "cancel", mid)
    mesh.call("h1", "migration_finished", mid, False, "connection lost")
    mesh.call("h1", "cancel", mid)
    mesh.call("h1", "vm_presence", "vm1", seen("h2"))
    mesh.call("h1", "cancel", mid)
    mesh.call("h1", "cancel", "nope")
    reasons = [e.reason for e in mesh.of("h1", MigrationCancelRefused)]
    assert reasons[0].startswith("cannot cancel in post-copy")
    assert reasons[1:] == [
        "already stopping (reconciling)",
        "already ended: committed",
        "unknown migration",
    ]
    assert mesh.of("h1", MigrationCompleted)[0].note == "found on the target by reconcile"


# --- bad inputs: ignored, counted, never a crash -----------------------------------------


def test_bad_inputs_are_ignored_and_counted() -> None:
    mesh = Mesh([host("h1", vm("vm1")), host("h2"), host("h3")])
    mesh.request("h1", "vm1", "h2")
    mid = started(mesh).migration_id
    h1, h2 = mesh.core("h1"), mesh.core("h2")
    before = list(mesh.sent)

    assert h1.migration_progress("zz", MigrationProgress("zz"), 1.0).sends == []
    assert h1.migration_progress(mid, MigrationProgress("other"), 1.0).sends == []
    assert h1.migration_finished("zz", True, "", 1.0).sends == []
    assert h1.stats.unknown_migration == 3

    assert h1.receive("h3", MigrationAccept(mid, 9.0), 1.0).sends == []  # not the peer
    assert h1.receive("h3", MigrationRefuse(mid, "no"), 1.0).sends == []
    assert h1.stats.wrong_peer == 2
    assert h1.receive("h2", MigrationAccept(mid, 9.0), 1.0).sends == []  # duplicate
    assert h1.stats.duplicates == 1

    assert h2.receive("h3", MigrationCommit("never"), 1.0).sends == []  # never proposed
    assert h2.receive("h3", MigrationCommit(mid), 1.0).sends == []  # not the source
    assert h2.receive("h3", MigrationProgress(mid, 99), 1.0).sends == []
    assert h2.receive("h3", MigrationAbort(mid, "x"), 1.0).sends == []
    assert h2.stats.unknown_migration == 1 and h2.stats.wrong_peer == 3
    assert h2.receive("h3", MigrationPropose("p", "v", "h1", "h2", 1, 1), 1.0).sends == []
    assert h2.receive("h3", MigrationPropose("p", "v", "h3", "h9", 1, 1), 1.0).sends == []
    assert h2.receive("h3", MigrationPropose("p", "v", "h3", "h2", -1, 1), 1.0).sends == []
    assert h2.stats.invalid == 3
    assert h2.receive("h2", MigrationCommit(mid), 1.0).sends == []  # from ourselves
    assert h2.receive("h3", Ping(1, "h2"), 1.0).sends == []
    assert (h2.stats.invalid, h2.stats.unhandled) == (4, 1)

    assert h1.vm_presence("vm1", seen("h2"), 1.0).sends == []  # nobody asked
    assert h1.stats.unsolicited_locations == 1
    assert h1.migration_finished(mid, False, "x", 1.0).actions  # the saga still works
    assert mesh.sent == before
    assert h1.phase_of(mid) is Phase.RECONCILING and len(h2.reservations()) == 1


def test_finished_before_accept_is_invalid() -> None:
    mesh = two_hosts()
    mesh.cut.add(frozenset(("h1", "h2")))
    mesh.request("h1", "vm1", "h2")
    mid = mesh.of("h1", MigrationProposed)[0].migration_id
    out = mesh.core("h1").migration_finished(mid, True, "", 0.5)
    assert out.events == [] and mesh.core("h1").stats.invalid == 1
    assert mesh.core("h1").phase_of(mid) is Phase.PROPOSED


def test_accept_for_an_unknown_migration_frees_the_reservation() -> None:
    """A restarted source answers a stray Accept with Abort, so the target frees its room."""
    mesh = two_hosts()
    out = mesh.core("h1").receive("h2", MigrationAccept("old", 30.0), 0.0)
    assert out.sends == [("h2", MigrationAbort("old", "unknown migration"))]
    assert mesh.core("h1").stats.unknown_migration == 1


def test_late_accept_after_giving_up_is_answered_with_abort() -> None:
    mesh = two_hosts()
    mesh.cut.add(frozenset(("h1", "h2")))
    mesh.request("h1", "vm1", "h2")
    mid = mesh.of("h1", MigrationProposed)[0].migration_id
    mesh.run(5.0)
    out = mesh.core("h1").receive("h2", MigrationAccept(mid, 35.0), 5.5)
    reason = "no answer from h2 within 5 s"
    assert out.sends == [("h2", MigrationAbort(mid, reason))]
    assert out.actions == []


def test_history_is_bounded_and_running_come_first() -> None:
    config = MigrationConfig(history=3, limits=MigrationLimits(max_outbound=1, max_cluster=9))
    mesh = Mesh([host("h1", *(vm(f"v{i}", 64) for i in range(6))), host("h2")], config=config)
    for i in range(5):
        mesh.now = float(i)
        mesh.request("h1", f"v{i}", "h2")
        mesh.call("h1", "cancel", started(mesh).migration_id)
        mesh.call("h1", "migration_finished", started(mesh).migration_id, False, "aborted")
        mesh.call("h1", "vm_presence", f"v{i}", seen("h1"))
    mesh.now = 9.0
    mesh.request("h1", "v5", "h2")
    infos = mesh.core("h1").migrations()
    assert [(i.vm, i.outcome) for i in infos] == [
        ("v5", ""),
        ("v4", "aborted"),
        ("v3", "aborted"),
        ("v2", "aborted"),
    ]
    inbound = mesh.core("h2").migrations()
    assert [i.vm for i in inbound] == ["v5", "v4", "v3", "v2"]
    assert inbound[0].phase == "reserved"


def test_next_deadline_tracks_the_earliest_timer() -> None:
    mesh = two_hosts()
    assert mesh.core("h1").next_deadline() == float("inf")
    mesh.cut.add(frozenset(("h1", "h2")))
    mesh.request("h1", "vm1", "h2")
    assert mesh.core("h1").next_deadline() == 1.0  # resend
    mesh.cut.clear()
    mesh.run(1.0)
    assert mesh.core("h2").next_deadline() == pytest.approx(21.0)  # libvirt must show it
    mesh.view.arriving("vm1", "h1", "h2")
    mesh.run(2.0)
    assert mesh.core("h2").next_deadline() == pytest.approx(22.0)  # seen at 2 s


def test_the_membership_node_is_a_cluster_view() -> None:
    """The daemon hands its `MembershipNode` to the migration core as is."""
    from novacron.agent.core.membership.config import MembershipConfig
    from novacron.agent.core.membership.node import MembershipNode
    from novacron.agent.core.migration.saga import ClusterView
    from novacron.simulations.signing import SimKeyring

    node = MembershipNode(
        "h1",
        address="198.18.0.1",
        config=MembershipConfig(),
        rng=random.Random(1),
        keyring=SimKeyring("h1"),
        now=0.0,
    )
    node.update_record(host("h1", vm("vm1")), 0.0)
    view: ClusterView = node
    core = MigrationCore("h1", view=view, rng=random.Random(1))
    (event,) = core.request_migration("vm1", "h2", None, 0.0).events
    assert event == MigrationRefused("vm1", "h2", "unknown host: h2", "", "h1", RefusalKind.UNKNOWN)


def test_one_migration_by_id_is_what_the_list_shows() -> None:
    mesh = two_hosts()
    mesh.request("h1", "vm1", "h2")
    mid = started(mesh).migration_id

    def same(node: str) -> None:
        core = mesh.core(node)
        (listed,) = [m for m in core.migrations() if m.migration_id == mid]
        assert core.migration(mid) == listed

    same("h1")  # outbound, running
    same("h2")  # inbound, reserved
    mesh.call("h1", "migration_finished", mid, True, "")
    same("h1")  # outbound, ended
    same("h2")  # inbound, landed and ended
    assert mesh.core("h1").migration("no-such-id") is None


def test_a_target_that_cannot_count_its_vms_admits_nothing_and_no_source_proposes() -> None:
    down = 1_796_292_000.0  # 2026-12-03T10:00:00Z
    old = vm("old", 1024, state="unknown")
    mesh = Mesh([host("h1", vm("vm1")), host("h2", old, libvirt_down_since=down)])
    out = mesh.request("h1", "vm1", "h2")
    (refused,) = out.events
    assert isinstance(refused, MigrationRefused)
    assert refused.reason == (
        "libvirt unreachable on h2 since 2026-12-03T10:00:00Z: its VMs cannot be counted"
    )
    assert mesh.core("h1").place("vm1").target is None
    reply = mesh.core("h2").receive("h1", propose("m9"), 0.0)
    (answer,) = [m for _, m in reply.sends]
    assert isinstance(answer, MigrationRefuse)
    assert answer.reason.startswith("libvirt unreachable on h2 since 2026-12-03T10:00:00Z")


# --- a drain begun on the target --------------------------------------------------------


def test_a_drain_refuses_proposals_before_its_record_says_so() -> None:
    mesh = two_hosts()
    mesh.absorb("h2", mesh.core("h2").set_draining(True, 0.0))
    out = mesh.request("h1", "vm1", "h2")  # h1 sees no flag in h2's record yet
    assert isinstance(out.events[0], MigrationProposed)
    (refused,) = mesh.of("h1", MigrationRefused)
    assert refused.reason == "host draining: h2 takes no new VMs"
    assert mesh.core("h2").reservations() == []


def test_a_drain_stops_a_migration_admitted_a_moment_before_it() -> None:
    mesh = two_hosts()
    mesh.request("h1", "vm1", "h2")
    mid = started(mesh).migration_id  # admitted, libvirt asked to start
    mesh.absorb("h2", mesh.core("h2").set_draining(True, 0.1))
    mesh.flush()
    assert mesh.of("h1", AbortLibvirtMigration) == [AbortLibvirtMigration(mid, "vm1")]
    assert mesh.core("h1").phase_of(mid) is Phase.ABORTING
    mesh.call("h1", "migration_finished", mid, False, "operation aborted")
    mesh.call("h1", "vm_presence", "vm1", seen("h1"))
    (failed,) = mesh.of("h1", MigrationFailed)
    assert failed.reason == "host draining: h2 takes no new VMs"
    assert mesh.core("h2").reservations() == []
    assert mesh.core("h2").migrations()[0].outcome == "aborted"


def test_a_drain_lets_a_migration_in_post_copy_land() -> None:
    mesh = two_hosts()
    mesh.request("h1", "vm1", "h2")
    mid = started(mesh).migration_id
    mesh.call("h1", "migration_progress", mid, MigrationProgress(mid, 90, phase=JobPhase.POSTCOPY))
    mesh.absorb("h2", mesh.core("h2").set_draining(True, 1.0))
    mesh.flush()
    assert mesh.of("h1", AbortLibvirtMigration) == []
    assert mesh.core("h2").arriving("vm1")
    mesh.call("h1", "migration_finished", mid, True, "")
    assert mesh.core("h1").phase_of(mid) is Phase.COMMITTED
    assert not mesh.core("h2").arriving("vm1")  # landed: the drain moves it on


def test_only_the_target_may_withdraw_a_reservation() -> None:
    mesh = Mesh([host("h1", vm("vm1")), host("h2"), host("h3")])
    mesh.request("h1", "vm1", "h2")
    mid = started(mesh).migration_id
    mesh.core("h1").receive("h3", MigrationAbort(mid, "h3 says stop"), 0.5)
    assert mesh.core("h1").phase_of(mid) is Phase.MIGRATING
    assert mesh.core("h1").stats.wrong_peer == 1


def test_a_progress_report_back_out_of_post_copy_moves_and_renews_nothing() -> None:
    mesh = two_hosts()
    h2 = mesh.core("h2")

    def phase() -> Inbound:
        (held,) = h2.reservations()
        return held.phase

    h2.receive("h1", propose("m1"), 0.0)
    assert phase() is Inbound.RESERVED
    h2.receive("h1", MigrationProgress("m1", 40.0, phase=JobPhase.SWITCHOVER), 1.0)
    h2.receive("h1", MigrationProgress("m1", 45.0), 2.0)  # the source runs again: allowed
    assert phase() is Inbound.PRECOPY
    h2.receive("h1", MigrationProgress("m1", 50.0, phase=JobPhase.POSTCOPY), 3.0)
    (held,) = h2.reservations()
    assert (held.phase, held.percent) == (Inbound.POSTCOPY, 50.0)
    expires, invalid = held.expires, h2.stats.invalid

    out = h2.receive("h1", MigrationProgress("m1", 99.0, phase=JobPhase.PRECOPY), 10.0)

    assert out.sends == [] and out.events == []
    assert (held.phase, held.percent, held.expires) == (Inbound.POSTCOPY, 50.0, expires)
    assert h2.stats.invalid == invalid + 1
    h2.receive("h1", MigrationCommit("m1"), 11.0)
    assert phase() is Inbound.LANDED and held.landed
    h2.receive("h1", MigrationProgress("m1", 99.0, phase=JobPhase.POSTCOPY), 12.0)
    assert phase() is Inbound.LANDED


def test_the_inbound_table_lets_nothing_leave_post_copy_or_landed_but_forward() -> None:
    for phase in Inbound:
        for trigger in (*JobPhase, COMMIT):
            after = next_inbound(phase, trigger)
            if phase is Inbound.LANDED:
                assert after is None
            elif trigger == COMMIT:
                assert after is Inbound.LANDED
            elif phase is Inbound.POSTCOPY:
                assert after is (Inbound.POSTCOPY if trigger is JobPhase.POSTCOPY else None)
            else:
                assert after is Inbound(trigger.value)


# --- reservations a member cannot hold with words alone ----------------------------------


def test_a_reservation_libvirt_never_shows_lapses_however_often_it_is_renewed() -> None:
    mesh = two_hosts()
    h2 = mesh.core("h2")
    h2.receive("h1", propose("m1"), 0.0)
    for t in range(1, 20):  # the source keeps "renewing": no domain ever arrives
        h2.receive("h1", MigrationProgress("m1", percent=t), float(t))
    assert len(h2.reservations()) == 1
    out = h2.tick(20.0)
    assert h2.reservations() == []
    (released,) = [e for e in out.events if isinstance(e, ReservationReleased)]
    assert released.reason == "vm-m1 never showed in h2's libvirt within 20 s; h1 refused for 60 s"
    assert out.actions == []  # it never came: there is nothing to look for
    assert h2.stats.reservations_unused == 1
    reply = h2.receive("h1", propose("m2"), 21.0)
    (refusal,) = [m for _, m in reply.sends]
    assert isinstance(refusal, MigrationRefuse)
    assert refusal.reason == (
        "refused for 59 s more: h1's last reservation here never showed in libvirt"
    )
    reply = h2.receive("h3", propose("m3", "h3"), 21.0)  # others are not punished
    assert isinstance(reply.sends[0][1], MigrationAccept)


def test_the_penalty_doubles_and_a_migration_that_shows_restores_good_standing() -> None:
    mesh = two_hosts()
    h2 = mesh.core("h2")
    h2.receive("h1", propose("m1"), 0.0)
    h2.tick(20.0)
    h2.receive("h1", propose("m2"), 81.0)  # after 60 s: admitted again, and again unused
    h2.tick(101.0)
    reply = h2.receive("h1", propose("m3"), 220.0)
    assert "refused for 1 s more" in reply.sends[0][1].reason  # type: ignore[union-attr]
    reply = h2.receive("h1", propose("m4"), 222.0)
    assert isinstance(reply.sends[0][1], MigrationAccept)
    mesh.view.arriving("vm1", "h1", "h2")  # a real migration shows in libvirt ...
    mesh.view.update("h2", vms=(vm("vm-m4", state="paused"),))
    h2.tick(223.0)
    h2.receive("h1", MigrationAbort("m4", "done"), 224.0)
    h2.receive("h1", propose("m5"), 225.0)
    h2.tick(245.0)  # ... so an unused one costs 60 s again, not 240
    reply = h2.receive("h1", propose("m6"), 246.0)
    assert "refused for 59 s more" in reply.sends[0][1].reason  # type: ignore[union-attr]


def test_one_source_holds_at_most_one_reservation_not_yet_in_libvirt() -> None:
    mesh = Mesh([host("h1", vm("a"), vm("b")), host("h2", memory_mib=65536), host("h3")])
    h2 = mesh.core("h2")
    assert isinstance(h2.receive("h1", propose("m1"), 0.0).sends[0][1], MigrationAccept)
    reply = h2.receive("h1", propose("m2"), 0.5)
    assert reply.sends[0][1] == MigrationRefuse(
        "m2", "too many migrations from h1: 1 reserved here not started yet"
    )
    assert isinstance(h2.receive("h3", propose("m3", "h3"), 0.5).sends[0][1], MigrationAccept)
    h2.receive("h3", MigrationAbort("m3", "changed its mind"), 0.6)
    mesh.view.update("h2", vms=(vm("vm-m1", state="paused"),))  # h1's migration shows
    assert isinstance(h2.receive("h1", propose("m4"), 1.0).sends[0][1], MigrationAccept)


def test_the_source_remembers_where_its_last_committed_move_of_a_vm_took_it() -> None:
    mesh = two_hosts()
    assert mesh.core("h1").moved_to("vm1") is None
    mesh.request("h1", "vm1", "h2")
    mid = started(mesh).migration_id
    assert mesh.core("h1").moved_to("vm1") is None  # not while it runs
    mesh.call("h1", "migration_finished", mid, True, "")
    assert mesh.core("h1").moved_to("vm1") == "h2"
    assert mesh.core("h2").moved_to("vm1") is None  # the target moved nothing


def test_place_prefers_a_host_holding_the_vms_template_by_its_labels_or_as_told() -> None:
    """h2 and h3 are alike (h2 wins their tie); h3 holds debian-12:1 whole. The template
    is the VM's label where the view carries VM labels, else what the driver read."""
    labelled = dataclasses.replace(vm("vm1"), labels={TEMPLATE_LABEL: "debian-12:1"})
    h3 = dataclasses.replace(host("h3"), templates=("debian-12:1",))
    mesh = Mesh([host("h1", labelled, vm("vm2")), host("h2"), h3])
    core = mesh.core("h1")
    assert core.place("vm1").target == "h3"
    assert core.place("vm2").target == "h2"
    assert core.place("vm2", {"vm2": "debian-12:1"}).target == "h3"
    assert core.place_group(("vm1", "vm2")).target == "h3"  # the one template among them


def test_a_target_that_does_not_show_our_last_proposal_yet_is_full_from_here() -> None:
    """The source's mirror of the target's rule (one unseen reservation per source): until
    the target's record lists the arriving VM, another proposal there would be refused."""
    mesh = Mesh([host("h1", vm("vm1"), vm("vm2")), host("h2")])
    assert mesh.core("h1").targets_full_from_here() == set()
    assert mesh.core("h1").place("vm2").target == "h2"
    mesh.request("h1", "vm1", "h2")
    assert mesh.core("h1").targets_full_from_here() == {"h2"}
    placement = mesh.core("h1").place("vm2")  # a drain looks for the next VM's target
    assert placement.target is None
    assert (
        placement.reason == "no host can take it: h2: does not show h1's last migration there yet"
    )
    (refused,) = mesh.request("h1", "vm2", "h2").events  # by hand: refused here, with why
    assert isinstance(refused, MigrationRefused)
    assert refused.reason == (
        "too many migrations from h1: h2 does not show the last one yet; try again in a few seconds"
    )
    assert refused.kind is RefusalKind.CONFLICT
    mesh.view.arriving("vm1", "h1", "h2")  # h2's libvirt shows the incoming domain
    assert mesh.core("h1").targets_full_from_here() == set()
    assert mesh.core("h1").place("vm2").target == "h2"
