"""`nova`, the field engineer's command line.

One argparse parser with a subcommand per command group. Adding a group is
one module with an `add_commands(groups)` function that registers its
subparsers and sets a `handler` on each, listed in `COMMAND_GROUPS`. A
handler takes the parsed arguments and an `Output`, and returns the exit code.

Exit codes: 0 success, 1 the command failed, 2 the command line is wrong,
3 the agent is not running, 4 permission denied on the agent's socket (not
root), 141 the reader of the output went away (`nova ... | head -1`; what a
shell reports for any tool ended by SIGPIPE). Errors are one line on stderr,
`nova: error: ...`; with `--json`, stdout also gets `{"ok": false, "error":
...}`. User errors never print a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from novacron.protocol.errors import IdentityError

from . import (
    ca_commands,
    completion,
    federation,
    mesh,
    migrate,
    rebalance,
    site,
    template_commands,
    top,
)
from .common import (
    EXIT_BROKEN_PIPE,
    EXIT_FAILED,
    EXIT_USAGE,
    PROG,
    AddGroup,
    CommandError,
    Handler,
    Output,
    Parser,
    UsageError,
)

# Each adds one group of subcommands.
COMMAND_GROUPS: tuple[AddGroup, ...] = (
    ca_commands.add_ca_commands,
    mesh.add_mesh_commands,
    migrate.add_migration_commands,
    rebalance.add_rebalance_commands,
    site.add_site_commands,
    template_commands.add_template_commands,
    top.add_top_commands,
    federation.add_federation_commands,
    completion.add_completion_commands,
)


def build_parser() -> argparse.ArgumentParser:
    """The whole `nova` command line: one subparser per command group."""
    parser = Parser(prog=PROG, description="NovaCron: VMs on fleets of edge hosts.")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    federation.global_flags(parser)
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)
    for add_group in COMMAND_GROUPS:
        add_group(groups)
    federation.extend(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `nova` with `argv` (default: the process arguments); return the exit code."""
    try:
        code = _run(sys.argv[1:] if argv is None else argv)
        sys.stdout.flush()  # inside the try: a pipe's buffer is written here, at the latest
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE
    return code


def _run(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        Output(json="--json" in argv).error(str(exc))
        return EXIT_USAGE
    except SystemExit as exc:  # --help and --version print and "exit"
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    out = Output(json=args.json)
    try:
        handler: Handler = federation.federated(args.handler, args)
        return handler(args, out)
    except UsageError as exc:
        out.error(str(exc))
        return EXIT_USAGE
    except (CommandError, IdentityError) as exc:
        out.error(str(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:
        out.error("interrupted")
        return 130


def _discard_stdout() -> None:
    """Point stdout at /dev/null: the reader is gone (`nova ... | head -1`), and what
    is still buffered would otherwise fail again, with a traceback, as Python exits."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
