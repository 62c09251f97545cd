"""XEP-0280 Message Carbons: copies of a user's conversations to all of its clients.

- §3/§4 (enabling, disabling): an iq set with <enable/> or <disable/> from the client to
  the server (no 'to', or its own bare JID), per session. Repeating either is no error
  (§9.1). Asking for another account gets not-allowed (the XEP's example for disabling
  another client's carbons), and so does a request from an entity of another server
  (§4.1/§5.1: "not-allowed if the request is from a client that is not hosted on this
  server"): only a local client session enables carbons, for itself. Anything else in the
  namespace gets bad-request.
- Pipeline handlers (fastxmpp/pipeline.py): `received` at "message/delivered" and `sent`
  at "message/sent", hooked only while some session has carbons on (`accounts`: bare JID
  -> its carbons-enabled sessions), so that with nobody on carbons a message costs the
  router nothing for them; otherwise a dictionary lookup per message for accounts without
  carbons.
- §6.1 eligibility (`eligible`): no <private xmlns='urn:xmpp:carbons:2'/> nor XEP-0334
  <no-copy/>; type chat; type normal with a <body/>; or instant messaging payloads
  (XEP-0184 receipts, XEP-0085 chat states, XEP-0333 markers, XEP-0249 and mediated
  invitations) in a chat or normal message. Not groupchat, not headline. Errors are not
  copied: the XEP copies an error only when it answers an eligible message, which the
  server cannot tell from the error alone.
- MUC (§6.1): private messages an occupant receives are not copied: a local room delivers
  them itself to every session joined under the nickname (room.py), never through the
  router; one that arrives from a full JID with <x xmlns='muc#user'/> (a remote room's) is
  left out by `received`; a private message a user sends to
  an occupant is copied only to the user's other sessions that share its nickname in that
  room (the multi-session nick of the XEP's note), with the <x/> the room adds to private
  messages.
- Privacy: a copy is a message from the conversation partner as far as XEP-0016 goes: the
  receiving session's list in force must allow a message from that JID.
- Copies are wrapped as §4/§5 say: from the user's bare JID, to the receiving session's full
  JID, the type of the original, <received/> or <sent/> around an XEP-0297 <forwarded/>
  holding the original (with its 'from' stamped, as it was or will be delivered).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import ns
from .._router import append_child, forwardable, forwarded_message
from ..errors import StanzaError
from ..records import RecordSlot
from .base import Module, iq_result
from .privacy_rules import PRIVACY_MESSAGE

if TYPE_CHECKING:
    from .._parser import Stanza
    from ..stream.c2s import C2SStream

NS = ns.CARBONS
NS_USER = ns.MUC_USER  # XEP-0045
NS_CHATSTATES = ns.CHATSTATES  # XEP-0085
NS_HINTS = ns.HINTS  # XEP-0334
NS_RECEIPTS = "urn:xmpp:receipts"  # XEP-0184
NS_MARKERS = "urn:xmpp:chat-markers:0"  # XEP-0333
NS_CONFERENCE = "jabber:x:conference"  # XEP-0249


@dataclass(slots=True)
class CarbonsRecord:
    """A session with carbons on (§3.1): since when (for `copied_to`)."""

    enabled_since: float


CARBONS = RecordSlot(lambda: CarbonsRecord(time.time()))

# §6.1: "payload elements typically used in IM", and the two kinds of MUC invitation.
IM_PAYLOADS = frozenset((NS_RECEIPTS, NS_CHATSTATES, NS_MARKERS, NS_CONFERENCE, NS_USER))
EXCLUDED = frozenset(((NS, "private"), (NS_HINTS, "no-copy")))


def eligible(st: Stanza) -> bool:
    """§6.1 (and §7: <private/>, or the XEP-0334 <no-copy/> hint, opts a message out)."""
    return eligible_message(st.attrs.get("type", "normal"), st.children)


def eligible_message(mtype: str, children: list[tuple[str, str]]) -> bool:
    """`eligible` for a message of type `mtype` with these (namespace, name) children."""
    if mtype != "chat" and mtype != "normal":
        return False  # groupchat (§6.1), headline (no IM), error (see the module doc)
    for child in children:
        if child in EXCLUDED:
            return False
    if mtype == "chat" or (ns.CLIENT, "body") in children:
        return True
    return any(child[0] in IM_PAYLOADS for child in children)


class CarbonsModule(Module):
    name = "carbons"
    features = (NS,)

    def start(self) -> None:
        # Bare JID -> resource -> the carbons-enabled sessions (each has a CarbonsRecord).
        self.accounts: dict[str, dict[str, C2SStream]] = {}
        self.router.set_iq_handler(NS, self.toggle)

    def _hooked(self, wanted: bool) -> None:
        """The pipeline handlers are there exactly while some session has carbons on."""
        if wanted == self.hub.attach(self.router).hooked(self.name, "message/sent"):
            return
        if wanted:
            self.hub.hook(self, "message/delivered", self.received)
            self.hub.hook(self, "message/sent", self.sent)
        else:
            self.hub.unhook(self, "message/delivered")
            self.hub.unhook(self, "message/sent")

    def toggle(self, origin: C2SStream, st: Stanza, target: tuple[str, ...] | None) -> bytes:
        if origin.is_remote:
            # §4.1/§5.1: a remote entity (over a server link) is no client hosted here;
            # stored, it would get copies of an account's messages at resources it chose.
            raise StanzaError("not-allowed", "carbons are for clients of this server")
        if target is not None and target[0] and target[3] != origin.bare:
            raise StanzaError("not-allowed", "carbons are enabled for your own sessions only")
        payload = st.children[0][1]
        if st.attrs.get("type") != "set" or payload not in ("enable", "disable"):
            raise StanzaError("bad-request", "an iq set with <enable/> or <disable/>")
        if payload == "enable":
            self.enable(origin)
        else:
            self._disable(origin)
        return iq_result(origin, st)

    def enable(self, session: C2SStream) -> None:
        """Carbons on for the session (an iq, or inline in a XEP-0386 bind)."""
        CARBONS.of(session)  # made now, unless carbons were on already
        self.accounts.setdefault(session.bare, {})[session.resource] = session
        self._hooked(True)

    def enabled(self, session: C2SStream) -> bool:
        return self.accounts.get(session.bare, {}).get(session.resource) is session

    def _disable(self, session: C2SStream) -> None:
        CARBONS.drop(session)
        sessions = self.accounts.get(session.bare)
        if sessions is not None and sessions.get(session.resource) is session:
            del sessions[session.resource]
            if not sessions:
                del self.accounts[session.bare]
                self._hooked(bool(self.accounts))

    def session_ended(self, session: C2SStream) -> None:
        self._disable(session)

    def copied_to(
        self, session: C2SStream, mtype: str, children: list[tuple[str, str]], sent_at: float
    ) -> list[C2SStream]:
        """The account's other sessions that got a carbon copy (§4) of a message of type
        `mtype` with these children delivered to `session` at `sent_at`: those with carbons
        on since then (XEP-0198 §4: resending them the message would duplicate it)."""
        if not eligible_message(mtype, children):
            return []
        copied = []
        for other in self.accounts.get(session.bare, {}).values():
            record = CARBONS.get(other)
            if other is not session and record is not None and record.enabled_since <= sent_at:
                copied.append(other)
        return copied

    # --- pipeline handlers -------------------------------------------------------------------

    def received(
        self,
        origin: C2SStream,
        st: Stanza,
        target: tuple[str, ...],
        data: bytes,
        addressed: Iterable[C2SStream],
    ) -> None:
        """At "message/delivered", §4: a message from `origin` was delivered to `addressed`
        (sessions of target[3], none when it was stored): a copy for each other
        carbons-enabled session of the account."""
        bare = target[3]
        if bare not in self.accounts or not eligible(st):
            return
        if origin.resource and (NS_USER, "x") in st.children:
            # §6.1: a private message from a room occupant (over a server-to-server link; a
            # local room delivers them itself), already sent to each joined session.
            return
        skip = set(addressed)
        skip.add(origin)  # a message between two sessions of one account: §5 covers it
        original = forwardable(st, origin.full, bare)
        self._copy("received", bare, st, original, origin.full, skip)

    def sent(self, origin: C2SStream, st: Stanza, target: tuple[str, ...] | None) -> None:
        """At "message/sent", §5: `origin` sent a message that was routed: a copy for each of
        its account's other carbons-enabled sessions."""
        if origin.bare not in self.accounts or not eligible(st):
            return
        to = origin.bare if target is None else target[3]
        if target is not None and target[2]:
            to = f"{to}/{target[2]}"
        if target is None or target[3] == origin.bare:
            # To one of the account's own sessions: `received` made the copies, leaving out
            # the sessions the router delivered the original to.
            return
        original = forwardable(st, origin.full, to)
        skip: set[Any] = {origin}
        if target[2] and self.router.is_service(target[1]):
            # §6.1 note: a private message to a room occupant goes to the sessions that
            # share the sender's nickname in that room.
            occupants = self._occupants(target[1], target[0])
            mine = occupants.get(origin.full)
            for session in self.accounts[origin.bare].values():
                if mine is None or occupants.get(session.full) is not mine:
                    skip.add(session)
            original = _with_muc_x(original)
        self._copy("sent", origin.bare, st, original, to, skip)

    def _copy(
        self, direction: str, bare: str, st: Stanza, original: bytes, peer: str, skip: set[Any]
    ) -> None:
        sessions = self.accounts.get(bare)
        if not sessions:
            return
        mtype = st.attrs.get("type", "normal")
        wrapper = f"<{direction} xmlns='{NS}'>"
        for session in list(sessions.values()):
            if session in skip:
                continue
            privacy = session.stanza_filter
            if privacy is not None and not privacy.allows_in(PRIVACY_MESSAGE, peer):
                continue  # XEP-0016 §2.13, as for a message from the conversation partner
            # §4/§5: from the bare JID, to the session, the original in <forwarded/>.
            session.send(forwarded_message(bare, session.full, mtype, wrapper, original))

    def _occupants(self, domain: str, name: str) -> dict[str, Any]:
        """Occupants by full JID of the room `name` at the MUC service `domain`."""
        muc = self.hub.get("muc")
        service = None if muc is None else muc.services.get(domain)
        room = None if service is None else service.rooms.get(name)
        return {} if room is None else room.by_jid


def _with_muc_x(original: bytes) -> bytes:
    """§6.1 note: the <x/> that marks a private message from a room (the room adds it to
    what the occupant gets, room.py)."""
    if f"xmlns='{NS_USER}'".encode() in original or f'xmlns="{NS_USER}"'.encode() in original:
        return original
    return append_child(original, f"<x xmlns='{NS_USER}'/>".encode())


MODULE = CarbonsModule
