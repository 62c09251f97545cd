"""XEP-0092 Software Version of the server: name and version; <os/> only with
`version.show_os` (§5: it tells attackers what to target). Asked of an account's bare JID
the server has nothing to say on its behalf: service-unavailable (RFC 6121 §8.5.2.1.3)."""

from __future__ import annotations

import platform
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape

from .. import __version__
from ..errors import StanzaError
from .base import Module, iq_result, sender_account

if TYPE_CHECKING:
    from .._parser import Stanza
    from ..stream.c2s import C2SStream

NS = "jabber:iq:version"
SOFTWARE_NAME = "fastxmpp"


class VersionModule(Module):
    name = "version"
    features = (NS,)

    def start(self) -> None:
        os_xml = ""
        if self.config.version.show_os:
            os_xml = f"<os>{escape(f'{platform.system()} {platform.release()}'.strip())}</os>"
        self.payload = (
            f"<query xmlns='{NS}'><name>{SOFTWARE_NAME}</name>"
            f"<version>{escape(__version__)}</version>{os_xml}</query>"
        )
        self.router.set_iq_handler(NS, self.answer)

    def answer(self, origin: C2SStream, st: Stanza, target: tuple[str, ...] | None) -> bytes:
        if (target or sender_account(origin))[0]:
            # An account (no 'to': the sender's, RFC 6120 §10.3.3) has no such thing.
            raise StanzaError("service-unavailable")
        if st.attrs.get("type") != "get":
            raise StanzaError("bad-request", "software version is asked with an iq get")
        return iq_result(origin, st, self.payload)


MODULE = VersionModule
