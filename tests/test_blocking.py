"""XEP-0191 blocking command over real sockets: blocklist, block, unblock and unblock-all with
their pushes and errors; a blocked JID's stanzas refused both ways with the exact errors, and
presence hidden both ways until unblocked; the blocklist as the default XEP-0016 list; limits,
persistence, offline storage; and slixmpp's xep_0191 plugin."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import FreshNames, ServerProcess, assert_still_serving, module_server
from lxml import etree
from test_privacy import (
    IQ,
    SlixClient,
    User,
    activate,
    error_of,
    iq,
    list_items,
    make_default,
    messages,
    names,
    ok,
    presences,
    pushes,
    set_list,
    subscribe_both,
)
from test_roster import ROSTER, reply_to, sync
from xmpp_raw import CLIENT, STANZA_ERRORS, stanza_error

NS_BLOCKING = "urn:xmpp:blocking"
NS_BLOCKING_ERRORS = "urn:xmpp:blocking:errors"
ACCOUNTS = 80
MAX_ITEMS = 5


POOL = FreshNames("b", ACCOUNTS)


@pytest.fixture(scope="module")
def srv(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(
        ca,
        tmp_path_factory,
        POOL,
        f"[privacy]\nmax_items = {MAX_ITEMS}\n[limits]\nmax_unauthenticated_per_ip = 200\n",
    )


@pytest.fixture
def users() -> Iterator[str]:
    return POOL.names()


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


def blocklist(user: User) -> list[str]:
    """The blocklist (§3.2); the session now gets blocklist pushes."""
    reply = ok(iq(user, "get", f"<blocklist xmlns='{NS_BLOCKING}'/>"))
    return [item.get("jid") for item in reply.iter(f"{{{NS_BLOCKING}}}item")]


def block(user: User, *jids: str) -> Any:
    items = "".join(f"<item jid='{jid}'/>" for jid in jids)
    return iq(user, "set", f"<block xmlns='{NS_BLOCKING}'>{items}</block>")


def unblock(user: User, *jids: str) -> Any:
    items = "".join(f"<item jid='{jid}'/>" for jid in jids)
    return iq(user, "set", f"<unblock xmlns='{NS_BLOCKING}'>{items}</unblock>")


def block_pushes(elements: list[Any]) -> list[tuple[str, list[str]]]:
    """(block|unblock, JIDs) of each blocking push among `elements`."""
    out = []
    for el in elements:
        if el.tag != IQ or el.get("type") != "set":
            continue
        for verb in ("block", "unblock"):
            payload = el.find(f"{{{NS_BLOCKING}}}{verb}")
            if payload is not None:
                out.append((verb, [i.get("jid") for i in payload]))
    return out


def error_children(el: Any) -> list[str]:
    error = el.find(f"{{{CLIENT}}}error")
    return [etree.QName(child).text for child in error]


def next_error(user: User) -> Any:
    """The next error stanza `user` receives (after a sync), or None."""
    return next((el for el in sync(user.c) if el.get("type") == "error"), None)


# --- protocol (§3) -------------------------------------------------------------------------


def test_block_unblock_and_pushes(online: Any, users: Iterator[str]) -> None:
    name = next(users)
    a1, a2, a3 = online(name, "one"), online(name, "two"), online(name, "three")
    assert blocklist(a1) == []  # §3.2: an empty <blocklist/>
    assert blocklist(a2) == []
    ok(block(a1, "romeo@montague.net", "iago@shakespeare.lit"))
    # §3.3: a push to every resource that asked for the blocklist, and only to those.
    expected = [("block", ["romeo@montague.net", "iago@shakespeare.lit"])]
    assert block_pushes(sync(a1.c)) == expected
    assert block_pushes(sync(a2.c)) == expected
    assert block_pushes(sync(a3.c)) == []
    assert blocklist(a3) == ["romeo@montague.net", "iago@shakespeare.lit"]
    # Blocking what is blocked already changes nothing: no push.
    ok(block(a2, "romeo@montague.net"))
    assert block_pushes(sync(a1.c)) == []
    # §3.4: unblock, pushed with the item.
    ok(unblock(a2, "romeo@montague.net"))
    assert block_pushes(sync(a1.c)) == [("unblock", ["romeo@montague.net"])]
    assert blocklist(a1) == ["iago@shakespeare.lit"]
    # §3.5: unblock all, pushed as an empty <unblock/>.
    ok(block(a1, "juliet@capulet.com"))
    sync(a3.c)
    ok(unblock(a1))
    assert block_pushes(sync(a3.c)) == [("unblock", [])]
    assert blocklist(a2) == []


@pytest.mark.parametrize(
    ("itype", "payload", "condition"),
    [
        ("set", f"<block xmlns='{NS_BLOCKING}'/>", "bad-request"),  # §3.3: no item
        ("set", f"<block xmlns='{NS_BLOCKING}'><item/></block>", "bad-request"),
        ("set", f"<block xmlns='{NS_BLOCKING}'><item jid='a@b@c'/></block>", "jid-malformed"),
        ("set", f"<block xmlns='{NS_BLOCKING}'><item jid=''/></block>", "bad-request"),
        ("set", f"<block xmlns='{NS_BLOCKING}'><other jid='a@b'/></block>", "bad-request"),
        ("set", f"<unblock xmlns='{NS_BLOCKING}'><item jid='@x'/></unblock>", "jid-malformed"),
        ("set", f"<blocklist xmlns='{NS_BLOCKING}'/>", "bad-request"),
        ("get", f"<block xmlns='{NS_BLOCKING}'><item jid='a@b'/></block>", "bad-request"),
    ],
)
def test_errors(
    online: Any, users: Iterator[str], itype: str, payload: str, condition: str
) -> None:
    a = online(next(users))
    assert stanza_error(iq(a, itype, payload)) == condition
    assert blocklist(a) == []


def test_other_accounts_blocklist_is_forbidden(online: Any, users: Iterator[str]) -> None:
    a, b = online(next(users)), online(next(users))
    reply = iq(a, "get", f"<blocklist xmlns='{NS_BLOCKING}'/>", to=b.bare)
    assert stanza_error(reply) == "forbidden"


# --- enforcement ----------------------------------------------------------------------------


def test_blocked_jid_is_refused_both_ways(online: Any, users: Iterator[str]) -> None:
    a, b = online(next(users)), online(next(users))
    ok(block(a, b.bare))
    sync(b.c)
    # §3.3: inbound message and iq get/set: service-unavailable; the user appears offline.
    for to in (a.full, a.bare):
        b.send(f"<message to='{to}' type='chat' id='m1'><body>hi</body></message>")
        error = next_error(b)
        assert error is not None and error.tag == f"{{{CLIENT}}}message"
        assert stanza_error(error) == "service-unavailable"
    b.send(f"<iq type='get' id='v1' to='{a.full}'><query xmlns='jabber:iq:version'/></iq>")
    assert stanza_error(reply_to(b.c, "v1")) == "service-unavailable"
    # Presence of every kind: dropped, no error.
    b.send(f"<presence type='subscribe' to='{a.bare}'/>")
    b.send(f"<presence to='{a.full}'/>")
    assert next_error(b) is None
    assert presences(sync(a.c)) == [] and messages(sync(a.c)) == []
    # §3.3: outbound: not-acceptable with <blocked/> (urn:xmpp:blocking:errors).
    a.send(f"<message to='{b.full}' id='out'><body>Can you hear me now?</body></message>")
    error = next_error(a)
    assert error is not None and error.get("from") == b.full and error.get("id") == "out"
    assert stanza_error(error) == "not-acceptable"
    assert f"{{{NS_BLOCKING_ERRORS}}}blocked" in error_children(error)
    assert error.find(f"{{{CLIENT}}}error").get("type") == "cancel"  # as §3.3's example
    a.send(f"<iq type='get' id='out2' to='{b.full}'><ping xmlns='urn:xmpp:ping'/></iq>")
    reply = reply_to(a.c, "out2")
    assert stanza_error(reply) == "not-acceptable"
    assert f"{{{NS_BLOCKING_ERRORS}}}blocked" in error_children(reply)
    assert messages(sync(b.c)) == []
    # §3.4: unblocked: delivered again.
    ok(unblock(a, b.bare))
    b.send(f"<message to='{a.full}'><body>again</body></message>")
    assert next_error(b) is None
    assert messages(sync(a.c)) == [(b.full, "again")]


def test_presence_hidden_both_ways(online: Any, users: Iterator[str]) -> None:
    a, b = online(next(users)), online(next(users))
    subscribe_both(a, b)
    a.send("<presence><show>away</show></presence>")
    b.send("<presence><show>dnd</show></presence>")
    sync(a.c)
    sync(b.c)
    sync(a.c)
    ok(block(a, b.bare))
    # §3.3: the blocked JID gets unavailable presence; the user sees it go offline too.
    assert presences(sync(b.c)) == [(a.full, "unavailable")]
    assert presences(sync(a.c)) == [(b.full, "unavailable")]
    a.send("<presence><show>chat</show></presence>")
    b.send("<presence><show>xa</show></presence>")
    sync(a.c)
    sync(b.c)
    assert presences(sync(a.c)) == []
    assert presences(sync(b.c)) == []
    # A probe from the blocked contact gets no answer (§3.3: no response to presence).
    b.send(f"<presence type='probe' to='{a.bare}'/>")
    assert presences(sync(b.c)) == []
    # Polite blocking (§4): the subscription is still there.
    reply = ok(iq(a, "get", f"<query xmlns='{ROSTER}'/>"))
    item = reply.find(f"{{{ROSTER}}}query/{{{ROSTER}}}item")
    assert item is not None and item.get("subscription") == "both"
    # §3.4: unblocked: each gets the other's current presence.
    ok(unblock(a, b.bare))
    seen_b = [el for el in sync(b.c) if el.tag == f"{{{CLIENT}}}presence"]
    seen_a = [el for el in sync(a.c) if el.tag == f"{{{CLIENT}}}presence"]
    assert [(el.get("from"), el.findtext(f"{{{CLIENT}}}show")) for el in seen_b] == [
        (a.full, "chat")
    ]
    assert [(el.get("from"), el.findtext(f"{{{CLIENT}}}show")) for el in seen_a] == [(b.full, "xa")]


def test_full_jid_and_domain_blocks(online: Any, users: Iterator[str]) -> None:
    a = online(next(users))
    bname = next(users)
    b1, b2 = online(bname, "phone"), online(bname, "desk")
    ok(block(a, b1.full))  # §7: user@domain/resource: only that resource
    b1.send(f"<message to='{a.full}'><body>phone</body></message>")
    b2.send(f"<message to='{a.full}'><body>desk</body></message>")
    assert stanza_error(next_error(b1)) == "service-unavailable"
    assert next_error(b2) is None
    assert messages(sync(a.c)) == [(b2.full, "desk")]
    ok(block(a, "localhost"))  # §7: a domain: everything at it, but never the user's own
    a2 = online(a.name, "second")
    b2.send(f"<message to='{a.full}'><body>desk again</body></message>")
    assert stanza_error(next_error(b2)) == "service-unavailable"
    a2.send(f"<message to='{a.full}'><body>own</body></message>")
    assert next_error(a2) is None
    assert messages(sync(a.c)) == [(a2.full, "own")]
    ok(unblock(a))
    b2.send(f"<message to='{a.full}'><body>unblocked</body></message>")
    assert next_error(b2) is None
    assert messages(sync(a.c)) == [(b2.full, "unblocked")]


def test_blocked_subscription_request_is_dropped(online: Any, users: Iterator[str]) -> None:
    a, d = online(next(users)), online(next(users))
    ok(block(a, d.bare))
    sync(a.c)
    d.send(f"<presence type='subscribe' to='{a.bare}'/>")
    assert next_error(d) is None
    assert presences(sync(a.c)) == []
    # Not kept as a pending request either: nothing at the next login.
    a.c.close()
    a = online(a.name, "again")
    assert presences(sync(a.c)) == []


# --- one model with XEP-0016 (§6) -----------------------------------------------------------


def test_blocklist_is_the_default_privacy_list(online: Any, users: Iterator[str]) -> None:
    name = next(users)
    a1, a2 = online(name, "one"), online(name, "two")
    assert blocklist(a2) == []
    ok(block(a1, "x@example.com"))
    # §6: the default list, one jid/deny item per blocked JID.
    assert names(a1) == (None, "blocklist", ["blocklist"])
    assert list_items(a1, "blocklist") == [
        ({"type": "jid", "value": "x@example.com", "action": "deny", "order": "1"}, [])
    ]
    assert pushes(sync(a1.c)) == ["blocklist"]  # a XEP-0016 push as well
    sync(a2.c)
    # §6 item 2: an edit of the default list through XEP-0016 shows in the blocklist ...
    ok(
        set_list(
            a1,
            "blocklist",
            "<item type='jid' value='x@example.com' action='deny' order='1'/>"
            "<item type='jid' value='y@example.com' action='deny' order='2'/>"
            "<item type='jid' value='friend@example.com' action='allow' order='3'/>",
        )
    )
    assert block_pushes(sync(a2.c)) == [("block", ["y@example.com"])]
    assert blocklist(a2) == ["x@example.com", "y@example.com"]
    # ... §6 item 3: what a blocklist cannot say is not in it.
    ok(
        set_list(
            a1,
            "blocklist",
            "<item type='jid' value='x@example.com' action='deny' order='1'/>"
            "<item type='jid' value='y@example.com' action='deny' order='2'><message/></item>"
            "<item type='jid' value='friend@example.com' action='allow' order='3'/>",
        )
    )
    assert block_pushes(sync(a2.c)) == [("unblock", ["y@example.com"])]
    # A block goes first in the list (§6), the other items keep their places.
    ok(block(a2, "z@example.com"))
    assert [(i[0]["value"], i[0]["order"]) for i in list_items(a1, "blocklist")] == [
        ("z@example.com", "1"),
        ("x@example.com", "2"),
        ("y@example.com", "3"),
        ("friend@example.com", "4"),
    ]
    # §6 item 4: another default list is another blocklist.
    ok(set_list(a1, "other", "<item type='jid' value='w@example.com' action='deny' order='5'/>"))
    ok(activate(a2, "other"))
    sync(a2.c)
    ok(make_default(a1, "other"))
    assert block_pushes(sync(a2.c)) == [
        ("block", ["w@example.com"]),
        ("unblock", ["z@example.com", "x@example.com"]),
    ]
    assert blocklist(a1) == ["w@example.com"]
    # Unblocking everything empties the default list: it goes, and with it the default.
    ok(activate(a2, None))
    ok(unblock(a1))
    assert names(a1) == (None, None, ["blocklist"])


def test_blocklist_limit(
    srv: ServerProcess, ca_file: str, online: Any, users: Iterator[str]
) -> None:
    a = online(next(users))
    jids = [f"spam{n}@example.com" for n in range(MAX_ITEMS + 1)]
    reply = block(a, *jids)
    assert stanza_error(reply) == "policy-violation"
    assert reply.find(f"{{{CLIENT}}}error/{{{STANZA_ERRORS}}}text") is not None
    ok(block(a, *jids[:MAX_ITEMS]))
    assert stanza_error(block(a, jids[MAX_ITEMS])) == "policy-violation"
    # Hostile: thousands of items in one block.
    huge = [f"flood{n}@example.com" for n in range(3000)]
    assert stanza_error(block(a, *huge)) == "policy-violation"
    assert blocklist(a) == jids[:MAX_ITEMS]
    assert_still_serving(srv, ca_file, a.name)


def test_blocklist_offline_and_across_restart(make_server: Any, ca_file: str) -> None:
    srv = make_server()
    for name in ("x", "y"):
        srv.adduser(f"{name}@localhost")
    srv.start()
    x, y = User(srv, ca_file, "x", "r"), User(srv, ca_file, "y", "r")
    ok(block(x, "y@localhost"))
    x.c.close()
    # The account as a whole (no session): not stored, service-unavailable.
    y.send("<message to='x@localhost' type='chat'><body>offline</body></message>")
    assert error_of(y) == ("message", "service-unavailable")
    y.c.close()
    srv.stop()
    srv.start()
    x, y = User(srv, ca_file, "x", "r"), User(srv, ca_file, "y", "r")
    try:
        x.send("<presence/>")
        assert messages(sync(x.c)) == []  # nothing was stored
        assert blocklist(x) == ["y@localhost"]
        y.send("<message to='x@localhost/r'><body>after restart</body></message>")
        assert error_of(y) == ("message", "service-unavailable")
        ok(unblock(x, "y@localhost"))
        y.send("<message to='x@localhost/r'><body>unblocked</body></message>")
        assert error_of(y) == (None, None)
        assert messages(sync(x.c)) == [("y@localhost/r", "unblocked")]
    finally:
        x.c.close()
        y.c.close()


# --- a real client --------------------------------------------------------------------------


class BlockingClient(SlixClient):
    def __init__(self, jid: str, ca_file: str) -> None:
        super().__init__(jid, ca_file)
        self.register_plugin("xep_0191")
        self.events: asyncio.Queue[tuple[str, list[str]]] = asyncio.Queue()
        self.bodies: asyncio.Queue[str] = asyncio.Queue()
        self.errors: asyncio.Queue[str] = asyncio.Queue()
        self.add_event_handler("blocked", lambda iq: self._push("block", iq))
        self.add_event_handler("unblocked", lambda iq: self._push("unblock", iq))
        self.add_event_handler("message", lambda msg: self.bodies.put_nowait(str(msg["body"])))
        self.add_event_handler(
            "message_error", lambda msg: self.errors.put_nowait(msg["error"]["condition"])
        )

    def _push(self, verb: str, iq: Any) -> None:
        self.events.put_nowait((verb, sorted(str(item["jid"]) for item in iq[verb])))


async def test_slixmpp_blocking(srv: ServerProcess, ca_file: str, users: Iterator[str]) -> None:
    a_name, b_name = next(users), next(users)
    a = BlockingClient(f"{a_name}@localhost/slix", ca_file)
    b = BlockingClient(f"{b_name}@localhost/slix", ca_file)
    try:
        for client in (a, b):
            client.connect("127.0.0.1", srv.port)
            await asyncio.wait_for(client.ready, 20)
        plugin = a.plugin["xep_0191"]
        assert await plugin.get_blocked_jids(timeout=10) == set()
        await plugin.block(f"{b_name}@localhost", timeout=10)
        assert await asyncio.wait_for(a.events.get(), 10) == ("block", [f"{b_name}@localhost"])
        assert {str(j) for j in await plugin.get_blocked_jids(timeout=10)} == {
            f"{b_name}@localhost"
        }
        b.send_message(mto=f"{a_name}@localhost/slix", mbody="blocked")
        assert await asyncio.wait_for(b.errors.get(), 10) == "service-unavailable"
        await plugin.unblock(f"{b_name}@localhost", timeout=10)
        assert await asyncio.wait_for(a.events.get(), 10) == ("unblock", [f"{b_name}@localhost"])
        b.send_message(mto=f"{a_name}@localhost/slix", mbody="welcome back")
        assert await asyncio.wait_for(a.bodies.get(), 10) == "welcome back"
        assert a.bodies.empty()
    finally:
        for client in (a, b):
            client.disconnect()


def test_unsubscribe_from_blocked_contact_still_applies(online: Any, users: Iterator[str]) -> None:
    """Polite blocking keeps subscriptions, but when the blocked contact ends one the user's
    roster follows (or the contact would keep getting the user's presence it gave up);
    the stanza itself is not delivered (privacy.py)."""
    a, b = online(next(users)), online(next(users))
    subscribe_both(a, b)
    iq(a, "get", f"<query xmlns='{ROSTER}'/>")  # a gets roster pushes from now on
    ok(block(a, b.bare))
    sync(b.c)
    sync(a.c)
    b.send(f"<presence type='unsubscribed' to='{a.bare}'/>")
    b.send(f"<presence type='unsubscribe' to='{a.bare}'/>")
    assert next_error(b) is None
    seen = sync(a.c)
    assert presences(seen) == []
    reply = ok(iq(a, "get", f"<query xmlns='{ROSTER}'/>"))
    item = reply.find(f"{{{ROSTER}}}query/{{{ROSTER}}}item")
    assert item is not None and item.get("subscription") == "none"
