"""`nova-agent --print-unit-dropin`: the systemd drop-in this host's settings need.

The shipped unit (systemd/novacron-agent.service) sees the file system
read-only (`ProtectSystem=strict`) except its state and runtime directories,
/var/lib/novacron and /run/novacron, and does not see /home, /root and
/run/user at all (`ProtectHome=yes`). The defaults live in those two
directories; a setting that moves a directory the agent writes (`disk_dir`,
`data_dir`, `template_dir`, the API socket's) elsewhere, or puts a file or
directory it reads (its identity, publishers' keys, a catalogue directory)
under a home directory, needs the lines printed here, derived from the same configuration
the agent would run with.
"""

from __future__ import annotations

import socket
from pathlib import PurePosixPath

from .config import DEFAULT_CONFIG_FILE, AgentConfig, identity_paths

UNIT = "novacron-agent.service"
UNIT_WRITABLE = (PurePosixPath("/var/lib/novacron"), PurePosixPath("/run/novacron"))
"""StateDirectory= and RuntimeDirectory= of the shipped unit: writable there already."""
HIDDEN = (PurePosixPath("/home"), PurePosixPath("/root"), PurePosixPath("/run/user"))
"""What ProtectHome=yes hides."""


def _absolute(path: str) -> PurePosixPath:
    # Under systemd the agent's working directory is /, so that is what a relative path means.
    return PurePosixPath("/") / path


def _under(path: PurePosixPath, roots: tuple[PurePosixPath, ...]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def written(config: AgentConfig) -> list[tuple[str, PurePosixPath]]:
    """(setting, directory) of every directory the agent writes."""
    return [
        ("data_dir", _absolute(config.data_dir)),
        ("disk_dir", _absolute(config.disk_dir)),
        ("template_dir", _absolute(config.template_dir)),
        ("api_socket", _absolute(config.api_socket).parent),
    ]


def read(config: AgentConfig, hostname: str) -> list[tuple[str, PurePosixPath]]:
    """(setting, path) of every file the agent reads at start, and of a catalogue
    directory it reads templates from."""
    cert, key = identity_paths(config, hostname)
    files = [("ca_file", config.ca_file), ("cert_file", str(cert)), ("key_file", str(key))]
    files += [("crl_file", config.crl_file)] if config.crl_file else []
    files += [("trusted_publishers", key_file) for key_file in config.trusted_publishers]
    if config.catalogue and not config.catalogue.startswith(("http://", "https://")):
        files.append(("catalogue", config.catalogue))
    return [(name, _absolute(path)) for name, path in files]


def _quoted(path: PurePosixPath) -> str:
    """`path` as one word of a unit file: "%" doubled, quoted if it has spaces or quotes."""
    text = str(path).replace("%", "%%")
    if any(c.isspace() or c in "\"'\\" for c in text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def dropin(config: AgentConfig, config_file: str | None = None, hostname: str = "") -> str:
    """The drop-in's text: a `[Service]` section (empty when the unit needs nothing)."""
    hostname = hostname or socket.gethostname()
    lines = [
        f"# /etc/systemd/system/{UNIT}.d/paths.conf, written by `nova-agent "
        f"--print-unit-dropin` from {config_file or DEFAULT_CONFIG_FILE} and its flags.",
        "# Install: save it there, then `systemctl daemon-reload && systemctl restart "
        f"{UNIT.removesuffix('.service')}`.",
        "[Service]",
    ]
    home = False
    seen: set[PurePosixPath] = set()
    for setting, directory in written(config):
        if _under(directory, UNIT_WRITABLE) or directory in seen:
            continue
        seen.add(directory)
        hidden = _under(directory, HIDDEN)
        home |= hidden
        lines += [
            f"# {setting}: the agent writes in {directory}; created here if missing (the",
            "# mount below needs it to exist), with full privileges before the sandbox.",
            f"ExecStartPre=+/bin/mkdir -p {_quoted(directory)}",
            f"{'BindPaths' if hidden else 'ReadWritePaths'}={_quoted(directory)}",
        ]
    for setting, path in read(config, hostname):
        if _under(path, HIDDEN) and path not in seen:
            seen.add(path)
            home = True
            lines += [f"# {setting}: read", f"BindReadOnlyPaths={_quoted(path)}"]
    if home:
        lines += [
            "# A path under /home, /root or /run/user: those become empty instead of",
            "# absent, so the paths above can be bound into them.",
            "ProtectHome=tmpfs",
        ]
    if len(lines) == 3:
        lines.append("# Nothing to add: every path these settings name is usable by the unit.")
    return "\n".join(lines) + "\n"
