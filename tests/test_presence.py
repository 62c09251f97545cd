"""RFC 6121 §3 subscriptions and §4 presence over real sockets: every transition between two
accounts in both directions, two resources per account, no presence leaks, pending requests
delivered at the next login, pre-approval, directed presence, unavailable on logout and on a
lost connection, probes; and slixmpp subscribing the way a real client does."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from conftest import PASSWORD, ServerProcess
from slixmpp import ClientXMPP
from test_roster import (  # noqa: F401  (fixtures)
    connect,
    is_push,
    items,
    received,
    roster_get,
    roster_set,
    srv,
    sync,
    users,
)
from xmpp_raw import CLIENT, RawClient

PRESENCE = f"{{{CLIENT}}}presence"


class User:
    """One connected resource and the names tests need."""

    def __init__(self, client: RawClient, name: str, resource: str) -> None:
        self.c = client
        self.name = name
        self.bare = f"{name}@localhost"
        self.full = f"{self.bare}/{resource}"

    def send(self, data: str) -> None:
        self.c.send(data)


@pytest.fixture
def online(
    srv: ServerProcess,  # noqa: F811
    ca_file: str,
    clients: list[RawClient],
) -> Any:
    def login(name: str, resource: str = "r", available: bool = True) -> User:
        user = User(connect(srv, ca_file, clients, name, resource), name, resource)
        roster_get(user.c)  # an interested resource
        if available:
            user.send("<presence/>")
            sync(user.c)
        return user

    return login


def presences(elements: list[Any]) -> list[tuple[str | None, str | None]]:
    """(from, type) of each presence in order."""
    return [(el.get("from"), el.get("type")) for el in elements if el.tag == PRESENCE]


def pushed(elements: list[Any]) -> dict[str, tuple[str | None, str | None]]:
    """contact -> (subscription, ask) of the last push for it."""
    out = {}
    for el in elements:
        if is_push(el):
            for jid, item in items(el).items():
                out[jid] = (item.get("subscription"), item.get("ask"))
    return out


def state(user: User, contact: User) -> tuple[str | None, str | None] | None:
    """(subscription, ask) of contact in user's roster, from a roster get."""
    reply, _ = roster_get(user.c)
    item = items(reply).get(contact.bare)
    return None if item is None else (item.get("subscription"), item.get("ask"))


def befriend(a: User, b: User) -> None:
    """Mutual subscription, by protocol."""
    for x, y in ((a, b), (b, a)):
        x.send(f"<presence type='subscribe' to='{y.bare}'/>")
        sync(x.c)
        y.send(f"<presence type='subscribed' to='{x.bare}'/>")
        sync(y.c)
    sync(a.c)
    sync(b.c)
    assert state(a, b) == ("both", None)
    assert state(b, a) == ("both", None)


@pytest.fixture
def pair(online: Any, users: Iterator[str]) -> tuple[User, User]:  # noqa: F811
    return online(next(users)), online(next(users))


# --- subscriptions: every transition, both directions -----------------------------------------


def test_subscribe_and_approve(pair: tuple[User, User]) -> None:
    a, b = pair
    a.send(f"<presence type='subscribe' to='{b.bare}' id='s1'><status>hi</status></presence>")
    seen_a = sync(a.c)
    assert pushed(seen_a) == {b.bare: ("none", "subscribe")}  # §3.1.2: None + Pending Out
    seen_b = sync(b.c)
    requests = [el for el in seen_b if el.tag == PRESENCE]
    assert len(requests) == 1
    request = requests[0]
    assert request.get("type") == "subscribe"
    assert request.get("from") == a.bare and request.get("to") == b.bare  # stamped bare
    assert request.findtext(f"{{{CLIENT}}}status") == "hi"
    assert pushed(seen_b) == {}  # Pending In is not a roster item

    b.send(f"<presence type='subscribed' to='{a.bare}'/>")
    seen_b = sync(b.c)
    assert pushed(seen_b) == {a.bare: ("from", None)}  # §3.1.5
    seen_a = sync(a.c)
    assert pushed(seen_a) == {b.bare: ("to", None)}
    assert (b.bare, "subscribed") in presences(seen_a)
    # §3.1.5: b's current presence follows the approval.
    assert presences(seen_a)[-1] == (b.full, None)
    assert state(a, b) == ("to", None) and state(b, a) == ("from", None)

    # The other direction: b subscribes to a (From -> From + Pending Out, To -> To + Pending In).
    b.send(f"<presence type='subscribe' to='{a.bare}'/>")
    assert pushed(sync(b.c)) == {a.bare: ("from", "subscribe")}
    assert presences(sync(a.c)) == [(b.bare, "subscribe")]
    a.send(f"<presence type='subscribed' to='{b.bare}'/>")
    assert pushed(sync(a.c)) == {b.bare: ("both", None)}
    seen_b = sync(b.c)
    assert pushed(seen_b) == {a.bare: ("both", None)}
    assert presences(seen_b) == [(a.bare, "subscribed"), (a.full, None)]


def test_unsubscribe_and_unsubscribed(pair: tuple[User, User]) -> None:
    a, b = pair
    befriend(a, b)
    # a stops seeing b (§3.3): Both -> From for a, Both -> To for b.
    a.send(f"<presence type='unsubscribe' to='{b.bare}'/>")
    seen_a = sync(a.c)
    assert pushed(seen_a) == {b.bare: ("from", None)}
    assert presences(seen_a) == [(b.full, "unavailable")]  # §3.3.2
    seen_b = sync(b.c)
    assert pushed(seen_b) == {a.bare: ("to", None)}
    assert presences(seen_b) == [(a.bare, "unsubscribe")]
    # b's presence no longer reaches a; a's still reaches b.
    b.send("<presence><show>away</show></presence>")
    assert presences(received(a.c, b.c)) == []
    a.send("<presence><show>dnd</show></presence>")
    assert presences(received(b.c, a.c)) == [(a.full, None)]

    # a cancels b's subscription (§3.2): From -> None for a, To -> None for b.
    a.send(f"<presence type='unsubscribed' to='{b.bare}'/>")
    assert pushed(sync(a.c)) == {b.bare: ("none", None)}
    seen_b = sync(b.c)
    assert pushed(seen_b) == {a.bare: ("none", None)}
    assert presences(seen_b) == [(a.bare, "unsubscribed"), (a.full, "unavailable")]
    a.send("<presence><show>chat</show></presence>")
    assert presences(received(b.c, a.c)) == []


def kinds_in_order(elements: list[Any]) -> list[str]:
    """What arrived, in order: the type of each presence, "push" for each roster push."""
    return ["push" if is_push(el) else str(el.get("type")) for el in elements]


def test_answers_reach_interested_resources_before_the_push(
    online: Any,
    users: Iterator[str],  # noqa: F811
) -> None:
    # §3.1.6, §3.2.3, §3.3.3: an inbound subscribed, unsubscribed or unsubscribe goes to
    # every interested resource (one that asked for the roster, available or not), and
    # before the roster push it explains.
    a_name, b_name = next(users), next(users)
    a, b = online(a_name, "on"), online(b_name, "on")
    a_quiet = online(a_name, "quiet", available=False)
    b_quiet = online(b_name, "quiet", available=False)
    a.send(f"<presence type='subscribe' to='{b.bare}'/>")
    sync(a.c)
    sync(a_quiet.c)
    b.send(f"<presence type='subscribed' to='{a.bare}'/>")
    sync(b.c)
    sync(b_quiet.c)
    assert kinds_in_order(sync(a.c)) == ["subscribed", "push", "None"]  # then b's presence
    assert kinds_in_order(sync(a_quiet.c)) == ["subscribed", "push"]

    b.send(f"<presence type='subscribe' to='{a.bare}'/>")
    sync(b.c)
    sync(b_quiet.c)
    a.send(f"<presence type='subscribed' to='{b.bare}'/>")
    sync(a.c)
    sync(a_quiet.c)
    sync(b.c)
    sync(b_quiet.c)

    a.send(f"<presence type='unsubscribe' to='{b.bare}'/>")
    sync(a.c)
    sync(a_quiet.c)
    assert kinds_in_order(sync(b.c)) == ["unsubscribe", "push"]
    assert kinds_in_order(sync(b_quiet.c)) == ["unsubscribe", "push"]

    a.send(f"<presence type='unsubscribed' to='{b.bare}'/>")
    sync(a.c)
    sync(a_quiet.c)
    assert kinds_in_order(sync(b.c)) == ["unsubscribed", "push", "unavailable"]
    assert kinds_in_order(sync(b_quiet.c)) == ["unsubscribed", "push"]
    assert state(a, b) == ("none", None) and state(b, a) == ("none", None)


def test_denied_request(pair: tuple[User, User]) -> None:
    a, b = pair
    a.send(f"<presence type='subscribe' to='{b.bare}'/>")
    sync(a.c)
    sync(b.c)
    b.send(f"<presence type='unsubscribed' to='{a.bare}'/>")  # §3.2.1: refusal
    sync(b.c)
    seen_a = sync(a.c)
    assert pushed(seen_a) == {b.bare: ("none", None)}
    assert presences(seen_a) == [(b.bare, "unsubscribed")]
    assert state(b, a) is None  # never entered b's roster


def test_cancelled_request(pair: tuple[User, User]) -> None:
    a, b = pair
    a.send(f"<presence type='subscribe' to='{b.bare}'/>")
    sync(a.c)
    sync(b.c)
    a.send(f"<presence type='unsubscribe' to='{b.bare}'/>")  # None + Pending Out -> None
    assert pushed(sync(a.c)) == {b.bare: ("none", None)}
    assert presences(sync(b.c)) == [(a.bare, "unsubscribe")]  # None + Pending In -> None
    # Approving now does nothing: there is no request (a pre-approval instead).
    b.send(f"<presence type='subscribed' to='{a.bare}'/>")
    sync(b.c)
    assert presences(sync(a.c)) == []
    assert state(a, b) == ("none", None)


def test_repeated_requests_are_not_delivered_twice(pair: tuple[User, User]) -> None:
    a, b = pair
    a.send(f"<presence type='subscribe' to='{b.bare}'/>")
    a.send(f"<presence type='subscribe' to='{b.bare}'/>")  # None + Pending In: not again
    assert presences(received(b.c, a.c)) == [(a.bare, "subscribe")]
    befriend(a, b)
    # Already subscribed: the server answers "subscribed" itself (§3.1.3), which changes
    # nothing for a and is not delivered (§A.3.3, "Both"); b is not asked again.
    a.send(f"<presence type='subscribe' to='{b.bare}'/>")
    assert presences(sync(a.c)) == []
    assert presences(sync(b.c)) == []
    assert state(a, b) == ("both", None)


def test_roster_remove_ends_both_subscriptions(pair: tuple[User, User]) -> None:
    a, b = pair
    befriend(a, b)
    roster_set(a.c, f"<item jid='{b.bare}' subscription='remove'/>")
    seen_a = sync(a.c)
    assert pushed(seen_a) == {b.bare: ("remove", None)}
    seen_b = sync(b.c)
    assert pushed(seen_b) == {a.bare: ("none", None)}  # §2.5.2
    assert (a.bare, "unsubscribe") in presences(seen_b)
    assert (a.bare, "unsubscribed") in presences(seen_b)
    assert (a.full, "unavailable") in presences(seen_b)
    assert state(a, b) is None and state(b, a) == ("none", None)


def test_subscription_stanzas_to_unknown_account_are_ignored(
    online: Any,
    users: Iterator[str],  # noqa: F811
) -> None:
    # RFC 6121 §8.5.1: no account: subscription stanzas and probes get no answer at all.
    a = online(next(users))
    for kind in ("subscribed", "unsubscribed", "unsubscribe", "probe", "subscribe"):
        for to in ("nobody@localhost", "nobody@localhost/res"):
            a.send(f"<presence type='{kind}' to='{to}' id='{kind}'/>")
            answers = [el for el in sync(a.c) if el.tag == PRESENCE]
            assert answers == [], (kind, to)
    reply, _ = roster_get(a.c)
    # The user's own side of the request stands (§3.1.2): None + Pending Out.
    assert items(reply)["nobody@localhost"].get("subscription") == "none"
    assert items(reply)["nobody@localhost"].get("ask") == "subscribe"


def test_subscription_to_remote_contact_waits(
    online: Any,
    users: Iterator[str],  # noqa: F811
) -> None:
    a = online(next(users))
    a.send("<presence type='subscribe' to='friend@remote.example' id='r'/>")
    seen = sync(a.c)
    assert [el for el in seen if el.get("type") == "error"] == []  # dropped silently
    assert pushed(seen) == {"friend@remote.example": ("none", "subscribe")}


# --- pending requests and pre-approval ---------------------------------------------------------


def test_pending_request_delivered_at_next_login(
    online: Any,
    users: Iterator[str],  # noqa: F811
) -> None:
    a = online(next(users))
    b_name = next(users)
    a.send(
        f"<presence type='subscribe' to='{b_name}@localhost'><status>let me in</status>"
        "<nick xmlns='http://jabber.org/protocol/nick'>Ann</nick></presence>"
    )
    sync(a.c)
    for _ in range(2):  # every initial presence until it is answered (§3.1.3)
        b = online(b_name, available=False)
        assert presences(sync(b.c)) == []  # not before initial presence
        b.send("<presence/>")
        requests = [el for el in sync(b.c) if el.get("type") == "subscribe"]
        assert len(requests) == 1
        assert requests[0].get("from") == a.bare
        assert requests[0].findtext(f"{{{CLIENT}}}status") == "let me in"
        nick = requests[0].find("{http://jabber.org/protocol/nick}nick")
        assert nick is not None and nick.text == "Ann"
        b.c.close()
    b = online(b_name, available=False)
    b.send(f"<presence type='subscribed' to='{a.bare}'/>")
    sync(b.c)
    b.c.close()
    b = online(b_name, available=False)
    b.send("<presence/>")
    assert [el for el in sync(b.c) if el.get("type") == "subscribe"] == []
    assert state(a, b) == ("to", None)


def test_pre_approval(pair: tuple[User, User]) -> None:
    a, b = pair
    b.send(f"<presence type='subscribed' to='{a.bare}'/>")  # §3.4.1: nothing routed
    seen_b = sync(b.c)
    push = [el for el in seen_b if is_push(el)]
    assert items(push[0])[a.bare].get("approved") == "true"
    assert presences(sync(a.c)) == []
    a.send(f"<presence type='subscribe' to='{a.bare}'/>".replace(a.bare, b.bare, 1))
    seen_a = sync(a.c)
    assert (b.bare, "subscribed") in presences(seen_a)  # approved at once (§3.4.2)
    assert (b.full, None) in presences(seen_a)
    assert pushed(seen_a) == {b.bare: ("to", None)}
    seen_b = sync(b.c)
    assert presences(seen_b) == []  # b never sees the request
    reply, _ = roster_get(b.c)
    assert items(reply)[a.bare].get("subscription") == "from"
    assert items(reply)[a.bare].get("approved") is None


def test_pre_approval_cancelled(pair: tuple[User, User]) -> None:
    a, b = pair
    b.send(f"<presence type='subscribed' to='{a.bare}'/>")
    b.send(f"<presence type='unsubscribed' to='{a.bare}'/>")
    sync(b.c)
    a.send(f"<presence type='subscribe' to='{b.bare}'/>")
    sync(a.c)
    assert presences(sync(b.c)) == [(a.bare, "subscribe")]  # asked normally again


# --- presence broadcast -------------------------------------------------------------------------


def test_two_resources_each(online: Any, users: Iterator[str]) -> None:  # noqa: F811
    a_name, b_name = next(users), next(users)
    a1, b1 = online(a_name, "one"), online(b_name, "one")
    befriend(a1, b1)
    a2 = online(a_name, "two", available=False)
    a2.send("<presence><show>away</show></presence>")
    seen = sync(a2.c)
    got = presences(seen)
    # Its own presence back (§4.2.2), the other own resource, the contact.
    assert (a2.full, None) in got and (a1.full, None) in got and (b1.full, None) in got
    assert presences(received(a1.c, a2.c)) == [(a2.full, None)]
    assert presences(received(b1.c, a2.c)) == [(a2.full, None)]
    b2 = online(b_name, "two", available=False)
    b2.send("<presence/>")
    got = presences(sync(b2.c))
    assert {a1.full, a2.full, b1.full, b2.full} <= {jid for jid, _ in got}
    for other in (a1, a2, b1):
        assert presences(received(other.c, b2.c)) == [(b2.full, None)]
    # Logout of one resource: everybody else learns it, once.
    b2.send("<presence type='unavailable'><status>bye</status></presence>")
    assert presences(sync(b2.c)) == [(b2.full, "unavailable")]
    for other in (a1, a2, b1):
        assert presences(received(other.c, b2.c)) == [(b2.full, "unavailable")]


def test_every_presence_names_its_recipient(online: Any, users: Iterator[str]) -> None:  # noqa: F811
    """RFC 6121 §4.2.2, §4.3.2, §4.4.2, §4.5.2, §4.6.3: presence the server sends to a client
    carries 'to': the contact's bare JID for a contact's presence, the receiving resource's
    full JID for the user's own resources' presence."""
    a_name, b_name = next(users), next(users)
    a1, b1 = online(a_name, "one"), online(b_name, "one")
    a1.send(f"<presence type='subscribe' to='{b1.bare}'/>")
    sync(a1.c)
    b1.send(f"<presence type='subscribed' to='{a1.bare}'/>")
    sync(b1.c)
    approved = [el for el in sync(a1.c) if el.tag == PRESENCE and el.get("type") is None]
    assert [(el.get("from"), el.get("to")) for el in approved] == [(b1.full, a1.bare)]
    befriend(a1, b1)
    a2 = online(a_name, "two", available=False)
    a2.send("<presence/>")
    got = {el.get("from"): el.get("to") for el in sync(a2.c) if el.tag == PRESENCE}
    # its own presence, the other resource's, the contact's (a probe answered)
    assert got == {a2.full: a2.full, a1.full: a2.full, b1.full: a2.bare}
    assert [(el.get("from"), el.get("to")) for el in received(a1.c, a2.c)] == [(a2.full, a1.full)]
    assert [(el.get("from"), el.get("to")) for el in received(b1.c, a2.c)] == [(a2.full, b1.bare)]
    a2.send(f"<presence type='probe' to='{b1.bare}'/>")
    assert [(el.get("from"), el.get("to")) for el in sync(a2.c)] == [(b1.full, a2.bare)]
    stranger = online(next(users))
    a2.send(f"<presence to='{stranger.full}'/>")
    got = received(stranger.c, a2.c)
    assert [(el.get("from"), el.get("to")) for el in got] == [(a2.full, stranger.full)]
    a2.send("<presence type='unavailable'/>")
    assert [(el.get("from"), el.get("to")) for el in sync(a2.c)] == [(a2.full, a2.full)]
    for user, to in ((a1, a1.full), (b1, b1.bare), (stranger, stranger.full)):
        got = received(user.c, a2.c)
        assert [(el.get("from"), el.get("type"), el.get("to")) for el in got] == [
            (a2.full, "unavailable", to)
        ]
    # a session that just goes away
    b1.c.close()
    el = a1.c.next()
    while el.tag != PRESENCE:
        el = a1.c.next()
    assert (el.get("from"), el.get("type"), el.get("to")) == (b1.full, "unavailable", a1.bare)


def test_no_presence_leaks(online: Any, users: Iterator[str]) -> None:  # noqa: F811
    a, b, stranger = online(next(users)), online(next(users)), online(next(users))
    # b only asked (Pending Out): still nothing.
    b.send(f"<presence type='subscribe' to='{a.bare}'/>")
    sync(b.c)
    sync(a.c)
    a.send("<presence><status>secret</status></presence>")
    a.send("<presence type='unavailable'/>")
    a.send("<presence/>")
    sync(a.c)
    assert presences(sync(b.c)) == []
    assert presences(sync(stranger.c)) == []
    # A probe from a non-subscriber gets nothing either (§4.3.2).
    stranger.send(f"<presence type='probe' to='{a.bare}'/>")
    assert presences(sync(stranger.c)) == []


def test_probe_by_subscriber(pair: tuple[User, User]) -> None:
    a, b = pair
    befriend(a, b)
    a.send(f"<presence type='probe' to='{b.bare}'/>")
    assert presences(sync(a.c)) == [(b.full, None)]


def test_probe_of_offline_contact_gets_its_last_unavailable(
    pair: tuple[User, User],
    online: Any,
    users: Iterator[str],  # noqa: F811
) -> None:
    """§4.3.2: a contact with no available resource answers a subscriber's probe (the one
    the server sends at initial presence, and one the client sends) with unavailable
    presence: the status it left with and a XEP-0203 stamp of when, from its server."""
    a, b = pair
    befriend(a, b)
    before = time.time()
    b.send("<presence type='unavailable'><status>gone fishing</status></presence>")
    sync(b.c)
    b.c.close()
    after = time.time()
    sync(a.c)
    again = online(a.name, "again", available=False)
    again.send("<presence/>")
    seen = [el for el in sync(again.c) if el.tag == PRESENCE and el.get("from") == b.bare]
    assert [el.get("type") for el in seen] == ["unavailable"]
    assert seen[0].get("to") == again.full
    assert seen[0].findtext(f"{{{CLIENT}}}status") == "gone fishing"
    delay = seen[0].find("{urn:xmpp:delay}delay")
    assert delay is not None and delay.get("from") == "localhost"
    went = datetime.fromisoformat(delay.get("stamp").replace("Z", "+00:00")).timestamp()
    assert int(before) <= went <= after
    # A probe the client sends gets the same answer.
    again.send(f"<presence type='probe' to='{b.bare}'/>")
    assert presences(sync(again.c)) == [(b.bare, "unavailable")]
    # A contact whose connection was lost: unavailable, stamped, without a status.
    c = online(next(users))
    befriend(a, c)
    c.c.abort()
    el = a.c.next()  # the server noticed the lost connection
    while el.tag != PRESENCE or el.get("from") != c.full:
        el = a.c.next()
    assert el.get("type") == "unavailable"
    third = online(a.name, "third", available=False)
    third.send("<presence/>")
    got = [el for el in sync(third.c) if el.tag == PRESENCE and el.get("from") == c.bare]
    assert [el.get("type") for el in got] == ["unavailable"]
    assert got[0].find(f"{{{CLIENT}}}status") is None
    assert got[0].find("{urn:xmpp:delay}delay") is not None


def test_probe_of_offline_contact_respects_blocking(pair: tuple[User, User], online: Any) -> None:
    """XEP-0016 §2.12 / XEP-0191: a contact that blocks the prober sends it nothing, online
    or not."""
    a, b = pair
    befriend(a, b)
    block = f"<block xmlns='urn:xmpp:blocking'><item jid='{a.bare}'/></block>"
    b.send(f"<iq type='set' id='blk'>{block}</iq>")
    sync(b.c)
    b.c.close()
    sync(a.c)
    again = online(a.name, "again", available=False)
    again.send("<presence/>")
    assert [el for el in sync(again.c) if el.tag == PRESENCE and el.get("from") == b.bare] == []
    again.send(f"<presence type='probe' to='{b.bare}'/>")
    assert presences(sync(again.c)) == []


def test_unavailable_on_lost_connection(pair: tuple[User, User]) -> None:
    a, b = pair
    befriend(a, b)
    a.c.abort()
    # The server notices the lost connection on its own: wait for the notice.
    el = b.c.next()
    while el.tag != PRESENCE:
        el = b.c.next()
    assert (el.get("from"), el.get("type")) == (a.full, "unavailable")


def test_initial_presence_gets_contacts(pair: tuple[User, User], online: Any) -> None:
    a, b = pair
    befriend(a, b)
    b.send("<presence><show>xa</show><status>out</status></presence>")
    sync(b.c)
    again = online(a.name, "again", available=False)
    again.send("<presence/>")
    seen = [el for el in sync(again.c) if el.tag == PRESENCE and el.get("from") == b.full]
    assert len(seen) == 1
    assert seen[0].findtext(f"{{{CLIENT}}}show") == "xa"
    assert seen[0].findtext(f"{{{CLIENT}}}status") == "out"


def test_directed_presence(online: Any, users: Iterator[str]) -> None:  # noqa: F811
    a, c = online(next(users)), online(next(users))
    a.send(f"<presence to='{c.full}'><status>just you</status></presence>")
    assert presences(received(c.c, a.c)) == [(a.full, None)]
    # Not a contact: later broadcasts do not reach c ...
    a.send("<presence><show>away</show></presence>")
    assert presences(received(c.c, a.c)) == []
    # ... but the unavailable presence does (§4.6.3), also when the session is just gone.
    a.send("<presence type='unavailable'/>")
    assert presences(received(c.c, a.c)) == [(a.full, "unavailable")]
    a.send("<presence/>")
    a.send(f"<presence to='{c.bare}'/>")
    assert presences(received(c.c, a.c)) == [(a.full, None)]
    a.c.close()
    el = c.c.next()
    while el.tag != PRESENCE:
        el = c.c.next()
    assert (el.get("from"), el.get("type")) == (a.full, "unavailable")


def test_directed_unavailable_ends_tracking(online: Any, users: Iterator[str]) -> None:  # noqa: F811
    a, c = online(next(users)), online(next(users))
    a.send(f"<presence to='{c.full}'/>")
    a.send(f"<presence to='{c.full}' type='unavailable'/>")
    assert presences(received(c.c, a.c)) == [(a.full, None), (a.full, "unavailable")]
    a.send("<presence type='unavailable'/>")
    assert presences(received(c.c, a.c)) == []


def test_presence_errors(online: Any, users: Iterator[str]) -> None:  # noqa: F811
    a = online(next(users))
    a.send("<presence type='bogus' id='p1'/>")
    reply = a.c.next()
    assert reply.get("id") == "p1" and reply.get("type") == "error"
    a.send("<presence id='p2'><priority>high</priority></presence>")
    reply = a.c.next()
    assert reply.get("id") == "p2" and reply.get("type") == "error"
    a.send("<presence to='x@remote.example' id='p3'/>")  # no s2s: dropped, no error
    assert [el for el in sync(a.c) if el.get("type") == "error"] == []


# --- a real client ------------------------------------------------------------------------------


class SlixClient(ClientXMPP):
    def __init__(self, jid: str, ca_file: str) -> None:
        super().__init__(jid, PASSWORD)
        self.ca_certs = ca_file
        self.enable_direct_tls = False
        self.enable_plaintext = False
        self.enable_starttls = True
        self.ready = asyncio.get_running_loop().create_future()
        self.available: asyncio.Queue[str] = asyncio.Queue()
        self.add_event_handler("session_start", self._started)
        self.add_event_handler("presence_available", self._available)

    async def _started(self, _event: Any) -> None:
        await self.get_roster()
        self.send_presence()
        if not self.ready.done():
            self.ready.set_result(True)

    def _available(self, presence: Any) -> None:
        self.available.put_nowait(str(presence["from"]))


async def test_slixmpp_subscription(
    srv: ServerProcess,  # noqa: F811
    ca_file: str,
    users: Iterator[str],  # noqa: F811
) -> None:
    a_name, b_name = next(users), next(users)
    a = SlixClient(f"{a_name}@localhost/slix", ca_file)
    b = SlixClient(f"{b_name}@localhost/slix", ca_file)
    try:
        for client in (a, b):
            client.connect("127.0.0.1", srv.port)
            await asyncio.wait_for(client.ready, 20)
        # slixmpp approves requests and asks back by default (auto_authorize/auto_subscribe).
        a.send_presence_subscription(pto=f"{b_name}@localhost")
        while await asyncio.wait_for(a.available.get(), 10) != f"{b_name}@localhost/slix":
            pass
        while await asyncio.wait_for(b.available.get(), 10) != f"{a_name}@localhost/slix":
            pass
        for _ in range(50):
            if a.client_roster[f"{b_name}@localhost"]["subscription"] == "both":
                break
            await asyncio.sleep(0.1)
        assert a.client_roster[f"{b_name}@localhost"]["subscription"] == "both"
        assert b.client_roster[f"{a_name}@localhost"]["subscription"] == "both"
    finally:
        for client in (a, b):
            client.disconnect()


async def test_slixmpp_roster_shows_the_contacts_resources(
    srv: ServerProcess,  # noqa: F811
    ca_file: str,
    users: Iterator[str],  # noqa: F811
) -> None:
    """slixmpp files presence under the roster of its 'to' (an empty one without it): with
    'to' on every presence the server sends, the contact's resources show in the roster,
    after the subscription is approved and when another resource comes online, and leave it
    when they go."""
    a_name, b_name = next(users), next(users)
    a_bare, b_bare = f"{a_name}@localhost", f"{b_name}@localhost"
    a = SlixClient(f"{a_bare}/slix", ca_file)
    b = SlixClient(f"{b_bare}/slix", ca_file)
    late = SlixClient(f"{b_bare}/late", ca_file)

    async def resources_become(expected: set[str]) -> None:
        for _ in range(100):
            if set(a.client_roster[b_bare].resources) == expected:
                return
            await asyncio.sleep(0.05)
        assert set(a.client_roster[b_bare].resources) == expected

    try:
        for client in (a, b):
            client.connect("127.0.0.1", srv.port)
            await asyncio.wait_for(client.ready, 20)
        a.send_presence_subscription(pto=b_bare)
        await resources_become({"slix"})  # presence sent once the subscription is approved
        late.connect("127.0.0.1", srv.port)
        await asyncio.wait_for(late.ready, 20)
        await resources_become({"slix", "late"})  # broadcast presence
        late.disconnect()
        await resources_become({"slix"})  # broadcast unavailable presence
        assert set(b.client_roster[a_bare].resources) == {"slix"}
    finally:
        for client in (a, b, late):
            client.disconnect()


def test_pending_request_and_subscriptions_survive_restart(make_server: Any, ca_file: str) -> None:
    from conftest import add_accounts

    server = make_server()
    add_accounts(server, ["ann", "ben", "cat"])
    server.start()
    opened: list[RawClient] = []
    try:

        def login(name: str) -> User:
            user = User(connect(server, ca_file, opened, name, "r"), name, "r")
            roster_get(user.c)
            return user

        ann = login("ann")
        ann.send("<presence type='subscribe' to='ben@localhost'><status>s</status></presence>")
        ann.send("<presence type='subscribe' to='cat@localhost'/>")
        sync(ann.c)
        cat = login("cat")
        cat.send("<presence type='subscribed' to='ann@localhost'/>")
        sync(cat.c)
        server.stop()
        server.start()
        ben, cat, ann = login("ben"), login("cat"), login("ann")
        cat.send("<presence/>")
        sync(cat.c)
        ann.send("<presence/>")
        assert (cat.full, None) in presences(sync(ann.c))  # ann still subscribed to cat
        ben.send("<presence/>")
        requests = [el for el in sync(ben.c) if el.get("type") == "subscribe"]
        assert [r.get("from") for r in requests] == ["ann@localhost"]
        assert requests[0].findtext(f"{{{CLIENT}}}status") == "s"
    finally:
        for c in opened:
            c.close()
