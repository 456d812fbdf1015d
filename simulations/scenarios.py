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

import itertools
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from novacron.agent.core.events import Event, RecordUpdated
from novacron.agent.core.membership.config import MembershipConfig
from novacron.agent.core.membership.members import MemberInfo
from novacron.protocol.messages import MemberState

from .cluster import Cluster, ClusterSettings
from .metrics import rounded, summary
from .network import LinkModel, NetworkConfig
from .observers import (
    Accusations,
    FailureWatch,
    PairViews,
    RecordSpread,
    Restarts,
    RevocationSpread,
)
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
    groups: str = "2"  # partition-heal: "K" equal sides, or sizes "1,*" ("*": the rest)
    split: float | None = None  # partition-heal: longest split (None: until all failed)
    held_split: bool = False  # partition-heal: start split, each side failing the others
    churn: float = 0.1  # churn: fraction of the nodes restarted in each period
    churn_period: float = 60.0  # churn: seconds per period
    downtime: float = 20.0  # churn: mean seconds a restarting node is down (0.5x-1.5x)

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
    if params.held_split:
        cluster.start_split(split_sides(params, cluster.ids))
    else:
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
        self.by_type = dict(cluster.meter.bytes_by_type)

    def rates(self) -> Results:
        """Per-node rates since construction, over the currently live nodes, and the
        busiest 1 s window in that time (bytes per live node)."""
        meter, now = self.cluster.meter, self.cluster.engine.now
        elapsed = now - self.start
        nodes = max(1, len(self.cluster.live_ids()))
        if elapsed <= 0:
            return {"seconds": 0.0, "bytes_per_node_s": None, "packets_per_node_s": None}
        return {
            "seconds": rounded(elapsed),
            "bytes_per_node_s": rounded((meter.bytes - self.bytes) / nodes / elapsed, 1),
            "peak_1s_bytes_per_node_s": rounded(meter.peak_rate(self.start, now), 1),
            "packets_per_node_s": rounded((meter.packets - self.packets) / nodes / elapsed, 2),
            "bytes_per_node_s_by_type": {
                kind: rounded((count - self.by_type.get(kind, 0)) / nodes / elapsed, 1)
                for kind, count in sorted(meter.bytes_by_type.items())
                if count > self.by_type.get(kind, 0)
            },
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
    views = PairViews(cluster.ids, {target: 1})
    cluster.engine.listeners.append(views)
    cluster.engine.run(start + params.isolation)
    it_failed = views.failed_by(target)
    others_failed = views.holding_failed(target)
    cluster.network.heal()
    healed = cluster.engine.now
    views.mark_heal(healed)
    node = cluster.members[target]
    latest = cluster.latest_version
    missing = {o for o in cluster.ids if o != target and node.record_version(o) < latest[o]}
    missing_at_heal = len(missing)
    tracker = CatchUp(target, missing, latest)
    cluster.engine.listeners.append(tracker)
    limit = healed + params.limit(120.0)
    current_at = run_until(cluster, limit, lambda: not tracker.missing)
    alive_at = run_until(cluster, limit, views.all_alive)
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


def parse_groups(spec: str, nodes: int) -> list[int]:
    """Side sizes from "K" (K sides as equal as can be) or "a,b,..." ("*": the rest)."""
    text = spec.replace(" ", "")
    if text.isdigit():
        count = int(text)
        if not 2 <= count <= nodes:
            raise ValueError(f"--groups {spec}: need 2 to {nodes} sides")
        return [nodes // count + (i < nodes % count) for i in range(count)]
    parts = text.split(",")
    if len(parts) < 2 or parts.count("*") > 1:
        raise ValueError(f"--groups {spec}: give K, or two or more sizes with at most one *")
    if not all(p == "*" or (p.isdigit() and int(p) > 0) for p in parts):
        raise ValueError(f"--groups {spec}: sizes must be positive integers or *")
    fixed = sum(int(p) for p in parts if p != "*")
    rest = nodes - fixed
    if ("*" in parts and rest < 1) or ("*" not in parts and rest != 0):
        raise ValueError(f"--groups {spec}: sizes must add up to --nodes {nodes}")
    return [rest if p == "*" else int(p) for p in parts]


HEAL_CHECKPOINTS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)  # s after the heal
RECOVERY_FRACTIONS = (0.5, 0.9, 0.99, 0.999, 1.0)


def split_sides(params: Params, ids: list[str]) -> list[list[str]]:
    """The partition's sides (`--groups`), each sorted; the same for the same seed."""
    order = pick(params, "partition", ids, params.nodes)
    sides, at = [], 0
    for size in parse_groups(params.groups, params.nodes):
        sides.append(sorted(order[at : at + size]))
        at += size
    return sides


def partition_heal(cluster: Cluster, params: Params) -> Results:
    """Split into sides of any sizes until each has failed the others (or `split`
    seconds); heal; how long until every node sees every node alive again.

    With `held_split` the nodes started split, each side holding the others failed
    (as after a split held long, its failure gossip long since spent); the warm-up
    then runs split, and the heal follows it."""
    sides = split_sides(params, cluster.ids)
    sizes = [len(side) for side in sides]
    views = PairViews(cluster.ids, {n: i for i, side in enumerate(sides) for n in side})
    if params.held_split:
        views.hold_cross_failed()
    else:
        cluster.engine.run(params.warmup)
    cluster.engine.listeners.append(views)
    start = cluster.engine.now
    split_traffic = Traffic(cluster)
    if params.held_split:
        cluster.engine.run(start + params.warmup)
        all_failed_at = start if views.all_cross_failed() else None
    else:
        cluster.network.partition(sides)
        split_limit = start + (params.split if params.split is not None else 600.0)
        all_failed_at = run_until(cluster, split_limit, views.all_cross_failed)
    failed_at_heal, not_alive_at_heal = views.cross_failed, views.not_alive_pairs()
    split_rates = split_traffic.rates()
    false_in_split = views.false_failures
    cluster.network.heal()
    healed = cluster.engine.now
    views.mark_heal(healed)
    heal_traffic = Traffic(cluster)
    apart: dict[str, int] = {}
    for seconds in HEAL_CHECKPOINTS:
        cluster.engine.at(healed + seconds, _count_apart(views, apart, seconds))
    alive_at = run_until(cluster, healed + params.limit(300.0), views.all_alive)
    for seconds in HEAL_CHECKPOINTS:  # pairs apart at checkpoints never reached: none left
        if healed + seconds > cluster.engine.now and alive_at is not None:
            apart.setdefault(f"{seconds:g}s", 0)
    return {
        "sides": sizes,
        "split_s": rounded(healed - start),
        "cross_pairs": views.cross_pairs,
        "cross_pairs_failed_at_heal": failed_at_heal,
        "all_cross_pairs_failed_s": rounded(
            None if all_failed_at is None else all_failed_at - start
        ),
        "pairs_not_alive_at_heal": not_alive_at_heal,
        "everyone_alive_again_s": rounded(None if alive_at is None else alive_at - healed),
        "pairs_not_alive_after_heal": apart,
        "pair_recovery_s": views.recovery_times(RECOVERY_FRACTIONS),
        "pairs_not_alive_at_end": views.not_alive_pairs(),
        "false_failures_during_split": false_in_split,
        "false_failures_after_heal": views.false_failures - false_in_split,
        "nodes_falsely_failed": len(views.falsely_failed),
        "traffic_split": split_rates,
        "traffic_heal": heal_traffic.rates(),
    }


def _count_apart(views: PairViews, apart: dict[str, int], seconds: float) -> Callable[[], None]:
    def count() -> None:
        apart[f"{seconds:g}s"] = views.not_alive_pairs()

    return count


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


RETURN_POLLS = tuple(i / 4 for i in range(1, 21)) + tuple(float(i) for i in range(6, 61))
"""Seconds after a node's return at which the scenario looks whether all see it alive."""
RETURN_DEADLINE = 5.0  # a returning node should be seen alive by all within this
MAX_LATE_REPORTED = 20  # returns missed at 5 s reported in detail (and observers each)


def churn(cluster: Cluster, params: Params) -> Results:
    """Nodes restarting all the time: in every period `churn` of them go down at a
    random moment for about `downtime` seconds and come back as fresh processes
    (incarnation 1, joining through three live seeds). Nobody up may be marked
    failed; each returning node must be seen alive by every live node soon."""
    engine = cluster.engine
    engine.run(params.warmup)
    start = engine.now
    restarts = Restarts(cluster.members)
    engine.listeners.append(restarts)
    seen: list[float | None] = []  # per return: seconds until every live node saw it alive
    apart_at_5s: list[int] = []  # per return: live nodes not seeing it alive 5 s after
    late: list[dict[str, object]] = []  # returns some live node missed at 5 s, and why
    traffic = Traffic(cluster)
    end = start + params.limit(600.0)
    rng = random.Random(f"{params.seed}/churn")
    per_period = round(params.churn * params.nodes)
    skipped = scheduled = 0
    period_start = start
    busy_until: dict[str, float] = {}  # node -> when its scheduled restart is over
    while period_start < end:
        for node in rng.sample(cluster.ids, per_period):
            down_at = period_start + rng.uniform(0.0, params.churn_period)
            back_at = down_at + params.downtime * rng.uniform(0.5, 1.5)
            if down_at >= end or busy_until.get(node, -1.0) >= down_at:
                skipped += 1
                continue
            busy_until[node] = back_at
            scheduled += 1
            engine.at(down_at, _go_down(cluster, restarts, node))
            engine.at(back_at, _come_back(cluster, restarts, node, seen, apart_at_5s, late))
        period_start += params.churn_period
    engine.run(end)
    returned = [t for t in seen if t is not None]
    return {
        "restarts": scheduled,
        "restarts_skipped_node_already_down": skipped,
        "returns_measured": len(seen),
        "healthy_nodes_marked_failed": len(set(restarts.false_failures) - restarts.ever_down),
        "restarted_nodes_marked_failed_while_up": len(
            set(restarts.false_failures) & restarts.ever_down
        ),
        "false_failure_declarations": sum(restarts.false_failures.values()),
        "late_declarations_about_a_previous_life": restarts.late_failures,
        "down_nodes_failed_by_all_before_return": len(restarts.detected_after),
        "time_to_fail_by_all_s": summary(restarts.detected_after),
        "return_seen_alive_by_all_s": summary(returned),
        "returns_seen_by_all_within_5s": sum(1 for t in returned if t <= RETURN_DEADLINE),
        "returns_never_seen_by_all": len(seen) - len(returned),
        "observers_not_seeing_a_return_at_5s": summary([float(n) for n in apart_at_5s]),
        "returns_missed_at_5s": late[:MAX_LATE_REPORTED],
        "traffic": traffic.rates(),
    }


def _go_down(cluster: Cluster, restarts: Restarts, node: str) -> Callable[[], None]:
    def down() -> None:
        process = cluster.members.get(node)
        if process is not None:
            restarts.went_down(node, process.incarnation, cluster.engine.now)
            cluster.crash(node)

    return down


def _come_back(
    cluster: Cluster,
    restarts: Restarts,
    node: str,
    seen: list[float | None],
    apart_at_5s: list[int],
    late: list[dict[str, object]],
) -> Callable[[], None]:
    def back() -> None:
        if node not in restarts.down_since:
            return
        restarts.came_back(node, cluster.engine.now)
        cluster.restart(node)
        returned = cluster.engine.now
        process = cluster.members[node]
        index = len(seen)
        seen.append(None)
        for after in RETURN_POLLS:
            cluster.engine.at(returned + after, _poll(cluster, node, process, index, after))

    def _poll(
        cluster: Cluster, node: str, process: object, index: int, after: float
    ) -> Callable[[], None]:
        def look() -> None:
            if cluster.members.get(node) is not process:
                return  # down again: this life is over
            if seen[index] is not None:
                if after == RETURN_DEADLINE:
                    apart_at_5s.append(0)
                return
            blind = _not_seeing_alive(cluster, node, stop_at_first=after != RETURN_DEADLINE)
            if after == RETURN_DEADLINE:
                apart_at_5s.append(blind)
                if blind:
                    late.append(_missed_return(cluster, restarts, node, index))
            if blind == 0:
                seen[index] = after

        return look

    return back


def _missed_return(
    cluster: Cluster, restarts: Restarts, node: str, index: int
) -> dict[str, object]:
    """A return some live node does not see 5 s after it: who, and what each holds."""
    now = cluster.engine.now
    observers = []
    for observer, view in _blind_observers(cluster, node):
        back = restarts.back_at.get(observer)
        observers.append(
            {
                "observer": observer,
                "holds": None if view is None else view.state.name,
                "at_incarnation": None if view is None else view.incarnation,
                "observer_back_s_ago": None if back is None else round(now - back, 2),
            }
        )
    return {
        "return": index,
        "node": node,
        "at_s": round(now - RETURN_DEADLINE, 2),
        "node_incarnation": cluster.members[node].incarnation,
        "observers": observers[:MAX_LATE_REPORTED],
    }


def _blind_observers(cluster: Cluster, node: str) -> Iterator[tuple[str, MemberInfo | None]]:
    """Each live node that does not hold `node` alive, with what it holds of it."""
    for observer, process in cluster.members.items():
        if observer == node:
            continue
        view = process.member(node)
        if view is None or view.state is not MemberState.ALIVE:
            yield observer, view


def _not_seeing_alive(cluster: Cluster, node: str, *, stop_at_first: bool) -> int:
    """How many live nodes do not hold `node` alive (1 at most if `stop_at_first`)."""
    blind = _blind_observers(cluster, node)
    return sum(1 for _ in itertools.islice(blind, 1 if stop_at_first else None))


SCENARIOS: dict[str, Callable[[Cluster, Params], Results]] = {
    "dissemination": dissemination,
    "failure-detection": failure_detection,
    "false-positives": false_positives,
    "catch-up": catch_up,
    "partition-heal": partition_heal,
    "churn": churn,
    "revocation": revocation,
    "cost": cost,
}
