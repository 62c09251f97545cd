"""RFC 6121 §2 rosters: get, set, remove, roster pushes and roster versioning (§2.6).

- Only the account itself may touch its roster: an iq with a 'to' other than its own bare
  JID is forbidden (§2.1.5, §2.3.3).
- A get answers the whole roster with its version, or (§2.6.3) when the client presents a
  version: nothing if it is current, otherwise an empty result followed by one roster push
  per item changed since that version (removed items as subscription='remove'). A version
  this server never issued, or one older than the oldest tombstone kept, gets the whole
  roster.
- A set adds or updates one item (name and groups only: 'subscription', 'ask' and 'approved'
  from the client are ignored, §2.1.2, §2.1.5); subscription='remove' removes it (§2.5),
  and the presence module sends the contact the unsubscribe/unsubscribed the removal means.
  Errors (§2.3.3, §2.5.3): not exactly one item, duplicate groups, no 'jid': bad-request; a
  'jid' that is not a JID: jid-malformed; an empty group or a name or group longer than
  MAX_TEXT_BYTES: not-acceptable; a new item beyond `roster.max_items`: not-allowed; removing
  an item that is not there: item-not-found.
- Every change is pushed (§2.1.6) to each "interested resource": a session that has asked
  for the roster (its `RosterRecord`).
- The subscription state (§3, Appendix A) lives on the items too (fastxmpp/storage/roster.py);
  the presence module changes it through `apply`.

Rosters of accounts with a bound session are kept in memory; others are read from LMDB
when needed and not kept.

Public API for other modules (`hub.get("roster")`): `subscription(domain, local, contact)`,
`item(domain, local, contact)`, `items(domain, local)`, `state(...)`, `apply(...)`,
`presence_subscribers(domain, local)`, `presence_sources(domain, local)` and
`interested_resources(bare)`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape, quoteattr

from ..errors import StanzaError
from ..jid import JIDError, parse_jid
from ..records import RecordSlot
from ..storage.lmdb_store import StorageFull
from ..storage.roster import Roster, RosterItem, RosterStore
from .base import Module, iq_result
from .subscription_states import State

if TYPE_CHECKING:
    from .._parser import Stanza
    from ..stream.c2s import C2SStream

log = logging.getLogger("fastxmpp.roster")

NS = "jabber:iq:roster"
NS_VERSIONING_FEATURE = "urn:xmpp:features:rosterver"
# §2.1.2.3/§2.1.2.4: a server may limit the length of names and groups.
MAX_TEXT_BYTES = 1023
# Tombstones kept per roster before the oldest half is dropped (raising the floor).
MAX_TOMBSTONES = 200


@dataclass(slots=True)
class RosterRecord:
    """What the roster module keeps for a session: made when it asks for the roster."""

    requested: bool = False  # §2.1.6: an "interested resource", which gets roster pushes


ROSTER = RecordSlot(RosterRecord)


def item_xml(item: RosterItem, removed: bool = False) -> str:
    """The <item/> of a roster result or push (§2.1.2)."""
    if removed or not item.listed:
        return f"<item jid={quoteattr(item.jid)} subscription='remove'/>"
    attrs = f"jid={quoteattr(item.jid)}"
    if item.name is not None:
        attrs += f" name={quoteattr(item.name)}"
    attrs += f" subscription='{item.subscription}'"
    if item.ask:
        attrs += " ask='subscribe'"
    if item.approved:
        attrs += " approved='true'"
    if not item.groups:
        return f"<item {attrs}/>"
    groups = "".join(f"<group>{escape(group)}</group>" for group in item.groups)
    return f"<item {attrs}>{groups}</item>"


def normalize_contact(text: str | None) -> str:
    if not text:
        raise StanzaError("bad-request", "a roster item needs a 'jid'")
    try:
        return parse_jid(text).full
    except JIDError as exc:
        raise StanzaError("jid-malformed", str(exc)) from None


def checked_text(text: str, what: str) -> str:
    if len(text.encode()) > MAX_TEXT_BYTES:
        raise StanzaError("not-acceptable", f"{what} longer than {MAX_TEXT_BYTES} bytes")
    return text


class RosterModule(Module):
    name = "roster"

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        self.store: RosterStore | None = None
        self.max_items = server.config.roster.max_items
        self._online: dict[str, Roster] = {}  # bare JID -> roster, for bound accounts
        # bare JID -> (subscribers, sources): contacts with from/both, with to/both.
        self._presence_cache: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}

    def start(self) -> None:
        assert self.server.storage is not None
        self.store = RosterStore(self.server.storage)
        self.router.set_iq_handler(NS, self.answer)

    # --- events -------------------------------------------------------------------------

    def session_bound(self, session: C2SStream) -> None:
        if session.bare not in self._online:
            self._online[session.bare] = self._load(session.domain, session.local)

    def session_ended(self, session: C2SStream) -> None:
        # Later modules (presence: the unavailable broadcast) still read the roster for this
        # event: it leaves memory on the next turn of the loop, if nobody came back by then.
        if not self.router.resources(session.bare):
            asyncio.get_running_loop().call_soon(self._evict, session.bare)

    def _evict(self, bare: str) -> None:
        if not self.router.resources(bare):
            self._online.pop(bare, None)
            self._presence_cache.pop(bare, None)

    def account_removed(self, domain: str, local: str) -> None:
        bare = f"{local}@{domain}"
        self._online.pop(bare, None)
        self._presence_cache.pop(bare, None)

    def stream_features(self, stream: C2SStream) -> str:
        if stream.authenticated_local is None:
            return ""
        return f"<ver xmlns='{NS_VERSIONING_FEATURE}'/>"

    # --- public API ---------------------------------------------------------------------

    def roster(self, domain: str, local: str) -> Roster:
        """The account's roster: the in-memory one when it is online, else read now."""
        roster = self._online.get(f"{local}@{domain}")
        return roster if roster is not None else self._load(domain, local)

    def subscription(self, domain: str, local: str, contact: str) -> str:
        """ "none", "to", "from" or "both": local@domain's subscription with `contact`."""
        found = self.item(domain, local, contact)
        return "none" if found is None else found.subscription

    def item(self, domain: str, local: str, contact: str) -> RosterItem | None:
        """The listed roster item for `contact` (a normalized JID), or None."""
        found = self.roster(domain, local).items.get(contact)
        return found if found is not None and found.listed else None

    def items(self, domain: str, local: str) -> list[RosterItem]:
        return self.roster(domain, local).listed()

    def state(self, domain: str, local: str, contact: str) -> tuple[State, bool]:
        """(Appendix A state, pre-approved) of `contact` for the account."""
        found = self.roster(domain, local).items.get(contact)
        if found is None:
            return State("none"), False
        return State(found.subscription, found.ask, found.pending_in is not None), found.approved

    def pending_requests(self, domain: str, local: str) -> list[bytes]:
        """The subscription requests the account has not answered yet (§3.1.3)."""
        roster = self.roster(domain, local)
        return [i.pending_in for i in roster.items.values() if i.pending_in is not None]

    def presence_subscribers(self, domain: str, local: str) -> tuple[str, ...]:
        """Contacts that receive the account's presence (subscription from/both, §4.2.2)."""
        return self._presence_lists(domain, local)[0]

    def presence_sources(self, domain: str, local: str) -> tuple[str, ...]:
        """Contacts whose presence the account receives (subscription to/both, §4.2.2)."""
        return self._presence_lists(domain, local)[1]

    def apply(
        self,
        domain: str,
        local: str,
        contact: str,
        new: State,
        pre_approved: bool,
        pending_request: bytes | None = None,
        announce: Callable[[], None] | None = None,
    ) -> bool:
        """Put `contact` in state `new` (the presence module's subscription changes): the
        item is created when the state needs one, `pending_request` is the stanza kept with
        Pending In; pushed to interested resources when the client-visible item changed.
        `announce` runs once the change is stored, before that push (RFC 6121 §3.1.6: the
        subscription stanza that caused it reaches the client first). Whether anything
        changed. StorageFull propagates, nothing changed nor announced then."""
        roster = self.roster(domain, local)
        old = roster.items.get(contact)
        item = RosterItem(contact, listed=False) if old is None else _copy(old)
        item.subscription = new.subscription
        item.ask = new.pending_out
        item.approved = pre_approved
        item.pending_in = (pending_request or item.pending_in) if new.pending_in else None
        if new.subscription != "none" or new.pending_out or pre_approved:
            item.listed = True  # §3.1.2, §3.1.5, §3.4.1: the server adds the contact
        if item == (old or RosterItem(contact, listed=False)):
            if announce is not None:
                announce()
            return False  # nothing to write (e.g. "unsubscribe" from a stranger)
        self._save(domain, local, roster, old, item, announce)
        return True

    def remove(self, domain: str, local: str, contact: str) -> RosterItem | None:
        """Take `contact` off the roster (§2.5.2) and push the removal; the item as it
        was, or None when it was not listed."""
        roster = self.roster(domain, local)
        old = roster.items.get(contact)
        if old is None or not old.listed:
            return None
        self._save(domain, local, roster, old, RosterItem(contact, listed=False))
        return old

    # --- storage and pushes -------------------------------------------------------------

    def _load(self, domain: str, local: str) -> Roster:
        assert self.store is not None
        return self.store.load(domain, local)

    def _save(
        self,
        domain: str,
        local: str,
        roster: Roster,
        old: RosterItem | None,
        item: RosterItem,
        announce: Callable[[], None] | None = None,
    ) -> None:
        """Write `item` (one transaction with the version), then update memory, `announce`
        and push."""
        assert self.store is not None
        visible_change = (
            old.visible() if old is not None else RosterItem(item.jid, listed=False).visible()
        ) != item.visible()
        version = roster.version + 1 if visible_change else roster.version
        item.version = version if visible_change else (old.version if old is not None else 0)
        saved_version = roster.version
        roster.version = version
        try:
            self.store.save(domain, local, item, roster)
        except BaseException:
            roster.version = saved_version
            raise
        if item.listed or item.pending_in is not None or item.version > 0:
            roster.items[item.jid] = item
        else:
            roster.items.pop(item.jid, None)  # nothing left of it (the store deleted it too)
        bare = f"{local}@{domain}"
        self._presence_cache.pop(bare, None)
        if announce is not None:
            announce()
        if visible_change:
            self._push(bare, item)
            self._prune(domain, local, roster)

    def interested_resources(self, bare: str) -> list[C2SStream]:
        """§2.1.6: the sessions of account `bare` that asked for the roster."""
        return [s for s in self.router.resources(bare).values() if _interested(s)]

    def _push(self, bare: str, item: RosterItem) -> None:
        """§2.1.6: a roster push to each interested resource."""
        for session in self.interested_resources(bare):
            self._push_one(session, item)

    def _prune(self, domain: str, local: str, roster: Roster) -> None:
        """Drop the oldest tombstones once there are too many (§2.6 allows falling back to
        the whole roster for a client whose version is that old)."""
        tombstones = [i for i in roster.items.values() if not i.listed and i.pending_in is None]
        if len(tombstones) <= MAX_TOMBSTONES:
            return
        tombstones.sort(key=lambda i: i.version)
        dropped = tombstones[: len(tombstones) // 2]
        old_floor = roster.floor
        roster.floor = max(roster.floor, dropped[-1].version)
        assert self.store is not None
        try:
            self.store.forget(domain, local, [i.jid for i in dropped], roster)
        except StorageFull:
            roster.floor = old_floor
            return
        for i in dropped:
            del roster.items[i.jid]

    def _presence_lists(self, domain: str, local: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        bare = f"{local}@{domain}"
        cached = self._presence_cache.get(bare)
        if cached is not None:
            return cached
        roster = self.roster(domain, local)
        subscribers = tuple(
            i.jid for i in roster.items.values() if i.subscription in ("from", "both")
        )
        sources = tuple(i.jid for i in roster.items.values() if i.subscription in ("to", "both"))
        lists = (subscribers, sources)
        if bare in self._online:
            self._presence_cache[bare] = lists
        return lists

    # --- jabber:iq:roster ---------------------------------------------------------------

    def answer(self, origin: C2SStream, st: Stanza, target: tuple[str, ...] | None) -> bytes | None:
        if target is not None and target[3] != origin.bare:
            raise StanzaError("forbidden", "a roster belongs to its account only")
        query = st.element().find(f"{{{NS}}}query")
        if query is None:
            raise StanzaError("bad-request", "a jabber:iq:roster <query/> is expected")
        if st.attrs.get("type") == "get":
            return self._get(origin, st, query)
        return self._set(origin, st, query)

    def _get(self, origin: C2SStream, st: Stanza, query: Any) -> bytes | None:
        ROSTER.of(origin).requested = True
        roster = self.roster(origin.domain, origin.local)
        presented = query.get("ver")
        since = _parse_version(presented)
        if since is not None and roster.floor <= since <= roster.version:
            # §2.6.3: current: nothing; older: the changes as pushes after an empty result.
            origin.send(iq_result(origin, st))
            changed = sorted(
                (i for i in roster.items.values() if i.version > since), key=lambda i: i.version
            )
            for item in changed:
                self._push_one(origin, item)
            return None
        items = "".join(item_xml(i) for i in roster.items.values() if i.listed)
        return iq_result(origin, st, f"<query xmlns='{NS}' ver='{roster.version}'>{items}</query>")

    def _push_one(self, session: C2SStream, item: RosterItem) -> None:
        """A roster push (§2.1.6) with the item's version (§2.6.3); no 'from': it comes
        from the account itself."""
        push_id = "push-" + secrets.token_hex(6)
        session.send(
            f"<iq type='set' id='{push_id}' to={quoteattr(session.full)}>"
            f"<query xmlns='{NS}' ver='{item.version}'>{item_xml(item)}</query></iq>".encode()
        )

    def _set(self, origin: C2SStream, st: Stanza, query: Any) -> bytes | None:
        elements = [child for child in query if isinstance(child.tag, str)]
        items = [child for child in elements if child.tag == f"{{{NS}}}item"]
        if len(items) != 1 or len(elements) != 1:
            raise StanzaError("bad-request", "a roster set carries exactly one <item/>")
        element = items[0]
        contact = normalize_contact(element.get("jid"))
        try:
            if element.get("subscription") == "remove":
                self._remove(origin, contact)
            else:
                self._update(origin, contact, element)
        except StorageFull:
            raise StanzaError("resource-constraint", "the server's storage is full") from None
        return iq_result(origin, st)

    def _update(self, origin: C2SStream, contact: str, element: Any) -> None:
        name = element.get("name")
        if name is not None:
            checked_text(name, "a name")
        groups: list[str] = []
        for child in element:
            if child.tag != f"{{{NS}}}group":
                continue
            group = child.text or ""
            if not group:
                raise StanzaError("not-acceptable", "a group needs a name")
            checked_text(group, "a group name")
            if group in groups:
                raise StanzaError("bad-request", f"group {group!r} given twice")
            groups.append(group)
        roster = self.roster(origin.domain, origin.local)
        old = roster.items.get(contact)
        if (old is None or not old.listed) and roster.listed_count() >= self.max_items:
            raise StanzaError("not-allowed", f"a roster holds at most {self.max_items} items")
        item = RosterItem(contact, listed=False) if old is None else _copy(old)
        item.listed = True
        item.name = name or None
        item.groups = tuple(groups)
        if old is not None and item == old:
            # Nothing changed: still a push, as for any roster set (§2.3.2).
            self._push(origin.bare, old)
            return
        self._save(origin.domain, origin.local, roster, old, item)

    def _remove(self, origin: C2SStream, contact: str) -> None:
        old = self.remove(origin.domain, origin.local, contact)
        if old is None:
            raise StanzaError("item-not-found", "no such roster item")
        presence = self.hub.get("presence")
        if presence is not None:
            presence.roster_item_removed(origin, old)


def _interested(session: C2SStream) -> bool:
    record = ROSTER.get(session)
    return record is not None and record.requested


def _copy(item: RosterItem) -> RosterItem:
    return RosterItem(
        item.jid,
        item.name,
        item.groups,
        item.subscription,
        item.ask,
        item.approved,
        item.listed,
        item.pending_in,
        item.version,
    )


def _parse_version(text: str | None) -> int | None:
    if not text or not text.isdigit() or len(text) > 18:
        return None
    return int(text)


MODULE = RosterModule
