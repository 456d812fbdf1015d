"""The agent's Prometheus metrics: one collector that reads the agent's state at scrape time.

Nothing is incremented for metrics' sake on the hot paths: the counters the
cores and shells already keep (`NodeStats`, `MigrationStats`, `TransportStats`,
the rebalancer's counts), the member table, this host's own record and the
migration core's duration histograms are turned into metric families when
Prometheus asks, so a scrape costs one pass over them and an idle agent pays
nothing between scrapes. Two parts are kept written between scrapes instead
(`WrittenFamilies`), as they change far less often than a scrape comes and
are most of its samples: the per-VM families, written when the inventory
publishes a change of this host's VMs, and the migration histograms, written
again after a migration ended.

Names follow Prometheus' conventions (`novacron_` prefix, base units,
`_total` for counters); VMs and migrations take KubeVirt's shape
(`kubevirt_vmi_*` becomes `novacron_vmi_*`). docs/metrics.md lists them all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from novacron.protocol.messages import MemberState, NodeRecord

from .core.membership.node import MembershipNode
from .core.membership.stats import Histogram
from .core.migration.saga import MigrationCore
from .drain import Drain
from .identity import NodeIdentity
from .migrator import Migrator
from .prometheus import (
    Collector,
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    ProcessCollector,
    Sample,
    go_float,
)
from .rebalancer import Rebalancer
from .transport import Transport, TransportStats

if TYPE_CHECKING:  # loaded only by an agent with an event stream: memory of every idle agent
    from .event_stream import EventStream

# The text format every Prometheus 2.x parses (`exposition` writes it).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MIB = 1024 * 1024
# libvirt's domain states, always exported (a state with no VM reads 0, not absent).
VM_STATES = ("running", "paused", "shutoff", "shutdown", "crashed", "blocked", "pmsuspended")
DROP_REASONS = (
    "dropped_queue_full",
    "dropped_no_certificate",
    "dropped_bad_address",
    "dropped_too_large",
    "malformed",
    "spoofed",
    "unauthorized",
)


class AgentState(Protocol):
    """What the collector reads (the daemon's `Agent` fits): live objects, never copies."""

    node_id: str
    address: str
    core: MembershipNode
    identity: NodeIdentity
    migrator: Migrator
    transport: Transport
    rebalancer: Rebalancer
    drain: Drain
    handling_failures: int
    events: EventStream | None


class AgentCollector(Collector):
    """Every `novacron_*` family of one agent, built from its state on each `collect()`
    (the per-VM ones and the histograms only when they changed: `WrittenFamilies`)."""

    def __init__(
        self,
        agent: AgentState,
        clock: Callable[[], float],
        written: WrittenFamilies | None = None,
    ) -> None:
        self._agent = agent
        self._clock = clock  # the cores' clock, to turn their times into ages
        self._written = written if written is not None else WrittenFamilies()

    def collect(self) -> Iterator[Metric]:
        agent = self._agent
        yield from _identity(agent)
        yield from membership_families(agent.core, self._clock())
        yield from _transport(agent.transport.stats, agent.handling_failures)
        own = agent.core.records().get(agent.node_id)
        yield from _host(agent, own)
        yield from written_vm_families(self._written, own)
        yield from migration_counts(agent.migrator.core)
        yield from written_migration_histograms(self._written, agent.migrator.core)
        yield from _rebalancer(agent.rebalancer)
        yield from _drain(agent.drain)
        if agent.events is not None:
            yield from _events(agent.events)


def registry_for(
    agent: AgentState,
    clock: Callable[[], float],
    written: WrittenFamilies | None = None,
    *,
    process: bool = True,
) -> CollectorRegistry:
    """A registry of its own (not the library's global one) holding the agent's collector
    and, with `process`, the standard `process_*` families (RSS, CPU seconds, open files)."""
    registry = CollectorRegistry()
    registry.register(AgentCollector(agent, clock, written))
    if process:
        registry.register(ProcessCollector())
    return registry


def exposition(
    registry: CollectorRegistry, known: Callable[[Metric], str | None] = lambda family: None
) -> bytes:
    """The registry in Prometheus' text format: what `generate_latest` writes, byte for byte
    (tests/test_observability.py compares them), at a fraction of its cost.

    `generate_latest` validates and escapes every metric and label name of every
    sample (about 25 us a sample on the development machines: 11 ms a scrape for
    100 VMs' four families alone). Our names are constants that promtool checks,
    so only label values and help texts are escaped here. A family whose text
    `known` has already (`WrittenFamilies.text`) is not written again.
    """
    parts: list[str] = []
    for family in registry.collect():
        text = known(family)
        parts.append(family_text(family) if text is None else text)
    return "".join(parts).encode()


def family_text(family: Metric) -> str:
    """One family in the text format: its HELP and TYPE lines, then its samples."""
    name, kind = family.name, family.type
    if kind not in EXPOSED_TYPES:
        raise ValueError(f"{name}: {kind} families are not exposed by this agent")
    if kind == "counter":
        name += "_total"
    help_text = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
    head = f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n"
    return head + "".join(_sample_line(sample) for sample in family.samples)


EXPOSED_TYPES = frozenset({"counter", "gauge", "histogram"})  # none with OpenMetrics-only samples
_LABEL_ESCAPES = str.maketrans({"\\": r"\\", "\n": r"\n", '"': r"\""})


def _sample_line(sample: Sample) -> str:
    value = go_float(sample.value)
    stamp = "" if sample.timestamp is None else f" {int(float(sample.timestamp) * 1000):d}"
    labels = sample.labels
    if not labels:
        return f"{sample.name} {value}{stamp}\n"
    if len(labels) == 1:  # most samples (one per VM and family): no sort, no join
        ((key, text),) = labels.items()
        return f'{sample.name}{{{key}="{text.translate(_LABEL_ESCAPES)}"}} {value}{stamp}\n'
    pairs = ",".join(f'{k}="{v.translate(_LABEL_ESCAPES)}"' for k, v in sorted(labels.items()))
    return f"{sample.name}{{{pairs}}} {value}{stamp}\n"


# --- families, one function per part of the agent --------------------------------------


def _identity(agent: AgentState) -> Iterable[Metric]:
    info = GaugeMetricFamily(
        "novacron_agent_info",
        "This agent: node id and address (always 1).",
        labels=["node", "address"],
    )
    info.add_metric([agent.node_id, agent.address], 1)
    yield info
    yield GaugeMetricFamily(
        "novacron_certificate_expiry_timestamp_seconds",
        "When this agent's node certificate expires (unix seconds).",
        value=agent.identity.certificate.not_after,
    )


def membership_families(core: MembershipNode, now: float) -> Iterable[Metric]:
    members = core.members()
    by_state = GaugeMetricFamily(
        "novacron_members", "Members this agent knows, by state.", labels=["state"]
    )
    for state in MemberState:
        by_state.add_metric([state.value], sum(1 for m in members if m.state is state))
    yield by_state
    one = GaugeMetricFamily(
        "novacron_member_state",
        "Each member's state as this agent sees it (1 for its state, 0 for the others).",
        labels=["member", "state"],
    )
    heard = GaugeMetricFamily(
        "novacron_member_last_heard_seconds",
        "Seconds since this agent last heard from each other member directly.",
        labels=["member"],
    )
    for member in members:
        for state in MemberState:
            one.add_metric([member.node_id, state.value], int(member.state is state))
        if member.node_id != core.node_id:
            heard.add_metric([member.node_id], max(0.0, now - member.last_heard))
    yield one
    yield heard
    yield GaugeMetricFamily(
        "novacron_incarnation", "This agent's own incarnation number.", value=core.incarnation
    )
    yield GaugeMetricFamily(
        "novacron_awareness_score",
        "Lifeguard's local health score (0 = healthy; higher stretches probe timeouts).",
        value=core.awareness,
    )
    yield GaugeMetricFamily(
        "novacron_gossip_queue_items",
        "Gossip items waiting to be sent.",
        value=core.pending_gossip(),
    )
    yield GaugeMetricFamily(
        "novacron_records", "Verified host records this agent holds.", value=len(core.records())
    )
    yield from _record_ages(
        core.record_ages(now), {m.node_id for m in members if m.state is MemberState.ALIVE}
    )
    for name, value in core.stats.as_dict().items():
        yield CounterMetricFamily(
            f"novacron_membership_{name}",
            f"Membership core counter {name} (agent/core/membership/stats.py says what it counts).",
            value=value,
        )


def _record_ages(ages: dict[str, float], alive: set[str]) -> Iterable[Metric]:
    """Per member, like `novacron_member_last_heard_seconds`: N series on each of N agents
    (a million at 1,000 hosts), which the `member` families already cost. A mesh that
    cannot afford them drops the `member`-labelled families when scraping and keeps the
    oldest, one series per agent, which is what an alert needs: a view going stale."""
    per_member = GaugeMetricFamily(
        "novacron_member_record_age_seconds",
        "Seconds since the record this agent holds of each other member arrived.",
        labels=["member"],
    )
    for member, age in sorted(ages.items()):
        per_member.add_metric([member], age)
    yield per_member
    yield GaugeMetricFamily(
        "novacron_record_age_max_seconds",
        "The oldest record among alive members, as this agent holds them (0 with none).",
        value=max((age for member, age in ages.items() if member in alive), default=0.0),
    )


def _transport(stats: TransportStats, handling_failures: int) -> Iterable[Metric]:
    counters = (
        ("novacron_gossip_messages_sent", "Frames handed to ZeroMQ for peers.", stats.sent),
        ("novacron_gossip_messages_received", "Frames accepted from peers.", stats.received),
        ("novacron_gossip_bytes_sent", "Bytes of the frames sent to peers.", stats.bytes_sent),
        (
            "novacron_gossip_bytes_received",
            "Bytes of the frames accepted from peers.",
            stats.bytes_received,
        ),
        (
            "novacron_gossip_connections_refused",
            "Connections refused by the ZAP handler (no valid certificate).",
            stats.refused_connections,
        ),
        (
            "novacron_handling_failures",
            "Messages dropped because handling them raised.",
            handling_failures,
        ),
    )
    for name, text, value in counters:
        yield CounterMetricFamily(name, text, value=value)
    dropped = CounterMetricFamily(
        "novacron_gossip_frames_dropped",
        "Frames not sent or not accepted, by reason.",
        labels=["reason"],
    )
    for reason in DROP_REASONS:
        dropped.add_metric([reason.removeprefix("dropped_")], getattr(stats, reason))
    yield dropped


def _host(agent: AgentState, own: NodeRecord | None) -> Iterable[Metric]:
    if own is not None:
        yield GaugeMetricFamily(
            "novacron_host_cpu_cores", "This host's cores.", value=own.capacity.vcpus
        )
        yield GaugeMetricFamily(
            "novacron_host_memory_bytes", "This host's memory.", value=own.capacity.memory_mib * MIB
        )
        yield GaugeMetricFamily(
            "novacron_host_load1", "This host's 1-minute load average.", value=own.load
        )
    found = agent.rebalancer.standing()
    over = GaugeMetricFamily(
        "novacron_host_over_line",
        "1 while this host's CPU utilization is above the line where it sheds VMs.",
        value=int(found is not None and found.over),
    )
    yield over
    if found is None:
        return  # draining, alone, or no record yet: balancing does not apply
    yield GaugeMetricFamily(
        "novacron_host_cpu_utilization_ratio",
        "This host's CPU utilization as the rebalancer counts it (VMs leaving excluded).",
        value=found.utilization,
    )
    yield GaugeMetricFamily(
        "novacron_mesh_cpu_utilization_mean_ratio",
        "The mean CPU utilization of alive hosts that take VMs, as this agent sees it.",
        value=found.mean,
    )
    yield GaugeMetricFamily(
        "novacron_host_cpu_utilization_line_ratio",
        "The utilization above which this host sheds VMs (mean plus the trigger).",
        value=found.line,
    )


def vm_families(own: NodeRecord | None) -> Iterable[Metric]:
    vms = own.vms if own is not None else ()
    phases = GaugeMetricFamily(
        "novacron_vmis", "VMs on this host by libvirt state (KubeVirt: phase).", labels=["phase"]
    )
    states = sorted({*VM_STATES, *(vm.state for vm in vms)})
    for state in states:
        phases.add_metric([state], sum(1 for vm in vms if vm.state == state))
    yield phases
    per_vm: list[tuple[str, str, Callable[[Any], float]]] = [
        ("novacron_vmi_vcpus", "vCPUs of each VM on this host.", lambda vm: vm.vcpus),
        (
            "novacron_vmi_memory_domain_bytes",
            "Memory given to each VM on this host.",
            lambda vm: vm.memory_mib * MIB,
        ),
        (
            "novacron_vmi_cpu_usage_cores",
            "Cores each VM on this host uses (the rebalancer's load).",
            lambda vm: vm.cpu_load,
        ),
        (
            "novacron_vmi_dirty_rate_bytes_per_second",
            "Memory each running VM writes per second (0 until measured).",
            lambda vm: vm.dirty_rate_mib_s * MIB,
        ),
    ]
    for name, text, read in per_vm:
        family = GaugeMetricFamily(name, text, labels=["name"])
        for vm in vms:
            family.add_metric([vm.name], read(vm))
        yield family


class WrittenFamilies:
    """Parts of the exposition that change only with a key, made and written once per key.

    A part's key is cheap to compare and equal only while the part's families
    are: this host's VMs (a tuple of frozen summaries, replaced when the
    inventory samples a difference: `Same`) for the per-VM families, the
    observation counts for the migration histograms (a histogram changes only
    by an observation). While a part's key is equal, a scrape gets the families
    made for it and `text` hands the exposition their text, so neither is made
    again.
    """

    def __init__(self) -> None:
        self._parts: dict[str, tuple[object, list[Metric]]] = {}
        # By id (Metric is not hashable); the families held in `_parts` keep their ids theirs.
        self._text: dict[int, tuple[Metric, str]] = {}

    def part(self, name: str, key: object, make: Callable[[], Iterable[Metric]]) -> list[Metric]:
        """The families of part `name`, made by `make` unless `key` equals the last one's."""
        held = self._parts.get(name)
        if held is not None and held[0] == key:
            return held[1]
        for family in held[1] if held is not None else ():
            del self._text[id(family)]
        families = list(make())
        self._parts[name] = (key, families)
        self._text.update((id(family), (family, family_text(family))) for family in families)
        return families

    def text(self, family: Metric) -> str | None:
        """`family`'s text if it is one of the parts' current families, else None."""
        written = self._text.get(id(family))
        return written[1] if written is not None and written[0] is family else None


def written_vm_families(written: WrittenFamilies, own: NodeRecord | None) -> list[Metric]:
    """`vm_families(own)`, made again only when this host's VMs changed.

    The daemon calls this when it publishes an inventory sample, so that a
    scrape finds the text written; the collector calls it at every scrape, so a
    scrape is right whoever changed the record.
    """
    vms = own.vms if own is not None else ()
    return written.part("vms", Same(vms), lambda: vm_families(own))


class Same:
    """A key equal to another only when both hold the very same object.

    For this host's VMs, a tuple of frozen summaries that a new inventory sample
    replaces: `==` would also cost a comparison of every field of every VM, and
    take 0.0 for -0.0, which the text tells apart.
    """

    __slots__ = ("held",)

    def __init__(self, held: object) -> None:
        self.held = held

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Same) and other.held is self.held

    __hash__ = None  # type: ignore[assignment]  # a key of `WrittenFamilies`, never hashed


def migration_families(core: MigrationCore) -> Iterable[Metric]:
    yield from migration_counts(core)
    yield from migration_histograms(core)


def written_migration_histograms(written: WrittenFamilies, core: MigrationCore) -> list[Metric]:
    """`migration_histograms(core)`, made again only when a histogram has observed more.

    A histogram changes by an observation only, which counts one more in it.
    """
    histograms = (*core.durations.values(), *core.transferred.values(), core.downtimes)
    observed = tuple(histogram.count for histogram in histograms)
    return written.part("migration histograms", observed, lambda: migration_histograms(core))


def migration_counts(core: MigrationCore) -> Iterable[Metric]:
    running = GaugeMetricFamily(
        "novacron_vmi_migrations_running",
        "Migrations in flight on this host, by direction.",
        labels=["direction"],
    )
    running.add_metric(["outbound"], core.outbound())
    running.add_metric(["inbound"], core.inbound())
    yield running
    stats = core.stats
    ended = CounterMetricFamily(
        "novacron_vmi_migrations",
        "Outbound migrations ended, by outcome (committed: the VM runs on the target; "
        "aborted: it stayed here; refused: the target said no; in-doubt: an operator "
        "settles where it runs).",
        labels=["outcome"],
    )
    for outcome, histogram in core.durations.items():
        ended.add_metric([outcome], histogram.count)
    yield ended
    refused = CounterMetricFamily(
        "novacron_vmi_migrations_refused",
        "Migrations refused: by this host's own checks (source) or as a target.",
        labels=["side"],
    )
    refused.add_metric(["source"], stats.refused_locally)
    refused.add_metric(["target"], stats.proposals_refused)
    yield refused
    for name, text, value in (
        ("escalations", "Post-copy switches or aborts on a timeout.", stats.escalations),
        ("reconciles", "Times libvirt was asked where a VM runs after a fault.", stats.reconciles),
        ("reservations_expired", "Inbound reservations whose source fell silent.",
         stats.reservations_expired),
    ):  # fmt: skip
        yield CounterMetricFamily(f"novacron_vmi_migration_{name}", text, value=value)


def migration_histograms(core: MigrationCore) -> Iterable[Metric]:
    yield _by_outcome(
        "novacron_vmi_migration_duration_seconds",
        "Outbound migrations, proposal to end, by outcome.",
        core.durations,
    )
    yield _by_outcome(
        "novacron_vmi_migration_data_processed_bytes",
        "Bytes each outbound migration's libvirt job sent (memory and local disks), by "
        "outcome, from the job's final statistics.",
        core.transferred,
    )
    downtime = HistogramMetricFamily(
        "novacron_vmi_migration_downtime_seconds",
        "How long each committed outbound migration paused the guest at the switchover.",
    )
    downtime.add_metric([], buckets(core.downtimes), core.downtimes.sum)
    yield downtime


def _by_outcome(name: str, text: str, histograms: dict[str, Histogram]) -> Metric:
    """One histogram family with a series per migration outcome."""
    family = HistogramMetricFamily(name, text, labels=["outcome"])
    for outcome, histogram in histograms.items():
        family.add_metric([outcome], buckets(histogram), histogram.sum)
    return family


def buckets(histogram: Histogram) -> list[tuple[str, float]]:
    """A core histogram's cumulative buckets as `HistogramMetricFamily` takes them."""
    return [
        ("+Inf" if le == float("inf") else repr(float(le)), count)
        for le, count in histogram.cumulative()
    ]


def _rebalancer(rebalancer: Rebalancer) -> Iterable[Metric]:
    yield GaugeMetricFamily(
        "novacron_rebalance_enabled",
        "1 if this agent rebalances on its own (its configuration).",
        value=int(rebalancer.enabled),
    )
    yield GaugeMetricFamily(
        "novacron_rebalance_paused",
        "1 while rebalancing is paused across the mesh (nova rebalance pause).",
        value=int(rebalancer.paused),
    )
    counts = rebalancer.counts
    for name, text, value in (
        ("novacron_rebalance_rounds", "Planning rounds run.", counts.rounds),
        ("novacron_rebalance_moves_planned", "Moves the rounds chose.", counts.planned),
        ("novacron_rebalance_moves_started", "Moves started as migrations.", counts.started),
        ("novacron_rebalance_moves_refused", "Moves refused when starting.", counts.refused),
    ):
        yield CounterMetricFamily(name, text, value=value)


def _drain(drain: Drain) -> Iterable[Metric]:
    status = drain.status()
    yield GaugeMetricFamily(
        "novacron_drain_active", "1 while this host drains.", value=int(status.draining)
    )
    vms = GaugeMetricFamily(
        "novacron_drain_vms",
        "This host's VMs as its drain sees them: running (still here), moving, moved, "
        "blocked (no target found), not_moved (stopped VMs stay).",
        labels=["status"],
    )
    counts = {
        "running": len(status.running),
        "moving": len(status.moving),
        "moved": len(status.moved),
        "blocked": len(status.blocked),
        "not_moved": len(status.not_moved),
    }
    for key, count in counts.items():
        vms.add_metric([key], count if status.draining else 0)
    yield vms


def _events(stream: EventStream) -> Iterable[Metric]:
    yield GaugeMetricFamily(
        "novacron_events_waiting",
        "Events spooled on disk that the sink has not taken yet.",
        value=stream.spool.backlog,
    )
    yield CounterMetricFamily(
        "novacron_events_delivered",
        "Events the sink took, since the agent started.",
        value=stream.delivered,
    )
    yield CounterMetricFamily(
        "novacron_events_dropped",
        "Events dropped undelivered because the spool was full (kept across restarts).",
        value=stream.spool.dropped,
    )
    yield GaugeMetricFamily(
        "novacron_events_sink_up",
        "1 while the last attempt to deliver an event succeeded.",
        value=int(stream.last_error is None),
    )
