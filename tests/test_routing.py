"""Delivery rules over real sockets (RFC 6120 §10, RFC 6121 §8)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import PASSWORD, ServerProcess
from lxml import etree
from xmpp_raw import CLIENT, RawClient, stanza_error


@pytest.fixture
def clients(server: ServerProcess, ca_file: str) -> Iterator[list[RawClient]]:
    opened: list[RawClient] = []
    yield opened
    for c in opened:
        c.close()


def login(
    server: ServerProcess,
    ca_file: str,
    opened: list[RawClient],
    user: str,
    resource: str,
    priority: int | None = 0,
) -> RawClient:
    c = server.client()
    opened.append(c)
    c.login(ca_file, user, PASSWORD, resource)
    if priority is not None:
        c.send(f"<presence><priority>{priority}</priority></presence>")
        sync(c)
    return c


def sync(c: RawClient) -> None:
    """Round-trip an iq so that everything sent before it has been processed."""
    c.send("<iq type='get' id='sync'><ping xmlns='urn:xmpp:ping'/></iq>")
    while c.next().get("id") != "sync":
        pass


def assert_no_reply(c: RawClient) -> None:
    """Everything c sent so far was processed without an answer to c."""
    c.send("<iq type='get' id='quiet'><ping xmlns='urn:xmpp:ping'/></iq>")
    reply = c.next()
    assert reply.get("id") == "quiet", etree.tostring(reply)


def receives(c: RawClient, body: str, sender: RawClient) -> bool:
    """Whether c got a message with this body from what the sender has sent so far.

    The sender's round trip comes first: once it is answered the server has routed the
    message, so it sits in c's output ahead of the answer to c's own round trip."""
    sync(sender)
    sync_marker = f"marker-{body}"
    c.send(f"<iq type='get' id='{sync_marker}'><ping xmlns='urn:xmpp:ping'/></iq>")
    got = False
    while True:
        el = c.next()
        if el.get("id") == sync_marker:
            return got
        if el.tag == f"{{{CLIENT}}}message" and el.findtext(f"{{{CLIENT}}}body") == body:
            got = True


def test_message_to_full_jid_is_stamped(
    server: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    a = login(server, ca_file, clients, "alice", "desk")
    b = login(server, ca_file, clients, "bob", "laptop")
    a.send("<message to='bob@localhost/laptop' type='chat' id='m1'><body>hello</body></message>")
    msg = b.next()
    assert msg.tag == f"{{{CLIENT}}}message"
    assert msg.get("from") == "alice@localhost/desk"
    assert msg.get("to") == "bob@localhost/laptop"
    assert msg.get("id") == "m1"
    assert msg.findtext(f"{{{CLIENT}}}body") == "hello"


def test_from_may_name_the_sender(
    server: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    a = login(server, ca_file, clients, "alice", "own")
    b = login(server, ca_file, clients, "bob", "own")
    a.send("<message from='alice@localhost' to='bob@localhost/own'><body>x</body></message>")
    assert b.next().get("from") == "alice@localhost/own"


def test_bare_jid_goes_to_highest_priority(
    server: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    a = login(server, ca_file, clients, "alice", "sender")
    high = login(server, ca_file, clients, "carol", "high", priority=10)
    low = login(server, ca_file, clients, "carol", "low", priority=1)
    negative = login(server, ca_file, clients, "carol", "neg", priority=-1)
    a.send("<message to='carol@localhost' type='chat'><body>p1</body></message>")
    assert receives(high, "p1", a)
    assert not receives(low, "p1", a)
    assert not receives(negative, "p1", a)


def test_equal_priorities_all_receive(
    server: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    a = login(server, ca_file, clients, "alice", "s2")
    one = login(server, ca_file, clients, "dave", "one", priority=5)
    two = login(server, ca_file, clients, "dave", "two", priority=5)
    a.send("<message to='dave@localhost'><body>both</body></message>")
    assert receives(one, "both", a)
    assert receives(two, "both", a)


def test_negative_priority_only_gets_full_jid(
    server: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    a = login(server, ca_file, clients, "alice", "s3")
    neg = login(server, ca_file, clients, "bob", "shy", priority=-5)
    a.send("<message to='bob@localhost' type='chat' id='nb'><body>bare</body></message>")
    # Nobody available with non-negative priority: stored offline (RFC 6121 §8.5.2.2.1),
    # so the sender gets no error and the negative-priority resource nothing.
    assert_no_reply(a)
    assert not receives(neg, "bare", a)
    a.send("<message to='bob@localhost/shy'><body>full</body></message>")
    assert receives(neg, "full", a)


def test_unavailable_resource_gets_no_bare_messages(
    server: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    a = login(server, ca_file, clients, "alice", "s4")
    # Bound but never sent presence: not "available" (RFC 6121 §4.2).
    quiet = login(server, ca_file, clients, "dave", "quiet", priority=None)
    a.send("<message to='dave@localhost/quiet'><body>direct</body></message>")
    assert receives(quiet, "direct", a)
    a.send("<message to='dave@localhost' id='q'><body>bare</body></message>")
    assert_no_reply(a)  # stored offline, not delivered to the unavailable resource
    assert not receives(quiet, "bare", a)
    # A headline is never stored (RFC 6121 §8.5.2.2.1): dropped without an error.
    a.send("<message to='dave@localhost' type='headline'><body>news</body></message>")
    assert_no_reply(a)
    assert not receives(quiet, "news", a)


def test_message_to_missing_resource_falls_back_to_bare(
    server: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    a = login(server, ca_file, clients, "alice", "s5")
    b = login(server, ca_file, clients, "bob", "here")
    a.send("<message to='bob@localhost/gone' type='chat'><body>fallback</body></message>")
    assert receives(b, "fallback", a)
    # groupchat and headline to a missing resource are dropped silently.
    a.send("<message to='bob@localhost/gone' type='headline'><body>h</body></message>")
    assert not receives(b, "h", a)


@pytest.mark.parametrize("online", [True, False], ids=["other-resource-online", "all-offline"])
def test_normal_message_to_missing_resource_is_refused(
    server: ServerProcess, ca_file: str, clients: list[RawClient], online: bool
) -> None:
    # RFC 6121 §8.5.3.2.1: only a chat message to a missing resource may be handled as if
    # to the bare JID; a normal one (also one without a type) is ignored or refused: here
    # refused (service-unavailable), never given to another resource nor stored offline.
    a = login(server, ca_file, clients, "alice", "s7")
    others = [login(server, ca_file, clients, "bob", r) for r in ("one", "two")] if online else []
    for mtype, body in (("type='normal' ", "typed"), ("", "untyped")):
        a.send(f"<message to='bob@localhost/gone' {mtype}id='{body}'><body>{body}</body></message>")
        reply = a.next()
        assert reply.get("id") == body and reply.get("type") == "error"
        assert reply.get("from") == "bob@localhost/gone"
        assert stanza_error(reply) == "service-unavailable"
        for other in others:
            assert not receives(other, body, a)
    if not online:  # nothing was stored for bob's next login either
        bob = login(server, ca_file, clients, "bob", "later")
        assert not receives(bob, "typed", a) and not receives(bob, "untyped", a)


def test_iq_to_absent_full_jid(
    server: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    a = login(server, ca_file, clients, "alice", "s6")
    a.send(
        "<iq type='get' id='v1' to='bob@localhost/nowhere'><query xmlns='jabber:iq:version'/></iq>"
    )
    reply = a.next()
    assert reply.get("id") == "v1" and reply.get("type") == "error"
    assert reply.get("from") == "bob@localhost/nowhere"
    assert stanza_error(reply) == "service-unavailable"


def test_iq_between_full_jids_round_trip(
    server: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    a = login(server, ca_file, clients, "alice", "s7")
    b = login(server, ca_file, clients, "bob", "r7")
    a.send("<iq type='get' id='q1' to='bob@localhost/r7'><query xmlns='jabber:iq:version'/></iq>")
    request = b.next()
    assert request.get("from") == "alice@localhost/s7" and request.get("type") == "get"
    b.send(
        "<iq type='result' id='q1' to='alice@localhost/s7'>"
        "<query xmlns='jabber:iq:version'><name>x</name></query></iq>"
    )
    reply = a.next()
    assert reply.get("type") == "result" and reply.get("from") == "bob@localhost/r7"


def test_unknown_account_and_remote_domain(
    server: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    a = login(server, ca_file, clients, "alice", "s8")
    a.send("<message to='nobody@localhost' id='u'><body>x</body></message>")
    assert stanza_error(a.next()) == "service-unavailable"
    a.send("<iq type='get' id='u2' to='nobody@localhost'><query xmlns='jabber:iq:version'/></iq>")
    assert stanza_error(a.next()) == "service-unavailable"
    a.send("<message to='someone@elsewhere.example' id='r'><body>x</body></message>")
    reply = a.next()
    assert reply.get("id") == "r" and stanza_error(reply) == "remote-server-not-found"
    # Presence to an unknown account is ignored, not answered (RFC 6121 §8.5.1).
    a.send("<presence to='nobody@localhost'/>")
    sync(a)


def test_jid_malformed(server: ServerProcess, ca_file: str, clients: list[RawClient]) -> None:
    a = login(server, ca_file, clients, "alice", "s9")
    a.send("<message to='bad@@localhost' id='j'><body>x</body></message>")
    reply = a.next()
    assert reply.get("id") == "j" and stanza_error(reply) == "jid-malformed"


def test_jid_normalization_on_delivery(
    server: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    a = login(server, ca_file, clients, "alice", "s10")
    b = login(server, ca_file, clients, "bob", "norm")
    a.send("<message to='BOB@LocalHost/norm'><body>case</body></message>")
    assert receives(b, "case", a)


def test_hosts_are_separate(server: ServerProcess, ca_file: str) -> None:
    server.adduser("alice@example.test")
    c = server.client()
    try:
        c.open_stream("example.test")
        c.starttls(ca_file, "example.test")
        assert c.sasl_scram("alice", PASSWORD).tag.endswith("success")
        c.open_stream("example.test")
        assert c.bind("x") == "alice@example.test/x"
        c.send("<message to='bob@example.test' id='nb'><body>x</body></message>")
        # bob exists on localhost only.
        assert stanza_error(c.next()) == "service-unavailable"
    finally:
        c.close()


def test_iq_to_server_unknown_namespace(
    server: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    a = login(server, ca_file, clients, "alice", "s11")
    a.send("<iq type='get' id='x1' to='localhost'><query xmlns='urn:example:none'/></iq>")
    reply = a.next()
    assert reply.get("type") == "error" and stanza_error(reply) == "service-unavailable"
    assert reply.get("from") == "localhost"
