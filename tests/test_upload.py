"""XEP-0363 HTTP File Upload: the upload.<host> service hands out slots over XMPP (disco, the
§4 errors), the http listener takes the PUT to the signed URL and serves the file (ranges,
HEAD, CORS, safe headers); hostile URLs and bodies get HTTP 4xx; files survive a restart,
expire, and go with their account. slixmpp's xep_0363 plugin is the real client."""

from __future__ import annotations

import asyncio
import calendar
import io
import os
import ssl
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from xml.sax.saxutils import quoteattr

import aiohttp
import pytest
import trustme
from conftest import PASSWORD, FreshNames, ServerProcess, module_server, run_cli
from lxml import etree
from slix_client import SlixClient
from ws_client import HTTP_LISTENER, http_port
from xmpp_raw import RawClient, stanza_error

NS_UPLOAD = "urn:xmpp:http:upload:0"
NS_INFO = "http://jabber.org/protocol/disco#info"
NS_ITEMS = "http://jabber.org/protocol/disco#items"
CLIENT = "jabber:client"
MAX_FILE_SIZE = 2000000
QUOTA = 3000000
PENDING = 3
UPLOAD = f"""{HTTP_LISTENER}
[upload]
max_file_size = {MAX_FILE_SIZE}
quota = {QUOTA}
max_pending_slots = {PENDING}
"""
names = FreshNames("up", 30)


@pytest.fixture(scope="module")
def web(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(ca, tmp_path_factory, names, UPLOAD)


@pytest.fixture
def raw(web: ServerProcess, ca_file: str) -> Iterator[RawClient]:
    client = web.client()
    client.login(ca_file, next(names.names()), PASSWORD)
    yield client
    client.close()


def ask_slot(
    client: RawClient,
    filename: str,
    size: int | str,
    content_type: str | None = "text/plain",
    to: str = "upload.localhost",
) -> etree._Element:
    type_attr = "" if content_type is None else f" content-type={quoteattr(content_type)}"
    client.send(
        f"<iq type='get' id='slot' to='{to}'><request xmlns='{NS_UPLOAD}' "
        f"filename={quoteattr(filename)} size='{size}'{type_attr}/></iq>"
    )
    reply = client.next()
    assert reply.get("id") == "slot", etree.tostring(reply)
    return reply


def slot_urls(reply: etree._Element) -> tuple[str, str]:
    assert reply.get("type") == "result", etree.tostring(reply)
    slot = reply.find(f"{{{NS_UPLOAD}}}slot")
    assert slot is not None
    put = slot.find(f"{{{NS_UPLOAD}}}put")
    get = slot.find(f"{{{NS_UPLOAD}}}get")
    assert put is not None and get is not None
    # The URL is the whole credential: no header to send along.
    assert put.find(f"{{{NS_UPLOAD}}}header") is None
    return put.get("url"), get.get("url")


async def put(url: str, body: bytes, content_type: str = "text/plain", **headers: str) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.put(url, data=body, headers={"Content-Type": content_type, **headers}) as response,
    ):
        return response.status


async def upload(client: RawClient, body: bytes, filename: str = "a.txt") -> str:
    put_url, get_url = slot_urls(ask_slot(client, filename, len(body)))
    assert await put(put_url, body) == 201
    return get_url


async def raw_request(port: int, request: bytes) -> tuple[int, bytes]:
    """One HTTP/1.1 request written byte for byte (no client normalizing the path)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest


def error_of(reply: etree._Element) -> etree._Element:
    assert reply.get("type") == "error", etree.tostring(reply)
    error = reply.find(f"{{{CLIENT}}}error")
    assert error is not None
    return error


# --- discovery -------------------------------------------------------------------------------


def test_service_is_discovered_with_its_limit(raw: RawClient) -> None:
    raw.send(f"<iq type='get' id='items' to='localhost'><query xmlns='{NS_ITEMS}'/></iq>")
    items = raw.next().find(f"{{{NS_ITEMS}}}query")
    assert "upload.localhost" in [item.get("jid") for item in items]
    raw.send(f"<iq type='get' id='info' to='upload.localhost'><query xmlns='{NS_INFO}'/></iq>")
    info = raw.next().find(f"{{{NS_INFO}}}query")
    identity = info.find(f"{{{NS_INFO}}}identity")
    assert (identity.get("category"), identity.get("type")) == ("store", "file")
    assert NS_UPLOAD in [f.get("var") for f in info.findall(f"{{{NS_INFO}}}feature")]
    # XEP-0363 §2 / XEP-0128: the form with the size limit.
    fields = {
        field.get("var"): field.findtext("{jabber:x:data}value")
        for field in info.iter("{jabber:x:data}field")
    }
    assert fields == {"FORM_TYPE": NS_UPLOAD, "max-file-size": str(MAX_FILE_SIZE)}
    # The service has no nodes (XEP-0030 §3.2/§4.2: item-not-found), and no items.
    for namespace in (NS_INFO, NS_ITEMS):
        raw.send(
            f"<iq type='get' id='node' to='upload.localhost'><query xmlns='{namespace}' "
            "node='x'/></iq>"
        )
        assert stanza_error(raw.next()) == "item-not-found"
    raw.send(f"<iq type='get' id='items' to='upload.localhost'><query xmlns='{NS_ITEMS}'/></iq>")
    assert len(raw.next().find(f"{{{NS_ITEMS}}}query")) == 0


# --- the whole flow with a real client -------------------------------------------------------


async def test_slixmpp_uploads_and_the_get_url_serves_it(web: ServerProcess, ca_file: str) -> None:
    user = next(names.names())
    # Larger than [http] max_request_size (1 MiB): upload bodies are streamed to disk.
    body = os.urandom(1500000)
    client = SlixClient(f"{user}@localhost", ca_file, plugins=("xep_0363",))
    try:
        await client.online(web.port)
        url = await client.plugin["xep_0363"].upload_file(
            "photo.jpg", size=len(body), content_type="image/jpeg", input_file=io.BytesIO(body)
        )
    finally:
        client.disconnect()
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200
        assert await response.read() == body
        assert response.headers["Content-Type"] == "image/jpeg"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert "sandbox" in response.headers["Content-Security-Policy"]
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert response.headers["Content-Disposition"] == "inline; filename*=UTF-8''photo.jpg"


async def test_html_is_served_as_an_attachment_under_a_sandbox(raw: RawClient) -> None:
    page = b"<html><script>alert(1)</script></html>"
    put_url, get_url = slot_urls(ask_slot(raw, "x.html", len(page), "text/html"))
    assert await put(put_url, page, "text/html") == 201
    async with aiohttp.ClientSession() as http, http.get(get_url) as response:
        assert await response.read() == page
        assert response.headers["Content-Type"].startswith("text/html")
        assert response.headers["Content-Disposition"].startswith("attachment;")
        assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")


async def test_any_file_name_round_trips_in_the_url(raw: RawClient) -> None:
    name = "résumé 1 ?#%.txt"
    get_url = await upload(raw, b"cv", name)
    async with aiohttp.ClientSession() as http, http.get(get_url) as response:
        assert response.status == 200 and await response.read() == b"cv"
        disposition = response.headers["Content-Disposition"]
        assert disposition == "inline; filename*=UTF-8''r%C3%A9sum%C3%A9%201%20%3F%23%25.txt"


def test_without_an_http_listener_there_is_no_upload_service(
    server: ServerProcess, ca_file: str
) -> None:
    client = server.client()
    try:
        client.login(ca_file, "alice", PASSWORD)
        client.send(f"<iq type='get' id='items' to='localhost'><query xmlns='{NS_ITEMS}'/></iq>")
        items = client.next().find(f"{{{NS_ITEMS}}}query")
        assert not [i for i in items if i.get("jid", "").startswith("upload.")]
        # The domain is not served here, and there is no federation to send it to.
        assert stanza_error(ask_slot(client, "x.txt", 3)) == "remote-server-not-found"
    finally:
        client.close()


# --- hostile PUTs ----------------------------------------------------------------------------


async def test_put_with_a_wrong_signature_or_expiry_is_forbidden(raw: RawClient) -> None:
    body = b"0123456789"
    put_url, get_url = slot_urls(ask_slot(raw, "s.txt", len(body)))
    head, _, signature = put_url.rpartition("sig=")
    forged = "0" * len(signature) if signature[0] != "0" else "1" * len(signature)
    assert await put(head + "sig=" + forged, body) == 403
    # A later expiry, the signature unchanged: the signature covers it.
    expires = int(put_url.split("expires=")[1].split("&")[0])
    assert (
        await put(put_url.replace(f"expires={expires}", f"expires={expires + 3600}"), body) == 403
    )
    assert await put(get_url, body) == 403  # no signature at all
    # Those attempts did not spend the slot: its real URL works, once.
    assert await put(put_url, body) == 201
    assert await put(put_url, body) == 403


async def test_put_with_the_wrong_size_or_type_is_refused(raw: RawClient) -> None:
    body = b"x" * 100
    put_url, get_url = slot_urls(ask_slot(raw, "big.txt", len(body)))
    assert await put(put_url, body + b"extra") == 413  # §5: Content-Length is the slot's
    put_url, get_url = slot_urls(ask_slot(raw, "small.txt", len(body)))
    assert await put(put_url, body[:50]) == 400
    put_url, get_url = slot_urls(ask_slot(raw, "type.txt", len(body)))
    assert await put(put_url, body, "text/html") == 400  # §5: the slot's Content-Type
    async with aiohttp.ClientSession() as http, http.get(get_url) as response:
        assert response.status == 404  # nothing was kept
    # A refused PUT spent its slot: §5 has the client ask for a new one.
    assert await put(put_url, body) == 403


async def test_expired_slot_is_forbidden(make_server, ca_file: str) -> None:  # type: ignore[no-untyped-def]
    srv = make_server(HTTP_LISTENER + "\n[upload]\nslot_timeout = 0.001\n")
    srv.adduser("alice@localhost")
    srv.start()
    client = srv.client()
    try:
        client.login(ca_file, "alice", PASSWORD)
        put_url, _ = slot_urls(ask_slot(client, "late.txt", 3))
        assert await put(put_url, b"abc") == 403
    finally:
        client.close()


async def test_stalled_or_dropped_upload_keeps_nothing(make_server, ca_file: str) -> None:  # type: ignore[no-untyped-def]
    srv = make_server(HTTP_LISTENER + "\n[http]\nidle_timeout = 1.0\n")
    srv.adduser("alice@localhost")
    srv.start()
    port = http_port(srv)
    tmp = srv.data_dir / "upload" / "tmp"
    client = srv.client()
    try:
        client.login(ca_file, "alice", PASSWORD)
        for stalls in (True, False):
            put_url, get_url = slot_urls(ask_slot(client, "part.bin", 100))
            target = put_url.split(str(port), 1)[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                f"PUT {target} HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\n"
                "Content-Length: 100\r\n\r\n".encode()
                + b"x" * 10
            )
            await writer.drain()
            file_id = urlsplit(get_url).path.split("/")[2]
            if stalls:
                # 90 bytes never come: after idle_timeout the server gives up, and closes
                # the connection after at most idle_timeout more (aiohttp would linger 10 s
                # reading the rest of the body).
                stalled_at = time.monotonic()
                answer = await reader.read()
                assert answer.startswith(b"HTTP/1.1 400"), answer
                assert time.monotonic() - stalled_at < 6, "the connection was kept"
            else:
                writer.close()
            srv.wait_for_log(f"upload {file_id} failed")
            writer.close()
            assert list(tmp.iterdir()) == []
            assert await status_of(get_url) == 404
            assert await put(put_url, b"x" * 100) == 403  # the slot is spent
        # The server serves the next upload as ever.
        assert await status_of(await upload(client, b"after", "after.txt")) == 200
    finally:
        client.close()


# --- GET: ranges, HEAD, CORS, traversal -------------------------------------------------------


async def test_range_and_head(raw: RawClient) -> None:
    body = bytes(range(256)) * 4
    get_url = await upload(raw, body, "bytes.bin")
    async with aiohttp.ClientSession() as http:
        async with http.get(get_url, headers={"Range": "bytes=10-19"}) as response:
            assert response.status == 206
            assert await response.read() == body[10:20]
            assert response.headers["Content-Range"] == f"bytes 10-19/{len(body)}"
        async with http.get(get_url, headers={"Range": "bytes=-5"}) as response:
            assert response.status == 206
            assert await response.read() == body[-5:]
        async with http.head(get_url) as response:
            assert response.status == 200
            assert response.headers["Content-Length"] == str(len(body))
            assert await response.read() == b""


async def test_cors_preflight(raw: RawClient, web: ServerProcess) -> None:
    put_url, _ = slot_urls(ask_slot(raw, "cors.txt", 5))
    async with (
        aiohttp.ClientSession() as http,
        http.options(
            put_url,
            headers={
                "Origin": "https://web.example",
                "Access-Control-Request-Method": "PUT",
                "Access-Control-Request-Headers": "content-type",
            },
        ) as response,
    ):
        assert response.status in (200, 204)
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert "PUT" in response.headers["Access-Control-Allow-Methods"]
        assert "Content-Type" in response.headers["Access-Control-Allow-Headers"]
    # The real request from that origin is allowed to be read too.
    async with (
        aiohttp.ClientSession() as http,
        http.put(
            put_url, data=b"hello", headers={"Content-Type": "text/plain", "Origin": "https://x"}
        ) as response,
    ):
        assert response.status == 201
        assert response.headers["Access-Control-Allow-Origin"] == "*"


async def test_path_traversal_reaches_nothing(raw: RawClient, web: ServerProcess) -> None:
    get_url = await upload(raw, b"mine", "mine.txt")
    file_id = urlsplit(get_url).path.split("/")[2]
    secret = (web.data_dir / "upload" / "secret").read_bytes()
    port = http_port(web)
    for path in (
        "/upload/../upload/secret",
        "/upload/..%2Fsecret/x",
        "/upload/%2e%2e/secret",
        "/upload/%2e%2e%2f%2e%2e%2fdata/secret",
        f"/upload/{file_id}/..%2F..%2Fsecret",
        f"/upload/{file_id}/../secret",
        "/upload/secret/secret",
        "/upload/tmp/x",
        "/upload/files/" + file_id,
    ):
        for method in ("GET", "PUT"):
            status, answer = await raw_request(
                port,
                f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n"
                "Connection: close\r\n\r\n".encode(),
            )
            assert 400 <= status < 500, (method, path, status)
            assert secret not in answer and b"mine" not in answer.split(b"\r\n\r\n", 1)[1]
    assert await status_of(get_url) == 200  # the file itself is still served


# --- XMPP errors (§4) ------------------------------------------------------------------------


def test_file_too_large_names_the_limit(raw: RawClient) -> None:
    error = error_of(ask_slot(raw, "huge.bin", MAX_FILE_SIZE + 1))
    assert error.get("type") == "modify"
    assert error.find("{urn:ietf:params:xml:ns:xmpp-stanzas}not-acceptable") is not None
    assert error.findtext(f"{{{NS_UPLOAD}}}file-too-large/{{{NS_UPLOAD}}}max-file-size") == str(
        MAX_FILE_SIZE
    )


def test_errors_carry_the_request(raw: RawClient) -> None:
    # §4's examples, RFC 6120 §8.3.1 (the original XML, a SHOULD): QXmpp 1.4, Kaidan's
    # library, recognizes a slot error only by the <request/> in it (and waited forever)
    reply = ask_slot(raw, "huge.bin", MAX_FILE_SIZE + 1, "application/octet-stream")
    assert reply.get("type") == "error"
    children = list(reply)
    assert [child.tag for child in children] == [f"{{{NS_UPLOAD}}}request", f"{{{CLIENT}}}error"]
    assert dict(children[0].attrib) == {
        "filename": "huge.bin",
        "size": str(MAX_FILE_SIZE + 1),
        "content-type": "application/octet-stream",
    }
    reply = ask_slot(raw, "a/b.txt", 10)  # bad-request, the same
    assert stanza_error(reply) == "bad-request"
    request = reply.find(f"{{{NS_UPLOAD}}}request")
    assert request is not None and request.get("filename") == "a/b.txt"


async def test_quota_reached_says_when_to_retry(raw: RawClient) -> None:
    await upload(raw, b"q" * 1500000, "first.bin")
    reply = ask_slot(raw, "second.bin", 1600000)
    error = error_of(reply)
    assert stanza_error(reply) == "resource-constraint" and error.get("type") == "wait"
    stamp = error.find(f"{{{NS_UPLOAD}}}retry").get("stamp")
    # XEP-0082 UTC; the first file expires after the default 30 days.
    retry_at = calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))
    assert 29 * 86400 < retry_at - time.time() <= 30 * 86400
    # What still fits is granted.
    slot_urls(ask_slot(raw, "third.bin", QUOTA - 1500000))


def test_pending_slots_are_bounded(raw: RawClient) -> None:
    for n in range(PENDING):
        slot_urls(ask_slot(raw, f"p{n}.txt", 10))
    reply = ask_slot(raw, "one-more.txt", 10)
    assert stanza_error(reply) == "resource-constraint"
    assert error_of(reply).find(f"{{{NS_UPLOAD}}}retry") is not None


@pytest.mark.parametrize(
    ("filename", "size"),
    [
        ("../etc/passwd", 10),
        ("a/b.txt", 10),
        ("a\\b.txt", 10),
        ("..", 10),
        ("", 10),
        ("tab\there", 10),
        ("x" * 256, 10),
        ("fine.txt", -1),
        ("fine.txt", "ten"),
        ("fine.txt", ""),
    ],
)
def test_bad_filename_or_size_is_a_bad_request(raw: RawClient, filename: str, size: object) -> None:
    assert stanza_error(ask_slot(raw, filename, str(size))) == "bad-request"


async def test_accounts_of_other_domains_may_not_upload(make_server, ca_file: str) -> None:  # type: ignore[no-untyped-def]
    srv = make_server(HTTP_LISTENER, hosts=("localhost", "example.test"))
    srv.adduser("carol@example.test")
    srv.start()
    client = srv.client()
    try:
        client.open_stream("example.test")
        client.starttls(ca_file, "example.test")
        client.sasl_scram("carol", PASSWORD)
        client.open_stream("example.test")
        client.bind()
        reply = ask_slot(client, "x.txt", 3)  # upload.localhost: not carol's host
        assert stanza_error(reply) == "not-allowed" and error_of(reply).get("type") == "cancel"
        slot_urls(ask_slot(client, "x.txt", 3, to="upload.example.test"))
    finally:
        client.close()


# --- lifetime: restart, expiry, account removal ----------------------------------------------


def on_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"127.0.0.1:{port}"))


async def status_of(url: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status


async def test_files_survive_a_restart_and_expire(make_server, ca_file: str) -> None:  # type: ignore[no-untyped-def]
    srv = make_server(HTTP_LISTENER)
    srv.adduser("alice@localhost")
    srv.start()
    client = srv.client()
    client.login(ca_file, "alice", PASSWORD)
    kept_url = await upload(client, b"kept", "kept.txt")
    old_url = await upload(client, b"old", "old.txt")
    client.close()
    srv.stop()
    srv.start()
    port = http_port(srv)
    assert await status_of(on_port(kept_url, port)) == 200
    assert await status_of(on_port(old_url, port)) == 200
    srv.stop()
    # Backdate one file past expire_after (30 days by default); the sweep at start finds it.
    old_file = srv.data_dir / "upload" / "files" / urlsplit(old_url).path.split("/")[2]
    month_ago = time.time() - 31 * 86400
    os.utime(old_file, (month_ago, month_ago))
    srv.start()
    srv.wait_for_log("upload sweep: 1 files removed")
    port = http_port(srv)
    assert await status_of(on_port(old_url, port)) == 404
    assert not old_file.exists()
    assert await status_of(on_port(kept_url, port)) == 200


async def test_files_go_with_their_account(make_server, ca_file: str) -> None:  # type: ignore[no-untyped-def]
    srv = make_server(HTTP_LISTENER)
    srv.adduser("alice@localhost")
    srv.adduser("bob@localhost")
    srv.start()
    files = srv.data_dir / "upload" / "files"
    # XEP-0077 §3.2 cancellation by the server: the files go at once.
    client = srv.client()
    client.login(ca_file, "alice", PASSWORD)
    alice_url = await upload(client, b"alice's", "a.txt")
    client.send("<iq type='set' id='bye'><query xmlns='jabber:iq:register'><remove/></query></iq>")
    assert client.next().get("type") == "result"
    client.close()
    assert await status_of(alice_url) == 404
    assert not (files / urlsplit(alice_url).path.split("/")[2]).exists()
    # The CLI's deluser purges the records: the file is no longer served, and the sweep
    # (at the next start) deletes the bytes.
    client = srv.client()
    client.login(ca_file, "bob", PASSWORD)
    bob_url = await upload(client, b"bob's", "b.txt")
    client.close()
    bob_file = files / urlsplit(bob_url).path.split("/")[2]
    assert bob_file.exists()
    result = run_cli("deluser", "bob@localhost", config=srv.config)
    assert result.returncode == 0, result.stderr
    assert await status_of(bob_url) == 404
    srv.stop()
    srv.start()
    srv.wait_for_log("upload sweep: 1 files removed")
    assert not bob_file.exists()


def test_plain_http_upload_urls_are_warned_about(web: ServerProcess, make_server: Any) -> None:
    """XEP-0363 §4: "The host MUST provide Transport Layer Security". Slots naming a plain
    http:// listener (no https [http] public_url, no tls = "direct") are logged as a warning
    at start; an https public_url is not."""
    web.wait_for_log("XEP-0363")
    assert "plain http://" in web.log_text()
    srv = make_server(HTTP_LISTENER + '\n[http]\npublic_url = "https://chat.example.org"\n')
    srv.start()
    srv.wait_for_log("file upload service upload.localhost")
    assert "XEP-0363" not in srv.log_text()


async def test_slots_name_the_https_listener_when_there_is_one(
    make_server: Any, ca_file: str
) -> None:
    """With a plain and an HTTPS http listener (as the default configuration has, on 5280 and
    5281), slots name the HTTPS one (XEP-0363 §4: the host MUST provide TLS) under the
    host's name: no warning, and the file goes up and comes back over TLS, the host's
    certificate checked against the URL as a client checks it."""
    https = HTTP_LISTENER + 'tls = "direct"\n'
    srv = make_server(HTTP_LISTENER + https)
    srv.adduser("alice@localhost")
    srv.start()
    port = http_port(srv, https=True)
    srv.wait_for_log("file upload service upload.localhost")
    assert "XEP-0363" not in srv.log_text()
    client = srv.client()
    try:
        client.login(ca_file, "alice", PASSWORD)
        put_url, get_url = slot_urls(ask_slot(client, "a.txt", 5))
    finally:
        client.close()
    for url in (put_url, get_url):
        # The host's name, which its certificate names (not the listener's address).
        assert urlsplit(url)[:2] == ("https", f"localhost:{port}"), url
    tls = ssl.create_default_context(cafile=ca_file)  # the name checked, as clients do
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls)) as http:
        async with http.put(put_url, data=b"hello", headers={"Content-Type": "text/plain"}) as r:
            assert r.status == 201
        async with http.get(get_url) as r:
            assert r.status == 200 and await r.read() == b"hello"
