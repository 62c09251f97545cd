"""XEP-0078 Non-SASL Authentication (`legacy.non_sasl_auth`, off by default), and the switch
of XEP-0086 legacy error codes (`legacy.error_codes`).

Only the plaintext method, and only over TLS: the iq-auth stream feature is offered on
encrypted, unauthenticated streams, and an iq over a plain stream gets not-authorized. The
digest method (SHA1 of stream id and password) cannot be offered: it needs the password
itself, and the account store keeps only SCRAM credentials (RFC 5802 §3), never the password.

A successful iq set authenticates and binds the resource in one step, with the configured
resource-conflict policy (XEP-0078 §3 recommends replacing the old session, our default;
"reject" gives conflict, and so does "rename", since the result cannot carry a new resource).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

from .. import errors
from ..errors import StanzaError, StreamError
from ..jid import JIDError, normalize_local, normalize_resource
from ..records import RecordSlot
from .base import Module

if TYPE_CHECKING:
    from .._parser import Stanza
    from ..stream.c2s import C2SStream

log = logging.getLogger("fastxmpp.legacy_auth")


@dataclass(slots=True)
class LegacyAuthRecord:
    """What non-SASL authentication keeps for a stream before it authenticates."""

    failures: int = 0  # wrong passwords so far (limited like SASL's, RFC 6120 §6.4.5)


LEGACY_AUTH = RecordSlot(LegacyAuthRecord)

NS = "jabber:iq:auth"
NS_FEATURE = "http://jabber.org/features/iq-auth"


def _result(st: Stanza, payload: str = "") -> bytes:
    return f"<iq type='result' id={quoteattr(st.attrs.get('id', ''))}>{payload}</iq>".encode()


class LegacyAuthModule(Module):
    name = "legacy_auth"

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        self.enabled = self.config.legacy.non_sasl_auth

    def stream_features(self, stream: C2SStream) -> str:
        if self.enabled and stream.authenticated_local is None and stream.encrypted:
            return f"<auth xmlns='{NS_FEATURE}'/>"
        return ""

    def pre_auth_iq(self, stream: C2SStream, st: Stanza) -> bytes | None:
        if not self.enabled:
            # §3: a server without non-SASL authentication answers service-unavailable.
            raise StanzaError("service-unavailable", "use SASL")
        if stream.sasl_failures:
            # §8: after a failed SASL attempt, jabber:iq:auth is refused.
            raise StreamError("policy-violation", "SASL authentication failed before")
        if not stream.encrypted:
            raise StanzaError("not-authorized", "STARTTLS first: the password is plaintext")
        if st.attrs.get("type") == "get":
            # No <digest/>: see the module documentation.
            return _result(st, f"<query xmlns='{NS}'><username/><password/><resource/></query>")
        query = st.element().find(f"{{{NS}}}query")
        if query is None:
            raise StanzaError("bad-request", "a jabber:iq:auth query is expected")
        username = (query.findtext(f"{{{NS}}}username") or "").strip()
        password = query.findtext(f"{{{NS}}}password") or ""
        resource = (query.findtext(f"{{{NS}}}resource") or "").strip()
        if query.find(f"{{{NS}}}digest") is not None and not password:
            raise StanzaError("not-acceptable", "only the plaintext method is offered")
        if not username or not password or not resource:
            raise StanzaError("not-acceptable", "username, password and resource are required")
        try:
            resource = normalize_resource(resource)
        except JIDError as exc:
            raise StanzaError("not-acceptable", str(exc)) from None
        try:
            local: str | None = normalize_local(username)
        except JIDError:
            local = None  # checked like a wrong password: no hint which usernames exist
        assert stream.host is not None
        domain = stream.host
        accounts = self.server.accounts

        async def authenticate() -> None:
            ok, credentials = (
                (False, None)
                if local is None
                else await self.server.run_blocking(
                    lambda: accounts.verify_password(domain, local, password)
                )
            )
            if not ok or local is None:
                record = LEGACY_AUTH.of(stream)
                record.failures += 1
                failures = record.failures
                log.info("c2s %s: jabber:iq:auth failure (%d)", stream.peer, failures)
                if failures >= self.config.c2s.max_sasl_failures:
                    # Like SASL (RFC 6120 §6.4.5): limited retries, then the stream ends.
                    err = StanzaError("not-authorized")
                    stream.send(
                        errors.stanza_error_bytes("iq", st.attrs.get("id"), None, None, err)
                    )
                    stream.close_with_error("policy-violation", "too many authentication failures")
                    return
                raise StanzaError("not-authorized")
            if credentials is not None:
                accounts.replace_credentials(domain, local, credentials)
            stream.legacy_login(st, local, resource)

        stream.run_iq_step(st, authenticate)
        return None


MODULE = LegacyAuthModule
