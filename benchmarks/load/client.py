"""A lean XMPP client for load generation: asyncio streams on uvloop, fastxmpp's compiled
stream parser for input, pre-serialized stanzas for output.

It speaks just enough of RFC 6120 to log in to any server: STARTTLS (or plain TCP), SASL
SCRAM-SHA-1/-256 (scramp) or PLAIN, resource binding, and the legacy session iq where a
server still requires it. Every wait is bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from dataclasses import dataclass
from typing import Any

from fastxmpp._parser import Stanza, StreamHeader, StreamParser, XMLStreamError
from scramp import ScramClient

STREAMS = "http://etherx.jabber.org/streams"
CLIENT = "jabber:client"
SM = "urn:xmpp:sm:3"  # XEP-0198
TLS = "urn:ietf:params:xml:ns:xmpp-tls"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
BIND = "urn:ietf:params:xml:ns:xmpp-bind"
SESSION = "urn:ietf:params:xml:ns:xmpp-session"


class LoginError(Exception):
    pass


@dataclass(frozen=True)
class Account:
    domain: str
    local: str
    password: str

    @property
    def bare(self) -> str:
        return f"{self.local}@{self.domain}"


@dataclass(frozen=True)
class LoginOptions:
    starttls: bool = True
    mechanism: str = "SCRAM-SHA-1"  # or SCRAM-SHA-256, PLAIN
    timeout: float = 30.0


def _client_tls_context() -> ssl.SSLContext:
    # Loopback benchmarks against self-signed certificates: encryption without verification.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


_TLS_CONTEXT = _client_tls_context()


def header(domain: str) -> bytes:
    return (
        f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='{STREAMS}' "
        f"to='{domain}' version='1.0'>"
    ).encode()


class XMPPConnection:
    """One logged-in stream. `stanzas()` yields parsed top-level stanzas as they arrive."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = StreamParser(1 << 22, 256, 256)
        self.queue: list[Any] = []
        self.full_jid = ""
        # XEP-0198 on (`enable_sm`): stanzas handled since <enabled/>, for the <a/> that
        # answers each <r/> of the server as it is read; None while off.
        self.sm_handled: int | None = None

    @classmethod
    async def open(cls, host: str, port: int, source: str | None = None) -> XMPPConnection:
        """`source`: the local address to connect from (one address has about 28 000
        ephemeral ports, net.ipv4.ip_local_port_range: more connections need more)."""
        reader, writer = await asyncio.open_connection(
            host, port, limit=1 << 20, local_addr=(source, 0) if source else None
        )
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def read_events(self) -> list[Any]:
        data = await self.reader.read(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        events = self.parser.feed(data)
        if self.sm_handled is not None:
            self._acknowledge(events)
        return events

    def _acknowledge(self, events: list[Any]) -> None:
        """XEP-0198 §4: count the stanzas, answer each <r/> with what was counted so far."""
        for event in events:
            if type(event) is not Stanza:
                continue
            if event.ns == CLIENT:
                self.sm_handled = (self.sm_handled or 0) + 1
            elif event.ns == SM and event.name == "r":
                self.send(f"<a xmlns='{SM}' h='{self.sm_handled}'/>".encode())

    async def enable_sm(self, timeout: float) -> None:
        """XEP-0198 stream management on, as mobile clients have it (§3)."""
        self.send(f"<enable xmlns='{SM}'/>".encode())
        while True:
            st = await self.next_stanza(timeout)
            if st.ns == SM and st.name == "enabled":
                self.sm_handled = 0
                return
            if st.ns == SM and st.name == "failed":
                raise LoginError("stream management refused: " + st.raw.decode())

    async def next_event(self, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while not self.queue:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no answer from the server")
            self.queue.extend(await asyncio.wait_for(self.read_events(), remaining))
        event = self.queue.pop(0)
        if isinstance(event, XMLStreamError):
            raise LoginError(f"bad XML from the server: {event.condition}")
        return event

    async def next_stanza(self, timeout: float) -> Stanza:
        while True:
            event = await self.next_event(timeout)
            if isinstance(event, Stanza):
                if event.ns == STREAMS and event.name == "error":
                    raise LoginError("stream error: " + event.raw.decode(errors="replace"))
                return event
            if not isinstance(event, StreamHeader):
                raise LoginError(f"stream ended: {event!r}")

    async def open_stream(self, domain: str, timeout: float) -> Stanza:
        self.parser.reset()
        self.send(header(domain))
        features = await self.next_stanza(timeout)
        if features.name != "features":
            raise LoginError("expected stream features, got " + features.raw.decode())
        return features

    async def starttls(self, domain: str, timeout: float) -> None:
        self.send(f"<starttls xmlns='{TLS}'/>".encode())
        proceed = await self.next_stanza(timeout)
        if proceed.name != "proceed":
            raise LoginError("STARTTLS refused")
        await self.writer.start_tls(_TLS_CONTEXT, server_hostname=domain)

    async def authenticate(self, account: Account, mechanism: str, timeout: float) -> None:
        if mechanism == "PLAIN":
            blob = base64.b64encode(f"\0{account.local}\0{account.password}".encode()).decode()
            self.send(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{blob}</auth>".encode())
            outcome = await self.next_stanza(timeout)
        else:
            client = ScramClient([mechanism], account.local, account.password)
            first = base64.b64encode(client.get_client_first().encode()).decode()
            self.send(f"<auth xmlns='{SASL}' mechanism='{mechanism}'>{first}</auth>".encode())
            challenge = await self.next_stanza(timeout)
            if challenge.name != "challenge":
                raise LoginError("SASL: " + challenge.raw.decode())
            client.set_server_first(base64.b64decode(_text(challenge)).decode())
            final = base64.b64encode(client.get_client_final().encode()).decode()
            self.send(f"<response xmlns='{SASL}'>{final}</response>".encode())
            outcome = await self.next_stanza(timeout)
            if outcome.name == "challenge":  # some servers send the verifier as a challenge
                client.set_server_final(base64.b64decode(_text(outcome)).decode())
                self.send(f"<response xmlns='{SASL}'/>".encode())
                outcome = await self.next_stanza(timeout)
            elif outcome.name == "success" and _text(outcome):
                client.set_server_final(base64.b64decode(_text(outcome)).decode())
        if outcome.name != "success":
            raise LoginError(f"SASL {mechanism} failed: " + outcome.raw.decode())

    async def bind(self, resource: str, features: Stanza, timeout: float) -> None:
        self.send(
            f"<iq type='set' id='bind'><bind xmlns='{BIND}'><resource>{resource}</resource>"
            f"</bind></iq>".encode()
        )
        reply = await self.next_stanza(timeout)
        if reply.attrs.get("type") != "result":
            raise LoginError("bind failed: " + reply.raw.decode())
        jid = reply.element().findtext(f"{{{BIND}}}bind/{{{BIND}}}jid")
        self.full_jid = jid or ""
        session = features.element().find(f"{{{SESSION}}}session")
        if session is not None and session.find(f"{{{SESSION}}}optional") is None:
            self.send(f"<iq type='set' id='sess'><session xmlns='{SESSION}'/></iq>".encode())
            reply = await self.next_stanza(timeout)
            if reply.attrs.get("type") != "result":
                raise LoginError("session failed: " + reply.raw.decode())

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.write(b"</stream:stream>")
            self.writer.close()


async def login(
    host: str,
    port: int,
    account: Account,
    resource: str,
    options: LoginOptions,
    source: str | None = None,
) -> XMPPConnection:
    """Connect (from `source` when given), (STARTTLS,) authenticate and bind; the connection
    is ready for stanzas."""
    conn = await XMPPConnection.open(host, port, source)
    try:
        t = options.timeout
        features = await conn.open_stream(account.domain, t)
        if options.starttls:
            await conn.starttls(account.domain, t)
            features = await conn.open_stream(account.domain, t)
        await conn.authenticate(account, options.mechanism, t)
        features = await conn.open_stream(account.domain, t)
        await conn.bind(resource, features, t)
    except BaseException:
        conn.writer.close()
        raise
    return conn


def _text(st: Stanza) -> str:
    return (st.element().text or "").strip()


async def register(host: str, port: int, account: Account, options: LoginOptions) -> bool:
    """Create the account with XEP-0077 in-band registration; False if it already exists."""
    conn = await XMPPConnection.open(host, port)
    try:
        t = options.timeout
        await conn.open_stream(account.domain, t)
        if options.starttls:
            await conn.starttls(account.domain, t)
            await conn.open_stream(account.domain, t)
        conn.send(
            f"<iq type='set' id='reg'><query xmlns='jabber:iq:register'>"
            f"<username>{account.local}</username><password>{account.password}</password>"
            f"</query></iq>".encode()
        )
        reply = await conn.next_stanza(t)
        if reply.attrs.get("type") == "result":
            return True
        if b"<conflict" in reply.raw:
            return False
        raise LoginError("registration failed: " + reply.raw.decode())
    finally:
        conn.close()
