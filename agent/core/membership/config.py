"""Tunables of the membership protocol, with memberlist's LAN profile as defaults.

Every timing in the core derives from this one frozen value, so a test, the
simulator and the daemon can each pick a profile without touching the logic.
All durations are seconds of the driver's clock (virtual or real).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .records import RecordBounds


@dataclass(frozen=True, slots=True)
class MembershipConfig:
    """Knobs for SWIM probing, Lifeguard, dissemination and anti-entropy."""

    gossip_interval: float = 0.2  # how often queued gossip is pushed to random members
    gossip_nodes: int = 3  # fanout: members per gossip round
    probe_interval: float = 1.0  # one direct probe per interval (scaled by awareness)
    probe_timeout: float = 0.5  # wait this long for an Ack before asking relays
    suspicion_mult: int = 4  # suspicion timeout = mult * log10(N) * probe_interval
    suspicion_max_timeout_mult: int = 6  # upper bound, as a multiple of the minimum
    indirect_checks: int = 3  # relays asked to probe a target that did not answer
    retransmit_mult: int = 4  # each gossip item is sent mult * log10(N+1) times
    push_pull_interval: float = 30.0  # full anti-entropy exchange (scaled up above 32 nodes)
    awareness_max_multiplier: int = 8  # Lifeguard: local health score is 0..max-1
    gossip_to_the_dead_time: float = 30.0  # keep gossiping to a failed member this long
    reconnect_interval: float = 10.0  # try one failed member this often (Serf: 30 s) ...
    reconnect_timeout: float = 86400.0  # ... for members failed less than this long
    packet_budget: int = 1400  # bytes of gossip per packet (estimated sizes)
    # Bytes of gossip per second, piggybacked and in rounds together (`bandwidth.py`):
    # two thirds of memberlist's 21 KB/s, the rest is for probes and push-pull, whose
    # full-state digests alone take about 4 KB/s per member in a 10,000-member mesh.
    gossip_rate: int = 14_000
    lifeguard: bool = True  # False = plain SWIM: fixed timeouts, no awareness, no nacks
    accusations_per_probe: float = 2.0  # an accuser's Suspects and Deads per probe interval...
    accusation_burst: float = 10.0  # ...with at most this many at once (`accusations.py`)
    max_delta_bytes: int = 1024 * 1024  # a push-pull answer is split into Deltas this large
    # The periodic push-pull goes out in parts of about this many bytes, one a second
    # (`pushpull.plan_parts`), so that no second of a node's traffic holds a whole
    # digest (570 KB at 10,000 members); 0 sends it whole.
    push_pull_part_bytes: int = 4000
    record_bounds: RecordBounds = field(default_factory=RecordBounds)  # what a record may say

    def __post_init__(self) -> None:
        """Refuse settings that would stall or divide by zero, at construction time."""
        positive = {
            "gossip_interval": self.gossip_interval,
            "probe_interval": self.probe_interval,
            "probe_timeout": self.probe_timeout,
            "push_pull_interval": self.push_pull_interval,
            "reconnect_interval": self.reconnect_interval,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        if self.probe_timeout > self.probe_interval:
            raise ValueError("probe_timeout must not exceed probe_interval")
        if self.suspicion_mult < 1 or self.suspicion_max_timeout_mult < 1:
            raise ValueError("suspicion multipliers must be at least 1")
        if self.push_pull_part_bytes < 0:
            raise ValueError("push_pull_part_bytes must not be negative")
        if self.awareness_max_multiplier < 1:
            raise ValueError("awareness_max_multiplier must be at least 1")
        if self.gossip_nodes < 0 or self.indirect_checks < 0 or self.retransmit_mult < 1:
            raise ValueError("fanouts must be non-negative and retransmit_mult at least 1")
        if not self.accusations_per_probe > 0 or self.accusation_burst < 1:
            raise ValueError("accusations_per_probe must be positive and accusation_burst >= 1")
        if self.max_delta_bytes < 4096:
            raise ValueError("max_delta_bytes must be at least 4096")
        if self.packet_budget < 64:
            raise ValueError("packet_budget must be at least 64 bytes")
        if self.gossip_rate < self.packet_budget:
            raise ValueError("gossip_rate must be at least one packet_budget per second")
