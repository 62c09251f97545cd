"""XEP-0368 direct TLS: a `tls = "direct"` c2s listener (TLS at connect, SNI picks the host's
certificate, ALPN 'xmpp-client', no STARTTLS offered), used by slixmpp and by raw sockets;
and the one log line a TLS handshake on a STARTTLS port gets instead of a binary trace."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
import trustme
from conftest import PASSWORD, ServerProcess, add_accounts, assert_still_serving
from slix_client import SlixClient
from xmpp_raw import SASL, TLS, RawClient, StreamClosed

logging.getLogger("slixmpp").setLevel(logging.WARNING)

DIRECT_LISTENER = """
[[listeners]]
kind = "c2s"
address = "127.0.0.1"
port = 0
tls = "direct"
"""
STARTTLS_PORT_HINT = "TLS handshake on STARTTLS port"


@pytest.fixture(scope="module")
def srv(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(
        tmp_path_factory.mktemp("directtls"), ca, ("localhost", "example.test"), DIRECT_LISTENER
    )
    add_accounts(server, ["alice", "bob", "carol", "dave"])
    server.start()
    server.wait_for_log("c2s (direct TLS) listening on")
    assert server.direct_tls_port and server.direct_tls_port != server.port
    yield server
    server.stop()


def tls_socket(
    port: int, ca_file: str, server_name: str | None = "localhost", alpn: list[str] | None = None
) -> ssl.SSLSocket:
    """A TLS connection from the first byte, as XEP-0368 clients open it."""
    context = ssl.create_default_context(cafile=ca_file)
    if server_name is None:
        context.check_hostname = False
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return context.wrap_socket(raw, server_hostname=server_name)


def direct_client(srv: ServerProcess, ca_file: str, server_name: str = "localhost") -> RawClient:
    sock = tls_socket(srv.direct_tls_port, ca_file, server_name, ["xmpp-client"])
    return RawClient(srv.direct_tls_port, sock=sock)


async def test_slixmpp_direct_tls_chats_with_a_starttls_client(
    srv: ServerProcess, ca_file: str
) -> None:
    alice = SlixClient("alice@localhost/direct", ca_file, direct_tls=True, starttls=False)
    bob = SlixClient("bob@localhost/starttls", ca_file, direct_tls=False, starttls=True)
    await alice.online(srv.direct_tls_port)
    await bob.online(srv.port)
    try:
        assert alice.transport.get_extra_info("ssl_object") is not None
        # XEP-0368 §3: STARTTLS must not be used over direct TLS, so it is not offered.
        assert "starttls" not in alice.features and "mechanisms" in alice.features
        assert "starttls" in bob.features
        assert str(alice.boundjid) == "alice@localhost/direct"
        await asyncio.sleep(0.2)  # both initial presences processed

        alice.send_message(mto="bob@localhost/starttls", mbody="over direct TLS", mtype="chat")
        msg = await asyncio.wait_for(bob.messages.get(), 10)
        assert msg["body"] == "over direct TLS"
        assert str(msg["from"]) == "alice@localhost/direct"
        bob.send_message(mto="alice@localhost", mbody="over STARTTLS", mtype="chat")
        msg = await asyncio.wait_for(alice.messages.get(), 10)
        assert msg["body"] == "over STARTTLS"
        assert str(msg["from"]) == "bob@localhost/starttls"
    finally:
        alice.disconnect()
        bob.disconnect()
        await asyncio.sleep(0.1)
    srv.wait_for_log("direct TLS TLSv1.3")


async def test_slixmpp_trying_direct_tls_on_the_starttls_port_falls_back(
    srv: ServerProcess, ca_file: str
) -> None:
    """slixmpp's default with a fixed address: direct TLS first, then STARTTLS on the same
    port. The first attempt costs one log line, the second logs in."""
    before = srv.log_text().count(STARTTLS_PORT_HINT)
    carol = SlixClient("carol@localhost/both", ca_file, direct_tls=True, starttls=True)
    await carol.online(srv.port)
    try:
        assert "starttls" in carol.features
    finally:
        carol.disconnect()
        await asyncio.sleep(0.1)
    assert srv.log_text().count(STARTTLS_PORT_HINT) == before + 1


def test_alpn_xmpp_client_is_selected(srv: ServerProcess, ca_file: str) -> None:
    sock = tls_socket(srv.direct_tls_port, ca_file, "localhost", ["h2", "xmpp-client"])
    try:
        assert sock.selected_alpn_protocol() == "xmpp-client"
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
    finally:
        sock.close()
    # RFC 7301 §3.2: a client offering other protocols only gets no ALPN answer, no refusal.
    sock = tls_socket(srv.direct_tls_port, ca_file, "localhost", ["h2"])
    try:
        assert sock.selected_alpn_protocol() is None
    finally:
        sock.close()


@pytest.mark.parametrize("host", ["localhost", "example.test"])
def test_sni_picks_the_host_certificate(srv: ServerProcess, ca_file: str, host: str) -> None:
    """The handshake verifies the certificate against the SNI name (check_hostname): each
    host's name gets that host's certificate, as the stream header's 'to' does on STARTTLS."""
    sock = tls_socket(srv.direct_tls_port, ca_file, host, ["xmpp-client"])
    try:
        names = [value for kind, value in sock.getpeercert()["subjectAltName"] if kind == "DNS"]
        assert names == [host]
    finally:
        sock.close()


def test_without_sni_the_stream_header_picks_the_host(srv: ServerProcess, ca_file: str) -> None:
    sock = tls_socket(srv.direct_tls_port, ca_file, None)
    client = RawClient(srv.direct_tls_port, sock=sock)
    try:
        features = client.open_stream("example.test")
        assert client.header.get("from") == "example.test"
        assert features.find(f"{{{SASL}}}mechanisms") is not None
    finally:
        client.close()


def test_raw_direct_tls_login_and_no_starttls(srv: ServerProcess, ca_file: str) -> None:
    client = direct_client(srv, ca_file)
    try:
        features = client.open_stream()
        assert features.find(f"{{{TLS}}}starttls") is None
        mechanisms = [m.text for m in features.iter(f"{{{SASL}}}mechanism")]
        assert "SCRAM-SHA-256" in mechanisms and "PLAIN" in mechanisms  # over TLS: PLAIN too
        assert client.sasl_scram("dave", PASSWORD).tag == f"{{{SASL}}}success"
        client.open_stream()
        assert client.bind("raw").startswith("dave@localhost/raw")
        client.send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
        reply = client.next()
        assert reply.get("id") == "p1" and reply.get("type") == "result"
    finally:
        client.close()


def test_starttls_over_direct_tls_fails(srv: ServerProcess, ca_file: str) -> None:
    client = direct_client(srv, ca_file)
    try:
        client.open_stream()
        client.send(f"<starttls xmlns='{TLS}'/>")
        # RFC 6120 §5.4.2.2: STARTTLS where it was not offered gets <failure/> and the close.
        assert client.next().tag == f"{{{TLS}}}failure"
        assert client.wait_closed()
    finally:
        client.close()


def test_client_hello_on_the_starttls_port_gets_one_line(srv: ServerProcess, ca_file: str) -> None:
    before = srv.log_text().count(STARTTLS_PORT_HINT)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        tls_socket(srv.port, ca_file, "localhost", ["xmpp-client"]).close()
    srv.wait_for_log(f"{STARTTLS_PORT_HINT} {srv.port} from 127.0.0.1")
    assert_still_serving(srv, ca_file)
    log = srv.log_text()
    assert log.count(STARTTLS_PORT_HINT) == before + 1
    assert 'configure a direct TLS listener (tls = "direct")' in log
    # No trace of the handshake's bytes (the debug trace decodes them with replacement
    # characters) and no XML stream error a TLS client could not read.
    assert "\ufffd" not in log and "\x16" not in log
    assert "not-well-formed" not in log


def test_plain_xml_on_the_direct_tls_port_is_a_failed_handshake(
    srv: ServerProcess, ca_file: str
) -> None:
    """A STARTTLS client on the direct TLS port: its stream header is no TLS record, the
    handshake fails, the connection is closed and nobody else notices."""
    client = RawClient(srv.direct_tls_port)
    try:
        client.send("<?xml version='1.0'?><stream:stream xmlns='jabber:client' ")
        client.send("xmlns:stream='http://etherx.jabber.org/streams' to='localhost'>")
        with pytest.raises(StreamClosed):
            client.wait_header()
    finally:
        client.abort()
    assert_still_serving(srv, ca_file)


def test_limits_and_stream_management_are_those_of_starttls(make_server: Any, ca_file: str) -> None:
    """Connections over both listeners count towards limits.max_unauthenticated_per_ip, and a
    session that lost its direct TLS connection is resumed (XEP-0198) over STARTTLS."""
    srv: ServerProcess = make_server("[limits]\nmax_unauthenticated_per_ip = 2\n" + DIRECT_LISTENER)
    srv.adduser("alice@localhost")
    srv.start()
    srv.wait_for_log("c2s (direct TLS) listening on")
    first = direct_client(srv, ca_file)
    assert first.open_stream().find(f"{{{SASL}}}mechanisms") is not None
    second = srv.client()
    second.open_stream()
    extra = direct_client(srv, ca_file)
    assert extra.stream_error() == "policy-violation"
    assert extra.wait_closed()
    second.close()

    assert first.sasl_scram("alice", PASSWORD).tag == f"{{{SASL}}}success"
    first.open_stream()
    first.bind("phone")
    first.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
    enabled = first.next()
    assert enabled.tag == "{urn:xmpp:sm:3}enabled" and enabled.get("resume") == "true"
    first.abort()
    srv.wait_for_log("alice@localhost/phone lost its connection")
    again = srv.client()
    again.open_stream()
    again.starttls(ca_file)
    assert again.sasl_scram("alice", PASSWORD).tag == f"{{{SASL}}}success"
    again.open_stream()
    again.send(f"<resume xmlns='urn:xmpp:sm:3' previd='{enabled.get('id')}' h='0'/>")
    resumed = again.next()
    assert resumed.tag == "{urn:xmpp:sm:3}resumed" and resumed.get("h") == "0"
    again.close()
