"""What the server is doing, for monitoring: `/metrics` on the http listeners when
`[http] metrics` is on, in the Prometheus text exposition format (prometheus_client writes
it, imported only then).

Every figure is read when a scrape asks, from what the server keeps anyway (the streams, the
router's sessions, the server links, the storage), so that nothing is counted per stanza but
the router's three totals (one integer each, in the compiled core). Modules add their own
figures (`Module.metrics`): rooms and occupants, the archive's commits.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import __version__

if TYPE_CHECKING:
    from aiohttp import web

    from .server import Server

PATH = "/metrics"


@dataclass(frozen=True, slots=True)
class Figure:
    """One metric family: `name` without the fastxmpp_ prefix, "gauge" or "counter" (a
    counter's name without its _total suffix), and its samples: (label values, value)."""

    name: str
    help: str
    kind: str
    samples: list[tuple[tuple[str, ...], float]]
    labels: tuple[str, ...] = ()


def gauge(name: str, help: str, value: float) -> Figure:
    return Figure(name, help, "gauge", [((), value)])


@dataclass(slots=True)
class Counts:
    """Totals since start of what happens off the per-stanza path, counted where it happens."""

    logins: int = 0  # SASL successes and XEP-0078 logins
    login_failures: int = 0  # wrong credentials (what the password-guessing throttle counts)


class ServerCollector:
    """prometheus_client's custom collector: the server's figures, then each module's."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            InfoMetricFamily,
        )

        yield InfoMetricFamily("fastxmpp", "the server's version", value={"version": __version__})
        for figure in self.figures():
            name = "fastxmpp_" + figure.name
            family: Any
            if figure.kind == "counter":
                family = CounterMetricFamily(name, figure.help, labels=figure.labels)
            else:
                family = GaugeMetricFamily(name, figure.help, labels=figure.labels)
            for labels, value in figure.samples:
                family.add_metric(list(labels), value)
            yield family

    def figures(self) -> Iterable[Figure]:
        server = self.server
        streams = server.streams
        authenticated = sum(1 for s in streams if s.authenticated_local is not None)
        yield gauge("c2s_connections", "client streams open (TCP, WebSocket, BOSH)", len(streams))
        yield gauge(
            "c2s_unauthenticated_connections",
            "client streams open that have not authenticated yet",
            len(streams) - authenticated,
        )
        per_host: dict[str, int] = dict.fromkeys(server.config.hosts, 0)
        detached = 0
        for session in server.router.all_sessions():
            if session.domain in per_host:
                per_host[session.domain] += 1
            if session.sm is not None and session.sm.detached:
                detached += 1
        yield Figure(
            "sessions",
            "bound client sessions (resources), waiting for XEP-0198 resumption included",
            "gauge",
            [((host,), count) for host, count in per_host.items()],
            ("host",),
        )
        yield gauge(
            "sessions_detached",
            "sessions waiting for XEP-0198 resumption (no connection)",
            detached,
        )
        counts = server.counts
        yield Figure(
            "logins",
            "client authentications: success, or failure for wrong credentials",
            "counter",
            [(("success",), counts.logins), (("failure",), counts.login_failures)],
            ("result",),
        )
        router = server.router
        yield Figure(
            "stanzas_routed",
            "stanzas routed from client sessions, by kind",
            "counter",
            [
                (("message",), router.routed_messages),
                (("presence",), router.routed_presences),
                (("iq",), router.routed_iqs),
            ],
            ("kind",),
        )
        if server.s2s is not None:
            yield Figure(
                "s2s_links",
                "server-to-server connections open, by direction",
                "gauge",
                [(("in",), len(server.s2s.incoming)), (("out",), len(server.s2s.links_out))],
                ("direction",),
            )
        if server.components is not None:
            yield gauge(
                "components_connected",
                "XEP-0114 components connected",
                len(server.components.connected),
            )
        if server.http is not None:
            yield gauge(
                "http_connections",
                "HTTP connections open (WebSockets included)",
                server.http.open_connections(),
            )
        yield from self._storage()
        for module in server.modules.modules.values():
            yield from module.metrics()

    def _storage(self) -> Iterable[Figure]:
        storage = self.server.storage
        if storage is None:
            return
        env = storage.env
        info, stat = env.info(), env.stat()
        yield gauge("storage_map_bytes", "size of the LMDB map (grows as needed)", info["map_size"])
        yield gauge(
            "storage_used_bytes",
            "pages in use in the LMDB file",
            (info["last_pgno"] + 1) * stat["psize"],
        )
        yield gauge("accounts", "accounts, every host", self.server.accounts.count())


class Metrics:
    """The /metrics endpoint: who may ask, and the answer."""

    def __init__(self, server: Server, allow: Iterable[str]) -> None:
        from prometheus_client import CollectorRegistry, ProcessCollector

        self.allow = [ipaddress.ip_network(text) for text in allow]
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ServerCollector(server))
        # process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...
        self.registry.register(ProcessCollector(registry=None))

    def allowed(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.allow)

    def answer(self, address: str) -> web.Response:
        """The answer to a GET from the client at `address`."""
        from aiohttp import web
        from prometheus_client import generate_latest
        from prometheus_client.exposition import CONTENT_TYPE_LATEST

        if not self.allowed(address):
            return web.Response(status=403, text="forbidden\n")
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
