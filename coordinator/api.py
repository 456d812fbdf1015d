"""The `/v1` HTTP API: aiohttp handlers over the store, the placement and the site links.

Every route is in the OpenAPI document (`openapi.py`), which also says the
role it needs (`x-nova-role`) and the schema of its body; the middleware
checks the bearer token, the role, the rate limit, the leader (a follower
redirects writes to it, 307) and the body, and audits every mutating
request with its result. Errors have one shape:
`{"error": {"code": ..., "message": ..., "field": ...}}`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import BodyPartReader, web

from novacron.agent import catalogue
from novacron.agent.core.templates import MAX_MANIFEST, NAME_RE, VERSION_RE

from .openapi import MAX_PER_PAGE
from .placement import Decision, Request, place
from .store import (
    TERMINAL,
    Conflict,
    Gone,
    NotFound,
    PreconditionFailed,
    Principal,
    StoreError,
    decode_cursor,
    encode_cursor,
)
from .targets import site_targets
from .templates import (
    Template,
    TemplateCatalogue,
    UploadRefused,
    UploadTooLarge,
    VersionTaken,
)
from .tracing import traceparent_of
from .validate import Invalid, nul_at

if TYPE_CHECKING:
    from .service import Coordinator

log = logging.getLogger("novacron.coordinator.api")

MAX_BODY = 1024 * 1024  # bytes of a request body
MAX_WAIT = 300.0  # seconds a blocking query or an operation wait may be held
DEFAULT_PER_PAGE = 100
INDEX_HEADER = "X-Nova-Index"
MUTATING = ("POST", "PUT", "PATCH", "DELETE")
UPLOAD_OVERHEAD = 64 * 1024  # bytes of multipart headers and boundaries an upload may add
OCTETS = "application/octet-stream"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id")
PRINCIPAL: web.RequestKey[Principal | None] = web.RequestKey("principal")  # None: anonymous


def _refuse_nul_in_address(request: web.Request) -> None:
    """PostgreSQL can neither store nor compare text holding a NUL character (SQLite can):
    refused before any handler, on either database, naming the parameter."""
    for name, value in (*request.match_info.items(), *request.query.items()):
        if "\x00" in name or "\x00" in value:
            raise ApiError(400, "invalid", f"{name.strip(chr(0))}: a NUL character", name)


class ApiError(Exception):
    """An answer other than success: status, stable code, message, and the field at fault."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers: dict[str, str] = {}


def error_response(error: ApiError) -> web.Response:
    body = {"error": {"code": error.code, "message": error.message, "field": error.field}}
    return web.json_response(body, status=error.status, headers=error.headers)


def bad(field: str, message: str) -> ApiError:
    return ApiError(400, "invalid", f"{field}: {message}", field)


STORE_ERRORS: dict[type, tuple[int, str]] = {
    NotFound: (404, "not_found"),
    Conflict: (409, "conflict"),
    PreconditionFailed: (412, "precondition_failed"),
    Gone: (403, "token_refused"),
    StoreError: (400, "invalid"),
}


class Api:
    """The routes, bound to one coordinator."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.c = coordinator
        self.store = coordinator.store
        self.doc = coordinator.document
        self.roles: dict[tuple[str, str], str] = {}  # (method, route path) -> role
        self.operation_ids: dict[tuple[str, str], str] = {}
        for path, item in self.doc["paths"].items():
            for method, spec in item.items():
                if method != "parameters":
                    self.roles[(method.upper(), path)] = spec["x-nova-role"]
                    self.operation_ids[(method.upper(), path)] = spec["operationId"]
        # Prometheus' scrape, outside /v1 as Prometheus expects: any token may read it
        # (it names routes and enrolled sites, which every reader may list anyway).
        self.roles[("GET", "/metrics")] = "reader"

    def routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/v1/openapi.json", self.openapi)
        r.add_get("/v1/status", self.status)
        r.add_get("/v1/sites", self.list_sites)
        r.add_post("/v1/sites", self.add_site)
        r.add_get("/v1/sites/{site}", self.get_site)
        r.add_patch("/v1/sites/{site}", self.update_site)
        r.add_delete("/v1/sites/{site}", self.revoke_site)
        r.add_post("/v1/sites/{site}/enrollment", self.new_enrollment)
        r.add_post("/v1/enroll", self.enroll)
        r.add_get("/v1/hosts", self.list_hosts)
        r.add_get("/v1/sites/{site}/hosts/{host}", self.get_host)
        r.add_post("/v1/sites/{site}/hosts/{host}/drain", self.drain)
        r.add_post("/v1/sites/{site}/hosts/{host}/undrain", self.undrain)
        r.add_get("/v1/vms", self.list_vms)
        r.add_post("/v1/vms", self.create_vm)
        r.add_get("/v1/vms/{id}", self.get_vm)
        r.add_delete("/v1/vms/{id}", self.delete_vm)
        r.add_post("/v1/vms/{id}/start", self.start_vm)
        r.add_post("/v1/vms/{id}/stop", self.stop_vm)
        r.add_post("/v1/vms/{id}/migrate", self.migrate_vm)
        r.add_post("/v1/placement/explain", self.explain)
        r.add_get("/v1/operations", self.list_operations)
        r.add_get("/v1/operations/{id}", self.get_operation)
        r.add_delete("/v1/operations/{id}", self.cancel_operation)
        r.add_get("/v1/operations/{id}/wait", self.wait_operation)
        r.add_get("/v1/events", self.events)
        r.add_get("/v1/audit", self.audit)
        r.add_get("/v1/tokens", self.list_tokens)
        r.add_post("/v1/tokens", self.create_token)
        r.add_delete("/v1/tokens/{id}", self.revoke_token)
        r.add_get("/v1/templates", self.list_templates)
        r.add_post("/v1/templates", self.upload_template)
        r.add_get("/v1/templates/{name}", self.get_template)
        r.add_get("/v1/templates/catalogue/index.json", self.catalogue_index)
        r.add_get("/v1/templates/catalogue/manifests/{name}/{manifest}", self.catalogue_manifest)
        r.add_get("/v1/templates/catalogue/files/{sha256}", self.catalogue_file)

    # --- middleware -----------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        request[REQUEST_ID] = request.headers.get("X-Request-Id", "")[:64] or str(uuid.uuid4())
        route = request.match_info.route.resource
        path = route.canonical if route is not None else ""
        key = (request.method, path)
        role = self.roles.get(key)
        request[PRINCIPAL] = None
        try:
            if role is None:
                if path in ("/v1/openapi.json", "/v1/sitelink"):
                    return await handler(request)
                raise _not_routed(request)
            if role != "none":
                request[PRINCIPAL] = await self._authorize(request, role)
            _refuse_nul_in_address(request)
            if request.method in MUTATING and not self.c.is_leader():
                raise self._not_leader(request)
            response = await handler(request)
        except ApiError as exc:
            response = error_response(exc)
        except web.HTTPRequestEntityTooLarge:
            response = error_response(
                ApiError(413, "too_large", f"request body over {MAX_BODY} bytes")
            )
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = error_response(ApiError(exc.status, "http", exc.reason))
        except StoreError as exc:
            status, code = STORE_ERRORS.get(type(exc), (400, "invalid"))
            response = error_response(ApiError(status, code, str(exc)))
        if request.method in MUTATING and key in self.roles:
            await self._audit(request, self.operation_ids[key], response)
        response.headers["X-Request-Id"] = request[REQUEST_ID]
        return response

    async def _authorize(self, request: web.Request, role: str) -> Principal:
        header = request.headers.get("Authorization", "")
        scheme, _, bearer = header.partition(" ")
        if scheme.lower() != "bearer" or not bearer.strip():
            raise ApiError(401, "unauthorized", "no bearer token: send Authorization: Bearer ...")
        principal = await self.store.authenticate(bearer.strip())
        if principal is None:
            raise ApiError(401, "unauthorized", "token unknown, malformed or revoked")
        request[PRINCIPAL] = principal
        wait = self.c.limiter.take(principal.token_id or principal.name, time.monotonic())
        if wait > 0:
            error = ApiError(429, "rate_limited", f"too many requests; retry in {wait:.2f} s")
            error.headers["Retry-After"] = str(max(1, round(wait + 0.5)))
            raise error
        if not principal.may(role):
            raise ApiError(
                403, "forbidden", f"{principal.name} is a {principal.role}: this needs {role}"
            )
        return principal

    def _not_leader(self, request: web.Request) -> ApiError:
        leader = self.c.leader_url()
        if leader:
            error = ApiError(307, "not_leader", f"this coordinator does not lead; ask {leader}")
            error.headers["Location"] = leader.rstrip("/") + str(request.rel_url)
            return error
        return ApiError(503, "no_leader", "no coordinator leads right now; try again shortly")

    async def _audit(self, request: web.Request, action: str, response: web.StreamResponse) -> None:
        principal = request[PRINCIPAL] or Principal("anonymous", "none")
        target = "/".join(str(v) for v in request.match_info.values())
        detail = ""
        if isinstance(response, web.Response) and response.status >= 400 and response.body:
            detail = bytes(response.body)[:512].decode(errors="replace")  # type: ignore[arg-type]
        await self.store.audit(
            principal,
            request.method,
            request.path,
            action,
            target,
            response.status,
            detail,
            request[REQUEST_ID],
        )

    # --- helpers ---------------------------------------------------------------------------

    async def _body(self, request: web.Request, schema: str) -> dict[str, Any]:
        if request.content_length is not None and request.content_length > MAX_BODY:
            raise ApiError(413, "too_large", f"request body over {MAX_BODY} bytes")
        raw = await request.read()
        try:
            body = json.loads(raw or b"{}")
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, "malformed_json", f"body is not JSON: {exc}") from None
        try:
            self.c.validator.check(body, {"$ref": f"#/components/schemas/{schema}"})
        except Invalid as exc:
            raise ApiError(400, "invalid", str(exc), exc.field or None) from None
        field = nul_at(body)
        if field is not None:
            raise ApiError(400, "invalid", f"{field or 'body'}: a NUL character", field or None)
        return body  # type: ignore[no-any-return]

    async def _page_size(self, request: web.Request) -> int:
        return _int_query(request, "per_page", DEFAULT_PER_PAGE, 1, MAX_PER_PAGE)

    async def _block(self, request: web.Request, table: str) -> int:
        """Hold a blocking query (`index` + `wait`) until `table` moves past `index`."""
        index = _int_query(request, "index", 0, 0, 2**53 - 1)
        wait = _duration(request.query.get("wait"))
        if "index" in request.query and wait > 0:
            return await self.store.wait_for(table, index, wait)
        return await self.store.index(table)

    def _listing(
        self, items: list[dict[str, Any]], next_token: str | None, index: int
    ) -> web.Response:
        return web.json_response(
            {"items": items, "next_token": next_token}, headers={INDEX_HEADER: str(index)}
        )

    def _accepted(self, operation: dict[str, Any]) -> web.Response:
        self.c.kick(operation["site"])
        return web.json_response(
            operation, status=202, headers={"Location": f"/v1/operations/{operation['id']}"}
        )

    # --- status and document ---------------------------------------------------------------

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(self.doc)

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "coordinator": self.c.node,
                "leader": self.c.is_leader(),
                "leader_url": self.c.leader_url(),
                "database": self.store.db.dialect,
                "index": await self.store.index(),
                "sites_connected": self.c.links.count(),
                "version": "1",
            }
        )

    # --- sites ------------------------------------------------------------------------------

    async def list_sites(self, request: web.Request) -> web.Response:
        index = await self._block(request, "sites")
        sites = await self.store.sites()
        items, token = _page_in_memory(request, sites, "name", await self._page_size(request))
        return self._listing(items, token, index)

    async def add_site(self, request: web.Request) -> web.Response:
        body = await self._body(request, "SiteCreate")
        site, token = await self.store.add_site(
            body["name"], body.get("labels", {}), float(body.get("cost", 0)), _who(request)
        )
        return web.json_response({"site": site, "enrollment_token": token}, status=201)

    async def get_site(self, request: web.Request) -> web.Response:
        site = await self.store.site(request.match_info["site"])
        return web.json_response(site, headers={"ETag": f'"{site["revision"]}"'})

    async def update_site(self, request: web.Request) -> web.Response:
        body = await self._body(request, "SiteUpdate")
        revision = _if_match(request)
        site = await self.store.update_site(
            request.match_info["site"],
            body.get("labels"),
            float(body["cost"]) if "cost" in body else None,
            revision,
            _who(request),
        )
        return web.json_response(site, headers={"ETag": f'"{site["revision"]}"'})

    async def revoke_site(self, request: web.Request) -> web.Response:
        site = await self.store.revoke_site(request.match_info["site"], _who(request))
        await self.c.links.drop(site["name"], "the site was revoked")
        return web.json_response(site)

    async def new_enrollment(self, request: web.Request) -> web.Response:
        name = request.match_info["site"]
        token = await self.store.new_enrollment(name, _who(request))
        return web.json_response({"site": name, "enrollment_token": token}, status=201)

    async def enroll(self, request: web.Request) -> web.Response:
        body = await self._body(request, "Enroll")
        ca_public = self.c.check_enrollment(body)
        site = await self.store.enroll(body["token"], ca_public)
        log.info("site enrolled", extra={"fields": {"site": site["name"]}})
        return web.json_response(site)

    # --- hosts ------------------------------------------------------------------------------

    async def list_hosts(self, request: web.Request) -> web.Response:
        index = await self._block(request, "hosts")
        hosts = await self.store.hosts(request.query.get("site") or None)
        for host in hosts:
            host["key"] = f"{host['site']}/{host['node_id']}"
        items, token = _page_in_memory(request, hosts, "key", await self._page_size(request))
        for host in items:
            del host["key"]
        return self._listing(items, token, index)

    async def get_host(self, request: web.Request) -> web.Response:
        host = await self.store.host(request.match_info["site"], request.match_info["host"])
        return web.json_response(host)

    async def drain(self, request: web.Request) -> web.Response:
        return await self._host_command(request, "drain")

    async def undrain(self, request: web.Request) -> web.Response:
        return await self._host_command(request, "undrain")

    async def _host_command(self, request: web.Request, kind: str) -> web.Response:
        site, node = request.match_info["site"], request.match_info["host"]
        key = _command_key(request)
        existing = await self._repeated(request, key)
        if existing is not None:
            return existing
        await self.store.host(site, node)  # 404 if the site's view has no such host
        command = {"key": key, "kind": kind, "target": node}
        operation = await self._operation(request, kind, site, node, {}, command)
        return self._accepted(operation)

    # --- VMs --------------------------------------------------------------------------------

    async def list_vms(self, request: web.Request) -> web.Response:
        index = await self._block(request, "vms")
        labels = {}
        for item in request.query.getall("label", []):
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise bad("label", f"{item[:64]!r} is not KEY=VALUE")
            labels[key] = value
        after = None
        if "next_token" in request.query:
            cursor = decode_cursor(request.query["next_token"], 3)
            if cursor is None:
                raise bad("next_token", "not a token this API gave out")
            after = (cursor[0], cursor[1], cursor[2])
        items, last = await self.store.vms(
            site=request.query.get("site", ""),
            host=request.query.get("host", ""),
            state=request.query.get("state", ""),
            labels=labels,
            per_page=await self._page_size(request),
            after=after,
        )
        return self._listing(items, encode_cursor(last) if last else None, index)

    async def get_vm(self, request: web.Request) -> web.Response:
        site, name = _vm_id(request)
        return web.json_response(await self.store.vm(site, name))

    async def create_vm(self, request: web.Request) -> web.Response:
        body = await self._body(request, "VmCreate")
        key = _command_key(request)
        existing = await self._repeated(request, key)
        if existing is not None:
            return existing
        decision = await self._place(body)
        if decision.chosen is None:
            raise ApiError(409, "no_placement", decision.reason)
        site = decision.chosen
        if await self.store.vm_exists(site, body["name"]):
            raise ApiError(409, "conflict", f"site {site} already runs a VM named {body['name']}")
        spec: dict[str, Any] = {
            k: body[k]
            for k in ("name", "vcpus", "memory_mib", "kernel", "initrd", "cmdline", "labels")
            if k in body
        }
        spec["disks"] = [
            {"base": d["base"], "size_mib": d.get("size_mib", 0)} for d in body.get("disks", [])
        ]
        spec["start"] = body.get("start", True)
        command = {"key": key, "kind": "create", "spec": spec}
        request_doc = {**body, "placement": decision.reason}
        operation = await self._operation(
            request, "create", site, body["name"], request_doc, command
        )
        return self._accepted(operation)

    async def start_vm(self, request: web.Request) -> web.Response:
        return await self._vm_command(request, "start", {})

    async def stop_vm(self, request: web.Request) -> web.Response:
        body = await self._body(request, "VmStop")
        return await self._vm_command(request, "stop", {"stop_timeout": body.get("timeout", 30.0)})

    async def delete_vm(self, request: web.Request) -> web.Response:
        force = request.query.get("force", "false")
        if force not in ("true", "false"):
            raise bad("force", "must be true or false")
        return await self._vm_command(request, "delete", {"force": force == "true"})

    async def migrate_vm(self, request: web.Request) -> web.Response:
        body = await self._body(request, "VmMigrate")
        return await self._vm_command(request, "migrate", {"target": body.get("to", "")})

    async def _vm_command(
        self, request: web.Request, kind: str, extra: dict[str, Any]
    ) -> web.Response:
        site, name = _vm_id(request)
        key = _command_key(request)
        existing = await self._repeated(request, key)
        if existing is not None:  # even if the VM is gone since: the first request's answer
            return existing
        await self.store.vm(site, name)  # 404 if no site reported it
        command = {"key": key, "kind": kind, "vm": name, **extra}
        operation = await self._operation(request, kind, site, name, extra, command)
        return self._accepted(operation)

    async def _operation(
        self,
        request: web.Request,
        kind: str,
        site: str,
        target: str,
        body: dict[str, Any],
        command: dict[str, Any],
    ) -> dict[str, Any]:
        traceparent = traceparent_of(request)
        if traceparent:  # the site's spans of this command join the request's trace
            command = {**command, "traceparent": traceparent}
        return await self.store.start_operation(kind, site, target, body, command, _who(request))

    async def _repeated(self, request: web.Request, key: str) -> web.Response | None:
        """The answer to a request already made with this Idempotency-Key, if any."""
        existing = await self.store.operation_for_key(key)
        return self._accepted(existing) if existing is not None else None

    async def _place(self, body: dict[str, Any]) -> Decision:
        constraints = body.get("constraints", {})
        request = Request(
            vcpus=body["vcpus"],
            memory_mib=body["memory_mib"],
            target=constraints.get("site", ""),
            labels=constraints.get("labels", {}),
            anti_affinity=constraints.get("anti_affinity", ""),
            policy=body.get("policy", "spread"),
        )
        return place(await site_targets(self.store, request), request)

    async def explain(self, request: web.Request) -> web.Response:
        body = await self._body(request, "PlacementRequest")
        decision = await self._place(body)
        return web.json_response(
            {
                "chosen": decision.chosen,
                "reason": decision.reason,
                "candidates": [
                    {
                        "name": c.name,
                        "kind": c.kind,
                        "fits": c.fits,
                        "reason": c.reason,
                        "free_vcpus": c.free_vcpus,
                        "free_memory_mib": c.free_memory_mib,
                        "cost": c.cost,
                    }
                    for c in decision.candidates
                ],
            }
        )

    # --- operations -------------------------------------------------------------------------

    async def list_operations(self, request: web.Request) -> web.Response:
        index = await self._block(request, "operations")
        after = None
        if "next_token" in request.query:
            cursor = decode_cursor(request.query["next_token"], 1)
            if cursor is None or not re.fullmatch(r"[0-9.e+-]+\|[0-9a-f-]+", cursor[0]):
                raise bad("next_token", "not a token this API gave out")
            after = cursor[0]
        items, last = await self.store.operations(await self._page_size(request), after)
        return self._listing(items, encode_cursor(last) if last else None, index)

    async def get_operation(self, request: web.Request) -> web.Response:
        return web.json_response(await self.c.operation_view(request.match_info["id"]))

    async def cancel_operation(self, request: web.Request) -> web.Response:
        op = await self.store.cancel_operation(request.match_info["id"], _who(request))
        return web.json_response(op)

    async def wait_operation(self, request: web.Request) -> web.Response:
        op_id = request.match_info["id"]
        timeout = _float_query(request, "timeout", 30.0, 0.0, MAX_WAIT)
        loop_time = time.monotonic
        deadline = loop_time() + timeout
        op = await self.c.operation_view(op_id)
        while op["status"] not in TERMINAL and loop_time() < deadline:
            index = await self.store.index("operations")
            await self.store.wait_for("operations", index, deadline - loop_time())
            op = await self.c.operation_view(op_id)
        return web.json_response(op)

    # --- events -------------------------------------------------------------------------------

    async def events(self, request: web.Request) -> web.StreamResponse:
        index = _int_query(request, "index", 0, 0, 2**53 - 1)
        wait = _duration(request.query.get("wait"))
        sse = "text/event-stream" in request.headers.get("Accept", "")
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream" if sse else "application/x-ndjson",
                "Cache-Control": "no-cache",
            }
        )
        await response.prepare(request)
        deadline = time.monotonic() + wait
        while True:
            batch = await self.store.events_after(index, 500)
            for row in batch:
                line = json.dumps(cloud_event(row), separators=(",", ":"))
                if sse:
                    await response.write(f"id: {row['idx']}\ndata: {line}\n\n".encode())
                else:
                    await response.write(line.encode() + b"\n")
                index = int(row["idx"])
            left = deadline - time.monotonic()
            if len(batch) == 500:
                continue
            if left <= 0:
                break
            await self.store.wait_for("index", index, left)
        await response.write_eof()
        return response

    # --- audit and tokens ------------------------------------------------------------------

    async def audit(self, request: web.Request) -> web.Response:
        before = None
        if "next_token" in request.query:
            cursor = decode_cursor(request.query["next_token"], 1)
            if cursor is None or not cursor[0].isdigit():
                raise bad("next_token", "not a token this API gave out")
            before = int(cursor[0])
        rows, last = await self.store.audit_entries(await self._page_size(request), before)
        token = encode_cursor(str(last)) if last is not None else None
        return self._listing(rows, token, await self.store.index())

    async def list_tokens(self, request: web.Request) -> web.Response:
        tokens = await self.store.tokens()
        return self._listing(tokens, None, await self.store.index("tokens"))

    async def create_token(self, request: web.Request) -> web.Response:
        body = await self._body(request, "TokenCreate")
        token, secret = await self.store.create_token(
            body["name"], body["role"], body.get("tenant", ""), _who(request)
        )
        return web.json_response({"token": token, "secret": secret}, status=201)

    async def revoke_token(self, request: web.Request) -> web.Response:
        token = await self.store.revoke_token(request.match_info["id"], _who(request))
        return web.json_response(token)

    # --- templates --------------------------------------------------------------------------

    def _catalogue(self) -> TemplateCatalogue:
        if self.c.templates is None:
            raise ApiError(503, "no_catalogue", "this coordinator serves no template catalogue")
        return self.c.templates

    async def list_templates(self, request: web.Request) -> web.Response:
        found = await asyncio.to_thread(
            self._catalogue().search, request.query.get("q", ""), request.query.get("os", "")
        )
        rows = [_template_row(t) for t in found]
        items, token = _page_in_memory(request, rows, "name", await self._page_size(request))
        return self._listing(items, token, await self.store.index())

    async def get_template(self, request: web.Request) -> web.Response:
        name = _template_name(request)
        for template in await asyncio.to_thread(self._catalogue().templates):
            if template.name == name:
                return web.json_response(
                    {"name": name, "versions": [catalogue.describe(e) for e in template.versions]}
                )
        raise ApiError(404, "not_found", f"no template {name}")

    async def upload_template(self, request: web.Request) -> web.Response:
        """A signed manifest (part `manifest`, first), then a part per file named by its role."""
        into = self._catalogue()
        limit = into.max_bytes + MAX_MANIFEST + UPLOAD_OVERHEAD
        if request.content_length is not None and request.content_length > limit:
            raise ApiError(413, "too_large", f"a template upload is at most {limit} bytes")
        if request.content_type != "multipart/form-data":
            raise bad("body", "multipart/form-data: the part manifest, then image, kernel, initrd")
        upload = None
        try:
            parts = await request.multipart()
            first = await parts.next()
            if not isinstance(first, BodyPartReader) or first.name != "manifest":
                raise bad("manifest", "the first part must be the signed manifest")
            upload = into.upload(await _read_part(first, MAX_MANIFEST))
            while (part := await parts.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    raise bad("body", "nested multipart is not a template file")
                receiving = upload.receive(part.name or "")
                try:
                    while chunk := await part.read_chunk(catalogue.CHUNK):
                        receiving.feed(chunk)
                    receiving.finish()
                finally:
                    receiving.close()
            held = catalogue.published(into.root, upload.manifest.name, upload.manifest.version)
            entry = await upload.commit()
        except UploadTooLarge as exc:
            raise ApiError(413, "too_large", str(exc), exc.field) from None
        except VersionTaken as exc:
            raise ApiError(409, "conflict", str(exc), exc.field) from None
        except UploadRefused as exc:
            raise bad(exc.field, str(exc)) from None
        except (ValueError, AssertionError) as exc:  # aiohttp's word for a malformed multipart
            raise bad("body", f"not a readable multipart body: {exc}") from None
        finally:
            if upload is not None:
                upload.discard()
        ref = f"{entry.name}:{entry.version}"
        log.info("template uploaded", extra={"fields": {"template": ref, "again": bool(held)}})
        return web.json_response(catalogue.describe(entry), status=200 if held else 201)

    async def catalogue_index(self, request: web.Request) -> web.StreamResponse:
        return self._catalogue_file(catalogue.INDEX, "application/json")

    async def catalogue_manifest(self, request: web.Request) -> web.StreamResponse:
        name = _template_name(request)
        version = request.match_info["manifest"].removesuffix(".manifest")
        if not request.match_info["manifest"].endswith(".manifest") or not VERSION_RE.fullmatch(
            version
        ):
            raise bad("manifest", "VERSION.manifest, the version as 1, 12.4 or 2024.6.1")
        return self._catalogue_file(catalogue.manifest_path(name, version), OCTETS)

    async def catalogue_file(self, request: web.Request) -> web.StreamResponse:
        digest = request.match_info["sha256"]
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise bad("sha256", "64 lower-case hexadecimal digits")
        return self._catalogue_file(catalogue.file_path(digest), OCTETS)

    def _catalogue_file(self, relative: str, content_type: str) -> web.StreamResponse:
        path = self._catalogue().path(relative)
        if path is None:
            raise ApiError(404, "not_found", f"the catalogue has no {relative}")
        return web.FileResponse(path, headers={"Content-Type": content_type})


# --- request parts ------------------------------------------------------------------------------


def _who(request: web.Request) -> Principal:
    """The authenticated principal of a request (the middleware checked the token)."""
    principal = request[PRINCIPAL]
    if principal is None:
        raise ApiError(401, "unauthorized", "no bearer token: send Authorization: Bearer ...")
    return principal


def _template_name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not NAME_RE.fullmatch(name):
        raise bad("name", "a template name: lower case letters, digits, '.', '_', '-'")
    return name


def _template_row(template: Template) -> dict[str, Any]:
    """A template as lists show it: its newest version, and every version's number."""
    return {
        **catalogue.describe(template.versions[0]),
        "versions": [e.version for e in template.versions],
    }


async def _read_part(part: BodyPartReader, limit: int) -> bytes:
    data = bytearray()
    while chunk := await part.read_chunk(catalogue.CHUNK):
        data += chunk
        if len(data) > limit:
            raise UploadTooLarge(part.name or "", f"the {part.name} part is over {limit} bytes")
    return bytes(data)


def _not_routed(request: web.Request) -> ApiError:
    return ApiError(404, "not_found", f"no route {request.method} {request.path[:200]}")


def _vm_id(request: web.Request) -> tuple[str, str]:
    site, sep, name = request.match_info["id"].partition(":")
    if not sep or not site or not name:
        raise bad("id", "a VM id is SITE:NAME")
    return site, name


def _command_key(request: web.Request) -> str:
    """The command's idempotency key: the client's Idempotency-Key (per principal), or new."""
    given = request.headers.get("Idempotency-Key", "")
    if not given:
        return str(uuid.uuid4())
    if len(given) > 128 or not given.isprintable():
        raise bad("Idempotency-Key", "at most 128 printable characters")
    principal = _who(request)
    return f"{principal.token_id or principal.name}:{given}"


def _int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not re.fullmatch(r"[0-9]{1,16}", raw) or not low <= int(raw) <= high:
        raise bad(name, f"must be a whole number from {low} to {high}")
    return int(raw)


def _float_query(request: web.Request, name: str, default: float, low: float, high: float) -> float:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise bad(name, "must be a number") from None
    if not low <= value <= high:  # also refuses nan
        raise bad(name, f"must be from {low:g} to {high:g}")
    return value


def _duration(raw: str | None) -> float:
    """A wait such as 30s, 500ms or 2m, in seconds (0 if absent), at most MAX_WAIT."""
    if raw is None:
        return 0.0
    match = re.fullmatch(r"([0-9]{1,6})(ms|s|m)", raw)
    if match is None:
        raise bad("wait", "a duration such as 30s, 500ms or 2m")
    value = int(match[1]) * {"ms": 0.001, "s": 1.0, "m": 60.0}[match[2]]
    if value > MAX_WAIT:
        raise bad("wait", f"at most {MAX_WAIT:g} s")
    return value


def _if_match(request: web.Request) -> int | None:
    raw = request.headers.get("If-Match")
    if raw is None:
        return None
    digits = raw.strip().strip('"')
    if not digits.isdigit() or len(digits) > 16:
        raise bad("If-Match", "an ETag this API gave out (the site's revision)")
    return int(digits)


def _page_in_memory(
    request: web.Request, rows: list[dict[str, Any]], key: str, per_page: int
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of an ordered list small enough to read whole (sites, hosts)."""
    if "next_token" in request.query:
        cursor = decode_cursor(request.query["next_token"], 1)
        if cursor is None:
            raise bad("next_token", "not a token this API gave out")
        rows = [r for r in rows if r[key] > cursor[0]]
    page = rows[:per_page]
    more = len(rows) > per_page
    return page, (encode_cursor(str(page[-1][key])) if more and page else None)


def cloud_event(row: dict[str, Any]) -> dict[str, Any]:
    """An event row as a CloudEvents 1.0 JSON event; `novaindex` is the global index."""
    return {
        "specversion": "1.0",
        "id": str(row["idx"]),
        "source": "/novacron/coordinator",
        "type": f"io.novacron.{row['type']}",
        "subject": row["subject"],
        "time": datetime.fromtimestamp(row["at"], UTC).isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "novaindex": row["idx"],
        "novasite": row["site"],
        "data": row["data"],
    }
