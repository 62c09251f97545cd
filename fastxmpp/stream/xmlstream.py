"""What every XML stream negotiation shares (RFC 6120 §4), over a `Connection`.

`XmlStream` is the base of the client stream (c2s.py) and of both directions of a server
link (s2s.py); a component stream (XEP-0114) would be one more. It holds the checks every
stream header gets (§4.7, §4.8.5, §4.9.3), the closing handshake (§4.4: our stream error and
closing tag, then the connection waits for the peer's), the answer to the peer's closing tag
or stream error, and STARTTLS and direct TLS on the receiving side (§5, XEP-0368). A
subclass says how its header reads (`_send_header`), what the stream offers and takes
(features, elements) and what happens to its session when the stream ends
(`_stream_ending`).
"""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING, Any

from lxml import etree

from .. import ns
from .._parser import STREAM_END, Stanza, StreamHeader, XMLStreamError, read_stanza
from .._router import Session, declares_its_namespace
from ..errors import StanzaError, StreamError, answered, bounced_payload, stanza_error_bytes
from .connection import STREAM_CLOSE, Connection

if TYPE_CHECKING:
    import ssl


# Bytes the server made itself (a stanza it wrote anew): no entities, no network.
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True)


def for_peer_stream(st: Stanza, changes: dict[str, str | None]) -> bytes:
    """A client's stanza with `changes` to its outer attributes, for the stream of another
    server or a component: as received when it inherits jabber:client from its stream, so
    that it inherits the content namespace of that stream (jabber:server, jabber:component:
    accept; RFC 6120 §4.8.3); written without its own declaration of jabber:client when it
    has one or was written anew (a prefix of its sender's stream root declares it), else the
    peer would get a jabber:client element where a stanza goes (our own links end the stream
    for that)."""
    data: bytes = st.with_attrs(changes)
    if not declares_its_namespace(st):
        return data
    return _unqualified(data, st.ns)


def as_client_stanza(st: Stanza) -> Stanza:
    """A stanza of another server or a component, as if it had inherited its content
    namespace: one that declares jabber:server (jabber:component:accept) itself or uses a
    prefix of its stream's root is read again without that declaration, in a jabber:client
    stream, so that what local clients get of it is in jabber:client (RFC 6120 §4.8.3) and
    not in a namespace they ignore."""
    if not declares_its_namespace(st):
        return st
    return _read_unqualified(st)


def read_as_client(st: Stanza) -> Stanza:
    """A stanza of another server read again in a jabber:client stream, for a handler that
    reads its tree with jabber:client names (a service: its element() is then in
    jabber:client, not in the namespace of the stream it came on). One parse more: only for
    what such a handler gets."""
    if st.ns == ns.CLIENT:
        return st
    return _read_unqualified(st)


def _read_unqualified(st: Stanza) -> Stanza:
    """`st` without its own content namespace, read again in a jabber:client stream."""
    return read_stanza(_unqualified(st.with_attrs({}), st.ns)) or st


def for_peer_bytes(data: bytes) -> bytes:
    """Bytes the server made or passed on (a client's stanza it forwards: a room's copies),
    for the stream of another server: a jabber:client declaration of their own removed, so
    that they inherit the content namespace of that stream (RFC 6120 §4.8.3)."""
    return _unqualified(data, ns.CLIENT)


def _unqualified(data: bytes, content_ns: str) -> bytes:
    """The stanza `data`, in `content_ns` by its own declaration, without that declaration:
    it and what inherits the namespace from it go unqualified, into whatever stream they
    are written to."""
    root = etree.fromstring(data, _PARSER)
    inherited = "{" + content_ns + "}"

    def unqualify(element: Any) -> None:
        # Only what is in the content namespace through the stanza: a stanza forwarded
        # inside it (XEP-0297) declares jabber:client itself and keeps it.
        element.tag = element.tag[len(inherited) :]
        for child in element:
            if isinstance(child.tag, str) and child.tag.startswith(inherited):
                unqualify(child)

    if not (isinstance(root.tag, str) and root.tag.startswith(inherited)):
        return data
    unqualify(root)
    bare = etree.Element(
        root.tag, attrib=dict(root.attrib), nsmap={k: v for k, v in root.nsmap.items() if k}
    )
    bare.text = root.text
    for child in list(root):
        bare.append(child)
    etree.cleanup_namespaces(bare)
    return bytes(etree.tostring(bare))


def check_stream_root(header: StreamHeader, content_ns: str) -> None:
    """The checks every stream header gets, whoever sent it: the root is RFC 6120's
    <stream:stream/> (§4.8.5, §4.9.3.2, §4.9.3.10) and the content namespace the one of
    the stream kind (jabber:client, jabber:server, jabber:component:accept)."""
    if header.ns != ns.STREAMS or header.name != "stream":
        raise StreamError("invalid-namespace", "the root must be <stream/> of RFC 6120")
    if header.prefix != "stream":
        raise StreamError("bad-namespace-prefix", "the stream prefix must be 'stream'")
    if (None, content_ns) not in header.nsdecls:
        raise StreamError("invalid-namespace", f"the content namespace must be {content_ns}")


def check_version(header: StreamHeader) -> None:
    """RFC 6120 §4.7.5: we speak 1.0 and nothing older."""
    try:
        major = int(header.attrs.get("version", "").split(".", 1)[0])
    except ValueError:
        major = 0
    if major < 1:
        raise StreamError("unsupported-version", "version 1.0 is required")


def accepted(stream: Any, server: Any) -> Connection:
    """A listener's new connection, with `stream` (an XmlStream that is a StreamOwner: server
    links, components) as its owner."""
    stream.connection = Connection(stream, server.config.limits, stream.what, server.background)
    return stream.connection


class PeerOrigin(Session):
    """An entity behind a server link or a component (XEP-0114) as the router and modules
    see it: its 'from' is kept (`is_remote`), and a subclass sends what is for it back down
    the link it came on."""

    is_remote = True

    def __init__(self, router: Any, jid: Any) -> None:
        self.local = jid.local
        self.domain = jid.domain
        self.resource = jid.resource
        self.bare = jid.bare
        self.full = str(jid)
        self.router = router


def route_from_peer(router: Any, origin: Session, st: Stanza, where: str) -> None:
    """Route a stanza a server link or a component sent: a stanza error, or a module's
    failure on it, goes back to the sender as an error reply, and the link goes on (one bad
    stanza must not cut every user of the link off)."""
    try:
        router.route(origin, as_client_stanza(st))
    except StanzaError as err:
        reply_error(st, origin, err)
    except StreamError:
        raise
    except Exception:
        logging.getLogger("fastxmpp.stream").exception(
            "%s: internal error on a stanza from %s", where, origin.full
        )
        reply_error(st, origin, StanzaError("internal-server-error"))


def reply_error(st: Stanza, origin: Session, err: StanzaError) -> None:
    """The error reply to `st`, sent to `origin` from where `st` was addressed."""
    answered(err)
    stype = st.attrs.get("type")
    # RFC 6120 §8.3.1: never answer an error; §8.2.3: never answer an iq result.
    if stype == "error" or (st.name == "iq" and stype == "result"):
        return
    origin.send(
        stanza_error_bytes(
            st.name, st.attrs.get("id"), st.attrs.get("to"), origin.full, err, bounced_payload(st)
        )
    )


def features_xml(parts: list[str]) -> bytes:
    return ("<stream:features>" + "".join(parts) + "</stream:features>").encode()


class XmlStream:
    """A stream negotiated over `connection` (None once the connection is gone or given
    away). `closing`: the stream is over on our side, nothing more is handled."""

    if not TYPE_CHECKING:
        # Empty, so that a stream kind may declare its attributes in __slots__ (the client
        # stream does: it is the session of an idle connection, docs/PERFORMANCE.md).
        # Hidden from mypy, which would take it for "no attributes" in this class's code.
        __slots__ = ()

    what = "stream"  # "c2s", "s2s": log lines and the TLS log
    log = logging.getLogger("fastxmpp.stream")
    connection: Connection | None
    closing: bool

    stream_id_bytes = 16  # random bytes in a stream id (RFC 6120 §4.7.3: unpredictable)
    former_peer = "?"  # where the connection came from, once it is gone (log lines)

    @property
    def peer(self) -> str:
        return self.connection.peer if self.connection is not None else self.former_peer

    @property
    def encrypted(self) -> bool:
        return self.connection is not None and self.connection.encrypted

    # --- the connection's events -------------------------------------------------------

    def connected(self, connection: Connection) -> None:
        """The connection is made (with direct TLS: the handshake is done)."""

    def pause_writing(self) -> None:
        """The peer does not read (limits.max_outbound_buffer unsent)."""

    def handle(self, events: list[Any]) -> None:
        """The events of one read, in order; those after a step that has to wait (a TLS
        handshake) wait in the connection. The client stream has a loop of its own, where
        a bound session's stanzas go straight to the router."""
        connection = self.connection
        if connection is None:
            return
        for i, event in enumerate(events):
            if self.closing:
                return
            if connection.busy:
                connection.pending.extend(events[i:])
                return
            try:
                if type(event) is Stanza:
                    self._element(event)
                elif type(event) is StreamHeader:
                    self._stream_header(event)
                elif event is STREAM_END:
                    self._peer_closed()
                elif isinstance(event, XMLStreamError):
                    raise StreamError(event.condition, event.text)
            except StreamError as err:
                answered(err)
                self._stream_failed(err)
            except Exception:
                self.log.exception("%s %s: internal error", self.what, self._describe())
                self._internal_error()

    def _element(self, st: Stanza) -> None:
        raise NotImplementedError

    def _stream_header(self, header: StreamHeader) -> None:
        raise NotImplementedError

    def _stream_failed(self, err: StreamError) -> None:
        self.close_with_error(err.condition, err.text)

    def _internal_error(self) -> None:
        self.close_with_error("internal-server-error")

    def _describe(self) -> str:
        return f"stream from {self.peer}"

    # --- output ------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Stream-level output (headers, features, negotiation elements, errors)."""
        if self.connection is not None:
            self.connection.write(data)

    def flush_output(self) -> None:
        """Whatever `write` queued goes out now (before TLS, before closing)."""

    def _send_header(self, peer_from: str | None = None) -> None:
        """Our stream header as the receiving entity, once per stream (§4.7), with a new
        stream id; `peer_from`: the 'from' of the peer's header, when it had one."""
        connection = self.connection
        if connection is None or connection.header_sent:
            return
        connection.header_sent = True
        connection.stream_id = secrets.token_urlsafe(self.stream_id_bytes)
        self.write(self._header_xml(connection.stream_id, peer_from))

    def _header_xml(self, stream_id: str, peer_from: str | None) -> bytes:
        raise NotImplementedError

    def _stream_ending(self) -> None:
        """The stream closes (either side): last words go out before our closing tag."""

    # --- closing (RFC 6120 §4.4, §4.9) --------------------------------------------------

    def close_with_error(
        self, condition: str | None, text: str | None = None, app_xml: str = ""
    ) -> None:
        """Send a stream error (if any) and the closing tag, then close the connection once
        the peer has closed its side (or after CLOSE_LINGER); `app_xml`: an
        application-specific condition (RFC 6120 §4.9.4)."""
        if self.closing:
            return
        self.closing = True
        connection = self.connection
        if connection is None or connection.transport is None:
            return
        # RFC 6120 §4.9.1.2: the error follows our stream header.
        self._send_header()
        self._stream_ending()
        self._end_stream(connection, condition, text, app_xml)

    def _end_stream(
        self, connection: Connection, condition: str | None, text: str | None, app_xml: str = ""
    ) -> None:
        self.write(connection.closing_bytes(condition, text, app_xml))
        self.flush_output()
        connection.close_transport(linger=True)

    def _peer_closed(self) -> None:
        """The peer's closing tag, or its stream error (§4.9.1.1: answered with our closing
        tag, not with an error about its error): we close our side, and the connection."""
        self.closing = True
        self._stream_ending()
        connection = self.connection
        if connection is None:
            return
        self.write(STREAM_CLOSE)
        self.flush_output()
        connection.close_transport(linger=False)

    # --- TLS (RFC 6120 §5, XEP-0368) ----------------------------------------------------

    def _starttls(self, context: ssl.SSLContext) -> None:
        """The peer asked for STARTTLS where we offered it: <proceed/>, then the handshake;
        the stream restarts over TLS (§5.4.3.3)."""
        assert self.connection is not None
        self.write(f"<proceed xmlns='{ns.TLS}'/>".encode())
        self.flush_output()
        self.connection.start_tls(context, self._tls_started)

    def _tls_started(self) -> None:
        """The stream restarted over TLS (STARTTLS done)."""
