"""Per-VM CPU load over time, shaped like a real fleet, deterministic for a seed.

What the model produces, every `sample_interval` seconds (10 s by default, the
agent's `inventory_interval`, so the sampled value is what an agent would
publish), for every VM: its CPU load in cores and its memory dirty rate.

    load_i(t) = vcpus_i * clip(base_i * diurnal_i(t) * burst_i(t) * noise_i(t), 0.002, 1)

- Sizes (heavy-tailed, most VMs small; Resource Central, Cortez et al.,
  SOSP 2017, section 3: "most VMs require few virtual cores and little
  memory"): vCPUs 1 / 2 / 4 / 8 with probabilities 0.45 / 0.30 / 0.18 / 0.07,
  and 1 / 2 / 4 GiB per vCPU with 0.40 / 0.45 / 0.15 (mean 2.3 vCPUs, 4.4 GiB).
- Long-lived classes (Resource Central: a large share of VMs has a low
  average CPU utilization, while the 95th-percentile utilization of a
  minority is high, and a VM's class is stable over its life):
  5% *hot* VMs with a base utilization uniform in [0.5, 0.9]; 25% *cold* VMs
  uniform in [0.005, 0.03]; the other 70% lognormal with median 0.12 and
  sigma 0.8, capped at 0.6. Fleet mean about 0.16 of the allocated vCPUs.
- Diurnal cycle: `trace_profile.AZURE_2019_DAY`, the Azure 2019 trace's
  datacenter-wide CPU usage folded onto one day (peak/trough 1.17, with the
  hourly step of scheduled jobs). Resource Central classifies VMs as
  interactive (diurnal) or delay-insensitive; here half the VMs are
  interactive with their own amplitude k_i uniform in [1, 3] around the
  profile (`1 + k_i (p(t + phase_i) - 1)`, phase jitter +-1 h) and half are
  flat, so the fleet's aggregate has the trace's shape and depth
  (mean k = 1).
- Bursts: each VM starts a burst as a Poisson process (0.5 per hour),
  lasting an exponential time (mean 60 s) during which its load is
  multiplied by a factor uniform in [2, 4] (capped at its vCPUs).
- Noise: a multiplicative AR(1) per VM, lognormal with sigma 0.06 and
  correlation 0.95 per sample (the trace's residual: 5.7% of the level,
  lag-1 autocorrelation 0.98 at five minutes).
- Dirty rate: lognormal per VM, median 8 MiB/s, sigma 1.0, capped at 400
  MiB/s when the VM runs at its base load, proportional to its current load.
- Arrivals and departures: VMs leave at a constant rate (`churn_per_hour`,
  5% of the fleet per hour, uniformly chosen) and the same number of new VMs
  arrive (Poisson), so the fleet size stays about constant over a run.
- Placement labels: 10% of VMs in anti-affinity groups of three
  (`novacron/anti-affinity`), 4% in affinity pairs (`novacron/affinity`).

Every random draw comes from the workload's own `random.Random(seed)`, in an
order that depends only on the seed and the time (never on where VMs run or
what a balancing strategy did), so every strategy of one run sees exactly the
same loads. `make_hot` (the hotspot scenario) changes a VM's class, not the
stream of draws.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from . import trace_profile

ANTI_AFFINITY_LABEL = "novacron/anti-affinity"
AFFINITY_LABEL = "novacron/affinity"

VCPU_CHOICES = ((1, 0.45), (2, 0.30), (4, 0.18), (8, 0.07))
GIB_PER_VCPU_CHOICES = ((1, 0.40), (2, 0.45), (4, 0.15))


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    """The model's parameters (defaults as documented in the module docstring)."""

    seed: int = 1
    vms: int = 1000
    sample_interval: float = 10.0
    start_of_day: float = 9 * 3600.0  # trace time of day at t = 0 (load rising)
    hot_share: float = 0.05
    cold_share: float = 0.25
    interactive_share: float = 0.5
    amplitude: tuple[float, float] = (1.0, 3.0)
    phase_jitter: float = 3600.0
    burst_rate_per_hour: float = 0.5
    burst_mean_seconds: float = 60.0
    burst_factor: tuple[float, float] = (2.0, 4.0)
    noise_sigma: float = 0.06
    noise_correlation: float = 0.95
    churn_per_hour: float = 0.05
    anti_affinity_share: float = 0.10
    affinity_share: float = 0.04


@dataclass(slots=True)
class VmSpec:
    """One VM: its size, labels and the hidden parameters of its load."""

    name: str
    vcpus: int
    memory_mib: int
    labels: dict[str, str]
    base: float  # mean utilization of its vCPUs without diurnal/burst/noise
    amplitude: float  # diurnal amplitude around the fleet profile (0 = flat)
    phase: float  # seconds of shift against the fleet profile
    dirty_base: float  # MiB/s at base load
    noise: float = 0.0  # AR(1) state (log scale)
    burst_until: float = -1.0
    burst_factor: float = 1.0
    hot: bool = False


@dataclass(frozen=True, slots=True)
class Sample:
    """A VM's load at one sample: cores in use (demand) and dirty rate."""

    load: float
    dirty_rate_mib_s: float


def _choice(rng: random.Random, table: tuple[tuple[int, float], ...]) -> int:
    x = rng.random()
    acc = 0.0
    for value, p in table:
        acc += p
        if x < acc:
            return value
    return table[-1][0]


class Workload:
    """The fleet's VMs and their load, advanced sample by sample."""

    def __init__(self, config: WorkloadConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)
        self._churn_rng = random.Random(config.seed * 7919 + 1)
        self.vms: dict[str, VmSpec] = {}
        self._next = 0
        self._groups = 0
        self._last_sample = -math.inf
        self._pending_group: list[tuple[str, str]] = []
        for _ in range(config.vms):
            spec = self._new_vm(self._rng)
            self.vms[spec.name] = spec

    # -- VM creation -------------------------------------------------------

    def _new_vm(self, rng: random.Random) -> VmSpec:
        c = self.config
        name = f"vm{self._next:05d}"
        self._next += 1
        vcpus = _choice(rng, VCPU_CHOICES)
        memory = vcpus * _choice(rng, GIB_PER_VCPU_CHOICES) * 1024
        x = rng.random()
        if x < c.hot_share:
            base = rng.uniform(0.5, 0.9)
        elif x < c.hot_share + c.cold_share:
            base = rng.uniform(0.005, 0.03)
        else:
            base = min(0.6, rng.lognormvariate(math.log(0.12), 0.8))
        amplitude = rng.uniform(*c.amplitude) if rng.random() < c.interactive_share else 0.0
        phase = rng.uniform(-c.phase_jitter, c.phase_jitter)
        dirty = min(400.0, rng.lognormvariate(math.log(8.0), 1.0))
        labels: dict[str, str] = {}
        y = rng.random()
        if self._pending_group:
            key, value = self._pending_group.pop()
            labels[key] = value
        elif y < c.anti_affinity_share / 3:
            self._groups += 1
            group = f"aa{self._groups}"
            labels[ANTI_AFFINITY_LABEL] = group
            self._pending_group += [(ANTI_AFFINITY_LABEL, group)] * 2
        elif y < c.anti_affinity_share / 3 + c.affinity_share / 2:
            self._groups += 1
            group = f"af{self._groups}"
            labels[AFFINITY_LABEL] = group
            self._pending_group.append((AFFINITY_LABEL, group))
        return VmSpec(name, vcpus, memory, labels, base, amplitude, phase, dirty)

    # -- dynamics ----------------------------------------------------------

    def diurnal(self, spec: VmSpec, t: float) -> float:
        """The VM's diurnal factor at simulated time `t`."""
        if spec.amplitude == 0.0:
            return 1.0
        level = trace_profile.level(self.config.start_of_day + t + spec.phase)
        return max(0.05, 1.0 + spec.amplitude * (level - 1.0))

    def make_hot(self, names: list[str], utilization: float = 0.9) -> None:
        """Hotspot: these VMs now run near `utilization` of their vCPUs, for good."""
        for name in names:
            spec = self.vms.get(name)
            if spec is not None:
                spec.base = utilization
                spec.amplitude = 0.0
                spec.hot = True

    def sample(self, t: float) -> dict[str, Sample]:
        """Advance every VM to time `t` (one sample) and return each one's load."""
        c = self.config
        rng = self._rng
        p_burst = 1.0 - math.exp(-c.burst_rate_per_hour * c.sample_interval / 3600.0)
        rho = c.noise_correlation
        innovation = c.noise_sigma * math.sqrt(1.0 - rho * rho)
        out: dict[str, Sample] = {}
        for name in sorted(self.vms):
            spec = self.vms[name]
            spec.noise = rho * spec.noise + rng.gauss(0.0, innovation)
            if t >= spec.burst_until and rng.random() < p_burst:
                spec.burst_until = t + rng.expovariate(1.0 / c.burst_mean_seconds)
                spec.burst_factor = rng.uniform(*c.burst_factor)
            burst = spec.burst_factor if t < spec.burst_until else 1.0
            noise = 1.0 if spec.hot else math.exp(spec.noise)
            util = spec.base * self.diurnal(spec, t) * burst * noise
            util = min(1.0, max(0.002, util))
            dirty = spec.dirty_base * util / max(spec.base, 0.002)
            out[name] = Sample(spec.vcpus * util, min(400.0, dirty))
        self._last_sample = t
        return out

    def churn(self, t0: float, t1: float) -> tuple[list[VmSpec], list[str]]:
        """VMs arriving and leaving in [t0, t1): (new specs, names that left)."""
        c = self.config
        rng = self._churn_rng
        expected = c.churn_per_hour * c.vms * (t1 - t0) / 3600.0
        leaving: list[str] = []
        arriving: list[VmSpec] = []
        n_leave = _poisson(rng, expected)
        n_arrive = _poisson(rng, expected)
        candidates = sorted(n for n, s in self.vms.items() if not s.hot)
        for _ in range(min(n_leave, len(candidates))):
            name = candidates.pop(rng.randrange(len(candidates)))
            leaving.append(name)
            del self.vms[name]
        for _ in range(n_arrive):
            spec = self._new_vm(rng)
            spec.labels.pop(AFFINITY_LABEL, None)  # arrivals come alone
            spec.labels.pop(ANTI_AFFINITY_LABEL, None)
            self._pending_group.clear()
            self.vms[spec.name] = spec
            arriving.append(spec)
        return arriving, leaving


def _poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw (Knuth; `mean` is small here)."""
    if mean <= 0:
        return 0
    limit = math.exp(-mean)
    k, p = 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k
