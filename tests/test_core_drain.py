"""The drain core (`agent/core/rebalancing/drain.py`): which VM a draining host moves next,
when a VM that could not move is tried again, and what the drain reports as moved and waiting.

The agent's `Drain` and the rebalancing simulator drive this same class; the
agent's shell is tested in tests/test_drain.py, the real moves in the lab.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from novacron.agent.core.rebalancing.drain import DrainCore, DrainTiming, Ended, not_moved, staying


@dataclass
class Host:
    """A draining host: its VMs, the migrations its driver started, and how they ended."""

    states: dict[str, str]
    running: dict[str, str] = field(default_factory=dict)  # migration id -> VM
    ends: dict[str, Ended] = field(default_factory=dict)
    doubts: dict[str, str] = field(default_factory=dict)
    inbound: set[str] = field(default_factory=set)
    groups: dict[str, str] = field(default_factory=dict)  # VM -> affinity group
    loads: dict[str, float] = field(default_factory=dict)  # VM -> CPU load (cores)

    def vm_states(self) -> dict[str, str]:
        return self.states

    def busy(self, vm: str) -> bool:
        return vm in self.running.values()

    def arriving(self, vm: str) -> bool:
        return vm in self.inbound

    def doubt(self, vm: str) -> str | None:
        return self.doubts.get(vm)

    def outbound(self) -> int:
        return len(self.running)

    def ended(self, migration_id: str) -> Ended | None:
        return self.ends.get(migration_id)

    def group_of(self, vm: str) -> str:
        return self.groups.get(vm, "")

    def load(self, vm: str) -> float:
        return self.loads.get(vm, 0.0)

    def start(self, core: DrainCore, move: tuple[str, ...]) -> list[str]:
        ids = []
        for vm in move:
            migration_id = f"m-{vm}-{len(self.ends) + len(self.running)}"
            self.running[migration_id] = vm
            ids.append(migration_id)
        core.started(move, ids)
        return ids

    def end(self, migration_id: str, outcome: str, reason: str = "") -> None:
        vm = self.running.pop(migration_id)
        self.ends[migration_id] = Ended(vm, outcome, reason)
        if outcome == "committed":
            del self.states[vm]


def look(core: DrainCore, host: Host, now: float) -> list[str]:
    """One look in which every offered move starts: the VMs started, in order."""
    core.look(now, host)
    started: list[str] = []
    while (move := core.next_move(now, host)) is not None:
        host.start(core, move)
        started += move
    return started


def test_a_look_starts_running_vms_by_name_two_at_a_time() -> None:
    host = Host({"c": "running", "a": "paused", "b": "running", "off": "shutoff"})
    core = DrainCore(max_outbound=2)
    assert look(core, host, 0.0) == ["a", "b"]
    assert look(core, host, 1.0) == []  # both slots busy
    (first,) = [mid for mid, vm in host.running.items() if vm == "a"]
    host.end(first, "committed")
    assert look(core, host, 2.0) == ["c"]  # the stopped VM is never moved
    assert core.moved(host) == {"a"}
    assert staying(host.states) == ["b", "c"] and not_moved(host.states) == {"off": "shutoff"}


def test_a_vm_with_no_target_waits_ten_seconds_but_one_second_if_a_target_only_lags() -> None:
    host = Host({"a": "running", "b": "running"})
    core = DrainCore(max_outbound=2)
    core.look(0.0, host)
    assert core.next_move(0.0, host) == ("a",)
    core.no_target(("a",), "no host can take it: h2: host draining", 0.0)
    assert core.next_move(0.0, host) == ("b",)
    lags = "no host can take it: h2: does not show h1's last migration"
    core.no_target(("b",), lags, 0.0, {"h2"})
    assert core.next_move(0.0, host) is None  # each VM is offered once a look
    assert core.blocked(host.states) == {
        "a": "no host can take it: h2: host draining",
        "b": "no host can take it: h2: does not show h1's last migration",
    }
    assert look(core, host, 1.0) == ["b"]  # the target that lagged opens within seconds
    assert look(core, host, 9.9) == []
    assert look(core, host, 10.0) == ["a"]
    assert core.blocked(host.states) == {}


def test_a_refused_or_failed_migration_makes_its_vm_wait_with_the_reason() -> None:
    host = Host({"a": "running", "b": "running"})
    core = DrainCore(max_outbound=2)
    core.look(0.0, host)
    assert core.next_move(0.0, host) == ("a",)
    core.refused(("a",), "too many migrations: 2 running in the cluster, limit 2", 0.0)
    assert core.next_move(0.0, host) == ("b",)
    (migration_id,) = host.start(core, ("b",))
    host.end(migration_id, "aborted", "cancelled by operator")
    core.look(1.0, host)
    assert core.blocked(host.states) == {
        "a": "too many migrations: 2 running in the cluster, limit 2",
        "b": f"migration {migration_id} aborted: cancelled by operator",
    }
    assert core.moving() == {}  # the failed attempt is no longer the VM's move
    assert look(core, host, 10.9) == ["a"]
    assert look(core, host, 11.0) == ["b"]


def test_vms_in_doubt_arriving_or_already_moved_are_left_alone() -> None:
    host = Host({"a": "running", "b": "running", "c": "running"}, inbound={"c"})
    host.doubts["a"] = "in doubt: runs on h1 and h2"
    core = DrainCore(max_outbound=2)
    assert look(core, host, 0.0) == ["b"]
    (migration_id,) = host.running
    host.running.clear()
    host.ends[migration_id] = Ended("b", "committed")  # the record still lists b
    assert look(core, host, 1.0) == []
    assert core.moved(host) == {"b"}
    assert core.blocked(host.states) == {"a": "in doubt: runs on h1 and h2"}


def test_a_new_drain_forgets_the_last_one() -> None:
    host = Host({"a": "running"})
    core = DrainCore(max_outbound=1, timing=DrainTiming(interval=1.0, retry_after=30.0))
    core.look(0.0, host)
    assert core.next_move(0.0, host) == ("a",)
    core.refused(("a",), "no", 0.0)
    assert look(core, host, 29.0) == []
    core.begin()
    assert look(core, host, 29.0) == ["a"]


def test_an_affinity_group_moves_whole_when_a_slot_is_free_for_each() -> None:
    host = Host({"app": "running", "db": "running", "z": "running"})
    host.groups = {"app": "shop", "db": "shop"}
    core = DrainCore(max_outbound=2)
    core.look(0.0, host)
    assert core.next_move(0.0, host) == ("app", "db")  # one move: one target for both
    moves = host.start(core, ("app", "db"))
    assert core.next_move(0.0, host) is None  # both slots taken
    for migration_id in moves:
        host.end(migration_id, "committed")
    assert look(core, host, 1.0) == ["z"] and core.moved(host) == {"app", "db"}


def test_an_affinity_group_waits_while_one_of_its_vms_cannot_move() -> None:
    host = Host({"app": "running", "db": "running"}, inbound={"db"})
    host.groups = {"app": "shop", "db": "shop"}
    core = DrainCore(max_outbound=2)
    assert look(core, host, 0.0) == []  # db still arriving: app does not go without it
    host.inbound.clear()
    core.look(1.0, host)
    assert core.next_move(1.0, host) == ("app", "db")
    core.no_target(("app", "db"), "no host has room for both", 1.0)
    assert core.blocked(host.states) == {
        "app": "no host has room for both",
        "db": "no host has room for both",
    }
    assert look(core, host, 10.9) == [] and look(core, host, 11.0) == ["app", "db"]


def test_a_group_larger_than_the_outbound_limit_goes_one_by_one() -> None:
    host = Host({"a": "running", "b": "running", "c": "running"})
    host.groups = dict.fromkeys(host.states, "big")
    core = DrainCore(max_outbound=2)
    assert look(core, host, 0.0) == ["a", "b"]  # it could never go whole


def test_the_heaviest_vms_are_offered_first() -> None:
    host = Host({"a": "running", "b": "running", "c": "running", "d": "running"})
    host.loads = {"c": 2.0, "b": 0.5, "d": 0.5}
    core = DrainCore(max_outbound=4)
    assert look(core, host, 0.0) == ["c", "b", "d", "a"]
