"""XEP-0402 §5.3 compatibility: an account's room bookmarks kept the same in the three places
clients look for them, so that every client of the account sees the same rooms.

- XEP-0402 native bookmarks: PEP node urn:xmpp:bookmarks:1, one item per room (item id: the
  room JID; <conference name autojoin><nick/><password/><extensions/></conference>).
- XEP-0048 bookmarks in PEP: node storage:bookmarks, item 'current', one <storage/> with a
  <conference jid name autojoin><nick/><password/></conference> per room.
- XEP-0048 bookmarks in XEP-0049 private XML storage: <storage xmlns='storage:bookmarks'/>.

A publish, retract, purge or deletion on urn:xmpp:bookmarks:1 (§5.3.1) rewrites both legacy
forms from all its items (the jid attribute from each item id; the <url/> bookmarks a legacy
form held are kept in it, XEP-0402 has none). A legacy form written by a client (§5.3.2)
updates the native node room by room: a new or changed conference is published (name,
autojoin, nick, password; the native item's <extensions/> kept unless the legacy conference
carries elements of its own, which then become them), a room no longer listed is retracted;
and the other legacy form is rewritten from the one written (not from the native node). A
native node a client made with a smaller max_items gets 'max' first (as XEP-0402 §3
configures it), so that no room of the list is dropped. Only what changed is written or
notified: an unchanged room is neither republished nor retracted, an unchanged legacy form
is not rewritten. A conversion never triggers the reverse one (pep.publish_for_account,
pep.retract_for_account and private.store_for_account tell no listener). Nodes the
conversion creates are XEP-0223 private storage (whitelist, persistent; the native one with
max_items 'max' and send_last_published_item 'never', XEP-0402 §3).

The account advertises urn:xmpp:bookmarks:1#compat (XEP-0049 kept in sync) and
urn:xmpp:bookmarks:1#compat-pep (XEP-0048 in PEP kept in sync).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape, quoteattr

from lxml import etree

from .base import Module
from .private import fragment_xml

if TYPE_CHECKING:
    from ..storage.pep import Item

log = logging.getLogger("fastxmpp.bookmarks")

NS_NATIVE = "urn:xmpp:bookmarks:1"
NS_LEGACY = "storage:bookmarks"
LEGACY_ITEM = "current"
NATIVE_CONFIG: dict[str, Any] = {
    "access_model": "whitelist",
    "persist_items": True,
    "max_items": "max",
    "send_last_published_item": "never",
}
LEGACY_CONFIG: dict[str, Any] = {"access_model": "whitelist", "persist_items": True}
# What is read here was stored from a client's stream (no DTD there); restricted anyway.
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


@dataclass(frozen=True, slots=True)
class Bookmark:
    jid: str
    name: str | None = None
    autojoin: bool = False
    nick: str | None = None
    password: str | None = None
    # The serialized extension elements (XEP-0402 <extensions/> children).
    extensions: tuple[bytes, ...] = ()


def _autojoin(value: str | None) -> bool:
    return value in ("1", "true")


def _text(element: Any, tag: str) -> str | None:
    found = element.find(tag)
    return None if found is None else (found.text or "")


def parse_native(item_id: str, payload: bytes) -> Bookmark | None:
    """The bookmark an urn:xmpp:bookmarks:1 item holds (None: not a <conference/>)."""
    try:
        conference = etree.fromstring(payload, _PARSER)
    except etree.XMLSyntaxError:
        return None
    if conference.tag != f"{{{NS_NATIVE}}}conference":
        return None
    extensions = conference.find(f"{{{NS_NATIVE}}}extensions")
    return Bookmark(
        item_id,
        conference.get("name"),
        _autojoin(conference.get("autojoin")),
        _text(conference, f"{{{NS_NATIVE}}}nick"),
        _text(conference, f"{{{NS_NATIVE}}}password"),
        ()
        if extensions is None
        else tuple(fragment_xml(e) for e in extensions if isinstance(e.tag, str)),
    )


def parse_legacy(xml: bytes | None) -> tuple[dict[str, Bookmark], list[bytes]] | None:
    """The conferences (by room JID) and the other children (<url/> ...) of the first
    XEP-0048 <storage/> in `xml` (one or more elements, as private storage keeps them);
    None when there is none."""
    if not xml:
        return None
    try:
        wrapper = etree.fromstring(b"<wrapper>" + xml + b"</wrapper>", _PARSER)
    except etree.XMLSyntaxError:
        return None
    storage = wrapper.find(f"{{{NS_LEGACY}}}storage")
    if storage is None:
        return None
    conferences: dict[str, Bookmark] = {}
    others: list[bytes] = []
    known = (f"{{{NS_LEGACY}}}nick", f"{{{NS_LEGACY}}}password")
    for child in storage:
        if not isinstance(child.tag, str):
            continue
        if child.tag != f"{{{NS_LEGACY}}}conference":
            others.append(fragment_xml(child))
            continue
        jid = child.get("jid")
        if not jid:
            continue  # XEP-0048 §3.2: the jid is required; nothing to key it by
        conferences[jid] = Bookmark(
            jid,
            child.get("name"),
            _autojoin(child.get("autojoin")),
            _text(child, known[0]),
            _text(child, known[1]),
            tuple(fragment_xml(e) for e in child if isinstance(e.tag, str) and e.tag not in known),
        )
    return conferences, others


def _children(bookmark: Bookmark) -> str:
    out = ""
    if bookmark.nick is not None:
        out += f"<nick>{escape(bookmark.nick)}</nick>"
    if bookmark.password is not None:
        out += f"<password>{escape(bookmark.password)}</password>"
    return out


def _attrs(bookmark: Bookmark) -> str:
    out = "" if bookmark.name is None else f" name={quoteattr(bookmark.name)}"
    return out + f" autojoin='{'true' if bookmark.autojoin else 'false'}'"


def native_payload(bookmark: Bookmark) -> bytes:
    extensions = b"".join(bookmark.extensions).decode()
    if extensions:
        extensions = f"<extensions>{extensions}</extensions>"
    return (
        f"<conference xmlns='{NS_NATIVE}'{_attrs(bookmark)}>{_children(bookmark)}"
        f"{extensions}</conference>"
    ).encode()


def legacy_xml(bookmarks: list[Bookmark], others: list[bytes]) -> bytes:
    conferences = "".join(
        f"<conference jid={quoteattr(b.jid)}{_attrs(b)}>{_children(b)}"
        f"{b''.join(b.extensions).decode()}</conference>"
        for b in bookmarks
    )
    rest = b"".join(others).decode()
    return f"<storage xmlns='{NS_LEGACY}'>{conferences}{rest}</storage>".encode()


class BookmarksModule(Module):
    name = "bookmarks"
    account_features = (NS_NATIVE + "#compat", NS_NATIVE + "#compat-pep")

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        self.pep: Any = None
        self.private: Any = None

    def start(self) -> None:
        self.pep = self.hub.get("pep")
        self.private = self.hub.get("private")
        if self.pep is None or self.private is None:
            log.warning("no pep or private module: bookmarks are not kept in sync")
            return
        self.pep.on_publish(self._published)
        self.pep.on_remove(self._removed)
        self.private.on_change(self._private_changed)

    # --- what the account wrote ----------------------------------------------------------

    def _published(self, domain: str, local: str, node: str, item: Item) -> None:
        if node == NS_NATIVE:
            self._native_changed(domain, local)
        elif node == NS_LEGACY:
            self._legacy_written(domain, local, item.payload, pep=True)

    def _removed(self, domain: str, local: str, node: str) -> None:
        if node == NS_NATIVE:
            self._native_changed(domain, local)

    def _private_changed(self, domain: str, local: str, namespace: str, xml: bytes) -> None:
        if namespace == NS_LEGACY:
            self._legacy_written(domain, local, xml, pep=False)

    # --- §5.3.1: native to legacy --------------------------------------------------------

    def _native(self, domain: str, local: str) -> dict[str, Bookmark]:
        found: dict[str, Bookmark] = {}
        for item in self.pep.stored_items(domain, local, NS_NATIVE):
            bookmark = parse_native(item.id, item.payload)
            if bookmark is not None:
                found[item.id] = bookmark
        return found

    def _native_changed(self, domain: str, local: str) -> None:
        bookmarks = list(self._native(domain, local).values())
        self._write_legacy(domain, local, bookmarks, pep=True)
        self._write_legacy(domain, local, bookmarks, pep=False)

    def _stored_legacy(self, domain: str, local: str, pep: bool) -> bytes | None:
        if pep:
            item = self.pep.stored_item(domain, local, NS_LEGACY, LEGACY_ITEM)
            return None if item is None else bytes(item.payload)
        stored = self.private.stored(domain, local, NS_LEGACY)
        return None if stored is None else bytes(stored)

    def _write_legacy(self, domain: str, local: str, bookmarks: list[Bookmark], pep: bool) -> None:
        """The legacy form (`pep`: XEP-0048 in PEP, else XEP-0049) with `bookmarks`, unless
        it holds them already."""
        current = parse_legacy(self._stored_legacy(domain, local, pep))
        others: list[bytes] = []
        if current is not None:
            conferences, others = current
            if conferences == {b.jid: b for b in bookmarks}:
                return
        elif not bookmarks:
            return  # nothing stored, nothing to store
        xml = legacy_xml(bookmarks, others)
        if pep:
            self.pep.publish_for_account(domain, local, NS_LEGACY, LEGACY_ITEM, xml, LEGACY_CONFIG)
        else:
            self.private.store_for_account(domain, local, NS_LEGACY, xml)

    # --- §5.3.2: legacy to native --------------------------------------------------------

    def _legacy_written(self, domain: str, local: str, xml: bytes, pep: bool) -> None:
        parsed = parse_legacy(xml)
        if parsed is None:
            return
        conferences = parsed[0]
        if conferences:
            # XEP-0402 §3: the node keeps every bookmark; one a client made with the
            # default max_items would drop all but the last room of the list.
            self.pep.configure_for_account(domain, local, NS_NATIVE, {"max_items": "max"})
        native = self._native(domain, local)
        for jid, bookmark in conferences.items():
            before = native.get(jid)
            if before is not None and not bookmark.extensions:
                # Legacy clients drop what they do not know: the native extensions stay.
                bookmark = Bookmark(
                    jid,
                    bookmark.name,
                    bookmark.autojoin,
                    bookmark.nick,
                    bookmark.password,
                    before.extensions,
                )
            if bookmark != before:
                self.pep.publish_for_account(
                    domain, local, NS_NATIVE, jid, native_payload(bookmark), NATIVE_CONFIG
                )
        for jid in native:
            if jid not in conferences:
                self.pep.retract_for_account(domain, local, NS_NATIVE, jid)
        # The other legacy form follows the one written.
        self._write_legacy(domain, local, list(conferences.values()), pep=not pep)


MODULE = BookmarksModule
