"""Coordinators and sites as real processes on loopback: the federation tests and demo.

`tls_files` makes a throwaway TLS CA and a certificate for 127.0.0.1 (never
a network service); `CoordinatorProcess` runs `nova-coordinator serve` over
TLS on a free port; `Site` is a cluster CA with agents (libvirt's test
driver) that know the coordinator; `Api` is a small client of `/v1`;
`Cable` is a site's uplink that can be cut and healed.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from novacron.agent.cli import main as nova
from novacron.simulations.lab.netns import call_in
from novacron.simulations.ports import free_port, free_port_pair

BIN = Path(sys.executable).parent


def tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key) for 127.0.0.1, valid for a day."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "novacron test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (directory / "tls-ca.pem", directory / "server.pem", directory / "server.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(paths[2], 0o600)
    return paths


def wait_until(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    """`check()`'s first truthy answer, polled until `timeout` (then the test fails)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")


def agent_status(socket: Path) -> dict[str, Any]:
    """`nova status` of the agent serving `socket` ({} while it does not answer)."""
    out = subprocess.run(
        [str(BIN / "nova"), "--json", "status", "--socket", str(socket)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    return json.loads(out.stdout)["status"] if out.returncode == 0 and out.stdout else {}


View = set[tuple[str, str, str]]  # {(VM, host, state)}


def views_agree(
    views: Callable[[], tuple[View, View]], holds: Callable[[View], bool], since: float
) -> tuple[View, float]:
    """The site's view once the coordinator's equals it and `holds` it, and how long after
    `since` (a heal) the sample that agreed was taken; fails once a sample taken 10 s
    after `since` still differs (the issue's bound, timed to the sample, not its answer)."""
    while True:
        sampled = time.monotonic()
        coordinator, site = views()
        if coordinator == site and holds(site):
            return site, sampled - since
        assert sampled - since < 10, f"views still differ: {coordinator} / {site}"
        time.sleep(0.2)


class CoordinatorProcess:
    """`nova-coordinator serve` over TLS on loopback, with its data in `directory`."""

    def __init__(self, directory: Path, tls: tuple[Path, Path, Path], database: str = "") -> None:
        self.directory = directory
        self.tls = tls
        self.database = database
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = directory / "coordinator.log"

    def admin(self, *args: str) -> Any:
        """`nova-coordinator ARGS --json` on this coordinator's database."""
        out = subprocess.run(
            [str(BIN / "nova-coordinator"), *self._db_args(), *args, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def _db_args(self) -> list[str]:
        args = ["--data-dir", str(self.directory)]
        return [*args, "--database", self.database] if self.database else args

    def start(self, node: str = "c1", extra: Sequence[str] = ()) -> None:
        """Serve (`extra`: more options of `serve`, e.g. `--tracing-otlp URL`)."""
        cmd = [
            str(BIN / "nova-coordinator"), *self._db_args(), "serve",
            "--listen", f"127.0.0.1:{self.port}",
            "--tls-cert", str(self.tls[1]), "--tls-key", str(self.tls[2]),
            "--url", self.url, "--node", node, "--rate", "0", *extra,
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        wait_until("the coordinator to serve", self._serving, 30)

    def _serving(self) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, self.log.read_text()[-2000:]
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Api:
    """A client of `/v1` with one bearer token, verifying the coordinator's certificate."""

    def __init__(self, url: str, token: str, ca: Path) -> None:
        self.url = url
        self.token = token
        self.tls = ssl.create_default_context(cafile=str(ca))

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", **(headers or {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=60, context=self.tls) as answer:
                text = answer.read()
                status, head = answer.status, dict(answer.headers)
        except urllib.error.HTTPError as exc:
            text, status, head = exc.read(), exc.code, dict(exc.headers)
        try:
            return status, json.loads(text) if text else None, head
        except ValueError:
            return status, text.decode(errors="replace"), head

    def get(self, path: str) -> Any:
        status, body, _ = self.call("GET", path)
        assert status == 200, (path, status, body)
        return body

    def wait_operation(self, op_id: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            op = self.get(f"/v1/operations/{op_id}/wait?timeout=5")
            if op["status"] in ("succeeded", "failed", "cancelled"):
                return op  # type: ignore[no-any-return]
            assert time.monotonic() < deadline, f"operation {op_id} still {op['status']}: {op}"


class Site:
    """A cluster CA and agents (libvirt's test driver) on loopback, seeded to each other."""

    def __init__(self, directory: Path, name: str, nodes: tuple[str, ...]) -> None:
        self.directory = directory
        self.name = name
        self.nodes = nodes
        directory.mkdir(parents=True, exist_ok=True)
        assert nova(["ca", "init", "--dir", str(directory / "ca")]) == 0
        for node in nodes:
            assert (
                nova(["ca", "issue", node, "--dir", str(directory / "ca"), "--out", str(directory)])
                == 0
            )
        self.ports = {node: free_port_pair() for node in nodes}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def config_file(self, node: str) -> Path:
        path = self.directory / f"{node}.toml"
        path.write_text(
            f'ca_file = "{self.directory / "ca" / "ca.pub"}"\n'
            f'cert_file = "{self.directory / f"{node}.crt"}"\n'
            f'key_file = "{self.directory / f"{node}.key"}"\n'
        )
        return path

    def socket(self, node: str) -> Path:
        return self.directory / f"{node}.sock"

    def enroll(self, coordinator: CoordinatorProcess, token: str) -> tuple[int, Any]:
        out = subprocess.run(
            [
                str(BIN / "nova"), "--json", "site", "enroll", coordinator.url, token,
                "--config", str(self.config_file(self.nodes[0])),
                "--coordinator-ca", str(coordinator.tls[0]),
            ],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return out.returncode, json.loads(out.stdout) if out.stdout else out.stderr

    def start(
        self,
        node: str,
        coordinators: tuple[str, ...],
        tls_ca: Path,
        program: tuple[str, ...] = (str(BIN / "nova-agent"),),
        env: dict[str, str] | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        """Start `node`'s agent (`program`: another build of it, e.g. a hostile one;
        `extra`: more options)."""
        seeds = ",".join(f"127.0.0.1:{self.ports[n]}" for n in self.nodes if n != node)
        cmd = [
            *program,
            "--config", str(self.directory / "absent.toml"),
            "--ca-file", str(self.directory / "ca" / "ca.pub"),
            "--cert-file", str(self.directory / f"{node}.crt"),
            "--key-file", str(self.directory / f"{node}.key"),
            "--bind-address", "127.0.0.1",
            "--port", str(self.ports[node]),
            "--no-mdns",
            "--libvirt-uri", "test:///default",
            "--data-dir", str(self.directory / f"data-{node}"),
            "--disk-dir", str(self.directory / f"disks-{node}"),
            "--api-socket", str(self.socket(node)),
            "--inventory-interval", "1",
            "--no-rebalance",
        ]  # fmt: skip
        if seeds:
            cmd += ["--seeds", seeds]
        if coordinators:
            cmd += ["--coordinator", ",".join(coordinators), "--coordinator-ca", str(tls_ca)]
        cmd += extra
        (self.directory / "absent.toml").write_text("")
        log = open(self.directory / f"{node}.log", "ab")  # noqa: SIM115 (closed with the process)
        environment = {**os.environ, **env} if env else None
        self.procs[node] = subprocess.Popen(cmd, stdout=log, stderr=log, env=environment)

    def status(self, node: str) -> dict[str, Any]:
        return agent_status(self.socket(node))

    def kill(self, node: str) -> None:
        proc = self.procs[node]
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Cable:
    """A site's uplink: a TCP relay on loopback to the coordinator's port that can be cut.

    Cut, it closes every connection through it and closes each new one at once,
    so the site's attempts fail as over a dead uplink while the coordinator
    stays up for the API's clients. TLS passes through untouched (the
    coordinator's certificate names 127.0.0.1, as the relay does).
    """

    def __init__(self, to_port: int, listener: socket.socket | None = None) -> None:
        """Relay to the coordinator's `to_port` on loopback, from `listener` (default: a
        new one on a free loopback port; a lab host's own, from `cables_into`)."""
        self._to = to_port
        self._listener = listener or socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self._cut = False
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            for conn in self._open:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            self._open.clear()

    def heal(self) -> None:
        with self._lock:
            self._cut = False

    def close(self) -> None:
        """Cut, stop listening and end the accepting thread (a lab host's listener holds
        its network namespace for as long as it is open)."""
        self.cut()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._listener.close()
        self._acceptor.join(timeout=10)

    def _accept(self) -> None:
        while True:
            try:
                near, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                if self._cut:
                    near.close()
                    continue
            try:
                far = socket.create_connection(("127.0.0.1", self._to), timeout=5)
            except OSError:
                near.close()
                continue
            far.settimeout(None)  # the timeout was for connecting: a quiet link stays up
            with self._lock:
                if self._cut:  # cut while this one was connecting
                    near.close()
                    far.close()
                    continue
                self._open.update((near, far))
            for a, b in ((near, far), (far, near)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for conn in (source, sink):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        with self._lock:
            self._open.discard(source)
            self._open.discard(sink)
        source.close()  # each socket is the source of exactly one pump


class Uplink:
    """A site's uplink made of several cables (one per host), cut and healed as one."""

    def __init__(self, cables: Sequence[Cable]) -> None:
        self.cables = list(cables)

    def cut(self) -> None:
        for cable in self.cables:
            cable.cut()

    def heal(self) -> None:
        for cable in self.cables:
            cable.heal()

    def close(self) -> None:
        for cable in self.cables:
            cable.close()


def cables_into(host_pids: Sequence[int], to_port: int, port: int) -> Uplink:
    """An uplink from lab hosts (their inits' PIDs) to the coordinator on this machine's
    loopback: in each host, a cable listening on the host's own 127.0.0.1:`port`.

    A lab host has no route out of 198.18.0.0/15, so its agent reaches the
    coordinator only through its cable, at https://127.0.0.1:`port`, a name
    the coordinator's certificate holds.
    """
    listen = partial(socket.create_server, ("127.0.0.1", port))
    uplink = Uplink([])
    try:
        for pid in host_pids:
            uplink.cables.append(Cable(to_port, call_in(pid, listen)))
    except BaseException:
        uplink.close()
        raise
    return uplink
