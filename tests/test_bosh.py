"""XEP-0124 BOSH with XEP-0206 at /http-bind, with raw HTTP requests (aiohttp's client):
session creation with the stream features, SASL and the stream restart, messages both ways
with a TCP client through held requests, 'rid' ordering and resending (the session survives
a lost response), the terminal binding conditions for hostile requests, 'wait', terminate
and inactivity. Converse.js over BOSH is in test_browser.py."""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
import trustme
from conftest import PASSWORD, FreshNames, ServerProcess, assert_still_serving, module_server
from lxml import etree
from ws_client import BIND, CLIENT, HTTP_LISTENER, SASL, STREAMS, http_port

HTTPBIND = "http://jabber.org/protocol/httpbind"
XBOSH = "urn:xmpp:xbosh"
MAM = "urn:xmpp:mam:2"
names = FreshNames("bosh", 40)


@pytest.fixture(scope="module")
def bosh_server(
    ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    extra = "\n[http]\nconsider_bosh_secure = true\n\n[limits]\nmax_stanza_size = 10000\n"
    yield from module_server(ca, tmp_path_factory, names, HTTP_LISTENER + extra)


class Bosh:
    """A raw BOSH client: `post` sends one <body/> and returns the response's."""

    def __init__(self, http: aiohttp.ClientSession, port: int) -> None:
        self.http = http
        self.url = f"http://127.0.0.1:{port}/http-bind"
        self.rid = secrets.randbelow(1 << 40) + 1
        self.sid: str | None = None

    def next_rid(self) -> int:
        self.rid += 1
        return self.rid

    async def send(self, data: bytes | str) -> Any:
        async with self.http.post(
            self.url, data=data, headers={"Content-Type": "text/xml; charset=utf-8"}
        ) as response:
            assert response.status == 200, response.status
            return etree.fromstring(await response.read())

    def wrap(self, payload: str = "", rid: int | None = None, **attrs: str) -> str:
        attrs = {"rid": str(rid if rid is not None else self.next_rid()), **attrs}
        if self.sid is not None:
            attrs.setdefault("sid", self.sid)
        text = "".join(f" {name.replace('__', ':')}='{value}'" for name, value in attrs.items())
        return f"<body xmlns='{HTTPBIND}' xmlns:xmpp='{XBOSH}'{text}>{payload}</body>"

    async def post(self, payload: str = "", rid: int | None = None, **attrs: str) -> Any:
        return await self.send(self.wrap(payload, rid, **attrs))

    async def create(self, to: str = "localhost", wait: str = "10") -> Any:
        response = await self.send(
            f"<body xmlns='{HTTPBIND}' xmlns:xmpp='{XBOSH}' rid='{self.rid}' to='{to}' "
            f"wait='{wait}' hold='1' ver='1.6' xmpp:version='1.0' xml:lang='en'/>"
        )
        self.sid = response.get("sid")
        return response

    async def until(self, tag: str) -> Any:
        """Poll until an element `tag` comes (Clark notation)."""
        for _ in range(20):
            response = await self.post()
            assert response.get("type") != "terminate", etree.tostring(response)
            for element in response:
                if element.tag == tag:
                    return element
        raise AssertionError(f"no {tag}")

    async def login(self, user: str, resource: str = "bosh", wait: str = "10") -> str:
        created = await self.create(wait=wait)
        features = created.find(f"{{{STREAMS}}}features")
        if features is None:
            features = await self.until(f"{{{STREAMS}}}features")
        assert "PLAIN" in [m.text for m in features.iter(f"{{{SASL}}}mechanism")]
        token = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
        response = await self.post(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{token}</auth>")
        if response.find(f"{{{SASL}}}success") is None:
            await self.until(f"{{{SASL}}}success")
        # XEP-0206 §5: the restart request; the new features come in its response.
        response = await self.post(xmpp__restart="true", to="localhost")
        features = response.find(f"{{{STREAMS}}}features")
        if features is None:
            features = await self.until(f"{{{STREAMS}}}features")
        assert features.find(f"{{{BIND}}}bind") is not None
        bind = (
            f"<iq xmlns='{CLIENT}' type='set' id='b'><bind xmlns='{BIND}'>"
            f"<resource>{resource}</resource></bind></iq>"
        )
        response = await self.post(bind)
        jid = response.find(f"{{{CLIENT}}}iq/{{{BIND}}}bind/{{{BIND}}}jid")
        if jid is None:
            jid = (await self.until(f"{{{CLIENT}}}iq")).find(f"{{{BIND}}}bind/{{{BIND}}}jid")
        return str(jid.text)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_session_login_and_chat_with_a_tcp_client(
    bosh_server: ServerProcess, http: aiohttp.ClientSession, ca_file: str
) -> None:
    alice, bob = next(names.names()), next(names.names())
    bosh = Bosh(http, http_port(bosh_server))
    created = await bosh.create()
    # XEP-0124 §7.1 / XEP-0206 §4: the session's parameters, the stream id, the features.
    assert created.get("sid") and created.get("authid")
    assert created.get("requests") == "2" and created.get("hold") == "1"
    assert created.get("wait") == "10" and created.get("from") == "localhost"
    assert created.get(f"{{{XBOSH}}}version") == "1.0"
    assert created.find(f"{{{STREAMS}}}features") is not None
    assert created.find("{urn:ietf:params:xml:ns:xmpp-tls}starttls") is None  # never over BOSH

    bosh = Bosh(http, http_port(bosh_server))
    # wait 1: a request that brings nothing back (the message to bob) is held that long
    jid = await bosh.login(alice, wait="1")
    assert jid == f"{alice}@localhost/bosh"
    tcp = bosh_server.client()
    try:
        tcp_jid = tcp.login(ca_file, bob, PASSWORD)
        await bosh.post(f"<message xmlns='{CLIENT}' to='{tcp_jid}'><body>via bosh</body></message>")
        got = tcp.next()
        assert got.findtext("{jabber:client}body") == "via bosh" and got.get("from") == jid
        # A request held open (§7.2) gets the message as soon as it is there.
        held = asyncio.ensure_future(bosh.post())
        await asyncio.sleep(0)
        tcp.send(f"<message to='{jid}' type='chat'><body>to bosh</body></message>")
        response = await held
        message = response.find(f"{{{CLIENT}}}message")
        if message is None:
            message = await bosh.until(f"{{{CLIENT}}}message")
        assert message.findtext(f"{{{CLIENT}}}body") == "to bosh"
        # §13: the client terminates; the session is gone afterwards.
        done = await bosh.post(type="terminate")
        assert done.get("type") == "terminate"
        gone = await bosh.post()
        assert (gone.get("type"), gone.get("condition")) == ("terminate", "item-not-found")
    finally:
        tcp.close()


async def test_an_archive_query_waits_for_its_fold_over_bosh(
    bosh_server: ServerProcess, http: aiohttp.ClientSession, ca_file: str
) -> None:
    # A message just archived waits in the journal: the query is answered once it is
    # folded (an iq step of the stream, modules/mam.py `answer_settled`), over BOSH too.
    alice, bob = next(names.names()), next(names.names())
    bosh = Bosh(http, http_port(bosh_server))
    await bosh.login(alice)
    tcp = bosh_server.client()
    try:
        tcp.login(ca_file, bob, PASSWORD)
        tcp.send(f"<message to='{alice}@localhost' type='chat' id='k'><body>kept</body></message>")
        tcp.send("<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>")
        assert tcp.next().get("id") == "p"  # routed, so archived
        response = await bosh.post(
            f"<iq xmlns='{CLIENT}' type='set' id='q'><query xmlns='{MAM}' queryid='x'/></iq>"
        )
        bodies: list[str] = []
        for _ in range(20):
            done = None
            for element in response:
                if element.tag == f"{{{CLIENT}}}iq" and element.get("id") == "q":
                    done = element
                bodies += [b.text for b in element.iter(f"{{{CLIENT}}}body")]
            if done is not None:
                break
            response = await bosh.post()
        assert done is not None and done.get("type") == "result"
        assert bodies == ["kept"]
    finally:
        tcp.close()


async def test_resent_request_gets_the_same_response(
    bosh_server: ServerProcess, http: aiohttp.ClientSession, ca_file: str
) -> None:
    """§14.3: a response lost with its connection: the client sends the request again (same
    'rid') and gets the same response; what it carried is handled once."""
    alice, bob = next(names.names()), next(names.names())
    bosh = Bosh(http, http_port(bosh_server))
    await bosh.login(alice)
    tcp = bosh_server.client()
    try:
        tcp_jid = tcp.login(ca_file, bob, PASSWORD)
        ping = f"<iq xmlns='{CLIENT}' type='get' id='lost'><ping xmlns='urn:xmpp:ping'/></iq>"
        message = f"<message xmlns='{CLIENT}' to='{tcp_jid}'><body>once</body></message>"
        request = bosh.wrap(ping + message)
        # The first attempt's connection dies before its response is read.
        first = asyncio.ensure_future(bosh.send(request))
        await asyncio.sleep(0.2)
        first.cancel()
        again = await bosh.send(request)
        pong = again.find(f"{{{CLIENT}}}iq")
        if pong is None:
            pong = await bosh.until(f"{{{CLIENT}}}iq")
        assert pong.get("id") == "lost" and pong.get("type") == "result"
        # A third copy is answered from the buffer: the same body.
        third = await bosh.send(request)
        assert etree.tostring(third) == etree.tostring(again)
        assert tcp.next().findtext("{jabber:client}body") == "once"
        tcp.send("<iq type='get' id='after'><ping xmlns='urn:xmpp:ping'/></iq>")
        assert tcp.next().get("id") == "after"  # and no second "once" before it
    finally:
        tcp.close()


async def test_a_copy_of_a_held_request_takes_its_place(
    bosh_server: ServerProcess, http: aiohttp.ClientSession, ca_file: str
) -> None:
    """§14.3: the client sends a held request again (its connection broke): the first copy
    is answered with a recoverable error, what comes next goes to the second."""
    alice, bob = next(names.names()), next(names.names())
    bosh = Bosh(http, http_port(bosh_server))
    jid = await bosh.login(alice)
    tcp = bosh_server.client()
    try:
        tcp.login(ca_file, bob, PASSWORD)
        request = bosh.wrap()
        first = asyncio.ensure_future(bosh.send(request))
        await asyncio.sleep(0.2)
        second = asyncio.ensure_future(bosh.send(request))
        response = await first
        assert response.get("type") == "error", etree.tostring(response)
        tcp.send(f"<message to='{jid}' type='chat'><body>to the copy</body></message>")
        response = await second
        message = response.find(f"{{{CLIENT}}}message")
        if message is None:
            message = await bosh.until(f"{{{CLIENT}}}message")
        assert message.findtext(f"{{{CLIENT}}}body") == "to the copy"
    finally:
        tcp.close()


async def test_requests_are_handled_in_rid_order(
    bosh_server: ServerProcess, http: aiohttp.ClientSession, ca_file: str
) -> None:
    """§14.1: the request with the later 'rid' arrives first; its payload waits for the
    earlier one."""
    alice, bob = next(names.names()), next(names.names())
    bosh = Bosh(http, http_port(bosh_server))
    await bosh.login(alice)
    tcp = bosh_server.client()
    try:
        tcp_jid = tcp.login(ca_file, bob, PASSWORD)
        first_rid, second_rid = bosh.next_rid(), bosh.next_rid()
        second = asyncio.ensure_future(
            bosh.post(
                f"<message xmlns='{CLIENT}' to='{tcp_jid}'><body>second</body></message>",
                rid=second_rid,
            )
        )
        await asyncio.sleep(0.2)
        assert not second.done()
        first = asyncio.ensure_future(
            bosh.post(
                f"<message xmlns='{CLIENT}' to='{tcp_jid}'><body>first</body></message>",
                rid=first_rid,
            )
        )
        # hold = 1: the second, processed right after the first, releases it.
        response = await first
        assert response.get("type") is None, etree.tostring(response)
        assert tcp.next().findtext("{jabber:client}body") == "first"
        assert tcp.next().findtext("{jabber:client}body") == "second"
        third = asyncio.ensure_future(bosh.post())  # and the next one the second
        response = await second
        assert response.get("type") is None, etree.tostring(response)
        third.cancel()
    finally:
        tcp.close()


@pytest.mark.parametrize(
    ("case", "condition"),
    [
        ("rid-too-large", "item-not-found"),
        ("rid-too-small", "item-not-found"),
        ("unknown-sid", "item-not-found"),
        ("not-xml", "bad-request"),
        ("not-a-body", "bad-request"),
        ("no-rid", "bad-request"),
        ("oversized-stanza", "policy-violation"),
        ("no-to", "improper-addressing"),
        ("unknown-host", "host-unknown"),
    ],
)
async def test_hostile_requests_get_terminal_conditions(
    bosh_server: ServerProcess,
    http: aiohttp.ClientSession,
    ca_file: str,
    case: str,
    condition: str,
) -> None:
    """XEP-0124 §17.2: each gets the terminal binding condition it names."""
    bosh = Bosh(http, http_port(bosh_server))
    if case == "unknown-host":
        response = await bosh.create(to="nowhere.test")
    elif case == "no-to":
        response = await bosh.send(f"<body xmlns='{HTTPBIND}' rid='5' wait='10' hold='1'/>")
    else:
        await bosh.create()
        requests = {
            "rid-too-large": bosh.wrap(rid=bosh.rid + 3),
            "rid-too-small": bosh.wrap(rid=bosh.rid - 5),
            "unknown-sid": bosh.wrap(sid="nosuchsession"),
            "not-xml": "<body xmlns='" + HTTPBIND + "' rid='1'",
            "not-a-body": f"<message xmlns='{CLIENT}'/>",
            "no-rid": f"<body xmlns='{HTTPBIND}' sid='{bosh.sid}'/>",
            "oversized-stanza": bosh.wrap(
                f"<message xmlns='{CLIENT}'><body>{'x' * 11000}</body></message>"
            ),
        }
        response = await bosh.send(requests[case])
    assert response.tag == f"{{{HTTPBIND}}}body"
    assert (response.get("type"), response.get("condition")) == ("terminate", condition)
    assert_still_serving(bosh_server, ca_file, next(names.names()))


async def test_too_large_a_body_is_refused(
    bosh_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    """[http] max_request_size (1 MiB): 413 before anything is parsed."""
    async with http.post(
        f"http://127.0.0.1:{http_port(bosh_server)}/http-bind", data=b"x" * (2 << 20)
    ) as response:
        assert response.status == 413


async def test_an_empty_wait_answers_with_an_empty_body(
    bosh_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    """§7.2: nothing to send within 'wait' (1 s here): an empty <body/>."""
    bosh = Bosh(http, http_port(bosh_server))
    created = await bosh.create(wait="1")
    if created.find(f"{{{STREAMS}}}features") is None:
        await bosh.until(f"{{{STREAMS}}}features")
    response = await bosh.post()
    assert response.tag == f"{{{HTTPBIND}}}body" and len(response) == 0
    assert response.get("type") is None


async def test_plain_http_bosh_needs_encryption_and_inactivity_ends_it(
    make_server: Any, http: aiohttp.ClientSession
) -> None:
    """Without consider_bosh_secure a plain-HTTP session cannot log in (encryption-required);
    one that stops polling for bosh_inactivity is over (item-not-found afterwards)."""
    srv = make_server(HTTP_LISTENER + "\n[http]\nbosh_inactivity = 1\n")
    srv.adduser("alice@localhost")
    srv.start()
    bosh = Bosh(http, http_port(srv))
    created = await bosh.create(wait="2")
    features = created.find(f"{{{STREAMS}}}features")
    if features is None:
        features = await bosh.until(f"{{{STREAMS}}}features")
    assert "PLAIN" not in [m.text for m in features.iter(f"{{{SASL}}}mechanism")]
    response = await bosh.post(f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-256'/>")
    failure = response.find(f"{{{SASL}}}failure")
    if failure is None:
        failure = await bosh.until(f"{{{SASL}}}failure")
    assert failure.find(f"{{{SASL}}}encryption-required") is not None
    srv.wait_for_log(f"BOSH session {bosh.sid} inactive")
    gone = await bosh.post()
    assert (gone.get("type"), gone.get("condition")) == ("terminate", "item-not-found")
