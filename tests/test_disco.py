"""XEP-0030 service discovery: the server's identity, features and items, the answers given
on behalf of accounts, and the errors; with a raw stream and with slixmpp."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PASSWORD, ServerProcess
from lxml import etree
from slixmpp import JID, ClientXMPP
from slixmpp.exceptions import IqError
from xmpp_raw import CLIENT, RawClient, stanza_error

logging.getLogger("slixmpp").setLevel(logging.WARNING)

INFO = "http://jabber.org/protocol/disco#info"
ITEMS = "http://jabber.org/protocol/disco#items"
CAPS = "http://jabber.org/protocol/caps"
LANG = "{http://www.w3.org/XML/1998/namespace}lang"
# What the modules of this issue declare.
SERVER_FEATURES = {
    INFO,
    ITEMS,
    "urn:xmpp:ping",
    "jabber:iq:version",
    "urn:xmpp:time",
    "jabber:iq:last",
    "jabber:iq:private",
    "msgoffline",
}


@pytest.fixture
def clients() -> Iterator[list[RawClient]]:
    opened: list[RawClient] = []
    yield opened
    for c in opened:
        c.close()


def login(srv: ServerProcess, ca_file: str, opened: list[RawClient], user: str) -> RawClient:
    c = srv.client()
    opened.append(c)
    c.login(ca_file, user, PASSWORD, "disco")
    return c


def ask(c: RawClient, namespace: str, to: str | None, node: str | None = None) -> Any:
    iq_id = f"d{time.monotonic_ns()}"
    to_attr = f" to='{to}'" if to else ""
    node_attr = f" node='{node}'" if node else ""
    c.send(f"<iq type='get' id='{iq_id}'{to_attr}><query xmlns='{namespace}'{node_attr}/></iq>")
    while True:
        el = c.next()
        if el.tag == f"{{{CLIENT}}}iq" and el.get("id") == iq_id:
            return el


def query_of(reply: Any, namespace: str) -> Any:
    assert reply.get("type") == "result", etree.tostring(reply)
    query = reply.find(f"{{{namespace}}}query")
    assert query is not None
    return query


def identities(query: Any) -> list[tuple[str | None, str | None, str | None]]:
    return [
        (i.get("category"), i.get("type"), i.get("name")) for i in query.iter(f"{{{INFO}}}identity")
    ]


def features(query: Any) -> set[str]:
    return {f.get("var") for f in query.iter(f"{{{INFO}}}feature")}


def caps_string(query: Any) -> str:
    """XEP-0115 §5.1 steps 1-9 (forms aside): category/type/lang/name of each identity,
    then each feature, sorted, '<' after each."""
    text = "".join(
        f"{i.get('category')}/{i.get('type')}/{i.get(LANG, '')}/{i.get('name', '')}<"
        for i in sorted(
            query.iter(f"{{{INFO}}}identity"),
            key=lambda i: (i.get("category"), i.get("type"), i.get(LANG, "")),
        )
    )
    return text + "".join(f"{f}<" for f in sorted(features(query)))


def sha1_b64(text: str) -> str:
    return base64.b64encode(hashlib.sha1(text.encode()).digest()).decode()


def test_server_info(server: ServerProcess, ca_file: str, clients: list[RawClient]) -> None:
    c = login(server, ca_file, clients, "alice")
    reply = ask(c, INFO, "localhost")
    query = query_of(reply, INFO)
    # XEP-0163: PEP shown on the domain as well as on accounts (Prosody and ejabberd do)
    assert identities(query) == [("server", "im", "fastxmpp"), ("pubsub", "pep", None)]
    assert features(query) >= SERVER_FEATURES
    assert reply.get("to") == "alice@localhost/disco"
    assert reply.get("from") == "localhost"


def test_server_items_and_virtual_host(
    server: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    c = login(server, ca_file, clients, "alice")
    query = query_of(ask(c, ITEMS, "localhost"), ITEMS)
    assert query.get("node") is None
    assert all(item.get("jid") for item in query)  # none yet, but each would name a JID
    # The other host served here answers too.
    assert identities(query_of(ask(c, INFO, "example.test"), INFO)) == [
        ("server", "im", "fastxmpp"),
        ("pubsub", "pep", None),
    ]


def test_unknown_node_is_item_not_found(
    server: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    c = login(server, ca_file, clients, "alice")
    assert stanza_error(ask(c, INFO, "localhost", node="nope")) == "item-not-found"
    assert stanza_error(ask(c, ITEMS, "localhost", node="nope")) == "item-not-found"
    assert stanza_error(ask(c, INFO, "alice@localhost", node="nope")) == "item-not-found"


def test_own_account(server: ServerProcess, ca_file: str, clients: list[RawClient]) -> None:
    c = login(server, ca_file, clients, "alice")
    reply = ask(c, INFO, "alice@localhost")
    query = query_of(reply, INFO)
    assert reply.get("from") == "alice@localhost"
    assert identities(query) == [("account", "registered", None), ("pubsub", "pep", None)]
    assert {INFO, ITEMS, "jabber:iq:last"} <= features(query)
    assert "jabber:iq:version" not in features(query)  # a server feature only
    assert len(query_of(ask(c, ITEMS, "alice@localhost"), ITEMS)) == 0


def test_other_accounts(server: ServerProcess, ca_file: str, clients: list[RawClient]) -> None:
    c = login(server, ca_file, clients, "carol")
    # §7: no presence subscription from dave's side: the same answer as for no account, so
    # accounts cannot be harvested.
    assert stanza_error(ask(c, INFO, "dave@localhost")) == "service-unavailable"
    assert stanza_error(ask(c, INFO, "dave@localhost", node="x")) == "service-unavailable"
    assert stanza_error(ask(c, INFO, "nobody@localhost")) == "service-unavailable"
    # §8 rule 2: disco#items of an account that does not exist is an empty result, with or
    # without a node (the same answer as for an account with none to show).
    for node in (None, "x"):
        reply = ask(c, ITEMS, "nobody@localhost", node=node)
        assert reply.get("type") == "result", etree.tostring(reply)
        assert len(query_of(reply, ITEMS)) == 0
    # Items of an account: an empty result (resources are never listed).
    assert len(query_of(ask(c, ITEMS, "dave@localhost"), ITEMS)) == 0


def test_set_is_bad_request(server: ServerProcess, ca_file: str, clients: list[RawClient]) -> None:
    c = login(server, ca_file, clients, "alice")
    c.send(f"<iq type='set' id='s1' to='localhost'><query xmlns='{INFO}'/></iq>")
    reply = c.next()
    assert reply.get("id") == "s1" and stanza_error(reply) == "bad-request"


class Client(ClientXMPP):
    def __init__(self, jid: str, ca_file: str) -> None:
        super().__init__(jid, PASSWORD)
        self.ca_certs = Path(ca_file)
        self.enable_direct_tls = False
        self.enable_plaintext = False
        self.ready = asyncio.get_running_loop().create_future()
        self.add_event_handler("session_start", self._started)
        self.register_plugin("xep_0030")

    async def _started(self, _event: Any) -> None:
        if not self.ready.done():
            self.ready.set_result(True)


async def test_slixmpp_disco(server: ServerProcess, ca_file: str) -> None:
    client = Client("bob@localhost/slix", ca_file)
    client.connect("127.0.0.1", server.port)
    try:
        await asyncio.wait_for(client.ready, 20)
        disco = client.plugin["xep_0030"]
        info = await disco.get_info(jid=JID("localhost"), local=False, timeout=10)
        # slixmpp's identities: (category, type, xml:lang, name).
        assert ("server", "im", None, "fastxmpp") in info["disco_info"]["identities"]
        assert set(info["disco_info"]["features"]) >= SERVER_FEATURES
        items = await disco.get_items(jid=JID("localhost"), local=False, timeout=10)
        # The one item: the XEP-0045 multi-user chat service (jid, node, name).
        assert list(items["disco_items"]["items"]) == [("conference.localhost", None, "Chatrooms")]
        own = await disco.get_info(jid=JID("bob@localhost"), local=False, timeout=10)
        assert any(i[0] == "account" for i in own["disco_info"]["identities"])
        with pytest.raises(IqError) as err:
            await disco.get_info(jid=JID("alice@localhost"), local=False, timeout=10)
        assert err.value.iq["error"]["condition"] == "service-unavailable"
    finally:
        client.disconnect()
        await asyncio.sleep(0.1)


def test_subscribed_contact_sees_account_info(make_server: Any, ca_file: str) -> None:
    from test_server_features import subscribe

    srv = make_server()
    for user in ("alice", "bob", "carol"):
        srv.adduser(f"{user}@localhost")
    srv.start()
    opened: list[RawClient] = []
    try:
        subscribe(srv, ca_file, opened)  # alice's roster: bob with subscription "from"
        _, bob = opened
        query = query_of(ask(bob, INFO, "alice@localhost"), INFO)
        assert identities(query) == [("account", "registered", None), ("pubsub", "pep", None)]
        # The other way round: bob's roster has alice with "to" only.
        alice = opened[0]
        assert stanza_error(ask(alice, INFO, "bob@localhost")) == "service-unavailable"
        carol = login(srv, ca_file, opened, "carol")
        assert stanza_error(ask(carol, INFO, "alice@localhost")) == "service-unavailable"
    finally:
        for c in opened:
            c.close()


def test_server_caps_in_stream_features(
    server: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    """XEP-0115 §6.3: the server's own caps in its stream features (§4: hash, node and ver;
    §9.1: SHA-1), before and after authentication; disco#info of node#ver (§6.2) is the
    server's disco#info with that node mirrored, and hashes to ver by §5.1."""
    c = server.client()
    clients.append(c)
    c.open_stream()
    announced = []
    for features_el in (c.starttls(ca_file), None):
        if features_el is None:
            assert c.sasl_scram("alice", PASSWORD).tag.endswith("}success")
            features_el = c.open_stream()
        caps = features_el.find(f"{{{CAPS}}}c")
        assert caps is not None, etree.tostring(features_el)
        announced.append((caps.get("hash"), caps.get("node"), caps.get("ver")))
    assert announced[0] == announced[1]
    hash_name, node, ver = announced[0]
    assert hash_name == "sha-1" and node and ver
    assert c.header.get("from") == "localhost"  # §6.3: the JID to ask for node#ver
    c.bind("caps")
    reply = ask(c, INFO, "localhost", node=f"{node}#{ver}")
    query = query_of(reply, INFO)
    assert query.get("node") == f"{node}#{ver}"
    plain = query_of(ask(c, INFO, "localhost"), INFO)
    assert identities(query) == identities(plain) and features(query) == features(plain)
    assert CAPS in features(plain)  # §7: an entity supporting caps says so
    assert sha1_b64(caps_string(query)) == ver
    # The other host served here announces the same (its disco#info is the same).
    other = server.client()
    clients.append(other)
    other.open_stream("example.test")
    caps = other.starttls(ca_file, "example.test").find(f"{{{CAPS}}}c")
    assert (caps.get("hash"), caps.get("node"), caps.get("ver")) == announced[0]
    assert stanza_error(ask(c, INFO, "localhost", node=f"{node}#other")) == "item-not-found"


def test_contact_addresses(make_server: Any, ca_file: str, clients: list[RawClient]) -> None:
    """XEP-0157 §3: the configured addresses in a serverinfo form of the server's
    disco#info (XEP-0128), and in what its caps hash (XEP-0115 §5.1 step 10: each form's
    FORM_TYPE, then its fields by var, each with its values sorted)."""
    srv = make_server(
        "[contact]\n"
        'abuse = ["mailto:abuse@localhost", "xmpp:abuse@localhost"]\n'
        'admin = ["xmpp:admin@localhost"]\n'
        'status = ["https://status.example.org/?a=1&b=2"]\n'
    )
    srv.adduser("alice@localhost")
    srv.start()
    c = srv.client()
    clients.append(c)
    c.open_stream()
    caps = c.starttls(ca_file).find(f"{{{CAPS}}}c")
    assert c.sasl_scram("alice", PASSWORD).tag.endswith("}success")
    c.open_stream()
    c.bind("disco")
    query = query_of(ask(c, INFO, "localhost"), INFO)
    forms = query.findall("{jabber:x:data}x")
    assert len(forms) == 1 and forms[0].get("type") == "result"
    values = {
        f.get("var"): [v.text for v in f.findall("{jabber:x:data}value")]
        for f in forms[0].findall("{jabber:x:data}field")
    }
    assert values == {
        "FORM_TYPE": ["http://jabber.org/network/serverinfo"],
        "abuse-addresses": ["mailto:abuse@localhost", "xmpp:abuse@localhost"],
        "admin-addresses": ["xmpp:admin@localhost"],
        "status-addresses": ["https://status.example.org/?a=1&b=2"],
    }
    text = caps_string(query) + "http://jabber.org/network/serverinfo<"
    for var in sorted(v for v in values if v != "FORM_TYPE"):
        text += f"{var}<" + "".join(f"{value}<" for value in sorted(values[var]))
    assert sha1_b64(text) == caps.get("ver")


def test_contact_addresses_must_be_uris(tmp_path: Any) -> None:
    from fastxmpp.config import ConfigError, load_config

    path = tmp_path / "bad.toml"
    path.write_text('[contact]\nabuse = ["abuse at example.org"]\n')
    with pytest.raises(ConfigError, match=r"contact.*abuse.*not a URI"):
        load_config(path)
