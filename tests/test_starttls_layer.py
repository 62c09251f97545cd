"""The server's own STARTTLS layer (fastxmpp/stream/tls.py, ServerTLS): the handshake, input
that arrives together with its last flight, a failed handshake and the peer's close_notify,
each with a real TLS client over a real socket."""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from typing import Any

from conftest import PASSWORD, ServerProcess, assert_still_serving
from lxml import etree
from xmpp_raw import HEADER, TLS, RawClient


def plain_to_proceed(srv: ServerProcess) -> RawClient:
    """A client whose server has just sent <proceed/> (RFC 6120 §5.4.2.3)."""
    c = srv.client()
    c.open_stream()
    c.send(f"<starttls xmlns='{TLS}'/>")
    proceed = c.next()
    assert proceed.tag == f"{{{TLS}}}proceed", etree.tostring(proceed)
    return c


def recv_some(sock: socket.socket, deadline: float) -> bytes:
    sock.settimeout(max(0.05, deadline - time.monotonic()))
    return sock.recv(65536)


def test_stream_header_in_the_same_segment_as_the_finished(
    server: ServerProcess, ca_file: str
) -> None:
    """A client may send its first application data right behind its Finished (RFC 8446
    §2: 0-RTT aside, application data follows the client's Finished); the header that came
    with the last handshake flight is read, not left in the TLS layer."""
    c = plain_to_proceed(server)
    sock = c.sock
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context(cafile=ca_file).wrap_bio(
        incoming, outgoing, server_hostname="localhost"
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            sock.sendall(outgoing.read())
            incoming.write(recv_some(sock, deadline))
    tls.write(HEADER.format(to="localhost").encode())
    sock.sendall(outgoing.read())  # Finished and the header, one write
    received = b""
    while b"</stream:features>" not in received:
        data = recv_some(sock, deadline)
        assert data, "the server closed the connection"
        incoming.write(data)
        with contextlib.suppress(ssl.SSLWantReadError):
            while True:
                received += tls.read(65536)
    assert b"SCRAM-SHA-1" in received  # SASL is offered over TLS (RFC 6120 §5.3.1)
    assert b"<starttls" not in received  # and STARTTLS is not offered again
    sock.close()


def test_a_failed_handshake_closes_that_connection_only(
    server: ServerProcess, ca_file: str
) -> None:
    """Bytes that are not a TLS handshake after <proceed/> (RFC 6120 §5.4.3.2: the
    handshake failed): that connection is closed, the server goes on serving."""
    c = plain_to_proceed(server)
    c.sock.sendall(b"<not-a-client-hello/>" * 20)
    deadline = time.monotonic() + 10
    rest = b""
    with contextlib.suppress(ConnectionResetError):
        while data := recv_some(c.sock, deadline):
            rest += data
    assert b"<" not in rest  # no XML after the failure: at most a TLS alert
    server.wait_for_log("TLS with 127.0.0.1")
    c.abort()
    assert_still_serving(server, ca_file)


def test_close_notify_ends_the_session(server: ServerProcess, ca_file: str) -> None:
    """The client closes TLS (close_notify, RFC 8446 §6.1) without a closing tag: the server
    takes it as the end of the connection, as it takes a TCP EOF, and closes its side."""
    server.adduser("closer@localhost")
    c = server.client()
    c.login(ca_file, "closer", PASSWORD, "notify")
    assert isinstance(c.sock, ssl.SSLSocket)
    raw: Any = c.sock.unwrap()  # sends close_notify, waits for the server's
    deadline = time.monotonic() + 10
    while recv_some(raw, deadline):  # a timeout here: the server kept the connection open
        pass
    raw.close()
    assert_still_serving(server, ca_file, "closer")
