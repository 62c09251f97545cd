"""XEP-0215 External Service Discovery: the STUN and TURN servers clients use for audio and
video calls (XEP-0167 with XEP-0176 ICE: Conversations, Dino, Monal, Movim ask here), with
time-limited TURN credentials.

Configured in `[turn]`: the server `host` (a TURN server such as coturn; every TURN server
is a STUN server too), its `port` (UDP and TCP) and `tls_port` (TURNS, 0: none). With the
`secret` it shares with the TURN server (coturn: `use-auth-secret`, `static-auth-secret`),
TURN is offered with credentials made as the TURN REST API draft
(draft-uberti-behave-turn-rest §2.2) says and coturn checks: username
`<expiry in Unix seconds>:<the asker's bare JID>`, password base64(HMAC-SHA1(secret,
username)), valid `lifetime` seconds; without a secret, STUN only.

- `<services/>` (§3.2), optionally of one `type` (§3.3): the configured services, TURN's with
  its credentials (and `restricted`, §2: they must be asked for again once expired; those
  issued to the same account in the last minute are given again);
- `<credentials/>` (§3.4): fresh credentials for the restricted service named by host and
  type (and port): item-not-found for any other;
- for the server's local users only (asked of the server's domain, or with no 'to'): an
  account's JID has no services (service-unavailable), and users of other servers must ask
  their own server (forbidden), as a TURN relay costs its operator bandwidth.

Without `[turn] host` the list is empty (§3.2 lets a server know of no services); the feature
is advertised all the same: the protocol is supported.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

from ..delay import stamp
from ..errors import StanzaError
from .base import Module, iq_result, sender_account

if TYPE_CHECKING:
    from .._parser import Stanza
    from ..stream.c2s import C2SStream

NS = "urn:xmpp:extdisco:2"


class ExternalServicesModule(Module):
    name = "external_services"
    features = (NS,)

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        self._issued: dict[str, int] = {}  # bare JID -> expiry of its latest credentials

    def start(self) -> None:
        self.router.set_iq_handler(NS, self.answer)

    def answer(self, origin: C2SStream, st: Stanza, target: tuple[str, ...] | None) -> bytes:
        if (target or sender_account(origin))[0]:
            raise StanzaError("service-unavailable")  # an account has no such services
        if origin.is_remote:
            raise StanzaError("forbidden", "ask your own server for its services")
        if st.attrs.get("type") != "get":
            raise StanzaError("bad-request", "external services are asked with an iq get")
        request = st.element()[0]
        tag = request.tag.rpartition("}")[2]
        if tag == "services":
            kind = request.get("type")
            found = [s for s in self.services(origin.bare) if kind is None or s["type"] == kind]
            type_attr = "" if kind is None else f" type={quoteattr(kind)}"
            return iq_result(origin, st, _services_xml("services", found, type_attr))
        if tag == "credentials":
            asked = request.find(f"{{{NS}}}service")
            if asked is None or not asked.get("host") or not asked.get("type"):
                raise StanzaError("bad-request", "name the service by its host and type")
            port = asked.get("port")
            found = [
                s
                for s in self.services(origin.bare)
                if s.get("restricted")
                and s["host"] == asked.get("host")
                and s["type"] == asked.get("type")
                and (port is None or s["port"] == port)
            ]
            if not found:
                raise StanzaError("item-not-found", "no such service with credentials here")
            return iq_result(origin, st, _services_xml("credentials", found[:1], ""))
        raise StanzaError("bad-request", f"unexpected <{tag}/>")

    def services(self, user: str) -> list[dict[str, str]]:
        """The configured services, TURN's with credentials for bare JID `user`."""
        turn = self.config.turn
        if not turn.host:
            return []
        port = str(turn.port)
        found = [{"type": "stun", "host": turn.host, "port": port, "transport": "udp"}]
        if not turn.secret:
            return found
        expires = self._expiry(user, turn.lifetime)
        username = f"{expires}:{user}"
        digest = hmac.new(turn.secret.encode(), username.encode(), hashlib.sha1).digest()
        credentials = {
            "username": username,
            "password": base64.b64encode(digest).decode(),
            "expires": stamp(expires),
            "restricted": "1",
        }
        endpoints = [("turn", port, "udp"), ("turn", port, "tcp")]
        if turn.tls_port:
            endpoints.append(("turns", str(turn.tls_port), "tcp"))
        for kind, at, transport in endpoints:
            found.append(
                {"type": kind, "host": turn.host, "port": at, "transport": transport} | credentials
            )
        return found

    def _expiry(self, user: str, lifetime: float) -> int:
        """When `user`'s TURN credentials expire: those issued in the last minute (a tenth
        of the lifetime if shorter) are handed out again, so that a client (or the XMPP
        Interop Testing suite, XEP-0215 §3.3) asking for all services and then for one type
        sees the same service both times, not one with a new username a second later."""
        now = time.time()
        expires = self._issued.get(user)
        if expires is None or now + lifetime - expires > min(60.0, lifetime / 10):
            if len(self._issued) >= 10000:  # bounded: an old entry is only a reuse missed
                self._issued.clear()
            expires = self._issued[user] = int(now + lifetime)
        return expires


def _services_xml(element: str, services: list[dict[str, Any]], attrs: str) -> str:
    items = "".join(
        "<service" + "".join(f" {k}={quoteattr(v)}" for k, v in sorted(s.items())) + "/>"
        for s in services
    )
    return f"<{element} xmlns='{NS}'{attrs}>{items}</{element}>"


MODULE = ExternalServicesModule
