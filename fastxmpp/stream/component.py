"""XEP-0114 external components: a bridge, gateway or bot that serves a domain of its own
(`[components."<domain>"]`) and connects to a `kind = "component"` listener.

The stream (`jabber:component:accept`, no version, no features) names the component's domain
in 'to'; the component proves the shared secret with `<handshake/>`, the lowercase hex SHA-1 of
the stream id followed by the secret (§3), and then sends stanzas with 'from' at its domain
and 'to' anywhere (§3: "the component MAY send stanzas from any user at its hostname"). They
are routed like a client's, with a `ComponentOrigin` that keeps their 'from'. Stanzas for the
domain or a JID at it reach the component the way stanzas reach other servers (the router's
remote_hook); with no component connected, the sender gets service-unavailable.

One stream per domain: a second one gets `<conflict/>` (§3) and the first keeps serving. The
stream is not encrypted (XEP-0114 has no TLS): listen on loopback, or on a private network.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

from .. import ns
from .._parser import Stanza, StreamHeader
from .._router import Session
from ..errors import StanzaError, StreamError
from ..jid import JIDError, normalize_domain, parse_jid
from .connection import Connection
from .xmlstream import (
    PeerOrigin,
    XmlStream,
    accepted,
    check_stream_root,
    for_peer_stream,
    reply_error,
    route_from_peer,
)

if TYPE_CHECKING:
    from ..config import ComponentConfig
    from ..server import Server

log = logging.getLogger("fastxmpp.component")

NS_COMPONENT = "jabber:component:accept"
STANZA_NAMES = ("message", "presence", "iq")
# Seconds a component has, from the moment it connects, to complete the handshake.
HANDSHAKE_TIMEOUT = 30.0
# Connections waiting for their handshake, all together: what an unauthenticated peer can
# make us hold.
MAX_UNAUTHENTICATED = 32


class ComponentDomainTaken(Exception):
    """A component's domain is served by something else already (a MUC service)."""


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def handshake_digest(stream_id: str, secret: str) -> str:
    """XEP-0114 §3: SHA1(concat(stream id, secret)), lowercase hex."""
    return hashlib.sha1((stream_id + secret).encode()).hexdigest()


class ComponentOrigin(PeerOrigin):
    """An entity at a component's domain, as the router and modules see it: what is sent to
    it goes down the component's stream."""

    def __init__(self, stream: ComponentStream, jid: Any) -> None:
        super().__init__(stream.router, jid)
        self.stream = stream

    def send(self, data: bytes) -> None:
        self.stream.write(data)

    def send_uncounted(self, data: bytes) -> None:
        self.stream.write(data)


class Components:
    """The configured components and the stream of each one that is connected. The router
    reaches them as it reaches other servers: a component's domain is not one of its hosts,
    so what is addressed there goes to `route_out` (the router's remote_hook, in front of
    federation's), after the presence module has seen subscription requests and the like
    (RFC 6121 §3: a gateway's contacts are in rosters like remote ones)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.router = server.router
        self.config: dict[str, ComponentConfig] = server.config.components
        self.connected: dict[str, ComponentStream] = {}
        self.waiting: set[ComponentStream] = set()  # connected, no handshake yet
        for domain in self.config:
            if self.router.is_service(domain):
                raise ComponentDomainTaken(
                    f"component {domain}: the domain is another service's (see [muc] domain)"
                )
        # Federation's hook (stream/s2s.py), for domains that are not components'.
        self.federation = self.router.remote_hook
        if self.config:
            self.router.remote_hook = self.route_out

    def route_out(self, origin: Session, st: Stanza, target: tuple[str, ...]) -> None:
        """The router's remote_hook: a stanza for another domain."""
        domain = target[1]
        if domain not in self.config:
            if self.federation is not None:
                self.federation(origin, st, target)
            elif st.name != "presence":  # presence is dropped silently (RFC 6121 §4.6)
                raise StanzaError("remote-server-not-found", f"{domain} is not served here")
            return
        stream = self.connected.get(domain)
        if stream is None or stream.closing:
            if st.name == "presence":
                return  # nobody to tell, silently dropped as presence is
            raise StanzaError("service-unavailable", f"{domain} is not connected")
        stream.write(for_peer_stream(st, {"from": origin.full}))

    def deliver(self, data: bytes, domain: str) -> bool:
        """Bytes a module made for a JID at a component's domain (presence to a gateway
        contact): True when `domain` is a component's (sent when it is connected)."""
        if domain not in self.config:
            return False
        stream = self.connected.get(domain)
        if stream is not None and not stream.closing:
            stream.write(data)
        return True

    def stop(self) -> None:
        for stream in [*self.connected.values(), *self.waiting]:
            stream.close_with_error("system-shutdown", "the server is shutting down")


def accept(components: Components) -> Connection:
    """The protocol of a new component connection (the listener's factory)."""
    return accepted(ComponentStream(components), components.server)


class ComponentStream(XmlStream):
    """One component's stream (XEP-0114 §3), receiving side."""

    what = "component"
    log = log

    def __init__(self, components: Components) -> None:
        self.components = components
        self.router = components.router
        self.transport: Any = None
        self.connection: Connection | None = None
        self.domain: str | None = None
        self.authenticated = False
        self.closing = False
        self.timer: asyncio.TimerHandle | None = None

    def _describe(self) -> str:
        return f"stream from {self.peer} ({self.domain or 'no domain'})"

    def connected(self, connection: Connection) -> None:
        log.info("component connection from %s", self.peer)
        if len(self.components.waiting) >= MAX_UNAUTHENTICATED:
            self.close_with_error("resource-constraint", "too many components connecting")
            return
        self.components.waiting.add(self)
        self.timer = asyncio.get_running_loop().call_later(HANDSHAKE_TIMEOUT, self._timed_out)

    def _timed_out(self) -> None:
        self.timer = None
        if not self.authenticated:
            self.close_with_error("connection-timeout", "the handshake took too long")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.components.waiting.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.domain is not None and self.components.connected.get(self.domain) is self:
            del self.components.connected[self.domain]
            log.info("component %s disconnected", self.domain)

    # --- the stream header and the handshake (§3) --------------------------------------

    def _stream_header(self, header: StreamHeader) -> None:
        if self.domain is not None:
            raise StreamError("unsupported-stanza-type", "a component stream does not restart")
        try:
            domain = normalize_domain(header.attrs.get("to", ""))
        except JIDError:
            domain = ""
        if domain in self.components.config:
            self.domain = domain
        self._send_header()
        check_stream_root(header, NS_COMPONENT)
        if self.domain is None:
            raise StreamError("host-unknown", "no component is configured for that domain")

    def _header_xml(self, stream_id: str, peer_from: str | None) -> bytes:
        frm = f" from={quoteattr(self.domain)}" if self.domain else ""
        return (
            f"<?xml version='1.0'?><stream:stream xmlns='{NS_COMPONENT}' "
            f"xmlns:stream='{ns.STREAMS}' id={quoteattr(stream_id)}{frm}>"
        ).encode()

    def _element(self, st: Stanza) -> None:
        if st.ns == ns.STREAMS and st.name == "error":
            log.info("component %s: the peer sent a stream error", self.domain)
            self._peer_closed()
        elif not self.authenticated:
            if st.ns == NS_COMPONENT and st.name == "handshake":
                self._handshake(st)
            else:
                raise StreamError("not-authorized", "the handshake comes first (XEP-0114 §3)")
        elif st.ns == NS_COMPONENT and st.name in STANZA_NAMES:
            self._stanza(st)
        else:
            raise StreamError("unsupported-stanza-type", f"<{st.name}/> is not expected here")

    def _handshake(self, st: Stanza) -> None:
        assert self.domain is not None and self.connection is not None
        expected = handshake_digest(
            self.connection.stream_id, self.components.config[self.domain].secret
        )
        given = (st.element().text or "").strip().lower()
        if not hmac.compare_digest(given.encode(), expected.encode()):
            log.warning("component %s from %s: wrong secret", self.domain, self.peer)
            raise StreamError("not-authorized", "the handshake does not match the secret")
        if self.domain in self.components.connected:
            # §3: the domain is served already; the first stream keeps it.
            raise StreamError("conflict", f"{self.domain} is connected already")
        self.authenticated = True
        self.components.waiting.discard(self)
        self.components.connected[self.domain] = self
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.write(b"<handshake/>")
        log.info("component %s connected from %s", self.domain, self.peer)

    # --- stanzas --------------------------------------------------------------------------

    def _stanza(self, st: Stanza) -> None:
        frm, to = st.attrs.get("from"), st.attrs.get("to")
        if not frm or not to:
            # §3: "All stanzas sent to the server MUST possess a 'from' attribute and a 'to'
            # attribute".
            raise StreamError("improper-addressing", "a stanza needs 'from' and 'to'")
        try:
            sender = parse_jid(frm)
        except JIDError:
            raise StreamError("invalid-from", "the 'from' address is malformed") from None
        if sender.domain != self.domain:
            raise StreamError("invalid-from", f"'from' must be at {self.domain}")
        origin = ComponentOrigin(self, sender)
        try:
            domain = parse_jid(to).domain
        except JIDError:
            reply_error(st, origin, StanzaError("jid-malformed", "bad 'to'"))
            return
        if not self.router.is_local(domain) and domain not in self.components.config:
            # Rooms keep sessions of their occupants, and we relay nothing to other servers
            # for a component (RFC 6120 §13.3): local accounts and components only.
            reply_error(st, origin, StanzaError("service-unavailable", "local accounts only"))
            return
        route_from_peer(self.router, origin, st, f"component {self.domain}")
