"""Joining through several seeds: the mesh is sent to the newcomer once, every seed
still learns of it at once, and a seed that does not answer is replaced by the next."""

from __future__ import annotations

from collections import Counter

from novacron.agent.core.membership.joining import CATCH_UP_AFTER, JoinAsks
from novacron.agent.core.membership.node import ANNOUNCE_BATCH, JOIN_ANSWER_WAIT, MembershipNode
from novacron.agent.core.membership.pushpull import only
from novacron.protocol.messages import Alive, Delta, Digest, MemberState, Message, Suspect
from tests.core_harness import CONFIG, Net, address_of, make_node, record_for, sign

SEEDS = ["n001", "n002", "n003"]


def newcomer(net: Net) -> MembershipNode:
    node = make_node("n100", net.config, now=net.now)
    net.add(node)
    net.apply("n100", node.update_record(record_for("n100"), net.now))
    return node


def mesh_answers(net: Net) -> list[str]:
    """The seeds that sent the newcomer the mesh (a Delta listing other members)."""
    return [
        src
        for src, dst, message in net.sent
        if dst == "n100" and isinstance(message, Delta) and len(message.members) > 1
    ]


def test_a_node_joining_through_three_seeds_is_sent_the_mesh_once() -> None:
    net = Net(config=CONFIG)
    net.start_converged(10)
    node = newcomer(net)
    out = node.join([(s, address_of(s)) for s in SEEDS], net.now)
    digests = [(dst, m) for dst, m in out.sends if isinstance(m, Digest)]
    asked = [dst for dst, m in digests if not (m.first or m.end)]
    introduced = [dst for dst, m in digests if (m.first, m.end) == only("n100")]
    assert asked == ["n001"] and introduced == ["n002", "n003"]
    net.apply("n100", out)
    net.run_for(0.05)
    assert mesh_answers(net) == ["n001"]
    assert {m.node_id for m in node.members()} >= set(net.nodes) - {"n100"}
    for seed in SEEDS:  # each seed holds the newcomer alive, so its arrival spreads from three
        assert net.state_in(seed, "n100") is MemberState.ALIVE
    net.run_for(2.0)
    assert net.all_see("n100", MemberState.ALIVE)
    assert mesh_answers(net) == ["n001"]  # no second answer after the wait either


def test_a_seed_that_does_not_answer_is_replaced_by_the_next_after_the_wait() -> None:
    net = Net(config=CONFIG)
    net.start_converged(10)
    net.crash("n001")
    node = newcomer(net)
    net.apply("n100", node.join([(s, address_of(s)) for s in SEEDS], net.now))
    net.run_for(JOIN_ANSWER_WAIT - 0.1)
    assert mesh_answers(net) == []  # the seed asked is dead: nobody else was asked yet
    net.run_for(0.2)
    assert mesh_answers(net) == ["n002"]
    assert node.member("n005") is not None
    net.run_for(JOIN_ANSWER_WAIT * 2)
    assert mesh_answers(net) == ["n002"]  # answered: n003 is never asked


def test_peers_found_one_by_one_while_waiting_are_introduced_not_asked() -> None:
    """The agent joins through each peer mDNS finds, one call per peer, as they come."""
    net = Net(config=CONFIG)
    net.start_converged(10)
    node = newcomer(net)
    for i, seed in enumerate(SEEDS):
        net.apply("n100", node.join([(seed, address_of(seed))], net.now))
        if i == 0:
            net.crash("n001")  # it got the join digest, then died before answering
    net.run_for(0.5)
    assert mesh_answers(net) == []
    net.run_for(JOIN_ANSWER_WAIT)
    assert mesh_answers(net) == ["n002"]


def test_a_seed_given_after_the_mesh_answered_is_asked_at_once() -> None:
    """A peer not held alive once we have the mesh may be across a split: a full
    exchange with it is what tells us."""
    asks = JoinAsks(wait=2.0)
    assert asks.ask("a", 0.0)
    assert not asks.ask("b", 0.5)
    asks.heard_from("a", 1.0)
    assert asks.next_seed(10.0) is None  # answered: b is not asked for the mesh later
    assert asks.ask("c", 1.0)
    assert not asks.ask("d", 1.5)
    assert asks.next_seed(2.9) is None
    assert asks.next_seed(3.0) == "d"  # c stayed silent past its wait
    assert asks.ask("e", 5.1)  # d's wait is over too: e is asked at once


def test_a_restarted_node_refutes_its_last_life_though_the_seed_asked_never_knew_it() -> None:
    """The mesh holds n007's last life failed at incarnation 2; n007 restarts at 1 and
    joins first through n100, which joined after that failure (a newcomer is not told of
    failed members). The other seeds, asked how they hold it, make it refute at once."""
    net = Net(config=CONFIG)
    net.start_converged(8)
    net.apply("n007", net.nodes["n007"].receive("n001", sign(Suspect("n007", 1, "n001")), net.now))
    net.run_for(1.0)
    net.crash("n007")
    while not all(net.state_in(o, "n007") is MemberState.DEAD for o in ids_up(net)):
        net.run_for(1.0)
    seed = newcomer(net)
    net.apply("n100", seed.join([("n000", address_of("n000"))], net.now))
    net.run_for(1.0)
    assert seed.member("n007") is None
    net.crashed.discard("n007")
    node = make_node("n007", net.config, seed=1, now=net.now)
    net.add(node, node.join([(s, address_of(s)) for s in ("n100", "n001", "n002")], net.now))
    net.run_for(0.1)
    assert node.incarnation > 2  # refuted: the mesh's Dead at 2 no longer holds it
    net.run_for(5.0)
    assert net.all_see("n007", MemberState.ALIVE)


def ids_up(net: Net) -> list[str]:
    return [n for n in net.live() if n != "n007"]


def test_a_slow_answer_from_a_seed_asked_earlier_ends_the_join() -> None:
    """On a slow link the mesh's answer may come after the next seed was asked: it
    ends the join all the same, so the seeds do not each send the mesh in turn."""
    asks = JoinAsks(wait=2.0)
    assert asks.ask("a", 0.0)
    assert not asks.ask("b", 0.0) and not asks.ask("c", 0.0)
    assert asks.next_seed(2.0) == "b"
    asks.heard_from("a", 1.0)  # a's whole answer, late
    assert asks.next_seed(10.0) is None


def test_a_seed_answering_its_introduction_has_not_sent_the_mesh() -> None:
    """The seeds introduced answer a one-id part; if that answer comes once such a seed
    is the one asked, it is still not the mesh, and the wait for the mesh goes on."""
    net = Net(config=CONFIG)
    net.start_converged(10)
    node = newcomer(net)
    out = node.join([(s, address_of(s)) for s in SEEDS], 0.0)
    ((_, part),) = [(d, m) for d, m in out.sends if d == "n002" and isinstance(m, Digest)]
    held = net.nodes["n002"].receive("n100", part, 0.01).sends  # its answer, slow to come
    assert next(m for _, m in held if isinstance(m, Digest)).first == "n100"
    asked = [d for d, m in node.tick(JOIN_ANSWER_WAIT).sends if isinstance(m, Digest)]
    assert asked == ["n002"]  # n001 stayed silent
    for _, message in held:
        node.receive("n002", message, JOIN_ANSWER_WAIT + 0.5)
    assert node.next_deadline() <= 2 * JOIN_ANSWER_WAIT  # still waiting for the mesh
    asked = [d for d, m in node.tick(2 * JOIN_ANSWER_WAIT).sends if isinstance(m, Digest)]
    assert asked == ["n003"]


def test_a_newcomer_pulls_what_came_since_the_mesh_from_another_member_once() -> None:
    """The seed's answer is its view when it answered: a second later the newcomer asks
    another member, once a life, for what it holds newer (its answer, not its digest)."""
    net = Net(config=CONFIG)
    net.start_converged(10)
    node = newcomer(net)
    net.apply("n100", node.join([("n001", address_of("n001"))], net.now))
    net.run_for(CATCH_UP_AFTER - 0.1)  # the answer came a few ms after the join
    assert pulls_by_newcomer(net.sent) == []
    net.run_for(0.2)
    (partner,) = pulls_by_newcomer(net.sent)
    assert partner != "n001" and partner in net.nodes
    net.run_for(20.0)
    assert pulls_by_newcomer(net.sent) == [partner]  # once
    net.apply("n100", node.join([("n002", address_of("n002"))], net.now))  # found by mDNS
    net.run_for(20.0)
    assert node.stats.catch_up_pulls_sent == 1  # once a life, not once a join


def pulls_by_newcomer(sent: list[tuple[str, str, Message]]) -> list[str]:
    """Whom the newcomer sent a pull (a whole digest asking only for an answer)."""
    return [
        dst
        for src, dst, m in sent
        if src == "n100" and isinstance(m, Digest) and not m.reply and not (m.first or m.end)
    ]


def test_a_newcomer_tells_every_member_of_its_life_itself_once_a_few_at_a_time() -> None:
    """Gossip reaches nearly every member, not surely every one. As it catches up, the
    newcomer sends its Alive to each live member but its seed, a batch per gossip
    interval, once a life: a member that no gossip of it reached holds it alive all the
    same (here n077, cut off from everyone else)."""
    net = Net(config=CONFIG)
    net.start_converged(120)
    for other in net.nodes:
        if other not in ("n077", "n100"):
            net.break_link("n077", other)
    node = newcomer(net)
    net.apply("n100", node.join([("n001", address_of("n001"))], net.now))
    net.run_for(CATCH_UP_AFTER + 3.0)
    told = [(t, dst) for t, src, dst, m in timed(net) if own_alive_from_newcomer(src, m)]
    members = {n for n in net.nodes if n not in ("n001", "n100")}
    assert {dst for _, dst in told} >= members and node.stats.announced == len(members)
    at_once = Counter(t for t, _ in told)  # its gossip rounds send its Alive too
    assert max(at_once.values()) <= ANNOUNCE_BATCH + CONFIG.gossip_nodes
    seen = net.nodes["n077"].member("n100")
    assert seen is not None and seen.state is MemberState.ALIVE

    net.apply("n100", node.join([("n002", address_of("n002"))], net.now))  # found by mDNS
    net.run_for(10.0)
    assert node.stats.announced == len(members)  # once a life, not once a join


def timed(net: Net) -> list[tuple[float, str, str, Message]]:
    return [(t, src, dst, m) for t, (src, dst, m) in zip(net.sent_at, net.sent, strict=True)]


def own_alive_from_newcomer(src: str, message: Message) -> bool:
    return src == "n100" and isinstance(message, Alive) and message.node_id == "n100"
