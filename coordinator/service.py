"""One coordinator process: the store, the API, the site links and leadership, wired.

`Coordinator` owns the aiohttp application and hands the API and the site
links what they share (the store, the OpenAPI document, the rate limiter,
whether this process leads). On SQLite it always leads; on PostgreSQL the
`Leadership` (leader.py) decides, and a follower serves reads, redirects
writes and refuses site links.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from novacron.agent.otlp import OtlpExporter
from novacron.protocol.certificates import verify_certificate
from novacron.protocol.coordinator_commands import CommandSigner
from novacron.protocol.errors import IdentityError
from novacron.protocol.keys import Ed25519PublicKey, signature_valid
from novacron.protocol.sitelink import PATH, enroll_bytes

from .api import Api, ApiError
from .metrics import COORDINATOR, CoordinatorMetrics, TimedDatabase
from .metrics import PATH as METRICS_PATH
from .ratelimit import RateLimiter
from .sitelink import SiteLinks
from .store import TERMINAL, Store
from .templates import TemplateCatalogue
from .tracing import RequestTracing
from .validate import Validator

log = logging.getLogger("novacron.coordinator")

DOCUMENT = Path(__file__).with_name("openapi.json")


@dataclass(frozen=True)
class ServiceConfig:
    node: str = "coordinator"  # this coordinator's id (logs, the site link's challenge)
    url: str = ""  # how others reach this coordinator (redirects from followers name it)
    rate: float = 100.0  # API requests a second per token (0: no limit)
    burst: float = 200.0
    tls_cert: str = ""  # the TLS certificate and key: they also sign the site-link commands
    tls_key: str = ""
    templates: str = ""  # the template catalogue's directory ("": this coordinator has none)
    template_max_bytes: int = 64 << 30  # bytes of all files of one uploaded template
    tracing_otlp: str = ""  # an OTLP/HTTP collector for the API's spans ("": no traces)


class Coordinator:
    def __init__(
        self,
        store: Store,
        config: ServiceConfig,
        *,
        is_leader: Callable[[], bool] = lambda: True,
        leader_url: Callable[[], str] = lambda: "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.metrics = CoordinatorMetrics()
        # Every database call the store makes is timed (the metrics' database latency).
        store.db = TimedDatabase(store.db, self.metrics.observe_database)
        self.store = store
        self.config = config
        self.node = config.node
        self.document: dict[str, Any] = json.loads(DOCUMENT.read_text())
        self.validator = Validator(self.document)
        self.limiter = RateLimiter(config.rate, config.burst)
        self._is_leader = is_leader
        self._leader_url = leader_url
        self._clock = clock
        # Unsigned without TLS: agents (which reach it only over https) refuse those.
        self.signer = (
            CommandSigner.from_files(config.tls_cert, config.tls_key) if config.tls_cert else None
        )
        self.links = SiteLinks(self)
        self.templates = (
            TemplateCatalogue(Path(config.templates), config.template_max_bytes)
            if config.templates
            else None
        )
        self.api = Api(self)
        self.tracing = (
            RequestTracing(OtlpExporter(config.tracing_otlp, config.node, "nova-coordinator"))
            if config.tracing_otlp
            else None
        )

    def now(self) -> float:
        return self._clock()

    def is_leader(self) -> bool:
        return self._is_leader()

    def leader_url(self) -> str:
        return "" if self.is_leader() else self._leader_url()

    def leadership_changed(self, leading: bool) -> None:
        """A follower holds no site links; a new leader waits for the sites to come to it."""
        fence = self.node if leading else "\0not-leading"
        if hasattr(self.store.db, "fence"):
            self.store.db.fence = fence
        if not leading:
            asyncio.get_running_loop().create_task(self.links.close())

    def kick(self, site: str) -> None:
        self.links.kick(site)

    def operations_changed(self) -> None:
        self.store.changes.notify(("operations",))

    def app(self) -> web.Application:
        # The metrics' middleware first: it times what the API's (auth, errors) answered.
        middlewares = [self.metrics.middleware, self.api.middleware]
        if self.tracing is not None:  # outermost: the span covers the whole request
            middlewares.insert(0, self.tracing.middleware)
        app = web.Application(middlewares=middlewares, client_max_size=1024 * 1024)
        app[COORDINATOR] = self
        self.api.routes(app)
        app.router.add_get(PATH, self.links.handle)
        app.router.add_get(METRICS_PATH, self.metrics.handle)
        return app

    async def operation_view(self, op_id: str) -> dict[str, Any]:
        """An operation, saying so when it waits for a site whose link is down."""
        op = await self.store.operation(op_id)
        if op["status"] not in TERMINAL and op["site"] and not self.links.connected(op["site"]):
            op["detail"] = (
                f"pending: site {op['site']}'s link is down; the command runs once the site "
                "reconnects (it is never lost)"
            )
        return op

    def check_enrollment(self, body: dict[str, Any]) -> bytes:
        """The CA key an enrollment request proves, or `ApiError` naming the bad field."""
        ca_raw = _base64(body, "ca_public")
        certificate = _base64(body, "certificate")
        signature = _base64(body, "signature")
        try:
            ca = Ed25519PublicKey.from_public_bytes(ca_raw)
        except (IdentityError, ValueError) as exc:
            raise ApiError(400, "invalid", f"ca_public: {exc}", "ca_public") from None
        try:
            cert = verify_certificate(certificate, ca, self.now())
        except IdentityError as exc:
            raise ApiError(400, "invalid", f"certificate: {exc}", "certificate") from None
        if not signature_valid(
            cert.signing_public_key(), signature, enroll_bytes(body["token"], ca_raw)
        ):
            raise ApiError(
                400,
                "invalid",
                "signature: not by the certificate's key over the token",
                "signature",
            )
        return ca_raw


def _base64(body: dict[str, Any], name: str) -> bytes:
    try:
        return base64.b64decode(body[name], validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "invalid", f"{name}: not base64", name) from None


def server_tls(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context
