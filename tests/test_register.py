"""XEP-0077 in-band registration: off by default; when on, fields, new accounts, conflicts,
bad input and the per-IP limit; password change and account removal for logged-in users;
and one registration by a real client library (slixmpp)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from conftest import PASSWORD, ServerProcess, run_cli
from lxml import etree
from slixmpp import ClientXMPP
from xmpp_raw import SASL, RawClient, stanza_error

logging.getLogger("slixmpp").setLevel(logging.WARNING)

REGISTER = "jabber:iq:register"
FEATURE = "http://jabber.org/features/iq-register"
DATA = "jabber:x:data"
ENABLED = "[register]\nenabled = true\n"


def tls_client(srv: ServerProcess, ca_file: str) -> tuple[RawClient, Any]:
    """Connected and STARTTLS done, not authenticated: (client, features)."""
    c = srv.client()
    c.open_stream()
    return c, c.starttls(ca_file)


def register_iq(c: RawClient, username: str | None, password: str | None, iq_id: str = "r1") -> Any:
    fields = ""
    if username is not None:
        fields += f"<username>{username}</username>"
    if password is not None:
        fields += f"<password>{password}</password>"
    c.send(f"<iq type='set' id='{iq_id}'><query xmlns='{REGISTER}'>{fields}</query></iq>")
    reply = c.next()
    assert reply.get("id") == iq_id, etree.tostring(reply)
    return reply


def register(srv: ServerProcess, ca_file: str, username: str, password: str) -> Any:
    c, _ = tls_client(srv, ca_file)
    try:
        return register_iq(c, username, password)
    finally:
        c.close()


def can_login(srv: ServerProcess, ca_file: str, user: str, password: str) -> bool:
    c = srv.client()
    try:
        c.open_stream()
        c.starttls(ca_file)
        return bool(c.sasl_scram(user, password).tag == f"{{{SASL}}}success")
    finally:
        c.close()


@pytest.fixture
def open_server(make_server: Any) -> ServerProcess:
    srv: ServerProcess = make_server(ENABLED)
    srv.adduser("alice@localhost")
    srv.start()
    return srv


def test_off_by_default(server: ServerProcess, ca_file: str) -> None:
    c = server.client()
    assert c.open_stream().find(f"{{{FEATURE}}}register") is None
    features = c.starttls(ca_file)
    assert features.find(f"{{{FEATURE}}}register") is None
    # XEP-0077 §3.1: a host without in-band registration answers a get service-unavailable.
    c.send(f"<iq type='get' id='g1'><query xmlns='{REGISTER}'/></iq>")
    assert stanza_error(c.next()) == "service-unavailable"
    reply = register_iq(c, "mallory", "secret")
    assert reply.get("type") == "error" and stanza_error(reply) == "not-allowed"
    c.close()
    assert not can_login(server, ca_file, "mallory", "secret")


def test_fields_and_registration(open_server: ServerProcess, ca_file: str) -> None:
    c = open_server.client()
    # Before TLS (required by default) only STARTTLS is offered.
    assert c.open_stream().find(f"{{{FEATURE}}}register") is None
    features = c.starttls(ca_file)
    assert features.find(f"{{{FEATURE}}}register") is not None
    c.send(f"<iq type='get' id='g1' to='localhost'><query xmlns='{REGISTER}'/></iq>")
    reply = c.next()
    assert reply.get("type") == "result", etree.tostring(reply)
    query = reply.find(f"{{{REGISTER}}}query")
    assert query.find(f"{{{REGISTER}}}username") is not None
    assert query.find(f"{{{REGISTER}}}password") is not None
    assert query.find(f"{{{REGISTER}}}instructions").text
    form = query.find(f"{{{DATA}}}x")
    assert form.get("type") == "form"
    assert {f.get("var") for f in form} >= {"FORM_TYPE", "username", "password"}

    reply = register_iq(c, "newbie", "n3wbie pass")
    assert reply.get("type") == "result", etree.tostring(reply)
    # One account per connection (XEP-0077 §3.1.1).
    assert stanza_error(register_iq(c, "another", "pass", "r2")) == "not-acceptable"
    # Only authentication is left on this stream; the new account works right away.
    assert c.sasl_scram("newbie", "n3wbie pass").tag == f"{{{SASL}}}success"
    c.open_stream()
    assert c.bind("here") == "newbie@localhost/here"
    c.close()
    assert "newbie@localhost" in run_cli("listusers", config=open_server.config).stdout
    assert "n3wbie pass" not in open_server.log_text()  # never logged


def test_registration_with_data_form(open_server: ServerProcess, ca_file: str) -> None:
    c, _ = tls_client(open_server, ca_file)
    c.send(
        f"<iq type='set' id='f1'><query xmlns='{REGISTER}'><x xmlns='{DATA}' type='submit'>"
        f"<field var='FORM_TYPE' type='hidden'><value>{REGISTER}</value></field>"
        "<field var='username'><value>FormUser</value></field>"
        "<field var='password'><value>form pass</value></field></x></query></iq>"
    )
    assert c.next().get("type") == "result"
    c.close()
    # The username was prepared (RFC 7622 UsernameCaseMapped): lower case.
    assert can_login(open_server, ca_file, "formuser", "form pass")


def test_conflict(open_server: ServerProcess, ca_file: str) -> None:
    reply = register(open_server, ca_file, "alice", "takeover")
    assert stanza_error(reply) == "conflict"
    reply = register(open_server, ca_file, "ALICE", "takeover")  # same after preparation
    assert stanza_error(reply) == "conflict"
    assert can_login(open_server, ca_file, "alice", PASSWORD)
    assert not can_login(open_server, ca_file, "alice", "takeover")


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("someone", None),  # no password
        (None, "secret"),  # no username
        ("someone", ""),  # empty password (XEP-0077 §3.1 footnote)
        ("", "secret"),
        ("bad user", "secret"),  # spaces are not allowed in a localpart
        ("a/b", "secret"),
        ("x@y", "secret"),
    ],
)
def test_bad_input(
    open_server: ServerProcess, ca_file: str, username: str | None, password: str | None
) -> None:
    reply = register(open_server, ca_file, username, password)  # type: ignore[arg-type]
    assert stanza_error(reply) == "not-acceptable", etree.tostring(reply)


def test_remove_before_login_is_unexpected(open_server: ServerProcess, ca_file: str) -> None:
    c, _ = tls_client(open_server, ca_file)
    c.send(f"<iq type='set' id='x'><query xmlns='{REGISTER}'><remove/></query></iq>")
    assert stanza_error(c.next()) == "unexpected-request"
    c.close()


def test_not_before_tls(make_server: Any, ca_file: str) -> None:
    srv = make_server(ENABLED + "[c2s]\nrequire_encryption = false\n")
    srv.start()
    c = srv.client()
    assert c.open_stream().find(f"{{{FEATURE}}}register") is None
    # The password would cross the network in the clear.
    assert stanza_error(register_iq(c, "plain", "text")) == "not-authorized"
    c.close()


def test_rate_limit_per_ip(make_server: Any, ca_file: str) -> None:
    srv = make_server(ENABLED + "max_per_ip_per_hour = 2\n")
    srv.adduser("alice@localhost")
    srv.start()
    assert register(srv, ca_file, "first", "pass one").get("type") == "result"
    # A refused registration does not use up the allowance.
    assert stanza_error(register(srv, ca_file, "alice", "pass")) == "conflict"
    assert register(srv, ca_file, "second", "pass two").get("type") == "result"
    reply = register(srv, ca_file, "third", "pass three")
    assert stanza_error(reply) == "policy-violation"
    assert reply.find("{jabber:client}error").get("type") == "wait"
    assert not can_login(srv, ca_file, "third", "pass three")


def test_several_registrations_on_one_connection_when_configured(
    make_server: Any, ca_file: str
) -> None:
    # Smack's integration test framework (the XMPP Interop Testing suite) registers all its
    # accounts over one unauthenticated connection, with name and email fields as well.
    srv = make_server(ENABLED + "max_per_ip_per_hour = 100\nmax_per_connection = 3\n")
    srv.start()
    c, _ = tls_client(srv, ca_file)
    for n in range(4):
        c.send(
            f"<iq type='set' id='s{n}' to='localhost'><query xmlns='{REGISTER}'>"
            "<name>Smack Integration Test</name><email>test@example.org</email>"
            f"<username>sinttest-{n}</username><password>pass {n}</password></query></iq>"
        )
        reply = c.next()
        if n < 3:
            assert reply.get("type") == "result", etree.tostring(reply)
        else:
            assert stanza_error(reply) == "not-acceptable"
    c.close()
    assert all(can_login(srv, ca_file, f"sinttest-{n}", f"pass {n}") for n in range(3))
    assert not can_login(srv, ca_file, "sinttest-3", "pass 3")


def change_password(c: RawClient, username: str, password: str, iq_id: str = "c1") -> Any:
    c.send(
        f"<iq type='set' id='{iq_id}'><query xmlns='{REGISTER}'><username>{username}</username>"
        f"<password>{password}</password></query></iq>"
    )
    return c.next()


def test_password_change_with_registration_off(make_server: Any, ca_file: str) -> None:
    srv = make_server()
    srv.adduser("alice@localhost")
    srv.adduser("bob@localhost")
    srv.start()
    c = srv.client()
    c.login(ca_file, "alice", PASSWORD)
    c.send(f"<iq type='get' id='g'><query xmlns='{REGISTER}'/></iq>")
    query = c.next().find(f"{{{REGISTER}}}query")
    assert query.find(f"{{{REGISTER}}}registered") is not None
    assert query.findtext(f"{{{REGISTER}}}username") == "alice"
    assert stanza_error(change_password(c, "bob", "stolen")) == "forbidden"
    assert stanza_error(change_password(c, "alice", "", "c2")) == "bad-request"
    reply = change_password(c, "alice", "brand new", "c3")
    assert reply.get("type") == "result", etree.tostring(reply)
    c.close()
    assert can_login(srv, ca_file, "alice", "brand new")
    assert not can_login(srv, ca_file, "alice", PASSWORD)
    assert can_login(srv, ca_file, "bob", PASSWORD)
    assert "brand new" not in srv.log_text()


def test_answers_to_the_domain_come_from_the_domain(make_server: Any, ca_file: str) -> None:
    # RFC 6120 §8.1.2.1: what the server sends of its own has from='<domain>'. libpurple
    # (Pidgin) addresses its password change to the domain and takes a result only from
    # where the request went (iq.c does_reply_from_match_request_to): without 'from' its
    # Change Password dialog never heard back.
    srv = make_server()
    srv.adduser("alice@localhost")
    srv.start()
    c = srv.client()
    c.login(ca_file, "alice", PASSWORD)
    c.send(f"<iq type='get' id='g' to='localhost'><query xmlns='{REGISTER}'/></iq>")
    reply = c.next()
    assert (reply.get("type"), reply.get("from")) == ("result", "localhost")
    c.send(
        f"<iq type='set' id='c1' to='localhost'><query xmlns='{REGISTER}'>"
        "<username>alice</username><password>brand new</password></query></iq>"
    )
    reply = c.next()
    assert (reply.get("type"), reply.get("from")) == ("result", "localhost")
    # sent to the account's bare JID, the answer comes from it (XEP-0077 §3.3's example)
    c.send(
        f"<iq type='set' id='c2' to='alice@localhost'><query xmlns='{REGISTER}'>"
        "<username>alice</username><password>newer</password></query></iq>"
    )
    reply = c.next()
    assert (reply.get("type"), reply.get("from")) == ("result", "alice@localhost")
    c.close()
    assert can_login(srv, ca_file, "alice", "newer")


def test_password_change_and_removal_can_be_disallowed(make_server: Any, ca_file: str) -> None:
    srv = make_server("[register]\nallow_password_change = false\nallow_remove = false\n")
    srv.adduser("alice@localhost")
    srv.start()
    c = srv.client()
    c.login(ca_file, "alice", PASSWORD)
    assert stanza_error(change_password(c, "alice", "other")) == "not-allowed"
    c.send(f"<iq type='set' id='rm'><query xmlns='{REGISTER}'><remove/></query></iq>")
    assert stanza_error(c.next()) == "not-allowed"
    c.close()
    assert can_login(srv, ca_file, "alice", PASSWORD)


def test_removal_deletes_account_and_data(open_server: ServerProcess, ca_file: str) -> None:
    srv = open_server
    assert register(srv, ca_file, "leaver", "bye bye").get("type") == "result"
    other = srv.client()
    other.login(ca_file, "leaver", "bye bye", "second")
    c = srv.client()
    c.login(ca_file, "leaver", "bye bye", "first")
    # Something stored under the account (XEP-0049 private storage, when that module runs).
    private = "<query xmlns='jabber:iq:private'><note xmlns='urn:example:note'>kept</note></query>"
    c.send(f"<iq type='set' id='p1'>{private}</iq>")
    has_private = c.next().get("type") == "result"

    c.send(f"<iq type='set' id='rm'><query xmlns='{REGISTER}'><remove/></query></iq>")
    reply = c.next()
    assert reply.get("type") == "result" and reply.get("id") == "rm"
    # XEP-0077 §3.2: then a not-authorized stream error, on every session of the account.
    assert c.stream_error() == "not-authorized"
    assert c.wait_closed()
    assert other.stream_error() == "not-authorized"
    assert other.wait_closed()

    assert not can_login(srv, ca_file, "leaver", "bye bye")
    assert "leaver@localhost" not in run_cli("listusers", config=srv.config).stdout
    # A new account of the same name starts empty.
    assert register(srv, ca_file, "leaver", "again").get("type") == "result"
    if has_private:
        c = srv.client()
        c.login(ca_file, "leaver", "again")
        c.send(
            "<iq type='get' id='p2'><query xmlns='jabber:iq:private'>"
            "<note xmlns='urn:example:note'/></query></iq>"
        )
        assert b"kept" not in etree.tostring(c.next())
        c.close()


def test_removal_via_to_another_account_is_refused(
    open_server: ServerProcess, ca_file: str
) -> None:
    c = open_server.client()
    c.login(ca_file, "alice", PASSWORD)
    c.send(
        "<iq type='set' id='rm' to='nobody@localhost'>"
        f"<query xmlns='{REGISTER}'><remove/></query></iq>"
    )
    assert c.next().get("type") == "error"
    c.close()
    assert can_login(open_server, ca_file, "alice", PASSWORD)


class Registrar(ClientXMPP):
    """slixmpp with its XEP-0077 plugin, registering before authentication."""

    def __init__(self, jid: str, password: str, ca_file: str) -> None:
        super().__init__(jid, password)
        self.ca_certs = ca_file
        self.enable_direct_tls = False
        self.enable_plaintext = False
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0004")
        self.register_plugin("xep_0077")
        self.plugin["xep_0077"].force_registration = True
        self.done = asyncio.get_running_loop().create_future()
        self.add_event_handler("register", self._register)
        self.add_event_handler("session_start", self._started)
        self.add_event_handler("failed_all_auth", self._failed)

    async def _register(self, _form: Any) -> None:
        iq = self.Iq()
        iq["type"] = "set"
        iq["register"]["username"] = self.boundjid.user
        iq["register"]["password"] = self.password
        try:
            await iq.send()
        except Exception as exc:  # IqError, IqTimeout
            if not self.done.done():
                self.done.set_exception(AssertionError(f"registration failed: {exc}"))

    def _started(self, _event: Any) -> None:
        if not self.done.done():
            self.done.set_result(str(self.boundjid))

    def _failed(self, _event: Any) -> None:
        if not self.done.done():
            self.done.set_exception(AssertionError("authentication failed"))


async def test_slixmpp_registers(open_server: ServerProcess, ca_file: str) -> None:
    client = Registrar("slixuser@localhost/lib", "slix pass", ca_file)
    client.connect("127.0.0.1", open_server.port)
    try:
        jid = await asyncio.wait_for(client.done, 30)
    finally:
        client.disconnect()
    assert jid == "slixuser@localhost/lib"
    assert can_login(open_server, ca_file, "slixuser", "slix pass")
