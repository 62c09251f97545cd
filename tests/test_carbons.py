"""XEP-0280 Message Carbons over real sockets: enabling and disabling, received and sent
copies (§4, §5), which messages are copied (§6), MUC private messages, privacy lists, errors,
and slixmpp's xep_0280 plugin end to end."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import PASSWORD, FreshNames, ServerProcess, module_server
from lxml import etree
from slixmpp import ClientXMPP
from xmpp_raw import CLIENT, RawClient, stanza_error

logging.getLogger("slixmpp").setLevel(logging.WARNING)

NS = "urn:xmpp:carbons:2"
FORWARD = "urn:xmpp:forward:0"
MUC = "http://jabber.org/protocol/muc"
USER = "http://jabber.org/protocol/muc#user"
SERVICE = "conference.localhost"
MESSAGE = f"{{{CLIENT}}}message"

POOL = FreshNames("cb", 60)


@pytest.fixture(scope="module")
def srv(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(ca, tmp_path_factory, POOL)


@pytest.fixture
def names() -> Iterator[str]:
    return POOL.names()


@pytest.fixture
def login(srv: ServerProcess, ca_file: str, clients: list[RawClient]) -> Any:
    def connect(name: str, resource: str, carbons: bool = False, priority: int = 0) -> Session:
        c = srv.client()
        clients.append(c)
        c.login(ca_file, name, PASSWORD, resource)
        session = Session(c, name, resource)
        if carbons:
            assert session.iq("set", f"<enable xmlns='{NS}'/>").get("type") == "result"
        c.send(f"<presence><priority>{priority}</priority></presence>")
        session.inbox()  # its own presence and whatever else arrives on login
        return session

    return connect


class Session:
    def __init__(self, c: RawClient, name: str, resource: str) -> None:
        self.c = c
        self.bare = f"{name}@localhost"
        self.full = f"{self.bare}/{resource}"
        self._ids = 0

    def send(self, data: str) -> None:
        self.c.send(data)

    def iq(self, itype: str, payload: str, to: str | None = None) -> Any:
        self._ids += 1
        iq_id = f"iq{self._ids}"
        to_attr = f" to='{to}'" if to else ""
        self.c.send(f"<iq type='{itype}' id='{iq_id}'{to_attr}>{payload}</iq>")
        while True:
            el = self.c.next()
            if el.get("id") == iq_id:
                return el

    def inbox(self) -> list[Any]:
        """Everything that arrived before the answer to a ping sent now (call it after the
        senders' own round trips: what they sent is then ahead of the answer)."""
        self._ids += 1
        marker = f"sync{self._ids}"
        self.c.send(f"<iq type='get' id='{marker}'><ping xmlns='urn:xmpp:ping'/></iq>")
        seen = []
        while True:
            el = self.c.next()
            if el.get("id") == marker:
                return seen
            seen.append(el)

    def messages(self) -> list[Any]:
        return [el for el in self.inbox() if el.tag == MESSAGE]


def chat(to: str, body: str, mtype: str = "chat", extra: str = "") -> str:
    return f"<message to='{to}' type='{mtype}' id='{body}'><body>{body}</body>{extra}</message>"


def carbon(el: Any, direction: str) -> Any:
    """The forwarded original inside a carbon copy, after checking the wrapper (§4, §5)."""
    wrapper = el.find(f"{{{NS}}}{direction}")
    assert wrapper is not None, etree.tostring(el)
    inner = wrapper.find(f"{{{FORWARD}}}forwarded/{MESSAGE}")
    assert inner is not None, etree.tostring(el)
    return inner


def body(el: Any) -> str | None:
    return el.findtext(f"{{{CLIENT}}}body")


# --- enabling and disabling (§3, §4, §9.1) --------------------------------------------------


def test_disco_feature(login: Any, names: Iterator[str]) -> None:
    a = login(next(names), "a")
    reply = a.iq("get", "<query xmlns='http://jabber.org/protocol/disco#info'/>", "localhost")
    features = {f.get("var") for f in reply.iter("{http://jabber.org/protocol/disco#info}feature")}
    assert NS in features


def test_enable_disable_and_repeats(login: Any, names: Iterator[str]) -> None:
    a = login(next(names), "a")
    for payload in ("enable", "enable", "disable", "disable", "enable"):
        reply = a.iq("set", f"<{payload} xmlns='{NS}'/>")
        assert reply.get("type") == "result", etree.tostring(reply)
        assert reply.get("to") == a.full
    own = a.iq("set", f"<disable xmlns='{NS}'/>", a.bare)
    assert own.get("type") == "result" and own.get("from") == a.bare


def test_errors(login: Any, names: Iterator[str]) -> None:
    a, other = next(names), next(names)
    x = login(a, "x")
    login(other, "y")
    assert stanza_error(x.iq("set", f"<enable xmlns='{NS}'/>", f"{other}@localhost")) == (
        "not-allowed"
    )
    assert stanza_error(x.iq("get", f"<enable xmlns='{NS}'/>")) == "bad-request"
    assert stanza_error(x.iq("set", f"<private xmlns='{NS}'/>")) == "bad-request"
    assert stanza_error(x.iq("set", f"<sent xmlns='{NS}'/>")) == "bad-request"


# --- received copies (§4) -------------------------------------------------------------------


def test_received_copy_to_other_enabled_resources_only(login: Any, names: Iterator[str]) -> None:
    name, peer = next(names), next(names)
    a = login(name, "a", carbons=True)
    b = login(name, "b", carbons=True)
    c = login(name, "c")
    bob = login(peer, "p")
    bob.send(chat(a.full, "hello"))
    bob.inbox()
    got_a = a.messages()
    assert [body(m) for m in got_a] == ["hello"] and got_a[0].find(f"{{{NS}}}received") is None
    got_b = b.messages()
    assert len(got_b) == 1
    copy = got_b[0]
    assert copy.get("from") == a.bare and copy.get("to") == b.full and copy.get("type") == "chat"
    inner = carbon(copy, "received")
    assert inner.get("from") == bob.full and inner.get("to") == a.full and body(inner) == "hello"
    assert c.messages() == []
    assert bob.messages() == []

    # Disabled again: no more copies.
    assert b.iq("set", f"<disable xmlns='{NS}'/>").get("type") == "result"
    bob.send(chat(a.full, "again"))
    bob.inbox()
    assert [body(m) for m in a.messages()] == ["again"]
    assert b.messages() == []


def test_bare_jid_delivery_makes_no_duplicates(login: Any, names: Iterator[str]) -> None:
    name, peer = next(names), next(names)
    a = login(name, "a", carbons=True)
    b = login(name, "b", carbons=True)
    low = login(name, "low", carbons=True, priority=-1)
    off = login(name, "off", priority=-1)  # neither the original nor a copy
    bob = login(peer, "p")
    bob.send(chat(a.bare, "both"))
    bob.inbox()
    for s in (a, b):
        got = s.messages()
        assert [body(m) for m in got] == ["both"], [etree.tostring(m) for m in got]
        assert got[0].find(f"{{{NS}}}received") is None
    # RFC 6121 §8.5.2.1.1 left the negative priority out: it gets the copy.
    got = low.messages()
    assert len(got) == 1 and body(carbon(got[0], "received")) == "both"
    assert carbon(got[0], "received").get("to") == a.bare
    assert off.messages() == []


# --- sent copies (§5) -----------------------------------------------------------------------


def test_sent_copies(login: Any, names: Iterator[str]) -> None:
    name, peer = next(names), next(names)
    a = login(name, "a", carbons=True)
    b = login(name, "b", carbons=True)
    c = login(name, "c")
    plain = login(name, "plain")  # sends without carbons enabled: copies go out anyway
    bob = login(peer, "p")
    a.send(chat(bob.bare, "from a"))
    a.inbox()
    assert [body(m) for m in bob.messages()] == ["from a"]
    got = b.messages()
    assert len(got) == 1 and got[0].get("from") == a.bare and got[0].get("to") == b.full
    inner = carbon(got[0], "sent")
    assert inner.get("from") == a.full and inner.get("to") == bob.bare
    assert body(inner) == "from a"
    assert a.messages() == [] and c.messages() == []

    plain.send(chat(bob.full, "from plain", mtype="normal"))
    plain.inbox()
    assert [body(m) for m in bob.messages()] == ["from plain"]
    for s in (a, b):
        got = s.messages()
        assert len(got) == 1 and got[0].get("type") == "normal"
        assert body(carbon(got[0], "sent")) == "from plain"


def test_sent_copy_of_message_to_offline_contact(login: Any, names: Iterator[str]) -> None:
    name, offline = next(names), next(names)
    a = login(name, "a")
    b = login(name, "b", carbons=True)
    a.send(chat(f"{offline}@localhost", "stored"))
    assert a.messages() == []
    got = b.messages()
    assert len(got) == 1 and body(carbon(got[0], "sent")) == "stored"


def test_message_between_own_resources_is_copied_once(login: Any, names: Iterator[str]) -> None:
    name = next(names)
    a = login(name, "a", carbons=True)
    b = login(name, "b", carbons=True)
    c = login(name, "c", carbons=True)
    a.send(chat(b.full, "self"))
    a.inbox()
    assert [body(m) for m in b.messages()] == ["self"]
    got = c.messages()
    assert len(got) == 1 and body(carbon(got[0], "received")) == "self"
    assert a.messages() == []


# --- which messages (§6) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stanza", "copied"),
    [
        (
            chat(
                "{to}", "private", extra=f"<private xmlns='{NS}'/><no-copy xmlns='urn:xmpp:hints'/>"
            ),
            False,
        ),
        (chat("{to}", "nocopy", extra="<no-copy xmlns='urn:xmpp:hints'/>"), False),
        (chat("{to}", "gc", mtype="groupchat"), False),
        (chat("{to}", "headline", mtype="headline"), False),
        ("<message to='{to}' type='normal'><subject>no body</subject></message>", False),
        ("<message to='{to}'><body>normal</body></message>", True),
        (
            "<message to='{to}'><active xmlns='http://jabber.org/protocol/chatstates'/></message>",
            True,
        ),
        (
            "<message to='{to}'><received xmlns='urn:xmpp:receipts' id='x'/></message>",
            True,
        ),
        ("<message to='{to}' type='chat'><thread>t</thread></message>", True),
    ],
)
def test_eligibility(login: Any, names: Iterator[str], stanza: str, copied: bool) -> None:
    name, peer = next(names), next(names)
    a = login(name, "a", carbons=True)
    b = login(name, "b", carbons=True)
    bob = login(peer, "p", carbons=True)
    bob2 = login(peer, "p2", carbons=True)
    # Received side: bob's message to a; sent side: bob2 sees bob's own message.
    bob.send(stanza.replace("{to}", a.full))
    assert bob.messages() == []
    assert len(a.messages()) == 1
    assert len(b.messages()) == (1 if copied else 0)
    assert len(bob2.messages()) == (1 if copied else 0)


# --- MUC (§6.1) ---------------------------------------------------------------------------------


def join(s: Session, room: str, nick: str) -> None:
    s.send(f"<presence to='{room}/{nick}'><x xmlns='{MUC}'/></presence>")
    while True:  # up to the self-presence (XEP-0045 §7.2.3, status 110)
        el = s.c.next()
        statuses = {st.get("code") for st in el.iter(f"{{{USER}}}status")}
        if el.tag == f"{{{CLIENT}}}presence" and "110" in statuses:
            return


def test_muc_private_messages(login: Any, names: Iterator[str]) -> None:
    name, peer = next(names), next(names)
    room = f"carbons{name}@{SERVICE}"
    owner = login(peer, "p")
    join(owner, room, "bo")
    owner.iq(
        "set",
        "<query xmlns='http://jabber.org/protocol/muc#owner'>"
        "<x xmlns='jabber:x:data' type='submit'/></query>",
        room,
    )
    a = login(name, "a", carbons=True)
    b = login(name, "b", carbons=True)
    elsewhere = login(name, "c", carbons=True)
    join(a, room, "al")
    join(b, room, "al")  # the same nickname: a multi-session nick
    for s in (owner, a, b, elsewhere):
        s.inbox()

    # From an occupant: the room gives both joined sessions the message itself, with <x/>;
    # no carbon copy to anyone (§6.1 last rule).
    owner.send(chat(f"{room}/al", "pm in"))
    owner.inbox()
    for s in (a, b):
        got = s.messages()
        assert [body(m) for m in got] == ["pm in"], [etree.tostring(m) for m in got]
        assert got[0].get("from") == f"{room}/bo" and got[0].find(f"{{{USER}}}x") is not None
    assert elsewhere.messages() == []

    # To an occupant: a sent copy to the session sharing the nickname, with <x/>, and none
    # to the session that is not in the room.
    a.send(chat(f"{room}/bo", "pm out"))
    a.inbox()
    assert [body(m) for m in owner.messages()] == ["pm out"]
    got = b.messages()
    assert len(got) == 1
    inner = carbon(got[0], "sent")
    assert inner.get("to") == f"{room}/bo" and body(inner) == "pm out"
    assert inner.find(f"{{{USER}}}x") is not None
    assert elsewhere.messages() == []

    # Groupchat: never copied.
    a.send(chat(room, "to all", mtype="groupchat"))
    a.inbox()
    assert [body(m) for m in b.messages()] == ["to all"]
    assert elsewhere.messages() == []


def test_message_marked_as_from_a_room_occupant(login: Any, names: Iterator[str]) -> None:
    """§6.1: what comes from a full JID with muc#user <x/> is a private message from a
    room occupant (a remote room's, over federation): no received copy; the sender's side is
    a private message to an occupant, copied."""
    name, peer = next(names), next(names)
    a = login(name, "a", carbons=True)
    b = login(name, "b", carbons=True)
    bob = login(peer, "p")
    bob2 = login(peer, "p2", carbons=True)
    bob.send(chat(a.full, "marked", extra=f"<x xmlns='{USER}'/>"))
    bob.inbox()
    assert [body(m) for m in a.messages()] == ["marked"]
    assert b.messages() == []
    got = bob2.messages()
    assert len(got) == 1 and body(carbon(got[0], "sent")) == "marked"


# --- privacy (XEP-0016) -------------------------------------------------------------------------


def test_privacy_list_of_the_copy_receiver(login: Any, names: Iterator[str]) -> None:
    name, peer = next(names), next(names)
    a = login(name, "a", carbons=True)
    b = login(name, "b", carbons=True)
    bob = login(peer, "p")
    privacy = "jabber:iq:privacy"
    deny = (
        f"<query xmlns='{privacy}'><list name='nobob'><item type='jid' value='{bob.bare}' "
        "action='deny' order='1'><message/></item></list></query>"
    )
    assert b.iq("set", deny).get("type") == "result"
    assert (
        b.iq("set", f"<query xmlns='{privacy}'><active name='nobob'/></query>").get("type")
        == "result"
    )
    b.inbox()
    bob.send(chat(a.full, "blocked for b"))
    assert bob.messages() == []
    assert [body(m) for m in a.messages()] == ["blocked for b"]
    assert b.messages() == []
    a.send(chat(bob.full, "to blocked"))
    a.inbox()
    assert b.messages() == []


# --- a real client library ----------------------------------------------------------------------


class SlixClient(ClientXMPP):
    def __init__(self, jid: str, ca_file: str) -> None:
        super().__init__(jid, PASSWORD)
        self.ca_certs = ca_file
        self.enable_direct_tls = False
        self.enable_plaintext = False
        self.register_plugin("xep_0280")
        self.received: asyncio.Queue[Any] = asyncio.Queue()
        self.sent: asyncio.Queue[Any] = asyncio.Queue()
        self.ready = asyncio.get_running_loop().create_future()
        self.add_event_handler("session_start", self._started)
        self.add_event_handler("carbon_received", self.received.put_nowait)
        self.add_event_handler("carbon_sent", self.sent.put_nowait)

    async def _started(self, _event: Any) -> None:
        self.send_presence()
        await self.plugin["xep_0280"].enable()
        if not self.ready.done():
            self.ready.set_result(True)


async def test_slixmpp_carbons(srv: ServerProcess, ca_file: str, names: Iterator[str]) -> None:
    name, peer = next(names), next(names)
    clients = [SlixClient(f"{name}@localhost/{r}", ca_file) for r in ("one", "two")]
    bob = SlixClient(f"{peer}@localhost/bob", ca_file)
    for client in (*clients, bob):
        client.connect("127.0.0.1", srv.port)
    try:
        await asyncio.wait_for(asyncio.gather(*(c.ready for c in (*clients, bob))), 20)
        bob.send_message(mto=f"{name}@localhost/one", mbody="hi one", mtype="chat")
        msg = await asyncio.wait_for(clients[1].received.get(), 10)
        assert msg["carbon_received"]["body"] == "hi one"
        assert str(msg["carbon_received"]["from"]) == f"{peer}@localhost/bob"
        clients[0].send_message(mto=f"{peer}@localhost", mbody="hi bob", mtype="chat")
        msg = await asyncio.wait_for(clients[1].sent.get(), 10)
        assert msg["carbon_sent"]["body"] == "hi bob"
        assert str(msg["carbon_sent"]["to"]) == f"{peer}@localhost"
    finally:
        for client in (*clients, bob):
            client.disconnect()
        await asyncio.sleep(0.1)
