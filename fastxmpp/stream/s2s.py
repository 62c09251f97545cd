"""Server-to-server streams (RFC 6120 §13): federation with other XMPP servers.

One `S2S` per server owns the links. Outgoing links (`Outgoing`, one per pair of local and
remote domain) carry our stanzas: resolve (static route, `_xmpp-server._tcp` SRV, else the
domain on 5269), connect, STARTTLS (§5), then SASL EXTERNAL (§6, XEP-0178) when the peer
offers it, else Server Dialback (XEP-0220). Stanzas wait in a bounded queue meanwhile; a link
that cannot be set up bounces them (§8.3.3.14 remote-server-not-found, §8.3.3.15
remote-server-timeout; presence is dropped), and so does one beyond `max_outgoing` links
(§8.3.3.18 resource-constraint). Incoming links (`Incoming`) accept
`jabber:server` streams, authenticate the sending domain (EXTERNAL against the certificate,
or dialback by asking the authoritative server over our outgoing link) and hand stanzas to
the router with a `RemoteOrigin`: the router and the modules treat it as a session whose
`send` goes back over server-to-server links.

A service that federates (`S2S.federate_service`: the multi-user chat service, XEP-0045) is
a domain of ours like a host: it has links of its own, authenticated for it (its host's
certificate, which should name it too, for SASL EXTERNAL and for peers that check it; its
dialback keys, which we verify when the receiving server asks, XEP-0220 §2.3), and stanzas
from other servers reach it. What a room sends to a remote occupant goes out from the room's
JID over the service domain's link; a message or iq of it that cannot go out is bounced to
the service as the error its recipient would send (the room removes that occupant, XEP-0045
§19.1.2 "Ghost Users"). Other services (HTTP upload) are for local users only.

A dialback request is a peer asking us to resolve and connect to a domain it names: bounded
so that no peer can make us open links or run lookups without end. Each inbound stream may
ask only for the sender domain its header named (RFC 6120 §4.7.1; the first one it asks for
when the header named none), with at most `max_dialback_pending_per_stream` verifications
waiting, `max_dialback_pending` on all streams, each for at most `connect_timeout`;
`max_outgoing` links exist at once and `max_dns_lookups` SRV lookups run at once. A request
beyond these gets the XEP-0220 §2.5 dialback error resource-constraint (the initiating
server is to try a new connection later); the stream stays.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import logging
import re
import secrets
import ssl
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

import aiodns
from lxml import etree

from .. import ns
from .._parser import Stanza, StreamHeader, read_stanza
from .._router import Session, start_tag_attr
from ..errors import StanzaError, StreamError, stanza_error_bytes, stream_error_bytes
from ..jid import JID, JIDError, parse_jid
from .connection import GONE, STREAM_CLOSE, Connection
from .throttle import address_block
from .xmlstream import (
    PeerOrigin,
    XmlStream,
    accepted,
    check_stream_root,
    features_xml,
    for_peer_bytes,
    for_peer_stream,
    read_as_client,
    reply_error,
    route_from_peer,
)

if TYPE_CHECKING:
    from ..server import Server

log = logging.getLogger("fastxmpp.s2s")

NS_DIALBACK = "jabber:server:dialback"  # XEP-0220 §2
NS_DIALBACK_FEATURE = "urn:xmpp:features:dialback"  # XEP-0220 §2.4
NS_BIDI = "urn:xmpp:bidi"  # XEP-0288 §2
NS_BIDI_FEATURE = "urn:xmpp:features:bidi"
S2S_PORT = 5269
STREAM_HEADER = (
    "<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
    "xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
    "version='1.0'{attrs}>"
)
STANZA_NAMES = ("message", "presence", "iq")
# The start of bytes the server made for a remote JID, when they need no rewriting: a plain
# stanza name (no prefix), then its attributes.
_PLAIN_START = re.compile(rb"<(message|presence|iq)[\s/>]")
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True)


def _header(**attrs: str | None) -> bytes:
    text = "".join(f" {k}={quoteattr(v)}" for k, v in attrs.items() if v)
    return STREAM_HEADER.format(attrs=text).encode()


def _jid_or_none(jid: str | None) -> JID | None:
    if not jid:
        return None
    try:
        return parse_jid(jid)
    except JIDError:
        return None


def _domain_of(jid: str | None) -> str | None:
    parsed = _jid_or_none(jid)
    return None if parsed is None else parsed.domain


def certificate_names(cert: dict[str, Any]) -> list[str]:
    """DNS names of a verified peer certificate (RFC 6125 §6.4: subjectAltName dNSName;
    the CN only when there is no SAN)."""
    names = [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]
    if not names:
        for rdn in cert.get("subject", ()):
            names += [value for key, value in rdn if key == "commonName"]
    return [n.lower().rstrip(".") for n in names]


def certificate_matches(cert: dict[str, Any] | None, domain: str) -> bool:
    """XEP-0178 §3 / RFC 6125 §6.4.3: the certificate names `domain` (a wildcard only as
    the whole leftmost label)."""
    if not cert:
        return False
    domain = domain.lower()
    for name in certificate_names(cert):
        if name == domain:
            return True
        if name.startswith("*.") and "." in domain and domain.split(".", 1)[1] == name[2:]:
            return True
    return False


def receive_stanza(s2s: S2S, st: Stanza, authenticated: set[str], peer: str) -> None:
    """A stanza from another server, on a link where `authenticated` domains may speak
    (RFC 6120 §13): checked, then routed like a local one with a RemoteOrigin."""
    if not authenticated:
        raise StreamError("not-authorized", "no domain is authenticated on this stream")
    frm, to = st.attrs.get("from"), st.attrs.get("to")
    if not frm or not to:
        # RFC 6120 §4.9.3.7 and §8.1.1.1: server-to-server stanzas name both ends.
        raise StreamError("improper-addressing", "a stanza needs 'from' and 'to'")
    try:
        sender = parse_jid(frm)
    except JIDError:
        raise StreamError("invalid-from", "the 'from' address is malformed") from None
    if sender.domain not in authenticated:
        raise StreamError("invalid-from", f"{sender.domain} is not authenticated here")
    router = s2s.router
    local = _domain_of(to)
    if local is None or not (router.is_local(local) or router.is_service(local)):
        raise StreamError("host-unknown", "this server does not serve that domain")
    origin = RemoteOrigin(s2s, sender, local)
    if not s2s.serves(local):
        # A service that does not federate (HTTP upload: its quotas are local accounts').
        reply_error(st, origin, StanzaError("service-unavailable", "local users only"))
        return
    if local in s2s.services:
        st = read_as_client(st)  # a room reads <subject/>, <error/>, <show/> as a client's
    route_from_peer(router, origin, st, f"s2s {peer}")


class ReverseLink:
    """XEP-0288: an incoming link the peer made bidirectional carries our stanzas to it."""

    def __init__(self, incoming: Incoming, local: str, remote: str) -> None:
        self.incoming = incoming
        self.local = local
        self.remote = remote

    @property
    def closing(self) -> bool:
        return self.incoming.closing or self.incoming.transport is None

    def submit(self, data: bytes, name: str, attrs: dict[str, Any]) -> None:
        self.incoming.write(data)


class RemoteOrigin(PeerOrigin):
    """A remote entity as the router and the modules see it: `send` goes back over
    server-to-server links, stamped with the local domain it wrote to when needed."""

    def __init__(self, s2s: S2S, jid: Any, local_domain: str) -> None:
        super().__init__(s2s.server.router, jid)
        self.s2s = s2s
        self.local_domain = local_domain

    def send(self, data: bytes) -> None:
        self.s2s.deliver(data, self.full, self.local_domain)

    def send_uncounted(self, data: bytes) -> None:
        self.send(data)


class S2S:
    """The server's links to other servers and the dialback secret (XEP-0185)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.config = server.config.s2s
        self.router = server.router
        self.secret = hashlib.sha256(secrets.token_bytes(32)).digest()
        self.outgoing: dict[tuple[str, str], Outgoing | ReverseLink] = {}
        self.links_out: set[Outgoing] = set()  # every outgoing link not closed: max_outgoing
        self.dialback_pending = 0  # verifications waiting, all streams: max_dialback_pending
        self.dns_slots = asyncio.Semaphore(self.config.max_dns_lookups)
        self._resolver: aiodns.DNSResolver | None = None  # one c-ares channel, made at first use
        self.incoming: set[Incoming] = set()
        self.per_ip: Counter[str] = Counter()
        self.routes = {domain: (host, port) for domain, host, port in self.config.routes}
        # Services that federate -> the host whose certificate they present.
        self.services: dict[str, str] = {}
        self.client_contexts: dict[str, ssl.SSLContext] = {}
        self.server_contexts: dict[str, ssl.SSLContext] = {}
        self.certificates_changed()
        if self.config.enabled:
            self.router.remote_hook = self.route_out

    # --- our domains ------------------------------------------------------------------

    def federate_service(self, domain: str, host: str) -> None:
        """Let other servers reach the service `domain` (a Router.add_service domain) and
        let it send to them, over links of its own that present `host`'s certificate."""
        self.services[domain] = host
        self.server_contexts[domain] = self.server_contexts[host]

    def serves(self, domain: str) -> bool:
        """Whether `domain` is ours on server links: a host, or a service that federates."""
        return bool(self.router.is_local(domain)) or domain in self.services

    # --- TLS contexts ------------------------------------------------------------------

    def _cert_pair(self, domain: str) -> tuple[str, str]:
        return self.server.certificates[self.services.get(domain, domain)]

    def certificates_changed(self) -> None:
        """The hosts' certificates were (re)loaded (`Server.reload`): links opened from now on
        present them, both ways; open links keep theirs."""
        for name, context in self.server.tls_contexts.items():
            self.server_contexts[name] = self._server_context(name, context)
        for domain, host in self.services.items():
            self.server_contexts[domain] = self.server_contexts[host]
        self.client_contexts.clear()

    def _server_context(self, host: str, c2s_context: ssl.SSLContext) -> ssl.SSLContext:
        """Inbound TLS: our host's certificate; with `ca_file`, the peer's certificate is
        asked for and checked against it, for SASL EXTERNAL (XEP-0178 §2)."""
        if not self.config.ca_file:
            return c2s_context
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=self.config.ca_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(*self._cert_pair(host))
        context.verify_mode = ssl.CERT_OPTIONAL
        return context

    def client_context(self, host: str) -> ssl.SSLContext:
        """Outbound TLS: our certificate as the client certificate (for EXTERNAL); the
        peer's certificate is checked against `ca_file` when set, and against the system
        store when dialback is off. With dialback on and no `ca_file`, a peer with a
        certificate we cannot check is still encrypted to, and dialback authenticates."""
        context = self.client_contexts.get(host)
        if context is not None:
            return context
        if self.config.ca_file:
            context = ssl.create_default_context(cafile=self.config.ca_file)
        elif not self.config.dialback:
            context = ssl.create_default_context()
        else:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(*self._cert_pair(host))
        self.client_contexts[host] = context
        return context

    # --- dialback keys (XEP-0185 §3) ---------------------------------------------------

    def dialback_key(self, receiving: str, originating: str, stream_id: str) -> str:
        text = f"{receiving} {originating} {stream_id}".encode()
        return hmac.new(self.secret, text, hashlib.sha256).hexdigest()

    # --- sending -----------------------------------------------------------------------

    def route_out(self, origin: Session, st: Stanza, target: tuple[str, ...]) -> None:
        """The router's remote_hook: a stanza from a local session to another domain."""
        if origin.is_remote:
            # RFC 6120 §13.3: we relay nothing between two other servers.
            raise StanzaError("remote-server-not-found", "this server relays for nobody")
        data = for_peer_stream(st, {"from": origin.full})
        self.send(origin.domain, target[1], data, st.name, {**st.attrs, "from": origin.full})

    def deliver(self, data: bytes, to: str, local_domain: str | None = None) -> None:
        """Bytes made by a module for a remote JID (presence, replies, a room's copies):
        'to' set, 'from' the local domain when the module left it out; they go over the
        link of the domain in 'from' (a host, or a service that federates)."""
        remote = _domain_of(to)
        if remote is None or self.router.is_local(remote) or self.router.is_service(remote):
            return
        start = _PLAIN_START.match(data)
        frm = start_tag_attr(data, "from") if start is not None else None
        if (
            start is not None
            and frm is not None
            and start_tag_attr(data, "to") == to
            and start_tag_attr(data, "xmlns") is None
        ):
            # Addressed already and in no namespace of its own (a room's copies): as made.
            element_name = start.group(1).decode()
        else:
            element = etree.fromstring(data, _PARSER)
            element.set("to", to)
            frm = element.get("from")
            if frm is None:
                if local_domain is None:
                    return
                element.set("from", local_domain)
                frm = local_domain
            qname = etree.QName(element)
            element_name = qname.localname
            data = etree.tostring(element)
            if qname.namespace == ns.CLIENT:
                data = for_peer_bytes(data)  # it declared jabber:client itself
        local = _domain_of(frm)
        if local is None or not self.serves(local):
            return  # from a domain that is not ours on server links
        self.send(local, remote, data, element_name, {"from": frm, "to": to})

    def send(self, local: str, remote: str, data: bytes, name: str, attrs: dict[str, Any]) -> None:
        if not self.config.enabled:
            self.bounce(name, attrs, "remote-server-not-found", "federation is off")
            return
        link = self.outgoing.get((local, remote))
        if link is None or link.closing:
            if self.at_outgoing_limit():
                self.bounce(name, attrs, "resource-constraint", "too many server links")
                return
            link = Outgoing(self, local, remote)
            self.outgoing[(local, remote)] = link
        link.submit(data, name, attrs)

    def at_outgoing_limit(self) -> bool:
        return len(self.links_out) >= self.config.max_outgoing

    def bounce(self, name: str, attrs: dict[str, Any], condition: str, text: str) -> None:
        """RFC 6120 §8.3.3.14/15: a message or iq that cannot go out gets an error back;
        presence, errors and iq results are dropped."""
        stype = attrs.get("type")
        if name == "presence" or stype == "error" or (name == "iq" and stype == "result"):
            return
        frm, to = attrs.get("from"), attrs.get("to")
        try:
            sender = parse_jid(frm or "")
        except JIDError:
            return
        error = stanza_error_bytes(name, attrs.get("id"), to, frm, StanzaError(condition, text))
        if sender.domain in self.services:
            # A room's copy for a remote occupant: the service gets the error its recipient
            # would have sent (XEP-0045 §19.1.2: the occupant is gone), as a stanza from it.
            st = read_stanza(error)
            recipient = _jid_or_none(to)
            if st is not None and recipient is not None:
                origin = RemoteOrigin(self, recipient, sender.domain)
                route_from_peer(self.router, origin, st, f"s2s bounce to {sender.domain}")
            return
        if sender.resource:
            session = self.router.session(sender.bare, sender.resource)
            if session is not None:
                session.send(error)

    # --- dialback verification (XEP-0220 §2.3) -----------------------------------------

    def verify(
        self, local: str, remote: str, stream_id: str, key: str, done: Callable[[bool | None], None]
    ) -> str | None:
        """Ask the authoritative server of `remote` whether `key` is its key for the
        stream `stream_id` it opened to `local`; `done` gets the answer. Returns the
        condition of a dialback error instead when no link can be had for it."""
        link = self.outgoing.get((local, remote))
        if not isinstance(link, Outgoing) or link.closing:
            if self.at_outgoing_limit():
                return "resource-constraint"
            link = Outgoing(self, local, remote)
            if (local, remote) not in self.outgoing or self.outgoing[(local, remote)].closing:
                self.outgoing[(local, remote)] = link
        link.ask_verify(stream_id, key, done)
        return None

    def add_reverse(self, incoming: Incoming, local: str, remote: str) -> None:
        """XEP-0288 §2: `remote` authenticated on a bidirectional incoming link: our
        stanzas to it take that link, unless an outgoing one is already up."""
        link = self.outgoing.get((local, remote))
        if link is None or link.closing:
            self.outgoing[(local, remote)] = ReverseLink(incoming, local, remote)
            log.info("s2s %s -> %s: over the peer's bidirectional link", local, remote)

    def link_closed(self, link: Outgoing | ReverseLink) -> None:
        if self.outgoing.get((link.local, link.remote)) is link:
            del self.outgoing[(link.local, link.remote)]

    async def resolve(self, domain: str) -> list[tuple[str, int]]:
        """RFC 6120 §3.2: a static route, else `_xmpp-server._tcp` SRV records by priority
        (weights ignored), else the domain itself on 5269."""
        route = self.routes.get(domain)
        if route is not None:
            return [route]
        targets: list[tuple[str, int]] = []
        with contextlib.suppress(aiodns.error.DNSError, OSError, ValueError):
            records = await self._srv_lookup(f"_xmpp-server._tcp.{domain}")
            for record in sorted(records, key=lambda r: (r.priority, -r.weight)):
                if record.host in ("", "."):
                    return []  # RFC 2782: "." means no service at this domain
                targets.append((record.host, record.port))
        return targets or [(domain, S2S_PORT)]

    async def _srv_lookup(self, name: str) -> Any:
        """One SRV query, at most `max_dns_lookups` at once. A slot is held until c-ares has
        ended the query, even when the link that asked stopped waiting for it; the resolver
        gives up after about half of `connect_timeout`."""
        await self.dns_slots.acquire()
        try:
            if self._resolver is None:
                self._resolver = aiodns.DNSResolver(
                    list(self.config.dns_servers) or None,
                    timeout=max(0.25, self.config.connect_timeout / 6),
                    tries=2,
                )
            query = self._resolver.query(name, "SRV")
        except BaseException:
            self.dns_slots.release()
            raise
        query.add_done_callback(self._lookup_ended)
        return await asyncio.shield(query)

    def _lookup_ended(self, query: asyncio.Future[Any]) -> None:
        self.dns_slots.release()
        if not query.cancelled():
            query.exception()  # looked at: whoever awaited it may have gone

    def stop(self) -> None:
        for link in list(self.outgoing.values()):
            if isinstance(link, Outgoing):
                link.close("system-shutdown")
        for stream in list(self.incoming):
            stream.close_with_error("system-shutdown", "the server is shutting down")


class Outgoing(XmlStream):
    """One outgoing link from `local` to `remote`: connect, TLS, authenticate, then carry
    stanzas (and dialback verify requests) until idle."""

    what = "s2s"
    log = log

    def __init__(self, s2s: S2S, local: str, remote: str) -> None:
        self.s2s = s2s
        self.config = s2s.config
        self.local = local
        self.remote = remote
        self.transport: Any = None
        self.connection: Connection | None = Connection(
            self, s2s.server.config.limits, "s2s", s2s.server.background
        )
        self.queue: list[tuple[bytes, str, dict[str, Any]]] = []
        self.verifies: list[bytes] = []
        self.waiting_verify: dict[tuple[str, str], list[Callable[[bool | None], None]]] = {}
        self.stream_id = ""
        self.sasl_done = False
        self.established = False  # features after TLS seen: verify requests may go
        self.ready = False  # authenticated: stanzas may go
        self.bidi = False  # XEP-0288: the peer's stanzas come back over this link
        self.closing = False
        self.idle_timer: asyncio.TimerHandle | None = None
        s2s.links_out.add(self)
        loop = asyncio.get_running_loop()
        self.deadline: asyncio.TimerHandle | None = loop.call_later(
            self.config.connect_timeout, self._timed_out
        )
        # Only until it ends: a task that ended by an exception keeps its traceback, whose
        # frame holds this link (a cycle, freed only by a full collection).
        self.task: asyncio.Task[None] | None = loop.create_task(self._connect())
        self.task.add_done_callback(self._connect_ended)

    def _connect_ended(self, task: asyncio.Task[None]) -> None:
        self.task = None

    def submit(self, data: bytes, name: str, attrs: dict[str, Any]) -> None:
        if self.ready and self.transport is not None:
            self._write(data)
            return
        if len(self.queue) >= self.config.max_queued_stanzas:
            self.s2s.bounce(name, attrs, "resource-constraint", "too many stanzas waiting")
            return
        self.queue.append(
            (
                data,
                name,
                {
                    "from": attrs.get("from"),
                    "to": attrs.get("to"),
                    "id": attrs.get("id"),
                    "type": attrs.get("type"),
                },
            )
        )

    def ask_verify(self, stream_id: str, key: str, done: Callable[[bool | None], None]) -> None:
        self.waiting_verify.setdefault((stream_id, key), []).append(done)
        data = (
            f"<db:verify from={quoteattr(self.local)} to={quoteattr(self.remote)} "
            f"id={quoteattr(stream_id)}>{key}</db:verify>"
        ).encode()
        if self.established and self.transport is not None:
            self._write(data)
        else:
            self.verifies.append(data)

    def _write(self, data: bytes) -> None:
        if self.connection is not None and self.transport is not None:
            self.connection.write(data)
            if self.ready:
                self._touch()

    def _touch(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        self.idle_timer = asyncio.get_running_loop().call_later(
            self.config.idle_timeout, self.close, None
        )

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        connection = self.connection
        assert connection is not None
        try:
            targets = await self.s2s.resolve(self.remote)
        except Exception:
            targets = []
        for host, port in targets:
            if self.closing:
                return
            try:
                await loop.create_connection(lambda: connection, host, port)
                return
            except OSError as exc:
                log.info(
                    "s2s %s -> %s: cannot connect to %s:%d: %s",
                    self.local,
                    self.remote,
                    host,
                    port,
                    exc,
                )
        self.fail("remote-server-not-found", f"cannot connect to {self.remote}")

    def _timed_out(self) -> None:
        self.deadline = None
        if not self.ready:
            self.fail("remote-server-timeout", f"no link to {self.remote} in time")

    def fail(self, condition: str, text: str) -> None:
        """The link cannot carry stanzas: bounce what waits, tell waiting verifications."""
        log.info("s2s %s -> %s failed: %s", self.local, self.remote, text)
        queue, self.queue = self.queue, []
        for _data, name, attrs in queue:
            self.s2s.bounce(name, attrs, condition, text)
        waiting, self.waiting_verify = self.waiting_verify, {}
        for callbacks in waiting.values():
            for done in callbacks:
                done(None)  # not asked, or no answer: no verdict (XEP-0220 §2.5)
        self.close("undefined-condition" if self.transport is not None else None)

    def close(self, condition: str | None = None) -> None:
        if self.closing:
            return
        self.closing = True
        self.s2s.link_closed(self)
        for timer in (self.deadline, self.idle_timer):
            if timer is not None:
                timer.cancel()
        if self.queue or self.waiting_verify:
            self.closing = False
            self.fail("remote-server-not-found", f"the link to {self.remote} closed")
            return
        self.s2s.links_out.discard(self)
        if self.transport is not None and self.connection is not None:
            error = stream_error_bytes(condition) if condition is not None else b""
            self.connection.write(error + STREAM_CLOSE)
            self.connection.close_transport(linger=False)
        else:
            if self.task is not None and asyncio.current_task() is not self.task:
                self.task.cancel()
            if self.connection is not None:
                # Never connected: nothing will call connection_lost, which is what lets
                # a connection give up its owner (Connection.connection_lost).
                self.connection.owner = GONE

    # --- asyncio protocol --------------------------------------------------------------

    def connected(self, connection: Connection) -> None:
        # A peer that stops reading must not make our output grow without end: the
        # connection's limits.max_outbound_buffer, then pause_writing.
        log.info("s2s %s -> %s: connected", self.local, self.remote)
        self._send_header()

    def pause_writing(self) -> None:
        if self.closing or self.transport is None:
            return
        log.info("s2s %s -> %s: output not read, link closed", self.local, self.remote)
        transport = self.transport
        self.close("policy-violation")
        asyncio.get_running_loop().call_later(2.0, transport.abort)

    def _send_header(self, peer_from: str | None = None) -> None:
        if self.connection is not None:
            self.connection.restart()
        self._write(_header(**{"from": self.local, "to": self.remote}))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closing:
            self.close()
        log.info("s2s %s -> %s: closed", self.local, self.remote)

    def handle(self, events: list[Any]) -> None:
        if self.ready and self.bidi:
            self._touch()  # the peer's traffic on a bidirectional link keeps it up too
        XmlStream.handle(self, events)

    def _stream_header(self, header: StreamHeader) -> None:
        self.stream_id = header.attrs.get("id", "")
        check_stream_root(header, ns.SERVER)

    def _peer_closed(self) -> None:
        self.close()

    def _stream_failed(self, err: StreamError) -> None:
        self.fail("remote-server-not-found", f"stream error {err.condition}")

    def _internal_error(self) -> None:
        self.fail("remote-server-not-found", "internal error")

    def _describe(self) -> str:
        return f"{self.local} -> {self.remote}"

    def _element(self, st: Stanza) -> None:
        if st.ns == ns.SERVER and st.name in STANZA_NAMES:
            if not (self.bidi and self.ready):
                raise StreamError("unsupported-stanza-type", "this link is not bidirectional")
            receive_stanza(self.s2s, st, {self.remote}, self.remote)
        elif st.ns == ns.STREAMS and st.name == "features":
            self._features(st.element())
        elif st.ns == ns.STREAMS and st.name == "error":
            self.fail("remote-server-not-found", f"{self.remote} sent a stream error")
        elif st.ns == ns.TLS and st.name == "proceed":
            self._tls_proceed()
        elif st.ns == ns.TLS:
            self.fail("remote-server-not-found", "STARTTLS failed")
        elif st.ns == ns.SASL and st.name == "success":
            self.sasl_done = True
            self._send_header()  # RFC 6120 §6.4.6: restart
        elif st.ns == ns.SASL and st.name == "failure":
            if self.config.dialback:
                self._dialback()
            else:
                self.fail("remote-server-not-found", "SASL EXTERNAL refused")
        elif st.ns == NS_DIALBACK and st.name == "result":
            if st.attrs.get("type") == "valid":
                self._ready("dialback")
            else:
                self.fail("remote-server-not-found", "dialback refused")
        elif st.ns == NS_DIALBACK and st.name == "verify":
            key = (st.attrs.get("id", ""), "")
            valid = st.attrs.get("type") == "valid"
            for (stream_id, k), callbacks in list(self.waiting_verify.items()):
                if stream_id == key[0]:
                    del self.waiting_verify[(stream_id, k)]
                    for done in callbacks:
                        done(valid)

    def _features(self, features: Any) -> None:
        tls = features.find(f"{{{ns.TLS}}}starttls")
        if not self.encrypted and tls is not None:
            self._write(f"<starttls xmlns='{ns.TLS}'/>".encode())
            return
        if not self.encrypted and self.config.require_tls:
            self.fail("remote-server-not-found", f"{self.remote} offers no STARTTLS")
            return
        self.established = True
        verifies, self.verifies = self.verifies, []
        for data in verifies:
            self._write(data)
        if self.sasl_done:
            self._ready("SASL EXTERNAL")
            return
        if self.ready:
            return
        if (
            self.encrypted
            and self.config.bidi
            and self.config.ca_file
            and features.find(f"{{{NS_BIDI_FEATURE}}}bidi") is not None
        ):
            # XEP-0288 §2, before authenticating; the peer's identity is the one its
            # certificate proved (checked against ca_file, with the host name).
            self.bidi = True
            self._write(f"<bidi xmlns='{NS_BIDI}'/>".encode())
        mechanisms = [m.text for m in features.iter(f"{{{ns.SASL}}}mechanism")]
        if self.encrypted and "EXTERNAL" in mechanisms:
            # XEP-0178 §4: the authorization identity is our domain.
            authzid = base64.b64encode(self.local.encode()).decode()
            self._write(f"<auth xmlns='{ns.SASL}' mechanism='EXTERNAL'>{authzid}</auth>".encode())
        elif self.config.dialback:
            self._dialback()
        else:
            self.fail("remote-server-not-found", f"cannot authenticate to {self.remote}")

    def _dialback(self) -> None:
        key = self.s2s.dialback_key(self.remote, self.local, self.stream_id)
        self._write(
            f"<db:result from={quoteattr(self.local)} to={quoteattr(self.remote)}>"
            f"{key}</db:result>".encode()
        )

    def _ready(self, how: str) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        self.ready = True
        if self.bidi:
            how += ", bidirectional"  # XEP-0288
        log.info("s2s %s -> %s: ready (%s)", self.local, self.remote, how)
        queue, self.queue = self.queue, []
        if queue:
            self._write(b"".join(data for data, _name, _attrs in queue))
        self._touch()

    def _tls_proceed(self) -> None:
        """RFC 6120 §5.4.3.3 as the initiating entity: the handshake, then our new header."""
        connection = self.connection
        assert connection is not None
        context = self.s2s.client_context(self.local)

        async def upgrade() -> None:
            try:
                transport = await asyncio.get_running_loop().start_tls(
                    connection.transport,
                    connection,
                    context,
                    server_hostname=self.remote,
                    ssl_handshake_timeout=self.config.connect_timeout,
                )
            except (TimeoutError, OSError, ssl.SSLError, ConnectionError) as exc:
                self.fail("remote-server-not-found", f"TLS with {self.remote} failed: {exc}")
                return
            connection.tls_established(transport, "TLS")
            connection.pending.clear()
            self._send_header()

        connection.run_step(upgrade)


def accept(s2s: S2S) -> Connection:
    """The protocol of a new server-to-server connection (the listener's factory)."""
    return accepted(Incoming(s2s), s2s.server)


class Incoming(XmlStream):
    """One inbound link: another server's stream to us (RFC 6120 §13, XEP-0220 §2.2)."""

    what = "s2s"
    log = log

    def __init__(self, s2s: S2S) -> None:
        self.s2s = s2s
        self.server = s2s.server
        self.router = s2s.router
        self.config = s2s.config
        self.transport: Any = None
        self.connection: Connection | None = None
        self.host: str | None = None
        self.peer_domain: str | None = None
        self.sasl_done = False
        self.authenticated: set[str] = set()
        # The one sender domain dialback may verify on this stream (see the module doc).
        self.dialback_domain: str | None = None
        self.dialback_pending = 0  # verifications this stream is waiting for
        self.bidi = False  # XEP-0288: the peer asked for a bidirectional link
        self.closing = False
        self.auth_timer: asyncio.TimerHandle | None = None
        self.address = "?"  # counted in s2s.per_ip while the stream is in s2s.incoming

    def connected(self, connection: Connection) -> None:
        limits = self.s2s.server.config.limits
        self.address = address_block(connection.address, limits.ipv6_prefix_length)
        self.s2s.incoming.add(self)
        self.s2s.per_ip[self.address] += 1
        log.info("s2s connection from %s", self.peer)
        if len(self.s2s.incoming) > self.config.max_incoming:
            self.close_with_error("resource-constraint", "too many server connections")
            return
        if self.s2s.per_ip[self.address] > self.config.max_incoming_per_ip:
            self.close_with_error("policy-violation", "too many connections from your address")
            return
        self.auth_timer = asyncio.get_running_loop().call_later(
            self.config.auth_timeout, self._auth_timed_out
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self in self.s2s.incoming:
            self.s2s.incoming.discard(self)
            self.s2s.per_ip[self.address] -= 1
            if self.s2s.per_ip[self.address] <= 0:
                del self.s2s.per_ip[self.address]
        if self.auth_timer is not None:
            self.auth_timer.cancel()
        log.info(
            "s2s connection from %s closed (%s)",
            self.peer,
            ", ".join(sorted(self.authenticated)) or "unauthenticated",
        )

    def _auth_timed_out(self) -> None:
        self.auth_timer = None
        if not self.authenticated:
            self.close_with_error("connection-timeout", "authentication took too long")

    def _stream_header(self, header: StreamHeader) -> None:
        attrs = header.attrs
        to_domain = _domain_of(attrs.get("to"))
        if self.host is not None and to_domain != self.host:
            raise StreamError("host-unknown", "the stream restart named another host")
        self.host = to_domain
        self.peer_domain = _domain_of(attrs.get("from"))
        self._send_header()
        check_stream_root(header, ns.SERVER)
        if self.host is None or not self.s2s.serves(self.host):
            raise StreamError("host-unknown", "this server does not serve that domain")
        self.write(self._features())

    @property
    def stream_id(self) -> str:
        return self.connection.stream_id if self.connection is not None else ""

    def _header_xml(self, stream_id: str, peer_from: str | None) -> bytes:
        local = self.host if self.host is not None and self.s2s.serves(self.host) else None
        return _header(id=stream_id, **{"from": local, "to": self.peer_domain})

    def _peer_certificate(self) -> dict[str, Any] | None:
        if self.transport is None:
            return None
        ssl_object = self.transport.get_extra_info("ssl_object")
        return None if ssl_object is None else ssl_object.getpeercert()

    def _features(self) -> bytes:
        parts = []
        if not self.encrypted:
            parts.append(
                f"<starttls xmlns='{ns.TLS}'>"
                + ("<required/>" if self.config.require_tls else "")
                + "</starttls>"
            )
        if not self.sasl_done and (self.encrypted or not self.config.require_tls):
            if (
                self.encrypted
                and self.peer_domain is not None
                and certificate_matches(self._peer_certificate(), self.peer_domain)
            ):
                parts.append(
                    f"<mechanisms xmlns='{ns.SASL}'><mechanism>EXTERNAL</mechanism></mechanisms>"
                )
            if self.config.dialback:
                parts.append(f"<dialback xmlns='{NS_DIALBACK_FEATURE}'><errors/></dialback>")
            if self.encrypted and self.config.bidi:
                parts.append(f"<bidi xmlns='{NS_BIDI_FEATURE}'/>")
        return features_xml(parts)

    def _element(self, st: Stanza) -> None:
        if st.ns == ns.SERVER and st.name in STANZA_NAMES:
            self._stanza(st)
        elif st.ns == ns.STREAMS and st.name == "error":
            # RFC 6120 §4.9.1.1: the peer is closing with an error.
            log.info("s2s %s: the peer sent a stream error", self.peer)
            self._peer_closed()
        elif st.ns == ns.TLS and st.name == "starttls" and not self.encrypted:
            assert self.host is not None
            self._starttls(self.s2s.server_contexts[self.host])
        elif st.ns == ns.SASL and st.name == "auth" and self.encrypted and not self.sasl_done:
            self._sasl_external(st)
        elif st.ns == NS_DIALBACK and st.name == "result" and self.config.dialback:
            self._dialback_result(st)
        elif st.ns == NS_DIALBACK and st.name == "verify" and self.config.dialback:
            self._dialback_verify(st)
        elif st.ns == NS_BIDI and st.name == "bidi" and self.config.bidi and self.encrypted:
            self.bidi = True
        else:
            raise StreamError("unsupported-stanza-type", f"<{st.name}/> is not expected here")

    # --- SASL EXTERNAL ---------------------------------------------------------------

    def _sasl_external(self, st: Stanza) -> None:
        """XEP-0178 §3: EXTERNAL succeeds for the domain the certificate names."""
        if st.attrs.get("mechanism") != "EXTERNAL":
            self._sasl_failure("invalid-mechanism")
            return
        text = (st.element().text or "").strip()
        try:
            authzid = "" if text in ("", "=") else base64.b64decode(text, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            self._sasl_failure("incorrect-encoding")
            return
        domain = authzid or self.peer_domain
        if domain is None or (self.peer_domain and domain != self.peer_domain):
            self._sasl_failure("invalid-authzid")
            return
        if not certificate_matches(self._peer_certificate(), domain):
            self._sasl_failure("not-authorized")
            return
        self.sasl_done = True
        self._authenticated(domain, "SASL EXTERNAL")
        self.write(f"<success xmlns='{ns.SASL}'/>".encode())
        if self.connection is not None:
            self.connection.restart()  # RFC 6120 §6.4.6

    def _sasl_failure(self, condition: str) -> None:
        self.write(f"<failure xmlns='{ns.SASL}'><{condition}/></failure>".encode())

    def _authenticated(self, domain: str, how: str) -> None:
        self.authenticated.add(domain)
        if self.bidi and self.host is not None:
            self.s2s.add_reverse(self, self.host, domain)
        if self.auth_timer is not None:
            self.auth_timer.cancel()
            self.auth_timer = None
        log.info("s2s %s: %s authenticated (%s)", self.peer, domain, how)

    # --- dialback (XEP-0220 §2.2, §2.4) ------------------------------------------------

    def _dialback_result(self, st: Stanza) -> None:
        if self.config.require_tls and not self.encrypted:
            raise StreamError("policy-violation", "STARTTLS first")
        local, remote = _domain_of(st.attrs.get("to")), _domain_of(st.attrs.get("from"))
        key = (st.element().text or "").strip()
        if local is None or remote is None or not key:
            raise StreamError("improper-addressing", "db:result needs from, to and a key")
        if not self.s2s.serves(local):
            # XEP-0220 §2.2.1, §2.5: an error for this domain pair, the stream stays.
            self._dialback_error(local, remote, "item-not-found", "cancel")
            return
        asked_for = self.peer_domain or self.dialback_domain
        if asked_for is not None and remote != asked_for:
            # RFC 6120 §4.7.1: the header's 'from' named the domain this stream speaks for;
            # another one (XEP-0220 §2.6.1 sender multiplexing) would let one stream make us
            # contact any number of domains. resource-constraint (§2.5) tells the peer to
            # open a new connection for it.
            log.info(
                "s2s %s: dialback for %s refused on a stream for %s", self.peer, remote, asked_for
            )
            self._dialback_error(local, remote, "resource-constraint", "wait")
            return
        if (
            self.dialback_pending >= self.config.max_dialback_pending_per_stream
            or self.s2s.dialback_pending >= self.config.max_dialback_pending
        ):
            log.info("s2s %s: dialback for %s refused: too many pending", self.peer, remote)
            self._dialback_error(local, remote, "resource-constraint", "wait")
            return
        self.dialback_domain = remote
        self.dialback_pending += 1
        self.s2s.dialback_pending += 1
        finished = False

        def finish(valid: bool | None, condition: str = "remote-server-timeout") -> None:
            nonlocal finished
            if finished:
                return
            finished = True
            deadline.cancel()
            self.dialback_pending -= 1
            self.s2s.dialback_pending -= 1
            if self.closing:
                return
            if valid is None:
                # XEP-0220 §2.5: no answer in time, or no link to ask over.
                self._dialback_error(local, remote, condition, "wait")
                return
            verdict = "valid" if valid else "invalid"
            addresses = f"from={quoteattr(local)} to={quoteattr(remote)}"
            self.write(f"<db:result type='{verdict}' {addresses}/>".encode())
            if valid:
                self._authenticated(remote, "dialback")
            else:
                self.close_with_error("not-authorized", "dialback verification failed")

        deadline = asyncio.get_running_loop().call_later(self.config.connect_timeout, finish, None)
        refused = self.s2s.verify(local, remote, self.stream_id, key, finish)
        if refused is not None:
            finish(None, refused)

    def _dialback_error(self, local: str, remote: str, condition: str, error_type: str) -> None:
        """XEP-0220 §2.5: an error for one domain pair; the stream goes on."""
        self.write(
            f"<db:result type='error' from={quoteattr(local)} to={quoteattr(remote)}>"
            f"<error type='{error_type}'><{condition} xmlns='{ns.STANZA_ERRORS}'/></error>"
            "</db:result>".encode()
        )

    def _dialback_verify(self, st: Stanza) -> None:
        """We are the authoritative server: is this our key for that stream?"""
        receiving, originating = st.attrs.get("from", ""), st.attrs.get("to", "")
        stream_id = st.attrs.get("id", "")
        key = (st.element().text or "").strip()
        expected = self.s2s.dialback_key(receiving, originating, stream_id)
        # XEP-0220 §2.3.2: a service that federates has links, hence keys, of its own.
        valid = self.s2s.serves(originating) and hmac.compare_digest(key, expected)
        self.write(
            f"<db:verify type='{'valid' if valid else 'invalid'}' from={quoteattr(originating)} "
            f"to={quoteattr(receiving)} id={quoteattr(stream_id)}/>".encode()
        )

    # --- stanzas (RFC 6120 §13) --------------------------------------------------------

    def _stanza(self, st: Stanza) -> None:
        receive_stanza(self.s2s, st, self.authenticated, self.peer)
