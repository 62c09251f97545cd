"""XEP-0054 vcard-temp: each account stores one vCard, which anyone may read (§5: vCards are
world-readable).

- Own vCard (no 'to', or the account's own bare JID): a get returns the stored vCard, or an
  empty `<vCard xmlns='vcard-temp'/>` when none is stored (§3.1 allows that or item-not-found;
  the empty result is what clients handle everywhere, and it needs no error path). A set
  replaces the whole vCard (§3.2: there are no partial updates); a set of an empty vCard
  (no child element) deletes the stored one.
- Another account's bare JID on this server: a get returns its vCard; without one,
  service-unavailable (§3.3 since version 1.3: the same condition as for an account that does
  not exist, which the router already answers before this module is asked, so accounts cannot
  be harvested). A get to a full JID goes to that client, never answered here (RFC 6121 §8.5.3).
- The server's domain: the server has no vCard, so a get answers item-not-found (the condition
  §3.1 names for "no vCard"); service-unavailable would tell the client that the server does
  not support vcard-temp at all, contradicting its disco feature, and nothing can be
  harvested from a domain.
- A set addressed to anyone but the sender's own bare JID: forbidden (§3.2).
- The payload must be `<vCard/>` (case-sensitive, §8); another element in the vcard-temp
  namespace: bad-request.
- A vCard bigger than `[vcard] max_size` bytes of serialized XML: not-acceptable, the
  condition XEP-0060 §7.1.3.5 gives to a payload too big; the stored vCard is kept.
- Storage full: resource-constraint.

The vCard is stored as the client sent it (unknown children and attributes kept, namespace
declarations reduced to those used) and deleted with the account (storage.account_data).
Whoever needs to know of a changed vCard (the XEP-0398 avatar conversion) registers with
`on_change`; `replace_photo` is the server's own edit of the PHOTO, which tells nobody (so a
conversion never triggers the reverse one).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lxml import etree

from ..errors import StanzaError
from ..storage.lmdb_store import StorageFull
from ..storage.vcard import VCardStore
from .base import Module, answer_once_stored, iq_result
from .private import fragment_xml

log = logging.getLogger("fastxmpp.vcard")

if TYPE_CHECKING:
    from .._parser import Stanza
    from ..stream.c2s import C2SStream

NS = "vcard-temp"
EMPTY_VCARD = f"<vCard xmlns='{NS}'/>"
PHOTO = f"{{{NS}}}PHOTO"
# (domain, local, the stored vCard or None once deleted)
VCardListener = Callable[[str, str, bytes | None], None]


class VCardModule(Module):
    name = "vcard"
    # §4: the server supports vcard-temp, and answers for its accounts' bare JIDs.
    features = (NS,)
    account_features = (NS,)

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        self.store: VCardStore | None = None
        self.max_size = self.config.vcard.max_size
        self._listeners: list[VCardListener] = []

    def start(self) -> None:
        assert self.server.storage is not None
        self.store = VCardStore(self.server.storage)
        self.router.set_iq_handler(NS, self.answer)

    # --- what other modules may ask --------------------------------------------------------

    def on_change(self, listener: VCardListener) -> None:
        """`listener` hears of every vCard an account sets (or deletes) itself."""
        self._listeners.append(listener)

    def stored(self, domain: str, local: str) -> bytes | None:
        assert self.store is not None
        return self.store.get(domain, local)

    def replace_photo(self, domain: str, local: str, photo: tuple[str, str] | None) -> bool:
        """Set the account's PHOTO to (TYPE, BINVAL), or remove it (None), keeping the rest
        of its vCard. False (nothing changed) when the result would exceed [vcard] max_size
        or the storage is full. Listeners are not told: this is the server's own edit."""
        assert self.store is not None
        stored = self.store.get(domain, local)
        vcard = etree.Element(f"{{{NS}}}vCard", nsmap={None: NS})
        if stored is not None:
            vcard = etree.fromstring(stored)
        for old in vcard.findall(PHOTO):
            vcard.remove(old)
        if photo is not None:
            element = etree.SubElement(vcard, PHOTO)
            etree.SubElement(element, f"{{{NS}}}TYPE").text = photo[0]
            etree.SubElement(element, f"{{{NS}}}BINVAL").text = photo[1]
        try:
            if not any(isinstance(child.tag, str) for child in vcard):
                if stored is not None:
                    self.store.delete(domain, local)
                return True
            xml = fragment_xml(vcard)
            if len(xml) > self.max_size:
                log.warning(
                    "avatar of %s@%s not put in its vCard: over [vcard] max_size", local, domain
                )
                return False
            self.store.put(domain, local, xml)
        except StorageFull:
            log.error("storage full: vCard photo of %s@%s unchanged", local, domain)
            return False
        return True

    # --- requests ---------------------------------------------------------------------------

    def answer(self, origin: C2SStream, st: Stanza, target: tuple[str, ...] | None) -> bytes | None:
        vcard = st.element().find(f"{{{NS}}}vCard")
        if vcard is None:
            raise StanzaError("bad-request", "the vcard-temp payload is <vCard/>")
        own = target is None or target[3] == origin.bare
        if st.attrs.get("type") == "set":
            if not own:
                raise StanzaError("forbidden", "only the account itself may set its vCard")
            self._set(origin, st, vcard)
            return None
        if own:
            return self._get_own(origin, st)
        if target is not None and target[0]:
            return self._get_other(origin, st, target[1], target[0])
        raise StanzaError("item-not-found", "the server has no vCard")

    def _set(self, origin: C2SStream, st: Stanza, vcard: Any) -> None:
        """Answered once stored (`answer_once_stored`)."""
        assert self.store is not None
        xml = None
        if any(isinstance(child.tag, str) for child in vcard):
            xml = fragment_xml(vcard)
            if len(xml) > self.max_size:
                raise StanzaError(
                    "not-acceptable", f"a vCard may hold at most {self.max_size} bytes"
                )

        def stored(_: None) -> bytes:
            for listener in self._listeners:
                try:
                    listener(origin.domain, origin.local, xml)
                except Exception:
                    log.exception("vCard listener failed for %s", origin.bare)
            return iq_result(origin, st)

        work = self.store.replacing(origin.domain, origin.local, xml)
        answer_once_stored(origin, st, self.store.later(work), stored)

    def _get_own(self, origin: C2SStream, st: Stanza) -> bytes:
        assert self.store is not None
        stored = self.store.get(origin.domain, origin.local)
        return iq_result(origin, st, EMPTY_VCARD if stored is None else stored.decode())

    def _get_other(self, origin: C2SStream, st: Stanza, domain: str, local: str) -> bytes:
        assert self.store is not None
        stored = self.store.get(domain, local)
        if stored is None:
            raise StanzaError("service-unavailable")
        return iq_result(origin, st, stored.decode())


MODULE = VCardModule
