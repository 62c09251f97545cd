"""The small server features: XEP-0199 ping (both ways), XEP-0092 version, XEP-0202 time,
XEP-0012 last activity, XEP-0049 private storage; raw streams for errors, slixmpp for what a
real client does."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PASSWORD, ServerProcess
from lxml import etree
from slixmpp import JID, ClientXMPP
from xmpp_raw import CLIENT, RawClient, StreamClosed, stanza_error

logging.getLogger("slixmpp").setLevel(logging.WARNING)

PING = "urn:xmpp:ping"
VERSION = "jabber:iq:version"
TIME = "urn:xmpp:time"
LAST = "jabber:iq:last"
PRIVATE = "jabber:iq:private"


@pytest.fixture
def clients() -> Iterator[list[RawClient]]:
    opened: list[RawClient] = []
    yield opened
    for c in opened:
        c.close()


def login(
    srv: ServerProcess, ca_file: str, opened: list[RawClient], user: str, resource: str
) -> RawClient:
    c = srv.client()
    opened.append(c)
    c.login(ca_file, user, PASSWORD, resource)
    return c


def ask(c: RawClient, payload: str, to: str | None = None, itype: str = "get") -> Any:
    """Send an iq and return its answer (skipping anything else that arrives first)."""
    iq_id = f"q{time.monotonic_ns()}"
    to_attr = f" to='{to}'" if to else ""
    c.send(f"<iq type='{itype}' id='{iq_id}'{to_attr}>{payload}</iq>")
    while True:
        el = c.next()
        if el.tag == f"{{{CLIENT}}}iq" and el.get("id") == iq_id:
            return el


def result_of(reply: Any) -> Any:
    assert reply.get("type") == "result", etree.tostring(reply)
    return reply


# --- RFC 6120 §10.3.3: an iq without 'to' is for the sending account ---------------------

DISCO_INFO = "http://jabber.org/protocol/disco#info"
DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
VCARD = "vcard-temp"


def comparable(reply: Any) -> tuple[str | None, bytes]:
    """An answer as the account's bare JID gives it: type and payload, addresses aside."""
    return reply.get("type"), b"".join(etree.tostring(child) for child in reply)


@pytest.mark.parametrize(
    "payload",
    [
        f"<query xmlns='{DISCO_INFO}'/>",
        f"<query xmlns='{DISCO_ITEMS}'/>",
        f"<query xmlns='{LAST}'/>",
        f"<query xmlns='{VERSION}'/>",
        f"<time xmlns='{TIME}'/>",
        f"<ping xmlns='{PING}'/>",
        "<query xmlns='jabber:iq:roster'/>",
        f"<vCard xmlns='{VCARD}'/>",
        f"<query xmlns='{PRIVATE}'><x xmlns='x:y'/></query>",
        "<blocklist xmlns='urn:xmpp:blocking'/>",
        "<query xmlns='jabber:iq:privacy'/>",
        "<query xmlns='jabber:iq:register'/>",
    ],
    ids=lambda payload: payload.split("'")[1],
)
def test_iq_without_to_is_answered_for_the_account(
    server: ServerProcess, ca_file: str, clients: list[RawClient], payload: str
) -> None:
    """Every namespace answers an iq without 'to' as the sender's bare JID does, not as the
    server does (disco#info: the account's identities and features, not the server's)."""
    c = login(server, ca_file, clients, "alice", "noto")
    c.send("<presence/>")
    if LAST in payload:
        # The server's uptime must differ from an online account's 0 seconds.
        while last_seconds(ask(c, payload, "localhost")) < 1:
            time.sleep(0.2)
    without_to = ask(c, payload)
    assert without_to.get("from") is None
    assert comparable(without_to) == comparable(ask(c, payload, "alice@localhost"))
    if payload.startswith(f"<query xmlns='{DISCO_INFO}'"):
        identity = without_to.find(f".//{{{DISCO_INFO}}}identity")
        assert (identity.get("category"), identity.get("type")) == ("account", "registered")
    if payload.startswith(f"<query xmlns='{LAST}'"):
        assert without_to.find(f"{{{LAST}}}query").get("seconds") == "0"  # online


# --- XEP-0199 ping ------------------------------------------------------------------------


@pytest.mark.parametrize("to", [None, "localhost", "alice@localhost"])
def test_ping_to_server_and_own_account(
    server: ServerProcess, ca_file: str, clients: list[RawClient], to: str | None
) -> None:
    c = login(server, ca_file, clients, "alice", "ping")
    reply = result_of(ask(c, f"<ping xmlns='{PING}'/>", to))
    assert len(reply) == 0
    assert reply.get("to") == "alice@localhost/ping"
    if to:
        assert reply.get("from") == to


def test_ping_errors(server: ServerProcess, ca_file: str, clients: list[RawClient]) -> None:
    c = login(server, ca_file, clients, "alice", "ping-err")
    # Another account's bare JID: answered like a non-existent account (no harvesting).
    assert stanza_error(ask(c, f"<ping xmlns='{PING}'/>", "bob@localhost")) == "service-unavailable"
    assert stanza_error(ask(c, f"<ping xmlns='{PING}'/>", "nobody@localhost")) == (
        "service-unavailable"
    )
    assert stanza_error(ask(c, f"<ping xmlns='{PING}'/>", itype="set")) == "bad-request"


def test_idle_client_is_pinged_and_closed(make_server: Any, ca_file: str) -> None:
    srv = make_server(extra_toml="[ping]\nidle_interval = 0.5\ntimeout = 0.5\n")
    srv.adduser("alice@localhost")
    srv.start()
    c = srv.client()
    try:
        c.login(ca_file, "alice", PASSWORD, "idle")
        ping = c.next(timeout=5)
        assert ping.tag == f"{{{CLIENT}}}iq" and ping.get("type") == "get"
        assert ping.find(f"{{{PING}}}ping") is not None
        assert ping.get("from") == "localhost" and ping.get("to") == "alice@localhost/idle"
        # Say nothing: the stream ends with connection-timeout.
        assert c.stream_error() == "connection-timeout"
        assert c.wait_closed(timeout=5)
    finally:
        c.close()


def test_client_that_answers_stays_connected(make_server: Any, ca_file: str) -> None:
    srv = make_server(extra_toml="[ping]\nidle_interval = 0.5\ntimeout = 0.5\n")
    srv.adduser("alice@localhost")
    srv.start()
    c = srv.client()
    try:
        c.login(ca_file, "alice", PASSWORD, "awake")
        answered = 0
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            try:
                el = c.next(timeout=max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                break
            assert el.tag == f"{{{CLIENT}}}iq" and el.find(f"{{{PING}}}ping") is not None
            c.send(f"<iq type='result' id='{el.get('id')}' to='localhost'/>")
            answered += 1
        assert answered >= 2  # pinged again after each idle period, never closed
        result_of(ask(c, f"<ping xmlns='{PING}'/>"))
    finally:
        c.close()


def test_client_that_talks_is_not_pinged(make_server: Any, ca_file: str) -> None:
    srv = make_server(extra_toml="[ping]\nidle_interval = 1.0\ntimeout = 0.5\n")
    srv.adduser("alice@localhost")
    srv.start()
    c = srv.client()
    try:
        c.login(ca_file, "alice", PASSWORD, "chatty")
        for _ in range(8):
            time.sleep(0.25)
            c.send(" ")  # whitespace keepalive: any bytes count
        c.send("<iq type='get' id='last'><ping xmlns='urn:xmpp:ping'/></iq>")
        el = c.next()
        assert el.get("id") == "last"  # no server ping came before it
    finally:
        c.close()


# --- slixmpp: a real client's ping, version, time --------------------------------------------


class Client(ClientXMPP):
    def __init__(self, jid: str, ca_file: str) -> None:
        super().__init__(jid, PASSWORD)
        self.ca_certs = Path(ca_file)
        self.enable_direct_tls = False
        self.enable_plaintext = False
        self.ready = asyncio.get_running_loop().create_future()
        self.add_event_handler("session_start", self._started)
        for plugin in ("xep_0030", "xep_0092", "xep_0199", "xep_0202", "xep_0012"):
            self.register_plugin(plugin)

    async def _started(self, _event: Any) -> None:
        if not self.ready.done():
            self.ready.set_result(True)


async def test_slixmpp_ping_version_time_last(server: ServerProcess, ca_file: str) -> None:
    client = Client("alice@localhost/slix", ca_file)
    client.connect("127.0.0.1", server.port)
    try:
        await asyncio.wait_for(client.ready, 20)
        rtt = await client.plugin["xep_0199"].ping(JID("localhost"), timeout=10)
        assert rtt >= 0
        version = await client.plugin["xep_0092"].get_version(JID("localhost"), timeout=10)
        assert version["software_version"]["name"] == "fastxmpp"
        assert version["software_version"]["version"]
        assert not version["software_version"]["os"]  # off by default
        entity_time = await client.plugin["xep_0202"].get_entity_time(JID("localhost"), timeout=10)
        # The raw text: slixmpp's get_utc appends a second 'Z' to the spec's format and its
        # get_tzo cannot parse "+00:00".
        utc = entity_time["entity_time"].xml.findtext(f"{{{TIME}}}utc")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", utc)
        tzo = entity_time["entity_time"].xml.findtext(f"{{{TIME}}}tzo")
        assert re.fullmatch(r"[+-]\d\d:\d\d", tzo)
        last = await client.plugin["xep_0012"].get_last_activity(JID("localhost"), timeout=10)
        assert int(last["last_activity"]["seconds"]) >= 0
    finally:
        client.disconnect()
        await asyncio.sleep(0.1)


# --- XEP-0092 version, XEP-0202 time (raw) -----------------------------------------------


def test_version_without_os(server: ServerProcess, ca_file: str, clients: list[RawClient]) -> None:
    import fastxmpp

    c = login(server, ca_file, clients, "alice", "ver")
    query = result_of(ask(c, f"<query xmlns='{VERSION}'/>", "localhost"))[0]
    assert query.findtext(f"{{{VERSION}}}name") == "fastxmpp"
    assert query.findtext(f"{{{VERSION}}}version") == fastxmpp.__version__
    assert query.find(f"{{{VERSION}}}os") is None
    # Not answered for an account, nor as a set.
    assert stanza_error(ask(c, f"<query xmlns='{VERSION}'/>", "bob@localhost")) == (
        "service-unavailable"
    )
    assert stanza_error(ask(c, f"<query xmlns='{VERSION}'/>", "localhost", "set")) == (
        "bad-request"
    )


def test_version_with_os(make_server: Any, ca_file: str, clients: list[RawClient]) -> None:
    srv = make_server(extra_toml="[version]\nshow_os = true\n")
    srv.adduser("alice@localhost")
    srv.start()
    c = login(srv, ca_file, clients, "alice", "ver")
    query = result_of(ask(c, f"<query xmlns='{VERSION}'/>", "localhost"))[0]
    assert query.findtext(f"{{{VERSION}}}os")


def test_entity_time(server: ServerProcess, ca_file: str, clients: list[RawClient]) -> None:
    c = login(server, ca_file, clients, "alice", "time")
    el = result_of(ask(c, f"<time xmlns='{TIME}'/>", "localhost"))[0]
    assert re.fullmatch(r"[+-]\d\d:\d\d", el.findtext(f"{{{TIME}}}tzo"))
    utc = el.findtext(f"{{{TIME}}}utc")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", utc)
    stamp = time.mktime(time.strptime(utc[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert abs(stamp - time.time()) < 60


# --- XEP-0012 last activity ---------------------------------------------------------------


def last_seconds(reply: Any) -> int:
    return int(result_of(reply)[0].get("seconds"))


def test_server_uptime(server: ServerProcess, ca_file: str, clients: list[RawClient]) -> None:
    c = login(server, ca_file, clients, "alice", "up")
    query = result_of(ask(c, f"<query xmlns='{LAST}'/>", "localhost"))[0]
    assert int(query.get("seconds")) >= 0
    assert not (query.text or "").strip()


def test_last_activity_of_own_account(make_server: Any, ca_file: str) -> None:
    srv = make_server()
    srv.adduser("alice@localhost")
    srv.start()
    opened: list[RawClient] = []
    try:
        first = login(srv, ca_file, opened, "alice", "one")
        second = login(srv, ca_file, opened, "alice", "two")
        # Connected: seconds 0 (§4).
        assert last_seconds(ask(first, f"<query xmlns='{LAST}'/>", "alice@localhost")) == 0
        first.close()
        time.sleep(1.1)
        second.close()  # the last resource: the logout is recorded now
        time.sleep(1.1)
        third = login(srv, ca_file, opened, "alice", "three")
        # Online again: 0; the recorded logout shows only while offline. Ask as bob would
        # need a subscription: see test_last_activity_needs_subscription.
        assert last_seconds(ask(third, f"<query xmlns='{LAST}'/>", "alice@localhost")) == 0
    finally:
        for c in opened:
            c.close()


def test_last_activity_needs_subscription(
    server: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    # carol has no roster entry for dave: forbidden, online or not (§7: no presence leak).
    carol = login(server, ca_file, clients, "carol", "last")
    assert stanza_error(ask(carol, f"<query xmlns='{LAST}'/>", "dave@localhost")) == "forbidden"
    dave = login(server, ca_file, clients, "dave", "last")
    dave.send("<presence/>")
    assert stanza_error(ask(carol, f"<query xmlns='{LAST}'/>", "dave@localhost")) == "forbidden"
    assert stanza_error(ask(carol, f"<query xmlns='{LAST}'/>", itype="set")) == "bad-request"
    # §4: to one of dave's resources, the server answers forbidden in its place: the query
    # never reaches dave's client (which would tell carol how long dave has been idle).
    assert (
        stanza_error(ask(carol, f"<query xmlns='{LAST}'/>", "dave@localhost/last")) == "forbidden"
    )
    carol.send(
        "<iq type='get' id='v-full' to='dave@localhost/last'>"
        "<query xmlns='jabber:iq:version'/></iq>"
    )  # another iq to that full JID still reaches it
    dave_got = []
    while not dave_got or dave_got[-1].get("id") != "v-full":
        dave_got.append(dave.next())
    assert [el.find(f"{{{LAST}}}query") for el in dave_got if el.tag == f"{{{CLIENT}}}iq"] == [None]


def subscribe(srv: ServerProcess, ca_file: str, opened: list[RawClient]) -> None:
    """bob subscribes to alice's presence and alice approves: alice's roster has bob with
    subscription 'from'."""
    alice = login(srv, ca_file, opened, "alice", "sub")
    bob = login(srv, ca_file, opened, "bob", "sub")
    alice.send("<presence/>")
    bob.send("<presence/>")
    bob.send("<presence to='alice@localhost' type='subscribe'/>")
    while True:
        el = alice.next()
        if el.tag == f"{{{CLIENT}}}presence" and el.get("type") == "subscribe":
            break
    alice.send("<presence to='bob@localhost' type='subscribed'/>")
    while True:
        el = bob.next()
        if el.tag == f"{{{CLIENT}}}presence" and el.get("type") == "subscribed":
            break


def test_last_logout_for_a_subscribed_contact(make_server: Any, ca_file: str) -> None:
    srv = make_server()
    for user in ("alice", "bob", "carol"):
        srv.adduser(f"{user}@localhost")
    srv.start()
    opened: list[RawClient] = []
    try:
        probe = login(srv, ca_file, opened, "carol", "probe")
        subscribe(srv, ca_file, opened)
        alice = opened[1]
        bob = opened[2]
        assert last_seconds(ask(bob, f"<query xmlns='{LAST}'/>", "alice@localhost")) == 0
        alice.send("<presence type='unavailable'><status>Heading Home</status></presence>")
        alice.close()
        time.sleep(1.2)
        query = result_of(ask(bob, f"<query xmlns='{LAST}'/>", "alice@localhost"))[0]
        assert int(query.get("seconds")) >= 1
        assert query.text == "Heading Home"
        # carol has no subscription.
        assert stanza_error(ask(probe, f"<query xmlns='{LAST}'/>", "alice@localhost")) == (
            "forbidden"
        )
    finally:
        for c in opened:
            c.close()


def test_last_logout_status_from_another_resource(make_server: Any, ca_file: str) -> None:
    """XEP-0012 §3: the text is the status of the last unavailable presence received from
    the user, also when that came from a resource that left before the last one, which then
    went away without a word (its connection lost, or closed without presence)."""
    srv = make_server()
    for user in ("alice", "bob"):
        srv.adduser(f"{user}@localhost")
    srv.start()
    opened: list[RawClient] = []
    try:
        subscribe(srv, ca_file, opened)
        alice, bob = opened[0], opened[1]
        phone = login(srv, ca_file, opened, "alice", "phone")
        phone.send("<presence/>")
        alice.send("<presence type='unavailable'><status>Heading Home</status></presence>")
        alice.close()
        phone.abort()
        while last_seconds(ask(bob, f"<query xmlns='{LAST}'/>", "alice@localhost")) == 0:
            time.sleep(0.1)  # until the server has noticed the lost connection
        query = result_of(ask(bob, f"<query xmlns='{LAST}'/>", "alice@localhost"))[0]
        assert query.text == "Heading Home"
        # Back, an update of availability, and gone without a word: no old status.
        again = login(srv, ca_file, opened, "alice", "again")
        again.send("<presence><status>here</status></presence>")
        again.send("<presence type='unavailable'><status>Lunch</status></presence>")
        again.send("<presence><show>away</show></presence>")  # back from lunch
        again.close()
        while last_seconds(ask(bob, f"<query xmlns='{LAST}'/>", "alice@localhost")) == 0:
            time.sleep(0.1)
        assert not result_of(ask(bob, f"<query xmlns='{LAST}'/>", "alice@localhost"))[0].text
    finally:
        for c in opened:
            c.close()


# --- XEP-0049 private XML storage ---------------------------------------------------------

EXODUS = "<exodus xmlns='exodus:prefs'><defaultnick>Hamlet</defaultnick></exodus>"


def private_get(c: RawClient, element: str, to: str | None = None) -> Any:
    return ask(c, f"<query xmlns='{PRIVATE}'>{element}</query>", to)


def private_set(c: RawClient, elements: str, to: str | None = None) -> Any:
    return ask(c, f"<query xmlns='{PRIVATE}'>{elements}</query>", to, itype="set")


def test_private_storage_round_trip(
    server: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    c = login(server, ca_file, clients, "alice", "priv")
    # Nothing stored yet: the empty element comes back.
    query = result_of(private_get(c, "<exodus xmlns='exodus:prefs'/>"))[0]
    assert query.tag == f"{{{PRIVATE}}}query"
    assert [child.tag for child in query] == ["{exodus:prefs}exodus"]
    assert len(query[0]) == 0
    result_of(private_set(c, EXODUS))
    query = result_of(private_get(c, "<exodus xmlns='exodus:prefs'/>", "alice@localhost"))[0]
    assert query[0].findtext("{exodus:prefs}defaultnick") == "Hamlet"
    # Another resource of the same account sees it; a set replaces it; other namespaces
    # are separate.
    other = login(server, ca_file, clients, "alice", "priv2")
    result_of(
        private_set(
            other,
            "<exodus xmlns='exodus:prefs'><defaultnick>Ophelia</defaultnick></exodus>"
            "<storage xmlns='storage:bookmarks'><url name='x' url='https://example.org/'/>"
            "</storage>",
        )
    )
    query = result_of(private_get(c, "<exodus xmlns='exodus:prefs'/>"))[0]
    assert query[0].findtext("{exodus:prefs}defaultnick") == "Ophelia"
    query = result_of(private_get(c, "<storage xmlns='storage:bookmarks'/>"))[0]
    assert query[0].find("{storage:bookmarks}url").get("name") == "x"
    # bob sees none of alice's data.
    bob = login(server, ca_file, clients, "bob", "priv")
    query = result_of(private_get(bob, "<exodus xmlns='exodus:prefs'/>"))[0]
    assert len(query[0]) == 0


def test_private_storage_errors(
    server: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    c = login(server, ca_file, clients, "bob", "priv-err")
    # §2.3: another user's data, or anything not sent to one's own JID.
    assert stanza_error(private_set(c, EXODUS, "alice@localhost")) == "forbidden"
    assert stanza_error(private_get(c, "<exodus xmlns='exodus:prefs'/>", "alice@localhost")) == (
        "forbidden"
    )
    assert stanza_error(private_get(c, "<exodus xmlns='exodus:prefs'/>", "localhost")) == (
        "forbidden"
    )
    # No child element.
    assert stanza_error(private_set(c, "")) == "not-acceptable"
    assert stanza_error(private_get(c, "")) == "bad-request"
    # Reserved namespaces, among them the protocol's own and jabber:client.
    for element in (
        "<foo/>",  # inherits jabber:iq:private
        "<foo xmlns='jabber:client'/>",
        "<vCard xmlns='vcard-temp'/>",
        "<x xmlns='http://jabber.org/protocol/muc'/>",
    ):
        assert stanza_error(private_set(c, element)) == "not-acceptable", element
        assert stanza_error(private_get(c, element)) == "not-acceptable", element
    # A get for two namespaces at once.
    assert stanza_error(private_get(c, "<a xmlns='urn:a'/><b xmlns='urn:b'/>")) == "bad-request"
    # At most 100 namespaces per account; a set beyond that stores nothing.
    many = "".join(f"<n xmlns='urn:n:{i}'>{i}</n>" for i in range(101))
    assert stanza_error(private_set(c, many)) == "policy-violation"
    assert result_of(private_get(c, "<n xmlns='urn:n:0'/>"))[0][0].text is None
    result_of(private_set(c, many[: many.index("<n xmlns='urn:n:100'>")]))
    assert result_of(private_get(c, "<n xmlns='urn:n:99'/>"))[0][0].text == "99"


def test_private_storage_survives_restart(make_server: Any, ca_file: str) -> None:
    srv = make_server()
    srv.adduser("alice@localhost")
    srv.start()
    opened: list[RawClient] = []
    try:
        c = login(srv, ca_file, opened, "alice", "priv")
        result_of(private_set(c, EXODUS))
        c.close()
        srv.stop()
        srv.start()
        c = login(srv, ca_file, opened, "alice", "priv")
        query = result_of(private_get(c, "<exodus xmlns='exodus:prefs'/>"))[0]
        assert query[0].findtext("{exodus:prefs}defaultnick") == "Hamlet"
    finally:
        for c in opened:
            c.close()


def test_stream_survives_closed_peer(make_server: Any, ca_file: str) -> None:
    """A ping timeout on one session leaves the others alone."""
    srv = make_server(extra_toml="[ping]\nidle_interval = 0.5\ntimeout = 0.5\n")
    srv.adduser("alice@localhost")
    srv.adduser("bob@localhost")
    srv.start()
    silent = srv.client()
    talker = srv.client()
    try:
        silent.login(ca_file, "alice", PASSWORD, "silent")
        talker.login(ca_file, "bob", PASSWORD, "talker")
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            time.sleep(0.2)
            talker.send(" ")
        with pytest.raises(StreamClosed):
            while True:
                silent.next(timeout=5)
        result_of(ask(talker, f"<ping xmlns='{PING}'/>"))
    finally:
        silent.close()
        talker.close()
