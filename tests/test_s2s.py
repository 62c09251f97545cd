"""Server-to-server federation (RFC 6120 §13) between real fastxmpp processes: messages, iqs,
subscriptions, presence and probes across servers; offline storage and privacy for remote
senders; SASL EXTERNAL (XEP-0178) between servers trusting the test CA, Server Dialback
(XEP-0220) between servers that do not; refusals and hostile peers on raw sockets."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from conftest import ServerProcess, assert_still_serving
from federation import (
    Federation,
    befriend_across,
    free_port,
    roster_state,
    sign_in,
    sync,
    tag,
    wait_for,
    wait_listening,
)
from xmpp_raw import CLIENT, SASL, STREAMS, TLS, RawClient, stanza_error

SERVER = "jabber:server"
S2S_HEADER = (
    "<?xml version='1.0'?><stream:stream xmlns='{ns}' xmlns:stream='{streams}' "
    "xmlns:db='jabber:server:dialback' from='{frm}' to='{to}' version='1.0'>"
)


@pytest.fixture(scope="module")
def trusted(
    ca: trustme.CA, ca_file: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Federation]:
    # one link each way (XEP-0288 off): the two-link path
    fed = Federation(
        ca, tmp_path_factory.mktemp("ext"), ca_file, True, ("a.test", "b.test"), "bidi = false\n"
    )
    yield fed
    fed.stop()


@pytest.fixture(scope="module")
def untrusted(
    ca: trustme.CA, ca_file: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Federation]:
    fed = Federation(ca, tmp_path_factory.mktemp("db"), ca_file, False, ("c.test", "d.test"))
    yield fed
    fed.stop()


@pytest.fixture(scope="module")
def bidirectional(
    ca: trustme.CA, ca_file: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Federation]:
    fed = Federation(ca, tmp_path_factory.mktemp("bidi"), ca_file, True, ("g.test", "h.test"))
    yield fed
    fed.stop()


@pytest.fixture(scope="module")
def tight(
    ca: trustme.CA, ca_file: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Federation]:
    """Links that close when idle for half a second; two stanzas at most wait for a link."""
    fed = Federation(
        ca,
        tmp_path_factory.mktemp("tight"),
        ca_file,
        True,
        ("e.test", "f.test"),
        "idle_timeout = 0.5\nmax_queued_stanzas = 2\n",
    )
    yield fed
    fed.stop()


@pytest.fixture
def login(ca_file: str, clients: list[RawClient]) -> Callable[..., RawClient]:
    def connect(srv: ServerProcess, jid: str, resource: str = "r", available: bool = True):
        return sign_in(srv, ca_file, clients, jid, resource, available)

    return connect


# --- stanzas across servers ------------------------------------------------------------------


def test_message_across_with_sasl_external(trusted: Federation, login: Any) -> None:
    a, b = trusted.servers["a.test"], trusted.servers["b.test"]
    alice = login(a, "alice@a.test")
    bob = login(b, "bob@b.test")
    alice.send("<message to='bob@b.test' type='chat' id='m1'><body>hello b</body></message>")
    msg = wait_for(bob, tag("message"))
    assert msg.get("from") == "alice@a.test/r"
    assert msg.get("to") == "bob@b.test"
    assert msg.findtext(f"{{{CLIENT}}}body") == "hello b"
    # and back, over b.test's own outgoing link
    bob.send("<message to='alice@a.test/r' type='chat'><body>hello a</body></message>")
    assert wait_for(alice, tag("message")).findtext(f"{{{CLIENT}}}body") == "hello a"
    b.wait_for_log("a.test authenticated (SASL EXTERNAL)")
    a.wait_for_log("b.test authenticated (SASL EXTERNAL)")


def test_stanzas_declaring_jabber_client_cross_in_jabber_server(
    trusted: Federation, login: Any
) -> None:
    """A client may declare jabber:client on its stanza itself (a redundant declaration),
    or use a prefix its stream root declares (the server writes that stanza anew, with
    the declaration): on the link the stanza must be in jabber:server (RFC 6120 §4.8.3),
    not in jabber:client, which the receiving server cannot take as a stanza."""
    a, b = trusted.servers["a.test"], trusted.servers["b.test"]
    alice = login(a, "alice@a.test")
    bob = login(b, "bob@b.test")
    alice.send(
        "<message xmlns='jabber:client' to='bob@b.test' type='chat'><body>declared</body>"
        "</message>"
        "<message to='bob@b.test' type='chat'><body>rooted</body>"
        "<stream:x xmlns:q='urn:example:q'/></message>"
        "<message to='bob@b.test' type='chat'><body>after</body></message>"
    )
    got = [wait_for(bob, tag("message")) for _ in range(3)]
    assert [m.findtext(f"{{{CLIENT}}}body") for m in got] == ["declared", "rooted", "after"]
    assert got[1].find("{http://etherx.jabber.org/streams}x") is not None
    assert "unsupported-stanza-type" not in b.log_text() + a.log_text()


def test_a_message_from_another_server_is_archived_for_its_recipient(
    trusted: Federation, login: Any
) -> None:
    """XEP-0313 for a remote sender's message: its stanza-id comes with it, and the
    recipient's archive query returns it. (The parser listed a peer's <body/> in
    jabber:server, which the archive, carbons, CSI and push did not take for a body.)"""
    a, b = trusted.servers["a.test"], trusted.servers["b.test"]
    alice = login(a, "alice@a.test")
    bob = login(b, "bob@b.test")
    alice.send("<message to='bob@b.test' type='chat' id='mam1'><body>archive me</body></message>")
    msg = wait_for(bob, lambda el: el.get("id") == "mam1")
    sid = msg.find("{urn:xmpp:sid:0}stanza-id")
    assert sid is not None and sid.get("by") == "bob@b.test"
    mam = "urn:xmpp:mam:2"
    bob.send(f"<iq type='set' id='q1'><query xmlns='{mam}' queryid='q1'/></iq>")
    found = []
    while (el := bob.next()).get("id") != "q1":
        result = el.find(f"{{{mam}}}result")
        if result is not None:
            found.append(result)
    bodies = [r.findtext(f".//{{{CLIENT}}}body") for r in found]
    assert "archive me" in bodies
    assert found[bodies.index("archive me")].get("id") == sid.get("id")


def test_message_across_with_dialback(untrusted: Federation, login: Any) -> None:
    c, d = untrusted.servers["c.test"], untrusted.servers["d.test"]
    carol = login(c, "carol@c.test")
    dave = login(d, "dave@d.test")
    carol.send("<message to='dave@d.test/r' type='chat'><body>via dialback</body></message>")
    msg = wait_for(dave, tag("message"))
    assert msg.get("from") == "carol@c.test/r"
    assert msg.findtext(f"{{{CLIENT}}}body") == "via dialback"
    d.wait_for_log("c.test authenticated (dialback)")
    assert "SASL EXTERNAL" not in d.log_text()


def test_bidirectional_link(bidirectional: Federation, login: Any) -> None:
    """XEP-0288: the link g.test opened carries h.test's stanzas back; h.test opens none."""
    g, h = bidirectional.servers["g.test"], bidirectional.servers["h.test"]
    gina = login(g, "alice@g.test")
    hank = login(h, "bob@h.test")
    gina.send("<message to='bob@h.test/r' type='chat'><body>one link</body></message>")
    assert wait_for(hank, tag("message")).get("from") == "alice@g.test/r"
    hank.send("<message to='alice@g.test/r' type='chat'><body>same link</body></message>")
    msg = wait_for(gina, tag("message"))
    assert (msg.get("from"), msg.findtext(f"{{{CLIENT}}}body")) == ("bob@h.test/r", "same link")
    hank.send("<iq type='get' id='bp' to='g.test'><ping xmlns='urn:xmpp:ping'/></iq>")
    reply = wait_for(hank, lambda el: el.get("id") == "bp")
    assert (reply.get("type"), reply.get("from")) == ("result", "g.test")
    h.wait_for_log("s2s h.test -> g.test: over the peer's bidirectional link")
    assert "s2s h.test -> g.test: connected" not in h.log_text()
    assert "s2s connection from" not in g.log_text()


def test_a_remote_entity_cannot_enable_carbons(trusted: Federation, login: Any) -> None:
    """XEP-0280 §4.1/§5.1: carbons are for clients hosted on this server; a remote entity
    asking b.test over a server link gets not-allowed, and gets no copies afterwards."""
    a, b = trusted.servers["a.test"], trusted.servers["b.test"]
    erin = login(a, "erin@a.test")
    frank = login(b, "frank@b.test")
    for i, payload in enumerate(("enable", "disable")):
        erin.send(
            f"<iq type='set' id='cb{i}' to='b.test'><{payload} xmlns='urn:xmpp:carbons:2'/></iq>"
        )
        reply = wait_for(erin, lambda el, i=i: el.get("id") == f"cb{i}")
        assert (reply.get("type"), stanza_error(reply)) == ("error", "not-allowed")
    erin.send("<message to='frank@b.test' type='chat' id='after'><body>hi</body></message>")
    assert wait_for(frank, tag("message")).get("id") == "after"
    assert not [el for el in sync(erin) if el.tag == f"{{{CLIENT}}}message"]


def test_iq_ping_across(trusted: Federation, login: Any) -> None:
    a, b = trusted.servers["a.test"], trusted.servers["b.test"]
    carol = login(a, "carol@a.test")
    dave = login(b, "dave@b.test")
    # XEP-0199 §4.2: to the remote server itself
    carol.send("<iq type='get' id='p1' to='b.test'><ping xmlns='urn:xmpp:ping'/></iq>")
    reply = wait_for(carol, lambda el: el.get("id") == "p1")
    assert (reply.get("type"), reply.get("from")) == ("result", "b.test")
    # to a remote client, which answers
    carol.send("<iq type='get' id='p2' to='dave@b.test/r'><ping xmlns='urn:xmpp:ping'/></iq>")
    request = wait_for(dave, tag("iq"))
    assert (request.get("from"), request.get("id")) == ("carol@a.test/r", "p2")
    dave.send("<iq type='result' id='p2' to='carol@a.test/r'/>")
    reply = wait_for(carol, lambda el: el.get("id") == "p2")
    assert (reply.get("type"), reply.get("from")) == ("result", "dave@b.test/r")
    # an iq to a remote resource that is not there: the remote server's error
    carol.send("<iq type='get' id='p3' to='dave@b.test/gone'><ping xmlns='urn:xmpp:ping'/></iq>")
    reply = wait_for(carol, lambda el: el.get("id") == "p3")
    assert reply.get("type") == "error" and stanza_error(reply) == "service-unavailable"


def test_subscription_presence_and_probes_across(trusted: Federation, login: Any) -> None:
    a, b = trusted.servers["a.test"], trusted.servers["b.test"]
    erin = login(a, "erin@a.test")
    frank = login(b, "frank@b.test")
    for x, x_jid, y, y_jid in (
        (erin, "erin@a.test", frank, "frank@b.test"),
        (frank, "frank@b.test", erin, "erin@a.test"),
    ):
        x.send(f"<presence type='subscribe' to='{y_jid}'/>")
        request = wait_for(y, lambda el: tag("presence")(el) and el.get("type") == "subscribe")
        assert request.get("from") == x_jid
        y.send(f"<presence type='subscribed' to='{x_jid}'/>")
        approved = wait_for(x, lambda el: tag("presence")(el) and el.get("type") == "subscribed")
        assert approved.get("from") == y_jid
        # §3.1.5: the contact's available presence follows the approval
        seen = wait_for(x, lambda el: tag("presence")(el) and el.get("type") is None)
        assert seen.get("from") == f"{y_jid}/r"
    assert roster_state(erin, "frank@b.test") == ("both", None)
    assert roster_state(frank, "erin@a.test") == ("both", None)
    # §4.4: broadcast of a presence change
    frank.send("<presence><show>away</show></presence>")
    update = wait_for(erin, lambda el: tag("presence")(el) and el.get("from") == "frank@b.test/r")
    assert update.findtext(f"{{{CLIENT}}}show") == "away"
    # §4.3: a new resource's initial presence probes the remote contact
    erin2 = login(a, "erin@a.test", resource="second", available=False)
    # (Not through login's sync: the probe's answer may come before the ping's.)
    erin2.send("<presence/>")
    probed = wait_for(erin2, lambda el: tag("presence")(el) and el.get("from") == "frank@b.test/r")
    assert probed.findtext(f"{{{CLIENT}}}show") == "away"
    # §4.5: unavailable across
    frank.send("<presence type='unavailable'/>")
    gone = wait_for(
        erin,
        lambda el: (
            tag("presence")(el)
            and el.get("from") == "frank@b.test/r"
            and el.get("type") == "unavailable"
        ),
    )
    assert gone.get("to") == "erin@a.test"


def test_unsubscribe_from_another_server_makes_the_contact_unavailable(
    trusted: Federation, login: Any
) -> None:
    """RFC 6121 §3.3.3: the contact's server, told by a remote user's server that the user
    unsubscribes, sends the user unavailable presence from each available resource of the
    contact (the user's own server does not know them)."""
    a, b = trusted.servers["a.test"], trusted.servers["b.test"]
    user = login(a, "ivan@a.test")
    contact = login(b, "judy@b.test")
    befriend_across(user, "ivan@a.test", contact, "judy@b.test")
    sync(user)
    sync(contact)
    user.send("<presence type='unsubscribe' to='judy@b.test'/>")
    wait_for(contact, lambda el: tag("presence")(el) and el.get("type") == "unsubscribe")
    gone = wait_for(user, lambda el: tag("presence")(el) and el.get("from") == "judy@b.test/r")
    assert gone.get("type") == "unavailable"
    assert roster_state(user, "judy@b.test") == ("from", None)
    assert roster_state(contact, "ivan@a.test") == ("to", None)


def test_blocking_a_remote_contact_hides_presence(trusted: Federation, login: Any) -> None:
    """XEP-0191 §3.3 across servers: the blocked contact gets unavailable presence, then no
    presence broadcast; the blocking user sees it go unavailable. §3.4 on unblocking."""
    a, b = trusted.servers["a.test"], trusted.servers["b.test"]
    user = login(a, "heidi@a.test")
    contact = login(b, "grace@b.test")
    befriend_across(user, "heidi@a.test", contact, "grace@b.test")
    sync(user)
    sync(contact)
    user.send(
        "<iq type='set' id='blk'><block xmlns='urn:xmpp:blocking'>"
        "<item jid='grace@b.test'/></block></iq>"
    )
    wait_for(user, lambda el: el.get("id") == "blk")
    gone = wait_for(contact, lambda el: tag("presence")(el) and el.get("from") == "heidi@a.test/r")
    assert gone.get("type") == "unavailable"
    seen = wait_for(user, lambda el: tag("presence")(el) and el.get("from") == "grace@b.test")
    assert seen.get("type") == "unavailable"
    user.send("<presence><status>hidden</status></presence>")
    contact.send("<message to='heidi@a.test/r' type='chat' id='probe'><body>?</body></message>")
    error = wait_for(contact, lambda el: el.get("id") == "probe")  # the round trip
    assert stanza_error(error) == "service-unavailable"
    assert not [
        el for el in sync(contact) if tag("presence")(el) and el.get("from") == "heidi@a.test/r"
    ]
    user.send(
        "<iq type='set' id='unb'><unblock xmlns='urn:xmpp:blocking'>"
        "<item jid='grace@b.test'/></unblock></iq>"
    )
    back = wait_for(contact, lambda el: tag("presence")(el) and el.get("from") == "heidi@a.test/r")
    assert back.get("type") is None and back.findtext(f"{{{CLIENT}}}status") == "hidden"


def test_directed_presence_across(trusted: Federation, login: Any) -> None:
    a, b = trusted.servers["a.test"], trusted.servers["b.test"]
    grace = login(a, "grace@a.test")
    heidi = login(b, "heidi@b.test")
    grace.send("<presence to='heidi@b.test/r'><status>just you</status></presence>")
    seen = wait_for(heidi, lambda el: tag("presence")(el) and el.get("from") == "grace@a.test/r")
    assert seen.findtext(f"{{{CLIENT}}}status") == "just you"
    # §4.6.3: the unavailable presence follows the directed presence
    grace.send("<presence type='unavailable'/>")
    gone = wait_for(heidi, lambda el: tag("presence")(el) and el.get("from") == "grace@a.test/r")
    assert gone.get("type") == "unavailable"


def test_offline_storage_of_a_remote_message(trusted: Federation, login: Any) -> None:
    a, b = trusted.servers["a.test"], trusted.servers["b.test"]
    ivan = login(a, "ivan@a.test")
    ivan.send("<message to='ivan@b.test' type='chat' id='off'><body>later</body></message>")
    sync(ivan)
    time.sleep(0.5)  # over the link and into b.test's store
    reader = login(b, "ivan@b.test", available=False)
    reader.send("<presence/>")  # RFC 6121 §8.5.2.1.1 / XEP-0160: at initial presence
    stored = wait_for(reader, tag("message"))
    assert stored.get("from") == "ivan@a.test/r"
    assert stored.findtext(f"{{{CLIENT}}}body") == "later"
    assert stored.find("{urn:xmpp:delay}delay") is not None


def test_privacy_blocks_a_remote_jid(trusted: Federation, login: Any) -> None:
    a, b = trusted.servers["a.test"], trusted.servers["b.test"]
    judy = login(a, "judy@a.test")
    target = login(b, "judy@b.test")
    target.send(
        "<iq type='set' id='blk'><block xmlns='urn:xmpp:blocking'>"
        "<item jid='judy@a.test'/></block></iq>"
    )
    assert wait_for(target, lambda el: el.get("id") == "blk").get("type") == "result"
    judy.send("<message to='judy@b.test/r' type='chat' id='x1'><body>blocked?</body></message>")
    error = wait_for(judy, lambda el: el.get("id") == "x1")
    assert error.get("type") == "error" and stanza_error(error) == "service-unavailable"
    assert error.get("from") == "judy@b.test/r"
    # the bounce carries the message's payload back, over the link (jabber:server) too
    assert error.findtext(f"{{{CLIENT}}}body") == "blocked?"
    received = sync(target)
    assert not [el for el in received if el.tag == f"{{{CLIENT}}}message"]


def test_unreachable_domain_bounces(trusted: Federation, login: Any) -> None:
    a = trusted.servers["a.test"]
    alice = login(a, "alice@a.test", resource="bounce")
    alice.send("<message to='x@nowhere.test' type='chat' id='nw'><body>?</body></message>")
    error = wait_for(alice, lambda el: el.get("id") == "nw")
    assert error.get("type") == "error"
    assert stanza_error(error) == "remote-server-not-found"  # RFC 6120 §8.3.3.14
    alice.send("<iq type='get' id='nw2' to='nowhere.test'><ping xmlns='urn:xmpp:ping'/></iq>")
    error = wait_for(alice, lambda el: el.get("id") == "nw2")
    assert stanza_error(error) == "remote-server-not-found"


def test_silent_remote_server_times_out(trusted: Federation, login: Any) -> None:
    alice = login(trusted.servers["a.test"], "alice@a.test", resource="timeout")
    alice.send("<message to='x@silent.test' type='chat' id='st'><body>?</body></message>")
    alice.send("<presence type='subscribe' to='y@silent.test'/>")  # dropped, no error
    error = wait_for(alice, lambda el: el.get("id") == "st" or el.get("type") == "error")
    assert error.get("id") == "st" and error.get("from") == "x@silent.test"
    assert stanza_error(error) == "remote-server-timeout"  # RFC 6120 §8.3.3.15


async def test_slixmpp_clients_across_servers(trusted: Federation, ca_file: str) -> None:
    from slix_client import SlixClient

    a, b = trusted.servers["a.test"], trusted.servers["b.test"]
    alice = SlixClient("alice@a.test/slix", ca_file, mechanism="SCRAM-SHA-256")
    bob = SlixClient("bob@b.test/slix", ca_file, mechanism="SCRAM-SHA-256")
    await alice.online(a.port)
    await bob.online(b.port)
    try:
        alice.send_message(mto="bob@b.test/slix", mbody="over s2s", mtype="chat")
        msg = await asyncio.wait_for(bob.messages.get(), 10)
        assert (msg["body"], str(msg["from"])) == ("over s2s", "alice@a.test/slix")
        bob.send_message(mto="alice@a.test", mbody="and back", mtype="chat")
        msg = await asyncio.wait_for(alice.messages.get(), 10)
        assert (msg["body"], str(msg["from"])) == ("and back", "bob@b.test/slix")
        iq = alice.make_iq_get(queryxmlns="jabber:iq:version", ito="b.test")
        result = await iq.send(timeout=10)
        assert result["type"] == "result" and str(result["from"]) == "b.test"
    finally:
        alice.disconnect()
        bob.disconnect()
        await asyncio.sleep(0.1)


# --- refusals and hostile peers (raw s2s streams) ---------------------------------------------


class RawPeer(RawClient):
    """A raw server-to-server stream to a fastxmpp s2s port."""

    def open_s2s(self, frm: str, to: str, namespace: str = SERVER) -> Any:
        self._new_parser()
        self.header = None
        self.send(S2S_HEADER.format(ns=namespace, streams=STREAMS, frm=frm, to=to))
        self.wait_header()
        return self.header

    def features(self) -> Any:
        features = self.next()
        assert features.tag == f"{{{STREAMS}}}features"
        return features

    def tls(self, ca_file: str, host: str, cert: trustme.LeafCert | None = None) -> None:
        self.send(f"<starttls xmlns='{TLS}'/>")
        assert self.next().tag == f"{{{TLS}}}proceed"
        context = ssl.create_default_context(cafile=ca_file)
        if cert is not None:
            cert_path = Path(ca_file).parent / "peer.pem"
            cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
            context.load_cert_chain(str(cert_path))
        self.sock = context.wrap_socket(self.sock, server_hostname=host)


def s2s_peer(srv: ServerProcess, fed: Federation, clients: list[RawClient]) -> RawPeer:
    name = next(n for n in fed.servers if fed.servers[n] is srv)
    peer = RawPeer(fed.ports[name])
    clients.append(peer)
    return peer


def external_peer(
    fed: Federation, ca: trustme.CA, ca_file: str, clients: list[RawClient], domain: str
) -> RawPeer:
    """A raw peer authenticated as `domain` with SASL EXTERNAL (a certificate of the CA)."""
    peer = s2s_peer(fed.servers["b.test"], fed, clients)
    peer.open_s2s(domain, "b.test")
    peer.features()
    peer.tls(ca_file, "b.test", ca.issue_cert(domain))
    peer.open_s2s(domain, "b.test")
    mechanisms = [m.text for m in peer.features().iter(f"{{{SASL}}}mechanism")]
    assert mechanisms == ["EXTERNAL"]
    authzid = base64.b64encode(domain.encode()).decode()
    peer.send(f"<auth xmlns='{SASL}' mechanism='EXTERNAL'>{authzid}</auth>")
    assert peer.next().tag == f"{{{SASL}}}success"
    peer.open_s2s(domain, "b.test")
    peer.features()
    return peer


def test_stanza_from_an_unauthenticated_domain(
    trusted: Federation, ca: trustme.CA, ca_file: str, clients: list[RawClient], login: Any
) -> None:
    b = trusted.servers["b.test"]
    peer = external_peer(trusted, ca, ca_file, clients, "evil.test")
    target = login(b, "bob@b.test", resource="victim")
    # authenticated as evil.test: it may speak for evil.test ...
    peer.send(
        "<message from='mallory@evil.test/x' to='bob@b.test/victim'><body>hi</body></message>"
    )
    assert wait_for(target, tag("message")).get("from") == "mallory@evil.test/x"
    # ... and not for a.test (RFC 6120 §4.9.3.9)
    peer.send("<message from='alice@a.test/r' to='bob@b.test/victim'><body>fake</body></message>")
    assert peer.stream_error() == "invalid-from"
    assert not [el for el in sync(target) if el.tag == f"{{{CLIENT}}}message"]
    assert_still_serving(b, ca_file)


def test_stanza_to_a_domain_not_served(
    trusted: Federation, ca: trustme.CA, ca_file: str, clients: list[RawClient]
) -> None:
    peer = external_peer(trusted, ca, ca_file, clients, "evil2.test")
    peer.send("<message from='m@evil2.test' to='bob@elsewhere.test'><body>relay?</body></message>")
    assert peer.stream_error() == "host-unknown"


def test_stanza_without_addresses(
    trusted: Federation, ca: trustme.CA, ca_file: str, clients: list[RawClient]
) -> None:
    peer = external_peer(trusted, ca, ca_file, clients, "evil3.test")
    peer.send("<message to='bob@b.test'><body>who?</body></message>")
    assert peer.stream_error() == "improper-addressing"  # RFC 6120 §4.9.3.7


def test_stream_to_an_unknown_host(trusted: Federation, clients: list[RawClient]) -> None:
    peer = s2s_peer(trusted.servers["b.test"], trusted, clients)
    peer.open_s2s("evil.test", "unknown.test")
    assert peer.stream_error() == "host-unknown"  # RFC 6120 §4.9.3.6


def test_stanza_before_authentication(
    trusted: Federation, ca_file: str, clients: list[RawClient]
) -> None:
    peer = s2s_peer(trusted.servers["b.test"], trusted, clients)
    peer.open_s2s("evil.test", "b.test")
    features = peer.features()
    assert features.find(f"{{{TLS}}}starttls/{{{TLS}}}required") is not None
    peer.send("<message from='m@evil.test' to='bob@b.test'><body>early</body></message>")
    assert peer.stream_error() == "not-authorized"


def test_dialback_with_a_wrong_key(
    untrusted: Federation, ca_file: str, clients: list[RawClient]
) -> None:
    """A peer claiming c.test with a key c.test never made: d.test asks c.test (XEP-0220
    §2.3), which says invalid."""
    d = untrusted.servers["d.test"]
    peer = s2s_peer(d, untrusted, clients)
    peer.open_s2s("c.test", "d.test")
    peer.features()
    peer.tls(ca_file, "d.test")
    peer.open_s2s("c.test", "d.test")
    features = peer.features()
    assert features.find("{urn:xmpp:features:dialback}dialback") is not None
    peer.send("<db:result from='c.test' to='d.test'>00ff</db:result>")
    verdict = peer.next()
    assert verdict.tag == "{jabber:server:dialback}result" and verdict.get("type") == "invalid"
    assert peer.stream_error() == "not-authorized"
    assert_still_serving(d, ca_file)


@pytest.mark.parametrize(
    ("data", "condition"),
    [
        ("<message from='a@x' to='b@y'><body></message>", "not-well-formed"),
        ("<iq type='get'><<</iq>", "not-well-formed"),
        ("<x xmlns='urn:example:junk'/>", "unsupported-stanza-type"),  # RFC 6120 §4.9.3.24
    ],
)
def test_hostile_peer_input(
    trusted: Federation, ca_file: str, clients: list[RawClient], data: str, condition: str
) -> None:
    b = trusted.servers["b.test"]
    peer = s2s_peer(b, trusted, clients)
    peer.open_s2s("evil.test", "b.test")
    peer.features()
    peer.send(data)
    assert peer.stream_error() == condition
    assert_still_serving(b, ca_file)


def test_hostile_peer_wrong_namespace(
    trusted: Federation, ca_file: str, clients: list[RawClient]
) -> None:
    b = trusted.servers["b.test"]
    peer = s2s_peer(b, trusted, clients)
    peer.open_s2s("evil.test", "b.test", namespace=CLIENT)
    assert peer.stream_error() == "invalid-namespace"  # RFC 6120 §4.9.3.10
    assert_still_serving(b, ca_file)


def test_inbound_limits(make_server: Any, ca_file: str, clients: list[RawClient]) -> None:
    """Pre-authentication time, connections per address and the stanza size limit apply to
    server links as to clients; local users keep being served."""
    port = free_port()
    srv = make_server(
        f'[[listeners]]\nkind = "s2s"\naddress = "127.0.0.1"\nport = {port}\n\n'
        "[s2s]\nauth_timeout = 1\nmax_incoming_per_ip = 2\n"
        "[limits]\nmax_stanza_size = 10000\n",
        hosts=("localhost", "b.test"),
    )
    srv.adduser("alice@localhost")
    srv.start()
    wait_listening(srv, port)
    first, second, third = RawPeer(port), RawPeer(port), RawPeer(port)
    clients += [first, second, third]
    first.open_s2s("evil.test", "b.test")
    second.open_s2s("evil.test", "b.test")
    third.open_s2s("evil.test", "b.test")
    assert third.stream_error() == "policy-violation"
    # RFC 6120 §4.9.3.4: no authentication within auth_timeout
    assert first.stream_error() == "connection-timeout"
    assert second.stream_error() == "connection-timeout"
    assert first.wait_closed() and second.wait_closed()
    big = RawPeer(port)
    clients.append(big)
    big.open_s2s("evil.test", "b.test")
    big.features()
    big.send("<message from='m@evil.test' to='alice@b.test'><body>" + "x" * 20000)
    assert big.stream_error() == "policy-violation"
    assert_still_serving(srv, ca_file)


def test_s2s_configuration(tmp_path: Path) -> None:
    from fastxmpp.config import check_config, load_config

    path = tmp_path / "fastxmpp.toml"
    path.write_text(
        '[[listeners]]\nkind = "s2s"\naddress = "0.0.0.0"\n\n[hosts."example.org"]\n\n'
        '[s2s]\nenabled = true\nroutes = { "Example.NET" = "192.0.2.1:5270" }\n'
    )
    config = load_config(path)
    assert config.listeners[0].port == 5269  # RFC 6120 §14.7
    assert config.s2s.routes == (("example.net", "192.0.2.1", 5270),)
    assert (config.s2s.require_tls, config.s2s.dialback, config.s2s.max_incoming_per_ip) == (
        True,
        True,
        20,
    )
    path.write_text(
        '[[listeners]]\naddress = "127.0.0.1"\n\n[hosts."example.org"]\n\n'
        '[s2s]\nroutes = { "example.net" = "nowhere" }\nmax_queued_stanzas = 0\n'
        'dns_servers = ["127.0.0.1:53", "[::1]:5353", "resolver.example"]\n'
    )
    messages = [p.message for p in check_config(path)]
    assert messages == [
        "s2s.routes example.net: 'nowhere' must be host:port",
        "s2s.max_queued_stanzas must be positive",
        "s2s.dns_servers 'resolver.example' is not an IP address (with an optional :port)",
    ]


def test_idle_link_closes_and_a_new_one_opens(tight: Federation, login: Any) -> None:
    e, f = tight.servers["e.test"], tight.servers["f.test"]
    alice = login(e, "alice@e.test")
    bob = login(f, "bob@f.test")
    alice.send("<message to='bob@f.test/r' type='chat'><body>one</body></message>")
    assert wait_for(bob, tag("message")).findtext(f"{{{CLIENT}}}body") == "one"
    deadline = time.monotonic() + 5
    while "s2s e.test -> f.test: closed" not in e.log_text():
        assert time.monotonic() < deadline, "the idle link was not closed"
        time.sleep(0.05)
    alice.send("<message to='bob@f.test/r' type='chat'><body>two</body></message>")
    assert wait_for(bob, tag("message")).findtext(f"{{{CLIENT}}}body") == "two"
    # The log reaches us through a reader thread: the line may come after the delivery.
    deadline = time.monotonic() + 5
    while e.log_text().count("s2s e.test -> f.test: ready (SASL EXTERNAL") != 2:
        assert time.monotonic() < deadline, e.log_text()
        time.sleep(0.05)


def test_queue_for_a_link_is_bounded(tight: Federation, login: Any) -> None:
    alice = login(tight.servers["e.test"], "bob@e.test")
    for i in range(4):
        alice.send(f"<message to='x@silent.test' type='chat' id='q{i}'><body>{i}</body></message>")
    conditions = {}
    while len(conditions) < 4:
        error = wait_for(alice, lambda el: el.get("type") == "error")
        conditions[error.get("id")] = stanza_error(error)
    assert conditions == {
        "q2": "resource-constraint",
        "q3": "resource-constraint",
        "q0": "remote-server-timeout",
        "q1": "remote-server-timeout",
    }


# --- what a peer can make us do (dialback amplification) -------------------------------------


class Holder:
    """A TCP listener that accepts connections, counts them and never says a word."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                self.accepted.append(self.sock.accept()[0])

    def wait_for(self, count: int) -> None:
        deadline = time.monotonic() + 10
        while len(self.accepted) < count:
            assert time.monotonic() < deadline, f"{len(self.accepted)} connections, not {count}"
            time.sleep(0.02)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


class SilentResolver:
    """A DNS server on loopback that notes the names it is asked for and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.names: set[str] = set()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                query = self.sock.recv(2048)
                labels, pos = [], 12  # RFC 1035 §4.1.2: the question after the header
                while pos < len(query) and query[pos]:
                    labels.append(query[pos + 1 : pos + 1 + query[pos]].decode())
                    pos += 1 + query[pos]
                self.names.add(".".join(labels))

    def close(self) -> None:
        self.sock.close()


def dialback_stream(port: int, domain: str, ca_file: str, clients: list[RawClient]) -> RawPeer:
    """A raw peer for `domain` (header 'from') to b.test, after STARTTLS, ready for dialback."""
    peer = RawPeer(port)
    clients.append(peer)
    peer.open_s2s(domain, "b.test")
    peer.features()
    peer.tls(ca_file, "b.test")
    peer.open_s2s(domain, "b.test")
    assert peer.features().find("{urn:xmpp:features:dialback}dialback") is not None
    return peer


def db_result(frm: str, to: str = "b.test") -> str:
    return f"<db:result from='{frm}' to='{to}'>{'ab' * 32}</db:result>"


def dialback_error(el: Any) -> tuple[str | None, str | None]:
    """(the pair's sender domain, the condition) of a XEP-0220 §2.5 dialback error."""
    assert el.tag == "{jabber:server:dialback}result" and el.get("type") == "error", el
    error = el.find(f"{{{SERVER}}}error")
    condition = next(iter(error)).tag.split("}", 1)[1] if error is not None else None
    return el.get("to"), condition


def test_dialback_flood_opens_bounded_links(
    make_server: Any, ca_file: str, clients: list[RawClient], login: Any
) -> None:
    """A peer that floods db:result for domains of its choosing (XEP-0220 §2.2.1 makes us
    contact each) gets resource-constraint for every domain but its stream's own, and all
    peers together make us open at most max_outgoing links and wait for at most
    max_dialback_pending verifications; local users keep being served."""
    holder = Holder()
    try:
        port = free_port()
        flood = [f"flood{i}.test" for i in range(60)]
        routes = ", ".join(f'"{d}" = "127.0.0.1:{holder.port}"' for d in flood)
        srv = make_server(
            f'[[listeners]]\nkind = "s2s"\naddress = "127.0.0.1"\nport = {port}\n\n'
            "[s2s]\nenabled = true\nconnect_timeout = 3\nmax_outgoing = 4\n"
            "max_dialback_pending = 4\nmax_dialback_pending_per_stream = 2\n"
            f"routes = {{ {routes} }}\n",
            hosts=("localhost", "b.test"),
        )
        srv.adduser("alice@localhost")
        srv.start()
        wait_listening(srv, port)
        first = dialback_stream(port, "flood0.test", ca_file, clients)
        # Fifty domains other than the one its header named, then its own to both local
        # hosts (two links) and once more (beyond the stream's cap).
        first.send("".join(db_result(domain) for domain in flood[1:51]))
        first.send(db_result("flood0.test") + db_result("flood0.test", "localhost"))
        first.send(db_result("flood0.test"))
        refused = [dialback_error(first.next()) for _ in range(51)]
        assert set(refused) == {(d, "resource-constraint") for d in flood[:51]}
        holder.wait_for(2)
        for domain in ("flood1.test", "flood2.test"):  # links 3 and 4, verifications 3 and 4
            dialback_stream(port, domain, ca_file, clients).send(db_result(domain))
        holder.wait_for(4)
        # Beyond max_dialback_pending: for a domain whose link exists, and for a new one.
        for domain in ("flood0.test", "flood3.test"):
            late = dialback_stream(port, domain, ca_file, clients)
            late.send(db_result(domain))
            assert dialback_error(late.next()) == (domain, "resource-constraint")
        # Beyond max_outgoing, a user's stanza to a new domain bounces (RFC 6120 §8.3.3.18).
        alice = login(srv, "alice@localhost")
        alice.send("<message to='x@flood9.test' id='far' type='chat'><body>hi</body></message>")
        bounce = wait_for(alice, lambda el: el.get("id") == "far")
        assert stanza_error(bounce) == "resource-constraint"
        # The waiting verifications end with an error after connect_timeout, the streams stay.
        timed_out = [dialback_error(first.next()) for _ in range(2)]
        assert timed_out == [("flood0.test", "remote-server-timeout")] * 2
        assert len(holder.accepted) == 4
        assert_still_serving(srv, ca_file)
    finally:
        holder.close()


def test_dns_lookups_in_flight_are_bounded(
    make_server: Any, ca_file: str, clients: list[RawClient]
) -> None:
    """Dialback requests for domains without static routes make us look up SRV records: at
    most max_dns_lookups at once, the others wait."""
    resolver = SilentResolver()
    try:
        port = free_port()
        srv = make_server(
            f'[[listeners]]\nkind = "s2s"\naddress = "127.0.0.1"\nport = {port}\n\n'
            "[s2s]\nenabled = true\nconnect_timeout = 20\nmax_dns_lookups = 2\n"
            f'dns_servers = ["{resolver.address}"]\n',
            hosts=("localhost", "b.test"),
        )
        srv.adduser("alice@localhost")
        srv.start()
        wait_listening(srv, port)
        for i in range(8):
            dialback_stream(port, f"lookup{i}.test", ca_file, clients).send(
                db_result(f"lookup{i}.test")
            )
        deadline = time.monotonic() + 10
        while len(resolver.names) < 2:
            assert time.monotonic() < deadline, resolver.names
            time.sleep(0.02)
        assert_still_serving(srv, ca_file)
        time.sleep(1)  # room for lookups beyond the limit to show (none may)
        assert len(resolver.names) == 2, resolver.names
        assert all(name.startswith("_xmpp-server._tcp.lookup") for name in resolver.names)
    finally:
        resolver.close()
