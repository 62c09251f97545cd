"""Client-to-server streams (RFC 6120): stream header, STARTTLS, SASL, resource binding,
then stanzas handed to the router; XEP-0198 stream management (acks, resumption: the state
and the rules are in sm.py, the stream calls into it). Legacy options: XEP-0138 zlib
compression after SASL, and pre-authentication iqs (XEP-0077 registration, XEP-0078 non-SASL
authentication) handed to their modules.

Two objects per client connection. The `Connection` (connection.py: transport, parser,
TLS and compression state, input pacing) is the asyncio protocol; the `C2SStream` is what
the stream negotiates (`ClientNegotiation`, c2s_negotiation.py: header, features, SASL,
compression; STARTTLS and closing are every `XmlStream`'s) and, once a resource is bound
(here), the router's `Session` (here too: routing, XEP-0198, XEP-0352). XEP-0198
resumption hands the connection of the stream that said <resume/> to the session it
resumes (`Connection.attach`), so modules keep their references to the session. Every error
raised while handling a stanza or the stream is turned into XML in `handle`/
`close_with_error` and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

from lxml import etree

from .. import ns
from .._parser import STREAM_END, Stanza, StreamHeader, XMLStreamError
from .._router import Session
from ..errors import StanzaError, StreamError, answered
from ..jid import JIDError, normalize_resource
from ..storage.lmdb_store import StorageFull
from . import compression, csi, sasl2, sm
from .c2s_negotiation import PRE_AUTH_IQ, ClientNegotiation, Negotiation, escape, sasl_text
from .connection import Connection
from .sasl import HashedTokenExchange, Success
from .sm import StreamManagement
from .throttle import address_block
from .xmlstream import XmlStream, reply_error

if TYPE_CHECKING:
    import ssl

    from ..server import Server

log = logging.getLogger("fastxmpp.c2s")

# Seconds a slow reader closed for unread output has to take its stream error.
SLOW_READER_GRACE = 2.0
# Debug traces never show input naming these namespaces: it may carry a password.
SECRET_MARKERS = (
    ns.SASL.encode(),
    sasl2.NS.encode(),
    b"jabber:iq:register",
    b"jabber:iq:auth",
)

# The iq payloads the stream answers itself, before the router: resource binding (RFC 6120
# §7) and the legacy session (RFC 6121 §1.4).
STREAM_IQS = ((ns.BIND, "bind"), (ns.SESSION, "session"))


def accept(
    server: Server,
    direct_tls: ssl.SSLContext | None = None,
    connection_type: type[Connection] = Connection,
) -> Connection:
    """The protocol of a new client connection (the listener's factory): a connection and
    the stream it starts with; `direct_tls`: a XEP-0368 listener's context;
    `connection_type`: another framing (RFC 7395 WebSocket)."""
    stream = C2SStream(server, direct_tls is not None)
    limits = server.config.limits
    connection = connection_type(stream, limits, "c2s", server.background)
    connection.direct_tls = direct_tls
    connection.refuse_tls_hello = direct_tls is None
    connection.pace_input(float(limits.max_bytes_per_second), float(limits.burst_bytes))
    if server.router.tracer is not None:
        connection.tracer = _trace
    stream.connection = connection
    return connection


def _trace(connection: Connection, data: bytes, events: list[Any] | None) -> None:
    """Debug trace of the connection's output and input, except input that may carry a
    password (SASL, XEP-0077 and XEP-0078 payloads): from the read naming such a namespace
    up to the read that completes a top-level element."""
    owner = connection.owner
    if not isinstance(owner, C2SStream):
        return
    if events is None:
        owner.router.tracer(owner, data, False)
        return
    secret = connection.trace_hiding or any(marker in data for marker in SECRET_MARKERS)
    shown = f"[{len(data)} bytes not shown: may carry a password]".encode() if secret else data
    owner.router.tracer(owner, shown, True)
    connection.trace_hiding = secret and not any(type(e) is Stanza for e in events)


class C2SStream(Session, ClientNegotiation):
    """States: waiting for a header -> features sent -> (TLS) -> (SASL) -> bound.

    Its attributes are declared (`__slots__`): what a module keeps per session is a record
    of its own (fastxmpp/records.py, in `Session.records`), never an attribute set here."""

    __slots__ = (
        "authenticated_local",
        "bound",
        "c2s",
        "closing",
        "connection",
        "former_peer",
        "host",
        "limits",
        "negotiation",
        "server",
        "user_agent_id",
    )

    what = "c2s"
    log = log
    stream_id_bytes = 12
    # Session.sm (a cdef attribute): XEP-0198 state once <enabled/> was sent, else None.
    sm: StreamManagement | None

    def __init__(self, server: Server, direct_tls: bool = False) -> None:
        self.server = server
        self.router = server.router
        config = server.config
        self.limits = config.limits
        self.c2s = config.c2s
        self.connection: Connection | None = None
        self.host: str | None = None
        self.authenticated_local: str | None = None
        self.bound = False
        self.closing = False
        self.former_peer = "?"
        self.negotiation: Negotiation | None = Negotiation(direct_tls)
        # XEP-0388 <user-agent id> of a session bound by XEP-0386 Bind 2 (None otherwise).
        self.user_agent_id: str | None = None

    # --- the connection's events -------------------------------------------------------

    def connected(self, connection: Connection) -> None:
        self.server.streams.add(self)
        # Until it authenticates, a connection is anonymous: bounded per address. After, its
        # account answers for it (limits.max_resources_per_account), so that many users
        # behind one NAT are not refused.
        state = self.negotiation
        assert state is not None
        address = address_block(connection.address, self.limits.ipv6_prefix_length)
        per_ip = self.server.unauthenticated_per_ip
        per_ip[address] += 1
        state.counted_address = address
        if per_ip[address] > self.limits.max_unauthenticated_per_ip:
            log.info("c2s connection from %s refused: too many from that address", self.peer)
            self.close_with_error(
                "policy-violation", "too many unauthenticated connections from your address"
            )
            return
        state.auth_timer = asyncio.get_running_loop().call_later(
            self.c2s.auth_timeout, self._auth_timed_out
        )
        log.info("c2s connection from %s", self.peer)
        if state.direct_tls:
            # XEP-0368 §3: STARTTLS must not be used over direct TLS; `_features` offers it
            # only on unencrypted streams.
            connection.tls_established(connection.transport, "direct TLS")

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.heap_trimmer.churned()
        self._uncount_unauthenticated()
        if self._resumable():
            # XEP-0198 §7: no closing handshake, so the stream is unfinished: the session
            # waits for the client to resume it.
            self._detach(exc)
            return
        self.closing = True
        self.server.streams.discard(self)
        self._end_session()
        log.info(
            "c2s connection from %s closed (%s)%s",
            self.peer,
            self.full or "unauthenticated",
            f": {exc}" if exc else "",
        )

    def pause_writing(self) -> None:
        """The client does not read what we send: close it before its output eats memory
        (limits.max_outbound_buffer). The stream error is queued behind the unread output,
        so the connection is aborted shortly after, which frees the buffer. A session the
        client may resume (XEP-0198) loses only its connection: what was not acknowledged
        is kept (within stream_management.max_unacked_*) and sent again on resumption."""
        connection = self.connection
        if self.closing or connection is None or connection.transport is None:
            return
        log.info("c2s %s: output not read, %d bytes queued", self.peer, self.queued_output())
        transport = connection.transport
        if self._resumable():
            self._release_connection().end_stream("policy-violation", "too much unread output")
            self._detach("output not read")
        else:
            self.close_with_error("policy-violation", "too much unread output")
        asyncio.get_running_loop().call_later(SLOW_READER_GRACE, transport.abort)

    def queued_output(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    @property
    def last_received(self) -> float:
        """When the client last sent anything (XEP-0199 idle pings look at this)."""
        return self.connection.last_received if self.connection is not None else 0.0

    def write(self, data: bytes) -> None:
        self.send_uncounted(data)

    def flush_output(self) -> None:
        self.flush()

    # --- event loop of the stream ------------------------------------------------------

    def handle(self, events: list[Any]) -> None:
        route = self.router.route
        connection = self.connection
        if connection is None:
            return
        for i, event in enumerate(events):
            if self.closing:
                owner = connection.owner
                if owner is not self:
                    # XEP-0198 §5: what followed <resume/> belongs to the resumed session.
                    owner.handle(events[i:])
                return
            if connection.busy:
                connection.pending.extend(events[i:])
                return
            try:
                if type(event) is Stanza:
                    if self.sm is not None and event.ns == ns.CLIENT:
                        self.sm.handled()  # XEP-0198 §4: ours to deal with from here on
                    if (
                        self.bound
                        and event.ns == ns.CLIENT
                        and event.name != "iq"
                        and event.prefix is None
                    ):
                        route(self, event)
                    else:
                        self._element(event)
                elif type(event) is StreamHeader:
                    self._stream_header(event)
                elif event is STREAM_END:
                    self._peer_closed()
                elif isinstance(event, XMLStreamError):
                    self.close_with_error(event.condition, event.text)
            except StanzaError as err:
                self._reply_error(event, err)
            except StreamError as err:
                answered(err)
                self.close_with_error(err.condition, err.text)
            except Exception:
                log.exception("internal error on stream from %s", self.peer)
                self.close_with_error("internal-server-error")

    def _reply_error(self, st: Stanza, err: StanzaError) -> None:
        reply_error(st, self, err)

    def run_iq_step(self, st: Stanza, step: Callable[[], Any]) -> None:
        """For iq handlers with slow work (password hashing): run the coroutine `step` while
        this stream's later input waits; its bytes are the reply, a StanzaError the error
        reply. The handler itself returns None."""

        async def answer() -> None:
            try:
                reply = await step()
            except StanzaError as err:
                self._reply_error(st, err)
                return
            if reply is not None:
                self.send(reply)

        self._run_step(answer)

    # --- non-routed top-level elements -------------------------------------------------

    def _element(self, st: Stanza) -> None:
        state = self.negotiation
        if state is not None and state.sasl2 is not None:
            sasl2.during_exchange(st)  # XEP-0388: anything else ends the stream
        if st.prefix is not None and st.ns == ns.CLIENT:
            # RFC 6120 §4.8.4: content-namespace elements carry no prefix.
            raise StreamError("bad-namespace-prefix", "stanzas must not be prefixed")
        if st.ns == sm.NS_SM:
            self._stream_management(st)
            return
        if (
            st.ns == csi.NS
            and self.authenticated_local is not None
            and self.server.config.csi.enabled
            and csi.client_state(self, st, self.server.config.csi.max_held_stanzas)
        ):
            return
        if st.ns == ns.TLS and st.name == "starttls":
            if (
                not self.encrypted
                and self.authenticated_local is None
                and self.host in self.server.tls_contexts
                and self.connection is not None
                and self.connection.byte_stream
            ):
                self._starttls(self.server.tls_contexts[self.host])
                return
            # RFC 6120 §5.4.2.2: STARTTLS where it was not offered (after TLS, after SASL)
            # is the failure case: <failure/>, then the stream is closed.
            log.info("c2s %s: STARTTLS where it was not offered", self.peer)
            self.send_uncounted(f"<failure xmlns='{ns.TLS}'/>".encode())
            self.close_with_error(None)
            return
        elif st.ns == ns.STREAMS and st.name == "error":
            # RFC 6120 §4.9.1.1: the client's stream error ends the stream; we answer with
            # our closing tag (§4.4), not with an error about its error.
            log.info("c2s %s: stream error from the client", self.peer)
            self._peer_closed()
            return
        elif st.ns == ns.SASL:
            if self.authenticated_local is not None:
                # RFC 6120 §4.9.3.12: authenticating again is a negotiation step this
                # stream is no longer entitled to.
                raise StreamError("not-authorized", "already authenticated")
            if self.c2s.require_encryption and not self.encrypted:
                # RFC 6120 §5.3.1: TLS is mandatory-to-negotiate here.
                self._sasl_failure("encryption-required", "STARTTLS first")
                return
            if st.name == "auth":
                self._sasl_auth(st)
                return
            if st.name == "response":
                self._sasl_response(st)
                return
            if st.name == "abort":
                self._sasl_abandon()
                self._sasl_failure("aborted")
                return
            raise StreamError("unsupported-stanza-type", f"SASL element <{st.name}/>")
        elif st.ns == sasl2.NS:
            if self.authenticated_local is not None:
                # XEP-0388 §success: a stream authenticates once, as with RFC 6120 §6.
                raise StreamError("not-authorized", "already authenticated")
            if self.c2s.require_encryption and not self.encrypted:
                self._sasl_failure("encryption-required", "STARTTLS first", sasl2_version=True)
                return
            self._sasl2_element(st)
            return
        elif (
            st.ns == compression.NS_PROTOCOL
            and st.name == "compress"
            and self.authenticated_local is not None
            and self.server.config.legacy.compression
        ):
            self._compress(st)
            return
        elif st.ns == ns.CLIENT and st.name in ("iq", "message", "presence"):
            if (
                self.authenticated_local is None
                and st.name == "iq"
                and len(st.children) == 1
                and st.children[0][0] in PRE_AUTH_IQ
            ):
                self._pre_auth_iq(st)
                return
            if self.authenticated_local is None or (not self.bound and st.name != "iq"):
                raise StreamError("not-authorized", "authenticate and bind first")
            self._iq(st)
            return
        if (
            self.authenticated_local is None
            and st.ns == compression.NS_PROTOCOL
            and self.server.config.legacy.compression
        ):
            raise StreamError("not-authorized", "authenticate first")  # XEP-0138 §2
        # RFC 6120 §4.9.3.24: an element this server takes at no stage of the stream, also
        # before authentication (it is no stanza waiting for authentication).
        raise StreamError("unsupported-stanza-type", f"<{st.name} xmlns='{st.ns}'/>")

    def _iq(self, st: Stanza) -> None:
        payload = st.children[0] if len(st.children) == 1 else None
        itype = st.attrs.get("type")
        if itype == "set" and payload in STREAM_IQS and st.attrs.get("id") is None:
            # RFC 6120 §8.1.3 and Appendix A.5: an iq has an 'id' (§8.3.3.1).
            raise StanzaError("bad-request", "an iq needs an 'id'")
        if payload == (ns.BIND, "bind") and itype == "set":
            if self.bound:
                # RFC 6120 §7.7.2: one resource per stream.
                raise StanzaError("not-allowed", "a resource is already bound to this stream")
            self._bind(st)
        elif payload == (ns.SESSION, "session") and itype == "set":
            if not self.bound:
                raise StreamError("not-authorized", "bind a resource first")
            self.send(_iq_result(st, self.full))
        elif not self.bound:
            raise StreamError("not-authorized", "bind a resource first")
        else:
            self.router.route(self, st)

    # --- resource binding (RFC 6120 §7) ------------------------------------------------

    def _bind(self, st: Stanza) -> None:
        assert self.authenticated_local is not None
        resource_el = st.element().find(f"{{{ns.BIND}}}bind/{{{ns.BIND}}}resource")
        requested = (resource_el.text or "").strip() if resource_el is not None else ""
        if requested:
            try:
                resource = normalize_resource(requested)
            except JIDError as exc:
                raise StanzaError("bad-request", str(exc)) from exc
        else:
            resource = _new_resource()
        self._enter_session(self.authenticated_local, resource, may_rename=True)
        payload = f"<bind xmlns='{ns.BIND}'><jid>{escape(self.full)}</jid></bind>"
        self.send(_iq_result(st, None, payload))
        self.server.session_bound(self)

    def _enter_session(self, local: str, resource: str, may_rename: bool) -> None:
        """Bind local@host/resource (prepared parts) to this stream; the caller replies and
        then tells the server (`session_bound`). StanzaError(conflict) leaves it unbound."""
        assert self.host is not None
        existing = self.router.session(f"{local}@{self.host}", resource)
        resources = self.router.resources(f"{local}@{self.host}")
        if existing is None and len(resources) >= self.limits.max_resources_per_account:
            waiting = [s for s in resources.values() if s.sm is not None and s.sm.detached]
            if not waiting:
                # RFC 6120 §7.6.2.1: the account has reached its number of connected resources.
                raise StanzaError("resource-constraint", "too many sessions for this account")
            # A session lost with its connection (XEP-0198, waiting to be resumed) gives way
            # to one that is here: the longest-bound of them ends now.
            waiting[0]._end_detached()
        if existing is not None:
            # RFC 6120 §7.7.2.2: the configured policy decides.
            policy = self.c2s.resource_conflict
            if policy == "reject" or (policy == "rename" and not may_rename):
                raise StanzaError("conflict", "that resource is in use")
            if policy == "rename":
                resource = _new_resource()
        old = self.router.bind(self, local, self.host, resource)
        self.bound = True
        self._negotiated()
        self.server.heap_trimmer.churned()  # the login's TLS and SASL garbage is behind us
        if old is not None and old is not self:
            old.close_with_error("conflict", "replaced by a new session for this resource")
        log.info("c2s %s: bound %s", self.peer, self.full)

    def legacy_login(self, st: Stanza, local: str, resource: str) -> None:
        """XEP-0078: the password was right; authenticate and bind in one step (no stream
        restart), or raise StanzaError(conflict) and stay unauthenticated."""
        if self.closing or self.authenticated_local is not None:
            return  # the stream went away (or authenticated) while the password was checked
        self._enter_session(local, resource, may_rename=False)
        self.authenticated_local = local
        self.server.counts.logins += 1
        self.send(_iq_result(st, None))
        log.info("c2s %s: authenticated %s@%s with jabber:iq:auth", self.peer, local, self.host)
        self.server.session_bound(self)

    # --- XEP-0388 SASL2 done: XEP-0198 resumption, XEP-0386 Bind 2, XEP-0484 FAST ----------

    def _sasl2_complete(
        self, outcome: Success, request: sasl2.AuthenticateRequest, exchange: Any
    ) -> None:
        """The exchange succeeded: resume the session or bind a resource as asked, then
        <success/> and, with no stream restart, the features of the authenticated stream
        (XEP-0388 §success)."""
        if self.closing:
            return
        local = outcome.local
        additional = sasl_text(outcome.data) if outcome.data else ""
        self.authenticated_local = local
        extra: list[str] = []
        if request.resume is not None:
            # XEP-0386 §bind-request: resumption first; when it works the bind is ignored.
            def announce(old: C2SStream, resumed: bytes) -> None:
                token = self._fast_token_xml(local, request, exchange)
                old.send_uncounted(
                    sasl2.success_xml(additional, old.full, [resumed.decode(), token])
                )
                old.send_uncounted(old._features())

            failed = self._resume(
                request.resume.get("previd", ""), request.resume.get("h"), announce
            )
            if failed is None:
                return  # resumed (the session has said so), or this stream is closed
            extra.append(failed.decode())
        if request.bind is not None:
            try:
                extra.append(self._bind2(local, request))
            except StanzaError as err:
                # No session could be made (RFC 6120 §7.6.2.1 resource-constraint): the
                # stream stays unauthenticated (XEP-0388 §outcome), the client may retry.
                self.authenticated_local = None
                self._sasl_failure("temporary-auth-failure", err.text or err.condition, True)
                return
        else:
            self._uncount_unauthenticated()
        extra.append(self._fast_token_xml(local, request, exchange))
        authorization = self.full if self.bound else f"{local}@{self.host}"
        self.write(sasl2.success_xml(additional, authorization, extra))
        self.write(self._features())
        if self.bound:
            self.server.session_bound(self)

    def _bind2(self, local: str, request: sasl2.AuthenticateRequest) -> str:
        """XEP-0386 §bind-request: bind "<tag>/<random>" (or a random resource), enable what
        the request lists; the <bound/> element. StanzaError when no session may be made.
        Stored offline messages are not cleared: they go out at initial presence as usual,
        as an archive need not hold them all (docs/COMPLIANCE.md)."""
        resource = f"{request.tag}/{secrets.token_hex(6)}" if request.tag else _new_resource()
        if request.client is not None:
            # Before binding, so that the account's resource limit does not count them.
            self.user_agent_id = request.client
            self._end_earlier_sessions_of_this_client(f"{local}@{self.host}")
        self._enter_session(local, resource, may_rename=True)
        parts = []
        mam = self.server.modules.get("mam")
        metadata = mam.archive_metadata(self) if mam is not None else None
        if metadata:
            parts.append(metadata)
        for child in request.bind:
            if not isinstance(child.tag, str):
                continue
            qname = etree.QName(child)
            if qname.namespace == ns.CARBONS and qname.localname == "enable":
                carbons = self.server.modules.get("carbons")
                if carbons is not None:
                    carbons.enable(self)  # XEP-0280 §4, inline: no answer
            elif qname.namespace == sm.NS_SM and qname.localname == "enable":
                parts.append(self._enable_sm(child.attrib).decode())
            elif qname.namespace == csi.NS and self.server.config.csi.enabled:
                # XEP-0386: the session begins in the state asked for (XEP-0352 §5).
                csi.set_state(self, qname.localname, self.server.config.csi.max_held_stanzas)
        return sasl2.bound_xml(parts)

    def _end_earlier_sessions_of_this_client(self, bare: str) -> None:
        """XEP-0386 §bind-request: upon binding, the server SHOULD terminate any earlier
        sessions from the same client (its XEP-0388 <user-agent id>). A phone whose old
        connection died unnoticed, or whose resumption failed, leaves no second session
        behind that would take (and hold) its messages: a live one gets the `conflict`
        stream error (RFC 6120 §4.9.3.3), one waiting for XEP-0198 resumption ends."""
        for other in list(self.router.resources(bare).values()):
            if (
                other is not self
                and isinstance(other, C2SStream)
                and other.user_agent_id == self.user_agent_id
            ):
                log.info(
                    "c2s %s: ends %s, an earlier session of the same client", self.peer, other.full
                )
                other.close_with_error("conflict", "replaced by a new session of the same client")

    def _fast_token_xml(self, local: str, request: sasl2.AuthenticateRequest, exchange: Any) -> str:
        """XEP-0484 <token/> for <success/>: asked for, or the one used is due for rotation
        (§token-rotation; never after <fast invalidate/> unless asked for, §invalidation)."""
        mechanism = request.request_token
        verified = exchange.verified if isinstance(exchange, HashedTokenExchange) else None
        if mechanism is None and verified is not None and verified.rotate:
            mechanism = request.mechanism
        if mechanism is None:
            return ""
        if request.client is None:
            # XEP-0484 §rules-clients: tokens are per client, named by <user-agent id>;
            # without one the login goes on without a token (xmpp.js may leave it out).
            log.info("c2s %s: no FAST token without <user-agent id>", self.peer)
            return ""
        assert self.host is not None
        try:
            token, expiry = sasl2.fast_tokens(self.server).issue(
                self.host, local, request.client, mechanism, self.c2s.fast_token_lifetime
            )
        except StorageFull as exc:
            log.warning("c2s %s: no FAST token for %s: %s", self.peer, local, exc)
            return ""
        return sasl2.token_xml(token, expiry)

    # --- XEP-0198 stream management ----------------------------------------------------

    def _stream_management(self, st: Stanza) -> None:
        name = st.name
        state = self.sm
        if name == "r" and state is not None:
            self.send_uncounted(state.answer())  # §4: at once, never withheld
        elif name == "a" and state is not None:
            h = sm.parse_h(st.attrs.get("h"))
            if h is None:
                raise StreamError("invalid-xml", "<a/> needs an 'h' that is an unsignedInt")
            if not state.acknowledge(h):
                self._handled_count_too_high(state, h)
        elif name == "enable":
            self._sm_enable(st)
        elif name == "resume":
            self._sm_resume(st)
        else:
            # <r/> or <a/> before <enabled/>, or an element XEP-0198 does not define.
            raise StreamError("unsupported-stanza-type", f"<{name} xmlns='{sm.NS_SM}'/> here")

    def _handled_count_too_high(self, state: StreamManagement, h: int) -> None:
        # §6: the client acknowledged more than it was sent.
        self.close_with_error(
            "undefined-condition",
            f"You acknowledged {h} stanzas, but I only sent you {state.sent_count} so far.",
            sm.too_high_xml(h, state),
        )

    def _sm_enable(self, st: Stanza) -> None:
        self.send_uncounted(self._enable_sm(st.attrs))

    def _enable_sm(self, attrs: Any) -> bytes:
        """§3 <enable/> with these attributes (on its own, or inline in a XEP-0386 bind):
        the <enabled/> or <failed/> to send, before anything else is sent."""
        settings = self.server.config.stream_management
        if not settings.enabled:
            return sm.failed_xml("feature-not-implemented")
        if not self.bound or self.sm is not None:
            # §3: after resource binding only, and once per stream. <failed/> as the XEP's
            # examples show (§6: stream management errors are recoverable).
            return sm.failed_xml("unexpected-request")
        timeout = settings.resume_timeout
        requested = sm.parse_h(attrs.get("max"))  # an unsignedInt will do for seconds
        if requested:
            timeout = min(timeout, float(requested))  # §3: the client's preferred maximum
        state = sm.StreamManagement(settings, None, timeout)
        if attrs.get("resume") in ("true", "1") and timeout > 0:
            state.sm_id = sm.resumption_table(self.server).register(self)
        # §4: our count of sent stanzas starts after <enabled/>, 'h' after <enable/>: the
        # caller sends it before anything else.
        self.sm = state
        log.info(
            "c2s %s: stream management for %s%s",
            self.peer,
            self.full,
            f", resumable for {timeout:g}s" if state.sm_id else "",
        )
        return sm.enabled_xml(state)

    def _sm_resume(self, st: Stanza) -> None:
        failed = self._resume(
            st.attrs.get("previd", ""),
            st.attrs.get("h"),
            lambda old, resumed: old.send_uncounted(resumed),
        )
        if failed is not None:
            self.send_uncounted(failed)

    def _resume(
        self,
        previd: str,
        h_attr: str | None,
        announce: Callable[[C2SStream, bytes], None],
    ) -> bytes | None:
        """§5: take over the session `previd` names: its connection (if it still has one)
        gets a conflict stream error, this stream's connection moves into it, `announce`
        writes <resumed/> there (on its own, or in a XEP-0388 <success/>), and what the
        client has not acknowledged is sent again. The <failed/> to send when there is no
        such session; None when resumed, or when this stream was closed (an 'h' too high)."""
        settings = self.server.config.stream_management
        if not settings.enabled or settings.resume_timeout <= 0:
            # §5: resumption is not supported here.
            return sm.failed_xml("feature-not-implemented")
        if self.authenticated_local is None or self.bound:
            # §3: resumption replaces binding, after authentication.
            return sm.failed_xml("unexpected-request")
        h = sm.parse_h(h_attr)
        if h is None:
            return sm.failed_xml("bad-request")
        bare = f"{self.authenticated_local}@{self.host}"
        table = sm.resumption_table(self.server)
        old = table.find(previd, bare)
        if old is None or old.sm is None:
            # §5: unknown or timed out (with the 'h' it ended with when we still know it).
            # The client may bind a resource on this stream instead.
            log.info("c2s %s: no session to resume for %s", self.peer, bare)
            return sm.failed_xml("item-not-found", table.ended_h(previd, bare))
        state = old.sm
        if not state.acknowledge(h):
            self._handled_count_too_high(state, h)  # the old session keeps waiting
            return None
        if old.connection is not None:
            # §5: the server still has the old stream open: conflict, then closed.
            old._release_connection().end_stream(
                "conflict", "the session was resumed on another connection"
            )
        if state.expiry is not None:
            state.expiry.cancel()
            state.expiry = None
        self._negotiated()  # this stream ends here; the session it resumes goes on
        connection = self._release_connection()
        self.closing = True
        self.server.streams.discard(self)
        # The connection is the resumed session's from here on, with what it still holds
        # (input waiting for the pacing budget, events parsed after <resume/>).
        connection.attach(old)
        old.connection = connection
        old.closing = False
        announce(old, sm.resumed_xml(state))
        for data, _sent_at in state.unacked:
            old.send_uncounted(data)  # §5: everything the client has not handled, again
        if state.unacked:
            old.send_uncounted(sm.REQUEST)
            state.since_request = 0
        # XEP-0352 §5.3: a resumed stream is active; what waited follows what is resent.
        csi.make_active(old)
        log.info(
            "c2s %s: resumed %s, %d stanzas sent again", old.peer, old.full, len(state.unacked)
        )
        return None

    def _resumable(self) -> bool:
        state = self.sm
        return (
            state is not None
            and state.sm_id is not None
            and not state.detached
            and self.bound
            and not self.closing
        )

    def _detach(self, reason: Any) -> None:
        """XEP-0198 §5: the connection is gone, the session stays bound (stanzas for it are
        counted and kept, `Session.send` writes nothing) until resumed or expired."""
        state = self.sm
        assert state is not None
        self.closing = True  # no input to process, no pings (modules look at this)
        connection, self.connection = self.connection, None
        if connection is not None:
            self.former_peer = connection.peer
            connection.release().hibernate()
        self.transport = None
        self.flush()  # drops output never written: the unacknowledged queue has it
        state.expiry = asyncio.get_running_loop().call_later(
            state.timeout, self._resumption_expired
        )
        # What it holds survives a crash too (issue "Acknowledged means durable", item 4).
        sm.keep_detached(self, state, state.unacknowledged())
        log.info(
            "c2s %s: %s lost its connection (%s), resumable for %gs with %d unacknowledged",
            self.peer,
            self.full,
            reason or "closed",
            state.timeout,
            len(state.unacked),
        )

    def _resumption_expired(self) -> None:
        log.info("c2s %s: %s was not resumed in time", self.peer, self.full)
        self._end_detached()

    def _end_detached(self) -> None:
        state = self.sm
        if state is not None and state.expiry is not None:
            state.expiry.cancel()
            state.expiry = None
        self.server.streams.discard(self)
        self._end_session()

    def _release_connection(self) -> Connection:
        """What is queued goes out, then the connection is no longer this stream's: for the
        caller to close, or to hand to a resumed session."""
        connection = self.connection
        assert connection is not None
        self.flush()
        self.connection = None
        self.former_peer = connection.peer
        return connection.release()

    def unacked_overflow(self) -> None:
        """More unacknowledged output than stream_management.max_unacked_stanzas/bytes
        (called soon after it happened, unless the client acknowledged in between)."""
        state = self.sm
        if state is None or not state.overflowing:
            return
        log.info(
            "c2s %s: %d stanzas (%d bytes) not acknowledged",
            self.peer,
            len(state.unacked),
            state.unacked_bytes,
        )
        if state.detached:
            self._end_detached()
        else:
            self.close_with_error("policy-violation", "too many unacknowledged stanzas")

    # --- closing (RFC 6120 §4.4) -------------------------------------------------------

    def close_with_error(
        self, condition: str | None, text: str | None = None, app_xml: str = ""
    ) -> None:
        """Send a stream error (if any) and the closing tag, then close the connection;
        `app_xml`: an application-specific condition (RFC 6120 §4.9.4)."""
        if self.sm is not None and self.sm.detached:
            self._end_detached()  # no connection to tell: the session ends
            return
        if condition == "connection-timeout" and self._resumable():
            # A dead connection (an unanswered ping) is what XEP-0198 resumption is for: the
            # connection gets the error, the session waits for the client to come back.
            self._release_connection().end_stream(condition, text)
            self._detach(condition)
            return
        XmlStream.close_with_error(self, condition, text, app_xml)

    def _stream_ending(self) -> None:
        self._final_ack()
        # Modules write their last words to the session as it ends (a room's unavailable
        # presence, XEP-0045 §7.14): before our closing tag, nothing after it (RFC 6120 §4.4).
        self._end_session()

    def _final_ack(self) -> None:
        """XEP-0198 §4: an <a/> before the stream closes tells the client which of its
        stanzas the server handled."""
        if self.sm is not None:
            self.send_uncounted(self.sm.answer())

    def _end_session(self) -> None:
        """Leave the session table once, as soon as the stream is closing: nothing more is
        routed here, and modules see the session end before the peer sees our closing tag."""
        if self.negotiation is not None:
            self.negotiation.cancel_auth_timer()
        if self.bound:
            self.bound = False
            self.router.unbind(self)
            state = self.sm
            if state is not None:
                # XEP-0198 §4: what it never acknowledged, as if sent to a resource gone.
                self.sm = None
                sm.resumption_table(self.server).forget(self, state)
                try:
                    sm.handle_unacknowledged(self, state.take_unacknowledged())
                except Exception:
                    # The session must end all the same (presence, modules).
                    log.exception("unacknowledged stanzas of %s", self.full)
            self.server.session_ended(self)

    def _auth_timed_out(self) -> None:
        if self.negotiation is not None:
            self.negotiation.auth_timer = None
        if not self.bound:
            self.close_with_error("connection-timeout", "authentication took too long")


def _new_resource() -> str:
    return "fx-" + secrets.token_hex(6)


def _iq_result(st: Stanza, to: str | None, payload: str = "") -> bytes:
    attrs = "type='result' id=" + quoteattr(st.attrs.get("id", ""))
    if to:
        attrs += " to=" + quoteattr(to)
    return f"<iq {attrs}>{payload}</iq>".encode()
