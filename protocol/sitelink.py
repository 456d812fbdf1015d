"""The site link: what a site's gateway and the coordinator say to each other.

One WebSocket (TLS) per site, opened by the site: the coordinator never dials
a site. Every WebSocket message is one binary frame holding one envelope
`[version, type, sender, payload]` in the mesh's strict msgpack codec
(`codec.decode` with this module's catalogue): every decode error is a
`ProtocolError`, frames are at most `LIMITS.max_frame` bytes.

Handshake (the coordinator speaks first):

1. coordinator -> site `Challenge`: a fresh nonce and the coordinator's id.
2. site -> coordinator `Hello`: the site's cluster CA public key, the
   gateway's node certificate (issued by that CA), the CA's signed revocation
   list if it has one, the stream it last used, and its signature with the
   node key over `hello_bytes(nonce, ca)`. The TLS layer already proved the
   coordinator to the site; this proves the site to the coordinator: the CA
   key must be enrolled (`nova site enroll`), the certificate must be that
   CA's, valid and not revoked, and the signature must verify.
3. coordinator -> site `Welcome` (the site's name, the coordinator's stream
   id and the last sequence it applied) or `Refused` (a stable code and a
   reason), after which it closes.

Site -> coordinator: `Delta`s, each with a sequence number. A stream is an
id (the site's choice) and sequences 1, 2, ...; it always begins with a
snapshot (seq 1 has `snapshot_start`, the delta with `snapshot_end` closes
it: hosts the snapshot did not name are gone). Deltas then carry hosts whose
member state or record version changed, hosts gone, pins of commands
(`Accepted`: which host will run a command) and command `Outcome`s.

- The coordinator applies a delta only if it belongs to its stream and its
  seq is the applied one plus 1; a seq at or below it is a duplicate
  (acknowledged, not applied); a gap, or a stream it does not know that is
  not a fresh snapshot at seq 1, gets `Resync` and nothing is applied.
- `Ack(seq)` is cumulative and sent only after the delta is committed to the
  coordinator's database, so an acknowledged delta is never lost.
- On reconnect the `Welcome` says (stream, applied); a site that still holds
  every delta after `applied` resends them, otherwise it starts a new stream
  with a snapshot. Host states carry their record's version, so a delta
  applied twice by any path changes nothing either.

Coordinator -> site: `Command`s, each with an idempotency key. A command not
yet pinned (`host` empty) is pinned by the gateway, which picks the host (the
agents' own placement, or where the VM runs), reports it in an `Accepted`
inside a delta and runs it only once that delta is acknowledged: the pin is
then in the coordinator's database, and a command redelivered after any crash
carries it. The pinned host keeps a ledger of the keys it started (persisted
before it acts) and answers a key it already knows with its outcome, never
by running it again: at most once. Outcomes travel in deltas, so they are
retried until acknowledged; a host that crashed mid-command reports the
command as interrupted rather than retrying it.

Who owns what: the site owns where VMs run and in which state; the
coordinator owns the intents it was given (commands and their operations)
and a possibly stale copy of the site's view.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, ClassVar, cast

import msgpack

from . import codec
from .errors import InvalidField
from .messages import Counter, MemberState, NodeRecord, Range

# Version 2: the host records a gateway sends carry mesh-wide state in typed
# fields and refuse the `novacron/` labels a version 1 gateway would still
# send, so a mismatch is refused at the envelope, saying which versions each speaks.
SITELINK_VERSION = 2
VERSIONS: tuple[int, ...] = (2,)
DOMAIN = "novacron-sitelink-hello/1"  # what the gateway's signature is over, first
PATH = "/v1/sitelink"  # the coordinator's WebSocket endpoint
NONCE_BYTES = 32
LIMITS = codec.Limits(max_frame=4 * 1024 * 1024)
MAX_STOP_TIMEOUT = 3600.0  # seconds a guest may be given to power off
MAX_HOSTS_PER_DELTA = 64  # a delta stays well under the frame limit (hosts carry their VMs)


class RefusalCode(StrEnum):
    """Why a coordinator refused a site's link (stable, for scripts and tests)."""

    UNKNOWN_CA = "unknown-ca"  # no site enrolled this CA key
    REVOKED_SITE = "revoked-site"  # the site was enrolled, then revoked by an admin
    BAD_CERTIFICATE = "bad-certificate"  # not that CA's, expired, or revoked by the CA
    BAD_SIGNATURE = "bad-signature"  # the Hello's signature does not verify
    NOT_LEADER = "not-leader"  # this coordinator does not hold site links; `leader` says who
    BAD_HELLO = "bad-hello"  # the first frame was not a Hello


class CommandKind(StrEnum):
    """What the coordinator may ask a site to do."""

    CREATE = "create"  # create a VM from `spec` on the host the site picks (and start it)
    START = "start"
    STOP = "stop"
    DELETE = "delete"
    MIGRATE = "migrate"  # move `vm` within the site (to `target`, or the agents' choice)
    DRAIN = "drain"  # drain host `target`
    UNDRAIN = "undrain"


# --- handshake -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Challenge:
    TYPE: ClassVar[str] = "challenge"
    nonce: bytes
    coordinator: str  # the coordinator's id (for logs)


@dataclass(frozen=True, slots=True)
class Hello:
    TYPE: ClassVar[str] = "hello"
    ca_public: bytes  # the site's cluster CA key (raw Ed25519): what the coordinator knows it by
    certificate: bytes  # the gateway's node certificate, issued by that CA
    signature: bytes  # by the gateway's node key over `hello_bytes(nonce, ca_public)`
    revocations: bytes = b""  # the CA's signed revocation list, if the site has one
    stream: str = ""  # the stream the site last used ("" on a fresh gateway)
    agent_version: str = ""


@dataclass(frozen=True, slots=True)
class Welcome:
    TYPE: ClassVar[str] = "welcome"
    site: str  # the name the site was enrolled under
    stream: str  # the stream the coordinator holds for this site ("" for none)
    applied: Counter  # the last sequence of that stream it applied


@dataclass(frozen=True, slots=True)
class Refused:
    TYPE: ClassVar[str] = "refused"
    code: RefusalCode
    reason: str
    leader: str = ""  # with NOT_LEADER: the leader's URL, if known


# --- site -> coordinator -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostState:
    """One host as the gateway sees it: its member state and its latest signed-off record."""

    node_id: str
    state: MemberState
    record: NodeRecord  # version 0 and empty when the gateway has none yet


@dataclass(frozen=True, slots=True)
class Accepted:
    """The gateway pinned command `key` to `host` (it runs once this delta is acknowledged)."""

    key: str
    host: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """How command `key` ended on `host`."""

    key: str
    ok: bool
    host: str = ""
    status: Annotated[int, Range(0, 999)] = 0  # an HTTP-like status (409 refused, 503 away, ...)
    detail: str = ""  # what happened or why not, for the operator
    vm: str = ""  # the VM it concerned (a created VM's name)
    migration: str = ""  # a started migration's id


@dataclass(frozen=True, slots=True)
class Delta:
    TYPE: ClassVar[str] = "delta"
    stream: str
    seq: Counter
    snapshot_start: bool = False  # the first delta of a snapshot (always seq 1 of a stream)
    snapshot_end: bool = False  # the last: hosts not named since the start are gone
    hosts: tuple[HostState, ...] = ()
    gone: tuple[str, ...] = ()  # hosts that left the view
    accepted: tuple[Accepted, ...] = ()
    outcomes: tuple[Outcome, ...] = ()


# --- coordinator -> site -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ack:
    TYPE: ClassVar[str] = "ack"
    stream: str
    seq: Counter  # every delta of `stream` up to and including this one is committed
    cancelled: tuple[str, ...] = ()  # pins in these deltas it refuses: do not run those keys


@dataclass(frozen=True, slots=True)
class Resync:
    TYPE: ClassVar[str] = "resync"
    reason: str  # a new stream with a snapshot is needed


@dataclass(frozen=True, slots=True)
class Disk:
    base: str  # a base image path that exists on every host of the site
    size_mib: Annotated[int, Range(0, 64 * 1024 * 1024)] = 0  # 0: the base's size


@dataclass(frozen=True, slots=True)
class VmSpec:
    """A VM to create, as the agents' `nova vm create` takes it."""

    name: str = ""  # "" only in a command that creates nothing
    vcpus: Annotated[int, Range(0, 256)] = 0
    memory_mib: Annotated[int, Range(0, 1024 * 1024)] = 0
    kernel: str = ""
    initrd: str = ""
    cmdline: str = ""
    disks: tuple[Disk, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    start: bool = True


@dataclass(frozen=True, slots=True)
class Command:
    TYPE: ClassVar[str] = "command"
    key: str  # the idempotency key: one execution at most, whatever is redelivered
    kind: CommandKind
    host: str = ""  # the pinned host ("" until the gateway pinned it)
    vm: str = ""  # start, stop, delete, migrate
    target: str = ""  # migrate: the destination host ("" for the agents' choice); drain: the host
    spec: VmSpec = field(default_factory=VmSpec)  # create
    force: bool = False  # delete a running VM
    stop_timeout: float = 30.0  # seconds the guest gets to power off
    # The coordinator's proof (`coordinator_commands.py`): when it signed, its TLS
    # certificate (DER) and its signature over every field above and `issued_at`.
    issued_at: float = 0.0
    certificate: bytes = b""
    signature: bytes = b""
    # The W3C trace context of the coordinator's request, so the command's spans on the
    # site join its trace. Not signed: it grants nothing, and agents that predate it
    # verify the same bytes.
    traceparent: str = ""


CATALOGUE: dict[str, type] = {
    cls.TYPE: cls for cls in (Challenge, Hello, Welcome, Refused, Delta, Ack, Resync, Command)
}

SiteLinkMessage = Challenge | Hello | Welcome | Refused | Delta | Ack | Resync | Command


def encode(message: SiteLinkMessage, sender: str) -> bytes:
    """One WebSocket frame."""
    return codec.encode(message, sender, SITELINK_VERSION)  # type: ignore[arg-type]


def decode(data: bytes) -> tuple[str, SiteLinkMessage]:
    """(sender, message) of one frame, or a `ProtocolError` saying what is wrong."""
    envelope = codec.decode(data, LIMITS, catalogue=CATALOGUE, versions=VERSIONS)
    message = cast(SiteLinkMessage, envelope.message)
    if isinstance(message, Command):
        _check_command(message)
    return envelope.sender, message


def _check_command(command: Command) -> None:
    needs = {
        CommandKind.CREATE: bool(command.spec.name),
        CommandKind.MIGRATE: bool(command.vm),
        CommandKind.DRAIN: bool(command.target),
        CommandKind.UNDRAIN: bool(command.target),
    }.get(command.kind, bool(command.vm))
    if not command.key or not needs:
        raise InvalidField(f"command {command.kind.value}: missing key, vm, target or spec")
    if not 0 <= command.stop_timeout <= MAX_STOP_TIMEOUT:
        raise InvalidField(f"command stop_timeout must be 0..{MAX_STOP_TIMEOUT:g} s")


def hello_bytes(nonce: bytes, ca_public: bytes) -> bytes:
    """What the gateway signs: bound to this connection's nonce and to the site's CA."""
    return msgpack.packb([DOMAIN, nonce, ca_public], use_bin_type=True)  # type: ignore[no-any-return]


ENROLL_DOMAIN = "novacron-site-enroll/1"


def enroll_bytes(token: str, ca_public: bytes) -> bytes:
    """What `nova site enroll` signs with the node's key: the token, bound to the CA."""
    return msgpack.packb([ENROLL_DOMAIN, token, ca_public], use_bin_type=True)  # type: ignore[no-any-return]
