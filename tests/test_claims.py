"""VMs claimed by several records: judged by each claimant's libvirt (agent/claims.py).

The looks are a stand-in here (what each libvirt says is the test's input); the lab
(tests/test_admission_lab.py) has a real member lying, with real libvirtd.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from novacron.agent.claims import ClaimCheck
from novacron.agent.core.migration.location import Presence, Where
from novacron.agent.view import MeshView
from novacron.simulations.migrations import View, host, vm

RUNNING = Presence(Where.RUNNING, "running", "u1")
ABSENT = Presence(Where.ABSENT, "not defined")


class Looks:
    """What each host's libvirt says, set by the test; remembers looks and retirements."""

    def __init__(self, seen: dict[str, Presence]) -> None:
        self.seen = seen
        self.looked: list[tuple[str, tuple[str, ...]]] = []
        self.retired: list[tuple[str, str, str]] = []

    async def look(self, name: str, hosts: Iterable[str]) -> dict[str, Presence]:
        hosts = tuple(hosts)
        self.looked.append((name, hosts))
        return {h: self.seen[h] for h in hosts}

    async def retire(self, name: str, node: str, uuid: str, force: bool = False) -> str:
        self.retired.append((name, node, uuid))
        return "undefined"


def check(view: View, looks: Looks, me: str = "h2") -> ClaimCheck:
    return ClaimCheck(me, lambda: view, looks, clock=lambda: 0.0)  # type: ignore[arg-type]


class Core:
    """The few membership-core reads `MeshView.vms` makes."""

    def __init__(self, view: View) -> None:
        self.view = view

    def records(self) -> Any:
        return self.view.records()

    def member(self, node_id: str) -> Any:
        return self.view.member(node_id)


async def test_a_claim_the_claimants_libvirt_denies_is_listed_apart_not_believed() -> None:
    view = View([host("h1", vm("web")), host("h2"), host("h3", vm("web"))])
    looks = Looks({"h1": RUNNING, "h3": ABSENT})
    claims = check(view, looks)
    await claims.check()
    assert looks.looked == [("web", ("h1", "h3"))]
    assert claims.believed("web", "h3") == "h3's libvirt: not defined"
    mesh = MeshView(lambda: Core(view), lambda: 0.0, dict, lambda: claims.verdicts)  # type: ignore[arg-type,return-value]
    assert [(row.name, row.host) for row in mesh.vms()] == [("web", "h1")]
    (conflict,) = mesh.conflicts()
    assert (conflict.vm.host, conflict.runs_on, conflict.why) == (
        "h3",
        ("h1",),
        "h3's libvirt: not defined",
    )
    await claims.check()
    assert len(looks.looked) == 1  # unchanged claims are not looked at again at once
    view.update("h3", vms=())  # the claim is withdrawn: nothing left to judge
    await claims.check()
    assert claims.verdicts == {}


async def test_a_copy_a_migration_left_on_this_host_is_retired_and_a_namesake_is_not() -> None:
    view = View([host("h1", vm("web")), host("h2", vm("web", state="shutoff"))])
    leftover = Presence(Where.STOPPED, "shut off (migrated)", "u1", leftover=True)
    looks = Looks({"h1": RUNNING, "h2": leftover})
    await check(view, looks).check()
    assert looks.retired == [("web", "h2", "u1")]

    namesake = Presence(Where.STOPPED, "shut off", "u2")  # another VM of the same name
    looks = Looks({"h1": RUNNING, "h2": namesake})
    claims = check(view, looks)
    await claims.check()
    assert looks.retired == [] and claims.believed("web", "h2") is None


async def test_a_vm_being_migrated_is_left_to_its_migration() -> None:
    view = View([host("h1", vm("web")), host("h2", vm("web", state="paused"))])
    moving = Presence(Where.MIGRATING, "paused (migrating)", "u1")
    looks = Looks({"h1": RUNNING, "h2": moving})
    claims = ClaimCheck("h2", lambda: view, looks, clock=lambda: 0.0, in_flight=lambda v: True)  # type: ignore[arg-type]
    await claims.check()
    assert looks.looked == [] and claims.verdicts == {}


async def test_a_stopped_copy_left_where_our_own_migration_moved_the_vm_from_is_retired() -> None:
    """A restarted libvirtd may shut the source's half down in its own words ("destroyed",
    "failed"): after this host's committed migration to where it runs, it still goes."""
    view = View([host("h1", vm("web")), host("h2", vm("web", state="shutoff"))])
    shut = Presence(Where.STOPPED, "shut off (destroyed)", "u1", persistent=True)
    looks = Looks({"h1": RUNNING, "h2": shut})
    moved_to = {"web": "h1"}
    claims = ClaimCheck("h2", lambda: view, looks, clock=lambda: 0.0, moved_to=moved_to.get)  # type: ignore[arg-type]
    await claims.check()
    assert looks.retired == [("web", "h2", "u1")]

    looks = Looks({"h1": RUNNING, "h2": shut})  # our last move of it went elsewhere, or failed
    for elsewhere in ({"web": "h3"}, {}):
        claims = ClaimCheck("h2", lambda: view, looks, clock=lambda: 0.0, moved_to=elsewhere.get)  # type: ignore[arg-type]
        await claims.check()
    assert looks.retired == []


class FailingLooks(Looks):
    """A libvirtd that cannot retire the copy the first time (its job lock is still held)."""

    async def retire(self, name: str, node: str, uuid: str, force: bool = False) -> str:
        self.retired.append((name, node, uuid))
        return "failed: h2's libvirt did not answer" if len(self.retired) == 1 else "undefined"


async def test_a_retire_that_failed_is_tried_again_at_the_next_look() -> None:
    view = View([host("h1", vm("web")), host("h2", vm("web", state="shutoff"))])
    leftover = Presence(Where.STOPPED, "shut off (migrated)", "u1", leftover=True)
    looks = FailingLooks({"h1": RUNNING, "h2": leftover})
    claims = check(view, looks)
    await claims.check()
    await claims.check()  # the claims did not change, yet the copy is still there
    assert looks.retired == [("web", "h2", "u1")] * 2
