"""What "one address" is for the per-address limits (`[limits] ipv6_prefix_length`): an IPv6
client counts as its /64, since a subscriber can take a new address of its /64 for every
connection (RFC 6177), an IPv4-mapped address as the IPv4 address it maps, and a client
behind a trusted HTTP proxy as the address the proxy names. The clients here come over
WebSocket from loopback, and the proxy (127.0.0.1, trusted by default) names them in
X-Forwarded-For: that is how one test reaches the server from many addresses."""

from __future__ import annotations

import base64
import contextlib
from typing import Any

import pytest
from conftest import PASSWORD, ServerProcess, add_accounts, run_cli
from lxml import etree
from ws_client import HTTP_LISTENER, SASL, STREAMS, WsClient, WsClosed, http_port

from fastxmpp.stream.throttle import address_block

SECURE = HTTP_LISTENER + "\n[http]\nconsider_websocket_secure = true\n"
REGISTER = "jabber:iq:register"


@pytest.mark.parametrize(
    ("address", "prefix", "block"),
    [
        ("192.0.2.7", 64, "192.0.2.7"),
        ("::ffff:192.0.2.7", 64, "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", 64, "2001:db8:1:2::/64"),
        ("2001:db8:1:2:aaaa::1", 56, "2001:db8:1::/56"),
        ("2001:DB8::1", 128, "2001:db8::1"),
        ("?", 64, "?"),
    ],
)
def test_address_block(address: str, prefix: int, block: str) -> None:
    assert address_block(address, prefix) == block


async def ws_from(srv: ServerProcess, address: str) -> WsClient:
    return await WsClient.connect(http_port(srv), headers={"X-Forwarded-For": address})


async def opened(srv: ServerProcess, address: str, clients: list[WsClient]) -> str | None:
    """A WebSocket stream from `address`: None once its features came, or the condition of
    the stream error that refused it."""
    client = await ws_from(srv, address)
    clients.append(client)
    _, features = await client.open()
    if features.tag == f"{{{STREAMS}}}error":
        return str(etree.QName(next(iter(features))).localname)
    return None


async def close_all(clients: list[WsClient]) -> None:
    for client in clients:
        with contextlib.suppress(OSError, WsClosed):
            await client.close()


async def test_one_ipv6_network_is_one_address(make_server: Any) -> None:
    srv = make_server(HTTP_LISTENER + "\n[limits]\nmax_unauthenticated_per_ip = 2\n")
    srv.start()
    clients: list[WsClient] = []
    try:
        assert await opened(srv, "2001:db8:1:2::a", clients) is None
        assert await opened(srv, "2001:db8:1:2::b", clients) is None
        # A third address of the same /64: refused, as a third connection from one address.
        assert await opened(srv, "2001:db8:1:2:ffff::c", clients) == "policy-violation"
        # Another network is another client.
        assert await opened(srv, "2001:db8:1:3::a", clients) is None
        # An IPv4 client, once mapped (a dual-stack listener) and once not: one address.
        assert await opened(srv, "::ffff:192.0.2.7", clients) is None
        assert await opened(srv, "192.0.2.7", clients) is None
        assert await opened(srv, "::ffff:192.0.2.7", clients) == "policy-violation"
    finally:
        await close_all(clients)


async def test_password_guessing_across_an_ipv6_network_is_refused(make_server: Any) -> None:
    srv = make_server(
        SECURE + "\n[limits]\nauth_free_failures = 100\nauth_failures_per_ip = 2\n"
        "auth_failures_per_account = 100\n"
    )
    add_accounts(srv, ["alice"])
    srv.start()
    clients: list[WsClient] = []

    async def plain(address: str, password: str) -> str:
        client = await ws_from(srv, address)
        clients.append(client)
        await client.open()
        blob = base64.b64encode(f"\0alice\0{password}".encode()).decode()
        await client.send(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{blob}</auth>")
        outcome = await client.next()
        return str(etree.QName(outcome.tag).localname) + (
            "/" + str(etree.QName(next(iter(outcome))).localname) if len(outcome) else ""
        )

    try:
        assert await plain("2001:db8:7:7::1", "wrong") == "failure/not-authorized"
        assert await plain("2001:db8:7:7::2", "wrong") == "failure/not-authorized"
        # The network has had its failures: even the right password is refused now.
        assert await plain("2001:db8:7:7::3", PASSWORD) == "failure/temporary-auth-failure"
        assert await plain("2001:db8:7:8::1", PASSWORD) == "success"
    finally:
        await close_all(clients)


async def test_registrations_count_the_clients_behind_a_proxy(make_server: Any) -> None:
    srv = make_server(SECURE + "\n[register]\nenabled = true\nmax_per_ip_per_hour = 1\n")
    srv.start()
    clients: list[WsClient] = []

    async def register(address: str, username: str) -> str:
        client = await ws_from(srv, address)
        clients.append(client)
        await client.open()
        await client.send(
            f"<iq type='set' id='r1'><query xmlns='{REGISTER}'><username>{username}</username>"
            f"<password>{PASSWORD}</password></query></iq>"
        )
        reply = await client.next()
        error = reply.find("{jabber:client}error")
        return "result" if error is None else str(etree.QName(next(iter(error))).localname)

    try:
        # Two web users behind the site's proxy: each has a registration of their own.
        assert await register("198.51.100.1", "webuser1") == "result"
        assert await register("198.51.100.2", "webuser2") == "result"
        assert await register("198.51.100.1", "webuser3") == "policy-violation"
        assert await register("2001:db8:5:5::1", "webuser4") == "result"
        assert await register("2001:db8:5:5::2", "webuser5") == "policy-violation"
    finally:
        await close_all(clients)


def test_the_prefix_length_is_checked(make_server: Any) -> None:
    srv = make_server("[limits]\nipv6_prefix_length = 129\n")
    result = run_cli("check-config", config=srv.config)
    assert result.returncode == 1
    assert "limits.ipv6_prefix_length must be from 16 to 128" in result.stderr
