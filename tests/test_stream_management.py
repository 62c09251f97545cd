"""XEP-0198 stream management over real sockets: enabling, acks both ways, the
handled-count-too-high error, resumption after an abrupt disconnect (stanzas re-sent, presence
untouched while detached), failed resumptions (unknown, expired, another account's SM-ID),
resuming while the old connection is still open, expiry (unavailable presence, unacknowledged
messages to offline storage, delivered exactly once), the unacknowledged-queue limit, a dead
connection found by ping, shutdown with a detached session, hostile input, and slixmpp's
xep_0198 plugin."""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import (
    PASSWORD,
    FreshNames,
    ServerProcess,
    add_accounts,
    assert_still_serving,
    module_server,
)
from fastxmpp._router import Session
from lxml import etree
from slixmpp import ClientXMPP
from xmpp_raw import CLIENT, STANZA_ERRORS, STREAMS, RawClient, stanza_error

from fastxmpp.config import StreamManagementConfig
from fastxmpp.stream.sm import StreamManagement, parse_h

SM = "urn:xmpp:sm:3"
DELAY = "urn:xmpp:delay"


POOL = FreshNames("sm", 60)


@pytest.fixture(scope="module")
def srv(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(
        ca,
        tmp_path_factory,
        POOL,
        "[limits]\nmax_unauthenticated_per_ip = 200\n"
        "[stream_management]\nmax_unacked_stanzas = 40\n",
    )


@pytest.fixture
def users() -> Iterator[str]:
    return POOL.names()


_ids = itertools.count()


class Client:
    """A raw stream with the client's side of XEP-0198: `received` counts the stanzas the
    server sent since <enabled/>; the server's <r/> are answered when `auto_ack`."""

    def __init__(self, c: RawClient, name: str, full: str) -> None:
        self.c = c
        self.name = name
        self.bare = f"{name}@localhost"
        self.full = full
        self.counting = False
        self.auto_ack = True
        self.received = 0
        self.requests = 0
        self.sm_id: str | None = None

    def send(self, data: str) -> None:
        self.c.send(data)

    def next(self, timeout: float | None = None) -> Any:
        while True:
            el = self.c.next(timeout)
            if el.tag == f"{{{SM}}}r":
                self.requests += 1
                if self.auto_ack:
                    self.c.send(f"<a xmlns='{SM}' h='{self.received}'/>")
                continue
            if self.counting and el.tag.startswith(f"{{{CLIENT}}}"):
                self.received += 1
            return el

    def sync(self) -> list[Any]:
        """Ping round trip: everything sent before was processed; what came meanwhile."""
        marker = f"sync-{next(_ids)}"
        self.send(f"<iq type='get' id='{marker}'><ping xmlns='urn:xmpp:ping'/></iq>")
        seen = []
        while True:
            el = self.next()
            if el.get("id") == marker:
                return seen
            seen.append(el)

    def request_ack(self) -> int:
        """<r/>: the server's 'h' (stanzas in between are counted and dropped)."""
        self.send(f"<r xmlns='{SM}'/>")
        while True:
            el = self.next()
            if el.tag == f"{{{SM}}}a":
                return int(el.get("h"))

    def enable(self, resume: bool = True, max_seconds: int | None = None) -> Any:
        attrs = " resume='true'" if resume else ""
        if max_seconds is not None:
            attrs += f" max='{max_seconds}'"
        self.send(f"<enable xmlns='{SM}'{attrs}/>")
        answer = self.next()
        if answer.tag == f"{{{SM}}}enabled":
            self.counting = True
            self.sm_id = answer.get("id")
        return answer


def authenticated(srv: ServerProcess, ca_file: str, clients: list[RawClient], name: str) -> Any:
    """A new stream, TLS and SASL done: (client, features of the restarted stream)."""
    c = srv.client()
    clients.append(c)
    c.open_stream()
    c.starttls(ca_file)
    assert c.sasl_scram(name, PASSWORD).tag.endswith("success")
    return c, c.open_stream()


def login(
    srv: ServerProcess,
    ca_file: str,
    clients: list[RawClient],
    name: str,
    resource: str = "r",
    available: bool = True,
) -> Client:
    c, _features = authenticated(srv, ca_file, clients, name)
    client = Client(c, name, c.bind(resource))
    if available:
        client.send("<presence/>")
        client.sync()
    return client


def resume(
    srv: ServerProcess,
    ca_file: str,
    clients: list[RawClient],
    old: Client,
    h: int,
    then: str = "",
) -> tuple[Client, Any]:
    """A new connection resuming `old`'s session (`then`: sent in the same packet):
    (client, <resumed/> or <failed/>)."""
    c, _features = authenticated(srv, ca_file, clients, old.name)
    client = Client(c, old.name, old.full)
    client.counting = True
    client.received = h
    client.sm_id = old.sm_id
    c.send(f"<resume xmlns='{SM}' previd='{old.sm_id}' h='{h}'/>{then}")
    return client, client.next()


def befriend(a: Client, b: Client) -> None:
    """Mutual presence subscription, by protocol."""
    for x, y in ((a, b), (b, a)):
        x.send(f"<presence type='subscribe' to='{y.bare}'/>")
        x.sync()
        y.send(f"<presence type='subscribed' to='{x.bare}'/>")
        y.sync()
    a.sync()
    b.sync()


def failed_condition(el: Any) -> str | None:
    assert el.tag == f"{{{SM}}}failed", etree.tostring(el)
    for child in el:
        if child.tag.startswith(f"{{{STANZA_ERRORS}}}"):
            return str(child.tag.split("}", 1)[1])
    return None


def bodies(elements: list[Any]) -> list[str]:
    return [
        el.findtext(f"{{{CLIENT}}}body") or ""
        for el in elements
        if el.tag == f"{{{CLIENT}}}message" and el.find(f"{{{CLIENT}}}body") is not None
    ]


def unavailable_from(elements: list[Any], full: str) -> bool:
    return any(
        el.tag == f"{{{CLIENT}}}presence"
        and el.get("type") == "unavailable"
        and el.get("from") == full
        for el in elements
    )


def message(to: str, body: str) -> str:
    return f"<message to='{to}' type='chat' id='{body}'><body>{body}</body></message>"


# --- the counters (§4) ---------------------------------------------------------------------


def test_counters_wrap_at_2_32() -> None:
    # (No event loop here: no timer for the quiet-output request.)
    state = StreamManagement(StreamManagementConfig(ack_request_after=0), None, 0)
    state.acked = (1 << 32) - 2  # far into a long session
    session = Session()  # no transport: what is sent is only counted and kept
    for _ in range(4):
        state.sent(session, b"<message/>")
    assert state.sent_count == 2  # 2^32 - 2 + 4, wrapped
    assert not state.acknowledge(3)  # more than was sent
    assert state.acknowledge(0) and len(state.unacked) == 2
    assert state.acknowledge(2) and not state.unacked and state.unacked_bytes == 0
    state.received = (1 << 32) - 1
    state.handled()
    assert state.received == 0
    assert parse_h("4294967295") == (1 << 32) - 1
    for bad in ("4294967296", "-1", "+1", "1.0", "", "\u0661", None):
        assert parse_h(bad) is None


# --- enabling (§3) -------------------------------------------------------------------------


def test_feature_enable_and_order(
    srv: ServerProcess, ca_file: str, clients: list[RawClient], users: Iterator[str]
) -> None:
    c = srv.client()
    clients.append(c)
    before_auth = c.open_stream()
    assert before_auth.find(f"{{{SM}}}sm") is None
    c.starttls(ca_file)
    c.sasl_scram(next(users), PASSWORD)
    features = c.open_stream()
    assert features.find(f"{{{SM}}}sm") is not None
    client = Client(c, "x", "")
    # §3: not before resource binding ...
    assert failed_condition(client.enable()) == "unexpected-request"
    client.full = c.bind("phone")
    enabled = client.enable(max_seconds=60)
    assert enabled.tag == f"{{{SM}}}enabled", etree.tostring(enabled)
    assert enabled.get("resume") == "true" and enabled.get("id")
    assert enabled.get("max") == "60"  # the client's shorter maximum is honoured
    # ... and only once per stream.
    assert failed_condition(client.enable()) == "unexpected-request"
    assert client.sync() == []  # still serving this stream


def test_enable_without_resumption(
    srv: ServerProcess, ca_file: str, clients: list[RawClient], users: Iterator[str]
) -> None:
    client = login(srv, ca_file, clients, next(users))
    enabled = client.enable(resume=False)
    assert enabled.tag == f"{{{SM}}}enabled"
    assert enabled.get("resume") is None and enabled.get("id") is None


# --- acks (§4) -----------------------------------------------------------------------------


def test_acks_count_both_ways(
    srv: ServerProcess, ca_file: str, clients: list[RawClient], users: Iterator[str]
) -> None:
    alice = login(srv, ca_file, clients, next(users))
    bob = login(srv, ca_file, clients, next(users))
    alice.enable(resume=False)
    # Inbound: every stanza counts, errors included (the reply is "handling" too).
    alice.send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
    alice.send(message(bob.full, "one"))
    alice.send("<message to='nobody@localhost' id='x'><body>?</body></message>")
    assert alice.request_ack() == 3
    assert alice.request_ack() == 3  # <r/> and <a/> are no stanzas
    # Outbound: what the server sent since <enabled/> (the ping result and the error).
    assert alice.received == 2
    alice.send(f"<a xmlns='{SM}' h='2'/>")
    for i in range(12):
        bob.send(message(alice.full, f"m{i}"))
    bob.sync()
    got = []
    while len(got) < 12:
        got += bodies([alice.next()])
    assert got == [f"m{i}" for i in range(12)]
    # The server asked for acks on its own (ack_request_every = 5).
    assert alice.requests >= 2
    alice.send(f"<a xmlns='{SM}' h='{alice.received}'/>")
    assert alice.sync() == []


def test_handled_count_too_high(
    srv: ServerProcess, ca_file: str, clients: list[RawClient], users: Iterator[str]
) -> None:
    client = login(srv, ca_file, clients, next(users))
    client.enable()
    client.sync()
    client.send(f"<a xmlns='{SM}' h='10'/>")
    before = []
    error = client.c.next()
    while error.tag != f"{{{STREAMS}}}error":
        before.append(error.tag)
        error = client.c.next()
    assert before == [f"{{{SM}}}a"]  # what the server handled, before it closes (§4)
    assert error.find("{urn:ietf:params:xml:ns:xmpp-streams}undefined-condition") is not None
    too_high = error.find(f"{{{SM}}}handled-count-too-high")
    assert too_high is not None
    assert too_high.get("h") == "10" and too_high.get("send-count") == "1"
    assert client.c.wait_closed()
    assert_still_serving(srv, ca_file, next(users))


def test_hostile_input(
    srv: ServerProcess, ca_file: str, clients: list[RawClient], users: Iterator[str]
) -> None:
    cases = [
        # <r/> and <a/> where stream management is not enabled.
        (False, f"<r xmlns='{SM}'/>", "unsupported-stanza-type"),
        (False, f"<a xmlns='{SM}' h='0'/>", "unsupported-stanza-type"),
        (True, f"<a xmlns='{SM}' h='-1'/>", "invalid-xml"),
        (True, f"<a xmlns='{SM}' h='4294967296'/>", "invalid-xml"),
        (True, f"<a xmlns='{SM}'/>", "invalid-xml"),
        (True, f"<whatever xmlns='{SM}'/>", "unsupported-stanza-type"),
    ]
    for enable, data, condition in cases:
        client = login(srv, ca_file, clients, next(users), available=False)
        if enable:
            client.enable()
        client.send(data)
        assert client.c.stream_error() == condition, data
        assert client.c.wait_closed()
    # Recoverable: <failed/>, the stream goes on.
    client = login(srv, ca_file, clients, next(users), available=False)
    for data, condition in (
        (f"<resume xmlns='{SM}' previd='x' h='0'/>", "unexpected-request"),  # bound already
        (f"<enable xmlns='{SM}' resume='true' max='{'9' * 5000}'/>", None),
    ):
        client.send(data)
        answer = client.next()
        if condition is None:
            assert answer.tag == f"{{{SM}}}enabled" and answer.get("max") == "300"
        else:
            assert failed_condition(answer) == condition
    # Before authentication: never (XEP-0198 §9).
    c = srv.client()
    clients.append(c)
    c.open_stream()
    c.send(f"<resume xmlns='{SM}' previd='x' h='0'/>")
    assert failed_condition(c.next()) == "unexpected-request"
    assert_still_serving(srv, ca_file, next(users))


# --- resumption (§5) -----------------------------------------------------------------------


def test_resume_after_abrupt_disconnect(
    srv: ServerProcess, ca_file: str, clients: list[RawClient], users: Iterator[str]
) -> None:
    alice = login(srv, ca_file, clients, next(users))
    bob = login(srv, ca_file, clients, next(users))
    befriend(alice, bob)
    alice.enable()
    alice.auto_ack = False
    bob.send(message(alice.bare, "before"))
    bob.sync()
    assert bodies([alice.next()]) == ["before"]
    handled = alice.received - 1  # "before" arrived but the client never handled it
    alice.send(message(bob.full, "from alice"))
    sent_by_alice = alice.request_ack()
    assert sent_by_alice == 1
    alice.c.abort()  # no </stream:stream>: the stream is unfinished (§7)
    time.sleep(0.3)
    for body in ("during 1", "during 2"):
        bob.send(message(alice.full, body))
    seen = bob.sync()  # no error: the session is still there
    assert not any(el.get("type") == "error" for el in seen)
    assert not unavailable_from(seen, alice.full)
    assert bodies(seen) == ["from alice"]
    # The contact sees nothing while the session waits.
    assert not unavailable_from(bob.sync(), alice.full)

    new, answer = resume(srv, ca_file, clients, alice, handled)
    assert answer.tag == f"{{{SM}}}resumed", etree.tostring(answer)
    assert answer.get("previd") == alice.sm_id
    assert answer.get("h") == str(sent_by_alice)
    again = []
    while len(bodies(again)) < 3:
        again.append(new.next())
    assert bodies(again) == ["before", "during 1", "during 2"]
    # Same session: same full JID, still available to contacts, stanzas flow both ways.
    new.send(message(bob.full, "after"))
    assert bodies(bob.sync()) == ["after"]
    bob.send(message(alice.bare, "to the resumed"))
    bob.sync()
    assert bodies(new.sync()) == ["to the resumed"]
    assert new.request_ack() == sent_by_alice + 2  # counts carried over
    new.send(f"<a xmlns='{SM}' h='{new.received}'/>")
    # A clean close now: unavailable to the contact, at last.
    new.c.close()
    assert unavailable_from(bob.sync(), alice.full)


def test_resume_while_old_connection_is_open(
    srv: ServerProcess, ca_file: str, clients: list[RawClient], users: Iterator[str]
) -> None:
    alice = login(srv, ca_file, clients, next(users))
    bob = login(srv, ca_file, clients, next(users))
    alice.enable()
    alice.sync()
    # What follows <resume/> in the same packet is the resumed session's.
    new, answer = resume(
        srv, ca_file, clients, alice, alice.received, message(bob.full, "right after")
    )
    assert answer.tag == f"{{{SM}}}resumed"
    assert answer.get("h") == "1"
    # §5: the server closes the old stream with conflict.
    assert alice.c.stream_error() == "conflict"
    assert alice.c.wait_closed()
    assert bodies(bob.sync()) == ["right after"]
    bob.send(message(alice.full, "hello"))
    bob.sync()
    assert bodies(new.sync()) == ["hello"]
    assert new.request_ack() == 3


def test_failed_resumptions(
    srv: ServerProcess, ca_file: str, clients: list[RawClient], users: Iterator[str]
) -> None:
    alice = login(srv, ca_file, clients, next(users))
    alice.enable()
    alice.sync()
    alice.c.abort()
    mallory_name = next(users)
    # Another account's SM-ID is unknown to it (nothing leaks, no 'h').
    intruder = Client(alice.c, mallory_name, "")
    intruder.sm_id = alice.sm_id
    c, answer = resume(srv, ca_file, clients, intruder, 0)
    assert failed_condition(answer) == "item-not-found" and answer.get("h") is None
    # §5: after <failed/> the client may bind on the same stream.
    assert c.c.bind("instead").endswith("/instead")
    # Unknown SM-ID.
    ghost = Client(alice.c, alice.name, alice.full)
    ghost.sm_id = "not-a-session"
    _c, answer = resume(srv, ca_file, clients, ghost, 0)
    assert failed_condition(answer) == "item-not-found"
    # h not an unsignedInt.
    c2, _features = authenticated(srv, ca_file, clients, alice.name)
    c2.send(f"<resume xmlns='{SM}' previd='{alice.sm_id}' h='x'/>")
    assert failed_condition(c2.next()) == "bad-request"
    # The real one still works after all that.
    new, answer = resume(srv, ca_file, clients, alice, alice.received)
    assert answer.tag == f"{{{SM}}}resumed"
    # Resuming too far ahead is the handled-count-too-high error; the session is kept.
    new.c.abort()
    bad, _features = authenticated(srv, ca_file, clients, alice.name)
    bad.send(f"<resume xmlns='{SM}' previd='{alice.sm_id}' h='999'/>")
    assert bad.stream_error() == "undefined-condition"
    _again, answer = resume(srv, ca_file, clients, alice, alice.received)
    assert answer.tag == f"{{{SM}}}resumed"


def test_expiry_unavailable_and_offline_exactly_once(
    srv: ServerProcess, ca_file: str, clients: list[RawClient], users: Iterator[str]
) -> None:
    alice = login(srv, ca_file, clients, next(users))
    bob = login(srv, ca_file, clients, next(users))
    befriend(alice, bob)
    alice.enable(max_seconds=1)  # the client's 'max' makes the window short
    alice.auto_ack = False
    bob.send(message(alice.bare, "unacked"))
    bob.sync()
    assert bodies([alice.next()]) == ["unacked"]
    alice.c.abort()
    time.sleep(0.3)
    bob.send(message(alice.bare, "while detached"))
    bob.send(f"<iq type='get' id='q' to='{alice.full}'><query xmlns='jabber:iq:version'/></iq>")
    seen = bob.sync()
    assert not unavailable_from(seen, alice.full)
    deadline = time.monotonic() + 10
    while not unavailable_from(seen, alice.full):
        assert time.monotonic() < deadline, seen
        seen += [bob.next()]
    # The iq nobody will answer now comes back as an error (RFC 6121 §8.5.3.2.3).
    errors = [el for el in seen if el.get("id") == "q" and el.get("type") == "error"]
    assert errors
    # Expired: <failed/> with the 'h' it ended with (§5).
    _c, answer = resume(srv, ca_file, clients, alice, alice.received)
    assert failed_condition(answer) == "item-not-found"
    assert answer.get("h") == "0"
    # The unacknowledged messages went to offline storage: at the next login, once,
    # with the time they were first sent.
    back = login(srv, ca_file, clients, alice.name, "again", available=False)
    back.send("<presence/>")
    got = back.sync()
    assert bodies(got) == ["unacked", "while detached"]
    for el in got:
        if el.tag == f"{{{CLIENT}}}message":
            assert el.find(f"{{{DELAY}}}delay") is not None
    back.c.close()
    third = login(srv, ca_file, clients, alice.name, "third", available=False)
    third.send("<presence/>")
    assert bodies(third.sync()) == []


def test_clean_close_with_unacked_goes_offline(
    srv: ServerProcess, ca_file: str, clients: list[RawClient], users: Iterator[str]
) -> None:
    alice = login(srv, ca_file, clients, next(users))
    bob = login(srv, ca_file, clients, next(users))
    alice.enable(resume=False)
    alice.auto_ack = False
    bob.send(message(alice.full, "m1"))
    bob.send(message(alice.full, "m2"))
    bob.sync()
    assert bodies([alice.next(), alice.next()]) == ["m1", "m2"]
    alice.send(f"<a xmlns='{SM}' h='{alice.received - 1}'/>")  # m1 handled, m2 not
    alice.send(message(bob.full, "bye"))
    alice.send("</stream:stream>")
    # §4: the server's last word is an <a/> with what it handled (the message).
    final = alice.c.next()
    assert final.tag == f"{{{SM}}}a" and final.get("h") == "1"
    assert alice.c.wait_closed()
    back = login(srv, ca_file, clients, alice.name, "back", available=False)
    back.send("<presence/>")
    assert bodies(back.sync()) == ["m2"]


CARBONS = "urn:xmpp:carbons:2"
MAM = "urn:xmpp:mam:2"


def enable_carbons(client: Client) -> None:
    client.send(f"<iq type='set' id='cc'><enable xmlns='{CARBONS}'/></iq>")
    assert client.sync()[-1].get("type") == "result"


def close_unacknowledged(client: Client) -> None:
    """End the stream politely without a final <a/> (as slixmpp does): what the server sent
    since the last acknowledgement counts as never received (§4)."""
    client.send("</stream:stream>")
    assert client.c.wait_closed()


def test_unacked_bare_jid_message_goes_offline_once_with_a_delay(
    srv: ServerProcess, ca_file: str, clients: list[RawClient], users: Iterator[str]
) -> None:
    """§4: a message to the bare JID that the account's only session never acknowledged is
    stored offline, stamped (XEP-0203) with the time it was first sent, and delivered once."""
    alice = login(srv, ca_file, clients, next(users))
    bob = login(srv, ca_file, clients, next(users))
    alice.enable(resume=False)
    alice.auto_ack = False
    before = time.time()
    bob.send(message(alice.bare, "to the bare JID"))
    bob.sync()
    assert bodies([alice.next()]) == ["to the bare JID"]
    close_unacknowledged(alice)
    back = login(srv, ca_file, clients, alice.name, "back", available=False)
    back.send("<presence/>")
    got = [el for el in back.sync() if el.tag == f"{{{CLIENT}}}message"]
    assert bodies(got) == ["to the bare JID"]
    delay = got[0].find(f"{{{DELAY}}}delay")
    assert delay is not None and delay.get("from") == "localhost"
    stamp = time.mktime(time.strptime(delay.get("stamp"), "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert int(before) - 1 <= stamp <= time.time()
    again = login(srv, ca_file, clients, alice.name, "again", available=False)
    again.send("<presence/>")
    assert bodies(again.sync()) == []


def test_unacked_message_copied_by_carbons_is_not_stored_again(
    srv: ServerProcess, ca_file: str, clients: list[RawClient], users: Iterator[str]
) -> None:
    """§4 warns of duplicates: a message the account's other carbons-enabled resources have
    already received a copy of (XEP-0280 §4) is neither stored offline for them nor sent
    to them again when the addressed session ends without acknowledging it."""
    name = next(users)
    bob = login(srv, ca_file, clients, next(users))
    first = login(srv, ca_file, clients, name, "first")
    second = login(srv, ca_file, clients, name, "second", available=False)  # bound, no presence
    available = login(srv, ca_file, clients, name, "available")
    for client in (first, second, available):
        enable_carbons(client)
    first.enable(resume=False)
    first.auto_ack = False
    bob.send(message(first.full, "to first"))
    bob.sync()
    assert bodies([first.next()]) == ["to first"]
    for other in (second, available):
        copies = [el for el in other.sync() if el.find(f"{{{CARBONS}}}received") is not None]
        assert len(copies) == 1  # the carbon copy
    close_unacknowledged(first)
    assert bodies(available.sync()) == []
    second.send("<presence/>")  # its initial presence: offline messages would come now
    assert bodies(second.sync()) == []


def test_unacked_carbons_and_archive_results_are_never_rerouted(
    srv: ServerProcess, ca_file: str, clients: list[RawClient], users: Iterator[str]
) -> None:
    """Carbon copies (XEP-0280), archive query results (XEP-0313) and private messages from
    a room occupant (XEP-0045 §7.5) a session never acknowledged were for that session
    only: they go neither to another resource nor to offline storage."""
    name = next(users)
    bob = login(srv, ca_file, clients, next(users))
    first = login(srv, ca_file, clients, name, "first")
    other = login(srv, ca_file, clients, name, "other")
    enable_carbons(first)
    bob.send(message(first.bare, "archived"))
    bob.sync()
    assert bodies(first.sync()) == ["archived"]
    room = f"sm-{name}@conference.localhost"
    first.send(
        f"<presence to='{room}/first'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
    )
    first.send(  # an instant room (XEP-0045 §10.1.2)
        f"<iq type='set' id='instant' to='{room}'><query xmlns='http://jabber.org/protocol/muc#owner'>"
        "<x xmlns='jabber:x:data' type='submit'/></query></iq>"
    )
    first.sync()  # configured (unlocked) before bob enters: a locked room refuses him
    bob.send(f"<presence to='{room}/bob'><x xmlns='http://jabber.org/protocol/muc'/></presence>")
    bob.sync()
    first.sync()
    first.enable(resume=False)
    first.auto_ack = False
    # a private message in a room the other resource is not in
    bob.send(message(f"{room}/first", "private"))
    bob.sync()
    assert bodies([first.next()]) == ["private"]
    # a carbon copy of a message to the other resource
    bob.send(message(other.full, "for other"))
    bob.sync()
    copy = first.next()
    assert copy.find(f"{{{CARBONS}}}received") is not None
    # and the archive's results
    first.send(f"<iq type='set' id='mam'><query xmlns='{MAM}' queryid='q'/></iq>")
    results = []
    while True:
        el = first.next()
        if el.get("id") == "mam":
            break
        results.append(el)
    assert results and all(el.find(f"{{{MAM}}}result") is not None for el in results)
    assert bodies(other.sync()) == ["archived", "for other"]
    close_unacknowledged(first)
    assert [el for el in other.sync() if el.tag == f"{{{CLIENT}}}message"] == []
    other.c.close()
    back = login(srv, ca_file, clients, name, "back", available=False)
    back.send("<presence/>")
    assert [el for el in back.sync() if el.tag == f"{{{CLIENT}}}message"] == []


def test_unacked_beyond_the_offline_quota_bounce(
    make_server: Any, ca_file: str, clients: list[RawClient]
) -> None:
    srv: ServerProcess = make_server("[offline]\nmax_messages = 2\n")
    srv.adduser("alice@localhost")
    srv.adduser("bob@localhost")
    srv.start()
    alice = login(srv, ca_file, clients, "alice")
    bob = login(srv, ca_file, clients, "bob")
    alice.enable(resume=False)
    alice.auto_ack = False
    for body in ("q1", "q2", "q3"):
        bob.send(message(alice.full, body))
    bob.sync()
    assert bodies([alice.next(), alice.next(), alice.next()]) == ["q1", "q2", "q3"]
    alice.c.close()  # none acknowledged: two fit the quota, the third comes back
    seen = bob.sync()
    bounced = [el for el in seen if el.get("type") == "error"]
    assert [el.get("id") for el in bounced] == ["q3"]
    assert stanza_error(bounced[0]) == "service-unavailable"
    back = login(srv, ca_file, clients, "alice", "back", available=False)
    back.send("<presence/>")
    assert bodies(back.sync()) == ["q1", "q2"]


def test_unacked_limit(
    srv: ServerProcess, ca_file: str, clients: list[RawClient], users: Iterator[str]
) -> None:
    alice = login(srv, ca_file, clients, next(users))
    bob = login(srv, ca_file, clients, next(users))
    alice.enable()
    alice.auto_ack = False  # never acknowledges: max_unacked_stanzas = 40 here
    for i in range(60):
        bob.send(message(alice.full, f"n{i}"))
    bob.sync()
    assert alice.c.stream_error() == "policy-violation"
    assert alice.c.wait_closed()
    assert_still_serving(srv, ca_file, next(users))


def test_quiet_output_asks_for_an_ack_so_an_expired_session_repeats_nothing(
    make_server: Any, ca_file: str, clients: list[RawClient]
) -> None:
    """Fewer messages than `ack_request_every`, then quiet: the server asks (<r/>) once
    `ack_request_after` has passed, as most clients acknowledge only when asked; what the
    client acknowledged then is not stored offline again when its session expires."""
    srv: ServerProcess = make_server(
        "[stream_management]\nresume_timeout = 0.5\nack_request_after = 0.3\n"
    )
    add_accounts(srv, ["alice", "bob"])
    srv.start()
    alice = login(srv, ca_file, clients, "alice")
    bob = login(srv, ca_file, clients, "bob")
    alice.enable()
    alice.auto_ack = False
    bob.send(message(alice.full, "q1") + message(alice.full, "q2"))
    assert bodies([alice.next(), alice.next()]) == ["q1", "q2"]
    request = alice.c.next(timeout=5)  # none would come before a fifth stanza without it
    assert request.tag == f"{{{SM}}}r"
    alice.send(f"<a xmlns='{SM}' h='{alice.received}'/>")
    # Asked once per quiet spell: nothing more without new messages.
    with pytest.raises(TimeoutError):
        alice.c.next(timeout=1)
    alice.c.abort()  # the connection dies; the session waits, then expires
    time.sleep(1.0)
    back = login(srv, ca_file, clients, "alice", "back", available=False)
    back.send("<presence/>")
    assert bodies(back.sync()) == []  # acknowledged: not stored offline a second time


def test_a_client_that_acknowledges_on_its_own_is_not_asked(
    make_server: Any, ca_file: str, clients: list[RawClient]
) -> None:
    srv: ServerProcess = make_server("[stream_management]\nack_request_after = 0.3\n")
    add_accounts(srv, ["alice", "bob"])
    srv.start()
    alice = login(srv, ca_file, clients, "alice")
    bob = login(srv, ca_file, clients, "bob")
    alice.enable()
    bob.send(message(alice.full, "q1"))
    assert bodies([alice.next()]) == ["q1"]
    alice.send(f"<a xmlns='{SM}' h='{alice.received}'/>")  # unasked (§4 allows it)
    with pytest.raises(TimeoutError):
        alice.c.next(timeout=1)


# --- with their own servers ---------------------------------------------------------------


def test_dead_connection_found_by_ping_is_resumable(
    make_server: Any, ca_file: str, clients: list[RawClient]
) -> None:
    srv: ServerProcess = make_server("[ping]\nidle_interval = 1\ntimeout = 1\n")
    srv.adduser("alice@localhost")
    srv.start()
    alice = login(srv, ca_file, clients, "alice")
    alice.enable()
    alice.sync()
    # Silent: the server's ping goes unanswered, the connection is closed ...
    assert alice.c.stream_error() == "connection-timeout"
    # ... but the session waits to be resumed.
    new, answer = resume(srv, ca_file, clients, alice, alice.received + 1)
    assert answer.tag == f"{{{SM}}}resumed", etree.tostring(answer)
    assert new.sync() == []


def test_connections_per_ip_follow_the_connection(
    make_server: Any, ca_file: str, clients: list[RawClient]
) -> None:
    """Connections that authenticated and resumed (or were detached, or replaced with
    conflict) leave nothing counted against the address's unauthenticated connections."""
    srv: ServerProcess = make_server("[limits]\nmax_unauthenticated_per_ip = 2\n")
    srv.adduser("alice@localhost")
    srv.start()
    alice = login(srv, ca_file, clients, "alice")
    alice.enable()
    for _ in range(3):
        alice.c.abort()  # detached: its connection no longer counts
        time.sleep(0.2)
        new, answer = resume(srv, ca_file, clients, alice, alice.received)
        assert answer.tag == f"{{{SM}}}resumed"
        alice.c = new.c
    # The old connection gets conflict: one connection for the address afterwards.
    new, answer = resume(srv, ca_file, clients, alice, alice.received)
    assert answer.tag == f"{{{SM}}}resumed"
    assert alice.c.stream_error() == "conflict"
    assert alice.c.wait_closed()
    time.sleep(0.2)
    first, second, third = srv.client(), srv.client(), srv.client()
    clients += [first, second, third]
    assert first.open_stream() is not None and second.open_stream() is not None  # two allowed
    assert third.stream_error() == "policy-violation"


def test_slow_reader_keeps_its_session(
    make_server: Any, ca_file: str, clients: list[RawClient]
) -> None:
    """A resumable session whose client stops reading loses its connection (outbound
    limit), not its session: on resumption every message arrives, once, in order."""
    srv: ServerProcess = make_server(
        "[limits]\nmax_outbound_buffer = 65536\nmax_bytes_per_second = 0\n"
        "[stream_management]\nmax_unacked_stanzas = 1000000\nmax_unacked_bytes = 100000000\n"
    )
    srv.adduser("alice@localhost")
    srv.adduser("bob@localhost")
    srv.start()
    alice = login(srv, ca_file, clients, "alice")
    c = srv.client()
    clients.append(c)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    c.login(ca_file, "bob", PASSWORD, "asleep")
    bob = Client(c, "bob", "bob@localhost/asleep")
    bob.enable()
    sent = 0
    deadline = time.monotonic() + 60
    while "output not read" not in srv.log_text():
        assert time.monotonic() < deadline, "the slow reader was never noticed"
        alice.send(
            "".join(
                f"<message to='{bob.full}' id='f{sent + i}'><body>{'y' * 1000}</body></message>"
                for i in range(100)
            )
        )
        sent += 100
    alice.sync()  # all of them handled by the server
    bob.c.abort()  # its connection was given the stream error and then cut
    new, answer = resume(srv, ca_file, clients, bob, 0)
    assert answer.tag == f"{{{SM}}}resumed", etree.tostring(answer)
    ids = []
    while len(ids) < sent:
        el = new.next(timeout=30)
        if el.tag == f"{{{CLIENT}}}message":
            ids.append(el.get("id"))
    assert ids == [f"f{i}" for i in range(sent)]
    assert new.sync() == []


def test_waiting_session_gives_way_at_the_resource_limit(
    make_server: Any, ca_file: str, clients: list[RawClient]
) -> None:
    srv: ServerProcess = make_server("[limits]\nmax_resources_per_account = 2\n")
    srv.adduser("alice@localhost")
    srv.start()
    lost = login(srv, ca_file, clients, "alice", "one")
    lost.enable()
    lost.c.abort()
    time.sleep(0.2)
    login(srv, ca_file, clients, "alice", "two")
    # A third resource: the session waiting to be resumed ends instead of a refusal.
    third = login(srv, ca_file, clients, "alice", "three")
    assert third.full == "alice@localhost/three"
    _c, answer = resume(srv, ca_file, clients, lost, 0)
    assert failed_condition(answer) == "item-not-found"


def test_resume_on_a_compressed_stream(
    make_server: Any, ca_file: str, clients: list[RawClient]
) -> None:
    """XEP-0138 state goes with the connection: the resuming stream's inflater and
    compressor serve the resumed session, also for input in the same read as <resume/>."""
    srv: ServerProcess = make_server("[legacy]\ncompression = true\n")
    srv.adduser("alice@localhost")
    srv.adduser("bob@localhost")
    srv.start()
    bob = login(srv, ca_file, clients, "bob")
    c, _features = authenticated(srv, ca_file, clients, "alice")
    c.compress()
    alice = Client(c, "alice", c.bind("r"))
    alice.enable()
    alice.sync()
    alice.c.abort()
    time.sleep(0.2)
    c2, _features = authenticated(srv, ca_file, clients, "alice")
    assert c2.compress().tag == "{http://etherx.jabber.org/streams}features"
    new = Client(c2, "alice", alice.full)
    new.counting = True
    new.received = alice.received
    c2.send(
        f"<resume xmlns='{SM}' previd='{alice.sm_id}' h='{alice.received}'/>"
        + message(bob.full, "compressed")
    )
    assert new.next().tag == f"{{{SM}}}resumed"
    assert bodies(bob.sync()) == ["compressed"]
    bob.send(message(alice.full, "back"))
    bob.sync()
    assert bodies(new.sync()) == ["back"]


def test_resume_with_input_held_by_pacing(
    make_server: Any, ca_file: str, clients: list[RawClient]
) -> None:
    """Input that pacing holds back (limits.max_bytes_per_second) belongs to the connection:
    <resume/> and what follows it, held and released later, reach the resumed session."""
    srv: ServerProcess = make_server(
        "[limits]\nmax_bytes_per_second = 20000\nburst_bytes = 10000\n"
    )
    srv.adduser("alice@localhost")
    srv.adduser("bob@localhost")
    srv.start()
    bob = login(srv, ca_file, clients, "bob")
    alice = login(srv, ca_file, clients, "alice")
    alice.enable()
    alice.sync()
    alice.c.abort()
    time.sleep(0.2)
    c, _features = authenticated(srv, ca_file, clients, "alice")
    new = Client(c, "alice", alice.full)
    new.counting = True
    new.received = alice.received
    # About 20 KB at once: beyond what is left of the burst, so the server holds it.
    messages = [message(bob.full, f"held{i:02d}" + "x" * 900) for i in range(20)]
    c.send(
        f"<resume xmlns='{SM}' previd='{alice.sm_id}' h='{alice.received}'/>" + "".join(messages)
    )
    assert new.next(timeout=20).tag == f"{{{SM}}}resumed"
    got: list[str] = []
    while len(got) < len(messages):
        got += [body[:6] for body in bodies([bob.next(timeout=20)])]
    assert got == [f"held{i:02d}" for i in range(20)]


@pytest.mark.parametrize(
    ("setting", "offered", "enable_answer"),
    [("enabled = false", False, "failed"), ("resume_timeout = 0", True, "enabled")],
)
def test_configuration_switches(
    make_server: Any,
    ca_file: str,
    clients: list[RawClient],
    setting: str,
    offered: bool,
    enable_answer: str,
) -> None:
    srv: ServerProcess = make_server(f"[stream_management]\n{setting}\n")
    srv.adduser("alice@localhost")
    srv.start()
    c, features = authenticated(srv, ca_file, clients, "alice")
    assert (features.find(f"{{{SM}}}sm") is not None) is offered
    # Resumption is not supported in either case (§5: feature-not-implemented).
    c.send(f"<resume xmlns='{SM}' previd='x' h='0'/>")
    assert failed_condition(c.next()) == "feature-not-implemented"
    client = Client(c, "alice", c.bind("r"))
    answer = client.enable()
    assert answer.tag == f"{{{SM}}}{enable_answer}"
    if enable_answer == "failed":
        assert failed_condition(answer) == "feature-not-implemented"
    else:
        assert answer.get("resume") is None  # acknowledgements only
        assert client.request_ack() == 0


def test_shutdown_ends_detached_sessions(
    make_server: Any, ca_file: str, clients: list[RawClient]
) -> None:
    srv: ServerProcess = make_server()
    srv.adduser("alice@localhost")
    srv.adduser("bob@localhost")
    srv.start()
    alice = login(srv, ca_file, clients, "alice")
    bob = login(srv, ca_file, clients, "bob")
    alice.enable()
    alice.auto_ack = False
    bob.send(message(alice.full, "keep me"))
    bob.sync()
    assert bodies([alice.next()]) == ["keep me"]
    alice.c.abort()
    time.sleep(0.3)
    assert srv.stop() == 0
    assert "was not resumed" not in srv.log_text()
    srv.wait_for_log("1 stored offline")
    srv.start()
    back = login(srv, ca_file, clients, "alice", "back", available=False)
    back.send("<presence/>")
    assert bodies(back.sync()) == ["keep me"]


# --- a real client ------------------------------------------------------------------------


async def test_slixmpp_acks(srv: ServerProcess, ca_file: str, users: Iterator[str]) -> None:
    name, peer_name = next(users), next(users)
    peer_client = RawClient(srv.port)
    peer = Client(peer_client, peer_name, "")
    try:
        await asyncio.to_thread(_raw_login, peer, srv, ca_file)
        xmpp = ClientXMPP(f"{name}@localhost/sli", PASSWORD)
        xmpp.register_plugin("xep_0198")
        xmpp.ca_certs = ca_file
        enabled = asyncio.Event()
        got = asyncio.Event()
        xmpp.add_event_handler("sm_enabled", lambda _e: enabled.set())
        xmpp.add_event_handler("session_start", lambda _e: xmpp.send_presence())
        xmpp.add_event_handler(
            "message", lambda msg: got.set() if msg["body"] == "ping 9" else None
        )
        xmpp.connect("127.0.0.1", srv.port)
        await asyncio.wait_for(enabled.wait(), 20)
        for i in range(10):
            peer.send(message(f"{name}@localhost/sli", f"ping {i}"))
        await asyncio.wait_for(got.wait(), 20)
        plugin = xmpp.plugin["xep_0198"]
        # slixmpp answered the server's <r/>: everything it got was acknowledged.
        deadline = time.monotonic() + 10
        while plugin.handled < 10:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        for i in range(3):
            xmpp.send_message(mto=f"{peer_name}@localhost", mbody=f"back {i}")
        await asyncio.sleep(0.5)
        plugin.request_ack()
        deadline = time.monotonic() + 10
        while plugin.unacked_queue:
            assert time.monotonic() < deadline, "the server did not acknowledge"
            await asyncio.sleep(0.1)
        xmpp.disconnect()
    finally:
        peer_client.close()


def _raw_login(peer: Client, srv: ServerProcess, ca_file: str) -> None:
    peer.full = peer.c.login(ca_file, peer.name, PASSWORD, "raw")


async def test_slixmpp_resumes(srv: ServerProcess, ca_file: str, users: Iterator[str]) -> None:
    """slixmpp loses its connection, connects again and resumes: what was sent to it in
    between arrives, and its session (full JID) is the same."""
    name, peer_name = next(users), next(users)
    peer = Client(RawClient(srv.port), peer_name, "")
    try:
        await asyncio.to_thread(_raw_login, peer, srv, ca_file)
        xmpp = ClientXMPP(f"{name}@localhost/sli", PASSWORD)
        xmpp.register_plugin("xep_0198")
        xmpp.ca_certs = ca_file
        enabled, lost, resumed = asyncio.Event(), asyncio.Event(), asyncio.Event()
        bodies_seen: list[str] = []
        xmpp.add_event_handler("sm_enabled", lambda _e: enabled.set())
        xmpp.add_event_handler("session_resumed", lambda _e: resumed.set())
        xmpp.add_event_handler("disconnected", lambda _e: lost.set())
        xmpp.add_event_handler("session_start", lambda _e: xmpp.send_presence())
        xmpp.add_event_handler("message", lambda msg: bodies_seen.append(msg["body"]))
        xmpp.connect("127.0.0.1", srv.port)
        await asyncio.wait_for(enabled.wait(), 20)
        peer.send(message(f"{name}@localhost/sli", "first"))
        deadline = time.monotonic() + 10
        while bodies_seen != ["first"]:
            assert time.monotonic() < deadline, bodies_seen
            await asyncio.sleep(0.05)
        xmpp.transport.abort()  # the network goes away
        await asyncio.wait_for(lost.wait(), 10)
        await asyncio.sleep(0.3)
        peer.send(message(f"{name}@localhost/sli", "while away"))
        await asyncio.to_thread(peer.sync)
        xmpp.connect("127.0.0.1", srv.port)
        await asyncio.wait_for(resumed.wait(), 20)
        deadline = time.monotonic() + 10
        while bodies_seen != ["first", "while away"]:
            assert time.monotonic() < deadline, bodies_seen
            await asyncio.sleep(0.05)
        assert str(xmpp.boundjid) == f"{name}@localhost/sli"
        xmpp.disconnect()
    finally:
        peer.c.close()
