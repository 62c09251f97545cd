"""One network connection carrying an XML stream: the transport layer under every stream kind.

A `Connection` is the asyncio protocol of one TCP connection. It owns what belongs to the
connection rather than to a stream's purpose: the transport (replaced by STARTTLS, RFC 6120
§5, and by XEP-0138 compression), the incremental parser that turns bytes into stream events
(the framing: for TCP the events are cut out of one endless XML document), input pacing, the
events held back while an asynchronous negotiation step runs, and the closing handshake's
wait for the peer (RFC 6120 §4.4).

What the events mean is its owner's business (a `StreamOwner`: a client stream, an incoming
or outgoing server link). The owner can change while the connection lives: XEP-0198
resumption hands it from the stream that authenticated to the session it resumes
(`attach`), and a session may give its connection up to close it on its own
(`detach` + `close_stream`) while the session waits to be resumed.

The per-read path (`data_received` -> TLS -> `_received` -> `_parse` -> `owner.handle`, where a
client session's stanzas go to `Router.route`) is compiled: `ConnectionInput` in
fastxmpp/_transport.pyx, which this class derives from; what it calls only when something
unusual happens is here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from .. import descriptors
from .._parser import StreamParser
from .._transport import ConnectionInput, ServerTLS
from ..errors import StreamError, answered, stream_error_bytes
from .compression import NS_PROTOCOL, CompressedTransport, CompressionError, Inflater
from .tls import HANDSHAKE_TIMEOUT

if TYPE_CHECKING:
    from ..config import LimitsConfig

log = logging.getLogger("fastxmpp.connection")

STREAM_CLOSE = b"</stream:stream>"
# RFC 6120 §4.4: after our closing tag, seconds we wait for the peer to close its side before
# closing the connection ourselves.
CLOSE_LINGER = 2.0


class StreamOwner(Protocol):
    """What a connection hands its events to. `transport` mirrors the connection's while
    the owner has it (None otherwise): client sessions write through it from compiled code."""

    transport: Any

    def connected(self, connection: Connection) -> None:
        """The connection is made (with direct TLS: the handshake is done)."""

    def handle(self, events: list[Any]) -> None:
        """Parsed stream events, in order; stop early while `connection.busy`."""

    def connection_lost(self, exc: Exception | None) -> None:
        """The transport is gone (closed by either side)."""

    def pause_writing(self) -> None:
        """The peer does not read: more than limits.max_outbound_buffer is unsent."""

    def close_with_error(
        self, condition: str | None, text: str | None = None, app_xml: str = ""
    ) -> None:
        """End the stream with a stream error (RFC 6120 §4.9), or none."""


class Released:
    """The owner of a connection whose stream is over and whose session has gone on without
    it: it only waits for the peer to close (RFC 6120 §4.4)."""

    transport: Any = None

    def connected(self, connection: Connection) -> None:
        pass

    def handle(self, events: list[Any]) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        pass

    def pause_writing(self) -> None:
        pass

    def close_with_error(
        self, condition: str | None, text: str | None = None, app_xml: str = ""
    ) -> None:
        pass


# The owner of every connection that is gone: a connection whose stream has ended keeps no
# reference to it (the stream refers to its connection, the connection to its owner and TLS
# layer, which refers back to it: left in place, each ended connection would wait for the
# garbage collector's full collection, TLS session and all).
GONE = Released()


class Connection(ConnectionInput, asyncio.Protocol):
    # The stream is the connection's byte stream, so STARTTLS and XEP-0138 compression can
    # replace its transport; not so for a framing over another protocol (RFC 7395 §3.1:
    # WebSocket gets TLS from HTTPS, never STARTTLS).
    byte_stream = True
    # Slots, not an instance dict: 30 attributes are past what CPython 3.11 shares between
    # instances' dicts, and each connection's own dict cost 1.6 KiB (tracemalloc, 1000 held
    # connections; docs/PERFORMANCE.md, "Many connections"). The attributes the per-read
    # path touches are ConnectionInput's (fastxmpp/_transport.pyx).
    __slots__ = (
        "_tls_on_established",
        "address",
        "background",
        "compressed",
        "direct_tls",
        "lang",
        "max_outbound_buffer",
        "peer",
        "resume_timer",
        "stream_id",
        "tls_timer",
        "trace_hiding",
        "what",
    )

    def __init__(
        self, owner: StreamOwner, limits: LimitsConfig, what: str, background: set[Any]
    ) -> None:
        self.owner = owner
        self.what = what  # "c2s", "s2s": log lines
        self.background = background  # the server's running tasks (kept referenced)
        self.max_outbound_buffer = limits.max_outbound_buffer
        self.parser = StreamParser(
            limits.max_stanza_size, limits.max_depth, limits.max_attributes, limits.max_elements
        )
        self.transport: Any = None
        self.peer = "?"
        self.address = "?"
        # Stream-level state of the stream on this connection (restarts keep the connection).
        self.stream_id = ""
        self.lang = "en"
        self.header_sent = False
        self.encrypted = False
        self.tls = None  # STARTTLS or direct TLS (a ServerTLS): input goes through it
        # XEP-0368 direct TLS: the context the handshake starts with at connection_made.
        self.direct_tls: ssl.SSLContext | None = None
        self._tls_on_established: Callable[[], None] | None = None
        self.tls_timer: asyncio.TimerHandle | None = None  # the handshake's time limit
        self.compressed = False  # XEP-0138 negotiated: transport compresses, input inflated
        self.inflater: Inflater | None = None
        self.closing = False  # no more input is read: the stream is over on our side
        self.busy = False  # an asynchronous step (TLS handshake, password check) is running
        self.pending: list[Any] = []  # events parsed while busy
        # Debug trace: (connection, bytes, events parsed from them, or None for output). It
        # may hide input that carries a secret, from one read up to the read that completes
        # the element (`trace_hiding`).
        self.tracer: Callable[[Connection, bytes, list[Any] | None], None] | None = None
        self.trace_hiding = False
        # A TLS ClientHello where a stream header belongs is refused with one log line
        # (client listeners: a client trying XEP-0368 direct TLS on a STARTTLS port).
        self.refuse_tls_hello = False
        self.last_received = time.monotonic()
        # Input pacing (limits.max_bytes_per_second), a token bucket of `burst` bytes; 0: off.
        self.rate = 0.0
        self.burst = 0.0
        self.tokens = 0.0
        self.tokens_at = self.last_received
        self.held: list[bytes] | None = None  # input waiting for the budget
        self.resume_timer: asyncio.TimerHandle | None = None

    def pace_input(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = self.tokens = burst

    # --- owners (XEP-0198 resumption moves the connection) -----------------------------

    def attach(self, owner: StreamOwner) -> None:
        """`owner` gets this connection's events and writes through its transport."""
        self.owner.transport = None
        self.owner = owner
        owner.transport = self.transport

    def release(self) -> Connection:
        """Its owner gives the connection up (to close it while the owner, a session,
        stays): it belongs to no stream any more."""
        self.attach(Released())
        return self

    # --- asyncio protocol --------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        # Beyond this much unsent output asyncio calls pause_writing: a slow reader.
        transport.set_write_buffer_limits(high=self.max_outbound_buffer)
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("socket")
        if sock is not None:
            descriptors.opened(sock.fileno())  # near RLIMIT_NOFILE: said in the log
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.address = peer[0] if peer else "?"
        self._set_transport(transport)
        if self.direct_tls is not None:
            # XEP-0368 §3: TLS from the first byte. The owner hears of the connection when
            # the handshake is done, as from the loop's TLS listener before.
            self._begin_tls(self.direct_tls, partial(self.owner.connected, self))
            return
        self.owner.connected(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._set_transport(None)
        self._tls_timer_cancel()
        if self.resume_timer is not None:
            self.resume_timer.cancel()
            self.resume_timer = None
        owner, self.owner = self.owner, GONE
        tls, self.tls = self.tls, None
        if self.direct_tls is not None and (tls is None or not tls.established):
            return  # a direct TLS handshake that never finished: the owner never knew
        owner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.tls is not None:
            self.tls.writing_paused()  # it tells the owner if writes go on regardless
            return
        self.owner.pause_writing()

    def resume_writing(self) -> None:
        if self.tls is not None:
            self.tls.writing_resumed()

    def eof_received(self) -> bool | None:
        return None  # the peer closed its side: so do we (RFC 6120 §4.4)

    def _inflate(self, data: bytes) -> None:
        assert self.inflater is not None
        try:
            for piece in self.inflater.feed(data):
                self._parse(piece)
                if self.closing:
                    return
        except CompressionError as exc:
            # XEP-0138 §3: a processing error after compression closes the stream.
            self.owner.close_with_error(
                "undefined-condition",
                f"cannot decompress: {exc}",
                f"<failure xmlns='{NS_PROTOCOL}'><processing-failed/></failure>",
            )

    def _hold(self, data: bytes) -> None:
        """Input pacing (`ConnectionInput._pace`) is over budget: `data` is held and reading
        paused until the budget has refilled."""
        self.held = [data]
        self.transport.pause_reading()
        self.resume_timer = asyncio.get_running_loop().call_later(
            -self.tokens / self.rate, self._release_held
        )

    def _release_held(self) -> None:
        self.resume_timer = None
        held, self.held = self.held or [], None
        for data in held:
            if self.closing:
                return
            if self.inflater is not None:
                self._inflate(data)
            else:
                self._parse(data)
        if self.transport is not None and not self.closing:
            self.transport.resume_reading()
            if self.tls is not None and self.tls.established:
                try:
                    self._tls_read()  # what came with the held input
                except ssl.SSLError as exc:
                    self._tls_failed(exc)

    def _tls_on_plain_port(self) -> None:
        """A TLS ClientHello where a stream header belongs: one line says so (not a
        not-well-formed trace of the handshake's bytes), and the connection is closed
        without a stream error, which a TLS client could not read."""
        sockname = self.transport.get_extra_info("sockname") if self.transport else None
        log.info(
            "%s %s: TLS handshake on STARTTLS port %s from %s; configure a direct TLS "
            'listener (tls = "direct") or have the client use STARTTLS',
            self.what,
            self.peer,
            sockname[1] if sockname else "?",
            self.address,
        )
        self.close_transport(linger=False)

    # --- writing and closing -----------------------------------------------------------

    def _set_transport(self, transport: Any) -> None:
        self.transport = transport
        self.owner.transport = transport

    def write(self, data: bytes) -> None:
        """Straight to the transport (a client session queues its output and flushes it
        first: `Session.flush`)."""
        if self.tracer is not None:
            self.tracer(self, data, None)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def closing_bytes(
        self, condition: str | None, text: str | None = None, app_xml: str = ""
    ) -> bytes:
        """Our side of the closing handshake: a stream error (if any, RFC 6120 §4.9), then
        the closing tag; one piece, so that the peer reads them together."""
        if condition is None:
            return STREAM_CLOSE
        log.info(
            "%s %s: stream error %s%s",
            self.what,
            self.peer,
            condition,
            f" ({text})" if text else "",
        )
        return stream_error_bytes(condition, text, app_xml) + STREAM_CLOSE

    def end_stream(self, condition: str | None, text: str | None = None, app_xml: str = "") -> None:
        """Close the stream (with an error) and then the connection, once the peer has
        closed its side (§4.4)."""
        self.write(self.closing_bytes(condition, text, app_xml))
        self.close_transport(linger=True)

    def close_transport(self, linger: bool) -> None:
        """Stop reading and close. linger: we closed the stream, the peer has not; wait
        (CLOSE_LINGER at most) for it to close its side, reading and dropping what it still
        sends (RFC 6120 §4.4). Closing at once with its input unread would make the kernel
        answer with a reset, which can destroy the stream error before the peer read it."""
        self.closing = True
        transport = self.transport
        if transport is None:
            return
        if not linger:
            transport.close()
            return
        with contextlib.suppress(RuntimeError, AttributeError):
            transport.resume_reading()  # input pacing may have paused it
        asyncio.get_running_loop().call_later(CLOSE_LINGER, transport.close)

    def hibernate(self) -> None:
        """No stream on this connection any more (its session lost it): drop input state."""
        self.held = None
        self.pending = []
        self.inflater = None
        self.parser.hibernate()

    # --- negotiation steps -------------------------------------------------------------

    def run_step(self, step: Callable[[], Awaitable[Any]]) -> None:
        """Run a coroutine step (a TLS handshake, a password check); events that arrive
        meanwhile wait in `pending` and go to the owner when it is done. A StreamError it
        raises ends the stream."""
        self.busy = True
        if self.transport is not None:
            self.transport.pause_reading()

        async def runner() -> None:
            try:
                await step()
            except StreamError as err:
                answered(err)
                self.owner.close_with_error(err.condition, err.text)
            except Exception:
                log.exception("internal error on %s stream from %s", self.what, self.peer)
                self.owner.close_with_error("internal-server-error")
            finally:
                self._step_done()

        task = asyncio.get_running_loop().create_task(runner())
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def _step_done(self) -> None:
        self.busy = False
        pending, self.pending = self.pending, []
        if self.transport is not None and not self.closing:
            self.transport.resume_reading()
            self.owner.handle(pending)

    def start_tls(self, context: ssl.SSLContext, established: Callable[[], None]) -> None:
        """STARTTLS on the receiving side (RFC 6120 §5.4.3.3), after <proceed/> was
        written: anything the peer sent after <starttls/> is discarded, what it sends next
        is the TLS handshake, and then the stream restarts over TLS (`established` runs
        then). The handshake runs here, on the connection's own transport (ServerTLS), not
        in the event loop's TLS protocol."""
        self.pending.clear()
        self._begin_tls(context, established)

    def _begin_tls(self, context: ssl.SSLContext, established: Callable[[], None]) -> None:
        self.busy = True  # the owner stops (at <starttls/>); nothing is parsed meanwhile
        self.tls = ServerTLS(self.transport, self, context)
        self._tls_on_established = established
        self.tls_timer = asyncio.get_running_loop().call_later(
            HANDSHAKE_TIMEOUT, self._tls_timed_out
        )

    def _tls_handshake_done(self, tls: ServerTLS) -> None:
        self._tls_timer_cancel()
        if self.direct_tls is None:
            self.tls_established(tls, "TLS")
        else:
            self._set_transport(tls)  # the owner says so when it is told (`connected`)
        self.busy = False
        self.pending.clear()
        self.restart()
        established, self._tls_on_established = self._tls_on_established, None
        if established is not None:
            established()

    def _tls_failed(self, exc: Exception) -> None:
        log.info("%s TLS with %s failed: %s", self.what, self.peer, exc)
        self._tls_timer_cancel()
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def _tls_timed_out(self) -> None:
        self.tls_timer = None
        self._tls_failed(TimeoutError(f"no handshake within {HANDSHAKE_TIMEOUT:g} s"))

    def _tls_timer_cancel(self) -> None:
        if self.tls_timer is not None:
            self.tls_timer.cancel()
            self.tls_timer = None

    def tls_established(self, transport: Any, how: str) -> None:
        transport.set_write_buffer_limits(high=self.max_outbound_buffer)
        self._set_transport(transport)
        self.encrypted = True
        tls = transport.get_extra_info("ssl_object")
        alpn = tls.selected_alpn_protocol()
        log.info(
            "%s %s: %s %s%s",
            self.what,
            self.peer,
            how,
            tls.version(),
            f", ALPN {alpn}" if alpn else "",
        )

    def compress(self) -> None:
        """XEP-0138 §3, after <compressed/> was written: our output is compressed from
        here on, input inflated, and the stream restarts (what was parsed after
        <compress/> belongs to the void stream)."""
        self._set_transport(CompressedTransport(self.transport))
        self.inflater = Inflater()
        self.compressed = True
        log.info("%s %s: zlib stream compression", self.what, self.peer)

        async def restart() -> None:
            self.pending.clear()
            self.restart()

        # Through run_step so that events parsed after <compress/> are held back.
        self.run_step(restart)

    def restart(self) -> None:
        """RFC 6120 §4.3.3: after TLS, SASL and compression the stream starts over."""
        self.parser.reset()
        self.header_sent = False
