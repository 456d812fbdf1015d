"""Small simulations of whole clusters on the in-test network, judged by outcome.

Each run is deterministic (seeded RNGs, virtual clock) and takes well under a
second or two of real time.
"""

from __future__ import annotations

from novacron.agent.core.events import MemberFailed, MemberLeft, MemberSuspected
from novacron.agent.core.membership.config import MembershipConfig
from novacron.protocol.messages import IndirectPing, MemberState
from tests.core_harness import Net, record_for


def test_fresh_nodes_joining_one_by_one_converge_on_members_and_records() -> None:
    net = Net(seed=1)
    names = net.start_joined(50)
    net.run_for(60.0)
    assert net.converged()
    for node in net.nodes.values():
        assert set(node.records()) == set(names)
        assert all(node.record_version(n) == 1 for n in names)


def test_a_record_update_reaches_every_node_by_gossip() -> None:
    net = Net(seed=2)
    net.start_converged(50)
    net.run_for(5.0)
    net.apply("n017", net.nodes["n017"].update_record(record_for("n017", load=9.0), net.now))
    net.run_for(5.0)  # far below the push-pull interval: gossip alone did it
    assert all(node.records()["n017"].load == 9.0 for node in net.nodes.values())


def test_a_crash_is_detected_by_every_live_node() -> None:
    net = Net(seed=3)
    net.start_converged(50)
    net.run_for(5.0)
    net.crash("n023")
    crashed_at = net.now
    net.run_for(45.0)
    assert net.all_see("n023", MemberState.DEAD)
    failures = net.events_of(MemberFailed)
    assert {observer for _, observer, _ in failures} == set(net.live())
    assert max(t for t, _, _ in failures) - crashed_at < 40.0
    assert all(e.node_id == "n023" for _, _, e in failures)  # type: ignore[union-attr]


def test_an_indirect_probe_saves_a_node_with_one_bad_link() -> None:
    net = Net(seed=4)
    net.start_converged(10)
    net.break_link("n000", "n001")
    net.run_for(120.0)
    assert net.converged()
    assert not net.events_of(MemberSuspected)
    assert any(
        isinstance(m, IndirectPing) and src == "n000" and m.target == "n001"
        for src, _, m in net.sent
    )


def test_no_false_positive_at_low_loss() -> None:
    net = Net(seed=5, loss=0.01)
    net.start_converged(50)
    net.run_for(120.0)
    assert not net.events_of(MemberFailed)
    assert net.converged()


def test_a_graceful_leave_is_not_a_failure() -> None:
    net = Net(seed=6)
    net.start_converged(30)
    net.run_for(3.0)
    net.apply("n011", net.nodes["n011"].leave(net.now))
    net.run_for(10.0)
    net.crash("n011")  # the process exits after leaving
    net.run_for(60.0)
    assert net.all_see("n011", MemberState.LEFT)
    assert not net.events_of(MemberFailed)
    assert {o for _, o, _ in net.events_of(MemberLeft)} == set(net.live())


def test_a_partition_heals_without_operator_action() -> None:
    net = Net(seed=7)
    net.start_converged(20)
    names = sorted(net.nodes)
    left, right = names[:10], names[10:]
    net.run_for(5.0)
    net.partition(left, right)
    net.run_for(90.0)
    assert all(net.state_in(a, b) is MemberState.DEAD for a in left for b in right)
    assert all(net.state_in(b, a) is MemberState.DEAD for a in left for b in right)
    net.heal()
    net.run_for(30.0 + 60.0)  # a reconnect interval, then time for gossip
    assert net.converged()
    assert sum(n.stats.reconnects_attempted for n in net.nodes.values()) > 0


def test_records_changed_during_a_partition_catch_up_after_it() -> None:
    net = Net(seed=8, config=MembershipConfig(push_pull_interval=10.0))
    net.start_converged(20)
    names = sorted(net.nodes)
    net.partition(names[:10], names[10:])
    net.run_for(2.0)
    for name in names[:3]:
        net.apply(name, net.nodes[name].update_record(record_for(name, load=5.0), net.now))
    net.run_for(5.0)  # short: nobody is declared dead, gossip just cannot cross
    net.heal()
    net.run_for(40.0)
    assert all(node.record_version(n) == 2 for node in net.nodes.values() for n in names[:3])


def test_snapshot_nodes_hold_only_their_changes() -> None:
    net = Net(seed=9)
    net.start_converged(300)
    net.crash("n150")
    net.run_for(30.0)
    private = [net.nodes[n].private_entries() for n in net.live()]
    assert max(private) < 20  # themselves, the failed member, a few refreshed entries
    assert net.all_see("n150", MemberState.DEAD)
