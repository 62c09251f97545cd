"""XEP-0163 personal eventing over real sockets: notifications filtered by XEP-0115 caps
(verified, cached, queried again when a hash does not verify), last published items on
availability and on a new subscription, retraction, access models (XEP-0223 private storage
included), publish-options preconditions, node configuration, every error condition with
its pubsub#errors child, limits, persistence across a restart, account deletion; and
slixmpp publishing a tune (XEP-0118) and an avatar (XEP-0084) to another slixmpp client."""

from __future__ import annotations

import base64
import hashlib
import itertools
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import ServerProcess
from lxml import etree
from test_roster import add_accounts, connect, reply_to, sync
from xmpp_raw import CLIENT, RawClient, stanza_error

logging.getLogger("slixmpp").setLevel(logging.WARNING)

PUBSUB = "http://jabber.org/protocol/pubsub"
OWNER = PUBSUB + "#owner"
EVENT = PUBSUB + "#event"
ERRORS = PUBSUB + "#errors"
CAPS = "http://jabber.org/protocol/caps"
INFO = "http://jabber.org/protocol/disco#info"
ITEMS = "http://jabber.org/protocol/disco#items"
DATA = "jabber:x:data"
TUNE = "http://jabber.org/protocol/tune"
MOOD = "http://jabber.org/protocol/mood"
BOOKMARKS = "urn:xmpp:bookmarks:1"
CAPS_NODE = "https://fastxmpp.test/client"
ACCOUNTS = 64
LIMITS = (
    "[pep]\nmax_nodes = 6\nmax_items = 10\nmax_item_size = 2000\n"
    "max_bytes_per_account = 12000\ncaps_timeout = 5\n"
    "[limits]\nmax_connections_per_ip = 200\n"
)


@pytest.fixture(scope="module")
def srv(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("pep"), ca, ("localhost",), LIMITS)
    add_accounts(server, [f"p{i}" for i in range(ACCOUNTS)])
    server.start()
    yield server
    server.stop()


_fresh = itertools.count()
_ids = itertools.count()
_verified: set[str] = set()  # the vers the server has verified and cached


@pytest.fixture
def clients() -> Iterator[list[RawClient]]:
    opened: list[RawClient] = []
    yield opened
    for c in opened:
        c.close()


def caps_ver(features: list[str]) -> str:
    """XEP-0115 §5.1 for one identity client/pc and `features`, computed here on its own."""
    text = "client/pc//fastxmpp tests<" + "".join(f + "<" for f in sorted(features))
    return base64.b64encode(hashlib.sha1(text.encode()).digest()).decode()


def disco_answer(iq: Any, features: list[str]) -> str:
    node = iq.find(f"{{{INFO}}}query").get("node")
    body = "<identity category='client' type='pc' name='fastxmpp tests'/>"
    body += "".join(f"<feature var='{f}'/>" for f in features)
    return (
        f"<iq type='result' id='{iq.get('id')}' to='{iq.get('from')}'>"
        f"<query xmlns='{INFO}' node='{node}'>{body}</query></iq>"
    )


def is_caps_query(el: Any) -> bool:
    return (
        el.tag == f"{{{CLIENT}}}iq"
        and el.get("type") == "get"
        and el.find(f"{{{INFO}}}query") is not None
    )


def settle(c: RawClient) -> list[Any]:
    """Two round trips: what a caps answer set going has arrived (see pep.py _discover)."""
    return sync(c) + sync(c)


class User:
    def __init__(self, c: RawClient, name: str, resource: str) -> None:
        self.c = c
        self.name = name
        self.bare = f"{name}@localhost"
        self.full = f"{self.bare}/{resource}"
        self.queried = 0  # caps disco#info queries the server sent

    def send(self, data: str) -> None:
        self.c.send(data)

    def available(
        self,
        notify: tuple[str, ...] = (),
        ver: str | None = None,
        answer: bool = True,
        expect_query: bool | None = None,
    ) -> list[Any]:
        """Available presence with caps asking for `notify`; answers the server's caps
        query (expected unless the server has verified this ver before); returns what
        arrived after (last published items)."""
        features = [CAPS, INFO, *(f"{n}+notify" for n in notify)]
        if expect_query is None:
            expect_query = ver is None and caps_ver(features) not in _verified
        ver = ver or caps_ver(features)
        self.send(
            f"<presence><c xmlns='{CAPS}' hash='sha-1' node='{CAPS_NODE}' ver='{ver}'/></presence>"
        )
        seen: list[Any] = []
        if expect_query:
            while True:
                el = self.c.next()
                if is_caps_query(el):
                    self.queried += 1
                    assert el.find(f"{{{INFO}}}query").get("node") == f"{CAPS_NODE}#{ver}"
                    if answer:
                        self.send(disco_answer(el, features))
                        if ver == caps_ver(features):
                            _verified.add(ver)
                    break
                seen.append(el)
        out = seen + settle(self.c)
        assert not any(is_caps_query(el) for el in out)
        return out

    def iq(self, kind: str, payload: str, to: str | None = None) -> Any:
        iq_id = f"q{next(_ids)}"
        to_attr = f" to='{to}'" if to else ""
        self.send(f"<iq type='{kind}' id='{iq_id}'{to_attr}>{payload}</iq>")
        return reply_to(self.c, iq_id)

    def publish(
        self, node: str, payload: str, item_id: str | None = None, options: str = ""
    ) -> Any:
        id_attr = f" id='{item_id}'" if item_id else ""
        return self.iq(
            "set",
            f"<pubsub xmlns='{PUBSUB}'><publish node='{node}'><item{id_attr}>{payload}</item>"
            f"</publish>{options}</pubsub>",
        )


@pytest.fixture
def login(srv: ServerProcess, ca_file: str, clients: list[RawClient]) -> Any:
    def make(name: str | None = None, resource: str = "r") -> User:
        if name is None:
            name = f"p{next(_fresh)}"
            assert int(name[1:]) < ACCOUNTS, "raise ACCOUNTS"
        return User(connect(srv, ca_file, clients, name, resource), name, resource)

    return make


def befriend(a: User, b: User) -> None:
    """Mutual presence subscription, by protocol, before either is available."""
    for x, y in ((a, b), (b, a)):
        x.send(f"<presence type='subscribe' to='{y.bare}'/>")
        sync(x.c)
        y.send(f"<presence type='subscribed' to='{x.bare}'/>")
        sync(y.c)
    sync(a.c)
    sync(b.c)


def tune(title: str) -> str:
    return f"<tune xmlns='{TUNE}'><title>{title}</title></tune>"


def events(elements: list[Any], node: str | None = None) -> list[Any]:
    """The pubsub#event <items/> (or <delete/>, <purge/>) elements received."""
    found = []
    for el in elements:
        if el.tag != f"{{{CLIENT}}}message":
            continue
        event = el.find(f"{{{EVENT}}}event")
        if event is None:
            continue
        for child in event:
            if node is None or child.get("node") == node:
                found.append(child)
    return found


def item_titles(elements: list[Any], node: str = TUNE) -> list[str]:
    return [t.text for ev in events(elements, node) for t in ev.iter(f"{{{TUNE}}}title")]


def error_of(reply: Any) -> tuple[str | None, str | None, str | None]:
    """(error type, defined condition, pubsub#errors condition)."""
    assert reply.get("type") == "error", etree.tostring(reply)
    error = reply.find(f"{{{CLIENT}}}error")
    app = None
    for child in error:
        if child.tag.startswith(f"{{{ERRORS}}}"):
            app = child.tag.split("}", 1)[1]
    return error.get("type"), stanza_error(reply), app


def options_form(form_type: str, **fields: str) -> str:
    body = "".join(
        f"<field var='pubsub#{name}'><value>{value}</value></field>"
        for name, value in fields.items()
    )
    return (
        f"<x xmlns='{DATA}' type='submit'><field var='FORM_TYPE' type='hidden'>"
        f"<value>{form_type}</value></field>{body}</x>"
    )


def publish_options(**fields: str) -> str:
    return (
        f"<publish-options>{options_form(PUBSUB + '#publish-options', **fields)}</publish-options>"
    )


# --- discovery ------------------------------------------------------------------------------


def test_account_disco_shows_pep(login: Any) -> None:
    a = login()
    reply = a.iq("get", f"<query xmlns='{INFO}'/>", to=a.bare)
    identities = {(i.get("category"), i.get("type")) for i in reply.iter(f"{{{INFO}}}identity")}
    assert ("pubsub", "pep") in identities and ("account", "registered") in identities
    features = {f.get("var") for f in reply.iter(f"{{{INFO}}}feature")}
    for name in (
        "publish",
        "publish-options",
        "auto-create",
        "retrieve-items",
        "access-whitelist",
        "filtered-notifications",
        "last-published",
        "config-node-max",
    ):
        assert f"{PUBSUB}#{name}" in features


# --- notifications --------------------------------------------------------------------------


def test_publish_reaches_interested_resources_only(login: Any) -> None:
    alice, bob, carol, dave = login(), login(), login(), login()
    alice2 = login(alice.name, "second")
    alice3 = login(alice.name, "third")
    befriend(alice, bob)
    befriend(alice, carol)
    alice.available((TUNE,))
    alice2.available((TUNE,))  # same caps: cached
    alice3.available((MOOD,))
    bob.available((TUNE,))
    carol.available((MOOD,))
    dave.available((TUNE,))  # not a contact

    reply = alice.publish(TUNE, tune("Finzi"), "t1")
    assert reply.get("type") == "result"
    published = reply.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}publish")
    assert published.get("node") == TUNE
    assert published.find(f"{{{PUBSUB}}}item").get("id") == "t1"

    got_bob = sync(bob.c)
    assert item_titles(got_bob) == ["Finzi"]
    message = next(el for el in got_bob if el.tag == f"{{{CLIENT}}}message")
    # XEP-0163 §4.3.1: from the owner's bare JID, to the full JID, a headline.
    assert message.get("from") == alice.bare
    assert message.get("to") == bob.full
    assert message.get("type") == "headline"
    item = events(got_bob)[0].find(f"{{{EVENT}}}item")
    assert item.get("id") == "t1"
    replyto = message.find("{http://jabber.org/protocol/address}addresses/*")
    assert replyto.get("type") == "replyto" and replyto.get("jid") == alice.full

    assert item_titles(sync(alice.c)) == ["Finzi"]  # the publisher itself wants it
    assert item_titles(sync(alice2.c)) == ["Finzi"]
    assert events(sync(alice3.c)) == []  # no +notify for tune
    assert events(sync(carol.c)) == []  # a contact without interest
    assert events(sync(dave.c)) == []  # no subscription


def test_last_item_on_becoming_available(login: Any) -> None:
    alice, bob = login(), login()
    befriend(alice, bob)
    alice.publish(TUNE, tune("one"), "a")
    alice.publish(TUNE, tune("two"), "b")
    got = bob.available((TUNE,))
    assert item_titles(got) == ["two"]  # the last one only, max_items 1 anyway
    message = next(el for el in got if el.tag == f"{{{CLIENT}}}message")
    assert message.find("{urn:xmpp:delay}delay") is not None
    # A presence update with the same caps is not initial: nothing again (§4.3.3 note).
    assert events(bob.available((TUNE,))) == []
    # The owner's own new resource gets it too.
    alice2 = login(alice.name, "other")
    assert item_titles(alice2.available((TUNE,))) == ["two"]


def test_retract_notifies(login: Any) -> None:
    alice, bob = login(), login()
    befriend(alice, bob)
    alice.available((TUNE,))
    bob.available((TUNE,))
    configure(alice, TUNE, create=True, max_items="5")
    alice.publish(TUNE, tune("x"), "x1")
    alice.publish(TUNE, tune("y"), "y1")
    sync(bob.c)
    reply = alice.iq(
        "set", f"<pubsub xmlns='{PUBSUB}'><retract node='{TUNE}'><item id='x1'/></retract></pubsub>"
    )
    assert reply.get("type") == "result"
    retracted = [
        r.get("id") for ev in events(sync(bob.c), TUNE) for r in ev.iter(f"{{{EVENT}}}retract")
    ]
    assert retracted == ["x1"]
    ids = [i.get("id") for i in get_items(bob, alice, TUNE).iter(f"{{{PUBSUB}}}item")]
    assert ids == ["y1"]


def get_items(requester: User, owner: User, node: str, extra: str = "", body: str = "") -> Any:
    return requester.iq(
        "get",
        f"<pubsub xmlns='{PUBSUB}'><items node='{node}'{extra}>{body}</items></pubsub>",
        to=owner.bare,
    )


def configure(owner: User, node: str, create: bool = False, **fields: str) -> Any:
    form = options_form(PUBSUB + "#node_config", **fields)
    if create:
        body = f"<create node='{node}'/><configure>{form}</configure>"
        payload = f"<pubsub xmlns='{PUBSUB}'>{body}</pubsub>"
    else:
        payload = f"<pubsub xmlns='{OWNER}'><configure node='{node}'>{form}</configure></pubsub>"
    reply = owner.iq("set", payload)
    assert reply.get("type") == "result", etree.tostring(reply)
    return reply
