"""XEP-0163 across servers: two real fastxmpp servers federated over loopback, an account on
a.test publishing, its contacts' clients on b.test. The owner's server learns a remote
resource's interest from the caps in the presence it sends (XEP-0115: an unknown ver is
asked over s2s, by disco#info from the account, and trusted only when its hash verifies),
notifies the interested resources of contacts with subscription from/both the node's access
model lets in (XEP-0163 §4.3), sends them the last item when they become available or are
let in (§4.3.4), and their retractions; a remote entity's explicit subscription is served
too. The server's domain shows pubsub/pep, where clients (Smack's OMEMO) look for PEP."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
import trustme
from conftest import FreshNames
from federation import Federation, befriend_across, sign_in, wait_for
from test_pep import (
    CAPS,
    CAPS_NODE,
    EVENT,
    INFO,
    PUBSUB,
    caps_ver,
    disco_answer,
    events,
    is_caps_query,
    publish_options,
)
from test_roster import reply_to
from xmpp_raw import CLIENT, RawClient

from fastxmpp.modules.pep_remote import PER_CONTACT, RemoteResources

METADATA = "urn:xmpp:avatar:metadata"
DEVICELIST = "eu.siacs.conversations.axolotl.devicelist"
AXOLOTL = "eu.siacs.conversations.axolotl"
ADDRESS = "http://jabber.org/protocol/address"
DELAY = "urn:xmpp:delay"
ACCOUNTS = 40
NAMES = FreshNames("u", ACCOUNTS)
_fresh = NAMES.names()
_ids = itertools.count()


@pytest.fixture(scope="module")
def fed(
    ca: trustme.CA, ca_file: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Federation]:
    users = tuple(f"u{i}" for i in range(ACCOUNTS))
    fed = Federation(
        ca, tmp_path_factory.mktemp("pepfed"), ca_file, True, ("a.test", "b.test"), users=users
    )
    yield fed
    fed.stop()


class Client:
    """A signed-in client and its JIDs."""

    def __init__(self, c: RawClient, bare: str, resource: str) -> None:
        self.c = c
        self.bare = bare
        self.full = f"{bare}/{resource}"


@pytest.fixture
def sign(fed: Federation, ca_file: str, clients: list[RawClient]) -> Any:
    def make(domain: str, name: str | None = None, resource: str = "r") -> Client:
        bare = f"{name or next(_fresh)}@{domain}"
        c = sign_in(fed.servers[domain], ca_file, clients, bare, resource)
        return Client(c, bare, resource)

    return make


def pair(sign: Any) -> tuple[Client, Client]:
    """An owner on a.test and a contact on b.test with subscription both."""
    owner, contact = sign("a.test"), sign("b.test")
    befriend_across(owner.c, owner.bare, contact.c, contact.bare)
    return owner, contact


def caps_features(notify: tuple[str, ...]) -> list[str]:
    # A feature of its own: a ver neither server has seen.
    return [CAPS, INFO, f"urn:fastxmpp:test:{next(_ids)}", *(f"{n}+notify" for n in notify)]


def announce(
    client: Client,
    features: list[str],
    askers: tuple[str, ...],
    ver: str | None = None,
) -> list[Any]:
    """Available presence with caps for `features` (or the announced `ver`); answers the
    disco#info query (node#ver) from each of `askers`, with `features`; what else came."""
    ver = ver or caps_ver(features)
    client.c.send(
        f"<presence><c xmlns='{CAPS}' hash='sha-1' node='{CAPS_NODE}' ver='{ver}'/></presence>"
    )
    waiting = set(askers)
    seen = []
    while waiting:
        el = client.c.next()
        if is_caps_query(el) and el.get("from") in waiting:
            assert el.find(f"{{{INFO}}}query").get("node") == f"{CAPS_NODE}#{ver}"
            assert el.get("to") == client.full
            waiting.discard(el.get("from"))
            client.c.send(disco_answer(el, features))
        else:
            seen.append(el)
    return seen


def across(sender: Client, receiver: Client) -> list[Any]:
    """What `receiver` gets until a message `sender` sends it now: everything the sender's
    server sent it before, over the same server link."""
    marker = f"marker-{next(_ids)}"
    sender.c.send(
        f"<message to='{receiver.full}' type='headline' id='{marker}'><body>m</body></message>"
    )
    seen = []
    while (el := receiver.c.next()).get("id") != marker:
        seen.append(el)
    return seen


def settle(contact: Client, owner: Client) -> list[Any]:
    """Two round trips over the links: the owner's server has acted on what the contact
    sent before (its caps answer), and sent what followed from it."""
    seen = []
    for _ in range(2):
        across(contact, owner)
        seen += across(owner, contact)
    return seen


def iq(client: Client, kind: str, payload: str, to: str | None = None) -> Any:
    iq_id = f"q{next(_ids)}"
    to_attr = f" to='{to}'" if to else ""
    client.c.send(f"<iq type='{kind}' id='{iq_id}'{to_attr}>{payload}</iq>")
    return reply_to(client.c, iq_id)


def publish(owner: Client, node: str, payload: str, item_id: str, options: str = "") -> None:
    reply = iq(
        owner,
        "set",
        f"<pubsub xmlns='{PUBSUB}'><publish node='{node}'><item id='{item_id}'>{payload}</item>"
        f"</publish>{options}</pubsub>",
    )
    assert reply.get("type") == "result"


def avatar(item_id: str) -> str:
    info = f"<info id='{item_id}' bytes='10' type='image/png'/>"
    return f"<metadata xmlns='{METADATA}'>{info}</metadata>"


def devices(*ids: int) -> str:
    return f"<list xmlns='{AXOLOTL}'>" + "".join(f"<device id='{i}'/>" for i in ids) + "</list>"


def notifications(elements: list[Any], node: str) -> list[Any]:
    """The event messages about `node`."""
    return [
        el
        for el in elements
        if el.tag == f"{{{CLIENT}}}message"
        and any(child.get("node") == node for child in el.iterfind(f"{{{EVENT}}}event/*"))
    ]


def item_ids(elements: list[Any], node: str) -> list[str | None]:
    return [item.get("id") for ev in events(elements, node) for item in ev]


def interested(owner: Client, contact: Client, *nodes: str) -> None:
    """The contact's resource announces +notify for `nodes`; both servers ask it."""
    announce(contact, caps_features(nodes), ("b.test", owner.bare))
    settle(contact, owner)


# --- notifications ---------------------------------------------------------------------------


def test_remote_contact_gets_avatar_and_omemo_notifications(sign: Any) -> None:
    owner, contact = pair(sign)
    interested(owner, contact, METADATA, DEVICELIST)
    publish(owner, METADATA, avatar("av1"), "av1")
    [msg] = notifications(across(owner, contact), METADATA)
    # XEP-0163 §4.3.1: from the owner's bare JID, to the full JID of the resource, replyto
    # the publishing resource
    assert (msg.get("from"), msg.get("to"), msg.get("type")) == (
        owner.bare,
        contact.full,
        "headline",
    )
    assert [a.get("jid") for a in msg.iter(f"{{{ADDRESS}}}address")] == [owner.full]
    assert item_ids([msg], METADATA) == ["av1"]
    publish(owner, DEVICELIST, devices(1234, 5678), "current")
    [msg] = notifications(across(owner, contact), DEVICELIST)
    assert [d.get("id") for d in msg.iter(f"{{{AXOLOTL}}}device")] == ["1234", "5678"]
    # Unavailable (still connected, RFC 6121 §4.5.2): nothing more.
    contact.c.send("<presence type='unavailable'/>")
    settle(contact, owner)
    publish(owner, DEVICELIST, devices(1234), "current")
    assert notifications(across(owner, contact), DEVICELIST) == []


def test_remote_resource_without_notify_gets_nothing(sign: Any) -> None:
    owner, contact = pair(sign)
    other = sign("b.test", contact.bare.partition("@")[0], "second")
    interested(owner, contact, METADATA)
    interested(owner, other, "http://jabber.org/protocol/tune")
    publish(owner, METADATA, avatar("av2"), "av2")
    assert item_ids(across(owner, contact), METADATA) == ["av2"]
    assert notifications(across(owner, other), METADATA) == []


def test_contacts_without_presence_subscription_get_nothing(sign: Any) -> None:
    """Subscription 'to' (the owner sees the contact's presence, not the reverse) and
    'none' (directed presence with caps): a node of access model presence is not theirs;
    a contact with 'both' gets it."""
    owner, both = pair(sign)
    to_only, stranger = sign("b.test"), sign("b.test")
    owner.c.send(f"<presence type='subscribe' to='{to_only.bare}'/>")
    wait_for(to_only.c, lambda el: el.get("type") == "subscribe")
    to_only.c.send(f"<presence type='subscribed' to='{owner.bare}'/>")
    wait_for(owner.c, lambda el: el.get("type") == "subscribed")
    interested(owner, both, METADATA)
    # its broadcast reaches the owner's server, which asks what its caps stand for
    interested(owner, to_only, METADATA)
    features = caps_features((METADATA,))
    stranger.c.send(
        f"<presence to='{owner.bare}'><c xmlns='{CAPS}' hash='sha-1' node='{CAPS_NODE}' "
        f"ver='{caps_ver(features)}'/></presence>"
    )
    # no question to a stranger
    assert not any(is_caps_query(el) for el in settle(stranger, owner))
    publish(owner, METADATA, avatar("av3"), "av3")
    assert item_ids(across(owner, both), METADATA) == ["av3"]
    assert notifications(across(owner, to_only), METADATA) == []
    assert notifications(across(owner, stranger), METADATA) == []


def test_last_item_when_a_remote_contact_comes_online(sign: Any) -> None:
    owner, contact = pair(sign)
    publish(owner, METADATA, avatar("av4"), "av4")
    publish(owner, DEVICELIST, devices(42), "current")
    features = caps_features((METADATA,))
    seen = announce(contact, features, ("b.test", owner.bare))
    seen += settle(contact, owner)
    # §4.3.4: the last item of each node it wants, stamped (XEP-0203); not the others
    [msg] = notifications(seen, METADATA)
    assert item_ids([msg], METADATA) == ["av4"] and msg.get("to") == contact.full
    assert msg.find(f"{{{DELAY}}}delay").get("from") == owner.bare
    assert notifications(seen, DEVICELIST) == []
    # A presence update with the same caps is not initial presence (§4.3.3 note).
    contact.c.send(
        f"<presence><show>away</show><c xmlns='{CAPS}' hash='sha-1' node='{CAPS_NODE}' "
        f"ver='{caps_ver(features)}'/></presence>"
    )
    assert notifications(settle(contact, owner), METADATA) == []


def test_last_item_when_the_owner_lets_a_remote_contact_in(sign: Any) -> None:
    """The owner subscribed to the contact first: its presence (and caps) reach the
    owner's server before the contact may see the owner's; once the owner approves the
    contact's subscription, the contact's resource gets the last item (RFC 6121 §3.1.5)."""
    owner, contact = sign("a.test"), sign("b.test")
    owner.c.send(f"<presence type='subscribe' to='{contact.bare}'/>")
    wait_for(contact.c, lambda el: el.get("type") == "subscribe")
    contact.c.send(f"<presence type='subscribed' to='{owner.bare}'/>")
    wait_for(owner.c, lambda el: el.get("type") == "subscribed")
    publish(owner, DEVICELIST, devices(7), "current")
    interested(owner, contact, DEVICELIST)
    assert notifications(across(owner, contact), DEVICELIST) == []
    contact.c.send(f"<presence type='subscribe' to='{owner.bare}'/>")
    wait_for(owner.c, lambda el: el.get("type") == "subscribe")
    owner.c.send(f"<presence type='subscribed' to='{contact.bare}'/>")
    msg = wait_for(contact.c, lambda el: bool(notifications([el], DEVICELIST)))
    assert msg.get("to") == contact.full
    assert [d.get("id") for d in msg.iter(f"{{{AXOLOTL}}}device")] == ["7"]


def test_retract_reaches_remote_contact(sign: Any) -> None:
    owner, contact = pair(sign)
    interested(owner, contact, METADATA)
    publish(owner, METADATA, avatar("av5"), "av5")
    assert item_ids(across(owner, contact), METADATA) == ["av5"]
    reply = iq(
        owner,
        "set",
        f"<pubsub xmlns='{PUBSUB}'><retract node='{METADATA}' notify='true'>"
        f"<item id='av5'/></retract></pubsub>",
    )
    assert reply.get("type") == "result"
    [msg] = notifications(across(owner, contact), METADATA)
    assert [r.get("id") for r in msg.iter(f"{{{EVENT}}}retract")] == ["av5"]


def test_access_models_hold_for_remote_contacts(sign: Any) -> None:
    """Whitelist (the owner alone) and roster (its groups) nodes as for local contacts."""
    owner, contact = pair(sign)
    private, family = "urn:fastxmpp:test:private", "urn:fastxmpp:test:family"
    interested(owner, contact, private, family)
    publish(owner, private, devices(1), "p", publish_options(access_model="whitelist"))
    publish(
        owner,
        family,
        devices(2),
        "f",
        publish_options(access_model="roster", roster_groups_allowed="family"),
    )
    seen = across(owner, contact)
    assert notifications(seen, private) == [] and notifications(seen, family) == []
    roster_set = (
        f"<query xmlns='jabber:iq:roster'><item jid='{contact.bare}'><group>family</group>"
        "</item></query>"
    )
    assert iq(owner, "set", roster_set).get("type") == "result"
    publish(owner, family, devices(3), "f")
    assert item_ids(across(owner, contact), family) == ["f"]


def test_blocked_remote_contact_gets_nothing(sign: Any) -> None:
    """XEP-0163 §4.3.3 exception: nothing to a contact the owner blocks (XEP-0191)."""
    owner, contact = pair(sign)
    interested(owner, contact, METADATA)
    block = f"<block xmlns='urn:xmpp:blocking'><item jid='{contact.bare}'/></block>"
    assert iq(owner, "set", block).get("type") == "result"
    publish(owner, METADATA, avatar("av7"), "av7")
    # (the owner may not write to a blocked contact: a ping of its server is the marker)
    ping_id = f"ping-{next(_ids)}"
    contact.c.send(f"<iq type='get' id='{ping_id}' to='a.test'><ping xmlns='urn:xmpp:ping'/></iq>")
    seen = []
    while (el := contact.c.next()).get("id") != ping_id:
        seen.append(el)
    assert notifications(seen, METADATA) == []
    unblock = f"<unblock xmlns='urn:xmpp:blocking'><item jid='{contact.bare}'/></unblock>"
    assert iq(owner, "set", unblock).get("type") == "result"
    publish(owner, METADATA, avatar("av8"), "av8")
    assert item_ids(across(owner, contact), METADATA) == ["av8"]


# --- caps over s2s (XEP-0115) ----------------------------------------------------------------


def test_remote_caps_are_asked_over_s2s_and_cached(sign: Any) -> None:
    owner, contact = pair(sign)
    other = sign("b.test", contact.bare.partition("@")[0], "second")
    features = caps_features((METADATA,))
    # the owner's server asks the contact's resource, from the account (announce checks
    # the node#ver and the 'to')
    announce(contact, features, ("b.test", owner.bare))
    settle(contact, owner)
    # a verified ver is known: nobody asks the second resource
    other.c.send(
        f"<presence><c xmlns='{CAPS}' hash='sha-1' node='{CAPS_NODE}' "
        f"ver='{caps_ver(features)}'/></presence>"
    )
    assert not any(is_caps_query(el) for el in settle(other, owner))
    publish(owner, METADATA, avatar("av6"), "av6")
    assert item_ids(across(owner, contact), METADATA) == ["av6"]
    assert item_ids(across(owner, other), METADATA) == ["av6"]


def test_remote_caps_with_a_wrong_hash_are_not_trusted(sign: Any) -> None:
    """XEP-0115 §5.4: an answer that does not hash to the ver is not cached: the next
    resource announcing that ver is asked again."""
    owner, contact = pair(sign)
    other = sign("b.test", contact.bare.partition("@")[0], "second")
    features = caps_features((METADATA,))
    wrong = caps_ver(caps_features(()))
    announce(contact, features, ("b.test", owner.bare), ver=wrong)
    settle(contact, owner)
    announce(other, features, ("b.test", owner.bare), ver=wrong)


# --- explicit subscriptions from elsewhere (XEP-0060 §6.1) ---------------------------------


def test_remote_explicit_subscriber_gets_notifications(sign: Any) -> None:
    """No presence subscription: a subscription to an open node, at the full JID."""
    owner, stranger = sign("a.test"), sign("b.test")
    node = "urn:fastxmpp:test:open"
    publish(owner, node, devices(1), "o1", publish_options(access_model="open"))
    reply = iq(
        stranger,
        "set",
        f"<pubsub xmlns='{PUBSUB}'><subscribe node='{node}' jid='{stranger.full}'/></pubsub>",
        to=owner.bare,
    )
    assert reply.get("type") == "result"
    # §6.1.7: the last item after the subscription
    assert item_ids(across(owner, stranger), node) == ["o1"]
    publish(owner, node, devices(2), "o2")
    [msg] = notifications(across(owner, stranger), node)
    assert msg.get("to") == stranger.full and item_ids([msg], node) == ["o2"]
    # no replyto to an entity without a presence subscription (§4.3.1.3)
    assert msg.find(f"{{{ADDRESS}}}addresses") is None


# --- discovery -------------------------------------------------------------------------------


def test_server_domain_shows_pep(fed: Federation, sign: Any) -> None:
    """Prosody and ejabberd show PEP on the domain too; Smack's OMEMO support check asks
    the domain's disco#info for the pubsub features."""
    owner, contact = sign("a.test"), sign("b.test")
    for asker in (owner, contact):  # its own user, and over s2s
        reply = iq(asker, "get", f"<query xmlns='{INFO}'/>", to="a.test")
        identities = {(i.get("category"), i.get("type")) for i in reply.iter(f"{{{INFO}}}identity")}
        assert {("server", "im"), ("pubsub", "pep")} <= identities
        features = {f.get("var") for f in reply.iter(f"{{{INFO}}}feature")}
        assert {PUBSUB, f"{PUBSUB}#publish", f"{PUBSUB}#filtered-notifications"} <= features


# --- the table of remote resources -----------------------------------------------------------


def test_remote_resources_are_bounded() -> None:
    """No peer grows the table without end: PER_CONTACT resources per contact (a contact
    inventing resources pushes out its own oldest), `size` in all (the least recently heard
    of goes); a resource goes with the last account it was available to."""
    dropped: list[str] = []
    table = RemoteResources(1000, lambda data, to: True, lambda r: dropped.append(r.full))
    for i in range(PER_CONTACT + 5):
        table.available(f"flood@b.test/{i}", "owner@a.test")
    assert len(table) == PER_CONTACT
    assert table.of("flood@b.test")[0].full == "flood@b.test/5"
    assert dropped == [f"flood@b.test/{i}" for i in range(5)]

    table = RemoteResources(3, lambda data, to: True, lambda r: dropped.append(r.full))
    dropped.clear()
    for name in ("a", "b", "c"):
        table.available(f"{name}@b.test/r", "owner@a.test")
    resource, initial = table.available("a@b.test/r", "other@a.test")
    assert initial and list(resource.seen_by) == ["owner@a.test", "other@a.test"]
    assert table.available("a@b.test/r", "other@a.test")[1] is False  # not initial again
    table.available("d@b.test/r", "owner@a.test")  # b is the least recently heard of
    assert dropped == ["b@b.test/r"] and len(table) == 3
    table.unavailable("a@b.test/r", "owner@a.test")  # still available to the other
    assert [r.full for r in table.of("a@b.test")] == ["a@b.test/r"]
    table.forget("other@a.test")
    assert table.of("a@b.test") == [] and dropped[-1] == "a@b.test/r"
    table.forget("owner@a.test", "c@b.test")
    assert len(table) == 1 and table.of("d@b.test")
