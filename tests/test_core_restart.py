"""An agent restarted soon after its last exchange (a crash and a quick restart, a
`systemctl restart`): the mesh answers its join, and a goodbye said at once still
reaches those that hold it alive."""

from __future__ import annotations

from novacron.agent.core.membership.node import MembershipNode
from novacron.protocol.messages import MemberState
from tests.core_harness import CONFIG, Net, address_of, make_node


def restarted(net: Net, node_id: str, seed: str) -> MembershipNode:
    """`node_id` killed, held suspect by `seed`, and started again (a new life at
    incarnation 1, knowing nobody), joining through `seed`."""
    net.crash(node_id)
    while (held := net.nodes[seed].member(node_id)) and held.state is MemberState.ALIVE:
        net.run_for(0.1)
    assert net.now < CONFIG.reconnect_interval  # within one of the join's exchange
    net.crashed.discard(node_id)
    node = make_node(node_id, net.config, seed=1, now=net.now)
    net.add(node, node.join([(seed, address_of(seed))], net.now))
    return node


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
    net.apply("n001", node.leave(net.now))
    net.run_for(CONFIG.gossip_interval)  # the agent gossips a moment more, then exits
    net.crash("n001")
    net.run_for(CONFIG.reconnect_interval * 3)
    held = net.nodes["n000"].member("n001")
    assert held is not None and held.state is MemberState.LEFT
