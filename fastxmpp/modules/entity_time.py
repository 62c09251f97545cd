"""XEP-0202 Entity Time of the server: its UTC offset (<tzo/>) and the UTC time (<utc/>),
both in XEP-0082 formats. Asked of an account's bare JID: service-unavailable, the server
does not answer this on an account's behalf (RFC 6121 §8.5.2.1.3)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..errors import StanzaError
from .base import Module, iq_result, sender_account

if TYPE_CHECKING:
    from .._parser import Stanza
    from ..stream.c2s import C2SStream

NS = "urn:xmpp:time"


def tzo(offset_seconds: int) -> str:
    """XEP-0082 TZD: +hh:mm / -hh:mm (UTC is +00:00, as XEP-0202 §4 shows)."""
    sign = "-" if offset_seconds < 0 else "+"
    minutes = abs(offset_seconds) // 60
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def utc_now() -> str:
    """XEP-0082 DateTime in UTC, whole seconds: fractions are optional there, and some
    clients (slixmpp's XEP-0082 parser among them) fail on them."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class EntityTimeModule(Module):
    name = "entity_time"
    features = (NS,)

    def start(self) -> None:
        self.router.set_iq_handler(NS, self.answer)

    def answer(self, origin: C2SStream, st: Stanza, target: tuple[str, ...] | None) -> bytes:
        if (target or sender_account(origin))[0]:
            # An account (no 'to': the sender's, RFC 6120 §10.3.3) has no such thing.
            raise StanzaError("service-unavailable")
        if st.attrs.get("type") != "get":
            raise StanzaError("bad-request", "entity time is asked with an iq get")
        offset = time.localtime().tm_gmtoff
        payload = f"<time xmlns='{NS}'><tzo>{tzo(offset)}</tzo><utc>{utc_now()}</utc></time>"
        return iq_result(origin, st, payload)


MODULE = EntityTimeModule
