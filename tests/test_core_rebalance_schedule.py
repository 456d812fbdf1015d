"""When a host plans (`agent/core/rebalancing/schedule.py`): its timer, and the news that
makes a round due sooner. The agent's rebalancer (tests/test_rebalancer.py) and the
rebalancing simulator (tests/test_sim_rebalance.py) drive this same class."""

from __future__ import annotations

import pytest

from novacron.agent.core.rebalancing.schedule import RebalanceSchedule, seen
from novacron.protocol.messages import NodeRecord, Resources, VmSummary


def record(version: int, *vms: str) -> NodeRecord:
    summaries = tuple(VmSummary(vm, state="running", vcpus=1, memory_mib=256) for vm in vms)
    return NodeRecord("h1", version, capacity=Resources(vcpus=4, memory_mib=8192), vms=summaries)


def never() -> bool:
    raise AssertionError("no new record: nothing to judge")


def test_timed_rounds_are_a_whole_interval_after_the_last_round_or_skipped_round() -> None:
    schedule = RebalanceSchedule(interval=2.0, max_outbound=2, first_round=0.4)
    assert not schedule.timer_due(0.3) and schedule.timer_due(1.0)
    schedule.planned(1.0, seen(record(1, "a"), 0), started=0)
    assert not schedule.timer_due(2.9) and schedule.timer_due(3.0)
    schedule.skipped(3.5, seen(record(1, "a"), 0))  # paused: no round, the timer runs on
    assert schedule.next_round == 5.5


def test_a_freed_slot_makes_a_round_due_once_the_own_record_shows_the_vm_gone() -> None:
    schedule = RebalanceSchedule(interval=60.0, max_outbound=2)
    schedule.planned(0.0, seen(record(1, "a", "b", "c"), 0), started=2)  # a and b leave
    assert not schedule.due_now(2, record(1, "a", "b", "c"), never)  # no slot free
    # a landed: one slot free, but the record still lists it (its load would count here)
    assert not schedule.slot_freed(1, record(1, "a", "b", "c"))
    assert schedule.due_now(1, record(2, "b", "c"), lambda: False)
    schedule.planned(5.0, seen(record(2, "b", "c"), 1), started=0)
    assert not schedule.due_now(1, record(2, "b", "c"), never)  # noted by the round


def test_a_newer_own_record_over_the_line_makes_a_round_due_judged_once_a_version() -> None:
    schedule = RebalanceSchedule(interval=60.0, max_outbound=2)
    schedule.planned(0.0, seen(record(1, "a"), 0), started=0)
    assert not schedule.due_now(0, record(1, "a"), never)  # the record the round saw
    judged: list[int] = []

    def hot() -> bool:
        judged.append(1)
        return True

    assert schedule.due_now(0, record(2, "a"), hot)
    assert schedule.due_now(0, record(2, "a"), hot)
    assert len(judged) == 1  # the view's scan runs once a version
    assert not schedule.due_now(2, record(3, "a"), hot)  # no free slot: nothing to start
    assert not schedule.newly_hot(record(4, "a"), lambda: False)


def test_nonsense_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        RebalanceSchedule(interval=0.0, max_outbound=2)
    with pytest.raises(ValueError):
        RebalanceSchedule(interval=5.0, max_outbound=0)
