"""An agent restarted soon after its last exchange (a crash and a quick restart, a
`systemctl restart`): the mesh answers its join, and a goodbye said at once still
reaches those that hold it alive."""

from __future__ import annotations

from novacron.agent.core.events import Output
from novacron.agent.core.membership.node import MembershipNode
from novacron.protocol.messages import Alive, Dead, Leave, MemberState, Suspect
from tests.core_harness import CONFIG, Net, address_of, make_node, sign


def state_of(node: MembershipNode, member: str) -> MemberState | None:
    info = node.member(member)
    return None if info is None else info.state


def restarted(net: Net, node_id: str, seed: str, *, noticed: bool = True) -> MembershipNode:
    """`node_id` killed, held suspect by `seed` if `noticed`, and started again (a new
    life at incarnation 1, knowing nobody), joining through `seed`."""
    net.crash(node_id)
    while noticed and state_of(net.nodes[seed], node_id) is MemberState.ALIVE:
        net.run_for(0.1)
    assert net.now < CONFIG.reconnect_interval  # within one of the join's exchange
    net.crashed.discard(node_id)
    node = make_node(node_id, net.config, seed=1, now=net.now)
    net.add(node, node.join([(seed, address_of(seed))], net.now))
    return node


def held_after_goodbye(net: Net, goodbye: Output) -> MemberState | None:
    """n001 says goodbye (`goodbye`, what `leave` gave), gossips a moment more and exits
    (as the agent does): how n000 holds it once n000 had time to fail it."""
    net.apply("n001", goodbye)
    net.run_for(CONFIG.gossip_interval)
    net.crash("n001")
    net.run_for(CONFIG.reconnect_interval * 3)
    return state_of(net.nodes["n000"], "n001")


def test_a_member_restarted_within_a_reconnect_interval_learns_the_mesh_at_once() -> None:
    net = Net(config=CONFIG)
    net.start_joined(2)
    node = restarted(net, "n001", "n000")
    net.run_for(0.5)
    seen = node.member("n000")
    assert seen is not None and seen.state is MemberState.ALIVE
    assert net.nodes["n000"].stats.exchanges_ignored == 0


def test_a_member_that_leaves_right_after_a_restart_is_held_left_not_failed() -> None:
    net = Net(config=CONFIG)
    net.start_joined(2)
    node = restarted(net, "n001", "n000")
    net.run_for(0.001)  # its join is on its way; nothing has come back yet
    assert node.member("n000") is None
    assert held_after_goodbye(net, node.leave(net.now)) is MemberState.LEFT


def test_a_goodbye_said_at_once_is_heard_though_the_last_life_was_higher() -> None:
    """The last life refuted a suspicion (incarnation 2); the new one starts at 1 and
    leaves before anything came back: its Leave at 1 is below what the peer holds. The
    join's answer, coming while it says goodbye, tells it so: it signs the Leave again
    at the incarnation the peer holds, and sends it there."""
    net = Net(config=CONFIG)
    net.start_joined(2)
    first = net.nodes["n001"]
    net.apply("n001", first.receive("n000", sign(Suspect("n001", 1, "n000")), net.now))
    net.run_for(1.0)
    held = net.nodes["n000"].member("n001")
    assert held is not None and (held.incarnation, held.state) == (2, MemberState.ALIVE)
    node = restarted(net, "n001", "n000")
    assert node.incarnation == 1
    assert held_after_goodbye(net, node.leave(net.now)) is MemberState.LEFT


def test_a_crash_loop_past_the_answers_allowed_still_says_goodbye() -> None:
    """Lives one after another faster than whole exchanges are answered: the last one's
    join is refused, it knows nobody, and its Leave goes to its seed directly."""
    net = Net(config=CONFIG)
    net.start_joined(2)
    for _ in range(4):
        node = restarted(net, "n001", "n000", noticed=False)
        net.run_for(0.5)
    assert net.nodes["n000"].stats.exchanges_ignored >= 1
    assert node.member("n000") is None  # the last life's join was not answered
    out = node.leave(net.now)
    assert [dest for dest, m in out.sends if isinstance(m, Leave)] == ["n000"]
    assert held_after_goodbye(net, out) is MemberState.LEFT


def test_a_node_missed_by_a_refutation_is_corrected_when_it_passes_on_the_old_claim() -> None:
    """n004 was cut off while n005 refuted a suspicion (incarnation 2) and the mesh
    spread that; back in the mesh but still unable to reach n005, it is told n005's
    old life failed (a late Dead at 1) and passes that on. Those it tells hold n005
    alive at 2 and answer with its Alive: n004 holds it alive again within a second,
    not once its own suspicion runs out and a probe it cannot send fails."""
    net = Net(config=CONFIG)
    net.start_converged(6)
    others = [n for n in net.nodes if n != "n004"]
    net.partition(["n004"], others)
    refuted = net.nodes["n005"].receive("n001", sign(Suspect("n005", 1, "n001")), net.now)
    net.apply("n005", refuted)
    net.run_for(3.0)  # the refutation's gossip is spent within the five others
    held = [net.nodes[n].member("n005") for n in others]
    assert all(info is not None and info.incarnation == 2 for info in held)
    net.heal()
    net.break_link("n004", "n005")
    observer = net.nodes["n004"]
    late = sign(Dead("n005", 1, "n003"))  # n003's Dead, as it had declared it
    net.apply("n004", observer.receive("n002", late, net.now))
    assert state_of(observer, "n005") is MemberState.SUSPECT
    net.run_for(1.0)
    info = observer.member("n005")
    assert info is not None and (info.state, info.incarnation) == (MemberState.ALIVE, 2)
    assert sum(net.nodes[n].stats.stale_claims_corrected for n in others) >= 1


def test_a_stale_claim_is_corrected_once_a_gossip_interval_and_never_when_malformed() -> None:
    net = Net(config=CONFIG)
    net.start_converged(4)
    net.apply("n003", net.nodes["n003"].receive("n001", sign(Suspect("n003", 1, "n001")), net.now))
    net.run_for(3.0)  # n003 refuted: every node holds it alive at 2
    node = net.nodes["n000"]

    def corrections(claim: Suspect | Dead) -> list[Alive]:
        out = node.receive("n002", claim, net.now)
        return [m for dst, m in out.sends if dst == "n002" and isinstance(m, Alive)]

    (alive,) = corrections(sign(Dead("n003", 1, "n001")))
    assert (alive.node_id, alive.incarnation) == ("n003", 2)
    assert corrections(sign(Suspect("n003", 1, "n001"))) == []  # within the same interval
    net.run_for(CONFIG.gossip_interval)
    assert corrections(Suspect("n003", 1, "")) == []  # no accuser: not a claim at all
    assert len(corrections(sign(Suspect("n003", 1, "n001")))) == 1
    net.run_for(CONFIG.gossip_interval)
    net.apply("n000", node.leave(net.now))
    assert corrections(sign(Dead("n003", 1, "n001"))) == []  # gone: it speaks for no one
