"""What a live migration costs: pure estimates for the rebalancer and the simulator.

Pre-copy sends the guest's memory once, then, round after round, what the
guest dirtied meanwhile. With memory M, link bandwidth B and dirty rate D
(same units), round i sends M·(D/B)^i, so the total converges to M / (1 - D/B)
when D < B and never ends otherwise (the guest must be throttled or switched
to post-copy). These functions are that arithmetic, free of any clock, so the
planner and the simulator agree with the saga on what a move costs.
"""

from __future__ import annotations

import math

from .policy import MigrationPolicy, completion_timeout

INF = math.inf


def converges(bandwidth_mib_s: float, dirty_rate_mib_s: float) -> bool:
    """Whether pre-copy alone can ever finish: the link outruns the guest's writes."""
    return bandwidth_mib_s > 0 and dirty_rate_mib_s < bandwidth_mib_s


def data_to_send_mib(memory_mib: float, bandwidth_mib_s: float, dirty_rate_mib_s: float) -> float:
    """MiB pre-copy sends in total (inf if it never converges)."""
    if not converges(bandwidth_mib_s, dirty_rate_mib_s):
        return INF
    return memory_mib / (1.0 - dirty_rate_mib_s / bandwidth_mib_s)


def precopy_seconds(memory_mib: float, bandwidth_mib_s: float, dirty_rate_mib_s: float) -> float:
    """Expected pre-copy duration: data to send over bandwidth (inf if it never converges)."""
    total = data_to_send_mib(memory_mib, bandwidth_mib_s, dirty_rate_mib_s)
    return total / bandwidth_mib_s if total != INF else INF


def expected_migration_seconds(
    memory_mib: float,
    bandwidth_mib_s: float,
    dirty_rate_mib_s: float,
    policy: MigrationPolicy,
) -> float:
    """Expected duration under `policy`, escalation included.

    A guest that converges takes its pre-copy time. One that does not (or
    would take longer than the completion timeout) runs until the timeout and
    then, with post-copy allowed, needs about one more pass over its memory;
    without post-copy it is aborted, so the move never happens (inf).
    """
    timeout = completion_timeout(policy, int(memory_mib))
    plain = precopy_seconds(memory_mib, bandwidth_mib_s, dirty_rate_mib_s)
    if plain <= timeout:
        return plain
    if not policy.post_copy or bandwidth_mib_s <= 0:
        return INF
    return timeout + memory_mib / bandwidth_mib_s


def migration_cost(
    memory_mib: float, dirty_rate_mib_s: float, bandwidth_mib_s: float, recent_moves: int = 0
) -> float:
    """A unitless cost for the rebalancer: MiB on the wire, doubled per recent move of the VM.

    Grows with memory and dirty rate (what pre-copy sends, `data_to_send_mib`) and with how
    often the VM moved lately, which damps oscillation. A move that cannot
    converge without escalation costs twice its memory plus what is dirtied
    during one pass, a deliberate penalty rather than infinity so a drain can
    still move such a VM when nothing else is left.
    """
    sent = data_to_send_mib(memory_mib, bandwidth_mib_s, dirty_rate_mib_s)
    if sent == INF:
        one_pass = memory_mib / bandwidth_mib_s if bandwidth_mib_s > 0 else 1.0
        sent = 2 * memory_mib + dirty_rate_mib_s * one_pass
    return float(sent * (2 ** max(recent_moves, 0)))
