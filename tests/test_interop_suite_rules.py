"""Rules the XMPP Interop Testing suite (Smack's integration tests and its server extensions)
checks, where our own tests did not pin them down already (docs/COMPLIANCE.md lists the suite's
test classes and what we found)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import PASSWORD, ServerProcess
from lxml import etree
from xmpp_raw import RawClient

INFO = "http://jabber.org/protocol/disco#info"
PUBSUB = "http://jabber.org/protocol/pubsub"


@pytest.fixture
def alice(server: ServerProcess, ca_file: str) -> Iterator[RawClient]:
    c = server.client()
    c.login(ca_file, "alice", PASSWORD, "suite")
    yield c
    c.close()


def disco_info(c: RawClient, to: str) -> etree._Element:
    c.send(f"<iq type='get' id='info' to='{to}'><query xmlns='{INFO}'/></iq>")
    reply = c.next()
    assert reply.get("type") == "result", etree.tostring(reply)
    return reply.find(f"{{{INFO}}}query")


def features(query: etree._Element) -> set[str]:
    return {f.get("var") for f in query.iterfind(f"{{{INFO}}}feature")}


def identities(query: etree._Element) -> set[tuple[str, str]]:
    return {(i.get("category"), i.get("type")) for i in query.iterfind(f"{{{INFO}}}identity")}


def test_domain_is_not_taken_for_a_generic_pubsub_service(alice: RawClient) -> None:
    # Smack's PubSubManager.getPubSubService (the suite's XEP-0060 §5 classes) takes the first
    # of the domain and its items whose disco#info has both pubsub#publish and #subscribe,
    # preferring a pubsub/service identity but settling for any: with PEP's whole feature list
    # on the domain it created nodes at the domain, which has no generic service (errors).
    domain = disco_info(alice, "localhost")
    assert not {f"{PUBSUB}#publish", f"{PUBSUB}#subscribe"} <= features(domain)
    # What clients look for on the domain stays: PEP's identity (XEP-0163) and the pubsub
    # namespace (Smack's OMEMO support check).
    assert ("pubsub", "pep") in identities(domain) and PUBSUB in features(domain)
    # The account, where XEP-0163 §6.1 asks, has them all.
    account = features(disco_info(alice, "alice@localhost"))
    assert {PUBSUB, f"{PUBSUB}#publish", f"{PUBSUB}#subscribe"} <= account


def online(
    server: ServerProcess, ca_file: str, opened: list[RawClient], user: str, prio: int
) -> RawClient:
    c = server.client()
    opened.append(c)
    c.login(ca_file, user, PASSWORD, f"p{prio}")
    c.send(f"<presence><priority>{prio}</priority></presence>")
    settle(c)
    return c


def settle(c: RawClient) -> list[etree._Element]:
    """What c received until the answer to a ping: all the server did for what c sent."""
    c.send("<iq type='get' id='settle'><ping xmlns='urn:xmpp:ping'/></iq>")
    got = []
    while (el := c.next()).get("id") != "settle":
        got.append(el)
    return got


def test_rfc6121_section8_delivery_as_the_suite_checks_it(
    server: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    sender = online(server, ca_file, clients, "carol", 0)
    high, zero, low = (online(server, ca_file, clients, "dave", p) for p in (1, 0, -1))
    marker = "<marker xmlns='urn:xmpp-interop:marker:0'>m</marker>"

    def sent(stanza: str) -> tuple[list[etree._Element], list[list[etree._Element]]]:
        sender.send(stanza)
        back = settle(sender)
        return back, [[el for el in settle(c) if el.get("id") == "t"] for c in (high, zero, low)]

    # §8.5.2.1.1: a headline to the bare JID reaches every non-negative resource, 'to' kept.
    back, got = sent("<message type='headline' to='dave@localhost' id='t'><body>h</body></message>")
    assert [len(g) for g in got] == [1, 1, 0] and not back
    assert {g[0].get("to") for g in got[:2]} == {"dave@localhost"}
    # A normal message to the bare JID keeps its 'to' too, and never reaches priority -1.
    back, got = sent("<message to='dave@localhost' id='t'><body>n</body></message>")
    assert got[2] == [] and any(got[:2])
    assert all(g[0].get("to") == "dave@localhost" for g in got if g)
    # groupchat to a bare JID: not delivered, an error to the sender.
    back, got = sent(
        "<message type='groupchat' to='dave@localhost' id='t'><body>g</body></message>"
    )
    assert got == [[], [], []] and [el.get("type") for el in back] == ["error"]
    # §8.5.2.1.2: directed presence to the bare JID reaches every available resource, the
    # negative one too, with its extension and the bare 'to'.
    back, got = sent(f"<presence to='dave@localhost' id='t'>{marker}</presence>")
    assert all(len(g) == 1 and g[0].get("to") == "dave@localhost" for g in got)
    assert all(g[0].find("{urn:xmpp-interop:marker:0}marker") is not None for g in got)
    # §8.5.3.1: an iq result or error to a full JID is delivered like any other stanza.
    for kind in ("result", "error"):
        sender.send(
            f"<iq type='{kind}' to='dave@localhost/p-1' id='t'>"
            "<test xmlns='urn:xmpp-interop:test:0'/></iq>"
        )
        settle(sender)
        assert [el.get("type") for el in settle(low) if el.get("id") == "t"] == [kind]
    # §8.5.3.2.2: presence to a resource that is not online is dropped, no error.
    back, got = sent(
        f"<presence type='unavailable' to='dave@localhost/gone' id='t'>{marker}</presence>"
    )
    assert not back and got == [[], [], []]
