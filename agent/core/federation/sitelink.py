"""The gateway's half of the site link's stream: sequences, acks, resume, pins, sans-IO.

`SiteStream` turns the site's view (hosts with their member state and record)
into `Delta`s with sequence numbers, keeps every delta until the coordinator
acknowledges it, and decides on each `Welcome` whether to resume (resend
what was not acknowledged) or to start a new stream with a snapshot. It
also carries the two things commands need to be at most once: a command's
pin (`Accepted`) rides in a delta, and the command is released to run only
when that delta is acknowledged; its outcome rides in a later delta and is
kept until acknowledged too. The wire rules are in `protocol/sitelink.py`.

No I/O, no clock, no randomness: stream ids come from the caller.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from novacron.protocol.messages import MemberState, NodeRecord
from novacron.protocol.sitelink import (
    MAX_HOSTS_PER_DELTA,
    Accepted,
    Ack,
    Command,
    CommandKind,
    Delta,
    HostState,
    Outcome,
    Welcome,
)

from ..membership.members import MemberInfo
from ..migration.policy import MigrationLimits
from ..placement.targets import new_vm_target

MAX_UNACKED = 256  # deltas in flight; beyond it nothing new is sent until acks come
MAX_VMS_PER_DELTA = 8_000  # keeps a delta of large hosts well under the frame limit
CANCELLED = "cancelled by the coordinator before it ran"


@dataclass(frozen=True, slots=True)
class _Sent:
    """What the coordinator was last told about a host: enough to see a change."""

    state: MemberState
    version: int


class SiteStream:
    """Deltas out, acks in, for one gateway's life (see the module docstring)."""

    def __init__(self, stream: str) -> None:
        self.stream = stream  # this stream's id
        self._next_seq = 1
        self._unacked: deque[Delta] = deque()  # sent, not yet acknowledged, in seq order
        self._sent: dict[str, _Sent] = {}  # host -> what the stream has said about it
        self._snapshot_due = True  # a new stream always starts with a snapshot
        self._pins: dict[
            str, tuple[Command, int]
        ] = {}  # key -> (command, seq of its pin; 0: not sent)
        self._outcomes: dict[str, tuple[Outcome, int]] = {}  # key -> (outcome, seq; 0: not sent)

    # --- connection ---------------------------------------------------------------

    def welcome(self, welcome: Welcome, fresh_stream: str) -> list[Delta]:
        """The coordinator's `Welcome`: resume if it can, else a new stream `fresh_stream`.

        Returns the deltas to resend (the snapshot of a new stream comes from
        the next `observe`)."""
        if self._can_resume(welcome):
            self._acknowledge(welcome.applied)
            return list(self._unacked)
        self.restart(fresh_stream)
        return []

    def _can_resume(self, welcome: Welcome) -> bool:
        if welcome.stream != self.stream or self._snapshot_due:
            return False
        if welcome.applied >= self._next_seq:
            return False  # the coordinator has seen more than we sent: not our stream
        oldest = self._unacked[0].seq if self._unacked else self._next_seq
        return welcome.applied + 1 >= oldest  # we still hold everything after `applied`

    def restart(self, fresh_stream: str) -> None:
        """Begin a new stream (after a `Resync`, or when resuming is impossible)."""
        self.stream = fresh_stream
        self._next_seq = 1
        self._unacked.clear()
        self._sent.clear()
        self._snapshot_due = True
        # Pins and outcomes the old stream did not get acknowledged go out again.
        self._pins = {key: (command, 0) for key, (command, _) in self._pins.items()}
        self._outcomes = {key: (outcome, 0) for key, (outcome, _) in self._outcomes.items()}

    def ack(self, ack: Ack) -> list[Command]:
        """Drop what `ack` covers; the commands whose pin it covers may now run.

        A pin the coordinator refuses (`ack.cancelled`: the operation was
        cancelled or gave up meanwhile) is not run; its outcome says so."""
        if ack.stream != self.stream or ack.seq >= self._next_seq:
            return []  # about another stream, or beyond what we sent: nothing to trust
        self._acknowledge(ack.seq)
        covered = [cmd for key, (cmd, seq) in self._pins.items() if 0 < seq <= ack.seq]
        for command in covered:
            del self._pins[command.key]
            if command.key in ack.cancelled:
                self.report(
                    Outcome(command.key, ok=False, host=command.host, status=409, detail=CANCELLED)
                )
        return [command for command in covered if command.key not in ack.cancelled]

    def _acknowledge(self, seq: int) -> None:
        while self._unacked and self._unacked[0].seq <= seq:
            self._unacked.popleft()
        for key in [k for k, (_, s) in self._outcomes.items() if 0 < s <= seq]:
            del self._outcomes[key]

    # --- what goes out --------------------------------------------------------------

    def pin(self, command: Command, host: str) -> None:
        """`command` will run on `host` once the delta carrying the pin is acknowledged."""
        pinned = Command(
            command.key,
            command.kind,
            host=host,
            vm=command.vm,
            target=command.target,
            spec=command.spec,
            force=command.force,
            stop_timeout=command.stop_timeout,
        )
        if command.key not in self._pins:
            self._pins[command.key] = (pinned, 0)

    def pinned(self, key: str) -> bool:
        """Whether `key` waits for its pin's acknowledgement."""
        return key in self._pins

    def report(self, outcome: Outcome) -> None:
        """`outcome` goes out with the next delta and is kept until acknowledged."""
        self._outcomes[outcome.key] = (outcome, 0)

    def observe(self, view: Mapping[str, HostState]) -> list[Delta]:
        """The deltas that tell the coordinator what changed in `view` since the last call.

        The first call of a stream sends the whole view as a snapshot. Nothing
        is sent while `MAX_UNACKED` deltas wait for acknowledgement (the
        changes are not lost: the next call finds them)."""
        if len(self._unacked) >= MAX_UNACKED:
            return []
        snapshot = self._snapshot_due
        if snapshot:
            changed = [view[node] for node in sorted(view)]
            gone: list[str] = []
            self._sent.clear()
        else:
            changed = [
                host
                for node, host in sorted(view.items())
                if self._sent.get(node) != _Sent(host.state, host.record.version)
            ]
            gone = sorted(set(self._sent) - set(view))
        accepted = [Accepted(k, cmd.host) for k, (cmd, seq) in self._pins.items() if seq == 0]
        outcomes = [outcome for outcome, seq in self._outcomes.values() if seq == 0]
        if not (snapshot or changed or gone or accepted or outcomes):
            return []
        deltas = self._chunk(changed, gone, accepted, outcomes, snapshot)
        for host in changed:
            self._sent[host.node_id] = _Sent(host.state, host.record.version)
        for node in gone:
            del self._sent[node]
        self._snapshot_due = False
        return deltas

    def _chunk(
        self,
        hosts: list[HostState],
        gone: list[str],
        accepted: list[Accepted],
        outcomes: list[Outcome],
        snapshot: bool,
    ) -> list[Delta]:
        groups: list[list[HostState]] = [[]]
        weight = 0
        for host in hosts:
            cost = 1 + len(host.record.vms)
            full = len(groups[-1]) >= MAX_HOSTS_PER_DELTA or weight + cost > MAX_VMS_PER_DELTA
            if groups[-1] and full:
                groups.append([])
                weight = 0
            groups[-1].append(host)
            weight += cost
        deltas = []
        for i, group in enumerate(groups):
            first, last = i == 0, i == len(groups) - 1
            delta = Delta(
                self.stream,
                self._next_seq,
                snapshot_start=snapshot and first,
                snapshot_end=snapshot and last,
                hosts=tuple(group),
                gone=tuple(gone) if last else (),
                accepted=tuple(accepted) if last else (),
                outcomes=tuple(outcomes) if last else (),
            )
            deltas.append(delta)
            self._unacked.append(delta)
            self._next_seq += 1
        sent_at = deltas[-1].seq
        for item in accepted:
            command, _ = self._pins[item.key]
            self._pins[item.key] = (command, sent_at)
        for outcome in outcomes:
            self._outcomes[outcome.key] = (outcome, sent_at)
        return deltas

    # --- for status and tests ------------------------------------------------------------

    @property
    def unacked(self) -> int:
        return len(self._unacked)

    @property
    def next_seq(self) -> int:
        return self._next_seq


# --- which host runs a command ------------------------------------------------------


def pin_host(
    command: Command,
    records: Mapping[str, NodeRecord],
    member: Callable[[str], MemberInfo | None],
    limits: MigrationLimits,
    overcommit: float,
) -> tuple[str | None, str]:
    """The host that must run `command` in this view, or (None, why no host can).

    A new VM goes where the agents' own placement puts it (`new_vm_target`:
    hosts in the order `nova vm migrate --auto` uses, with no source; a host
    holding its template, by its labels, is preferred); a command about a VM
    goes to the host that runs it (the running copy, while a migration shows
    two); a drain to the host it names."""
    if command.kind is CommandKind.CREATE:
        spec = command.spec
        where = _hosts_of(records, spec.name)
        if where:
            return None, f"a VM named {spec.name} already exists on {where[0]}"
        placement = new_vm_target(
            records, member, spec.vcpus, spec.memory_mib, spec.labels, limits, overcommit
        )
        return placement.target, placement.reason
    if command.kind in (CommandKind.DRAIN, CommandKind.UNDRAIN):
        info = member(command.target)
        if info is None or info.state is not MemberState.ALIVE:
            state = "unknown" if info is None else info.state.value
            return None, f"host {command.target} is {state} in the site's view"
        return command.target, ""
    where = _hosts_of(records, command.vm)
    if not where:
        return None, f"unknown VM: no host of the site runs {command.vm}"
    return where[0], ""


def _hosts_of(records: Mapping[str, NodeRecord], vm: str) -> list[str]:
    """Hosts whose record lists `vm`, the one running it first."""
    found = [
        (summary.state != "running", node)
        for node, record in records.items()
        for summary in record.vms
        if summary.name == vm
    ]
    return [node for _, node in sorted(found)]
