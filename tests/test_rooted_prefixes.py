"""A prefix declared on a client's stream root and used in its stanzas (legal XML, RFC 6120
§4.8.3, though clients rarely do it): the server cannot move those stanzas' bytes to
another stream as they are, so it writes them anew with the declarations they need. Every
copy it makes of them must still be well-formed, in jabber:client, with the prefixed child
in its namespace: delivered, routed as an iq, carbon-copied (XEP-0280), stored offline and
delivered with a delay (XEP-0160, XEP-0203). The receiving raw clients parse with lxml: a
malformed copy fails the test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import xmpp_raw
from conftest import PASSWORD, FreshNames, ServerProcess, module_server
from test_roster import sync
from xmpp_raw import CLIENT, RawClient

POOL = FreshNames("rp", 40)
EXT = "urn:example:ext"
CARBONS = "urn:xmpp:carbons:2"
FORWARD = "urn:xmpp:forward:0"
DELAY = "urn:xmpp:delay"


@pytest.fixture(scope="module")
def srv(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(ca, tmp_path_factory, POOL)


@pytest.fixture
def login(
    srv: ServerProcess, ca_file: str, clients: list[RawClient], monkeypatch: pytest.MonkeyPatch
) -> Any:
    def connect(name: str, resource: str = "r", rooted: bool = False) -> RawClient:
        if rooted:
            header = xmpp_raw.HEADER.replace(
                " version='1.0'>", f" xmlns:ext='{EXT}' version='1.0'>"
            )
            monkeypatch.setattr(xmpp_raw, "HEADER", header)
        c = srv.client()
        clients.append(c)
        try:
            c.login(ca_file, name, PASSWORD, resource)
        finally:
            monkeypatch.undo()
        c.send("<presence/>")
        at_login[c] = sync(c)
        return c

    return connect


at_login: dict[RawClient, list[Any]] = {}


def only(elements: list[Any], tag: str) -> Any:
    found = [el for el in elements if el.tag == f"{{{CLIENT}}}{tag}"]
    assert len(found) == 1, found
    return found[0]


def test_delivered_routed_and_carbon_copied(login: Any) -> None:
    names = POOL.names()
    alice_name, bob_name = next(names), next(names)
    alice = login(alice_name, "rooted", rooted=True)
    other = login(alice_name, "other")  # alice's second client, with carbons on
    other.send(f"<iq type='set' id='c1'><enable xmlns='{CARBONS}'/></iq>")
    sync(other)
    bob = login(bob_name)
    bob_full = f"{bob_name}@localhost/r"
    alice.send(f"<message to='{bob_full}' type='chat'><body>hi</body><ext:mark/></message>")
    alice.send(f"<iq to='{bob_full}' type='get' id='q1'><ext:query/></iq>")
    sync(alice)
    got = sync(bob)
    message, iq = only(got, "message"), only(got, "iq")
    assert message.find(f"{{{EXT}}}mark") is not None
    assert message.get("from") == f"{alice_name}@localhost/rooted"
    assert iq.find(f"{{{EXT}}}query") is not None
    carbon = only(sync(other), "message")
    inner = carbon.find(f"{{{CARBONS}}}sent/{{{FORWARD}}}forwarded/{{{CLIENT}}}message")
    assert inner is not None and inner.find(f"{{{EXT}}}mark") is not None


def test_stored_offline_and_delivered_later(login: Any) -> None:
    names = POOL.names()
    alice_name, carol_name = next(names), next(names)
    alice = login(alice_name, rooted=True)
    alice.send(
        f"<message to='{carol_name}@localhost' type='chat'><body>later</body><ext:mark/></message>"
    )
    sync(alice)
    carol = login(carol_name)
    message = only(at_login.pop(carol), "message")
    assert message.findtext(f"{{{CLIENT}}}body") == "later"
    assert message.find(f"{{{EXT}}}mark") is not None
    assert message.find(f"{{{DELAY}}}delay") is not None
