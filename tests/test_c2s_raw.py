"""Client streams over raw sockets: each bad input gets the error RFC 6120 names, and the
server keeps serving a fresh client afterwards."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from conftest import PASSWORD, ServerProcess, assert_still_serving
from xmpp_raw import BIND, HEADER, SASL, STREAMS, TLS, RawClient, stanza_error

BAD_AFTER_LOGIN = {
    "malformed": (b"<message><body></message>", "not-well-formed"),
    "doctype": (b"<!DOCTYPE foo>", "not-well-formed"),  # a DOCTYPE inside the root is not XML
    "entity": (b"<message><body>&xxe;</body></message>", "restricted-xml"),
    "comment": (b"<message><!-- note --></message>", "restricted-xml"),
    "processing-instruction": (b"<?evil data?>", "restricted-xml"),
    "oversized": (b"<message><body>" + b"A" * 300_000 + b"</body></message>", "policy-violation"),
    "spoofed-from": (
        b"<message from='bob@localhost/x' to='carol@localhost'><body>hi</body></message>",
        "invalid-from",
    ),
    "unknown-top-level": (b"<foo xmlns='urn:example:foo'/>", "unsupported-stanza-type"),
    "unknown-client-element": (b"<bar/>", "unsupported-stanza-type"),
    "prefixed-stanza": (
        b"<c:message xmlns:c='jabber:client' to='bob@localhost'/>",
        "bad-namespace-prefix",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_AFTER_LOGIN))
def test_bad_input_after_login(server: ServerProcess, ca_file: str, case: str) -> None:
    data, condition = BAD_AFTER_LOGIN[case]
    c = server.client()
    c.login(ca_file, "alice", PASSWORD)
    c.send(data)
    assert c.stream_error() == condition
    assert c.wait_closed()
    assert_still_serving(server, ca_file)


def test_doctype_before_stream_is_restricted(server: ServerProcess, ca_file: str) -> None:
    c = server.client()
    c.send(b"<?xml version='1.0'?><!DOCTYPE stream [<!ENTITY a 'aaaa'>]>")
    c.send(HEADER.format(to="localhost"))
    assert c.stream_error() == "restricted-xml"
    assert c.wait_closed()
    assert_still_serving(server, ca_file)


def test_billion_laughs_is_refused(server: ServerProcess, ca_file: str) -> None:
    c = server.client()

    def expansion(i: int) -> str:
        return f"&l{i - 1};" * 10 if i else "lol"

    entities = "".join(f"<!ENTITY l{i} '{expansion(i)}'>" for i in range(10))
    c.send(f"<?xml version='1.0'?><!DOCTYPE s [{entities}]>")
    assert c.stream_error() == "restricted-xml"
    assert_still_serving(server, ca_file)


@pytest.mark.parametrize(
    ("header", "condition"),
    [
        (HEADER.format(to="unknown.example"), "host-unknown"),
        (HEADER.replace(" to='{to}'", ""), "host-unknown"),
        (
            HEADER.format(to="localhost").replace("jabber:client", "jabber:server"),
            "invalid-namespace",
        ),
        (
            HEADER.format(to="localhost").replace(
                "http://etherx.jabber.org/streams", "http://example.com/streams"
            ),
            "invalid-namespace",
        ),
        (
            HEADER.format(to="localhost").replace("version='1.0'", "version='0.9'"),
            "unsupported-version",
        ),
        (HEADER.format(to="localhost").replace(" version='1.0'>", ">"), "unsupported-version"),
        (
            "<?xml version='1.0'?><foo:stream xmlns='jabber:client' "
            "xmlns:foo='http://etherx.jabber.org/streams' to='localhost' version='1.0'>",
            "bad-namespace-prefix",
        ),
        (
            "<stream:stream xmlns:stream='http://etherx.jabber.org/streams' to='localhost' "
            "version='1.0' xmlns='jabber:client' a='1' a='2'>",
            "not-well-formed",
        ),
        ("<?xml version='1.0' encoding='UTF-16'?>", "unsupported-encoding"),
    ],
)
def test_bad_stream_header(
    server: ServerProcess, ca_file: str, header: str, condition: str
) -> None:
    c = server.client()
    c.send(header)
    assert c.stream_error() == condition
    assert c.wait_closed()
    # RFC 6120 §4.9.1.2: the server still opened its own stream first.
    assert c.header is not None and c.header.tag == f"{{{STREAMS}}}stream"
    assert_still_serving(server, ca_file)


def test_features_before_tls_require_starttls(server: ServerProcess) -> None:
    c = server.client()
    features = c.open_stream()
    starttls = features.find(f"{{{TLS}}}starttls")
    assert starttls is not None and starttls.find(f"{{{TLS}}}required") is not None
    # TLS is mandatory-to-negotiate: no mechanisms are offered before it.
    assert features.find(f"{{{SASL}}}mechanisms") is None
    c.close()


def test_plain_before_tls_is_refused(server: ServerProcess, ca_file: str) -> None:
    c = server.client()
    c.open_stream()
    reply = c.sasl_plain("alice", PASSWORD)
    assert reply.tag == f"{{{SASL}}}failure"
    assert reply.find(f"{{{SASL}}}encryption-required") is not None
    c.close()
    assert_still_serving(server, ca_file)


def test_mechanisms_after_tls(server: ServerProcess, ca_file: str) -> None:
    c = server.client()
    c.open_stream()
    features = c.starttls(ca_file)
    mechanisms = [m.text for m in features.find(f"{{{SASL}}}mechanisms")]
    # RFC 6120 §13.8: SCRAM-SHA-1-PLUS; the channel-binding variants first (preferred)
    assert mechanisms == [
        "SCRAM-SHA-256-PLUS",
        "SCRAM-SHA-1-PLUS",
        "SCRAM-SHA-256",
        "SCRAM-SHA-1",
        "PLAIN",
    ]
    # XEP-0440: the bindings of this TLS 1.3 connection
    bindings = features.find("{urn:xmpp:sasl-cb:0}sasl-channel-binding")
    assert bindings is not None
    assert [b.get("type") for b in bindings] == ["tls-exporter", "tls-server-end-point"]
    assert features.find(f"{{{TLS}}}starttls") is None
    c.close()


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-1", "SCRAM-SHA-256"])
def test_wrong_password_then_retry_succeeds(
    server: ServerProcess, ca_file: str, mechanism: str
) -> None:
    c = server.client()
    c.open_stream()
    c.starttls(ca_file)
    failure = c.sasl_scram("alice", "wrong password", mechanism)
    assert failure.tag == f"{{{SASL}}}failure"
    assert failure.find(f"{{{SASL}}}not-authorized") is not None
    success = c.sasl_scram("alice", PASSWORD, mechanism)
    assert success.tag == f"{{{SASL}}}success"
    features = c.open_stream()
    assert features.find(f"{{{BIND}}}bind") is not None
    assert c.bind("retry").endswith("/retry")
    c.close()


def test_unknown_user_looks_like_wrong_password(server: ServerProcess, ca_file: str) -> None:
    c = server.client()
    c.open_stream()
    c.starttls(ca_file)
    failure = c.sasl_scram("nobody-here", PASSWORD)
    assert failure.find(f"{{{SASL}}}not-authorized") is not None
    c.close()


def test_plain_over_tls(server: ServerProcess, ca_file: str) -> None:
    c = server.client()
    c.open_stream()
    c.starttls(ca_file)
    assert c.sasl_plain("bob", "nope").find(f"{{{SASL}}}not-authorized") is not None
    assert c.sasl_plain("bob", PASSWORD).tag == f"{{{SASL}}}success"
    c.close()


def test_too_many_failures_close_the_stream(server: ServerProcess, ca_file: str) -> None:
    c = server.client()
    c.open_stream()
    c.starttls(ca_file)
    for _ in range(2):
        assert c.sasl_scram("carol", "bad").tag == f"{{{SASL}}}failure"
    assert c.sasl_scram("carol", "bad").tag == f"{{{SASL}}}failure"
    assert c.stream_error() == "policy-violation"
    assert c.wait_closed()
    assert_still_serving(server, ca_file, "carol")


def test_sasl_errors(server: ServerProcess, ca_file: str) -> None:
    c = server.client()
    c.open_stream()
    c.starttls(ca_file)
    c.send(f"<auth xmlns='{SASL}' mechanism='DIGEST-MD5'/>")
    assert c.next().find(f"{{{SASL}}}invalid-mechanism") is not None
    c.send(f"<auth xmlns='{SASL}' mechanism='PLAIN'>!!!notbase64</auth>")
    assert c.next().find(f"{{{SASL}}}incorrect-encoding") is not None
    c.send(f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-1'/>")
    challenge = c.next()
    assert challenge.tag == f"{{{SASL}}}challenge" and not (challenge.text or "").strip("=")
    c.send(f"<abort xmlns='{SASL}'/>")
    assert c.next().find(f"{{{SASL}}}aborted") is not None
    c.send(f"<response xmlns='{SASL}'>{base64.b64encode(b'x').decode()}</response>")
    assert c.next().find(f"{{{SASL}}}malformed-request") is not None
    c.close()


def test_stanza_before_authentication(server: ServerProcess, ca_file: str) -> None:
    c = server.client()
    c.open_stream()
    c.starttls(ca_file)
    c.send("<message to='bob@localhost'><body>sneaky</body></message>")
    assert c.stream_error() == "not-authorized"
    assert c.wait_closed()
    assert_still_serving(server, ca_file)


def test_stanza_before_bind(server: ServerProcess, ca_file: str) -> None:
    c = server.client()
    c.open_stream()
    c.starttls(ca_file)
    assert c.sasl_scram("alice", PASSWORD).tag == f"{{{SASL}}}success"
    c.open_stream()
    c.send("<message to='bob@localhost'><body>early</body></message>")
    assert c.stream_error() == "not-authorized"
    assert_still_serving(server, ca_file)


def test_bind_twice(server: ServerProcess, ca_file: str) -> None:
    c = server.client()
    c.login(ca_file, "alice", PASSWORD, "first")
    c.send(f"<iq type='set' id='b2'><bind xmlns='{BIND}'><resource>second</resource></bind></iq>")
    reply = c.next()
    assert reply.get("type") == "error" and reply.get("id") == "b2"
    assert stanza_error(reply) == "not-allowed"
    # The stream is still usable.
    c.send("<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert c.next().get("id") == "p"
    c.close()


def test_bind_with_bad_resource(server: ServerProcess, ca_file: str) -> None:
    c = server.client()
    c.open_stream()
    c.starttls(ca_file)
    assert c.sasl_scram("alice", PASSWORD).tag == f"{{{SASL}}}success"
    c.open_stream()
    c.send(f"<iq type='set' id='b'><bind xmlns='{BIND}'><resource>\u0007</resource></bind></iq>")
    # U+0007 is not even XML: the stream dies with not-well-formed.
    assert c.stream_error() == "not-well-formed"
    c2 = server.client()
    c2.open_stream()
    c2.starttls(ca_file)
    assert c2.sasl_scram("alice", PASSWORD).tag == f"{{{SASL}}}success"
    c2.open_stream()
    c2.send(
        f"<iq type='set' id='b'><bind xmlns='{BIND}'><resource>\u2163\u00a0x</resource></bind></iq>"
    )
    reply = c2.next()
    # A resource that PRECIS OpaqueString refuses or maps is either bad-request or accepted
    # in its prepared form; the server never binds the raw form.
    if reply.get("type") == "error":
        assert stanza_error(reply) == "bad-request"
    c2.close()


def test_server_generated_resource(server: ServerProcess, ca_file: str) -> None:
    c = server.client()
    jid = c.login(ca_file, "dave", PASSWORD)
    resource = jid.split("/", 1)[1]
    assert len(resource) >= 8
    c2 = server.client()
    jid2 = c2.login(ca_file, "dave", PASSWORD)
    assert jid2 != jid
    c.close()
    c2.close()


def test_resource_conflict_replaces_old_session(server: ServerProcess, ca_file: str) -> None:
    old = server.client()
    old.login(ca_file, "carol", PASSWORD, "phone")
    new = server.client()
    assert new.login(ca_file, "carol", PASSWORD, "phone") == "carol@localhost/phone"
    assert old.stream_error() == "conflict"
    assert old.wait_closed()
    new.send("<iq type='get' id='alive'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert new.next().get("id") == "alive"
    new.close()


def test_session_establishment_is_optional_and_answered(
    server: ServerProcess, ca_file: str
) -> None:
    c = server.client()
    c.open_stream()
    c.starttls(ca_file)
    c.sasl_scram("bob", PASSWORD)
    features = c.open_stream()
    session = features.find("{urn:ietf:params:xml:ns:xmpp-session}session")
    assert session is not None
    assert session.find("{urn:ietf:params:xml:ns:xmpp-session}optional") is not None
    c.bind()
    c.send("<iq type='set' id='s'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>")
    reply = c.next()
    assert reply.get("type") == "result" and reply.get("id") == "s"
    c.close()


def test_closing_handshake_and_keepalive(server: ServerProcess, ca_file: str) -> None:
    c = server.client()
    c.login(ca_file, "bob", PASSWORD)
    c.send(b" \n \t ")  # RFC 6120 §4.6.1 whitespace keepalives are fine
    c.send("<iq type='get' id='k'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert c.next().get("id") == "k"
    c.send("</stream:stream>")
    assert c.wait_closed()
    assert c.closed_stream  # the server answered with its own closing tag


def test_nothing_follows_the_closing_tag_when_a_session_in_a_room_ends(
    server: ServerProcess, ca_file: str
) -> None:
    """RFC 6120 §4.4: after its closing tag the server sends nothing more. Ending the session
    makes the room send the occupant its own unavailable presence (XEP-0045 §7.14): that must
    come before the closing tag (it came after it, and aioxmpp failed on it with
    'junk after document element')."""
    c = server.client()
    c.login(ca_file, "carol", PASSWORD, "closing")
    c.send("<presence to='closing-room@conference.localhost/carol'>"
           "<x xmlns='http://jabber.org/protocol/muc'/></presence>")  # fmt: skip
    joined = c.next()
    assert joined.tag == "{jabber:client}presence" and joined.get("type") is None
    c.send("</stream:stream>")
    assert c.wait_closed()  # a parse error here: bytes after the server's closing tag
    left = [el for el in c.queue if el.tag == "{jabber:client}presence"]
    assert left and left[-1].get("type") == "unavailable", c.queue
    assert left[-1].get("from") == "closing-room@conference.localhost/carol"


def test_pipelined_data_after_starttls_is_discarded(server: ServerProcess, ca_file: str) -> None:
    # RFC 6120 §5.4.3.3: plaintext sent after <starttls/> must not be acted on.
    c = server.client()
    c.open_stream()
    c.send(f"<starttls xmlns='{TLS}'/><auth xmlns='{SASL}' mechanism='PLAIN'>AGEAYg==</auth>")
    assert c.next().tag == f"{{{TLS}}}proceed"
    import ssl

    c.sock = ssl.create_default_context(cafile=ca_file).wrap_socket(
        c.sock, server_hostname="localhost"
    )
    features = c.open_stream()
    assert features.find(f"{{{SASL}}}mechanisms") is not None
    c.close()


def test_stream_restart_must_keep_host(server: ServerProcess, ca_file: str) -> None:
    c = server.client()
    c.open_stream("localhost")
    c.starttls(ca_file, "localhost")
    assert c.sasl_scram("alice", PASSWORD).tag == f"{{{SASL}}}success"
    c._new_parser()
    c.header = None
    c.send(HEADER.format(to="example.test"))
    assert c.stream_error() == "host-unknown"
    c.close()


def test_iq_without_id_and_bad_type(server: ServerProcess, ca_file: str) -> None:
    c = server.client()
    c.login(ca_file, "alice", PASSWORD)
    c.send("<iq type='get'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert stanza_error(c.next()) == "bad-request"
    c.send("<iq type='fetch' id='t'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert stanza_error(c.next()) == "bad-request"
    c.send("<iq type='get' id='two'><a xmlns='urn:a'/><b xmlns='urn:b'/></iq>")
    assert stanza_error(c.next()) == "bad-request"
    c.send("<iq type='get' id='zero'/>")
    assert stanza_error(c.next()) == "bad-request"
    c.close()


def test_no_error_in_reply_to_error(server: ServerProcess, ca_file: str) -> None:
    c = server.client()
    c.login(ca_file, "alice", PASSWORD)
    c.send("<message type='error' to='ghost@localhost/x'><body>x</body></message>")
    c.send("<iq type='error' id='e' to='ghost@localhost/x'/>")
    c.send("<iq type='get' id='marker'><ping xmlns='urn:xmpp:ping'/></iq>")
    # The first thing back is the answer to the marker: nothing came for the two errors.
    assert c.next().get("id") == "marker"
    c.close()


def test_auth_timeout(make_server: ServerProcess, ca_file: str) -> None:
    srv = make_server("[c2s]\nauth_timeout = 1.0\n")
    srv.adduser("alice@localhost")
    srv.start()
    c = srv.client()
    c.open_stream()
    assert c.stream_error() == "connection-timeout"
    assert c.wait_closed()
    assert_still_serving(srv, ca_file)


def test_connection_closed_mid_stanza_does_not_hurt(server: ServerProcess, ca_file: str) -> None:
    c = server.client()
    c.login(ca_file, "bob", PASSWORD)
    c.send("<message to='alice@localhost'><body>half")
    c.close()
    raw = RawClient(server.port)
    raw.send("\x00\x01garbage")
    assert raw.stream_error() == "not-well-formed"
    raw.close()
    assert_still_serving(server, ca_file)


def test_payload_namespace_that_is_not_a_uri(server: ServerProcess, ca_file: str) -> None:
    # Found by tests/fuzz: XML does not require namespace names to be URIs, so these stanzas
    # are well-formed; a handler that builds the tree (private storage) must get it.
    c = server.client()
    c.login(ca_file, "alice", PASSWORD)
    c.send("<iq type='get' id='odd'><query xmlns='jabber=iq:roster'/></iq>")
    reply = c.next()
    assert reply.get("id") == "odd" and stanza_error(reply) == "service-unavailable"
    c.send(
        "<iq type='set' id='store'><query xmlns='jabber:iq:private'>"
        "<note xmlns='odd=ns'>kept</note></query></iq>"
    )
    assert c.next().get("type") == "result"
    c.send(
        "<iq type='get' id='load'><query xmlns='jabber:iq:private'><note xmlns='odd=ns'/>"
        "</query></iq>"
    )
    reply = c.next()
    assert reply.get("type") == "result"
    assert reply.findtext("{jabber:iq:private}query/{odd=ns}note") == "kept"
    c.close()
    assert_still_serving(server, ca_file)


def scram_iterations_offered(srv: ServerProcess, ca_file: str, user: str) -> int:
    """The iteration count in the server-first-message (RFC 5802 §5.1 'i') for `user`."""
    c = srv.client()
    try:
        c.open_stream()
        c.starttls(ca_file)
        first = base64.b64encode(b"n,,n=" + user.encode() + b",r=abcdefghijklmnop").decode()
        c.send(f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-256'>{first}</auth>")
        challenge = c.next()
        assert challenge.tag == f"{{{SASL}}}challenge"
        fields = dict(f.split("=", 1) for f in base64.b64decode(challenge.text).decode().split(","))
        return int(fields["i"])
    finally:
        c.abort()


def test_scram_iterations_go_up_at_a_plain_login(make_server: Any, ca_file: str) -> None:
    """New credentials use 10000 iterations; an account stored with 4096 keeps working
    (SCRAM and PLAIN) and is re-derived with 10000 at its next PLAIN login, after which
    SCRAM works with the new credentials."""
    from fastxmpp.storage.accounts import AccountStore
    from fastxmpp.storage.lmdb_store import Storage

    srv = make_server()
    with Storage(srv.data_dir) as storage:
        AccountStore(storage, iterations=4096).create("localhost", "old", PASSWORD)
    srv.adduser("new@localhost")
    srv.start()
    assert scram_iterations_offered(srv, ca_file, "new") == 10000
    assert scram_iterations_offered(srv, ca_file, "old") == 4096
    c = srv.client()
    assert c.login(ca_file, "old", PASSWORD).startswith("old@localhost/")  # SCRAM, 4096
    c.close()
    c = srv.client()
    c.open_stream()
    c.starttls(ca_file)
    assert c.sasl_plain("old", PASSWORD).tag == f"{{{SASL}}}success"
    c.close()
    assert scram_iterations_offered(srv, ca_file, "old") == 10000
    c = srv.client()
    assert c.login(ca_file, "old", PASSWORD).startswith("old@localhost/")  # SCRAM, 10000
    c.close()
