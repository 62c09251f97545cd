"""XEP-0352 Client State Indication over real sockets: the stream feature, presence updates
(the latest per sender) and chat states held while inactive, flushed in order by <active/>,
by an important stanza and by the limit; XEP-0198 counts held stanzas only when written."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import PASSWORD, FreshNames, ServerProcess, module_server
from lxml import etree
from xmpp_raw import CLIENT, RawClient

NS = "urn:xmpp:csi:0"
SM = "urn:xmpp:sm:3"
CHATSTATES = "http://jabber.org/protocol/chatstates"
STREAMS = "http://etherx.jabber.org/streams"
LIMIT = 5
STANZAS = {f"{{{CLIENT}}}{name}" for name in ("message", "presence", "iq")}

POOL = FreshNames("cs", 40)


@pytest.fixture(scope="module")
def srv(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(ca, tmp_path_factory, POOL, f"[csi]\nmax_held_stanzas = {LIMIT}\n")


@pytest.fixture
def names() -> Iterator[str]:
    return POOL.names()


class Session:
    def __init__(self, c: RawClient, name: str, resource: str) -> None:
        self.c = c
        self.full = f"{name}@localhost/{resource}"
        self.stanzas = 0  # stanzas received since stream management was enabled
        self._ids = 0

    def send(self, data: str) -> None:
        self.c.send(data)

    def next_stanza(self, timeout: float | None = None) -> Any:
        """The next stanza, counted (XEP-0198 <r/> requests are skipped)."""
        while True:
            el = self.c.next(timeout)
            if el.tag == f"{{{SM}}}r":
                continue
            assert el.tag in STANZAS, etree.tostring(el)
            self.stanzas += 1
            return el

    def sync(self) -> list[Any]:
        """Everything that arrives before the answer to a ping sent now."""
        self._ids += 1
        marker = f"sync{self._ids}"
        self.send(f"<iq type='get' id='{marker}'><ping xmlns='urn:xmpp:ping'/></iq>")
        seen = []
        while True:
            el = self.next_stanza()
            if el.get("id") == marker:
                return seen
            seen.append(el)

    def nothing_arrives(self) -> None:
        with pytest.raises(TimeoutError):
            self.c.next(0.3)

    def inactive(self) -> None:
        """<inactive/>, and a round trip: it is in force before anyone sends more."""
        self.send(f"<inactive xmlns='{NS}'/>")
        assert self.sync() == []


@pytest.fixture
def login(srv: ServerProcess, ca_file: str, clients: list[RawClient]) -> Any:
    def connect(name: str, resource: str = "r", sm: bool = False) -> Session:
        c = srv.client()
        clients.append(c)
        c.login(ca_file, name, PASSWORD, resource)
        session = Session(c, name, resource)
        if sm:
            c.send(f"<enable xmlns='{SM}'/>")
            assert c.next().tag == f"{{{SM}}}enabled"
        c.send("<presence/>")
        session.sync()
        return session

    return connect


def show(el: Any) -> str | None:
    return el.findtext(f"{{{CLIENT}}}show")


def describe(el: Any) -> str:
    """A short name for what arrived: 'presence:<show>', 'state:<name>', 'body:<text>',
    'iq:<type>', else 'other'."""
    kind = etree.QName(el).localname
    if kind == "presence":
        return f"presence:{el.get('type') or show(el)}"
    if kind == "iq":
        return f"iq:{el.get('type')}"
    body = el.findtext(f"{{{CLIENT}}}body")
    if body is not None:
        return f"body:{body}"
    states = [etree.QName(c).localname for c in el if etree.QName(c).namespace == CHATSTATES]
    return f"state:{','.join(states)}" if states else "other"


def presence(to: str, state: str) -> str:
    return f"<presence to='{to}'><show>{state}</show></presence>"


def chat_state(to: str, state: str) -> str:
    return f"<message to='{to}' type='chat'><{state} xmlns='{CHATSTATES}'/></message>"


def test_feature_after_authentication(srv: ServerProcess, ca_file: str, clients: list) -> None:
    c = srv.client()
    clients.append(c)
    before = c.open_stream()
    assert before.find(f"{{{NS}}}csi") is None
    c.starttls(ca_file)
    assert c.sasl_scram("cs39", PASSWORD).tag.endswith("success")
    after = c.open_stream()
    assert after.find(f"{{{NS}}}csi") is not None


def test_inactive_holds_updates_and_active_flushes(login: Any, names: Iterator[str]) -> None:
    alice, bob = login(next(names)), login(next(names))
    alice.inactive()
    for data in (
        presence(alice.full, "away"),
        chat_state(alice.full, "composing"),
        presence(alice.full, "dnd"),  # replaces "away", and takes its place after composing
        chat_state(alice.full, "paused"),
    ):
        bob.send(data)
    bob.sync()
    alice.nothing_arrives()
    alice.send(f"<active xmlns='{NS}'/>")
    got = alice.sync()  # the pong comes after what <active/> released (§5.2)
    assert [describe(el) for el in got] == ["state:composing", "presence:dnd", "state:paused"]
    assert all(el.get("from") == bob.full for el in got)
    # Active again: nothing waits.
    bob.send(chat_state(alice.full, "active"))
    bob.sync()
    assert [describe(el) for el in alice.sync()] == ["state:active"]


@pytest.mark.parametrize(
    ("important", "name"),
    [
        ("<message to='{to}' type='chat'><body>hi</body></message>", "body:hi"),
        (
            "<message to='{to}'><body>hi</body><paused xmlns='" + CHATSTATES + "'/></message>",
            "body:hi",
        ),
        ("<iq to='{to}' type='get' id='v'><query xmlns='jabber:iq:version'/></iq>", "iq:get"),
        ("<presence to='{bare}' type='subscribe'/>", "presence:subscribe"),
        (
            "<message to='{to}' type='chat'><received xmlns='urn:xmpp:receipts' id='x'/></message>",
            "other",
        ),
    ],
)
def test_important_stanza_flushes_held_first(
    login: Any, names: Iterator[str], important: str, name: str
) -> None:
    alice, bob = login(next(names)), login(next(names))
    alice.inactive()
    bob.send(presence(alice.full, "away"))
    bob.send(chat_state(alice.full, "composing"))
    bob.sync()
    alice.nothing_arrives()
    bob.send(important.format(to=alice.full, bare=alice.full.split("/")[0]))
    got = [describe(alice.next_stanza()) for _ in range(3)]
    assert got == ["presence:away", "state:composing", name]
    assert alice.sync() == []  # still inactive, and nothing else was held


def test_limit_flushes(login: Any, names: Iterator[str]) -> None:
    alice, bob = login(next(names)), login(next(names))
    alice.inactive()
    # Presence of one sender is replaced, not added: it does not count towards the limit.
    for state in ("away", "xa", "dnd"):
        bob.send(presence(alice.full, state))
    for i in range(LIMIT - 1):
        bob.send(chat_state(alice.full, "composing" if i % 2 else "paused"))
    bob.sync()
    alice.nothing_arrives()
    bob.send(chat_state(alice.full, "gone"))  # one more than the limit: everything goes
    got = [describe(alice.next_stanza()) for _ in range(LIMIT + 1)]
    assert got[0] == "presence:dnd" and got[-1] == "state:gone"
    assert got[1:-1] == [f"state:{'composing' if i % 2 else 'paused'}" for i in range(LIMIT - 1)]
    # Still inactive: the next update waits again.
    bob.send(presence(alice.full, "chat"))
    bob.sync()
    alice.nothing_arrives()
    alice.send(f"<active xmlns='{NS}'/>")
    assert [describe(el) for el in alice.sync()] == ["presence:chat"]


def test_stream_management_counts_what_is_written(login: Any, names: Iterator[str]) -> None:
    alice, bob = login(next(names), sm=True), login(next(names))
    alice.inactive()
    bob.send(presence(alice.full, "away"))
    bob.send(presence(alice.full, "xa"))  # the "away" is dropped: never sent, never counted
    for _ in range(3):
        bob.send(chat_state(alice.full, "composing"))
    bob.sync()
    alice.nothing_arrives()
    alice.send(f"<active xmlns='{NS}'/>")
    got = alice.sync()
    assert [describe(el) for el in got] == ["presence:xa"] + ["state:composing"] * 3
    # Everything received so far is acknowledged: no complaint.
    alice.send(f"<a xmlns='{SM}' h='{alice.stanzas}'/>")
    assert alice.sync() == []
    # One more than the server counted: §4's error tells its count, which must be ours.
    alice.send(f"<a xmlns='{SM}' h='{alice.stanzas + 1}'/>")
    while True:
        el = alice.c.next()
        if el.tag == f"{{{STREAMS}}}error":
            break
    too_high = el.find(f"{{{SM}}}handled-count-too-high")
    assert too_high is not None and too_high.get("send-count") == str(alice.stanzas)


def test_unknown_element_is_a_stream_error(login: Any, names: Iterator[str]) -> None:
    alice = login(next(names))
    alice.send(f"<asleep xmlns='{NS}'/>")
    assert alice.c.stream_error() == "unsupported-stanza-type"


# --- classifying what an inactive session is sent, without parsing the element -------------

PRESENCES = [
    b"<presence from='ann@localhost/a' to='bo@localhost/b'/>",
    b"<presence from='ann@localhost/a' type='unavailable'/>",
    b'<presence type="subscribe" from="ann@localhost"/>',
    b"<presence from='ann@localhost/a'><show>away</show><status>type='x'</status></presence>",
    b"<presence\n  from = \"d&amp;e@localhost/r\"\ttype='error' ><error type='cancel'/></presence>",
    b"<presence xml:lang='en' xtype='unavailable' typex='probe' from='f&#x40;localhost'/>",
    b"<presence from='g@localhost/&apos;q&quot;' type='unsubscribed'>",
    b"<presence id='a&gt;b' from='h@localhost/c'><priority>1</priority></presence>",
]


@pytest.mark.parametrize("data", PRESENCES)
def test_start_tag_attributes_read_as_xml_does(data: bytes) -> None:
    from fastxmpp._router import start_tag_attr

    # lxml reads the whole element; closing a start tag left open makes it one.
    whole = data if data.endswith(b"/>") or b"</" in data else data + b"</presence>"
    element = etree.fromstring(whole)
    for name in ("from", "type", "id", "to", "lang"):
        assert start_tag_attr(data, name) == element.get(name)


def test_unimportant_presence_by_its_start_tag() -> None:
    from fastxmpp.stream.csi import unimportant

    assert unimportant(PRESENCES[0]) == ("presence", "ann@localhost/a")
    assert unimportant(PRESENCES[1]) == ("presence", "ann@localhost/a")
    assert unimportant(PRESENCES[2]) is None  # a subscription request goes out now
    assert unimportant(PRESENCES[3]) == ("presence", "ann@localhost/a")  # 'type' in text
    assert unimportant(PRESENCES[4]) is None  # an error
    assert unimportant(PRESENCES[5]) == ("presence", "f@localhost")  # only 'type' counts
    # A start tag that is not well-formed decides nothing: out it goes.
    assert unimportant(b"<presence from=ann@localhost>") is None
    assert unimportant(b"<presence from='ann@localhost'") is None


def _classified_by_whole_tree(data: bytes) -> bool:
    """What the server decided before it read only a message's children: the whole tree
    parsed (lxml), a chat state anywhere without a jabber:client body anywhere waits."""
    el = etree.fromstring(data)
    if el.get("type") == "error":
        return False
    names = [etree.QName(e) for e in el.iter() if isinstance(e.tag, str)]
    if any(q.localname == "body" and q.namespace in (None, CLIENT) for q in names):
        return False
    return any(q.namespace == CHATSTATES for q in names)


CARBON = (
    "<message xmlns='jabber:client' from='ann@localhost' to='ann@localhost/b' type='chat'>"
    "<{0} xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>"
    "<message xmlns='jabber:client' from='ann@localhost/a' to='bo@localhost' type='chat'>"
    "{1}</message></forwarded></{0}></message>"
)
STATE = f"<composing xmlns='{CHATSTATES}'/>"
MESSAGES = [
    f"<message from='bo@localhost/b' to='ann@localhost/a' type='chat'>{STATE}</message>",
    f"<message from='bo@localhost/b' type='chat'><body>hi</body>{STATE}</message>",
    f"<message from='bo@localhost/b' type='error'>{STATE}<error type='cancel'/></message>",
    f"<message from='bo@localhost/b'><thread>t</thread><active xmlns='{CHATSTATES}'/></message>",
    CARBON.format("sent", STATE),
    CARBON.format("received", STATE),
    CARBON.format("received", "<body>hi</body>" + STATE),
    # a body only in XHTML-IM's namespace: no jabber:client body
    f"<message from='bo@localhost/b'><html xmlns='http://jabber.org/protocol/xhtml-im'>"
    f"<body xmlns='http://www.w3.org/1999/xhtml'>x</body></html>{STATE}</message>",
    # a jabber:client body below an extension, and one with a prefix
    f"<message from='bo@localhost/b'><x xmlns='urn:example'><body xmlns='jabber:client'>b"
    f"</body></x>{STATE}</message>",
    f"<message from='bo@localhost/b' xmlns:c='jabber:client'><c:body>b</c:body>{STATE}</message>",
    # the namespace named in text only: no chat state element
    f"<message from='bo@localhost/b'><subject>{CHATSTATES}</subject></message>",
    f"<message from='bo@localhost/b'><received xmlns='urn:xmpp:receipts' id='1'/>{STATE}</message>",
]


@pytest.mark.parametrize("text", MESSAGES)
def test_chat_states_wait_as_when_the_whole_message_was_read(text: str) -> None:
    from fastxmpp.stream.csi import unimportant

    data = text.encode()
    # as routed: the message inherits jabber:client from the stream
    tree = (
        data
        if b"xmlns='jabber:client'" in data.split(b">", 1)[0]
        else (data.replace(b"<message ", b"<message xmlns='jabber:client' ", 1))
    )
    key = unimportant(data)
    assert (key is not None and key[0] == "chat state") == _classified_by_whole_tree(tree)


def test_the_reading_parser_is_replaced_after_bad_input_and_after_many_uses() -> None:
    from fastxmpp.stream import csi

    typing = MESSAGES[0].encode()
    assert csi.unimportant(b"<message from='bo@localhost'>" + STATE.encode()) is None
    assert csi.unimportant(typing) is not None  # a fresh parser after the unfinished one
    assert csi.unimportant(b"<message a='1' a='2'>" + STATE.encode() + b"</message>") is None
    assert csi.unimportant(typing) is not None
    first = csi._reader
    for _ in range(csi.READER_USES):
        assert csi.unimportant(typing) is not None
    assert csi._reader is not first  # names senders chose do not pile up in one parser
