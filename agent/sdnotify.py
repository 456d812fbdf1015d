"""systemd's notify protocol (READY, STATUS, WATCHDOG), without a library.

A no-op when not run by systemd (no $NOTIFY_SOCKET), so the same daemon runs in
a terminal, in tests and in the lab.
"""

from __future__ import annotations

import contextlib
import os
import socket


class Notifier:
    """Sends `KEY=value` datagrams to the socket systemd gave us."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = dict(os.environ if environ is None else environ)
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # abstract namespace socket
            address = "\0" + address[1:]
        self._address = address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        owned = not pid or pid == str(os.getpid())
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and owned else None

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, **fields: str) -> None:
        if not self._address:
            return
        payload = "\n".join(f"{key.upper()}={value}" for key, value in fields.items())
        # systemd gone or socket unreachable: nothing useful to do, so ignore it
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, contextlib.suppress(OSError):
            sock.sendto(payload.encode(), self._address)

    def ready(self, status: str) -> None:
        self.notify(ready="1", status=status)

    def status(self, status: str) -> None:
        self.notify(status=status)

    def watchdog(self) -> None:
        self.notify(watchdog="1")

    def stopping(self) -> None:
        self.notify(stopping="1", status="leaving the mesh")
