"""XEP-0133 commands beyond those of test_adhoc.py, over real sockets: get-user-lastlogin
(§4.9), user-stats (§4.10), set-welcome and delete-welcome (§4.27, §4.28) with the welcome
message reaching new accounts (XEP-0077 registration, add-user) at their first login and
kept across a restart; each refused to non-admins, bad JIDs completing with an error note;
slixmpp's xep_0133 plugin as a real client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import PASSWORD, ServerProcess, add_accounts
from slix_client import SlixClient
from test_adhoc import (
    ADMIN,
    CLIENT,
    CMD,
    DATA,
    ITEMS,
    ROSTER,
    admin_server,
    cmd,
    command,
    error_of,
    form_values,
    iq,
    login,
    messages_at_login,
    notes,
    run,
)
from test_register import register
from xmpp_raw import RawClient

from fastxmpp.delay import parse_stamp

USERS = ["admin", "bob", "carol", "dave", "erin"]
NEW_COMMANDS = ("get-user-lastlogin", "user-stats", "set-welcome", "delete-welcome")
# What the admin may type that names no account of this host: each completes with an error
# note (XEP-0050 §3.6), as the other commands do.
BAD_JIDS = ("x@invalid@domain", "someone@elsewhere.example", "nobody@localhost", "localhost")


@pytest.fixture(scope="module")
def srv(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from admin_server(ca, tmp_path_factory, "adhoc-more", USERS)


def field_types(el: Any) -> dict[str, str | None]:
    x = el.find(f"{{{DATA}}}x")
    return {f.get("var"): f.get("type") for f in x.iterfind(f"{{{DATA}}}field")}


def test_new_commands_are_listed_and_refused_to_others(
    srv: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    admin = login(srv, ca_file, clients, "admin")
    reply = iq(admin, f"<query xmlns='{ITEMS}' node='{CMD}'/>", "localhost")
    nodes = {i.get("node") for i in reply.iter(f"{{{ITEMS}}}item")}
    assert {f"{ADMIN}#{name}" for name in NEW_COMMANDS} <= nodes
    # §4.29: the admin list is the configuration's, read at start: not offered.
    assert f"{ADMIN}#edit-admin" not in nodes
    assert error_of(command(admin, "edit-admin"))[0] == "item-not-found"
    # XEP-0133 §6 / XEP-0050 §4.4: forbidden to a user who is not an admin.
    bob = login(srv, ca_file, clients, "bob")
    for name in NEW_COMMANDS:
        for to in ("localhost", "bob@localhost"):
            assert error_of(command(bob, name, to=to)) == ("forbidden", None), (name, to)


def test_get_user_lastlogin(srv: ServerProcess, ca_file: str, clients: list[RawClient]) -> None:
    admin = login(srv, ca_file, clients, "admin")

    def lastlogin(jid: str) -> tuple[dict[str, list[str]], list[tuple[str, str]]]:
        done = run(admin, "get-user-lastlogin", {"accountjids": [jid]})
        has_form = done.find(f"{{{DATA}}}x") is not None
        return (form_values(done) if has_form else {}), notes(done)

    # §4.9: the form asks for accountjids.
    form = cmd(command(admin, "get-user-lastlogin"))
    assert field_types(form)["accountjids"] == "jid-multi"
    cmd(command(admin, "get-user-lastlogin", "cancel", form.get("sessionid")))

    before = time.time()
    login(srv, ca_file, clients, "bob")
    values, said = lastlogin("bob@localhost")
    assert values["accountjids"] == ["bob@localhost"] and said == []
    (stamp,) = values["lastlogin"]
    first = parse_stamp(stamp)  # XEP-0082 DateTime
    assert first is not None and int(before) <= first <= time.time() + 1, stamp
    # The latest login counts.
    time.sleep(1.1)
    login(srv, ca_file, clients, "bob")
    later = parse_stamp(lastlogin("bob@localhost")[0]["lastlogin"][0])
    assert later is not None and later > first
    # All of bob's sessions gone: no login time is kept; the note tells when the last
    # session ended (XEP-0012's record).
    for c in clients[1:]:
        c.send("</stream:stream>")
        c.wait_closed(5)
    deadline = time.monotonic() + 5
    while "lastlogin" in (values := lastlogin("bob@localhost")[0]):
        assert time.monotonic() < deadline, values
        time.sleep(0.05)
    values, said = lastlogin("bob@localhost")
    assert values["accountjids"] == ["bob@localhost"]
    ((kind, text),) = said
    assert kind == "info" and "offline" in text and "last session ended at" in text, said
    ended = parse_stamp(text.rsplit(" ", 1)[1])
    assert ended is not None and later <= ended + 1
    # Never logged in: offline, no logout known either.
    values, said = lastlogin("carol@localhost")
    assert "lastlogin" not in values and said[0][0] == "info"
    assert "last session ended" not in said[0][1]
    # Errors: bad JIDs, two accounts at once, each an error note.
    for jid in BAD_JIDS:
        assert [n[0] for n in lastlogin(jid)[1]] == ["error"], jid
    done = run(admin, "get-user-lastlogin", {"accountjids": ["bob@localhost", "dave@localhost"]})
    assert [n[0] for n in notes(done)] == ["error"]
    srv.wait_for_log("asked the last login of bob@localhost")


def test_user_stats(srv: ServerProcess, ca_file: str, clients: list[RawClient]) -> None:
    admin = login(srv, ca_file, clients, "admin")
    # §4.10: the form asks for one accountjid.
    form = cmd(command(admin, "user-stats"))
    assert field_types(form)["accountjid"] == "jid-single"
    sid = form.get("sessionid")
    # A form without it (the interop suite sends `accountjids`): XEP-0050 bad-payload.
    assert error_of(
        command(admin, "user-stats", "complete", sid, {"accountjids": ["dave@localhost"]})
    ) == ("bad-request", "bad-payload")
    cmd(command(admin, "user-stats", "cancel", sid))

    def stats(jid: str) -> Any:
        done = run(admin, "user-stats", {"accountjid": [jid]})
        assert notes(done) == []
        return done

    home = RawClient(srv.port)
    work = RawClient(srv.port)
    clients += [home, work]
    home.login(ca_file, "dave", PASSWORD, "home")
    work.login(ca_file, "dave", PASSWORD, "work")
    for i, contact in enumerate(("one@example.org", "two@example.org")):
        home.send(
            f"<iq type='set' id='r{i}'><query xmlns='{ROSTER}'><item jid='{contact}'/></query></iq>"
        )
        while home.next().get("id") != f"r{i}":
            pass
    done = stats("dave@localhost")
    values = form_values(done)
    # The fields of §4.10's example that are measured (no stanzaspersecond, loginsperminute).
    assert set(values) == {"FORM_TYPE", "ipaddresses", "rostersize", "onlineresources"}
    assert values["rostersize"] == ["2"]
    assert values["onlineresources"] == ["home", "work"]
    assert values["ipaddresses"] == ["127.0.0.1"]
    types = field_types(done)
    assert (types["ipaddresses"], types["onlineresources"]) == ("list-multi", "text-multi")
    # A full JID names its account; one resource gone.
    work.send("</stream:stream>")
    work.wait_closed(5)
    deadline = time.monotonic() + 5
    while (values := form_values(stats("dave@localhost/elsewhere")))["onlineresources"] != ["home"]:
        assert time.monotonic() < deadline, values
        time.sleep(0.05)
    assert values["rostersize"] == ["2"]
    # Offline: no resources, no addresses, the roster still counted.
    values = form_values(stats("erin@localhost"))
    assert (values["onlineresources"], values["ipaddresses"], values["rostersize"]) == (
        [],
        [],
        ["0"],
    )
    for jid in BAD_JIDS:
        assert [n[0] for n in notes(run(admin, "user-stats", {"accountjid": [jid]}))] == [
            "error"
        ], jid
    srv.wait_for_log("asked the statistics of dave@localhost")


def welcome_of(messages: list[Any]) -> list[str]:
    return [m.findtext(f"{{{CLIENT}}}body") for m in messages if m.get("from") == "localhost"]


def test_welcome_message(make_server: Any, ca_file: str, clients: list[RawClient]) -> None:
    """§4.27: the welcome message reaches new accounts at their first login, once; existing
    accounts never get it; §4.28 deletes it; it and the messages new accounts wait for are
    kept across a restart."""
    server = make_server("[register]\nenabled = true\nmax_per_ip_per_hour = 100\n")
    text = server.config.read_text()
    server.config.write_text(text.replace("[server]\n", '[server]\nadmins = ["admin@localhost"]\n'))
    add_accounts(server, ["admin", "old"])
    server.start()
    admin = login(server, ca_file, clients, "admin")
    # Its form is empty while none is set.
    form = cmd(command(admin, "set-welcome"))
    assert form_values(form)["welcome"] == [] and field_types(form)["welcome"] == "text-multi"
    cmd(command(admin, "set-welcome", "cancel", form.get("sessionid")))
    done = run(admin, "set-welcome", {"welcome": ["Welcome here,", "read the rules."]})
    assert [n[0] for n in notes(done)] == ["info"]
    # The form holds the current message (§4.27).
    form = cmd(command(admin, "set-welcome"))
    assert form_values(form)["welcome"] == ["Welcome here,", "read the rules."]
    cmd(command(admin, "set-welcome", "cancel", form.get("sessionid")))

    # XEP-0077 registration: at the first login, from the domain, once.
    assert register(server, ca_file, "newbie", PASSWORD).get("type") == "result"
    (message,) = messages_at_login(server, ca_file, clients, "newbie")
    assert message.get("from") == "localhost"
    assert message.findtext(f"{{{CLIENT}}}body") == "Welcome here,\nread the rules."
    assert messages_at_login(server, ca_file, clients, "newbie") == []
    # add-user too; an account that existed before never gets it.
    run(admin, "add-user", {"accountjid": ["added@localhost"], "password": [PASSWORD],
                            "password-verify": [PASSWORD]})  # fmt: skip
    assert welcome_of(messages_at_login(server, ca_file, clients, "added")) == [
        "Welcome here,\nread the rules."
    ]
    assert messages_at_login(server, ca_file, clients, "old") == []

    server.wait_for_log("set the welcome message of localhost")

    # Kept across a restart: the message, and the one a new account has not seen yet.
    assert register(server, ca_file, "waiting", PASSWORD).get("type") == "result"
    for c in clients:
        c.close()
    clients.clear()
    server.stop()
    server.start()
    assert welcome_of(messages_at_login(server, ca_file, clients, "waiting")) == [
        "Welcome here,\nread the rules."
    ]
    assert register(server, ca_file, "after", PASSWORD).get("type") == "result"
    assert welcome_of(messages_at_login(server, ca_file, clients, "after")) == [
        "Welcome here,\nread the rules."
    ]

    # §4.28: deleted at once; new accounts get none, the form is empty again.
    admin = login(server, ca_file, clients, "admin")
    done = cmd(command(admin, "delete-welcome"))
    assert done.get("status") == "completed" and [n[0] for n in notes(done)] == ["info"]
    assert form_values(cmd(command(admin, "set-welcome")))["welcome"] == []
    assert register(server, ca_file, "late", PASSWORD).get("type") == "result"
    assert messages_at_login(server, ca_file, clients, "late") == []
    server.wait_for_log("deleted the welcome message of localhost")


async def test_slixmpp_xep_0133_user_stats(srv: ServerProcess, ca_file: str) -> None:
    """slixmpp's xep_0133 plugin runs user-stats; its data forms parse the result fields
    (list-multi, text-multi) into the values sent."""
    plugins = ("xep_0030", "xep_0004", "xep_0050", "xep_0133")
    client = SlixClient("admin@localhost/stats", ca_file, plugins=plugins)
    await client.online(srv.port)
    try:
        outcome: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def fill(iq: Any, session: Any) -> None:
            answers = client.plugin["xep_0004"].make_form("submit")
            answers.add_field(var="FORM_TYPE", ftype="hidden", value=ADMIN)
            answers.add_field(var="accountjid", ftype="jid-single", value="admin@localhost")
            session["payload"] = answers
            session["next"] = lambda done, _s: outcome.set_result(done)
            client.plugin["xep_0050"].complete_command(session)

        session = {"next": fill, "error": lambda iq, _s: outcome.set_result(iq)}
        client.plugin["xep_0133"].user_stats(jid="localhost", session=session)
        done = await asyncio.wait_for(outcome, 10)
        assert done["type"] == "result" and done["command"]["status"] == "completed"
        values = done["command"]["form"].get_values()
        assert "stats" in values["onlineresources"]
        assert values["ipaddresses"] == ["127.0.0.1"]
        assert values["rostersize"] == "0"
    finally:
        client.disconnect()
