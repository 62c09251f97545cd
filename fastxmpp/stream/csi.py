"""XEP-0352 Client State Indication, and what the server does with it.

A client that says it is <inactive/> (a mobile app in the background) does not need every
presence update or typing notification the moment it happens. While a session is inactive its
`Session.csi` is a `HeldStanzas` and `Session.send` offers it each stanza first (an active
session has None there: one pointer comparison per stanza, as for privacy lists):

- unimportant stanzas wait: presence updates (no type, or unavailable; only the latest per
  sender is kept, an older one is dropped as outdated) and XEP-0085 chat state notifications
  without a body (carbon copies of them too), all in arrival order;
- anything else (a message with a body, an iq, a subscription request, an error, ...) is
  important: what waits goes out first, then it, so the client sees the order in which the
  server sent them (RFC 6120 §10.1);
- more than `csi.max_held_stanzas` waiting: all of it goes out;
- <active/> sends what waits; a resumed stream (XEP-0198) starts active (§5.3), so does a new
  one.

XEP-0198 counts a held stanza when it is written (`Session.deliver`), never before: the
client's 'h' and our count stay the same whether or not something waits. A held stanza lost
with its session is an outdated presence or a typing notification: nothing to redeliver.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from lxml import etree

from .. import ns
from .._parser import Stanza, StreamParser
from .._router import start_tag_attr

if TYPE_CHECKING:
    from .c2s import C2SStream

NS = "urn:xmpp:csi:0"
FEATURE = f"<csi xmlns='{NS}'/>"
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
CHATSTATES = ns.CHATSTATES
_CHATSTATES = CHATSTATES.encode()
BODY = (ns.CLIENT, "body")
# Children that carry another message inside (XEP-0280 carbons, XEP-0297, XEP-0313):
# its body or chat state is not a child of the outer message.
WRAPPERS = frozenset((ns.CARBONS, ns.FORWARD, ns.MAM))
# The root the classifying parser reads messages inside, and its limits: the server's own
# output, bounded by what it accepted (limits.max_stanza_size) or made.
_READER_ROOT = f"<stream:stream xmlns='{ns.CLIENT}' xmlns:stream='{ns.STREAMS}'>".encode()
_READER_LIMITS = (1 << 24, 10000, 10000, 1 << 20)
_reader: StreamParser | None = None
# Messages the reader parses before a new one replaces it: expat keeps every element and
# attribute name it met, which senders choose; this bounds what one parser can collect.
READER_USES = 10000
_reader_uses = 0
# Presence a client is notified of (RFC 6121 §4.7.1); subscription requests matter.
PRESENCE_UPDATES = frozenset((None, "unavailable"))


def unimportant(data: bytes) -> tuple[str, str] | None:
    """A key for a stanza that may wait ('presence', sender: the latest replaces the one
    before; or 'chat state', a serial number), None for one that goes out now."""
    if data.startswith(b"<presence"):
        # Presence broadcasts are most of what an inactive session is sent: only the start
        # tag is read (compiled), not the element parsed (lxml took 5-15 µs for that).
        try:
            if start_tag_attr(data, "type") not in PRESENCE_UPDATES:
                return None
            return ("presence", start_tag_attr(data, "from") or "")
        except ValueError:
            return None  # not well-formed: nothing to decide on, out it goes
    if data.startswith(b"<message") and _CHATSTATES in data:
        st = _read(data)
        if st is None:
            return None  # not well-formed: out it goes
        children = st.children
        if BODY in children:
            return None
        state = False
        for namespace, _name in children:
            if namespace in WRAPPERS:
                return _deep_chat_state(data)  # a message inside: read the whole tree
            if namespace == CHATSTATES:
                state = True
        if b"body" in data:
            return _deep_chat_state(data)  # a body below the children
        if state and st.attrs.get("type") != "error":
            return ("chat state", str(next(_serial)))
    return None


def _read(data: bytes) -> Stanza | None:
    """The element `data` as the compiled parser reads a stanza (name, attributes, the
    (namespace, name) of each child), inside a client stream's root (what the element
    inherits from it); None when `data` is not one well-formed element."""
    global _reader, _reader_uses
    if _reader is None or _reader_uses >= READER_USES:
        _reader = StreamParser(*_READER_LIMITS)
        _reader.feed(_READER_ROOT)
        _reader_uses = 0
    _reader_uses += 1
    events = _reader.feed(data)
    if len(events) != 1 or type(events[0]) is not Stanza or _reader.failed:
        _reader = None  # a fresh one next time
        return None
    return events[0]


def _deep_chat_state(data: bytes) -> tuple[str, str] | None:
    """A message with a body somewhere below its children, or one that forwards another (a
    XEP-0280 carbon copy): the whole tree is read; a chat state anywhere in it without a
    body in jabber:client anywhere is one."""
    el = _parse(data)
    if el is None or el.get("type") == "error":
        return None
    names = [etree.QName(e) for e in el.iter() if isinstance(e.tag, str)]
    if any(q.localname == "body" and q.namespace in (None, ns.CLIENT) for q in names):
        return None
    if any(q.namespace == CHATSTATES for q in names):
        return ("chat state", str(next(_serial)))
    return None


_serial = itertools.count()


def _parse(data: bytes) -> Any:
    try:
        return etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError:
        return None


class HeldStanzas:
    """`Session.csi` of an inactive session: what waits, in arrival order."""

    __slots__ = ("held", "limit")

    def __init__(self, limit: int) -> None:
        self.held: dict[tuple[str, str], bytes] = {}
        self.limit = limit

    def hold(self, session: C2SStream, data: bytes) -> bool:
        """`Session.send` asks: True when `data` waits; False when it is to go out now,
        after everything that waited (which this call has just sent)."""
        key = unimportant(data)
        if key is None:
            self.flush(session)
            return False
        held = self.held
        held.pop(key, None)  # an outdated presence of the same sender; it moves to the end
        held[key] = data
        if len(held) > self.limit:
            self.flush(session)
        return True

    def flush(self, session: C2SStream) -> None:
        held, self.held = self.held, {}
        for data in held.values():
            session.deliver(data)


def client_state(session: C2SStream, st: Any, limit: int) -> bool:
    """<inactive/> or <active/> (§5); False for another element in the namespace. There is
    no reply to either (§5.1)."""
    return set_state(session, st.name, limit)


def set_state(session: C2SStream, name: str, limit: int) -> bool:
    """The state named `name` ("inactive", "active"; also inline in a XEP-0386 bind);
    False for another name."""
    if name == "inactive":
        if session.csi is None:
            session.csi = HeldStanzas(limit)
        return True
    if name == "active":
        make_active(session)
        return True
    return False


def make_active(session: C2SStream) -> None:
    """Everything that waits goes out, and nothing waits any more."""
    state = session.csi
    if state is not None:
        session.csi = None
        state.flush(session)
