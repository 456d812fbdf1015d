"""mDNS discovery: advertise this node and report peers on the local link.

Each agent registers `<node>._novacron._tcp.local.` with TXT properties that
are enough to dial it and to know what to expect before connecting: node id
(`id`), protocol version (`pv`), transport port (`port`) and the SHA-256
fingerprint of its certificate (`fp`). A browser resolves every other
advert and reports `PeerFound` / `PeerLost` events.

Discovery is a hint, not trust: whoever answers mDNS is only a candidate;
the transport admits it only with a valid certificate. Adverts that are
malformed are ignored and counted. Static seed addresses, for networks
without multicast, are the daemon's business, not this module's.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psutil
from zeroconf import IPVersion, NonUniqueNameException, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from novacron.protocol.certificates import check_node_id
from novacron.protocol.codec import PROTOCOL_VERSION
from novacron.protocol.errors import InvalidNodeId

from .tasks import cancel_and_wait

log = logging.getLogger(__name__)

SERVICE_TYPE = "_novacron._tcp.local."
RESOLVE_TIMEOUT = 3.0  # seconds to wait for a peer's SRV/TXT/A answers
RESOLVE_ATTEMPTS = 6  # tries (with back-off, about a minute in all) before giving up
MAX_FINGERPRINT = 128  # characters; a SHA-256 hex digest has 64
_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9-]")


@dataclass(frozen=True, slots=True)
class PeerFound:
    """A peer's advert, resolved: where to dial it and what certificate to expect."""

    node_id: str
    addresses: tuple[str, ...]  # IP addresses the advert lists
    port: int  # its transport (ROUTER) port
    fingerprint: str  # SHA-256 of its certificate, hex
    protocol_version: int

    @property
    def address(self) -> str:
        """`host:port` for the transport, from the first advertised address."""
        host = self.addresses[0]
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class PeerLost:
    """A peer withdrew its advert (clean shutdown) or its advert expired."""

    node_id: str


PeerEvent = PeerFound | PeerLost


def instance_label(node_id: str) -> str:
    """The DNS-SD instance label for a node: its id, shortened to fit 63 bytes."""
    if len(node_id) <= 63:
        return node_id
    return f"{node_id[:54]}-{hashlib.sha256(node_id.encode()).hexdigest()[:8]}"


def host_name(node_id: str) -> str:
    """An mDNS host name (one label under .local.) derived from the node id."""
    label = _LABEL_UNSAFE.sub("-", instance_label(node_id)).strip("-") or "node"
    return f"novacron-{label}"[:63] + ".local."


def parse_advert(info: AsyncServiceInfo) -> PeerFound:
    """Read a resolved advert strictly; `ValueError` says what is wrong with it."""
    props = info.decoded_properties
    node_id = props.get("id") or ""
    try:
        check_node_id(node_id)
    except InvalidNodeId as exc:
        raise ValueError(str(exc)) from None
    port = _int_property(props, "port", 1, 65535)
    if info.port is not None and info.port != port:
        raise ValueError(f"TXT port {port} differs from SRV port {info.port}")
    fingerprint = props.get("fp") or ""
    if not fingerprint or len(fingerprint) > MAX_FINGERPRINT:
        raise ValueError("missing or oversized certificate fingerprint")
    addresses = tuple(info.parsed_addresses())
    if not addresses:
        raise ValueError("advert lists no address")
    version = _int_property(props, "pv", 0, 2**31)
    return PeerFound(node_id, addresses, port, fingerprint, version)


def _int_property(props: dict[str, str | None], name: str, low: int, high: int) -> int:
    text = props.get(name) or ""
    if not text.isdigit() or not low <= int(text) <= high:
        raise ValueError(f"TXT {name}={text[:16]!r} is not an integer in [{low}, {high}]")
    return int(text)


class DuplicateNode(Exception):
    """Another agent already advertises our node id: we must not run beside it."""


class Discovery:
    """Advertises this node over mDNS and reports other nodes' adverts.

    Events go to `on_event` when given, else into the `events` queue.
    `interfaces` limits mDNS to those local addresses (None: all of them).
    """

    def __init__(
        self,
        node_id: str,
        port: int,
        fingerprint: str,
        *,
        interfaces: Sequence[str] | None = None,
        addresses: Sequence[str] | None = None,
        on_event: Callable[[PeerEvent], None] | None = None,
        resolve_timeout: float = RESOLVE_TIMEOUT,
    ) -> None:
        self.node_id = node_id
        self.events: asyncio.Queue[PeerEvent] = asyncio.Queue()
        self.ignored = 0  # malformed adverts seen
        self._port = port
        self._fingerprint = fingerprint
        self._interfaces = list(interfaces) if interfaces is not None else None
        self._addresses = list(addresses or interfaces or _host_addresses())
        self._on_event = on_event
        self._resolve_ms = int(resolve_timeout * 1000)
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._known: dict[str, PeerFound] = {}  # service name -> last advert seen
        self._tasks: set[asyncio.Task[None]] = set()  # resolutions in flight

    @property
    def service_name(self) -> str:
        return f"{instance_label(self.node_id)}.{SERVICE_TYPE}"

    def advert(self) -> AsyncServiceInfo:
        """Our own advert, as registered."""
        return AsyncServiceInfo(
            SERVICE_TYPE,
            self.service_name,
            parsed_addresses=self._addresses,
            port=self._port,
            properties={
                "id": self.node_id,
                "pv": str(PROTOCOL_VERSION),
                "port": str(self._port),
                "fp": self._fingerprint,
            },
            server=host_name(self.node_id),
        )

    async def start(self) -> None:
        """Register our advert (checking the name is unique), then start browsing."""
        if self._interfaces is None:
            self._zc = AsyncZeroconf()
        else:
            self._zc = AsyncZeroconf(interfaces=self._interfaces, ip_version=self._ip_version())
        self._info = self.advert()
        # The first await probes the name (refusing a duplicate); the second
        # waits for the announcements, so peers may already know us on return.
        try:
            announced = await self._zc.async_register_service(self._info)
        except NonUniqueNameException:
            self._info = None
            await self.close()
            raise DuplicateNode(
                f"another agent already advertises node {self.node_id} on this network "
                f"(mDNS name {self.service_name}): two agents with one identity; stop one, "
                "or give this host its own certificate (nova ca issue)"
            ) from None
        await announced
        self._browser = AsyncServiceBrowser(
            self._zc.zeroconf, [SERVICE_TYPE], handlers=[self._on_change]
        )

    def _ip_version(self) -> IPVersion:
        versions = {ipaddress.ip_address(a).version for a in self._interfaces or ()}
        if versions == {4}:
            return IPVersion.V4Only
        return IPVersion.V6Only if versions == {6} else IPVersion.All

    async def close(self) -> None:
        """Stop browsing, withdraw our advert (peers see `PeerLost`), close sockets."""
        await cancel_and_wait(self._tasks)
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None
        if self._zc is not None:
            if self._info is not None:
                # Await the goodbye packets too: closing first would cancel them,
                # and peers would only notice when our records expire.
                goodbyes = await self._zc.async_unregister_service(self._info)
                await goodbyes
                self._info = None
            await self._zc.async_close()
            self._zc = None

    # --- browsing ----------------------------------------------------------------

    def _on_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        """zeroconf's browser callback (on the event loop): resolve or report a loss."""
        if name == self.service_name:
            return
        if state_change is ServiceStateChange.Removed:
            found = self._known.pop(name, None)
            if found is not None:
                self._emit(PeerLost(found.node_id))
            return
        task = asyncio.get_running_loop().create_task(self._resolve(name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, name: str) -> None:
        if self._zc is None:
            return
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        # An advert is announced once: if its answers are lost (a busy host,
        # a burst of fifty peers starting together) nobody would ask again.
        for attempt in range(RESOLVE_ATTEMPTS):
            if self._zc is None:
                return
            if await info.async_request(self._zc.zeroconf, self._resolve_ms):
                break
            await asyncio.sleep(min(2**attempt, 10))
        else:
            log.info("mDNS advert %s did not resolve after %d tries", name, RESOLVE_ATTEMPTS)
            return
        try:
            found = parse_advert(info)
        except ValueError as exc:
            self.ignored += 1
            log.info("ignoring mDNS advert %s: %s", name, exc)
            return
        if found.node_id == self.node_id or self._known.get(name) == found:
            return
        self._known[name] = found
        self._emit(found)

    def _emit(self, event: PeerEvent) -> None:
        if self._on_event is not None:
            self._on_event(event)
        else:
            self.events.put_nowait(event)

    @property
    def peers(self) -> list[PeerFound]:
        """The adverts currently known."""
        return list(self._known.values())


def _host_addresses() -> list[str]:
    """Every non-loopback IPv4 address of this host, or loopback if there is none."""
    found = [
        addr.address
        for addrs in psutil.net_if_addrs().values()
        for addr in addrs
        if addr.family == socket.AF_INET and not ipaddress.ip_address(addr.address).is_loopback
    ]
    return found or ["127.0.0.1"]
