"""StanzaJS (the npm package `stanza`, under node), a JavaScript client implementation, against
the server over wss:// (RFC 7395) and, for one test, https:// BOSH (XEP-0206): StanzaJS 12 has
no TCP transport. SASL logins and roster, messages with XEP-0184 receipts, XEP-0045 rooms,
XEP-0313 archive queries, XEP-0198 resumption, XEP-0280 carbons and XEP-0163 PEP.

The scenarios are tests/interop/stanza/scenarios.mjs (StanzaJS pinned by package-lock.json
beside it). The other side is a RawClient (tests/xmpp_raw.py) driven from here while the
scenario runs: the scenario prints a JSON line at each point where this side acts, and what
its clients saw at the end; the assertions are here. node trusts the test CA through
NODE_EXTRA_CA_CERTS: certificates are verified."""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import PASSWORD, FreshNames, ServerProcess, module_server
from interop_clients import (
    CLIENT,
    REPO,
    LineReader,
    body,
    raw_login,
    require,
    require_command,
    wait_for,
)
from lxml import etree
from ws_client import HTTP_LISTENER, http_port

POOL = FreshNames("sz", 20)
MESSAGE = f"{{{CLIENT}}}message"
PRESENCE = f"{{{CLIENT}}}presence"
RECEIPTS = "urn:xmpp:receipts"
MUC_USER = "http://jabber.org/protocol/muc#user"
STEP = 15.0
STANZA_DIR = REPO / "tests" / "interop" / "stanza"


def require_stanzajs() -> str:
    node = require_command("node", "node (nodejs)")
    require(
        (STANZA_DIR / "node_modules" / "stanza").is_dir(),
        f"StanzaJS ({STANZA_DIR / 'node_modules'})",
    )
    return node


@pytest.fixture(scope="module")
def srv(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # HTTPS (tls = "direct") with the host's certificate, which node checks against the test
    # CA (NODE_EXTRA_CA_CERTS): wss:// and https:// BOSH, encrypted without any setting.
    yield from module_server(ca, tmp_path_factory, POOL, HTTP_LISTENER + 'tls = "direct"\n')


@pytest.fixture
def names() -> Iterator[str]:
    return POOL.names()


def bound(user: str) -> str:
    return rf"{user}@localhost/stanza"


RUNNING: list[Scenario] = []


@pytest.fixture(autouse=True)
def end_scenarios() -> Iterator[None]:
    """A scenario still running when its test failed is stopped."""
    yield
    while RUNNING:
        scenario = RUNNING.pop()
        if scenario.proc.poll() is None:
            scenario.proc.kill()
        scenario.proc.wait(5)
        scenario.stderr.close()


class Scenario(LineReader):
    """One scenarios.mjs run: its JSON lines collected as they come."""

    def __init__(
        self, srv: ServerProcess, ca_file: str, name: str, users: list[str], *extra: str
    ) -> None:
        node = require_stanzajs()
        # The certificate names "localhost"; the listener is on 127.0.0.1 only.
        origin = f"localhost:{http_port(srv, https=True)}"
        # read when the scenario fails; closed by end_scenarios
        self.stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115
        super().__init__(
            [
                node,
                "--dns-result-order=ipv4first",
                str(STANZA_DIR / "scenarios.mjs"),
                name,
                f"wss://{origin}/xmpp-websocket",
                PASSWORD,
                ",".join(users),
                *extra,
            ],
            stderr=self.stderr,
            env={
                **os.environ,
                "NODE_EXTRA_CA_CERTS": ca_file,
                "BOSH_URL": f"https://{origin}/http-bind",
            },
        )
        RUNNING.append(self)

    def step(self, name: str) -> dict[str, Any]:
        """The scenario's line for step `name`, once it printed it."""
        deadline = time.monotonic() + STEP
        while True:
            for line in self.lines:
                event = json.loads(line)
                if event["step"] == name:
                    return dict(event)
            if self.proc.poll() is not None:
                self.reader.join(2)
                if not any(json.loads(line)["step"] == name for line in self.lines):
                    raise AssertionError(f"StanzaJS exited before {name!r}: {self.failure()}")
            assert time.monotonic() < deadline, f"StanzaJS never reached {name!r}: {self.lines}"
            time.sleep(0.01)

    def failure(self) -> str:
        self.stderr.seek(0)
        return f"exit {self.proc.poll()}\n{self.stderr.read()}\n{self.lines}"

    def done(self) -> dict[str, Any]:
        result = self.step("done")
        assert self.proc.wait(5) == 0, self.failure()
        return result


def run(
    srv: ServerProcess, ca_file: str, name: str, users: list[str], *extra: str
) -> dict[str, Any]:
    return Scenario(srv, ca_file, name, users, *extra).done()


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-1", "best"])
def test_login_and_roster(
    srv: ServerProcess, ca_file: str, clients: list[Any], names: Iterator[str], mechanism: str
) -> None:
    """RFC 6120 §6 with SCRAM-SHA-1 and with the mechanism StanzaJS ranks first among those
    offered (SCRAM-SHA-256: no -PLUS over HTTPS, whose TLS is not the stream's), §7 binding of the
    requested resource, XEP-0198 enabled, and RFC 6121 §2.1.3 the roster another client of
    the account stored."""
    user = next(names)
    other = raw_login(srv, ca_file, user, clients)
    other.send(
        "<iq type='set' id='r1'><query xmlns='jabber:iq:roster'>"
        "<item jid='friend@example.org' name='Friend'><group>Pals</group></item>"
        "</query></iq>"
    )
    wait_for(other, "the roster set's result", lambda el: el.get("id") == "r1")
    result = run(srv, ca_file, "login", [user], mechanism)
    expected = "SCRAM-SHA-1" if mechanism == "SCRAM-SHA-1" else "SCRAM-SHA-256"
    assert result["mechanism"] == expected, result
    assert re.fullmatch(bound(user), result["jid"]), result
    assert result["sm"] is True
    assert result["roster"] == [
        {"jid": "friend@example.org", "name": "Friend", "subscription": "none", "groups": ["Pals"]}
    ]
    srv.wait_for_log(f"authenticated {user}@localhost with {expected}")


def test_bosh(srv: ServerProcess, ca_file: str, clients: list[Any], names: Iterator[str]) -> None:
    """XEP-0206 with StanzaJS's BOSH transport: SCRAM-SHA-256 login and binding inside BOSH
    requests, then messages both ways with a TCP client."""
    a, b = next(names), next(names)
    raw = raw_login(srv, ca_file, b, clients)
    s = Scenario(srv, ca_file, "bosh", [a], f"{b}@localhost/raw")
    a_jid = s.step("online")["jid"]
    assert a_jid == f"{a}@localhost/bosh"
    got = wait_for(raw, "StanzaJS's message", lambda el: body(el) is not None)
    assert (got.get("from"), got.get("to"), body(got)) == (a_jid, f"{b}@localhost/raw", "over bosh")
    raw.send(f"<message to='{a_jid}' type='chat' id='b2'><body>to bosh</body></message>")
    result = s.done()
    assert result["mechanism"] == "SCRAM-SHA-256"
    assert [(m["from"], m["body"]) for m in result["at_a"]] == [(f"{b}@localhost/raw", "to bosh")]
    srv.wait_for_log(f"authenticated {a}@localhost with SCRAM-SHA-256")


def test_messages_with_receipts(
    srv: ServerProcess, ca_file: str, clients: list[Any], names: Iterator[str]
) -> None:
    a, b = next(names), next(names)
    raw = raw_login(srv, ca_file, b, clients)
    raw.send("<presence/>")  # RFC 6121 §8.5.2.1.1: a bare-JID message needs an available one
    s = Scenario(srv, ca_file, "messages", [a], f"{b}@localhost/raw")
    a_jid = s.step("online")["jid"]
    got = wait_for(raw, "StanzaJS's message", lambda el: el.tag == MESSAGE and body(el) is not None)
    # 'from' is the sender's full JID (RFC 6120 §8.1.2.1); XEP-0184 §5.1 the request inside
    assert (got.get("from"), got.get("to"), got.get("type"), body(got)) == (
        a_jid,
        f"{b}@localhost",
        "chat",
        "hello from stanza",
    )
    assert got.get("id") == "m1" and got.find(f"{{{RECEIPTS}}}request") is not None
    raw.send(
        f"<message to='{a_jid}' id='m1-ack'><received xmlns='{RECEIPTS}' id='m1'/></message>"
        f"<message to='{a_jid}' type='chat' id='r1'><body>reply from raw</body>"
        f"<request xmlns='{RECEIPTS}'/></message>"
    )
    # StanzaJS answers the request on its own (XEP-0184 §5.1)
    receipt = wait_for(
        raw, "StanzaJS's receipt", lambda el: el.find(f"{{{RECEIPTS}}}received") is not None
    )
    assert receipt.get("from") == a_jid
    assert receipt.find(f"{{{RECEIPTS}}}received").get("id") == "r1"
    result = s.done()
    assert result["at_a"] == [
        {
            "from": f"{b}@localhost/raw",
            "to": a_jid,
            "type": "chat",
            "body": "reply from raw",
            "id": "r1",
        }
    ]
    assert result["receipts"] == [{"from": f"{b}@localhost/raw", "id": "m1"}]


def test_muc_room(
    srv: ServerProcess, ca_file: str, clients: list[Any], names: Iterator[str]
) -> None:
    a, b = next(names), next(names)
    room = f"room-{a}@conference.localhost"
    s = Scenario(srv, ca_file, "muc", [a], room, "rawnick")
    joined = s.step("joined")
    # XEP-0045 §7.2.2 status 110 on the self-presence, §10.1.1 201 for a new room
    assert joined["self_from"] == f"{room}/stanzanick"
    assert {"110", "201"} <= set(joined["statuses"]), joined
    raw = raw_login(srv, ca_file, b, clients)
    raw.send(
        f"<presence to='{room}/rawnick'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
    )

    def self_presence(el: Any) -> bool:
        codes = [s.get("code") for s in el.iterfind(f"{{{MUC_USER}}}x/{{{MUC_USER}}}status")]
        return el.tag == PRESENCE and "110" in codes

    joined_raw = wait_for(raw, "the raw client's self-presence", self_presence)
    assert joined_raw.get("from") == f"{room}/rawnick", etree.tostring(joined_raw)
    raw.send(
        f"<message to='{room}' type='groupchat' id='g0'><body>hello room from raw</body></message>"
    )

    def stanzajs_groupchat(el: Any) -> bool:
        return el.tag == MESSAGE and el.get("from") == f"{room}/stanzanick" and body(el) is not None

    got = wait_for(raw, "StanzaJS's groupchat message", stanzajs_groupchat)
    assert body(got) == "hello room from stanza"
    result = s.done()
    assert result["joined"] == "stanzanick"
    assert f"{room}/rawnick" in result["occupants"]
    # §7.4: every occupant, the sender too, gets the message from the sender's room JID
    assert [(m["from"], m["body"]) for m in result["groupchat"]] == [
        (f"{room}/rawnick", "hello room from raw"),
        (f"{room}/stanzanick", "hello room from stanza"),
    ]


def test_room_history_and_archive(srv: ServerProcess, ca_file: str, names: Iterator[str]) -> None:
    """XEP-0045 with two StanzaJS clients: the owner makes a new room persistent (§10.1.3)
    and writes three messages; the other joins asking for two of history (§7.2.14: the
    latest, with delay stamps, before the subject) and reads the room's archive, which
    persistent rooms keep by default (XEP-0313 §6.1, `[muc] archive_rooms`)."""
    a, b = next(names), next(names)
    room = f"kept-{a}@conference.localhost"
    result = run(srv, ca_file, "muc_history", [a, b], room)
    assert "muc_persistent" in result["features"] and "urn:xmpp:mam:2" in result["features"]
    history = result["history"]
    assert [(m["from"], m["body"]) for m in history] == [
        (f"{room}/owner", "kept 2"),
        (f"{room}/owner", "kept 3"),
    ]
    assert all(m["stamp"] for m in history), history
    archive = result["archive"]
    assert [(m["from"], m["body"]) for m in archive] == [
        (f"{room}/owner", f"kept {i}") for i in (1, 2, 3)
    ]
    assert all(m["stamp"] for m in archive) and result["complete"] is True


def test_mam_history(
    srv: ServerProcess, ca_file: str, clients: list[Any], names: Iterator[str]
) -> None:
    """XEP-0313 §4 with StanzaJS's searchHistory: messages a contact sent while StanzaJS's
    account was offline, filtered by 'with' (§4.1.1), then the first page of two (XEP-0059),
    then by a time window around now and one in the future."""
    a, b = next(names), next(names)
    raw = raw_login(srv, ca_file, b, clients)
    sent = [f"archived {i}" for i in range(1, 4)]
    for i, text in enumerate(sent):
        raw.send(f"<message to='{a}@localhost' type='chat' id='h{i}'><body>{text}</body></message>")
    # a round trip: the server has handled the messages before StanzaJS queries
    raw.send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
    wait_for(raw, "the ping's result", lambda el: el.get("id") == "p1")
    result = run(srv, ca_file, "mam", [a], f"{b}@localhost")
    every = result["all"]
    assert [r["body"] for r in every["results"]] == sent
    assert every["complete"] is True
    for archived in every["results"]:
        assert archived["from"] == f"{b}@localhost/raw"
        assert archived["to"] == f"{a}@localhost"
        assert archived["stamp"], "XEP-0313 §4.2: every result carries its delay stamp"
    assert len({r["id"] for r in every["results"]}) == 3
    page = result["page"]
    assert [r["body"] for r in page["results"]] == sent[:2]
    assert page["complete"] is False
    assert (page["first"], page["last"]) == (every["results"][0]["id"], every["results"][1]["id"])
    # §4.1.2 'start'/'end' with fractional seconds (XEP-0082 §3.2), as JavaScript writes them
    assert [r["body"] for r in result["window"]["results"]] == sent
    assert result["future"]["results"] == [] and result["future"]["complete"] is True


def test_stream_management_resumption(
    srv: ServerProcess, ca_file: str, clients: list[Any], names: Iterator[str]
) -> None:
    """XEP-0198 §5: the WebSocket dies without a close; StanzaJS reconnects by itself and
    resumes; what was sent to it meanwhile arrives once, and the session goes on."""
    a, b = next(names), next(names)
    raw = raw_login(srv, ca_file, b, clients)
    s = Scenario(srv, ca_file, "sm_resume", [a], f"{b}@localhost/raw")
    online = s.step("online")
    a_jid = online["jid"]
    raw.send(f"<message to='{a_jid}' type='chat' id='s1'><body>before the drop</body></message>")
    s.step("cut")
    for i in (1, 2):
        raw.send(
            f"<message to='{a_jid}' type='chat' id='s{i + 1}'>"
            f"<body>while detached {i}</body></message>"
        )
    at_b: list[str] = []
    wait_for(
        raw,
        "StanzaJS's message after resumption",
        lambda el: body(el) == "after resumption" and el.get("from") == a_jid,
        at_b,
    )
    result = s.done()
    # what StanzaJS sent with no connection: sent again after <resumed/>, once (§5)
    assert at_b == ["sent while detached", "after resumption"]
    assert result["jid_after"] == result["jid_before"] == a_jid
    assert result["sm_id_after"] == result["sm_id_before"]
    assert result["at_a"] == ["before the drop", "while detached 1", "while detached 2"]
    srv.wait_for_log(f"resumed {a_jid}, 2 stanzas sent again")


def test_carbons(
    srv: ServerProcess, ca_file: str, clients: list[Any], names: Iterator[str]
) -> None:
    """XEP-0280 §4 enabled by StanzaJS; §6 a received carbon of a message to another
    resource's full JID, §7 a sent carbon of what that resource sent."""
    a, c = next(names), next(names)
    own = raw_login(srv, ca_file, a, clients)
    contact = raw_login(srv, ca_file, c, clients)
    s = Scenario(srv, ca_file, "carbons", [a])
    a_jid = s.step("carbons")["jid"]
    own.send(f"<message to='{c}@localhost' type='chat' id='c1'><body>sent by raw</body></message>")
    contact.send(
        f"<message to='{a}@localhost/raw' type='chat' id='c2'><body>to raw</body></message>"
    )
    result = s.done()
    carbons = sorted(result["carbons"], key=lambda c: str(c["kind"]))
    assert carbons == [
        {
            "kind": "received",
            "outer_from": f"{a}@localhost",
            "outer_to": a_jid,
            "from": f"{c}@localhost/raw",
            "to": f"{a}@localhost/raw",
            "body": "to raw",
        },
        {
            "kind": "sent",
            "outer_from": f"{a}@localhost",
            "outer_to": a_jid,
            "from": f"{a}@localhost/raw",
            "to": f"{c}@localhost",
            "body": "sent by raw",
        },
    ]
    assert result["direct"] == []  # copies only: nothing was addressed to StanzaJS


def test_pep_tune_and_nick(srv: ServerProcess, ca_file: str, names: Iterator[str]) -> None:
    """XEP-0163 §4 with two StanzaJS clients: a mutual presence subscription (RFC 6121 §3),
    +notify announced through XEP-0115 caps; a user tune (XEP-0118) and a nickname
    (XEP-0172) published to PEP reach the contact."""
    a, b = next(names), next(names)
    result = run(srv, ca_file, "pep", [a, b])
    assert result["subscription"] == "both"
    tune = {
        "kind": "tune",
        "jid": f"{a}@localhost",
        "artist": "Fastxmpp Band",
        "title": "Notify Me",
        "length": 241,
    }
    nick = {"kind": "nick", "jid": f"{b}@localhost", "nick": "Bee"}
    # each item once at the contact and once at the publisher's own resource (§4.2: the
    # account owner is subscribed to its own PEP nodes)
    for seen in result["seen"].values():
        assert sorted(seen, key=lambda item: str(item["kind"])) == [nick, tune], result
