"""The `/v1` API's OpenAPI 3.1 document, built here and checked in as `openapi.json`.

The document is the API's one description: the server validates every
request body and query against it (`validate.py`), serves it at
`/v1/openapi.json`, and the tests check that the served routes are exactly
its paths and that answers match it. After changing this file, regenerate
the checked-in copy: `python -m novacron.coordinator.openapi > coordinator/openapi.json`.
"""

from __future__ import annotations

import json
import sys
from typing import Any

VM_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
SITE_NAME = r"^[a-z0-9][a-z0-9-]{0,62}$"
LABEL_KEY = r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,62}$"
MAX_PER_PAGE = 1000

S = dict[str, Any]


def ref(name: str) -> S:
    return {"$ref": f"#/components/schemas/{name}"}


def string(max_length: int = 256, **extra: Any) -> S:
    return {"type": "string", "maxLength": max_length, **extra}


LABELS: S = {
    "type": "object",
    "maxProperties": 64,
    "propertyNames": {"pattern": LABEL_KEY, "maxLength": 63},
    "additionalProperties": string(256),
}


def obj(properties: S, required: tuple[str, ...] = (), closed: bool = True) -> S:
    schema: S = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    return schema


def page_of(item: str) -> S:
    return obj(
        {
            "items": {"type": "array", "items": ref(item)},
            "next_token": {"type": ["string", "null"]},
        },
        ("items", "next_token"),
        closed=False,
    )


NULLABLE_NUMBER: S = {"type": ["number", "null"]}

SCHEMAS: S = {
    "Error": obj(
        {
            "error": obj(
                {
                    "code": string(64),
                    "message": string(4096),
                    "field": {"type": ["string", "null"]},
                },
                ("code", "message"),
                closed=False,
            )
        },
        ("error",),
        closed=False,
    ),
    "Status": obj(
        {
            "coordinator": {"type": "string"},
            "leader": {"type": "boolean"},
            "leader_url": {"type": "string"},
            "database": {"type": "string"},
            "index": {"type": "integer"},
            "sites_connected": {"type": "integer"},
            "version": {"type": "string"},
        },
        ("coordinator", "leader", "database", "index"),
        closed=False,
    ),
    "SiteCreate": obj(
        {
            "name": string(63, pattern=SITE_NAME),
            "labels": LABELS,
            "cost": {"type": "number", "minimum": 0, "maximum": 1e9},
        },
        ("name",),
    ),
    "SiteUpdate": obj(
        {"labels": LABELS, "cost": {"type": "number", "minimum": 0, "maximum": 1e9}},
    ),
    "Site": obj(
        {
            "name": {"type": "string"},
            "state": {"type": "string", "enum": ["pending", "enrolled", "revoked"]},
            "ca_public": {"type": ["string", "null"]},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "cost": {"type": "number"},
            "created_at": {"type": "number"},
            "created_by": {"type": "string"},
            "enrolled_at": NULLABLE_NUMBER,
            "connected": {"type": "boolean"},
            "gateway": {"type": "string"},
            "last_seen": NULLABLE_NUMBER,
            "revision": {"type": "integer"},
        },
        ("name", "state", "connected", "revision"),
        closed=False,
    ),
    "SiteCreated": obj(
        {"site": ref("Site"), "enrollment_token": {"type": "string"}},
        ("site", "enrollment_token"),
        closed=False,
    ),
    "EnrollmentToken": obj(
        {"site": {"type": "string"}, "enrollment_token": {"type": "string"}},
        ("site", "enrollment_token"),
        closed=False,
    ),
    "Enroll": obj(
        {
            "token": string(128),
            "ca_public": string(64),
            "certificate": string(8192),
            "signature": string(128),
        },
        ("token", "ca_public", "certificate", "signature"),
    ),
    "Host": obj(
        {
            "site": {"type": "string"},
            "node_id": {"type": "string"},
            "state": {"type": "string"},
            "record_version": {"type": "integer"},
            "capacity": {"type": "object"},
            "usage": {"type": "object"},
            "vms": {"type": "object"},
            "load": {"type": "number"},
            "labels": {"type": "object"},
            "draining": {"type": "boolean"},
            "address": {"type": "string"},
            "vm_count": {"type": "integer"},
        },
        ("site", "node_id", "state", "draining"),
        closed=False,
    ),
    "Vm": obj(
        {
            "id": {"type": "string"},
            "site": {"type": "string"},
            "host": {"type": "string"},
            "name": {"type": "string"},
            "uuid": {"type": "string"},
            "state": {"type": "string"},
            "vcpus": {"type": "integer"},
            "memory_mib": {"type": "integer"},
            "cpu_load": {"type": "number"},
            "labels": {"type": "object"},
        },
        ("id", "site", "host", "name", "state"),
        closed=False,
    ),
    "VmDetail": {
        "allOf": [
            ref("Vm"),
            obj(
                {
                    "history": {"type": "array", "items": {"type": "object"}},
                    "copies": {"type": "array", "items": {"type": "object"}},
                },
                ("history", "copies"),
                closed=False,
            ),
        ]
    },
    "Constraints": obj(
        {
            "site": string(63, pattern=SITE_NAME),
            "labels": LABELS,
            "anti_affinity": string(256),
        }
    ),
    "VmCreate": obj(
        {
            "name": string(63, pattern=VM_NAME),
            "vcpus": {"type": "integer", "minimum": 1, "maximum": 256},
            "memory_mib": {"type": "integer", "minimum": 1, "maximum": 1024 * 1024},
            "kernel": string(1024),
            "initrd": string(1024),
            "cmdline": string(2048),
            "disks": {
                "type": "array",
                "maxItems": 16,
                "items": obj(
                    {
                        "base": string(1024, minLength=1),
                        "size_mib": {"type": "integer", "minimum": 1, "maximum": 64 * 1024 * 1024},
                    },
                    ("base",),
                ),
            },
            "labels": LABELS,
            "start": {"type": "boolean"},
            "constraints": ref("Constraints"),
            "policy": {"type": "string", "enum": ["spread", "pack", "cheapest"]},
        },
        ("name", "vcpus", "memory_mib"),
    ),
    "PlacementRequest": obj(
        {
            "vcpus": {"type": "integer", "minimum": 1, "maximum": 256},
            "memory_mib": {"type": "integer", "minimum": 1, "maximum": 1024 * 1024},
            "constraints": ref("Constraints"),
            "policy": {"type": "string", "enum": ["spread", "pack", "cheapest"]},
        },
        ("vcpus", "memory_mib"),
    ),
    "Candidate": obj(
        {
            "name": {"type": "string"},
            "kind": {"type": "string"},
            "fits": {"type": "boolean"},
            "reason": {"type": "string"},
            "free_vcpus": {"type": "number"},
            "free_memory_mib": {"type": "integer"},
            "cost": {"type": "number"},
        },
        ("name", "kind", "fits", "reason"),
        closed=False,
    ),
    "Explain": obj(
        {
            "chosen": {"type": ["string", "null"]},
            "reason": {"type": "string"},
            "candidates": {"type": "array", "items": ref("Candidate")},
        },
        ("chosen", "reason", "candidates"),
        closed=False,
    ),
    "VmStop": obj({"timeout": {"type": "number", "minimum": 0, "maximum": 3600}}),
    "VmMigrate": obj({"to": string(128, minLength=1)}),
    "Operation": obj(
        {
            "id": {"type": "string"},
            "kind": {"type": "string"},
            "status": {
                "type": "string",
                "enum": ["pending", "running", "succeeded", "failed", "cancelled"],
            },
            "site": {"type": "string"},
            "target": {"type": "string"},
            "progress": {"type": "integer"},
            "detail": {"type": "string"},
            "error": {"type": ["object", "null"]},
            "request": {"type": "object"},
            "result": {"type": "object"},
            "created_by": {"type": "string"},
            "created_at": {"type": "number"},
            "updated_at": {"type": "number"},
        },
        ("id", "kind", "status", "progress", "detail"),
        closed=False,
    ),
    "TokenCreate": obj(
        {
            "name": string(64, minLength=1),
            "role": {"type": "string", "enum": ["reader", "operator", "admin"]},
            "tenant": string(64),
        },
        ("name", "role"),
    ),
    "Token": obj(
        {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "role": {"type": "string"},
            "tenant": {"type": "string"},
            "created_at": {"type": "number"},
            "created_by": {"type": "string"},
            "revoked_at": NULLABLE_NUMBER,
        },
        ("id", "name", "role"),
        closed=False,
    ),
    "TokenCreated": obj(
        {"token": ref("Token"), "secret": {"type": "string"}}, ("token", "secret"), closed=False
    ),
    "AuditEntry": obj(
        {
            "id": {"type": "integer"},
            "at": {"type": "number"},
            "principal": {"type": "string"},
            "role": {"type": "string"},
            "method": {"type": "string"},
            "path": {"type": "string"},
            "action": {"type": "string"},
            "target": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
        },
        ("id", "at", "principal", "method", "path", "status"),
        closed=False,
    ),
    "SiteList": page_of("Site"),
    "HostList": page_of("Host"),
    "VmList": page_of("Vm"),
    "OperationList": page_of("Operation"),
    "TokenList": page_of("Token"),
    "AuditList": page_of("AuditEntry"),
    "TemplateVersion": obj(
        {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "os": {"type": "string"},
            "description": {"type": "string"},
            "publisher": {"type": "string"},
            "publisher_key": {"type": "string"},
            "image_sha256": {"type": "string"},
            "size": {"type": "integer"},
        },
        ("name", "version", "image_sha256", "size"),
        closed=False,
    ),
    "Template": {
        "allOf": [
            ref("TemplateVersion"),
            obj(
                {"versions": {"type": "array", "items": {"type": "string"}}},
                ("versions",),
                closed=False,
            ),
        ]
    },
    "TemplateList": page_of("Template"),
    "TemplateDetail": obj(
        {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": ref("TemplateVersion")},
        },
        ("name", "versions"),
        closed=False,
    ),
    "TemplateUpload": obj(
        {
            "manifest": {"type": "string", "contentMediaType": "application/octet-stream"},
            "image": {"type": "string", "contentMediaType": "application/octet-stream"},
            "kernel": {"type": "string", "contentMediaType": "application/octet-stream"},
            "initrd": {"type": "string", "contentMediaType": "application/octet-stream"},
        },
        ("manifest", "image"),
    ),
    "CatalogueIndex": obj(
        {
            "format": {"type": "integer"},
            "templates": {"type": "array", "items": ref("TemplateVersion")},
        },
        ("format", "templates"),
        closed=False,
    ),
}

PARAMETERS: S = {
    "per_page": {
        "name": "per_page",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PER_PAGE},
    },
    "next_token": {"name": "next_token", "in": "query", "schema": string(512)},
    "index": {
        "name": "index",
        "in": "query",
        "description": "with wait: answer when the list's index is above this",
        "schema": {"type": "integer", "minimum": 0, "maximum": 2**53 - 1},
    },
    "wait": {
        "name": "wait",
        "in": "query",
        "description": "how long to hold a blocking query: 30s, 500ms, 2m (at most 5m)",
        "schema": string(16, pattern=r"^[0-9]{1,6}(ms|s|m)$"),
    },
    "site_filter": {"name": "site", "in": "query", "schema": string(63)},
    "host_filter": {"name": "host", "in": "query", "schema": string(128)},
    "state_filter": {"name": "state", "in": "query", "schema": string(32)},
    "label_filter": {
        "name": "label",
        "in": "query",
        "description": "KEY=VALUE; repeat for several (all must match)",
        "schema": {"type": "array", "maxItems": 16, "items": string(320, pattern="^[^=]+=.*$")},
        "style": "form",
        "explode": True,
    },
    "site": {"name": "site", "in": "path", "required": True, "schema": string(63)},
    "host": {"name": "host", "in": "path", "required": True, "schema": string(128)},
    "vm": {
        "name": "id",
        "in": "path",
        "required": True,
        "description": "SITE:NAME",
        "schema": string(200),
    },
    "operation": {"name": "id", "in": "path", "required": True, "schema": string(64)},
    "token": {"name": "id", "in": "path", "required": True, "schema": string(64)},
    "if_match": {
        "name": "If-Match",
        "in": "header",
        "description": "the site's revision (its ETag): refused with 412 if it changed",
        "schema": string(64),
    },
    "force": {"name": "force", "in": "query", "schema": {"type": "boolean"}},
    "q": {
        "name": "q",
        "in": "query",
        "description": "text in a template's name, description or OS (any case)",
        "schema": string(256),
    },
    "os_filter": {
        "name": "os",
        "in": "query",
        "description": "text in a template's OS (any case)",
        "schema": string(256),
    },
    "template": {"name": "name", "in": "path", "required": True, "schema": string(63)},
    "manifest": {
        "name": "manifest",
        "in": "path",
        "required": True,
        "description": "VERSION.manifest",
        "schema": string(128),
    },
    "sha256": {"name": "sha256", "in": "path", "required": True, "schema": string(64)},
    "timeout": {
        "name": "timeout",
        "in": "query",
        "description": "seconds to wait (at most 300)",
        "schema": {"type": "number", "minimum": 0, "maximum": 300},
    },
}


def param(name: str) -> S:
    return {"$ref": f"#/components/parameters/{name}"}


def answer(status: int, schema: str | None, description: str) -> S:
    body: S = {"description": description}
    if schema is not None:
        body["content"] = {"application/json": {"schema": ref(schema)}}
    return {str(status): body}


ERRORS = {
    code: {"description": text, "content": {"application/json": {"schema": ref("Error")}}}
    for code, text in (
        ("400", "bad input: the message names the field"),
        ("401", "no valid bearer token"),
        ("403", "the token's role does not allow this"),
        ("404", "no such resource"),
        ("409", "conflicts with the current state"),
        ("412", "If-Match names a revision that is no longer current"),
        ("413", "body too large"),
        ("429", "too many requests: see Retry-After"),
        ("503", "this coordinator cannot serve it now (not the leader, database away)"),
    )
}


def op(
    summary: str,
    role: str,
    responses: S,
    *,
    body: str | None = None,
    params: tuple[str, ...] = (),
    operation_id: str,
) -> S:
    item: S = {
        "operationId": operation_id,
        "summary": summary,
        "x-nova-role": role,
        "responses": {**responses, **ERRORS},
    }
    if role != "none":
        item["security"] = [{"bearer": []}]
    else:
        item["security"] = []
    if body is not None:
        item["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": ref(body)}},
        }
    if params:
        item["parameters"] = [param(p) for p in params]
    return item


LIST = ("per_page", "next_token", "index", "wait")
ACCEPTED = answer(202, "Operation", "accepted: follow the operation")

PATHS: S = {
    "/v1/status": {
        "get": op("this coordinator", "reader", answer(200, "Status", "ok"), operation_id="status")
    },
    "/v1/sites": {
        "get": op(
            "sites",
            "reader",
            answer(200, "SiteList", "ok"),
            params=LIST,
            operation_id="listSites",
        ),
        "post": op(
            "add a site (prints its one-time enrollment token)",
            "admin",
            answer(201, "SiteCreated", "created"),
            body="SiteCreate",
            operation_id="addSite",
        ),
    },
    "/v1/sites/{site}": {
        "parameters": [param("site")],
        "get": op("one site", "reader", answer(200, "Site", "ok"), operation_id="getSite"),
        "patch": op(
            "change a site's labels or cost",
            "admin",
            answer(200, "Site", "ok"),
            body="SiteUpdate",
            params=("if_match",),
            operation_id="updateSite",
        ),
        "delete": op(
            "revoke a site: its link is refused from now on",
            "admin",
            answer(200, "Site", "revoked"),
            operation_id="revokeSite",
        ),
    },
    "/v1/sites/{site}/enrollment": {
        "parameters": [param("site")],
        "post": op(
            "a new one-time enrollment token for a site not enrolled yet",
            "admin",
            answer(201, "EnrollmentToken", "created"),
            operation_id="newEnrollmentToken",
        ),
    },
    "/v1/enroll": {
        "post": op(
            "enroll a site's CA with a one-time token (nova site enroll)",
            "none",
            answer(200, "Site", "enrolled"),
            body="Enroll",
            operation_id="enroll",
        )
    },
    "/v1/hosts": {
        "get": op(
            "hosts of every site",
            "reader",
            answer(200, "HostList", "ok"),
            params=(*LIST, "site_filter"),
            operation_id="listHosts",
        )
    },
    "/v1/sites/{site}/hosts/{host}": {
        "parameters": [param("site"), param("host")],
        "get": op("one host", "reader", answer(200, "Host", "ok"), operation_id="getHost"),
    },
    "/v1/sites/{site}/hosts/{host}/drain": {
        "parameters": [param("site"), param("host")],
        "post": op("drain a host", "operator", ACCEPTED, operation_id="drainHost"),
    },
    "/v1/sites/{site}/hosts/{host}/undrain": {
        "parameters": [param("site"), param("host")],
        "post": op("end a host's drain", "operator", ACCEPTED, operation_id="undrainHost"),
    },
    "/v1/vms": {
        "get": op(
            "VMs of every site",
            "reader",
            answer(200, "VmList", "ok"),
            params=(*LIST, "site_filter", "host_filter", "state_filter", "label_filter"),
            operation_id="listVms",
        ),
        "post": op(
            "create a VM where its constraints allow",
            "operator",
            ACCEPTED,
            body="VmCreate",
            operation_id="createVm",
        ),
    },
    "/v1/vms/{id}": {
        "parameters": [param("vm")],
        "get": op(
            "one VM with its history",
            "reader",
            answer(200, "VmDetail", "ok"),
            operation_id="getVm",
        ),
        "delete": op(
            "delete a VM", "operator", ACCEPTED, params=("force",), operation_id="deleteVm"
        ),
    },
    "/v1/vms/{id}/start": {
        "parameters": [param("vm")],
        "post": op("start a VM", "operator", ACCEPTED, operation_id="startVm"),
    },
    "/v1/vms/{id}/stop": {
        "parameters": [param("vm")],
        "post": op("stop a VM", "operator", ACCEPTED, body="VmStop", operation_id="stopVm"),
    },
    "/v1/vms/{id}/migrate": {
        "parameters": [param("vm")],
        "post": op(
            "move a VM within its site",
            "operator",
            ACCEPTED,
            body="VmMigrate",
            operation_id="migrateVm",
        ),
    },
    "/v1/placement/explain": {
        "post": op(
            "where a VM would go, and why each candidate was taken or refused",
            "reader",
            answer(200, "Explain", "ok"),
            body="PlacementRequest",
            operation_id="explainPlacement",
        )
    },
    "/v1/operations": {
        "get": op(
            "operations, newest first",
            "reader",
            answer(200, "OperationList", "ok"),
            params=LIST,
            operation_id="listOperations",
        )
    },
    "/v1/operations/{id}": {
        "parameters": [param("operation")],
        "get": op(
            "one operation", "reader", answer(200, "Operation", "ok"), operation_id="getOperation"
        ),
        "delete": op(
            "cancel an operation no host has started",
            "operator",
            answer(200, "Operation", "cancelled"),
            operation_id="cancelOperation",
        ),
    },
    "/v1/operations/{id}/wait": {
        "parameters": [param("operation")],
        "get": op(
            "the operation once it ends, or when the timeout passes",
            "reader",
            answer(200, "Operation", "ok"),
            params=("timeout",),
            operation_id="waitOperation",
        ),
    },
    "/v1/events": {
        "get": op(
            "events after an index: newline-delimited JSON, or server-sent events "
            "(Accept: text/event-stream); with wait, held open until it passes",
            "reader",
            {
                "200": {
                    "description": "CloudEvents 1.0, one per line (or per SSE message)",
                    "content": {
                        "application/x-ndjson": {"schema": {"type": "string"}},
                        "text/event-stream": {"schema": {"type": "string"}},
                    },
                }
            },
            params=("index", "wait"),
            operation_id="events",
        )
    },
    "/v1/audit": {
        "get": op(
            "who changed what, newest first",
            "admin",
            answer(200, "AuditList", "ok"),
            params=("per_page", "next_token"),
            operation_id="audit",
        )
    },
    "/v1/tokens": {
        "get": op("API tokens", "admin", answer(200, "TokenList", "ok"), operation_id="listTokens"),
        "post": op(
            "create an API token (the secret is shown once)",
            "admin",
            answer(201, "TokenCreated", "created"),
            body="TokenCreate",
            operation_id="createToken",
        ),
    },
    "/v1/tokens/{id}": {
        "parameters": [param("token")],
        "delete": op(
            "revoke an API token",
            "admin",
            answer(200, "Token", "revoked"),
            operation_id="revokeToken",
        ),
    },
}


OCTETS = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}

PATHS.update(
    {
        "/v1/templates": {
            "get": op(
                "the template catalogue: each template with its newest version, by name",
                "reader",
                answer(200, "TemplateList", "ok"),
                params=("per_page", "next_token", "q", "os_filter"),
                operation_id="listTemplates",
            ),
            "post": {
                **op(
                    "upload a template a publisher signed: the part manifest first, then "
                    "image (and kernel, initrd); each file is checked against the manifest",
                    "operator",
                    {
                        **answer(201, "TemplateVersion", "published"),
                        **answer(200, "TemplateVersion", "this very version was held already"),
                    },
                    operation_id="uploadTemplate",
                ),
                "requestBody": {
                    "required": True,
                    "content": {"multipart/form-data": {"schema": ref("TemplateUpload")}},
                },
            },
        },
        "/v1/templates/{name}": {
            "parameters": [param("template")],
            "get": op(
                "one template: every version, newest first",
                "reader",
                answer(200, "TemplateDetail", "ok"),
                operation_id="getTemplate",
            ),
        },
        "/v1/templates/catalogue/index.json": {
            "get": op(
                "the catalogue's index, as `nova template pull --from URL` reads it",
                "reader",
                answer(200, "CatalogueIndex", "ok"),
                operation_id="catalogueIndex",
            ),
        },
        "/v1/templates/catalogue/manifests/{name}/{manifest}": {
            "parameters": [param("template"), param("manifest")],
            "get": op(
                "a signed manifest (hosts verify it against their trusted publisher keys)",
                "reader",
                {"200": {"description": "the manifest", "content": OCTETS}},
                operation_id="catalogueManifest",
            ),
        },
        "/v1/templates/catalogue/files/{sha256}": {
            "parameters": [param("sha256")],
            "get": op(
                "a template's file by its SHA-256",
                "reader",
                {"200": {"description": "the file", "content": OCTETS}},
                operation_id="catalogueFile",
            ),
        },
    }
)


def document() -> S:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "NovaCron coordinator",
            "version": "1",
            "description": (
                "Edge sites federated behind one API. Lists paginate (per_page, next_token) "
                "and block (index + wait; the X-Nova-Index header); long work answers 202 "
                "with an operation; every error is one shape; every mutation is audited."
            ),
        },
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "parameters": PARAMETERS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


if __name__ == "__main__":
    json.dump(document(), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
