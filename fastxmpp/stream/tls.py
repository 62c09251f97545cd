"""TLS on the receiving side of a stream: STARTTLS (RFC 6120 §5.4.3.3) for client and server
streams alike, run by the connection itself over memory BIOs (`ServerTLS`); the context of
XEP-0368 direct TLS client listeners (the loop does that handshake at accept, with the same
certificates and settings)."""

from __future__ import annotations

import contextlib
import logging
import ssl
from typing import Any, cast

import idna

log = logging.getLogger("fastxmpp.tls")

HANDSHAKE_TIMEOUT = 30.0


# Decrypted input is read into this one buffer and copied out at once (the loop runs one
# callback at a time), rather than each connection keeping a buffer of its own: uvloop's TLS
# protocol keeps 256 KiB per connection (docs/PERFORMANCE.md, "Many connections").
_PLAINTEXT_BUFFER = bytearray(64 * 1024)
_PLAINTEXT_VIEW = memoryview(_PLAINTEXT_BUFFER)


class ServerTLS:
    """The server side of TLS (RFC 8446) over a connection's own TCP transport, through
    OpenSSL memory BIOs: the stream's transport while the connection is encrypted (`write`
    encrypts, the rest goes to the TCP transport), fed by the connection with what the TCP
    transport reads (`handshake`, then `decrypt`).

    It replaces the event loop's `start_tls` for STARTTLS (RFC 6120 §5.4.3.3): per
    connection only the OpenSSL object, its two BIOs and this object, no read buffer of its
    own, no task or future per handshake."""

    __slots__ = (
        "_closed",
        "_incoming",
        "_outgoing",
        "_written_while_backed_up",
        "backed_up",
        "established",
        "protocol",
        "raw",
        "tls",
        "write_limit",
    )

    def __init__(self, raw: Any, protocol: Any, context: ssl.SSLContext) -> None:
        self.raw = raw
        self.protocol = protocol  # its owner hears of a peer that does not read
        # As with the loop's TLS transport: once the TCP transport is above its high-water
        # mark (`backed_up`), more than `write_limit` bytes written means the peer does not
        # read. One large write (a resumed session's backlog, XEP-0198 §5) is not that.
        self.write_limit = 65536
        self.backed_up = False
        self._written_while_backed_up = 0
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self.established = False
        self._closed = False

    def handshake(self, data: bytes) -> bool:
        """Feed handshake bytes; True once the handshake is complete (application data
        that came with its last flight stays buffered for `decrypt`). Raises ssl.SSLError
        when the peer's handshake fails (the alert is sent first)."""
        self._incoming.write(data)
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return False
        except ssl.SSLError:
            self._flush()  # our alert, if OpenSSL wrote one (RFC 8446 §6)
            raise
        self._flush()  # the last flight, and TLS 1.3 session tickets
        self.established = True
        return True

    def feed(self, data: bytes) -> None:
        """Input from the TCP transport, for `read`."""
        self._incoming.write(data)

    def read(self) -> bytes | None:
        """The next piece of application data fed so far (up to one TLS record's worth),
        or None when there is none yet; b"" when the peer has closed TLS (close_notify,
        RFC 8446 §6.1). Raises ssl.SSLError on a bad record."""
        tls = self.tls
        # Only read while there is input left: a read that finds nothing raises
        # SSLWantReadError, and exceptions are the slow path of the ssl module.
        if not (self._incoming.pending or tls.pending()):
            return None
        count: int
        try:
            # With a buffer, read() returns the count (typeshed says bytes).
            count = cast(int, tls.read(len(_PLAINTEXT_BUFFER), _PLAINTEXT_BUFFER))
        except ssl.SSLWantReadError:
            count = -1  # an unfinished record
        except ssl.SSLZeroReturnError:
            count = 0
        if self._outgoing.pending:
            self._flush()  # post-handshake messages (a KeyUpdate answer, RFC 8446 §4.6.3)
        if count < 0:
            return None
        return bytes(_PLAINTEXT_VIEW[:count])

    def _flush(self) -> None:
        if self._outgoing.pending:
            self.raw.write(self._outgoing.read())

    # --- the transport interface the streams write through ---------------------------

    def write(self, data: bytes) -> None:
        if self._closed or not data:
            return
        try:
            self.tls.write(data)
        except ssl.SSLError as exc:  # a TLS session that already failed: nothing goes out
            log.info("TLS write to %s failed: %s", self.raw.get_extra_info("peername"), exc)
            self.abort()
            return
        backed_up = self.backed_up  # this write may be what pushes it over the mark
        self.raw.write(self._outgoing.read())
        if backed_up:
            self._written_while_backed_up += len(data)
            if self._written_while_backed_up > self.write_limit:
                self._written_while_backed_up = -(1 << 62)  # said once per backlog
                self.protocol.owner.pause_writing()

    def writing_paused(self) -> None:
        """The TCP transport's buffer is above its high-water mark."""
        self.backed_up = True
        self._written_while_backed_up = 0

    def writing_resumed(self) -> None:
        self.backed_up = False

    def writelines(self, items: Any) -> None:
        self.write(b"".join(items))

    def is_closing(self) -> bool:
        return self._closed or bool(self.raw.is_closing())

    def close(self) -> None:
        """close_notify (RFC 8446 §6.1), then the TCP connection is closed once what was
        written has gone out; the peer's close_notify is not waited for."""
        if self._closed:
            return
        self._closed = True
        if self.established:
            with contextlib.suppress(ssl.SSLError):
                self.tls.unwrap()
            self._flush()
        self.raw.close()

    def abort(self) -> None:
        self._closed = True
        self.raw.abort()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self.tls
        if name == "sslcontext":
            return self.tls.context
        if name == "peercert":
            return self.tls.getpeercert()
        if name == "cipher":
            return self.tls.cipher()
        return self.raw.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self.raw.pause_reading()

    def resume_reading(self) -> None:
        self.raw.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is not None:
            self.write_limit = high

    def get_write_buffer_size(self) -> int:
        return int(self.raw.get_write_buffer_size())


# XEP-0368 §3: the ALPN protocol of direct TLS client connections.
ALPN_CLIENT = "xmpp-client"


def _sni_name(host: str) -> str:
    """`host` as TLS SNI carries it (RFC 6066 §3: ASCII, an IDN as its A-label)."""
    try:
        return idna.encode(host).decode().lower()
    except idna.IDNAError:
        return host.lower()


def direct_tls_context(
    contexts: dict[str, ssl.SSLContext], alpn: str = ALPN_CLIENT
) -> ssl.SSLContext:
    """The context a XEP-0368 direct TLS listener starts with, `contexts` being one per host
    (made for this listener, not shared with STARTTLS), all offered ALPN `alpn`
    ('xmpp-client'; 'http/1.1' on HTTPS listeners).

    Before TLS there is no stream header to name the host, so the SNI the client sends picks
    the host's certificate (XEP-0368 §3: clients set SNI to the JID's domain). Without SNI,
    or with a name we do not serve, the first host's certificate goes out and the stream
    header decides as on a STARTTLS port (host-unknown for a domain not served). A client
    offering ALPN without 'xmpp-client' gets no ALPN answer, not a refusal (RFC 7301 §3.2
    lets the server ignore the extension)."""
    by_sni = {_sni_name(host): context for host, context in contexts.items()}
    for context in contexts.values():
        context.set_alpn_protocols([alpn])
    initial = next(iter(contexts.values()))

    def select_host(connection: Any, server_name: str | None, _context: Any) -> None:
        chosen = by_sni.get(server_name.lower()) if server_name else None
        if chosen is not None:
            connection.context = chosen

    initial.sni_callback = select_host
    return initial


def tls_record_start(data: bytes) -> bool:
    """Whether `data` begins like a TLS handshake record (RFC 8446 §5.1: content type 22,
    then legacy version 3.x), which no XML stream can: 0x16 is not an XML character."""
    return len(data) >= 2 and data[0] == 0x16 and data[1] == 0x03
