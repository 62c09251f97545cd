"""XEP-0054 vcard-temp: a real client (slixmpp's xep_0054) stores and reads vCards, across a
restart and an account deletion; raw streams check every error condition, the size limit, a
full disk, and that the server keeps serving after hostile input."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PASSWORD, ServerProcess, assert_still_serving, run_cli
from lxml import etree
from slixmpp import JID, ClientXMPP
from slixmpp.exceptions import IqError
from xmpp_raw import CLIENT, STANZA_ERRORS, RawClient, stanza_error

from fastxmpp.config import VCardConfig, check_config, load_config
from fastxmpp.storage.lmdb_store import Storage
from fastxmpp.storage.vcard import VCardStore

logging.getLogger("slixmpp").setLevel(logging.WARNING)

NS = "vcard-temp"
VCARD = f"{{{NS}}}vCard"
REGISTER = "jabber:iq:register"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def clients() -> Iterator[list[RawClient]]:
    opened: list[RawClient] = []
    yield opened
    for c in opened:
        c.close()


def login(srv: ServerProcess, opened: list[RawClient], ca_file: str, user: str) -> RawClient:
    c = srv.client()
    opened.append(c)
    c.login(ca_file, user, PASSWORD, "vc")
    return c


def answer_to(c: RawClient, iq_id: str) -> Any:
    """The iq answering `iq_id` (presence and other stanzas in between are skipped)."""
    while True:
        el = c.next()
        if el.tag == f"{{{CLIENT}}}iq" and el.get("id") == iq_id:
            return el


def iq(c: RawClient, itype: str, payload: str, to: str | None = None) -> Any:
    iq_id = f"v{time.monotonic_ns()}"
    to_attr = f" to='{to}'" if to else ""
    c.send(f"<iq type='{itype}' id='{iq_id}'{to_attr}>{payload}</iq>")
    return answer_to(c, iq_id)


def vcard_get(c: RawClient, to: str | None = None) -> Any:
    return iq(c, "get", f"<vCard xmlns='{NS}'/>", to)


def vcard_set(c: RawClient, body: str, to: str | None = None) -> Any:
    return iq(c, "set", f"<vCard xmlns='{NS}'>{body}</vCard>", to)


def result_vcard(reply: Any) -> Any:
    assert reply.get("type") == "result", etree.tostring(reply)
    vcard = reply.find(VCARD)
    assert vcard is not None, etree.tostring(reply)
    return vcard


def error_type(reply: Any) -> str | None:
    error = reply.find(f"{{{CLIENT}}}error")
    return None if error is None else error.get("type")


def fields(vcard: Any) -> dict[str, str | None]:
    return {etree.QName(child).localname: child.text for child in vcard}


# --- raw streams -----------------------------------------------------------------------------


def test_none_stored_is_an_empty_vcard(
    server: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    c = login(server, clients, ca_file, "carol")
    # §3.1: an empty <vCard/> result rather than an error, with no 'to' or the own bare JID.
    reply = vcard_get(c)
    assert reply.get("to") == "carol@localhost/vc" and reply.get("from") is None
    assert len(result_vcard(reply)) == 0
    reply = vcard_get(c, "carol@localhost")
    assert reply.get("from") == "carol@localhost"
    assert len(result_vcard(reply)) == 0


def test_set_and_get_own_and_others(
    server: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    alice = login(server, clients, ca_file, "alice")
    body = "<FN>Alice Liddell</FN><NICKNAME>al</NICKNAME><DESC>first</DESC>"
    reply = vcard_set(alice, body)
    assert reply.get("type") == "result" and len(reply) == 0
    assert fields(result_vcard(vcard_get(alice))) == {
        "FN": "Alice Liddell",
        "NICKNAME": "al",
        "DESC": "first",
    }
    # §3.2: a set replaces the whole vCard; addressed to the own bare JID works too.
    reply = vcard_set(alice, "<FN>Alice L.</FN>", to="alice@localhost")
    assert reply.get("type") == "result" and reply.get("from") == "alice@localhost"
    assert fields(result_vcard(vcard_get(alice))) == {"FN": "Alice L."}
    # §3.3: anyone reads it at the bare JID, answered by the server on the account's behalf
    # (the JID is prepared: another spelling of the same account).
    bob = login(server, clients, ca_file, "bob")
    for to in ("alice@localhost", "ALICE@LocalHost"):
        reply = vcard_get(bob, to)
        assert reply.get("from") == to and reply.get("to") == "bob@localhost/vc"
        assert fields(result_vcard(reply)) == {"FN": "Alice L."}


def test_unknown_children_attributes_and_prefixes_are_kept(
    server: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    dave = login(server, clients, ca_file, "dave")
    payload = (
        "<v:vCard xmlns:v='vcard-temp' version='3.0'><v:FN>Dave</v:FN>"
        "<x:EXTRA xmlns:x='urn:example:extra' level='2'>kept <x:IN>inner</x:IN></x:EXTRA>"
        "<v:X-CUSTOM>mine</v:X-CUSTOM></v:vCard>"
    )
    assert iq(dave, "set", payload).get("type") == "result"
    carol = login(server, clients, ca_file, "carol")
    vcard = result_vcard(vcard_get(carol, "dave@localhost"))
    assert vcard.get("version") == "3.0"
    assert [child.tag for child in vcard] == [
        f"{{{NS}}}FN",
        "{urn:example:extra}EXTRA",
        f"{{{NS}}}X-CUSTOM",
    ]
    extra = vcard[1]
    assert extra.get("level") == "2" and extra.text == "kept "
    assert extra.findtext("{urn:example:extra}IN") == "inner"
    # Stored as sent, declaring only the namespaces it uses: nothing of the stream's
    # (jabber:client, the stream prefix) leaks in.
    with Storage(server.data_dir) as storage:
        stored = VCardStore(storage).get("localhost", "dave")
    assert stored == (
        b'<v:vCard xmlns:v="vcard-temp" version="3.0"><v:FN>Dave</v:FN>'
        b'<x:EXTRA xmlns:x="urn:example:extra" level="2">kept <x:IN>inner</x:IN></x:EXTRA>'
        b"<v:X-CUSTOM>mine</v:X-CUSTOM></v:vCard>"
    )


def test_empty_set_deletes(server: ServerProcess, ca_file: str, clients: list[RawClient]) -> None:
    bob = login(server, clients, ca_file, "bob")
    assert vcard_set(bob, "<FN>Bob</FN>").get("type") == "result"
    carol = login(server, clients, ca_file, "carol")
    assert fields(result_vcard(vcard_get(carol, "bob@localhost"))) == {"FN": "Bob"}
    reply = iq(bob, "set", f"<vCard xmlns='{NS}'/>")
    assert reply.get("type") == "result"
    assert len(result_vcard(vcard_get(bob))) == 0
    # §3.3: no vCard any more: the same answer as for an account that does not exist.
    assert stanza_error(vcard_get(carol, "bob@localhost")) == "service-unavailable"


def test_no_vcard_and_no_account_look_the_same(
    server: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    dave = login(server, clients, ca_file, "dave")
    # §3.3 (version 1.3): service-unavailable in both cases, against directory harvesting.
    no_vcard = vcard_get(dave, "carol@localhost")
    no_account = vcard_get(dave, "nobody@localhost")
    assert stanza_error(no_vcard) == stanza_error(no_account) == "service-unavailable"
    assert error_type(no_vcard) == error_type(no_account) == "cancel"
    # Nothing else in the error tells the two apart either.
    assert etree.tostring(no_vcard.find(f"{{{CLIENT}}}error")) == etree.tostring(
        no_account.find(f"{{{CLIENT}}}error")
    )


def test_set_for_anybody_else_is_forbidden(
    server: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    alice = login(server, clients, ca_file, "alice")
    carol = login(server, clients, ca_file, "carol")
    assert vcard_set(carol, "<FN>Carol</FN>").get("type") == "result"
    # §3.2: a set addressed to another user's bare JID, or to the server.
    for to in ("carol@localhost", "localhost", "example.test"):
        reply = vcard_set(alice, "<FN>Not Carol</FN>", to=to)
        assert stanza_error(reply) == "forbidden", to
        assert error_type(reply) == "auth"
    assert fields(result_vcard(vcard_get(carol))) == {"FN": "Carol"}
    # An account that does not exist: the router's answer, before the vCard module is asked.
    assert stanza_error(vcard_set(alice, "<FN>x</FN>", to="nobody@localhost")) == (
        "service-unavailable"
    )


def test_the_server_has_no_vcard(
    server: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    alice = login(server, clients, ca_file, "alice")
    for to in ("localhost", "example.test", "localhost/resource"):
        reply = vcard_get(alice, to)
        assert stanza_error(reply) == "item-not-found", to
        assert reply.get("from") == to


def test_get_to_a_full_jid_goes_to_that_client(
    server: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    alice = login(server, clients, ca_file, "alice")
    bob = login(server, clients, ca_file, "bob")
    bob.send(f"<iq type='get' id='full1' to='alice@localhost/vc'><vCard xmlns='{NS}'/></iq>")
    request = answer_to(alice, "full1")
    assert request.get("from") == "bob@localhost/vc" and request.get("type") == "get"
    assert request.find(VCARD) is not None
    alice.send(
        "<iq type='result' id='full1' to='bob@localhost/vc'>"
        f"<vCard xmlns='{NS}'><FN>From the client</FN></vCard></iq>"
    )
    reply = answer_to(bob, "full1")
    assert reply.get("from") == "alice@localhost/vc"
    assert fields(result_vcard(reply)) == {"FN": "From the client"}


@pytest.mark.parametrize(
    ("itype", "payload", "condition"),
    [
        # §8: the element is <vCard/>, case-sensitive.
        ("get", f"<vcard xmlns='{NS}'/>", "bad-request"),
        ("set", f"<VCARD xmlns='{NS}'><FN>x</FN></VCARD>", "bad-request"),
        ("set", f"<FN xmlns='{NS}'>x</FN>", "bad-request"),
        # RFC 6120 §8.2.3: exactly one payload (the router's check).
        ("set", "", "bad-request"),
        ("set", f"<vCard xmlns='{NS}'/><vCard xmlns='{NS}'/>", "bad-request"),
        ("get", f"<vCard xmlns='{NS}'/><x xmlns='urn:example'/>", "bad-request"),
        # Not vcard-temp at all: nobody handles it (RFC 6120 §8.4).
        ("get", "<vCard xmlns='urn:ietf:params:xml:ns:vcard-4.0'/>", "service-unavailable"),
        ("get", "<vCard/>", "service-unavailable"),
    ],
)
def test_malformed_payloads(
    server: ServerProcess,
    ca_file: str,
    clients: list[RawClient],
    itype: str,
    payload: str,
    condition: str,
) -> None:
    carol = login(server, clients, ca_file, "carol")
    before = etree.tostring(result_vcard(vcard_get(carol)))
    reply = iq(carol, itype, payload)
    assert reply.get("type") == "error" and stanza_error(reply) == condition
    assert etree.tostring(result_vcard(vcard_get(carol))) == before  # nothing stored
    assert_still_serving(server, ca_file, "bob")


def test_oversized_vcard_is_not_acceptable(
    server: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    dave = login(server, clients, ca_file, "dave")
    assert vcard_set(dave, "<FN>Dave</FN>").get("type") == "result"
    # Over the default 128 KiB, well under the default 256 KiB stanza limit.
    default = VCardConfig().max_size
    photo = "A" * (default + 1000)
    reply = vcard_set(dave, f"<PHOTO><TYPE>image/png</TYPE><BINVAL>{photo}</BINVAL></PHOTO>")
    assert stanza_error(reply) == "not-acceptable" and error_type(reply) == "modify"
    text = reply.findtext(f"{{{CLIENT}}}error/{{{STANZA_ERRORS}}}text")
    assert text == f"a vCard may hold at most {default} bytes"
    assert fields(result_vcard(vcard_get(dave))) == {"FN": "Dave"}  # the old one is kept
    assert_still_serving(server, ca_file, "carol")


def test_disco_features(server: ServerProcess, ca_file: str, clients: list[RawClient]) -> None:
    alice = login(server, clients, ca_file, "alice")
    for to in ("localhost", "alice@localhost"):
        query = iq(alice, "get", f"<query xmlns='{DISCO_INFO}'/>", to).find(
            f"{{{DISCO_INFO}}}query"
        )
        assert query is not None
        # §4: the feature that says vcard-temp is supported, by the server and at accounts.
        assert NS in {f.get("var") for f in query.iter(f"{{{DISCO_INFO}}}feature")}, to


# --- a server of its own: size limit, configuration, full disk ------------------------------


def test_configured_limit_is_exact(make_server: Any, ca_file: str) -> None:
    srv: ServerProcess = make_server("[vcard]\nmax_size = 2048\n")
    srv.adduser("alice@localhost")
    srv.start()
    opened: list[RawClient] = []
    try:
        alice = login(srv, opened, ca_file, "alice")
        # Stored as serialized by the server: namespaces declared once, double quotes.
        frame = len(f'<vCard xmlns="{NS}"><DESC></DESC></vCard>')
        fits = "d" * (2048 - frame)
        assert vcard_set(alice, f"<DESC>{fits}</DESC>").get("type") == "result"
        assert result_vcard(vcard_get(alice)).findtext(f"{{{NS}}}DESC") == fits
        reply = vcard_set(alice, f"<DESC>{fits}e</DESC>")
        assert stanza_error(reply) == "not-acceptable"
        assert result_vcard(vcard_get(alice)).findtext(f"{{{NS}}}DESC") == fits
    finally:
        for c in opened:
            c.close()


def test_config_section(tmp_path: Path) -> None:
    # The example documents the default, 128 KiB.
    assert load_config(REPO / "config.example.toml").vcard == VCardConfig(max_size=131072)
    path = tmp_path / "fastxmpp.toml"
    base = '[[listeners]]\naddress = "127.0.0.1"\n\n[hosts."example.org"]\n\n'
    path.write_text(base + "[vcard]\nmax_size = 4096\n")
    assert load_config(path).vcard.max_size == 4096
    path.write_text(base + "[vcard]\nmax_size = 0\nmax_bytes = 10\n")
    assert [(p.line, p.message) for p in check_config(path)] == [
        (7, "vcard.max_size must be positive"),
        (8, "unknown key vcard.max_bytes"),
    ]


def test_full_disk_is_resource_constraint(make_server: Any, ca_file: str) -> None:
    from test_durability import fill, tmpfs

    srv: ServerProcess = make_server()
    with tmpfs(srv.data_dir, "16m"):
        opened: list[RawClient] = []
        try:
            srv.adduser("alice@localhost")
            srv.adduser("bob@localhost")
            srv.start()
            alice = login(srv, opened, ca_file, "alice")
            assert vcard_set(alice, "<FN>Before</FN>").get("type") == "result"
            filler = srv.data_dir / "filler"
            fill(filler)
            # New pages that LMDB cannot find among the few it has freed.
            photo = base64.b64encode(os.urandom(90_000)).decode()
            body = f"<FN>Full</FN><PHOTO><TYPE>image/jpeg</TYPE><BINVAL>{photo}</BINVAL></PHOTO>"
            reply = vcard_set(alice, body)
            assert stanza_error(reply) == "resource-constraint" and error_type(reply) == "wait"
            assert srv.alive()
            assert fields(result_vcard(vcard_get(alice)))["FN"] == "Before"
            filler.unlink()
            assert vcard_set(alice, body).get("type") == "result"
            bob = login(srv, opened, ca_file, "bob")
            vcard = result_vcard(vcard_get(bob, "alice@localhost"))
            assert vcard.findtext(f"{{{NS}}}PHOTO/{{{NS}}}BINVAL") == photo
            assert_still_serving(srv, ca_file)
        finally:
            for c in opened:
                c.close()
            srv.stop()


# --- slixmpp ---------------------------------------------------------------------------------


class Client(ClientXMPP):
    def __init__(self, jid: str, ca_file: str) -> None:
        super().__init__(jid, PASSWORD)
        self.ca_certs = Path(ca_file)
        self.enable_direct_tls = False
        self.enable_plaintext = False
        self.ready = asyncio.get_running_loop().create_future()
        self.add_event_handler("session_start", self._started)
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0054")

    async def _started(self, _event: Any) -> None:
        if not self.ready.done():
            self.ready.set_result(True)


async def connected(srv: ServerProcess, jid: str, ca_file: str) -> Client:
    client = Client(jid, ca_file)
    client.connect("127.0.0.1", srv.port)
    await asyncio.wait_for(client.ready, 20)
    return client


async def disconnect(client: Client) -> None:
    client.disconnect()
    await asyncio.sleep(0.1)


async def fetch(client: Client, jid: str | None) -> Any:
    """The vCard the server returns (jid None: the client's own, asked without a 'to')."""
    plugin = client.plugin["xep_0054"]
    reply = await plugin.get_vcard(None if jid is None else JID(jid), local=False, timeout=10)
    return reply["vcard_temp"]


PHOTO = os.urandom(6000)  # a typical avatar: a few KiB of PNG, base64 in the vCard


def assert_alices_vcard(vcard: Any) -> None:
    assert vcard["FN"] == "Alice Liddell"
    assert vcard["N"]["GIVEN"] == "Alice" and vcard["N"]["FAMILY"] == "Liddell"
    assert vcard["NICKNAME"] == ["al"]
    assert vcard["EMAIL"]["USERID"] == "alice@example.org"
    assert vcard["EMAIL"]["INTERNET"] is True
    assert vcard["TEL"]["NUMBER"] == "+44 20 7946 0000"
    assert vcard["DESC"] == "Curiouser and curiouser"
    assert vcard["PHOTO"]["TYPE"] == "image/png"
    assert vcard["PHOTO"]["BINVAL"] == PHOTO


async def test_slixmpp_store_read_restart_and_account_removal(
    make_server: Any, ca_file: str
) -> None:
    srv: ServerProcess = make_server()
    srv.adduser("alice@localhost")
    srv.adduser("bob@localhost")
    srv.start()

    alice = await connected(srv, "alice@localhost/slix", ca_file)
    try:
        plugin = alice.plugin["xep_0054"]
        vcard = plugin.make_vcard()
        vcard["FN"] = "Alice Liddell"
        vcard["N"]["GIVEN"] = "Alice"
        vcard["N"]["FAMILY"] = "Liddell"
        vcard["NICKNAME"] = "al"
        vcard["EMAIL"]["USERID"] = "alice@example.org"
        vcard["EMAIL"]["INTERNET"] = True
        vcard["TEL"]["NUMBER"] = "+44 20 7946 0000"
        vcard["DESC"] = "Curiouser and curiouser"
        vcard["PHOTO"]["TYPE"] = "image/png"
        vcard["PHOTO"]["BINVAL"] = PHOTO
        await plugin.publish_vcard(vcard, timeout=10)
        assert_alices_vcard(await fetch(alice, None))
    finally:
        await disconnect(alice)

    bob = await connected(srv, "bob@localhost/slix", ca_file)
    try:
        assert_alices_vcard(await fetch(bob, "alice@localhost"))
    finally:
        await disconnect(bob)

    # Stored: the same vCard after a restart.
    srv.stop()
    srv.start()
    bob = await connected(srv, "bob@localhost/slix", ca_file)
    try:
        assert_alices_vcard(await fetch(bob, "alice@localhost"))
    finally:
        await disconnect(bob)

    # XEP-0077 §3.2: removing the account removes its vCard; a new account of the same name
    # starts without one.
    raw = srv.client()
    try:
        raw.login(ca_file, "alice", PASSWORD, "leaving")
        raw.send(f"<iq type='set' id='rm'><query xmlns='{REGISTER}'><remove/></query></iq>")
        assert answer_to(raw, "rm").get("type") == "result"
        assert raw.stream_error() == "not-authorized"
    finally:
        raw.close()
    srv.adduser("alice@localhost")
    bob = await connected(srv, "bob@localhost/slix", ca_file)
    try:
        with pytest.raises(IqError) as err:
            await fetch(bob, "alice@localhost")
        assert err.value.iq["error"]["condition"] == "service-unavailable"
    finally:
        await disconnect(bob)
    alice = await connected(srv, "alice@localhost/slix", ca_file)
    try:
        own = await fetch(alice, None)
        assert own["FN"] == "" and len(own.xml) == 0
    finally:
        await disconnect(alice)
    srv.stop()


def test_cli_deluser_purges_the_vcard(make_server: Any, ca_file: str) -> None:
    srv: ServerProcess = make_server()
    srv.adduser("alice@localhost")
    srv.adduser("bob@localhost")
    srv.start()
    opened: list[RawClient] = []
    try:
        alice = login(srv, opened, ca_file, "alice")
        assert vcard_set(alice, "<FN>Alice</FN>").get("type") == "result"
        alice.close()
        # The CLI, while the server runs: the account and its vCard go in one transaction.
        result = run_cli("deluser", "alice@localhost", config=srv.config)
        assert result.returncode == 0, result.stderr
        srv.adduser("alice@localhost")
        bob = login(srv, opened, ca_file, "bob")
        assert stanza_error(vcard_get(bob, "alice@localhost")) == "service-unavailable"
        alice = login(srv, opened, ca_file, "alice")
        assert len(result_vcard(vcard_get(alice))) == 0
    finally:
        for c in opened:
            c.close()
