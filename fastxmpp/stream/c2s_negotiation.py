"""What a client stream negotiates before it is a session (RFC 6120 §4-§6, XEP-0138):
the stream header and features, SASL, legacy compression, and the iqs an unauthenticated
stream may send (XEP-0077 registration, XEP-0078 authentication). STARTTLS and the closing
handshake are every stream's (xmlstream.py); binding a resource makes the stream the
router's session (c2s.py).

What only negotiation needs (the SASL exchange, the authentication deadline, the count of
unauthenticated connections per address) lives in a `Negotiation` record, which the stream
drops when a resource is bound or the stream resumes another session (XEP-0198): a bound
session keeps nothing of its login (docs/ARCHITECTURE.md, "Session at bind").
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast
from xml.sax.saxutils import quoteattr

from .. import ns
from .._parser import Stanza, StreamHeader
from ..errors import StanzaError, StreamError
from ..jid import JIDError, parse_jid
from . import channel_binding, compression, csi, sasl2, sm
from .sasl import (
    Challenge,
    Failure,
    HashedTokenExchange,
    PlainExchange,
    SaslExchange,
    ScramExchange,
    Success,
    offered_mechanisms,
)
from .throttle import address_block
from .xmlstream import XmlStream, check_stream_root, check_version, features_xml

if TYPE_CHECKING:
    from ..config import C2SConfig, LimitsConfig
    from ..server import Server
    from .c2s import C2SStream

log = logging.getLogger("fastxmpp.c2s")

STREAM_HEADER = (
    "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    "xmlns:stream='http://etherx.jabber.org/streams' id={id} version='1.0' xml:lang={lang}{attrs}>"
)

# iq payload namespaces an unauthenticated stream may use, and the module that answers them
# with `pre_auth_iq(stream, stanza)`.
PRE_AUTH_IQ = {
    "jabber:iq:register": "register",  # XEP-0077 §3.1, §7
    "jabber:iq:auth": "legacy_auth",  # XEP-0078
}


class Negotiation:
    """A client stream's state from its first byte until a resource is bound."""

    __slots__ = (
        "auth_timer",
        "counted_address",
        "direct_tls",
        "sasl",
        "sasl2",
        "sasl_failures",
        "sasl_mechanism",
    )

    def __init__(self, direct_tls: bool) -> None:
        # XEP-0368: the connection came to a direct TLS listener, whose transport completed
        # the TLS handshake before `connection_made` (the listener's ssl context).
        self.direct_tls = direct_tls
        # c2s.auth_timeout: the stream is closed if not bound by then.
        self.auth_timer: asyncio.TimerHandle | None = None
        # The address counted in server.unauthenticated_per_ip
        # (limits.max_unauthenticated_per_ip), until the stream authenticates or ends.
        self.counted_address: str | None = None
        self.sasl: SaslExchange | None = None  # the exchange under way (RFC 6120 §6.4)
        # The XEP-0388 <authenticate/> under way (its exchange is `sasl`), else None.
        self.sasl2: sasl2.AuthenticateRequest | None = None
        self.sasl_mechanism = ""
        self.sasl_failures = 0  # RFC 6120 §6.4.5: limited by c2s.max_sasl_failures

    def cancel_auth_timer(self) -> None:
        if self.auth_timer is not None:
            self.auth_timer.cancel()
            self.auth_timer = None


class ClientNegotiation(XmlStream):
    """The negotiating half of `C2SStream`: from the first header to authentication."""

    if not TYPE_CHECKING:
        __slots__ = ()  # as XmlStream's: C2SStream declares the attributes

    server: Server
    router: Any
    c2s: C2SConfig
    limits: LimitsConfig
    host: str | None
    authenticated_local: str | None
    bound: bool
    # None once a resource is bound (or this stream resumed a session).
    negotiation: Negotiation | None
    records: list[Any] | None  # Session.records (fastxmpp/records.py)
    sm: Any  # Session.sm: XEP-0198 state, once enabled

    @property
    def sasl_failures(self) -> int:
        """Failed SASL attempts on this stream so far (XEP-0078 §8 asks)."""
        return 0 if self.negotiation is None else self.negotiation.sasl_failures

    def _negotiated(self) -> None:
        """Negotiation is over (a resource is bound, or this stream resumed a session):
        its state goes, with what modules kept for the stream before it was a session
        (XEP-0077 registration, XEP-0078 attempts)."""
        state = self.negotiation
        if state is None:
            return
        self._uncount_unauthenticated()
        state.cancel_auth_timer()
        self.negotiation = None
        self.records = None

    def _uncount_unauthenticated(self) -> None:
        """The connection authenticated or went away: off its address's count."""
        state = self.negotiation
        if state is None:
            return
        address, state.counted_address = state.counted_address, None
        if address is None:
            return
        per_ip = self.server.unauthenticated_per_ip
        per_ip[address] -= 1
        if per_ip[address] <= 0:
            del per_ip[address]

    def _run_step(self, step: Callable[[], Any]) -> None:
        """A slow negotiation step (a password check): later input waits for it."""
        assert self.connection is not None
        self.connection.run_step(step)

    # --- stream header and features (RFC 6120 §4.7, §4.3.2) ---------------------------

    def _stream_header(self, header: StreamHeader) -> None:
        assert self.connection is not None
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
            self.connection.lang = lang
        self._send_header(attrs.get("from"))
        check_stream_root(header, ns.CLIENT)
        if not to or self.host is None or not self.router.is_local(self.host):
            raise StreamError("host-unknown", "this server does not serve that domain")
        if restarted and self.host != previous_host:
            # The restarted stream must be for the host that was secured and authenticated.
            raise StreamError("host-unknown", "the stream restart named another host")
        check_version(header)
        self.write(self._features())

    def _header_xml(self, stream_id: str, peer_from: str | None) -> bytes:
        assert self.connection is not None
        extra = ""
        if self.host and self.router.is_local(self.host):
            extra += " from=" + quoteattr(self.host)
        if peer_from:
            with contextlib.suppress(JIDError):
                extra += " to=" + quoteattr(str(parse_jid(peer_from)))
        return STREAM_HEADER.format(
            id=quoteattr(stream_id), lang=quoteattr(self.connection.lang), attrs=extra
        ).encode()

    def _features(self) -> bytes:
        parts = []
        tls_possible = (
            not self.encrypted
            and self.host in self.server.tls_contexts
            and self.connection is not None
            and self.connection.byte_stream
        )
        if self.authenticated_local is None:
            tls_required = tls_possible and self.c2s.require_encryption
            if tls_possible:
                parts.append(
                    f"<starttls xmlns='{ns.TLS}'>"
                    + ("<required/>" if tls_required else "")
                    + "</starttls>"
                )
            if not tls_required:
                mechanisms = self._offered_mechanisms()
                # XEP-0440 §2: which bindings the -PLUS mechanisms can use here
                parts.append(channel_binding.feature_xml(self._binding_types()))
                parts.append(f"<mechanisms xmlns='{ns.SASL}'>")
                parts.extend(f"<mechanism>{m}</mechanism>" for m in mechanisms)
                parts.append("</mechanisms>")
                parts.append(sasl2.feature_xml(mechanisms, self._sasl2_inline()))
        else:
            if self._compression_offered():
                # XEP-0138: after TLS and SASL, before binding; XEP-0170 order.
                parts.append(f"<compression xmlns='{compression.NS_FEATURE}'>")
                parts.extend(f"<method>{m}</method>" for m in compression.METHODS)
                parts.append("</compression>")
            if not self.bound:
                parts.append(f"<bind xmlns='{ns.BIND}'/>")
                # RFC 6121 §1.4 kept the legacy session feature; we advertise it as optional.
                parts.append(f"<session xmlns='{ns.SESSION}'><optional/></session>")
            if self.server.config.stream_management.enabled and self.sm is None:
                # XEP-0198 §3: once stanzas may follow (enable after bind, or resume); not
                # on a stream bound (XEP-0386) or resumed (XEP-0388) with it already on.
                parts.append(sm.FEATURE)
            if self.server.config.csi.enabled:
                parts.append(csi.FEATURE)  # XEP-0352 §4: after authentication
        parts.append(self.server.modules.stream_features(cast("C2SStream", self)))
        return features_xml(parts)

    def _sasl2_inline(self) -> list[str]:
        """What an <authenticate/> may carry (XEP-0388 §discovery): Bind 2 with the
        features it enables, XEP-0198 resumption, XEP-0484 FAST over TLS."""
        settings = self.server.config
        bind_features = []
        if self.server.modules.get("carbons") is not None:
            bind_features.append(ns.CARBONS)
        if settings.csi.enabled:
            bind_features.append(csi.NS)
        if settings.stream_management.enabled:
            bind_features.append(sm.NS_SM)
        inline = [sasl2.bind2_feature_xml(bind_features)]
        if settings.stream_management.enabled and settings.stream_management.resume_timeout > 0:
            inline.append(sm.FEATURE)
        if self._fast_offered():
            inline.append(sasl2.fast_feature_xml())
        return inline

    def _fast_offered(self) -> bool:
        # XEP-0484 §security: over a secure connection only.
        return self.encrypted and self.c2s.fast_token_lifetime > 0

    def _compression_offered(self) -> bool:
        return (
            self.server.config.legacy.compression
            and self.encrypted
            and self.authenticated_local is not None
            and not self.bound
            and self.connection is not None
            and self.connection.byte_stream
            and not self.connection.compressed
        )

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
            self.write(reply)

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
        self.write(f"<compressed xmlns='{compression.NS_PROTOCOL}'/>".encode())
        self.flush_output()
        assert self.connection is not None
        self.connection.compress()

    def _compression_failure(self, condition: str) -> None:
        self.write(f"<failure xmlns='{compression.NS_PROTOCOL}'><{condition}/></failure>".encode())

    # --- SASL (RFC 6120 §6) ------------------------------------------------------------

    def _sasl_auth(self, st: Stanza) -> None:
        state = self.negotiation
        assert state is not None  # SASL is refused once authenticated
        if state.sasl is not None:
            state.sasl = None
            self._sasl_failure("aborted", "a new <auth/> aborts the previous exchange")
            return
        mechanism = st.attrs.get("mechanism", "")
        if self.server.auth_throttle.refused(self._address()):
            # Too many failed logins from this address lately (limits.auth_failures_per_ip).
            self._sasl_failure("temporary-auth-failure", "too many failed logins, try later")
            return
        if mechanism not in self._offered_mechanisms():
            self._sasl_failure("invalid-mechanism")
            return
        initial = self._sasl_data(st, allow_absent=True)
        if initial is False:
            return
        exchange = self._password_exchange(mechanism)
        assert exchange is not None
        state.sasl = exchange
        state.sasl_mechanism = mechanism
        self._run_step(lambda: self._sasl_step(exchange.start(initial)))  # type: ignore[arg-type]

    def _sasl_response(self, st: Stanza) -> None:
        assert self.negotiation is not None
        exchange = self.negotiation.sasl
        if exchange is None:
            self._sasl_failure("malformed-request", "no exchange in progress")
            return
        data = self._sasl_data(st, allow_absent=False)
        if data is False:
            return
        self._run_step(lambda: self._sasl_step(exchange.respond(data)))  # type: ignore[arg-type]

    def _sasl_data(self, st: Stanza, allow_absent: bool) -> bytes | bool | None:
        return self._decode_sasl_text(st.element().text, allow_absent)

    def _decode_sasl_text(self, text: str | None, allow_absent: bool) -> bytes | bool | None:
        """SASL data from its base64 text; False (the failure sent) when it is not base64."""
        text = (text or "").strip()
        if not text:
            return None if allow_absent else b""
        if text == "=":
            return b""  # RFC 6120 §6.4.2: an empty initial response
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            self._sasl_abandon()
            self._sasl_failure("incorrect-encoding")
            return False

    # --- XEP-0388 SASL2 --------------------------------------------------------------------

    def _sasl2_element(self, st: Stanza) -> None:
        state = self.negotiation
        assert state is not None  # SASL2 is refused once authenticated
        if state.sasl2 is not None:
            # XEP-0388 §"During Authentication": nothing but <response/> or <abort/>.
            name = sasl2.during_exchange(st)
            if name == "abort":
                self._sasl_abandon()
                self._sasl_failure("aborted", sasl2_version=True)
                return
            current = state.sasl
            if current is None:
                return  # the exchange ended meanwhile (a failure, which said so)
            data = self._decode_sasl_text(st.element().text, allow_absent=False)
            if data is False:
                return
            self._run_step(lambda: self._sasl_step(current.respond(data)))  # type: ignore[arg-type]
            return
        if st.name == "abort":
            self._sasl_failure("aborted", sasl2_version=True)  # as RFC 6120 §6.4.4
            return
        if st.name == "response":
            self._sasl_failure("malformed-request", "no exchange in progress", True)
            return
        if st.name != "authenticate":
            raise StreamError("unsupported-stanza-type", f"<{st.name} xmlns='{sasl2.NS}'/>")
        if state.sasl is not None:
            raise StreamError("policy-violation", "<authenticate/> during a SASL exchange")
        if self.server.auth_throttle.refused(self._address()):
            self._sasl_failure("temporary-auth-failure", "too many failed logins, try later", True)
            return
        try:
            request = sasl2.parse_authenticate(st.element())
            exchange = self._sasl2_exchange(request)
        except sasl2.MalformedRequest as exc:
            self._sasl_failure("malformed-request", str(exc), sasl2_version=True)
            return
        if exchange is None:
            self._sasl_failure("invalid-mechanism", sasl2_version=True)
            return
        state.sasl2 = request
        initial = self._decode_sasl_text(request.initial_response, allow_absent=True)
        if initial is False:
            return
        state.sasl = exchange
        state.sasl_mechanism = request.mechanism
        self._run_step(lambda: self._sasl_step(exchange.start(initial)))  # type: ignore[arg-type]

    def _sasl2_exchange(self, request: sasl2.AuthenticateRequest) -> SaslExchange | None:
        """The exchange for the request's mechanism; None when it is not offered."""
        assert self.host is not None
        fast = self._fast_offered()
        if request.request_token is not None and (
            not fast or request.request_token not in sasl2.FAST_MECHANISMS
        ):
            raise sasl2.MalformedRequest("no such FAST mechanism")
        mechanism = request.mechanism
        if mechanism in sasl2.FAST_MECHANISMS:
            if not fast:
                return None
            if not request.fast or request.client is None:
                raise sasl2.MalformedRequest("a FAST mechanism needs <fast/> and <user-agent id>")
            return HashedTokenExchange(
                mechanism,
                self.host,
                sasl2.fast_tokens(self.server),
                request.client,
                request.count,
                request.invalidate,
            )
        if request.fast:
            raise sasl2.MalformedRequest("<fast/> goes with a FAST mechanism")
        return self._password_exchange(mechanism)

    def _password_exchange(self, mechanism: str) -> SaslExchange | None:
        if mechanism not in self._offered_mechanisms():
            return None
        assert self.host is not None
        accounts = self.server.accounts
        if mechanism == "PLAIN":
            return PlainExchange(self.host, accounts, self.server.run_blocking)
        return ScramExchange(
            mechanism, self.host, accounts, self._tls_object(), bool(self._binding_types())
        )

    def _tls_object(self) -> Any:
        """The ssl.SSLObject of this stream's own TLS (STARTTLS or XEP-0368 direct TLS),
        once established; None otherwise: no TLS, or a framing over HTTP (WebSocket, BOSH),
        whose TLS is the HTTP connection's, not the stream's (a BOSH session spans several)."""
        connection = self.connection
        if connection is None or not connection.byte_stream:
            return None
        tls = connection.tls
        return tls.tls if tls is not None and tls.established else None

    def _binding_types(self) -> list[str]:
        """The channel-binding types offered for SCRAM-*-PLUS on this stream."""
        if not self.c2s.channel_binding:
            return []
        return channel_binding.offered_types(self._tls_object())

    def _offered_mechanisms(self) -> list[str]:
        return offered_mechanisms(
            self.c2s.sasl_mechanisms, self.encrypted, bool(self._binding_types())
        )

    def _sasl2_complete(
        self, outcome: Success, request: sasl2.AuthenticateRequest, exchange: Any
    ) -> None:
        raise NotImplementedError  # C2SStream: resumption, binding, <success/>

    async def _sasl_step(self, pending_outcome: Any) -> None:
        outcome = await pending_outcome
        state = self.negotiation
        assert state is not None  # nothing binds while this step runs
        exchange = state.sasl
        account = self._throttle_key(exchange)
        throttle = self.server.auth_throttle
        if isinstance(outcome, Success | Failure) and throttle.refused(self._address(), account):
            # The account is under attack (limits.auth_failures_per_account): refused for
            # the rest of the window whatever the password, RFC 6120 §6.5.12.
            outcome = Failure("temporary-auth-failure", "too many failed logins, try later")
        elif (
            isinstance(outcome, Failure)
            and outcome.condition in WRONG_CREDENTIALS
            and outcome.tested
        ):
            # A wrong FAST token counts as a wrong password (XEP-0484 §security). A channel
            # binding refused before any proof does not: slixmpp 1.8 (Poezio) asks for
            # tls-unique, which TLS 1.3 lacks, then falls back with 'y' (RFC 5802 §6), four
            # refusals per login that would otherwise throttle and lock out its users.
            throttle.record_failure(self._address(), account)
            self.server.counts.login_failures += 1
            delay = throttle.delay(self._address(), account)
            if delay:
                await asyncio.sleep(delay)  # back-off: this stream's input waits too
            if self.closing:
                return
        request = state.sasl2
        if isinstance(outcome, Challenge):
            data = sasl_text(outcome.data) if outcome.data else ""
            if request is not None:
                self.write(sasl2.challenge_xml(data))
            else:
                self.write(f"<challenge xmlns='{ns.SASL}'>{data}</challenge>".encode())
        elif isinstance(outcome, Success):
            state.sasl = None
            self.server.counts.logins += 1
            binding = getattr(exchange, "binding", None)
            log.info(
                "c2s %s: authenticated %s@%s with %s%s%s",
                self.peer,
                outcome.local,
                self.host,
                state.sasl_mechanism,
                f" ({binding})" if binding else "",
                " (SASL2)" if request is not None else "",
            )
            if request is not None:
                state.sasl2 = None
                self._sasl2_complete(outcome, request, exchange)
                return
            self.authenticated_local = outcome.local
            self._uncount_unauthenticated()
            data = sasl_text(outcome.data) if outcome.data else ""
            self.write(f"<success xmlns='{ns.SASL}'>{data}</success>".encode())
            if self.connection is not None:
                self.connection.pending.clear()
                self.connection.restart()
        elif isinstance(outcome, Failure):
            state.sasl = None
            self._sasl_failure(outcome.condition, outcome.text, request is not None)

    def _address(self) -> str:
        """The client's address (its IPv6 network): what failed logins are counted by."""
        if self.connection is None:
            return "?"
        return address_block(self.connection.address, self.limits.ipv6_prefix_length)

    def _throttle_key(self, exchange: SaslExchange | None) -> str | None:
        if exchange is None or exchange.username is None:
            return None
        return f"{exchange.username}@{self.host}"

    def _sasl_abandon(self) -> None:
        """The exchange under way, if any, is over (RFC 6120 §6.4.4: aborted)."""
        if self.negotiation is not None:
            self.negotiation.sasl = None

    def _sasl_failure(
        self, condition: str, text: str | None = None, sasl2_version: bool = False
    ) -> None:
        """RFC 6120 §6.4.5 <failure/>, or XEP-0388's when `sasl2_version` or a SASL2
        exchange is under way; failures of both count alike."""
        state = self.negotiation
        assert state is not None  # SASL is refused once authenticated
        state.sasl_failures += 1
        if sasl2_version or state.sasl2 is not None:
            state.sasl2 = None
            state.sasl = None
            self.write(sasl2.failure_xml(condition, text))
        else:
            text_xml = f"<text xml:lang='en'>{escape(text)}</text>" if text else ""
            self.write(f"<failure xmlns='{ns.SASL}'><{condition}/>{text_xml}</failure>".encode())
        log.info("c2s %s: SASL failure %s (%d)", self.peer, condition, state.sasl_failures)
        if condition != "aborted" and state.sasl_failures >= self.c2s.max_sasl_failures:
            # RFC 6120 §6.4.5: retries are limited; then the stream is closed.
            self.close_with_error("policy-violation", "too many authentication failures")


# Failures that count against the address and account (limits.auth_failures_per_*).
WRONG_CREDENTIALS = frozenset(("not-authorized", "credentials-expired"))


def sasl_text(data: bytes) -> str:
    """SASL data as the base64 text of an element (RFC 6120 §6.4.2: "=" for empty data)."""
    return base64.b64encode(data).decode() if data else "="


def escape(text: str | None) -> str:
    return (text or "").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
