"""Target selection (`core/placement/targets.py`): who may take a VM, and why not. Pure, no I/O."""

from __future__ import annotations

from collections.abc import Callable

from novacron.agent.core.membership.members import MemberInfo
from novacron.agent.core.migration.policy import MigrationLimits
from novacron.agent.core.migration.reservations import Demand
from novacron.agent.core.placement.targets import (
    ANTI_AFFINITY_LABEL,
    HOLDER_LEAD,
    Placement,
    choose_group_target,
    choose_target,
    new_vm_target,
)
from novacron.agent.core.templates import TEMPLATE_LABEL
from novacron.protocol.messages import MemberState, NodeRecord, Resources, VmSummary

GIB = 1024


def record(node: str, memory_mib: int, *vms: int, **kw: object) -> NodeRecord:
    return NodeRecord(
        node,
        1,
        capacity=Resources(vcpus=4, memory_mib=memory_mib, disk_gib=100),
        vms=tuple(VmSummary(f"{node}-vm{i}", vcpus=1, memory_mib=m) for i, m in enumerate(vms)),
        **kw,  # type: ignore[arg-type]
    )


def one_vm(node: str, memory_mib: int, vm: VmSummary, **kw: object) -> NodeRecord:
    """A 4-vCPU host of `memory_mib` running `vm` alone."""
    capacity = Resources(vcpus=4, memory_mib=memory_mib)
    return NodeRecord(node, 1, capacity=capacity, vms=(vm,), **kw)  # type: ignore[arg-type]


def members(*dead: str) -> Callable[[str], MemberInfo]:
    def member(node_id: str) -> MemberInfo:
        state = MemberState.DEAD if node_id in dead else MemberState.ALIVE
        return MemberInfo(node_id, f"{node_id}:7946", 1, state, 0.0, 0.0)

    return member


SMALL = Demand(1, 512)


def choose(records: list[NodeRecord], demand: Demand = SMALL, *dead: str) -> Placement:
    by_id = {r.node_id: r for r in records}
    return choose_target(by_id, members(*dead), "h1", demand, MigrationLimits(), 4.0)


def test_among_equally_loaded_hosts_the_one_with_most_free_memory_wins() -> None:
    placement = choose(
        [record("h1", 8 * GIB), record("h2", 8 * GIB, 4096), record("h3", 8 * GIB, 1024)]
    )
    assert (placement.target, placement.reason) == ("h3", "")


def test_the_least_utilized_host_wins_over_the_one_with_most_free_memory() -> None:
    """A drained host's VMs go where they lower the imbalance; memory only breaks ties."""
    busy = one_vm("h2", 64 * GIB, VmSummary("hot", vcpus=2, memory_mib=1024, cpu_load=2.0))
    calm = one_vm("h3", 8 * GIB, VmSummary("idle", vcpus=2, memory_mib=4096, cpu_load=0.2))
    assert choose([record("h1", GIB), busy, calm]).target == "h3"


def test_ties_go_to_the_lower_node_id_so_every_agent_agrees() -> None:
    assert choose([record("h1", GIB), record("h3", 8 * GIB), record("h2", 8 * GIB)]).target == "h2"


def test_the_source_never_takes_its_own_vm() -> None:
    placement = choose([record("h1", 64 * GIB)])
    assert (placement.target, placement.reason) == (None, "no other host in the mesh")


def test_draining_dead_full_and_busy_hosts_are_skipped_with_their_reasons() -> None:
    placement = choose(
        [
            record("h1", 8 * GIB),
            record("h2", 8 * GIB, draining=True),
            record("h3", 8 * GIB),
            record("h4", 8 * GIB, 7936),
            record("h5", 8 * GIB, migrations_in=2),
        ],
        Demand(1, 512),
        "h3",
    )
    assert placement.target is None
    assert placement.reason == (
        "no host can take it: h2: host draining; h3: dead; "
        "h4: no capacity: target h4 has 256 MiB free, 512 MiB needed; "
        "h5: too many migrations (2 inbound)"
    )


def test_vcpus_count_with_the_overcommit_ratio() -> None:
    # 4 cores x 4.0 = 16 vCPUs; 15 are taken on h2
    full = one_vm("h2", 64 * GIB, VmSummary("big", vcpus=15, memory_mib=1024))
    assert choose([record("h1", GIB), full], Demand(1, 512)).target == "h2"
    assert choose([record("h1", GIB), full], Demand(2, 512)).target is None


def test_a_host_with_a_vm_of_the_same_anti_affinity_group_is_skipped() -> None:
    group = {ANTI_AFFINITY_LABEL: "db"}
    taken = one_vm("h2", 64 * GIB, VmSummary("db-1", vcpus=1, memory_mib=512, labels=group))
    by_id = {r.node_id: r for r in (record("h1", GIB), taken, record("h3", 8 * GIB))}
    placement = choose_target(by_id, members(), "h1", SMALL, MigrationLimits(), 4.0, "db")
    assert placement.target == "h3"  # h2 has far more room, but a db VM already runs there
    alone = {k: v for k, v in by_id.items() if k != "h3"}
    refused = choose_target(alone, members(), "h1", SMALL, MigrationLimits(), 4.0, "db")
    assert refused.reason == "no host can take it: h2: anti-affinity: a VM of group db runs there"


# --- a host that already holds the VM's template -----------------------------------------

TEMPLATE = "debian-12:1"
FROM_TEMPLATE = Demand(1, 512, template=TEMPLATE)


def loaded(node: str, utilization: float, **kw: object) -> NodeRecord:
    """A host of 4 cores and 8 GiB whose one VM keeps `utilization` of its cores busy."""
    vm = VmSummary(f"{node}-vm", vcpus=2, memory_mib=1024, cpu_load=4 * utilization)
    return one_vm(node, 8 * GIB, vm, **kw)


def test_a_host_holding_the_template_wins_over_an_equal_or_slightly_better_one() -> None:
    source = record("h1", GIB)
    holder = loaded("h3", 0.3, templates=(TEMPLATE,))
    equal = loaded("h2", 0.3)  # would win the tie by its node id
    assert choose([source, equal, holder], FROM_TEMPLATE).target == "h3"
    better = loaded("h2", 0.2, templates=("other:1",))  # less busy, but would fetch the image
    assert choose([source, better, holder], FROM_TEMPLATE).target == "h3"


def test_a_much_busier_holder_loses_to_a_host_that_would_fetch_the_image() -> None:
    """The lead is bounded: VMs of one template do not all pile onto its one holder."""
    source = record("h1", GIB)
    holder = loaded("h3", 0.3 + HOLDER_LEAD + 0.05, templates=(TEMPLATE,))
    assert choose([source, loaded("h2", 0.3), holder], FROM_TEMPLATE).target == "h2"


def test_a_holder_that_does_not_fit_is_never_chosen() -> None:
    held = {"templates": (TEMPLATE,)}
    unfit = [
        loaded("h3", 0.0, draining=True, **held),
        loaded("h4", 0.0, migrations_in=2, **held),
        record("h5", 8 * GIB, 7936, **held),  # 256 MiB free
        loaded("h6", 0.0, **held),  # dead
    ]
    placement = choose([record("h1", GIB), loaded("h2", 0.9), *unfit], FROM_TEMPLATE, "h6")
    assert placement.target == "h2"
    alone = choose([record("h1", GIB), *unfit], FROM_TEMPLATE, "h6")
    assert alone.target is None and alone.reason.startswith("no host can take it: h3: ")


def test_without_a_holder_the_choice_is_the_one_made_for_a_vm_of_no_template() -> None:
    hosts = [
        record("h1", GIB),
        loaded("h2", 0.4, templates=("debian-12:2",)),  # another version is another image
        loaded("h3", 0.1),
        loaded("h4", 0.1, fetching=(TEMPLATE,)),  # not whole yet
        record("h5", 16 * GIB),
    ]
    assert choose(hosts, FROM_TEMPLATE) == choose(hosts, SMALL) == Placement("h5")
    assert choose(hosts[:-1], FROM_TEMPLATE) == choose(hosts[:-1], SMALL) == Placement("h3")


def test_a_group_prefers_a_host_holding_every_template_of_its_vms() -> None:
    web = Demand(1, 512, template=TEMPLATE)
    cache = Demand(1, 512, template="redis:7")
    hosts = {
        r.node_id: r
        for r in (
            record("h1", GIB),
            loaded("h2", 0.2, templates=(TEMPLATE,)),  # only one of the two
            loaded("h3", 0.3, templates=(TEMPLATE, "redis:7")),
        )
    }
    both = choose_group_target(hosts, members(), "h1", (web, cache), MigrationLimits(), 4.0)
    assert both.target == "h3"
    plain = (Demand(1, 512), Demand(1, 512))
    assert choose_group_target(hosts, members(), "h1", plain, MigrationLimits(), 4.0).target == "h2"


# --- a new VM: no source, its groups and template read from its labels -------------------


def new_vm(records: list[NodeRecord], labels: dict[str, str], *dead: str) -> Placement:
    by_id = {r.node_id: r for r in records}
    return new_vm_target(by_id, members(*dead), 1, 512, labels, MigrationLimits(), 4.0)


def test_a_new_vm_may_go_to_any_host_in_the_migration_order() -> None:
    """No host is its source: the emptiest host qualifies like any other."""
    hosts = [record("h1", 16 * GIB), loaded("h2", 0.1), loaded("h3", 0.2)]
    assert new_vm(hosts, {}) == Placement("h1")
    assert new_vm(hosts, {}, "h1") == choose(hosts) == Placement("h2")


def test_a_new_vm_is_kept_off_hosts_that_would_refuse_a_migration() -> None:
    unfit = [
        loaded("h1", 0.0, draining=True),
        loaded("h2", 0.0, migrations_in=2),  # at the inbound limit
        loaded("h3", 0.0),  # dead
    ]
    assert new_vm([*unfit, loaded("h4", 0.9)], {}, "h3") == Placement("h4")
    refused = new_vm(unfit, {}, "h3")
    assert refused.target is None and refused.reason.startswith("no host can take it: h1: ")


def test_a_new_vm_takes_its_anti_affinity_group_and_template_from_its_labels() -> None:
    group = {ANTI_AFFINITY_LABEL: "db"}
    taken = one_vm("h1", 64 * GIB, VmSummary("db-1", vcpus=1, memory_mib=512, labels=group))
    assert new_vm([taken, loaded("h2", 0.5)], group) == Placement("h2")
    assert new_vm([taken, loaded("h2", 0.5)], {}) == Placement("h1")
    holder = loaded("h3", 0.2, templates=(TEMPLATE,))
    labels = {TEMPLATE_LABEL: TEMPLATE}
    assert new_vm([loaded("h2", 0.1), holder], labels) == Placement("h3")
    assert new_vm([loaded("h2", 0.1), holder], {}) == Placement("h2")
