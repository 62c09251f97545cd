# The C-level interface of the stream parser, cimported by the router.

cdef class Stanza:
    cdef readonly str name          # local name of the top-level element
    cdef readonly str ns            # its namespace
    cdef readonly str prefix        # its prefix, or None
    cdef readonly dict attrs        # unqualified names as-is, qualified ones as '{ns}local'
    cdef readonly bytes raw         # the stanza exactly as received
    cdef readonly Py_ssize_t start_len  # length of the outer start tag inside raw
    cdef readonly bint empty        # written as an empty-element tag (<presence/>)
    cdef readonly list nsdecls      # (prefix or None, uri) declared on the outer tag
    cdef readonly list children     # (ns, local name) of each child element
    cdef readonly bint needs_reserialize  # uses a prefix declared outside the stanza
    cdef dict _attr_prefixes        # '{ns}local' -> prefix, for qualified attributes
    cdef bytes _context             # wrapper start tag carrying the stream's declarations
    cdef object _element

    cpdef bytes with_attrs(self, dict changes)
    cdef bytes _spliced(self, dict changes)
    cpdef object element(self)
    cdef bytes _reserialized(self, dict changes)


cdef class StreamParser:
    cdef void *_parser
    cdef bytearray _buf
    cdef long long _base
    cdef long long _keep_from
    cdef long long _stanza_start
    cdef long long _last_start_end
    cdef int _depth
    cdef readonly bint ended
    cdef readonly bint failed
    cdef list _events
    cdef object _error
    cdef public Py_ssize_t max_stanza_size
    cdef public int max_depth
    cdef public int max_attributes  # namespace declarations count as attributes
    cdef public int max_elements    # in one stanza, itself included
    cdef int _pending_ns_count      # declarations expat reported for the next start tag
    cdef int _elements              # in the current stanza so far
    cdef list _stream_decls
    cdef bytes _context
    cdef list _pending_decls
    cdef dict _inner_prefixes
    cdef bint _reserialize
    cdef Stanza _current
    cdef str _sep
    cdef bint _encoding_checked
    cdef bytes _header_tag          # the stream header's start tag, to rebuild expat from

    cpdef list feed(self, bytes data)
    cpdef reset(self)
    cpdef bint hibernate(self)
    cdef int _new_expat(self) except -1
    cdef void _restart_input(self)
    cdef int _wake(self) except -1
    cdef bint _utf8_at(self, long long index)
    cdef void _fail(self, str condition, str text) noexcept
    cdef int _ns_start(self, const char *prefix, const char *uri) except -1
    cdef void _count_prefix(self, str prefix)
    cdef bint _declared_inside(self, const char *prefix_with_sep)
    cdef int _start(self, const char *name, const char **atts) except -1
    cdef void _start_stream(self, const char *name, const char **atts,
                            long long index, int count) except *
    cdef void _start_stanza(self, const char *name, const char **atts,
                            long long index, int count) except *
    cdef dict _attrs(self, const char **atts, dict prefixes)
    cdef int _end(self) except -1
