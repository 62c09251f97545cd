# cython: language_level=3
"""The per-read path of a connection, compiled: TCP bytes -> TLS records -> pacing -> parser
-> the stream's owner, and the TLS layer a client session writes through.

Every message a client sends alone on its connection pays this path whole (one read, one
TLS record, one parse; docs/PERFORMANCE.md "Unbatched messages"): in Python it was six
frames per read and two per write, about a tenth of the server's CPU with the archive off
(py-spy, "Compiling the per-read path"). What happens rarely (a handshake, input pacing
holding input back, a stream compressed with XEP-0138, a failure) stays in Python, in
`fastxmpp.stream.connection.Connection`, which derives from `ConnectionInput`.
"""

import contextlib
import logging
import ssl

from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.bytes cimport PyBytes_FromStringAndSize
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from fastxmpp._parser cimport StreamParser

log = logging.getLogger("fastxmpp.tls")

# Decrypted input is read into this one buffer and copied out at once (the loop runs one
# callback at a time), rather than each connection keeping a buffer of its own: uvloop's TLS
# protocol keeps 256 KiB per connection (docs/PERFORMANCE.md, "Many connections").
cdef enum:
    PLAINTEXT_SIZE = 65536
cdef bytearray _plaintext = bytearray(PLAINTEXT_SIZE)

cdef object SSLError = ssl.SSLError
cdef object SSLWantReadError = ssl.SSLWantReadError
cdef object SSLZeroReturnError = ssl.SSLZeroReturnError


cdef inline double monotonic() noexcept:
    """time.monotonic(), without a Python call (the same clock: CLOCK_MONOTONIC)."""
    cdef timespec now
    clock_gettime(CLOCK_MONOTONIC, &now)
    return now.tv_sec + now.tv_nsec * 1e-9


cpdef bint tls_record_start(bytes data):
    """Whether `data` begins like a TLS handshake record (RFC 8446 §5.1: content type 22,
    then legacy version 3.x), which no XML stream can: 0x16 is not an XML character."""
    return len(data) >= 2 and data[0] == 0x16 and data[1] == 0x03


cdef class ServerTLS:
    """The server side of TLS (RFC 8446) over a connection's own TCP transport, through
    OpenSSL memory BIOs: the stream's transport while the connection is encrypted (`write`
    encrypts, the rest goes to the TCP transport), fed by the connection with what the TCP
    transport reads (`handshake`, then `feed` and `read`).

    It replaces the event loop's `start_tls` for STARTTLS (RFC 6120 §5.4.3.3) and direct
    TLS (XEP-0368): per connection only the OpenSSL object, its two BIOs and this object, no
    read buffer of its own, no task or future per handshake."""

    cdef readonly object raw           # the TCP transport
    cdef public object protocol        # the Connection; its owner hears of a peer not reading
    cdef readonly object tls           # the ssl.SSLObject (get_extra_info, the handshake)
    cdef object _ssl                   # its _ssl._SSLSocket: read/write without ssl.py's frame
    cdef object _incoming
    cdef object _outgoing
    cdef readonly bint established
    cdef readonly bint backed_up
    cdef bint _closed
    cdef public Py_ssize_t write_limit
    cdef Py_ssize_t _written_while_backed_up

    def __init__(self, raw, protocol, context):
        self.raw = raw
        self.protocol = protocol
        # As with the loop's TLS transport: once the TCP transport is above its high-water
        # mark (`backed_up`), more than `write_limit` bytes written means the peer does not
        # read. One large write (a resumed session's backlog, XEP-0198 §5) is not that.
        self.write_limit = 65536
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._ssl = self.tls._sslobj

    def handshake(self, bytes data):
        """Feed handshake bytes; True once the handshake is complete (application data
        that came with its last flight stays buffered for `read`). Raises ssl.SSLError
        when the peer's handshake fails (the alert is sent first)."""
        self._incoming.write(data)
        try:
            self.tls.do_handshake()
        except SSLWantReadError:
            self._flush()
            return False
        except SSLError:
            self._flush()  # our alert, if OpenSSL wrote one (RFC 8446 §6)
            raise
        self._flush()  # the last flight, and TLS 1.3 session tickets
        self.established = True
        return True

    cpdef feed(self, bytes data):
        """Input from the TCP transport, for `read`."""
        self._incoming.write(data)

    cpdef object read(self):
        """The next piece of application data fed so far (up to one TLS record's worth),
        or None when there is none yet; b"" when the peer has closed TLS (close_notify,
        RFC 8446 §6.1). Raises ssl.SSLError on a bad record."""
        cdef Py_ssize_t count
        # Only read while there is input left: a read that finds nothing raises
        # SSLWantReadError, and exceptions are the slow path of the ssl module.
        if not (self._incoming.pending or self._ssl.pending()):
            return None
        try:
            count = self._ssl.read(PLAINTEXT_SIZE, _plaintext)
        except SSLWantReadError:
            count = -1  # an unfinished record
        except SSLZeroReturnError:
            count = 0
        if self._outgoing.pending:
            self._flush()  # post-handshake messages (a KeyUpdate answer, RFC 8446 §4.6.3)
        if count < 0:
            return None
        return PyBytes_FromStringAndSize(PyByteArray_AS_STRING(_plaintext), count)

    cdef _flush(self):
        if self._outgoing.pending:
            self.raw.write(self._outgoing.read())

    # --- the transport interface the streams write through ---------------------------

    cpdef write(self, bytes data):
        if self._closed or not data:
            return
        try:
            self._ssl.write(data)
        except SSLError as exc:  # a TLS session that already failed: nothing goes out
            log.info("TLS write to %s failed: %s", self.raw.get_extra_info("peername"), exc)
            self.abort()
            return
        cdef bint backed_up = self.backed_up  # this write may push it over the mark
        self.raw.write(self._outgoing.read())
        if backed_up:
            self._written_while_backed_up += len(data)
            if self._written_while_backed_up > self.write_limit:
                self._written_while_backed_up = -(1 << 62)  # said once per backlog
                self.protocol.owner.pause_writing()

    def writing_paused(self):
        """The TCP transport's buffer is above its high-water mark."""
        self.backed_up = True
        self._written_while_backed_up = 0

    def writing_resumed(self):
        self.backed_up = False

    def writelines(self, items):
        self.write(b"".join(items))

    cpdef bint is_closing(self):
        return self._closed or bool(self.raw.is_closing())

    def close(self):
        """close_notify (RFC 8446 §6.1), then the TCP connection is closed once what was
        written has gone out; the peer's close_notify is not waited for."""
        if self._closed:
            return
        self._closed = True
        if self.established:
            with contextlib.suppress(SSLError):
                self.tls.unwrap()
            self._flush()
        self.raw.close()

    def abort(self):
        self._closed = True
        self.raw.abort()

    def get_extra_info(self, name, default=None):
        if name == "ssl_object":
            return self.tls
        if name == "sslcontext":
            return self.tls.context
        if name == "peercert":
            return self.tls.getpeercert()
        if name == "cipher":
            return self.tls.cipher()
        return self.raw.get_extra_info(name, default)

    def pause_reading(self):
        self.raw.pause_reading()

    def resume_reading(self):
        self.raw.resume_reading()

    def set_write_buffer_limits(self, high=None, low=None):
        if high is not None:
            self.write_limit = high

    def get_write_buffer_size(self):
        return int(self.raw.get_write_buffer_size())


cdef class ConnectionInput:
    """The input half of a `Connection` (fastxmpp/stream/connection.py): the state the
    per-read path touches, and the path itself. The Python subclass holds the rest and the
    methods this path calls only when something unusual happens: `_tls_on_plain_port`,
    `_tls_handshake_done`, `_tls_failed`, `_inflate`, `_hold` (input pacing holds input),
    `eof_received`, `close_transport`."""

    cdef public object owner           # the StreamOwner the events go to
    cdef public StreamParser parser
    cdef public object transport
    cdef public ServerTLS tls          # STARTTLS or direct TLS: input goes through it
    cdef public bint closing           # no more input is read: the stream is over on our side
    cdef public bint busy              # an asynchronous step runs: events wait in `pending`
    cdef public list pending
    cdef public bint header_sent
    cdef public bint encrypted
    cdef public bint refuse_tls_hello
    cdef public object inflater        # XEP-0138: input is inflated first
    cdef public object tracer          # debug trace of input and output
    cdef public double last_received   # time.monotonic() of the last input
    # Input pacing (limits.max_bytes_per_second), a token bucket of `burst` bytes; 0: off.
    cdef public double rate
    cdef public double burst
    cdef public double tokens
    cdef public double tokens_at
    cdef public list held              # input waiting for the budget, or None

    def data_received(self, bytes data):
        if self.closing:
            return
        if self.tls is not None:
            self._tls_received(data)
            return
        if (
            self.refuse_tls_hello
            and not self.header_sent
            and not self.encrypted
            and tls_record_start(data)
        ):
            (<object>self)._tls_on_plain_port()
            return
        self._received(data)

    cpdef _received(self, bytes data):
        """Input as the stream sees it (decrypted, still compressed)."""
        cdef double now = monotonic()
        self.last_received = now  # XEP-0199 idle pings and parser hibernation look at this
        if self.rate != 0.0 and self._pace(data, now):
            return
        if self.inflater is not None:
            (<object>self)._inflate(data)
            return
        self._parse(data)

    cpdef _parse(self, bytes data):
        """Input past pacing and compression: parsed, and the events to the owner."""
        self._hand_on(data, self.parser.feed(data))

    cpdef _hand_on(self, bytes data, list events):
        """The events parsed from `data` to the owner, or to `pending` while an
        asynchronous step runs (framings that parse otherwise, WebSocket, hand on here)."""
        if self.tracer is not None:
            self.tracer(self, data, events)
        if self.busy:
            self.pending.extend(events)
            return
        self.owner.handle(events)

    cdef bint _pace(self, bytes data, double now) except -1:
        """Token bucket on input (limits.max_bytes_per_second, burst_bytes): input beyond the
        budget is held, and reading paused, until the budget has refilled; TCP flow control
        then slows the sender down and nothing it sent is dropped. True: `data` was held."""
        self.tokens = min(self.burst, self.tokens + (now - self.tokens_at) * self.rate)
        self.tokens_at = now
        self.tokens -= len(data)
        if self.held is not None:
            self.held.append(data)
            return True
        if self.tokens >= 0 or self.transport is None:
            return False
        (<object>self)._hold(data)
        return True

    cdef _tls_received(self, bytes data):
        cdef ServerTLS tls = self.tls
        try:
            if not tls.established:
                if not tls.handshake(data):
                    return
                (<object>self)._tls_handshake_done(tls)
            else:
                tls.feed(data)
            self._tls_read()
        except SSLError as exc:
            (<object>self)._tls_failed(exc)

    cpdef _tls_read(self):
        """Decrypted input to the stream, a record at a time, until input pacing holds it
        back (the rest waits in the TLS layer until the held input is released)."""
        cdef ServerTLS tls = self.tls
        while not self.closing and self.held is None:
            piece = tls.read()
            if piece is None:
                return
            if not piece:
                # close_notify (RFC 8446 §6.1): the peer closed its side, as an EOF would.
                (<object>self).eof_received()
                (<object>self).close_transport(linger=False)
                return
            self._received(piece)
