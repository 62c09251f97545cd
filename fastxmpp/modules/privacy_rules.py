"""XEP-0016 privacy list items and the compiled list the router consults.

Kinds of stanza are bits (their values live in fastxmpp._router, which tests them): an item
with no child element covers every kind (§2.1 "Blocking All Communication"), an item with
children only the kinds they name. Inbound messages, inbound iqs, inbound presence
notifications (no type or "unavailable", §2) and outbound presence notifications each have
their child element; everything else (outbound messages and iqs, subscription stanzas and
probes either way) is `OTHER`, which only an item without children covers.

A `PrivacyList` is what a session's `stanza_filter` attribute holds (the active list, else the
default list, §2.2 rules 1-2): the router calls `allows_in` for a stanza about to be
delivered to the session and `refuse_out` for one the session sends. The roster is read at
each decision that reaches a group or subscription item, so roster changes apply at once
(§2.2 rule 9).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

from .._router import KIND_IQ, KIND_MESSAGE, KIND_OTHER, KIND_PRESENCE_IN, KIND_PRESENCE_OUT
from ..errors import StanzaError
from ..jid import JIDError, parse_jid
from ..storage.privacy import ItemRecord

if TYPE_CHECKING:
    from .._parser import Stanza
    from ..storage.roster import RosterItem
    from ..stream.c2s import C2SStream

NS = "jabber:iq:privacy"
NS_BLOCKING_ERRORS = "urn:xmpp:blocking:errors"

# XEP-0016 §2.1: the kinds of stanza an item covers, as the bits the router's
# `Session.stanza_filter` calls are made with.
MESSAGE = PRIVACY_MESSAGE = KIND_MESSAGE
IQ = PRIVACY_IQ = KIND_IQ
PRESENCE_IN = PRIVACY_PRESENCE_IN = KIND_PRESENCE_IN
PRESENCE_OUT = PRIVACY_PRESENCE_OUT = KIND_PRESENCE_OUT
OTHER = PRIVACY_OTHER = KIND_OTHER
EVERY_KIND = MESSAGE | IQ | PRESENCE_IN | PRESENCE_OUT | OTHER
CHILD_KINDS = {
    "message": MESSAGE,
    "iq": IQ,
    "presence-in": PRESENCE_IN,
    "presence-out": PRESENCE_OUT,
}
ITEM_TYPES = ("jid", "group", "subscription")
SUBSCRIPTIONS = ("both", "to", "from", "none")  # §2.1, RFC 6121 §2.1.2.5
MAX_ORDER = 2**32 - 1  # xs:unsignedInt (§8 schema)
ORDER = re.compile(r"[0-9]{1,10}")
# Bytes of a list name or group value (a roster group is limited alike, roster.MAX_TEXT_BYTES).
MAX_TEXT_BYTES = 1023

JidParts = tuple[str, str, str]  # (local, domain, resource), "" when absent


@dataclass(frozen=True, slots=True)
class Item:
    order: int
    type: str | None  # "jid", "group", "subscription", None: the fall-through item
    value: str | None
    allow: bool
    kinds: int

    def record(self) -> ItemRecord:
        return (self.order, self.type, self.value, self.allow, self.kinds)

    @classmethod
    def from_record(cls, record: ItemRecord) -> Item:
        return cls(*record)

    @property
    def blocks_jid(self) -> bool:
        """The shape of a blocklist entry (XEP-0191 §6): type jid, deny, every kind."""
        return self.type == "jid" and not self.allow and self.kinds == EVERY_KIND

    def xml(self) -> str:
        attrs = ""
        if self.type is not None:
            attrs = f"type='{self.type}' value={quoteattr(self.value or '')} "
        attrs += f"action='{'allow' if self.allow else 'deny'}' order='{self.order}'"
        if self.kinds == EVERY_KIND:
            return f"<item {attrs}/>"
        children = "".join(f"<{name}/>" for name, bit in CHILD_KINDS.items() if self.kinds & bit)
        return f"<item {attrs}>{children}</item>"


def jid_parts(text: str) -> JidParts:
    """Split a JID this server already prepared (a session's, a stored item's)."""
    bare, _, resource = text.partition("/")
    local, at, domain = bare.partition("@")
    if not at:
        return "", bare, resource
    return local, domain, resource


def jid_matches(rule: JidParts, local: str, domain: str, resource: str) -> bool:
    """XEP-0016 §2.1 (XEP-0191 §7): user@domain/resource matches only itself, user@domain any
    of its resources, domain/resource only that resource of the domain, domain everything
    at the domain and the domain itself."""
    rule_local, rule_domain, rule_resource = rule
    if rule_domain != domain:
        return False
    if rule_local and rule_local != local:
        return False
    return not rule_resource or rule_resource == resource


def normalized_jid(text: str | None) -> str:
    if not text:
        raise StanzaError("bad-request", "a JID is expected")
    try:
        return parse_jid(text).full
    except JIDError as exc:
        raise StanzaError("jid-malformed", str(exc)) from None


def list_name(element: Any) -> str:
    name = element.get("name")
    if not name:
        raise StanzaError("bad-request", "a list needs a 'name'")
    if len(name.encode()) > MAX_TEXT_BYTES:
        raise StanzaError("not-acceptable", f"list names are at most {MAX_TEXT_BYTES} bytes")
    return str(name)


def parse_item(element: Any, group_exists: Callable[[str], bool]) -> Item:
    """One <item/> of a list a client sets (§2.1), or StanzaError for a malformed one."""
    action = element.get("action")
    if action not in ("allow", "deny"):
        raise StanzaError("bad-request", "an item's action is 'allow' or 'deny'")
    order_text = element.get("order")
    if order_text is None or not ORDER.fullmatch(order_text) or int(order_text) > MAX_ORDER:
        raise StanzaError("bad-request", "an item's order is an unsignedInt")
    item_type = element.get("type")
    value = element.get("value")
    if item_type is None:
        value = None  # the fall-through item (§2.1) has no value to speak of
    elif item_type not in ITEM_TYPES:
        raise StanzaError("bad-request", "an item's type is jid, group or subscription")
    elif value is None:
        raise StanzaError("bad-request", f"a {item_type} item needs a 'value'")
    elif item_type == "jid":
        value = normalized_jid(value)
    elif item_type == "subscription":
        if value not in SUBSCRIPTIONS:
            raise StanzaError("bad-request", "a subscription is both, to, from or none")
    elif len(value.encode()) > MAX_TEXT_BYTES or not group_exists(value):
        # §2.1: a group not in the user's roster: item-not-found.
        raise StanzaError("item-not-found", f"no roster group {value!r}")
    kinds = 0
    for child in element:
        if not isinstance(child.tag, str):
            continue
        bit = CHILD_KINDS.get(child.tag.removeprefix(f"{{{NS}}}"))
        if bit is None or not child.tag.startswith(f"{{{NS}}}"):
            raise StanzaError("bad-request", f"unknown item child {child.tag}")
        kinds |= bit
    return Item(int(order_text), item_type, value, action == "allow", kinds or EVERY_KIND)


def parse_items(list_element: Any, group_exists: Callable[[str], bool]) -> tuple[Item, ...]:
    """The items of a <list/>, in processing order (§2.2 rule 5); bad-request for anything
    but items and for orders that are not unique (§2.1)."""
    items: list[Item] = []
    for child in list_element:
        if not isinstance(child.tag, str):
            continue
        if child.tag != f"{{{NS}}}item":
            raise StanzaError("bad-request", "a list holds <item/> elements only")
        items.append(parse_item(child, group_exists))
    if len({item.order for item in items}) != len(items):
        raise StanzaError("bad-request", "the order of each item must be unique")
    return tuple(sorted(items, key=lambda item: item.order))


# A run of consecutive jid items, indexed by the (local, domain, resource) each names:
# [(position in the list, kinds, item)] in list order. Blocklists of hundreds of JIDs then cost
# four dictionary lookups per stanza, not a scan.
JID_RUN = "jid-run"
JidIndex = dict[JidParts, list[tuple[int, int, Item]]]
Rule = tuple[str | None, Any]


def _compile(items: tuple[Item, ...]) -> tuple[Rule, ...]:
    rules: list[Rule] = []
    run: JidIndex | None = None
    for position, item in enumerate(items):
        if item.type == "jid":
            if run is None:
                run = {}
                rules.append((JID_RUN, run))
            run.setdefault(jid_parts(item.value or ""), []).append((position, item.kinds, item))
        else:
            run = None
            rules.append((item.type, (item.kinds, item.value, item)))
    return tuple(rules)


class PrivacyList:
    """A list compiled for one account: what the router and the modules ask."""

    __slots__ = ("_roster_item", "_rules", "bare", "domain", "items", "name")

    def __init__(
        self,
        name: str,
        items: tuple[Item, ...],
        domain: str,
        local: str,
        roster_item: Callable[[str], RosterItem | None],
    ) -> None:
        self.name = name
        self.items = items
        self.domain = domain
        self.bare = f"{local}@{domain}"
        self._rules = _compile(items)
        self._roster_item = roster_item

    def decide(self, kind: int, local: str, domain: str, resource: str) -> Item | None:
        """The first item that matches a stanza of `kind` exchanged with local@domain/resource
        (§2.2 rules 5-6); None when none does (rule 7: allowed). Never an item for the
        account's own resources (§2.1 note) or its own server."""
        if domain == self.domain and (not local or f"{local}@{domain}" == self.bare):
            return None
        roster_looked_up = False
        contact: RosterItem | None = None
        for rule_type, rule in self._rules:
            if rule_type is JID_RUN:
                # The four forms a JID can match (§2.1), looked up instead of scanned.
                found: tuple[int, Item] | None = None
                for key in (
                    (local, domain, resource),
                    (local, domain, ""),
                    ("", domain, resource),
                    ("", domain, ""),
                ):
                    for position, kinds, item in rule.get(key, ()):
                        if kinds & kind:
                            if found is None or position < found[0]:
                                found = (position, item)
                            break
                if found is not None:
                    return found[1]
                continue
            kinds, value, item = rule
            if not kinds & kind:
                continue
            if rule_type is None:
                return item
            if not roster_looked_up:
                roster_looked_up = True
                contact = self._roster_item(f"{local}@{domain}" if local else domain)
            if rule_type == "subscription":
                if (contact.subscription if contact is not None else "none") == value:
                    return item
            elif contact is not None and value in contact.groups:
                return item
        return None

    def allows(self, kind: int, jid: str) -> bool:
        """Whether a stanza of `kind` may pass between the account and `jid` (prepared)."""
        item = self.decide(kind, *jid_parts(jid))
        return item is None or item.allow

    def allows_in(self, kind: int, sender: str) -> bool:
        """The router, before delivering a stanza of `kind` from `sender` (a full JID)."""
        return self.allows(kind, sender)

    def refuse_out(self, origin: C2SStream, st: Stanza, target: tuple[str, ...]) -> bool:
        """The router, before routing a stanza the session sends to `target` (local, domain,
        resource, bare): False when the list lets it pass. A blocked stanza raises
        StanzaError not-acceptable (XEP-0016 §2.13, with XEP-0191 §3.3's <blocked/> when the
        item is a blocklist entry), which the stream sends back; a blocked error or iq result
        is only dropped (True): no error answers those (RFC 6120 §8.3.1)."""
        stype = st.attrs.get("type")
        name = st.name
        kind = OTHER
        if name == "presence" and (stype is None or stype == "unavailable"):
            kind = PRESENCE_OUT
        item = self.decide(kind, target[0], target[1], target[2])
        if item is None or item.allow:
            return False
        if stype != "error" and not (name == "iq" and stype == "result"):
            # Type cancel, as in the examples of XEP-0016 §2.13 and XEP-0191 §3.3; the stream
            # turns it into the error reply.
            raise StanzaError(
                "not-acceptable",
                "blocked by your privacy list",
                "cancel",
                f"<blocked xmlns='{NS_BLOCKING_ERRORS}'/>" if item.blocks_jid else "",
            )
        return True
