"""XEP-0049 Private XML Storage: XML an account keeps on the server, per namespace.

- Only the account itself, from one of its own resources, with no 'to' or its own bare JID:
  anything addressed elsewhere (another account, the server's domain) is forbidden (§2.3).
- A set replaces what is stored for each namespace it carries (several elements of one
  namespace are kept together); a get names one namespace and gets what is stored there, or
  its own empty element back when nothing is.
- Errors (§2.3, §3): a set without a child element: not-acceptable; a get without one:
  bad-request (the XEP's "Bad Format", which RFC 6120 no longer has); a get naming several
  namespaces: bad-request; a child in a reserved namespace ("jabber:...", incl. jabber:client
  and jabber:iq:private, "http://jabber.org/...", "vcard-temp") or in no namespace:
  not-acceptable. More than MAX_NAMESPACES namespaces per account: policy-violation.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lxml import etree

from ..errors import StanzaError
from ..storage.lmdb_store import StorageFull
from ..storage.private import PrivateStore, TooManyNamespaces
from .base import Module, answer_once_stored, iq_result

if TYPE_CHECKING:
    from .._parser import Stanza
    from ..stream.c2s import C2SStream

log = logging.getLogger("fastxmpp.private")

NS = "jabber:iq:private"
RESERVED_PREFIXES = ("jabber:", "http://jabber.org/")
RESERVED_NAMESPACES = frozenset(("vcard-temp",))
# Namespaces one account may keep: enough for every client's preferences, bookmarks and
# notes, and a bound on what one account can make the server store.
MAX_NAMESPACES = 100
# (domain, local, namespace, the XML now stored under it)
ChangeListener = Callable[[str, str, str, bytes], None]


def fragment_xml(element: Any) -> bytes:
    """The element alone, declaring only the namespaces it uses."""
    alone = copy.deepcopy(element)
    alone.tail = None
    etree.cleanup_namespaces(alone)
    return bytes(etree.tostring(alone))


def storable_namespace(element: Any) -> str:
    namespace = etree.QName(element).namespace
    if not namespace or namespace.startswith(RESERVED_PREFIXES) or namespace in RESERVED_NAMESPACES:
        raise StanzaError("not-acceptable", f"namespace {namespace or '(none)'} is reserved")
    return str(namespace)


class PrivateModule(Module):
    name = "private"
    features = (NS,)

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        self.store: PrivateStore | None = None
        self._listeners: list[ChangeListener] = []

    def start(self) -> None:
        assert self.server.storage is not None
        self.store = PrivateStore(self.server.storage)
        self.router.set_iq_handler(NS, self.answer)

    def answer(self, origin: C2SStream, st: Stanza, target: tuple[str, ...] | None) -> bytes | None:
        assert self.store is not None
        if target is not None and target[3] != origin.bare:
            raise StanzaError("forbidden", "private data belongs to its account only")
        query = st.element().find(f"{{{NS}}}query")
        if query is None:
            raise StanzaError("bad-request", "a jabber:iq:private <query/> is expected")
        children = [child for child in query if isinstance(child.tag, str)]
        if st.attrs.get("type") == "set":
            self._set(origin, st, children)
            return None
        return self._get(origin, st, children)

    def _set(self, origin: C2SStream, st: Stanza, children: list[Any]) -> None:
        """Answered once stored (`answer_once_stored`)."""
        assert self.store is not None
        if not children:
            raise StanzaError("not-acceptable", "nothing to store")
        fragments: dict[str, bytes] = {}
        for child in children:
            namespace = storable_namespace(child)
            fragments[namespace] = fragments.get(namespace, b"") + fragment_xml(child)
        work = self.store.setting_many(origin.domain, origin.local, fragments, MAX_NAMESPACES)

        def refused(exc: Exception) -> StanzaError | None:
            if not isinstance(exc, TooManyNamespaces):
                return None
            return StanzaError(
                "policy-violation", f"at most {MAX_NAMESPACES} namespaces per account"
            )

        def stored(_: Any) -> bytes:
            for namespace, xml in fragments.items():
                for listener in self._listeners:
                    try:
                        listener(origin.domain, origin.local, namespace, xml)
                    except Exception:
                        log.exception("private storage listener failed for %s", origin.bare)
            return iq_result(origin, st)

        answer_once_stored(origin, st, self.store.later(work), stored, refused)

    def _get(self, origin: C2SStream, st: Stanza, children: list[Any]) -> bytes:
        assert self.store is not None
        if not children:
            raise StanzaError("bad-request", "name the namespace to retrieve")
        namespaces = {etree.QName(child).namespace for child in children}
        if len(namespaces) > 1:
            raise StanzaError("bad-request", "one namespace per request")
        namespace = storable_namespace(children[0])
        stored = self.store.get(origin.domain, origin.local, namespace)
        xml = stored if stored is not None else fragment_xml(children[0])
        return iq_result(origin, st, f"<query xmlns='{NS}'>{xml.decode()}</query>")

    # --- what other modules may ask (XEP-0402 bookmarks compatibility) -------------------

    def on_change(self, listener: ChangeListener) -> None:
        """`listener` hears of every namespace an account stores itself (not of what
        `store_for_account` stores: a conversion never triggers the reverse one)."""
        self._listeners.append(listener)

    def stored(self, domain: str, local: str, namespace: str) -> bytes | None:
        assert self.store is not None
        return self.store.get(domain, local, namespace)

    def store_for_account(self, domain: str, local: str, namespace: str, xml: bytes) -> bool:
        """Store `xml` under `namespace` on the account's behalf; False when a limit or the
        full storage refuses it (logged)."""
        assert self.store is not None
        work = self.store.setting_many(domain, local, {namespace: xml}, MAX_NAMESPACES)
        try:
            self.store.now(work)
        except (TooManyNamespaces, StorageFull) as exc:
            log.warning("%s not stored for %s@%s: %s", namespace, local, domain, exc)
            return False
        return True


MODULE = PrivateModule
