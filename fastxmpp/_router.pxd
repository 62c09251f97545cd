# The C-level interface of the stanza router.

from fastxmpp._parser cimport Stanza


# Byte-level stanza edits (the one place for them, see _router.pyx).
cpdef bytes insert_attr(bytes data, str name, str value)
cpdef bytes append_child(bytes data, bytes child)
cpdef bytes delay_element(str from_jid, str stamp, str reason=*)
cpdef bytes with_delay(bytes data, str from_jid, str stamp, str reason=*)
cpdef bytes forwardable(Stanza st, str sender, str to)
cpdef bytes forwarded_message(str from_jid, str to, str mtype, str wrapper, bytes inner,
                              bytes delay=*)


cdef class Router


cdef class Session:
    cdef public str local           # set by Router.bind
    cdef public str domain
    cdef public str resource
    cdef public str bare
    cdef public str full
    cdef public int priority        # RFC 6121 §4.7.2.3
    cdef public bint available      # sent initial presence and not yet unavailable
    cdef public object transport
    cdef public object sm           # XEP-0198 state (stream/sm.py) or None
    cdef public Router router
    cdef public object privacy      # XEP-0016 list in force (modules/privacy_rules.py) or None
    cdef public object csi          # XEP-0352 held stanzas while inactive (stream/csi.py) or None
    cdef list _out
    cdef public Py_ssize_t queued_bytes
    cdef bint _queued

    cpdef send(self, bytes data)
    cpdef deliver(self, bytes data)
    cdef _queue(self, bytes data)
    cpdef flush(self)


cdef class Router:
    cdef dict _users                # bare JID -> {resource: Session}
    cdef set _hosts
    cdef dict _jid_cache             # 'to' -> (local, domain, resource, bare), local JIDs only
    cdef Py_ssize_t _jid_cache_bytes  # what it holds, within JID_CACHE_BYTES
    cdef list _dirty
    cdef bint _flush_scheduled
    cdef object _loop
    cdef object _parse_jid
    cdef public object user_exists          # (domain, local) -> bool
    cdef public object presence_hook        # (session, stanza) for broadcast presence
    cdef public object message_hook         # (session, stanza, target, bytes to deliver)
    cdef public object directed_presence_hook  # (session, stanza, target) after delivery
    cdef public object iq_response_hook     # (session, stanza) for result/error iqs to us
    cdef public object account_privacy      # (domain, local) -> an account's default list or None
    cdef public object tracer               # (session, bytes, incoming) when debug logging
    cdef public dict carbon_accounts        # XEP-0280: bare JID -> its carbons-enabled sessions
    cdef public object carbons              # the carbons module: received(), sent()
    cdef public object mam                  # XEP-0313 archives: received(), sent(), or None
    cdef public object remote_hook          # (session, stanza, target) for non-local domains
    cdef dict _iq_handlers                  # payload namespace -> handler
    cdef dict _services                     # service domain -> handler (Router.add_service)

    cpdef route(self, Session origin, Stanza st)
    cdef tuple _target(self, str to)
    cdef _deliver_message(self, Session origin, Stanza st, tuple target)
    cdef _deliver_presence(self, Session origin, Stanza st, tuple target)
    cdef _deliver_iq(self, Session origin, Stanza st, tuple target)
    cdef list _best_resources(self, str bare)
    cdef _handle_iq(self, Session origin, Stanza st, tuple target)
    cdef _schedule(self, Session session)
