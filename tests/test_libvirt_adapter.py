"""The host's libvirt adapter: one connection for every caller, reopened when libvirtd
dies, and threads that a hung libvirtd cannot all hold.

Against libvirt's `test:///default` driver (no daemon), a connection wrapper that
dies as a connection to a killed libvirtd does, and a "libvirtd" that accepts a
connection and never answers (a frozen daemon, as the faults lab makes one).
"""

from __future__ import annotations

import asyncio
import random
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from novacron.agent.hypervisor import Hypervisor, LibvirtUnreachable
from novacron.agent.inventory import Inventory
from novacron.agent.libvirt_adapter import LibvirtAdapter, Unreachable
from novacron.agent.locator import domain_presence
from novacron.agent.migrator import Migrator
from novacron.protocol.messages import Message
from tests.fake_mesh import FakeView

TEST_URI = "test:///default"
TIMEOUT = 30.0  # seconds a test waits for what should take milliseconds


def broken_pipe() -> libvirt.libvirtError:
    """The error a call on a connection to a killed libvirtd raises."""
    exc = libvirt.libvirtError("Cannot write data: Broken pipe")
    exc.err = (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_RPC, str(exc), 2, None, None)
    return exc


class Mortal:
    """A connection to the test driver that dies when told, as one to a killed libvirtd:
    every call then fails with a connection error, and isAlive() says 0 once one has (the
    client notices a dead daemon only when it talks to it)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self.dead = False
        self.noticed = False  # a call failed since it died
        self._events: list[int] = []  # its event subscriptions: they die with it

    def die(self) -> None:
        self.dead = True
        for event_id in self._events:
            self._conn.domainEventDeregisterAny(event_id)
        self._events.clear()

    def isAlive(self) -> int:  # libvirt's name
        return 0 if self.noticed else 1

    def close(self) -> int:
        return int(self._conn.close())

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._conn, name)

        def call(*args: Any) -> Any:
            if self.dead:
                self.noticed = True
                raise broken_pipe()
            answer = method(*args)
            if name == "domainEventRegisterAny":
                self._events.append(answer)
            return answer

        return call


class Opener:
    """Opens test-driver connections and remembers each (the adapter's opener seam)."""

    def __init__(self) -> None:
        self.opened: list[Mortal] = []
        self.lock = threading.Lock()

    def __call__(self, uri: str) -> Mortal:
        conn = Mortal(libvirt.open(uri))
        with self.lock:
            self.opened.append(conn)
        return conn

    def kill_all(self) -> None:
        """libvirtd dies: every connection open to it is dead."""
        for conn in self.opened:
            conn.die()


@pytest.fixture
async def opener() -> AsyncIterator[Opener]:
    keeper = libvirt.open(TEST_URI)  # the test driver forgets its state with its last client
    opener = Opener()
    yield opener
    keeper.close()


@pytest.fixture
async def adapter(opener: Opener) -> AsyncIterator[LibvirtAdapter]:
    adapter = LibvirtAdapter(TEST_URI, opener=opener)
    yield adapter
    await adapter.close()


async def wait_until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not condition():
            await asyncio.sleep(0.01)


def _names(conn: Any) -> list[str]:
    return sorted(dom.name() for dom in conn.listAllDomains(0))


async def test_inventory_vm_control_and_migration_share_one_connection(
    opener: Opener, adapter: LibvirtAdapter, tmp_path: Path
) -> None:
    async def send(destination: str, message: Message) -> None:
        pass

    inventory = Inventory(
        "h1", libvirt_uri=TEST_URI, data_dir=tmp_path, libvirt_adapter=adapter, use_events=False
    )
    hypervisor = Hypervisor(TEST_URI, domain_type="qemu", libvirt_adapter=adapter)
    migrator = Migrator(
        "h1",
        FakeView(),
        host="198.18.0.1",
        libvirt_uri=TEST_URI,
        send=send,
        clock=lambda: 100.0,
        rng=random.Random(1),
        libvirt_adapter=adapter,
    )
    try:
        await asyncio.wait_for(inventory.start(), TIMEOUT)
        record = await asyncio.wait_for(inventory.record(), TIMEOUT)
        assert [vm.name for vm in record.vms] == ["test"]
        assert [vm.name for vm in await asyncio.wait_for(hypervisor.list(), TIMEOUT)] == ["test"]
        seen = await asyncio.wait_for(migrator.locator.look("test", ["h1"]), TIMEOUT)
        assert seen["h1"].detail == "running"
        assert await asyncio.wait_for(migrator.vm_history("test"), TIMEOUT) == []
        assert len(opener.opened) == 1 and adapter.opened == 1
    finally:
        await migrator.close()
        await hypervisor.close()
        await inventory.close()


async def test_a_read_after_libvirtd_restarted_is_answered_on_a_new_connection(
    opener: Opener, adapter: LibvirtAdapter, tmp_path: Path
) -> None:
    inventory = Inventory(
        "h1", libvirt_uri=TEST_URI, data_dir=tmp_path, libvirt_adapter=adapter, use_events=False
    )
    await asyncio.wait_for(inventory.start(), TIMEOUT)
    opener.kill_all()  # libvirtd restarted: the connection died with the old daemon
    record = await asyncio.wait_for(inventory.record(), TIMEOUT)
    assert [(vm.name, vm.state) for vm in record.vms] == [("test", "running")]
    assert inventory.warning is None and inventory.connected
    assert len(opener.opened) == 2 and not opener.opened[1].dead

    opener.kill_all()
    assert await asyncio.wait_for(adapter.read(_names), TIMEOUT) == ["test"]
    assert len(opener.opened) == 3
    await inventory.close()


async def test_after_libvirtd_restarted_domain_events_arrive_on_the_new_connection(
    opener: Opener, adapter: LibvirtAdapter, tmp_path: Path
) -> None:
    inventory = Inventory("h1", libvirt_uri=TEST_URI, data_dir=tmp_path, libvirt_adapter=adapter)
    operator = libvirt.open(TEST_URI)  # as `virsh` would change the domain
    try:
        await asyncio.wait_for(inventory.start(), TIMEOUT)
        opener.kill_all()
        await asyncio.wait_for(inventory.record(), TIMEOUT)
        assert len(opener.opened) == 2
        await inventory.wait_changed(timeout=0.01)  # forget what happened so far
        await asyncio.to_thread(operator.lookupByName("test").suspend)
        assert await inventory.wait_changed(timeout=TIMEOUT) is True
        record = await asyncio.wait_for(inventory.record(), TIMEOUT)
        assert [(vm.name, vm.state) for vm in record.vms] == [("test", "paused")]
    finally:
        await asyncio.to_thread(operator.lookupByName("test").resume)
        operator.close()
        await inventory.close()


async def test_a_change_on_a_dead_connection_is_not_retried_and_the_next_call_reconnects(
    opener: Opener, adapter: LibvirtAdapter
) -> None:
    hypervisor = Hypervisor(TEST_URI, domain_type="qemu", libvirt_adapter=adapter)
    assert [vm.name for vm in await asyncio.wait_for(hypervisor.list(), TIMEOUT)] == ["test"]
    opener.kill_all()
    with pytest.raises(LibvirtUnreachable, match=r"start test: lost libvirt at test:///default"):
        await asyncio.wait_for(hypervisor.start("test"), TIMEOUT)
    assert len(opener.opened) == 1  # not retried: the start may have happened
    assert await asyncio.wait_for(hypervisor.start("test"), TIMEOUT) is False  # it runs
    assert len(opener.opened) == 2


async def test_an_unreachable_libvirtd_is_reported_as_such(tmp_path: Path) -> None:
    adapter = LibvirtAdapter(f"test://{tmp_path}/missing.xml")
    try:
        with pytest.raises(Unreachable):
            await asyncio.wait_for(adapter.read(_names), TIMEOUT)
        assert adapter.opened == 0
    finally:
        await adapter.close()


async def test_a_migration_job_has_threads_and_a_connection_of_its_own(
    opener: Opener,
) -> None:
    """A job blocked for minutes (migrateToURI3) holds neither the shared connection nor
    the threads of the short calls."""
    adapter = LibvirtAdapter(TEST_URI, opener=opener, workers=1, job_workers=1)
    release = threading.Event()
    used: list[Any] = []

    def migrate(conn: Any) -> str:
        used.append(conn)
        release.wait(TIMEOUT)
        return "moved"

    try:
        job = asyncio.ensure_future(adapter.job(migrate))
        assert await asyncio.wait_for(adapter.read(_names), TIMEOUT) == ["test"]
        assert await asyncio.wait_for(adapter.read(_names), TIMEOUT) == ["test"]
        assert not job.done()
        release.set()
        assert await asyncio.wait_for(job, TIMEOUT) == "moved"
        shared = await asyncio.wait_for(adapter.run(adapter.connection), TIMEOUT)
        assert used and used[0] is not shared and len(opener.opened) == 2
    finally:
        release.set()
        await adapter.close()


@pytest.fixture
def silent_libvirtd() -> Iterator[tuple[str, list[socket.socket]]]:
    """(URI, accepted sockets) of a "libvirtd" that accepts connections and never answers.
    Closing the sockets at the end fails the blocked libvirt calls, so their threads end."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"qemu+tcp://127.0.0.1:{server.getsockname()[1]}/system", held
    server.close()
    for conn in held:
        conn.close()


async def test_a_hung_libvirtd_holds_only_its_share_of_the_threads(
    silent_libvirtd: tuple[str, list[socket.socket]],
) -> None:
    """Looks at a libvirtd that never answers time out; however many are asked for, at
    most the per-libvirtd share of the threads waits on it, and this host's own libvirtd
    is still answered meanwhile."""
    uri, held = silent_libvirtd
    bounded = LibvirtAdapter(TEST_URI, workers=3, per_uri=2)
    try:
        looks = [bounded.read(domain_presence, "vm1", uri=uri, timeout=1.0) for _ in range(5)]
        answers = await asyncio.wait_for(asyncio.gather(*looks, return_exceptions=True), TIMEOUT)
        assert all(isinstance(answer, TimeoutError) for answer in answers)
        await wait_until(lambda: len(held) >= 2)
        assert len(held) == 2  # only two calls reached the hung daemon
        assert await asyncio.wait_for(bounded.read(_names), TIMEOUT) == ["test"]
        assert len(held) == 2
    finally:
        for conn in held:
            conn.close()
        await bounded.close()
