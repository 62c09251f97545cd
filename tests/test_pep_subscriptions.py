"""XEP-0163 §6 / XEP-0060 explicit subscriptions to PEP nodes over real sockets: subscribe
(§6.1) by a client that sends no caps, notifications at the subscribed JID (bare: every
resource, full: that one), no duplicate for a +notify resource, the last published item on
subscribing and on presence, unsubscribe (§6.2), one's subscriptions (§5.6), the owner's
management (§8.8), every error with its pubsub#errors child, subscriptions going when they
no longer qualify (roster, groups, access model, node deletion), privacy, the limit,
persistence across a restart, account deletion; and slixmpp's xep_0060 end to end."""

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
    add_accounts,
    module_server,
    run_cli,
)
from lxml import etree
from slixmpp import ClientXMPP
from test_pep import (
    EVENT,
    INFO,
    MOOD,
    OWNER,
    PUBSUB,
    TUNE,
    User,
    befriend,
    configure,
    error_of,
    events,
    item_titles,
    publish_options,
    tune,
)
from test_roster import connect, sync
from xmpp_raw import CLIENT, RawClient

ACCOUNTS = 120
MAX_SUBSCRIPTIONS = 3
CONFIG = (
    f"[pep]\nmax_subscriptions_per_node = {MAX_SUBSCRIPTIONS}\ncaps_timeout = 5\n"
    "[limits]\nmax_unauthenticated_per_ip = 200\n"
)
POOL = FreshNames("s", ACCOUNTS)
_fresh = POOL.names()
_ids = itertools.count()


@pytest.fixture(scope="module")
def srv(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(ca, tmp_path_factory, POOL, CONFIG)


@pytest.fixture
def login(srv: ServerProcess, ca_file: str, clients: list[RawClient]) -> Any:
    def make(name: str | None = None, resource: str = "r") -> User:
        if name is None:
            name = next(_fresh)
        return User(connect(srv, ca_file, clients, name, resource), name, resource)

    return make


def plain(user: User) -> list[Any]:
    """Available presence without caps: a client that knows nothing of PEP."""
    user.send("<presence/>")
    return sync(user.c)


def subscribe(user: User, owner: User, node: str, jid: str | None = None) -> Any:
    jid_attr = f" jid='{jid if jid is not None else user.bare}'" if jid != "" else ""
    return user.iq(
        "set",
        f"<pubsub xmlns='{PUBSUB}'><subscribe node='{node}'{jid_attr}/></pubsub>",
        to=owner.bare,
    )


def unsubscribe(user: User, owner: User, node: str, jid: str | None = None) -> Any:
    return user.iq(
        "set",
        f"<pubsub xmlns='{PUBSUB}'><unsubscribe node='{node}' jid='{jid or user.bare}'/></pubsub>",
        to=owner.bare,
    )


def subscription_of(reply: Any) -> tuple[str | None, str | None, str | None]:
    assert reply.get("type") == "result", etree.tostring(reply)
    sub = reply.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}subscription")
    return sub.get("node"), sub.get("jid"), sub.get("subscription")


def my_subscriptions(user: User, owner: User, node: str | None = None) -> list[tuple[str, str]]:
    node_attr = f" node='{node}'" if node else ""
    reply = user.iq(
        "get", f"<pubsub xmlns='{PUBSUB}'><subscriptions{node_attr}/></pubsub>", to=owner.bare
    )
    assert reply.get("type") == "result", etree.tostring(reply)
    subs = list(reply.iter(f"{{{PUBSUB}}}subscription"))
    assert all(s.get("subscription") == "subscribed" for s in subs)
    return [(s.get("node"), s.get("jid")) for s in subs]


def subscribers(owner: User, node: str) -> list[str]:
    reply = owner.iq("get", f"<pubsub xmlns='{OWNER}'><subscriptions node='{node}'/></pubsub>")
    assert reply.get("type") == "result", etree.tostring(reply)
    listing = reply.find(f"{{{OWNER}}}pubsub/{{{OWNER}}}subscriptions")
    assert listing.get("node") == node
    subs = list(listing.iter(f"{{{OWNER}}}subscription"))
    assert all(s.get("subscription") == "subscribed" for s in subs)
    return sorted(s.get("jid") for s in subs)


def manage(owner: User, node: str, **states: str) -> Any:
    body = "".join(
        f"<subscription jid='{jid}' subscription='{state}'/>" for jid, state in states.items()
    )
    return owner.iq(
        "set",
        f"<pubsub xmlns='{OWNER}'><subscriptions node='{node}'>{body}</subscriptions></pubsub>",
    )


def notify_presence(user: User, *nodes: str) -> list[Any]:
    """Available presence with caps asking for `nodes`: a 'ver' of its own each time (it does
    not verify, so it counts for this session only and is asked about every time)."""
    return user.available(nodes, ver=f"unverified{next(_ids)}", expect_query=True)


def messages(elements: list[Any]) -> list[Any]:
    return [el for el in elements if el.tag == f"{{{CLIENT}}}message"]


def after(owner: User, *users: User) -> list[list[Any]]:
    """What each user received once what the owner sent has been processed."""
    sync(owner.c)
    return [sync(u.c) for u in users]


# --- discovery ------------------------------------------------------------------------------


def test_features_advertised(login: Any) -> None:
    alice = login()
    reply = alice.iq("get", f"<query xmlns='{INFO}'/>", to=alice.bare)
    features = {f.get("var") for f in reply.iter(f"{{{INFO}}}feature")}
    for name in ("subscribe", "retrieve-subscriptions", "manage-subscriptions"):
        assert f"{PUBSUB}#{name}" in features
    assert f"{PUBSUB}#subscription-options" not in features


# --- subscribe, notifications, unsubscribe ----------------------------------------------------


def test_client_without_caps_subscribes_and_unsubscribes(login: Any) -> None:
    alice, bob = login(), login()
    befriend(alice, bob)
    bob2 = login(bob.name, "second")
    plain(bob)
    plain(bob2)
    alice.publish(TUNE, tune("before"), "t0")
    assert events(after(alice, bob)[0]) == []  # not PEP-aware: nothing implicit

    reply = subscribe(bob, alice, TUNE)
    assert reply.get("from") == alice.bare
    assert subscription_of(reply) == (TUNE, bob.bare, "subscribed")
    # §6.1.7: the last published item follows the reply, with a delay, to each resource.
    for user in (bob, bob2):
        got = sync(user.c)
        assert item_titles(got) == ["before"]
        assert messages(got)[0].find("{urn:xmpp:delay}delay") is not None
        assert messages(got)[0].get("to") == user.full

    alice.publish(TUNE, tune("live"), "t1")
    got_bob, got_bob2 = after(alice, bob, bob2)
    assert item_titles(got_bob) == ["live"] and item_titles(got_bob2) == ["live"]
    message = messages(got_bob)[0]
    assert message.get("from") == alice.bare and message.get("type") == "headline"
    assert events(got_bob)[0].find(f"{{{EVENT}}}item").get("id") == "t1"
    # Retraction is an event too.
    alice.iq(
        "set", f"<pubsub xmlns='{PUBSUB}'><retract node='{TUNE}'><item id='t1'/></retract></pubsub>"
    )
    retracted = [r.get("id") for ev in events(after(alice, bob)[0]) for r in ev]
    assert retracted == ["t1"]

    # §6.1.6: subscribing again returns the subscription; still one notification each.
    assert subscription_of(subscribe(bob, alice, TUNE)) == (TUNE, bob.bare, "subscribed")
    sync(bob.c)
    sync(bob2.c)
    alice.publish(TUNE, tune("once"))
    assert [item_titles(got) for got in after(alice, bob, bob2)] == [["once"], ["once"]]

    reply = unsubscribe(bob2, alice, TUNE)
    assert subscription_of(reply) == (TUNE, bob.bare, "none")
    alice.publish(TUNE, tune("after"))
    assert [events(got) for got in after(alice, bob, bob2)] == [[], []]
    # §6.2.3.2: no such subscriber.
    assert error_of(unsubscribe(bob, alice, TUNE)) == (
        "cancel",
        "unexpected-request",
        "not-subscribed",
    )


def test_full_jid_subscription_reaches_that_resource(login: Any) -> None:
    alice, bob = login(), login()
    befriend(alice, bob)
    bob2 = login(bob.name, "second")
    plain(bob)
    plain(bob2)
    alice.publish(TUNE, tune("x"))
    alice.publish(MOOD, f"<mood xmlns='{MOOD}'><sad/></mood>")
    assert subscription_of(subscribe(bob, alice, MOOD, bob.full)) == (MOOD, bob.full, "subscribed")
    assert subscribe(bob2, alice, TUNE, bob.full).get("type") == "result"  # another resource's
    got_bob, got_bob2 = sync(bob.c), sync(bob2.c)
    assert sorted(e.get("node") for e in events(got_bob)) == [MOOD, TUNE]  # last items
    assert events(got_bob2) == []
    assert my_subscriptions(bob2, alice) == [(MOOD, bob.full), (TUNE, bob.full)]
    alice.publish(MOOD, f"<mood xmlns='{MOOD}'><happy/></mood>")
    got_bob, got_bob2 = after(alice, bob, bob2)
    assert [e.get("node") for e in events(got_bob)] == [MOOD]
    assert messages(got_bob)[0].get("to") == bob.full
    assert events(got_bob2) == []
    # The bare JID was never subscribed; the full JID is unsubscribed by its own name.
    assert error_of(unsubscribe(bob, alice, MOOD))[1:] == ("unexpected-request", "not-subscribed")
    assert unsubscribe(bob, alice, MOOD, bob.full).get("type") == "result"
    assert my_subscriptions(bob, alice) == [(TUNE, bob.full)]


def test_no_duplicate_for_a_notify_resource(login: Any) -> None:
    alice, bob = login(), login()
    befriend(alice, bob)
    alice.publish(TUNE, tune("first"))
    assert item_titles(notify_presence(bob, TUNE)) == ["first"]  # implicit, by caps
    notify_presence(alice, TUNE)
    assert subscribe(bob, alice, TUNE).get("type") == "result"
    sync(bob.c)
    assert subscribe(alice, alice, TUNE, alice.full).get("type") == "result"  # the owner too
    sync(alice.c)
    alice.publish(TUNE, tune("one each"))
    got_alice, got_bob = sync(alice.c), sync(bob.c)
    assert item_titles(got_bob) == ["one each"]
    assert item_titles(got_alice) == ["one each"]
    # A node with no +notify interest: the explicit subscription alone.
    configure(alice, MOOD, create=True)
    assert subscribe(bob, alice, MOOD).get("type") == "result"
    alice.publish(MOOD, f"<mood xmlns='{MOOD}'><calm/></mood>")
    assert len(events(after(alice, bob)[0], MOOD)) == 1


def test_last_item_on_presence(login: Any) -> None:
    alice, bob = login(), login()
    befriend(alice, bob)
    plain(bob)
    options = publish_options(send_last_published_item="on_sub")
    alice.publish(MOOD, f"<mood xmlns='{MOOD}'><sad/></mood>", options=options)
    alice.publish(TUNE, tune("current"))
    assert subscribe(bob, alice, TUNE).get("type") == "result"
    assert subscribe(bob, alice, MOOD).get("type") == "result"
    assert len(events(sync(bob.c))) == 2  # on subscribing: on_sub and on_sub_and_presence
    bob.send("<presence type='unavailable'/>")
    sync(bob.c)
    alice.publish(TUNE, tune("while away"))
    # Initial presence again: on_sub_and_presence sends, on_sub does not.
    got = plain(bob) + sync(bob.c)
    assert item_titles(got) == ["while away"] and events(got, MOOD) == []
    assert messages(got)[0].find("{urn:xmpp:delay}delay") is not None
    # With +notify for the same node: once, not twice.
    bob.send("<presence type='unavailable'/>")
    sync(bob.c)
    assert item_titles(notify_presence(bob, TUNE)) == ["while away"]


# --- errors -----------------------------------------------------------------------------------


def test_subscribe_errors(login: Any) -> None:
    alice, bob, stranger = login(), login(), login()
    befriend(alice, bob)
    alice.publish(TUNE, tune("x"))
    # §6.1.3.12: no such node.
    assert error_of(subscribe(bob, alice, "missing")) == ("cancel", "item-not-found", None)
    # §6.1.3.1: the JID is not the requester's own (a remote JID is just as foreign).
    for jid in (stranger.bare, f"{bob.name}@elsewhere.example", "localhost", "@@"):
        assert error_of(subscribe(bob, alice, TUNE, jid)) == (
            "modify",
            "bad-request",
            "invalid-jid",
        )
    assert error_of(subscribe(bob, alice, TUNE, "")) == ("modify", "bad-request", "jid-required")
    reply = bob.iq(
        "set", f"<pubsub xmlns='{PUBSUB}'><subscribe jid='{bob.bare}'/></pubsub>", to=alice.bare
    )
    assert error_of(reply) == ("modify", "bad-request", "nodeid-required")
    # §6.1.3.2: presence access without a presence subscription.
    assert error_of(subscribe(stranger, alice, TUNE)) == (
        "auth",
        "not-authorized",
        "presence-subscription-required",
    )
    # §6.1.3.3: roster access, not in the groups.
    configure(alice, MOOD, create=True, access_model="roster", roster_groups_allowed="Friends")
    assert error_of(subscribe(bob, alice, MOOD)) == (
        "auth",
        "not-authorized",
        "not-in-roster-group",
    )
    # §6.1.3.4: whitelist, the owner alone.
    options = publish_options(access_model="whitelist")
    alice.publish("urn:example:private", "<p xmlns='urn:example:private'/>", options=options)
    assert error_of(subscribe(bob, alice, "urn:example:private")) == (
        "cancel",
        "not-allowed",
        "closed-node",
    )
    assert subscribe(alice, alice, "urn:example:private").get("type") == "result"
    # §6.3: options are not offered.
    reply = bob.iq(
        "set",
        f"<pubsub xmlns='{PUBSUB}'><subscribe node='{TUNE}' jid='{bob.bare}'/><options/></pubsub>",
        to=alice.bare,
    )
    assert error_of(reply) == ("cancel", "feature-not-implemented", "unsupported")
    error = reply.find(f"{{{CLIENT}}}error/{{http://jabber.org/protocol/pubsub#errors}}unsupported")
    assert error.get("feature") == "subscription-options"
    # Nothing got subscribed by any of it.
    assert my_subscriptions(bob, alice) == []
    assert subscribers(alice, TUNE) == []


def test_unsubscribe_errors(login: Any) -> None:
    alice, bob, carol = login(), login(), login()
    befriend(alice, bob)
    befriend(alice, carol)
    alice.publish(TUNE, tune("x"))
    assert subscribe(carol, alice, TUNE).get("type") == "result"
    # §6.2.3.3: someone else's subscription.
    assert error_of(unsubscribe(bob, alice, TUNE, carol.bare)) == ("auth", "forbidden", None)
    # §6.2.3.4: no such node.
    assert error_of(unsubscribe(bob, alice, "missing")) == ("cancel", "item-not-found", None)
    # §6.2.3.2: not subscribed.
    assert error_of(unsubscribe(bob, alice, TUNE)) == (
        "cancel",
        "unexpected-request",
        "not-subscribed",
    )
    assert subscribers(alice, TUNE) == [carol.bare]


# --- listing and management -------------------------------------------------------------------


def test_retrieve_subscriptions(login: Any) -> None:
    alice, bob, stranger = login(), login(), login()
    befriend(alice, bob)
    alice.publish(TUNE, tune("x"))
    alice.publish(MOOD, f"<mood xmlns='{MOOD}'><happy/></mood>")
    configure(alice, MOOD, access_model="open")
    assert my_subscriptions(bob, alice) == []  # §5.6: an empty <subscriptions/>
    assert subscribe(bob, alice, TUNE).get("type") == "result"
    assert subscribe(bob, alice, MOOD, bob.full).get("type") == "result"
    assert subscribe(stranger, alice, MOOD).get("type") == "result"  # open: anyone local
    assert my_subscriptions(bob, alice) == [(MOOD, bob.full), (TUNE, bob.bare)]
    assert my_subscriptions(bob, alice, TUNE) == [(TUNE, bob.bare)]
    assert my_subscriptions(stranger, alice) == [(MOOD, stranger.bare)]
    assert my_subscriptions(alice, alice) == []  # the owner's own, none
    assert my_subscriptions(bob, stranger) == []  # another account's service
    assert subscribers(alice, MOOD) == sorted([bob.full, stranger.bare])


def test_owner_manages_subscriptions(login: Any) -> None:
    alice, bob, carol, stranger = login(), login(), login(), login()
    befriend(alice, bob)
    befriend(alice, carol)
    plain(bob)
    plain(carol)
    alice.publish(TUNE, tune("managed"))
    assert subscribe(bob, alice, TUNE).get("type") == "result"
    sync(bob.c)
    assert subscribers(alice, TUNE) == [bob.bare]

    # §8.8.2: add carol, remove bob; each is told (§8.8.4).
    reply = manage(alice, TUNE, **{carol.bare: "subscribed", bob.bare: "none"})
    assert reply.get("type") == "result", etree.tostring(reply)
    assert subscribers(alice, TUNE) == [carol.bare]
    got_bob, got_carol = after(alice, bob, carol)
    told = [e for m in messages(got_bob) for e in m.iter(f"{{{EVENT}}}subscription")]
    assert [(e.get("node"), e.get("jid"), e.get("subscription")) for e in told] == [
        (TUNE, bob.bare, "none")
    ]
    told = [e for m in messages(got_carol) for e in m.iter(f"{{{EVENT}}}subscription")]
    assert [(e.get("jid"), e.get("subscription")) for e in told] == [(carol.bare, "subscribed")]
    assert item_titles(got_carol) == ["managed"]  # the last item, as on subscribing
    alice.publish(TUNE, tune("to carol"))
    got_bob, got_carol = after(alice, bob, carol)
    assert item_titles(got_carol) == ["to carol"] and events(got_bob) == []

    # §8.8.2.4: the ones that cannot be done come back unchanged; the others are done.
    reply = manage(
        alice,
        TUNE,
        **{
            stranger.bare: "subscribed",  # presence access: not allowed
            "someone@remote.example": "subscribed",  # not on this server
            carol.bare: "pending",  # no such state here
            bob.bare: "subscribed",  # fine
        },
    )
    assert error_of(reply) == ("modify", "not-acceptable", None)
    returned = reply.findall(f"{{{OWNER}}}pubsub/{{{OWNER}}}subscriptions/{{{OWNER}}}subscription")
    assert sorted((e.get("jid"), e.get("subscription")) for e in returned) == sorted(
        [(stranger.bare, "none"), ("someone@remote.example", "none"), (carol.bare, "subscribed")]
    )
    assert subscribers(alice, TUNE) == sorted([bob.bare, carol.bare])

    # §8.8.1.2 / §8.8.2.3.2: only the owner; §8.8.1.3: the node must exist.
    reply = bob.iq(
        "set",
        f"<pubsub xmlns='{OWNER}'><subscriptions node='{TUNE}'><subscription jid='{bob.bare}' "
        "subscription='none'/></subscriptions></pubsub>",
        to=alice.bare,
    )
    assert error_of(reply) == ("auth", "forbidden", None)
    reply = alice.iq("get", f"<pubsub xmlns='{OWNER}'><subscriptions node='missing'/></pubsub>")
    assert error_of(reply) == ("cancel", "item-not-found", None)
    reply = alice.iq("get", f"<pubsub xmlns='{OWNER}'><subscriptions/></pubsub>")
    assert error_of(reply) == ("modify", "bad-request", "nodeid-required")
    assert subscribers(alice, TUNE) == sorted([bob.bare, carol.bare])


# --- subscriptions that no longer qualify -------------------------------------------------------


def test_subscription_goes_with_the_presence_subscription(login: Any) -> None:
    alice, bob = login(), login()
    befriend(alice, bob)
    plain(bob)
    alice.publish(TUNE, tune("x"))
    assert subscribe(bob, alice, TUNE).get("type") == "result"
    sync(bob.c)
    alice.send(f"<presence type='unsubscribed' to='{bob.bare}'/>")
    sync(alice.c)
    sync(bob.c)
    assert subscribers(alice, TUNE) == []
    alice.publish(TUNE, tune("gone"))
    assert events(after(alice, bob)[0]) == []
    # A presence subscription again does not bring the explicit one back.
    bob.send(f"<presence type='subscribe' to='{alice.bare}'/>")
    sync(bob.c)
    alice.send(f"<presence type='subscribed' to='{bob.bare}'/>")
    sync(alice.c)
    sync(bob.c)
    assert my_subscriptions(bob, alice) == []


def test_subscription_goes_with_the_roster_group(login: Any) -> None:
    alice, bob = login(), login()
    befriend(alice, bob)
    plain(bob)

    def group(name: str) -> None:
        reply = alice.iq(
            "set",
            f"<query xmlns='jabber:iq:roster'><item jid='{bob.bare}'><group>{name}</group></item>"
            "</query>",
        )
        assert reply.get("type") == "result"

    group("Friends")
    configure(alice, MOOD, create=True, access_model="roster", roster_groups_allowed="Friends")
    assert subscribe(bob, alice, MOOD).get("type") == "result"
    group("Colleagues")
    alice.publish(MOOD, f"<mood xmlns='{MOOD}'><tired/></mood>")
    assert events(after(alice, bob)[0]) == []
    assert subscribers(alice, MOOD) == []
    group("Friends")
    alice.publish(MOOD, f"<mood xmlns='{MOOD}'><happy/></mood>")
    assert events(after(alice, bob)[0]) == []  # removed, not suspended


def test_subscription_goes_when_the_access_model_leaves_it_out(login: Any) -> None:
    alice, bob, stranger = login(), login(), login()
    befriend(alice, bob)
    plain(stranger)
    alice.publish(TUNE, tune("x"), options=publish_options(access_model="open"))
    assert subscribe(stranger, alice, TUNE).get("type") == "result"
    assert subscribe(bob, alice, TUNE).get("type") == "result"
    sync(stranger.c)
    configure(alice, TUNE, access_model="presence")
    assert subscribers(alice, TUNE) == [bob.bare]
    configure(alice, TUNE, access_model="open")
    alice.publish(TUNE, tune("open again"))
    assert events(after(alice, stranger)[0]) == []


def test_node_deletion_notifies_and_drops_subscribers(login: Any) -> None:
    alice, bob = login(), login()
    befriend(alice, bob)
    plain(bob)
    alice.publish(TUNE, tune("x"))
    assert subscribe(bob, alice, TUNE).get("type") == "result"
    sync(bob.c)
    reply = alice.iq("set", f"<pubsub xmlns='{OWNER}'><purge node='{TUNE}'/></pubsub>")
    assert reply.get("type") == "result"
    assert [e.tag for e in events(after(alice, bob)[0])] == [f"{{{EVENT}}}purge"]
    reply = alice.iq("set", f"<pubsub xmlns='{OWNER}'><delete node='{TUNE}'/></pubsub>")
    assert reply.get("type") == "result"
    assert [e.tag for e in events(after(alice, bob)[0])] == [f"{{{EVENT}}}delete"]
    alice.publish(TUNE, tune("a new node"))
    assert events(after(alice, bob)[0]) == []
    assert subscribers(alice, TUNE) == [] and my_subscriptions(bob, alice) == []


def test_blocked_subscriber_gets_nothing(login: Any) -> None:
    """XEP-0163 §4.3.3 for explicit subscribers too (XEP-0191 on the owner's side, and the
    subscriber's own privacy list)."""
    alice, bob = login(), login()
    befriend(alice, bob)
    plain(bob)
    alice.publish(TUNE, tune("x"))
    assert subscribe(bob, alice, TUNE).get("type") == "result"
    sync(bob.c)
    block = f"<block xmlns='urn:xmpp:blocking'><item jid='{bob.bare}'/></block>"
    assert alice.iq("set", block).get("type") == "result"
    alice.publish(TUNE, tune("hidden"))
    assert events(after(alice, bob)[0]) == []
    unblock = f"<unblock xmlns='urn:xmpp:blocking'><item jid='{bob.bare}'/></unblock>"
    assert alice.iq("set", unblock).get("type") == "result"
    alice.publish(TUNE, tune("seen"))
    assert item_titles(after(alice, bob)[0]) == ["seen"]
    # bob's own blocking of alice refuses her messages.
    block = f"<block xmlns='urn:xmpp:blocking'><item jid='{alice.bare}'/></block>"
    assert bob.iq("set", block).get("type") == "result"
    sync(bob.c)
    alice.publish(TUNE, tune("refused"))
    assert events(after(alice, bob)[0]) == []


def test_subscriptions_per_node_limit(login: Any) -> None:
    alice = login()
    alice.publish(TUNE, tune("popular"), options=publish_options(access_model="open"))
    fans = [login() for _ in range(MAX_SUBSCRIPTIONS + 1)]
    for fan in fans[:MAX_SUBSCRIPTIONS]:
        assert subscribe(fan, alice, TUNE).get("type") == "result"
    # §6.1.3.9.
    assert error_of(subscribe(fans[-1], alice, TUNE)) == (
        "wait",
        "policy-violation",
        "too-many-subscriptions",
    )
    assert error_of(subscribe(fans[-1], alice, TUNE, fans[-1].full))[2] == "too-many-subscriptions"
    # Subscribing again is not one more; the owner adding one is refused too.
    assert subscribe(fans[0], alice, TUNE).get("type") == "result"
    assert error_of(manage(alice, TUNE, **{fans[-1].bare: "subscribed"}))[1] == "not-acceptable"
    assert unsubscribe(fans[0], alice, TUNE).get("type") == "result"
    assert subscribe(fans[-1], alice, TUNE).get("type") == "result"
    assert len(subscribers(alice, TUNE)) == MAX_SUBSCRIPTIONS


# --- storage ----------------------------------------------------------------------------------


def test_persist_across_restart_and_go_with_the_account(make_server: Any, ca_file: str) -> None:
    from fastxmpp.storage.lmdb_store import Storage
    from fastxmpp.storage.pep import PepStore

    srv = make_server()
    add_accounts(srv, ["alice", "bob", "carol"])
    srv.start()
    opened: list[RawClient] = []
    try:
        users = {n: User(connect(srv, ca_file, opened, n), n, "r") for n in ("alice", "bob")}
        alice, bob = users["alice"], users["bob"]
        befriend(alice, bob)
        alice.publish(TUNE, tune("stored"))
        assert subscribe(bob, alice, TUNE).get("type") == "result"
        assert subscribe(alice, alice, TUNE).get("type") == "result"
        carol = User(connect(srv, ca_file, opened, "carol"), "carol", "r")
        carol.publish(TUNE, tune("carol's"), options=publish_options(access_model="open"))
        assert subscribe(bob, carol, TUNE).get("type") == "result"
        for c in opened:
            c.close()
        srv.stop()
        srv.start()
        alice = User(connect(srv, ca_file, opened, "alice"), "alice", "r")
        bob = User(connect(srv, ca_file, opened, "bob"), "bob", "r")
        assert subscribers(alice, TUNE) == ["alice@localhost", "bob@localhost"]
        # Initial presence: the contact's node (a non-contact's open node is not looked at).
        assert item_titles(plain(bob)) == ["stored"]
        alice.publish(TUNE, tune("after restart"))
        assert item_titles(after(alice, bob)[0]) == ["after restart"]
    finally:
        for c in opened:
            c.close()
        srv.stop()
    result = run_cli("deluser", "alice@localhost", config=srv.config)
    assert result.returncode == 0, result.stderr
    with Storage(srv.data_dir) as storage:
        store = PepStore(storage)
        assert store.subscriptions("localhost", "alice") == []
        assert store.nodes("localhost", "alice") == []
        assert store.subscriptions("localhost", "carol") == [(TUNE, "bob@localhost")]
    # The subscriber's account going takes its subscriptions elsewhere along.
    result = run_cli("deluser", "bob@localhost", config=srv.config)
    assert result.returncode == 0, result.stderr
    with Storage(srv.data_dir) as storage:
        store = PepStore(storage)
        assert store.subscriptions("localhost", "carol") == []
        assert [n.name for n in store.nodes("localhost", "carol")] == [TUNE]


def test_removed_account_loses_its_subscriptions(login: Any) -> None:
    """XEP-0077 §3.2 in-band removal: the subscriber's subscriptions to other accounts'
    nodes go with its data."""
    alice, bob, carol = login(), login(), login()
    alice.publish(TUNE, tune("x"), options=publish_options(access_model="open"))
    assert subscribe(bob, alice, TUNE).get("type") == "result"
    assert subscribe(carol, alice, TUNE, carol.full).get("type") == "result"
    sync(bob.c)
    bob.send("<iq type='set' id='rm'><query xmlns='jabber:iq:register'><remove/></query></iq>")
    reply = bob.c.next()
    assert reply.get("id") == "rm" and reply.get("type") == "result"
    assert subscribers(alice, TUNE) == [carol.full]


# --- a real client ----------------------------------------------------------------------------


class Subscriber(ClientXMPP):
    """slixmpp with XEP-0060 only: no caps, so no +notify; explicit subscriptions alone."""

    def __init__(self, jid: str, ca_file: str) -> None:
        super().__init__(jid, PASSWORD)
        self.ca_certs = ca_file
        self.enable_direct_tls = False
        self.enable_plaintext = False
        self.enable_starttls = True
        for plugin in ("xep_0030", "xep_0060"):
            self.register_plugin(plugin)
        self.published: asyncio.Queue[Any] = asyncio.Queue()
        self.ready = asyncio.get_running_loop().create_future()
        self.add_event_handler("session_start", self._started)
        self.add_event_handler("pubsub_publish", self.published.put_nowait)

    async def _started(self, _event: Any) -> None:
        self.send_presence()
        if not self.ready.done():
            self.ready.set_result(True)


async def test_slixmpp_subscribes(
    srv: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    names = [next(_fresh) for _ in range(2)]
    alice, bob_raw = (User(connect(srv, ca_file, clients, n), n, "r") for n in names)
    befriend(alice, bob_raw)
    bob_raw.c.close()
    alice.publish(TUNE, tune("Introduction"), "i1")
    bob = Subscriber(f"{names[1]}@localhost/slix", ca_file)
    try:
        bob.connect("127.0.0.1", srv.port)
        await asyncio.wait_for(bob.ready, 20)
        pubsub = bob.plugin["xep_0060"]
        reply = await pubsub.subscribe(alice.bare, TUNE, timeout=10)
        assert reply["pubsub"]["subscription"]["subscription"] == "subscribed"
        assert reply["pubsub"]["subscription"]["jid"].bare == bob.boundjid.bare
        last = await asyncio.wait_for(bob.published.get(), 10)
        assert last["pubsub_event"]["items"]["item"]["id"] == "i1"
        await asyncio.to_thread(alice.publish, TUNE, tune("Allegro"), "a1")
        live = await asyncio.wait_for(bob.published.get(), 10)
        assert live["from"].bare == alice.bare
        assert live["pubsub_event"]["items"]["item"]["id"] == "a1"
        listing = await pubsub.get_subscriptions(alice.bare, timeout=10)
        subs = list(listing["pubsub"]["subscriptions"])
        assert [(s["node"], s["jid"].bare) for s in subs] == [(TUNE, bob.boundjid.bare)]
        await pubsub.unsubscribe(alice.bare, TUNE, timeout=10)
        listing = await pubsub.get_subscriptions(alice.bare, timeout=10)
        assert list(listing["pubsub"]["subscriptions"]) == []
        await asyncio.to_thread(alice.publish, TUNE, tune("Finale"), "f1")
        await asyncio.sleep(0.3)
        assert bob.published.empty()
    finally:
        bob.disconnect()
        await asyncio.sleep(0.2)
