"""xmpp.js (@xmpp/client under node), a JavaScript client implementation, against the
server: SCRAM-SHA-1 and PLAIN logins (over XEP-0388 SASL2 with XEP-0386 Bind 2, which
xmpp.js prefers when offered), messages both ways, MAM paging both directions, XEP-0198
resumption after a dropped connection (inline in SASL2), and a XEP-0484 FAST token login.

The scenarios are tests/interop/js/scenarios.mjs (xmpp.js pinned by package-lock.json beside
it); each reports what its clients saw as JSON and the assertions are here. node trusts the
test CA through NODE_EXTRA_CA_CERTS: certificates are verified."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import PASSWORD, FreshNames, ServerProcess, module_server
from interop_clients import JS_SCENARIOS, require_xmppjs, run_json
from ws_client import HTTP_LISTENER, http_port

POOL = FreshNames("js", 12)


def bound_js(user: str) -> str:
    """xmpp.js logs in with SASL2 and Bind 2 (XEP-0388, XEP-0386) when offered, its
    resource "js" as the bind tag: the server binds "js/<random>" (§identifiers)."""
    return rf"{user}@localhost/js/[0-9a-f]{{12}}"


@pytest.fixture(scope="module")
def srv(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # An http listener for the WebSocket scenario (ws:// on loopback counted as encrypted).
    web = HTTP_LISTENER + "\n[http]\nconsider_websocket_secure = true\n"
    yield from module_server(ca, tmp_path_factory, POOL, web)


@pytest.fixture
def names() -> Iterator[str]:
    return POOL.names()


def scenario(srv: ServerProcess, ca_file: str, name: str, users: list[str], *extra: str) -> Any:
    node = require_xmppjs()
    return run_json(
        # node 20 has WebSocket (xmpp.js's ws:// transport) behind this flag
        [
            node,
            "--experimental-websocket",
            str(JS_SCENARIOS),
            name,
            str(srv.port),
            PASSWORD,
            ",".join(users),
            *extra,
        ],
        env={
            "NODE_EXTRA_CA_CERTS": ca_file,
            "WS_URL": f"ws://127.0.0.1:{http_port(srv)}/xmpp-websocket",
        },
    )


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-1", "PLAIN"])
def test_login(srv: ServerProcess, ca_file: str, names: Iterator[str], mechanism: str) -> None:
    """RFC 6120 §6 with xmpp.js's two password mechanisms, after STARTTLS (§5)."""
    user = next(names)
    result = scenario(srv, ca_file, "login", [user], mechanism)
    assert re.fullmatch(bound_js(user), result["jid"]), result
    assert result["secure"] is True
    srv.wait_for_log(f"authenticated {user}@localhost with {mechanism} (SASL2)")


def test_messages_both_ways(srv: ServerProcess, ca_file: str, names: Iterator[str]) -> None:
    a, b = next(names), next(names)
    result = scenario(srv, ca_file, "messages", [a, b])
    assert re.fullmatch(bound_js(a), result["a"]) and re.fullmatch(bound_js(b), result["b"])
    # RFC 6121 §8.5.2.1.1 to the bare JID, §8.5.3.1 to the full JID; 'from' is the sender's
    # full JID (RFC 6120 §8.1.2.1).
    assert result["at_b"] == [
        {
            "from": result["a"],
            "to": f"{b}@localhost",
            "type": "chat",
            "body": "hello from js",
        }
    ]
    assert result["at_a"] == [
        {
            "from": result["b"],
            "to": result["a"],
            "type": "chat",
            "body": "reply from js",
        }
    ]


def test_mam_paging(srv: ServerProcess, ca_file: str, names: Iterator[str]) -> None:
    a, b = next(names), next(names)
    result = scenario(srv, ca_file, "mam", [a, b])
    every = [f"archived {i}" for i in range(1, 6)]

    def bodies(pages: list[Any]) -> list[list[str]]:
        return [[r["body"] for r in page["results"]] for page in pages]

    # XEP-0059 §2.2 forwards with <after/>: pages of two in order, the last one complete
    # (XEP-0313 §4.3.3).
    forwards = result["forwards"]
    assert bodies(forwards) == [every[0:2], every[2:4], every[4:5]]
    assert [page["complete"] for page in forwards] == [False, False, True]
    # XEP-0059 §2.5 the last page with an empty <before/>, §2.3 then backwards with <before/>;
    # each page keeps chronological order.
    backwards = result["backwards"]
    assert bodies(backwards) == [every[3:5], every[1:3], every[0:1]]
    assert [page["complete"] for page in backwards] == [False, False, True]
    for page in forwards + backwards:
        # <first/> and <last/> are the ids of the page's first and last result (§2.2).
        assert page["first"] == page["results"][0]["id"]
        assert page["last"] == page["results"][-1]["id"]
        for archived in page["results"]:
            assert re.fullmatch(bound_js(a), archived["from"])
            assert archived["stamp"], "XEP-0313 §4.2: every result carries its delay stamp"
    ids = [r["id"] for page in forwards for r in page["results"]]
    assert len(set(ids)) == 5
    assert ids == [r["id"] for page in reversed(backwards) for r in page["results"]]


def test_stream_management_resumption(
    srv: ServerProcess, ca_file: str, names: Iterator[str]
) -> None:
    """XEP-0198 §5: the connection drops without a closing handshake, xmpp.js reconnects and
    resumes; what was sent to it meanwhile arrives once, and the session goes on."""
    a, b = next(names), next(names)
    result = scenario(srv, ca_file, "sm_resume", [a, b])
    assert result["sm_id_after"] == result["sm_id_before"]
    assert result["jid_after"] == result["jid_before"]
    assert re.fullmatch(bound_js(a), result["jid_before"])
    assert [m["body"] for m in result["at_a"]] == [
        "before the drop",
        "while detached 1",
        "while detached 2",
    ]
    assert [m["body"] for m in result["at_b"]] == ["after resumption"]
    srv.wait_for_log(f"resumed {result['jid_before']}, 2 stanzas sent again")


def test_fast_token_and_inline_resumption(
    srv: ServerProcess, ca_file: str, names: Iterator[str]
) -> None:
    """XEP-0484 with xmpp.js: the password login (SASL2, Bind 2) asks for a token and gets
    one; after the connection dies xmpp.js logs in with the token alone, in one round trip
    (no <challenge/>), and resumes its session inside the same <authenticate/> (XEP-0198
    inline, XEP-0388 §success): <resumed/> comes in <success/>, and what it missed follows."""
    a, b = next(names), next(names)
    result = scenario(srv, ca_file, "fast_resume", [a, b])
    assert result["token_mechanism"] == "HT-SHA-256-NONE"
    assert result["token_expiry"].endswith("Z")
    assert re.fullmatch(rf"{a}@localhost/phone/[0-9a-f]{{12}}", result["jid_before"])
    assert result["jid_after"] == result["jid_before"]
    assert result["sm_id_after"] == result["sm_id_before"]
    after = result["after_drop"]
    assert "success urn:xmpp:sasl:2" in after
    assert "challenge urn:xmpp:sasl:2" not in after  # one round trip
    assert "resumed urn:xmpp:sm:3" not in after  # not on its own: inside <success/>
    assert result["at_a"] == ["before the drop", "while away"]
    srv.wait_for_log(f"authenticated {a}@localhost with SCRAM-SHA-1 (SASL2)")
    srv.wait_for_log(f"authenticated {a}@localhost with HT-SHA-256-NONE (SASL2)")
    srv.wait_for_log(f"resumed {result['jid_before']}, 1 stanzas sent again")


def test_websocket(srv: ServerProcess, ca_file: str, names: Iterator[str]) -> None:
    """RFC 7395 with xmpp.js's WebSocket transport: SCRAM-SHA-1 login (over SASL2 and Bind 2,
    as over TCP), XEP-0198 enabled, messages both ways with a TCP client."""
    a, b = next(names), next(names)
    result = scenario(srv, ca_file, "websocket", [a, b])
    assert re.fullmatch(rf"{a}@localhost/ws/[0-9a-f]{{12}}", result["a"])
    assert result["sm"] is True
    assert result["at_b"] == [
        {
            "from": result["a"],
            "to": f"{b}@localhost",
            "type": "chat",
            "body": "over the websocket",
        }
    ]
    assert len(result["at_a"]) == 1
    reply = result["at_a"][0]
    assert re.fullmatch(bound_js(b), reply["from"])
    assert (reply["to"], reply["type"], reply["body"]) == (result["a"], "chat", "to the websocket")
    srv.wait_for_log(f"authenticated {a}@localhost with SCRAM-SHA-1 (SASL2)")
