"""Where a new VM goes among the coordinator's targets, and why: sans-IO.

A target is anything a VM can be sent to: a site today, a cloud region
(provider + region) tomorrow. Placement sees it only through the `Target`
protocol: its name and kind, labels (`region`, `residency`, ...), whether it
is reachable now, what it costs, the room its largest host has, and the
anti-affinity groups it already runs. The target then places the VM on one
of its hosts itself (a site's agents choose with their own placement).

`place` judges every target against the request's constraints, in a fixed
order so the first reason given is the most basic one: named target,
labels (region, residency and any other), reachability, anti-affinity,
room. Among those that fit, the policy ranks: `spread` (default) takes the
target with the most free memory in its roomiest host, `pack` the least
that still fits, `cheapest` the lowest cost. Ties go to the name, so one
request over one view always gets one answer, and `explain` (the same call)
shows every candidate with why it was taken or refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

POLICIES = ("spread", "pack", "cheapest")


class Target(Protocol):
    """What placement needs to know of a place a VM may go."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...  # "site", later "cloud"

    @property
    def labels(self) -> Mapping[str, str]: ...

    @property
    def reachable(self) -> bool: ...  # its link is up (a command sent now would run now)

    @property
    def cost(self) -> float: ...  # relative cost of running a VM there

    def room(self) -> tuple[float, int]:
        """(vCPUs, MiB) free on its roomiest host that takes new VMs."""
        ...

    def groups(self) -> frozenset[str]:
        """Anti-affinity groups of the VMs it runs."""
        ...


@dataclass(frozen=True, slots=True)
class Request:
    """What the VM needs and where it may go."""

    vcpus: int
    memory_mib: int
    target: str = ""  # only this target (a site's name)
    labels: Mapping[str, str] = field(default_factory=dict)  # region=..., residency=..., ...
    anti_affinity: str = ""  # never in a target that runs a VM of this group
    policy: str = "spread"


@dataclass(frozen=True, slots=True)
class Candidate:
    name: str
    kind: str
    fits: bool
    reason: str  # why it fits (its score) or why not
    free_vcpus: float
    free_memory_mib: int
    cost: float


@dataclass(frozen=True, slots=True)
class Decision:
    chosen: str | None
    reason: str  # why this one, or why none
    candidates: tuple[Candidate, ...]


def place(targets: Iterable[Target], request: Request) -> Decision:
    """The target for `request` and every candidate's verdict."""
    judged = []
    for target in sorted(targets, key=lambda t: t.name):
        vcpus, memory = target.room()
        why = _refusal(target, request, vcpus, memory)
        judged.append(
            Candidate(
                target.name,
                target.kind,
                why is None,
                why or _score_text(request.policy, target, memory),
                vcpus,
                memory,
                target.cost,
            )
        )
    fitting = [c for c in judged if c.fits]
    if not fitting:
        reason = "no target fits: " + "; ".join(f"{c.name}: {c.reason}" for c in judged)
        return Decision(None, reason if judged else "no targets known", tuple(judged))
    best = min(fitting, key=lambda c: (_rank(request.policy, c), c.name))
    return Decision(best.name, f"{request.policy}: {best.reason}", tuple(judged))


def _refusal(target: Target, request: Request, vcpus: float, memory: int) -> str | None:
    if request.target and target.name != request.target:
        return f"not the {target.kind} asked for ({request.target})"
    for key, wanted in sorted(request.labels.items()):
        have = target.labels.get(key)
        if have != wanted:
            return f"label {key}={wanted} wanted, {target.kind} has {key}={have or '(none)'}"
    if not target.reachable and not request.target:
        return "link down: not reachable now"
    if request.anti_affinity and request.anti_affinity in target.groups():
        return f"anti-affinity: runs a VM of group {request.anti_affinity}"
    if memory < request.memory_mib or vcpus < request.vcpus:
        return (
            f"no room: roomiest host has {vcpus:g} vCPUs and {memory} MiB free, "
            f"{request.vcpus} vCPUs and {request.memory_mib} MiB needed"
        )
    return None


def _rank(policy: str, candidate: Candidate) -> float:
    if policy == "pack":
        return candidate.free_memory_mib
    if policy == "cheapest":
        return candidate.cost
    return -candidate.free_memory_mib


def _score_text(policy: str, target: Target, memory: int) -> str:
    if policy == "cheapest":
        return f"fits; cost {target.cost:g}"
    return f"fits; {memory} MiB free on its roomiest host"
