"""`nova-agent`: the per-host daemon wiring the sans-IO core to real I/O.

One asyncio loop. The membership core decides; this module only carries:
frames from the ZeroMQ transport into `core.receive`, the clock into
`core.tick` when `core.next_deadline()` comes, inventory changes into
`core.update_record`, mDNS adverts and static seeds into introductions and
`core.join`, and the core's sends back out through the transport. Migration
messages go to the `Migrator`, drain requests and answers to `DrainRequests`.
The local API reads the core through `MeshView`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import os
import random
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from novacron.protocol.certificates import format_time
from novacron.protocol.errors import IdentityError
from novacron.protocol.messages import MemberState, Message, NodeRecord, TemplateWanted
from novacron.protocol.operators import OperatorCommand, verify_command
from novacron.protocol.revocation import verify_revocation_list

from . import logs
from .api import ApiServer, MetricsServer, MetricsSource, VmLifecycle
from .claims import ClaimCheck
from .config import (
    AgentConfig,
    ConfigError,
    host_port,
    identity_paths,
    metrics_address,
    parse_cli,
    seed_addresses,
    split_address,
)
from .core.events import (
    Event,
    IdentityClash,
    MemberAlive,
    MemberRevoked,
    Output,
    ReachedIndirectly,
    RecordRejected,
)
from .core.federation.gateway import elect
from .core.images.holders import holders, listed
from .core.membership.config import MembershipConfig
from .core.membership.node import MembershipNode
from .core.migration.reservations import free_capacity
from .core.refusals import RefusalKind, Refused
from .core.templates import parse_ref
from .daemon_status import (
    CertificateStatus,
    DaemonStatus,
    RecentEvent,
    RevocationsPublished,
    TemplatesStatus,
    event_fields,
)
from .discovery import Discovery, DuplicateNode, PeerEvent, PeerFound
from .drain import Drain, DrainRequests
from .hypervisor import Hypervisor, HypervisorError, ProbeGuest
from .identity import IdentityProblem, NodeIdentity, load_identity
from .image_service import ImageService
from .introduction import (
    PORT_OFFSET,
    Introduction,
    IntroductionFailed,
    IntroductionServer,
    introduce,
)
from .inventory import Inventory
from .journal import MigrationJournal
from .keyring import AgentKeyring
from .last_members import load_last_members, save_last_members
from .libvirt_adapter import LibvirtAdapter
from .mesh_pull import MeshPull, PeersView, PullFailed, Pulls, PullStatus
from .migrator import Migrator
from .peer_certificates import load_peer_certificates, save_peer_certificates
from .rebalancer import Rebalancer
from .recovery import Recoveries
from .sdnotify import Notifier
from .security import PeerRefused, TrustStore
from .site_commands import SiteCommands
from .site_controls import SiteControls
from .tasks import cancel_and_wait, wait_event
from .template_retention import TemplateRetention
from .template_store import TemplateStore, load_trusted
from .transport import Transport, TransportError
from .view import MeshView
from .vms import VmControl

if TYPE_CHECKING:  # loaded only by an agent that has a coordinator (_coordinator_trust)
    from novacron.protocol.coordinator_commands import CoordinatorTrust

    # Loaded only by an agent that uses them (an events server, a collector, a
    # coordinator): every idle agent would otherwise hold their modules.
    from .event_stream import EventStream
    from .gateway import Gateway
    from .tracing import Tracing

log = logging.getLogger("novacron.agent")

# Knocking at static seeds while alone: 1 s after a failed try, doubling to 10 s, so an
# agent that starts before its seed (a site powering up) meets it seconds after it starts.
SEED_RETRY_FIRST = 1.0
SEED_RETRY = 10.0  # also: seconds between retries of mDNS adverts we did not meet
INTRO_RETRY = 1.0  # seconds before introducing ourselves to the same address again
LEAVE_GRACE = 1.0  # seconds of gossip after a graceful leave before closing
JOURNAL_DIR = "migrations"  # under the data dir: outbound migrations in flight
DRAIN_FILE = "draining"  # under the data dir: exists while this host drains
EVENT_SPOOL = "events"  # under the data dir: events the sink has not taken yet
RECENT_EVENTS = 50  # membership events kept for `nova status`
EXIT_FAILURE = 1  # the agent stopped on its own after a fault: systemd restarts it
NEWCOMER_WINDOW = 120.0  # seconds: an agent this young that meets its own id elsewhere yields
CERTIFICATE_WARNING = 14 * 86400.0  # warn this long before our certificate expires
CERTIFICATE_CHECK = 60.0  # seconds between looks at our certificate
PEER_CERTIFICATES = "peer-certificates"  # under the data dir: members' certificates, for restarts
LAST_MEMBERS = "last-members"  # under the data dir: members' addresses, for restarts
PEERS_SAVE = 1.0  # seconds between looks for changes to those two files
MEMBERS_SAVE = 10.0  # seconds between saves of the addresses, after the first
REJOIN_TRIES = 3  # remembered members knocked at, at random, each time the seeds are
SITE_COMMANDS = "site-commands.log"  # under the data dir: coordinator commands started here


class StartupError(Exception):
    """The agent cannot start; the message names the problem for the operator."""


class Agent:
    """One host's agent: transport, discovery, inventory, API, around a `MembershipNode`."""

    def __init__(
        self,
        config: AgentConfig,
        identity: NodeIdentity,
        *,
        membership: MembershipConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.identity = identity
        self.node_id = identity.node_id
        self._clock = clock  # the core's clock: monotonic, immune to wall-clock steps
        self._started = clock()
        self.address = f"{advertise_address(config)}:{config.port}"
        self.trust = TrustStore(identity.ca_public, identity.revocations)
        self.trust.add_certificate(identity.certificate_bytes)  # we may talk to ourselves
        self.transport = Transport(
            self.node_id,
            identity.key,
            self.trust,
            config.bind_address,
            config.port,
            heartbeat=config.peer_heartbeat,
        )
        self.introductions = IntroductionServer(
            identity.certificate_bytes,
            self.trust,
            config.bind_address,
            config.port + PORT_OFFSET,
            known_at=self._known_at,
            on_twin=self._twin_introduced,
        )
        self.templates = TemplateStore(Path(config.template_dir))
        self.images = ImageService.create(
            self.node_id,
            identity.key,
            self.trust,
            config.bind_address,
            config.image_port,
            self.templates,
            lambda: self.core.records(),
            serve_rate=config.image_serve_mib_s * 1024 * 1024,
        )
        self.pulls = Pulls(self._mesh_pull, on_change=self._publish_inventory)
        self.retention = TemplateRetention(
            self.templates,
            Path(config.disk_dir),
            config.template_unused_grace,
            own_record=lambda: self._last_record,
            on_removed=self._publish_inventory,
        )
        self.images.on_wanted = self._template_wanted
        self.images.on_damaged = lambda: self._spawn(self._publish_inventory(), "publish")
        self.keyring = AgentKeyring(identity.key, self.trust, identity.revocations_bytes)
        self.core = MembershipNode(
            self.node_id,
            address=self.address,
            config=membership or MembershipConfig(),
            rng=random.Random(),
            keyring=self.keyring,
            now=clock(),
        )
        # One connection to this host's libvirtd and one set of threads for every caller.
        self.libvirt = LibvirtAdapter(config.libvirt_uri, events=True)
        self.migrator = Migrator(
            self.node_id,
            self.core,
            host=advertise_address(config),
            libvirt_uri=config.libvirt_uri,
            libvirt_adapter=self.libvirt,
            send=self._send,
            clock=clock,
            on_change=self._wake_timers,
            journal=MigrationJournal(Path(config.data_dir) / JOURNAL_DIR),
            dirty_rates=lambda vm: self.inventory.dirty_rates(vm),
        )
        self.migrator.want_template = self._want_template
        self.events = _event_stream(config, self.node_id)
        if self.events is not None:
            self.migrator.on_event = self.events.emit
        self.tracing = _tracing(config, self.node_id)
        self.migrator.tracing = self.tracing
        self.inventory = Inventory(
            self.node_id,
            libvirt_uri=config.libvirt_uri,
            data_dir=config.data_dir,
            labels=config.labels,
            addresses=(self.address,),
            poll_interval=config.inventory_interval,
            retry_interval=config.inventory_interval,
            reserved_memory_mib=config.reserved_memory_mib,
            may_measure=lambda vm: not self.migrator.core.busy(vm),
            libvirt_adapter=self.libvirt,
        )
        self.drain = Drain(
            self.migrator,
            Path(config.data_dir) / DRAIN_FILE,
            publish=self._publish_inventory,
            clock=clock,
        )
        self.drain_requests = DrainRequests(
            self.drain, self.node_id, lambda: self.core, send=self._send, authority=self._operator
        )
        self.rebalancer = Rebalancer(
            self.migrator,
            lambda: self.core,
            publish=self._publish_inventory,
            clock=clock,
            enabled=config.rebalance,
            interval=config.rebalance_interval,
        )
        self.hypervisor = Hypervisor(
            config.libvirt_uri,
            domain_type=config.domain_type,  # type: ignore[arg-type]  # checked by config
            disk_dir=Path(config.disk_dir),
            probe=_probe_guest(config),
            libvirt_adapter=self.libvirt,
        )
        self.recoveries = Recoveries(self.node_id, lambda: self.core, self.migrator)
        self.claims = ClaimCheck(
            self.node_id,
            lambda: self.core,
            self.migrator.locator,
            clock=clock,
            in_flight=lambda vm: self.migrator.core.busy(vm) or self.migrator.core.arriving(vm),
            moved_to=self.migrator.core.moved_to,
        )
        self._domain_type_problem = "not decided yet"  # why there is no verdict (status)
        vms: VmLifecycle = VmControl(
            self.hypervisor,
            self.node_id,
            draining=lambda: self.drain.draining,
            migrating=self.migrator.core.busy,
            free_memory_mib=self._free_memory_mib,
            start_refusal=self.recoveries.start_refusal,
        )
        if self.events is not None:
            from .event_stream import EmittingVms  # loaded only with an event stream

            vms = EmittingVms(vms, self.events.emit)
            self.rebalancer.on_event = self.events.emit
            self.drain.on_event = self.events.emit
        self.site_commands = SiteCommands(
            SiteControls(
                self.node_id, vms, self.migrator, self.drain, self.core.records, self.tracing
            ),
            Path(config.data_dir) / SITE_COMMANDS,
            send=self._send,
            gateway=lambda: elect(self.core.members(), self.core.records()),
            member_state=lambda node: m.state if (m := self.core.member(node)) else None,
            trust=_coordinator_trust(config),
        )
        self.gateway: Gateway | None = None  # the site link, if this agent may hold it
        if config.coordinator:
            # The site link: loaded only with a coordinator (memory of every idle agent).
            from .gateway import Gateway, client_tls

            self.gateway = Gateway(
                config.coordinator,
                client_tls(config.coordinator_ca),
                identity=lambda: self.identity,
                core=lambda: self.core,
                revocations=lambda: self.keyring.revocations()[1],
                commands=self.site_commands,
                migration=self.migrator.core.config,
            )
        self.discovery: Discovery | None = None
        self._own_vms_sampled: Callable[[], object] = lambda: None  # metrics' hook
        metrics = self._metrics_source() if config.metrics else None
        listen = metrics_address(config)
        self.metrics_server = (
            MetricsServer(metrics, *listen) if metrics is not None and listen else None
        )
        self.api = ApiServer(
            MeshView(
                lambda: self.core,
                clock,
                self._daemon_status,
                lambda: self.claims.verdicts,
                self._member_notes,
            ),
            config.api_socket,
            migrations=self.migrator,
            vms=vms,
            drain=self.drain,
            rebalance=self.rebalancer,
            host_drain=self.drain_requests,
            recovery=self.recoveries,
            identity=self,
            metrics=metrics,
            pulls=self.pulls,
        )
        self.notifier = Notifier()
        self.recent_events: deque[RecentEvent] = deque(maxlen=RECENT_EVENTS)
        self._wake = asyncio.Event()  # the core's next deadline may have moved earlier
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()  # running loops and introductions
        self._throttle = logs.Throttle(log)  # repeated failures cost one line per interval
        self._expiry_warning = logs.Throttle(log, 3600.0)  # an expiring certificate: hourly
        self.handling_failures = 0  # messages whose handling raised (dropped, counted)
        self.failure: str | None = None  # why the agent stopped, when it was not asked to
        self.revoked_members: set[str] = set()  # expelled by the CA's revocation list
        self.clashes: dict[str, list[str]] = {}  # node id -> the addresses it speaks from
        self._peer_certificates = Path(config.data_dir) / PEER_CERTIFICATES
        load_peer_certificates(self._peer_certificates, self.trust)
        self._last_members = Path(config.data_dir) / LAST_MEMBERS
        self._remembered = load_last_members(self._last_members)  # our previous life's peers
        self._intro_attempts: dict[str, float] = {}  # address -> when we last tried
        self._last_record: NodeRecord | None = None  # content last published (version 0)

    def _mesh_pull(self, status: PullStatus, name: str, version: str | None) -> MeshPull:
        """A pull of NAME[:VERSION] from the peers, with this host's trust and catalogue."""
        if not self.config.trusted_publishers:
            raise PullFailed(
                "this host trusts no template publisher: list their public key files "
                "in trusted_publishers (agent.toml)"
            )
        catalogue = None
        if self.config.catalogue:
            from .catalogue import TOKEN_ENV, open_catalogue

            catalogue = open_catalogue(self.config.catalogue, os.environ.get(TOKEN_ENV, ""))
        return MeshPull(
            status,
            name,
            version,
            store=self.templates,
            trusted=load_trusted(self.config.trusted_publishers),
            service=self.images,
            mesh=PeersView(self.node_id, lambda: self.core.records(), self._member_states),
            catalogue=catalogue,
            clock=self._clock,
            on_fetching=self._publish_inventory,
        )

    def _member_states(self) -> dict[str, MemberState]:
        return {m.node_id: m.state for m in self.core.members()}

    async def _want_template(self, target: str, ref: str) -> bool:
        return await self.images.send(target, TemplateWanted(ref))

    def _template_wanted(self, peer: str, ref: str) -> None:
        """A peer is about to move a VM made from `ref` here: pull it from the mesh."""
        found = holders(self.core.records(), ref, self.node_id, self._member_states())
        if not found.whole:
            return  # nobody to fetch it from: a stale ask, or a peer asking for nothing
        try:
            name, version = parse_ref(ref)
            pull = self.pulls.start(name, version)
        except (ValueError, Refused) as exc:
            log.warning(
                "cannot fetch the template a peer wants here",
                extra={"fields": {"peer": peer, "template": ref[:80], "why": str(exc)}},
            )
            return
        log.info(
            "fetching a template a peer wants here",
            extra={"fields": {"peer": peer, "template": ref, "pull": pull.pull_id}},
        )

    def _metrics_source(self) -> MetricsSource:
        """The exposition of this agent's metrics, built at each scrape."""
        from . import metrics  # only when on: an agent with metrics off never loads the library

        written = metrics.WrittenFamilies()
        registry = metrics.registry_for(self, self._clock, written)
        # The per-VM families are written when the inventory publishes, not when scraped.
        self._own_vms_sampled = lambda: metrics.written_vm_families(
            written, self.core.records().get(self.node_id)
        )
        return lambda: (metrics.exposition(registry, written.text), metrics.CONTENT_TYPE)

    # --- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Bind everything, or raise `StartupError` naming what failed."""
        try:
            await self.transport.start()
        except TransportError as exc:
            raise StartupError(str(exc)) from None
        try:
            await self.introductions.start()
        except OSError as exc:
            await self.transport.close()
            raise StartupError(str(exc)) from None
        try:
            await self.images.start()
        except TransportError as exc:
            await self.introductions.close()
            await self.transport.close()
            raise StartupError(f"image_port {self.config.image_port}: {exc}") from None
        await self.api.start()
        if self.metrics_server is not None:
            try:
                await self.metrics_server.start()
            except OSError as exc:
                await self.api.close()
                await self.introductions.close()
                await self.transport.close()
                raise StartupError(f"metrics_listen {self.config.metrics_listen}: {exc}") from None
        await self.inventory.start()
        if self.config.mdns:
            self.discovery = Discovery(
                self.node_id,
                self.config.port,
                self.identity.certificate.fingerprint,
                interfaces=_interface_addresses(self.config.interface),
                on_event=self._on_peer_event,
            )
            try:
                await self.discovery.start()
            except DuplicateNode as exc:
                await self.close()
                raise StartupError(str(exc)) from None
        log.info(
            "agent started",
            extra={"fields": {"node": self.node_id, "address": self.address}},
        )

    async def run(self) -> None:
        """Serve until `stop()` is called, then leave the mesh gracefully."""
        await self._publish_inventory()
        await self.migrator.adopt_unfinished()
        for host, port in seed_addresses(self.config):
            await self._introduce_and_join(host, port, expected=None)
        self._spawn(self._receive_loop(), "receive")
        self._spawn(self._timer_loop(), "timers")
        self._spawn(self._inventory_loop(), "inventory")
        self._spawn(self._seed_loop(), "seeds")
        self._spawn(self._advert_loop(), "adverts")
        self._spawn(self.images.run(), "images")
        self._spawn(self.retention.run(), "template-retention")
        self._spawn(self._watchdog_loop(), "watchdog")
        self._spawn(self._certificate_loop(), "certificate")
        self._spawn(self._keep_peers_loop(), "keep-peers")
        self._spawn(self._domain_type_loop(), "domain-type")
        if self.gateway is not None:
            self._spawn(self.gateway.run(), "site-link")
        if self.events is not None:
            self._spawn(self.events.run(), "events")
        if self.tracing is not None:
            self._spawn(self.tracing.run(), "traces")
        await self.drain.start()
        self.rebalancer.start()
        self.claims.start()
        self.notifier.ready(f"member of a mesh at {self.address}")
        await self._stop.wait()
        await self._leave()

    def stop(self) -> None:
        self._stop.set()

    async def close(self) -> None:
        await cancel_and_wait(self._tasks)
        save_peer_certificates(self._peer_certificates, self.trust.certificates())
        if self.discovery is not None:
            await self.discovery.close()
        await self.drain_requests.close()
        await self.site_commands.close()
        if self.gateway is not None:
            await self.gateway.close()
        await self.drain.close()
        await self.rebalancer.close()
        await self.claims.close()
        await self.migrator.close()
        await self.hypervisor.close()
        await self.inventory.close()
        await self.libvirt.close()
        await self.api.close()
        if self.metrics_server is not None:
            await self.metrics_server.close()
        await self.introductions.close()
        await self.pulls.close()
        await self.images.close()
        await self.transport.close()
        if self.events is not None:
            await self.events.close()
        if self.tracing is not None:
            await self.tracing.close()

    async def _leave(self) -> None:
        self.notifier.stopping()
        log.info("leaving the mesh", extra={"fields": {"node": self.node_id}})
        await self._dispatch(self.core.leave(self._clock()))
        deadline = self._clock() + LEAVE_GRACE
        while self._clock() < deadline:  # a few more gossip rounds carry the Leave
            await asyncio.sleep(self.core.config.gossip_interval)
            await self._dispatch(self.core.tick(self._clock()))

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        task.add_done_callback(self._task_done)
        self._tasks.add(task)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s loop crashed", task.get_name(), exc_info=task.exception())
            # Leave, then exit non-zero so systemd (Restart=on-failure) brings us
            # back: better than limping on half-wired.
            self.failure = f"the {task.get_name()} loop crashed"
            self.stop()

    # --- the loops ---------------------------------------------------------------

    async def _receive_loop(self) -> None:
        while True:
            sender, message = await self.transport.recv()
            try:
                await self._handle(sender, message)
            except Exception:
                # One message from a peer must never stop the agent: drop it,
                # count it, and say so (at most once per interval per kind).
                self.handling_failures += 1
                kind = type(message).__name__
                self._throttle(
                    (sender, kind),
                    logging.ERROR,
                    "handling a %s from %s failed",
                    kind,
                    sender,
                    exc_info=True,
                )
            self._wake.set()

    async def _handle(self, sender: str, message: Message) -> None:
        if self.migrator.handles(message):
            await self.migrator.receive(sender, message)
        elif self.drain_requests.handles(message):
            await self.drain_requests.receive(sender, message)
        elif self.site_commands.handles(message):
            await self.site_commands.receive(sender, message)
        else:
            await self._dispatch(self.core.receive(sender, message, self._clock()))

    async def _timer_loop(self) -> None:
        while True:
            delay = min(self.core.next_deadline(), self.migrator.next_deadline()) - self._clock()
            if delay > 0:
                self._wake.clear()
                await wait_event(self._wake, min(delay, 1.0))
                continue
            if self.core.next_deadline() <= self._clock():
                await self._dispatch(self.core.tick(self._clock()))
            if self.migrator.next_deadline() <= self._clock():
                await self.migrator.tick()
                await asyncio.sleep(0)  # a deadline the tick did not move must not starve the loop

    async def _domain_type_loop(self) -> None:
        """Decide the domain type VMs get (shown by `nova status`); retry while libvirt is away."""
        while True:
            try:
                await self.hypervisor.resolve_domain_type()
                return
            except HypervisorError as exc:
                self._domain_type_problem = f"not decided yet: {exc}"
            await asyncio.sleep(self.config.inventory_interval)

    def _wake_timers(self) -> None:
        self._wake.set()

    async def _inventory_loop(self) -> None:
        while True:
            await self.inventory.wait_changed(timeout=self.config.inventory_interval)
            await self._publish_inventory()

    def _offered_templates(self) -> list[str]:
        """The templates this host holds whole and offers peers: none whose file was found
        altered on this disk (`images.damaged`)."""
        return [
            s.manifest.ref
            for s in self.templates.whole()
            if not any(f.sha256 in self.images.damaged for f in s.manifest.files)
        ]

    async def _publish_inventory(self) -> None:
        record = dataclasses.replace(
            self.migrator.with_counts(await self.inventory.record()),
            rebalance=self.rebalancer.setting,
            gateway_candidate=self.gateway is not None,
            draining=self.drain.draining,
            templates=listed(self._offered_templates()),
            fetching=listed(self.pulls.fetching()),
            image_port=self.images.port,
        )
        content = dataclasses.replace(record, version=0)
        if content != self._last_record:
            self._last_record = content
            await self._dispatch(self.core.update_record(record, self._clock()))
            self._own_vms_sampled()
            self._wake.set()
            self.rebalancer.poke()

    async def _seed_loop(self) -> None:
        """Knock at the static seeds, and at a few members we remember (`last-members`),
        while we are alone: soon after a failed try, then less often (`SEED_RETRY_FIRST`
        doubling to `SEED_RETRY`), from the start again whenever we find ourselves alone."""
        seeds = seed_addresses(self.config)
        wait = SEED_RETRY_FIRST
        while seeds or self._remembered:
            await asyncio.sleep(wait)
            if not self._alone():
                wait = SEED_RETRY_FIRST
                continue
            tries = min(REJOIN_TRIES, len(self._remembered))
            knock = [*seeds, *random.sample(self._remembered, tries)]
            outcomes = await asyncio.gather(
                *(self._introduce_and_join(host, port, expected=None) for host, port in knock),
                return_exceptions=True,
            )
            for (host, port), outcome in zip(knock, outcomes, strict=True):
                if isinstance(outcome, Exception):  # one bad address must not stop the loop
                    where = host_port(host, port)
                    log.error("knocking at %s failed", where, exc_info=outcome)
            wait = min(2 * wait, SEED_RETRY)

    async def _advert_loop(self) -> None:
        """Keep knocking at advertised peers we lack: an mDNS advert is announced once;
        if the introduction that followed it failed (the peer was still starting, the
        host was busy), nothing would ever try again, and two groups that never met
        would stay apart."""
        while True:
            await asyncio.sleep(SEED_RETRY)
            for peer in self.discovery.peers if self.discovery is not None else []:
                member = self.core.member(peer.node_id)
                if member is None or member.state.value != "alive":
                    join = self._introduce_and_join(peer.addresses[0], peer.port, peer.node_id)
                    self._spawn(join, "mdns-retry")

    async def _watchdog_loop(self) -> None:
        interval = self.notifier.watchdog_interval
        while interval is not None:
            self.notifier.watchdog()
            self.notifier.status(self._status_line())
            await asyncio.sleep(interval)

    def _free_memory_mib(self) -> int | None:
        """Memory this host can still promise a new VM (None before the first inventory)."""
        record = self.core.records().get(self.node_id)
        if record is None:
            return None
        reservations = self.migrator.core.reservations()
        overcommit = self.migrator.core.config.reservations.vcpu_overcommit
        return int(free_capacity(record, reservations, overcommit).memory_mib)

    async def _certificate_loop(self) -> None:
        """Warn ahead of our certificate's expiry; stop cleanly, with the reason, at it."""
        while True:
            left = self.identity.certificate.not_after - time.time()
            if left <= 0:
                when = format_time(self.identity.certificate.not_after)
                self._fail(
                    f"this node's certificate expired at {when}; issue a new one "
                    f"(nova ca issue {self.node_id} --renew) and start the agent again"
                )
                return
            if left < CERTIFICATE_WARNING:
                self._expiry_warning(
                    ("self", "expiry"),
                    logging.WARNING,
                    "this node's certificate expires in %.1f days: renew it "
                    "(nova ca issue %s --renew, then nova reload)",
                    left / 86400,
                    self.node_id,
                )
            await asyncio.sleep(min(left, CERTIFICATE_CHECK))

    async def _keep_peers_loop(self) -> None:
        """Save the peers' certificates within a second of a change, and the members'
        addresses soon after one, for the next life of this agent.

        An agent killed a minute after it met its peers must know them when it
        comes back: else it refuses their connections until it is introduced
        again, and libzmq may never retry a connection a peer refused once (a
        restarted source's migration proposals then went unanswered for minutes);
        and it must know where they are, or only seeds and mDNS bring it back.
        """
        certificates, looked = -1, -MEMBERS_SAVE
        members: dict[str, tuple[str, int]] = {}
        while True:
            if self.trust.changes != certificates:
                certificates = self.trust.changes
                held = self.trust.certificates()  # a copy, taken on the loop
                await asyncio.to_thread(save_peer_certificates, self._peer_certificates, held)
            # The first meeting is saved at once; later, the members are looked at
            # every `MEMBERS_SAVE` (a member that keeps moving costs no more); alone
            # is no news: the file keeps where they were.
            if not members or self._clock() - looked >= MEMBERS_SAVE:
                known, looked = self._member_addresses(), self._clock()
                if known and known.keys() != members.keys():
                    members = known
                    await asyncio.to_thread(save_last_members, self._last_members, list(known))
                    self._remembered = list(known.values())
            await asyncio.sleep(PEERS_SAVE)

    def _member_addresses(self) -> dict[str, tuple[str, int]]:
        """Where the members are, or were before they failed (they may come back there
        first): every member's address but ours and those of members that left, each
        with its (host, port); an address that does not parse is no address."""
        known = {}
        for m in self.core.members():
            if m.node_id != self.node_id and m.state.value != "left":
                with contextlib.suppress(ValueError):
                    known[m.address] = split_address(m.address)
        return known

    def reload_in_background(self) -> None:
        """SIGHUP (systemctl reload): reload, and log the refusal if there is one."""

        async def reload() -> None:
            try:
                await self.reload()
            except Refused as exc:
                log.error("%s", exc)

        self._spawn(reload(), "reload")

    async def reload(self) -> CertificateStatus:
        """Read the identity files again: a renewed certificate, a newer revocation list.

        The keys must stay the same (a new key means a new identity: restart);
        members learn the renewed certificate by a new introduction, so they
        keep admitting us after the old one expires.
        """
        cert_file, key_file = identity_paths(self.config, socket.gethostname())
        crl = Path(self.config.crl_file) if self.config.crl_file else None
        try:
            identity = load_identity(
                Path(self.config.ca_file), cert_file, key_file, crl, time.time()
            )
        except IdentityProblem as exc:
            raise Refused(RefusalKind.CONFLICT, f"reload refused, nothing changed: {exc}") from None
        problem = _identity_change(self.identity, identity)
        if problem:
            raise Refused(RefusalKind.CONFLICT, f"reload refused, nothing changed: {problem}")
        self.identity = identity
        self.trust.add_certificate(identity.certificate_bytes)
        self.introductions.set_certificate(identity.certificate_bytes)
        if identity.revocations_bytes:
            await self._adopt_revocations(identity.revocations_bytes)
        self._spawn(self._reintroduce(), "reintroduce")
        log.info("identity reloaded", extra={"fields": self._certificate_status().to_json()})
        return self._certificate_status()

    async def publish_revocations(self, data: bytes) -> RevocationsPublished:
        """A revocation list from the operator: adopt it and spread it through the mesh."""
        try:
            verify_revocation_list(data, self.identity.ca_public)
        except IdentityError as exc:
            raise Refused(
                RefusalKind.INVALID, f"not a revocation list of this cluster's CA: {exc}"
            ) from None
        adopted = await self._adopt_revocations(data)
        issued_at, _ = self.keyring.revocations()
        return RevocationsPublished(adopted, issued_at, tuple(sorted(self.revoked_members)))

    async def _adopt_revocations(self, data: bytes) -> bool:
        before = self.keyring.revocations()[0]
        await self._dispatch(self.core.adopt_revocations(data, self._clock()))
        self._wake.set()
        return self.keyring.revocations()[0] > before

    async def _reintroduce(self) -> None:
        """Hand our (renewed) certificate to every member, through its introduction port."""
        for member in self.core.members():
            if member.node_id == self.node_id or member.state.value != "alive":
                continue
            try:
                host, port = split_address(member.address)
            except ValueError:
                continue
            await self._introduce(host, port)

    def _member_notes(self) -> dict[str, str]:
        notes = {node: "revoked" for node in self.revoked_members}
        for node, addresses in self.clashes.items():
            notes[node] = f"one id at {len(addresses)} addresses: {', '.join(addresses)}"
        return notes

    def _certificate_status(self) -> CertificateStatus:
        cert = self.identity.certificate
        left = cert.not_after - time.time()
        return CertificateStatus(cert.serial, cert.not_after, left, left < CERTIFICATE_WARNING)

    def _operator(self, command: OperatorCommand) -> str:
        """The operator who signed `command`, or `CommandRefused` (see `protocol/operators`)."""
        ca = self.identity.ca_public
        return verify_command(command, ca, time.time(), self.trust.revocations).node_id

    # --- peers ---------------------------------------------------------------------

    def _alone(self) -> bool:
        return not any(
            m.state.value == "alive" and m.node_id != self.node_id for m in self.core.members()
        )

    def _on_peer_event(self, event: PeerEvent) -> None:
        if isinstance(event, PeerFound) and event.node_id != self.node_id:
            host = event.addresses[0]
            self._spawn(self._introduce_and_join(host, event.port, event.node_id), "mdns-join")

    async def _introduce_and_join(self, host: str, port: int, expected: str | None) -> None:
        address = host_port(host, port)
        introduction = await self._introduce(host, port)
        if introduction is None:
            return
        cert = introduction.certificate
        if cert.node_id == self.node_id:  # not us (we never introduce ourselves): a twin
            self._clash(IdentityClash(self.node_id, (self.address, address), self._started))
            return
        if expected is not None and cert.node_id != expected:
            log.warning(
                "peer advertised one node id but holds another's certificate; ignored",
                extra={"fields": {"advertised": expected, "certified": cert.node_id}},
            )
            return
        if introduction.known_at and introduction.known_at != self.address:
            await self._look_for_twin(introduction.known_at, cert.node_id)
        member = self.core.member(cert.node_id)
        if member is None or member.state.value != "alive":
            await self._dispatch(self.core.join([(cert.node_id, address)], self._clock()))
            self._wake.set()

    def _known_at(self, node_id: str) -> str:
        """Where this agent knows `node_id` alive ("" if it does not): told to whoever
        introduces itself with that id, so a second agent with one identity finds out."""
        member = self.core.member(node_id)
        if member is None or member.state.value != "alive" or node_id == self.node_id:
            return ""
        return member.address

    def _twin_introduced(self, source: str) -> None:
        """Someone introduced itself with our own certificate: an agent started elsewhere
        with our identity (it stops when it sees us answer; we report it)."""
        where = f"an agent at {source}"
        self._clash(IdentityClash(self.node_id, (self.address, where), None))

    async def _look_for_twin(self, address: str, told_by: str) -> None:
        """A peer knows our id alive at another address: a previous life of ours (we
        moved, it died) or another agent running with our key. Whoever answers there
        with our own certificate is the second one."""
        try:
            host, port = split_address(address)
        except ValueError:
            return
        try:
            there = await introduce(self.identity.certificate_bytes, self.trust, host, port)
        except IntroductionFailed:
            return  # nobody, or not us: a previous life, which the mesh will fail
        if there.certificate.node_id == self.node_id:
            log.error(
                "our node id answers at another address",
                extra={"fields": {"address": address, "told_by": told_by}},
            )
            self._clash(IdentityClash(self.node_id, (self.address, address), self._started))

    async def _introduce(self, host: str, port: int) -> Introduction | None:
        address = host_port(host, port)
        if _is_own_address(host, port, self.config.port):
            return None  # a seed list naming every host names us too
        now = self._clock()
        if now - self._intro_attempts.get(address, -INTRO_RETRY) < INTRO_RETRY:
            return None
        self._intro_attempts[address] = now
        try:
            return await introduce(self.identity.certificate_bytes, self.trust, host, port)
        except IntroductionFailed as exc:
            log.warning("introduction failed", extra={"fields": {"peer": address, "why": str(exc)}})
            return None

    # --- output of the core --------------------------------------------------------

    async def _dispatch(self, out: Output) -> None:
        for event in out.events:
            if isinstance(event, MemberAlive) and event.was_failed:
                # Before this output's sends: they may be the first to the returned member.
                self.transport.reconnect(event.node_id)
                self.images.transport.reconnect(event.node_id)
            elif isinstance(event, ReachedIndirectly):
                self.transport.unanswered(event.node_id)
        for destination, message in out.sends:
            await self._send(destination, message)
        for event in out.events:
            self._on_event(event)

    async def _send(self, destination: str, message: Message) -> None:
        """Send one message of a core (membership or migration) to a member."""
        address = self.core.address_of(destination)
        if address is None:
            return
        if self.trust.certificate_for(destination) is None:
            # Learnt by gossip or push-pull before we met: swap certificates first.
            with contextlib.suppress(ValueError):
                self._spawn(self._introduce_only(*split_address(address)), "introduce")
            return
        await self.transport.send(destination, address, message)

    async def _introduce_only(self, host: str, port: int) -> None:
        await self._introduce(host, port)

    def _on_event(self, event: Event) -> None:
        """What the core said happened: log it, stream it, and act on what concerns this agent."""
        if self.events is not None:
            self.events.emit(event)
        if isinstance(event, MemberRevoked):
            self._revoked(event.node_id)
        elif isinstance(event, IdentityClash):
            self._clash(event)
        elif isinstance(event, RecordRejected):
            self._throttle(
                (event.node_id, "record"),
                logging.WARNING,
                "record refused: %s version %s: %s",
                event.node_id,
                event.version,
                event.reason,
            )
            return
        self._log_event(event)

    def _revoked(self, node_id: str) -> None:
        if node_id == self.node_id:
            self._fail("the CA revoked this node's certificate; ask the operator for a new one")
            return
        self.transport.forget(node_id)  # and ZAP refuses it from now on
        self.revoked_members.add(node_id)
        log.warning(
            "member expelled: its certificate is revoked", extra={"fields": {"node": node_id}}
        )

    def _clash(self, event: IdentityClash) -> None:
        """One node id in two places: two agents hold one key (a cloned disk, a copied key)."""
        self.clashes[event.node_id] = list(event.addresses)
        fields = {"node": event.node_id, "addresses": ",".join(event.addresses)}
        self._throttle(
            (event.node_id, "clash"),
            logging.ERROR,
            "one node id is speaking from two addresses: two agents hold the same key",
            extra={"fields": fields},
        )
        began = event.this_life_began
        if began is not None and self._clock() - began < NEWCOMER_WINDOW:
            others = [a for a in event.addresses if a != self.address]
            self._fail(
                f"another agent already runs as node {self.node_id} at "
                f"{', '.join(others) or 'another address'}; this one started later and stops "
                "(give each host its own certificate: nova ca issue)"
            )

    def _fail(self, reason: str) -> None:
        """Stop on our own, with a reason, and exit non-zero (see `_serve`)."""
        if self.failure is None:
            log.error("stopping: %s", reason)
            self.failure = reason
        self.stop()

    def _log_event(self, event: Event) -> None:
        kind = type(event).__name__
        if kind in ("RecordUpdated", "ReachedIndirectly"):
            return  # frequent and boring, or logged by the transport when it acts on it
        level = logging.WARNING if kind in ("MemberFailed", "MemberSuspected") else logging.INFO
        log.log(level, kind, extra={"fields": event_fields(event)})
        self.recent_events.append(RecentEvent(event, time.time()))

    # --- status -------------------------------------------------------------------

    def _daemon_status(self) -> DaemonStatus:
        verdict = self.hypervisor.verdict
        domain_type, why = (
            (None, self._domain_type_problem)
            if verdict is None
            else (verdict.domain_type, verdict.reason)
        )
        return DaemonStatus(
            certificate=self._certificate_status(),
            revocations_issued_at=self.keyring.revocations()[0],
            revoked_members=tuple(sorted(self.revoked_members)),
            identity_clashes=dict(self.clashes),
            uptime_s=self._clock() - self._started,
            libvirt_uri=self.config.libvirt_uri,
            libvirt_connected=self.inventory.connected,
            libvirt_warning=self.inventory.warning,
            domain_type=domain_type,
            domain_type_reason=why,
            transport=dataclasses.replace(self.transport.stats),  # a copy: the counters go on
            handling_failures=self.handling_failures,
            introductions=self.introductions.stats(),
            refusals={str(k): v for k, v in self.trust.refusals.items()},
            last_refusal=_reason(self.trust.last_certificate_refusal),
            recent_events=tuple(self.recent_events)[-20:],
            site_link=self.gateway.link_status() if self.gateway is not None else None,
            site_commands_refused=self.site_commands.refused,
            event_stream=self.events.status() if self.events is not None else None,
            tracing=self.tracing.status() if self.tracing is not None else None,
            templates=TemplatesStatus(
                str(self.templates.root),
                self.images.port,
                self.images.served_pieces,
                self.images.served_bytes,
                tuple(self.pulls.fetching()),
                self.images.asks_waiting,
            ),
        )

    def _status_line(self) -> str:
        alive = sum(1 for m in self.core.members() if m.state.value == "alive")
        return f"{alive} members alive, incarnation {self.core.incarnation}"


def _reason(refusal: PeerRefused | None) -> str | None:
    return refusal.reason if refusal is not None else None


def _identity_change(old: NodeIdentity, new: NodeIdentity) -> str:
    """Why `new` cannot replace `old` in a running agent ("" if it can)."""
    if new.node_id != old.node_id:
        return f"the certificate is for {new.node_id}, this agent runs as {old.node_id}"
    if new.key.signing_public != old.key.signing_public or (
        new.key.curve_public != old.key.curve_public
    ):
        return "the keys changed: a new key is a new identity; restart the agent"
    return ""


def _is_own_address(host: str, port: int, own_port: int) -> bool:
    """Whether `host:port` is this agent itself (a seed list naming every host, us too)."""
    if port != own_port:
        return False
    try:
        if ipaddress.ip_address(host).is_loopback:
            return True
    except ValueError:
        return False
    return host in {a.address for addrs in psutil.net_if_addrs().values() for a in addrs}


def _probe_guest(config: AgentConfig) -> ProbeGuest | None:
    """The guest `auto` boots under KVM before using it, if the operator gave one."""
    if not config.kvm_probe_kernel:
        return None
    return ProbeGuest(Path(config.kvm_probe_kernel), Path(config.kvm_probe_initrd))


def advertise_address(config: AgentConfig) -> str:
    """The address peers should use: configured, else the interface's, else the host's."""
    if config.advertise_address:
        return config.advertise_address
    if config.bind_address not in ("0.0.0.0", "::", ""):
        return config.bind_address
    candidates = _interface_addresses(config.interface) or _all_addresses()
    return candidates[0] if candidates else "127.0.0.1"


def _interface_addresses(interface: str) -> list[str] | None:
    if not interface:
        return None
    addrs = psutil.net_if_addrs().get(interface, [])
    return [a.address for a in addrs if a.family == socket.AF_INET]


def _all_addresses() -> list[str]:
    found = []
    for name, addrs in sorted(psutil.net_if_addrs().items()):
        if name == "lo":
            continue
        found += [a.address for a in addrs if a.family == socket.AF_INET]
    return found


def _event_stream(config: AgentConfig, node_id: str) -> EventStream | None:
    """The event stream to NATS JetStream, when `events_nats` names a server."""
    if not config.events_nats:
        return None
    from .event_spool import EventSpool  # loaded only with an event stream (memory of idle agents)
    from .event_stream import EventStream, NatsSink

    spool = EventSpool(Path(config.data_dir) / EVENT_SPOOL, config.events_spool_mib * 1024 * 1024)
    sink = NatsSink(config.events_nats, config.events_stream, config.events_subject)
    return EventStream(node_id, spool, sink)


def _tracing(config: AgentConfig, node_id: str) -> Tracing | None:
    """Migration spans to an OTLP/HTTP collector, when `tracing_otlp` names one."""
    if not config.tracing_otlp:
        return None
    from .otlp import OtlpExporter  # loaded only with a collector (memory of idle agents)
    from .tracing import Tracing

    return Tracing(node_id, OtlpExporter(config.tracing_otlp, node_id))


def _coordinator_trust(config: AgentConfig) -> CoordinatorTrust | None:
    """What checks a coordinator's signed commands; None without a coordinator (then
    `cryptography`, which costs the agent several MiB, is never loaded)."""
    if not config.coordinator:
        return None
    from novacron.protocol.coordinator_commands import CoordinatorTrust

    return CoordinatorTrust.from_config(config.coordinator, config.coordinator_ca)


async def _serve(agent: Agent) -> int:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, agent.stop)
    loop.add_signal_handler(signal.SIGHUP, agent.reload_in_background)
    try:
        await agent.start()
    except StartupError as exc:
        print(f"nova-agent: error: {exc}", file=sys.stderr)
        return 1
    try:
        await agent.run()
    finally:
        await agent.close()
    if agent.failure is not None:
        print(f"nova-agent: error: stopped because {agent.failure}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `nova-agent`."""
    try:
        config, _ = parse_cli(argv)
        logs.configure(config.log_format, config.log_level)
        cert_file, key_file = identity_paths(config, socket.gethostname())
        crl = Path(config.crl_file) if config.crl_file else None
        identity = load_identity(Path(config.ca_file), cert_file, key_file, crl, time.time())
        if config.node_id and config.node_id != identity.node_id:
            raise ConfigError(
                f"node_id {config.node_id!r} does not match the certificate's "
                f"{identity.node_id!r} ({cert_file})"
            )
        Path(config.data_dir).mkdir(parents=True, exist_ok=True)
    except (ConfigError, IdentityProblem, OSError) as exc:
        print(f"nova-agent: error: {exc}", file=sys.stderr)
        return 1
    return asyncio.run(_serve(Agent(config, identity)))


if __name__ == "__main__":
    sys.exit(main())
