"""This host's one way to libvirt: its connection to the local libvirtd and the threads
every blocking libvirt call runs in.

Inventory, VM control, migration, disks, the locator and VM history all call
libvirt through one `LibvirtAdapter`; none opens a connection or a thread pool
of its own.

Connection. The connection to this host's libvirtd is opened on first use by
`opener` (tests substitute one) and shared by every caller: libvirt's remote
driver carries calls from many threads over one connection. It dies with the
daemon. A call that fails on a connection that is no longer alive drops it, and
the next call opens a new one. `read` then retries once on the new connection:
repeating a read changes nothing. `call` does not retry, since a start or a
define may have happened before the connection died; it raises libvirt's error
for the caller to report (the callers keep their wording: "lost libvirt at
...", "libvirt at ... unavailable"). Whoever must know of a new connection
(the inventory subscribes to domain events on each) registers with `on_open`;
whoever must know that libvirt closed one registers with `on_close`.

Threads. One bounded pool of `WORKERS` threads runs every short call, to this
host's libvirtd and to peers'. At most `PER_URI` of them wait on one libvirtd at
once: a hung libvirtd (frozen, or accepting and never answering) holds that
many threads and no more, so calls to the other libvirtds go on; further calls
to the hung one wait for a thread of its share without holding one. A call's
`timeout` bounds how long its caller waits; the thread itself stays blocked
until libvirt gives up: its keepalive (5 s x 5 by default) closes an open
connection whose daemon stopped answering, once libvirt's event loop runs
(`start_libvirt_event_loop`); an open to a daemon that accepts and never
answers waits until the socket closes. Callers without a timeout wait as long
as libvirt does, as they did when each ran its own threads.
Work that is no libvirt call (psutil, files, qemu-img on its own) stays on
asyncio's default threads, where a hung libvirtd cannot hold it up.

Migration jobs. `migrateToURI3` blocks for a whole migration, minutes long. It
runs in `job`, on a thread of a separate pool of `job_workers` (the per-host
outbound migration limit) and on a connection of its own: libvirtd serves at
most `max_client_requests` (5 by default) calls of one connection at once, and
jobs holding those slots, or the pool's threads, would starve the inventory.

Peers. `read` and `call` take the URI of another host's libvirtd (a migration
target, a look of the locator) too: such a connection is opened per call and
closed afterwards (`peer`), since such calls are rare and a peer's libvirtd
restarts without this host knowing. It gets no retry: it is new.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import libvirt

from .core.migration.policy import MigrationLimits

log = logging.getLogger(__name__)

T = TypeVar("T")

WORKERS = 8  # threads for short libvirt calls, to this host's libvirtd and to peers'
# Of those, at most this many wait on one libvirtd: a hung one holds no more. It is
# libvirtd's own limit on one connection (max_client_requests, 5 by default): this host's
# calls share one connection, and more of them would only queue inside libvirtd.
PER_URI = 5
JOB_WORKERS = MigrationLimits().max_outbound  # threads for migration jobs, one per job

# libvirt error codes that mean "the daemon is gone", not "the request was wrong".
CONNECTION_ERRORS = frozenset(
    {libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_RPC, libvirt.VIR_ERR_NO_CONNECT}
)

Opener = Callable[[str], Any]


# --- libvirt's event loop (one per process) -----------------------------------------

_event_loop_lock = threading.Lock()
_event_loop_running = False


def start_libvirt_event_loop() -> None:
    """Register libvirt's default event implementation and run it in a daemon thread.

    Idempotent and process-wide. Must happen before a connection is opened
    for that connection to deliver domain events and close notifications, and
    to keep itself alive (libvirt's keepalive runs on this loop).
    """
    global _event_loop_running
    with _event_loop_lock:
        if _event_loop_running:
            return
        libvirt.virEventRegisterDefaultImpl()
        thread = threading.Thread(target=_run_event_loop, name="libvirt-events", daemon=True)
        thread.start()
        _event_loop_running = True


def _run_event_loop() -> None:
    while True:
        if libvirt.virEventRunDefaultImpl() < 0:
            log.error("libvirt event loop iteration failed")
            time.sleep(1.0)  # do not spin on a persistent failure


class Unreachable(libvirt.libvirtError):  # type: ignore[misc]  # libvirt is untyped
    """Opening a connection to a libvirtd failed: it is not running, or the URI is wrong."""

    def __init__(self, uri: str, cause: libvirt.libvirtError) -> None:
        Exception.__init__(self, str(cause))
        self.uri = uri  # the libvirtd that could not be reached
        self.err = cause.err  # libvirt's error code and details, as the cause had them


def open_connection(opener: Opener, uri: str) -> Any:
    """`opener(uri)`, its failure raised as Unreachable (blocking)."""
    try:
        return opener(uri)
    except libvirt.libvirtError as exc:
        raise Unreachable(uri, exc) from None


def connection_lost(conn: Any, exc: libvirt.libvirtError) -> bool:
    """Whether `exc`, raised by a call on `conn`, means the connection is dead (blocking)."""
    if int(exc.get_error_code() or 0) in CONNECTION_ERRORS:
        return True
    try:
        return not conn.isAlive()
    except libvirt.libvirtError:
        return True


def close_quietly(conn: Any) -> None:
    """Close `conn`; a dead connection may refuse (blocking)."""
    with contextlib.suppress(libvirt.libvirtError):
        conn.close()


class LibvirtAdapter:
    """This host's libvirt connection and threads (see the module docstring)."""

    def __init__(
        self,
        uri: str,
        *,
        opener: Opener = libvirt.open,
        workers: int = WORKERS,
        per_uri: int = PER_URI,
        job_workers: int = JOB_WORKERS,
        events: bool = False,
    ) -> None:
        """`events`: run libvirt's event loop before the first connection is opened, so
        that every connection delivers events and is kept alive (the agent's)."""
        self.uri = uri  # this host's libvirtd
        self.opener = opener  # opens a connection to a URI; tests open inside a lab host
        self.opened = 0  # connections opened so far to this host's libvirtd
        self._events = events
        self._conn: Any = None  # libvirt.virConnect, opened on first use
        self._conn_lock = threading.Lock()  # one thread (re)opens the connection at a time
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="libvirt")
        self._jobs = ThreadPoolExecutor(job_workers, thread_name_prefix="libvirt-job")
        self._per_uri = per_uri
        self._shares: dict[str, asyncio.Semaphore] = {}  # URI -> its share of the threads
        self._on_open: list[Callable[[Any], None]] = []  # called with each new connection
        self._on_close: list[Callable[[], None]] = []  # libvirt closed the connection

    # --- the connection to this host's libvirtd ---------------------------------------------

    def on_open(self, hook: Callable[[Any], None]) -> None:
        """Call `hook(conn)` (in a worker thread) on every connection opened from now on."""
        self._on_open.append(hook)

    def on_close(self, hook: Callable[[], None]) -> None:
        """Call `hook()` (in libvirt's event thread) when libvirt closes the connection."""
        self._on_close.append(hook)

    def connection(self) -> Any:
        """The open connection, (re)opened if needed (blocking: call in a worker thread);
        Unreachable if libvirtd cannot be reached."""
        with self._conn_lock:
            if self._conn is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    if self._conn.isAlive():
                        return self._conn
                self._forget()
                log.info("libvirt at %s: the connection died; opening a new one", self.uri)
            if self._events:
                start_libvirt_event_loop()
            conn = open_connection(self.opener, self.uri)
            self.opened += 1
            with contextlib.suppress(libvirt.libvirtError):  # the test driver has none
                conn.registerCloseCallback(self._closed, None)
            self._conn = conn
        for hook in self._on_open:
            hook(conn)
        return conn

    def lost(self, conn: Any) -> None:
        """`conn` is dead: forget it, so that the next call opens a new one (blocking)."""
        with self._conn_lock:
            if self._conn is conn:
                self._forget()

    def _forget(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                conn.unregisterCloseCallback()
            close_quietly(conn)

    def _closed(self, conn: Any, reason: int, opaque: Any) -> None:
        """libvirt closed the connection (the daemon died or restarted)."""
        for hook in self._on_close:
            hook()

    # --- calls ------------------------------------------------------------------------------

    async def read(
        self,
        fn: Callable[..., T],
        *args: Any,
        uri: str | None = None,
        timeout: float | None = None,
    ) -> T:
        """`fn(conn, *args)` in a worker thread, on a connection to the libvirtd at `uri`
        (this host's shared one if None), for calls that change nothing: on this host's
        connection it is retried once on a new one if the first turned out dead."""
        where = uri or self.uri
        return await self.run(self._on, where, fn, args, True, uri=where, timeout=timeout)

    async def call(
        self,
        fn: Callable[..., T],
        *args: Any,
        uri: str | None = None,
        timeout: float | None = None,
    ) -> T:
        """As `read`, for changes: never retried (a dead connection is dropped and libvirt's
        error raised)."""
        where = uri or self.uri
        return await self.run(self._on, where, fn, args, False, uri=where, timeout=timeout)

    def _on(self, uri: str, fn: Callable[..., T], args: tuple[Any, ...], retry: bool) -> T:
        if uri != self.uri:
            with self.peer(uri) as conn:
                return fn(conn, *args)
        conn = self.connection()
        try:
            return fn(conn, *args)
        except libvirt.libvirtError as exc:
            if not connection_lost(conn, exc):
                raise
            self.lost(conn)
            if not retry:
                raise
            log.info("libvirt connection to %s lost (%s); reading again", self.uri, exc)
        return fn(self.connection(), *args)

    async def run(
        self,
        fn: Callable[..., T],
        *args: Any,
        uri: str | None = None,
        timeout: float | None = None,
    ) -> T:
        """`fn(*args)` in a worker thread (`fn` brings its own connection or handles), counted
        against the threads of `uri`'s libvirtd (this host's if None). TimeoutError after
        `timeout` s; the thread is left to end."""
        share = self._share(uri or self.uri)
        loop = asyncio.get_running_loop()

        def released(_: Future[T]) -> None:  # the thread ended, or the call never started
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(share.release)

        async def submit() -> T:
            await share.acquire()
            try:
                work = self._pool.submit(fn, *args)
            except BaseException:
                share.release()
                raise
            work.add_done_callback(released)
            return await asyncio.wrap_future(work)

        return await asyncio.wait_for(submit(), timeout)

    async def job(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(conn, *args)` on a connection of its own to this host's libvirtd, in a thread
        of the job pool: for a call that blocks for a whole migration."""

        def on_own_connection() -> T:
            conn = open_connection(self.opener, self.uri)
            try:
                return fn(conn, *args)
            finally:
                close_quietly(conn)

        return await asyncio.wrap_future(self._jobs.submit(on_own_connection))

    @contextlib.contextmanager
    def peer(self, uri: str) -> Iterator[Any]:
        """A connection to the libvirtd at `uri`, closed afterwards (blocking). This host's
        own URI gets the shared connection, left open."""
        if uri == self.uri:
            yield self.connection()
            return
        conn = open_connection(self.opener, uri)
        try:
            yield conn
        finally:
            close_quietly(conn)

    def _share(self, uri: str) -> asyncio.Semaphore:
        share = self._shares.get(uri)
        if share is None:
            share = self._shares[uri] = asyncio.Semaphore(self._per_uri)
        return share

    async def close(self) -> None:
        """Close the connection; calls still blocked in threads end on their own."""

        def close() -> None:
            with self._conn_lock:
                self._forget()

        await asyncio.to_thread(close)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._jobs.shutdown(wait=False, cancel_futures=True)
