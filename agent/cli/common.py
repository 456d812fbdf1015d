"""What every `nova` command shares: exit codes, errors, output for people and scripts."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NoReturn, TextIO

from novacron.agent import client

PROG = "nova"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NO_AGENT = 3
EXIT_DENIED = 4  # the agent's socket refuses this user (nova runs as root)
EXIT_BROKEN_PIPE = 141  # what a shell reports for a tool killed by SIGPIPE (128 + 13)


class UsageError(Exception):
    """The command line is wrong (exit code 2)."""


class CommandError(Exception):
    """The command could not do its job, for a reason the user can fix (exit code 1)."""


def key_value(text: str, what: str) -> tuple[str, str]:
    """KEY=VALUE (a label, a constraint) as a pair; a usage error naming `what` otherwise."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UsageError(f"{what} {text!r} is not KEY=VALUE")
    return key, value


def make_dir(path: Path, mode: int) -> None:
    """Create `path` and its parents (an existing one is fine), or say in one line why not."""
    try:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandError(f"cannot create directory {path}: {exc.strerror or exc}") from None


class Parser(argparse.ArgumentParser):
    """argparse, but usage errors become one line and an exit code, not `sys.exit`."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


class Output:
    """Where a command's results and errors go: text for people, JSON for scripts.

    A plain class, not a dataclass: `dataclasses` (and the `inspect` it loads)
    would add to every `nova` command's start-up.
    """

    def __init__(
        self, json: bool = False, stdout: TextIO | None = None, stderr: TextIO | None = None
    ) -> None:
        self.json = json
        self.stdout = sys.stdout if stdout is None else stdout
        self.stderr = sys.stderr if stderr is None else stderr

    def result(self, data: dict[str, Any], lines: Iterable[str]) -> None:
        """Print one result: `data` as a JSON object, or `lines` as text."""
        if self.json:
            print(json.dumps({"ok": True, **data}, indent=2, sort_keys=True), file=self.stdout)
        else:
            for line in lines:
                print(line, file=self.stdout)

    def error(self, message: str, data: dict[str, Any] | None = None) -> None:
        """Report a failure: one line on stderr (and a JSON object on stdout with --json)."""
        if self.json:
            body = {**(data or {}), "ok": False, "error": message}
            print(json.dumps(body, indent=2, sort_keys=True), file=self.stdout)
        print(f"{PROG}: error: {message}", file=self.stderr)


Handler = Callable[[argparse.Namespace, Output], int]
Groups = argparse._SubParsersAction  # what a command group registers its parser with
AddGroup = Callable[["Groups[Parser]"], None]


def handled_later(module: str, name: str) -> Handler:
    """A handler that imports the sibling `module` (e.g. "ca") and runs its `name` when
    called: building the parser, which every `nova` command does, loads none of its work."""

    def run(args: argparse.Namespace, out: Output) -> int:
        handler: Handler = getattr(importlib.import_module(f"{__package__}.{module}"), name)
        return handler(args, out)

    return run


def json_flag(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS keeps a subcommand's default from overwriting `nova --json ...`.
    parser.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )


def agent_flags(parser: argparse.ArgumentParser) -> None:
    """`--json` and `--socket`: what every command that asks the agent takes."""
    json_flag(parser)
    parser.add_argument(
        "--socket",
        help=f"agent API socket (default: ${client.SOCKET_ENV} or {client.DEFAULT_SOCKET})",
    )


def ask(out: Output, call: Callable[..., Any], *args: Any) -> tuple[Any, int]:
    """Call the agent; (answer, EXIT_OK), or (None, exit code) after reporting why."""
    try:
        return call(*args), EXIT_OK
    except client.AgentPermissionDenied as exc:
        out.error(str(exc))
        return None, EXIT_DENIED
    except client.AgentUnavailable as exc:
        out.error(str(exc))
        return None, EXIT_NO_AGENT
    except client.AgentRequestFailed as exc:
        out.error(str(exc))
        return None, EXIT_FAILED
