"""The scripted experiments: each builds a cluster, breaks something, measures.

Every scenario is a function `(cluster, params) -> dict` of deterministic
results (same params, same dict); `report.py` builds the cluster with `build`
and adds what all runs share. Times in results are seconds of simulated time, relative
to the moment the scenario did its thing (the update, the crash, the heal).
A `None` time means "did not happen before the scenario's time limit".

All scenarios start from a converged cluster (`MembershipNode.from_snapshot`)
and let it run `warmup` seconds first, so probing and gossip are in their
steady state when the experiment begins.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from novacron.agent.core.config import MembershipConfig
from novacron.agent.core.events import Event, RecordUpdated

from .cluster import Cluster, ClusterSettings
from .metrics import rounded, summary
from .network import LinkModel, NetworkConfig
from .observers import Accusations, FailureWatch, PartitionWatch, RecordSpread, RevocationSpread
from .signing import SimCA

Results = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Params:
    """What the CLI (or a test) asks of one run."""

    nodes: int = 100
    loss: float = 0.0  # per-packet loss probability
    duration: float | None = None  # time limit; None: the scenario's default
    seed: int = 1
    lifeguard: bool = True  # False: plain SWIM baseline
    slow_fraction: float = 0.0  # share of nodes whose inbox is served late
    slow_delay: float = 1.0  # how late, in seconds
    bytes_every: int = 0  # byte accounting: 1 exact, k sampled, 0 auto
    latency: float = 0.001  # one-way base latency, seconds
    jitter: float = 0.0005  # mean jitter, seconds
    jitter_kind: str = "lognormal"
    warmup: float = 5.0  # steady-state run before the experiment starts
    isolation: float = 60.0  # catch-up: how long the node is cut off
    updaters: int = 0  # catch-up: nodes that update records meanwhile (0: auto)
    verify_cache: bool = True

    def limit(self, default: float) -> float:
        """The scenario's time limit: --duration if given, else its default."""
        return default if self.duration is None else self.duration

    def byte_sampling(self) -> int:
        """Encode every message up to 1,000 nodes; above, one in N/1000."""
        return self.bytes_every or max(1, self.nodes // 1000)


def build(params: Params) -> Cluster:
    """A converged cluster of real cores with the requested network and slow nodes."""
    link = LinkModel(
        base_latency=params.latency, jitter=params.jitter_kind, jitter_mean=params.jitter
    )
    network = NetworkConfig(link=link, loss=params.loss, slow_delay=params.slow_delay)
    settings = ClusterSettings(
        nodes=params.nodes,
        seed=params.seed,
        membership=MembershipConfig(lifeguard=params.lifeguard),
        network=network,
        bytes_sample_every=params.byte_sampling(),
        verify_cache=params.verify_cache,
    )
    cluster = Cluster(settings)
    cluster.start_converged(0.0)
    slow_count = round(params.slow_fraction * params.nodes)
    if slow_count:
        slow = random.Random(f"{params.seed}/slow").sample(cluster.ids, slow_count)
        cluster.network.set_slow(sorted(slow))
    return cluster


def run_until(cluster: Cluster, deadline: float, done: Callable[[], bool]) -> float | None:
    """Run until `done()` holds (checked after every event) or `deadline`.

    Returns the simulated time at which `done()` first held, or None. `done`
    must be cheap: it is called once per reported event.
    """
    engine = cluster.engine

    def check(now: float, observer: str, event: Event) -> None:
        if done():
            engine.stop()

    if done():
        return engine.now
    engine.listeners.append(check)
    try:
        engine.run(deadline)
    finally:
        engine.listeners.remove(check)
    return engine.now if done() else None


def pick(params: Params, purpose: str, population: list[str], count: int = 1) -> list[str]:
    """A deterministic choice of nodes for one purpose (victim, origin, ...)."""
    return random.Random(f"{params.seed}/{purpose}").sample(population, count)


class Traffic:
    """Bytes and packets sent between two moments, per node per second."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.start = cluster.engine.now
        self.bytes = cluster.meter.bytes
        self.packets = cluster.meter.packets

    def rates(self) -> Results:
        """Per-node rates since construction, over the currently live nodes."""
        meter, elapsed = self.cluster.meter, self.cluster.engine.now - self.start
        nodes = max(1, len(self.cluster.live_ids()))
        if elapsed <= 0:
            return {"seconds": 0.0, "bytes_per_node_s": None, "packets_per_node_s": None}
        return {
            "seconds": rounded(elapsed),
            "bytes_per_node_s": rounded((meter.bytes - self.bytes) / nodes / elapsed, 1),
            "packets_per_node_s": rounded((meter.packets - self.packets) / nodes / elapsed, 2),
        }


# --- scenarios -------------------------------------------------------------------


def dissemination(cluster: Cluster, params: Params) -> Results:
    """One record update: how long until 50 %, 99 %, 100 % of live nodes hold it."""
    cluster.engine.run(params.warmup)
    (origin,) = pick(params, "origin", cluster.ids)
    start = cluster.engine.now
    traffic = Traffic(cluster)
    spread = RecordSpread(origin, cluster.latest_version[origin] + 1, start)
    cluster.engine.listeners.append(spread)
    version = cluster.update_record(origin, load=1.5)
    spread.version = version
    live = cluster.live_ids()
    run_until(cluster, start + params.limit(60.0), lambda: len(spread.reached) >= len(live))
    return {
        "origin": origin,
        "version": version,
        "time_to_50pct_s": spread.time_to_fraction(live, 0.5),
        "time_to_99pct_s": spread.time_to_fraction(live, 0.99),
        "time_to_100pct_s": spread.time_to_fraction(live, 1.0),
        "coverage": rounded(spread.coverage(live)),
        "traffic_during": traffic.rates(),
    }


def memberlist_suspicion(config: MembershipConfig, n: int) -> Results:
    """memberlist's suspicion timeout bounds for a cluster of n, for comparison."""
    minimum = config.suspicion_mult * max(1.0, math.log10(max(1, n))) * config.probe_interval
    return {
        "min_s": rounded(minimum),
        "max_s": rounded(minimum * config.suspicion_max_timeout_mult),
        "formula": "suspicion_mult * max(1, log10 N) * probe_interval; max = that * "
        "suspicion_max_timeout_mult",
    }


def failure_detection(cluster: Cluster, params: Params) -> Results:
    """Crash one node: first suspicion anywhere, and when all live nodes marked it failed."""
    cluster.engine.run(params.warmup)
    (victim,) = pick(params, "victim", cluster.ids)
    start = cluster.engine.now
    watch = FailureWatch(victim, start)
    cluster.engine.listeners.append(watch)
    cluster.crash(victim)
    live = cluster.live_ids()
    run_until(cluster, start + params.limit(120.0), lambda: len(watch.failed_at) >= len(live))
    declared = [t - start for n, t in watch.failed_at.items() if n in set(live)]
    first = watch.first_suspected
    return {
        "victim": victim,
        "first_suspicion_s": rounded(None if first is None else first - start),
        "first_suspected_by": watch.first_suspected_by,
        "all_marked_failed_s": rounded(max(declared)) if len(declared) == len(live) else None,
        "marked_failed_by": len(declared),
        "live_nodes": len(live),
        "failure_declaration_s": summary(declared),
        "memberlist_suspicion_timeout": memberlist_suspicion(
            cluster.settings.membership, params.nodes
        ),
    }


def false_positives(cluster: Cluster, params: Params) -> Results:
    """No real failure: how many healthy nodes does anyone declare failed?"""
    slow = set(cluster.network.slow_nodes)
    accusations = Accusations(healthy=set(cluster.ids))
    cluster.engine.listeners.append(accusations)
    traffic = Traffic(cluster)
    cluster.engine.run(params.limit(600.0))
    failed = set(accusations.failed)
    return {
        "slow_nodes": len(slow),
        "healthy_nodes_marked_failed": len(failed),
        "normal_nodes_marked_failed": len(failed - slow),
        "slow_nodes_marked_failed": len(failed & slow),
        "failure_declarations": sum(accusations.failed.values()),
        "healthy_nodes_suspected": len(accusations.suspected),
        "suspicions": sum(accusations.suspected.values()),
        "refutations_seen": accusations.refuted,
        "traffic": traffic.rates(),
    }


def _schedule_updates(cluster: Cluster, params: Params, target: str, start: float) -> int:
    """Pick updaters other than `target` and schedule one update each in the window."""
    others = [n for n in cluster.ids if n != target]
    count = params.updaters or min(len(others), max(10, params.nodes // 10))
    rng = random.Random(f"{params.seed}/updates")
    for index, node in enumerate(sorted(rng.sample(others, count))):
        when = start + rng.uniform(0.5, params.isolation - 0.5)
        cluster.engine.at(when, _updater(cluster, node, load=float(index % 7)))
    return count


def _updater(cluster: Cluster, node: str, load: float) -> Callable[[], None]:
    def update() -> None:
        if node in cluster.members:
            cluster.update_record(node, load)

    return update


class CatchUp:
    """Which owners' newest records the caught-up node still lacks."""

    def __init__(self, node: str, missing: set[str], latest: dict[str, int]) -> None:
        self.node = node
        self.missing = missing  # owners whose newest version `node` does not hold yet
        self.latest = latest  # owner -> newest version published

    def __call__(self, now: float, observer: str, event: Event) -> None:
        if observer == self.node and isinstance(event, RecordUpdated):
            owner = event.record.node_id
            if event.record.version >= self.latest.get(owner, 0):
                self.missing.discard(owner)


def catch_up(cluster: Cluster, params: Params) -> Results:
    """Cut one node off while others update records; heal; time until it is current."""
    cluster.engine.run(params.warmup)
    (target,) = pick(params, "isolated", cluster.ids)
    start = cluster.engine.now
    updaters = _schedule_updates(cluster, params, target, start)
    cluster.network.isolate(target)
    watch = PartitionWatch({n: int(n == target) for n in cluster.ids})
    cluster.engine.listeners.append(watch)
    cluster.engine.run(start + params.isolation)
    it_failed = len(watch.failed[target])
    others_failed = sum(target in watch.failed[n] for n in cluster.ids if n != target)
    cluster.network.heal()
    healed = cluster.engine.now
    node = cluster.members[target]
    latest = cluster.latest_version
    missing = {o for o in cluster.ids if o != target and node.record_version(o) < latest[o]}
    missing_at_heal = len(missing)
    tracker = CatchUp(target, missing, latest)
    cluster.engine.listeners.append(tracker)
    limit = healed + params.limit(120.0)
    current_at = run_until(cluster, limit, lambda: not tracker.missing)
    alive_at = run_until(cluster, limit, watch.all_alive)
    interval = cluster.settings.membership.push_pull_interval
    return {
        "isolated": target,
        "isolation_s": params.isolation,
        "updaters": updaters,
        "others_declaring_it_failed_at_heal": others_failed,
        "members_it_declared_failed_at_heal": it_failed,
        "records_missing_at_heal": missing_at_heal,
        "records_current_s": rounded(None if current_at is None else current_at - healed),
        "records_still_missing": len(tracker.missing),
        "views_alive_again_s": rounded(None if alive_at is None else alive_at - healed),
        "push_pull_interval_s": interval,
        "within_two_push_pull_intervals": current_at is not None
        and current_at - healed <= 2 * interval,
    }


def partition_heal(cluster: Cluster, params: Params) -> Results:
    """Split 50/50 until each half declares the other failed; heal; time to full view."""
    cluster.engine.run(params.warmup)
    half = set(pick(params, "partition", cluster.ids, params.nodes // 2))
    groups = {n: int(n in half) for n in cluster.ids}
    watch = PartitionWatch(groups)
    cluster.engine.listeners.append(watch)
    start = cluster.engine.now
    cluster.network.partition([sorted(half)])
    split_at = run_until(cluster, start + params.limit(300.0), watch.all_failed)
    failed_pairs = watch.failed_pairs
    cluster.network.heal()
    healed = cluster.engine.now
    alive_at = run_until(cluster, healed + params.limit(300.0), watch.all_alive)
    return {
        "sides": [params.nodes - len(half), len(half)],
        "both_sides_declared_failed_s": rounded(None if split_at is None else split_at - start),
        "cross_pairs": watch.pairs,
        "cross_pairs_declared_failed": failed_pairs,
        "everyone_alive_again_s": rounded(None if alive_at is None else alive_at - healed),
        "pairs_not_alive_at_end": watch.not_alive_pairs,
    }


def revocation(cluster: Cluster, params: Params) -> Results:
    """The operator revokes one member and hands the list to one node: how long until
    every other live node has expelled it (gossip first, push-pull as the backstop)."""
    cluster.engine.run(params.warmup)
    revoked, origin = pick(params, "revocation", cluster.ids, 2)
    start = cluster.engine.now
    traffic = Traffic(cluster)
    spread = RevocationSpread(revoked, start)
    cluster.engine.listeners.append(spread)
    crl = SimCA.revocation_list(start, [revoked])
    cluster.engine.feed(origin, cluster.members[origin].adopt_revocations(crl, start))
    others = [n for n in cluster.live_ids() if n != revoked]
    run_until(cluster, start + params.limit(60.0), lambda: len(spread.expelled) >= len(others))
    return {
        "revoked": revoked,
        "published_at": origin,
        "time_to_50pct_s": spread.time_to_fraction(others, 0.5),
        "time_to_99pct_s": spread.time_to_fraction(others, 0.99),
        "time_to_100pct_s": spread.time_to_fraction(others, 1.0),
        "expelled_by": len(spread.expelled),
        "live_nodes": len(others),
        "traffic_during": traffic.rates(),
    }


def cost(cluster: Cluster, params: Params) -> Results:
    """Steady state: what a member costs in bytes per second (memory: in `runtime`)."""
    cluster.engine.run(params.warmup)
    traffic = Traffic(cluster)
    cluster.engine.run(params.warmup + params.limit(60.0))
    meter = cluster.meter
    return {
        "traffic": traffic.rates(),
        "bytes_by_type": dict(sorted(meter.bytes_by_type.items())),
        "packets_by_type": dict(sorted(meter.packets_by_type.items())),
    }


SCENARIOS: dict[str, Callable[[Cluster, Params], Results]] = {
    "dissemination": dissemination,
    "failure-detection": failure_detection,
    "false-positives": false_positives,
    "catch-up": catch_up,
    "partition-heal": partition_heal,
    "revocation": revocation,
    "cost": cost,
}
