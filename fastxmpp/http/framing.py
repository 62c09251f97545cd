"""What the HTTP framings of a client stream share (RFC 7395 WebSocket, XEP-0206 BOSH):
the c2s stream above them is the TCP one, unchanged; only the way its XML travels differs.

Input: a `FramedConnection` hands the stream events it builds from whole elements (a
WebSocket message, the children of a BOSH <body/>); a stream start (`<open/>`, a BOSH session
request or restart) becomes the `StreamHeader` the c2s stream checks as on TCP (RFC 6120
§4.7), made by starting the connection's parser on a root with the same attributes.

Output: the stream writes the bytes it writes on TCP; `OutputCutter` parses them again into
their elements (our header, each top-level element, our closing tag), so that a framing can
send each element on its own, with the namespace declarations it inherited from the root.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

from .. import ns
from .._parser import Stanza, StreamParser
from .._router import insert_attr
from ..stream.connection import Connection

if TYPE_CHECKING:
    from .server import ClientAddress

XML_LANG = "{" + ns.XML + "}lang"
# The root a framed connection's parser is kept inside (+ attributes + ">").
STREAM_ROOT = f"<stream:stream xmlns='{ns.CLIENT}' xmlns:stream='{ns.STREAMS}'".encode()
# What the c2s stream writes first in every header (c2s_negotiation.STREAM_HEADER): where a
# header starts in its output. It cannot occur inside an element (no processing
# instructions are accepted, RFC 6120 §11.1, and '<' in text or attributes is escaped).
XML_DECLARATION = b"<?xml version='1.0'?>"
# Our own output is parsed again only to cut it into elements: generous limits (what the
# stream may write is bounded by limits.max_outbound_buffer).
OUTPUT_LIMITS = (1 << 30, 10000, 10000, 1 << 30)
# The attributes of a stream start that carry over to the stream header.
HEADER_ATTRIBUTES = (("to", "to"), ("from", "from"), ("version", "version"), ("xml:lang", XML_LANG))


class FramedConnection(Connection):
    """A client stream's connection whose framing is not one XML document over a byte
    stream: no STARTTLS or XEP-0138 (TLS is the HTTP connection's), and a transport that
    the framing provides (`opened`)."""

    byte_stream = False

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.parser.feed(STREAM_ROOT + b">")

    def opened(self, transport: Any, client: ClientAddress, encrypted: bool) -> None:
        """The framing is ready (a WebSocket is open, a BOSH session created): the stream
        begins."""
        self.peer = client.peer
        self.address = client.address
        self.encrypted = encrypted
        self._set_transport(transport)
        self.owner.connected(self)

    def stream_header(self, attrs: dict[str, str]) -> list[Any]:
        """The events of a stream header with these attributes (to, from, version,
        xml:lang): the parser starts a new root."""
        text = b"".join(
            f" {name}={quoteattr(attrs[key])}".encode()
            for name, key in HEADER_ATTRIBUTES
            if key in attrs
        )
        self.parser.reset()
        return list(self.parser.feed(STREAM_ROOT + text + b">"))

    def restart(self) -> None:
        """RFC 6120 §4.3.3 after SASL: the framing's next stream start is the new header."""
        self.parser.reset()
        self.parser.feed(STREAM_ROOT + b">")
        self.header_sent = False


class OutputCutter:
    """The stream's output cut back into its events: `StreamHeader` for our header,
    `Stanza` for each top-level element, `STREAM_END` for our closing tag."""

    def __init__(self) -> None:
        self.parser = StreamParser(*OUTPUT_LIMITS)

    def cut(self, data: bytes) -> list[Any]:
        first, *headers = data.split(XML_DECLARATION)
        events = list(self.parser.feed(first)) if first else []
        for piece in headers:
            self.parser.reset()  # a new stream (RFC 6120 §4.3.3): a new root
            events.extend(self.parser.feed(XML_DECLARATION + piece))
        return events


def standalone(element: Stanza) -> bytes:
    """The element with the declarations it inherited from the stream root (RFC 7395
    §3.3.3: "complete with all relevant namespace ... declarations"; XEP-0206 §3: stanzas in
    a BOSH body are qualified by jabber:client)."""
    if element.needs_reserialize:
        return element.with_attrs({})  # the parser's context carries the declarations
    data = element.raw
    declared = element.nsdecls or ()
    if element.prefix == "stream" and ("stream", ns.STREAMS) not in declared:
        return insert_attr(data, "xmlns:stream", ns.STREAMS)
    if element.prefix is None and element.ns == ns.CLIENT and (None, ns.CLIENT) not in declared:
        return insert_attr(data, "xmlns", ns.CLIENT)
    return data
