"""RFC 7395: XMPP over WebSocket, the same client stream under another framing.

A WebSocket carries one XML element per message instead of one endless document
(§3.3.3), with `<open/>` and `<close/>` (urn:ietf:params:xml:ns:xmpp-framing) where TCP has
the `<stream:stream>` tags (§3.3.2, §3.6). Everything above the framing is the c2s stream of
c2s.py, unchanged: SASL, binding, XEP-0198, XEP-0352, routing, limits and input pacing.

Input: `WebSocketConnection` is a `Connection` whose parser is kept inside a stream root
between messages; a message must parse to exactly one complete element, an `<open/>` becomes
the stream header the c2s stream checks (RFC 6120 §4.7 as on TCP), a `<close/>` the end of
the stream.

Output: the stream writes the bytes it writes on TCP to `FramedOutput`, which cuts them into
elements again with a second parser (a header becomes `<open/>`, the closing tag `<close/>`)
and gives each element the namespace declarations it inherited from the stream root, as
§3.3.3 requires of a message that must stand alone. The messages go out in order from one
task; what is queued counts as unsent output (limits.max_outbound_buffer), so a client that
does not read is closed like a TCP one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

from aiohttp import WSMsgType, web

from .._parser import STREAM_END, Stanza, StreamHeader, XMLStreamError
from ..stream.c2s import accept
from ..stream.connection import CLOSE_LINGER
from .framing import HEADER_ATTRIBUTES, FramedConnection, OutputCutter, standalone

if TYPE_CHECKING:
    from ..server import Server
    from .server import ClientAddress

log = logging.getLogger("fastxmpp.websocket")

NS_FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
SUBPROTOCOL = "xmpp"  # RFC 7395 §3.1
CLOSE = f"<close xmlns='{NS_FRAMING}'/>".encode()  # §3.6
# Bytes a WebSocket message may have beyond max_stanza_size before aiohttp refuses it (close
# code 1009); up to that, the parser's limit answers with a policy-violation stream error.
MESSAGE_SLACK = 4096


class WebSocketConnection(FramedConnection):
    """A client stream's connection over RFC 7395 framing (see the module docstring)."""

    def _parse(self, data: bytes) -> None:
        """One WebSocket message: one complete element (§3.3.3)."""
        events = self.parser.feed(data)
        if self.parser.failed:
            # The XMLStreamError event ends the stream (limits, well-formedness). §3.3.3:
            # the message is refused whole, so a complete stanza before the error in the
            # same message (`<message/>text`) is not acted on.
            events = [event for event in events if isinstance(event, XMLStreamError)]
        elif len(events) != 1 or self.parser.depth != 1 or type(events[0]) is not Stanza:
            # §3.3.3: a message is a complete element that parses as a document of its own;
            # a part of one, or several, is not a well-formed document.
            log.info("c2s %s: WebSocket message is not one XML element", self.peer)
            if self.tracer is not None:
                self.tracer(self, data, events)
            self.owner.close_with_error(
                "not-well-formed", "RFC 7395 §3.3.3: one complete XML element per message"
            )
            return
        else:
            element = events[0]
            is_open = element.ns == NS_FRAMING and element.name == "open"
            if not self.header_sent and not is_open:
                # §3.3.2: a stream starts with <open/> (RFC 6120 §4.9.3.10 on TCP: a root
                # that is no stream header).
                self.owner.close_with_error(
                    "invalid-namespace", "RFC 7395 §3.3.2: the stream starts with <open/>"
                )
                return
            if is_open and not self.header_sent:
                events = self.stream_header(element.attrs)  # §3.3.2
            elif element.ns == NS_FRAMING and element.name == "close":
                events = [STREAM_END]  # §3.6: the client closes the stream
        self._hand_on(data, events)


class FramedOutput:
    """The transport a WebSocket client stream writes to (see the module docstring): the
    `asyncio.Transport` surface the stream and `Session.flush` use."""

    def __init__(
        self, ws: web.WebSocketResponse, request: web.Request, connection: WebSocketConnection
    ) -> None:
        self.ws = ws
        self.raw = request.transport  # the TCP (or TLS) transport under the WebSocket
        self.connection = connection
        self.cutter = OutputCutter()
        self.messages: collections.deque[bytes] = collections.deque()
        self.queued = 0  # bytes in `messages`
        self.limit = connection.max_outbound_buffer
        self.wakeup = asyncio.Event()
        self.reading = asyncio.Event()  # cleared: the stream's input waits (pacing, steps)
        self.reading.set()
        self.closing = False
        self.aborted = False

    # --- what the stream writes ----------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.closing:
            return
        self._frame(self.cutter.cut(data))
        if self.get_write_buffer_size() > self.limit:
            self.connection.pause_writing()

    def _frame(self, events: list[Any]) -> None:
        for event in events:
            if type(event) is Stanza:
                self._queue(standalone(event))
            elif type(event) is StreamHeader:
                self._queue(open_element(event.attrs))
            elif event is STREAM_END:
                self._queue(CLOSE)
            else:
                log.error("c2s %s: cannot frame our own output: %s", self.connection.peer, event)
                self.abort()
                return

    def _queue(self, message: bytes) -> None:
        self.messages.append(message)
        self.queued += len(message)
        self.wakeup.set()

    async def pump(self) -> None:
        """Send the queued messages in order; close the WebSocket when asked to."""
        ws = self.ws
        try:
            while True:
                while self.messages:
                    message = self.messages.popleft()
                    self.queued -= len(message)
                    await ws.send_str(message.decode())
                if self.closing:
                    break
                self.wakeup.clear()
                await self.wakeup.wait()
            await ws.close()
        except (ConnectionError, RuntimeError):
            pass  # the peer is gone: the reader sees it too
        finally:
            self.messages.clear()
            self.queued = 0

    # --- the transport surface -----------------------------------------------------------

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        """After what is queued: the WebSocket closes (RFC 6455 §7 closing handshake)."""
        self.closing = True
        self.wakeup.set()

    def abort(self) -> None:
        self.closing = True
        self.aborted = True
        self.messages.clear()
        self.queued = 0
        self.wakeup.set()
        if self.raw is not None:
            self.raw.abort()

    def get_write_buffer_size(self) -> int:
        raw = self.raw.get_write_buffer_size() if self.raw is not None else 0
        return self.queued + raw

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass  # the limit is checked on every write

    def pause_reading(self) -> None:
        self.reading.clear()

    def resume_reading(self) -> None:
        self.reading.set()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.raw.get_extra_info(name, default) if self.raw is not None else default


def open_element(attrs: dict[str, str]) -> bytes:
    """Our stream header as `<open/>` (§3.3.2)."""
    text = "".join(
        f" {name}={quoteattr(attrs[key])}"
        for name, key in (("id", "id"), *HEADER_ATTRIBUTES)
        if key in attrs
    )
    return f"<open xmlns='{NS_FRAMING}'{text}/>".encode()


async def handle_websocket(
    server: Server, request: web.Request, client: ClientAddress, encrypted: bool
) -> web.StreamResponse:
    """GET /xmpp-websocket: the opening handshake (RFC 6455 §4.2, RFC 7395 §3.1), then the
    client stream until either side closes."""
    ws = web.WebSocketResponse(
        protocols=(SUBPROTOCOL,),
        max_msg_size=server.config.limits.max_stanza_size + MESSAGE_SLACK,
        autoclose=True,
        autoping=True,
        compress=False,
    )
    ready = ws.can_prepare(request)
    if not ready.ok or ready.protocol != SUBPROTOCOL:
        # §3.1: the client must ask for the 'xmpp' subprotocol; without it there is no
        # agreement on the framing, and no WebSocket.
        log.info("WebSocket from %s refused: no 'xmpp' subprotocol", client.peer)
        return web.Response(
            status=400, text="An RFC 7395 WebSocket needs the 'xmpp' subprotocol.\n"
        )
    await ws.prepare(request)
    connection = accept(server, connection_type=WebSocketConnection)
    assert isinstance(connection, WebSocketConnection)
    connection.refuse_tls_hello = False
    output = FramedOutput(ws, request, connection)
    pump = asyncio.get_running_loop().create_task(output.pump())
    log.info(
        "c2s %s: WebSocket%s",
        client.peer,
        " (encrypted)" if encrypted else " (not encrypted)",
    )
    connection.opened(output, client, encrypted)
    reason: Exception | None = None
    try:
        while not output.closing:
            await output.reading.wait()
            message = await ws.receive()
            if message.type == WSMsgType.TEXT:
                if connection.closing:
                    # Our <close/> is out: the client's answer (§3.6) or what it sent
                    # before reading ours ends the WebSocket.
                    output.close()
                    break
                connection.data_received(message.data.encode())
            elif message.type == WSMsgType.BINARY:
                # §3.2: XMPP goes in text messages (UTF-8) only.
                connection.owner.close_with_error(
                    "unsupported-encoding", "RFC 7395 §3.2: text messages only"
                )
            elif message.type == WSMsgType.ERROR:
                reason = message.data
                log.info("c2s %s: WebSocket error: %s", client.peer, message.data)
                break
            else:  # CLOSE, CLOSING, CLOSED: the WebSocket is over
                break
    finally:
        output.close()
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(pump, CLOSE_LINGER)  # the last messages, then the close
        connection.connection_lost(reason)
    return ws
