"""Agent configuration: defaults, then a TOML file, then environment, then flags.

Every setting has one name used in all three places: `bind_address` in the
TOML file is `NOVACRON_BIND_ADDRESS` in the environment and `--bind-address`
on the command line. A bad value is a `ConfigError` that names the setting
and where it came from, so the operator knows which file or flag to fix.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from novacron.protocol.messages import RESERVED_LABEL_PREFIX

MAX_ADDRESS = 300  # characters: a longer "host:port" is not one

DEFAULT_CONFIG_FILE = "/etc/novacron/agent.toml"


class ConfigError(Exception):
    """The configuration cannot be used; the message names the setting and its source."""


def _setting(default: Any, help: str) -> Any:
    """A setting's default and its one-line help (`nova-agent --help` shows both)."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent needs to start on one host."""

    node_id: str = _setting("", "this host's node id (default: the certificate's)")
    data_dir: str = _setting("/var/lib/novacron", "drain flag and migration journal")
    bind_address: str = _setting("0.0.0.0", "address the gossip socket listens on")
    advertise_address: str = _setting(
        "", "address peers use (default: the interface's first address)"
    )
    interface: str = _setting("", "interface for mDNS and the advertised address (default: all)")
    port: int = _setting(7946, "gossip port; introductions use the next one")
    image_port: int = _setting(
        0, "port serving template pieces to peers (default: 0, any free port, gossiped)"
    )
    peer_heartbeat: float = _setting(
        2.0, "seconds between heartbeats on peer connections; 0 turns them off"
    )
    seeds: tuple[str, ...] = _setting(
        (), "ADDRESS:PORT of peers to join where multicast does not pass (default: none)"
    )
    mdns: bool = _setting(True, "advertise and browse _novacron._tcp.local.")
    libvirt_uri: str = _setting("qemu:///system", "the libvirtd whose VMs this agent runs")
    domain_type: str = _setting("auto", "how VMs run: kvm, qemu (TCG), or auto (kvm where it runs)")
    kvm_probe_kernel: str = _setting(
        "", "with kvm_probe_initrd: a guest auto must boot under KVM first (default: none)"
    )
    kvm_probe_initrd: str = _setting("", "the probe guest's initrd (default: none)")
    disk_dir: str = _setting("/var/lib/novacron/disks", "VM disk overlays (local to this host)")
    template_dir: str = _setting(
        "/var/lib/novacron/templates", "templates pulled to this host: verified images, manifests"
    )
    trusted_publishers: tuple[str, ...] = _setting(
        (), "public key files of template publishers this host takes templates from (default: none)"
    )
    image_serve_mib_s: float = _setting(
        0.0, "MiB/s this host serves template pieces to peers at most (default: 0, no cap)"
    )
    catalogue: str = _setting(
        "", "template catalogue (directory or URL) for pieces no peer holds (default: none)"
    )
    template_unused_grace: float = _setting(
        604800.0,
        "seconds a template no VM on this host uses is kept, then removed "
        "(default: 604800, 7 days; 0: kept for ever)",
    )
    ca_file: str = _setting("/etc/novacron/ca.pub", "the cluster CA's public key")
    cert_file: str = _setting(
        "", "this host's certificate (default: /etc/novacron/<node id or hostname>.crt)"
    )
    key_file: str = _setting(
        "", "this host's private keys (default: /etc/novacron/<node id or hostname>.key)"
    )
    crl_file: str = _setting("", "the CA's signed revocation list (default: none)")
    api_socket: str = _setting("/run/novacron/agent.sock", "where `nova` reaches the agent")
    log_format: str = _setting("kv", "log lines as kv or json")
    log_level: str = _setting("info", "debug, info, warning or error")
    inventory_interval: float = _setting(10.0, "seconds between libvirt and host refreshes")
    reserved_memory_mib: int = _setting(
        0, "memory kept for the host itself, never promised to VMs (MiB)"
    )
    rebalance: bool = _setting(True, "move VMs away automatically when this host runs hot")
    rebalance_interval: float = _setting(5.0, "seconds between rebalancing decisions")
    metrics: bool = _setting(True, "serve Prometheus metrics at GET /metrics on the API socket")
    metrics_listen: str = _setting(
        "", "ADDR:PORT where /metrics (only) is served on TCP too (default: socket only)"
    )
    events_nats: str = _setting(
        "", "nats:// URL of a NATS JetStream server that takes this host's events (default: none)"
    )
    events_stream: str = _setting("NOVACRON_EVENTS", "the JetStream stream events go to")
    events_subject: str = _setting(
        "novacron.events", "subject prefix of events: <prefix>.member.failed, ..."
    )
    events_spool_mib: int = _setting(
        16, "disk kept for events the sink has not taken yet; the oldest go first (MiB)"
    )
    tracing_otlp: str = _setting(
        "", "http(s):// base URL of an OTLP/HTTP collector for migration traces (default: off)"
    )
    labels: dict[str, str] = field(
        default_factory=dict,
        metadata={"help": "this host's labels, e.g. site=lyon (default: none)"},
    )
    coordinator: tuple[str, ...] = _setting(
        (),
        "https:// URLs of the coordinator(s); such an agent may hold the site link "
        "(default: none, the site runs on its own)",
    )
    coordinator_ca: str = _setting(
        "", "PEM bundle that issued the coordinator's TLS certificate (default: the system's)"
    )


_SUBJECT = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")  # no wildcards, no empty tokens
_STREAM = re.compile(r"[A-Za-z0-9_-]{1,64}")
_FIELDS = {f.name: f for f in dataclasses.fields(AgentConfig)}
_CHOICES = {
    "log_format": ("kv", "json"),
    "log_level": ("debug", "info", "warning", "error"),
    "domain_type": ("auto", "kvm", "qemu"),
}


def load(
    argv_values: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> AgentConfig:
    """Merge the sources, later ones winning: file < environment < flags."""
    environ = os.environ if environ is None else environ
    path = config_file or environ.get("NOVACRON_CONFIG") or DEFAULT_CONFIG_FILE
    values: dict[str, Any] = {}
    values.update(_from_file(path, required=config_file is not None))
    values.update(_from_environment(environ))
    values.update({k: v for k, v in argv_values.items() if v is not None and k in _FIELDS})
    return _validated(AgentConfig(**values))


def _from_file(path: str, required: bool) -> dict[str, Any]:
    try:
        with open(path, "rb") as source:
            data = tomllib.load(source)
    except FileNotFoundError:
        if required:
            raise ConfigError(f"config file {path} does not exist") from None
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    values = {}
    for key, raw in data.items():
        name = key.replace("-", "_")
        if name not in _FIELDS:
            raise ConfigError(f"config file {path}: unknown setting {key!r}")
        values[name] = _coerce(name, raw, f"config file {path}")
    return values


def _from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    values = {}
    for name in _FIELDS:
        raw = environ.get(f"NOVACRON_{name.upper()}")
        if raw is not None:
            values[name] = _coerce(name, raw, f"environment NOVACRON_{name.upper()}")
    return values


def _coerce(name: str, raw: Any, source: str) -> Any:
    """Turn a TOML or environment value into the field's type, or say why not."""
    kind = _FIELDS[name].type
    try:
        if kind == "bool":
            return raw if isinstance(raw, bool) else _parse_bool(str(raw))
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "tuple[str, ...]":
            items = raw if isinstance(raw, list) else str(raw).split(",")
            return tuple(str(item).strip() for item in items if str(item).strip())
        if kind == "dict[str, str]":
            return _parse_labels(raw)
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: bad value for {name}: {exc}") from None


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (use true or false)")


def _parse_labels(raw: Any) -> dict[str, str]:
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    labels = {}
    for pair in str(raw).split(","):
        if pair.strip():
            key, sep, value = pair.partition("=")
            if not sep:
                raise ValueError(f"label {pair!r} is not key=value")
            labels[key.strip()] = value.strip()
    return labels


def _validated(config: AgentConfig) -> AgentConfig:
    for name, allowed in _CHOICES.items():
        if getattr(config, name) not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}")
    if not 1 <= config.port <= 65535:
        raise ConfigError(f"port must be between 1 and 65535, got {config.port}")
    if not 0 <= config.image_serve_mib_s < 1e6:
        raise ConfigError(f"image_serve_mib_s must be 0 or more, got {config.image_serve_mib_s}")
    if not 0 <= config.image_port <= 65535:
        raise ConfigError(f"image_port must be between 0 and 65535, got {config.image_port}")
    for seed in config.seeds:
        _split_seed(seed)
    if not (config.peer_heartbeat == 0 or 0.1 <= config.peer_heartbeat <= 600):
        raise ConfigError("peer_heartbeat must be 0 (off) or between 0.1 and 600 seconds")
    if bool(config.kvm_probe_kernel) != bool(config.kvm_probe_initrd):
        raise ConfigError("kvm_probe_kernel and kvm_probe_initrd go together: give both or neither")
    for name in ("kvm_probe_kernel", "kvm_probe_initrd"):
        if getattr(config, name) and not Path(getattr(config, name)).is_absolute():
            raise ConfigError(f"{name} must be an absolute path")
    reserved = sorted(k for k in config.labels if k.startswith(RESERVED_LABEL_PREFIX))
    if reserved:
        # Peers refuse a record carrying one: the agent would drop out of their view.
        raise ConfigError(
            f"labels {', '.join(reserved)}: the prefix {RESERVED_LABEL_PREFIX} is reserved "
            "for the agent's own record fields; choose another key"
        )
    if config.inventory_interval <= 0:
        raise ConfigError("inventory_interval must be positive")
    if config.template_unused_grace < 0:
        raise ConfigError("template_unused_grace must not be negative (0 keeps templates)")
    if config.reserved_memory_mib < 0:
        raise ConfigError("reserved_memory_mib must not be negative")
    if config.rebalance_interval <= 0:
        raise ConfigError("rebalance_interval must be positive")
    if config.metrics_listen:
        if not config.metrics:
            raise ConfigError("metrics_listen needs metrics on (metrics = true)")
        metrics_address(config)
    if config.events_nats and not config.events_nats.startswith(("nats://", "tls://")):
        raise ConfigError(f"events_nats {config.events_nats!r} must be a nats:// or tls:// URL")
    if not 1 <= config.events_spool_mib <= 65536:
        raise ConfigError("events_spool_mib must be between 1 and 65536")
    if not _SUBJECT.fullmatch(config.events_subject):
        raise ConfigError(f"events_subject {config.events_subject!r} is not a NATS subject prefix")
    if not _STREAM.fullmatch(config.events_stream):
        raise ConfigError(f"events_stream {config.events_stream!r} is not a JetStream stream name")
    if config.tracing_otlp and not config.tracing_otlp.startswith(("http://", "https://")):
        raise ConfigError(
            f"tracing_otlp {config.tracing_otlp!r} must be an http:// or https:// URL "
            "(OTLP over HTTP, e.g. http://collector:4318)"
        )
    for url in config.coordinator:
        if not url.startswith("https://") or len(url) <= len("https://"):
            raise ConfigError(f"coordinator URL {url!r} must be https:// (the link is TLS)")
    return config


def _split_seed(seed: str) -> tuple[str, int]:
    try:
        return split_address(seed)
    except ValueError:
        raise ConfigError(f"seed {seed!r} is not address:port") from None


HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")  # RFC 1123


def split_address(address: object) -> tuple[str, int]:
    """`host:port` (IPv6 in brackets, or not) as (host, port), the host an IP address or
    a DNS name; ValueError otherwise. Addresses come from files and peers too: one that
    would make the resolver raise something else must be refused here."""
    if not isinstance(address, str) or len(address) > MAX_ADDRESS:
        raise ValueError(f"not an address: {address!r:.80}")
    host, sep, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"not host:port: {address!r:.80}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        labels = host.removesuffix(".").split(".")
        if len(host) > 253 or not all(HOST_LABEL.fullmatch(label) for label in labels):
            raise ValueError(f"not an IP address or host name: {host!r:.80}") from None
    return host, int(port)


def host_port(host: str, port: int) -> str:
    """`host:port` as the transport and the membership write it (IPv6 in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def metrics_address(config: AgentConfig) -> tuple[str, int] | None:
    """Where to serve /metrics on TCP, as (host, port), or None (`metrics_listen` unset)."""
    if not config.metrics_listen:
        return None
    host, sep, port = config.metrics_listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # [::1]:9100
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(
            f"metrics_listen {config.metrics_listen!r} is not ADDR:PORT (e.g. 0.0.0.0:9101)"
        )
    return host, int(port)


def seed_addresses(config: AgentConfig) -> list[tuple[str, int]]:
    """The static seeds as (address, port) pairs."""
    return [_split_seed(seed) for seed in config.seeds]


def identity_paths(config: AgentConfig, hostname: str) -> tuple[Path, Path]:
    """Certificate and key file paths, defaulting to /etc/novacron/<name>.crt/.key."""
    stem = config.node_id or hostname
    cert = Path(config.cert_file or f"/etc/novacron/{stem}.crt")
    key = Path(config.key_file or f"/etc/novacron/{stem}.key")
    return cert, key


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting, all defaulting to None so that unset flags do not override."""
    parser.add_argument(
        "--config", metavar="FILE", help=f"TOML config file (default: {DEFAULT_CONFIG_FILE})"
    )
    for name, spec in _FIELDS.items():
        flag = "--" + name.replace("_", "-")
        help = _help(spec)
        if spec.type == "bool":
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, help=help)
        elif spec.type == "tuple[str, ...]":
            parser.add_argument(flag, dest=name, type=_comma_list, metavar="A,B", help=help)
        elif spec.type == "dict[str, str]":
            parser.add_argument(flag, dest=name, type=_parse_labels, metavar="K=V,K=V", help=help)
        else:
            kind = {"int": int, "float": float}.get(str(spec.type), str)
            parser.add_argument(flag, dest=name, type=kind, metavar=_metavar(spec), help=help)


def _help(spec: dataclasses.Field[Any]) -> str:
    """The setting's help, ending in its default unless the help already names it."""
    text = str(spec.metadata["help"])
    if "default" in text:
        return text
    default = spec.default
    shown = ("on" if default else "off") if isinstance(default, bool) else default
    return f"{text} (default: {shown})"


def _metavar(spec: dataclasses.Field[Any]) -> str:
    if spec.name in _CHOICES:
        return "{" + ",".join(_CHOICES[spec.name]) + "}"
    kinds = {"int": "N", "float": "SECONDS"}
    suffixes = {
        "_dir": "DIR",
        "_file": "FILE",
        "_address": "ADDRESS",
        "_socket": "PATH",
        "_mib_s": "MIB_S",
    }
    for suffix, metavar in suffixes.items():
        if spec.name.endswith(suffix):
            return metavar
    return kinds.get(str(spec.type), spec.name.upper())


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def from_namespace(namespace: argparse.Namespace) -> dict[str, Any]:
    """The flags that were actually given."""
    return {k: v for k, v in vars(namespace).items() if k in _FIELDS and v is not None}


def parse_cli(argv: Sequence[str] | None = None) -> tuple[AgentConfig, argparse.Namespace]:
    """Parse `nova-agent` flags and load the merged configuration."""
    parser = argparse.ArgumentParser(
        prog="nova-agent",
        description="NovaCron agent: one per host; gossip membership, VMs, live migration.",
        epilog=(
            f"Every setting can also be set in the config file ({DEFAULT_CONFIG_FILE}: "
            "port = 7946) or the environment (NOVACRON_PORT=7946); flags win over the "
            "environment, which wins over the file."
        ),
    )
    add_arguments(parser)
    parser.add_argument(
        "--print-unit-dropin",
        action="store_true",
        help="print the systemd drop-in these settings need (paths outside the unit's), and exit",
    )
    namespace = parser.parse_args(argv)
    config = load(from_namespace(namespace), config_file=namespace.config)
    if namespace.print_unit_dropin:  # like --help: prints, and the agent never starts
        from .unit_dropin import dropin

        print(dropin(config, namespace.config), end="")
        raise SystemExit(0)
    return config, namespace
