"""A real browser client: headless Chromium (Debian's, driven by Selenium through Debian's
chromedriver) loads a page with Converse.js (npm, pinned in tests/interop/web) that the test
serves; Converse logs in over RFC 7395 WebSocket, and separately over XEP-0206 BOSH, chats
both ways with a slixmpp account and joins a room, and uploads a file (XEP-0363) that the
slixmpp account downloads. What the user would see is read from the page's DOM. On
failure a screenshot of the page is written under the test's tmp dir (its path is printed).

`make interop-deps` installs chromium, chromium-driver and Converse.js."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import PASSWORD, ServerProcess
from slix_client import SlixClient
from ws_client import HTTP_LISTENER, http_port

WEB_DIR = Path(__file__).parent / "interop" / "web"
CONVERSE_DIST = WEB_DIR / "node_modules" / "converse.js" / "dist"
ROOM = "web@conference.localhost"
PAGE_TIMEOUT = 60.0  # seconds the page may take to show what is expected (a loaded machine)


def require_browser() -> tuple[str, str]:
    """Chromium and its driver (Debian) and Converse.js (npm): there, or a loud failure."""
    chromium = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None or not (CONVERSE_DIST / "converse.min.js").exists():
        pytest.fail(
            "the browser test needs chromium, chromium-driver (apt) and Converse.js "
            "(npm ci in tests/interop/web): run `make interop-deps`"
        )
    return chromium, driver


def start_browser(chromium: str, driver: str) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in CI containers
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
    ):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


class Page:
    """The browser's page, called from the test's event loop (Selenium blocks: a thread)."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    async def run(self, script: str, *args: Any) -> Any:
        return await asyncio.to_thread(self.driver.execute_script, script, *args)

    async def until(self, script: str, *args: Any, what: str) -> Any:
        """Poll `script` (JavaScript returning a value) until it is truthy."""
        deadline = time.monotonic() + PAGE_TIMEOUT
        while True:
            value = await self.run(script, *args)
            if value:
                return value
            assert time.monotonic() < deadline, f"the page never showed {what}"
            await asyncio.sleep(0.25)

    async def texts(self, selector: str) -> list[str]:
        return list(
            await self.run(
                "return Array.from(document.querySelectorAll(arguments[0]))"
                ".map(e => e.textContent.trim())",
                selector,
            )
        )

    async def until_text(self, selector: str, text: str) -> None:
        await self.until(
            "return Array.from(document.querySelectorAll(arguments[0]))"
            ".some(e => e.textContent.includes(arguments[1]))",
            selector,
            text,
            what=f"{text!r} in {selector}",
        )


@contextlib.asynccontextmanager
async def converse_with_bob(
    web_server: ServerProcess, page_url: str, ca_file: str, screenshot: Path, *plugins: str
) -> AsyncIterator[tuple[Page, SlixClient]]:
    """bob online with slixmpp, and the page open in Chromium with Converse logged in as
    alice; on failure the page's screenshot, its console and the server's log are shown."""
    chromium, driver_path = require_browser()
    bob = SlixClient("bob@localhost", ca_file, plugins=plugins)
    await bob.online(web_server.port)
    driver = await asyncio.to_thread(start_browser, chromium, driver_path)
    page = Page(driver)
    try:
        await asyncio.to_thread(driver.get, page_url)
        await page.until(
            "return !!(window.fastxmppApi && fastxmppApi.connection.connected())",
            what="a connected session",
        )
        yield page, bob
    except BaseException:
        await show_failure(driver, screenshot, web_server)
        raise
    finally:
        await asyncio.to_thread(driver.quit)
        bob.disconnect()


async def show_failure(driver: Any, screenshot: Path, web_server: ServerProcess) -> None:
    """What a failed test shows: the page's screenshot, its console, the server's log."""
    await asyncio.to_thread(driver.save_screenshot, str(screenshot))
    print(f"screenshot of the page: {screenshot}")
    console = await asyncio.to_thread(driver.get_log, "browser")
    print("the page's console, last lines:")
    for entry in console[-40:]:
        print(f"  {entry['level']} {entry['message'][:400]}")
    print("the server's log, last lines:\n" + "".join(web_server.log[-40:]))


async def join_when_unlocked(client: SlixClient) -> None:
    """slixmpp joins ROOM once Converse, its creator, has configured it: until then the room
    is locked and answers item-not-found (XEP-0045 §10.1.1)."""
    deadline = time.monotonic() + PAGE_TIMEOUT
    while True:
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def presence(stanza: Any, answer: asyncio.Future[Any] = answer) -> None:
            if str(stanza["from"]) == f"{ROOM}/bob" and not answer.done():
                answer.set_result(stanza)

        # Errors come as plain presence events, our own occupant presence as the plugin's.
        events = ("presence", f"muc::{ROOM}::self-presence")
        for event in events:
            client.add_event_handler(event, presence)
        try:
            client.plugin["xep_0045"].join_muc(ROOM, "bob", maxhistory="0")
            reply = await asyncio.wait_for(answer, PAGE_TIMEOUT)
        finally:
            for event in events:
                client.del_event_handler(event, presence)
        if reply["type"] != "error":
            return
        assert reply["error"]["condition"] == "item-not-found", reply
        assert time.monotonic() < deadline, "the room stayed locked"
        await asyncio.sleep(0.2)


@pytest.fixture
def web_server(make_server: Any) -> Iterator[ServerProcess]:
    # ws:// on loopback, as a page served over http://127.0.0.1 connects (no TLS proxy).
    srv: ServerProcess = make_server(
        HTTP_LISTENER + "\n[http]\nconsider_websocket_secure = true\nconsider_bosh_secure = true\n"
    )
    for user in ("alice", "bob"):
        srv.adduser(f"{user}@localhost")
    srv.start()
    yield srv


@pytest.fixture(params=["websocket", "bosh"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def page_url(web_server: ServerProcess, transport: str) -> AsyncIterator[str]:
    """The test's web server: the page, Converse.js, and the configuration it starts with
    (its connection over RFC 7395 WebSocket or XEP-0206 BOSH)."""
    port = http_port(web_server)
    if transport == "websocket":
        endpoint = {"websocket_url": f"ws://127.0.0.1:{port}/xmpp-websocket"}
    else:
        endpoint = {"bosh_service_url": f"http://127.0.0.1:{port}/http-bind"}
    config = {
        **endpoint,
        "jid": "alice@localhost",
        "password": PASSWORD,
        "auto_login": True,
        "auto_reconnect": False,
        "discover_connection_methods": False,
        "view_mode": "fullscreen",
        "assets_path": "/dist/",
        "whitelisted_plugins": ["fastxmpp-test"],
        "allow_non_roster_messaging": True,
        "play_sounds": False,
        "show_desktop_notifications": False,
        "i18n": "en",
        "loglevel": "info",
    }
    index = WEB_DIR / "index.html"

    async def page(_request: web.Request) -> web.FileResponse:
        return web.FileResponse(index)

    async def configuration(_request: web.Request) -> web.Response:
        return web.json_response(config)

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/config.json", configuration)
    app.router.add_static("/dist/", CONVERSE_DIST)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/"
    await runner.cleanup()


async def next_chat_message(client: SlixClient) -> Any:
    """The next message with a body that `client` receives (chat states have none)."""
    while True:
        message = await asyncio.wait_for(client.messages.get(), PAGE_TIMEOUT)
        if message["body"]:
            return message


async def test_converse_chats_and_joins_a_room(
    web_server: ServerProcess, page_url: str, transport: str, ca_file: str, tmp_path: Path
) -> None:
    shot = tmp_path / f"converse-{transport}.png"
    async with converse_with_bob(web_server, page_url, ca_file, shot, "xep_0045") as (page, bob):
        # Logged in: the server bound it over `transport`.
        web_server.wait_for_log("bound alice@localhost/")
        web_server.wait_for_log(
            "WebSocket (encrypted)" if transport == "websocket" else "BOSH session (encrypted)"
        )

        # slixmpp -> browser: the contact list shows the sender, and the chat with him the
        # message.
        bob.send_message(mto="alice@localhost", mbody="hello from slixmpp", mtype="chat")
        await page.until_text("converse-roster", "bob@localhost")
        await page.run("fastxmppApi.chats.open('bob@localhost')")
        await page.until_text("converse-chat .chat-msg__text", "hello from slixmpp")

        # browser -> slixmpp: typed into that chat's text area, sent with Enter.
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        textarea = await asyncio.to_thread(
            page.driver.find_element, By.CSS_SELECTOR, "converse-chat textarea.chat-textarea"
        )
        await asyncio.to_thread(textarea.send_keys, "hello from converse", Keys.ENTER)
        message = await next_chat_message(bob)
        assert message["body"] == "hello from converse"
        assert message["from"].bare == "alice@localhost"
        assert message["type"] == "chat"

        # A room: Converse creates and joins it, slixmpp joins, both talk.
        await page.run("fastxmppApi.rooms.open(arguments[0], {nick: 'alice'}, true)", ROOM)
        await page.until_text("converse-muc .occupant-nick", "alice")
        await join_when_unlocked(bob)
        await page.until_text("converse-muc .occupant-nick", "bob")
        bob.send_message(mto=ROOM, mbody="hello room", mtype="groupchat")
        await page.until_text("converse-muc .chat-msg__text", "hello room")


@pytest.mark.parametrize("transport", ["websocket"])
async def test_converse_uploads_a_file_and_the_contact_downloads_it(
    web_server: ServerProcess, page_url: str, transport: str, ca_file: str, tmp_path: Path
) -> None:
    """XEP-0363 from the browser, as Converse.js does it: the upload service found in the
    domain's disco#items, a slot, the PUT from the page (a cross-origin request: the CORS
    preflight), then the message with the URL (XEP-0066 <x/>), which slixmpp receives and
    whose URL serves the bytes."""
    import aiohttp

    shot = tmp_path / "converse-upload.png"
    async with converse_with_bob(web_server, page_url, ca_file, shot) as (page, bob):
        await page.run(
            "return fastxmppApi.chats.open('bob@localhost').then((chat) => chat.sendFiles("
            "[new File(['hello from the browser'], 'note.txt', {type: 'text/plain'})]))"
        )
        message = await next_chat_message(bob)
        url = message["body"]
        assert message["from"].bare == "alice@localhost"
        oob = message.xml.find("{jabber:x:oob}x/{jabber:x:oob}url")
        assert oob is not None and oob.text == url, message
        # The host's name and the http listener's port (the page came from 127.0.0.1:
        # the PUT was cross-origin).
        assert url.startswith(f"http://localhost:{http_port(web_server)}/upload/"), url
        assert url.endswith("/note.txt"), url
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            assert response.status == 200
            assert await response.read() == b"hello from the browser"
