"""A deliberately simple XMPP client over a blocking socket, for hostile-input tests.

It parses what the server sends with lxml (not with fastxmpp's own parser), so a parser bug
in the server cannot hide itself in the test.
"""

from __future__ import annotations

import base64
import contextlib
import select
import socket
import ssl
import time
import zlib
from typing import Any

from lxml import etree
from scramp import ScramClient

STREAMS = "http://etherx.jabber.org/streams"
STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"
STANZA_ERRORS = "urn:ietf:params:xml:ns:xmpp-stanzas"
TLS = "urn:ietf:params:xml:ns:xmpp-tls"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
BIND = "urn:ietf:params:xml:ns:xmpp-bind"
CLIENT = "jabber:client"
COMPRESS = "http://jabber.org/protocol/compress"
COMPRESS_FEATURE = "http://jabber.org/features/compress"

HEADER = (
    "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    "xmlns:stream='http://etherx.jabber.org/streams' to='{to}' version='1.0'>"
)


class StreamClosed(Exception):
    """The server closed the TCP connection."""


class RawClient:
    def __init__(
        self, port: int, host: str = "127.0.0.1", timeout: float = 10.0, sock: Any = None
    ) -> None:
        # `sock`: a connection opened by the caller (XEP-0368 direct TLS: a TLS socket).
        self.sock: Any = sock or socket.create_connection((host, port), timeout=timeout)
        self.timeout = timeout
        self._new_parser()
        self.header: Any = None
        self.closed_stream = False  # the server sent </stream:stream>
        self.write_shut = False  # we closed our side of TCP after the server's closing tag
        self.eof = False
        # XEP-0138: set by `compress()`; bytes on the wire in each direction, for tests.
        self.deflater: Any = None
        self.inflater: Any = None
        self.wire_sent = 0
        self.wire_received = 0
        # Set to a bytearray to keep what the server sends (decompressed), for byte checks.
        self.recording: bytearray | None = None

    def _new_parser(self) -> None:
        self.parser = etree.XMLPullParser(events=("start", "end"), resolve_entities=False)
        self.depth = 0
        self.queue: list[Any] = []

    # --- raw I/O ----------------------------------------------------------------------

    def send(self, data: bytes | str) -> None:
        raw = data.encode() if isinstance(data, str) else data
        if self.deflater is not None:
            raw = self.deflater.compress(raw) + self.deflater.flush(zlib.Z_SYNC_FLUSH)
        self.wire_sent += len(raw)
        self.sock.sendall(raw)

    def send_raw(self, data: bytes) -> None:
        """Bytes onto the wire as they are, compressed stream or not."""
        self.sock.sendall(data)

    def _pump(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no answer from the server")
        if not (isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()):
            # poll, not select: tests that hold over 1024 descriptors use this client too.
            poller = select.poll()
            try:
                poller.register(self.sock, select.POLLIN)
            except ValueError:  # closed by `abort` from another thread (fd -1)
                raise OSError("the connection was aborted") from None
            if not poller.poll(remaining * 1000):
                raise TimeoutError("no answer from the server")
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            data = b""
        if not data:
            self.eof = True
            raise StreamClosed()
        self.wire_received += len(data)
        if self.inflater is not None:
            data = self.inflater.decompress(data)
            if not data:
                return
        if self.recording is not None:
            self.recording += data
        self.parser.feed(data)
        for event, el in self.parser.read_events():
            if event == "start":
                self.depth += 1
                if self.depth == 1:
                    self.header = el
            else:
                self.depth -= 1
                if self.depth == 1:
                    self.queue.append(el)
                elif self.depth == 0:
                    self.closed_stream = True

    def next(self, timeout: float | None = None) -> Any:
        """The next top-level element the server sends."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while not self.queue:
            if self.closed_stream:
                raise StreamClosed()
            self._pump(deadline)
        return self.queue.pop(0)

    def wait_header(self) -> Any:
        deadline = time.monotonic() + self.timeout
        while self.header is None:
            self._pump(deadline)
        return self.header

    def wait_closed(self, timeout: float | None = None) -> bool:
        """True once the server has closed the stream and the connection. Like a polite
        client (RFC 6120 §4.4) this one closes its side of TCP once it has the server's
        closing tag; the server waits for that, a bounded time, before closing its own."""
        deadline = time.monotonic() + (timeout or self.timeout)
        try:
            while True:
                if self.closed_stream and not self.write_shut:
                    self.write_shut = True
                    with contextlib.suppress(OSError):
                        # The plain socket's shutdown: SSLSocket.shutdown would drop TLS.
                        socket.socket.shutdown(self.sock, socket.SHUT_WR)
                self._pump(deadline)
        except StreamClosed:
            return True

    def close(self) -> None:
        """Close politely (RFC 6120 §4.4): send our closing tag and wait for the server's,
        so that the server has ended the session before the next test looks at it."""
        if self.header is not None and not self.eof and not self.closed_stream:
            with contextlib.suppress(OSError, TimeoutError, ssl.SSLError, etree.XMLSyntaxError):
                self.send("</stream:stream>")
                self.wait_closed(timeout=5)
        self.abort()

    def abort(self) -> None:
        """Drop the TCP connection without a closing handshake."""
        with contextlib.suppress(OSError):
            self.sock.close()

    # --- protocol steps -----------------------------------------------------------------

    def open_stream(self, to: str = "localhost") -> Any:
        """Send a header; return the <stream:features/> element."""
        self._new_parser()
        self.header = None
        self.send(HEADER.format(to=to))
        self.wait_header()
        features = self.next()
        assert features.tag == f"{{{STREAMS}}}features", etree.tostring(features)
        return features

    def compress(self, method: str = "zlib") -> Any:
        """XEP-0138: request compression; on <compressed/> switch both directions to zlib and
        restart the stream (the new features are returned). Else return the <failure/>."""
        self.send(f"<compress xmlns='{COMPRESS}'><method>{method}</method></compress>")
        answer = self.next()
        if answer.tag != f"{{{COMPRESS}}}compressed":
            return answer
        self.deflater = zlib.compressobj()
        self.inflater = zlib.decompressobj()
        return self.open_stream()

    def stream_error(self) -> str:
        """Read up to a <stream:error/>; return its condition name."""
        while True:
            el = self.next()
            if el.tag == f"{{{STREAMS}}}error":
                for child in el:
                    if child.tag.startswith(f"{{{STREAM_ERRORS}}}") and not child.tag.endswith(
                        "}text"
                    ):
                        return child.tag.split("}", 1)[1]
                raise AssertionError("stream error without a condition")

    def starttls(self, ca_file: str, server_name: str = "localhost", version: Any = None) -> Any:
        """`version`: an ssl.TLSVersion the client goes no higher than."""
        self.send(f"<starttls xmlns='{TLS}'/>")
        proceed = self.next()
        assert proceed.tag == f"{{{TLS}}}proceed", etree.tostring(proceed)
        context = ssl.create_default_context(cafile=ca_file)
        if version is not None:
            context.maximum_version = version
        self.sock = context.wrap_socket(self.sock, server_hostname=server_name)
        return self.open_stream(server_name)

    def sasl_scram(
        self,
        user: str,
        password: str,
        mechanism: str = "SCRAM-SHA-256",
        channel_binding: tuple[str, Any] | None = None,
    ) -> Any:
        """Run a SCRAM exchange; return the final <success/> or <failure/> element.
        `channel_binding`: scramp's (type, data) for a -PLUS mechanism; with another
        mechanism it makes the client say 'y' (it could bind, the server seems not to)."""
        client = ScramClient([mechanism], user, password, channel_binding=channel_binding)
        first = base64.b64encode(client.get_client_first().encode()).decode()
        self.send(f"<auth xmlns='{SASL}' mechanism='{mechanism}'>{first}</auth>")
        challenge = self.next()
        if challenge.tag != f"{{{SASL}}}challenge":
            return challenge
        client.set_server_first(base64.b64decode(challenge.text).decode())
        final = base64.b64encode(client.get_client_final().encode()).decode()
        self.send(f"<response xmlns='{SASL}'>{final}</response>")
        outcome = self.next()
        if outcome.tag == f"{{{SASL}}}success":
            client.set_server_final(base64.b64decode(outcome.text).decode())
            self.header = None  # RFC 6120 §6.4.6: the stream restarts after success
        return outcome

    def sasl_plain(self, user: str, password: str) -> Any:
        blob = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        self.send(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{blob}</auth>")
        outcome = self.next()
        if outcome.tag == f"{{{SASL}}}success":
            self.header = None  # RFC 6120 §6.4.6: the stream restarts after success
        return outcome

    def bind(self, resource: str | None = None) -> str:
        res = f"<resource>{resource}</resource>" if resource else ""
        self.send(f"<iq type='set' id='bind1'><bind xmlns='{BIND}'>{res}</bind></iq>")
        reply = self.next()
        jid = reply.find(f"{{{BIND}}}bind/{{{BIND}}}jid")
        assert reply.get("type") == "result" and jid is not None, etree.tostring(reply)
        return str(jid.text)

    def login(self, ca_file: str, user: str, password: str, resource: str | None = None) -> str:
        """STARTTLS, SCRAM-SHA-256, bind: the full JID."""
        self.open_stream()
        self.starttls(ca_file)
        outcome = self.sasl_scram(user, password)
        assert outcome.tag == f"{{{SASL}}}success", etree.tostring(outcome)
        self.open_stream()
        return self.bind(resource)


def stanza_error(el: Any) -> str | None:
    """The defined condition of an error stanza, or None."""
    error = el.find(f"{{{CLIENT}}}error")
    if error is None:
        return None
    for child in error:
        if child.tag.startswith(f"{{{STANZA_ERRORS}}}") and not child.tag.endswith("}text"):
            return str(child.tag.split("}", 1)[1])
    return None
