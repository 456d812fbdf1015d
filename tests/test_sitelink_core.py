"""The site link's sans-IO parts: the stream (sequences, acks, resume, pins, outcomes),
the coordinator's verdicts, the command ledger, gateway election, and the wire."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from novacron.agent.core.federation.commands import CommandLedger, LedgerEntry
from novacron.agent.core.federation.gateway import elect
from novacron.agent.core.federation.sitelink import SiteStream, pin_host
from novacron.agent.core.membership.members import MemberInfo
from novacron.agent.core.migration.policy import MigrationLimits
from novacron.agent.core.templates import TEMPLATE_LABEL
from novacron.coordinator.stream import StreamPosition, Verdict, advance, judge
from novacron.protocol import codec
from novacron.protocol import sitelink as wire
from novacron.protocol.errors import ProtocolError
from novacron.protocol.messages import MemberState, NodeRecord, Ping, Resources, VmSummary

from .fuzzing import fuzz
from .strategies import for_struct, mutations

ALIVE = MemberState.ALIVE


def host(node: str, version: int, vms: int = 0, state: MemberState = ALIVE) -> wire.HostState:
    summaries = tuple(VmSummary(f"{node}-vm{i}") for i in range(vms))
    return wire.HostState(node, state, NodeRecord(node, version, vms=summaries))


def view(*hosts: wire.HostState) -> dict[str, wire.HostState]:
    return {h.node_id: h for h in hosts}


def create(key: str) -> wire.Command:
    return wire.Command(key, wire.CommandKind.CREATE, spec=wire.VmSpec("web", 1, 64, kernel="/k"))


# --- the stream --------------------------------------------------------------------


def test_a_stream_starts_with_a_snapshot_then_sends_only_changes() -> None:
    stream = SiteStream("s1")
    first = stream.observe(view(host("h1", 1), host("h2", 1)))
    assert [d.seq for d in first] == [1]
    assert first[0].snapshot_start and first[0].snapshot_end
    assert {h.node_id for h in first[0].hosts} == {"h1", "h2"}
    assert stream.observe(view(host("h1", 1), host("h2", 1))) == []  # nothing changed
    second = stream.observe(view(host("h1", 2), host("h2", 1, state=MemberState.SUSPECT)))
    assert [(h.node_id, h.record.version) for h in second[0].hosts] == [("h1", 2), ("h2", 1)]
    third = stream.observe(view(host("h1", 2)))
    assert third[0].gone == ("h2",) and third[0].hosts == () and third[0].seq == 3


def test_a_large_snapshot_is_split_and_its_last_delta_ends_it() -> None:
    stream = SiteStream("s1")
    deltas = stream.observe(view(*(host(f"h{i:03}", 1, vms=100) for i in range(200))))
    assert len(deltas) > 2
    assert [d.seq for d in deltas] == list(range(1, len(deltas) + 1))
    assert deltas[0].snapshot_start and not any(d.snapshot_start for d in deltas[1:])
    assert deltas[-1].snapshot_end and not any(d.snapshot_end for d in deltas[:-1])
    assert sum(len(d.hosts) for d in deltas) == 200
    assert all(len(wire.encode(d, "h1")) < wire.LIMITS.max_frame for d in deltas)


def test_acks_drop_deltas_and_a_reconnect_resends_only_the_unacknowledged() -> None:
    stream = SiteStream("s1")
    stream.observe(view(host("h1", 1)))
    stream.observe(view(host("h1", 2)))
    stream.observe(view(host("h1", 3)))
    stream.ack(wire.Ack("s1", 1))
    assert stream.unacked == 2
    resent = stream.welcome(wire.Welcome("lyon", "s1", 2), fresh_stream="s2")
    assert [d.seq for d in resent] == [3]
    assert stream.stream == "s1"


def test_a_coordinator_that_lost_the_stream_gets_a_new_stream_and_snapshot() -> None:
    stream = SiteStream("s1")
    stream.observe(view(host("h1", 1)))
    assert stream.welcome(wire.Welcome("lyon", "", 0), fresh_stream="s2") == []
    again = stream.observe(view(host("h1", 1)))
    assert again[0].stream == "s2" and again[0].seq == 1 and again[0].snapshot_start


def test_a_coordinator_ahead_of_the_site_is_not_resumed() -> None:
    stream = SiteStream("s1")
    stream.observe(view(host("h1", 1)))
    stream.welcome(wire.Welcome("lyon", "s1", 7), fresh_stream="s2")
    assert stream.stream == "s2"


def test_a_command_runs_only_after_its_pin_is_acknowledged() -> None:
    stream = SiteStream("s1")
    stream.observe(view(host("h1", 1)))
    stream.pin(create("k1"), "h1")
    assert stream.pinned("k1")
    (delta,) = stream.observe(view(host("h1", 1)))
    assert delta.accepted == (wire.Accepted("k1", "h1"),)
    assert stream.ack(wire.Ack("s1", delta.seq - 1)) == []  # an older ack releases nothing
    assert stream.ack(wire.Ack("other", delta.seq)) == []  # nor one for another stream
    released = stream.ack(wire.Ack("s1", delta.seq))
    assert [(c.key, c.host) for c in released] == [("k1", "h1")]
    assert not stream.pinned("k1")


def test_a_pin_the_coordinator_cancels_never_runs_and_its_outcome_says_so() -> None:
    stream = SiteStream("s1")
    stream.observe(view(host("h1", 1)))
    stream.pin(create("k1"), "h1")
    stream.pin(create("k2"), "h1")
    (delta,) = stream.observe(view(host("h1", 1)))
    released = stream.ack(wire.Ack("s1", delta.seq, cancelled=("k1",)))
    assert [c.key for c in released] == ["k2"]
    (report,) = stream.observe(view(host("h1", 1)))
    assert [(o.key, o.ok) for o in report.outcomes] == [("k1", False)]


def test_pins_and_outcomes_survive_a_new_stream() -> None:
    stream = SiteStream("s1")
    stream.observe(view(host("h1", 1)))
    stream.pin(create("k1"), "h1")
    stream.report(wire.Outcome("k0", ok=True, host="h1"))
    stream.observe(view(host("h1", 1)))
    stream.welcome(wire.Welcome("lyon", "", 0), fresh_stream="s2")  # the coordinator lost it all
    deltas = stream.observe(view(host("h1", 1)))
    assert deltas[-1].accepted == (wire.Accepted("k1", "h1"),)
    assert [o.key for o in deltas[-1].outcomes] == ["k0"]
    stream.ack(wire.Ack("s2", deltas[-1].seq))
    assert stream.observe(view(host("h1", 1))) == []  # acknowledged: never sent again


def test_nothing_new_is_sent_while_too_many_deltas_wait() -> None:
    stream = SiteStream("s1")
    version = 0
    sent = 0
    while True:
        version += 1
        out = stream.observe(view(host("h1", version)))
        if not out:
            break
        sent += len(out)
    assert sent == stream.unacked
    stream.ack(wire.Ack("s1", sent))
    assert stream.observe(view(host("h1", version + 1)))  # the change was not lost


# --- which host runs a command --------------------------------------------------------


def test_a_new_vm_of_a_template_is_pinned_to_a_host_that_holds_it() -> None:
    """h2 and h3 are alike (h2 wins their tie) but h3 holds the template the VM names."""
    room = Resources(vcpus=4, memory_mib=4096)
    records = {
        "h2": NodeRecord("h2", 1, capacity=room),
        "h3": NodeRecord("h3", 1, capacity=room, templates=("debian-12:1",)),
    }

    def member(node: str) -> MemberInfo:
        return MemberInfo(node, f"{node}:7946", 1, ALIVE, 0.0, 0.0)

    def pinned(labels: dict[str, str]) -> tuple[str | None, str]:
        spec = wire.VmSpec("web", 1, 64, kernel="/k", labels=labels)
        command = wire.Command("k", wire.CommandKind.CREATE, spec=spec)
        return pin_host(command, records, member, MigrationLimits(), 4.0)

    assert pinned({TEMPLATE_LABEL: "debian-12:1"}) == ("h3", "")
    assert pinned({}) == pinned({TEMPLATE_LABEL: "debian-12:2"}) == ("h2", "")


# --- the coordinator's verdicts ---------------------------------------------------------


def test_the_coordinator_applies_in_order_ignores_duplicates_and_resyncs_gaps() -> None:
    start = wire.Delta("s1", 1, snapshot_start=True)
    assert judge(StreamPosition(), start)[0] is Verdict.APPLY
    position = advance(StreamPosition(), start)
    assert judge(position, wire.Delta("s1", 1))[0] is Verdict.DUPLICATE
    assert judge(position, wire.Delta("s1", 2))[0] is Verdict.APPLY
    verdict, why = judge(position, wire.Delta("s1", 3))
    assert verdict is Verdict.RESYNC and "gap" in why
    assert judge(position, wire.Delta("s9", 5))[0] is Verdict.RESYNC
    assert judge(position, wire.Delta("s9", 1, snapshot_start=True))[0] is Verdict.APPLY
    assert judge(position, wire.Delta("s9", 1))[0] is Verdict.RESYNC  # not a snapshot


class LossyLink:
    """A site stream and a coordinator over a link that drops frames and reconnects."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.site = SiteStream("s0")
        self.position = StreamPosition()
        self.hosts: dict[str, tuple[MemberState, int]] = {}  # the coordinator's copy
        self.applied: list[tuple[str, int]] = []
        self.streams = 0

    def deliver(self, delta: wire.Delta) -> wire.Ack | None:
        verdict, _ = judge(self.position, delta)
        if verdict is Verdict.RESYNC:
            self.streams += 1
            self.site.restart(f"s{self.streams}")
            return None
        if verdict is Verdict.APPLY:
            if delta.snapshot_start:
                self.hosts = {}
            for h in delta.hosts:
                self.hosts[h.node_id] = (h.state, h.record.version)
            for gone in delta.gone:
                self.hosts.pop(gone, None)
            self.applied.append((delta.stream, delta.seq))
            self.position = advance(self.position, delta)
        return wire.Ack(delta.stream, delta.seq)

    def run(self, truth: dict[str, wire.HostState], loss: float) -> None:
        for delta in self.site.observe(truth):
            if self.rng.random() < loss:
                continue  # lost on the way
            ack = self.deliver(delta)
            if ack is not None and self.rng.random() >= loss:
                self.site.ack(ack)

    def reconnect(self) -> None:
        welcome = wire.Welcome("lyon", self.position.stream, self.position.applied)
        self.streams += 1
        for delta in self.site.welcome(welcome, f"s{self.streams}"):
            ack = self.deliver(delta)
            if ack is not None:
                self.site.ack(ack)


def test_over_a_lossy_link_the_coordinator_ends_with_the_site_view_applying_nothing_twice() -> None:
    for seed in range(30):
        link = LossyLink(seed)
        rng = random.Random(seed)
        truth: dict[str, wire.HostState] = {}
        for step in range(200):
            node = f"h{rng.randrange(12)}"
            if rng.random() < 0.1:
                truth.pop(node, None)
            else:
                old = truth.get(node)
                truth[node] = host(node, (old.record.version if old else 0) + 1)
            link.run(truth, loss=0.2)
            if step % 17 == 0:
                link.reconnect()
        link.reconnect()  # the link heals
        link.run(truth, loss=0.0)
        expected = {n: (h.state, h.record.version) for n, h in truth.items()}
        assert link.hosts == expected, f"seed {seed}"
        assert len(link.applied) == len(set(link.applied)), f"seed {seed}: a delta applied twice"


# --- the ledger ------------------------------------------------------------------------


def test_the_ledger_runs_a_key_once_and_answers_repeats_with_the_outcome() -> None:
    ledger = CommandLedger()
    assert ledger.admit("k1", 100.0) is None
    ledger.start("k1", 100.0)
    assert ledger.admit("k1", 101.0).status == 409  # type: ignore[union-attr]
    done = wire.Outcome("k1", ok=True, host="h1", vm="web")
    ledger.finish(done, 102.0)
    assert ledger.admit("k1", 103.0) == done


def test_a_key_started_before_a_crash_is_reported_interrupted_never_rerun() -> None:
    before = CommandLedger()
    started = before.start("k1", 100.0)
    after = CommandLedger([started])  # the next life of the agent reads the persisted line
    outcome = after.admit("k1", 200.0)
    assert outcome is not None and not outcome.ok and "interrupted" in outcome.detail


def test_the_ledger_forgets_old_and_excess_keys() -> None:
    ledger = CommandLedger(keep=10.0, max_entries=3)
    for i in range(5):
        ledger.finish(wire.Outcome(f"k{i}", ok=True), float(i))
    assert ledger.admit("k4", 5.0) is not None
    assert [e.key for e in ledger.entries()] == ["k2", "k3", "k4"]
    assert ledger.admit("k2", 100.0) is None  # older than `keep`: forgotten
    assert ledger.entries() == []


def test_a_key_that_never_finished_is_kept_past_the_age_limit() -> None:
    ledger = CommandLedger([LedgerEntry("k1", 0.0)], keep=10.0)
    outcome = ledger.admit("k1", 1_000_000.0)
    assert outcome is not None and "interrupted" in outcome.detail


def test_ledger_lines_replace_earlier_ones_about_the_same_key() -> None:
    outcome = wire.Outcome("k1", ok=True)
    ledger = CommandLedger([LedgerEntry("k1", 1.0), LedgerEntry("k1", 2.0, outcome)])
    assert ledger.admit("k1", 3.0) == outcome


# --- election ---------------------------------------------------------------------------


def member(node: str, state: MemberState = ALIVE) -> MemberInfo:
    return MemberInfo(node, f"{node}:7946", 1, state, 0.0, 0.0)


def record(node: str, candidate: bool) -> NodeRecord:
    return NodeRecord(node, 1, gateway_candidate=candidate)


def test_the_gateway_is_the_lowest_live_candidate_and_a_suspect_keeps_the_role() -> None:
    records = {"h1": record("h1", False), "h2": record("h2", True), "h3": record("h3", True)}
    members = [member("h1"), member("h2"), member("h3")]
    assert elect(members, records) == "h2"
    members[1] = member("h2", MemberState.SUSPECT)
    assert elect(members, records) == "h2"
    members[1] = member("h2", MemberState.DEAD)
    assert elect(members, records) == "h3"
    assert elect([member("h1")], records) is None  # h1 is not configured with a coordinator
    # A live member whose record has not arrived may be a candidate: no decision yet.
    assert elect([member("h2"), member("h0")], records) is None


# --- the wire -----------------------------------------------------------------------------


@fuzz(500)
@given(st.one_of([for_struct(cls) for cls in wire.CATALOGUE.values()]))
def test_site_link_messages_round_trip_or_are_refused_as_protocol_errors(message: object) -> None:
    frame = wire.encode(message, "h1")  # type: ignore[arg-type]
    with contextlib.suppress(ProtocolError):  # a generated command may lack what it needs
        assert wire.decode(frame) == ("h1", message)


@fuzz(1000)
@given(st.data())
def test_mangled_site_link_frames_give_only_protocol_errors(data: st.DataObject) -> None:
    original = wire.encode(wire.Delta("s1", 3, hosts=(host("h1", 4, vms=2),)), "h1")
    frame = data.draw(mutations(original))
    with contextlib.suppress(ProtocolError):
        wire.decode(frame)


def test_mesh_frames_are_not_site_link_frames() -> None:
    mesh_version = codec.PROTOCOL_VERSION
    with pytest.raises(ProtocolError, match=f"unsupported protocol version {mesh_version}"):
        wire.decode(codec.encode(Ping(1, "h2"), "h1"))
