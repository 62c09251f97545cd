"""An example fastxmpp module from a package of its own (docs/MODULES.md).

It counts the messages each account has received (hooked at the pipeline stage
"message/delivered", between the archive and carbons), keeps the counts in its own store, so
they survive a restart and go with the account, and answers the account's question

    <iq type='get'><stats xmlns='urn:fastxmpp:example:stats'/></iq>

with <stats xmlns='urn:fastxmpp:example:stats' label='...' received='N'/>. Its feature is in
the server's disco#info. Option: label (a string, default "received").
"""

from __future__ import annotations

from typing import Any, ClassVar
from xml.sax.saxutils import quoteattr

from fastxmpp.errors import StanzaError
from fastxmpp.modules.base import Module, iq_result

NS = "urn:fastxmpp:example:stats"
COUNT_KEY = b"received"


def incremented(stored: bytes | None) -> bytes:
    return str(int(stored or b"0") + 1).encode()


class ReceivedCounter(Module):
    name = "example_stats"
    features = (NS,)
    # After the archive (100), before carbons (0): fastxmpp.pipeline.ORDER.
    pipeline_places: ClassVar[dict[str, int]] = {"message/delivered": 50}

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> list[str]:
        problems = [f"unknown key {key}" for key in options if key != "label"]
        if not isinstance(options.get("label", ""), str):
            problems.append("label must be a string")
        return problems

    def start(self) -> None:
        self.label = self.options.get("label", "received")
        self.store = self.open_store()
        self.hub.hook(self, "message/delivered", self.delivered)
        self.router.set_iq_handler(NS, self.answer)

    def delivered(self, origin: Any, st: Any, target: Any, data: Any, sessions: Any) -> None:
        local, domain = target[0], target[1]
        self.store.update(domain, local, COUNT_KEY, incremented)

    def answer(self, origin: Any, st: Any, target: Any) -> bytes:
        if target is not None and target[3] != origin.bare:
            raise StanzaError("forbidden", "an account's counts are its own")
        if st.attrs.get("type") != "get":
            raise StanzaError("bad-request", "the counts are read, not written")
        count = int(self.store.get(origin.domain, origin.local, COUNT_KEY) or b"0")
        payload = f"<stats xmlns='{NS}' label={quoteattr(self.label)} received='{count}'/>"
        return iq_result(origin, st, payload)
