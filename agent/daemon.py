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
import logging
import random
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import psutil

from novacron.protocol.errors import ProtocolError
from novacron.protocol.messages import Message, NodeRecord, SignedRecord
from novacron.protocol.records import sign_record, verify_record

from . import logs
from .api import ApiServer
from .claims import ClaimCheck
from .config import AgentConfig, ConfigError, identity_paths, parse_cli, seed_addresses
from .core.config import MembershipConfig
from .core.events import Event, Output
from .core.node import MembershipNode
from .core.reservations import free_capacity
from .discovery import Discovery, PeerEvent, PeerFound
from .drain import Drain, DrainRequests
from .hypervisor import Hypervisor
from .identity import IdentityProblem, NodeIdentity, load_identity
from .introduction import PORT_OFFSET, IntroductionFailed, IntroductionServer, introduce
from .inventory import Inventory
from .journal import MigrationJournal
from .migrator import Migrator
from .rebalancer import Rebalancer
from .recovery import Recoveries
from .sdnotify import Notifier
from .security import TrustStore
from .tasks import cancel_and_wait
from .transport import Transport, TransportError
from .view import MeshView
from .vms import VmControl

log = logging.getLogger("novacron.agent")

SEED_RETRY = 10.0  # seconds between attempts to reach static seeds while alone
INTRO_RETRY = 5.0  # seconds before introducing ourselves to the same address again
LEAVE_GRACE = 1.0  # seconds of gossip after a graceful leave before closing
JOURNAL_DIR = "migrations"  # under the data dir: outbound migrations in flight
DRAIN_FILE = "draining"  # under the data dir: exists while this host drains
RECENT_EVENTS = 50  # membership events kept for `nova status`


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
            identity.certificate_bytes, self.trust, config.bind_address, config.port + PORT_OFFSET
        )
        self.core = MembershipNode(
            self.node_id,
            address=self.address,
            config=membership or MembershipConfig(),
            rng=random.Random(),
            signer=self._sign,
            verifier=self._verify,
            now=clock(),
        )
        self.migrator = Migrator(
            self.node_id,
            self.core,
            host=advertise_address(config),
            libvirt_uri=config.libvirt_uri,
            send=self._send,
            clock=clock,
            on_change=self._wake_timers,
            journal=MigrationJournal(Path(config.data_dir) / JOURNAL_DIR),
            dirty_rate=lambda vm: self.inventory.dirty_rate(vm),
        )
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
        )
        self.drain = Drain(
            self.migrator,
            Path(config.data_dir) / DRAIN_FILE,
            publish=self._publish_inventory,
            clock=clock,
        )
        self.drain_requests = DrainRequests(
            self.drain, self.node_id, lambda: self.core, send=self._send
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
        )
        self.recoveries = Recoveries(self.node_id, lambda: self.core, self.migrator)
        self.claims = ClaimCheck(
            self.node_id,
            lambda: self.core,
            self.migrator.locator,
            clock=clock,
            in_flight=lambda vm: self.migrator.core.busy(vm) or self.migrator.core.arriving(vm),
        )
        vms = VmControl(
            self.hypervisor,
            self.node_id,
            draining=lambda: self.drain.draining,
            migrating=self.migrator.core.busy,
            free_memory_mib=self._free_memory_mib,
            start_refusal=self.recoveries.start_refusal,
        )
        self.discovery: Discovery | None = None
        self.api = ApiServer(
            MeshView(lambda: self.core, clock, self._daemon_status, lambda: self.claims.verdicts),
            config.api_socket,
            migrations=self.migrator,
            vms=vms,
            drain=self.drain,
            rebalance=self.rebalancer,
            host_drain=self.drain_requests,
            recovery=self.recoveries,
        )
        self.notifier = Notifier()
        self.recent_events: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)
        self._wake = asyncio.Event()  # the core's next deadline may have moved earlier
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()  # running loops and introductions
        self._intro_attempts: dict[str, float] = {}  # address -> when we last tried
        self._last_record: NodeRecord | None = None  # content last published (version 0)

    # --- identity glue -----------------------------------------------------------

    def _sign(self, record: NodeRecord) -> SignedRecord:
        return sign_record(self.identity.key, record)

    def _verify(self, signed: SignedRecord) -> NodeRecord:
        cert = self.trust.certificate_for(signed.node_id)
        if cert is None:
            raise ProtocolError(f"no valid certificate known for {signed.node_id!r}")
        return verify_record(signed, cert)

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
        await self.api.start()
        await self.inventory.start()
        if self.config.mdns:
            self.discovery = Discovery(
                self.node_id,
                self.config.port,
                self.identity.certificate.fingerprint,
                interfaces=_interface_addresses(self.config.interface),
                on_event=self._on_peer_event,
            )
            await self.discovery.start()
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
        self._spawn(self._watchdog_loop(), "watchdog")
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
        if self.discovery is not None:
            await self.discovery.close()
        await self.drain_requests.close()
        await self.drain.close()
        await self.rebalancer.close()
        await self.claims.close()
        await self.migrator.close()
        await self.hypervisor.close()
        await self.inventory.close()
        await self.api.close()
        await self.introductions.close()
        await self.transport.close()

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
            self.stop()  # systemd restarts us: better than limping on half-wired

    # --- the loops ---------------------------------------------------------------

    async def _receive_loop(self) -> None:
        while True:
            sender, message = await self.transport.recv()
            if self.migrator.handles(message):
                await self.migrator.receive(sender, message)
            elif self.drain_requests.handles(message):
                await self.drain_requests.receive(sender, message)
            else:
                await self._dispatch(self.core.receive(sender, message, self._clock()))
            self._wake.set()

    async def _timer_loop(self) -> None:
        while True:
            delay = min(self.core.next_deadline(), self.migrator.next_deadline()) - self._clock()
            if delay > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=min(delay, 1.0))
                continue
            if self.core.next_deadline() <= self._clock():
                await self._dispatch(self.core.tick(self._clock()))
            if self.migrator.next_deadline() <= self._clock():
                await self.migrator.tick()
                await asyncio.sleep(0)  # a deadline the tick did not move must not starve the loop

    def _wake_timers(self) -> None:
        self._wake.set()

    async def _inventory_loop(self) -> None:
        while True:
            await self.inventory.wait_changed(timeout=self.config.inventory_interval)
            await self._publish_inventory()

    async def _publish_inventory(self) -> None:
        record = await self.inventory.record()
        labels = {
            **record.labels,
            **self.migrator.record_labels(),
            **self.rebalancer.record_labels(),
        }
        record = dataclasses.replace(record, labels=labels, draining=self.drain.draining)
        content = dataclasses.replace(record, version=0)
        if content != self._last_record:
            self._last_record = content
            await self._dispatch(self.core.update_record(record, self._clock()))
            self._wake.set()
            self.rebalancer.poke()

    async def _seed_loop(self) -> None:
        """Keep knocking: static seeds while we are alone, and advertised peers we lack.

        An mDNS advert is announced once; if the introduction that followed it
        failed (the peer was still starting, the host was busy), nothing would
        ever try again, and two groups that never met would stay apart.
        """
        seeds = seed_addresses(self.config)
        while True:
            await asyncio.sleep(SEED_RETRY)
            if seeds and self._alone():
                for host, port in seeds:
                    await self._introduce_and_join(host, port, expected=None)
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
        address = f"{host}:{port}"
        cert = await self._introduce(host, port)
        if cert is None:
            return
        if expected is not None and cert.node_id != expected:
            log.warning(
                "peer advertised one node id but holds another's certificate; ignored",
                extra={"fields": {"advertised": expected, "certified": cert.node_id}},
            )
            return
        member = self.core.member(cert.node_id)
        if member is None or member.state.value != "alive":
            await self._dispatch(self.core.join([(cert.node_id, address)], self._clock()))
            self._wake.set()

    async def _introduce(self, host: str, port: int) -> Any:
        address = f"{host}:{port}"
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
        for destination, message in out.sends:
            await self._send(destination, message)
        for event in out.events:
            self._log_event(event)

    async def _send(self, destination: str, message: Message) -> None:
        """Send one message of a core (membership or migration) to a member."""
        address = self.core.address_of(destination)
        if address is None:
            return
        if self.trust.certificate_for(destination) is None:
            # Learnt by gossip or push-pull before we met: swap certificates first.
            host, _, port = address.rpartition(":")
            self._spawn(self._introduce_only(host, int(port)), "introduce")
            return
        await self.transport.send(destination, address, message)

    async def _introduce_only(self, host: str, port: int) -> None:
        await self._introduce(host, port)

    def _log_event(self, event: Event) -> None:
        kind = type(event).__name__
        fields = {k: v for k, v in dataclasses.asdict(event).items() if k != "record"}
        if kind == "RecordUpdated":
            return  # frequent and boring: every host refreshes its record
        level = logging.WARNING if kind in ("MemberFailed", "MemberSuspected") else logging.INFO
        log.log(level, kind, extra={"fields": fields})
        self.recent_events.append({"event": kind, "at": round(time.time(), 3), **fields})

    # --- status -------------------------------------------------------------------

    def _daemon_status(self) -> dict[str, Any]:
        return {
            "uptime_s": round(self._clock() - self._started, 1),
            "libvirt_uri": self.config.libvirt_uri,
            "libvirt_connected": self.inventory.connected,
            "libvirt_warning": self.inventory.warning,
            "transport": dataclasses.asdict(self.transport.stats),
            "refusals": {str(k): v for k, v in self.trust.refusals.items()},
            "last_refusal": self.trust.last_refusal.reason if self.trust.last_refusal else None,
            "recent_events": list(self.recent_events)[-20:],
        }

    def _status_line(self) -> str:
        alive = sum(1 for m in self.core.members() if m.state.value == "alive")
        return f"{alive} members alive, incarnation {self.core.incarnation}"


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


async def _serve(agent: Agent) -> int:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, agent.stop)
    try:
        await agent.start()
    except StartupError as exc:
        print(f"nova-agent: error: {exc}", file=sys.stderr)
        return 1
    try:
        await agent.run()
    finally:
        await agent.close()
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
