# The C-level interface of the stanza router.

from fastxmpp._parser cimport Stanza


# Byte-level stanza edits (the one place for them, see _router.pyx).
cpdef bytes insert_attr(bytes data, str name, str value)
cpdef str start_tag_attr(bytes data, str name)
cpdef Py_ssize_t fan_out(bytes data, list groups, str sender, int kind)
cpdef bytes append_child(bytes data, bytes child)
cpdef bytes delay_element(str from_jid, str stamp, str reason=*)
cpdef bytes with_delay(bytes data, str from_jid, str stamp, str reason=*)
cpdef bint declares_its_namespace(Stanza st)
cpdef bytes forwardable(Stanza st, str sender, str to)
cpdef tuple archive_copies(Stanza st, str sender, str to, bytes child)
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
    cdef public object stanza_filter  # allows_in()/refuse_out() for this session, or None
    cdef public object csi          # XEP-0352 held stanzas while inactive (stream/csi.py) or None
    cdef public list records        # the modules' per-session records (fastxmpp/records.py) or None
    cdef list _out
    cdef public Py_ssize_t queued_bytes
    cdef public int write_holds     # commits under way that its output waits for
    cdef bint _queued

    cpdef send(self, bytes data)
    cpdef deliver(self, bytes data)
    cdef _queue(self, bytes data)
    cpdef flush(self)
    cdef _write(self)


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
    cdef public object tracer               # (session, bytes, incoming) when debug logging
    cdef public object remote_hook          # (session, stanza, target) for non-local domains
    cdef public object directed_rewrite     # (session, stanza) -> stanza: directed presence
    # The stanza pipeline's stages (fastxmpp/pipeline.py: what each one is, and who hooks
    # it in which order): the handlers in the order they run, () when none.
    cdef tuple _message_in
    cdef tuple _message_offline
    cdef tuple _message_delivered
    cdef tuple _message_sent
    cdef tuple _presence_broadcast
    cdef tuple _presence_subscription
    cdef tuple _presence_directed
    cdef tuple _iq_account
    cdef tuple _iq_full
    cdef tuple _iq_response
    cdef tuple _turn_commit
    cdef tuple _turn_end
    cdef dict _iq_handlers                  # payload namespace -> handler
    cdef set _iq_for_missing                # of those, the ones asked of missing accounts too
    cdef dict _services                     # service domain -> handler (Router.add_service)
    # Stanzas `route` handed on, by kind (/metrics, fastxmpp/metrics.py).
    cdef readonly unsigned long long routed_messages
    cdef readonly unsigned long long routed_presences
    cdef readonly unsigned long long routed_iqs

    cpdef route(self, Session origin, Stanza st)
    cdef tuple _target(self, str to)
    cdef _deliver_message(self, Session origin, Stanza st, tuple target)
    cdef _deliver_presence(self, Session origin, Stanza st, tuple target)
    cdef _deliver_iq(self, Session origin, Stanza st, tuple target)
    cdef list _best_resources(self, str bare)
    cdef _handle_iq(self, Session origin, Stanza st, tuple target)
    cdef _directed(self, Session origin, Stanza st, tuple target)
    cdef _delivered(self, Session origin, Stanza st, tuple target, bytes data, tuple sessions)
    cdef _schedule(self, Session session)
    cpdef commit_turn(self, bint wait)
    cpdef end_turn(self)
