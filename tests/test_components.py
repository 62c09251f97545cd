"""XEP-0114 external components: slixmpp's ComponentXMPP (an independent implementation of the
handshake) exchanging messages, iqs and presence subscriptions with slixmpp and raw clients
through the server; raw streams for every refusal (wrong secret, unknown domain, a second
stream for a connected domain, forged 'from', missing addresses) while the server keeps
serving."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import signal
from collections.abc import Iterator
from typing import Any

import pytest
import trustme
from conftest import PASSWORD, FreshNames, ServerProcess, add_accounts, module_server
from lxml import etree
from slix_client import SlixClient
from slixmpp.componentxmpp import ComponentXMPP
from xmpp_raw import STANZA_ERRORS, STREAM_ERRORS, RawClient, StreamClosed, stanza_error

logging.getLogger("slixmpp").setLevel(logging.WARNING)

GATEWAY = "gateway.localhost"
SECRET = "a long shared secret for the gateway"
COMPONENTS = f"""
[[listeners]]
kind = "component"
address = "127.0.0.1"
port = 0

[components."{GATEWAY}"]
secret = "{SECRET}"

[components."other.localhost"]
secret = "another secret"
"""
POOL = FreshNames("comp", 40)
NAMES = POOL.names()
COMPONENT_NS = "jabber:component:accept"
LISTENING = re.compile(r"component listening on ([\d.]+):(\d+)")


@pytest.fixture(scope="module")
def srv(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(ca, tmp_path_factory, POOL, COMPONENTS)


def component_port(server: ServerProcess) -> int:
    server.wait_for_log("component listening on")  # logged after the c2s listener's line
    match = LISTENING.search(server.log_text())
    assert match, server.log_text()
    return int(match.group(2))


class Gateway(ComponentXMPP):
    """A component that answers disco#info and echoes chat messages back to their sender."""

    def __init__(self, domain: str = GATEWAY, secret: str = SECRET) -> None:
        super().__init__(domain, secret)
        self.register_plugin("xep_0030")
        self.plugin["xep_0030"].add_identity(category="gateway", itype="irc", name="Test gateway")
        self.messages: asyncio.Queue[Any] = asyncio.Queue()
        self.presences: asyncio.Queue[Any] = asyncio.Queue()
        self.ready = asyncio.get_running_loop().create_future()
        self.add_event_handler("session_start", lambda _e: self.ready.set_result(True))
        self.add_event_handler("message", self._message)
        self.add_event_handler("presence_subscribe", self.presences.put_nowait)

    def _message(self, msg: Any) -> None:
        self.messages.put_nowait(msg)
        if msg["type"] == "chat":
            self.send_message(
                mto=msg["from"], mfrom=msg["to"], mbody=f"echo: {msg['body']}", mtype="chat"
            )

    async def online(self, port: int) -> None:
        self.connect("127.0.0.1", port)
        await asyncio.wait_for(self.ready, 20)


async def test_component_and_client_exchange_messages_and_iqs(
    srv: ServerProcess, ca_file: str
) -> None:
    gateway = Gateway()
    await gateway.online(component_port(srv))
    user = next(NAMES)
    client = SlixClient(f"{user}@localhost/phone", ca_file, plugins=("xep_0030",))
    await client.online(srv.port)
    try:
        client.send_message(mto=f"alice@{GATEWAY}", mbody="hello", mtype="chat")
        got = await asyncio.wait_for(gateway.messages.get(), 10)
        assert got["body"] == "hello"
        assert str(got["from"]) == f"{user}@localhost/phone"  # stamped by the server
        echo = await asyncio.wait_for(client.messages.get(), 10)
        assert echo["body"] == "echo: hello"
        assert str(echo["from"]) == f"alice@{GATEWAY}"
        # An iq to the component's domain is the component's to answer (XEP-0030 here).
        info = await client.plugin["xep_0030"].get_info(jid=GATEWAY, timeout=10)
        identities = info["disco_info"]["identities"]
        assert ("gateway", "irc", None, "Test gateway") in identities
    finally:
        client.disconnect()
        gateway.disconnect()
        await asyncio.sleep(0.2)


async def test_a_message_from_a_component_to_an_offline_account_is_stored(
    srv: ServerProcess, ca_file: str
) -> None:
    gateway = Gateway()
    await gateway.online(component_port(srv))
    user = next(NAMES)
    try:
        gateway.send_message(
            mto=f"{user}@localhost", mfrom=f"news@{GATEWAY}", mbody="while away", mtype="chat"
        )
        await asyncio.sleep(0.3)
        client = SlixClient(f"{user}@localhost/later", ca_file)
        await client.online(srv.port)
        try:
            got = await asyncio.wait_for(client.messages.get(), 10)
            assert got["body"] == "while away"
            assert str(got["from"]) == f"news@{GATEWAY}"
            # XEP-0203: it waited offline.
            assert got.xml.find("{urn:xmpp:delay}delay") is not None
        finally:
            client.disconnect()
    finally:
        gateway.disconnect()
        await asyncio.sleep(0.2)


async def test_subscribing_to_a_gateway_contact_goes_through_the_roster(
    srv: ServerProcess, ca_file: str
) -> None:
    """RFC 6121 §3.1: a gateway's users are contacts like remote ones: the subscription
    request reaches the component, its answer changes the user's roster."""
    gateway = Gateway()
    await gateway.online(component_port(srv))
    user = next(NAMES)
    client = SlixClient(f"{user}@localhost/phone", ca_file)
    await client.online(srv.port)
    try:
        contact = f"carol@{GATEWAY}"
        await client.get_roster(timeout=10)  # an interested resource gets pushes (§2.1.6)
        client.send_presence(pto=contact, ptype="subscribe")
        request = await asyncio.wait_for(gateway.presences.get(), 10)
        assert str(request["from"]) == f"{user}@localhost"  # bare, RFC 6121 §3.1.2
        pushed = asyncio.get_running_loop().create_future()

        def roster_push(iq: Any) -> None:
            item = iq["roster"]["items"].get(contact)
            if item and item["subscription"] == "to" and not pushed.done():
                pushed.set_result(item)

        client.add_event_handler("roster_update", roster_push)
        gateway.send_presence(pto=f"{user}@localhost", pfrom=contact, ptype="subscribed")
        await asyncio.wait_for(pushed, 10)
        # slixmpp's roster, kept from the pushes (a roster get with its version would be an
        # empty "nothing changed" answer, RFC 6121 §2.6.3).
        assert client.client_roster[contact]["subscription"] == "to"
    finally:
        client.disconnect()
        gateway.disconnect()
        await asyncio.sleep(0.2)


def login(srv: ServerProcess, ca_file: str) -> RawClient:
    c = srv.client()
    c.login(ca_file, next(NAMES), PASSWORD, "raw")
    return c


def ask(c: RawClient, xml: str, stanza_id: str) -> Any:
    c.send(xml)
    while True:
        el = c.next()
        if el.get("id") == stanza_id:
            return el


def test_stanzas_for_a_component_that_is_not_connected_bounce(
    srv: ServerProcess, ca_file: str
) -> None:
    c = login(srv, ca_file)
    try:
        reply = ask(c, "<message to='x@other.localhost' id='m1'><body>hi</body></message>", "m1")
        assert reply.get("type") == "error"
        assert stanza_error(reply) == "service-unavailable"
        reply = ask(
            c,
            "<iq to='other.localhost' type='get' id='i1'><ping xmlns='urn:xmpp:ping'/></iq>",
            "i1",
        )
        assert stanza_error(reply) == "service-unavailable"
    finally:
        c.close()


def test_the_host_lists_its_components_in_disco_items(srv: ServerProcess, ca_file: str) -> None:
    c = login(srv, ca_file)
    try:
        reply = ask(
            c,
            "<iq to='localhost' type='get' id='d1'>"
            "<query xmlns='http://jabber.org/protocol/disco#items'/></iq>",
            "d1",
        )
        items = {item.get("jid") for item in reply.iter("{*}item")}
        assert {GATEWAY, "other.localhost"} <= items
    finally:
        c.close()


# --- raw component streams ---------------------------------------------------------------


def open_component(srv: ServerProcess, domain: str = GATEWAY) -> RawClient:
    c = RawClient(component_port(srv))
    c.send(
        f"<stream:stream xmlns='{COMPONENT_NS}' "
        f"xmlns:stream='http://etherx.jabber.org/streams' to='{domain}'>"
    )
    c.wait_header()
    return c


def send_handshake(c: RawClient, secret: str = SECRET) -> None:
    digest = hashlib.sha1((c.header.get("id") + secret).encode()).hexdigest()
    c.send(f"<handshake>{digest}</handshake>")


def handshake(c: RawClient, secret: str = SECRET) -> Any:
    """The handshake, and what answers it."""
    send_handshake(c, secret)
    return c.next()


def stream_error_of(c: RawClient) -> str:
    while True:
        try:
            el = c.next()
        except StreamClosed:
            return ""
        if el.tag == "{http://etherx.jabber.org/streams}error":
            condition = el.find(f"{{{STREAM_ERRORS}}}*")
            return "" if condition is None else etree.QName(condition).localname


def test_raw_handshake_and_header(srv: ServerProcess) -> None:
    c = open_component(srv)
    try:
        assert c.header.get("from") == GATEWAY
        assert c.header.get("id")
        assert c.header.nsmap.get(None) == COMPONENT_NS
        assert handshake(c).tag == f"{{{COMPONENT_NS}}}handshake"
    finally:
        c.close()


def test_raw_stanzas_declaring_their_namespace_cross_in_the_other_streams(
    srv: ServerProcess, ca_file: str
) -> None:
    """A client's stanza that declares jabber:client itself reaches the component in
    jabber:component:accept, and a component's that declares jabber:component:accept
    reaches the client in jabber:client, as every other stanza does (XEP-0114, RFC 6120
    §4.8.3): not in a namespace the other side ignores."""
    component = open_component(srv)
    client = srv.client()
    jid = client.login(ca_file, next(NAMES), PASSWORD, "raw")
    try:
        assert handshake(component).tag == f"{{{COMPONENT_NS}}}handshake"
        for sender, receiver, declared, to, received_ns in (
            (client, component, "jabber:client", f"user@{GATEWAY}", COMPONENT_NS),
            (component, client, COMPONENT_NS, jid, "jabber:client"),
        ):
            frm = f" from='user@{GATEWAY}'" if sender is component else ""
            sender.send(
                f"<message xmlns='{declared}' to='{to}'{frm} type='chat'>"
                "<body>declared</body><x xmlns='urn:example:x'/></message>"
            )
            got = receiver.next()
            assert got.tag == f"{{{received_ns}}}message"
            assert got.findtext(f"{{{received_ns}}}body") == "declared"
            assert got.find("{urn:example:x}x") is not None
    finally:
        client.close()
        component.close()


@pytest.mark.parametrize(
    ("domain", "secret", "condition"),
    [
        (GATEWAY, "the wrong secret", "not-authorized"),
        ("nobody.localhost", SECRET, "host-unknown"),
        ("localhost", SECRET, "host-unknown"),
    ],
)
def test_raw_refusals_before_the_handshake(
    srv: ServerProcess, ca_file: str, domain: str, secret: str, condition: str
) -> None:
    c = open_component(srv, domain)
    try:
        if condition != "host-unknown":
            send_handshake(c, secret)
        assert stream_error_of(c) == condition
        assert c.wait_closed()
    finally:
        c.abort()
    client = login(srv, ca_file)  # the server keeps serving
    client.close()


def test_raw_stanza_before_the_handshake_is_not_authorized(srv: ServerProcess) -> None:
    c = open_component(srv)
    try:
        c.send(f"<message from='a@{GATEWAY}' to='x@localhost'><body>early</body></message>")
        assert stream_error_of(c) == "not-authorized"
    finally:
        c.abort()


def test_raw_second_stream_for_a_connected_domain_gets_conflict(
    srv: ServerProcess, ca_file: str
) -> None:
    first = open_component(srv)
    handshake(first)
    second = open_component(srv)
    try:
        send_handshake(second)
        assert stream_error_of(second) == "conflict"
        # The first keeps the domain: a client's message still reaches it.
        client = login(srv, ca_file)
        try:
            client.send(
                f"<message to='z@{GATEWAY}' id='k1' type='chat'><body>still</body></message>"
            )
            got = first.next()
            assert got.tag == f"{{{COMPONENT_NS}}}message"
            assert got.findtext(f"{{{COMPONENT_NS}}}body") == "still"
        finally:
            client.close()
    finally:
        second.abort()
        first.close()


@pytest.mark.parametrize(
    ("stanza", "condition"),
    [
        ("<message from='a@other.localhost' to='x@localhost'><body>forged</body></message>",
         "invalid-from"),
        ("<message from='a@localhost' to='x@localhost'><body>forged</body></message>",
         "invalid-from"),
        ("<message to='x@localhost'><body>no from</body></message>", "improper-addressing"),
        (f"<message from='a@{GATEWAY}'><body>no to</body></message>", "improper-addressing"),
        ("<foo xmlns='urn:example'/>", "unsupported-stanza-type"),
    ],
)  # fmt: skip
def test_raw_bad_stanzas_end_the_component_stream(
    srv: ServerProcess, ca_file: str, stanza: str, condition: str
) -> None:
    c = open_component(srv)
    try:
        handshake(c)
        c.send(stanza)
        assert stream_error_of(c) == condition
    finally:
        c.abort()
    client = login(srv, ca_file)
    client.close()


def test_raw_component_iq_to_an_account_is_answered_by_the_server(
    srv: ServerProcess, ca_file: str
) -> None:
    """RFC 6120 §10.5.3: an iq to an account's bare JID is the server's to answer, for a
    component as for anyone (here XEP-0054: a vCard, published by the account first)."""
    user = next(NAMES)
    client = srv.client()
    client.login(ca_file, user, PASSWORD, "raw")
    account = f"{user}@localhost"
    try:
        reply = ask(
            client,
            "<iq type='set' id='v1'><vCard xmlns='vcard-temp'><FN>Comp User</FN></vCard></iq>",
            "v1",
        )
        assert reply.get("type") == "result"
    finally:
        client.close()
    c = open_component(srv)
    try:
        handshake(c)
        c.send(
            f"<iq from='bot@{GATEWAY}' to='{account}' type='get' id='v2'>"
            "<vCard xmlns='vcard-temp'/></iq>"
        )
        reply = c.next()
        assert reply.get("type") == "result", etree.tostring(reply)
        assert (reply.get("from"), reply.get("to")) == (account, f"bot@{GATEWAY}")
        assert reply.findtext("{vcard-temp}vCard/{vcard-temp}FN") == "Comp User"
    finally:
        c.close()


def test_raw_component_to_a_room_or_another_server_gets_an_error(srv: ServerProcess) -> None:
    c = open_component(srv)
    try:
        handshake(c)
        for i, to in enumerate(("room@conference.localhost", "someone@example.org")):
            c.send(f"<message from='a@{GATEWAY}' to='{to}' id='e{i}'><body>x</body></message>")
            reply = c.next()
            assert reply.get("id") == f"e{i}" and reply.get("type") == "error"
            assert reply.get("to") == f"a@{GATEWAY}"
            error = reply.find(f"{{{COMPONENT_NS}}}error")
            assert error is not None
            assert error.find(f"{{{STANZA_ERRORS}}}service-unavailable") is not None
    finally:
        c.close()


def test_components_get_system_shutdown_when_the_server_stops(
    ca: trustme.CA, tmp_path: Any
) -> None:
    server = ServerProcess(tmp_path, ca, ("localhost",), COMPONENTS)
    add_accounts(server, [])
    server.start()
    try:
        c = open_component(server)
        handshake(c)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        assert stream_error_of(c) == "system-shutdown"
        c.abort()
        # A clean stop (a second signal from stop() could meet the exiting process).
        assert server.proc.wait(20) == 0
    finally:
        server.stop()


def test_a_component_domain_must_not_be_a_host(ca: trustme.CA, tmp_path: Any) -> None:
    from conftest import run_cli

    server = ServerProcess(tmp_path, ca, ("localhost",), '[components."localhost"]\nsecret = "x"\n')
    check = run_cli("check-config", config=server.config)
    assert check.returncode != 0
    assert "localhost is a host" in check.stdout + check.stderr
