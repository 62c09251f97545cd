"""XEP-0198 stream management for client streams: acknowledgements and session resumption.

The state of one session is a `StreamManagement` object in `Session.sm` (None without stream
management: the router's `Session.send` then does nothing more than a None check). With it,
`Session.send` hands every stanza to `StreamManagement.sent`, which counts it, keeps it until
the client acknowledges it, writes it through `Session.send_uncounted` (what stream-level
elements use) and asks for an acknowledgement every `ack_request_every` stanzas
(while that many are unacknowledged), and once the messages sent go quiet for
`ack_request_after` seconds with some of them unacknowledged: most clients acknowledge only
when asked, and a message the client got but never acknowledged is sent again (resumed) or
stored offline (the session expired) and so reaches it twice.

Resumption (§5): a session enabled with resume='true' whose connection is lost without a
closing handshake stays bound in the router, detached (no transport: stanzas for it are only
kept), for `resume_timeout` seconds or the client's shorter 'max'. Presence is left alone in
that time: contacts see the resource as it was. A new stream that authenticated as the same
account takes it over with <resume/>; the stream code (c2s.py) moves the new connection into
the old session object, so every module's per-session state and references stay valid.

When a session with stream management ends for good (expired, closed, replaced), what it was
sent and never acknowledged is handled as a stanza for an unavailable resource (§4, RFC 6121
§8.5.3.2), except what would reach another resource twice, see `handle_unacknowledged`.

A detached session's queue outlives a crash (issue "Acknowledged means durable", item 4): at
detach, and for every stanza routed to it while detached, the messages that policy would
redeliver or store offline are also written to offline storage (`keep_detached`; the offline
module commits them at the turn's "turn/commit", before the <a/> that acknowledges them to
their sender leaves). Resumption resends the in-memory queue, and a stored copy leaves storage
with the client's <a/>; at the session's end the policy runs as before, and a stored copy is
deleted when its message went elsewhere or stays as the offline message it would have become.
After a restart the account's next login gets the stored copies as offline messages.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
import weakref
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

from lxml import etree

from .. import ns
from .._router import with_delay
from ..delay import NS_DELAY, OFFLINE_REASON
from ..delay import stamp as xep0082_stamp
from ..errors import StanzaError, stanza_error_bytes
from ..jid import JIDError, parse_jid

if TYPE_CHECKING:
    from ..config import StreamManagementConfig
    from .c2s import C2SStream

log = logging.getLogger("fastxmpp.sm")

NS_SM = "urn:xmpp:sm:3"
FEATURE = f"<sm xmlns='{NS_SM}'/>"
REQUEST = f"<r xmlns='{NS_SM}'/>".encode()
# §4: 'h' is an xs:unsignedInt that wraps to zero after 2^32 - 1.
H_MODULO = 1 << 32
# Ended sessions whose SM-ID and last 'h' are remembered for <failed h=.../> (§5).
ENDED_REMEMBERED = 1000
# Message types nobody else gets when the session they were sent to ended unacknowledged
# (XEP-0198 §4: handled as for a resource that went away, RFC 6121 §8.5.3.2.1; a normal
# message that reached the session is redelivered like a chat one rather than lost).
NOT_REDELIVERED = frozenset(("groupchat", "headline", "error"))
# Payloads made for the one session they were sent to: XEP-0280 carbon copies (the other
# resources got their own) and XEP-0313 query results (only the asking session wants them).
SESSION_PAYLOADS = frozenset((ns.CARBONS, ns.MAM))
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


class StreamManagement:
    """Counters and the unacknowledged queue of one session (§4)."""

    __slots__ = (
        "acked",
        "expiry",
        "max_bytes",
        "max_stanzas",
        "overflowing",
        "persisted",
        "quiet",
        "received",
        "release_stored",
        "request_after",
        "request_every",
        "since_request",
        "sm_id",
        "stored",
        "timeout",
        "unacked",
        "unacked_bytes",
    )

    def __init__(self, settings: StreamManagementConfig, sm_id: str | None, timeout: float):
        self.sm_id = sm_id  # None: acknowledgements only, no resumption
        self.timeout = timeout
        self.received = 0  # 'h': stanzas handled from the client
        self.acked = 0  # the client's latest 'h'
        # Stanzas sent since `acked`, with the time each was sent (for <delay/>).
        self.unacked: deque[tuple[bytes, float]] = deque()
        self.unacked_bytes = 0
        self.since_request = 0
        self.request_every = settings.ack_request_every
        self.request_after = settings.ack_request_after
        # Set while a message sent waits for the output to go quiet (`request_after`).
        self.quiet: asyncio.TimerHandle | None = None
        self.max_stanzas = settings.max_unacked_stanzas
        self.max_bytes = settings.max_unacked_bytes
        self.overflowing = False
        self.expiry: asyncio.TimerHandle | None = None  # set while detached
        # Stanzas sent that are also still in offline storage, by their number in the
        # stream (1 = the first sent): they leave storage only when the client acknowledges
        # them (`release_stored(keys)`), and stay there if the session ends without that.
        self.stored: dict[int, bytes] = {}
        self.release_stored: Callable[[list[bytes]], None] | None = None
        # Stanzas sent (or held) while detached whose copy was written to offline storage so
        # that a crash loses none of them, by their number: released like `stored` when
        # acknowledged; at the session's end the policy decides whether the copy stays.
        self.persisted: dict[int, bytes] = {}

    @property
    def detached(self) -> bool:
        return self.expiry is not None

    @property
    def sent_count(self) -> int:
        return (self.acked + len(self.unacked)) % H_MODULO

    def sent(self, session: C2SStream, data: bytes) -> None:
        """`Session.send` with stream management on: count, keep, queue; ask for an ack
        every `request_every` stanzas while that many are unacknowledged, so that the
        queue stays short."""
        sent_at = time.time()
        self.unacked.append((data, sent_at))
        self.unacked_bytes += len(data)
        if self.expiry is not None:
            # Detached: kept for a resumption, and on disk before the sender's <a/>.
            keep_detached(session, self, [(self.sent_count, data, sent_at)])
        session.send_uncounted(data)
        self.since_request += 1
        # A client that acknowledges on its own (§4 allows it) is not asked.
        if self.since_request >= self.request_every and len(self.unacked) >= self.request_every:
            self.since_request = 0
            session.send_uncounted(REQUEST)
        elif self.quiet is None and self.request_after > 0 and data.startswith(b"<message"):
            # Messages are what the end of a session sends again; one timer per burst.
            self.quiet = asyncio.get_running_loop().call_later(
                self.request_after, self._ask_if_quiet, session
            )
        if (
            len(self.unacked) > self.max_stanzas or self.unacked_bytes > self.max_bytes
        ) and not self.overflowing:
            self.overflowing = True
            # Later: the router may be iterating over the session table right now.
            asyncio.get_running_loop().call_soon(session.unacked_overflow)

    def _ask_if_quiet(self, session: C2SStream) -> None:
        """`request_after` seconds after a message: <r/> if nothing was sent since for that
        long and something sent since the last <r/> is unacknowledged; if more was sent
        meanwhile, again once that has gone quiet."""
        self.quiet = None
        if session.sm is not self or self.expiry is not None:
            return  # ended, or detached: the resumption's 'h' tells
        if not self.since_request or not self.unacked:
            return  # asked since, or acknowledged
        idle = time.time() - self.unacked[-1][1]
        if idle < self.request_after:
            self.quiet = asyncio.get_running_loop().call_later(
                self.request_after - idle, self._ask_if_quiet, session
            )
            return
        self.since_request = 0
        session.send_uncounted(REQUEST)

    def keep_stored(self, data: bytes, key: bytes, release: Callable[[list[bytes]], None]) -> bool:
        """`data`, just sent, is also in offline storage under `key`: it is deleted from
        there when the client acknowledges it, not when it was written (a crash in between
        would lose it). False when `data` is not the stanza last sent (the caller deletes it
        itself)."""
        if not self.unacked or self.unacked[-1][0] is not data:
            return False
        self.stored[self.sent_count] = key
        self.release_stored = release
        return True

    def handled(self) -> None:
        """A stanza from the client was handled (§4)."""
        self.received = (self.received + 1) % H_MODULO

    def acknowledge(self, h: int) -> bool:
        """The client handled `h` stanzas (an <a/>, or the 'h' of <resume/>): drop them from
        the queue. False when it claims more than it was sent (the queue is unchanged)."""
        count = (h - self.acked) % H_MODULO
        if count > len(self.unacked):
            return False
        unacked = self.unacked
        released = []
        for number in range(self.acked + 1, self.acked + count + 1):
            self.unacked_bytes -= len(unacked.popleft()[0])
            if self.stored or self.persisted:
                key = self.stored.pop(number % H_MODULO, None) or self.persisted.pop(
                    number % H_MODULO, None
                )
                if key is not None:
                    released.append(key)
        self.acked = h
        if released and self.release_stored is not None:
            self.release_stored(released)
        if self.overflowing and len(unacked) <= self.max_stanzas:
            self.overflowing = self.unacked_bytes > self.max_bytes
        return True

    def answer(self) -> bytes:
        return f"<a xmlns='{NS_SM}' h='{self.received}'/>".encode()

    def holds(self, number: int) -> bool:
        """Whether the stanza sent as `number` is still unacknowledged."""
        return 0 < (number - self.acked) % H_MODULO <= len(self.unacked)

    def unacknowledged(self) -> list[tuple[int, bytes, float]]:
        """(number, stanza, time sent) of what the client has not acknowledged."""
        first = self.acked + 1
        return [
            (number % H_MODULO, data, sent_at)
            for number, (data, sent_at) in enumerate(self.unacked, first)
        ]

    def take_unacknowledged(self) -> list[tuple[bytes, float, bytes | None]]:
        """What the client never acknowledged, except what offline delivery sent it (still
        stored: delivered again from there at the next initial presence); each with the
        key of the copy written while detached, None without one."""
        pending = [
            (data, sent_at, self.persisted.get(number))
            for number, data, sent_at in self.unacknowledged()
            if number not in self.stored
        ]
        self.stored.clear()
        self.persisted.clear()
        self.unacked.clear()
        self.unacked_bytes = 0
        return pending


def parse_h(value: str | None) -> int | None:
    """An 'h' attribute: an xs:unsignedInt (§4), or None when it is not one."""
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 10:
        return None
    h = int(value)
    return h if h < H_MODULO else None


def enabled_xml(sm: StreamManagement) -> bytes:
    if sm.sm_id is None:
        return f"<enabled xmlns='{NS_SM}'/>".encode()
    # §5: resume='true' with the SM-ID; 'max' is our resumption time in seconds.
    seconds = max(1, math.ceil(sm.timeout))
    sm_id = quoteattr(sm.sm_id)
    return f"<enabled xmlns='{NS_SM}' id={sm_id} resume='true' max='{seconds}'/>".encode()


def resumed_xml(sm: StreamManagement) -> bytes:
    assert sm.sm_id is not None
    return f"<resumed xmlns='{NS_SM}' previd={quoteattr(sm.sm_id)} h='{sm.received}'/>".encode()


def failed_xml(condition: str, h: int | None = None) -> bytes:
    """§6: <failed/> with a stanza error condition (RFC 6120 §8.3.3)."""
    h_attr = f" h='{h}'" if h is not None else ""
    return (
        f"<failed xmlns='{NS_SM}'{h_attr}><{condition} xmlns='{ns.STANZA_ERRORS}'/></failed>"
    ).encode()


def too_high_xml(h: int, sm: StreamManagement) -> str:
    """§6: the application condition of the undefined-condition stream error."""
    return f"<handled-count-too-high xmlns='{NS_SM}' h='{h}' send-count='{sm.sent_count}'/>"


class ResumptionTable:
    """Resumable sessions by SM-ID, and the last 'h' of lately ended ones (§5)."""

    def __init__(self) -> None:
        self.sessions: dict[str, C2SStream] = {}
        self.ended: OrderedDict[str, tuple[str, int]] = OrderedDict()

    def register(self, session: C2SStream) -> str:
        # §5: opaque, never reused while the server runs (192 random bits).
        sm_id = secrets.token_urlsafe(24)
        self.sessions[sm_id] = session
        return sm_id

    def find(self, sm_id: str, bare: str) -> C2SStream | None:
        session = self.sessions.get(sm_id)
        # Another account's SM-ID is as unknown as a made-up one: nothing leaks.
        return session if session is not None and session.bare == bare else None

    def ended_h(self, sm_id: str, bare: str) -> int | None:
        record = self.ended.get(sm_id)
        return record[1] if record is not None and record[0] == bare else None

    def forget(self, session: C2SStream, sm: StreamManagement) -> None:
        if sm.sm_id is None or self.sessions.get(sm.sm_id) is not session:
            return
        del self.sessions[sm.sm_id]
        self.ended[sm.sm_id] = (session.bare, sm.received)
        if len(self.ended) > ENDED_REMEMBERED:
            self.ended.popitem(last=False)


_TABLES: weakref.WeakKeyDictionary[Any, ResumptionTable] = weakref.WeakKeyDictionary()


def resumption_table(server: Any) -> ResumptionTable:
    """The server's table (one per Server object)."""
    table = _TABLES.get(server)
    if table is None:
        table = _TABLES[server] = ResumptionTable()
    return table


# --- a session ended with stanzas it never acknowledged (§4) -------------------------------


def handle_unacknowledged(
    session: C2SStream, unacked: list[tuple[bytes, float, bytes | None]]
) -> None:
    """§4: "A server SHOULD treat unacknowledged stanzas in the same way that it would treat
    a stanza sent to an unavailable resource" (RFC 6121 §8.5.3.2); the session has left the
    router already. Our choices:

    - chat and normal messages (except chat states alone, XEP-0160 §3) go to the account's
      best available resources (RFC 6121 §8.5.2.1.1) when this session was addressed by its
      full JID or had a higher priority than they have, or to those of them that became
      available after it was sent (for a message to the bare JID, the others got their own
      copy at the time); with nobody available they go to offline storage;
      if storage is off or full the sender gets service-unavailable. Both carry an
      XEP-0203 <delay/> with the time the message was first sent to this session;
    - §4 warns of duplicates: none of that for a message the account's other
      carbons-enabled sessions got a copy of (XEP-0280 §4; only resources without carbons
      get it), nor for what was made for this session alone: carbon copies, archive query
      results (XEP-0313) and private messages from a room occupant (XEP-0045 §7.5: the
      room sent them to every session under the nickname; the others are not in the room);
    - iq get/set: service-unavailable to the sender (§8.5.3.2.3);
    - groupchat, headline and error messages, presence, iq results: dropped (§8.5.3.2.1,
      §8.5.3.2.2).

    Each entry is (stanza, time sent, key of its copy in offline storage written while the
    session was detached, or None). A stored copy is what "stored offline" would write: it
    stays (not stored twice); whatever else the message's fate, it is deleted (delivered once)."""
    if not unacked:
        return
    hub = session.server.modules  # offline storage and carbons, through its interface
    router = session.router
    offline = hub.get("offline")
    outcome: Counter[str] = Counter()
    best, top = _best_resources(session)
    to_store: list[tuple[bytes, str | None, Any]] = []
    released: list[bytes] = []  # stored copies of messages that went elsewhere or nowhere
    kept: list[bytes] = []  # stored copies that stay as offline messages
    for data, sent_at, key in unacked:
        what, el = _classify(router, data)
        if what == "bounce":
            _bounce(session, el, "iq")
            outcome["bounced"] += 1
            continue
        if what != "message":
            outcome[what] += 1
            if key is not None:
                released.append(key)
            continue
        fate, recipients = _fate(session, el, sent_at, best, top, offline)
        if fate == "store":
            if key is not None:
                kept.append(key)
                outcome["stored offline (while detached)"] += 1
            else:
                to_store.append((data, None if _has_delay(el) else xep0082_stamp(sent_at), el))
            continue
        if fate == "redelivered":
            stamp = None if _has_delay(el) else xep0082_stamp(sent_at)
            copy = with_delay(data, session.domain, stamp, OFFLINE_REASON) if stamp else data
            for other in recipients:
                other.send(copy)
        if key is not None:
            released.append(key)
        outcome[fate] += 1
    if offline is not None and (released or kept):
        offline.detached_copies_settled(released, kept)
    stored = 0
    if to_store and router.user_exists(session.domain, session.local):
        # One commit for all of them, however many there are.
        messages = [(data, stamp) for data, stamp, _el in to_store]
        stored = hub.store_unacknowledged(session.domain, session.local, messages)
        if stored:
            outcome["stored offline"] += stored
    for _data, _when, el in to_store[stored:]:
        _bounce(session, el, "message")
        outcome["bounced"] += 1
    log.info(
        "%s ended with %d unacknowledged stanzas: %s",
        session.full,
        len(unacked),
        ", ".join(f"{n} {what}" for what, n in sorted(outcome.items())),
    )


def keep_detached(
    session: C2SStream, state: StreamManagement, entries: list[tuple[int, bytes, float]]
) -> None:
    """The session is detached: of `entries` (number, stanza, time sent), write the messages
    that `handle_unacknowledged` would redeliver or store offline to offline storage too, so
    that a crash before the session ends loses none of them (issue "Acknowledged means
    durable", item 4). Committed at the turn's "turn/commit"; what the account's offline
    quota has no room for stays in memory only, handled at the end as before."""
    offline = session.server.modules.get("offline")
    if offline is None or offline.store is None:
        return
    best, top = _best_resources(session)
    wanted: list[tuple[int, bytes, str | None]] = []
    for number, data, sent_at in entries:
        if number in state.stored or number in state.persisted:
            continue  # an offline message still stored, or written already
        what, el = _classify(session.router, data)
        if what != "message":
            continue
        fate, _recipients = _fate(session, el, sent_at, best, top, offline)
        if fate in ("store", "redelivered"):
            wanted.append((number, data, None if _has_delay(el) else xep0082_stamp(sent_at)))
    if wanted:
        offline.keep_for_detached(session, state, wanted)


def _best_resources(session: C2SStream) -> tuple[list[Any], int]:
    """The account's other available resources of the highest non-negative priority
    (RFC 6121 §8.5.2.1.1), and that priority (-1 without any)."""
    others = [
        s
        for s in session.router.resources(session.bare).values()
        if s is not session and s.available and s.priority >= 0
    ]
    top = max((s.priority for s in others), default=-1)
    return [s for s in others if s.priority == top], top


def _classify(router: Any, data: bytes) -> tuple[str, Any]:
    """With the parsed stanza: "message" for a message the policy redelivers or stores,
    "bounce" for an iq get/set, else the reason it is dropped."""
    try:
        el = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError:
        return "unreadable", None
    qname = etree.QName(el)
    if qname.namespace not in (None, ns.CLIENT):
        return "dropped", el
    kind = qname.localname
    stype = el.get("type")
    if kind == "iq" and stype in ("get", "set"):
        return "bounce", el
    if kind != "message" or stype in NOT_REDELIVERED or _only_chat_states(el):
        return "dropped", el
    children = _payloads(el)
    if any(namespace in SESSION_PAYLOADS for namespace, _ in children) or _from_occupant(
        router, el, children
    ):
        return "dropped (made for this session)", el
    return "message", el


def _fate(
    session: C2SStream,
    el: Any,
    sent_at: float,
    best: list[Any],
    top: int,
    offline: Any,
) -> tuple[str, list[Any]]:
    """What the policy does with a message `_classify` called one: "redelivered" to the
    sessions returned, "store" offline, or the reason nobody needs it again."""
    children = _payloads(el)
    stype = el.get("type")
    copied = session.server.modules.carbon_copied_to(session, stype, children, sent_at)
    if best:
        if el.get("to") == session.full or top < session.priority:
            missed = best  # it was for this session alone
        else:
            # RFC 6121 §8.5.2.1.1: to the bare JID, so the resources available then got
            # their own copy; one that came online since did not.
            since = {} if offline is None else offline.available_since
            missed = [other for other in best if since.get(other, 0.0) > sent_at]
            if not missed:
                return "dropped (delivered to another resource)", []
        recipients = [other for other in missed if other not in copied]
        if not recipients:
            return "dropped (carbon copies delivered)", []
        return "redelivered", recipients
    if copied:
        return "dropped (carbon copies delivered)", []
    return "store", []


def _payload_namespaces(el: Any) -> list[str | None]:
    return [etree.QName(child).namespace for child in el if isinstance(child.tag, str)]


def _payloads(el: Any) -> list[tuple[str, str]]:
    """(namespace, name) of each child, as the parser gives them for a received stanza (a
    child without a namespace inherits jabber:client from the stream)."""
    names = (etree.QName(child) for child in el if isinstance(child.tag, str))
    return [(name.namespace or ns.CLIENT, name.localname) for name in names]


def _from_occupant(router: Any, el: Any, children: list[tuple[str, str]]) -> bool:
    """A private message from an occupant of a room served here (XEP-0045 §7.5, marked with
    <x xmlns='muc#user'/>)."""
    if (ns.MUC_USER, "x") not in children:
        return False
    sender = el.get("from") or ""
    domain = sender.partition("@")[2].partition("/")[0]
    return "/" in sender and bool(router.is_service(domain))


def _only_chat_states(el: Any) -> bool:
    found = _payload_namespaces(el)
    return bool(found) and all(namespace == ns.CHATSTATES for namespace in found)


def _has_delay(el: Any) -> bool:
    return NS_DELAY in _payload_namespaces(el)


def _bounce(session: C2SStream, el: Any, kind: str) -> None:
    """service-unavailable to the sender, when it is a session of this server."""
    sender = el.get("from")
    if not sender:
        return
    try:
        jid = parse_jid(sender)
    except JIDError:
        return
    if not jid.resource or not jid.local:
        return
    target = session.router.session(jid.bare, jid.resource)
    if target is None:
        return
    error = StanzaError("service-unavailable", "the recipient's session ended")
    target.send(stanza_error_bytes(kind, el.get("id"), el.get("to") or session.full, sender, error))
