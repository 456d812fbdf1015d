"""The agent's local control API: HTTP over a root-only unix socket.

`nova` on the same host talks to it. Read-only views of the agent's state,
plus the controls: VM lifecycle (create, start, stop, delete), migrations
(start, cancel), drain (of this host, or of any host of the mesh through its
agent) and rebalancing; every answer is JSON, errors
included (`{"error": "..."}` with a 4xx or 5xx code).
The socket is created with mode 0600 so that only root can drive the agent.
The routes and handlers are here; the HTTP plumbing (asyncio and h11, no web
framework: the agent's memory matters more than a framework's features) is
in `httpd`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import json
import math
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from novacron.protocol.operators import OperatorCommand

from .api_requests import (
    MigrateRequest,
    create_request,
    migrate_request,
    recover_request,
    stop_timeout,
    template_request,
)
from .core.refusals import RefusalKind, Refused
from .httpd import HttpError, HttpServer, Request, Response, Router, json_response
from .migration_row import MigrationRow
from .vms import VmCreated, VmDeleted, VmStarted, VmStopped
from .vmspec import VmSpec

if TYPE_CHECKING:  # the controls' answers; their modules drive libvirt, this one only serves
    from .daemon_status import CertificateStatus, RevocationsPublished
    from .drain import DrainStatus, RemoteDrainStatus
    from .history import HistoryRow
    from .rebalancer import RebalancePlan, RebalanceStatus
    from .recovery import Recovered

API_VERSION = "v1"
MAX_WAIT = 10.0  # longest a `?wait=` request is held


@runtime_checkable
class Answer(Protocol):
    """A typed answer that says its own JSON shape (`drain.DrainStatus`, `view.VmRow`, ...)."""

    def to_json(self) -> dict[str, Any]: ...


class AgentView(Protocol):
    """What the API needs from the daemon: snapshots of its state, each saying its JSON
    (`view.MeshView` answers with `MeshStatus`, `MemberRow`, `HostView`, `VmRow` and
    `Conflict`; the API needs no more of them than their JSON)."""

    def status(self) -> Answer: ...

    def members(self) -> Sequence[Answer]: ...

    def host(self, node_id: str | None) -> Answer | None: ...

    def vms(self) -> Sequence[Answer]: ...

    def conflicts(self) -> Sequence[Answer]: ...


# The metrics in Prometheus' text format and its content type (`metrics.exposition`);
# a callable so that an agent with metrics off never imports the metrics library.
MetricsSource = Callable[[], tuple[bytes, str]]


# The HTTP status of each kind of refusal: the one place a refusal becomes a status code
# (the site link's outcomes take theirs from here too, `site_controls`).
HTTP_STATUS = MappingProxyType(
    {
        RefusalKind.INVALID: 400,
        RefusalKind.FORBIDDEN: 403,
        RefusalKind.UNKNOWN: 404,
        RefusalKind.CONFLICT: 409,
        RefusalKind.UNAVAILABLE: 503,
        RefusalKind.NO_ANSWER: 504,
    }
)


def http_status(refused: Refused) -> int:
    """The HTTP status that answers `refused`."""
    return HTTP_STATUS[refused.kind]


class MigrationControl(Protocol):
    """What the API needs to drive migrations (the daemon's `Migrator` fits).

    `migrate` and `cancel` raise `Refused` with the reason when they will not act.
    """

    async def migrate(self, vm: str, request: MigrateRequest) -> str: ...

    async def cancel(self, migration_id: str) -> None: ...

    def migrations(self) -> list[MigrationRow]: ...

    async def vm_history(self, vm: str) -> list[HistoryRow]: ...

    def migration(self, migration_id: str) -> MigrationRow | None: ...

    async def wait_change(self, timeout: float) -> None: ...


class VmLifecycle(Protocol):
    """What the API needs to create and run VMs on this host (`vms.VmControl` fits).

    Every method raises `Refused` with the reason when it will not act.
    """

    async def create(self, spec: VmSpec, start: bool = False) -> VmCreated: ...

    async def start(self, name: str) -> VmStarted: ...

    async def stop(self, name: str, timeout: float) -> VmStopped: ...

    async def delete(self, name: str, force: bool = False) -> VmDeleted: ...


class RecoveryControl(Protocol):
    """What the API needs to settle a VM in doubt (`recovery.Recoveries` fits)."""

    async def recover(self, vm: str, host: str) -> Recovered: ...


class DrainControl(Protocol):
    """What the API needs to drain this host (`drain.Drain` fits)."""

    async def drain(self) -> DrainStatus: ...

    async def undrain(self) -> DrainStatus: ...

    def status(self) -> DrainStatus: ...


class HostDrainControl(Protocol):
    """What the API needs to drain any host of the mesh (`drain.DrainRequests` fits).

    `ask` and `status_of` raise `Refused` with the reason when they cannot act
    (an unknown host, one not alive or refusing, one that does not answer).
    """

    async def ask(
        self,
        node: str,
        drain: bool,
        requested_by: str = "",
        command: OperatorCommand | None = None,
    ) -> DrainStatus | RemoteDrainStatus: ...

    def status_of(self, node: str) -> DrainStatus | RemoteDrainStatus: ...


class IdentityControl(Protocol):
    """What the API needs to reload the identity files and spread revocations (the daemon)."""

    async def reload(self) -> CertificateStatus: ...

    async def publish_revocations(self, data: bytes) -> RevocationsPublished: ...


class RebalanceControl(Protocol):
    """What the API needs to show and steer rebalancing (`rebalancer.Rebalancer` fits)."""

    def status(self) -> RebalanceStatus: ...

    def preview(self) -> RebalancePlan: ...

    async def pause(self) -> RebalanceStatus: ...

    async def resume(self) -> RebalanceStatus: ...


class PullState(Protocol):
    """One template pull as the API shows it (`mesh_pull.PullStatus` fits)."""

    pull_id: str

    def to_json(self) -> dict[str, Any]: ...


class TemplatePulls(Protocol):
    """Pulling templates from the mesh (`mesh_pull.Pulls` fits); `start` raises `Refused`."""

    def start(self, name: str, version: str | None) -> PullState: ...

    def get(self, pull_id: str) -> PullState | None: ...

    def listing(self) -> Sequence[PullState]: ...


def build_router(
    view: AgentView,
    migrations: MigrationControl | None = None,
    vms: VmLifecycle | None = None,
    drain: DrainControl | None = None,
    rebalance: RebalanceControl | None = None,
    host_drain: HostDrainControl | None = None,
    recovery: RecoveryControl | None = None,
    identity: IdentityControl | None = None,
    metrics: MetricsSource | None = None,
    pulls: TemplatePulls | None = None,
) -> Router:
    """The routes serving `view` (and the controls given) under /v1, and /metrics."""
    router = Router()
    if metrics is not None:
        add_metrics_route(router, metrics)
    if pulls is not None:
        _pull_routes(router, pulls)
    if identity is not None:
        _identity_routes(router, identity)
    if vms is not None:
        _vm_routes(router, vms)
    if recovery is not None:

        async def recover(request: Request) -> Response:
            host = _parsed(recover_request, request)
            return await _controlled(recovery.recover(request.params["name"], host))

        router.post(f"/{API_VERSION}/vms/{{name}}/recover", recover)
    if drain is not None:
        _drain_routes(router, drain)
    if host_drain is not None:
        _host_drain_routes(router, host_drain)
    if rebalance is not None:
        _rebalance_routes(router, rebalance)
    if migrations is not None:
        _migration_routes(router, migrations)
    _view_routes(router, view)
    return router


def _pull_routes(router: Router, pulls: TemplatePulls) -> None:
    async def start(request: Request) -> Response:
        name, version = _parsed(template_request, request)
        try:
            pull = pulls.start(name, version)
        except Refused as exc:
            raise _http_error(exc) from None
        return json_response({"pull": pull.to_json()}, status=202)

    async def listing(request: Request) -> Response:
        return json_response({"pulls": [p.to_json() for p in pulls.listing()]})

    async def one(request: Request) -> Response:
        pull = pulls.get(request.params["pull_id"])
        if pull is None:
            raise HttpError(404, f"no pull {request.params['pull_id'][:80]!r} on this host")
        return json_response({"pull": pull.to_json()})

    router.post(f"/{API_VERSION}/templates/pulls", start)
    router.get(f"/{API_VERSION}/templates/pulls", listing)
    router.get(f"/{API_VERSION}/templates/pulls/{{pull_id}}", one)


def add_metrics_route(router: Router, metrics: MetricsSource) -> None:
    """GET /metrics: what Prometheus scrapes (outside /v1: its path is a convention)."""

    async def scrape(request: Request) -> Response:
        body, content_type = metrics()
        return Response(200, body, content_type=content_type)

    router.get("/metrics", scrape)


def _identity_routes(router: Router, identity: IdentityControl) -> None:
    async def reload(request: Request) -> Response:
        return await _controlled(identity.reload())

    async def revocations(request: Request) -> Response:
        body = _body(request)
        try:
            data = base64.b64decode(_text(body, "crl"), validate=True)
        except (KeyError, ValueError, binascii.Error) as exc:
            raise HttpError(400, f"crl: the signed list, base64 ({exc})") from None
        return await _controlled(identity.publish_revocations(data))

    router.post(f"/{API_VERSION}/reload", reload)
    router.post(f"/{API_VERSION}/revocations", revocations)


def _view_routes(router: Router, view: AgentView) -> None:
    async def status(request: Request) -> Response:
        return json_response(view.status().to_json())

    async def members(request: Request) -> Response:
        return json_response({"members": [row.to_json() for row in view.members()]})

    async def host(request: Request) -> Response:
        node_id = request.params.get("node_id")
        found = view.host(node_id)
        if found is None:
            raise HttpError(404, f"no host {node_id!r} in this agent's view of the mesh")
        return json_response(found.to_json())

    async def vms(request: Request) -> Response:
        vms = [row.to_json() for row in view.vms()]
        return json_response({"vms": vms, "conflicts": [c.to_json() for c in view.conflicts()]})

    router.get(f"/{API_VERSION}/status", status)
    router.get(f"/{API_VERSION}/members", members)
    router.get(f"/{API_VERSION}/hosts/self", host)
    router.get(f"/{API_VERSION}/hosts/{{node_id}}", host)
    router.get(f"/{API_VERSION}/vms", vms)


def _vm_routes(router: Router, vms: VmLifecycle) -> None:
    async def create(request: Request) -> Response:
        asked = _parsed(create_request, request)
        return await _controlled(vms.create(asked.spec, asked.start), status=201)

    async def start(request: Request) -> Response:
        return await _controlled(vms.start(request.params["name"]))

    async def stop(request: Request) -> Response:
        timeout = _parsed(stop_timeout, request)
        return await _controlled(vms.stop(request.params["name"], timeout))

    async def delete(request: Request) -> Response:
        force = request.query.get("force", "") in ("1", "true", "yes")
        return await _controlled(vms.delete(request.params["name"], force))

    router.post(f"/{API_VERSION}/vms", create)
    router.post(f"/{API_VERSION}/vms/{{name}}/start", start)
    router.post(f"/{API_VERSION}/vms/{{name}}/stop", stop)
    router.delete(f"/{API_VERSION}/vms/{{name}}", delete)


def _drain_routes(router: Router, drain: DrainControl) -> None:
    async def status(request: Request) -> Response:
        return json_response(drain.status().to_json())

    async def start(request: Request) -> Response:
        return await _controlled(drain.drain(), status=202)

    async def stop(request: Request) -> Response:
        return await _controlled(drain.undrain())

    router.get(f"/{API_VERSION}/drain", status)
    router.post(f"/{API_VERSION}/drain", start)
    router.post(f"/{API_VERSION}/undrain", stop)


def _host_drain_routes(router: Router, control: HostDrainControl) -> None:
    """Drain any host from this one: the request goes over the mesh to that host's agent."""

    async def status(request: Request) -> Response:
        try:
            return json_response(control.status_of(request.params["node_id"]).to_json())
        except Refused as exc:
            raise _http_error(exc) from None

    async def start(request: Request) -> Response:
        body = _body(request)
        node = request.params["node_id"]
        asked = control.ask(node, True, _requested_by(body), _operator_command(body))
        return await _controlled(asked, status=202)

    async def stop(request: Request) -> Response:
        body = _body(request)
        node = request.params["node_id"]
        asked = control.ask(node, False, _requested_by(body), _operator_command(body))
        return await _controlled(asked)

    router.get(f"/{API_VERSION}/hosts/{{node_id}}/drain", status)
    router.post(f"/{API_VERSION}/hosts/{{node_id}}/drain", start)
    router.post(f"/{API_VERSION}/hosts/{{node_id}}/undrain", stop)


def _operator_command(body: dict[str, Any]) -> OperatorCommand | None:
    """The operator's signed command in `body["operator"]` (see `cli.operator`), if any."""
    given = body.get("operator")
    if given is None:
        return None
    if not isinstance(given, dict):
        raise HttpError(400, "operator must be an object")
    try:
        return OperatorCommand(
            action=_text(given, "action"),
            target=_text(given, "target"),
            request_id=_text(given, "request_id"),
            issued_at=float(given["issued_at"]),
            certificate=base64.b64decode(_text(given, "certificate"), validate=True),
            signature=base64.b64decode(_text(given, "signature"), validate=True),
        )
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise HttpError(400, f"operator: malformed signed command ({exc})") from None


def _text(body: dict[str, Any], name: str) -> str:
    value = body[name]
    if not isinstance(value, str) or len(value) > 8192:
        raise ValueError(f"{name} must be a string")
    return value


def _requested_by(body: dict[str, Any]) -> str:
    """Who asks, as the request names them (only logged, on the drained host)."""
    by = body.get("requested_by", "")
    if not isinstance(by, str):
        raise HttpError(400, "requested_by must be a string")
    return by


def _rebalance_routes(router: Router, rebalance: RebalanceControl) -> None:
    async def status(request: Request) -> Response:
        return json_response(rebalance.status().to_json())

    async def plan(request: Request) -> Response:
        return json_response(rebalance.preview().to_json())

    async def pause(request: Request) -> Response:
        return await _controlled(rebalance.pause())

    async def resume(request: Request) -> Response:
        return await _controlled(rebalance.resume())

    router.get(f"/{API_VERSION}/rebalance", status)
    router.get(f"/{API_VERSION}/rebalance/plan", plan)
    router.post(f"/{API_VERSION}/rebalance/pause", pause)
    router.post(f"/{API_VERSION}/rebalance/resume", resume)


def _migration_routes(router: Router, control: MigrationControl) -> None:
    async def migrate(request: Request) -> Response:
        vm = request.params["name"]
        asked = _parsed(migrate_request, request)
        traceparent = dict(request.headers).get("traceparent", "")
        if traceparent:
            asked = dataclasses.replace(asked, traceparent=traceparent[:128])
        try:
            migration_id = await control.migrate(vm, asked)
        except Refused as exc:
            raise _http_error(exc) from None
        row = control.migration(migration_id)
        answer = {"migration_id": migration_id, "vm": vm, "to": row and row.info.target}
        return json_response(answer, status=202)

    async def listing(request: Request) -> Response:
        return json_response({"migrations": [row.to_json() for row in control.migrations()]})

    async def one(request: Request) -> Response:
        """One migration; with `?wait=S`, answered as soon as it ends or after S seconds (at
        most `MAX_WAIT`), so a waiting client learns of the end at once instead of polling."""
        migration_id = request.params["migration_id"]
        wait = _wait_seconds(request)
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            found = control.migration(migration_id)
            if found is None:
                raise HttpError(404, f"no migration {migration_id!r} on this host")
            left = deadline - asyncio.get_running_loop().time()
            if found.info.outcome or left <= 0:
                return json_response({"migration": found.to_json()})
            await control.wait_change(left)

    async def cancel(request: Request) -> Response:
        migration_id = request.params["migration_id"]
        try:
            await control.cancel(migration_id)
        except Refused as exc:
            raise _http_error(exc) from None
        return json_response({"migration_id": migration_id, "cancelling": True}, status=202)

    router.post(f"/{API_VERSION}/vms/{{name}}/migrate", migrate)

    async def history(request: Request) -> Response:
        """A VM's migrations as it carries them, with this host's own (the same anywhere)."""
        rows = await control.vm_history(request.params["name"])
        return json_response({"migrations": [row.to_json() for row in rows]})

    router.get(f"/{API_VERSION}/vms/{{name}}/migrations", history)
    router.get(f"/{API_VERSION}/migrations", listing)
    router.get(f"/{API_VERSION}/migrations/{{migration_id}}", one)
    router.post(f"/{API_VERSION}/migrations/{{migration_id}}/cancel", cancel)


def _wait_seconds(request: Request) -> float:
    """`?wait=`: a finite, non-negative number of seconds, held at most `MAX_WAIT`.

    NaN and infinities are refused: NaN compares false with every bound, so a
    clamp would let it through and hold the request forever.
    """
    try:
        wait = float(request.query.get("wait", "0"))
    except ValueError:
        raise HttpError(400, "wait must be a number of seconds") from None
    if not math.isfinite(wait) or wait < 0:
        raise HttpError(400, "wait must be a finite, non-negative number of seconds")
    return min(wait, MAX_WAIT)


def _body(request: Request) -> dict[str, Any]:
    """The request's JSON object ({} when there is no body), or 400 saying what is wrong."""
    if not request.body:
        return {}
    try:
        body = json.loads(request.body.decode("utf-8"))
    except (ValueError, RecursionError):  # RecursionError: nested too deep
        raise HttpError(400, "the request body is not JSON") from None
    if not isinstance(body, dict):
        raise HttpError(400, "the request body must be a JSON object")
    return body


Parsed = TypeVar("Parsed")


def _parsed(parse: Callable[[dict[str, Any]], Parsed], request: Request) -> Parsed:
    """`request`'s body as `parse` reads it (`api_requests`), or 400 saying what is wrong."""
    try:
        return parse(_body(request))
    except Refused as exc:
        raise _http_error(exc) from None


async def _controlled(call: Awaitable[object], status: int = 200) -> Response:
    """Run a control's call; its answer as JSON (its `to_json`, or else a dataclass's
    fields, in order), or its refusal as the HTTP error."""
    try:
        answer = await call
    except Refused as exc:
        raise _http_error(exc) from None
    if isinstance(answer, Answer):
        return json_response(answer.to_json(), status=status)
    if dataclasses.is_dataclass(answer) and not isinstance(answer, type):
        return json_response(dataclasses.asdict(answer), status=status)
    return json_response(answer, status=status)


def _http_error(refused: Refused) -> HttpError:
    """The HTTP error for a control's refusal: its kind's status, its reason."""
    return HttpError(http_status(refused), str(refused), details=refused.details)


class ApiServer:
    """Serves the API on a unix socket that only root may open."""

    def __init__(
        self,
        view: AgentView,
        socket_path: str,
        migrations: MigrationControl | None = None,
        vms: VmLifecycle | None = None,
        drain: DrainControl | None = None,
        rebalance: RebalanceControl | None = None,
        host_drain: HostDrainControl | None = None,
        recovery: RecoveryControl | None = None,
        identity: IdentityControl | None = None,
        metrics: MetricsSource | None = None,
        pulls: TemplatePulls | None = None,
    ) -> None:
        router = build_router(
            view, migrations, vms, drain, rebalance, host_drain, recovery, identity, metrics, pulls
        )
        self._http = HttpServer(router)
        self.socket_path = Path(socket_path)

    async def start(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # a stale socket from a crashed agent
        # umask while binding, so the socket is never briefly group/world-accessible
        old_umask = os.umask(0o177)
        try:
            await self._http.start_unix(str(self.socket_path))
        finally:
            os.umask(old_umask)
        os.chmod(self.socket_path, 0o600)

    async def close(self) -> None:
        await self._http.close()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()


class MetricsServer:
    """GET /metrics on TCP (`metrics_listen`) for a Prometheus elsewhere: that route alone.

    The control API stays on the root-only socket: nothing but the exposition,
    which holds no secret, is reachable over the network.
    """

    def __init__(self, metrics: MetricsSource, host: str, port: int) -> None:
        router = Router()
        add_metrics_route(router, metrics)
        self._http = HttpServer(router)
        self.host = host
        self.port = port

    async def start(self) -> None:
        await self._http.start_tcp(self.host, self.port)
        self.port = self._http.tcp_port or self.port

    async def close(self) -> None:
        await self._http.close()
