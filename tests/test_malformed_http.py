"""The malformed-input corpus over HTTP (issue 14): hostile WebSocket, BOSH and upload input.

One server with an http listener serves every case. Each case brings a hostile client
(alice) to its endpoint and sends what it names; the answer must be the one its spec names:
RFC 7395 §3.6 (a stream error, then <close/>) or RFC 6455 (a refused handshake, a close
code) for WebSocket, a XEP-0124 §17.2 terminal binding condition or an HTTP status for BOSH,
HTTP 4xx for XEP-0363 uploads. Hostile stanzas are addressed to the bystander bob, so a leak
would show: after every case the bystander pair of test_malformed.py (bob and carol, logged
in over TCP before it) still exchange messages, the first thing each receives, and the
server process is alive. The happy paths and more detail are in test_websocket.py,
test_bosh.py and test_upload.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from urllib.parse import urlsplit

import aiohttp
import pytest
import trustme
from conftest import PASSWORD, ServerProcess
from lxml import etree
from test_bosh import HTTPBIND, Bosh
from test_malformed import BOB, Bystanders, bystanders, others  # noqa: F401 (fixtures)
from test_upload import ask_slot, put, raw_request, slot_urls
from ws_client import CLIENT, FRAMING, HTTP_LISTENER, STREAMS, WsClient, WsClosed, http_port
from xmpp_raw import RawClient

MAX_STANZA_SIZE = 10000  # small, so that oversized input is cheap to send
SLOT_TIMEOUT = 3  # seconds: the expired-slot case waits this long at most
CONFIG = f"""{HTTP_LISTENER}
[http]
consider_websocket_secure = true
consider_bosh_secure = true

[limits]
max_stanza_size = {MAX_STANZA_SIZE}

[upload]
slot_timeout = {SLOT_TIMEOUT}
"""
TO_BOB = f"<message xmlns='{CLIENT}' to='{BOB}' type='chat'><body>hostile</body></message>"
OPEN = f"<open xmlns='{FRAMING}' to='localhost' version='1.0'/>"


@pytest.fixture(scope="module")
def server(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Overrides conftest's: the bystanders fixture of test_malformed.py logs in here."""
    srv = ServerProcess(tmp_path_factory.mktemp("http-malformed"), ca, ("localhost",), CONFIG)
    for user in ("alice", "bob", "carol"):
        srv.adduser(f"{user}@localhost")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def uploader(server: ServerProcess, ca_file: str) -> Iterator[RawClient]:
    """alice over TCP, asking for upload slots."""
    client = server.client()
    client.login(ca_file, "alice", PASSWORD, "uploads")
    yield client
    client.close()


class Hostile:
    """What a case needs: the server, its http port, alice's TCP client for upload slots."""

    def __init__(self, server: ServerProcess, uploader: RawClient, http: aiohttp.ClientSession):
        self.server = server
        self.port = http_port(server)
        self.uploader = uploader
        self.http = http

    def bosh(self) -> Bosh:
        return Bosh(self.http, self.port)


Case = Callable[[Hostile], Awaitable[None]]
CASES: dict[str, Case] = {}


def case(name: str) -> Callable[[Case], Case]:
    def register(function: Case) -> Case:
        assert name not in CASES, name
        CASES[name] = function
        return function

    return register


# --- WebSocket (RFC 7395) ----------------------------------------------------------------------


async def logged_in_websocket(h: Hostile) -> WsClient:
    ws = await WsClient.connect(h.port)
    try:
        assert await ws.login("alice", PASSWORD) == "alice@localhost/ws"
    except BaseException:
        await ws.close()
        raise
    return ws


async def assert_stream_error(ws: WsClient, condition: str) -> None:
    """§3.6: the stream error, our <close/> (WsClient.stream_error checks it), and then
    the WebSocket ends."""
    try:
        assert await ws.stream_error() == condition
        # Our <close/> in answer (§3.6) has the server close the WebSocket at once.
        with contextlib.suppress(ConnectionResetError):
            await ws.send(f"<close xmlns='{FRAMING}'/>")
        with pytest.raises(WsClosed):
            await ws.next()
    finally:
        await ws.close()


async def assert_refused_handshake(h: Hostile, protocols: tuple[str, ...]) -> None:
    """§3.1: without the 'xmpp' subprotocol there is no WebSocket (HTTP 400)."""
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await WsClient.connect(h.port, protocols=protocols)
    assert caught.value.status == 400


@case("ws-no-subprotocol")
async def ws_no_subprotocol(h: Hostile) -> None:
    await assert_refused_handshake(h, ())


@case("ws-wrong-subprotocol")
async def ws_wrong_subprotocol(h: Hostile) -> None:
    await assert_refused_handshake(h, ("chat", "xmpp-framing"))


@case("ws-binary-frame")
async def ws_binary_frame(h: Hostile) -> None:
    """§3.2: XMPP goes in text messages; a binary one carrying a stanza is not delivered."""
    ws = await logged_in_websocket(h)
    await ws.ws.send_bytes(TO_BOB.encode())
    await assert_stream_error(ws, "unsupported-encoding")


async def after_login(h: Hostile, messages: list[str], condition: str) -> None:
    ws = await logged_in_websocket(h)
    for message in messages:
        await ws.send(message)
    await assert_stream_error(ws, condition)


# §3.3.3: every message is exactly one complete element, parsable on its own.
@case("ws-two-elements-in-one-message")
async def ws_two_elements(h: Hostile) -> None:
    await after_login(h, [TO_BOB + TO_BOB], "not-well-formed")


@case("ws-element-and-text-in-one-message")
async def ws_element_and_text(h: Hostile) -> None:
    """Text after the element is text where elements go (RFC 6120 §4.9.3.1)."""
    await after_login(h, [TO_BOB + "trailing"], "bad-format")


@case("ws-partial-element")
async def ws_partial_element(h: Hostile) -> None:
    await after_login(h, [TO_BOB[: -len("</message>")]], "not-well-formed")


@case("ws-whitespace-message")
async def ws_whitespace(h: Hostile) -> None:
    await after_login(h, ["   "], "not-well-formed")


@case("ws-text-message")
async def ws_text(h: Hostile) -> None:
    """Text where elements go (RFC 6120 §4.9.3.1, as on TCP)."""
    await after_login(h, ["hello"], "bad-format")


@case("ws-xml-split-across-frames")
async def ws_split_across_frames(h: Hostile) -> None:
    """§3.3.3: a stanza split over two messages: the first is not well-formed on its own,
    and neither half reaches bob."""
    half = len(TO_BOB) // 2
    await after_login(h, [TO_BOB[:half], TO_BOB[half:]], "not-well-formed")


@case("ws-oversized-message")
async def ws_oversized(h: Hostile) -> None:
    """limits.max_stanza_size applies to a message as to a stanza (RFC 6120 §4.9.3.15)."""
    big = TO_BOB.replace("hostile", "x" * (MAX_STANZA_SIZE + 1000))
    await after_login(h, [big], "policy-violation")


@case("ws-huge-message")
async def ws_huge(h: Hostile) -> None:
    """Beyond max_stanza_size and its framing slack the WebSocket layer refuses the message
    unread (RFC 6455 §7.4.1: 1009, message too big)."""
    ws = await logged_in_websocket(h)
    try:
        await ws.send(TO_BOB.replace("hostile", "x" * 200000))
        message = await ws.raw()
        while message.type == aiohttp.WSMsgType.TEXT:
            message = await ws.raw()
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    finally:
        await ws.close()


@case("ws-stanza-before-open")
async def ws_stanza_before_open(h: Hostile) -> None:
    """§3.3.2: a stream starts with <open/>."""
    ws = await WsClient.connect(h.port)
    await ws.send(TO_BOB)
    await assert_stream_error(ws, "invalid-namespace")


@case("ws-tcp-header-before-open")
async def ws_tcp_header(h: Hostile) -> None:
    ws = await WsClient.connect(h.port)
    await ws.send(f"<stream:stream xmlns='{CLIENT}' xmlns:stream='{STREAMS}' to='localhost'/>")
    await assert_stream_error(ws, "unsupported-stanza-type")


@case("ws-binary-frame-before-open")
async def ws_binary_before_open(h: Hostile) -> None:
    ws = await WsClient.connect(h.port)
    await ws.ws.send_bytes(OPEN.encode())
    await assert_stream_error(ws, "unsupported-encoding")


@case("ws-non-utf8-text")
async def ws_non_utf8(h: Hostile) -> None:
    """RFC 6455 §8.1: a text message that is not UTF-8 fails the WebSocket connection
    (close code 1007); nothing of it is parsed."""
    ws = await logged_in_websocket(h)
    try:
        hostile = TO_BOB.encode().replace(b"hostile", b"caf\xe9 \xc0\xaf")
        await ws.ws.send_frame(hostile, aiohttp.WSMsgType.TEXT)
        message = await ws.raw()
        while message.type == aiohttp.WSMsgType.TEXT:
            message = await ws.raw()
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.ws.close_code == aiohttp.WSCloseCode.INVALID_TEXT
    finally:
        await ws.close()


# --- BOSH (XEP-0124, XEP-0206) -----------------------------------------------------------------


def assert_terminated(response: etree._Element, condition: str) -> None:
    """§17.2: <body type='terminate' condition='...'/>."""
    assert response.tag == f"{{{HTTPBIND}}}body", etree.tostring(response)
    assert (response.get("type"), response.get("condition")) == ("terminate", condition)


async def assert_session_over(bosh: Bosh) -> None:
    """§17.2: a terminal condition ends the session: the next request finds nothing."""
    assert_terminated(await bosh.post(TO_BOB), "item-not-found")


async def bosh_created(h: Hostile) -> Bosh:
    bosh = h.bosh()
    created = await bosh.create()
    assert created.get("sid"), etree.tostring(created)
    return bosh


@case("bosh-rid-beyond-window")
async def bosh_rid_beyond_window(h: Hostile) -> None:
    """§14.1: a 'rid' beyond the window of 'requests' ends the session (item-not-found)."""
    bosh = await bosh_created(h)
    assert_terminated(await bosh.post(TO_BOB, rid=bosh.rid + 3), "item-not-found")
    await assert_session_over(bosh)


@case("bosh-rid-below-window")
async def bosh_rid_below_window(h: Hostile) -> None:
    bosh = await bosh_created(h)
    assert_terminated(await bosh.post(TO_BOB, rid=bosh.rid - 5), "item-not-found")
    await assert_session_over(bosh)


@case("bosh-replayed-rid")
async def bosh_replayed_rid(h: Hostile) -> None:
    """§14.3 keeps the last 'requests' responses for resending; a request replayed after
    that (here the SASL one, carrying a message for bob) is outside the window (§14.1)."""
    bosh = h.bosh()
    auth_rid = bosh.rid + 1  # Bosh.login: creation, then auth
    await bosh.login("alice")
    for n in range(2):  # two answered requests push the auth one out of the buffer
        ping = f"<iq xmlns='{CLIENT}' type='get' id='p{n}'><ping xmlns='urn:xmpp:ping'/></iq>"
        await bosh.post(ping)
    assert_terminated(await bosh.post(TO_BOB, rid=auth_rid), "item-not-found")
    await assert_session_over(bosh)


@case("bosh-more-requests-than-allowed")
async def bosh_more_requests(h: Hostile) -> None:
    """'requests' is 2: a third request outstanding while the first is missing has a 'rid'
    beyond the window, which §14.1 answers with item-not-found (MUST; §11's
    policy-violation is a SHOULD for the same overactivity). The early one is ended too."""
    bosh = await bosh_created(h)
    first = bosh.next_rid()
    early = asyncio.ensure_future(bosh.post(TO_BOB, rid=first + 1))
    await asyncio.sleep(0.1)  # it arrives first and waits for `first`
    assert_terminated(await bosh.post(TO_BOB, rid=first + 2), "item-not-found")
    assert (await early).get("type") == "terminate"
    await assert_session_over(bosh)


@case("bosh-unknown-sid")
async def bosh_unknown_sid(h: Hostile) -> None:
    bosh = await bosh_created(h)
    assert_terminated(await bosh.post(TO_BOB, sid="nosuchsession"), "item-not-found")


@case("bosh-not-a-body")
async def bosh_not_a_body(h: Hostile) -> None:
    """§17.2 bad-request: the request is not a <body/> of the httpbind namespace."""
    bosh = h.bosh()
    assert_terminated(await bosh.send(TO_BOB), "bad-request")


@case("bosh-body-in-wrong-namespace")
async def bosh_wrong_namespace(h: Hostile) -> None:
    bosh = h.bosh()
    request = f"<body xmlns='{CLIENT}' rid='5' to='localhost' wait='10' hold='1'/>"
    assert_terminated(await bosh.send(request), "bad-request")


@case("bosh-not-xml")
async def bosh_not_xml(h: Hostile) -> None:
    bosh = await bosh_created(h)
    assert_terminated(await bosh.send(bosh.wrap(TO_BOB)[:-4]), "bad-request")


@case("bosh-huge-body")
async def bosh_huge_body(h: Hostile) -> None:
    """[http] max_request_size (1 MiB): 413 before anything is parsed."""
    bosh = await bosh_created(h)
    huge = bosh.wrap(TO_BOB.replace("hostile", "x" * (2 << 20)))
    async with h.http.post(bosh.url, data=huge.encode()) as response:
        assert response.status == 413


@case("bosh-oversized-stanza")
async def bosh_oversized_stanza(h: Hostile) -> None:
    """Within max_request_size but beyond max_stanza_size: policy-violation (§17.2)."""
    bosh = await bosh_created(h)
    big = TO_BOB.replace("hostile", "x" * (MAX_STANZA_SIZE + 1000))
    assert_terminated(await bosh.post(big), "policy-violation")


@case("bosh-missing-rid")
async def bosh_missing_rid(h: Hostile) -> None:
    bosh = await bosh_created(h)
    request = f"<body xmlns='{HTTPBIND}' sid='{bosh.sid}'>{TO_BOB}</body>"
    assert_terminated(await bosh.send(request), "bad-request")


@case("bosh-missing-to")
async def bosh_missing_to(h: Hostile) -> None:
    """§7.1: a session request names its host."""
    bosh = h.bosh()
    request = f"<body xmlns='{HTTPBIND}' rid='5' wait='10' hold='1'/>"
    assert_terminated(await bosh.send(request), "improper-addressing")


@case("bosh-unknown-host")
async def bosh_unknown_host(h: Hostile) -> None:
    assert_terminated(await h.bosh().create(to="nowhere.test"), "host-unknown")


# --- HTTP File Upload (XEP-0363) ---------------------------------------------------------------

BODY = b"0123456789" * 10


def new_slot(h: Hostile, filename: str = "hostile.txt", size: int = len(BODY)) -> tuple[str, str]:
    return slot_urls(ask_slot(h.uploader, filename, size))


async def status_of(h: Hostile, url: str) -> int:
    async with h.http.get(url) as response:
        return response.status


@case("upload-put-larger-than-slot")
async def upload_larger(h: Hostile) -> None:
    """§5: a Content-Length other than the slot's size is refused (larger: 413)."""
    put_url, get_url = new_slot(h)
    assert await put(put_url, BODY + b"extra") == 413
    assert await status_of(h, get_url) == 404


@case("upload-put-smaller-than-slot")
async def upload_smaller(h: Hostile) -> None:
    put_url, get_url = new_slot(h)
    assert await put(put_url, BODY[:50]) == 400
    assert await status_of(h, get_url) == 404


@case("upload-put-to-expired-slot")
async def upload_expired(h: Hostile) -> None:
    put_url, get_url = new_slot(h)
    expires = int(put_url.split("expires=")[1].split("&")[0])
    await asyncio.sleep(max(0.0, expires - time.time() + 0.2))
    assert await put(put_url, BODY) == 403
    assert await status_of(h, get_url) == 404


@case("upload-put-to-reused-slot")
async def upload_reused(h: Hostile) -> None:
    """A slot is used once: a second PUT does not replace the file."""
    put_url, get_url = new_slot(h)
    assert await put(put_url, BODY) == 201
    assert await put(put_url, BODY[::-1]) == 403
    async with h.http.get(get_url) as response:
        assert response.status == 200 and await response.read() == BODY


@case("upload-put-to-forged-url")
async def upload_forged(h: Hostile) -> None:
    """The signature covers the file id, name and expiry: 403 for any change, and the
    refusals do not spend the real slot."""
    put_url, get_url = new_slot(h)
    head, _, signature = put_url.rpartition("sig=")
    forged_signature = ("1" if signature[0] == "0" else "0") * len(signature)
    expires = put_url.split("expires=")[1].split("&")[0]
    for forged in (
        head + "sig=" + forged_signature,
        put_url.replace(f"expires={expires}", f"expires={int(expires) + 3600}"),
        put_url.replace("/hostile.txt?", "/other.txt?"),
        get_url,  # no signature at all
    ):
        assert await put(forged, BODY) == 403, forged
    assert await put(put_url, BODY) == 201


async def raw_put(h: Hostile, put_url: str, headers: str, body: bytes) -> tuple[int, bytes]:
    """A PUT written byte for byte: its status and what follows the status line."""
    target = put_url.split(str(h.port), 1)[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
    writer.write(
        f"PUT {target} HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\n"
        f"{headers}Connection: close\r\n\r\n".encode()
        + body
    )
    answer = await reader.read()
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest


@case("upload-wrong-content-length")
async def upload_wrong_content_length(h: Hostile) -> None:
    """§5: Content-Length must be the slot's size (one more: 413, one less: 400, none: 411),
    whatever the body; nothing is kept. (A body shorter than its Content-Length:
    test_upload.py's stalled and dropped uploads.)"""
    for headers, body, status, says in (
        (f"Content-Length: {len(BODY) + 1}\r\n", BODY + b"x", 413, b"Content-Length must be"),
        (f"Content-Length: {len(BODY) - 1}\r\n", BODY[:-1], 400, b"Content-Length must be"),
        ("", b"", 411, b"Content-Length is required"),
    ):
        put_url, get_url = new_slot(h)
        answer = await raw_put(h, put_url, headers, body)
        assert answer[0] == status and says in answer[1], (headers, answer)
        assert await status_of(h, get_url) == 404


async def assert_no_traversal(h: Hostile, method: str) -> None:
    """Paths that climb out of the file's directory, or into the service's own, reach
    nothing: 4xx, and neither the signing secret nor another file comes back."""
    put_url, get_url = new_slot(h, "mine.txt")
    assert await put(put_url, BODY) == 201
    file_id = urlsplit(get_url).path.split("/")[2]
    secret = (h.server.data_dir / "upload" / "secret").read_bytes()
    for path in (
        "/upload/../upload/secret",
        "/upload/..%2Fsecret/x",
        "/upload/%2e%2e/secret",
        "/upload/%2e%2e%2f%2e%2e%2fdata/secret",
        f"/upload/{file_id}/..%2F..%2Fsecret",
        f"/upload/{file_id}/../secret",
        f"/upload/{file_id}/%2e%2e/{file_id}/mine.txt",
        "/upload/secret/secret",
        "/upload/tmp/x",
        "/upload/files/" + file_id,
        "/../../etc/passwd",
    ):
        status, answer = await raw_request(
            h.port,
            f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n"
            "Connection: close\r\n\r\n".encode(),
        )
        assert 400 <= status < 500, (method, path, status)
        content = answer.split(b"\r\n\r\n", 1)[1]
        assert secret not in content and BODY not in content, (method, path)
    assert await status_of(h, get_url) == 200  # the file itself is still served


@case("upload-path-traversal-get")
async def upload_traversal_get(h: Hostile) -> None:
    await assert_no_traversal(h, "GET")


@case("upload-path-traversal-put")
async def upload_traversal_put(h: Hostile) -> None:
    await assert_no_traversal(h, "PUT")


# --- the test ----------------------------------------------------------------------------------


@pytest.fixture
async def hostile(server: ServerProcess, uploader: RawClient) -> AsyncIterator[Hostile]:
    async with aiohttp.ClientSession() as http:
        yield Hostile(server, uploader, http)


@pytest.mark.parametrize("name", sorted(CASES))
async def test_hostile_http_input(
    hostile: Hostile,
    others: Bystanders,  # noqa: F811
    name: str,
) -> None:
    await CASES[name](hostile)
    others.assert_unaffected()
