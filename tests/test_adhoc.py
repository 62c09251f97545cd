"""XEP-0050 ad-hoc commands with the XEP-0133 service administration commands, over real
sockets: the flows Smack's AdHocCommandManager runs in the XMPP Interop Testing suite's
ServiceAdministrationIntegrationTest (execute, then complete with the filled form, at the
admin's own bare JID), the multi-stage flow, cancel, the §4.4 errors, who may run them, and
slixmpp's xep_0050 plugin as a real client."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import PASSWORD, ServerProcess, add_accounts
from lxml import etree
from slix_client import SlixClient
from test_components import COMPONENTS, GATEWAY, handshake, open_component
from test_sasl2 import authenticate_token, failure, get_token, tls_stream
from xmpp_raw import SASL, RawClient, stanza_error

logging.getLogger("slixmpp").setLevel(logging.WARNING)

CMD = "http://jabber.org/protocol/commands"
ADMIN = "http://jabber.org/protocol/admin"
DATA = "jabber:x:data"
ITEMS = "http://jabber.org/protocol/disco#items"
INFO = "http://jabber.org/protocol/disco#info"
ROSTER = "jabber:iq:roster"
CLIENT = "jabber:client"
USERS = ["admin", "bob", "carol", "dave", "erin"]


def admin_server(
    ca: Any, tmp_path_factory: pytest.TempPathFactory, name: str, users: list[str], extra: str = ""
) -> Iterator[ServerProcess]:
    """For a module-scoped fixture: a server whose admin is admin@localhost, with `users`."""
    server = ServerProcess(tmp_path_factory.mktemp(name), ca, ("localhost",), extra)
    text = server.config.read_text()
    server.config.write_text(text.replace("[server]\n", '[server]\nadmins = ["admin@localhost"]\n'))
    add_accounts(server, users)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def srv(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # Failed logins are part of the tests: no growing delays after them.
    extra = COMPONENTS + "\n[limits]\nauth_free_failures = 1000\n"
    yield from admin_server(ca, tmp_path_factory, "adhoc", USERS, extra)


@pytest.fixture
def opened() -> Iterator[list[RawClient]]:
    clients: list[RawClient] = []
    yield clients
    for c in clients:
        c.close()


def login(
    srv: ServerProcess, ca_file: str, opened: list[RawClient], user: str, password: str = PASSWORD
) -> RawClient:
    c = srv.client()
    opened.append(c)
    c.login(ca_file, user, password)
    return c


counter = iter(range(10**6))


def iq(c: RawClient, payload: str, to: str | None = "admin@localhost") -> Any:
    """Send an iq set (get for disco) and return the answer, skipping other stanzas."""
    iq_id = f"q{next(counter)}"
    kind = "set" if payload.startswith("<command") else "get"
    to_attr = f" to='{to}'" if to else ""
    c.send(f"<iq type='{kind}' id='{iq_id}'{to_attr}>{payload}</iq>")
    while True:
        el = c.next()
        if el.tag == f"{{{CLIENT}}}iq" and el.get("id") == iq_id:
            return el


def command(
    c: RawClient,
    name: str,
    action: str | None = "execute",
    sessionid: str | None = None,
    fields: dict[str, list[str]] | None = None,
    to: str | None = "admin@localhost",
) -> Any:
    attrs = f" node='{ADMIN}#{name}'"
    attrs += f" action='{action}'" if action else ""
    attrs += f" sessionid='{sessionid}'" if sessionid else ""
    form = ""
    if fields is not None:
        form = f"<x xmlns='{DATA}' type='submit'><field var='FORM_TYPE'><value>{ADMIN}</value>"
        form += "</field>"
        for var, values in fields.items():
            form += f"<field var='{var}'>" + "".join(f"<value>{v}</value>" for v in values)
            form += "</field>"
        form += "</x>"
    return iq(c, f"<command xmlns='{CMD}'{attrs}>{form}</command>", to)


def cmd(reply: Any) -> Any:
    assert reply.get("type") == "result", etree.tostring(reply)
    el = reply.find(f"{{{CMD}}}command")
    assert el is not None, etree.tostring(reply)
    return el


def form_values(el: Any) -> dict[str, list[str]]:
    x = el.find(f"{{{DATA}}}x")
    assert x is not None, etree.tostring(el)
    return {
        f.get("var"): [v.text or "" for v in f.iterfind(f"{{{DATA}}}value")]
        for f in x.iterfind(f"{{{DATA}}}field")
    }


def notes(el: Any) -> list[tuple[str, str]]:
    return [(n.get("type", "info"), n.text or "") for n in el.iterfind(f"{{{CMD}}}note")]


def run(c: RawClient, name: str, fields: dict[str, list[str]], **kw: Any) -> Any:
    """Smack's executeCommandWithArgs: execute, then complete with the filled form."""
    first = cmd(command(c, name, **kw))
    assert first.get("status") == "executing"
    actions = first.find(f"{{{CMD}}}actions")
    assert actions is not None and actions.get("execute") == "complete"
    assert actions.find(f"{{{CMD}}}complete") is not None
    assert first.find(f"{{{DATA}}}x").get("type") == "form"
    assert form_values(first)["FORM_TYPE"] == [ADMIN]
    done = cmd(
        command(
            c, name, "complete", first.get("sessionid"), fields, to=kw.get("to", "admin@localhost")
        )
    )
    assert done.get("sessionid") == first.get("sessionid")
    assert done.get("status") == "completed"
    return done


def error_of(reply: Any) -> tuple[str | None, str | None]:
    """(stanza condition, XEP-0050 specific condition) of an error reply."""
    assert reply.get("type") == "error", etree.tostring(reply)
    error = reply.find(f"{{{CLIENT}}}error")
    specific = [child.tag.split("}")[1] for child in error if child.tag.startswith(f"{{{CMD}}}")]
    return stanza_error(reply), specific[0] if specific else None


def can_login(srv: ServerProcess, ca_file: str, user: str, password: str) -> bool:
    c = srv.client()
    try:
        c.open_stream()
        c.starttls(ca_file)
        return bool(c.sasl_scram(user, password).tag.endswith("}success"))
    finally:
        c.close()


# --- discovery ---------------------------------------------------------------------------


def test_commands_are_discovered_by_admins_only(
    srv: ServerProcess, ca_file: str, opened: list[RawClient]
) -> None:
    admin = login(srv, ca_file, opened, "admin")
    bob = login(srv, ca_file, opened, "bob")
    # XEP-0050 §2.1: the feature on the server's domain.
    info = iq(admin, f"<query xmlns='{INFO}'/>", "localhost")
    assert CMD in {f.get("var") for f in info.iter(f"{{{INFO}}}feature")}
    # §2.2: the list, at the domain and at the admin's own bare JID (where the suite asks).
    for to in ("localhost", "admin@localhost"):
        reply = iq(admin, f"<query xmlns='{ITEMS}' node='{CMD}'/>", to)
        assert reply.get("type") == "result", etree.tostring(reply)
        items = reply.findall(f"{{{ITEMS}}}query/{{{ITEMS}}}item")
        nodes = {i.get("node") for i in items}
        assert {f"{ADMIN}#add-user", f"{ADMIN}#delete-user", f"{ADMIN}#announce"} <= nodes
        assert {i.get("jid") for i in items} == {to}
        assert all(i.get("name") for i in items)
    # Others see an empty list.
    for to in ("localhost", "bob@localhost"):
        reply = iq(bob, f"<query xmlns='{ITEMS}' node='{CMD}'/>", to)
        assert reply.get("type") == "result" and len(reply[0]) == 0, etree.tostring(reply)
    # A command node's disco#info: a command node, data forms; forbidden to others.
    node = f"{ADMIN}#add-user"
    reply = iq(admin, f"<query xmlns='{INFO}' node='{node}'/>", "localhost")
    identity = reply.find(f"{{{INFO}}}query/{{{INFO}}}identity")
    assert (identity.get("category"), identity.get("type")) == ("automation", "command-node")
    assert {CMD, DATA} <= {f.get("var") for f in reply.iter(f"{{{INFO}}}feature")}
    assert error_of(iq(bob, f"<query xmlns='{INFO}' node='{node}'/>", "localhost"))[0] == (
        "forbidden"
    )


# --- the commands the suite runs ---------------------------------------------------------


def test_add_user_change_password_and_delete_user(
    srv: ServerProcess, ca_file: str, opened: list[RawClient]
) -> None:
    admin = login(srv, ca_file, opened, "admin")
    done = run(
        admin,
        "add-user",
        {"accountjid": ["newbie@localhost"], "password": ["pw1"], "password-verify": ["pw1"]},
    )
    assert not [n for n in notes(done) if n[0] == "error"]
    assert can_login(srv, ca_file, "newbie", "pw1")
    # Taken, mismatched passwords, another domain, not a JID: completed with an error note
    # (the suite's assertCommandFailed; Smack throws on an iq error).
    for fields in (
        {"accountjid": ["newbie@localhost"], "password": ["x"], "password-verify": ["x"]},
        {"accountjid": ["other@localhost"], "password": ["a"], "password-verify": ["b"]},
        {"accountjid": ["x@somewhere.example"], "password": ["a"], "password-verify": ["a"]},
        {"accountjid": ["x@invalid@domain"], "password": ["a"], "password-verify": ["a"]},
    ):
        assert [n[0] for n in notes(run(admin, "add-user", fields))] == ["error"], fields
    assert not can_login(srv, ca_file, "other", "a")

    done = run(
        admin, "change-user-password", {"accountjid": ["newbie@localhost"], "password": ["pw2"]}
    )
    assert not [n for n in notes(done) if n[0] == "error"]
    assert can_login(srv, ca_file, "newbie", "pw2") and not can_login(srv, ca_file, "newbie", "pw1")

    # Deleting: the account's sessions end, its data goes; a full JID names the account.
    newbie = login(srv, ca_file, opened, "newbie", "pw2")
    done = run(admin, "delete-user", {"accountjids": ["newbie@localhost/anything"]})
    assert [n[0] for n in notes(done)] == ["info"]
    assert newbie.stream_error() == "not-authorized"
    assert not can_login(srv, ca_file, "newbie", "pw2")
    done = run(admin, "delete-user", {"accountjids": ["newbie@localhost"]})
    assert [n[0] for n in notes(done)] == ["error"]  # no such account any more
    srv.wait_for_log("deleted the account newbie@localhost")


def test_disable_and_reenable_user(
    srv: ServerProcess, ca_file: str, opened: list[RawClient]
) -> None:
    admin = login(srv, ca_file, opened, "admin")
    add_accounts_online(srv, admin, "sleeper")
    one, two = (login(srv, ca_file, opened, "sleeper") for _ in range(2))
    one.send(
        f"<iq type='set' id='r1'><query xmlns='{ROSTER}'><item jid='friend@example.org' "
        "name='Friend'/></query></iq>"
    )
    while one.next().get("id") != "r1":
        pass
    token = get_token(srv, ca_file, "sleeper")  # XEP-0484: a FAST token, taken before
    done = run(admin, "disable-user", {"accountjids": ["sleeper@localhost"]})
    assert [n[0] for n in notes(done)] == ["info"]
    # XEP-0133 §4.3: every session ends, no login by any mechanism, the data stays.
    assert one.stream_error() == "not-authorized" and two.stream_error() == "not-authorized"
    assert not can_login(srv, ca_file, "sleeper", PASSWORD)
    # RFC 6120 §6.5.1: account-disabled, but only to whoever proved the password (SCRAM
    # and PLAIN); a wrong one hears not-authorized, as for any account.
    for mechanism, password, condition in (
        ("SCRAM-SHA-256", PASSWORD, "account-disabled"),
        ("SCRAM-SHA-1", "wrong", "not-authorized"),
        ("PLAIN", PASSWORD, "account-disabled"),
        ("PLAIN", "wrong", "not-authorized"),
    ):
        c = srv.client()
        opened.append(c)
        c.open_stream()
        c.starttls(ca_file)
        if mechanism == "PLAIN":
            outcome = c.sasl_plain("sleeper", password)
        else:
            outcome = c.sasl_scram("sleeper", password, mechanism)
        assert outcome.tag == f"{{{SASL}}}failure", (mechanism, password)
        assert outcome[0].tag == f"{{{SASL}}}{condition}", (
            mechanism,
            password,
        )
    fast, _ = tls_stream(srv, ca_file)
    opened.append(fast)
    assert failure(authenticate_token(fast, "sleeper", token)) in (
        "not-authorized",
        "credentials-expired",
    )
    roster = run(admin, "get-user-roster", {"accountjids": ["sleeper@localhost"]})
    item = roster.find(f"{{{DATA}}}x/{{{ROSTER}}}query/{{{ROSTER}}}item")
    assert item is not None and item.get("name") == "Friend"
    assert int(form_values(cmd(command(admin, "get-disabled-users-num")))["disabledusersnum"][0])
    disabled = form_values(run(admin, "get-disabled-users-list", {}))["disableduserjids"]
    assert disabled == ["sleeper@localhost"]
    # §4.4: logins again.
    done = run(admin, "reenable-user", {"accountjids": ["sleeper@localhost"]})
    assert [n[0] for n in notes(done)] == ["info"]
    assert can_login(srv, ca_file, "sleeper", PASSWORD)
    assert form_values(run(admin, "get-disabled-users-list", {}))["disableduserjids"] == []
    # An account that does not exist, one of another domain, the admin's own: error notes.
    for name, jid in (
        ("reenable-user", "nobody@localhost"),
        ("reenable-user", "someone@elsewhere.example"),
        ("disable-user", "admin@localhost"),
    ):
        assert [n[0] for n in notes(run(admin, name, {"accountjids": [jid]}))] == ["error"]
    assert can_login(srv, ca_file, "admin", PASSWORD)
    srv.wait_for_log("disabled the account sleeper@localhost")


def test_end_user_session_full_and_bare(
    srv: ServerProcess, ca_file: str, opened: list[RawClient]
) -> None:
    admin = login(srv, ca_file, opened, "admin")
    one, two = srv.client(), srv.client()
    opened += [one, two]
    full_one = one.login(ca_file, "carol", PASSWORD)
    two.login(ca_file, "carol", PASSWORD)
    # XEP-0133 §4.5: a full JID ends that session only.
    run(admin, "end-user-session", {"accountjids": [full_one]})
    assert one.stream_error() == "policy-violation"
    assert iq(two, "<ping xmlns='urn:xmpp:ping'/>", "localhost").get("type") == "result"
    # A bare JID ends all of them.
    three = login(srv, ca_file, opened, "carol")
    run(admin, "end-user-session", {"accountjids": ["carol@localhost"]})
    assert two.stream_error() == "policy-violation"
    assert three.stream_error() == "policy-violation"
    srv.wait_for_log("ended 2 session(s) of carol@localhost")


def test_counts_lists_and_roster(srv: ServerProcess, ca_file: str, opened: list[RawClient]) -> None:
    admin = login(srv, ca_file, opened, "admin")
    admin.send("<presence/>")
    dave = login(srv, ca_file, opened, "dave")  # online, no presence: idle
    dave.send(
        f"<iq type='set' id='r1'><query xmlns='{ROSTER}'><item jid='x@example.org' name='X'>"
        "<group>G</group></item></query></iq>"
    )
    while dave.next().get("id") != "r1":
        pass

    def count(name: str, var: str) -> int:
        done = cmd(command(admin, name))  # §4.13: completes at once, no form to fill
        assert done.get("status") == "completed"
        return int(form_values(done)[var][0])

    assert count("get-registered-users-num", "registeredusersnum") >= len(USERS) - 1
    assert count("get-online-users-num", "onlineusersnum") >= 2
    assert count("get-active-users-num", "activeusersnum") >= 1
    assert count("get-idle-users-num", "idleusersnum") >= 1

    def listed(name: str, var: str, fields: dict[str, list[str]] | None = None) -> list[str]:
        return form_values(run(admin, name, fields or {}))[var]

    registered = listed("get-registered-users-list", "registereduserjids")
    assert {"admin@localhost", "bob@localhost", "erin@localhost"} <= set(registered)
    assert len(listed("get-registered-users-list", "registereduserjids", {"max_items": ["25"]}))
    online = listed("get-online-users-list", "onlineuserjids")
    assert {"admin@localhost", "dave@localhost"} <= set(online)
    assert "admin@localhost" in listed("get-active-users", "activeuserjids")
    assert "dave@localhost" not in listed("get-active-users", "activeuserjids")
    assert "dave@localhost" in listed("get-idle-users", "idleuserjids")

    # XEP-0133 §4.8: the roster inside the result form (the suite reads it as a RosterPacket).
    done = run(admin, "get-user-roster", {"accountjids": ["dave@localhost"]})
    item = done.find(f"{{{DATA}}}x/{{{ROSTER}}}query/{{{ROSTER}}}item")
    assert item is not None and (item.get("jid"), item.get("name")) == ("x@example.org", "X")


def test_announce_reaches_online_users(
    srv: ServerProcess, ca_file: str, opened: list[RawClient]
) -> None:
    admin = login(srv, ca_file, opened, "admin")
    erin = login(srv, ca_file, opened, "erin")
    erin.send("<presence/>")
    # text-multi: one value per line (Smack's fillForm splits the suite's text at commas).
    run(admin, "announce", {"subject": ["Hello"], "announcement": ["line one", "line two"]})
    while True:
        el = erin.next()
        if el.tag == f"{{{CLIENT}}}message":
            break
    assert el.get("from") == "localhost" and el.get("type") == "headline"
    assert el.findtext(f"{{{CLIENT}}}body") == "line one\nline two"
    assert el.findtext(f"{{{CLIENT}}}subject") == "Hello"


def messages_at_login(
    srv: ServerProcess, ca_file: str, opened: list[RawClient], user: str
) -> list[Any]:
    """The messages a login with initial presence brings, up to a ping's answer."""
    c = login(srv, ca_file, opened, user)
    c.send("<presence/>")
    c.send("<iq type='get' id='after' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    got = []
    while True:
        el = c.next()
        if el.get("id") == "after":
            return got
        if el.tag == f"{{{CLIENT}}}message":
            got.append(el)


def test_message_of_the_day(srv: ServerProcess, ca_file: str, opened: list[RawClient]) -> None:
    admin = login(srv, ca_file, opened, "admin")
    # §4.26 delete-motd completes at once, also when there is none (the suite runs it first).
    assert cmd(command(admin, "delete-motd")).get("status") == "completed"
    run(admin, "set-motd", {"motd": ["Maintenance tonight", "at 22:00"]})
    # §4.24: at login, from the domain; once per account and message.
    (motd,) = messages_at_login(srv, ca_file, opened, "bob")
    assert motd.get("from") == "localhost"
    assert motd.findtext(f"{{{CLIENT}}}body") == "Maintenance tonight\nat 22:00"
    assert messages_at_login(srv, ca_file, opened, "bob") == []
    # §4.25 edit-motd: its form holds the current message; a new one reaches bob again.
    form = cmd(command(admin, "edit-motd"))
    assert form_values(form)["motd"] == ["Maintenance tonight", "at 22:00"]
    done = cmd(command(admin, "edit-motd", "complete", form.get("sessionid"),
                       {"motd": ["Moved to Friday"]}))  # fmt: skip
    assert done.get("status") == "completed"
    (motd,) = messages_at_login(srv, ca_file, opened, "bob")
    assert motd.findtext(f"{{{CLIENT}}}body") == "Moved to Friday"
    # Deleted: edit-motd's form is empty, nobody gets one.
    assert cmd(command(admin, "delete-motd")).get("status") == "completed"
    assert form_values(cmd(command(admin, "edit-motd")))["motd"] == []
    assert messages_at_login(srv, ca_file, opened, "erin") == []
    srv.wait_for_log("set the message of the day of localhost")


# --- XEP-0050 flows and errors -----------------------------------------------------------


def test_multi_stage_next_prev_and_cancel(
    srv: ServerProcess, ca_file: str, opened: list[RawClient]
) -> None:
    admin = login(srv, ca_file, opened, "admin")
    add_accounts_online(srv, admin, "gone")
    first = cmd(command(admin, "delete-user", to="localhost"))
    sid = first.get("sessionid")
    actions = first.find(f"{{{CMD}}}actions")
    assert {a.tag.split("}")[1] for a in actions} == {"next", "complete"}
    # XEP-0050 §2.4.2 next: the review stage, which allows prev and complete.
    review = cmd(command(admin, "delete-user", "next", sid, {"accountjids": ["gone@localhost"]},
                         to="localhost"))  # fmt: skip
    assert review.get("status") == "executing" and review.get("sessionid") == sid
    assert {a.tag.split("}")[1] for a in review.find(f"{{{CMD}}}actions")} == {"prev", "complete"}
    fixed = review.findall(f"{{{DATA}}}x/{{{DATA}}}field[@type='fixed']")
    assert [(f.get("label"), f.findtext(f"{{{DATA}}}value")) for f in fixed] == [
        ("accountjids", "gone@localhost")
    ]
    # prev: the first stage again, filled with what was given.
    back = cmd(command(admin, "delete-user", "prev", sid, to="localhost"))
    assert form_values(back)["accountjids"] == ["gone@localhost"]
    # §2.4.3 cancel: canceled, and the session is gone (session-expired after that).
    canceled = cmd(command(admin, "delete-user", "cancel", sid, to="localhost"))
    assert canceled.get("status") == "canceled" and canceled.get("sessionid") == sid
    assert error_of(command(admin, "delete-user", "complete", sid, {}, to="localhost")) == (
        "not-allowed",
        "session-expired",
    )
    assert can_login(srv, ca_file, "gone", PASSWORD)  # canceled: nothing was deleted
    # Through the review stage to the end: deleted.
    first = cmd(command(admin, "delete-user", to="localhost"))
    sid = first.get("sessionid")
    cmd(command(admin, "delete-user", "next", sid, {"accountjids": ["gone@localhost"]},
                to="localhost"))  # fmt: skip
    done = cmd(command(admin, "delete-user", "complete", sid, to="localhost"))
    assert done.get("status") == "completed" and [n[0] for n in notes(done)] == ["info"]
    assert not can_login(srv, ca_file, "gone", PASSWORD)


def add_accounts_online(srv: ServerProcess, admin: RawClient, name: str) -> None:
    done = run(
        admin, "add-user", {"accountjid": [f"{name}@localhost"], "password": [PASSWORD],
                            "password-verify": [PASSWORD]}
    )  # fmt: skip
    assert not [n for n in notes(done) if n[0] == "error"], etree.tostring(done)


def test_protocol_errors(srv: ServerProcess, ca_file: str, opened: list[RawClient]) -> None:
    admin = login(srv, ca_file, opened, "admin")
    # XEP-0050 §4.4: an unknown action, a session that does not exist, a node that does not exist.
    assert error_of(command(admin, "add-user", "jump")) == ("bad-request", "malformed-action")
    assert error_of(command(admin, "add-user", "complete", "no-such-session", {})) == (
        "bad-request",
        "bad-sessionid",
    )
    assert error_of(command(admin, "no-such-command"))[0] == "item-not-found"
    assert error_of(command(admin, "add-user", "complete", None, {})) == (
        "bad-request",
        "bad-sessionid",
    )
    sid = cmd(command(admin, "add-user")).get("sessionid")
    # A required field missing, or no form at all: bad-payload; the session goes on.
    assert error_of(command(admin, "add-user", "complete", sid, {"accountjid": ["z@localhost"]}))
    assert error_of(command(admin, "add-user", "complete", sid)) == ("bad-request", "bad-payload")
    # prev at the first stage: bad-action.
    assert error_of(command(admin, "add-user", "prev", sid)) == ("bad-request", "bad-action")
    # The session belongs to its command.
    assert error_of(command(admin, "announce", "complete", sid, {"announcement": ["x"]})) == (
        "bad-request",
        "bad-sessionid",
    )
    # ... and to its client session: another resource of the same admin cannot continue it.
    other = login(srv, ca_file, opened, "admin")
    fields = {"accountjid": ["z@localhost"], "password": ["p"], "password-verify": ["p"]}
    assert error_of(command(other, "add-user", "complete", sid, fields)) == (
        "bad-request",
        "bad-sessionid",
    )
    # action 'execute' on a session is the announced execute='complete'.
    done = cmd(command(admin, "add-user", "execute", sid, fields))
    assert done.get("status") == "completed"
    assert error_of(command(admin, "add-user", "complete", sid, fields)) == (
        "not-allowed",
        "session-expired",
    )


def test_next_at_the_last_stage_completes(
    srv: ServerProcess, ca_file: str, opened: list[RawClient]
) -> None:
    # Smack's ServiceAdministrationManager (4.3, 4.4: the suite's account provisioning with an
    # admin account) submits add-user's only form with action 'next', to the domain.
    admin = login(srv, ca_file, opened, "admin")
    sid = cmd(command(admin, "add-user", to="localhost")).get("sessionid")
    fields = {"accountjid": ["nextuser@localhost"], "password": ["n"], "password-verify": ["n"]}
    done = cmd(command(admin, "add-user", "next", sid, fields, to="localhost"))
    assert done.get("status") == "completed" and [n[0] for n in notes(done)] == ["info"]
    assert can_login(srv, ca_file, "nextuser", "n")


def test_sessions_are_bounded(srv: ServerProcess, ca_file: str, opened: list[RawClient]) -> None:
    admin = login(srv, ca_file, opened, "admin")
    sids = [cmd(command(admin, "announce")).get("sessionid") for _ in range(6)]
    assert len(set(sids)) == 6
    # Five open sessions per client session: the sixth displaced the oldest.
    assert error_of(command(admin, "announce", "cancel", sids[0]))[1] == "session-expired"
    for sid in sids[1:]:
        assert cmd(command(admin, "announce", "cancel", sid)).get("status") == "canceled"


def test_non_admins_and_strangers_are_refused(
    srv: ServerProcess, ca_file: str, opened: list[RawClient]
) -> None:
    bob = login(srv, ca_file, opened, "bob")
    # XEP-0050 §4.4: forbidden, at the domain and at the asker's own JID, before any session.
    for to in ("localhost", "bob@localhost", None):
        assert error_of(command(bob, "add-user", to=to)) == ("forbidden", None)
        assert error_of(command(bob, "get-registered-users-num", to=to)) == ("forbidden", None)
    srv.wait_for_log("refused command")
    # Another account's JID offers no commands.
    admin = login(srv, ca_file, opened, "admin")
    assert error_of(command(admin, "add-user", to="bob@localhost"))[0] == "service-unavailable"
    # An entity of another server (here a XEP-0114 component, routed as remote): forbidden.
    gateway = open_component(srv)
    opened.append(gateway)
    assert handshake(gateway).tag.endswith("}handshake")
    for query in (
        f"<command xmlns='{CMD}' node='{ADMIN}#add-user' action='execute'/>",
        f"<query xmlns='{ITEMS}' node='{CMD}'/>",
    ):
        kind = "get" if "disco" in query else "set"
        gateway.send(
            f"<iq type='{kind}' id='g1' from='admin@{GATEWAY}' to='localhost'>{query}</iq>"
        )
        reply = gateway.next()
        if kind == "set":
            assert (
                reply.get("type") == "error"
                and reply.find(
                    "{jabber:component:accept}error/{urn:ietf:params:xml:ns:xmpp-stanzas}forbidden"
                )
                is not None
            ), etree.tostring(reply)
        else:  # §2.2: an empty command list
            assert reply.get("type") == "result" and len(reply[0]) == 0, etree.tostring(reply)
    # Unauthenticated: nothing is routed before authentication (RFC 6120 §6, §7).
    anon = srv.client()
    opened.append(anon)
    anon.open_stream()
    anon.starttls(ca_file)
    anon.send(f"<iq type='set' id='a1' to='localhost'><command xmlns='{CMD}' "
              f"node='{ADMIN}#add-user' action='execute'/></iq>")  # fmt: skip
    assert anon.stream_error() == "not-authorized"


# --- a real client implementation --------------------------------------------------------


async def test_slixmpp_xep_0050_adds_a_user(srv: ServerProcess, ca_file: str) -> None:
    """slixmpp's xep_0050 plugin: the command list, then its workflow (start_command, the
    form, complete_command) creates an account at the server's domain."""
    client = SlixClient("admin@localhost/slix", ca_file, plugins=("xep_0030", "xep_0004",
                                                                  "xep_0050"))  # fmt: skip
    await client.online(srv.port)
    try:
        listing = await client.plugin["xep_0050"].get_commands("localhost")
        nodes = {item[1] for item in listing["disco_items"]["items"]}
        assert f"{ADMIN}#add-user" in nodes
        outcome: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        asked: list[Any] = []

        def fill(iq: Any, session: Any) -> None:
            asked.append(iq)
            answers = client.plugin["xep_0004"].make_form("submit")
            answers.add_field(var="FORM_TYPE", ftype="hidden", value=ADMIN)
            answers.add_field(var="accountjid", value="slixuser@localhost")
            answers.add_field(var="password", value="slix pw")
            answers.add_field(var="password-verify", value="slix pw")
            session["payload"] = answers
            session["next"] = lambda done, _s: outcome.set_result(done)
            client.plugin["xep_0050"].complete_command(session)

        session = {"next": fill, "error": lambda iq, _s: outcome.set_result(iq)}
        client.plugin["xep_0050"].start_command("localhost", f"{ADMIN}#add-user", session)
        done = await asyncio.wait_for(outcome, 10)
        assert asked[0]["command"]["status"] == "executing"
        fields = {f["var"] for f in asked[0]["command"]["form"]["fields"]}
        assert {"accountjid", "password", "password-verify"} <= fields
        assert done["type"] == "result" and done["command"]["status"] == "completed"
        assert [n[0] for n in done["command"]["notes"]] == ["info"]
        assert can_login(srv, ca_file, "slixuser", "slix pw")
    finally:
        client.disconnect()


def test_shutdown(make_server: Any, ca_file: str, opened: list[RawClient]) -> None:
    """§4.31: the announcement to every session, then the server stops as on SIGTERM."""
    server = make_server()
    text = server.config.read_text()
    server.config.write_text(text.replace("[server]\n", '[server]\nadmins = ["admin@localhost"]\n'))
    add_accounts(server, ["admin", "bob"])
    server.start()
    admin = login(server, ca_file, opened, "admin")
    bob = login(server, ca_file, opened, "bob")
    form = cmd(command(admin, "shutdown", to="localhost"))
    assert {"delay", "announcement"} <= set(form_values(form))
    done = cmd(
        command(admin, "shutdown", "complete", form.get("sessionid"),
                {"delay": ["0"], "announcement": ["Back in five minutes"]}, to="localhost")
    )  # fmt: skip
    assert done.get("status") == "completed"
    announcement = bob.next()
    assert announcement.findtext(f"{{{CLIENT}}}body") == "Back in five minutes"
    assert bob.stream_error() == "system-shutdown"
    assert server.proc.wait(20) == 0
    assert "admin admin@localhost/" in server.log_text() and "shuts the server down" in (
        server.log_text()
    )
