"""RFC 7395 XMPP over WebSocket at /xmpp-websocket on an http listener: the same client
stream as TCP (SASL, binding, routing, XEP-0198) under <open/>/<close/> framing, one
standalone element per message; hostile framing gets the stream error it names; and
XEP-0156 discovery. A browser client (Converse.js) is in test_browser.py."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import Iterator

import aiohttp
import pytest
import trustme
from conftest import PASSWORD, FreshNames, ServerProcess, assert_still_serving, module_server
from lxml import etree
from ws_client import CLIENT, FRAMING, HTTP_LISTENER, SASL, STREAMS, WsClient, WsClosed, http_port

SECURE = HTTP_LISTENER + "\n[http]\nconsider_websocket_secure = true\n"
SM = "urn:xmpp:sm:3"
names = FreshNames("ws", 40)


@pytest.fixture(scope="module")
def web(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # Small stanzas, so that an oversized message is cheap to send.
    yield from module_server(
        ca, tmp_path_factory, names, SECURE + "\n[limits]\nmax_stanza_size = 10000\n"
    )


@pytest.fixture
def user() -> Iterator[str]:
    yield next(names.names())


async def test_login_and_chat_with_a_tcp_client(web: ServerProcess, ca_file: str) -> None:
    alice, bob = next(names.names()), next(names.names())
    ws = await WsClient.connect(http_port(web))
    tcp = web.client()
    try:
        opened, features = await ws.open()
        # §3.3.2: our <open/> in the framing namespace, from the host, with a stream id.
        assert opened.tag == f"{{{FRAMING}}}open"
        assert opened.get("from") == "localhost" and opened.get("id")
        assert opened.get("version") == "1.0"
        # §3.3.3: the features element stands alone, its prefix declared on itself.
        assert features.tag == f"{{{STREAMS}}}features"
        # §3.1: TLS is the WebSocket's (HTTPS), never STARTTLS.
        assert features.find("{urn:ietf:params:xml:ns:xmpp-tls}starttls") is None
        await ws.close()
        ws = await WsClient.connect(http_port(web))
        ws_jid = await ws.login(alice, PASSWORD)
        assert ws_jid == f"{alice}@localhost/ws"
        tcp_jid = tcp.login(ca_file, bob, PASSWORD)

        await ws.send(
            f"<message xmlns='{CLIENT}' to='{tcp_jid}' type='chat'><body>over ws</body></message>"
        )
        got = tcp.next()
        assert got.findtext("{jabber:client}body") == "over ws"
        assert got.get("from") == ws_jid

        tcp.send(f"<message to='{ws_jid}' type='chat'><body>over tcp</body></message>")
        message = await ws.until(f"{{{CLIENT}}}message")
        # A stanza routed as bytes from a TCP stream gets its namespace on the way out.
        assert message.findtext(f"{{{CLIENT}}}body") == "over tcp"
        assert message.get("from") == tcp_jid

        # The client closes (§3.6): the server answers <close/> and the WebSocket ends.
        await ws.send(f"<close xmlns='{FRAMING}'/>")
        closing = await ws.until(f"{{{FRAMING}}}close")
        assert closing is not None
        with pytest.raises(WsClosed):
            await ws.next()
    finally:
        tcp.close()
        await ws.close()


async def test_no_xmpp_subprotocol_is_refused(web: ServerProcess) -> None:
    """§3.1: without the 'xmpp' subprotocol there is no WebSocket (400)."""
    for protocols in ((), ("chat",)):
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await WsClient.connect(http_port(web), protocols=protocols)
        assert caught.value.status == 400
    web.wait_for_log("no 'xmpp' subprotocol")


@pytest.mark.parametrize(
    ("messages", "condition"),
    [
        # §3.3.3: one complete element per message, parsable on its own.
        (["<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='localhost'"], "not-well-formed"),
        (
            [
                f"<open xmlns='{FRAMING}' to='localhost' version='1.0'/>",
                f"<iq xmlns='{CLIENT}' type='get' id='1'>",
            ],
            "not-well-formed",
        ),
        (
            [
                f"<open xmlns='{FRAMING}' to='localhost' version='1.0'/>",
                f"<presence xmlns='{CLIENT}'/><presence xmlns='{CLIENT}'/>",
            ],
            "not-well-formed",
        ),
        ([f"<open xmlns='{FRAMING}' to='localhost' version='1.0'/>", "   "], "not-well-formed"),
        # §3.3.2: a stream starts with <open/>, not with a TCP header (which the parser
        # refuses as on TCP, a header inside the stream) or a stanza.
        (
            [f"<stream:stream xmlns='{CLIENT}' xmlns:stream='{STREAMS}' to='localhost'/>"],
            "unsupported-stanza-type",
        ),
        ([f"<message xmlns='{CLIENT}' to='x@localhost'/>"], "invalid-namespace"),
        ([f"<open xmlns='{CLIENT}' to='localhost' version='1.0'/>"], "invalid-namespace"),
        # RFC 6120 §4.9.3: the checks of the stream header apply to <open/>.
        ([f"<open xmlns='{FRAMING}' to='nowhere.test' version='1.0'/>"], "host-unknown"),
        ([f"<open xmlns='{FRAMING}' to='localhost'/>"], "unsupported-version"),
        # Text where elements go (RFC 6120 §4.9.3.1, as on TCP).
        ([f"<open xmlns='{FRAMING}' to='localhost' version='1.0'/>", "hello"], "bad-format"),
        # limits.max_stanza_size (10000 here) applies to a message as to a stanza.
        (
            [
                f"<open xmlns='{FRAMING}' to='localhost' version='1.0'/>",
                f"<message xmlns='{CLIENT}'><body>{'x' * 11000}</body></message>",
            ],
            "policy-violation",
        ),
    ],
    ids=[
        "partial-open",
        "partial-stanza",
        "two-elements",
        "whitespace",
        "tcp-header",
        "stanza-first",
        "open-wrong-namespace",
        "unknown-host",
        "no-version",
        "text",
        "oversized",
    ],
)
async def test_bad_framing_gets_a_stream_error(
    web: ServerProcess, ca_file: str, messages: list[str], condition: str
) -> None:
    ws = await WsClient.connect(http_port(web))
    try:
        for message in messages:
            await ws.send(message)
        assert await ws.stream_error() == condition
    finally:
        await ws.close()
    assert_still_serving(web, ca_file, next(names.names()))


async def test_binary_message_gets_a_stream_error(web: ServerProcess, ca_file: str) -> None:
    """§3.2: XMPP goes in text messages."""
    ws = await WsClient.connect(http_port(web))
    try:
        await ws.open()
        await ws.ws.send_bytes(b"<presence xmlns='jabber:client'/>")
        assert await ws.stream_error() == "unsupported-encoding"
    finally:
        await ws.close()
    assert_still_serving(web, ca_file, next(names.names()))


async def test_huge_message_closes_the_websocket(web: ServerProcess, ca_file: str) -> None:
    """Beyond max_stanza_size and its framing slack the WebSocket layer refuses the message
    before reading it (RFC 6455 §7.4.1: 1009, message too big)."""
    ws = await WsClient.connect(http_port(web))
    try:
        await ws.open()
        await ws.send(f"<message xmlns='{CLIENT}'><body>{'x' * 200000}</body></message>")
        message = await ws.raw()
        while message.type == aiohttp.WSMsgType.TEXT:
            message = await ws.raw()
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    finally:
        await ws.close()
    assert_still_serving(web, ca_file, next(names.names()))


async def test_stream_management_resumes_a_websocket_session(
    web: ServerProcess, ca_file: str
) -> None:
    """XEP-0198 works as on TCP: the WebSocket dies, the session waits, a new WebSocket
    resumes it and gets what was not acknowledged."""
    alice, bob = next(names.names()), next(names.names())
    ws = await WsClient.connect(http_port(web))
    tcp = web.client()
    try:
        jid = await ws.login(alice, PASSWORD)
        await ws.send(f"<enable xmlns='{SM}' resume='true'/>")
        enabled = await ws.until(f"{{{SM}}}enabled")
        previd = enabled.get("id")
        assert previd
        ws.abort()
        await ws.close()
        web.wait_for_log(f"{jid} lost its connection")
        tcp.login(ca_file, bob, PASSWORD)
        tcp.send(f"<message to='{jid}' type='chat'><body>while away</body></message>")
        # The server handles bob's stanzas in order: the message is queued for the
        # detached session once the ping is answered.
        tcp.send("<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>")
        assert tcp.next().get("id") == "p"
        ws = await WsClient.connect(http_port(web))
        _, features = await ws.open()
        token = base64.b64encode(f"\0{alice}\0{PASSWORD}".encode()).decode()
        await ws.send(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{token}</auth>")
        await ws.until(f"{{{SASL}}}success")
        _, features = await ws.open()
        assert features.find(f"{{{SM}}}sm") is not None
        await ws.send(f"<resume xmlns='{SM}' previd='{previd}' h='0'/>")
        resumed = await ws.next()
        assert resumed.tag == f"{{{SM}}}resumed", etree.tostring(resumed)
        message = await ws.until(f"{{{CLIENT}}}message")
        assert message.findtext(f"{{{CLIENT}}}body") == "while away"
    finally:
        tcp.close()
        await ws.close()


async def test_plain_websocket_needs_encryption(make_server: object, ca_file: str) -> None:
    """[c2s] require_encryption: a ws:// WebSocket is not encrypted, so no login (RFC 6120
    §6.5.3 encryption-required) unless a trusted proxy says it took it over HTTPS."""
    srv = make_server(HTTP_LISTENER)  # type: ignore[operator]
    srv.adduser("alice@localhost")
    srv.start()
    port = http_port(srv)
    ws = await WsClient.connect(port)
    try:
        _, features = await ws.open()
        mechanisms = [m.text for m in features.iter(f"{{{SASL}}}mechanism")]
        assert "PLAIN" not in mechanisms  # never offered unencrypted
        assert features.find("{urn:ietf:params:xml:ns:xmpp-tls}starttls") is None
        await ws.send(f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-256'/>")
        failure = await ws.next()
        assert failure.tag == f"{{{SASL}}}failure"
        assert failure.find(f"{{{SASL}}}encryption-required") is not None
    finally:
        await ws.close()
    # A proxy on loopback (trusted by default) that terminated TLS says so.
    ws = await WsClient.connect(port, headers={"X-Forwarded-Proto": "https"})
    try:
        assert await ws.login("alice", PASSWORD) == "alice@localhost/ws"
    finally:
        await ws.close()
    srv.wait_for_log("WebSocket (encrypted)")


async def test_websocket_over_https(make_server: object, ca_file: str) -> None:
    """tls = "direct": HTTPS with the host's certificate; such a WebSocket is encrypted
    without any setting (PLAIN is offered, the login goes through). No SCRAM-*-PLUS: the
    TLS is the HTTP connection's, not the XMPP stream's (XEP-0440 lists no binding)."""
    srv = make_server(HTTP_LISTENER + 'tls = "direct"\n')  # type: ignore[operator]
    srv.adduser("alice@localhost")
    srv.start()
    tls = ssl.create_default_context(cafile=ca_file)
    ws = await WsClient.connect(http_port(srv, https=True), tls=tls)
    try:
        _, features = await ws.open()
        mechanisms = [m.text for m in features.iter(f"{{{SASL}}}mechanism")]
        assert mechanisms and not any(m.endswith("-PLUS") for m in mechanisms), mechanisms
        assert features.find("{urn:xmpp:sasl-cb:0}sasl-channel-binding") is None
        await ws.close()
        ws = await WsClient.connect(http_port(srv, https=True), tls=tls)
        assert await ws.login("alice", PASSWORD) == "alice@localhost/ws"
    finally:
        await ws.close()
    srv.wait_for_log("WebSocket (encrypted)")


async def test_host_meta_advertises_websocket_and_bosh(web: ServerProcess) -> None:
    """XEP-0156 §3: host-meta (XRD) and host-meta.json name the WebSocket and BOSH
    endpoints (behind a trusted proxy: the Host and scheme it says)."""
    port = http_port(web)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/.well-known/host-meta") as response:
            assert response.status == 200
            assert response.headers["Access-Control-Allow-Origin"] == "*"
            xrd = etree.fromstring(await response.read())
        async with session.get(
            f"http://127.0.0.1:{port}/.well-known/host-meta.json",
            headers={"X-Forwarded-Proto": "https", "Host": "chat.example.org"},
        ) as response:
            assert response.status == 200
            links = json.loads(await response.text())["links"]
    rels = {
        link.get("rel"): link.get("href")
        for link in xrd.iter("{http://docs.oasis-open.org/ns/xri/xrd-1.0}Link")
    }
    assert rels == {
        "urn:xmpp:alt-connections:websocket": f"ws://127.0.0.1:{port}/xmpp-websocket",
        "urn:xmpp:alt-connections:xbosh": f"http://127.0.0.1:{port}/http-bind",
    }
    assert links == [
        {
            "rel": "urn:xmpp:alt-connections:websocket",
            "href": "wss://chat.example.org/xmpp-websocket",
        },
        {"rel": "urn:xmpp:alt-connections:xbosh", "href": "https://chat.example.org/http-bind"},
    ]
    web.wait_for_log('"GET /.well-known/host-meta HTTP/1.1" 200')  # the access log


async def test_connection_limit_and_idle_timeout(make_server: object) -> None:
    """[http] max_connections: one more is answered 503 and closed; idle_timeout closes a
    connection that sends nothing."""
    srv = make_server(  # type: ignore[operator]
        HTTP_LISTENER + "\n[http]\nmax_connections = 2\nidle_timeout = 0.5\n"
    )
    srv.start()
    port = http_port(srv)
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answer = await asyncio.wait_for(reader.read(), 10)
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        writer.close()
        srv.wait_for_log("max_connections (2) reached")
        # The held connections sent nothing: idle_timeout closes them.
        for reader, _ in held:
            assert await asyncio.wait_for(reader.read(), 10) == b""
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/.well-known/host-meta") as response,
        ):
            assert response.status == 200  # room again
    finally:
        for _, writer in held:
            writer.close()
