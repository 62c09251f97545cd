"""XEP-0016 privacy lists and XEP-0191 blocking command, one list model underneath.

Lists (XEP-0016 §2): an account keeps named lists of ordered items (fastxmpp/storage/privacy.py)
and may name one of them its default; each session may make one active for itself. The
list in force for a session (its active list, else the default list, §2.2 rules 1-3) is
compiled (privacy_rules.PrivacyList) and attached to the session as `session.stanza_filter`; the
router consults it for every stanza delivered to the session and every stanza it sends, and
skips all of it when the attribute is None, which it is for every session of an account
without lists. Stanzas handled for the account as a whole (iqs to its bare JID, messages for
offline storage, subscription stanzas) follow the default list (§2.2 rule 2). Presence the
presence module sends itself (broadcast, probe answers) asks `presence_allowed`.

Protocol (§2.3-§2.8): get of the list names (with the session's active and the account's
default), get of one list, set of a list (all of it, not a delta; it replaces one of the same
name), removal (an empty <list/>), set and decline of the active and the default list. Errors:
unknown list: item-not-found; several lists in a get or several children in a set, malformed
items, duplicate orders: bad-request; a jid value that is not a JID: jid-malformed; a group not
in the roster: item-not-found (§2.1); removing a list, or changing or declining the default,
while it applies to another connected resource: conflict (§2.2 rule 11, §2.5); beyond
`privacy.max_lists` or `privacy.max_items`: policy-violation (RFC 6120 §8.3.3.12, a local
policy). Every change of a list is pushed to all connected resources (§2.2 rule 10).

Blocking (XEP-0191): the blocklist is the set of blocklist-shaped items (type jid, action deny,
no child: every kind) of the default list, as XEP-0191 §6 recommends, so the two protocols
never disagree: a block adds such items first in the default list (creating a default list
named BLOCKLIST_NAME when there is none), an unblock removes them (and the list, once empty);
a XEP-0016 client that edits the default list, or changes it, changes the blocklist too and
the blocklist's own pushes (§3.3, §3.4, to resources that asked for it) follow every such
change. When JIDs enter the blocklist the user's available resources send them unavailable
presence and the user sees them go unavailable (§3.3, the user "appears offline" both ways);
when they leave it, presence flows again as RFC 6121 allows. Blocking is polite (§4):
subscriptions stay.

Blocked inbound (§2.13, XEP-0191 §3.3): message → service-unavailable, iq get/set →
service-unavailable, iq result/error and presence of every kind → silently dropped; blocked
outbound → not-acceptable, with XEP-0191's <blocked/> when a blocklist item decided it
(privacy_rules.PrivacyList.refuse_out). Of the subscription stanzas from a JID the default list
blocks, subscribe and subscribed are dropped before the state machine (§2.2 rule 4: privacy
first); unsubscribe and unsubscribed still take effect (they only take the user's presence
away from the blocked JID or the blocked JID's from the user, and dropping them would leave
the blocked JID's roster promising what the user's no longer does), only the stanza is not
delivered.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import OrderedDict
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

from lxml import etree

from ..errors import StanzaError
from ..records import RecordSlot
from ..storage.lmdb_store import StorageFull
from ..storage.privacy import ItemRecord, PrivacyStore, StoredLists
from .base import Module, iq_result
from .presence import addressed
from .privacy_rules import (
    EVERY_KIND,
    IQ,
    MESSAGE,
    NS,
    PRESENCE_IN,
    PRESENCE_OUT,
    Item,
    PrivacyList,
    jid_matches,
    jid_parts,
    list_name,
    normalized_jid,
    parse_items,
)

if TYPE_CHECKING:
    from .._parser import Stanza
    from ..storage.roster import RosterItem
    from ..stream.c2s import C2SStream
    from .presence import PresenceModule
    from .roster import RosterModule

log = logging.getLogger("fastxmpp.stanza_filter")

NS_BLOCKING = "urn:xmpp:blocking"
# The default list a block command creates when the account has none (XEP-0191 §6).
BLOCKLIST_NAME = "blocklist"
# Compiled default lists of accounts without a session kept for the "iq/account" and
# "message/offline" handlers.
OFFLINE_DEFAULTS_CACHED = 1024
_STORED_PARSER = etree.XMLParser(resolve_entities=False, no_network=True)


@dataclass(slots=True)
class PrivacyRecord:
    """What the privacy module keeps for a session beyond its `stanza_filter`."""

    active: str | None = None  # §2.4: the name of the session's active list
    blocklist_requested: bool = False  # XEP-0191 §3.3: blocklist pushes go to it


PRIVACY = RecordSlot(PrivacyRecord)


def _active(session: C2SStream) -> str | None:
    record = PRIVACY.get(session)
    return None if record is None else record.active


def _blocklist_requested(session: C2SStream) -> bool:
    record = PRIVACY.get(session)
    return record is not None and record.blocklist_requested


class AccountLists:
    """One account's stored lists, each compiled."""

    def __init__(self, module: PrivacyModule, domain: str, local: str, stored: StoredLists) -> None:
        self.module = module
        self.domain = domain
        self.local = local
        self.stored = stored
        self.compiled: dict[str, PrivacyList] = {}
        self.replace(stored)

    def replace(self, stored: StoredLists) -> None:
        self.stored = stored
        self.compiled = {name: self.compile(name) for name in stored.lists}

    def compile(self, name: str) -> PrivacyList:
        return self.module.compile(self.domain, self.local, name, self.stored.lists[name])

    @property
    def default_list(self) -> PrivacyList | None:
        name = self.stored.default
        return None if name is None else self.compiled.get(name)

    def blocked(self) -> list[str]:
        """The blocklist (XEP-0191 §6): blocklist-shaped items of the default list."""
        default = self.default_list
        return [] if default is None else [i.value or "" for i in default.items if i.blocks_jid]


class PrivacyModule(Module):
    name = "privacy"
    features = (NS, NS_BLOCKING)

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        self.settings = self.config.privacy
        self.store: PrivacyStore | None = None
        self.roster: RosterModule | None = None
        self.presence: PresenceModule | None = None
        self._online: dict[str, AccountLists] = {}  # bare JID -> lists, for bound accounts
        # bare JID -> compiled default list of accounts without a session, least recent first.
        self._offline_defaults: OrderedDict[str, PrivacyList] = OrderedDict()

    def start(self) -> None:
        assert self.server.storage is not None
        self.store = PrivacyStore(self.server.storage)
        self.roster = self.hub.get("roster")
        self.presence = self.hub.get("presence")
        self.router.set_iq_handler(NS, self.answer_privacy)
        self.router.set_iq_handler(NS_BLOCKING, self.answer_blocking)
        self.hub.hook(self, "iq/account", self.iq_to_account)
        self.hub.hook(self, "message/offline", self.message_to_offline_account)

    # --- events -------------------------------------------------------------------------

    def session_bound(self, session: C2SStream) -> None:
        account = self._online.get(session.bare)
        if account is None:
            self._offline_defaults.pop(session.bare, None)
            account = self._online[session.bare] = self._load(session.domain, session.local)
        session.stanza_filter = account.default_list

    def session_ended(self, session: C2SStream) -> None:
        if not self.router.resources(session.bare):
            asyncio.get_running_loop().call_soon(self._evict, session.bare)

    def _evict(self, bare: str) -> None:
        if not self.router.resources(bare):
            self._online.pop(bare, None)

    def account_removed(self, domain: str, local: str) -> None:
        self._online.pop(f"{local}@{domain}", None)
        self._offline_defaults.pop(f"{local}@{domain}", None)

    # --- public API (router hook, presence and offline modules) ---------------------------

    def default_list(self, domain: str, local: str) -> PrivacyList | None:
        """The account's default list, or None."""
        bare = f"{local}@{domain}"
        account = self._online.get(bare)
        if account is not None:
            return account.default_list
        cached = self._offline_defaults.get(bare)
        if cached is not None:
            self._offline_defaults.move_to_end(bare)
            return cached
        assert self.store is not None
        stored = self.store.load(domain, local)
        if stored.default is None or stored.default not in stored.lists:
            return None
        # Compiled once and kept (a flood of iqs to an offline account must not compile a
        # long list each time); an account's lists only change while it is online.
        default = self.compile(domain, local, stored.default, stored.lists[stored.default])
        self._offline_defaults[bare] = default
        if len(self._offline_defaults) > OFFLINE_DEFAULTS_CACHED:
            self._offline_defaults.popitem(last=False)
        return default

    # --- pipeline handlers (the account's default list) -----------------------------------

    def iq_to_account(self, origin: C2SStream, st: Stanza, target: tuple[str, ...]) -> None:
        """At "iq/account": XEP-0016 §2.13, the default list applies to iqs the server answers
        on the account's behalf."""
        if not self.account_allows_in(target[1], target[0], IQ, origin.full):
            raise StanzaError("service-unavailable")

    def message_to_offline_account(
        self, origin: C2SStream, st: Stanza, target: tuple[str, ...], data: bytes | None
    ) -> None:
        """At "message/offline", before storage: XEP-0016 §2.13, the default list blocks the
        sender (there is no active list while no session is available)."""
        if not self.account_allows_in(target[1], target[0], MESSAGE, origin.full):
            raise StanzaError("service-unavailable")

    def account_allows_in(self, domain: str, local: str, kind: int, sender: str) -> bool:
        """Whether the account's default list lets a stanza of `kind` from `sender` in."""
        default = self.default_list(domain, local)
        return default is None or default.allows(kind, sender)

    def presence_allowed(self, sender: C2SStream, recipient: C2SStream) -> bool:
        """A presence notification from session `sender` to session `recipient`: the
        sender's presence-out and the recipient's presence-in (§2.10, §2.11)."""
        if (
            sender.stanza_filter is None and recipient.stanza_filter is None
        ) or sender.bare == recipient.bare:
            return True
        if sender.stanza_filter is not None and not sender.stanza_filter.allows(
            PRESENCE_OUT, recipient.full
        ):
            return False
        return recipient.stanza_filter is None or recipient.stanza_filter.allows(
            PRESENCE_IN, sender.full
        )

    def stored_message_allowed(self, session: C2SStream, data: bytes) -> bool:
        """An offline message (stored bytes) about to go to `session`: its list may have
        changed since the message was stored."""
        if session.stanza_filter is None:
            return True
        try:
            sender = etree.fromstring(data, _STORED_PARSER).get("from")
        except etree.XMLSyntaxError:
            return True
        return sender is None or session.stanza_filter.allows_in(MESSAGE, sender)

    def compile(
        self, domain: str, local: str, name: str, records: tuple[ItemRecord, ...]
    ) -> PrivacyList:
        """The list `name` of local@domain, ready for the router; group and subscription
        items read the account's roster when a stanza reaches them (§2.2 rule 9)."""
        roster = self.roster

        def roster_item(contact: str) -> RosterItem | None:
            return None if roster is None else roster.item(domain, local, contact)

        items = tuple(Item.from_record(record) for record in records)
        return PrivacyList(name, items, domain, local, roster_item)

    # --- jabber:iq:privacy ---------------------------------------------------------------

    def answer_privacy(
        self, origin: C2SStream, st: Stanza, target: tuple[str, ...] | None
    ) -> bytes | None:
        if target is not None and target[3] != origin.bare:
            raise StanzaError("forbidden", "privacy lists belong to their account only")
        query = st.element().find(f"{{{NS}}}query")
        if query is None:
            raise StanzaError("bad-request", "a jabber:iq:privacy <query/> is expected")
        children = [child for child in query if isinstance(child.tag, str)]
        account = self._account(origin)
        if st.attrs.get("type") == "get":
            return self._get(origin, st, account, children)
        # §2.1: a set carries exactly one <active/>, <default/> or <list/>.
        if len(children) != 1:
            raise StanzaError("bad-request", "a privacy set carries exactly one element")
        child = children[0]
        tag = child.tag
        if tag == f"{{{NS}}}active":
            return self._set_active(origin, st, account, child.get("name"))
        if tag == f"{{{NS}}}default":
            return self._set_default(origin, st, account, child.get("name"))
        if tag != f"{{{NS}}}list":
            raise StanzaError("bad-request", "expected <active/>, <default/> or <list/>")
        name = list_name(child)
        if len(child) > self.settings.max_items:  # refused before any item is looked at
            self._check_limits(account.stored, name, len(child))
        items = parse_items(child, self._roster_groups(origin).__contains__)
        if not items:
            self._remove(origin, st, account, name)
        else:
            self._edit(origin, st, account, name, items)
        return None  # answered by _commit, before the pushes

    def _get(
        self, origin: C2SStream, st: Stanza, account: AccountLists, children: list[Any]
    ) -> bytes:
        stored = account.stored
        if all(child.tag in (f"{{{NS}}}active", f"{{{NS}}}default") for child in children):
            # §2.3: the names, with the session's active list and the account's default (also
            # the answer to a get of <active/> or <default/>, which some clients send).
            parts = []
            active = _active(origin)
            if active is not None:
                parts.append(f"<active name={quoteattr(active)}/>")
            if stored.default is not None:
                parts.append(f"<default name={quoteattr(stored.default)}/>")
            parts += [f"<list name={quoteattr(name)}/>" for name in stored.lists]
            return iq_result(origin, st, f"<query xmlns='{NS}'>{''.join(parts)}</query>")
        # §2.3: one list at a time.
        if len(children) != 1 or children[0].tag != f"{{{NS}}}list":
            raise StanzaError("bad-request", "retrieve one <list/> at a time")
        name = list_name(children[0])
        compiled = account.compiled.get(name)
        if compiled is None:
            raise StanzaError("item-not-found", f"no privacy list {name!r}")
        items = "".join(item.xml() for item in compiled.items)
        return iq_result(
            origin, st, f"<query xmlns='{NS}'><list name={quoteattr(name)}>{items}</list></query>"
        )

    def _set_active(
        self, origin: C2SStream, st: Stanza, account: AccountLists, name: str | None
    ) -> bytes:
        """§2.4: for this session only; applied before the result goes out."""
        if name is None:
            PRIVACY.of(origin).active = None
            origin.stanza_filter = account.default_list
            return iq_result(origin, st)
        compiled = account.compiled.get(name)
        if compiled is None:
            raise StanzaError("item-not-found", f"no privacy list {name!r}")
        PRIVACY.of(origin).active = name
        origin.stanza_filter = compiled
        return iq_result(origin, st)

    def _set_default(
        self, origin: C2SStream, st: Stanza, account: AccountLists, name: str | None
    ) -> bytes | None:
        """§2.5: for the account; a conflict while the current default applies to another
        connected resource (one without an active list)."""
        stored = account.stored
        if name is not None and name not in stored.lists:
            raise StanzaError("item-not-found", f"no privacy list {name!r}")
        if name == stored.default:
            return iq_result(origin, st)
        if stored.default is not None and any(
            _active(s) is None for s in self._other_sessions(origin)
        ):
            raise StanzaError("conflict", "the default list is in use by another resource")
        new = stored.copy()
        new.default = name
        self._commit(origin, st, account, new, ())
        return None

    def _remove(self, origin: C2SStream, st: Stanza, account: AccountLists, name: str) -> None:
        """§2.8: item-not-found for an unknown list; conflict while it applies to another
        connected resource (active there, or default there)."""
        stored = account.stored
        if name not in stored.lists:
            raise StanzaError("item-not-found", f"no privacy list {name!r}")
        for session in self._other_sessions(origin):
            active = _active(session)
            if active == name or (active is None and stored.default == name):
                raise StanzaError("conflict", "the list applies to another resource")
        new = stored.copy()
        del new.lists[name]
        if new.default == name:
            new.default = None
        self._commit(origin, st, account, new, (name,))

    def _edit(
        self,
        origin: C2SStream,
        st: Stanza,
        account: AccountLists,
        name: str,
        items: tuple[Item, ...],
    ) -> None:
        """§2.6, §2.7: the whole list, replacing one of the same name; the sessions it applies
        to use the new definition at once (§2.2 rule 8)."""
        stored = account.stored
        self._check_limits(stored, name, len(items))
        new = stored.copy()
        new.lists[name] = tuple(item.record() for item in items)
        self._commit(origin, st, account, new, (name,))

    def _check_limits(self, stored: StoredLists, name: str, item_count: int) -> None:
        if item_count > self.settings.max_items:
            raise StanzaError(
                "policy-violation", f"a privacy list holds at most {self.settings.max_items} items"
            )
        if name not in stored.lists and len(stored.lists) >= self.settings.max_lists:
            raise StanzaError(
                "policy-violation", f"an account keeps at most {self.settings.max_lists} lists"
            )

    def _roster_groups(self, origin: C2SStream) -> set[str]:
        """§2.1: the groups of the user's roster (a group item must name one of them)."""
        if self.roster is None:
            return set()
        return {g for item in self.roster.items(origin.domain, origin.local) for g in item.groups}

    # --- urn:xmpp:blocking ---------------------------------------------------------------

    def answer_blocking(
        self, origin: C2SStream, st: Stanza, target: tuple[str, ...] | None
    ) -> bytes | None:
        if target is not None and target[3] != origin.bare:
            raise StanzaError("forbidden", "a blocklist belongs to its account only")
        payload = next(child for child in st.element() if isinstance(child.tag, str))
        account = self._account(origin)
        if st.attrs.get("type") == "get":
            if payload.tag != f"{{{NS_BLOCKING}}}blocklist":
                raise StanzaError("bad-request", "expected <blocklist/>")
            PRIVACY.of(origin).blocklist_requested = True  # §3.3: pushes go to these resources
            items = "".join(f"<item jid={quoteattr(jid)}/>" for jid in account.blocked())
            return iq_result(origin, st, f"<blocklist xmlns='{NS_BLOCKING}'>{items}</blocklist>")
        if payload.tag == f"{{{NS_BLOCKING}}}block":
            if len(payload) > self.settings.max_items:  # refused before any JID is prepared
                self._check_limits(account.stored, BLOCKLIST_NAME, len(payload))
            jids = self._item_jids(payload)
            if not jids:
                raise StanzaError("bad-request", "a block names at least one <item/>")  # §3.3
            return self._block(origin, st, account, jids)
        if payload.tag == f"{{{NS_BLOCKING}}}unblock":
            # §3.5: an empty <unblock/> unblocks every JID.
            return self._unblock(origin, st, account, self._item_jids(payload) or None)
        raise StanzaError("bad-request", "expected <block/> or <unblock/>")

    @staticmethod
    def _item_jids(payload: Any) -> list[str]:
        jids: dict[str, None] = {}
        for child in payload:
            if not isinstance(child.tag, str):
                continue
            if child.tag != f"{{{NS_BLOCKING}}}item":
                raise StanzaError("bad-request", "expected <item jid='...'/>")
            jids[normalized_jid(child.get("jid"))] = None
        return list(jids)

    def _block(
        self, origin: C2SStream, st: Stanza, account: AccountLists, jids: list[str]
    ) -> bytes | None:
        """XEP-0191 §6: blocklist items go first in the default list (renumbered 1..n)."""
        stored = account.stored
        name = stored.default or BLOCKLIST_NAME
        items = [Item.from_record(record) for record in stored.lists.get(name, ())]
        already = {item.value for item in items if item.blocks_jid}
        new_jids = [jid for jid in jids if jid not in already]
        if not new_jids:
            return iq_result(origin, st)
        self._check_limits(stored, name, len(items) + len(new_jids))
        merged = [Item(0, "jid", jid, False, EVERY_KIND) for jid in new_jids] + items
        new = stored.copy()
        new.lists[name] = tuple(
            Item(order, i.type, i.value, i.allow, i.kinds).record()
            for order, i in enumerate(merged, start=1)
        )
        new.default = name
        self._commit(origin, st, account, new, (name,))
        return None

    def _unblock(
        self, origin: C2SStream, st: Stanza, account: AccountLists, jids: list[str] | None
    ) -> bytes | None:
        stored = account.stored
        name = stored.default
        if name is None:
            return iq_result(origin, st)
        items = [Item.from_record(record) for record in stored.lists.get(name, ())]
        kept = tuple(i for i in items if not (i.blocks_jid and (jids is None or i.value in jids)))
        if len(kept) == len(items):
            return iq_result(origin, st)
        new = stored.copy()
        if kept:
            new.lists[name] = tuple(item.record() for item in kept)
        else:
            # Nothing left: no list filters exactly like an empty one.
            del new.lists[name]
            new.default = None
        self._commit(origin, st, account, new, (name,), unblock_all=jids is None)
        return None

    # --- changes: storage, sessions, pushes, presence --------------------------------------

    def _commit(
        self,
        origin: C2SStream,
        st: Stanza,
        account: AccountLists,
        new: StoredLists,
        changed: Iterable[str],
        unblock_all: bool = False,
    ) -> None:
        """Store `new`, apply it to the account's sessions, answer `st`, then push: the
        lists named in `changed` (XEP-0016 §2.2 rule 10) and blocklist changes (XEP-0191
        §3.3, §3.4), and move presence for JIDs that entered or left the blocklist."""
        assert self.store is not None
        before = account.blocked()
        try:
            self.store.save(account.domain, account.local, new)
        except StorageFull:
            log.error("storage full: privacy lists of %s unchanged", origin.bare)
            raise StanzaError("resource-constraint", "the server's storage is full") from None
        account.replace(new)
        sessions = list(self.router.resources(origin.bare).values())
        for session in sessions:
            active = _active(session)
            if active is not None and active not in account.compiled:
                PRIVACY.of(session).active = active = None  # its list was removed
            session.stanza_filter = (
                account.default_list if active is None else account.compiled[active]
            )
        origin.send(iq_result(origin, st))
        for name in changed:
            push = f"<query xmlns='{NS}'><list name={quoteattr(name)}/></query>"
            for session in sessions:
                _push(session, push)
        after = account.blocked()
        before_set, after_set = set(before), set(after)
        blocked = [jid for jid in after if jid not in before_set]
        unblocked = [jid for jid in before if jid not in after_set]
        interested = [s for s in sessions if _blocklist_requested(s)]
        if unblock_all and not after:
            for session in interested:
                _push(session, f"<unblock xmlns='{NS_BLOCKING}'/>")
        else:
            for verb, jids in (("block", blocked), ("unblock", unblocked)):
                if not jids:
                    continue
                items = "".join(f"<item jid={quoteattr(jid)}/>" for jid in jids)
                for session in interested:
                    _push(session, f"<{verb} xmlns='{NS_BLOCKING}'>{items}</{verb}>")
        if blocked:
            self._presence_blocked(account, sessions, blocked)
        if unblocked:
            self._presence_unblocked(account, sessions, unblocked)

    def _contacts(self, account: AccountLists) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(subscribers, sources) of the account (RFC 6121 §4.2.2)."""
        if self.roster is None:
            return (), ()
        return (
            self.roster.presence_subscribers(account.domain, account.local),
            self.roster.presence_sources(account.domain, account.local),
        )

    def _presence_blocked(
        self, account: AccountLists, own: list[C2SStream], jids: list[str]
    ) -> None:
        """XEP-0191 §3.3: unavailable presence to the newly blocked JIDs that could see the
        user, and from them to the user, so each appears offline to the other."""
        rules = [jid_parts(jid) for jid in jids]
        subscribers, sources = self._contacts(account)
        for session in own:
            if self._last_presence(session) is None:
                continue
            gone = f"<presence type='unavailable' from={quoteattr(session.full)}/>".encode()
            directed = self._directed_presence(session)
            seen = set(subscribers) | {recipient.partition("/")[0] for recipient in directed}
            for contact in _matching_sessions(self.router, seen, rules):
                if contact.available:
                    contact.send(addressed(gone, contact.bare))
            for jid in self._matching_remote([*subscribers, *directed], rules):
                self._deliver_remote(gone, jid)
        for contact in _matching_sessions(self.router, sources, rules):
            if self._last_presence(contact) is None:
                continue
            gone = f"<presence type='unavailable' from={quoteattr(contact.full)}/>".encode()
            for session in own:
                if session.available:
                    session.send(addressed(gone, session.bare))
        for jid in self._matching_remote(sources, rules):
            # A remote contact's resources are not known here: its bare JID stands for all.
            gone = f"<presence type='unavailable' from={quoteattr(jid)}/>".encode()
            for session in own:
                if session.available:
                    session.send(addressed(gone, session.bare))

    def _deliver_remote(self, data: bytes, jid: str) -> None:
        if self.server.s2s is not None:
            self.server.s2s.deliver(data, jid)

    def _matching_remote(self, jids: Iterable[str], rules: list[Any]) -> list[str]:
        """The JIDs at other servers (when federation is on) one of the jid `rules`
        matches."""
        if self.server.s2s is None:
            return []
        found = []
        for jid in jids:
            local, domain, resource = jid_parts(jid)
            if self.router.is_local(domain) or self.router.is_service(domain):
                continue
            if any(jid_matches(rule, local, domain, resource) for rule in rules):
                found.append(jid)
        return found

    def _presence_unblocked(
        self, account: AccountLists, own: list[C2SStream], jids: list[str]
    ) -> None:
        """XEP-0191 §3.4: the user's current presence to the unblocked JIDs that may see it,
        and theirs to the user, as far as the lists now in force allow."""
        rules = [jid_parts(jid) for jid in jids]
        subscribers, sources = self._contacts(account)
        for contact in _matching_sessions(self.router, subscribers, rules):
            if not contact.available:
                continue
            for session in own:
                last = self._last_presence(session)
                if last is not None and self.presence_allowed(session, contact):
                    contact.send(addressed(last, contact.bare))
        for jid in self._matching_remote(subscribers, rules):
            for session in own:
                last = self._last_presence(session)
                rules_out = session.stanza_filter
                if last is not None and (rules_out is None or rules_out.allows(PRESENCE_OUT, jid)):
                    self._deliver_remote(last, jid)
        for contact in _matching_sessions(self.router, sources, rules):
            last = self._last_presence(contact)
            if last is None:
                continue
            for session in own:
                if session.available and self.presence_allowed(contact, session):
                    session.send(addressed(last, session.bare))

    # --- helpers --------------------------------------------------------------------------

    def _last_presence(self, session: C2SStream) -> bytes | None:
        return None if self.presence is None else self.presence.last_presence(session)

    def _directed_presence(self, session: C2SStream) -> Collection[str]:
        return () if self.presence is None else self.presence.directed_presence(session)

    def _load(self, domain: str, local: str) -> AccountLists:
        assert self.store is not None
        return AccountLists(self, domain, local, self.store.load(domain, local))

    def _account(self, origin: C2SStream) -> AccountLists:
        account = self._online.get(origin.bare)
        if account is None:  # bound before this module saw it (never in practice)
            account = self._online[origin.bare] = self._load(origin.domain, origin.local)
        return account

    def _other_sessions(self, origin: C2SStream) -> list[C2SStream]:
        return [s for s in self.router.resources(origin.bare).values() if s is not origin]


def _push(session: C2SStream, payload: str) -> None:
    """A push: an iq set from the account itself (no 'from'), answers ignored."""
    push_id = "push-" + secrets.token_hex(6)
    session.send(
        f"<iq type='set' id='{push_id}' to={quoteattr(session.full)}>{payload}</iq>".encode()
    )


def _matching_sessions(router: Any, bares: Iterable[str], rules: list[Any]) -> list[C2SStream]:
    """Sessions of the accounts `bares` whose full JID one of the jid `rules` matches."""
    found = []
    for bare in bares:
        for session in router.resources(bare).values():
            local, domain, resource = jid_parts(session.full)
            if any(jid_matches(rule, local, domain, resource) for rule in rules):
                found.append(session)
    return found


MODULE = PrivacyModule
