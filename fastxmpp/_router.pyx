# cython: language_level=3
"""Stanza routing: the session table and the addressing rules of RFC 6120 §10 and
RFC 6121 §8, with write batching.

The router knows nothing about rosters, rooms or any other feature. Modules register iq
handlers by payload namespace, service domains, and handlers for the named stages of the
stanza pipeline (fastxmpp/pipeline.py holds the stages and their order); a stage without
handlers costs one check. Undeliverable stanzas raise `StanzaError`; the stream turns it into
an error reply (never in answer to an error, RFC 6120 §8.3.1).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.string cimport memcpy
from posix.time cimport CLOCK_REALTIME, clock_gettime, timespec
from html import unescape
from sys import getsizeof
from xml.sax.saxutils import escape, quoteattr

from fastxmpp._parser cimport Stanza

from fastxmpp.errors import StanzaError, StreamError

cdef str CLIENT_NS = "jabber:client"
cdef str FORWARD_NS = "urn:xmpp:forward:0"  # XEP-0297
cdef str DELAY_NS = "urn:xmpp:delay"  # XEP-0203
# Memory the prepared-'to' cache may hold; only JIDs at local hosts and services enter it,
# since any client can name any number of others (docs/SECURITY.md, "Every limit"). Some
# 40,000 ordinary JIDs; when full it starts over.
cdef Py_ssize_t JID_CACHE_BYTES = 16 * 1024 * 1024
# Per entry beyond its strings: the tuple (88 bytes) and the dict slot with its share of
# the spare room.
cdef Py_ssize_t JID_ENTRY_OVERHEAD = 344

# Types an iq may have (RFC 6120 §8.2.3).
cdef frozenset IQ_TYPES = frozenset(("get", "set", "result", "error"))
# Presence types other than the broadcast of availability (RFC 6121 §4.7.1).
cdef frozenset SUBSCRIPTION_TYPES = frozenset(
    ("subscribe", "subscribed", "unsubscribe", "unsubscribed"))
cdef frozenset PRESENCE_TYPES = frozenset(
    ("unavailable", "subscribe", "subscribed", "unsubscribe", "unsubscribed", "probe",
     "error"))

# Kinds of stanza a session's `stanza_filter` tells apart, as bits (the kinds of XEP-0016
# §2.1). A session's `stanza_filter` is None
# (nothing to check, the common case) or an object with allows_in(kind, sender_full) and
# refuse_out(origin, st, target), set by the module that owns it.
cdef int K_MESSAGE = 1
cdef int K_IQ = 2
cdef int K_PRESENCE_IN = 4
cdef int K_PRESENCE_OUT = 8
cdef int K_OTHER = 16
KIND_MESSAGE = K_MESSAGE
KIND_IQ = K_IQ
KIND_PRESENCE_IN = K_PRESENCE_IN
KIND_PRESENCE_OUT = K_PRESENCE_OUT
KIND_OTHER = K_OTHER


# --- byte-level stanza edits ----------------------------------------------------------------
# The one place where serialized stanzas are changed without a tree (docs/ARCHITECTURE.md,
# principle 2): the router, the modules and the streams all use these. The input is one
# well-formed element as it goes out (from `Stanza.with_attrs` or made by the server).

cdef inline bint _space(unsigned char c) noexcept:
    return c == 32 or c == 9 or c == 10 or c == 13


cdef Py_ssize_t _name_end(bytes data, Py_ssize_t start):
    """Where the tag name that begins at `start` ends (white space, > or /)."""
    cdef Py_ssize_t end = start
    cdef Py_ssize_t size = len(data)
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(data)
    cdef unsigned char c
    while end < size:
        c = p[end]
        if _space(c) or c == 62 or c == 47:
            break
        end += 1
    return end


cdef Py_ssize_t _tag_end(bytes data):
    """Where the start tag's name ends: the place an attribute goes in."""
    return _name_end(data, 1)


cdef bytes _attr(str name, str value):
    """' name="value"', byte for byte what `quoteattr` makes; without its string
    replacements for the values that need none (JIDs nearly always)."""
    cdef bytes plain = _plain_attr(name, value)
    if plain is not None:
        return plain
    return (" " + name + "=" + quoteattr(value)).encode()


cdef bytes _plain_attr(str name, str value):
    """' name="value"' when the value needs no escaping, nor a choice of quote by
    `quoteattr` (& < > " ' and tab, newline, return decide); else None."""
    cdef bytes encoded = value.encode("utf-8")
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(encoded)
    cdef Py_ssize_t i
    cdef unsigned char c
    for i in range(len(encoded)):
        c = p[i]
        if c == 38 or c == 60 or c == 62 or c == 34 or c == 39 or c == 9 or c == 10 or c == 13:
            return None
    return b" " + name.encode() + b'="' + encoded + b'"'


cdef bytes _splice3(bytes data, Py_ssize_t at, bytes middle):
    """data[:at] + middle + data[at:], in one allocation."""
    cdef Py_ssize_t size = len(data)
    cdef Py_ssize_t extra = len(middle)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, size + extra)
    cdef char *dst = PyBytes_AS_STRING(out)
    cdef const char *src = PyBytes_AS_STRING(data)
    memcpy(dst, src, at)
    memcpy(dst + at, PyBytes_AS_STRING(middle), extra)
    memcpy(dst + at + extra, src + at, size - at)
    return out


cpdef bytes insert_attr(bytes data, str name, str value):
    """`data` with the attribute `name` added to its start tag (it must not be there)."""
    return _splice3(data, _tag_end(data), _attr(name, value))


cpdef str start_tag_attr(bytes data, str name):
    """The value of the unprefixed attribute `name` on the start tag `data` begins with
    (entities and character references replaced), None when the tag has none; ValueError
    when the start tag is not well-formed. For bytes the server made or passed on, which
    are: it reads the one tag, not the element."""
    cdef bytes wanted = name.encode()
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(data)
    cdef Py_ssize_t size = len(data)
    cdef Py_ssize_t i = _tag_end(data)
    cdef Py_ssize_t name_start, name_end, value_start
    cdef unsigned char quote
    while True:
        while i < size and _space(p[i]):
            i += 1
        if i >= size:
            raise ValueError("unterminated start tag")
        if p[i] == 62 or p[i] == 47:  # > or />
            return None
        name_start = i
        while i < size and p[i] != 61 and not _space(p[i]):  # up to = or space
            i += 1
        name_end = i
        while i < size and _space(p[i]):
            i += 1
        if i >= size or p[i] != 61 or name_end == name_start:
            raise ValueError("attribute without a value")
        i += 1
        while i < size and _space(p[i]):
            i += 1
        if i >= size or (p[i] != 34 and p[i] != 39):
            raise ValueError("attribute value not quoted")
        quote = p[i]
        value_start = i + 1
        i = value_start
        while i < size and p[i] != quote:
            i += 1
        if i >= size:
            raise ValueError("unterminated attribute value")
        i += 1
        if data[name_start:name_end] == wanted:
            value = data[value_start:i - 1].decode()
            return unescape(value) if "&" in value else value


cpdef Py_ssize_t fan_out(bytes data, list groups, str sender, int kind):
    """Send `data` (one element without 'to') to every session of `groups` (dicts of full
    JID -> Session), each copy with its own 'to' (XEP-0045 §7.4: "to" the occupant's full
    JID), except where the recipient's XEP-0016 list in force refuses stanzas of `kind`
    from `sender` (§2.13). One splice per copy, no Python work per copy for sessions
    without a list. Returns the number of copies sent."""
    cdef Py_ssize_t at = _tag_end(data)
    cdef Py_ssize_t sent = 0
    cdef dict group
    cdef Session session
    cdef object rules
    for group in groups:
        for full, session in list(group.items()):
            rules = session.stanza_filter
            if rules is not None and not rules.allows_in(kind, sender):
                continue
            session.send(_splice3(data, at, _attr("to", full)))
            sent += 1
    return sent


cpdef bytes append_child(bytes data, bytes child):
    """`data` with `child` (serialized) as its last child; a self-closing element is
    opened and closed around it."""
    cdef Py_ssize_t end, start
    if data.endswith(b"/>") and b"</" not in data:
        end = data.rfind(b"/>")
        start = data.find(b"<") + 1
        return data[:end] + b">" + child + b"</" + data[start:_name_end(data, start)] + b">"
    return _splice3(data, data.rfind(b"</"), child)


cpdef bytes delay_element(str from_jid, str stamp, str reason=""):
    """XEP-0203 §3: <delay/>, `from_jid` being the entity that delayed the stanza (None:
    no 'from') and `stamp` a XEP-0082 DateTime."""
    cdef str attrs = "xmlns='" + DELAY_NS + "'"
    if from_jid is not None:
        attrs += " from=" + quoteattr(from_jid)
    attrs += " stamp='" + stamp + "'"  # a XEP-0082 DateTime needs no escaping
    if reason:
        return ("<delay " + attrs + ">" + escape(reason) + "</delay>").encode()
    return ("<delay " + attrs + "/>").encode()


cpdef bytes with_delay(bytes data, str from_jid, str stamp, str reason=""):
    """`data` with a XEP-0203 <delay/> as its last child."""
    return append_child(data, delay_element(from_jid, stamp, reason))


cpdef bint declares_its_namespace(Stanza st):
    """Whether the stanza's bytes, as `with_attrs` writes them, declare its default
    namespace themselves: it declares it on its own tag, or it uses a prefix of the stream
    root and is written anew with every declaration it needs. Such a stanza must not get
    another xmlns (a second one is malformed), nor keep it where it goes into a stream of
    another content namespace (stream/xmlstream.py `for_peer_stream`)."""
    cdef tuple decl
    if st.needs_reserialize:
        return True
    if st.nsdecls is not None:
        for decl in st.nsdecls:
            if decl[0] is None:
                return True
    return False


cpdef bytes forwardable(Stanza st, str sender, str to):
    """The stanza as it travels, for inside a XEP-0297 <forwarded/>: 'from' stamped, 'to'
    added when it had none (`to` not None), and declared in jabber:client, which it no
    longer inherits from a stream root there."""
    cdef dict changes = {"from": sender}
    if to is not None and "to" not in st.attrs:
        changes["to"] = to
    if not declares_its_namespace(st):
        changes["xmlns"] = CLIENT_NS
    return st.with_attrs(changes)


cpdef tuple archive_copies(Stanza st, str sender, str to, bytes child):
    """The two copies the message archive makes of a message to a local account
    (modules/mam.py `received`), in one pass over the received bytes: (what is delivered:
    'from' `sender` and, unless `to` is None, 'to' `to` put in the start tag, and `child`
    (the stanza-id) as last child; what is archived: the same start tag declared in
    jabber:client, without `child`). Byte for byte `append_child(st.with_attrs(...),
    child)` and `forwardable(st, sender, to)`; None where those take their general path (an
    empty element, a 'from' already there, a value that needs escaping, a prefix declared
    on the stream root)."""
    cdef bytes stamp, to_attr = b"", attrs, xmlns = b""
    if st.needs_reserialize or st.empty or "from" in st.attrs:
        return None
    stamp = _plain_attr("from", sender)
    if stamp is None:
        return None
    if to is not None:
        if "to" in st.attrs:
            return None
        to_attr = _plain_attr("to", to)
        if to_attr is None:
            return None
    attrs = stamp + to_attr
    if not declares_its_namespace(st):
        xmlns = b' xmlns="' + CLIENT_NS.encode() + b'"'
    cdef bytes raw = st.raw
    cdef const char *src = PyBytes_AS_STRING(raw)
    cdef Py_ssize_t size = len(raw), cut = st.start_len - 1, close = raw.rfind(b"</")
    cdef Py_ssize_t n_attrs = len(attrs), n_child = len(child), n_xmlns = len(xmlns)
    # delivered: start tag + attrs | content | child | end tag
    cdef bytes delivered = PyBytes_FromStringAndSize(NULL, size + n_attrs + n_child)
    cdef char *out = PyBytes_AS_STRING(delivered)
    memcpy(out, src, cut)
    memcpy(out + cut, PyBytes_AS_STRING(attrs), n_attrs)
    memcpy(out + cut + n_attrs, src + cut, close - cut)
    memcpy(out + close + n_attrs, PyBytes_AS_STRING(child), n_child)
    memcpy(out + close + n_attrs + n_child, src + close, size - close)
    # archived: start tag + attrs + xmlns | the rest
    cdef bytes archived = PyBytes_FromStringAndSize(NULL, size + n_attrs + n_xmlns)
    out = PyBytes_AS_STRING(archived)
    memcpy(out, src, cut)
    memcpy(out + cut, PyBytes_AS_STRING(attrs), n_attrs)
    memcpy(out + cut + n_attrs, PyBytes_AS_STRING(xmlns), n_xmlns)
    memcpy(out + cut + n_attrs + n_xmlns, src + cut, size - cut)
    return delivered, archived


cpdef bytes forwarded_message(str from_jid, str to, str mtype, str wrapper, bytes inner,
                              bytes delay=b""):
    """XEP-0297: a <message/> from `from_jid` to `to` (of type `mtype` unless None) whose
    child `wrapper` (a start tag such as "<result xmlns=..." id=...>") holds a
    <forwarded/> with `delay` (a <delay/> or nothing) and the stanza `inner`."""
    cdef str name = wrapper[1:].split(None, 1)[0].rstrip(">/")
    cdef str head = ("<message xmlns='" + CLIENT_NS + "' from=" + quoteattr(from_jid)
                     + " to=" + quoteattr(to))
    if mtype is not None:
        head += " type=" + quoteattr(mtype)
    return ((head + ">" + wrapper + "<forwarded xmlns='" + FORWARD_NS + "'>").encode()
            + delay + inner + ("</forwarded></" + name + "></message>").encode())


# --- the message archive's work per message ------------------------------------------

cdef str SID_NS = "urn:xmpp:sid:0"  # XEP-0359
cdef tuple BODY = (CLIENT_NS, "body")
cdef tuple STANZA_ID = (SID_NS, "stanza-id")
cdef frozenset NOT_STORED = frozenset((("urn:xmpp:hints", "no-store"),
                                       ("urn:xmpp:hints", "no-permanent-store")))
cdef Py_ssize_t ACCOUNTS_CACHED = 10000
cdef const char *HEX = b"0123456789abcdef"


cpdef bint archivable(Stanza st):
    """XEP-0313 §6.1: chat or normal with a body, without a XEP-0334 storage hint against
    it."""
    cdef str mtype = st.attrs.get("type", "normal")
    if mtype != "chat" and mtype != "normal":
        return False
    cdef list children = st.children
    if BODY not in children:
        return False
    return NOT_STORED.isdisjoint(children)


cdef double _now():
    cdef timespec now
    clock_gettime(CLOCK_REALTIME, &now)
    return now.tv_sec + now.tv_nsec * 1e-9


cdef bytes _stanza_id(bytes head, unsigned long long number):
    """`head` (<stanza-id ... id=') and the id as 16 hex digits, closed."""
    cdef Py_ssize_t n = len(head), i
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n + 19)
    cdef char *buf = PyBytes_AS_STRING(out)
    memcpy(buf, PyBytes_AS_STRING(head), n)
    for i in range(16):
        buf[n + 15 - i] = HEX[number & 15]
        number >>= 4
    memcpy(buf + n + 16, b"'/>", 3)
    return out


cdef class ArchiveHooks:
    """The XEP-0313 user archives' work for each message, on the event loop
    (modules/mam.py hooks these methods at "message/in", "message/delivered" and
    "message/sent", and keeps everything else): whether a message is archived (§6.1, the §5
    preferences), its stanza-id and archived copy, and the rows queued for the turn's
    commit with the senders they concern. Compiled: it runs twice for each chat message
    (the recipient's archive and the sender's). A row: (account prefix, id, time, with,
    direction, serialized message), as storage/mam.py stores it."""

    # Rows not handed to the writer yet; for each message among them, who sent it (told if
    # the commit fails): (id(origin), message id) -> (origin, message id, to); the local
    # sessions whose output waits for them: id(session) -> session. The module takes them
    # (`take`) when it hands the rows over.
    cdef public list pending
    cdef public dict senders
    cdef public dict held
    cdef object module          # modules/mam.py MamModule: preferences, the rare paths
    cdef object next_number     # the store's id clock
    cdef Router router
    # bare JID -> (account prefix, start of its <stanza-id/> up to the id, whether its
    # preferences archive everything): the module's answers, kept (`forget` drops one).
    cdef dict _accounts
    # The row "message/in" stamped, queued if "message/delivered" follows for that stanza
    # (routing is synchronous: the next stanza's "message/in" comes after its fate is
    # known); the archived copy `received` made, which `sent` reuses (both archives keep
    # the same bytes); the message whose sender `queue` noted last.
    cdef Stanza _stamped
    cdef tuple _stamped_row
    cdef Stanza _forwarded
    cdef bytes _forwarded_copy
    cdef Stanza _queued

    def __init__(self, module, next_number, Router router):
        self.module = module
        self.next_number = next_number
        self.router = router
        self.pending = []
        self.senders = {}
        self.held = {}
        self._accounts = {}

    cdef tuple _account(self, str domain, str local, str bare):
        cdef tuple account = self._accounts.get(bare)
        if account is None:
            if len(self._accounts) >= ACCOUNTS_CACHED:
                self._accounts.clear()
            prefix, everything = self.module.account_entry(domain, local)
            head = ("<stanza-id xmlns='" + SID_NS + "' by=" + quoteattr(bare)
                    + " id='").encode()
            account = (prefix, head, everything)
            self._accounts[bare] = account
        return account

    def forget(self, str bare):
        """The account's preferences changed, or it is gone."""
        self._accounts.pop(bare, None)

    cpdef object received(self, Session origin, Stanza st, tuple target, object data):
        """At "message/in": a message to local account target[3]; the bytes to deliver, with
        the stanza-id of the record archived if it is delivered or stored (None: as the
        router would make them)."""
        self._stamped = None
        self._stamped_row = None
        cdef dict attrs = st.attrs
        cdef str mtype = attrs.get("type", "normal")
        if mtype != "chat" and mtype != "normal":
            return None
        cdef str local = target[0], domain = target[1], bare = target[3]
        cdef bint forged = STANZA_ID in st.children
        cdef tuple account = self._account(domain, local, bare)
        if not archivable(st) or not (account[2] or self.module.wanted(domain, local,
                                                                       origin.bare)):
            if forged:
                return self.module.without_sid(st, bare, {"from": origin.full})
            return None
        cdef str to = bare if "to" not in attrs else None
        cdef unsigned long long number = self.next_number()
        cdef bytes sid = _stanza_id(account[1], number)
        cdef bytes archived, delivered
        cdef tuple copies
        if forged:
            changes = {"from": origin.full}
            if to is not None:
                changes["to"] = to
            archived = self.module.without_sid(st, bare, changes)
            delivered = append_child(archived, sid)
        else:
            # Both copies in one pass over the message (the common case), else piece by piece.
            copies = archive_copies(st, origin.full, to, sid)
            if copies is None:
                archived = forwardable(st, origin.full, bare)
                changes = {"from": origin.full}
                if to is not None:
                    changes["to"] = to
                delivered = append_child(st.with_attrs(changes), sid)
            else:
                delivered, archived = copies
            self._forwarded = st
            self._forwarded_copy = archived
        self._stamped = st
        self._stamped_row = (account[0], number, _now(), origin.bare, "in", archived)
        return delivered

    cpdef archive_received(self, Session origin, Stanza st, tuple target, object data,
                           tuple sessions):
        """At "message/delivered": the message `received` stamped reached the account."""
        if self._stamped is st:
            self._stamped = None
            self.queue(self._stamped_row, origin, st)

    cpdef sent(self, Session origin, Stanza st, tuple target):
        """At "message/sent": a message a local account sent was routed: archived for the
        sender."""
        cdef Stanza forwarded = self._forwarded
        cdef bytes archived = self._forwarded_copy
        self._forwarded = None
        self._forwarded_copy = None
        if target is None or target[3] == origin.bare:
            return  # to itself: `received` archived it
        if forwarded is not st:
            archived = None
            if not archivable(st):
                return
        # else `received` found it archivable and built the bytes: 'to' was there (target
        # is not None), so they are the same bytes as those for the sender's archive.
        if origin.domain not in self.router._hosts:
            return  # from another server
        cdef str peer = target[3]
        cdef tuple account = self._account(origin.domain, origin.local, origin.bare)
        if not (account[2] or self.module.wanted(origin.domain, origin.local, peer)):
            return
        if archived is None:
            archived = forwardable(st, origin.full,
                                   peer if not target[2] else peer + "/" + target[2])
        self.queue((account[0], self.next_number(), _now(), peer, "out", archived), origin, st)

    cpdef queue(self, tuple row, Session origin, Stanza st):
        """Handed to the writer with the others of this turn at "turn/commit": before
        anything written in this turn (an <a/>, an iq result) can acknowledge the message."""
        if not self.pending:
            self.router.request_flush()
        self.pending.append(row)
        if self._queued is st:
            return  # the same message's other row: its sender is noted already
        self._queued = st
        cdef dict attrs = st.attrs
        msg_id = attrs.get("id")
        self.senders[(id(origin), msg_id)] = (origin, msg_id, attrs.get("to"))
        if not origin.is_remote and id(origin) not in self.held:
            # Everything written to the sender from now on (an <a/>, an iq result) waits
            # for the commit (issue "Acknowledged means durable", item 1).
            origin.hold_writes()
            self.held[id(origin)] = origin

    cpdef tuple take(self):
        """(pending rows, their senders, the sessions held for them), handed on: the next
        rows start anew."""
        cdef tuple taken = (self.pending, self.senders, self.held)
        self.pending = []
        self.senders = {}
        self.held = {}
        self._queued = None
        return taken


cdef class Session:
    """One bound (or binding) stream, as the router sees it. Streams subclass this."""

    # An entity of another server, reached over a server link (stream/s2s.py's
    # RemoteOrigin says True), rather than a client session of this server.
    is_remote = False

    def __cinit__(self):
        self.sm = None
        self._out = []
        self.queued_bytes = 0
        self._queued = False
        self.priority = 0
        self.available = False
        self.stanza_filter = None
        self.csi = None
        self.records = None
        self.write_holds = 0

    cpdef send(self, bytes data):
        """Queue a stanza; it goes out in one write with everything else queued this turn
        of the loop (docs/ARCHITECTURE.md, principle 3). With XEP-0198 stream management
        on, `sm` counts it and keeps it until the client acknowledges it (stream/sm.py).
        While the client says it is inactive (XEP-0352), `csi` may hold it (stream/csi.py)."""
        if self.csi is not None and self.csi.hold(self, data):
            return
        self.deliver(data)

    cpdef deliver(self, bytes data):
        """`send` without XEP-0352 holding: how held stanzas go out, counted by XEP-0198
        only now that they are written."""
        if self.sm is not None:
            self.sm.sent(self, data)
            return
        self._queue(data)

    def send_uncounted(self, bytes data):
        """Queue bytes that are no stanza (stream headers, features, stream errors,
        XEP-0198 elements): never counted nor kept for resending."""
        self._queue(data)

    cdef _queue(self, bytes data):
        if self.transport is None:
            return
        self._out.append(data)
        self.queued_bytes += len(data)
        if not self._queued:
            self._queued = True
            self.router._schedule(self)

    cpdef flush(self):
        """Write what is queued now (used before STARTTLS and before closing), after the
        commits of this turn that it may acknowledge ("turn/commit"), waiting for them if
        this session's output is held for one."""
        if self.router is not None:
            self.router.commit_turn(False)
            if self.write_holds:
                self.router.commit_turn(True)
        self._write()

    def hold_writes(self):
        """A commit this session's output may acknowledge (an archived message it sent) is
        under way off the loop: keep everything queued for it, in order, until the commit's
        owner calls `release_writes` ("turn/commit" in fastxmpp/pipeline.py)."""
        self.write_holds += 1

    def release_writes(self):
        """One commit `hold_writes` waited for is done: once none is left, what was kept
        goes out at the end of this turn (after this turn's own commits are handed on)."""
        if self.write_holds > 0:  # (none after drop_held_writes)
            self.write_holds -= 1
        if self.write_holds == 0 and self._out and not self._queued \
                and self.router is not None:
            self._queued = True
            self.router._schedule(self)

    def drop_held_writes(self):
        """The commit `hold_writes` waited for failed and the server stops (its storage
        failed): what was kept would acknowledge what is not on disk, so it never leaves;
        what is queued from now on (the stream error that ends the stream) goes out."""
        self.write_holds = 0
        self._out = []
        self.queued_bytes = 0

    cdef _write(self):
        cdef list out = self._out
        self._queued = False
        if not out or self.write_holds:
            return
        self._out = []
        self.queued_bytes = 0
        data = out[0] if len(out) == 1 else b"".join(out)
        if self.router is not None and self.router.tracer is not None:
            self.router.tracer(self, data, False)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


cdef class Router:

    def __init__(self, loop, parse_jid):
        self._users = {}
        self._hosts = set()
        self._jid_cache = {}
        self._jid_cache_bytes = 0
        self._dirty = []
        self._flush_scheduled = False
        self._loop = loop
        self._parse_jid = parse_jid
        self.user_exists = None
        self.tracer = None
        self.remote_hook = None
        self.directed_rewrite = None
        self._message_in = ()
        self._turn_commit = ()
        self._turn_end = ()
        self._message_offline = ()
        self._message_delivered = ()
        self._message_sent = ()
        self._presence_broadcast = ()
        self._presence_subscription = ()
        self._presence_directed = ()
        self._iq_account = ()
        self._iq_full = ()
        self._iq_response = ()
        self._iq_handlers = {}
        self._iq_for_missing = set()
        self._services = {}

    # --- configuration -------------------------------------------------------------

    def add_host(self, str domain):
        if domain in self._services:
            raise ValueError(f"{domain} is already a service")
        self._hosts.add(domain)

    def is_local(self, str domain):
        return domain in self._hosts

    def add_service(self, str domain, handler):
        """handler(origin, stanza, target) takes every stanza a client sends to `domain` or
        to a JID at it (a multi-user chat service, XEP-0045): the service applies its own
        rules and raises StanzaError as iq handlers do. `domain` must not be a host."""
        if domain in self._hosts or domain in self._services:
            raise ValueError(f"{domain} is already served")
        self._services[domain] = handler

    def is_service(self, str domain):
        return domain in self._services

    def set_iq_handler(self, str namespace, handler, bint for_missing_accounts=False):
        """handler(origin, stanza, target) -> bytes | None, for iq get/set to the server
        or to an account's bare JID; `target` is None when the iq had no 'to'. An iq to an
        account that does not exist gets service-unavailable before any handler is asked
        (RFC 6121 §8.5.1), unless its namespace is registered `for_missing_accounts` (its
        handler answers for them, e.g. XEP-0030 §8's empty disco#items)."""
        if namespace in self._iq_handlers:
            raise ValueError(f"an iq handler for {namespace} is already registered")
        self._iq_handlers[namespace] = handler
        if for_missing_accounts:
            self._iq_for_missing.add(namespace)

    def set_stage(self, str stage, tuple handlers):
        """The handlers of a pipeline stage, in the order they run (fastxmpp/pipeline.py
        keeps the table and calls this whenever a module hooks or unhooks)."""
        if stage == "message/in":
            self._message_in = handlers
        elif stage == "message/offline":
            self._message_offline = handlers
        elif stage == "message/delivered":
            self._message_delivered = handlers
        elif stage == "message/sent":
            self._message_sent = handlers
        elif stage == "presence/broadcast":
            self._presence_broadcast = handlers
        elif stage == "presence/subscription":
            self._presence_subscription = handlers
        elif stage == "presence/directed":
            self._presence_directed = handlers
        elif stage == "iq/account":
            self._iq_account = handlers
        elif stage == "iq/full":
            self._iq_full = handlers
        elif stage == "iq/response":
            self._iq_response = handlers
        elif stage == "turn/commit":
            self._turn_commit = handlers
        elif stage == "turn/end":
            self._turn_end = handlers
        else:
            raise ValueError(f"no pipeline stage {stage!r}")

    # --- session table ---------------------------------------------------------------

    def bind(self, Session session, str local, str domain, str resource):
        """Enter a session under local@domain/resource; return the session it displaces."""
        cdef str bare = local + "@" + domain
        cdef dict resources = self._users.get(bare)
        if resources is None:
            resources = self._users[bare] = {}
        old = resources.get(resource)
        session.local = local
        session.domain = domain
        session.resource = resource
        session.bare = bare
        session.full = bare + "/" + resource
        session.router = self
        resources[resource] = session
        return old

    def unbind(self, Session session):
        cdef dict resources
        if session.bare is None:
            return
        resources = self._users.get(session.bare)
        if resources is not None and resources.get(session.resource) is session:
            del resources[session.resource]
            if not resources:
                del self._users[session.bare]

    def resources(self, str bare):
        """{resource: Session} of a bare JID (a copy)."""
        return dict(self._users.get(bare, ()))

    def session(self, str bare, str resource):
        cdef dict resources = self._users.get(bare)
        return None if resources is None else resources.get(resource)

    def all_sessions(self):
        return [s for resources in self._users.values() for s in resources.values()]

    @property
    def session_count(self):
        return sum(len(r) for r in self._users.values())

    # --- write batching ----------------------------------------------------------------

    cdef _schedule(self, Session session):
        self._dirty.append(session)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush_all)

    def request_flush(self):
        """Run the turn's end (commits, then writes) even if nothing was queued to write."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush_all)

    cpdef commit_turn(self, bint wait):
        """The "turn/commit" stage: what this turn's writes may acknowledge (a XEP-0198
        <a/>, an iq result after a message) is committed, or handed to a writer that holds
        the sessions it concerns (`Session.hold_writes`), before any of them leaves; `wait`:
        every commit under way is done when it returns. A handler may queue stanzas (errors
        for what it could not commit): they go out with the rest."""
        cdef tuple handlers = self._turn_commit
        if handlers:
            for handler in handlers:
                handler(wait)

    cpdef end_turn(self):
        """The "turn/end" stage: once per turn, after "turn/commit" (never from
        `Session.flush`, which runs that stage for each closing session), for writes that
        acknowledge nothing and are batched per turn (last-logout times, XEP-0012)."""
        cdef tuple handlers = self._turn_end
        if handlers:
            for handler in handlers:
                handler()

    def flush_all(self):
        cdef list dirty
        cdef Session session
        self.commit_turn(False)
        self.end_turn()
        dirty = self._dirty
        self._dirty = []
        self._flush_scheduled = False
        for session in dirty:
            session._write()

    # --- routing -----------------------------------------------------------------------

    cdef tuple _target(self, str to):
        """(local, domain, resource, bare) for a 'to' value, prepared and cached
        (docs/ARCHITECTURE.md, principle 4). Raises StanzaError(jid-malformed)."""
        cdef tuple target = self._jid_cache.get(to)
        if target is not None:
            return target
        try:
            jid = self._parse_jid(to)
        except ValueError as exc:
            raise StanzaError("jid-malformed", str(exc))
        target = (jid.local, jid.domain, jid.resource, jid.bare)
        if jid.domain not in self._hosts and jid.domain not in self._services:
            return target  # another server's or no one's: parse_jid's own bounded cache
        cdef Py_ssize_t cost = (JID_ENTRY_OVERHEAD + getsizeof(to) + getsizeof(target[0])
                                + getsizeof(target[2]) + getsizeof(target[3]))
        if self._jid_cache_bytes + cost > JID_CACHE_BYTES:
            self._jid_cache.clear()
            self._jid_cache_bytes = 0
        self._jid_cache[to] = target
        self._jid_cache_bytes += cost
        return target

    cpdef route(self, Session origin, Stanza st):
        """Route a stanza a bound client session sent (RFC 6120 §8.1.2.1, §10)."""
        cdef str to = st.attrs.get("to")
        cdef str frm = st.attrs.get("from")
        cdef str name = st.name
        cdef tuple target
        if frm is not None and frm != origin.full:
            # RFC 6120 §8.1.2.1: the server stamps 'from'; a client may only name itself.
            try:
                jid = self._parse_jid(frm)
            except ValueError:
                raise StreamError("invalid-from", "the 'from' address is malformed")
            if jid.bare != origin.bare or (jid.resource and jid.resource != origin.resource):
                raise StreamError("invalid-from", "the 'from' address is not yours")
        target = None if to is None else self._target(to)
        if origin.stanza_filter is not None and target is not None \
                and origin.stanza_filter.refuse_out(origin, st, target):
            return  # XEP-0016 §2.13: a blocked error or result (refuse_out raises for others)
        if (name == "presence" and target is not None and self.directed_rewrite is not None
                and not origin.is_remote and st.attrs.get("type") is None):
            # Directed available presence (a room join) as a module makes it, e.g. with
            # the avatar hash broadcasts carry (XEP-0398 §5); a client's, not a peer's.
            st = self.directed_rewrite(origin, st)
        if target is not None and self._services and target[1] in self._services:
            if name != "message" and name != "presence" and name != "iq":
                raise StreamError("unsupported-stanza-type", name)
            self._services[target[1]](origin, st, target)
        elif name == "message":
            self._deliver_message(origin, st, target)
        elif name == "presence":
            self._deliver_presence(origin, st, target)
        elif name == "iq":
            self._deliver_iq(origin, st, target)
        else:
            raise StreamError("unsupported-stanza-type", name)
        if name == "message":
            self.routed_messages += 1
            # Routed (a refused message raised above): the "message/sent" stage.
            for handler in self._message_sent:
                handler(origin, st, target)
        elif name == "presence":
            self.routed_presences += 1
        else:
            self.routed_iqs += 1

    cdef list _best_resources(self, str bare):
        """Available resources with the highest non-negative priority (RFC 6121 §8.5.2.1.1).
        All of them when several share it: the policy written down in docs/ROUTING.md."""
        cdef dict resources = self._users.get(bare)
        cdef list best = []
        cdef int top = -1
        cdef Session s
        if resources is None:
            return best
        for s in resources.values():
            if not s.available or s.priority < 0:
                continue
            if s.priority > top:
                top = s.priority
                best = [s]
            elif s.priority == top:
                best.append(s)
        return best

    cdef _deliver_message(self, Session origin, Stanza st, tuple target):
        cdef str mtype = st.attrs.get("type", "normal")
        cdef str local, domain, resource, bare
        cdef Session s
        cdef dict resources
        cdef bytes data
        cdef list best
        cdef bint delivered
        if target is None:
            # RFC 6120 §10.3.1: no 'to' means the sender's own bare JID.
            target = (origin.local, origin.domain, "", origin.bare)
            data = st.with_attrs({"from": origin.full, "to": origin.bare})
        else:
            data = None
        local, domain, resource, bare = target
        if domain not in self._hosts:
            if self.remote_hook is not None:
                # RFC 6120 §10.4: to another server (stream/s2s.py), or its error.
                self.remote_hook(origin, st, target)
                return
            raise StanzaError("remote-server-not-found", f"{domain} is not served here")
        if not local:
            # A message to the server itself (RFC 6120 §10.5.1): nothing here consumes one.
            if mtype != "error":
                raise StanzaError("service-unavailable")
            return
        if self._message_in:
            # "message/in": before the delivery decision; a handler passes (None), changes
            # the bytes to deliver (bytes), takes the message (True) or bounces it (raises).
            for handler in self._message_in:
                result = handler(origin, st, target, data)
                if result is None:
                    continue
                if result is True:
                    return
                data = result
        resources = self._users.get(bare)
        if resource:
            s = resources.get(resource) if resources is not None else None
            if s is not None:
                if s.stanza_filter is not None \
                        and not s.stanza_filter.allows_in(K_MESSAGE, origin.full):
                    # XEP-0016 §2.13: blocked inbound message.
                    if mtype == "error":
                        return
                    raise StanzaError("service-unavailable")
                if data is None:
                    data = st.with_attrs({"from": origin.full})
                s.send(data)
                if self._message_delivered:
                    self._delivered(origin, st, target, data, (s,))
                return
            # RFC 6121 §8.5.3.2.1: no such resource: only a chat message may go on as if
            # to the bare JID; the others are ignored or, a normal one, refused (the sender
            # learns it did not arrive; neither another resource nor offline storage gets it).
            if mtype == "normal":
                raise StanzaError("service-unavailable")
            if mtype != "chat":
                return
        if mtype == "error":
            return
        if mtype == "groupchat":
            # RFC 6121 §8.5.2.1.1: never to a bare JID.
            raise StanzaError("service-unavailable")
        if data is None:
            data = st.with_attrs({"from": origin.full})
        if mtype == "headline":
            best = [s for s in (resources or {}).values() if s.available and s.priority >= 0]
        else:
            best = self._best_resources(bare)
        if best:
            delivered = False
            for s in best:
                if s.stanza_filter is not None \
                        and not s.stanza_filter.allows_in(K_MESSAGE, origin.full):
                    continue  # XEP-0016 §2.13
                s.send(data)
                delivered = True
            if not delivered and mtype != "headline":
                raise StanzaError("service-unavailable")
            if delivered and self._message_delivered:
                self._delivered(origin, st, target, data, tuple(best))
            return
        if resources is None and not self.user_exists(domain, local):
            # RFC 6121 §8.5.1: no such account.
            raise StanzaError("service-unavailable")
        if mtype == "headline":
            return  # XEP-0160 §3: not stored; RFC 6121 §8.5.2.2.1: silently dropped
        # "message/offline": nobody available to take it now (RFC 6121 §8.5.2.2.1); a
        # handler takes it (True: stored), passes (None) or bounces it (raises).
        for handler in self._message_offline:
            if handler(origin, st, target, data) is True:
                if self._message_delivered:
                    self._delivered(origin, st, target, data, ())
                return
        # RFC 6121 §8.5.2.2.1: nobody to take it and nothing stores it.
        raise StanzaError("service-unavailable")

    cdef _delivered(self, Session origin, Stanza st, tuple target, bytes data, tuple sessions):
        """The stage "message/delivered": `data` went to `sessions` (the ones addressed, whether or
        not their filter let it in; none when it was stored for later)."""
        for handler in self._message_delivered:
            handler(origin, st, target, data, sessions)

    cdef _deliver_presence(self, Session origin, Stanza st, tuple target):
        cdef str ptype = st.attrs.get("type")
        cdef str local, domain, resource, bare
        cdef Session s
        cdef dict resources
        cdef bytes data
        cdef int kind
        if ptype is not None and ptype not in PRESENCE_TYPES:
            raise StanzaError("bad-request", f"unknown presence type {ptype!r}")
        if target is None:
            if ptype is None or ptype == "unavailable":
                self._update_availability(origin, st, ptype)
            # "presence/broadcast" (RFC 6121 §4.2, §4.4, §4.5): to the contacts.
            for handler in self._presence_broadcast:
                handler(origin, st)
            return
        local, domain, resource, bare = target
        if ptype in SUBSCRIPTION_TYPES or ptype == "probe":
            # RFC 6121 §3 and §4.3: the server acts on these ("presence/subscription"), for
            # remote contacts too: the roster changes even though nothing is routed yet.
            if self._presence_subscription:
                for handler in self._presence_subscription:
                    handler(origin, st)
                return
            if ptype == "probe":
                return
        if domain not in self._hosts:
            # RFC 6121 §4.6: directed presence to a remote domain goes over server-to-server
            # links; without them it is dropped, silently as presence is (no error).
            if self.remote_hook is not None:
                self.remote_hook(origin, st, target)
                if self._presence_directed and (ptype is None or ptype == "unavailable"):
                    self._directed(origin, st, target)
            return
        if not local:
            return
        resources = self._users.get(bare)
        if resources is None:
            # RFC 6121 §8.5.1 / §8.5.2.2.2: silently ignored (but still remembered as
            # directed presence, so that the unavailable presence follows later).
            if self._presence_directed and (ptype is None or ptype == "unavailable"):
                self._directed(origin, st, target)
            return
        data = st.with_attrs({"from": origin.full})
        # XEP-0016 §2: presence-in covers notifications only (no type, or unavailable).
        kind = K_PRESENCE_IN if ptype is None or ptype == "unavailable" else K_OTHER
        if resource:
            s = resources.get(resource)
            if s is not None and (s.stanza_filter is None
                                  or s.stanza_filter.allows_in(kind, origin.full)):
                s.send(data)
        else:
            for s in resources.values():
                if s.available and (s.stanza_filter is None
                                    or s.stanza_filter.allows_in(kind, origin.full)):
                    s.send(data)
        if self._presence_directed and (ptype is None or ptype == "unavailable"):
            # RFC 6121 §4.6: the sender's server remembers directed presence.
            self._directed(origin, st, target)

    cdef _directed(self, Session origin, Stanza st, tuple target):
        """The stage "presence/directed": available or unavailable presence went to `target`."""
        for handler in self._presence_directed:
            handler(origin, st, target)

    def _update_availability(self, Session origin, Stanza st, ptype):
        cdef object el
        if ptype == "unavailable":
            origin.available = False
            return
        priority = 0
        if (CLIENT_NS, "priority") in st.children:
            el = st.element().find("{jabber:client}priority")
            try:
                priority = int((el.text or "").strip())
            except ValueError:
                raise StanzaError("bad-request", "priority must be an integer")
            if not -128 <= priority <= 127:
                raise StanzaError("bad-request", "priority must be in -128..127")
        origin.priority = priority
        origin.available = True

    cdef _deliver_iq(self, Session origin, Stanza st, tuple target):
        cdef str itype = st.attrs.get("type")
        cdef str local, domain, resource, bare
        cdef Session s
        cdef dict resources
        if st.attrs.get("id") is None:
            raise StanzaError("bad-request", "an iq needs an 'id' (RFC 6120 §8.2.3)")
        if itype not in IQ_TYPES:
            raise StanzaError("bad-request", "iq type must be get, set, result or error")
        if (itype == "get" or itype == "set") and len(st.children) != 1:
            raise StanzaError("bad-request", "an iq get/set has exactly one payload")
        if target is None:
            self._handle_iq(origin, st, None)
            return
        local, domain, resource, bare = target
        if domain not in self._hosts:
            if self.remote_hook is not None:
                self.remote_hook(origin, st, target)  # RFC 6120 §10.4
                return
            raise StanzaError("remote-server-not-found", f"{domain} is not served here")
        if not local or not resource:
            # To the server, or to an account's bare JID: the server answers on the
            # account's behalf (RFC 6121 §8.5.2.1.3, RFC 6120 §10.5.3).
            if local and self.user_exists is not None and bare not in self._users \
                    and not self.user_exists(domain, local) \
                    and (itype == "result" or itype == "error"
                         or st.children[0][0] not in self._iq_for_missing):
                raise StanzaError("service-unavailable")
            if local and bare != origin.bare and self._iq_account \
                    and (itype == "get" or itype == "set"):
                # "iq/account": a request another entity makes of the account, which the
                # server answers on its behalf; a handler bounces it by raising.
                for handler in self._iq_account:
                    handler(origin, st, target)
            self._handle_iq(origin, st, target)
            return
        resources = self._users.get(bare)
        s = None if resources is None else resources.get(resource)
        if s is None:
            # RFC 6121 §8.5.3.2.3 (and §8.5.1 for an account that does not exist).
            raise StanzaError("service-unavailable")
        if s.stanza_filter is not None and not s.stanza_filter.allows_in(K_IQ, origin.full):
            # XEP-0016 §2.13: get/set get an error, results and errors are dropped.
            if itype == "get" or itype == "set":
                raise StanzaError("service-unavailable")
            return
        if self._iq_full and bare != origin.bare and (itype == "get" or itype == "set"):
            # "iq/full": a request another entity makes of one of the account's resources,
            # before it is delivered; a handler bounces it by raising.
            for handler in self._iq_full:
                handler(origin, st, target)
        s.send(st.with_attrs({"from": origin.full}))

    cdef _handle_iq(self, Session origin, Stanza st, tuple target):
        cdef str itype = st.attrs.get("type")
        if itype == "result" or itype == "error":
            # Answers to the server's own requests (pings, ...): "iq/response".
            for handler in self._iq_response:
                handler(origin, st)
            return
        handler = self._iq_handlers.get(st.children[0][0])
        if handler is None:
            raise StanzaError("service-unavailable")
        reply = handler(origin, st, target)
        if reply is not None:
            origin.send(reply)
