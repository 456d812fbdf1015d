"""`nova top`: the live view on a terminal (curses), one plain snapshot anywhere else.

On a terminal a thread looks at the agent every interval while the main
thread reads keys and draws, so `q` answers at once even while the agent is
slow or gone. An agent that stops answering is shown on the screen, with the
last view it gave, and asked again at the next interval; the view comes back
when it answers. Only the first look decides the exit code, as in every other
`nova` command (3: no agent, 4: not root).
"""

from __future__ import annotations

import argparse
import contextlib
import curses
import dataclasses
import os
import sys
import threading
import time

from novacron.agent import client

from .common import EXIT_OK, Output, ask
from .top_events import Event, changes, remember
from .top_render import screen
from .top_snapshot import Snapshot, fetch

KEY_POLL_MS = 100  # how long a key read waits: the longest `q` takes to act
QUIT_KEYS = frozenset({ord("q"), ord("Q")})
# What a look that fails shows on the screen instead of ending the view: the agent is
# gone, refuses, or answered something this nova cannot read (an agent mid-upgrade).
LOOK_FAILED = (client.AgentUnavailable, client.AgentRequestFailed, KeyError, TypeError, ValueError)


def show_top(args: argparse.Namespace, out: Output) -> int:
    first, code = ask(out, fetch, args.socket, time.time())
    if first is None:
        return code
    live = not (args.once or out.json) and sys.stdout.isatty() and sys.stdin.isatty()
    if live:
        watcher = Watcher(first, args.socket, args.interval)
        # The window's own size, not LINES/COLUMNS a parent process exported: curses
        # would believe them over the terminal, and draw for a window that is not there.
        for stale in ("LINES", "COLUMNS"):
            os.environ.pop(stale, None)
        return int(curses.wrapper(_run, watcher))
    events = changes(None, first)
    data = {"top": first.as_dict(), "events": [dataclasses.asdict(e) for e in events]}
    out.result(data, screen(first, events, first.taken))
    return EXIT_OK


class Watcher:
    """The latest view of the agent, refreshed every `interval` on its own thread."""

    def __init__(self, first: Snapshot, socket_file: str | None, interval: float) -> None:
        self.snapshot = first  # the last view the agent gave
        self.events: list[Event] = remember([], changes(None, first))
        self.problem: str | None = None  # why the last look failed; None if it did not
        self.version = 0  # grows with every look, so the screen knows to redraw
        self._socket = socket_file
        self._interval = interval
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="nova-top-look", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def view(self) -> tuple[int, Snapshot, list[Event], str | None]:
        with self._lock:
            return self.version, self.snapshot, list(self.events), self.problem

    def _watch(self) -> None:
        while not self._stop.wait(self._interval):
            self.look()

    def look(self) -> None:
        """Ask the agent once; a failure is kept to show, never raised."""
        try:
            seen = fetch(self._socket, time.time(), timeout=max(2.0, self._interval))
        except LOOK_FAILED as exc:
            with self._lock:
                self.problem = str(exc) or type(exc).__name__
                self.version += 1
            return
        with self._lock:
            self.events = remember(self.events, changes(self.snapshot, seen))
            self.snapshot, self.problem = seen, None
            self.version += 1


def _run(window: curses.window, watcher: Watcher) -> int:
    """Draw until `q`: on a new look, a resize, and once a second (the clock)."""
    with contextlib.suppress(curses.error):  # a terminal that cannot hide its cursor
        curses.curs_set(0)
    window.timeout(KEY_POLL_MS)
    watcher.start()
    drawn: tuple[int, int] | None = None
    try:
        while True:
            key = window.getch()
            if key in QUIT_KEYS:
                return EXIT_OK
            version = watcher.view()[0]
            due = (version, int(time.time()))
            if key == curses.KEY_RESIZE or due != drawn:
                _draw(window, watcher)
                drawn = due
    finally:
        watcher.stop()


def _draw(window: curses.window, watcher: Watcher) -> None:
    _, snapshot, events, problem = watcher.view()
    height, width = window.getmaxyx()
    # The last column is left empty: writing it on the last line moves the cursor out
    # of the window, which curses reports as an error.
    lines = screen(snapshot, events, time.time(), max(1, width - 1), height, problem)
    window.erase()
    for row, line in enumerate(lines):
        attributes = curses.A_BOLD if row == 0 or line.isupper() else curses.A_NORMAL
        if line.startswith("agent not answering"):
            attributes = curses.A_REVERSE
        with contextlib.suppress(curses.error):  # a window smaller than a line: what fits
            window.addstr(row, 0, line, attributes)
    window.refresh()
