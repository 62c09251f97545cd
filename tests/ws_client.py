"""A raw RFC 7395 WebSocket client for tests (aiohttp's client): every message it receives
is parsed as a document of its own, which is what §3.3.3 promises a client."""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
from typing import Any

import aiohttp
from lxml import etree

FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
STREAMS = "http://etherx.jabber.org/streams"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
BIND = "urn:ietf:params:xml:ns:xmpp-bind"
CLIENT = "jabber:client"
HTTP_LISTENER = """
[[listeners]]
kind = "http"
address = "127.0.0.1"
port = 0
"""
HTTP_LISTENING = re.compile(r"http listening on ([\d.]+):(\d+)")
HTTPS_LISTENING = re.compile(r"https listening on ([\d.]+):(\d+)")
TIMEOUT = 10.0


def http_port(srv: Any, https: bool = False) -> int:
    pattern = HTTPS_LISTENING if https else HTTP_LISTENING
    srv.wait_for_log(f"{'https' if https else 'http'} listening on")
    match = pattern.search(srv.log_text())
    assert match is not None
    return int(match.group(2))


class WsClosed(Exception):
    pass


class WsClient:
    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse):
        self.session = session
        self.ws = ws

    @classmethod
    async def connect(
        cls,
        port: int,
        protocols: tuple[str, ...] = ("xmpp",),
        headers: dict[str, str] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> WsClient:
        """tls: over HTTPS (wss://), the certificate checked for 'localhost'."""
        session = aiohttp.ClientSession()
        scheme = "https" if tls is not None else "http"
        try:
            ws = await session.ws_connect(
                f"{scheme}://127.0.0.1:{port}/xmpp-websocket",
                protocols=protocols,
                headers=headers,
                ssl=tls if tls is not None else True,
                server_hostname="localhost" if tls is not None else None,
            )
        except BaseException:
            await session.close()
            raise
        return cls(session, ws)

    def abort(self) -> None:
        """The connection dies without a closing handshake (a phone losing its network)."""
        transport = self.ws._conn.transport if self.ws._conn is not None else None
        assert transport is not None
        transport.abort()

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()

    async def send(self, xml: str) -> None:
        await self.ws.send_str(xml)

    async def raw(self, timeout: float = TIMEOUT) -> aiohttp.WSMessage:
        return await asyncio.wait_for(self.ws.receive(), timeout)

    async def next(self, timeout: float = TIMEOUT) -> Any:
        """The next message as an element; WsClosed when the WebSocket closes instead."""
        message = await self.raw(timeout)
        if message.type != aiohttp.WSMsgType.TEXT:
            raise WsClosed(message)
        return etree.fromstring(message.data.encode())

    async def until(self, tag: str, timeout: float = TIMEOUT) -> Any:
        """The next element called `tag` (Clark notation), skipping others."""
        while True:
            el = await self.next(timeout)
            if el.tag == tag:
                return el

    async def open(self, to: str = "localhost") -> tuple[Any, Any]:
        await self.send(f"<open xmlns='{FRAMING}' to='{to}' version='1.0'/>")
        opened = await self.next()
        features = await self.next()
        return opened, features

    async def stream_error(self) -> str:
        """The condition of the stream error that comes (skipping other elements), after
        which the server must send <close/> (RFC 7395 §3.6)."""
        while True:
            el = await self.next()
            if el.tag == f"{{{STREAMS}}}error":
                condition = next(iter(el)).tag.split("}")[1]
                closing = await self.next()
                assert closing.tag == f"{{{FRAMING}}}close", etree.tostring(closing)
                return condition

    async def login(self, user: str, password: str, resource: str = "ws") -> str:
        _, features = await self.open()
        mechanisms = [m.text for m in features.iter(f"{{{SASL}}}mechanism")]
        assert "PLAIN" in mechanisms, etree.tostring(features)
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        await self.send(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{token}</auth>")
        success = await self.next()
        assert success.tag == f"{{{SASL}}}success", etree.tostring(success)
        _, features = await self.open()
        assert features.find(f"{{{BIND}}}bind") is not None
        await self.send(
            f"<iq xmlns='{CLIENT}' type='set' id='bind'><bind xmlns='{BIND}'>"
            f"<resource>{resource}</resource></bind></iq>"
        )
        bound = await self.next()
        jid = bound.find(f"{{{BIND}}}bind/{{{BIND}}}jid")
        assert jid is not None, etree.tostring(bound)
        return str(jid.text)
