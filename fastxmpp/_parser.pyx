# cython: language_level=3
"""Incremental XMPP stream parser over libexpat.

Bytes go in, events come out: a `StreamHeader` for the stream's root element, a `Stanza`
for each complete top-level child, `STREAM_END` for the closing tag and an `XMLStreamError`
(last in its list) when the input breaks a rule. Only the top-level element's name and
attributes become Python objects; everything below it stays C-level and is kept as the raw
bytes the peer sent, so a routed stanza is forwarded without building a tree
(docs/ARCHITECTURE.md, "the hot path"). `Stanza.element()` builds the lxml tree on demand.

Restricted XML (RFC 6120 §11.1): a DOCTYPE, entity declaration, comment, processing
instruction or non-predefined entity reference ends the stream with `restricted-xml`.
UTF-8 only (§11.6): bytes that are not UTF-8, or a stream in another encoding, end it with
`unsupported-encoding` (§4.9.3.22). Text between stanzas other than whitespace ends it with
`bad-format` (§4.9.3.1), a second stream header inside the stream with
`unsupported-stanza-type` (§4.9.3.24).
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.string cimport strchr, strcmp, strlen

from lxml import etree

cdef extern from "expat.h":
    ctypedef void *XML_Parser
    ctypedef char XML_Char
    ctypedef long long XML_Index
    ctypedef unsigned char XML_Bool
    cdef enum XML_Status:
        XML_STATUS_ERROR
        XML_STATUS_OK
        XML_STATUS_SUSPENDED
    cdef enum XML_Error:
        XML_ERROR_NONE
        XML_ERROR_INVALID_TOKEN
        XML_ERROR_UNDEFINED_ENTITY
        XML_ERROR_UNKNOWN_ENCODING
        XML_ERROR_INCORRECT_ENCODING
        XML_ERROR_ABORTED
        XML_ERROR_NO_MEMORY
    ctypedef void (*XML_StartElementHandler)(void *, const XML_Char *, const XML_Char **)
    ctypedef void (*XML_EndElementHandler)(void *, const XML_Char *)
    ctypedef void (*XML_CharacterDataHandler)(void *, const XML_Char *, int)
    ctypedef void (*XML_StartNamespaceDeclHandler)(void *, const XML_Char *, const XML_Char *)
    ctypedef void (*XML_EndNamespaceDeclHandler)(void *, const XML_Char *)
    ctypedef void (*XML_CommentHandler)(void *, const XML_Char *)
    ctypedef void (*XML_ProcessingInstructionHandler)(
        void *, const XML_Char *, const XML_Char *)
    ctypedef void (*XML_StartDoctypeDeclHandler)(
        void *, const XML_Char *, const XML_Char *, const XML_Char *, int)
    ctypedef void (*XML_EntityDeclHandler)(
        void *, const XML_Char *, int, const XML_Char *, int, const XML_Char *,
        const XML_Char *, const XML_Char *, const XML_Char *)
    ctypedef void (*XML_XmlDeclHandler)(void *, const XML_Char *, const XML_Char *, int)

    XML_Parser XML_ParserCreateNS(const XML_Char *encoding, XML_Char sep)
    void XML_ParserFree(XML_Parser p)
    XML_Status XML_Parse(XML_Parser p, const char *s, int length, int is_final)
    XML_Status XML_StopParser(XML_Parser p, XML_Bool resumable)
    void XML_SetUserData(XML_Parser p, void *data)
    void XML_SetReturnNSTriplet(XML_Parser p, int do_nst)
    void XML_SetElementHandler(XML_Parser p, XML_StartElementHandler, XML_EndElementHandler)
    void XML_SetCharacterDataHandler(XML_Parser p, XML_CharacterDataHandler)
    void XML_SetNamespaceDeclHandler(
        XML_Parser p, XML_StartNamespaceDeclHandler, XML_EndNamespaceDeclHandler)
    void XML_SetCommentHandler(XML_Parser p, XML_CommentHandler)
    void XML_SetProcessingInstructionHandler(XML_Parser p, XML_ProcessingInstructionHandler)
    void XML_SetStartDoctypeDeclHandler(XML_Parser p, XML_StartDoctypeDeclHandler)
    void XML_SetEntityDeclHandler(XML_Parser p, XML_EntityDeclHandler)
    void XML_SetXmlDeclHandler(XML_Parser p, XML_XmlDeclHandler)
    XML_Index XML_GetCurrentByteIndex(XML_Parser p)
    int XML_GetCurrentByteCount(XML_Parser p)
    XML_Error XML_GetErrorCode(XML_Parser p)
    const char *XML_ErrorString(XML_Error code)

cdef extern from *:
    """
    #include <expat.h>
    /* expat >= 2.6 may defer re-parsing of a token split over several feeds; a stream
       server needs every stanza as soon as its last byte arrives. */
    static void fx_disable_reparse_deferral(XML_Parser p) {
    #if XML_MAJOR_VERSION > 2 || (XML_MAJOR_VERSION == 2 && XML_MINOR_VERSION >= 6)
        XML_SetReparseDeferralEnabled(p, XML_FALSE);
    #else
        (void)p;
    #endif
    }
    """
    void fx_disable_reparse_deferral(XML_Parser p)


# Namespace URI, local name and prefix come joined by this byte, which cannot occur in
# XML 1.0 names or URIs.
cdef char SEP_CHAR = 1

XML_NS = "http://www.w3.org/XML/1998/namespace"
STREAMS_NS = "http://etherx.jabber.org/streams"
# The input buffer of every hibernated parser: empty, never written (feed wakes first).
cdef bytearray _NO_INPUT = bytearray()

# recover=True: expat has already checked the bytes for well-formedness; libxml2 adds checks
# XML does not ask for (a namespace name that is not a URI, found by tests/fuzz), and a
# stanza the stream accepted must always give its tree.
_TREE_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, remove_comments=True, remove_pis=True,
    huge_tree=False, recover=True,
)


class XMLStreamError(Exception):
    """The input broke a rule; `condition` is the RFC 6120 §4.9.3 stream error to send."""

    def __init__(self, condition, text=None):
        super().__init__(condition if text is None else f"{condition}: {text}")
        self.condition = condition
        self.text = text


class _StreamEnd:
    __slots__ = ()

    def __repr__(self):
        return "STREAM_END"


STREAM_END = _StreamEnd()


cdef class StreamHeader:
    """The stream's root element: `<stream:stream>` (RFC 6120 §4.7)."""

    cdef readonly str name
    cdef readonly str ns
    cdef readonly str prefix
    cdef readonly dict attrs
    cdef readonly list nsdecls

    def __repr__(self):
        return f"StreamHeader({self.prefix}:{self.name} ns={self.ns!r} attrs={self.attrs!r})"


cdef inline str _decode(const char *s, Py_ssize_t n):
    return PyUnicode_DecodeUTF8(s, n, NULL)


cdef str _CLIENT_NS = "jabber:client"
cdef str _SERVER_NS = "jabber:server"
cdef str _COMPONENT_NS = "jabber:component:accept"


cdef tuple _split_name(const char *name):
    """'uri SEP local SEP prefix' -> (uri, local, prefix); ('', name, None) without a URI."""
    cdef const char *p1 = strchr(name, SEP_CHAR)
    cdef const char *p2
    if p1 == NULL:
        return "", _decode(name, strlen(name)), None
    p2 = strchr(p1 + 1, SEP_CHAR)
    if p2 == NULL:
        return _decode(name, p1 - name), _decode(p1 + 1, strlen(p1 + 1)), None
    return (_decode(name, p1 - name), _decode(p1 + 1, p2 - p1 - 1),
            _decode(p2 + 1, strlen(p2 + 1)))


cdef inline const char *_prefix_of(const char *name):
    """The prefix part of a triplet name, or NULL when the name has none."""
    cdef const char *p1 = strchr(name, SEP_CHAR)
    if p1 == NULL:
        return NULL
    return strchr(p1 + 1, SEP_CHAR)


cdef str _escape_attr(str value):
    """Attribute value escaping for a quoted ("...") value; whitespace characters are kept
    as character references so that attribute-value normalization does not change them."""
    cdef Py_UCS4 c
    for c in value:
        if c == '&' or c == '<' or c == '>' or c == '"' or c == '\n' or c == '\r' or c == '\t':
            break
    else:
        return value
    return (value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;").replace("\n", "&#10;").replace("\r", "&#13;")
            .replace("\t", "&#9;"))


cdef str _qname(str prefix, str local):
    return local if prefix is None else prefix + ":" + local


cdef class Stanza:
    """A complete top-level element: its name and attributes, and its raw bytes."""

    @property
    def to(self):
        return self.attrs.get("to")

    @property
    def from_(self):
        return self.attrs.get("from")

    @property
    def type(self):
        return self.attrs.get("type")

    @property
    def id(self):
        return self.attrs.get("id")

    def get(self, key, default=None):
        return self.attrs.get(key, default)

    def __repr__(self):
        return f"Stanza({self.raw!r})"

    cpdef object element(self):
        """The lxml element for this stanza, parsed once, in the stream's namespace context."""
        if self._element is None:
            wrapper = etree.fromstring(self._context + self.raw + b"</_>", _TREE_PARSER)
            self._element = wrapper[0]
        return self._element

    cpdef bytes with_attrs(self, dict changes):
        """The stanza's bytes with outer attributes set (or removed, for a value of None).

        Only the outer start tag is written anew; the rest is the received bytes
        (docs/ARCHITECTURE.md, principle 2)."""
        cdef list parts
        cdef str key, value, prefix, ns, local
        cdef object item
        if self.needs_reserialize:
            return self._reserialized(changes)
        for key, item in changes.items():
            if item is None or key in self.attrs:
                break
        else:
            return self._spliced(changes)
        parts = ["<", _qname(self.prefix, self.name)]
        if self.nsdecls is not None:
            for item in self.nsdecls:
                prefix, ns = item
                parts.append(" xmlns" if prefix is None else " xmlns:" + prefix)
                parts.append('="' + _escape_attr(ns or "") + '"')
        for key, value in self.attrs.items():
            if key in changes:
                continue
            if key[0] == "{":
                ns, local = key[1:].rsplit("}", 1)  # a namespace name may hold "}"
                prefix = self._attr_prefixes.get(key) if self._attr_prefixes else None
                key = _qname(prefix or "xml", local)
            parts.append(" " + key + '="' + _escape_attr(value) + '"')
        for key, item in changes.items():
            if item is not None:
                parts.append(" " + key + '="' + _escape_attr(item) + '"')
        if self.empty:
            parts.append("/>")
            return "".join(parts).encode()
        parts.append(">")
        return "".join(parts).encode() + self.raw[self.start_len:]

    cdef bytes _spliced(self, dict changes):
        # Fast path (the common case: a client's stanza without 'from'): only new attributes,
        # so they go in front of the received start tag's closing '>' or '/>' and every
        # received byte is kept.
        cdef Py_ssize_t cut = self.start_len - (2 if self.empty else 1)
        cdef list parts = []
        cdef str key
        cdef object value
        for key, value in changes.items():
            parts.append(" " + key + '="' + _escape_attr(value) + '"')
        return self.raw[:cut] + "".join(parts).encode() + self.raw[cut:]

    cdef bytes _reserialized(self, dict changes):
        # Slow path: the stanza relies on a prefix declared on the stream root, so its bytes
        # cannot be moved to another stream as they are.
        # UTF-8 both ways: lxml's default (ASCII) output writes a non-ASCII element or
        # attribute name as broken markup, since a character reference cannot stand in a
        # name (found by tests/fuzz).
        el = self.element()
        copy = etree.fromstring(
            etree.tostring(el, encoding="utf-8", xml_declaration=False), _TREE_PARSER)
        for key, value in changes.items():
            if value is None:
                copy.attrib.pop(key, None)
            else:
                copy.set(key, value)
        return etree.tostring(copy, encoding="utf-8", xml_declaration=False)


# --- expat callbacks: C functions, no Python call per XML event below the stanza level ---

cdef void _on_start(void *data, const XML_Char *name, const XML_Char **atts) noexcept:
    cdef StreamParser self = <StreamParser>data
    if self._error is not None:
        return
    try:
        self._start(name, atts)
    except BaseException as exc:
        self._fail("internal-server-error", repr(exc))


cdef void _on_end(void *data, const XML_Char *name) noexcept:
    cdef StreamParser self = <StreamParser>data
    if self._error is not None:
        # expat ends an empty element in the same step as it starts it, even when the
        # start handler stopped the parser: no stanza may complete after an error.
        return
    try:
        self._end()
    except BaseException as exc:
        self._fail("internal-server-error", repr(exc))


cdef bint _only_whitespace(bytes data):
    """Whether `data` is nothing but XML white space (XML 1.0 §2.3, S)."""
    cdef const unsigned char[:] view = data
    cdef Py_ssize_t i
    cdef unsigned char c
    for i in range(view.shape[0]):
        c = view[i]
        if c != 0x20 and c != 0x09 and c != 0x0A and c != 0x0D:
            return False
    return True


cdef void _on_text(void *data, const XML_Char *s, int n) noexcept:
    cdef StreamParser self = <StreamParser>data
    cdef int i
    if self._depth == 1:
        for i in range(n):
            if s[i] != b' ' and s[i] != b'\t' and s[i] != b'\n' and s[i] != b'\r':
                # The stream's children are elements (RFC 6120 §4.1); only whitespace goes
                # between them (keepalives, §4.6.1).
                self._fail("bad-format", "text between stanzas (RFC 6120 §4.9.3.1)")
                return
        # Whitespace between stanzas: nothing to keep.
        self._keep_from = XML_GetCurrentByteIndex(self._parser) + XML_GetCurrentByteCount(
            self._parser)


cdef void _on_ns_start(void *data, const XML_Char *prefix, const XML_Char *uri) noexcept:
    cdef StreamParser self = <StreamParser>data
    try:
        self._ns_start(prefix, uri)
    except BaseException as exc:
        self._fail("internal-server-error", repr(exc))


cdef void _on_ns_end(void *data, const XML_Char *prefix) noexcept:
    cdef StreamParser self = <StreamParser>data
    if prefix != NULL and self._depth >= 2 and self._inner_prefixes is not None:
        try:
            key = _decode(prefix, strlen(prefix))
            self._inner_prefixes[key] -= 1
        except BaseException as exc:
            self._fail("internal-server-error", repr(exc))


cdef void _on_comment(void *data, const XML_Char *text) noexcept:
    (<StreamParser>data)._fail("restricted-xml", "comments are not allowed (RFC 6120 §11.1)")


cdef void _on_pi(void *data, const XML_Char *target, const XML_Char *text) noexcept:
    (<StreamParser>data)._fail(
        "restricted-xml", "processing instructions are not allowed (RFC 6120 §11.1)")


cdef void _on_doctype(void *data, const XML_Char *name, const XML_Char *sysid,
                      const XML_Char *pubid, int has_internal) noexcept:
    (<StreamParser>data)._fail("restricted-xml", "a DOCTYPE is not allowed (RFC 6120 §11.1)")


cdef void _on_entity_decl(void *data, const XML_Char *name, int is_param,
                          const XML_Char *value, int value_len, const XML_Char *base,
                          const XML_Char *sysid, const XML_Char *pubid,
                          const XML_Char *notation) noexcept:
    (<StreamParser>data)._fail("restricted-xml", "entity declarations are not allowed")


cdef void _on_xml_decl(void *data, const XML_Char *version, const XML_Char *encoding,
                       int standalone) noexcept:
    # RFC 6120 §11.6: UTF-8 only.
    if encoding != NULL and _decode(encoding, strlen(encoding)).lower() != "utf-8":
        (<StreamParser>data)._fail("unsupported-encoding", "only UTF-8 is supported")


cdef class StreamParser:
    """One parser per stream; `reset()` after STARTTLS and SASL success (RFC 6120 §5.4.3.3)."""

    def __cinit__(self):
        self._parser = NULL

    def __init__(self, Py_ssize_t max_stanza_size=262144, int max_depth=64,
                 int max_attributes=64, int max_elements=8192):
        self.max_stanza_size = max_stanza_size
        self.max_depth = max_depth
        self.max_attributes = max_attributes
        self.max_elements = max_elements
        self.reset()

    def __dealloc__(self):
        if self._parser != NULL:
            XML_ParserFree(self._parser)
            self._parser = NULL

    cpdef reset(self):
        """Forget the current stream and expect a new stream header."""
        self._new_expat()
        self._restart_input()
        self.ended = False
        self.failed = False
        self._events = None
        self._error = None
        self._context = b"<_>"
        self._pending_decls = None
        self._inner_prefixes = None
        self._reserialize = False
        self._current = None
        self._encoding_checked = False
        self._header_tag = None

    @property
    def hibernating(self):
        return self._parser == NULL and self._header_tag is not None

    cpdef bint hibernate(self):
        """Free expat's memory (about 8 KiB: buffers, name tables, pools) while the stream
        is idle between stanzas; the next feed() builds a new expat primed with this
        stream's own header, whose declarations later stanzas may use. False when there is
        nothing to free or a stanza (or a token) is unfinished."""
        if (self._parser == NULL or self._depth != 1 or self.failed or self.ended
                or self._header_tag is None or PyByteArray_GET_SIZE(self._buf) != 0):
            return False
        XML_ParserFree(self._parser)
        self._parser = NULL
        # What the header replay in _wake builds again: the input buffer, the stream's
        # declarations and the context made of them (about 0.5 KiB a stream).
        self._buf = _NO_INPUT
        self._stream_decls = None
        self._context = b"<_>"
        return True

    cdef int _wake(self) except -1:
        cdef bytes header = self._header_tag
        self._new_expat()
        self._restart_input()
        # The header was announced when it first came; its replay's event is dropped.
        self.feed(header)
        if self.failed or self._depth != 1:
            raise RuntimeError("the stream header did not parse again")
        return 0

    cdef void _restart_input(self):
        """Byte offsets and nesting as at the start of a stream (a new one, or a woken
        parser about to replay its header)."""
        self._buf = bytearray()
        self._base = 0
        self._keep_from = 0
        self._stanza_start = -1
        self._last_start_end = 0
        self._depth = 0
        self._stream_decls = []
        self._pending_ns_count = 0
        self._elements = 0

    cdef int _new_expat(self) except -1:
        if self._parser != NULL:
            XML_ParserFree(self._parser)
            self._parser = NULL
        self._parser = XML_ParserCreateNS(b"UTF-8", SEP_CHAR)
        if self._parser == NULL:
            raise MemoryError()
        XML_SetUserData(self._parser, <void *>self)
        XML_SetReturnNSTriplet(self._parser, 1)
        XML_SetElementHandler(self._parser, _on_start, _on_end)
        XML_SetCharacterDataHandler(self._parser, _on_text)
        XML_SetNamespaceDeclHandler(self._parser, _on_ns_start, _on_ns_end)
        XML_SetCommentHandler(self._parser, _on_comment)
        XML_SetProcessingInstructionHandler(self._parser, _on_pi)
        XML_SetStartDoctypeDeclHandler(self._parser, _on_doctype)
        XML_SetEntityDeclHandler(self._parser, _on_entity_decl)
        XML_SetXmlDeclHandler(self._parser, _on_xml_decl)
        fx_disable_reparse_deferral(self._parser)
        return 0

    @property
    def depth(self):
        return self._depth

    @property
    def buffered(self):
        """Bytes held for an incomplete stanza (for memory accounting and tests)."""
        return PyByteArray_GET_SIZE(self._buf)

    cpdef list feed(self, bytes data):
        """Parse a chunk; return the events it completed, in order.

        After an error the list ends with an `XMLStreamError` and the parser stays failed."""
        cdef list events = []
        cdef XML_Status status
        cdef XML_Error code
        cdef long long pending
        if self.failed:
            return [self._error]
        if self.ended:
            return events
        if self._parser == NULL:
            if _only_whitespace(data):
                # A whitespace keepalive (RFC 6120 §4.6.1) between stanzas: nothing to
                # parse, so the parser stays asleep (waking it costs a new expat).
                return events
            self._wake()
        self._buf.extend(data)
        if not self._encoding_checked:
            # expat guesses the encoding from the first bytes whatever it was told; nothing
            # reaches it before they are checked.
            if PyByteArray_GET_SIZE(self._buf) < 3:
                return events
            self._encoding_checked = True
            refusal = _foreign_encoding(self._buf)
            if refusal is not None:
                self._error = XMLStreamError(*refusal)
                self.failed = True
                self._buf = bytearray()
                return [self._error]
            data = bytes(self._buf)
        self._events = events
        status = XML_Parse(self._parser, data, len(data), 0)
        self._events = None
        if status == XML_STATUS_ERROR:
            if self._error is None:
                code = XML_GetErrorCode(self._parser)
                condition = _condition_for(code)
                if code == XML_ERROR_INVALID_TOKEN and not self._utf8_at(
                        XML_GetCurrentByteIndex(self._parser)):
                    # RFC 6120 §4.9.3.22: a stream that breaks the rules of UTF-8.
                    condition = "unsupported-encoding"
                self._error = XMLStreamError(condition, XML_ErrorString(code).decode())
            self.failed = True
            events.append(self._error)
            self._buf = bytearray()
            return events
        if self.ended:
            self._buf = bytearray()
            return events
        # Keep only what an unfinished stanza (or token) still needs.
        if self._stanza_start >= 0:
            self._keep_from = self._stanza_start
        if self._keep_from > self._base:
            del self._buf[:self._keep_from - self._base]
            self._base = self._keep_from
        pending = PyByteArray_GET_SIZE(self._buf)
        if pending > self.max_stanza_size:
            self._error = XMLStreamError(
                "policy-violation", f"stanza larger than {self.max_stanza_size} bytes")
            self.failed = True
            self._buf = bytearray()
            events.append(self._error)
        return events

    cdef bint _utf8_at(self, long long index):
        """Whether the byte at a stream offset starts a well-formed UTF-8 sequence."""
        cdef Py_ssize_t pos = index - self._base
        if pos < 0 or pos >= PyByteArray_GET_SIZE(self._buf):
            return True
        try:
            bytes(self._buf[pos:pos + 4]).decode("utf-8")
        except UnicodeDecodeError as exc:
            return exc.start > 0  # only a later character (cut by the window) is broken
        return True

    cdef void _fail(self, str condition, str text) noexcept:
        if self._error is None:
            self._error = XMLStreamError(condition, text)
        XML_StopParser(self._parser, 0)

    cdef int _ns_start(self, const char *prefix, const char *uri) except -1:
        # expat reports an element's declarations just before the element: they count
        # towards its attributes (_start), as they are attributes in the bytes.
        self._pending_ns_count += 1
        if prefix == NULL and self._depth >= 2:
            # A default namespace inside a stanza (a payload's xmlns): it travels in the
            # stanza's own bytes and nothing needs tracking, so skip decoding it.
            return 0
        cdef object p = None if prefix == NULL else _decode(prefix, strlen(prefix))
        cdef object u = None if uri == NULL else _decode(uri, strlen(uri))
        if self._depth == 0:
            self._stream_decls.append((p, u))
        elif self._depth == 1:
            if self._pending_decls is None:
                self._pending_decls = []
            self._pending_decls.append((p, u))
            if p is not None:
                self._count_prefix(p)
        elif p is not None:
            self._count_prefix(p)
        return 0

    cdef void _count_prefix(self, str prefix):
        if self._inner_prefixes is None:
            self._inner_prefixes = {}
        self._inner_prefixes[prefix] = self._inner_prefixes.get(prefix, 0) + 1

    cdef bint _declared_inside(self, const char *prefix_with_sep):
        """Is this prefix ('xml' aside) declared within the current stanza?"""
        cdef const char *prefix = prefix_with_sep + 1
        if strcmp(prefix, b"xml") == 0:
            return True
        if self._inner_prefixes is None:
            return False
        return self._inner_prefixes.get(_decode(prefix, strlen(prefix)), 0) > 0

    cdef int _start(self, const char *name, const char **atts) except -1:
        cdef XML_Index index = XML_GetCurrentByteIndex(self._parser)
        cdef int count = XML_GetCurrentByteCount(self._parser)
        cdef int n_attrs = 0
        cdef const char *pfx
        while atts[n_attrs] != NULL:
            n_attrs += 2
        n_attrs = n_attrs // 2 + self._pending_ns_count
        self._pending_ns_count = 0
        if n_attrs > self.max_attributes:
            self._fail("policy-violation",
                       f"more than {self.max_attributes} attributes and namespace declarations")
            return 0
        if count > self.max_stanza_size:
            # A start tag that arrived whole in one read; the stream header too.
            self._fail("policy-violation", f"start tag larger than {self.max_stanza_size} bytes")
            return 0
        self._last_start_end = index + count
        if self._depth == 0:
            self._start_stream(name, atts, index, count)
        elif self._depth == 1:
            self._elements = 1
            self._start_stanza(name, atts, index, count)
        else:
            if self._depth >= self.max_depth:
                self._fail("policy-violation", f"elements nested deeper than {self.max_depth}")
                return 0
            self._elements += 1
            if self._elements > self.max_elements:
                # Each element costs far more parsed than its few bytes on the wire (a
                # child tuple, a tree node when a module reads it).
                self._fail("policy-violation", f"more than {self.max_elements} elements")
                return 0
            if self._depth == 2:
                ns, local, _ = _split_name(name)
                if ns == self._current.ns and (ns == _SERVER_NS or ns == _COMPONENT_NS):
                    # A stanza's own children (body, subject, thread, error) are listed in
                    # jabber:client whatever the stream: RFC 6120 gives jabber:server (and
                    # XEP-0114 jabber:component:accept) stanzas the same schema, and the
                    # modules look for (jabber:client, "body") in a peer's message too.
                    ns = _CLIENT_NS
                self._current.children.append((ns, local))
            if not self._reserialize:
                pfx = _prefix_of(name)
                if pfx != NULL and not self._declared_inside(pfx):
                    self._reserialize = True
                else:
                    while atts[0] != NULL:
                        pfx = _prefix_of(atts[0])
                        if pfx != NULL and not self._declared_inside(pfx):
                            self._reserialize = True
                            break
                        atts += 2
        self._depth += 1
        return 0

    cdef void _start_stream(self, const char *name, const char **atts,
                            long long index, int count) except *:
        cdef StreamHeader header = StreamHeader()
        cdef str decls = ""
        if self._header_tag is None:
            self._header_tag = PyBytes_FromStringAndSize(
                PyByteArray_AS_STRING(self._buf) + (index - self._base), count)
        header.ns, header.name, header.prefix = _split_name(name)
        header.attrs = self._attrs(atts, None)
        header.nsdecls = self._stream_decls
        for prefix, uri in self._stream_decls:
            decls += (" xmlns" if prefix is None else " xmlns:" + prefix) + '="' + \
                _escape_attr(uri or "") + '"'
        self._context = ("<_" + decls + ">").encode()
        self._keep_from = self._last_start_end
        self._events.append(header)

    cdef void _start_stanza(self, const char *name, const char **atts,
                            long long index, int count) except *:
        cdef Stanza st = Stanza()
        cdef const char *pfx = _prefix_of(name)
        cdef dict prefixes = {}
        st.ns, st.name, st.prefix = _split_name(name)
        if st.name == "stream" and st.ns == STREAMS_NS:
            # A stream header inside the stream: known, but never a first-level child; it
            # would only close with the stream, so it is refused at once.
            self._fail("unsupported-stanza-type", "a stream header inside the stream")
            return
        st.attrs = self._attrs(atts, prefixes)
        st._attr_prefixes = prefixes or None
        st.nsdecls = self._pending_decls
        st.children = []
        st.start_len = count
        st.empty = PyByteArray_AS_STRING(self._buf)[index + count - 2 - self._base] == 0x2f
        st._context = self._context
        self._pending_decls = None
        self._stanza_start = index
        self._current = st
        self._reserialize = pfx != NULL and not self._declared_inside(pfx)
        if not self._reserialize:
            for prefix in prefixes.values():
                if prefix != "xml" and (self._inner_prefixes is None or
                                        self._inner_prefixes.get(prefix, 0) <= 0):
                    self._reserialize = True

    cdef dict _attrs(self, const char **atts, dict prefixes):
        cdef dict attrs = {}
        cdef const char *name
        cdef const char *value
        while atts[0] != NULL:
            name = atts[0]
            value = atts[1]
            if strchr(name, SEP_CHAR) == NULL:
                attrs[_decode(name, strlen(name))] = _decode(value, strlen(value))
            else:
                ns, local, prefix = _split_name(name)
                key = "{" + ns + "}" + local
                attrs[key] = _decode(value, strlen(value))
                if prefixes is not None:
                    prefixes[key] = prefix
            atts += 2
        return attrs

    cdef int _end(self) except -1:
        cdef XML_Index index
        cdef int count
        cdef long long end
        cdef Stanza st
        self._depth -= 1
        if self._depth == 1:
            index = XML_GetCurrentByteIndex(self._parser)
            count = XML_GetCurrentByteCount(self._parser)
            end = index + count if count > 0 else self._last_start_end
            if end - self._stanza_start > self.max_stanza_size:
                self._fail("policy-violation",
                           f"stanza larger than {self.max_stanza_size} bytes")
                return 0
            st = self._current
            st.raw = PyBytes_FromStringAndSize(
                PyByteArray_AS_STRING(self._buf) + (self._stanza_start - self._base),
                end - self._stanza_start)
            st.needs_reserialize = self._reserialize
            self._current = None
            self._stanza_start = -1
            self._keep_from = end
            self._inner_prefixes = None
            self._events.append(st)
        elif self._depth == 0:
            self.ended = True
            self._events.append(STREAM_END)
        return 0


cdef tuple _foreign_encoding(bytearray head):
    """(condition, text) for a stream whose first three bytes are not UTF-8 XML text (RFC 6120
    §11.6), or None. The patterns are those of XML 1.0 Appendix F, on which expat would
    switch to UTF-16 whatever encoding it was told."""
    cdef unsigned char b0 = head[0], b1 = head[1], b2 = head[2]
    if (b0 == 0xFE and b1 == 0xFF) or (b0 == 0xFF and b1 == 0xFE):
        return "unsupported-encoding", "a UTF-16 or UTF-32 byte order mark: UTF-8 only"
    if (b0 == 0 and (b1 == 0x3C or b1 == 0)) or (b0 == 0x3C and b1 == 0):
        return "unsupported-encoding", "UTF-16 or UTF-32 text: UTF-8 only"
    if b0 == 0 or b1 == 0:
        return "not-well-formed", "U+0000 is not an XML character"
    if b0 == 0xEF and b1 == 0xBB and b2 == 0xBF:
        # §11.6: U+FEFF is a zero width no-break space, never a byte order mark; as
        # character data before the root element it is not well-formed.
        return "not-well-formed", "U+FEFF before the stream header"
    return None


cdef str _condition_for(XML_Error code):
    if code == XML_ERROR_UNDEFINED_ENTITY:
        # Only the five predefined entities exist without a DTD (RFC 6120 §11.1).
        return "restricted-xml"
    if code == XML_ERROR_UNKNOWN_ENCODING or code == XML_ERROR_INCORRECT_ENCODING:
        return "unsupported-encoding"
    if code == XML_ERROR_NO_MEMORY:
        return "resource-constraint"
    return "not-well-formed"


_CLIENT_ROOT = (
    b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
)


def read_stanza(bytes data):
    """The bytes of one self-contained stanza read as a `Stanza` of a jabber:client stream
    (for what changes a stanza before it is routed on); None when they hold none."""
    cdef StreamParser parser = StreamParser()
    cdef list events = parser.feed(_CLIENT_ROOT + data)
    for event in events:
        if type(event) is Stanza:
            return event
    return None
