"""Where a VM runs after a fault, decided by the hypervisors' evidence
(`core/migration/location.py`), and how a saga in doubt ends: by evidence, by retiring stale
copies, or visibly in doubt.

The cases are the lab's (the source's libvirtd killed in pre-copy, at the
switchover, at the post-copy switch): what each host's libvirt said there.
"""

from __future__ import annotations

import pytest

from novacron.agent.core.events import (
    MigrationCompleted,
    MigrationFailed,
    MigrationInDoubt,
    MigrationUndecided,
    ReconcileVm,
    RetireStaleCopy,
    StartLibvirtMigration,
)
from novacron.agent.core.migration.location import (
    Doubt,
    On,
    Presence,
    Recovery,
    Wait,
    Where,
    claimants,
    locate,
    others_claiming,
    recovery,
)
from novacron.agent.core.migration.saga import MigrationConfig, Phase
from novacron.protocol.messages import MigrationAbort, MigrationCommit, MigrationPropose
from novacron.simulations.migrations import Mesh, host, seen, vm

RUNNING = Presence(Where.RUNNING, "running", "u1")
ABSENT = Presence(Where.ABSENT, "not defined")
LEFTOVER = Presence(Where.STOPPED, "shut off (migrated)", "u1", leftover=True)
POSTCOPY_SOURCE = Presence(Where.MIGRATING, "paused (post-copy)", "u1")
SWITCHOVER_SOURCE = Presence(Where.MIGRATING, "paused (migrating)", "u1")
UNKNOWN = Presence(Where.UNKNOWN, "h1's libvirt: Connection refused")
KILLED = Presence(Where.STOPPED, "shut off (killed by libvirtd)", "u1")


# --- the pure rule --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("h1", "h2", "verdict"),
    [
        # pre-copy: the restarted libvirtd resumed the guest on the source
        (RUNNING, ABSENT, On("h1")),
        (RUNNING, Presence(Where.MIGRATING, "paused (migrating)"), On("h1", ("h2",))),
        # the target has the whole guest: whatever the source kept is stale
        (LEFTOVER, RUNNING, On("h2", ("h1",))),
        (POSTCOPY_SOURCE, RUNNING, On("h2", ("h1",))),
        (SWITCHOVER_SOURCE, RUNNING, On("h2", ("h1",))),
        (UNKNOWN, RUNNING, On("h2")),  # nothing to retire on a host that does not answer
        # the target still pulls pages: both halves are needed
        (POSTCOPY_SOURCE, Presence(Where.MIGRATING, "running (post-copy)"), Wait("")),
        (UNKNOWN, ABSENT, Wait("")),
        # nothing runs it, or two do
        (KILLED, ABSENT, Doubt("runs on no host", ("h1",))),
        (RUNNING, RUNNING, Doubt("runs on h1 and h2 at once", ("h1", "h2"))),
        (Presence(Where.PAUSED, "paused"), ABSENT, On("h1")),
    ],
)
def test_locate_decides_from_what_each_libvirt_says(
    h1: Presence, h2: Presence, verdict: On | Wait | Doubt
) -> None:
    found = locate({"h1": h1, "h2": h2})
    if isinstance(verdict, Wait):
        assert isinstance(found, Wait) and found.why
    else:
        assert found == verdict


def test_claims_of_one_vm_by_several_records_are_found() -> None:
    records = {
        "h1": host("h1", vm("a"), vm("b", state="shutoff")),
        "h2": host("h2", vm("b")),
        "h3": host("h3", vm("a")),
    }
    assert claimants(records) == {"a": ("h1", "h3"), "b": ("h1", "h2")}
    assert others_claiming(records, "b", "h2") == ()  # a stopped copy claims nothing
    assert others_claiming(records, "a", "h1") == ("h3",)


# --- sagas ended by the evidence ------------------------------------------------------------


def reconciling(config: MigrationConfig | None = None) -> tuple[Mesh, str]:
    """h1's migration of vm1 to h2 failed at t=1 (h1's libvirtd went away): in doubt."""
    mesh = Mesh([host("h1", vm("vm1")), host("h2")], config=config)
    mesh.request("h1", "vm1", "h2")
    mid = mesh.of("h1", StartLibvirtMigration)[-1].migration_id
    mesh.now = 1.0
    mesh.call("h1", "migration_finished", mid, False, "End of file while reading data")
    assert mesh.core("h1").phase_of(mid) is Phase.RECONCILING
    return mesh, mid


def test_a_source_left_paused_for_post_copy_is_retired_once_the_target_runs_the_guest() -> None:
    mesh, mid = reconciling()
    mesh.call("h1", "vm_presence", "vm1", {"h1": POSTCOPY_SOURCE, "h2": RUNNING})
    (done,) = mesh.of("h1", MigrationCompleted)
    assert done.note == "found on the target by reconcile"
    assert mesh.of("h1", RetireStaleCopy) == [RetireStaleCopy(mid, "vm1", "h1", "u1", "h2")]
    assert not mesh.core("h1").busy("vm1")


def test_a_definition_left_behind_on_the_source_is_retired() -> None:
    mesh, mid = reconciling()
    mesh.call("h1", "vm_presence", "vm1", {"h1": LEFTOVER, "h2": RUNNING})
    assert mesh.core("h1").phase_of(mid) is Phase.COMMITTED
    assert [(r.host, r.runs_on) for r in mesh.of("h1", RetireStaleCopy)] == [("h1", "h2")]


def test_while_a_job_holds_the_domain_the_saga_looks_again_soon_and_says_why_once() -> None:
    mesh, _ = reconciling()
    for t in (1.0, 2.0, 3.0):
        mesh.now = t
        mesh.call("h1", "vm_presence", "vm1", {"h1": POSTCOPY_SOURCE, "h2": ABSENT})
        assert mesh.core("h1").next_deadline() == pytest.approx(t + 1.0)
    doubts = [e.reason for e in mesh.of("h1", MigrationInDoubt)]
    assert doubts.count("h1: paused (post-copy)") == 1  # not logged at every look
    assert len(mesh.of("h1", ReconcileVm)) == 1
    mesh.run(4.0)
    assert len(mesh.of("h1", ReconcileVm)) == 2  # asked again when due


def test_a_vm_on_no_host_ends_in_doubt_with_the_command_that_settles_it() -> None:
    mesh, mid = reconciling()
    mesh.now = 2.0
    mesh.call("h1", "vm_presence", "vm1", {"h1": KILLED, "h2": ABSENT})
    assert mesh.core("h1").phase_of(mid) is Phase.RECONCILING  # give it a moment
    mesh.now = 6.5
    mesh.call("h1", "vm_presence", "vm1", {"h1": KILLED, "h2": ABSENT})

    assert mesh.core("h1").phase_of(mid) is Phase.IN_DOUBT
    (undecided,) = mesh.of("h1", MigrationUndecided)
    assert undecided.reason == (
        "in doubt: vm1 runs on no host (End of file while reading data); "
        "run `nova vm recover vm1 --on HOST` (HOST: h1 hold a copy)"
    )
    assert undecided.candidates == ("h1",)
    assert not mesh.core("h1").busy("vm1")  # cancel, delete, recover are free to act
    doubt = mesh.core("h1").doubt("vm1")
    assert doubt is not None and doubt.migration_id == mid
    (row,) = mesh.core("h1").migrations()
    assert (row.phase, row.outcome) == ("in-doubt", "in-doubt")
    (abort,) = mesh.sent_of(MigrationAbort, "h1")
    assert (abort.outcome, abort.reason) == ("in-doubt", undecided.reason)
    (inbound,) = mesh.core("h2").migrations()
    assert (inbound.phase, inbound.outcome) == ("in-doubt", "in-doubt")


def test_evidence_that_never_decides_ends_in_doubt_at_the_deadline() -> None:
    mesh, mid = reconciling(MigrationConfig(reconcile_deadline=30.0))
    while mesh.now < 40.0 and mesh.core("h1").phase_of(mid) is Phase.RECONCILING:
        mesh.call("h1", "vm_presence", "vm1", {"h1": POSTCOPY_SOURCE, "h2": UNKNOWN})
        mesh.now += 1.0
    assert mesh.core("h1").phase_of(mid) is Phase.IN_DOUBT
    assert 30.0 <= mesh.now <= 32.0
    (undecided,) = mesh.of("h1", MigrationUndecided)
    assert undecided.reason.startswith(
        "in doubt: vm1 could not be located within 30 s (h1: paused (post-copy)"
    )


def test_hypervisors_that_never_answer_end_in_doubt_at_the_deadline_too() -> None:
    mesh, mid = reconciling(MigrationConfig(reconcile_deadline=30.0))
    mesh.run(45.0)  # the looks never come back: the re-asks do not go on for ever
    assert mesh.core("h1").phase_of(mid) is Phase.IN_DOUBT
    why = mesh.of("h1", MigrationUndecided)[0].reason
    assert why.startswith("in doubt: vm1 could not be located: no hypervisor answered in 30 s")


def test_a_doubt_ends_when_some_host_runs_the_vm_again() -> None:
    mesh, _ = reconciling(MigrationConfig(doubt_after=0.0))
    mesh.call("h1", "vm_presence", "vm1", {"h1": KILLED, "h2": ABSENT})
    assert mesh.core("h1").doubt("vm1") is not None
    mesh.view.update("h1", vms=(vm("vm1", state="shutoff"),))
    mesh.step()
    assert mesh.core("h1").doubt("vm1") is not None  # a stopped copy is no answer
    mesh.view.update("h1", vms=(vm("vm1"),))  # the operator recovered it here
    mesh.step()
    assert mesh.core("h1").doubts() == []


def test_two_running_copies_are_a_doubt_not_a_guess() -> None:
    mesh, mid = reconciling(MigrationConfig(doubt_after=0.0))
    mesh.call("h1", "vm_presence", "vm1", seen("h1", h2=RUNNING))
    assert mesh.core("h1").phase_of(mid) is Phase.IN_DOUBT
    assert mesh.of("h1", MigrationUndecided)[0].candidates == ("h1", "h2")
    assert mesh.of("h1", RetireStaleCopy) == []  # nothing running is ever removed


def test_found_back_on_the_source_aborts() -> None:
    mesh, _ = reconciling()
    mesh.call("h1", "vm_presence", "vm1", {"h1": RUNNING, "h2": ABSENT})
    (failed,) = mesh.of("h1", MigrationFailed)
    assert failed.reason == "End of file while reading data"
    assert mesh.of("h1", RetireStaleCopy) == []


# --- times: the same wherever you ask ------------------------------------------------------


def test_both_hosts_show_the_sources_wall_clock_times() -> None:
    mesh = Mesh([host("h1", vm("vm1")), host("h2")])
    for core, skew in ((mesh.core("h1"), 1000.0), (mesh.core("h2"), 1042.5)):
        core._wall = lambda now, skew=skew: now + skew  # type: ignore[misc]
    mesh.request("h1", "vm1", "h2")
    assert mesh.sent_of(MigrationPropose)[0].started_at == 1000.0
    mid = mesh.of("h1", StartLibvirtMigration)[-1].migration_id
    mesh.now = 7.0
    mesh.call("h1", "migration_finished", mid, True, "")
    assert mesh.sent_of(MigrationCommit)[0].ended_at == 1007.0
    (out,) = mesh.core("h1").migrations()
    (inbound,) = mesh.core("h2").migrations()
    assert (
        (out.started_at, out.ended_at)
        == (inbound.started_at, inbound.ended_at)
        == (
            1000.0,
            1007.0,
        )
    )
    assert (
        (out.phase, out.outcome)
        == (inbound.phase, inbound.outcome)
        == (
            "committed",
            "committed",
        )
    )


# --- nova vm recover ---------------------------------------------------------------------

DEFINED = Presence(Where.STOPPED, "shut off (crashed)", "u1", persistent=True)
HALF = Presence(Where.MIGRATING, "paused (post-copy failed)", "u1", persistent=True, split=True)


@pytest.mark.parametrize(
    ("seen", "host", "plan"),
    [
        ({"h1": HALF, "h2": ABSENT}, "h1", Recovery("h1", (), start=True)),
        ({"h1": HALF, "h2": DEFINED}, "h1", Recovery("h1", ("h2",), start=True)),
        ({"h1": DEFINED, "h2": HALF}, "h1", Recovery("h1", ("h2",), start=True)),
        ({"h1": RUNNING, "h2": LEFTOVER}, "h1", Recovery("h1", ("h2",), start=False)),
        ({"h1": RUNNING, "h2": RUNNING}, "h2", Recovery("h2", ("h1",), start=False)),
        ({"h1": RUNNING, "h2": DEFINED}, "h2", "vm1 runs on h1 (running): nothing to recover"),
        ({"h1": HALF, "h2": UNKNOWN}, "h1", "cannot tell whether vm1 runs elsewhere"),
        ({"h1": HALF, "h2": POSTCOPY_SOURCE}, "h1", "a migration between h1 and h2 still"),
        ({"h1": HALF, "h2": ABSENT}, "h2", "h2 holds no definition of vm1: h1 hold(s) one"),
    ],
)
def test_recovery_is_planned_from_the_evidence_or_refused_with_a_reason(
    seen: dict[str, Presence], host: str, plan: Recovery | str
) -> None:
    found = recovery(seen, host, "vm1")
    if isinstance(plan, str):
        assert isinstance(found, str) and found.startswith(plan), found
    else:
        assert found == plan


def test_a_post_copy_that_lost_its_other_half_is_in_doubt_without_waiting() -> None:
    verdict = locate({"h1": HALF, "h2": ABSENT})
    assert verdict == Doubt(
        "lost half of its post-copy: only h1 holds a part (paused (post-copy failed))", ("h1",)
    )
