"""aioxmpp, a client library independent of slixmpp, against the server: login with every SASL
mechanism offered, roster and subscriptions, presence, messages both ways, a room from
creation to history, vCards, PEP notifications and carbons.

aioxmpp runs in .venv-aioxmpp (tests/interop/aioxmpp/requirements.txt says why) on the
scenarios of tests/interop/aioxmpp/scenarios.py; each reports what its clients saw as JSON
and the assertions are here."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import PASSWORD, FreshNames, ServerProcess, module_server
from interop_clients import AIOXMPP_SCENARIOS, require_aioxmpp, run_json

POOL = FreshNames("ax", 20)


@pytest.fixture(scope="module")
def srv(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(ca, tmp_path_factory, POOL)


@pytest.fixture
def names() -> Iterator[str]:
    return POOL.names()


def scenario(srv: ServerProcess, ca_file: str, name: str, users: list[str], *extra: str) -> Any:
    python = require_aioxmpp()
    return run_json(
        [
            python,
            str(AIOXMPP_SCENARIOS),
            name,
            "--port",
            str(srv.port),
            "--ca",
            ca_file,
            "--password",
            PASSWORD,
            "--users",
            ",".join(users),
            *extra,
        ]
    )


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"])
def test_login_with_each_mechanism(
    srv: ServerProcess, ca_file: str, names: Iterator[str], mechanism: str
) -> None:
    """RFC 6120 §6: each mechanism the server offers over TLS works with aioxmpp, which
    verifies the server's certificate against the test CA."""
    user = next(names)
    result = scenario(srv, ca_file, "login", [user], "--mechanism", mechanism)
    assert result["jid"] == f"{user}@localhost/login"
    srv.wait_for_log(f"authenticated {user}@localhost with {mechanism}")


def test_roster_subscriptions_presence_and_messages(
    srv: ServerProcess, ca_file: str, names: Iterator[str]
) -> None:
    a_name, b_name = next(names), next(names)
    result = scenario(srv, ca_file, "roster_presence_messages", [a_name, b_name])
    a, b = result["a"], result["b"]
    a_bare, b_bare = f"{a_name}@localhost", f"{b_name}@localhost"

    # RFC 6121 §2.3: the name and group set on the item come back in the roster push.
    assert result["named_item"] == {"name": "Bob", "groups": ["Friends"]}
    # RFC 6121 §2.5.2: removing the item cancels both subscriptions; the contact keeps an
    # item at 'none'.
    assert result["b_item_for_a_after_removal"] == "none"

    # RFC 6121 §3.1.3, §3.1.5: the request and the approval arrive from the bare JID,
    # addressed to the contact's bare JID.
    assert {"from": a_bare, "to": b_bare, "type": "subscribe", "show": None, "status": None} in (
        result["presence_at_b"]
    )
    assert {"from": a_bare, "to": b_bare, "type": "subscribed", "show": None, "status": None} in (
        result["presence_at_b"]
    )

    # RFC 6121 §4.2.2, §4.4.2: the server broadcasts a contact's presence addressed to the
    # subscriber (examples: to='romeo@example.net'); every broadcast carries that 'to'.
    receivers = ((result["presence_at_a"], b, a_bare), (result["presence_at_b"], a, b_bare))
    for at, contact, me in receivers:
        broadcasts = [p for p in at if p["from"] == contact]
        assert broadcasts, f"no presence from {contact}: {at}"
        for presence in broadcasts:
            assert presence["to"] is not None and presence["to"].split("/")[0] == me, presence
    away = [p for p in result["presence_at_b"] if p["status"] == "out for lunch"]
    assert away and away[0]["show"] == "away" and away[0]["from"] == a
    # RFC 6121 §2.5.2: the removal also sends the contact a's unavailable presence.
    assert result["presence_at_b"][-1]["from"] == a
    assert result["presence_at_b"][-1]["type"] == "unavailable"

    # RFC 6121 §8.5.2.1.1 to the bare JID, §8.5.3.1 to the full JID: both ways.
    assert result["messages_at_b"] == [
        {"from": a, "to": b_bare, "type": "chat", "body": "hello bob"}
    ]
    assert result["messages_at_a"] == [{"from": b, "to": a, "type": "chat", "body": "hello alice"}]


def test_room_creation_join_messages_and_history(
    srv: ServerProcess, ca_file: str, names: Iterator[str]
) -> None:
    room = "aioxmpp-room@conference.localhost"
    result = scenario(srv, ca_file, "muc", [next(names), next(names)], "--room", room)
    # XEP-0045 §10.1.2: the creator is told the room is new (201) and that the presence is
    # its own (110), and owns it.
    assert result["created"]["codes"] == [110, 201]
    assert result["created"]["affiliation"] == "owner"
    assert result["created"]["role"] == "moderator"
    # §7.2.15: history first, each with a delay stamp, then the subject; live messages after.
    history = result["history_at_b"]
    assert [(m["nick"], m["body"], m["delayed"], m["state"]) for m in history] == [
        ("owner", "first", True, "HISTORY"),
        ("owner", "second", True, "HISTORY"),
        ("guest", "hello room", False, "ACTIVE"),
    ]
    # §7.4: every occupant gets every message, its own included.
    assert result["said_at_a"] == [["owner", "first"], ["owner", "second"], ["guest", "hello room"]]
    assert result["occupants_at_a"] == ["guest", "owner"]


def test_vcard_set_and_read(srv: ServerProcess, ca_file: str, names: Iterator[str]) -> None:
    result = scenario(srv, ca_file, "vcard", [next(names), next(names)])
    stored = {"fn": "Alice Liddell", "photo_type": "image/png", "photo": "not really a png"}
    # XEP-0054 §3.2 publish, §3.1 the owner reads it, §3.3 another user reads it.
    assert result["own"] == stored
    assert result["read_by_b"] == stored


def test_pep_notification_by_caps(srv: ServerProcess, ca_file: str, names: Iterator[str]) -> None:
    """XEP-0163 §4.3: b's caps carry the '+notify' feature; a's publish reaches b as an
    event from a's bare JID (§4.3.1)."""
    a, b = next(names), next(names)
    result = scenario(srv, ca_file, "pep", [a, b])
    assert result["notified"] == [
        {"from": f"{a}@localhost", "node": "http://jabber.org/protocol/nick", "nick": "Ally"}
    ]


def test_carbons_received_and_sent(srv: ServerProcess, ca_file: str, names: Iterator[str]) -> None:
    a, b = next(names), next(names)
    result = scenario(srv, ca_file, "carbons", [a, b])
    desk, b_jid = result["desk"], result["b"]
    # XEP-0280 §5.1 received and §5.2 sent copies, wrapped by the user's bare JID.
    assert result["at_phone"] == [
        {
            "kind": "received",
            "wrapper_from": f"{a}@localhost",
            "from": b_jid,
            "to": desk,
            "type": "chat",
            "body": "to the desk",
        },
        {
            "kind": "sent",
            "wrapper_from": f"{a}@localhost",
            "from": desk,
            "to": b_jid,
            "type": "chat",
            "body": "from the desk",
        },
    ]
    # The addressed resource gets the message itself, not a copy.
    assert result["at_desk"] == [{"from": b_jid, "to": desk, "type": "chat", "body": "to the desk"}]
