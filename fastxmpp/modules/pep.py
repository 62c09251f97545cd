"""XEP-0163 Personal Eventing Protocol: every account is a virtual pubsub service at its bare
JID (the XEP-0060 subset PEP needs), with notifications filtered by XEP-0115 caps.

Requests (iq to the account's bare JID, or with no 'to' for one's own):
- publish (XEP-0060 §7.1), auto-creating the node (§7.1.4) and checking publish-options
  preconditions (§7.1.5: conflict + precondition-not-met; unknown fields too); an item
  without an id gets one. Retract (§7.2, notify attribute or pubsub#notify_retract), items
  (§6.5: all, by id, max_items: the most recent, in publication order; ids that do not
  exist are left out, none an empty result, §6.5.9.11), create (§8.1, with
  <configure/>: §8.1.3), configure get/submit (§8.2), default (§8.3), delete (§8.4), purge
  (§8.5), affiliations (§5.7: owner of each node, to the owner only). Disco (XEP-0030 on
  the account): identity pubsub/pep and the features, nodes as items (§5.2), a node's
  info and meta-data (§5.3, §5.4), its items (§5.5), each only to whoever may retrieve
  its items.
- Only the account itself publishes, creates, configures, deletes and purges: forbidden for
  anyone else (§7.1.3.1, §8.x "Insufficient Privileges").
- Access models (§4.5): presence (the default, XEP-0163 §6), open, roster (pubsub#
  roster_groups_allowed against the owner's roster groups), whitelist (the owner alone:
  XEP-0223 private storage). Retrieval refused with the §6.5.9 errors: not-authorized +
  presence-subscription-required / not-in-roster-group, not-allowed + closed-node.
- Explicit subscriptions (XEP-0163 §6: for entities that are not PEP-aware): subscribe
  (§6.1), unsubscribe (§6.2), one's subscriptions at this account (§5.6), and the owner's
  subscriptions management (§8.8: list; set 'subscribed' or 'none'). One subscription per
  JID and node, state 'subscribed', no subid (§6.1.6: subscribing again returns it). The
  access model decides who may subscribe, as for retrieval; the JID must be the requester's
  own bare or full JID (§6.1.3.1 invalid-jid; a remote entity asks over s2s).
  At most [pep] max_subscriptions_per_node per node (§6.1.3.9 too-many-subscriptions).
  A subscription that no longer qualifies goes: when the subscriber stops seeing the
  owner's presence, when the access model or groups change (at configure, or when found at
  a notification or a listing), with the node; and with the subscriber's account (the
  store's purge). Subscription options (§6.3), the default options (§6.4) and affiliations
  management (§8.9) are not offered: feature-not-implemented + <unsupported/> naming the
  feature. PEP subscriptions are otherwise implicit (XEP-0163 §4): a contact with a
  presence subscription whose resources ask for `<node>+notify`.

Notifications (XEP-0163 §4.3): a headline message from the owner's bare JID to the full JID
of each available resource that wants the node (its caps list `<node>+notify`): the owner's
own resources, and those of contacts with subscription from/both the access model lets in,
here or on other servers. Contacts also get an XEP-0033 replyto address naming the
publishing resource (§4.3.1.3). Explicit subscribers (XEP-0060 §7.1.2) get it at the JID
subscribed: a local full JID that one resource when available, a local bare JID every
available resource; a JID on another server gets one notification addressed to it, unless
it is the bare JID of resources notified already (§4.3.2); a resource gets each event once
however many ways it qualifies. The last published item goes to the subscribed JID
after a subscribe (§6.1.7) when send_last_published_item is on_sub or on_sub_and_presence,
and, for on_sub_and_presence, to a resource's initial presence when it subscribed to a node
of its own account or of a contact whose presence it sees (once, with the +notify ones).
The last published item (with an XEP-0203 delay) goes to a resource when it becomes
available with interest in a node, or when its caps start to show interest in one
(§4.3.4), and to a user's resources interested in a contact's nodes when the user starts
being allowed to see the contact's presence (RFC 6121 §3.1.5: best effort, at that
moment). A contact that loses its subscription gets nothing more: the roster is asked at
each notification. Nothing goes to a contact the owner blocks (its default privacy list,
XEP-0191 blocking included) or whose own list refuses messages from the owner (§4.3.3).

Contacts on other servers (federation): the server learns of their resources from the
presence they send an account here (their broadcast to its bare JID, at the "presence/
directed" stage), from the account's roster contacts only: a resource is available toward
each account it sent available presence to, until it sends that account unavailable
presence, the account stops receiving its presence, or the bounded table
(modules/pep_remote.py, [pep] remote_resources, a few resources per contact) pushes it out.
It is treated as a session: its caps are resolved the same way (the disco#info query goes
over s2s, from the account it sent presence to), it gets the last items of an account when
it becomes available toward it, or when that account starts letting it see its presence
(the account's roster change), and notifications when it may get them, each over s2s.

Caps (XEP-0115): each available presence's <c/> is looked up by (hash, ver) in a bounded
cache shared by all accounts; when missing, the server asks the client (disco#info to its
full JID, node#ver) with a timeout, and caches the answer only when its hash verifies
(§5.4). An answer that does not verify, or uses a hash the server does not know, counts
for that session only (§5.4.2-3). Identical queries in flight are made once. An available
presence without <c/> from a session whose caps are known changes nothing (§8.4: presence
need not carry the annotation every time); the first one without <c/> means no interest.

Errors carry the XEP-0060 pubsub#errors child, so this module makes its own error replies
(RFC 6120 §8.3.2: defined condition, text, application condition).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape, quoteattr

from ..delay import delay_xml
from ..errors import StanzaError, error_element_xml
from ..jid import JID, JIDError, parse_jid
from ..records import RecordSlot
from ..storage.lmdb_store import StorageFull
from ..storage.pep import Item, Limits, Node, NodeExists, PepLimit, PepStore
from .base import Module, answer_once_stored, iq_result
from .pep_caps import HASHES, NS_CAPS, NS_INFO, CapsCache, caps_hash, notify_nodes
from .pep_remote import RemoteResource, RemoteResources
from .privacy_rules import MESSAGE as PRIVACY_MESSAGE
from .privacy_rules import OTHER as PRIVACY_OTHER
from .private import fragment_xml

if TYPE_CHECKING:
    from .._parser import Stanza
    from ..stream.c2s import C2SStream
    from .privacy import PrivacyModule
    from .roster import RosterModule

    # Whom notifications go to: a local session, or a contact's resource elsewhere.
    Recipient = C2SStream | RemoteResource

log = logging.getLogger("fastxmpp.pep")


@dataclass(slots=True)
class PepRecord:
    """What PEP keeps for an available session (made at its available presence, dropped
    when it goes unavailable or ends)."""

    # (hash or "", node, ver) of the last XEP-0115 <c/> seen in its presence.
    caps: tuple[str, str, str] | None = None
    # The nodes it wants notifications of (+notify, XEP-0163 §4.3.3); None until known.
    notify: frozenset[str] | None = None
    # Asking the client what its caps stand for (XEP-0115 §6.2), while under way.
    task: asyncio.Task[None] | None = None


PEP = RecordSlot(PepRecord)
# (domain, local, node name, the item it published)
PublishListener = Callable[[str, str, str, Item], None]
# (domain, local, node name): items went (a retract, a purge or the node's deletion)
RemoveListener = Callable[[str, str, str], None]

NS = "http://jabber.org/protocol/pubsub"
NS_OWNER = NS + "#owner"
NS_EVENT = NS + "#event"
NS_ERRORS = NS + "#errors"
NS_DATA = "jabber:x:data"
NS_ADDRESS = "http://jabber.org/protocol/address"
NODE_CONFIG = NS + "#node_config"
PUBLISH_OPTIONS = NS + "#publish-options"
# XEP-0060 §10 feature names this service implements.
FEATURES = (
    "access-open",
    "access-presence",
    "access-roster",
    "access-whitelist",
    "auto-create",
    "auto-subscribe",
    "config-node",
    "config-node-max",
    "create-and-configure",
    "create-nodes",
    "delete-items",
    "delete-nodes",
    "filtered-notifications",
    "item-ids",
    "last-published",
    "manage-subscriptions",
    "meta-data",
    "persistent-items",
    "presence-notifications",
    "publish",
    "publish-options",
    "purge-nodes",
    "retract-items",
    "retrieve-affiliations",
    "retrieve-default",
    "retrieve-items",
    "retrieve-subscriptions",
    "subscribe",
)
# Node names and item ids are keys in storage: bounded (LMDB keys are at most 511 bytes).
MAX_NAME_BYTES = 256
MAX_TEXT = 1024  # characters of a text-single configuration value

# pubsub#<name> -> (XEP-0004 field type, label, options). XEP-0060 §16.4.3.
FIELDS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "access_model": (
        "list-single",
        "Who may retrieve items and get notifications",
        ("open", "presence", "roster", "whitelist"),
    ),
    "roster_groups_allowed": ("list-multi", "Roster groups allowed (access model roster)", ()),
    "persist_items": ("boolean", "Persist items to storage", ()),
    "max_items": ("text-single", "Max number of items to persist ('max': the server's limit)", ()),
    "send_last_published_item": (
        "list-single",
        "When to send the last published item",
        ("never", "on_sub", "on_sub_and_presence"),
    ),
    "deliver_notifications": ("boolean", "Deliver event notifications", ()),
    "deliver_payloads": ("boolean", "Deliver payloads with event notifications", ()),
    "notify_retract": ("boolean", "Notify when items are removed from the node", ()),
    "notify_delete": ("boolean", "Notify when the node is deleted", ()),
    "notification_type": ("list-single", "Message type of notifications", ("headline", "normal")),
    "publish_model": ("list-single", "Who may publish items", ("publishers",)),
    "title": ("text-single", "A friendly name for the node", ()),
    "type": ("text-single", "The type of node data, usually the payload namespace", ()),
}
# XEP-0163 §6: access model presence, send_last_published_item on_sub_and_presence,
# deliver_notifications true; max_items 1 (a PEP node usually holds the current state).
DEFAULT_CONFIG: dict[str, Any] = {
    "access_model": "presence",
    "roster_groups_allowed": [],
    "persist_items": True,
    "max_items": 1,
    "send_last_published_item": "on_sub_and_presence",
    "deliver_notifications": True,
    "deliver_payloads": True,
    "notify_retract": True,
    "notify_delete": True,
    "notification_type": "headline",
    "publish_model": "publishers",
    "title": "",
    "type": "",
}
PRESENCE_VISIBLE = ("from", "both")


class PubsubError(StanzaError):
    """A StanzaError with the XEP-0060 §5 pubsub-specific condition `app` (e.g.
    "precondition-not-met"), and for <unsupported/> the feature it names."""

    def __init__(
        self,
        condition: str,
        app: str | None = None,
        text: str | None = None,
        feature: str = "",
        error_type: str | None = None,
    ) -> None:
        app_xml = ""
        if app is not None:
            feature_attr = f" feature={quoteattr(feature)}" if feature else ""
            app_xml = f"<{app} xmlns='{NS_ERRORS}'{feature_attr}/>"
        super().__init__(condition, text, error_type, app_xml=app_xml)


def unsupported(feature: str) -> PubsubError:
    return PubsubError("feature-not-implemented", "unsupported", None, feature)


class FormError(Exception):
    """A configuration field that is unknown or has a value the service refuses."""


def _bool_text(value: bool) -> str:
    return "1" if value else "0"


def effective_max(config: dict[str, Any], cap: int) -> int:
    value = config.get("max_items", 1)
    return cap if value == "max" else min(int(value), cap)


def parse_field(name: str, values: list[str], cap: int) -> Any:
    """The stored value of field pubsub#`name` from its submitted values; FormError."""
    if name not in FIELDS:
        raise FormError(f"unknown field pubsub#{name}")
    kind, _label, options = FIELDS[name]
    if kind == "list-multi":
        return sorted(set(values))
    if len(values) > 1:
        raise FormError(f"pubsub#{name} takes one value")
    value = values[0] if values else ""
    if kind == "boolean":
        if value in ("1", "true"):
            return True
        if value in ("0", "false"):
            return False
        raise FormError(f"pubsub#{name} is a boolean")
    if options and value not in options:
        raise FormError(f"pubsub#{name} must be one of {', '.join(options)}")
    if name == "max_items":
        if value == "max":
            return "max"
        if not value.isdigit() or not 1 <= int(value) <= cap:
            raise FormError(f"pubsub#max_items must be 'max' or 1..{cap}")
        return int(value)
    if len(value) > MAX_TEXT:
        raise FormError(f"pubsub#{name} is longer than {MAX_TEXT} characters")
    return value


def parse_form(x: Any, form_type: str, cap: int) -> dict[str, Any]:
    """The pubsub# fields of a submitted data form (XEP-0004) whose FORM_TYPE, when given,
    is `form_type`; FormError for anything this service does not know or accept."""
    fields: dict[str, Any] = {}
    for field in x.iterfind(f"{{{NS_DATA}}}field"):
        var = field.get("var") or ""
        values = [v.text or "" for v in field.iterfind(f"{{{NS_DATA}}}value")]
        if var == "FORM_TYPE":
            if values != [form_type]:
                raise FormError(f"FORM_TYPE must be {form_type}")
            continue
        if not var.startswith("pubsub#"):
            raise FormError(f"unknown field {var}")
        fields[var[len("pubsub#") :]] = parse_field(var[len("pubsub#") :], values, cap)
    return fields


def same_value(name: str, wanted: Any, actual: Any, cap: int) -> bool:
    if name == "max_items":
        return effective_max({"max_items": wanted}, cap) == effective_max(
            {"max_items": actual}, cap
        )
    if FIELDS[name][0] == "list-multi":
        return set(wanted) == set(actual)
    return bool(wanted == actual)


def config_form(config: dict[str, Any], groups: list[str]) -> str:
    """The node configuration as a form to fill in (XEP-0060 §8.2.4)."""
    out = (
        f"<x xmlns='{NS_DATA}' type='form'><field var='FORM_TYPE' type='hidden'>"
        f"<value>{NODE_CONFIG}</value></field>"
    )
    for name, (kind, label, options) in FIELDS.items():
        value = config.get(name, DEFAULT_CONFIG[name])
        if name == "roster_groups_allowed":
            options = tuple(sorted(set(groups) | set(value)))
            values = list(value)
        elif kind == "boolean":
            values = [_bool_text(value)]
        else:
            values = [str(value)]
        out += f"<field var='pubsub#{name}' type='{kind}' label={quoteattr(label)}>"
        out += "".join(f"<option><value>{escape(o)}</value></option>" for o in options)
        out += "".join(f"<value>{escape(v)}</value>" for v in values)
        out += "</field>"
    return out + "</x>"


def item_xml(item: Item, payload: bool = True) -> str:
    body = item.payload.decode() if payload else ""
    return f"<item id={quoteattr(item.id)}>{body}</item>"


def _notify(session: Recipient) -> frozenset[str] | None:
    record = PEP.get(session)
    return None if record is None else record.notify


class PepModule(Module):
    name = "pep"
    account_features = (NS, *(f"{NS}#{feature}" for feature in FEATURES))
    account_identities = (("pubsub", "pep"),)
    # XEP-0163 §6.1 asks the account for these; the server's domain shows them as well, as
    # Prosody and ejabberd do: clients look there too (Smack's OMEMO support check). All but
    # #subscribe: the domain is no pubsub service one subscribes at (subscriptions are made at
    # an account), and #publish with #subscribe is what Smack's PubSubManager (and the XMPP
    # Interop Testing suite through it) takes for a generic service to create nodes on.
    features = tuple(f for f in account_features if f != f"{NS}#subscribe")
    identities = account_identities

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        self.settings = server.config.pep
        self.store: PepStore | None = None
        self.roster: RosterModule | None = None
        self.privacy: PrivacyModule | None = None
        self.caps = CapsCache(self.settings.caps_cache_size)
        self.limits = Limits(self.settings.max_nodes, self.settings.max_bytes_per_account)
        # (hash, ver) -> the shared outcome of a disco#info query in flight (None: failed).
        self._inflight: dict[tuple[str, str], asyncio.Future[frozenset[str] | None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._listeners: list[PublishListener] = []
        self._remove_listeners: list[RemoveListener] = []
        self._remote = RemoteResources(
            self.settings.remote_resources, self.hub.deliver_out, self._forget
        )

    def start(self) -> None:
        assert self.server.storage is not None
        self.store = PepStore(self.server.storage)
        self.roster = self.hub.get("roster")
        self.privacy = self.hub.get("privacy")
        self.router.set_iq_handler(NS, self.answer)
        self.router.set_iq_handler(NS_OWNER, self.answer)
        self.hub.hook(self, "presence/directed", self.contact_presence)

    def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    # --- sessions and caps (XEP-0115) ----------------------------------------------------

    def session_ended(self, session: C2SStream) -> None:
        self._forget(session)

    def presence_unavailable(self, session: C2SStream, data: bytes) -> None:
        # The next available presence is initial again (XEP-0163 §4.3.3 note).
        self._forget(session)

    def account_removed(self, domain: str, local: str) -> None:
        self._remote.forget(f"{local}@{domain}")

    def _forget(self, session: Recipient) -> None:
        record = PEP.drop(session)
        if record is not None and record.task is not None:
            record.task.cancel()

    def contact_presence(self, origin: Any, st: Stanza, target: tuple[str, ...]) -> None:
        """At "presence/directed": presence that a contact's resource on another server sent
        a local account (its broadcast, RFC 6121 §4.2.2). Its caps tell what it wants
        (XEP-0163 §4.3.1); available toward an account it was not available to, it gets that
        account's last items (§4.3.4); unavailable, nothing more from that account."""
        local, domain, _resource, owner = target
        if not origin.is_remote or not origin.resource or not local:
            return
        if st.attrs.get("type") == "unavailable":
            self._remote.unavailable(origin.full, owner)
            return
        if self.roster is None or self.roster.subscription(domain, local, origin.bare) == "none":
            return  # only the account's contacts: the table is no bigger than the rosters
        resource, initial = self._remote.available(origin.full, owner)
        known = _notify(resource)
        if initial and known is not None and self._lets_see(domain, local, resource.bare):
            self._initial(resource, [(domain, local)], known)
        self._caps_seen(resource, st)

    def presence_available(self, session: C2SStream, st: Stanza) -> None:
        self._caps_seen(session, st)

    def _caps_seen(self, session: Recipient, st: Stanza) -> None:
        """The XEP-0115 caps of available presence `st` from `session`: its interest now, or
        once the server has learned what the caps stand for."""
        caps = None
        if (NS_CAPS, "c") in st.children:
            c = st.element().find(f"{{{NS_CAPS}}}c")
            if c is not None and c.get("node") and c.get("ver"):
                caps = (c.get("hash") or "", c.get("node"), c.get("ver"))
        record = PEP.of(session)
        if caps is None and record.caps is not None:
            # XEP-0115 §8.4: presence may leave the annotation out ("MUST NOT expect an
            # annotation on every presence"): a status update without <c/> keeps the
            # interest the session's last caps declared.
            return
        pending = record.task is not None and not record.task.done()
        if caps == record.caps and (record.notify is not None or pending):
            # a presence update with the same caps: nothing new (§4.3.3 note); while they
            # are being discovered, the query asked already answers (XEP-0115 §8.2)
            return
        record.caps = caps
        if record.task is not None:
            record.task.cancel()
            record.task = None
        if caps is None:
            self._interest(session, frozenset())
            return
        algorithm, _node, ver = caps
        cached = self.caps.get((algorithm.lower(), ver)) if algorithm else None
        if cached is not None:
            self._interest(session, cached)
            return
        task = asyncio.get_running_loop().create_task(self._discover(session, caps))
        record.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _discover(self, session: Recipient, caps: tuple[str, str, str]) -> None:
        algorithm, node, ver = caps
        key = (algorithm.lower(), ver) if algorithm.lower() in HASHES else None
        nodes: frozenset[str] | None = None
        shared = None if key is None else self._inflight.get(key)
        if shared is not None:
            nodes = await asyncio.shield(shared)
        if nodes is None:
            mine: asyncio.Future[frozenset[str] | None] | None = None
            if key is not None and key not in self._inflight:
                mine = asyncio.get_running_loop().create_future()
                self._inflight[key] = mine
            verified = False
            try:
                nodes, verified = await self._query(session, node, ver, algorithm)
            finally:
                if mine is not None:
                    self._inflight.pop(key, None)  # type: ignore[arg-type]
                    mine.set_result(nodes if verified else None)
        record = PEP.get(session)
        if record is not None and record.caps == caps:
            record.task = None
            self._interest(session, nodes or frozenset())

    async def _query(
        self, session: Recipient, node: str, ver: str, algorithm: str
    ) -> tuple[frozenset[str] | None, bool]:
        """Ask the client what its caps stand for (XEP-0115 §6.2); (+notify nodes or None
        when it did not answer properly, whether the hash verified and was cached). A
        contact's resource elsewhere is asked by the account it sent presence to (a client
        may answer its contacts only), over server-to-server links."""
        asker = next(iter(session.seen_by), None) if isinstance(session, RemoteResource) else None
        future = self.hub.send_iq(
            session,
            "get",
            f"<query xmlns='{NS_INFO}' node={quoteattr(node + '#' + ver)}/>",
            frm=asker,
        )
        try:
            reply = await asyncio.wait_for(future, self.settings.caps_timeout)
        except TimeoutError:
            return None, False
        query = None
        if reply.attrs.get("type") == "result":
            query = reply.element().find(f"{{{NS_INFO}}}query")
        if query is None:
            return None, False
        nodes = notify_nodes(query)
        verified = bool(algorithm) and caps_hash(algorithm, query) == ver
        if verified:
            self.caps.put((algorithm.lower(), ver), nodes)
        else:
            log.debug("caps of %s not verified (%s %s): not cached", session.full, algorithm, ver)
        return nodes, verified

    def _interest(self, session: Recipient, nodes: frozenset[str]) -> None:
        """The session now wants notifications of `nodes`: the last published item of each
        node it did not want before (XEP-0163 §4.3.4), from every account whose nodes it
        gets (`_sources`)."""
        record = PEP.of(session)
        before = record.notify
        record.notify = nodes
        accounts = self._sources(session)
        if before is None:
            self._initial(session, accounts, nodes)
            return
        new = nodes - before
        if new:
            for domain, local in accounts:
                self._send_last(session, domain, local, new)

    def _sources(self, session: Recipient) -> list[tuple[str, str]]:
        """The local accounts whose nodes `session` gets without subscribing (XEP-0163
        §4.1): its own account and the contacts whose presence it may see; for a contact's
        resource elsewhere, the accounts it sent available presence to that let it see
        theirs."""
        if isinstance(session, RemoteResource):
            return [
                (domain, local)
                for local, _, domain in (owner.partition("@") for owner in session.seen_by)
                if self._lets_see(domain, local, session.bare)
            ]
        accounts = [(session.domain, session.local)]
        if self.roster is not None:
            for contact in self.roster.presence_sources(session.domain, session.local):
                local, _, domain = contact.partition("@")
                # one's own JID may be a roster item too
                if local and contact != session.bare and self.router.is_local(domain):
                    accounts.append((domain, local))
        return accounts

    def _lets_see(self, domain: str, local: str, contact: str) -> bool:
        """Whether local@domain lets bare JID `contact` see its presence (from/both)."""
        return (
            self.roster is not None
            and self.roster.subscription(domain, local, contact) in PRESENCE_VISIBLE
        )

    def _initial(
        self, session: Recipient, accounts: list[tuple[str, str]], nodes: frozenset[str]
    ) -> None:
        """Initial presence of `session` toward `accounts` (XEP-0163 §4.3.4): the last item
        of each of their nodes it wants (`nodes`, +notify) or subscribed to explicitly."""
        self._send_last_subscribed(session, accounts, nodes)
        if nodes:
            for domain, local in accounts:
                self._send_last(session, domain, local, nodes)

    def _send_last_subscribed(
        self, session: Recipient, accounts: list[tuple[str, str]], implicit: frozenset[str]
    ) -> None:
        """The last item of each node of `accounts` the session's JID (bare or full)
        subscribed to explicitly, when the node says on_sub_and_presence; nodes in
        `implicit` (+notify) get theirs by _initial."""
        assert self.store is not None
        if not accounts:
            return
        subscribed = self.store.subscribed(accounts, (session.bare, session.full))
        for index, nodes in subscribed.items():
            domain, local = accounts[index]
            wanted = nodes - implicit
            if wanted:
                self._send_last(session, domain, local, wanted)

    def _send_last_of(
        self, contact: str, session: Recipient, nodes: frozenset[str], on_presence: bool = True
    ) -> None:
        local, _, domain = contact.partition("@")
        if not local or not self.router.is_local(domain):
            return
        self._send_last(session, domain, local, nodes, on_presence)

    def presence_visibility_changed(self, user: str, contact: str, visible: bool) -> None:
        if not visible:
            # Implicit subscriptions need nothing: every notification asks the roster afresh.
            # Explicit ones of `user` to the contact's presence and roster nodes go (XEP-0060
            # §6.1.3.2-3: the subscription no longer qualifies). A local user no longer
            # hears from a contact elsewhere: its resources are unknown again.
            self._drop_lost(user, contact)
            self._remote.forget(user, contact)
            return
        for session in self._resources_toward(user, contact):
            wanted = _notify(session)
            if session.available and wanted:
                self._send_last_of(contact, session, wanted, on_presence=False)

    def _send_last(
        self, session: Recipient, domain: str, local: str, wanted: Any, on_presence: bool = True
    ) -> None:
        """The last item of each node of local@domain in `wanted` the session may see, as
        pubsub#send_last_published_item asks: "on_sub" is the implicit subscription
        starting (the presence subscription), "on_sub_and_presence" also each new
        availability (XEP-0163 §6 note)."""
        assert self.store is not None
        owner = f"{local}@{domain}"
        when = ("on_sub_and_presence",) if on_presence else ("on_sub", "on_sub_and_presence")
        for node in self.store.nodes(domain, local):
            config = node.config
            if (
                node.name not in wanted
                or not node.order
                or config["send_last_published_item"] not in when
                or not config["deliver_notifications"]
                or self._refusal(domain, local, config, session.bare) is not None
                or (session.bare != owner and not self._privacy_allows(domain, local, session))
            ):
                continue
            self._send_last_item(session, domain, local, node)

    def _send_last_item(self, session: Recipient, domain: str, local: str, node: Node) -> None:
        message = self._last_message(domain, local, node, session.full)
        if message is not None:
            session.send(message)

    def _last_message(self, domain: str, local: str, node: Node, to: str) -> bytes | None:
        """The node's last published item with an XEP-0203 delay (XEP-0060 §6.1.7); None
        when the store has no such item (it was corrupt and quarantined)."""
        assert self.store is not None
        owner = f"{local}@{domain}"
        found = self.store.items(domain, local, node, node.order[-1:])
        if not found:
            return None
        [item] = found
        inner = f"<items node={quoteattr(node.name)}>"
        inner += item_xml(item, node.config["deliver_payloads"]) + "</items>"
        delay = delay_xml(owner, item.stamp)
        return self._message(owner, to, node.config, inner, delay)

    # --- access (XEP-0060 §4.5) ----------------------------------------------------------

    def _refusal(
        self, domain: str, local: str, config: dict[str, Any], requester: str
    ) -> PubsubError | None:
        """None when bare JID `requester` may retrieve items and get notifications; else the
        error retrieval answers (§6.5.9.2-4)."""
        if requester == f"{local}@{domain}":
            return None
        model = config["access_model"]
        if model == "open":
            return None
        if model == "whitelist" or self.roster is None:
            return PubsubError("not-allowed", "closed-node")
        item = self.roster.item(domain, local, requester)
        if item is None or item.subscription not in PRESENCE_VISIBLE:
            return PubsubError("not-authorized", "presence-subscription-required")
        if model == "roster" and not set(item.groups) & set(config["roster_groups_allowed"]):
            return PubsubError("not-authorized", "not-in-roster-group")
        return None

    # --- notifications (XEP-0163 §4.3) ---------------------------------------------------

    def _message(
        self, owner: str, to: str, config: dict[str, Any], inner: str, extra: str = ""
    ) -> bytes:
        mtype = " type='headline'" if config["notification_type"] == "headline" else ""
        return (
            f"<message from={quoteattr(owner)} to={quoteattr(to)}{mtype} "
            f"id='{secrets.token_hex(8)}'><event xmlns='{NS_EVENT}'>{inner}</event>"
            f"{extra}</message>"
        ).encode()

    def _notify(
        self,
        domain: str,
        local: str,
        node: str,
        config: dict[str, Any],
        inner: str,
        by: str = "",
        subscribers: list[str] | None = None,
    ) -> None:
        """Send event `inner` to every available resource that wants `node` and may see it,
        here or on other servers, and to the explicit subscribers (`subscribers`, else those
        stored); each resource once. `by`: the publishing resource, named to contacts as
        replyto (§4.3.1.3)."""
        if not config["deliver_notifications"]:
            return
        owner = f"{local}@{domain}"
        # The full JIDs notified, and their bare JIDs: a remote subscriber's bare JID stands
        # for its resources (§4.3.2: one notification, to it only without presence).
        sent: set[str] = set()

        def deliver(session: Recipient, extra: str = "") -> None:
            if session.full not in sent:
                sent.update((session.full, session.bare))
                session.send(self._message(owner, session.full, config, inner, extra))

        for session in self.router.resources(owner).values():
            if self._wants(session, node):
                deliver(session)
        replyto = ""
        if by:
            replyto = (
                f"<addresses xmlns='{NS_ADDRESS}'>"
                f"<address type='replyto' jid={quoteattr(by)}/></addresses>"
            )
        if config["access_model"] != "whitelist" and self.roster is not None:
            for contact in self.roster.presence_subscribers(domain, local):
                sessions = self._resources_toward(contact, owner)
                if not sessions or self._refusal(domain, local, config, contact) is not None:
                    continue
                for session in sessions:
                    if self._wants(session, node) and self._privacy_allows(domain, local, session):
                        deliver(session, replyto)
        if subscribers is None:
            subscribers = self._live_subscribers(domain, local, node, config)
        for jid in subscribers:
            for session in self._available(jid):
                if session.bare == owner:
                    deliver(session)
                elif self._privacy_allows(domain, local, session):
                    # §4.3.1.3: replyto only for an entity with a presence subscription
                    deliver(session, replyto if self._lets_see(domain, local, session.bare) else "")

    def _resources_toward(self, user: str, contact: str) -> list[Recipient]:
        """The resources of bare JID `user` that may get local account `contact`'s
        notifications as its contact's: a local account's sessions; for an account on
        another server, the resources that sent `contact` available presence (§4.3.1)."""
        if self.router.is_local(user.rpartition("@")[2]):
            return list(self.router.resources(user).values())
        return [r for r in self._remote.of(user) if contact in r.seen_by]

    def _available(self, jid: str) -> list[Recipient]:
        """The available sessions a subscribed JID stands for: that resource, or all. A JID
        on another server stands for itself (§4.3.1: the subscribed JID, which its server
        delivers)."""
        bare, _, resource = jid.partition("/")
        if not self.router.is_local(bare.rpartition("@")[2]):
            return [RemoteResource(jid, self.hub.deliver_out)]
        sessions = self.router.resources(bare)
        if resource:
            session = sessions.get(resource)
            return [session] if session is not None and session.available else []
        return [session for session in sessions.values() if session.available]

    # --- explicit subscriptions (XEP-0060 §6.1, §6.2, §5.6, §8.8) ------------------------

    def _live_subscribers(
        self, domain: str, local: str, name: str, config: dict[str, Any]
    ) -> list[str]:
        """The JIDs subscribed to node `name` that still qualify; the others are removed
        (the access model, the owner's roster or its groups changed since)."""
        assert self.store is not None
        live: list[str] = []
        lost: list[str] = []
        for _node, jid in self.store.subscriptions(domain, local, name):
            refused = self._refusal(domain, local, config, jid.partition("/")[0])
            (lost if refused is not None else live).append(jid)
        if lost:
            try:
                self.store.unsubscribe(domain, local, name, lost)
            except StorageFull:
                log.error("storage full: lost PEP subscriptions to %s kept", name)
        return live

    def _live_subscriptions(
        self, domain: str, local: str, name: str | None = None
    ) -> list[tuple[str, str]]:
        """(node, JID) of every explicit subscription to the account's nodes (or to node
        `name`) that still qualifies, dropping the others."""
        assert self.store is not None
        by_node: dict[str, list[str]] = {}
        for node_name, jid in self.store.subscriptions(domain, local, name):
            by_node.setdefault(node_name, []).append(jid)
        found: list[tuple[str, str]] = []
        for node_name in by_node:
            node = self.store.node(domain, local, node_name)
            if node is not None:
                live = self._live_subscribers(domain, local, node_name, node.config)
                found.extend((node_name, jid) for jid in live)
        return found

    def _drop_lost(self, user: str, contact: str) -> None:
        """Bare JID `user` no longer sees the presence of local account `contact`: its
        subscriptions to the contact's presence and roster nodes go."""
        local, _, domain = contact.partition("@")
        if not local or not self.router.is_local(domain) or user == contact:
            return
        assert self.store is not None
        by_node: dict[str, list[str]] = {}
        for node_name, jid in self.store.subscriptions(domain, local):
            if jid.partition("/")[0] == user:
                by_node.setdefault(node_name, []).append(jid)
        for node_name, jids in by_node.items():
            node = self.store.node(domain, local, node_name)
            if node is not None and node.config["access_model"] in ("presence", "roster"):
                try:
                    self.store.unsubscribe(domain, local, node_name, jids)
                except StorageFull:
                    log.error("storage full: PEP subscriptions of %s kept", user)

    def _subscriber(self, request: Any, origin: C2SStream, mismatch: StanzaError) -> JID:
        """The 'jid' of a subscribe or unsubscribe request: the requester's own bare or
        full JID, else `mismatch` (§6.1.3.1, §6.2.3.3)."""
        text = request.get("jid")
        if not text:
            raise PubsubError("bad-request", "jid-required")
        try:
            jid = parse_jid(text)
        except JIDError as exc:
            raise PubsubError("bad-request", "invalid-jid", str(exc)) from None
        if not jid.local or jid.bare != origin.bare:
            raise mismatch
        return jid

    def _subscription_xml(self, name: str | None, jid: str, state: str) -> str:
        node_attr = "" if name is None else f" node={quoteattr(name)}"
        return f"<subscription{node_attr} jid={quoteattr(jid)} subscription='{state}'/>"

    def _subscribe(
        self, origin: C2SStream, st: Stanza, local: str, domain: str, children: list[Any]
    ) -> bytes:
        assert self.store is not None
        request = children[0]
        name = self._node_name(request)
        jid = self._subscriber(
            request,
            origin,
            PubsubError("bad-request", "invalid-jid", "not the requester's own JID"),
        )
        for extra in children[1:]:
            if extra.tag == f"{{{NS}}}options":
                raise unsupported("subscription-options")  # §6.3.7 subscribe and configure
            raise StanzaError("bad-request", "only <options/> may follow <subscribe/>")
        node = self._existing(domain, local, name)
        refusal = self._refusal(domain, local, node.config, jid.bare)
        if refusal is not None:
            raise refusal  # §6.1.3.2-4, as retrieval
        self._add_subscription(domain, local, name, jid.full)
        return self._result(origin, st, self._subscription_xml(name, jid.full, "subscribed"))

    def _add_subscription(self, domain: str, local: str, name: str, jid: str) -> None:
        """Subscribe `jid` (§6.1.6: once; again returns the same) and send it the last
        published item after the reply (§6.1.7)."""
        assert self.store is not None
        try:
            added = self.store.subscribe(
                domain, local, name, jid, self.settings.max_subscriptions_per_node
            )
        except PepLimit as exc:
            if exc.what == "key":
                raise StanzaError("not-acceptable", "the JID is too long") from None
            raise PubsubError(  # §6.1.3.9, type as its example
                "policy-violation",
                "too-many-subscriptions",
                "the node has too many subscribers",
                error_type="wait",
            ) from None
        if added is None:
            raise StanzaError("item-not-found", "no such node")
        asyncio.get_running_loop().call_soon(self._send_last_to, domain, local, name, jid)

    def _send_last_to(self, domain: str, local: str, name: str, jid: str) -> None:
        assert self.store is not None
        node = self.store.node(domain, local, name)
        if (
            node is None
            or not node.order
            or node.config["send_last_published_item"] not in ("on_sub", "on_sub_and_presence")
            or not node.config["deliver_notifications"]
        ):
            return
        owner = f"{local}@{domain}"
        for session in self._available(jid):
            if session.bare == owner or self._privacy_allows(domain, local, session):
                self._send_last_item(session, domain, local, node)

    def _unsubscribe(
        self, origin: C2SStream, st: Stanza, local: str, domain: str, children: list[Any]
    ) -> bytes:
        assert self.store is not None
        request = children[0]
        name = self._node_name(request)
        jid = self._subscriber(
            request, origin, StanzaError("forbidden", "not the requester's own JID")
        )
        removed = self.store.unsubscribe(domain, local, name, [jid.full])
        if removed is None:
            raise StanzaError("item-not-found", "no such node")
        if not removed:
            # §6.2.3.2, type as its example
            raise PubsubError("unexpected-request", "not-subscribed", error_type="cancel")
        return self._result(origin, st, self._subscription_xml(name, jid.full, "none"))

    def _subscriptions(
        self, origin: C2SStream, st: Stanza, local: str, domain: str, children: list[Any]
    ) -> bytes:
        """§5.6: the requester's subscriptions (any JID with its bare JID) at this account,
        to all nodes or to the node named."""
        wanted = children[0].get("node")
        body = "".join(
            self._subscription_xml(node, jid, "subscribed")
            for node, jid in self._live_subscriptions(domain, local, wanted)
            if jid.partition("/")[0] == origin.bare
        )
        node_attr = "" if wanted is None else f" node={quoteattr(wanted)}"
        return self._result(origin, st, f"<subscriptions{node_attr}>{body}</subscriptions>")

    def _manage_get(
        self, origin: C2SStream, st: Stanza, local: str, domain: str, children: list[Any]
    ) -> bytes:
        """§8.8.1: the node's subscribers, to the owner."""
        name = self._node_name(children[0])
        self._existing(domain, local, name)
        body = "".join(
            self._subscription_xml(None, jid, "subscribed")
            for _node, jid in self._live_subscriptions(domain, local, name)
        )
        payload = f"<subscriptions node={quoteattr(name)}>{body}</subscriptions>"
        return self._result(origin, st, payload, NS_OWNER)

    def _manage_set(
        self, origin: C2SStream, st: Stanza, local: str, domain: str, children: list[Any]
    ) -> bytes:
        """§8.8.2: 'none' removes a subscriber (§8.8.3), 'subscribed' adds one the access
        model lets in (here or on another server); the others fail. §8.8.2.4: the entries
        that failed come back with their unchanged state in a not-acceptable error, the rest
        are done. Each subscriber whose subscription changed is told (§8.8.4)."""
        assert self.store is not None
        request = children[0]
        name = self._node_name(request)
        node = self._existing(domain, local, name)
        current = {jid for _node, jid in self._live_subscriptions(domain, local, name)}
        failed: list[str] = []
        for entry in request.iterfind(f"{{{NS_OWNER}}}subscription"):
            text = entry.get("jid") or ""
            state = entry.get("subscription")
            try:
                jid: JID | None = parse_jid(text)
            except JIDError:
                jid = None
            if jid is None or not jid.local:
                failed.append(self._subscription_xml(None, text, "none"))
                continue
            was = "subscribed" if jid.full in current else "none"
            if state is None or state == was:
                continue  # §8.8.2.1: no 'subscription', no change
            if state == "none":
                self.store.unsubscribe(domain, local, name, [jid.full])
                current.discard(jid.full)
            elif (
                state == "subscribed"
                and self._refusal(domain, local, node.config, jid.bare) is None
            ):
                try:
                    self._add_subscription(domain, local, name, jid.full)
                except StanzaError:
                    failed.append(self._subscription_xml(None, jid.full, was))
                    continue
                current.add(jid.full)
            else:
                failed.append(self._subscription_xml(None, jid.full, was))
                continue
            self._tell_subscriber(domain, local, name, jid.full, state)
        if not failed:
            return self._result(origin, st)
        payload = (
            f"<pubsub xmlns='{NS_OWNER}'><subscriptions node={quoteattr(name)}>"
            f"{''.join(failed)}</subscriptions></pubsub>"
        )
        error = error_element_xml("not-acceptable", "modify", "these subscriptions are unchanged")
        attrs = f"type='error' id={quoteattr(st.attrs.get('id', ''))} to={quoteattr(origin.full)}"
        if st.attrs.get("to"):
            attrs += f" from={quoteattr(st.attrs['to'])}"
        return f"<iq {attrs}>{payload}{error}</iq>".encode()

    def _tell_subscriber(self, domain: str, local: str, name: str, jid: str, state: str) -> None:
        """§8.8.4 / §12.6: the subscriber's new subscription state, as an event."""
        owner = f"{local}@{domain}"
        inner = self._subscription_xml(name, jid, state)
        for session in self._available(jid):
            if session.bare == owner or self._privacy_allows(domain, local, session):
                session.send(
                    f"<message from={quoteattr(owner)} to={quoteattr(session.full)} "
                    f"id='{secrets.token_hex(8)}'><event xmlns='{NS_EVENT}'>{inner}</event>"
                    "</message>".encode()
                )

    def _privacy_allows(self, domain: str, local: str, session: Recipient) -> bool:
        """XEP-0163 §4.3.3: nothing to a contact's session the owner blocks (the account's
        default list, XEP-0016 §2.2 rule 2, XEP-0191), nor to one whose own list refuses
        messages from the owner."""
        if self.privacy is None:
            return True
        owner = f"{local}@{domain}"
        owner_list = self.privacy.default_list(domain, local)
        if owner_list is not None and not owner_list.allows(PRIVACY_OTHER, session.full):
            return False
        return session.stanza_filter is None or session.stanza_filter.allows_in(
            PRIVACY_MESSAGE, owner
        )

    @staticmethod
    def _wants(session: Recipient, node: str) -> bool:
        wanted = _notify(session)
        return bool(session.available and wanted and node in wanted)

    # --- disco (XEP-0030 on the account, XEP-0060 §5.2) ----------------------------------

    def account_disco_items(
        self, requester: str, local: str, domain: str
    ) -> list[tuple[str, str | None, str | None]]:
        """The nodes `requester` may retrieve items from."""
        assert self.store is not None
        owner = f"{local}@{domain}"
        return [
            (owner, node.name, node.config.get("title") or None)
            for node in self.store.nodes(domain, local)
            if self._refusal(domain, local, node.config, requester) is None
        ]

    def account_node_info(self, requester: str, local: str, domain: str, name: str) -> str | None:
        """XEP-0060 §5.3-§5.4: a leaf node `requester` may retrieve items from, with its
        meta-data; None for any other node (item-not-found)."""
        node = self._retrievable(requester, local, domain, name)
        if node is None:
            return None
        fields = {
            "pubsub#owner": f"{local}@{domain}",
            "pubsub#access_model": node.config["access_model"],
            "pubsub#title": node.config["title"],
            "pubsub#type": node.config["type"],
        }
        meta = "".join(
            f"<field var='{var}'><value>{escape(value)}</value></field>"
            for var, value in fields.items()
        )
        return (
            f"<identity category='pubsub' type='leaf'/><feature var='{NS}'/>"
            f"<x xmlns='{NS_DATA}' type='result'><field var='FORM_TYPE' type='hidden'>"
            f"<value>{NS}#meta-data</value></field>{meta}</x>"
        )

    def _retrievable(self, requester: str, local: str, domain: str, name: str) -> Node | None:
        """The account's node `name` if `requester` may retrieve its items, else None."""
        assert self.store is not None
        if not name or len(name.encode()) > MAX_NAME_BYTES:
            return None
        node = self.store.node(domain, local, name)
        if node is None or self._refusal(domain, local, node.config, requester) is not None:
            return None
        return node

    def account_node_items(
        self, requester: str, local: str, domain: str, name: str
    ) -> list[tuple[str, str]] | None:
        """XEP-0060 §5.5: the items of a node `requester` may retrieve items from, as
        (owner, item id); None for any other node."""
        node = self._retrievable(requester, local, domain, name)
        if node is None:
            return None
        owner = f"{local}@{domain}"
        return [(owner, item_id) for item_id in node.order]

    # --- requests ------------------------------------------------------------------------

    def answer(self, origin: C2SStream, st: Stanza, target: tuple[str, ...] | None) -> bytes | None:
        if target is None:
            local, domain = origin.local, origin.domain
        elif not target[0]:
            raise StanzaError("service-unavailable", "no pubsub service at the server's domain")
        else:
            local, domain = target[0], target[1]
        try:
            return self._dispatch(origin, st, local, domain)
        except StorageFull:
            raise StanzaError("resource-constraint", "the server's storage is full") from None

    def _dispatch(self, origin: C2SStream, st: Stanza, local: str, domain: str) -> bytes | None:
        """The answer, or None when it goes out once a change is stored (publish, retract:
        `answer_once_stored`)."""
        element = st.element()
        itype = st.attrs.get("type")
        pubsub = element.find(f"{{{NS}}}pubsub")
        owner_ns = pubsub is None
        if owner_ns:
            pubsub = element.find(f"{{{NS_OWNER}}}pubsub")
        if pubsub is None:
            raise StanzaError("bad-request", "a <pubsub/> element is expected")
        children = [c for c in pubsub if isinstance(c.tag, str)]
        if not children:
            raise StanzaError("bad-request", "the <pubsub/> element is empty")
        namespace, _, verb = children[0].tag[1:].rpartition("}")
        if namespace != (NS_OWNER if owner_ns else NS):
            raise StanzaError("bad-request", f"<{verb}/> is not in the pubsub namespace")
        is_owner = origin.bare == f"{local}@{domain}"
        args = (origin, st, local, domain, children)
        handlers: dict[tuple[str, str], Callable[..., bytes | None]]
        if owner_ns:
            handlers = {
                ("get", "configure"): self._configure_get,
                ("set", "configure"): self._configure_set,
                ("get", "default"): self._default,
                ("set", "delete"): self._delete,
                ("set", "purge"): self._purge,
                ("get", "subscriptions"): self._manage_get,
                ("set", "subscriptions"): self._manage_set,
            }
            unsupported_names = {"affiliations": "modify-affiliations"}
        else:
            handlers = {
                ("set", "publish"): self._publish,
                ("set", "retract"): self._retract,
                ("get", "items"): self._items,
                ("set", "create"): self._create,
                ("get", "affiliations"): self._affiliations,
                ("set", "subscribe"): self._subscribe,
                ("set", "unsubscribe"): self._unsubscribe,
                ("get", "subscriptions"): self._subscriptions,
            }
            unsupported_names = {
                "options": "subscription-options",
                "default": "retrieve-default-sub",
            }
        handler = handlers.get((itype or "", verb))
        if handler is None:
            if verb in unsupported_names:
                raise unsupported(unsupported_names[verb])
            raise StanzaError("bad-request", f"no pubsub request <{verb}/> as iq {itype}")
        if not is_owner and handler not in (
            self._items,
            self._subscribe,
            self._unsubscribe,
            self._subscriptions,
        ):
            raise PubsubError("forbidden", text="only the account itself may do this")
        return handler(*args)

    # --- helpers for requests ------------------------------------------------------------

    @staticmethod
    def _node_name(element: Any, required_error: str = "bad-request") -> str:
        name = element.get("node")
        if not name:
            raise PubsubError(required_error, "nodeid-required")
        if len(name.encode()) > MAX_NAME_BYTES:
            raise StanzaError("not-acceptable", f"node names are at most {MAX_NAME_BYTES} bytes")
        return str(name)

    def _existing(self, domain: str, local: str, name: str) -> Node:
        assert self.store is not None
        node = self.store.node(domain, local, name)
        if node is None:
            raise StanzaError("item-not-found", "no such node")
        return node

    def _result(self, origin: C2SStream, st: Stanza, payload: str = "", ns: str = NS) -> bytes:
        return iq_result(origin, st, f"<pubsub xmlns='{ns}'>{payload}</pubsub>" if payload else "")

    @staticmethod
    def _limit_error(exc: PepLimit) -> StanzaError:
        if exc.what == "nodes":
            return PubsubError("policy-violation", "max-nodes-exceeded", "too many nodes")
        if exc.what == "bytes":
            return StanzaError("policy-violation", "the account's PEP storage quota is used up")
        return StanzaError("not-acceptable", "node name and item id are too long")

    @staticmethod
    def _form(parent: Any) -> Any | None:
        return None if parent is None else parent.find(f"{{{NS_DATA}}}x")

    # --- publish (XEP-0060 §7.1) ---------------------------------------------------------

    def _publish(
        self, origin: C2SStream, st: Stanza, local: str, domain: str, children: list[Any]
    ) -> None:
        assert self.store is not None
        publish = children[0]
        name = self._node_name(publish)
        items = [c for c in publish if isinstance(c.tag, str)]
        if not items:
            raise PubsubError("bad-request", "item-required")
        if len(items) > 1 or items[0].tag != f"{{{NS}}}item":
            raise PubsubError("bad-request", "invalid-payload", "one <item/> per publish")
        payloads = [c for c in items[0] if isinstance(c.tag, str)]
        if not payloads:
            raise PubsubError("bad-request", "payload-required")
        if len(payloads) > 1:
            raise PubsubError("bad-request", "invalid-payload", "one payload per item")
        payload = fragment_xml(payloads[0])
        if len(payload) > self.settings.max_item_size:
            raise PubsubError("not-acceptable", "payload-too-big")
        item_id = items[0].get("id") or secrets.token_hex(12)
        if len(item_id.encode()) > MAX_NAME_BYTES:
            raise StanzaError("not-acceptable", f"item ids are at most {MAX_NAME_BYTES} bytes")
        preconditions = self._preconditions(children[1:])
        existing = self.store.node(domain, local, name)
        if existing is not None:
            self._check_preconditions(existing.config, preconditions)
        item = Item(item_id, payload, origin.full, time.time())
        work = self._publishing(domain, local, name, item, preconditions)

        def stored(result: tuple[Node, bool]) -> bytes:
            self._published(domain, local, name, result[0], item, by=origin.full)
            for listener in self._listeners:
                try:
                    listener(domain, local, name, item)
                except Exception:
                    log.exception("publish listener failed for %s@%s", local, domain)
            return self._result(
                origin,
                st,
                f"<publish node={quoteattr(name)}><item id={quoteattr(item_id)}/></publish>",
            )

        assert self.store is not None
        answer_once_stored(origin, st, self.store.later(work), stored, self._refused)

    def _refused(self, exc: Exception) -> StanzaError | None:
        return self._limit_error(exc) if isinstance(exc, PepLimit) else None

    def _publishing(
        self, domain: str, local: str, name: str, item: Item, new_config: dict[str, Any]
    ) -> Callable[[Any], tuple[Node, bool]]:
        """The store's work for a publish of `item` to node `name` (made with `new_config`
        over the defaults when new)."""
        assert self.store is not None
        cap = self.settings.max_items
        return self.store.publishing(
            domain,
            local,
            name,
            item,
            {**DEFAULT_CONFIG, **new_config},
            lambda config: effective_max(config, cap),
            self.limits,
        )

    def _published(
        self, domain: str, local: str, name: str, node: Node, item: Item, by: str = ""
    ) -> None:
        """The notifications of `item`, stored in `node`."""
        body = item_xml(item, node.config["deliver_payloads"])
        inner = f"<items node={quoteattr(name)}>{body}</items>"
        self._notify(domain, local, name, node.config, inner, by=by)

    def _notify_retract(
        self, domain: str, local: str, name: str, config: dict[str, Any], item_id: str
    ) -> None:
        inner = f"<items node={quoteattr(name)}><retract id={quoteattr(item_id)}/></items>"
        self._notify(domain, local, name, config, inner)

    def _removed(self, domain: str, local: str, name: str) -> None:
        for listener in self._remove_listeners:
            try:
                listener(domain, local, name)
            except Exception:
                log.exception("remove listener failed for %s@%s", local, domain)

    # --- what other modules may ask (XEP-0398 avatars, XEP-0402 bookmarks) ---------------

    def on_publish(self, listener: PublishListener) -> None:
        """`listener` hears of every item an account publishes itself (not of the items
        `publish_for_account` publishes: a conversion never triggers the reverse one)."""
        self._listeners.append(listener)

    def on_remove(self, listener: RemoveListener) -> None:
        """`listener` hears of every retract, purge and node deletion an account makes
        itself (not of `retract_for_account`'s)."""
        self._remove_listeners.append(listener)

    def stored_items(self, domain: str, local: str, name: str) -> list[Item]:
        """Every item of the account's node `name`, in publication order ([] : no node)."""
        assert self.store is not None
        node = self.store.node(domain, local, name)
        return [] if node is None else self.store.items(domain, local, node, list(node.order))

    def configure_for_account(
        self, domain: str, local: str, name: str, changes: dict[str, Any]
    ) -> bool:
        """Change the configuration of the account's node `name` on its behalf, when it
        exists and differs; True when it changed. The full storage is logged."""
        assert self.store is not None
        node = self.store.node(domain, local, name)
        if node is None:
            return False
        config = {**node.config, **changes}
        if config == node.config:
            return False
        try:
            self.store.configure(
                domain, local, name, config, effective_max(config, self.settings.max_items)
            )
        except StorageFull as exc:
            log.warning("%s not configured for %s@%s: %s", name, local, domain, exc)
            return False
        return True

    def retract_for_account(self, domain: str, local: str, name: str, item_id: str) -> bool:
        """Retract on the account's behalf, notifying as the node's notify_retract says.
        False when there was no such item or the full storage refused it (logged)."""
        assert self.store is not None
        node = self.store.node(domain, local, name)
        if node is None:
            return False
        try:
            retracted = self.store.now(self.store.retracting(domain, local, name, item_id))
        except StorageFull as exc:
            log.warning("%s of %s not retracted for %s@%s: %s", item_id, name, local, domain, exc)
            return False
        if not retracted:
            return False
        if node.config["notify_retract"]:
            self._notify_retract(domain, local, name, node.config, item_id)
        return True

    def stored_item(
        self, domain: str, local: str, name: str, item_id: str | None = None
    ) -> Item | None:
        """Item `item_id` of the account's node `name` (None: its newest), if stored."""
        assert self.store is not None
        node = self.store.node(domain, local, name)
        if node is None or not node.order:
            return None
        found = self.store.items(domain, local, node, [item_id or node.order[-1]])
        return found[0] if found else None

    def publish_for_account(
        self,
        domain: str,
        local: str,
        name: str,
        item_id: str,
        payload: bytes,
        new_config: dict[str, Any],
    ) -> bool:
        """Publish on the account's behalf (the bare JID as publisher), notifying as for a
        publish of its own; a new node gets `new_config`. False when the payload exceeds
        [pep] max_item_size or a limit or the full storage refuses it (logged)."""
        owner = f"{local}@{domain}"
        if len(payload) > self.settings.max_item_size:
            log.warning("%s not published for %s: over [pep] max_item_size", name, owner)
            return False
        assert self.store is not None
        item = Item(item_id, payload, owner, time.time())
        try:
            node, _created = self.store.now(self._publishing(domain, local, name, item, new_config))
        except (PepLimit, StorageFull) as exc:
            log.warning("%s not published for %s: %s", name, owner, exc)
            return False
        self._published(domain, local, name, node, item)
        return True

    def _preconditions(self, rest: list[Any]) -> dict[str, Any]:
        """The publish-options fields (§7.1.5); unknown fields or values the service would
        not accept fail as unmet preconditions."""
        options = [c for c in rest if c.tag == f"{{{NS}}}publish-options"]
        if len(rest) != len(options) or len(options) > 1:
            raise StanzaError("bad-request", "only <publish-options/> may follow <publish/>")
        x = self._form(options[0]) if options else None
        if x is None:
            return {}
        try:
            return parse_form(x, PUBLISH_OPTIONS, self.settings.max_items)
        except FormError as exc:
            raise PubsubError("conflict", "precondition-not-met", str(exc)) from None

    def _check_preconditions(self, config: dict[str, Any], wanted: dict[str, Any]) -> None:
        cap = self.settings.max_items
        for name, value in wanted.items():
            if not same_value(name, value, config.get(name, DEFAULT_CONFIG[name]), cap):
                raise PubsubError(
                    "conflict", "precondition-not-met", f"pubsub#{name} is not as required"
                )

    # --- retract (XEP-0060 §7.2) ---------------------------------------------------------

    def _retract(
        self, origin: C2SStream, st: Stanza, local: str, domain: str, children: list[Any]
    ) -> None:
        assert self.store is not None
        retract = children[0]
        name = self._node_name(retract)
        items = retract.findall(f"{{{NS}}}item")
        if len(items) != 1 or not items[0].get("id"):
            raise PubsubError("bad-request", "item-required")
        item_id = items[0].get("id")
        node = self._existing(domain, local, name)

        def stored(outcome: bool | None) -> bytes:
            if outcome is None:
                raise StanzaError("item-not-found", "no such node")
            if not outcome:
                raise StanzaError("item-not-found", "no such item")
            notify = retract.get("notify")
            if notify in ("1", "true") or (notify is None and node.config["notify_retract"]):
                self._notify_retract(domain, local, name, node.config, item_id)
            self._removed(domain, local, name)
            return self._result(origin, st)

        retracted = self.store.later(self.store.retracting(domain, local, name, item_id))
        answer_once_stored(origin, st, retracted, stored)

    # --- retrieve items (XEP-0060 §6.5) --------------------------------------------------

    def _items(
        self, origin: C2SStream, st: Stanza, local: str, domain: str, children: list[Any]
    ) -> bytes:
        assert self.store is not None
        request = children[0]
        name = self._node_name(request)
        node = self._existing(domain, local, name)
        refusal = self._refusal(domain, local, node.config, origin.bare)
        if refusal is not None:
            raise refusal
        wanted = [i.get("id") for i in request.iterfind(f"{{{NS}}}item")]
        if wanted:
            if not all(wanted):
                raise PubsubError("bad-request", "item-required")
            # §6.5.9.11: requested items that do not exist make an empty result, not an error.
            found = self.store.items(domain, local, node, wanted)
        else:
            ids = node.order
            max_items = request.get("max_items")
            if max_items is not None:
                if not max_items.isdigit():
                    raise StanzaError("bad-request", "max_items is a positive integer")
                ids = ids[len(ids) - int(max_items) :] if int(max_items) else []
            found = self.store.items(domain, local, node, ids)
        body = "".join(item_xml(item) for item in found)
        return self._result(origin, st, f"<items node={quoteattr(name)}>{body}</items>")

    # --- nodes (XEP-0060 §8) -------------------------------------------------------------

    def _create(
        self, origin: C2SStream, st: Stanza, local: str, domain: str, children: list[Any]
    ) -> bytes:
        assert self.store is not None
        # §8.1.2: no instant nodes here.
        name = self._node_name(children[0], "not-acceptable")
        config = dict(DEFAULT_CONFIG)
        rest = children[1:]
        if rest:
            configure = rest[0]
            if len(rest) > 1 or configure.tag != f"{{{NS}}}configure" or configure.get("node"):
                raise StanzaError("bad-request", "only <configure/> may follow <create/>")
            config.update(self._submitted(configure, local, domain))
        try:
            self.store.create(domain, local, name, config, self.limits)
        except NodeExists:
            raise StanzaError("conflict", "the node exists") from None
        except PepLimit as exc:
            raise self._limit_error(exc) from None
        return self._result(origin, st)

    def _submitted(self, parent: Any, local: str, domain: str) -> dict[str, Any]:
        """The fields of a node configuration form (§8.2.5.3: not-acceptable when it cannot
        be applied; unsupported access models as §8.1.3.x names them)."""
        x = self._form(parent)
        if x is None or x.get("type") == "cancel":
            return {}
        if x.get("type") != "submit":
            raise StanzaError("bad-request", "a submitted jabber:x:data form is expected")
        try:
            return parse_form(x, NODE_CONFIG, self.settings.max_items)
        except FormError as exc:
            if "access_model" in str(exc):
                raise PubsubError("not-acceptable", "unsupported-access-model", str(exc)) from None
            raise StanzaError("not-acceptable", str(exc)) from None

    def _groups(self, local: str, domain: str) -> list[str]:
        if self.roster is None:
            return []
        return sorted({g for item in self.roster.items(domain, local) for g in item.groups})

    def _configure_get(
        self, origin: C2SStream, st: Stanza, local: str, domain: str, children: list[Any]
    ) -> bytes:
        name = self._node_name(children[0])
        node = self._existing(domain, local, name)
        form = config_form(node.config, self._groups(local, domain))
        payload = f"<configure node={quoteattr(name)}>{form}</configure>"
        return self._result(origin, st, payload, NS_OWNER)

    def _configure_set(
        self, origin: C2SStream, st: Stanza, local: str, domain: str, children: list[Any]
    ) -> bytes:
        assert self.store is not None
        configure = children[0]
        name = self._node_name(configure)
        node = self._existing(domain, local, name)
        if self._form(configure) is None:
            raise StanzaError("bad-request", "a jabber:x:data form is expected")
        changes = self._submitted(configure, local, domain)
        if changes:
            config = {**node.config, **changes}
            if (
                self.store.configure(
                    domain, local, name, config, effective_max(config, self.settings.max_items)
                )
                is None
            ):
                raise StanzaError("item-not-found", "no such node")
            # §8.2: subscribers the new access model (or groups) leaves out lose their
            # subscription.
            self._live_subscribers(domain, local, name, config)
        return self._result(origin, st)

    def _default(
        self, origin: C2SStream, st: Stanza, local: str, domain: str, children: list[Any]
    ) -> bytes:
        form = config_form(DEFAULT_CONFIG, self._groups(local, domain))
        return self._result(origin, st, f"<default>{form}</default>", NS_OWNER)

    def _delete(
        self, origin: C2SStream, st: Stanza, local: str, domain: str, children: list[Any]
    ) -> bytes:
        return self._drop(origin, st, local, domain, children, delete=True)

    def _purge(
        self, origin: C2SStream, st: Stanza, local: str, domain: str, children: list[Any]
    ) -> bytes:
        return self._drop(origin, st, local, domain, children, delete=False)

    def _drop(
        self,
        origin: C2SStream,
        st: Stanza,
        local: str,
        domain: str,
        children: list[Any],
        delete: bool,
    ) -> bytes:
        """Delete (§8.4) or purge (§8.5) a node, telling whoever may see it."""
        assert self.store is not None
        name = self._node_name(children[0])
        before = self.store.node(domain, local, name)
        # §8.4.2: the subscribers are told of the deletion, their subscriptions go with it.
        subscribers = (
            [] if before is None else self._live_subscribers(domain, local, name, before.config)
        )
        node = self.store.purge(domain, local, name, delete=delete)
        if node is None:
            raise StanzaError("item-not-found", "no such node")
        if not delete:
            inner = f"<purge node={quoteattr(name)}/>"
            self._notify(domain, local, name, node.config, inner, subscribers=subscribers)
        elif node.config["notify_delete"]:
            inner = f"<delete node={quoteattr(name)}/>"
            self._notify(domain, local, name, node.config, inner, subscribers=subscribers)
        self._removed(domain, local, name)
        return self._result(origin, st)

    def _affiliations(
        self, origin: C2SStream, st: Stanza, local: str, domain: str, children: list[Any]
    ) -> bytes:
        """§5.7: the owner's affiliation with each node (the only affiliation here)."""
        assert self.store is not None
        wanted = children[0].get("node")
        body = "".join(
            f"<affiliation node={quoteattr(node.name)} affiliation='owner'/>"
            for node in self.store.nodes(domain, local)
            if wanted is None or node.name == wanted
        )
        return self._result(origin, st, f"<affiliations>{body}</affiliations>")


MODULE = PepModule
