"""XEP-0163 personal eventing over real sockets: notifications filtered by XEP-0115 caps
(verified, cached, queried again when a hash does not verify), last published items on
availability and on a new subscription, retraction, access models (XEP-0223 private storage
included), publish-options preconditions, node configuration, every error condition with
its pubsub#errors child, limits, persistence across a restart, account deletion; and
slixmpp publishing a tune (XEP-0118) and an avatar (XEP-0084) to another slixmpp client."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import logging
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
    run_cli,
)
from lxml import etree
from slixmpp import ClientXMPP
from test_roster import connect, reply_to, sync
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
ACCOUNTS = 200
LIMITS = (
    "[pep]\nmax_nodes = 6\nmax_items = 10\nmax_item_size = 2000\n"
    "max_bytes_per_account = 12000\ncaps_timeout = 5\n"
    "[limits]\nmax_unauthenticated_per_ip = 200\n"
)


POOL = FreshNames("p", ACCOUNTS)


@pytest.fixture(scope="module")
def srv(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(ca, tmp_path_factory, POOL, LIMITS)


_fresh = POOL.names()
_ids = itertools.count()
_verified: set[str] = set()  # the vers the server has verified and cached


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


def next_query(user: User) -> Any:
    el = user.c.next()
    while not is_caps_query(el):
        el = user.c.next()
    user.queried += 1
    return el


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
            name = next(_fresh)
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


# --- access models --------------------------------------------------------------------------


def test_whitelist_is_private_storage(login: Any) -> None:
    """XEP-0223: publish-options access_model=whitelist keeps the node to its owner."""
    alice, bob = login(), login()
    befriend(alice, bob)
    alice.available((BOOKMARKS,))
    bob.available((BOOKMARKS,))
    options = publish_options(persist_items="true", access_model="whitelist", max_items="max")
    conference = f"<conference xmlns='{BOOKMARKS}' autojoin='true'/>"
    reply = alice.publish(BOOKMARKS, conference, "room@muc.localhost", options)
    assert reply.get("type") == "result", etree.tostring(reply)
    assert len(events(sync(alice.c), BOOKMARKS)) == 1  # the owner's resources are told
    assert events(received(bob, alice)) == []
    assert error_of(get_items(bob, alice, BOOKMARKS)) == ("cancel", "not-allowed", "closed-node")
    mine = get_items(alice, alice, BOOKMARKS)
    assert [i.get("id") for i in mine.iter(f"{{{PUBSUB}}}item")] == ["room@muc.localhost"]
    # Not listed to the contact; listed to the owner.
    assert BOOKMARKS not in disco_nodes(bob, alice)
    assert BOOKMARKS in disco_nodes(alice, alice)
    # A contact coming online later gets nothing either.
    bob2 = login(bob.name, "later")
    assert events(bob2.available((BOOKMARKS,))) == []


def test_presence_and_open_access(login: Any) -> None:
    alice, bob, stranger = login(), login(), login()
    befriend(alice, bob)
    alice.publish(TUNE, tune("for contacts"))
    titles = [t.text for t in get_items(bob, alice, TUNE).iter(f"{{{TUNE}}}title")]
    assert titles == ["for contacts"]
    assert error_of(get_items(stranger, alice, TUNE)) == (
        "auth",
        "not-authorized",
        "presence-subscription-required",
    )
    assert TUNE not in disco_nodes(stranger, alice)
    configure(alice, TUNE, access_model="open")
    titles = [t.text for t in get_items(stranger, alice, TUNE).iter(f"{{{TUNE}}}title")]
    assert titles == ["for contacts"]
    assert TUNE in disco_nodes(stranger, alice)


def test_roster_access_model(login: Any) -> None:
    alice, bob, carol = login(), login(), login()
    befriend(alice, bob)
    befriend(alice, carol)
    alice.iq(
        "set",
        f"<query xmlns='jabber:iq:roster'><item jid='{bob.bare}'><group>Friends</group></item>"
        "</query>",
    )
    configure(alice, MOOD, create=True, access_model="roster", roster_groups_allowed="Friends")
    alice.publish(MOOD, f"<mood xmlns='{MOOD}'><happy/></mood>")
    assert get_items(bob, alice, MOOD).get("type") == "result"
    assert error_of(get_items(carol, alice, MOOD)) == (
        "auth",
        "not-authorized",
        "not-in-roster-group",
    )


def disco_nodes(requester: User, owner: User) -> list[str]:
    reply = requester.iq("get", f"<query xmlns='{ITEMS}'/>", to=owner.bare)
    assert reply.get("type") == "result", etree.tostring(reply)
    items = list(reply.iter(f"{{{ITEMS}}}item"))
    assert all(i.get("jid") == owner.bare for i in items)
    return [i.get("node") for i in items]


def received(c: User, *senders: User) -> list[Any]:
    for sender in senders:
        sync(sender.c)
    return sync(c.c)


# --- publish-options and configuration -------------------------------------------------------


def test_publish_options_preconditions(login: Any) -> None:
    alice = login()
    node = "urn:example:prefs"
    payload = "<prefs xmlns='urn:example:prefs'/>"
    # Auto-create applies the preconditions as configuration (XEP-0060 §7.1.5).
    options = publish_options(access_model="open", max_items="3")
    assert alice.publish(node, payload, "1", options).get("type") == "result"
    form = config_values(alice, node)
    assert form["pubsub#access_model"] == ["open"] and form["pubsub#max_items"] == ["3"]
    # Met: published.
    assert alice.publish(node, payload, "2", options).get("type") == "result"
    # Not met: conflict + precondition-not-met, nothing published.
    for bad in (
        publish_options(access_model="whitelist"),
        publish_options(max_items="4"),
        publish_options(no_such_field="1"),  # unknown fields are refused (§7.1.5)
        publish_options(access_model="nonsense"),
    ):
        assert error_of(alice.publish(node, payload, "3", bad)) == (
            "cancel",
            "conflict",
            "precondition-not-met",
        )
    ids = [i.get("id") for i in get_items(alice, alice, node).iter(f"{{{PUBSUB}}}item")]
    assert ids == ["1", "2"]
    # Conversations' answer to the conflict: reconfigure, then publish again.
    configure(alice, node, access_model="whitelist")
    assert (
        alice.publish(node, payload, "3", publish_options(access_model="whitelist")).get("type")
        == "result"
    )


def config_values(owner: User, node: str) -> dict[str, list[str]]:
    reply = owner.iq("get", f"<pubsub xmlns='{OWNER}'><configure node='{node}'/></pubsub>")
    assert reply.get("type") == "result", etree.tostring(reply)
    x = reply.find(f"{{{OWNER}}}pubsub/{{{OWNER}}}configure/{{{DATA}}}x")
    assert x.get("type") == "form"
    return {
        f.get("var"): [v.text or "" for v in f.findall(f"{{{DATA}}}value")]
        for f in x.findall(f"{{{DATA}}}field")
    }


def test_node_configuration_round_trip(login: Any) -> None:
    alice = login()
    node = "urn:example:log"
    reply = alice.iq("set", f"<pubsub xmlns='{PUBSUB}'><create node='{node}'/></pubsub>")
    assert reply.get("type") == "result"
    form = config_values(alice, node)
    # XEP-0163 §6 defaults.
    assert form["FORM_TYPE"] == [PUBSUB + "#node_config"]
    assert form["pubsub#access_model"] == ["presence"]
    assert form["pubsub#send_last_published_item"] == ["on_sub_and_presence"]
    assert form["pubsub#deliver_notifications"] == ["1"]
    assert form["pubsub#max_items"] == ["1"]
    default = alice.iq("get", f"<pubsub xmlns='{OWNER}'><default/></pubsub>")
    assert default.find(f"{{{OWNER}}}pubsub/{{{OWNER}}}default/{{{DATA}}}x") is not None

    configure(alice, node, max_items="max", title="Log", persist_items="1")
    form = config_values(alice, node)
    assert form["pubsub#max_items"] == ["max"] and form["pubsub#title"] == ["Log"]
    for n in range(12):
        alice.publish(node, f"<entry xmlns='urn:example:log'>{n}</entry>", f"e{n}")
    ids = [i.get("id") for i in get_items(alice, alice, node).iter(f"{{{PUBSUB}}}item")]
    assert ids == [f"e{n}" for n in range(2, 12)]  # "max" is the server's limit, 10
    recent = get_items(alice, alice, node, " max_items='2'")
    assert [i.get("id") for i in recent.iter(f"{{{PUBSUB}}}item")] == ["e10", "e11"]
    chosen = get_items(alice, alice, node, body="<item id='e5'/><item id='nope'/>")
    assert [i.get("id") for i in chosen.iter(f"{{{PUBSUB}}}item")] == ["e5"]
    # Re-publishing an id makes it the newest (XEP-0060 §12.17).
    alice.publish(node, "<entry xmlns='urn:example:log'>again</entry>", "e5")
    ids = [i.get("id") for i in get_items(alice, alice, node).iter(f"{{{PUBSUB}}}item")]
    assert ids[-1] == "e5" and len(ids) == 10
    # Lowering max_items drops the oldest.
    configure(alice, node, max_items="2")
    ids = [i.get("id") for i in get_items(alice, alice, node).iter(f"{{{PUBSUB}}}item")]
    assert ids == ["e11", "e5"]
    # Cancel changes nothing.
    cancel = f"<x xmlns='{DATA}' type='cancel'/>"
    reply = alice.iq(
        "set", f"<pubsub xmlns='{OWNER}'><configure node='{node}'>{cancel}</configure></pubsub>"
    )
    assert reply.get("type") == "result"
    assert config_values(alice, node)["pubsub#max_items"] == ["2"]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"max_items": "11"}, ("modify", "not-acceptable", None)),  # above the server's limit
        ({"max_items": "zero"}, ("modify", "not-acceptable", None)),
        ({"persist_items": "maybe"}, ("modify", "not-acceptable", None)),
        ({"unknown_option": "1"}, ("modify", "not-acceptable", None)),
        ({"access_model": "authorize"}, ("modify", "not-acceptable", "unsupported-access-model")),
    ],
)
def test_configuration_refused(
    login: Any, fields: dict[str, str], expected: tuple[str, str, str | None]
) -> None:
    alice = login()
    alice.publish("urn:example:c", "<c xmlns='urn:example:c'/>")
    form = options_form(PUBSUB + "#node_config", **fields)
    reply = alice.iq(
        "set",
        f"<pubsub xmlns='{OWNER}'><configure node='urn:example:c'>{form}</configure></pubsub>",
    )
    assert error_of(reply) == expected
    assert config_values(alice, "urn:example:c")["pubsub#max_items"] == ["1"]


# --- errors ----------------------------------------------------------------------------------

BIG = "x" * 2100


@pytest.mark.parametrize(
    ("kind", "payload", "to_other", "expected"),
    [
        # XEP-0060 §6.5.9.x / §7.1.3.x / §7.2.3.x / §8.x, each with its pubsub#errors child.
        (
            "get",
            f"<pubsub xmlns='{PUBSUB}'><items/></pubsub>",
            False,
            ("modify", "bad-request", "nodeid-required"),
        ),
        (
            "get",
            f"<pubsub xmlns='{PUBSUB}'><items node='missing'/></pubsub>",
            False,
            ("cancel", "item-not-found", None),
        ),
        (
            "get",
            f"<pubsub xmlns='{PUBSUB}'><items node='n' max_items='-1'/></pubsub>",
            False,
            ("modify", "bad-request", None),
        ),
        (
            "set",
            f"<pubsub xmlns='{PUBSUB}'><publish node='n'><item><v xmlns='urn:v'/></item>"
            "</publish></pubsub>",
            True,
            ("auth", "forbidden", None),
        ),
        (
            "set",
            f"<pubsub xmlns='{PUBSUB}'><publish node='n'/></pubsub>",
            False,
            ("modify", "bad-request", "item-required"),
        ),
        (
            "set",
            f"<pubsub xmlns='{PUBSUB}'><publish><item><v xmlns='urn:v'/></item></publish></pubsub>",
            False,
            ("modify", "bad-request", "nodeid-required"),
        ),
        (
            "set",
            f"<pubsub xmlns='{PUBSUB}'><publish node='n'><item/></publish></pubsub>",
            False,
            ("modify", "bad-request", "payload-required"),
        ),
        (
            "set",
            f"<pubsub xmlns='{PUBSUB}'><publish node='n'><item><a xmlns='urn:v'/>"
            "<b xmlns='urn:v'/></item></publish></pubsub>",
            False,
            ("modify", "bad-request", "invalid-payload"),
        ),
        (
            "set",
            f"<pubsub xmlns='{PUBSUB}'><publish node='n'><item><v xmlns='urn:v'>{BIG}</v>"
            "</item></publish></pubsub>",
            False,
            ("modify", "not-acceptable", "payload-too-big"),
        ),
        (
            "set",
            f"<pubsub xmlns='{PUBSUB}'><publish node='n'><item id='{'i' * 300}'>"
            "<v xmlns='urn:v'/></item></publish></pubsub>",
            False,
            ("modify", "not-acceptable", None),
        ),
        (
            "set",
            f"<pubsub xmlns='{PUBSUB}'><retract node='n'><item id='nope'/></retract></pubsub>",
            False,
            ("cancel", "item-not-found", None),
        ),
        (
            "set",
            f"<pubsub xmlns='{PUBSUB}'><retract node='n'><item/></retract></pubsub>",
            False,
            ("modify", "bad-request", "item-required"),
        ),
        (
            "set",
            f"<pubsub xmlns='{PUBSUB}'><retract node='missing'><item id='1'/></retract></pubsub>",
            False,
            ("cancel", "item-not-found", None),
        ),
        (
            "set",
            f"<pubsub xmlns='{PUBSUB}'><retract><item id='1'/></retract></pubsub>",
            False,
            ("modify", "bad-request", "nodeid-required"),
        ),
        (
            "set",
            f"<pubsub xmlns='{PUBSUB}'><retract node='n'><item id='1'/></retract></pubsub>",
            True,
            ("auth", "forbidden", None),
        ),
        (
            "set",
            f"<pubsub xmlns='{PUBSUB}'><create node='n'/></pubsub>",
            False,
            ("cancel", "conflict", None),
        ),
        (
            "set",
            f"<pubsub xmlns='{PUBSUB}'><create/></pubsub>",
            False,
            ("modify", "not-acceptable", "nodeid-required"),
        ),
        (
            "set",
            f"<pubsub xmlns='{PUBSUB}'><create node='other'/></pubsub>",
            True,
            ("auth", "forbidden", None),
        ),
        (
            "set",
            f"<pubsub xmlns='{OWNER}'><delete node='n'/></pubsub>",
            True,
            ("auth", "forbidden", None),
        ),
        (
            "set",
            f"<pubsub xmlns='{OWNER}'><delete node='missing'/></pubsub>",
            False,
            ("cancel", "item-not-found", None),
        ),
        (
            "set",
            f"<pubsub xmlns='{OWNER}'><purge node='n'/></pubsub>",
            True,
            ("auth", "forbidden", None),
        ),
        (
            "set",
            f"<pubsub xmlns='{OWNER}'><purge node='missing'/></pubsub>",
            False,
            ("cancel", "item-not-found", None),
        ),
        (
            "get",
            f"<pubsub xmlns='{OWNER}'><configure node='n'/></pubsub>",
            True,
            ("auth", "forbidden", None),
        ),
        (
            "get",
            f"<pubsub xmlns='{OWNER}'><configure node='missing'/></pubsub>",
            False,
            ("cancel", "item-not-found", None),
        ),
        (
            "get",
            f"<pubsub xmlns='{OWNER}'><configure/></pubsub>",
            False,
            ("modify", "bad-request", "nodeid-required"),
        ),
        (
            "set",
            f"<pubsub xmlns='{OWNER}'><configure node='n'/></pubsub>",
            False,
            ("modify", "bad-request", None),
        ),
        (
            "set",
            f"<pubsub xmlns='{PUBSUB}'><subscribe node='n' jid='x@localhost'/></pubsub>",
            False,
            ("modify", "bad-request", "invalid-jid"),
        ),
        (
            "get",
            f"<pubsub xmlns='{PUBSUB}'><options node='n' jid='x@localhost'/></pubsub>",
            False,
            ("cancel", "feature-not-implemented", "unsupported"),
        ),
        (
            "get",
            f"<pubsub xmlns='{OWNER}'><affiliations node='n'/></pubsub>",
            False,
            ("cancel", "feature-not-implemented", "unsupported"),
        ),
        (
            "get",
            f"<pubsub xmlns='{OWNER}'><subscriptions node='n'/></pubsub>",
            True,
            ("auth", "forbidden", None),
        ),
        ("get", f"<pubsub xmlns='{PUBSUB}'/>", False, ("modify", "bad-request", None)),
        (
            "get",
            f"<pubsub xmlns='{PUBSUB}'><nonsense/></pubsub>",
            False,
            ("modify", "bad-request", None),
        ),
        (
            "get",
            f"<pubsub xmlns='{PUBSUB}'><items xmlns='urn:other' node='n'/></pubsub>",
            False,
            ("modify", "bad-request", None),
        ),
    ],
)
def test_errors(
    login: Any,
    srv: ServerProcess,
    ca_file: str,
    kind: str,
    payload: str,
    to_other: bool,
    expected: tuple[str, str, str | None],
) -> None:
    owner, other = login(), login()
    befriend(owner, other)
    for n in range(2):
        assert owner.publish("n", f"<v xmlns='urn:v'>{n}</v>", str(n)).get("type") == "result"
    requester = other if to_other else owner
    reply = requester.iq(kind, payload, to=owner.bare)
    assert error_of(reply) == expected
    assert reply.get("from") == owner.bare and reply.get("to") == requester.full
    if expected[2] == "unsupported":
        assert reply.find(f"{{{CLIENT}}}error/{{{ERRORS}}}unsupported").get("feature")
    # Nothing was lost.
    ids = [i.get("id") for i in get_items(owner, owner, "n").iter(f"{{{PUBSUB}}}item")]
    assert ids == ["1"]
    assert_still_serving(srv, ca_file, user=owner.name)


def test_pubsub_to_the_server_domain(login: Any) -> None:
    alice = login()
    reply = alice.iq("get", f"<pubsub xmlns='{PUBSUB}'><items node='n'/></pubsub>", to="localhost")
    assert error_of(reply) == ("cancel", "service-unavailable", None)
    reply = alice.iq(
        "get", f"<pubsub xmlns='{PUBSUB}'><items node='n'/></pubsub>", to="nobody@localhost"
    )
    assert error_of(reply) == ("cancel", "service-unavailable", None)


def test_hostile_caps_and_payloads(login: Any, srv: ServerProcess, ca_file: str) -> None:
    alice = login()
    # A caps query answered with garbage, an error, or not at all: no interest, no harm.
    alice.send(f"<presence><c xmlns='{CAPS}' hash='sha-1' node='x' ver='garbage='/></presence>")
    query = next_query(alice)
    alice.send(f"<iq type='error' id='{query.get('id')}' to='localhost'/>")
    settle(alice.c)
    alice.send(f"<presence><c xmlns='{CAPS}' hash='md2' node='x' ver='y'/></presence>")
    query = next_query(alice)
    alice.send(
        f"<iq type='result' id='{query.get('id')}' to='localhost'><query xmlns='{INFO}'>"
        "<feature var='a'/><feature var='a'/><feature var='+notify'/></query></iq>"
    )
    settle(alice.c)
    alice.send(f"<presence><c xmlns='{CAPS}' node='x'/></presence>")  # no ver
    assert not any(is_caps_query(el) for el in settle(alice.c))
    # Deep and odd payloads are stored as they came.
    deep = "<a xmlns='urn:deep'>" + "<b>" * 30 + "</b>" * 30 + "</a>"
    assert alice.publish("deep", deep).get("type") == "result"
    odd = "<p:x xmlns:p='urn:odd' p:attr='&amp;&lt;'>&#x1F600;</p:x>"
    assert alice.publish("odd", odd, "i").get("type") == "result"
    stored = get_items(alice, alice, "odd").find(".//{urn:odd}x")
    assert stored.get("{urn:odd}attr") == "&<" and stored.text == "\U0001f600"
    assert_still_serving(srv, ca_file, user=alice.name)


# --- limits ----------------------------------------------------------------------------------


def test_limits(login: Any) -> None:
    alice = login()
    for n in range(6):
        assert alice.publish(f"node{n}", "<v xmlns='urn:v'/>").get("type") == "result"
    assert error_of(alice.publish("node6", "<v xmlns='urn:v'/>")) == (
        "modify",
        "policy-violation",
        "max-nodes-exceeded",
    )
    reply = alice.iq("set", f"<pubsub xmlns='{PUBSUB}'><create node='node7'/></pubsub>")
    assert error_of(reply) == ("modify", "policy-violation", "max-nodes-exceeded")
    # The account quota (12000 bytes of payloads): items of ~1900 bytes, max_items 10.
    configure(alice, "node0", max_items="10")
    big = f"<v xmlns='urn:v'>{'y' * 1900}</v>"
    outcomes = [alice.publish("node0", big, f"b{n}").get("type") for n in range(8)]
    assert outcomes[:6] == ["result"] * 6 and "error" in outcomes
    reply = alice.publish("node0", big, "over")
    assert error_of(reply) == ("modify", "policy-violation", None)
    # Freeing space (purge) lets publishing go on.
    purge = alice.iq("set", f"<pubsub xmlns='{OWNER}'><purge node='node0'/></pubsub>")
    assert purge.get("type") == "result"
    assert alice.publish("node0", big, "after").get("type") == "result"
    # Deleting a node frees a node slot.
    delete = alice.iq("set", f"<pubsub xmlns='{OWNER}'><delete node='node5'/></pubsub>")
    assert delete.get("type") == "result"
    assert alice.publish("node6", "<v xmlns='urn:v'/>").get("type") == "result"


# --- caps (XEP-0115) -------------------------------------------------------------------------


def test_caps_hash_verification(login: Any) -> None:
    """A verified ver is cached for everyone; one whose hash does not verify is trusted for
    its own session only (§5.4.3.9) and asked again of the next client announcing it."""
    alice = login()
    node = "urn:example:verify"
    features = [CAPS, INFO, f"{node}+notify", "urn:example:verify:bad"]
    wrong = caps_ver([CAPS, INFO])  # a real hash, of other features
    announce = f"<presence><c xmlns='{CAPS}' hash='sha-1' node='{CAPS_NODE}' ver='{wrong}'/>"
    first = login(alice.name, "first")
    first.send(announce + "</presence>")
    first.send(disco_answer(next_query(first), features))
    settle(first.c)
    second = login(alice.name, "second")
    second.send(announce + "</presence>")
    second.send(disco_answer(next_query(second), features))  # asked again: not cached
    settle(second.c)
    alice.publish(node, f"<v xmlns='{node}'/>")
    assert len(events(sync(first.c), node)) == 1  # its own answer counts for itself
    assert len(events(sync(second.c), node)) == 1

    # Verified: the next client with the same ver is not asked.
    good = [CAPS, INFO, f"{node}+notify", "urn:example:verify:good"]
    third, fourth = login(alice.name, "third"), login(alice.name, "fourth")
    ver = caps_ver(good)
    third.send(
        f"<presence><c xmlns='{CAPS}' hash='sha-1' node='{CAPS_NODE}' ver='{ver}'/></presence>"
    )
    third.send(disco_answer(next_query(third), good))
    settle(third.c)
    fourth.send(
        f"<presence><c xmlns='{CAPS}' hash='sha-1' node='{CAPS_NODE}' ver='{ver}'/></presence>"
    )
    assert not any(is_caps_query(el) for el in settle(fourth.c))
    alice.publish(node, f"<v xmlns='{node}'/>")
    assert len(events(sync(fourth.c), node)) == 1


def test_caps_query_in_flight_is_shared(login: Any) -> None:
    alice = login()
    node = "urn:example:shared"
    features = [CAPS, INFO, f"{node}+notify"]
    ver = caps_ver(features)
    presence = (
        f"<presence><c xmlns='{CAPS}' hash='sha-1' node='{CAPS_NODE}' ver='{ver}'/></presence>"
    )
    first, second = login(alice.name, "one"), login(alice.name, "two")
    first.send(presence)
    query = next_query(first)
    second.send(presence)
    assert not any(is_caps_query(el) for el in settle(second.c))  # waits for the first
    first.send(disco_answer(query, features))
    settle(first.c)
    settle(second.c)
    alice.publish(node, f"<v xmlns='{node}'/>")
    assert len(events(sync(first.c), node)) == 1
    assert len(events(sync(second.c), node)) == 1


def test_same_caps_again_while_the_query_is_in_flight(login: Any) -> None:
    # Profanity sends its initial presence twice with the same caps, back to back: one
    # disco#info query for the node#ver, its answer used (XEP-0115 §8.2: the association
    # is learnt once within a presence session), not a second query for what is asked.
    alice, bob = login(), login()
    befriend(alice, bob)
    node = "urn:example:twice"
    alice.publish(node, f"<v xmlns='{node}'>last</v>")
    features = [CAPS, INFO, f"{node}+notify"]
    presence = (
        f"<presence><c xmlns='{CAPS}' hash='sha-1' node='{CAPS_NODE}' "
        f"ver='{caps_ver(features)}'/></presence>"
    )
    bob.send(presence)
    bob.send(presence)
    query = next_query(bob)
    seen = settle(bob.c)
    assert not any(is_caps_query(el) for el in seen)
    bob.send(disco_answer(query, features))
    # the answer counts: the last item of the node wanted comes (XEP-0163 §4.3.4)
    assert len(events(seen + settle(bob.c), node)) == 1


def test_caps_change_brings_last_items(login: Any) -> None:
    alice, bob = login(), login()
    befriend(alice, bob)
    alice.publish(TUNE, tune("now"))
    alice.publish(MOOD, f"<mood xmlns='{MOOD}'><calm/></mood>")
    assert item_titles(bob.available((TUNE,))) == ["now"]
    later = bob.available((TUNE, MOOD))  # new interest: only the new node's last item
    assert [e.get("node") for e in events(later)] == [MOOD]


# --- subscriptions change --------------------------------------------------------------------


def test_subscription_gained_and_lost(login: Any) -> None:
    alice, bob = login(), login()
    alice.available((TUNE,))
    bob.available((TUNE,))
    alice.publish(TUNE, tune("private"))
    assert events(received(bob, alice)) == []
    # bob asks, alice approves: bob may now see alice's presence, and her last tune.
    bob.send(f"<presence type='subscribe' to='{alice.bare}'/>")
    sync(bob.c)
    alice.send(f"<presence type='subscribed' to='{bob.bare}'/>")
    sync(alice.c)
    assert item_titles(sync(bob.c)) == ["private"]
    alice.publish(TUNE, tune("shared"))
    assert item_titles(received(bob, alice)) == ["shared"]
    # alice cancels bob's subscription: no more notifications.
    alice.send(f"<presence type='unsubscribed' to='{bob.bare}'/>")
    sync(alice.c)
    sync(bob.c)
    alice.publish(TUNE, tune("gone"))
    assert events(received(bob, alice)) == []
    assert error_of(get_items(bob, alice, TUNE))[1] == "not-authorized"


def test_unavailable_then_available_again(login: Any) -> None:
    alice, bob = login(), login()
    befriend(alice, bob)
    alice.publish(TUNE, tune("still"))
    assert item_titles(bob.available((TUNE,))) == ["still"]
    bob.send("<presence type='unavailable'/>")
    sync(bob.c)
    alice.publish(TUNE, tune("while away"))
    assert events(received(bob, alice)) == []
    assert item_titles(bob.available((TUNE,))) == ["while away"]  # initial again


def test_delete_and_purge_notify(login: Any) -> None:
    alice, bob = login(), login()
    befriend(alice, bob)
    bob.available((TUNE,))
    alice.publish(TUNE, tune("a"))
    sync(bob.c)
    reply = alice.iq("set", f"<pubsub xmlns='{OWNER}'><purge node='{TUNE}'/></pubsub>")
    assert reply.get("type") == "result"
    assert [e.tag for e in events(received(bob, alice), TUNE)] == [f"{{{EVENT}}}purge"]
    assert list(get_items(alice, alice, TUNE).iter(f"{{{PUBSUB}}}item")) == []
    reply = alice.iq("set", f"<pubsub xmlns='{OWNER}'><delete node='{TUNE}'/></pubsub>")
    assert reply.get("type") == "result"
    assert [e.tag for e in events(received(bob, alice), TUNE)] == [f"{{{EVENT}}}delete"]
    assert error_of(get_items(alice, alice, TUNE))[1] == "item-not-found"
    affiliations = alice.iq("get", f"<pubsub xmlns='{PUBSUB}'><affiliations/></pubsub>")
    assert list(affiliations.iter(f"{{{PUBSUB}}}affiliation")) == []


# --- storage ---------------------------------------------------------------------------------


def test_persists_across_restart_and_goes_with_the_account(make_server: Any, ca_file: str) -> None:
    from fastxmpp.storage.lmdb_store import Storage
    from fastxmpp.storage.pep import PepStore

    srv = make_server()
    add_accounts(srv, ["alice", "alice2"])
    srv.start()
    opened: list[RawClient] = []
    try:
        for name in ("alice", "alice2"):
            user = User(connect(srv, ca_file, opened, name), name, "r")
            assert user.publish(TUNE, tune(name), "t").get("type") == "result"
            options = publish_options(access_model="whitelist")
            conference = f"<conference xmlns='{BOOKMARKS}'/>"
            assert user.publish(BOOKMARKS, conference, "r@m", options).get("type") == "result"
            user.c.close()
        srv.stop()
        srv.start()
        alice = User(connect(srv, ca_file, opened, "alice"), "alice", "r")
        assert [t.text for t in get_items(alice, alice, TUNE).iter(f"{{{TUNE}}}title")] == ["alice"]
        assert config_values(alice, BOOKMARKS)["pubsub#access_model"] == ["whitelist"]
        alice.c.close()
    finally:
        for c in opened:
            c.close()
        srv.stop()
    result = run_cli("deluser", "alice@localhost", config=srv.config)
    assert result.returncode == 0, result.stderr
    with Storage(srv.data_dir) as storage:
        store = PepStore(storage)
        assert store.nodes("localhost", "alice") == []
        assert store.usage("localhost", "alice") == 0
        # storage:bookmarks: the XEP-0048 form the bookmarks module keeps in sync.
        assert sorted(n.name for n in store.nodes("localhost", "alice2")) == sorted(
            [BOOKMARKS, TUNE, "storage:bookmarks"]
        )


# --- a real client ---------------------------------------------------------------------------


class Slix(ClientXMPP):
    def __init__(self, jid: str, ca_file: str) -> None:
        super().__init__(jid, PASSWORD)
        self.ca_certs = ca_file
        self.enable_direct_tls = False
        self.enable_plaintext = False
        self.enable_starttls = True
        for plugin in ("xep_0030", "xep_0060", "xep_0115", "xep_0163", "xep_0118", "xep_0084"):
            self.register_plugin(plugin)
        self.tunes: asyncio.Queue[Any] = asyncio.Queue()
        self.avatars: asyncio.Queue[Any] = asyncio.Queue()
        self.ready = asyncio.get_running_loop().create_future()
        self.add_event_handler("session_start", self._started)
        self.add_event_handler("user_tune_publish", self.tunes.put_nowait)
        self.add_event_handler("avatar_metadata_publish", self.avatars.put_nowait)

    async def _started(self, _event: Any) -> None:
        self.send_presence()
        if not self.ready.done():
            self.ready.set_result(True)

    async def online(self, port: int) -> None:
        self.connect("127.0.0.1", port)
        await asyncio.wait_for(self.ready, 20)


async def test_slixmpp_tune_and_avatar(
    srv: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    names = [next(_fresh) for _ in range(2)]
    raw = [User(connect(srv, ca_file, clients, name), name, "r") for name in names]
    befriend(*raw)
    for user in raw:
        user.c.close()
    alice = Slix(f"{names[0]}@localhost/slix", ca_file)
    bob = Slix(f"{names[1]}@localhost/slix", ca_file)
    try:
        await alice.online(srv.port)
        await alice.plugin["xep_0118"].publish_tune(artist="Gerald Finzi", title="Introduction")
        await bob.online(srv.port)
        # The last published item, once the server has learnt bob's caps.
        first = await asyncio.wait_for(bob.tunes.get(), 15)
        assert first["from"].bare == alice.boundjid.bare
        assert first["pubsub_event"]["items"]["item"]["tune"]["title"] == "Introduction"
        await alice.plugin["xep_0118"].publish_tune(artist="Gerald Finzi", title="Allegro")
        live = await asyncio.wait_for(bob.tunes.get(), 15)
        assert live["pubsub_event"]["items"]["item"]["tune"]["title"] == "Allegro"

        data = b"\x89PNG not really an image"
        avatar_id = hashlib.sha1(data).hexdigest()
        await alice.plugin["xep_0084"].publish_avatar(data)
        await alice.plugin["xep_0084"].publish_avatar_metadata(
            [{"id": avatar_id, "type": "image/png", "bytes": len(data)}]
        )
        meta = await asyncio.wait_for(bob.avatars.get(), 15)
        assert meta["pubsub_event"]["items"]["item"]["id"] == avatar_id
        fetched = await bob.plugin["xep_0084"].retrieve_avatar(alice.boundjid.bare, avatar_id)
        assert fetched["pubsub"]["items"]["item"]["avatar_data"]["value"] == data
    finally:
        for client in (alice, bob):
            client.disconnect()
        await asyncio.sleep(0.2)


def test_send_last_published_item_option(login: Any) -> None:
    alice, bob = login(), login()
    alice.publish(TUNE, tune("on sub"), options=publish_options(send_last_published_item="on_sub"))
    alice.publish(MOOD, f"<mood xmlns='{MOOD}'><sad/></mood>")
    configure(alice, MOOD, send_last_published_item="never")
    bob.available((TUNE, MOOD))
    # The implicit subscription starts: "on_sub" sends, "never" does not.
    bob.send(f"<presence type='subscribe' to='{alice.bare}'/>")
    sync(bob.c)
    alice.send(f"<presence type='subscribed' to='{bob.bare}'/>")
    sync(alice.c)
    got = sync(bob.c)
    assert item_titles(got) == ["on sub"] and events(got, MOOD) == []
    bob2 = login(bob.name, "two")
    assert events(bob2.available((TUNE, MOOD))) == []  # presence alone: neither


# --- the XEP-0115 algorithm on its own ---------------------------------------------------------


def test_caps_hash_examples() -> None:
    from fastxmpp.modules.pep_caps import caps_hash, notify_nodes

    simple = etree.fromstring(
        f"<query xmlns='{INFO}'><identity category='client' name='Exodus 0.9.1' type='pc'/>"
        f"<feature var='{CAPS}'/><feature var='{INFO}'/><feature var='{ITEMS}'/>"
        "<feature var='http://jabber.org/protocol/muc'/></query>"
    )
    assert caps_hash("sha-1", simple) == "QgayPKawpkPSDYmwT/WM94uAlu0="  # §5.2
    form = (
        f"<x xmlns='{DATA}' type='result'>"
        "<field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value>"
        "</field><field var='ip_version' type='text-multi'><value>ipv4</value>"
        "<value>ipv6</value></field><field var='os'><value>Mac</value></field>"
        "<field var='os_version'><value>10.5.1</value></field>"
        "<field var='software'><value>Psi</value></field>"
        "<field var='software_version'><value>0.11</value></field></x>"
    )
    complex_answer = (
        f"<query xmlns='{INFO}'>"
        "<identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>"
        "<identity xml:lang='el' category='client' name='\u03a8 0.11' type='pc'/>"
        f"<feature var='{CAPS}'/><feature var='{INFO}'/><feature var='{ITEMS}'/>"
        f"<feature var='http://jabber.org/protocol/muc'/>{{}}</query>"
    )
    complex_query = etree.fromstring(complex_answer.format(form))
    assert caps_hash("sha-1", complex_query) == "q07IKJEyjvHSyhy//CH0CxmKi8w="  # §5.3
    # §5.4.3.6: a form whose FORM_TYPE is not hidden is left out; §5.4.3.5: two forms of
    # one FORM_TYPE make the answer ill-formed.
    not_hidden = form.replace("type='hidden'", "type='text-single'")
    plain = etree.fromstring(complex_answer.format(not_hidden))
    assert caps_hash("sha-1", plain) == caps_hash(
        "sha-1", etree.fromstring(complex_answer.format(""))
    )
    assert caps_hash("sha-1", etree.fromstring(complex_answer.format(form + form))) is None
    duplicate = etree.fromstring(
        f"<query xmlns='{INFO}'><feature var='a'/><feature var='a'/></query>"
    )
    assert caps_hash("sha-1", duplicate) is None
    assert caps_hash("md2", simple) is None  # unknown: never verified
    assert len(caps_hash("sha-256", simple) or "") == 44
    notify = etree.fromstring(
        f"<query xmlns='{INFO}'><feature var='{TUNE}+notify'/><feature var='+notify'/>"
        f"<feature var='{TUNE}'/></query>"
    )
    assert notify_nodes(notify) == {TUNE}


def test_blocked_contact_gets_nothing(login: Any) -> None:
    """XEP-0163 §4.3.3: no notifications to a subscriber the owner blocks (XEP-0191)."""
    alice, bob = login(), login()
    befriend(alice, bob)
    bob.available((TUNE,))
    block = f"<block xmlns='urn:xmpp:blocking'><item jid='{bob.bare}'/></block>"
    assert alice.iq("set", block).get("type") == "result"
    alice.publish(TUNE, tune("hidden"))
    assert events(received(bob, alice)) == []
    bob2 = login(bob.name, "two")
    assert events(bob2.available((TUNE,))) == []
    unblock = f"<unblock xmlns='urn:xmpp:blocking'><item jid='{bob.bare}'/></unblock>"
    assert alice.iq("set", unblock).get("type") == "result"
    alice.publish(TUNE, tune("seen"))
    assert item_titles(received(bob, alice)) == ["seen"]


def test_submitting_the_form_as_received(login: Any) -> None:
    """What Conversations does after precondition-not-met: take the form, change a field,
    submit it whole."""
    alice = login()
    node = "urn:example:omemo"
    alice.publish(node, f"<list xmlns='{node}'/>")
    reply = alice.iq("get", f"<pubsub xmlns='{OWNER}'><configure node='{node}'/></pubsub>")
    x = reply.find(f"{{{OWNER}}}pubsub/{{{OWNER}}}configure/{{{DATA}}}x")
    x.set("type", "submit")
    for field in x.findall(f"{{{DATA}}}field"):
        for option in field.findall(f"{{{DATA}}}option"):
            field.remove(option)
        if field.get("var") == "pubsub#access_model":
            field.find(f"{{{DATA}}}value").text = "open"
    form = etree.tostring(x).decode()
    reply = alice.iq(
        "set", f"<pubsub xmlns='{OWNER}'><configure node='{node}'>{form}</configure></pubsub>"
    )
    assert reply.get("type") == "result", etree.tostring(reply)
    assert config_values(alice, node)["pubsub#access_model"] == ["open"]
    options = publish_options(access_model="open")
    assert alice.publish(node, f"<list xmlns='{node}'/>", options=options).get("type") == "result"


def test_node_disco_info(login: Any) -> None:
    alice, bob, stranger = login(), login(), login()
    befriend(alice, bob)
    alice.publish(TUNE, tune("x"))
    reply = bob.iq("get", f"<query xmlns='{INFO}' node='{TUNE}'/>", to=alice.bare)
    query = reply.find(f"{{{INFO}}}query")
    assert query.get("node") == TUNE
    identity = query.find(f"{{{INFO}}}identity")
    assert (identity.get("category"), identity.get("type")) == ("pubsub", "leaf")
    meta = {f.get("var"): f.findtext(f"{{{DATA}}}value") for f in query.iter(f"{{{DATA}}}field")}
    assert meta["FORM_TYPE"] == PUBSUB + "#meta-data"
    assert meta["pubsub#access_model"] == "presence" and meta["pubsub#owner"] == alice.bare
    missing = bob.iq("get", f"<query xmlns='{INFO}' node='missing'/>", to=alice.bare)
    assert error_of(missing) == ("cancel", "item-not-found", None)
    hidden = stranger.iq("get", f"<query xmlns='{INFO}' node='{TUNE}'/>", to=alice.bare)
    assert error_of(hidden)[1] == "service-unavailable"  # XEP-0030 §7 for accounts


def test_node_disco_items(login: Any) -> None:
    """XEP-0060 §5.5: disco#items of a node lists its items (name = item id, no node), to
    whoever may retrieve them; XEP-0030 §8: any other node of an account is an empty result,
    as for an account that does not exist, never an error telling the two apart."""
    alice, bob, stranger = login(), login(), login()
    befriend(alice, bob)
    alice.publish(MOOD, "<mood xmlns='http://jabber.org/protocol/mood'><happy/></mood>", "m1")
    alice.iq(
        "set",
        f"<pubsub xmlns='{OWNER}'><configure node='{MOOD}'>"
        f"{options_form(PUBSUB + '#node_config', max_items='5')}</configure></pubsub>",
    )
    alice.publish(MOOD, "<mood xmlns='http://jabber.org/protocol/mood'><sad/></mood>", "m2")
    for asker in (alice, bob):
        reply = asker.iq("get", f"<query xmlns='{ITEMS}' node='{MOOD}'/>", to=alice.bare)
        query = reply.find(f"{{{ITEMS}}}query")
        assert query.get("node") == MOOD
        listed = [(i.get("jid"), i.get("name"), i.get("node")) for i in query]
        assert sorted(listed) == [(alice.bare, "m1", None), (alice.bare, "m2", None)]
    for asker, node in ((stranger, MOOD), (alice, "missing"), (bob, "missing")):
        reply = asker.iq("get", f"<query xmlns='{ITEMS}' node='{node}'/>", to=alice.bare)
        assert reply.get("type") == "result", etree.tostring(reply)
        assert len(reply.find(f"{{{ITEMS}}}query")) == 0


def test_presence_update_without_caps_keeps_the_interest(login: Any) -> None:
    """XEP-0115 §8.4: presence may come without the caps annotation (receivers "MUST NOT
    expect an annotation on every presence"): a status update without <c/> leaves the
    session's +notify interest as its last caps said; only caps that change it do."""
    alice, bob = login(), login()
    befriend(alice, bob)
    bob.available((TUNE,))
    bob.send("<presence><show>away</show><status>lunch</status></presence>")
    sync(bob.c)
    alice.publish(TUNE, tune("after the update"))
    assert item_titles(received(bob, alice)) == ["after the update"]
    bob.available(())  # caps that no longer ask for tunes
    alice.publish(TUNE, tune("not wanted"))
    assert events(received(bob, alice)) == []


def test_items_that_do_not_exist_are_an_empty_result(login: Any) -> None:
    """XEP-0060 §6.5.9.11: a node that does not exist is item-not-found, but "if there are no
    items at the node or the requested items do not exist", an empty <items/> result."""
    alice, bob = login(), login()
    befriend(alice, bob)
    alice.publish(TUNE, tune("one"), "t1")
    for asker in (alice, bob):
        reply = get_items(asker, alice, TUNE, body="<item id='gone'/>")
        assert reply.get("type") == "result", etree.tostring(reply)
        items = reply.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}items")
        assert items.get("node") == TUNE and len(items) == 0
    assert error_of(get_items(alice, alice, "urn:example:none"))[1] == "item-not-found"
