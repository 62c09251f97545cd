"""Client-to-server streams (RFC 6120): stream header, STARTTLS, SASL, resource binding,
then stanzas handed to the router; XEP-0198 stream management (acks, resumption: the state
and the rules are in sm.py, the stream calls into it). Legacy options: XEP-0138 zlib
compression after SASL, and pre-authentication iqs (XEP-0077 registration, XEP-0078 non-SASL
authentication) handed to their modules.

One `C2SStream` per TCP connection. It is the router's `Session` for that connection and the
asyncio protocol at the same time. Every error raised while handling a stanza or the stream
is turned into XML in `_handle`/`close_with_error` and nowhere else.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import secrets
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

from .. import ns
from .._parser import STREAM_END, Stanza, StreamHeader, StreamParser, XMLStreamError
from .._router import Session
from ..errors import StanzaError, StreamError, stanza_error_bytes, stream_error_bytes
from ..jid import JIDError, normalize_resource, parse_jid
from . import compression, csi, sm
from .compression import CompressedTransport, CompressionError, Inflater
from .sasl import (
    Challenge,
    Failure,
    PlainExchange,
    SaslExchange,
    ScramExchange,
    Success,
    offered_mechanisms,
)
from .sm import StreamManagement
from .tls import start_server_tls, tls_record_start

if TYPE_CHECKING:
    from ..server import Server

log = logging.getLogger("fastxmpp.c2s")

STREAM_HEADER = (
    "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    "xmlns:stream='http://etherx.jabber.org/streams' id={id} version='1.0' xml:lang={lang}{attrs}>"
)
STREAM_CLOSE = b"</stream:stream>"
# Seconds a slow reader closed for unread output has to take its stream error.
SLOW_READER_GRACE = 2.0
# RFC 6120 §4.4: after the server's closing tag, seconds it waits for the peer to close its
# side before it closes the connection itself.
CLOSE_LINGER = 2.0
# Debug traces never show input naming these namespaces: it may carry a password.
SECRET_MARKERS = (ns.SASL.encode(), b"jabber:iq:register", b"jabber:iq:auth")

# iq payload namespaces an unauthenticated stream may use, and the module that answers them
# with `pre_auth_iq(stream, stanza)`.
PRE_AUTH_IQ = {
    "jabber:iq:register": "register",  # XEP-0077 §3.1, §7
    "jabber:iq:auth": "legacy_auth",  # XEP-0078
}


# The iq payloads the stream answers itself, before the router: resource binding (RFC 6120
# §7) and the legacy session (RFC 6121 §1.4).
STREAM_IQS = ((ns.BIND, "bind"), (ns.SESSION, "session"))

# What belongs to the connection rather than to the session: XEP-0198 resumption moves it
# from the stream that resumes into the session it resumes (`_move_connection`). Every
# attribute `__init__` sets, except the session's own (`bound`, `auth_timer`, `resumed_into`)
# and the ones fixed per server or listener (`server`, `router`, `limits`, `c2s`, `rate`,
# `burst`, `direct_tls`).
CONNECTION_STATE = (
    "parser",
    "peer",
    "stream_id",
    "host",
    "lang",
    "header_sent",
    "encrypted",
    "authenticated_local",
    "closing",
    "sasl",
    "sasl_mechanism",
    "sasl_failures",
    "busy",
    "pending",
    "compressed",
    "inflater",
    "trace_redacting",
    "last_received",
    "address",
    "tokens",
    "tokens_at",
    "held",
)


class C2SStream(Session, asyncio.Protocol):
    """States: waiting for a header -> features sent -> (TLS) -> (SASL) -> bound."""

    # Session.sm (a cdef attribute): XEP-0198 state once <enabled/> was sent, else None.
    sm: StreamManagement | None

    def __init__(self, server: Server, direct_tls: bool = False) -> None:
        self.server = server
        self.router = server.router
        config = server.config
        self.limits = config.limits
        self.c2s = config.c2s
        self.parser = StreamParser(
            self.limits.max_stanza_size,
            self.limits.max_depth,
            self.limits.max_attributes,
            self.limits.max_elements,
        )
        self.peer = "?"
        self.stream_id = ""
        self.host: str | None = None
        self.lang = "en"
        self.header_sent = False
        self.encrypted = False
        self.authenticated_local: str | None = None
        self.bound = False
        self.closing = False
        self.sasl: SaslExchange | None = None
        self.sasl_mechanism = ""
        self.sasl_failures = 0
        self.busy = False  # an asynchronous step (TLS handshake, password check) is running
        self.pending: list[Any] = []
        self.compressed = False  # XEP-0138 negotiated: transport compresses, input inflated
        self.inflater: Inflater | None = None
        self.trace_redacting = False
        self.auth_timer: asyncio.TimerHandle | None = None
        self.last_received = time.monotonic()
        self.address = "?"
        # Input pacing (limits.max_bytes_per_second), a token bucket of `burst` bytes.
        self.rate = float(self.limits.max_bytes_per_second)
        self.burst = float(self.limits.burst_bytes)
        self.tokens = self.burst
        self.tokens_at = self.last_received
        self.resume_timer: asyncio.TimerHandle | None = None
        self.held: list[bytes] | None = None  # input waiting for the budget
        # XEP-0198: the session this stream's connection went to with <resume/>.
        self.resumed_into: C2SStream | None = None
        # XEP-0368: the connection came to a direct TLS listener, whose transport completed
        # the TLS handshake before `connection_made` (the listener's ssl context).
        self.direct_tls = direct_tls
        # Counted in server.unauthenticated_per_ip (limits.max_unauthenticated_per_ip).
        self.counted_unauthenticated = False

    # --- asyncio protocol --------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        # Beyond this much unsent output asyncio calls pause_writing: a slow reader.
        transport.set_write_buffer_limits(high=self.limits.max_outbound_buffer)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.server.streams.add(self)
        self.address = peer[0] if peer else "?"
        # Until it authenticates, a connection is anonymous: bounded per address. After, its
        # account answers for it (limits.max_resources_per_account), so that many users
        # behind one NAT are not refused.
        per_ip = self.server.unauthenticated_per_ip
        per_ip[self.address] += 1
        self.counted_unauthenticated = True
        if per_ip[self.address] > self.limits.max_unauthenticated_per_ip:
            log.info("c2s connection from %s refused: too many from that address", self.peer)
            self.close_with_error(
                "policy-violation", "too many unauthenticated connections from your address"
            )
            return
        self.auth_timer = asyncio.get_running_loop().call_later(
            self.c2s.auth_timeout, self._auth_timed_out
        )
        log.info("c2s connection from %s", self.peer)
        if self.direct_tls:
            # XEP-0368 §3: STARTTLS must not be used over direct TLS; `_features` offers it
            # only on unencrypted streams.
            self._tls_established(transport, "direct TLS")

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.server.heap_trimmer.churned()
        self._uncount_unauthenticated()
        if self.resume_timer is not None:
            self.resume_timer.cancel()
            self.resume_timer = None
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

    def _uncount_unauthenticated(self) -> None:
        """The connection authenticated or went away: off its address's count."""
        if not self.counted_unauthenticated:
            return
        self.counted_unauthenticated = False
        per_ip = self.server.unauthenticated_per_ip
        per_ip[self.address] -= 1
        if per_ip[self.address] <= 0:
            del per_ip[self.address]

    def pause_writing(self) -> None:
        """The client does not read what we send: close it before its output eats memory
        (limits.max_outbound_buffer). The stream error is queued behind the unread output,
        so the connection is aborted shortly after, which frees the buffer. A session the
        client may resume (XEP-0198) loses only its connection: what was not acknowledged
        is kept (within stream_management.max_unacked_*) and sent again on resumption."""
        if self.closing or self.transport is None:
            return
        log.info("c2s %s: output not read, %d bytes queued", self.peer, self.queued_output())
        transport = self.transport
        resumable = self._resumable()
        stream = self._hand_off_connection() if resumable else self
        stream.close_with_error("policy-violation", "too much unread output")
        asyncio.get_running_loop().call_later(SLOW_READER_GRACE, transport.abort)
        if resumable:
            self._detach("output not read")

    def resume_writing(self) -> None:
        pass

    def queued_output(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if not self.header_sent and not self.encrypted and tls_record_start(data):
            self._tls_on_starttls_port()
            return
        now = time.monotonic()
        self.last_received = now  # XEP-0199 idle pings look at this
        if self.rate and self._pace(data, now):
            return
        self._process(data)

    def _process(self, data: bytes) -> None:
        if self.inflater is None:
            self._received(data)
            return
        stream = self
        try:
            for piece in self.inflater.feed(data):
                stream._received(piece)
                stream = stream._connection_owner()
                if stream.closing:
                    return
        except CompressionError as exc:
            # XEP-0138 §3: a processing error after compression closes the stream.
            stream.close_with_error(
                "undefined-condition",
                f"cannot decompress: {exc}",
                f"<failure xmlns='{compression.NS_PROTOCOL}'><processing-failed/></failure>",
            )

    def _pace(self, data: bytes, now: float) -> bool:
        """Token bucket on input (limits.max_bytes_per_second, burst_bytes): input beyond the
        budget is held, and reading paused, until the budget has refilled; TCP flow control
        then slows the sender down and nothing it sent is dropped. True: `data` was held."""
        self.tokens = min(self.burst, self.tokens + (now - self.tokens_at) * self.rate)
        self.tokens_at = now
        self.tokens -= len(data)
        if self.held is not None:
            self.held.append(data)
            return True
        if self.tokens >= 0 or self.transport is None:
            return False
        self.held = [data]
        self.transport.pause_reading()
        self.resume_timer = asyncio.get_running_loop().call_later(
            -self.tokens / self.rate, self._release_held
        )
        return True

    def _release_held(self) -> None:
        self.resume_timer = None
        held, self.held = self.held or [], None
        stream = self
        for data in held:
            stream = stream._connection_owner()
            if stream.closing:
                return
            stream._process(data)
        stream = stream._connection_owner()
        if stream.transport is not None and not stream.closing:
            stream.transport.resume_reading()

    def _connection_owner(self) -> C2SStream:
        """The stream that has this one's connection now (XEP-0198 <resume/> moved it)."""
        return self.resumed_into or self

    def _received(self, data: bytes) -> None:
        events = self.parser.feed(data)
        if self.router.tracer is not None:
            self._trace_input(data, events)
        if self.busy:
            self.pending.extend(events)
            return
        self._handle(events)

    def eof_received(self) -> bool | None:
        return None

    def _trace_input(self, data: bytes, events: list[Any]) -> None:
        """Debug trace of input, except what may carry a password (SASL, XEP-0077 and
        XEP-0078 payloads): from the read naming such a namespace up to the read that
        completes a top-level element."""
        secret = self.trace_redacting or any(marker in data for marker in SECRET_MARKERS)
        shown = f"[{len(data)} bytes not shown: may carry a password]".encode() if secret else data
        self.router.tracer(self, shown, True)
        self.trace_redacting = secret and not any(type(e) is Stanza for e in events)

    # --- event loop of the stream ------------------------------------------------------

    def _handle(self, events: list[Any]) -> None:
        route = self.router.route
        for i, event in enumerate(events):
            if self.closing:
                if self.resumed_into is not None:
                    # XEP-0198 §5: what followed <resume/> belongs to the resumed session.
                    self.resumed_into._handle(events[i:])
                return
            if self.busy:
                self.pending.extend(events[i:])
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
                        self._stanza(event)
                elif type(event) is StreamHeader:
                    self._stream_header(event)
                elif event is STREAM_END:
                    self._peer_closed()
                elif isinstance(event, XMLStreamError):
                    self.close_with_error(event.condition, event.text)
            except StanzaError as err:
                self._reply_error(event, err)
            except StreamError as err:
                self.close_with_error(err.condition, err.text)
            except Exception:
                log.exception("internal error on stream from %s", self.peer)
                self.close_with_error("internal-server-error")

    def _reply_error(self, st: Stanza, err: StanzaError) -> None:
        stype = st.attrs.get("type")
        # RFC 6120 §8.3.1: never answer an error; §8.2.3: never answer an iq result.
        if stype == "error" or (st.name == "iq" and stype == "result"):
            return
        to = st.attrs.get("to")
        self.send(stanza_error_bytes(st.name, st.attrs.get("id"), to, self.full, err))

    def _resume(self) -> None:
        self.busy = False
        pending, self.pending = self.pending, []
        if self.transport is not None and not self.closing:
            self.transport.resume_reading()
            self._handle(pending)

    def _run_async(self, step: Callable[[], Any]) -> None:
        """Run a coroutine step; events that arrive meanwhile wait in `pending`."""
        self.busy = True
        if self.transport is not None:
            self.transport.pause_reading()

        async def runner() -> None:
            try:
                await step()
            except StreamError as err:
                self.close_with_error(err.condition, err.text)
            except Exception:
                log.exception("internal error on stream from %s", self.peer)
                self.close_with_error("internal-server-error")
            finally:
                self._resume()

        task = asyncio.get_running_loop().create_task(runner())
        self.server.background.add(task)
        task.add_done_callback(self.server.background.discard)

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

        self._run_async(answer)

    # --- stream header and features (RFC 6120 §4.7, §4.3.2) ---------------------------

    def _stream_header(self, header: StreamHeader) -> None:
        attrs = header.attrs
        to = attrs.get("to")
        # The connection's first header names the host (a failed one ends the stream); every
        # later one is a restart (after STARTTLS, SASL, compression). Direct TLS (XEP-0368)
        # is encrypted before the first header.
        previous_host = self.host
        restarted = previous_host is not None
        try:
            self.host = parse_jid(to).domain if to else None
        except JIDError:
            self.host = None
        lang = attrs.get("{" + ns.XML + "}lang")
        if lang and len(lang) <= 35:
            self.lang = lang
        self._send_header(attrs.get("from"))
        if header.ns != ns.STREAMS or header.name != "stream":
            raise StreamError("invalid-namespace", "the root must be <stream/> of RFC 6120")
        if header.prefix != "stream":
            # RFC 6120 §4.8.5 and §4.9.3.2.
            raise StreamError("bad-namespace-prefix", "the stream prefix must be 'stream'")
        if (None, ns.CLIENT) not in header.nsdecls:
            raise StreamError("invalid-namespace", "the content namespace must be jabber:client")
        if not to or self.host is None or not self.router.is_local(self.host):
            raise StreamError("host-unknown", "this server does not serve that domain")
        if restarted and self.host != previous_host:
            # The restarted stream must be for the host that was secured and authenticated.
            raise StreamError("host-unknown", "the stream restart named another host")
        version = attrs.get("version", "")
        try:
            major = int(version.split(".", 1)[0])
        except ValueError:
            major = 0
        if major < 1:
            # RFC 6120 §4.7.5: we speak 1.0 and nothing older.
            raise StreamError("unsupported-version", "version 1.0 is required")
        self.send_uncounted(self._features())

    def _send_header(self, client_from: str | None) -> None:
        if self.header_sent:
            return
        self.header_sent = True
        self.stream_id = secrets.token_urlsafe(12)
        extra = ""
        if self.host and self.router.is_local(self.host):
            extra += " from=" + quoteattr(self.host)
        if client_from:
            with contextlib.suppress(JIDError):
                extra += " to=" + quoteattr(str(parse_jid(client_from)))
        self.send_uncounted(
            STREAM_HEADER.format(
                id=quoteattr(self.stream_id), lang=quoteattr(self.lang), attrs=extra
            ).encode()
        )

    def _features(self) -> bytes:
        parts = ["<stream:features>"]
        tls_possible = not self.encrypted and self.host in self.server.tls_contexts
        if self.authenticated_local is None:
            tls_required = tls_possible and self.c2s.require_encryption
            if tls_possible:
                parts.append(
                    f"<starttls xmlns='{ns.TLS}'>"
                    + ("<required/>" if tls_required else "")
                    + "</starttls>"
                )
            if not tls_required:
                mechanisms = offered_mechanisms(self.c2s.sasl_mechanisms, self.encrypted)
                parts.append(f"<mechanisms xmlns='{ns.SASL}'>")
                parts.extend(f"<mechanism>{m}</mechanism>" for m in mechanisms)
                parts.append("</mechanisms>")
        else:
            if self._compression_offered():
                # XEP-0138: after TLS and SASL, before binding; XEP-0170 order.
                parts.append(f"<compression xmlns='{compression.NS_FEATURE}'>")
                parts.extend(f"<method>{m}</method>" for m in compression.METHODS)
                parts.append("</compression>")
            parts.append(f"<bind xmlns='{ns.BIND}'/>")
            # RFC 6121 §1.4 kept the legacy session feature; we advertise it as optional.
            parts.append(f"<session xmlns='{ns.SESSION}'><optional/></session>")
            if self.server.config.stream_management.enabled:
                # XEP-0198 §3: once stanzas may follow (enable after bind, or resume).
                parts.append(sm.FEATURE)
            if self.server.config.csi.enabled:
                parts.append(csi.FEATURE)  # XEP-0352 §4: after authentication
        parts.append(self.server.modules.stream_features(self))
        parts.append("</stream:features>")
        return "".join(parts).encode()

    def _compression_offered(self) -> bool:
        return (
            self.server.config.legacy.compression
            and self.encrypted
            and self.authenticated_local is not None
            and not self.bound
            and not self.compressed
        )

    # --- non-routed top-level elements -------------------------------------------------

    def _stanza(self, st: Stanza) -> None:
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
            ):
                self._starttls()
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
                self.sasl = None
                self._sasl_failure("aborted")
                return
            raise StreamError("unsupported-stanza-type", f"SASL element <{st.name}/>")
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

    def _pre_auth_iq(self, st: Stanza) -> None:
        """XEP-0077 registration or XEP-0078 authentication on a stream that has not
        authenticated: the router does not serve it, the module answers directly."""
        itype = st.attrs.get("type")
        if itype in ("result", "error"):
            return  # nothing of ours is waiting for an answer before authentication
        if st.attrs.get("id") is None or itype not in ("get", "set"):
            raise StanzaError("bad-request", "an iq get/set with an 'id' is expected")
        to = st.attrs.get("to")
        if to is not None and to != self.host:
            try:
                to_server = parse_jid(to).full == self.host
            except JIDError:
                to_server = False
            if not to_server:
                raise StanzaError("service-unavailable", "only the server answers before login")
        module = self.server.modules.get(PRE_AUTH_IQ[st.children[0][0]])
        if module is None:
            raise StanzaError("service-unavailable")
        reply = module.pre_auth_iq(self, st)
        if reply is not None:
            self.send(reply)

    # --- XEP-0138 stream compression ---------------------------------------------------

    def _compress(self, st: Stanza) -> None:
        method_el = st.element().find(f"{{{compression.NS_PROTOCOL}}}method")
        method = (method_el.text or "").strip() if method_el is not None else ""
        if method not in compression.METHODS:
            self._compression_failure("unsupported-method")
            return
        if not self._compression_offered():
            # Already compressed, bound, or not over TLS: not an error of the stream (§3).
            self._compression_failure("setup-failed")
            return
        self.send_uncounted(f"<compressed xmlns='{compression.NS_PROTOCOL}'/>".encode())
        self.flush()
        self.transport = CompressedTransport(self.transport)
        self.inflater = Inflater()
        self.compressed = True
        log.info("c2s %s: zlib stream compression", self.peer)

        async def restart() -> None:
            # Whatever was parsed after <compress/> belongs to the void stream (§3).
            self.pending.clear()
            self._restart_stream()

        # Through the async machinery so that events parsed after <compress/> are held back.
        self._run_async(restart)

    def _compression_failure(self, condition: str) -> None:
        self.send_uncounted(
            f"<failure xmlns='{compression.NS_PROTOCOL}'><{condition}/></failure>".encode()
        )

    # --- STARTTLS (RFC 6120 §5) --------------------------------------------------------

    def _starttls(self) -> None:
        assert self.host is not None  # features (and so STARTTLS) follow a valid header
        context: ssl.SSLContext = self.server.tls_contexts[self.host]
        self.send_uncounted(f"<proceed xmlns='{ns.TLS}'/>".encode())
        self.flush()
        # RFC 6120 §5.4.3.3: anything the client sent after <starttls/> is discarded.
        self.pending.clear()

        async def upgrade() -> None:
            transport = await start_server_tls(self, context, "c2s")
            if transport is None:
                return
            self._tls_established(transport, "TLS")
            self.pending.clear()
            self._restart_stream()

        self._run_async(upgrade)

    def _tls_established(self, transport: Any, how: str) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=self.limits.max_outbound_buffer)
        self.encrypted = True
        tls = transport.get_extra_info("ssl_object")
        alpn = tls.selected_alpn_protocol()
        log.info("c2s %s: %s %s%s", self.peer, how, tls.version(), f", ALPN {alpn}" if alpn else "")

    def _tls_on_starttls_port(self) -> None:
        """A TLS ClientHello where a stream header belongs: a client trying XEP-0368 direct
        TLS on this STARTTLS port. One line says so (not a not-well-formed trace of the
        handshake's bytes), and the connection is closed without a stream error, which a
        TLS client could not read."""
        sockname = self.transport.get_extra_info("sockname") if self.transport else None
        log.info(
            "c2s %s: TLS handshake on STARTTLS port %s from %s; configure a direct TLS "
            'listener (tls = "direct") or have the client use STARTTLS',
            self.peer,
            sockname[1] if sockname else "?",
            self.address,
        )
        self.closing = True
        self._close_transport()

    def _restart_stream(self) -> None:
        # RFC 6120 §4.3.3: after TLS and after SASL the stream starts over.
        self.parser.reset()
        self.header_sent = False

    # --- SASL (RFC 6120 §6) ------------------------------------------------------------

    def _sasl_auth(self, st: Stanza) -> None:
        if self.sasl is not None:
            self.sasl = None
            self._sasl_failure("aborted", "a new <auth/> aborts the previous exchange")
            return
        mechanism = st.attrs.get("mechanism", "")
        if self.server.auth_throttle.refused(self.address):
            # Too many failed logins from this address lately (limits.auth_failures_per_ip).
            self._sasl_failure("temporary-auth-failure", "too many failed logins, try later")
            return
        if mechanism not in offered_mechanisms(self.c2s.sasl_mechanisms, self.encrypted):
            self._sasl_failure("invalid-mechanism")
            return
        initial = self._sasl_data(st, allow_absent=True)
        if initial is False:
            return
        assert self.host is not None
        accounts = self.server.accounts
        if mechanism == "PLAIN":
            exchange: SaslExchange = PlainExchange(self.host, accounts, self.server.run_blocking)
        else:
            exchange = ScramExchange(mechanism, self.host, accounts)
        self.sasl = exchange
        self.sasl_mechanism = mechanism
        self._run_async(lambda: self._sasl_step(exchange.start(initial)))  # type: ignore[arg-type]

    def _sasl_response(self, st: Stanza) -> None:
        exchange = self.sasl
        if exchange is None:
            self._sasl_failure("malformed-request", "no exchange in progress")
            return
        data = self._sasl_data(st, allow_absent=False)
        if data is False:
            return
        self._run_async(lambda: self._sasl_step(exchange.respond(data)))  # type: ignore[arg-type]

    def _sasl_data(self, st: Stanza, allow_absent: bool) -> bytes | bool | None:
        text = (st.element().text or "").strip()
        if not text:
            return None if allow_absent else b""
        if text == "=":
            return b""  # RFC 6120 §6.4.2: an empty initial response
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            self.sasl = None
            self._sasl_failure("incorrect-encoding")
            return False

    async def _sasl_step(self, pending_outcome: Any) -> None:
        outcome = await pending_outcome
        exchange = self.sasl
        account = self._throttle_key(exchange)
        throttle = self.server.auth_throttle
        if isinstance(outcome, Success | Failure) and throttle.refused(self.address, account):
            # The account is under attack (limits.auth_failures_per_account): refused for
            # the rest of the window whatever the password, RFC 6120 §6.5.12.
            outcome = Failure("temporary-auth-failure", "too many failed logins, try later")
        elif isinstance(outcome, Failure) and outcome.condition == "not-authorized":
            throttle.record_failure(self.address, account)
            delay = throttle.delay(self.address, account)
            if delay:
                await asyncio.sleep(delay)  # back-off: this stream's input waits too
            if self.closing:
                return
        if isinstance(outcome, Challenge):
            data = _b64(outcome.data) if outcome.data else ""
            self.send_uncounted(f"<challenge xmlns='{ns.SASL}'>{data}</challenge>".encode())
        elif isinstance(outcome, Success):
            self.sasl = None
            self.authenticated_local = outcome.local
            self._uncount_unauthenticated()
            data = _b64(outcome.data) if outcome.data else ""
            self.send_uncounted(f"<success xmlns='{ns.SASL}'>{data}</success>".encode())
            log.info(
                "c2s %s: authenticated %s@%s with %s",
                self.peer,
                outcome.local,
                self.host,
                self.sasl_mechanism,
            )
            self.pending.clear()
            self._restart_stream()
        elif isinstance(outcome, Failure):
            self.sasl = None
            self._sasl_failure(outcome.condition, outcome.text)

    def _throttle_key(self, exchange: SaslExchange | None) -> str | None:
        if exchange is None or exchange.username is None:
            return None
        return f"{exchange.username}@{self.host}"

    def _sasl_failure(self, condition: str, text: str | None = None) -> None:
        self.sasl_failures += 1
        text_xml = f"<text xml:lang='en'>{_escape(text)}</text>" if text else ""
        self.send_uncounted(
            f"<failure xmlns='{ns.SASL}'><{condition}/>{text_xml}</failure>".encode()
        )
        log.info("c2s %s: SASL failure %s (%d)", self.peer, condition, self.sasl_failures)
        if condition != "aborted" and self.sasl_failures >= self.c2s.max_sasl_failures:
            # RFC 6120 §6.4.5: retries are limited; then the stream is closed.
            self.close_with_error("policy-violation", "too many authentication failures")

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
        payload = f"<bind xmlns='{ns.BIND}'><jid>{_escape(self.full)}</jid></bind>"
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
        self.server.heap_trimmer.churned()  # the login's TLS and SASL garbage is behind us
        if self.auth_timer is not None:
            self.auth_timer.cancel()
            self.auth_timer = None
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
        self._uncount_unauthenticated()
        self.send(_iq_result(st, None))
        log.info("c2s %s: authenticated %s@%s with jabber:iq:auth", self.peer, local, self.host)
        self.server.session_bound(self)

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
        settings = self.server.config.stream_management
        if not settings.enabled:
            self.send_uncounted(sm.failed_xml("feature-not-implemented"))
            return
        if not self.bound or self.sm is not None:
            # §3: after resource binding only, and once per stream. <failed/> as the XEP's
            # examples show (§6: stream management errors are recoverable).
            self.send_uncounted(sm.failed_xml("unexpected-request"))
            return
        timeout = settings.resume_timeout
        requested = sm.parse_h(st.attrs.get("max"))  # an unsignedInt will do for seconds
        if requested:
            timeout = min(timeout, float(requested))  # §3: the client's preferred maximum
        state = sm.StreamManagement(settings, None, timeout)
        if st.attrs.get("resume") in ("true", "1") and timeout > 0:
            state.sm_id = sm.resumption_table(self.server).register(self)
        self.send_uncounted(sm.enabled_xml(state))
        # §4: our count of sent stanzas starts after <enabled/>, 'h' after <enable/>.
        self.sm = state
        log.info(
            "c2s %s: stream management for %s%s",
            self.peer,
            self.full,
            f", resumable for {timeout:g}s" if state.sm_id else "",
        )

    def _sm_resume(self, st: Stanza) -> None:
        """§5: take over the session `previd` names: its connection (if it still has one)
        gets a conflict stream error, this stream's connection moves into it, and what the
        client has not acknowledged is sent again."""
        settings = self.server.config.stream_management
        if not settings.enabled or settings.resume_timeout <= 0:
            # §5: resumption is not supported here.
            self.send_uncounted(sm.failed_xml("feature-not-implemented"))
            return
        if self.authenticated_local is None or self.bound:
            # §3: resumption replaces binding, after authentication.
            self.send_uncounted(sm.failed_xml("unexpected-request"))
            return
        h = sm.parse_h(st.attrs.get("h"))
        if h is None:
            self.send_uncounted(sm.failed_xml("bad-request"))
            return
        previd = st.attrs.get("previd", "")
        bare = f"{self.authenticated_local}@{self.host}"
        table = sm.resumption_table(self.server)
        old = table.find(previd, bare)
        if old is None or old.sm is None:
            # §5: unknown or timed out (with the 'h' it ended with when we still know it).
            # The client may bind a resource on this stream instead.
            log.info("c2s %s: no session to resume for %s", self.peer, bare)
            self.send_uncounted(sm.failed_xml("item-not-found", table.ended_h(previd, bare)))
            return
        state = old.sm
        if not state.acknowledge(h):
            self._handled_count_too_high(state, h)  # the old session keeps waiting
            return
        if old.transport is not None:
            # §5: the server still has the old stream open: conflict, then closed.
            old._hand_off_connection().close_with_error(
                "conflict", "the session was resumed on another connection"
            )
        if state.expiry is not None:
            state.expiry.cancel()
            state.expiry = None
        if self.auth_timer is not None:
            self.auth_timer.cancel()
            self.auth_timer = None
        self.flush()
        self._move_connection(old)
        self.resumed_into = old
        self.closing = True
        self.server.streams.discard(self)
        old.send_uncounted(sm.resumed_xml(state))
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
        self.transport = None
        self.flush()  # drops output never written: the unacknowledged queue has it
        self.held = None
        self.pending = []
        self.inflater = None  # XEP-0138 state is the connection's: a resuming one has its own
        self.parser.hibernate()
        state.expiry = asyncio.get_running_loop().call_later(
            state.timeout, self._resumption_expired
        )
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

    def _hand_off_connection(self) -> C2SStream:
        """Move this session's connection to a stream object of its own, for the caller to
        close; the session is left without one."""
        husk = C2SStream(self.server)
        husk.full = self.full  # for its log lines only: it is not bound
        self.flush()
        self._move_connection(husk)
        return husk

    def _move_connection(self, dst: C2SStream) -> None:
        """The connection (transport, parser, TLS and compression state, input pacing)
        becomes `dst`'s: the transport calls dst's protocol methods from now on."""
        transport = self.transport
        for name in CONNECTION_STATE:
            setattr(dst, name, getattr(self, name))
        dst.transport = transport
        self.transport = None
        self.held = None
        self.pending = []
        self.busy = False
        if self.resume_timer is not None:
            # Input held by the pacing goes along, released at the same time.
            when = self.resume_timer.when()
            self.resume_timer.cancel()
            self.resume_timer = None
            dst.resume_timer = asyncio.get_running_loop().call_at(when, dst._release_held)
        if transport is not None:
            transport.set_protocol(dst)
        self.server.streams.add(dst)

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

    def _peer_closed(self) -> None:
        self.closing = True
        self._final_ack()
        # Modules write their last words to the session as it ends (a room's unavailable
        # presence, XEP-0045 §7.14): before our closing tag, nothing after it (RFC 6120 §4.4).
        self._end_session()
        self.send_uncounted(STREAM_CLOSE)
        self._close_transport()

    def close_with_error(
        self, condition: str | None, text: str | None = None, app_xml: str = ""
    ) -> None:
        """Send a stream error (if any) and the closing tag, then close the connection;
        `app_xml`: an application-specific condition (RFC 6120 §4.9.4)."""
        if self.sm is not None and self.sm.detached:
            self._end_detached()  # no connection to tell: the session ends
            return
        if self.closing:
            return
        if condition == "connection-timeout" and self._resumable():
            # A dead connection (an unanswered ping) is what XEP-0198 resumption is for: the
            # connection gets the error, the session waits for the client to come back.
            self._hand_off_connection().close_with_error(condition, text)
            self._detach(condition)
            return
        self.closing = True
        if self.transport is None:
            return
        if not self.header_sent:
            # RFC 6120 §4.9.1.2: the error follows our stream header.
            self._send_header(None)
        self._final_ack()
        self._end_session()  # what modules send as it ends precedes the closing tag (§4.4)
        if condition is not None:
            log.info(
                "c2s %s: stream error %s%s", self.peer, condition, f" ({text})" if text else ""
            )
            self.send_uncounted(stream_error_bytes(condition, text, app_xml))
        self.send_uncounted(STREAM_CLOSE)
        self._close_transport(linger=True)

    def _final_ack(self) -> None:
        """XEP-0198 §4: an <a/> before the stream closes tells the client which of its
        stanzas the server handled."""
        if self.sm is not None:
            self.send_uncounted(self.sm.answer())

    def _end_session(self) -> None:
        """Leave the session table once, as soon as the stream is closing: nothing more is
        routed here, and modules see the session end before the peer sees our closing tag."""
        if self.auth_timer is not None:
            self.auth_timer.cancel()
            self.auth_timer = None
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

    def _close_transport(self, linger: bool = False) -> None:
        """Flush and close. linger: we closed the stream, the peer has not; wait
        (CLOSE_LINGER at most) for it to close its side, reading and dropping what it still
        sends (RFC 6120 §4.4). Closing at once with its input unread would make the kernel
        answer with a reset, which can destroy the stream error before the peer read it."""
        self._end_session()
        self.flush()
        transport = self.transport
        if transport is None:
            return
        if not linger:
            transport.close()
            return
        with contextlib.suppress(RuntimeError, AttributeError):
            transport.resume_reading()  # input pacing may have paused it
        asyncio.get_running_loop().call_later(CLOSE_LINGER, transport.close)

    def _auth_timed_out(self) -> None:
        self.auth_timer = None
        if not self.bound:
            self.close_with_error("connection-timeout", "authentication took too long")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode() if data else "="


def _escape(text: str | None) -> str:
    return (text or "").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _new_resource() -> str:
    return "fx-" + secrets.token_hex(6)


def _iq_result(st: Stanza, to: str | None, payload: str = "") -> bytes:
    attrs = "type='result' id=" + quoteattr(st.attrs.get("id", ""))
    if to:
        attrs += " to=" + quoteattr(to)
    return f"<iq {attrs}>{payload}</iq>".encode()
