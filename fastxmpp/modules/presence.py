"""RFC 6121 §3 subscriptions and §4 presence, for the domains this server hosts.

Subscriptions: a subscription stanza a user sends goes through the outbound table of
Appendix A (subscription_states.outbound) on the user's roster, and, when it is routed, through
the inbound table on the contact's roster; both sides change in the roster module, which
pushes what a client can see. The server itself:
- stamps the user's bare JID as 'from' and the contact's bare JID as 'to' (§3.1.2);
- answers "subscribed" for a contact already letting the user see its presence, or that
  pre-approved the user (§3.1.3, §3.4); a subscription stanza to an account that does not
  exist gets no answer (§8.5.1);
- keeps a request it delivers, whole (status, nick), until it is answered, and delivers it
  again at each initial presence (§3.1.3);
- sends the contact's current presence to the user as soon as the user may see it, and
  unavailable presence when the user no longer may (§3.1.5, §3.2.2, §3.3.2).
Contacts on other domains: the user's roster changes here, the stanza goes to the contact's
server (stream/s2s.py), which applies the other half.

Presence (§4): initial presence goes to the contacts with subscription from/both and to all
of the user's available resources (including the sender); the newly available resource gets
the last presence of the user's other resources and of every contact it is subscribed to
(the server answers probes for local contacts itself, from each resource's last available
presence), then its pending subscription requests, then `hub.initial_presence` (offline
messages). Later presence goes to the same set; unavailable presence too, plus every entity
the session sent directed presence to (§4.6.3); a session that just goes away counts as
unavailable (§4.5.4). Nobody outside from/both gets broadcast presence. A probe from a client
is answered only when the prober may see the presence (§4.3.2); otherwise nothing is sent.
Presence the server sends carries the sender's full JID as 'from' and the recipient as 'to'
(RFC 6121 §4.2.2, §4.4.2 and their examples; clients file presence by it): the bare JID of
the user receiving a contact's presence, the full JID of a resource receiving presence of
the user's own other resources, the JID that directed presence went to. The bytes are made
once without 'to' (`PresenceRecord.last` keeps them so) and 'to' is spliced into the start tag per
recipient (`addressed`).

Per-session state: a `PresenceRecord` (fastxmpp/records.py), made when the session first
sends presence. Other modules read it through `last_presence`, `directed_presence` and
`unavailable_status`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape, quoteattr

from .._parser import read_stanza
from .._router import insert_attr
from ..delay import delay_xml
from ..errors import StanzaError
from ..jid import JID, JIDError, parse_jid
from ..records import RecordSlot
from ..storage.lmdb_store import StorageFull
from ..storage.roster import RosterItem
from .base import Module
from .privacy_rules import PRIVACY_OTHER, PRIVACY_PRESENCE_IN, PRIVACY_PRESENCE_OUT
from .subscription_states import SUBSCRIPTION_KINDS, State, inbound, outbound

if TYPE_CHECKING:
    from .._parser import Stanza
    from ..stream.c2s import C2SStream
    from .privacy import PrivacyModule
    from .roster import RosterModule

log = logging.getLogger("fastxmpp.presence")

NS_PRE_APPROVAL_FEATURE = "urn:xmpp:features:pre-approval"
CLIENT_STATUS = "{jabber:client}status"
# Directed presence remembered per session; beyond that the oldest is not tracked any more.
MAX_DIRECTED = 1000


@dataclass(slots=True)
class PresenceRecord:
    """What the presence module keeps for a session."""

    # The last available presence it broadcast ('from' stamped, no 'to'); None before
    # initial presence and after unavailable presence (§4.2, §4.5).
    last: bytes | None = None
    # §4.6: JIDs it sent directed available presence to since (insertion ordered).
    directed: dict[str, None] = field(default_factory=dict)
    # The <status/> of its last unavailable presence (XEP-0012 asks for it).
    unavailable_status: str | None = None


PRESENCE = RecordSlot(PresenceRecord)
# (session, the presence it sent, its bytes with 'from' stamped) -> the bytes to broadcast
AvailableRewrite = Callable[["C2SStream", "Stanza", bytes], bytes]


def _last(session: C2SStream) -> bytes | None:
    record = PRESENCE.get(session)
    return None if record is None else record.last


def addressed(data: bytes, to: str) -> bytes:
    """Presence bytes made without 'to' (`PresenceRecord.last`, an unavailable presence built here)
    with 'to' spliced into the start tag."""
    return insert_attr(data, "to", to)


def bare_jid(text: str) -> JID | None:
    try:
        jid = parse_jid(text)
    except JIDError:
        return None
    return JID(jid.local, jid.domain, "")


class PresenceModule(Module):
    name = "presence"

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        self.roster: RosterModule | None = None
        self.privacy: PrivacyModule | None = None
        self._rewrite: AvailableRewrite | None = None

    def start(self) -> None:
        self.roster = self.hub.get("roster")
        self.privacy = self.hub.get("privacy")
        if self.roster is None:
            log.warning("no roster module: presence goes to the user's own resources only")
        self.hub.hook(self, "presence/broadcast", self.presence)
        self.hub.hook(self, "presence/subscription", self.presence)
        self.hub.hook(self, "presence/directed", self.directed)

    def stream_features(self, stream: C2SStream) -> str:
        if stream.authenticated_local is None or self.roster is None:
            return ""
        return f"<sub xmlns='{NS_PRE_APPROVAL_FEATURE}'/>"

    # --- what other modules may ask about a session ----------------------------------

    @staticmethod
    def last_presence(session: C2SStream) -> bytes | None:
        """The last available presence the session broadcast ('from' its full JID, no
        'to'), or None while it is not available."""
        return _last(session)

    @staticmethod
    def directed_presence(session: C2SStream) -> Collection[str]:
        """The JIDs the session sent directed available presence to (§4.6) since."""
        record = PRESENCE.get(session)
        return () if record is None else record.directed.keys()

    @staticmethod
    def unavailable_status(session: C2SStream) -> str | None:
        """The <status/> of the session's last unavailable presence, if it had one."""
        record = PRESENCE.get(session)
        return None if record is None else record.unavailable_status

    def rewrite_available(self, rewrite: AvailableRewrite) -> None:
        """Available presence a session broadcasts, or directs to a JID (a room join), is
        made `rewrite(session, st, data)` before it goes anywhere (XEP-0398 §5: the
        server's avatar hash, "also in directed presences such as MUC joins"). One
        rewriter."""
        self._rewrite = rewrite
        self.router.directed_rewrite = self._rewrite_directed

    def _rewrite_directed(self, origin: C2SStream, st: Stanza) -> Stanza:
        """The router's hook for a client's directed available presence: the stanza as the
        rewriter makes it, read again (what follows routing reads the Stanza)."""
        if self._rewrite is None:
            return st
        data = st.with_attrs({}) if st.needs_reserialize else st.raw
        rewritten = self._rewrite(origin, st, data)
        return st if rewritten == data else read_stanza(rewritten) or st

    def rebroadcast_available(self, bare: str, update: Callable[[bytes], bytes]) -> None:
        """Each available resource of account `bare` broadcasts its last presence again,
        changed by `update` (XEP-0153 §4.1: a new avatar hash)."""
        for session in list(self.router.resources(bare).values()):
            record = PRESENCE.get(session)
            if record is None or record.last is None:
                continue
            record.last = update(record.last)
            self._broadcast_available(session, record.last)

    # --- events -----------------------------------------------------------------------

    def session_ended(self, session: C2SStream) -> None:
        # §4.5.4: a session that is gone without unavailable presence.
        record = PRESENCE.get(session)
        if record is None or (record.last is None and not record.directed):
            return
        data = f"<presence type='unavailable' from={quoteattr(session.full)}/>".encode()
        self._broadcast_unavailable(session, data, contacts=record.last is not None)

    # --- pipeline handlers ------------------------------------------------------------

    def presence(self, origin: C2SStream, st: Stanza) -> None:
        """At "presence/broadcast" and "presence/subscription": broadcast presence (no 'to'),
        subscription stanzas and probes."""
        ptype = st.attrs.get("type")
        to = st.attrs.get("to")
        if to is None:
            if ptype is None:
                self._available(origin, st)
            elif ptype == "unavailable":
                self._unavailable(origin, st)
            # Anything else without 'to' (a subscription to nobody, a probe of nobody, an
            # error) has nothing to act on.
            return
        contact = bare_jid(to)
        if contact is None:
            raise StanzaError("jid-malformed", "the 'to' address is not a JID")
        if origin.is_remote:
            # From another server (stream/s2s.py): only the inbound half of Appendix A.
            if ptype in SUBSCRIPTION_KINDS:
                data = st.with_attrs({"from": origin.bare, "to": contact.bare})
                self._inbound(origin.bare, contact, ptype, data)
            elif ptype == "probe":
                self._client_probe(origin, contact)
            return
        if ptype == "probe":
            self._client_probe(origin, contact)
        elif ptype in SUBSCRIPTION_KINDS:
            self._outbound_subscription(origin, st, ptype, contact)

    def directed(self, origin: C2SStream, st: Stanza, target: tuple[str, ...]) -> None:
        """At "presence/directed": remember who got directed available presence (§4.6)."""
        if origin.is_remote:
            return  # the remote server remembers its users' directed presence
        local, _domain, resource, bare = target
        recipient = f"{bare}/{resource}" if resource else bare
        if st.attrs.get("type") == "unavailable":
            known = PRESENCE.get(origin)
            if known is not None:
                known.directed.pop(recipient, None)
            return
        record = PRESENCE.of(origin)
        directed = record.directed
        if (
            record.last is not None
            and self.roster is not None
            and local
            and self.roster.subscription(origin.domain, origin.local, bare) in ("from", "both")
        ):
            return  # §4.6.2: a contact that gets the broadcast anyway
        if len(directed) >= MAX_DIRECTED:
            directed.pop(next(iter(directed)))
        directed[recipient] = None

    # --- presence broadcast (§4.2, §4.4, §4.5) -----------------------------------------

    def _subscribers(self, session: C2SStream) -> tuple[str, ...]:
        if self.roster is None:
            return ()
        return self.roster.presence_subscribers(session.domain, session.local)

    def _may_see(self, sender: C2SStream | str, recipient: C2SStream) -> bool:
        """XEP-0016 §2.10-§2.12 (and XEP-0191): presence of session `sender`, or a
        subscription stanza from JID `sender`, passes the privacy lists in force."""
        if self.privacy is None:
            return True
        if isinstance(sender, str):
            return recipient.stanza_filter is None or recipient.stanza_filter.allows_in(
                PRIVACY_OTHER, sender
            )
        return self.privacy.presence_allowed(sender, recipient)

    def _to_available(self, bare: str, data: bytes, sender: C2SStream | str | None = None) -> None:
        """`data` (addressed to `bare`) to the available resources of `bare`, where the
        privacy lists let what `sender` sends through. A contact on another domain gets it
        over s2s (RFC 6121 §4.2.2) addressed to its bare JID."""
        if self._is_remote(bare):
            if self._out_allowed(sender, bare):
                self._remote(bare, data)
            return
        for session in self.router.resources(bare).values():
            if session.available and (sender is None or self._may_see(sender, session)):
                session.send(data)

    def _is_remote(self, jid: str) -> bool:
        domain = jid.rpartition("@")[2].partition("/")[0]
        return not (self.router.is_local(domain) or self.router.is_service(domain))

    @staticmethod
    def _out_allowed(sender: C2SStream | str | None, to: str) -> bool:
        """XEP-0016 §2.11: presence-out of session `sender` toward a remote JID (the
        remote server applies the recipient's lists)."""
        if sender is None or isinstance(sender, str) or sender.stanza_filter is None:
            return True
        return bool(sender.stanza_filter.allows(PRIVACY_PRESENCE_OUT, to))

    def _remote(self, to: str, data: bytes) -> bool:
        """True when `to` is on another domain: `data` went to its server (if federation
        is on) addressed to `to`."""
        domain = to.rpartition("@")[2].partition("/")[0]
        components = self.server.components
        if components is not None and components.deliver(data, domain):
            return True  # XEP-0114: a contact at a component (a gateway's user)
        if self.router.is_local(domain) or self.router.is_service(domain):
            return False
        s2s = self.server.s2s
        if s2s is not None:
            s2s.deliver(data, to)
        return True

    def _available(self, origin: C2SStream, st: Stanza) -> None:
        record = PRESENCE.of(origin)
        initial = record.last is None
        data = st.with_attrs({"from": origin.full})
        if self._rewrite is not None:
            data = self._rewrite(origin, st, data)
        record.last = data
        record.unavailable_status = None
        self._broadcast_available(origin, data)
        own = self.router.resources(origin.bare)
        if not initial:
            self.hub.presence_available(origin, st)
            return
        # §4.2.2: the new resource learns the presence of the user's other resources ...
        for session in own.values():
            last = _last(session)
            if session is not origin and last is not None:
                origin.send(addressed(last, origin.full))
        if self.roster is not None:
            # ... and of its contacts (§4.3: probes, answered here for local contacts) ...
            for contact in self.roster.presence_sources(origin.domain, origin.local):
                self._answer_probe(contact, origin.bare, origin)
            # ... and gets the subscription requests still waiting (§3.1.3).
            for request in self.roster.pending_requests(origin.domain, origin.local):
                origin.send(request)
        self.hub.initial_presence(origin)
        self.hub.presence_available(origin, st)

    def _broadcast_available(self, origin: C2SStream, data: bytes) -> None:
        """§4.2.2, §4.4.2: available presence `data` to the contacts and the user's own
        available resources."""
        for contact in self._subscribers(origin):
            self._to_available(contact, addressed(data, contact), origin)
        for session in self.router.resources(origin.bare).values():
            if session.available:
                session.send(addressed(data, session.full))

    def _unavailable(self, origin: C2SStream, st: Stanza) -> None:
        record = PRESENCE.of(origin)
        record.unavailable_status = st.element().findtext(CLIENT_STATUS)
        data = st.with_attrs({"from": origin.full})
        self.hub.presence_unavailable(origin, data)  # services (rooms) it is present in
        if record.last is None:
            # Not available: nothing to take back from contacts (§4.5.2), only directed.
            self._broadcast_unavailable(origin, data, contacts=False)
            return
        self._broadcast_unavailable(origin, data)
        origin.send(addressed(data, origin.full))  # §4.5.2: the resource that sent it too

    def _broadcast_unavailable(
        self, session: C2SStream, data: bytes, contacts: bool = True
    ) -> None:
        """Unavailable presence from `session` (`data`, without 'to') to contacts, the user's
        other available resources and every entity that got directed presence (§4.5.2,
        §4.6.3)."""
        record = PRESENCE.of(session)
        if contacts:
            record.last = None
            for contact in self._subscribers(session):
                self._to_available(contact, addressed(data, contact), session)
            for other in self.router.resources(session.bare).values():
                if other is not session and other.available:
                    other.send(addressed(data, other.full))
        directed = record.directed
        for recipient in directed:
            bare, _, resource = recipient.partition("/")
            if self._is_remote(recipient):
                if self._out_allowed(session, recipient):
                    self._remote(recipient, data)
                continue
            if resource:
                target = self.router.session(bare, resource)
                if target is not None and self._may_see(session, target):
                    target.send(addressed(data, recipient))
            else:
                self._to_available(bare, addressed(data, bare), session)
        directed.clear()

    # --- probes (§4.3) -----------------------------------------------------------------

    def _answer_probe(self, contact: str, prober_bare: str, to_session: C2SStream) -> None:
        """The contact's server answering a probe: the last presence of each available
        resource of `contact`, if `prober_bare` may see it (§4.3.2); otherwise nothing."""
        local, _, domain = contact.partition("@")
        if not self.router.is_local(domain):
            # §4.3.1: a remote contact: its server answers a probe from the user's bare JID.
            if not to_session.is_remote:
                probe = f"<presence type='probe' from={quoteattr(prober_bare)}/>".encode()
                self._remote(contact, probe)
            return
        assert self.roster is not None
        if self.roster.subscription(domain, local, prober_bare) not in ("from", "both"):
            return
        available = False
        for session in self.router.resources(contact).values():
            last = _last(session)
            if last is not None:
                available = True
                if self._may_see(session, to_session):
                    to_session.send(addressed(last, prober_bare))
        if not available:
            self._answer_probe_offline(contact, local, domain, to_session)

    def _answer_probe_offline(
        self, contact: str, local: str, domain: str, to_session: C2SStream
    ) -> None:
        """§4.3.2: a contact with no available resource: unavailable presence, stamped
        (XEP-0203) with the time it went offline and carrying the status it left with when
        the last-activity module recorded them."""
        if self.privacy is not None:
            default = self.privacy.default_list(domain, local)
            if default is not None and not default.allows(PRIVACY_PRESENCE_OUT, to_session.full):
                return
            rules = to_session.stanza_filter
            if rules is not None and not rules.allows_in(PRIVACY_PRESENCE_IN, contact):
                return
        payload = ""
        last_activity = self.hub.get("last")
        logout = None if last_activity is None else last_activity.last_logout(domain, local)
        if logout is not None:
            when, status = logout
            if status:
                payload += f"<status>{escape(status)}</status>"
            payload += delay_xml(domain, when)
        attrs = f"type='unavailable' from={quoteattr(contact)} to={quoteattr(to_session.full)}"
        to_session.send(f"<presence {attrs}>{payload}</presence>".encode())

    def _client_probe(self, origin: C2SStream, contact: JID) -> None:
        if self.roster is None or not contact.local:
            return
        if contact.bare == origin.bare:
            for session in self.router.resources(origin.bare).values():
                last = _last(session)
                if last is not None:
                    origin.send(addressed(last, origin.full))
            return
        self._answer_probe(contact.bare, origin.bare, origin)

    # --- subscriptions (§3, Appendix A) ------------------------------------------------

    def _outbound_subscription(
        self, origin: C2SStream, st: Stanza, kind: str, contact: JID
    ) -> None:
        """A subscription stanza the user sends (§3.1.2, §3.2.2, §3.3.2, §3.4.1)."""
        if self.roster is None:
            return
        roster = self.roster
        state, approved = roster.state(origin.domain, origin.local, contact.bare)
        outcome = outbound(state, kind, approved)
        if kind == "subscribe" and roster.item(origin.domain, origin.local, contact.bare) is None:
            listed = roster.roster(origin.domain, origin.local).listed_count()
            if listed >= roster.max_items:
                raise StanzaError("not-allowed", f"a roster holds at most {roster.max_items}")
        user = (origin.domain, origin.local, contact.bare)
        if not self._change(*user, state, outcome.new, outcome.pre_approved):
            raise StanzaError("resource-constraint", "the server's storage is full")
        if outcome.forward:
            data = st.with_attrs({"from": origin.bare, "to": contact.bare})
            self._inbound(origin.bare, contact, kind, data)
            if kind in ("subscribed", "unsubscribed") and not self.router.is_local(contact.domain):
                # §3.1.5, §3.2.2: the contact's server (this one, for a remote user) sends the
                # presence of the contact's available resources, or their unavailability.
                self._presence_to_remote(origin.bare, contact.bare, kind == "subscribed")

    def _presence_to_remote(self, local_bare: str, remote_bare: str, visible: bool) -> None:
        """The current presence of each available resource of account `local_bare` (or
        unavailable presence from each, when not `visible`) to `remote_bare`'s server."""
        for _session, presence in self._presences_of(local_bare, visible):
            self._remote(remote_bare, presence)

    def _presences_of(self, bare: str, visible: bool) -> Iterator[tuple[C2SStream, bytes]]:
        """Each available resource of account `bare` with its current presence, or with
        unavailable presence from it when not `visible`."""
        for session in self.router.resources(bare).values():
            last = _last(session)
            if last is None:
                continue
            if not visible:
                last = f"<presence type='unavailable' from={quoteattr(session.full)}/>".encode()
            yield session, last

    def _inbound(self, sender: str, contact: JID, kind: str, data: bytes) -> None:
        """A subscription stanza from `sender` (bare JID, local) reaching `contact`'s
        server (§3.1.3, §3.1.6, §3.2.3, §3.3.3)."""
        assert self.roster is not None
        if self._remote(contact.bare, data):
            return  # the contact's server applies the inbound rules
        if not contact.local or not self.router.user_exists(contact.domain, contact.local):
            return  # §8.5.1: no such account: silently ignored, whatever the kind
        # XEP-0016 §2.2 rule 4: the default list comes first; see privacy.py for why only
        # subscribe and subscribed from a blocked JID are dropped outright.
        blocked = self.privacy is not None and not self.privacy.account_allows_in(
            contact.domain, contact.local, PRIVACY_OTHER, sender
        )
        if blocked and kind in ("subscribe", "subscribed"):
            return
        state, approved = self.roster.state(contact.domain, contact.local, sender)
        outcome = inbound(state, kind, approved)
        pending = data if kind == "subscribe" and outcome.new.pending_in else None
        deliver = outcome.forward and not blocked
        self._change(
            contact.domain,
            contact.local,
            sender,
            state,
            outcome.new,
            outcome.pre_approved,
            pending,
            deliver=(lambda: self._deliver_subscription(contact.bare, kind, data, sender))
            if deliver
            else None,
        )
        if outcome.auto_reply is not None:
            self._reply(contact.bare, sender, outcome.auto_reply)
        if state.sends_presence and not outcome.new.sends_presence and self._is_remote(sender):
            # §3.3.3: a remote user unsubscribed: the contact's server (this one) sends it
            # unavailable presence from each of the contact's available resources.
            self._presence_to_remote(contact.bare, sender, visible=False)

    def _deliver_subscription(self, user: str, kind: str, data: bytes, sender: str) -> None:
        """Subscription stanza `data` from `sender` to local account `user`: a request to
        its available resources (§3.1.3); an answer or a cancellation to its interested
        resources, available or not (§3.1.6, §3.2.3, §3.3.3), and to available ones that
        never asked for the roster."""
        if kind == "subscribe" or self.roster is None:
            self._to_available(user, data, sender)
            return
        interested = self.roster.interested_resources(user)
        for session in self.router.resources(user).values():
            if (session.available or session in interested) and self._may_see(sender, session):
                session.send(data)

    def _reply(self, from_bare: str, to_bare: str, kind: str) -> None:
        """A subscription stanza the server sends on behalf of account `from_bare`."""
        data = (
            f"<presence type='{kind}' from={quoteattr(from_bare)} to={quoteattr(to_bare)}/>"
        ).encode()
        target = bare_jid(to_bare)
        if target is not None:
            self._inbound(from_bare, target, kind, data)

    def _change(
        self,
        domain: str,
        local: str,
        contact: str,
        old: State,
        new: State,
        pre_approved: bool,
        pending_request: bytes | None = None,
        deliver: Callable[[], None] | None = None,
    ) -> bool:
        """Store the new state of `contact` for local@domain, `deliver` the subscription
        stanza that caused it, push the roster item (§3.1.6: the stanza first), then give the
        account the contact's presence when it starts or stops being allowed to see it.
        False when the storage is full (nothing changed, nothing delivered)."""
        assert self.roster is not None
        try:
            self.roster.apply(
                domain, local, contact, new, pre_approved, pending_request, announce=deliver
            )
        except StorageFull:
            log.error("storage full: subscription of %s@%s to %s unchanged", local, domain, contact)
            return False
        if old.receives_presence != new.receives_presence:
            self._presence_visibility_changed(f"{local}@{domain}", contact, new.receives_presence)
        if old.sends_presence != new.sends_presence and self._is_remote(contact):
            # A local contact's own roster change tells the modules; a contact elsewhere
            # has no roster here, so the account's change does (PEP's last items).
            self.hub.presence_visibility_changed(contact, f"{local}@{domain}", new.sends_presence)
        return True

    def _presence_visibility_changed(self, user: str, contact: str, visible: bool) -> None:
        """§3.1.5: the contact's presence now; §3.2.2/§3.3.2: unavailable from it."""
        self.hub.presence_visibility_changed(user, contact, visible)
        for session, presence in self._presences_of(contact, visible):
            self._to_available(user, addressed(presence, user), session)

    def roster_item_removed(self, origin: C2SStream, item: RosterItem) -> None:
        """§2.5.2: the user removed `item`: the contact is told as if the user had sent
        unsubscribe (when subscribed to it, or asking) and unsubscribed (when it was
        subscribed to the user, or asking)."""
        if self.roster is None:
            return
        old = State(item.subscription, item.ask, item.pending_in is not None)
        contact = bare_jid(item.jid)
        if contact is None:
            return
        if old.receives_presence or old.pending_out:
            self._reply(origin.bare, contact.bare, "unsubscribe")
        if old.sends_presence or old.pending_in:
            self._reply(origin.bare, contact.bare, "unsubscribed")
        if old.receives_presence:
            self._presence_visibility_changed(origin.bare, contact.bare, False)


MODULE = PresenceModule
