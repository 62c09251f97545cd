"""XEP-0215 external service discovery (STUN/TURN for calls) over raw streams: the services
of `[turn]`, TURN credentials as coturn's `use-auth-secret` checks them (the TURN REST API
draft: username `expiry:user`, password base64(HMAC-SHA1(secret, username)), computed here
independently), the type filter, credentials for one service, and who may ask."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import datetime
from typing import Any

from conftest import PASSWORD, ServerProcess
from lxml import etree
from xmpp_raw import CLIENT, RawClient

NS = "urn:xmpp:extdisco:2"
SECRET = "coturn-shared-secret"
TURN = f'[turn]\nhost = "turn.localhost"\nport = 3478\ntls_port = 5349\nsecret = "{SECRET}"\n'


def started(make_server: Any, extra: str) -> ServerProcess:
    srv = make_server(extra)
    srv.adduser("alice@localhost")
    srv.start()
    return srv


def ask(c: RawClient, payload: str, to: str = "localhost") -> Any:
    iq_id = f"x{time.monotonic_ns()}"
    c.send(f"<iq type='get' id='{iq_id}' to='{to}'>{payload}</iq>")
    while True:
        el = c.next()
        if el.tag == f"{{{CLIENT}}}iq" and el.get("id") == iq_id:
            return el


def services(reply: Any, element: str = "services") -> list[dict[str, str]]:
    assert reply.get("type") == "result", etree.tostring(reply)
    return [dict(s.attrib) for s in reply.find(f"{{{NS}}}{element}")]


def login(srv: ServerProcess, ca_file: str, clients: list[RawClient]) -> RawClient:
    c = srv.client()
    clients.append(c)
    c.login(ca_file, "alice", PASSWORD, "call")
    return c


def test_services_with_turn_credentials(
    make_server: Any, ca_file: str, clients: list[RawClient]
) -> None:
    srv = started(make_server, TURN)
    c = login(srv, ca_file, clients)
    info = ask(c, "<query xmlns='http://jabber.org/protocol/disco#info'/>")
    assert NS in {f.get("var") for f in info.iter("{http://jabber.org/protocol/disco#info}feature")}
    before = time.time()
    listed = services(ask(c, f"<services xmlns='{NS}'/>"))
    where = [(s["type"], s["host"], s["port"], s["transport"]) for s in listed]
    assert where == [
        ("stun", "turn.localhost", "3478", "udp"),
        ("turn", "turn.localhost", "3478", "udp"),
        ("turn", "turn.localhost", "3478", "tcp"),
        ("turns", "turn.localhost", "5349", "tcp"),
    ]
    assert "username" not in listed[0] and "restricted" not in listed[0]
    for service in listed[1:]:
        assert service["restricted"] == "1"
        expiry, _, user = service["username"].partition(":")
        assert user == "alice@localhost"
        assert 86400 - 5 <= int(expiry) - before <= 86400 + 5  # the default lifetime
        expected = hmac.new(SECRET.encode(), service["username"].encode(), hashlib.sha1)
        assert base64.b64decode(service["password"]) == expected.digest()
        expires = datetime.fromisoformat(service["expires"].replace("Z", "+00:00"))
        assert int(expires.timestamp()) == int(expiry)  # XEP-0082, UTC


def test_type_filter_and_credentials(
    make_server: Any, ca_file: str, clients: list[RawClient]
) -> None:
    srv = started(make_server, TURN + "lifetime = 600\n")
    c = login(srv, ca_file, clients)
    reply = ask(c, f"<services xmlns='{NS}' type='turns'/>")
    assert reply.find(f"{{{NS}}}services").get("type") == "turns"
    assert [s["port"] for s in services(reply)] == ["5349"]
    # §3.4: fresh credentials for one service, named by host, type and port
    fresh = services(
        ask(
            c,
            f"<credentials xmlns='{NS}'><service host='turn.localhost' type='turn' "
            "port='3478'/></credentials>",
        ),
        "credentials",
    )
    assert len(fresh) == 1 and fresh[0]["type"] == "turn"
    assert 595 <= int(fresh[0]["username"].split(":")[0]) - time.time() <= 605
    missing = ask(
        c, f"<credentials xmlns='{NS}'><service host='turn.localhost' type='stun'/></credentials>"
    )
    assert (
        missing.find(f"{{{CLIENT}}}error/{{urn:ietf:params:xml:ns:xmpp-stanzas}}item-not-found")
        is not None
    )


def test_stun_only_without_a_secret_and_nothing_unconfigured(
    make_server: Any, ca_file: str, clients: list[RawClient]
) -> None:
    stun = started(make_server, '[turn]\nhost = "stun.localhost"\n')
    c = login(stun, ca_file, clients)
    assert services(ask(c, f"<services xmlns='{NS}'/>")) == [
        {"type": "stun", "host": "stun.localhost", "port": "3478", "transport": "udp"}
    ]
    bare = started(make_server, "")
    c = login(bare, ca_file, clients)
    assert services(ask(c, f"<services xmlns='{NS}'/>")) == []


def test_an_account_has_no_services(
    make_server: Any, ca_file: str, clients: list[RawClient]
) -> None:
    srv = started(make_server, TURN)
    c = login(srv, ca_file, clients)
    reply = ask(c, f"<services xmlns='{NS}'/>", to="alice@localhost")
    assert reply.get("type") == "error"
    assert (
        reply.find(f"{{{CLIENT}}}error/{{urn:ietf:params:xml:ns:xmpp-stanzas}}service-unavailable")
        is not None
    )


def test_same_credentials_when_asked_again_a_second_later(
    make_server: Any, ca_file: str, clients: list[RawClient]
) -> None:
    # The XMPP Interop Testing suite (XEP-0215 §3.3) asks for all services, then for each
    # type, and wants the same services (username, password, expires) in both answers.
    srv = started(make_server, TURN)
    c = login(srv, ca_file, clients)
    listed = services(ask(c, f"<services xmlns='{NS}'/>"))
    time.sleep(1.05 - time.time() % 1)  # into the next second: a new expiry if made anew
    for kind in ("turn", "turns"):
        typed = services(ask(c, f"<services xmlns='{NS}' type='{kind}'/>"))
        assert typed == [s for s in listed if s["type"] == kind]
