"""XEP-0016 privacy lists over real sockets: every protocol flow of §2.3-§2.8 with its errors,
enforcement of each stanza kind in each direction by jid, group, subscription and
fall-through items, ordering, active versus default lists, offline storage, persistence,
account deletion, limits and hostile input; and slixmpp's xep_0016 plugin."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import (
    PASSWORD,
    FreshNames,
    ServerProcess,
    assert_still_serving,
    module_server,
    run_cli,
)
from lxml import etree
from slixmpp import ClientXMPP
from test_roster import reply_to, roster_set, sync
from xmpp_raw import CLIENT, STANZA_ERRORS, stanza_error

NS = "jabber:iq:privacy"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
MESSAGE = f"{{{CLIENT}}}message"
PRESENCE = f"{{{CLIENT}}}presence"
IQ = f"{{{CLIENT}}}iq"
ACCOUNTS = 120
MAX_LISTS = 3
MAX_ITEMS = 5


POOL = FreshNames("p", ACCOUNTS)


@pytest.fixture(scope="module")
def srv(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(
        ca,
        tmp_path_factory,
        POOL,
        f"[privacy]\nmax_lists = {MAX_LISTS}\nmax_items = {MAX_ITEMS}\n"
        "[limits]\nmax_unauthenticated_per_ip = 200\n",
    )


@pytest.fixture
def users() -> Iterator[str]:
    return POOL.names()


class User:
    """One connected resource of an account."""

    def __init__(self, srv: ServerProcess, ca_file: str, name: str, resource: str) -> None:
        self.c = srv.client()
        self.c.login(ca_file, name, PASSWORD, resource)
        self.name = name
        self.bare = f"{name}@localhost"
        self.full = f"{self.bare}/{resource}"

    def send(self, data: str) -> None:
        self.c.send(data)


_ids = itertools.count()


def iq(user: User, itype: str, payload: str, to: str | None = None) -> Any:
    """Send an iq and return the answer (what came before it stays queued)."""
    iq_id = f"q{next(_ids)}"
    to_attr = f" to='{to}'" if to else ""
    user.send(f"<iq type='{itype}' id='{iq_id}'{to_attr}>{payload}</iq>")
    return reply_to(user.c, iq_id)


def privacy(user: User, itype: str, inner: str = "") -> Any:
    return iq(user, itype, f"<query xmlns='{NS}'>{inner}</query>")


def set_list(user: User, name: str, items: str) -> Any:
    return privacy(user, "set", f"<list name='{name}'>{items}</list>")


def activate(user: User, name: str | None) -> Any:
    return privacy(user, "set", "<active/>" if name is None else f"<active name='{name}'/>")


def make_default(user: User, name: str | None) -> Any:
    return privacy(user, "set", "<default/>" if name is None else f"<default name='{name}'/>")


def ok(reply: Any) -> Any:
    assert reply.get("type") == "result", etree.tostring(reply)
    return reply


def names(user: User) -> tuple[str | None, str | None, list[str]]:
    """(active, default, list names) from a get with an empty query (§2.3)."""
    query = ok(privacy(user, "get")).find(f"{{{NS}}}query")
    active = query.find(f"{{{NS}}}active")
    default = query.find(f"{{{NS}}}default")
    return (
        None if active is None else active.get("name"),
        None if default is None else default.get("name"),
        [el.get("name") for el in query.findall(f"{{{NS}}}list")],
    )


def list_items(user: User, name: str) -> list[tuple[dict[str, str], list[str]]]:
    reply = ok(privacy(user, "get", f"<list name='{name}'/>"))
    items = reply.findall(f"{{{NS}}}query/{{{NS}}}list/{{{NS}}}item")
    return [(dict(item.attrib), [etree.QName(c).localname for c in item]) for item in items]


def pushes(elements: list[Any]) -> list[str]:
    """Names of the privacy lists pushed (§2.2 rule 10) among `elements`."""
    out = []
    for el in elements:
        if el.tag == IQ and el.get("type") == "set":
            for lst in el.findall(f"{{{NS}}}query/{{{NS}}}list"):
                out.append(lst.get("name"))
    return out


def messages(elements: list[Any]) -> list[tuple[str | None, str | None]]:
    return [
        (el.get("from"), el.findtext(f"{{{CLIENT}}}body")) for el in elements if el.tag == MESSAGE
    ]


def presences(elements: list[Any]) -> list[tuple[str | None, str | None]]:
    return [(el.get("from"), el.get("type")) for el in elements if el.tag == PRESENCE]


def subscribe_both(a: User, b: User) -> None:
    """Mutual presence subscription, by protocol (RFC 6121 §3.1)."""
    for x, y in ((a, b), (b, a)):
        x.send(f"<presence type='subscribe' to='{y.bare}'/>")
        sync(x.c)
        y.send(f"<presence type='subscribed' to='{x.bare}'/>")
        sync(y.c)
    sync(a.c)
    sync(b.c)


def error_of(user: User) -> tuple[str | None, str | None]:
    """(kind, condition) of the next error stanza `user` receives (after a sync)."""
    for el in sync(user.c):
        if el.get("type") == "error":
            return etree.QName(el).localname, stanza_error(el)
    return None, None


@pytest.fixture
def online(srv: ServerProcess, ca_file: str) -> Iterator[Any]:
    opened: list[User] = []

    def login(name: str, resource: str = "r", available: bool = True) -> User:
        user = User(srv, ca_file, name, resource)
        opened.append(user)
        if available:
            user.send("<presence/>")
            sync(user.c)
        return user

    yield login
    for user in opened:
        user.c.close()


# --- protocol (§2.3-§2.8) ------------------------------------------------------------------


def test_disco_features(online: Any, users: Iterator[str]) -> None:
    a = online(next(users))
    reply = ok(iq(a, "get", f"<query xmlns='{DISCO_INFO}'/>", to="localhost"))
    features = {f.get("var") for f in reply.iter(f"{{{DISCO_INFO}}}feature")}
    assert {NS, "urn:xmpp:blocking"} <= features


def test_no_lists_at_first(online: Any, users: Iterator[str]) -> None:
    a = online(next(users))
    assert names(a) == (None, None, [])
    assert stanza_error(privacy(a, "get", "<list name='public'/>")) == "item-not-found"


def test_create_get_edit_with_pushes(online: Any, users: Iterator[str]) -> None:
    name = next(users)
    a1, a2 = online(name, "one"), online(name, "two")
    ok(
        set_list(
            a1,
            "public",
            "<item type='jid' value='tybalt@example.com' action='deny' order='1'/>"
            "<item action='allow' order='2'/>",
        )
    )
    # §2.6: a push with the list's name only, to every connected resource.
    assert pushes(sync(a1.c)) == ["public"]
    assert pushes(sync(a2.c)) == ["public"]
    assert names(a1) == (None, None, ["public"])
    assert list_items(a2, "public") == [
        ({"type": "jid", "value": "tybalt@example.com", "action": "deny", "order": "1"}, []),
        ({"action": "allow", "order": "2"}, []),
    ]
    # §2.6: an edit sends the whole list, not a delta; items come back in order.
    ok(
        set_list(
            a2,
            "public",
            "<item action='allow' order='68'/>"
            "<item type='jid' value='paris@example.org' action='deny' order='5'>"
            "<message/><presence-in/></item>"
            "<item type='subscription' value='none' action='deny' order='3'><iq/></item>",
        )
    )
    assert pushes(sync(a1.c)) == ["public"]
    assert list_items(a1, "public") == [
        ({"type": "subscription", "value": "none", "action": "deny", "order": "3"}, ["iq"]),
        (
            {"type": "jid", "value": "paris@example.org", "action": "deny", "order": "5"},
            ["message", "presence-in"],
        ),
        ({"action": "allow", "order": "68"}, []),
    ]


def test_get_errors(online: Any, users: Iterator[str]) -> None:
    a = online(next(users))
    ok(set_list(a, "public", "<item action='allow' order='1'/>"))
    # §2.3: an unknown list; more than one list at a time.
    assert stanza_error(privacy(a, "get", "<list name='The Empty Set'/>")) == "item-not-found"
    several = "<list name='public'/><list name='private'/>"
    assert stanza_error(privacy(a, "get", several)) == "bad-request"


def test_active_list(online: Any, users: Iterator[str]) -> None:
    name = next(users)
    a1, a2 = online(name, "one"), online(name, "two")
    ok(set_list(a1, "special", "<item action='allow' order='1'/>"))
    # §2.4: an unknown list.
    assert stanza_error(activate(a1, "The Empty Set")) == "item-not-found"
    ok(activate(a1, "special"))
    assert names(a1) == ("special", None, ["special"])
    assert names(a2) == (None, None, ["special"])  # per session
    ok(activate(a1, None))  # §2.4: decline
    assert names(a1) == (None, None, ["special"])


def test_default_list_and_its_conflicts(online: Any, users: Iterator[str]) -> None:
    name = next(users)
    a1, a2 = online(name, "one"), online(name, "two")
    for lst in ("public", "special"):
        ok(set_list(a1, lst, "<item action='allow' order='1'/>"))
    assert stanza_error(make_default(a1, "The Empty Set")) == "item-not-found"
    ok(make_default(a1, "public"))  # no default yet: nobody uses one
    assert names(a2) == (None, "public", ["public", "special"])
    # §2.5: the default is in use by another resource (one without an active list).
    error = make_default(a1, "special")
    assert stanza_error(error) == "conflict"
    assert error.find(f"{{{CLIENT}}}error").get("type") == "cancel"
    assert stanza_error(make_default(a1, None)) == "conflict"
    assert names(a1)[1] == "public"
    # Once the other resource has an active list the default applies to it no more.
    ok(activate(a2, "special"))
    ok(make_default(a1, "special"))
    assert names(a1)[1] == "special"
    ok(make_default(a1, None))  # §2.5: decline
    assert names(a2) == ("special", None, ["public", "special"])


def test_remove_list_and_its_conflicts(online: Any, users: Iterator[str]) -> None:
    name = next(users)
    a1, a2 = online(name, "one"), online(name, "two")
    for lst in ("public", "private", "special"):
        ok(set_list(a1, lst, "<item action='allow' order='1'/>"))
    sync(a2.c)
    # §2.8: an unknown list.
    assert stanza_error(set_list(a1, "The Empty Set", "")) == "item-not-found"
    # Active for another resource: conflict.
    ok(activate(a2, "private"))
    assert stanza_error(set_list(a1, "private", "")) == "conflict"
    # Default, and another resource without an active list: conflict.
    ok(make_default(a1, "public"))
    ok(activate(a2, None))
    assert stanza_error(set_list(a1, "public", "")) == "conflict"
    # Active for the sending resource only: removed, and no longer active there.
    ok(activate(a1, "special"))
    sync(a2.c)
    ok(set_list(a1, "special", ""))
    assert pushes(sync(a2.c)) == ["special"]
    assert names(a1) == (None, "public", ["public", "private"])
    # The default, used by nobody else any more: removed, and no default left.
    a2.c.close()
    sync(a1.c)
    ok(set_list(a1, "public", ""))
    assert names(a1) == (None, None, ["private"])


@pytest.mark.parametrize(
    ("query", "condition"),
    [
        ("<list name='x'><item order='1'/></list>", "bad-request"),  # no action
        ("<list name='x'><item action='block' order='1'/></list>", "bad-request"),
        ("<list name='x'><item action='deny'/></list>", "bad-request"),  # no order
        ("<list name='x'><item action='deny' order='-1'/></list>", "bad-request"),
        ("<list name='x'><item action='deny' order='+1'/></list>", "bad-request"),
        ("<list name='x'><item action='deny' order='4294967296'/></list>", "bad-request"),
        # §2.1: orders unique in the list
        (
            "<list name='x'><item action='deny' order='1'/><item action='allow' order='1'/></list>",
            "bad-request",
        ),
        (
            "<list name='x'><item type='room' value='a' action='deny' order='1'/></list>",
            "bad-request",
        ),
        ("<list name='x'><item type='jid' action='deny' order='1'/></list>", "bad-request"),
        (
            "<list name='x'>"
            "<item type='subscription' value='some' action='deny' order='1'/></list>",
            "bad-request",
        ),
        ("<list name='x'><item action='deny' order='1'><voice/></item></list>", "bad-request"),
        ("<list name='x'><thing/></list>", "bad-request"),
        (
            "<list name='x'><item type='jid' value='a@b@c' action='deny' order='1'/></list>",
            "jid-malformed",
        ),
        # §2.1: a group not in the roster
        (
            "<list name='x'><item type='group' value='Nobody' action='deny' order='1'/></list>",
            "item-not-found",
        ),
        ("<list><item action='deny' order='1'/></list>", "bad-request"),  # no name
        ("<active name='a'/><default name='b'/>", "bad-request"),  # §2.1: one child per set
        ("", "bad-request"),
        ("<something/>", "bad-request"),
    ],
)
def test_set_errors(online: Any, users: Iterator[str], query: str, condition: str) -> None:
    a = online(next(users))
    assert stanza_error(privacy(a, "set", query)) == condition
    assert names(a) == (None, None, [])  # nothing stored


def test_other_accounts_lists_are_forbidden(online: Any, users: Iterator[str]) -> None:
    a, b = online(next(users)), online(next(users))
    reply = iq(a, "get", f"<query xmlns='{NS}'/>", to=b.bare)
    assert stanza_error(reply) == "forbidden"


def test_limits(srv: ServerProcess, ca_file: str, online: Any, users: Iterator[str]) -> None:
    a = online(next(users))
    too_many = "".join(f"<item action='allow' order='{n}'/>" for n in range(MAX_ITEMS + 1))
    assert stanza_error(set_list(a, "big", too_many)) == "policy-violation"
    for n in range(MAX_LISTS):
        ok(set_list(a, f"l{n}", "<item action='allow' order='1'/>"))
    assert stanza_error(set_list(a, "one-more", "<item action='allow' order='1'/>")) == (
        "policy-violation"
    )
    ok(set_list(a, "l0", "<item action='deny' order='1'/>"))  # replacing one is fine
    # Hostile: a huge list far beyond the limit, and garbage items in bulk.
    huge = "".join(
        f"<item type='jid' value='u{n}@x' action='deny' order='{n}'/>" for n in range(3000)
    )
    assert stanza_error(set_list(a, "huge", huge)) == "policy-violation"
    assert stanza_error(set_list(a, "l1", "<item/>" * MAX_ITEMS)) == "bad-request"
    assert_still_serving(srv, ca_file, a.name)


# --- enforcement ----------------------------------------------------------------------------


def test_messages_by_jid(online: Any, users: Iterator[str]) -> None:
    a, b, c = online(next(users)), online(next(users)), online(next(users))
    ok(
        set_list(
            b, "m", f"<item type='jid' value='{a.bare}' action='deny' order='1'><message/></item>"
        )
    )
    ok(activate(b, "m"))
    sync(b.c)
    # §2.13: a blocked message gets service-unavailable, to the full and to the bare JID.
    for to in (b.full, b.bare):
        a.send(f"<message to='{to}' type='chat' id='m1'><body>hi</body></message>")
        assert error_of(a) == ("message", "service-unavailable")
    c.send(f"<message to='{b.bare}' type='chat'><body>from c</body></message>")
    sync(c.c)
    # Only messages are covered: an iq from a still arrives.
    a.send(f"<iq type='get' id='v1' to='{b.full}'><query xmlns='jabber:iq:version'/></iq>")
    sync(a.c)
    seen = sync(b.c)
    assert messages(seen) == [(c.full, "from c")]
    assert [el.get("id") for el in seen if el.tag == IQ] == ["v1"]
    # An error message from a blocked sender is dropped without an answer.
    a.send(f"<message to='{b.full}' type='error' id='e1'/>")
    assert error_of(a) == (None, None)


def test_iqs_by_jid(online: Any, users: Iterator[str]) -> None:
    a, b = online(next(users)), online(next(users))
    ok(set_list(b, "i", f"<item type='jid' value='{a.bare}' action='deny' order='1'><iq/></item>"))
    ok(activate(b, "i"))
    a.send(f"<iq type='get' id='v1' to='{b.full}'><query xmlns='jabber:iq:version'/></iq>")
    reply = reply_to(a.c, "v1")
    assert reply.get("type") == "error" and stanza_error(reply) == "service-unavailable"
    # §2.13: iq results and errors are dropped silently.
    a.send(f"<iq type='result' id='r1' to='{b.full}'/>")
    assert error_of(a) == (None, None)
    a.send(f"<message to='{b.full}'><body>still talking</body></message>")
    sync(a.c)
    seen = sync(b.c)
    assert messages(seen) == [(a.full, "still talking")]
    assert not [el for el in seen if el.tag == IQ and el.get("from") == a.full]


def test_iq_to_bare_jid_follows_default_list(online: Any, users: Iterator[str]) -> None:
    a, b, c = online(next(users)), online(next(users)), online(next(users))
    subscribe_both(a, b)  # XEP-0030 answers for an account to its contacts
    subscribe_both(c, b)
    ok(set_list(b, "d", f"<item type='jid' value='{a.bare}' action='deny' order='1'><iq/></item>"))
    ok(make_default(b, "d"))
    # The server answers iqs to an account's bare JID on its behalf: the default list applies.
    query = f"<query xmlns='{DISCO_INFO}'/>"
    assert stanza_error(iq(a, "get", query, to=b.bare)) == "service-unavailable"
    assert iq(c, "get", query, to=b.bare).get("type") == "result"


def test_presence_in(online: Any, users: Iterator[str]) -> None:
    a, b = online(next(users)), online(next(users))
    subscribe_both(a, b)
    ok(
        set_list(
            b,
            "p",
            f"<item type='jid' value='{a.bare}' action='deny' order='1'><presence-in/></item>",
        )
    )
    ok(activate(b, "p"))
    sync(b.c)
    a.send("<presence><show>away</show></presence>")
    a.send(f"<presence to='{b.full}'><status>directed</status></presence>")
    sync(a.c)
    assert presences(sync(b.c)) == []
    # presence-in is about notifications: messages still pass, and b's presence reaches a.
    b.send("<presence><show>dnd</show></presence>")
    sync(b.c)
    assert presences(sync(a.c)) == [(b.full, None)]


def test_presence_out(online: Any, users: Iterator[str]) -> None:
    a, b, c = online(next(users)), online(next(users)), online(next(users))
    subscribe_both(a, b)
    subscribe_both(c, b)
    ok(
        set_list(
            b,
            "p",
            f"<item type='jid' value='{a.bare}' action='deny' order='1'><presence-out/></item>",
        )
    )
    ok(activate(b, "p"))
    b.send("<presence><show>chat</show></presence>")
    sync(b.c)
    assert presences(sync(a.c)) == []
    assert presences(sync(c.c)) == [(b.full, None)]
    # A probe's answer is presence out too (RFC 6121 §4.3).
    a.send(f"<presence type='probe' to='{b.bare}'/>")
    assert presences(sync(a.c)) == []
    # Directed presence to a is a notification the list blocks: not-acceptable (§2.13).
    b.send(f"<presence to='{a.full}'/>")
    assert error_of(b) == ("presence", "not-acceptable")
    assert presences(sync(a.c)) == []


def test_block_all_both_ways(online: Any, users: Iterator[str]) -> None:
    a, b = online(next(users)), online(next(users))
    ok(set_list(b, "all", f"<item type='jid' value='{a.bare}' action='deny' order='1'/>"))
    ok(activate(b, "all"))
    # §2.12: nothing from a ...
    a.send(f"<message to='{b.full}'><body>x</body></message>")
    assert error_of(a) == ("message", "service-unavailable")
    a.send(f"<presence type='subscribe' to='{b.bare}'/>")
    sync(a.c)
    assert messages(sync(b.c)) == [] and presences(sync(b.c)) == []
    # ... and nothing to a: not-acceptable (§2.13), for every kind of stanza.
    b.send(f"<message to='{a.full}' id='out1'><body>y</body></message>")
    assert error_of(b) == ("message", "not-acceptable")
    b.send(f"<iq type='get' id='out2' to='{a.full}'><ping xmlns='urn:xmpp:ping'/></iq>")
    reply = reply_to(b.c, "out2")
    assert stanza_error(reply) == "not-acceptable"
    b.send(f"<presence type='subscribe' to='{a.bare}'/>")
    assert error_of(b) == ("presence", "not-acceptable")
    assert messages(sync(a.c)) == [] and presences(sync(a.c)) == []


def test_group_and_subscription_items(online: Any, users: Iterator[str]) -> None:
    a, b, c, d = (online(next(users)) for _ in range(4))
    subscribe_both(a, b)
    subscribe_both(c, b)
    roster_set(b.c, f"<item jid='{a.bare}'><group>Enemies</group></item>")
    ok(
        set_list(
            b,
            "g",
            "<item type='group' value='Enemies' action='deny' order='1'><message/></item>"
            "<item type='subscription' value='none' action='deny' order='2'><message/></item>",
        )
    )
    ok(activate(b, "g"))
    sync(b.c)
    for sender in (a, c, d):
        sender.send(f"<message to='{b.full}'><body>from {sender.name}</body></message>")
    assert error_of(a) == ("message", "service-unavailable")  # in group Enemies
    assert error_of(d) == ("message", "service-unavailable")  # subscription none
    assert error_of(c) == (None, None)
    assert messages(sync(b.c)) == [(c.full, f"from {c.name}")]
    # §2.2 rule 9: a roster change applies at once.
    roster_set(b.c, f"<item jid='{a.bare}'><group>Friends</group></item>")
    sync(b.c)
    a.send(f"<message to='{b.full}'><body>friends now</body></message>")
    assert error_of(a) == (None, None)
    assert messages(sync(b.c)) == [(a.full, "friends now")]


def test_order_and_fall_through(online: Any, users: Iterator[str]) -> None:
    a, b, c = online(next(users)), online(next(users)), online(next(users))
    # §2.2 rule 5: by ascending order, whatever the order of the elements.
    ok(
        set_list(
            b,
            "o",
            "<item action='deny' order='20'><message/></item>"
            f"<item type='jid' value='{a.bare}' action='allow' order='10'/>",
        )
    )
    ok(activate(b, "o"))
    a.send(f"<message to='{b.full}'><body>first</body></message>")
    c.send(f"<message to='{b.full}'><body>second</body></message>")
    assert error_of(a) == (None, None)
    assert error_of(c) == ("message", "service-unavailable")
    assert messages(sync(b.c)) == [(a.full, "first")]
    ok(
        set_list(
            b,
            "o",
            "<item action='deny' order='1'><message/></item>"
            f"<item type='jid' value='{a.bare}' action='allow' order='2'/>",
        )
    )
    # §2.2 rule 8: the new definition applies at once to the session using it.
    a.send(f"<message to='{b.full}'><body>third</body></message>")
    assert error_of(a) == ("message", "service-unavailable")
    # §2.2 rule 7: without a fall-through item, what matches nothing is allowed.
    ok(set_list(b, "o", f"<item type='jid' value='{a.bare}' action='deny' order='1'/>"))
    c.send(f"<message to='{b.full}'><body>fourth</body></message>")
    assert error_of(c) == (None, None)
    assert messages(sync(b.c)) == [(c.full, "fourth")]


def test_domain_and_resource_items(online: Any, users: Iterator[str]) -> None:
    name = next(users)
    a1, a2 = online(name, "phone"), online(name, "desk")
    b = online(next(users))
    # §2.1 matching: user@domain/resource blocks that resource only.
    ok(
        set_list(
            b, "r", f"<item type='jid' value='{a1.full}' action='deny' order='1'><message/></item>"
        )
    )
    ok(activate(b, "r"))
    a1.send(f"<message to='{b.full}'><body>phone</body></message>")
    a2.send(f"<message to='{b.full}'><body>desk</body></message>")
    assert error_of(a1) == ("message", "service-unavailable")
    assert error_of(a2) == (None, None)
    assert messages(sync(b.c)) == [(a2.full, "desk")]
    # A domain item matches every JID at the domain, but never the user's own resources nor
    # the user's own server (§2.1 note).
    ok(set_list(b, "r", "<item type='jid' value='localhost' action='deny' order='1'/>"))
    b2 = online(b.name, "second")
    a2.send(f"<message to='{b.full}'><body>desk again</body></message>")
    assert error_of(a2) == ("message", "service-unavailable")
    b2.send(f"<message to='{b.full}'><body>own resource</body></message>")
    assert error_of(b2) == (None, None)
    ok(iq(b, "get", "<ping xmlns='urn:xmpp:ping'/>", to="localhost"))
    assert messages(sync(b.c)) == [(b2.full, "own resource")]


def test_active_list_replaces_default(online: Any, users: Iterator[str]) -> None:
    a = online(next(users))
    bname = next(users)
    b1, b2 = online(bname, "one"), online(bname, "two")
    ok(set_list(b1, "strict", f"<item type='jid' value='{a.bare}' action='deny' order='1'/>"))
    ok(set_list(b1, "open", "<item action='allow' order='1'/>"))
    ok(make_default(b1, "strict"))
    ok(activate(b2, "open"))  # §2.2 rule 1: no layering of lists
    a.send(f"<message to='{b1.full}'><body>to one</body></message>")
    assert error_of(a) == ("message", "service-unavailable")
    a.send(f"<message to='{b2.full}'><body>to two</body></message>")
    assert error_of(a) == (None, None)
    # To the bare JID: each resource by its own list; b2 takes it.
    a.send(f"<message to='{b1.bare}' type='chat'><body>to both</body></message>")
    assert error_of(a) == (None, None)
    assert messages(sync(b2.c)) == [(a.full, "to two"), (a.full, "to both")]
    assert messages(sync(b1.c)) == []


def test_default_list_offline_and_stored_messages(
    srv: ServerProcess, ca_file: str, online: Any, users: Iterator[str]
) -> None:
    a, c = online(next(users)), online(next(users))
    bname = next(users)
    b = online(bname)
    ok(
        set_list(
            b, "d", f"<item type='jid' value='{a.bare}' action='deny' order='1'><message/></item>"
        )
    )
    ok(make_default(b, "d"))
    ok(
        set_list(
            b,
            "no-c",
            f"<item type='jid' value='{c.bare}' action='deny' order='1'><message/></item>",
        )
    )
    b.c.close()
    # §2.2 rule 2: no session: the default list; a blocked message is not stored.
    a.send(f"<message to='{b.bare}' type='chat'><body>stored?</body></message>")
    assert error_of(a) == ("message", "service-unavailable")
    c.send(f"<message to='{b.bare}' type='chat'><body>stored one</body></message>")
    c.send(f"<message to='{b.bare}' type='chat'><body>stored two</body></message>")
    assert error_of(c) == (None, None)
    # Back online with an active list that blocks c: the stored messages are not delivered.
    b = online(bname, "r2", available=False)
    ok(activate(b, "no-c"))
    b.send("<presence/>")
    assert messages(sync(b.c)) == []
    b.c.close()
    b = online(bname, "r3")
    assert messages(sync(b.c)) == []  # and they are gone


def test_lists_survive_restart(make_server: Any, ca_file: str) -> None:
    srv = make_server()
    for name in ("x", "y"):
        srv.adduser(f"{name}@localhost")
    srv.start()
    x = User(srv, ca_file, "x", "r")
    ok(set_list(x, "d", "<item type='jid' value='y@localhost' action='deny' order='1'/>"))
    ok(set_list(x, "spare", "<item action='allow' order='7'/>"))
    ok(make_default(x, "d"))
    x.c.close()
    srv.stop()
    srv.start()
    x = User(srv, ca_file, "x", "r")
    y = User(srv, ca_file, "y", "r")
    try:
        assert names(x) == (None, "d", ["d", "spare"])
        assert list_items(x, "spare") == [({"action": "allow", "order": "7"}, [])]
        y.send("<message to='x@localhost/r'><body>after restart</body></message>")
        assert error_of(y) == ("message", "service-unavailable")
    finally:
        x.c.close()
        y.c.close()


def test_removed_account_loses_its_lists(make_server: Any, ca_file: str) -> None:
    srv = make_server()
    srv.adduser("gone@localhost")
    srv.start()
    user = User(srv, ca_file, "gone", "r")
    ok(set_list(user, "d", "<item action='deny' order='1'><message/></item>"))
    ok(make_default(user, "d"))
    user.c.close()
    result = run_cli("deluser", "gone@localhost", config=srv.config)
    assert result.returncode == 0, result.stderr
    srv.adduser("gone@localhost")
    user = User(srv, ca_file, "gone", "r")
    try:
        assert names(user) == (None, None, [])
    finally:
        user.c.close()


def test_hostile_input_keeps_serving(
    srv: ServerProcess, ca_file: str, online: Any, users: Iterator[str]
) -> None:
    a = online(next(users))
    for inner in (
        f"<list name='{'n' * 2000}'><item action='deny' order='1'/></list>",
        "<list name='x'><item action='deny' order='99999999999999999999'/></list>",
        "<list name='x'><item type='jid' value='' action='deny' order='1'/></list>",
        "<default name=''/>",
    ):
        reply = privacy(a, "set", inner)
        assert reply.get("type") == "error"
        assert reply.find(f"{{{CLIENT}}}error/{{{STANZA_ERRORS}}}text") is not None
    assert names(a) == (None, None, [])
    assert_still_serving(srv, ca_file, a.name)


# --- a real client --------------------------------------------------------------------------


class SlixClient(ClientXMPP):
    def __init__(self, jid: str, ca_file: str) -> None:
        super().__init__(jid, PASSWORD)
        self.ca_certs = ca_file
        self.enable_direct_tls = False
        self.enable_plaintext = False
        self.enable_starttls = True
        self.register_plugin("xep_0016")
        self.ready = asyncio.get_running_loop().create_future()
        self.add_event_handler("session_start", self._started)

    async def _started(self, _event: Any) -> None:
        self.send_presence()
        if not self.ready.done():
            self.ready.set_result(True)


async def test_slixmpp_privacy_lists(
    srv: ServerProcess, ca_file: str, users: Iterator[str]
) -> None:
    a_name, b_name = next(users), next(users)
    a = SlixClient(f"{a_name}@localhost/slix", ca_file)
    b = SlixClient(f"{b_name}@localhost/slix", ca_file)
    got: asyncio.Queue[str] = asyncio.Queue()
    bounced: asyncio.Queue[str] = asyncio.Queue()
    b.add_event_handler("message", lambda msg: got.put_nowait(str(msg["body"])))
    a.add_event_handler("message_error", lambda msg: bounced.put_nowait(msg["error"]["condition"]))
    try:
        for client in (a, b):
            client.connect("127.0.0.1", srv.port)
            await asyncio.wait_for(client.ready, 20)
        plugin = b.plugin["xep_0016"]
        rules = [
            {
                "value": f"{a_name}@localhost",
                "action": "deny",
                "order": "1",
                "type": "jid",
                "message": True,
            }
        ]
        await plugin.edit_list("quiet", rules, timeout=10)
        await plugin.activate("quiet", timeout=10)
        await plugin.make_default("quiet", timeout=10)
        lists = await plugin.get_privacy_lists(timeout=10)
        assert lists["privacy"]["active"]["name"] == "quiet"
        assert lists["privacy"]["default"]["name"] == "quiet"
        fetched = await plugin.get_list("quiet", timeout=10)
        items = list(fetched["privacy"]["list"])
        assert [(i["type"], i["value"], i["action"], i["message"]) for i in items] == [
            ("jid", f"{a_name}@localhost", "deny", True)
        ]
        a.send_message(mto=f"{b_name}@localhost/slix", mbody="blocked")
        assert await asyncio.wait_for(bounced.get(), 10) == "service-unavailable"
        await plugin.deactivate(timeout=10)
        await plugin.remove_default(timeout=10)
        await plugin.remove_list("quiet", timeout=10)
        a.send_message(mto=f"{b_name}@localhost/slix", mbody="allowed")
        assert await asyncio.wait_for(got.get(), 10) == "allowed"
        assert got.empty()
    finally:
        for client in (a, b):
            client.disconnect()


# --- the compiled list against the rules read literally ----------------------------------------


def test_compiled_list_decides_like_a_plain_scan() -> None:
    """§2.1/§2.2: the first item in order that matches; the index of jid items must agree
    with scanning every item, for every kind and every form of JID."""
    import random

    from fastxmpp.modules import privacy_rules as rules
    from fastxmpp.storage.roster import RosterItem

    rng = random.Random(16)
    jids = ["a@x", "a@x/r", "b@x", "x", "x/r", "y", "b@y/s"]
    senders = [("a", "x", "r"), ("a", "x", ""), ("a", "x", "s"), ("b", "x", "r"), ("", "x", "r")]
    senders += [("", "x", ""), ("b", "y", "s"), ("c", "y", ""), ("", "z", "")]
    roster = {"a@x": RosterItem("a@x", groups=("g",), subscription="both")}
    kinds = (rules.MESSAGE, rules.IQ, rules.PRESENCE_IN, rules.PRESENCE_OUT, rules.OTHER)
    for _ in range(300):
        items = []
        for order in rng.sample(range(100), rng.randint(1, 8)):
            kind_bits = rng.choice((rules.EVERY_KIND, *kinds, rules.MESSAGE | rules.IQ))
            item_type = rng.choice(("jid", "jid", "jid", "group", "subscription", None))
            value = {
                "jid": rng.choice(jids),
                "group": "g",
                "subscription": rng.choice(rules.SUBSCRIPTIONS),
                None: None,
            }[item_type]
            items.append(rules.Item(order, item_type, value, rng.random() < 0.5, kind_bits))
        ordered = tuple(sorted(items, key=lambda i: i.order))
        compiled = rules.PrivacyList("l", ordered, "home", "me", roster.get)

        def scan(kind: int, local: str, domain: str, resource: str) -> rules.Item | None:
            contact = roster.get(f"{local}@{domain}" if local else domain)
            for item in ordered:  # noqa: B023
                if not item.kinds & kind:
                    continue
                if item.type is None:
                    return item
                if item.type == "jid":
                    parts = rules.jid_parts(item.value or "")
                    if rules.jid_matches(parts, local, domain, resource):
                        return item
                elif item.type == "subscription":
                    if (contact.subscription if contact else "none") == item.value:
                        return item
                elif contact is not None and item.value in contact.groups:
                    return item
            return None

        for sender in senders:
            for kind in kinds:
                assert compiled.decide(kind, *sender) == scan(kind, *sender), (ordered, sender)
