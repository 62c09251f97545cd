"""The legacy options, each off by default: XEP-0078 non-SASL authentication (only over TLS),
XEP-0086 legacy error codes, XEP-0138 zlib stream compression."""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import PASSWORD, ServerProcess
from lxml import etree
from xmpp_raw import (
    BIND,
    CLIENT,
    COMPRESS,
    COMPRESS_FEATURE,
    SASL,
    STREAMS,
    RawClient,
    stanza_error,
)

from fastxmpp import errors

AUTH = "jabber:iq:auth"
AUTH_FEATURE = "http://jabber.org/features/iq-auth"


def start(make_server: Any, toml: str, users: tuple[str, ...] = ("alice", "bob")) -> ServerProcess:
    srv: ServerProcess = make_server(toml)
    for user in users:
        srv.adduser(f"{user}@localhost")
    srv.start()
    return srv


def tls_client(srv: ServerProcess, ca_file: str) -> tuple[RawClient, Any]:
    c = srv.client()
    c.open_stream()
    return c, c.starttls(ca_file)


def iq_auth(c: RawClient, user: str | None, password: str | None, resource: str | None) -> Any:
    fields = "".join(
        f"<{name}>{value}</{name}>"
        for name, value in (("username", user), ("password", password), ("resource", resource))
        if value is not None
    )
    c.send(f"<iq type='set' id='a1'><query xmlns='{AUTH}'>{fields}</query></iq>")
    return c.next()


def error_code(el: Any) -> str | None:
    error = el.find(f"{{{CLIENT}}}error")
    return None if error is None else error.get("code")


# --- XEP-0078 ----------------------------------------------------------------------------

LEGACY_AUTH = "[legacy]\nnon_sasl_auth = true\n"


def test_non_sasl_auth_off_by_default(server: ServerProcess, ca_file: str) -> None:
    c, features = tls_client(server, ca_file)
    assert features.find(f"{{{AUTH_FEATURE}}}auth") is None
    c.send(f"<iq type='get' id='g'><query xmlns='{AUTH}'/></iq>")
    assert stanza_error(c.next()) == "service-unavailable"  # XEP-0078 §3
    assert stanza_error(iq_auth(c, "alice", PASSWORD, "r")) == "service-unavailable"
    c.close()


def test_non_sasl_auth_success_binds(make_server: Any, ca_file: str) -> None:
    srv = start(make_server, LEGACY_AUTH)
    c = srv.client()
    assert c.open_stream().find(f"{{{AUTH_FEATURE}}}auth") is None  # not before TLS
    features = c.starttls(ca_file)
    assert features.find(f"{{{AUTH_FEATURE}}}auth") is not None
    c.send(f"<iq type='get' id='g' to='localhost'><query xmlns='{AUTH}'/></iq>")
    query = c.next().find(f"{{{AUTH}}}query")
    names = {child.tag.split("}", 1)[1] for child in query}
    assert names == {"username", "password", "resource"}  # no digest: SCRAM storage only

    reply = iq_auth(c, "alice", PASSWORD, "legacy")
    assert reply.get("type") == "result" and reply.get("id") == "a1", etree.tostring(reply)
    # Bound: another client reaches alice@localhost/legacy, and she can answer.
    bob = srv.client()
    bob.login(ca_file, "bob", PASSWORD, "b")
    bob.send("<message to='alice@localhost/legacy' type='chat'><body>hi</body></message>")
    msg = c.next()
    assert msg.get("from") == "bob@localhost/b" and msg.findtext(f"{{{CLIENT}}}body") == "hi"
    c.send("<message to='bob@localhost/b' type='chat'><body>hello</body></message>")
    assert bob.next().get("from") == "alice@localhost/legacy"
    # The session is bound already: binding again is not allowed.
    c.send(f"<iq type='set' id='b2'><bind xmlns='{BIND}'/></iq>")
    assert stanza_error(c.next()) == "not-allowed"
    c.close()
    bob.close()
    assert PASSWORD not in srv.log_text()


def test_non_sasl_auth_errors(make_server: Any, ca_file: str) -> None:
    srv = start(make_server, LEGACY_AUTH)
    c, _ = tls_client(srv, ca_file)
    reply = iq_auth(c, "alice", "wrong", "r")
    assert stanza_error(reply) == "not-authorized"
    assert reply.find(f"{{{AUTH}}}query") is None  # never echoes the credentials
    assert stanza_error(iq_auth(c, "nobody", "wrong", "r")) == "not-authorized"
    assert stanza_error(iq_auth(c, "alice", PASSWORD, None)) == "not-acceptable"
    c.close()
    c, _ = tls_client(srv, ca_file)
    assert stanza_error(iq_auth(c, None, PASSWORD, "r")) == "not-acceptable"
    c.send(
        f"<iq type='set' id='d'><query xmlns='{AUTH}'><username>alice</username>"
        "<digest>48fc78be9ec8f86d8ce1c39c320c97c21d62334d</digest><resource>r</resource>"
        "</query></iq>"
    )
    assert stanza_error(c.next()) == "not-acceptable"  # only the plaintext method
    c.close()


def test_non_sasl_auth_too_many_failures(make_server: Any, ca_file: str) -> None:
    srv = start(make_server, LEGACY_AUTH)
    c, _ = tls_client(srv, ca_file)
    for _ in range(2):
        assert stanza_error(iq_auth(c, "alice", "guess", "r")) == "not-authorized"
    assert stanza_error(iq_auth(c, "alice", "guess", "r")) == "not-authorized"
    assert c.stream_error() == "policy-violation"
    assert c.wait_closed()


def test_non_sasl_auth_after_failed_sasl(make_server: Any, ca_file: str) -> None:
    srv = start(make_server, LEGACY_AUTH)
    c, _ = tls_client(srv, ca_file)
    assert c.sasl_scram("alice", "wrong").tag == f"{{{SASL}}}failure"
    c.send(
        f"<iq type='set' id='a1'><query xmlns='{AUTH}'><username>alice</username>"
        f"<password>{PASSWORD}</password><resource>r</resource></query></iq>"
    )
    assert c.stream_error() == "policy-violation"  # XEP-0078 §8


def test_non_sasl_auth_only_over_tls(make_server: Any, ca_file: str) -> None:
    srv = start(make_server, LEGACY_AUTH + "[c2s]\nrequire_encryption = false\n")
    c = srv.client()
    assert c.open_stream().find(f"{{{AUTH_FEATURE}}}auth") is None
    assert stanza_error(iq_auth(c, "alice", PASSWORD, "r")) == "not-authorized"
    c.close()


@pytest.mark.parametrize("policy", ["replace", "reject"])
def test_non_sasl_auth_resource_conflict(make_server: Any, ca_file: str, policy: str) -> None:
    srv = start(make_server, LEGACY_AUTH + f'[c2s]\nresource_conflict = "{policy}"\n')
    first = srv.client()
    first.login(ca_file, "alice", PASSWORD, "same")
    c, _ = tls_client(srv, ca_file)
    reply = iq_auth(c, "alice", PASSWORD, "same")
    if policy == "reject":
        assert stanza_error(reply) == "conflict"
        # Still unauthenticated: a right login with another resource works.
        assert iq_auth(c, "alice", PASSWORD, "other").get("type") == "result"
    else:
        # XEP-0078 §3: the recommended behaviour, the old session goes.
        assert reply.get("type") == "result"
        assert first.stream_error() == "conflict"
    c.close()
    first.close()


# --- XEP-0086 ----------------------------------------------------------------------------

# XEP-0086 §3, the table "XMPP error condition / type / legacy error code", as written there.
XEP_0086_TABLE = {
    "bad-request": "400",
    "conflict": "409",
    "feature-not-implemented": "501",
    "forbidden": "403",
    "gone": "302",
    "internal-server-error": "500",
    "item-not-found": "404",
    "jid-malformed": "400",
    "not-acceptable": "406",
    "not-allowed": "405",
    "not-authorized": "401",
    "payment-required": "402",
    "recipient-unavailable": "404",
    "redirect": "302",
    "registration-required": "407",
    "remote-server-not-found": "404",
    "remote-server-timeout": "504",
    "resource-constraint": "500",
    "service-unavailable": "503",
    "subscription-required": "407",
    "undefined-condition": "500",
    "unexpected-request": "400",
}


@pytest.fixture
def legacy_codes() -> Iterator[None]:
    errors.set_legacy_codes(True)
    yield
    errors.set_legacy_codes(False)


def test_legacy_code_table(legacy_codes: None) -> None:
    assert errors.LEGACY_CODES == XEP_0086_TABLE
    for condition, error_type in errors.STANZA_CONDITION_TYPES.items():
        xml = errors.error_element_xml(condition, error_type, "text")
        el = etree.fromstring(xml)
        expected = XEP_0086_TABLE.get(condition, errors.LEGACY_FALLBACK_CODE)
        assert el.get("code") == expected, condition
        assert el.get("type") == error_type
        err = errors.StanzaError(condition)
        reply = etree.fromstring(errors.stanza_error_bytes("iq", "x", None, None, err))
        assert reply[0].get("code") == expected


def test_legacy_codes_off_by_default() -> None:
    assert not errors.legacy_codes_enabled()
    for condition, error_type in errors.STANZA_CONDITION_TYPES.items():
        assert "code=" not in errors.error_element_xml(condition, error_type)


def test_legacy_codes_on_the_wire(make_server: Any, ca_file: str) -> None:
    srv = start(make_server, "[legacy]\nerror_codes = true\n")
    c = srv.client()
    c.login(ca_file, "alice", PASSWORD)
    c.send(
        "<iq type='get' id='v' to='bob@localhost/absent'><query xmlns='jabber:iq:version'/></iq>"
    )
    reply = c.next()
    assert stanza_error(reply) == "service-unavailable" and error_code(reply) == "503"
    c.send("<message to='bob@localhost/x' from='alice@localhost/nope'/>")
    assert c.stream_error() == "invalid-from"  # stream errors carry no code
    c.close()


def test_legacy_codes_on_auth_and_registration_errors(make_server: Any, ca_file: str) -> None:
    srv = start(
        make_server,
        "[legacy]\nerror_codes = true\nnon_sasl_auth = true\n[register]\nenabled = true\n",
    )
    c, _ = tls_client(srv, ca_file)
    reply = iq_auth(c, "alice", "wrong", "r")
    assert stanza_error(reply) == "not-authorized" and error_code(reply) == "401"  # XEP-0078
    assert error_code(iq_auth(c, "alice", PASSWORD, None)) == "406"
    c.send(
        "<iq type='set' id='r'><query xmlns='jabber:iq:register'><username>bob</username>"
        "<password>x</password></query></iq>"
    )
    reply = c.next()
    assert stanza_error(reply) == "conflict" and error_code(reply) == "409"  # XEP-0077
    c.close()


def test_legacy_codes_off_on_the_wire(server: ServerProcess, ca_file: str) -> None:
    c = server.client()
    c.login(ca_file, "alice", PASSWORD)
    c.send(
        "<iq type='get' id='v' to='bob@localhost/absent'><query xmlns='jabber:iq:version'/></iq>"
    )
    reply = c.next()
    assert stanza_error(reply) == "service-unavailable" and error_code(reply) is None
    c.close()


# --- XEP-0138 ----------------------------------------------------------------------------

COMPRESSION = "[legacy]\ncompression = true\n"


def authenticated(srv: ServerProcess, ca_file: str, user: str = "alice") -> tuple[RawClient, Any]:
    """TLS and SASL done, stream restarted, not bound: (client, features)."""
    c, _ = tls_client(srv, ca_file)
    assert c.sasl_scram(user, PASSWORD).tag == f"{{{SASL}}}success"
    return c, c.open_stream()


def compression_methods(features: Any) -> list[str] | None:
    el = features.find(f"{{{COMPRESS_FEATURE}}}compression")
    return None if el is None else [m.text for m in el]


def test_compression_off_by_default(server: ServerProcess, ca_file: str) -> None:
    c, features = authenticated(server, ca_file)
    assert compression_methods(features) is None
    c.send(f"<compress xmlns='{COMPRESS}'><method>zlib</method></compress>")
    assert c.stream_error() == "unsupported-stanza-type"
    c.close()


def test_compression_not_offered_before_auth(make_server: Any, ca_file: str) -> None:
    srv = start(make_server, COMPRESSION)
    c = srv.client()
    assert compression_methods(c.open_stream()) is None
    assert compression_methods(c.starttls(ca_file)) is None
    c.send(f"<compress xmlns='{COMPRESS}'><method>zlib</method></compress>")
    assert c.stream_error() == "not-authorized"
    c.close()


def test_compression_negotiation_and_traffic(make_server: Any, ca_file: str) -> None:
    srv = start(make_server, COMPRESSION)
    c, features = authenticated(srv, ca_file)
    assert compression_methods(features) == ["zlib"]
    # An unknown method fails without ending the stream (XEP-0138 §3); retrying is fine.
    failure = c.compress("lzw")
    assert failure.tag == f"{{{COMPRESS}}}failure"
    assert failure[0].tag == f"{{{COMPRESS}}}unsupported-method"
    features = c.compress("zlib")
    assert c.deflater is not None
    assert compression_methods(features) is None  # not twice
    assert features.find(f"{{{BIND}}}bind") is not None
    assert c.bind("zipped") == "alice@localhost/zipped"

    bob = srv.client()
    bob.login(ca_file, "bob", PASSWORD, "plain")
    body = "compressible " * 200
    received_before = c.wire_received
    bob.send(f"<message to='alice@localhost/zipped' type='chat'><body>{body}</body></message>")
    msg = c.next()
    assert msg.findtext(f"{{{CLIENT}}}body") == body
    assert c.wire_received - received_before < len(body) // 4  # it really came compressed
    sent_before = c.wire_sent
    c.send(f"<message to='bob@localhost/plain' type='chat'><body>{body}</body></message>")
    assert c.wire_sent - sent_before < len(body) // 4
    msg = bob.next()
    assert msg.get("from") == "alice@localhost/zipped"
    assert msg.findtext(f"{{{CLIENT}}}body") == body
    # Several round trips over the one zlib stream.
    for i in range(5):
        c.send(f"<iq type='get' id='p{i}'><ping xmlns='urn:xmpp:ping'/></iq>")
        assert c.next().get("id") == f"p{i}"
    c.close()
    assert c.closed_stream  # the closing tag came through the compressed stream too
    bob.close()


def test_compression_twice_or_after_bind_fails(make_server: Any, ca_file: str) -> None:
    srv = start(make_server, COMPRESSION)
    c, _ = authenticated(srv, ca_file)
    c.bind("late")
    c.send(f"<compress xmlns='{COMPRESS}'><method>zlib</method></compress>")
    failure = c.next()
    assert failure.tag == f"{{{COMPRESS}}}failure"
    assert failure[0].tag == f"{{{COMPRESS}}}setup-failed"
    c.close()
    c, _ = authenticated(srv, ca_file)
    c.compress("zlib")
    c.send(f"<compress xmlns='{COMPRESS}'><method>zlib</method></compress>")
    assert c.next()[0].tag == f"{{{COMPRESS}}}setup-failed"
    c.close()


def test_corrupt_compressed_input(make_server: Any, ca_file: str) -> None:
    srv = start(make_server, COMPRESSION)
    c, _ = authenticated(srv, ca_file)
    c.compress("zlib")
    c.send_raw(b"\xff" * 64)  # not zlib
    error = c.next()
    assert error.tag == f"{{{STREAMS}}}error"
    names = [child.tag.split("}", 1)[1] for child in error]
    assert "undefined-condition" in names
    app = error.find(f"{{{COMPRESS}}}failure")
    assert app is not None and app[0].tag == f"{{{COMPRESS}}}processing-failed"
    assert c.wait_closed()


def test_compression_bomb_hits_the_stanza_limit(make_server: Any, ca_file: str) -> None:
    srv = start(make_server, COMPRESSION)
    c, _ = authenticated(srv, ca_file)
    c.compress("zlib")
    c.bind()
    # Our side of the zlib stream the server is inflating, so the bomb decodes cleanly.
    bomb = c.deflater.compress(b"<message><body>" + b" " * 50_000_000)
    bomb += c.deflater.flush(zlib.Z_SYNC_FLUSH)
    assert len(bomb) < 100_000
    c.send_raw(bomb)
    assert c.stream_error() == "policy-violation"
    assert c.wait_closed()
    # Still serving.
    d = srv.client()
    assert re.match(r"alice@localhost/", d.login(ca_file, "alice", PASSWORD))
    d.close()
