"""The agent's local control API: HTTP over a root-only unix socket (aiohttp).

`nova` on the same host talks to it. Read-only views of the agent's state,
plus the controls: VM lifecycle (create, start, stop, delete), migrations
(start, cancel) and drain; every answer is JSON, errors
included (`{"error": "..."}` with a 4xx code).
The socket is created with mode 0600 so that only root can drive the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

API_VERSION = "v1"
MAX_WAIT = 10.0  # longest a `?wait=` request is held
WAIT_STEP = 0.01  # how often a held request looks again (in-process: cheap)


class AgentView(Protocol):
    """What the API needs from the daemon: plain, JSON-ready snapshots of its state."""

    def status(self) -> dict[str, Any]: ...

    def members(self) -> list[dict[str, Any]]: ...

    def host(self, node_id: str | None) -> dict[str, Any] | None: ...

    def vms(self) -> list[dict[str, Any]]: ...


class Refusal(Exception):
    """A control will not do what was asked: `status` is the HTTP code (4xx), the message why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class MigrationControl(Protocol):
    """What the API needs to drive migrations (the daemon's `Migrator` fits).

    `migrate` and `cancel` raise `Refusal` with the reason when they will not act.
    """

    async def migrate(self, vm: str, body: dict[str, Any]) -> str: ...

    async def cancel(self, migration_id: str) -> None: ...

    def migrations(self) -> list[dict[str, Any]]: ...

    def migration(self, migration_id: str) -> dict[str, Any] | None: ...


class VmLifecycle(Protocol):
    """What the API needs to create and run VMs on this host (`vms.VmControl` fits).

    Every method raises `Refusal` with the reason when it will not act.
    """

    async def create(self, body: dict[str, Any]) -> dict[str, Any]: ...

    async def start(self, name: str) -> dict[str, Any]: ...

    async def stop(self, name: str, body: dict[str, Any]) -> dict[str, Any]: ...

    async def delete(self, name: str, body: dict[str, Any]) -> dict[str, Any]: ...


class DrainControl(Protocol):
    """What the API needs to drain this host (`drain.Drain` fits)."""

    async def drain(self) -> dict[str, Any]: ...

    async def undrain(self) -> dict[str, Any]: ...

    def status(self) -> dict[str, Any]: ...


class RebalanceControl(Protocol):
    """What the API needs to show and steer rebalancing (`rebalancer.Rebalancer` fits)."""

    def status(self) -> dict[str, Any]: ...

    def preview(self) -> dict[str, Any]: ...

    async def pause(self) -> dict[str, Any]: ...

    async def resume(self) -> dict[str, Any]: ...


VIEW_KEY = web.AppKey("view", AgentView)
CONTROL_KEY = web.AppKey("migrations", MigrationControl)
VMS_KEY = web.AppKey("vms", VmLifecycle)
DRAIN_KEY = web.AppKey("drain", DrainControl)
REBALANCE_KEY = web.AppKey("rebalance", RebalanceControl)


def build_app(
    view: AgentView,
    migrations: MigrationControl | None = None,
    vms: VmLifecycle | None = None,
    drain: DrainControl | None = None,
    rebalance: RebalanceControl | None = None,
) -> web.Application:
    """The aiohttp application serving `view` (and the controls given) under /v1."""
    app = web.Application(middlewares=[_json_errors])
    app[VIEW_KEY] = view
    if vms is not None:
        app[VMS_KEY] = vms
        app.router.add_post(f"/{API_VERSION}/vms", _create)
        app.router.add_post(f"/{API_VERSION}/vms/{{name}}/start", _start)
        app.router.add_post(f"/{API_VERSION}/vms/{{name}}/stop", _stop)
        app.router.add_delete(f"/{API_VERSION}/vms/{{name}}", _delete)
    if drain is not None:
        app[DRAIN_KEY] = drain
        app.router.add_get(f"/{API_VERSION}/drain", _drain_status)
        app.router.add_post(f"/{API_VERSION}/drain", _drain)
        app.router.add_post(f"/{API_VERSION}/undrain", _undrain)
    if rebalance is not None:
        app[REBALANCE_KEY] = rebalance
        app.router.add_get(f"/{API_VERSION}/rebalance", _rebalance_status)
        app.router.add_get(f"/{API_VERSION}/rebalance/plan", _rebalance_plan)
        app.router.add_post(f"/{API_VERSION}/rebalance/pause", _rebalance_pause)
        app.router.add_post(f"/{API_VERSION}/rebalance/resume", _rebalance_resume)
    if migrations is not None:
        app[CONTROL_KEY] = migrations
        app.router.add_post(f"/{API_VERSION}/vms/{{name}}/migrate", _migrate)
        app.router.add_get(f"/{API_VERSION}/migrations", _migrations)
        app.router.add_get(f"/{API_VERSION}/migrations/{{migration_id}}", _migration)
        app.router.add_post(f"/{API_VERSION}/migrations/{{migration_id}}/cancel", _cancel)
    app.router.add_get(f"/{API_VERSION}/status", _status)
    app.router.add_get(f"/{API_VERSION}/members", _members)
    app.router.add_get(f"/{API_VERSION}/hosts/self", _host)
    app.router.add_get(f"/{API_VERSION}/hosts/{{node_id}}", _host)
    app.router.add_get(f"/{API_VERSION}/vms", _vms)
    return app


async def _status(request: web.Request) -> web.Response:
    return web.json_response(request.app[VIEW_KEY].status())


async def _members(request: web.Request) -> web.Response:
    return web.json_response({"members": request.app[VIEW_KEY].members()})


async def _host(request: web.Request) -> web.Response:
    node_id = request.match_info.get("node_id")
    host = request.app[VIEW_KEY].host(node_id)
    if host is None:
        raise web.HTTPNotFound(reason=f"no host {node_id!r} in this agent's view of the mesh")
    return web.json_response(host)


async def _vms(request: web.Request) -> web.Response:
    return web.json_response({"vms": request.app[VIEW_KEY].vms()})


async def _body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object ({} when there is no body), or 400 saying what is wrong."""
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(reason="the request body is not JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(reason="the request body must be a JSON object")
    return body


async def _controlled(call: Awaitable[dict[str, Any]], status: int = 200) -> web.Response:
    """Run a control's call; its answer as JSON, or its refusal as the HTTP error."""
    try:
        answer = await call
    except Refusal as exc:
        raise _http_error(exc) from None
    return web.json_response(answer, status=status)


async def _create(request: web.Request) -> web.Response:
    return await _controlled(request.app[VMS_KEY].create(await _body(request)), status=201)


async def _start(request: web.Request) -> web.Response:
    return await _controlled(request.app[VMS_KEY].start(request.match_info["name"]))


async def _stop(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    return await _controlled(request.app[VMS_KEY].stop(name, await _body(request)))


async def _delete(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    force = request.query.get("force", "") in ("1", "true", "yes")
    return await _controlled(request.app[VMS_KEY].delete(name, {"force": force}))


async def _drain_status(request: web.Request) -> web.Response:
    return web.json_response(request.app[DRAIN_KEY].status())


async def _drain(request: web.Request) -> web.Response:
    return await _controlled(request.app[DRAIN_KEY].drain(), status=202)


async def _undrain(request: web.Request) -> web.Response:
    return await _controlled(request.app[DRAIN_KEY].undrain())


async def _rebalance_status(request: web.Request) -> web.Response:
    return web.json_response(request.app[REBALANCE_KEY].status())


async def _rebalance_plan(request: web.Request) -> web.Response:
    return web.json_response(request.app[REBALANCE_KEY].preview())


async def _rebalance_pause(request: web.Request) -> web.Response:
    return await _controlled(request.app[REBALANCE_KEY].pause())


async def _rebalance_resume(request: web.Request) -> web.Response:
    return await _controlled(request.app[REBALANCE_KEY].resume())


async def _migrate(request: web.Request) -> web.Response:
    body = await _body(request)
    vm = request.match_info["name"]
    try:
        migration_id = await request.app[CONTROL_KEY].migrate(vm, body)
    except Refusal as exc:
        raise _http_error(exc) from None
    row = request.app[CONTROL_KEY].migration(migration_id) or {}
    answer = {"migration_id": migration_id, "vm": vm, "to": row.get("target")}
    return web.json_response(answer, status=202)


async def _migrations(request: web.Request) -> web.Response:
    return web.json_response({"migrations": request.app[CONTROL_KEY].migrations()})


async def _migration(request: web.Request) -> web.Response:
    """One migration; with `?wait=S`, answered as soon as it ends or after S seconds (at
    most `MAX_WAIT`), so a waiting client learns of the end at once instead of polling."""
    migration_id = request.match_info["migration_id"]
    control = request.app[CONTROL_KEY]
    try:
        wait = min(max(float(request.query.get("wait", "0")), 0.0), MAX_WAIT)
    except ValueError:
        raise web.HTTPBadRequest(reason="wait must be a number of seconds") from None
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        found = control.migration(migration_id)
        if found is None:
            raise web.HTTPNotFound(reason=f"no migration {migration_id!r} on this host")
        if found["outcome"] or asyncio.get_running_loop().time() >= deadline:
            return web.json_response({"migration": found})
        await asyncio.sleep(WAIT_STEP)


async def _cancel(request: web.Request) -> web.Response:
    migration_id = request.match_info["migration_id"]
    try:
        await request.app[CONTROL_KEY].cancel(migration_id)
    except Refusal as exc:
        raise _http_error(exc) from None
    return web.json_response({"migration_id": migration_id, "cancelling": True}, status=202)


_ERRORS: dict[int, type[web.HTTPError]] = {
    404: web.HTTPNotFound,
    409: web.HTTPConflict,
    503: web.HTTPServiceUnavailable,
}


def _http_error(refusal: Refusal) -> web.HTTPError:
    """The HTTP error for a control's refusal (400 for anything not listed)."""
    return _ERRORS.get(refusal.status, web.HTTPBadRequest)(reason=str(refusal))


@web.middleware
async def _json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every error is JSON too, so scripts never have to parse HTML."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPException as exc:
        return web.json_response({"error": exc.reason}, status=exc.status)


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
    ) -> None:
        app = build_app(view, migrations, vms, drain, rebalance)
        self._runner = web.AppRunner(app, access_log=None)
        self.socket_path = Path(socket_path)

    async def start(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # a stale socket from a crashed agent
        await self._runner.setup()
        # umask while binding, so the socket is never briefly group/world-accessible
        old_umask = os.umask(0o177)
        try:
            await web.UnixSite(self._runner, str(self.socket_path)).start()
        finally:
            os.umask(old_umask)
        os.chmod(self.socket_path, 0o600)

    async def close(self) -> None:
        await self._runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
