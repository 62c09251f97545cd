"""SIGHUP and `fastxmpp reload`: the server reads its configuration again, serves renewed
certificates to new connections on every kind of listener (STARTTLS, XEP-0368 direct TLS,
HTTPS, s2s) without a restart, sets the new log level, and names in its log what changed
that only a restart applies. Open connections keep the certificate they started with, and
the tls-server-end-point binding of it (RFC 5929). A configuration with problems, or a
certificate that does not load, changes nothing."""

from __future__ import annotations

import datetime
import re
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from conftest import PASSWORD, ServerProcess, add_accounts, run_cli
from test_channel_binding import end_point
from test_direct_tls import tls_socket
from ws_client import http_port
from xmpp_raw import SASL, RawClient

LISTENERS = """
[[listeners]]
kind = "c2s"
address = "127.0.0.1"
port = 0
tls = "direct"

[[listeners]]
kind = "http"
address = "127.0.0.1"
port = 0
tls = "direct"
"""


@pytest.fixture
def srv(ca: trustme.CA, tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path / "srv", ca, ("localhost", "example.test"), LISTENERS)
    add_accounts(server, ["alice"])
    server.start()
    server.wait_for_log("fastxmpp ")
    yield server
    server.stop()


def renew(
    srv: ServerProcess, ca: trustme.CA, host: str, not_after: datetime.datetime | None = None
) -> bytes:
    """A new certificate and key for `host` written over its files, as certbot renews; the
    new certificate's DER."""
    cert = ca.issue_cert(host, not_after=not_after)
    cert.cert_chain_pems[0].write_to_path(str(srv.root / f"{host}.crt"))
    cert.private_key_pem.write_to_path(str(srv.root / f"{host}.key"))
    return ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())


def reload(srv: ServerProcess, outcome: str = "reload: done") -> str:
    """SIGHUP, then what the server logged until `outcome`."""
    before = len(srv.log)
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while outcome not in (logged := "".join(srv.log[before:])):
        assert time.monotonic() < deadline, f"{outcome!r} not logged:\n{srv.log_text()}"
        time.sleep(0.02)
    assert srv.alive()
    return logged


def starttls_certificate(srv: ServerProcess, ca_file: str, host: str = "localhost") -> bytes:
    c = srv.client()
    try:
        c.open_stream(host)
        c.starttls(ca_file, host)
        return c.sock.getpeercert(binary_form=True)
    finally:
        c.close()


def direct_certificate(srv: ServerProcess, ca_file: str, host: str | None) -> bytes:
    with tls_socket(srv.direct_tls_port, ca_file, host, ["xmpp-client"]) as sock:
        return sock.getpeercert(binary_form=True)


def https_certificate(srv: ServerProcess, ca_file: str, host: str) -> bytes:
    context = ssl.create_default_context(cafile=ca_file)
    raw = socket.create_connection(("127.0.0.1", http_port(srv, https=True)), timeout=10)
    with context.wrap_socket(raw, server_hostname=host) as sock:
        return sock.getpeercert(binary_form=True)


def test_a_renewed_certificate_is_served_after_sighup(
    srv: ServerProcess, ca: trustme.CA, ca_file: str
) -> None:
    old = starttls_certificate(srv, ca_file)
    other = starttls_certificate(srv, ca_file, "example.test")
    assert direct_certificate(srv, ca_file, "localhost") == old
    # An open session from before the renewal, and a connection that has done STARTTLS but
    # not yet authenticated.
    session = srv.client()
    session.login(ca_file, "alice", PASSWORD, "before")
    pending = srv.client()
    pending.open_stream()
    pending.starttls(ca_file)

    new = renew(srv, ca, "localhost")
    reload(srv)
    assert "reload: certificate of localhost from" in srv.log_text()

    assert starttls_certificate(srv, ca_file) == new
    assert direct_certificate(srv, ca_file, "localhost") == new
    assert https_certificate(srv, ca_file, "localhost") == new
    # Without SNI the first host's certificate goes out: the new one too.
    assert direct_certificate(srv, ca_file, None) == new
    # The other host's files did not change, nor what it serves.
    assert starttls_certificate(srv, ca_file, "example.test") == other
    assert direct_certificate(srv, ca_file, "example.test") == other

    # The old session goes on over its TLS session.
    session.send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert session.next().get("type") == "result"
    # The pending connection binds to the certificate it got, the old one (RFC 5929 §4),
    # and a new connection to the new one.
    assert pending.sock.getpeercert(binary_form=True) == old
    outcome = pending.sasl_scram(
        "alice", PASSWORD, "SCRAM-SHA-256-PLUS", channel_binding=end_point(pending)
    )
    assert outcome.tag == f"{{{SASL}}}success", srv.log_text()
    fresh = srv.client()
    fresh.open_stream()
    fresh.starttls(ca_file)
    outcome = fresh.sasl_scram(
        "alice", PASSWORD, "SCRAM-SHA-256-PLUS", channel_binding=end_point(fresh)
    )
    assert outcome.tag == f"{{{SASL}}}success", srv.log_text()
    for c in (session, pending, fresh):
        c.close()


def test_a_certificate_that_does_not_load_changes_nothing(
    srv: ServerProcess, ca: trustme.CA, ca_file: str
) -> None:
    old = starttls_certificate(srv, ca_file)
    # A renewal caught halfway: the new certificate, the old key.
    key = (srv.root / "localhost.key").read_bytes()
    renew(srv, ca, "localhost")
    (srv.root / "localhost.key").write_bytes(key)
    assert "reload: nothing changed" in reload(srv, "does not match")
    assert starttls_certificate(srv, ca_file) == old
    assert direct_certificate(srv, ca_file, "localhost") == old

    # A configuration that does not parse: the same.
    srv.config.write_text(srv.config.read_text() + "\n[limits\n")
    logged = reload(srv, "Expected ']' at the end of a table declaration")
    assert "reload: nothing changed, the configuration has problems" in logged
    assert starttls_certificate(srv, ca_file) == old


def test_a_certificate_close_to_its_end_is_named(
    srv: ServerProcess, ca: trustme.CA, ca_file: str
) -> None:
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=5)
    new = renew(srv, ca, "localhost", not_after=soon)
    logged = reload(srv)
    assert (
        "the certificate of localhost" in logged
        and f"expires on {soon:%Y-%m-%d %H:%M} UTC" in logged
    )
    assert "the certificate of example.test" not in logged
    assert starttls_certificate(srv, ca_file) == new


def test_log_level_applies_and_other_changes_wait_for_a_restart(
    srv: ServerProcess, ca_file: str
) -> None:
    text = srv.config.read_text()
    assert 'log_level = "debug"' in text
    srv.config.write_text(
        text.replace('log_level = "debug"', 'log_level = "info"')
        + "\n[limits]\nmax_stanza_size = 20000\n[mam]\nenabled = false\n"
    )
    log = reload(srv)
    assert "reload: [limits] changed; that takes effect at the next start" in log
    assert "reload: [mam] changed; that takes effect at the next start" in log
    assert "[c2s] changed" not in log
    # No debug lines (the stanza trace among them) once the level is info.
    mark = len(srv.log)
    c = srv.client()
    c.login(ca_file, "alice", PASSWORD, "quiet")
    c.send("<iq type='get' id='p2'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert c.next().get("type") == "result"
    c.close()
    srv.wait_for_log("bound alice@localhost/quiet")
    assert not [line for line in srv.log[mark:] if " DEBUG " in line], srv.log[mark:]


def test_the_reload_command(srv: ServerProcess, ca: trustme.CA, ca_file: str) -> None:
    new = renew(srv, ca, "localhost")
    assert srv.proc is not None
    result = run_cli("reload", config=srv.config)
    assert result.returncode == 0, result.stderr
    assert f"pid {srv.proc.pid}" in result.stdout
    srv.wait_for_log("reload: done")
    assert starttls_certificate(srv, ca_file) == new

    # A configuration with problems is not sent to the server at all.
    good = srv.config.read_text()
    srv.config.write_text(good + "\n[limits]\nmax_stanza_size = -1\n")
    result = run_cli("reload", config=srv.config)
    assert result.returncode == 1
    assert "max_stanza_size" in result.stderr and "not reloaded" in result.stderr
    srv.config.write_text(good)

    srv.stop()
    result = run_cli("reload", config=srv.config)
    assert result.returncode == 1
    assert "no server is running" in result.stderr


def test_s2s_links_present_the_renewed_certificate(
    ca: trustme.CA, ca_file: str, tmp_path: Path
) -> None:
    """An s2s listener with `ca_file` (contexts of its own, asking for the peer's certificate
    for SASL EXTERNAL) presents the renewed certificate to servers connecting after it."""
    s2s = f"""
[s2s]
enabled = true
ca_file = "{ca_file}"

[[listeners]]
kind = "s2s"
address = "127.0.0.1"
port = 0
"""
    srv = ServerProcess(tmp_path / "s2s", ca, ("localhost",), s2s)
    srv.start()
    try:
        srv.wait_for_log("s2s listening on")
        old = s2s_certificate(srv, ca_file)
        new = renew(srv, ca, "localhost")
        assert new != old
        reload(srv)
        assert s2s_certificate(srv, ca_file) == new
    finally:
        srv.stop()


def s2s_certificate(srv: ServerProcess, ca_file: str) -> bytes:
    """The certificate an s2s listener presents after STARTTLS, to a peer "peer.test"."""
    match = re.search(r"s2s listening on ([\d.]+):(\d+)", srv.log_text())
    assert match is not None
    c: Any = RawClient(int(match.group(2)))
    try:
        c.send(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
            "xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback'"
            " from='peer.test' to='localhost' version='1.0'>"
        )
        c.wait_header()
        c.next()  # the features, with <starttls/>
        c.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        assert c.next().tag.endswith("proceed")
        context = ssl.create_default_context(cafile=ca_file)
        c.sock = context.wrap_socket(c.sock, server_hostname="localhost")
        return c.sock.getpeercert(binary_form=True)
    finally:
        c.close()
