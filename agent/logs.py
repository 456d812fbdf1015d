"""Structured logs: `key=value` lines for people and grep, or one JSON object per line.

Call sites pass context as `extra={"fields": {...}}`; both formats print them.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any


class _KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        millis = int(record.msecs)  # ordering a migration's steps needs more than seconds
        parts = [f"ts={stamp}.{millis:03d}Z", f"level={record.levelname.lower()}"]
        parts.append(f"logger={record.name}")
        parts.append(f"msg={_quote(record.getMessage())}")
        for key, value in _fields(record).items():
            parts.append(f"{key}={_quote(str(value))}")
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


def _quote(text: str) -> str:
    """`text` bare when it is one plain word; JSON-quoted otherwise, so a value from a
    peer or an operator (a CR, a newline, "x=y") cannot forge fields or lines."""
    if text and text.isprintable() and not any(c in text for c in ' "='):
        return text
    return json.dumps(text)


def configure(log_format: str, level: str) -> None:
    """Send all logs to stderr (journald captures it under systemd) in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if log_format == "json" else _KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("zeroconf", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class Throttle:
    """Rate-limits a repeated log line, per key (a peer and a kind of problem).

    The first line of a key goes out at its level; for `interval` seconds
    after it, repeats go to debug only and are counted, and the next line at
    its level says how many were held back. A peer that misbehaves a thousand
    times a second thus costs one line per interval, and the count still
    tells the operator how bad it was.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 5.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 4096,
    ) -> None:
        self._log = logger
        self._interval = interval
        self._clock = clock
        self._max_keys = max_keys  # a flood of distinct keys forgets old ones, not memory
        self._last: dict[tuple[str, str], float] = {}  # key -> when it last went out
        self._held: dict[tuple[str, str], int] = {}  # key -> repeats since then

    def __call__(
        self,
        key: tuple[str, str],
        level: int,
        text: str,
        *args: object,
        exc_info: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> None:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._held[key] = self._held.get(key, 0) + 1
            self._log.debug(text, *args, extra=extra)
            return
        if len(self._last) >= self._max_keys:
            self._last.clear()
            self._held.clear()
        self._last[key] = now
        held = self._held.pop(key, 0)
        suffix = f" ({held} more like it in the last {now - last:.0f} s)" if held and last else ""
        self._log.log(level, text + suffix, *args, exc_info=exc_info, extra=extra)
