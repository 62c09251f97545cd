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
