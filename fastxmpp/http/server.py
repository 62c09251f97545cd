"""The HTTP side of the server: one aiohttp application on the server's event loop, served
by every `[[listeners]] kind = "http"` (plain, or HTTPS with the hosts' certificates).

Endpoints: RFC 7395 WebSocket at /xmpp-websocket (websocket.py), XEP-0124/0206 BOSH at
/http-bind (bosh.py), XEP-0156 discovery at /.well-known/host-meta and host-meta.json, and
/metrics when `[http] metrics` is on (fastxmpp/metrics.py).
Modules add their own routes to the same application (`Module.http_routes`, collected
here when the application is built: XEP-0363 uploads), and XEP-0156 links where they have
one (`add_link`).

Limits ([http]): open connections, all http listeners together (beyond: 503 and closed),
request body size (aiohttp's client_max_size: 413), idle connections closed after
idle_timeout (aiohttp's keep-alive timeout, which also covers a connection that never
completes a request, and its lingering time after an answer that left a body unread). Each
request is logged at info level on `fastxmpp.http.access`.

Behind a reverse proxy (the usual way to serve WebSocket on 443): the proxies in
`trusted_proxies` are believed about the client's address (X-Forwarded-For, its last entry)
and about HTTPS (X-Forwarded-Proto), nobody else.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

from aiohttp import web

if TYPE_CHECKING:
    from ..config import HttpConfig
    from ..metrics import Metrics
    from ..server import Server
    from .bosh import BoshService

log = logging.getLogger("fastxmpp.http")
access_log = logging.getLogger("fastxmpp.http.access")

WEBSOCKET_PATH = "/xmpp-websocket"
# XEP-0156 §3: the link relations of the alternative connection methods.
REL_WEBSOCKET = "urn:xmpp:alt-connections:websocket"
REL_BOSH = "urn:xmpp:alt-connections:xbosh"
NS_XRD = "http://docs.oasis-open.org/ns/xri/xrd-1.0"
# Apache's combined format, less the identd and user fields, plus the time taken.
ACCESS_LOG_FORMAT = '%a "%r" %s %b "%{Referer}i" "%{User-Agent}i" %Tfs'
# Seconds the listeners' open connections get to finish when the server stops.
SHUTDOWN_GRACE = 1.0


@dataclass(frozen=True, slots=True)
class ClientAddress:
    """Who is at the other end: `address` (what per-address limits count) and `peer` (log
    lines), the proxy's client when a trusted proxy said so."""

    address: str
    peer: str


class HttpService:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.config: HttpConfig = server.config.http
        self.trusted = {ipaddress.ip_address(a) for a in self.config.trusted_proxies}
        self.links: list[tuple[str, str, str]] = []  # (rel, path, scheme: "ws" | "http")
        self.app = web.Application(client_max_size=self.config.max_request_size)
        if self.config.websocket:
            self.app.router.add_get(WEBSOCKET_PATH, self._websocket)
            self.add_link(REL_WEBSOCKET, WEBSOCKET_PATH, "ws")
        self.bosh: BoshService | None = None
        if self.config.bosh:
            from .bosh import BOSH_PATH, BoshService

            self.bosh = BoshService(server, self)
            self.app.router.add_post(BOSH_PATH, self.bosh.handle)
            self.app.router.add_route("OPTIONS", BOSH_PATH, self.bosh.preflight)
            self.add_link(REL_BOSH, BOSH_PATH, "http")
        for module in server.modules.modules.values():
            for method, path, handler in module.http_routes():
                self.app.router.add_route(method, path, handler)
        self.app.router.add_get("/.well-known/host-meta", self._host_meta_xrd)
        self.app.router.add_get("/.well-known/host-meta.json", self._host_meta_json)
        self.metrics: Metrics | None = None
        if self.config.metrics:
            from ..metrics import PATH, Metrics

            self.metrics = Metrics(server, self.config.metrics_allow)
            self.app.router.add_get(PATH, self._metrics)
        self.runner = web.AppRunner(
            self.app,
            handle_signals=False,
            access_log=access_log if self.config.access_log else None,
            access_log_format=ACCESS_LOG_FORMAT,
            keepalive_timeout=self.config.idle_timeout,
            # After an answer that did not read the whole body (a stalled or refused upload),
            # aiohttp reads and drops the rest for this long before closing (10 s by
            # default): no longer than any other idle connection is kept.
            lingering_time=self.config.idle_timeout,
            shutdown_timeout=SHUTDOWN_GRACE,
        )
        self.refused = 0  # connections refused for max_connections (log lines)
        # (address, port, https) of each bound http listener socket (set by Server.start).
        self.bound: list[tuple[str, int, bool]] = []

    def add_link(self, rel: str, path: str, scheme: str) -> None:
        """A XEP-0156 link to an endpoint of this application."""
        self.links.append((rel, path, scheme))

    async def start(self) -> None:
        await self.runner.setup()

    async def stop(self) -> None:
        if self.bosh is not None:
            self.bosh.stop()
        await self.runner.cleanup()

    def protocol_factory(self) -> Callable[[], asyncio.BaseProtocol]:
        """A listener's protocol factory: aiohttp's request handler, or a refusal when the
        http listeners hold max_connections already."""
        handlers = self.runner.server
        assert handlers is not None, "start() first"
        limit = self.config.max_connections

        def factory() -> asyncio.BaseProtocol:
            if len(handlers.connections) >= limit:
                self.refused += 1
                if self.refused == 1 or self.refused % 1000 == 0:
                    log.warning(
                        "http: %d connections refused: max_connections (%d) reached",
                        self.refused,
                        limit,
                    )
                return Refused()
            return handlers()

        return factory

    # --- who is asking -----------------------------------------------------------------

    def _from_trusted_proxy(self, request: web.Request) -> bool:
        try:
            return ipaddress.ip_address(request.remote or "") in self.trusted
        except ValueError:
            return False

    def client(self, request: web.Request) -> ClientAddress:
        peername = request.transport.get_extra_info("peername") if request.transport else None
        peer = f"{peername[0]}:{peername[1]}" if peername else "?"
        address = request.remote or "?"
        forwarded = request.headers.get("X-Forwarded-For")
        if forwarded and self._from_trusted_proxy(request):
            # The last entry is the one our proxy added: the address it got the request from.
            address = forwarded.rsplit(",", 1)[-1].strip() or address
            peer = f"{address} via {peer}"
        return ClientAddress(address, peer)

    def secure(self, request: web.Request) -> bool:
        """Whether the request came over HTTPS: to us, or to a trusted proxy that says so."""
        if request.transport is not None and request.transport.get_extra_info("sslcontext"):
            return True
        proto = request.headers.get("X-Forwarded-Proto", "")
        return proto.lower() == "https" and self._from_trusted_proxy(request)

    def base_url(self, request: web.Request, scheme: str) -> str:
        """The URL clients reach `scheme` ("http" or "ws") endpoints under."""
        public = self.config.public_url
        if public:
            secure = public.startswith("https:")
            host_and_path = public.split("://", 1)[1]
        else:
            secure = self.secure(request)
            host_and_path = request.host
        if scheme == "ws":
            return ("wss://" if secure else "ws://") + host_and_path
        return ("https://" if secure else "http://") + host_and_path

    def public_base(self, host: str) -> str:
        """The URL clients reach this application under when no request tells (URLs handed
        out over XMPP: XEP-0363 slots): `[http] public_url`, or the first HTTPS listener
        (XEP-0363 §4: the host MUST provide TLS), else the first listener, named by `host`
        and the listener's port. The host's name, not the listener's address: the host's
        certificate names it (a client checking the URL's name against the certificate
        refuses an address it does not list), and a loopback or private address is seen
        under the host's name by the clients that can reach it."""
        if self.config.public_url:
            return self.config.public_url
        bound = next((b for b in self.bound if b[2]), self.bound[0]) if self.bound else None
        _address, port, https = bound or ("127.0.0.1", 5280, False)
        return f"{'https' if https else 'http'}://{host}:{port}"

    def open_connections(self) -> int:
        """HTTP connections open on the http listeners, WebSockets included."""
        handlers = self.runner.server
        return 0 if handlers is None else len(handlers.connections)

    # --- endpoints ---------------------------------------------------------------------

    async def _metrics(self, request: web.Request) -> web.Response:
        assert self.metrics is not None
        return self.metrics.answer(self.client(request).address)

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        from .websocket import handle_websocket

        encrypted = self.secure(request) or self.config.consider_websocket_secure
        return await handle_websocket(self.server, request, self.client(request), encrypted)

    def _links(self, request: web.Request) -> list[tuple[str, str]]:
        return [(rel, self.base_url(request, scheme) + path) for rel, path, scheme in self.links]

    async def _host_meta_xrd(self, request: web.Request) -> web.Response:
        """XEP-0156 §3: the host-meta XRD (RFC 6415) with the connection methods."""
        links = "".join(
            f"\n  <Link rel={quoteattr(rel)} href={quoteattr(href)}/>"
            for rel, href in self._links(request)
        )
        body = f"<?xml version='1.0' encoding='utf-8'?>\n<XRD xmlns='{NS_XRD}'>{links}\n</XRD>\n"
        return web.Response(text=body, content_type="application/xrd+xml", headers=_CROSS_ORIGIN)

    async def _host_meta_json(self, request: web.Request) -> web.Response:
        """XEP-0156 §3: the JSON form (RFC 6415 JRD)."""
        links = [{"rel": rel, "href": href} for rel, href in self._links(request)]
        return web.Response(
            text=json.dumps({"links": links}, indent=2) + "\n",
            content_type="application/json",
            headers=_CROSS_ORIGIN,
        )


# Web clients on another origin read host-meta (XEP-0156 §3.1: CORS); it is public.
_CROSS_ORIGIN = {"Access-Control-Allow-Origin": "*"}


class Refused(asyncio.Protocol):
    """A connection beyond max_connections: 503 and closed."""

    def connection_made(self, transport: Any) -> None:
        transport.write(
            b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        )
        transport.close()
