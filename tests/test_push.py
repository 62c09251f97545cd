"""XEP-0357 push notifications: raw clients register app servers; the app server is slixmpp's
ComponentXMPP on a XEP-0114 component (an independent XML implementation reading our
notifications). Checked: what triggers a notification (offline, detached under XEP-0198, not a
live client), its summary form and publish-options, throttling, disable, an app server's
refusal, persistence across a restart, and the errors of enable/disable."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trustme
from conftest import PASSWORD, FreshNames, ServerProcess, module_server
from slixmpp.componentxmpp import ComponentXMPP
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath
from xmpp_raw import CLIENT, RawClient, stanza_error

logging.getLogger("slixmpp").setLevel(logging.WARNING)

APP = "push.localhost"
SECRET = "the app server's component secret"
NS_PUSH = "urn:xmpp:push:0"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_DATA = "jabber:x:data"
COMPONENT = "jabber:component:accept"
SETTINGS = f"""
[[listeners]]
kind = "component"
address = "127.0.0.1"
port = 0

[components."{APP}"]
secret = "{SECRET}"

[push]
min_interval = 0.5
max_registrations = 3
"""
POOL = FreshNames("push", 40)
NAMES = POOL.names()
LISTENING = re.compile(r"component listening on ([\d.]+):(\d+)")


@pytest.fixture(scope="module")
def srv(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(ca, tmp_path_factory, POOL, SETTINGS)


def component_port(server: ServerProcess) -> int:
    server.wait_for_log("component listening on")
    match = LISTENING.search(server.log_text())
    assert match, server.log_text()
    return int(match.group(2))


class Notification:
    def __init__(self, iq: Any) -> None:
        xml = iq.xml
        self.account = str(iq["from"])
        self.to = str(iq["to"])
        publish = xml.find(f"{{{NS_PUBSUB}}}pubsub/{{{NS_PUBSUB}}}publish")
        self.node = publish.get("node")
        form = publish.find(f"{{{NS_PUBSUB}}}item/{{{NS_PUSH}}}notification/{{{NS_DATA}}}x")
        self.summary = {
            field.get("var"): field.findtext(f"{{{NS_DATA}}}value")
            for field in form.findall(f"{{{NS_DATA}}}field")
        }
        options = xml.find(f"{{{NS_PUBSUB}}}pubsub/{{{NS_PUBSUB}}}publish-options/{{{NS_DATA}}}x")
        self.options = (
            {}
            if options is None
            else {
                field.get("var"): field.findtext(f"{{{NS_DATA}}}value")
                for field in options.findall(f"{{{NS_DATA}}}field")
            }
        )


class AppServer(ComponentXMPP):
    """An XEP-0357 app server: takes each notification, answers it (an error for the nodes
    in `refuse`)."""

    def __init__(self) -> None:
        super().__init__(APP, SECRET)
        self.notifications: asyncio.Queue[Notification] = asyncio.Queue()
        self.refuse: set[str] = set()
        self.ready = asyncio.get_running_loop().create_future()
        self.add_event_handler("session_start", lambda _e: self.ready.set_result(True))
        self.register_handler(
            Callback(
                "push",
                MatchXPath(f"{{{COMPONENT}}}iq/{{{NS_PUBSUB}}}pubsub"),
                self._publish,
            )
        )

    def _publish(self, iq: Any) -> None:
        note = Notification(iq)
        if note.node in self.refuse:
            reply = iq.reply(clear=True)
            reply["type"] = "error"
            reply["error"]["type"] = "cancel"
            reply["error"]["condition"] = "item-not-found"
            reply.send()
        else:
            iq.reply(clear=True).send()
        self.notifications.put_nowait(note)

    async def online(self, port: int) -> None:
        self.connect("127.0.0.1", port)
        await asyncio.wait_for(self.ready, 20)

    async def next(self) -> Notification:
        return await asyncio.wait_for(self.notifications.get(), 10)


@pytest.fixture
async def app(srv: ServerProcess) -> Any:
    server = AppServer()
    await server.online(component_port(srv))
    yield server
    server.disconnect()
    await asyncio.sleep(0.1)


def login(srv: ServerProcess, ca_file: str, user: str, resource: str = "phone") -> RawClient:
    c = srv.client()
    c.login(ca_file, user, PASSWORD, resource)
    return c


def ask(c: RawClient, xml: str) -> Any:
    stanza_id = f"q{time.monotonic_ns()}"
    c.send(xml.replace("<iq ", f"<iq id='{stanza_id}' ", 1))
    while True:
        el = c.next()
        if el.get("id") == stanza_id:
            return el


def enable(c: RawClient, node: str, secret: str | None = "s3cr3t", jid: str = APP) -> Any:
    form = ""
    if secret is not None:
        form = (
            f"<x xmlns='{NS_DATA}' type='submit'>"
            f"<field var='FORM_TYPE'><value>{NS_PUBSUB}#publish-options</value></field>"
            f"<field var='secret'><value>{secret}</value></field></x>"
        )
    return ask(
        c,
        f"<iq type='set'><enable xmlns='{NS_PUSH}' jid='{jid}' node='{node}'>{form}</enable></iq>",
    )


def register(srv: ServerProcess, ca_file: str, user: str, *nodes: str) -> None:
    c = login(srv, ca_file, user, "setup")
    try:
        for node in nodes:
            assert enable(c, node).get("type") == "result"
    finally:
        c.close()


def message(srv: ServerProcess, ca_file: str, sender: str, to: str, body: str = "hi") -> None:
    c = login(srv, ca_file, sender, "desk")
    try:
        c.send(f"<message to='{to}@localhost' type='chat'><body>{body}</body></message>")
        ask(c, "<iq type='get'><ping xmlns='urn:xmpp:ping'/></iq>")  # handled in order
    finally:
        c.close()


async def test_an_offline_message_is_pushed_with_its_summary(
    srv: ServerProcess, ca_file: str, app: AppServer
) -> None:
    user, sender = next(NAMES), next(NAMES)
    register(srv, ca_file, user, "device-1")
    message(srv, ca_file, sender, user, "a secret body")
    note = await app.next()
    assert note.account == f"{user}@localhost"  # from the account's bare JID (§6)
    assert note.to == APP
    assert note.node == "device-1"
    assert note.summary["FORM_TYPE"] == "urn:xmpp:push:summary"
    assert note.summary["message-count"] == "1"
    assert note.summary["last-message-sender"] == f"{sender}@localhost/desk"
    assert "last-message-body" not in note.summary  # [push] include_body is off
    assert note.options == {
        "FORM_TYPE": "http://jabber.org/protocol/pubsub#publish-options",
        "secret": "s3cr3t",
    }


async def test_messages_a_live_client_gets_are_not_pushed(
    srv: ServerProcess, ca_file: str, app: AppServer
) -> None:
    user, live_sender, later_sender = next(NAMES), next(NAMES), next(NAMES)
    register(srv, ca_file, user, "device-1")
    client = login(srv, ca_file, user)
    client.send("<presence/>")
    try:
        message(srv, ca_file, live_sender, user, "you are here")
        got = client.next()
        while got.tag != f"{{{CLIENT}}}message":
            got = client.next()
    finally:
        client.close()
    message(srv, ca_file, later_sender, user, "you are gone")
    note = await app.next()
    # The first notification is for the message that found nobody.
    assert note.summary["last-message-sender"] == f"{later_sender}@localhost/desk"
    assert note.summary["message-count"] == "1"


async def test_a_session_detached_under_stream_management_gets_a_push(
    srv: ServerProcess, ca_file: str, app: AppServer
) -> None:
    user, sender = next(NAMES), next(NAMES)
    register(srv, ca_file, user, "device-1")
    client = login(srv, ca_file, user)
    client.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
    assert client.next().tag == "{urn:xmpp:sm:3}enabled"
    client.send("<presence/>")
    ask(client, "<iq type='get'><ping xmlns='urn:xmpp:ping'/></iq>")
    client.abort()  # the phone went into a tunnel: the session waits to be resumed
    await asyncio.sleep(0.5)  # for the server to see the connection go
    message(srv, ca_file, sender, user, "wake up")
    note = await app.next()
    assert note.account == f"{user}@localhost"
    assert note.summary["last-message-sender"] == f"{sender}@localhost/desk"


async def test_a_connected_client_in_the_background_that_enabled_push_is_woken(
    srv: ServerProcess, ca_file: str, app: AppServer
) -> None:
    """XEP-0352 inactive + a registration made on that very session: the client asked to be
    woken (iOS suspends a backgrounded app while its connection stays up). Registrations of
    other devices are not notified for a message that reached a connected client."""
    user, sender = next(NAMES), next(NAMES)
    register(srv, ca_file, user, "a-other-device")  # enabled from another resource
    phone = login(srv, ca_file, user, "phone")
    try:
        assert enable(phone, "b-phone").get("type") == "result"
        phone.send("<presence/><inactive xmlns='urn:xmpp:csi:0'/>")
        ask(phone, "<iq type='get'><ping xmlns='urn:xmpp:ping'/></iq>")
        message(srv, ca_file, sender, user, "are you there?")
        note = await app.next()
        # Registrations are notified in node order: "a-other-device" would come first.
        assert note.node == "b-phone"
        assert note.summary["last-message-sender"] == f"{sender}@localhost/desk"
    finally:
        phone.close()


async def test_notifications_are_throttled_per_registration(
    srv: ServerProcess, ca_file: str, app: AppServer
) -> None:
    user, sender = next(NAMES), next(NAMES)
    register(srv, ca_file, user, "device-1")
    c = login(srv, ca_file, sender, "desk")
    try:
        for i in range(5):
            c.send(f"<message to='{user}@localhost' type='chat'><body>{i}</body></message>")
        ask(c, "<iq type='get'><ping xmlns='urn:xmpp:ping'/></iq>")
    finally:
        c.close()
    counts = [int((await app.next()).summary["message-count"])]
    while sum(counts) < 5:
        counts.append(int((await app.next()).summary["message-count"]))
    # One right away, the rest together after min_interval: never one per message.
    assert sum(counts) == 5
    assert len(counts) == 2, counts


async def test_disable_and_a_refusing_app_server_end_registrations(
    srv: ServerProcess, ca_file: str, app: AppServer
) -> None:
    user, sender = next(NAMES), next(NAMES)
    register(srv, ca_file, user, "a-gone", "b-refused", "c-kept")
    c = login(srv, ca_file, user, "setup")
    try:
        reply = ask(
            c, f"<iq type='set'><disable xmlns='{NS_PUSH}' jid='{APP}' node='a-gone'/></iq>"
        )
        assert reply.get("type") == "result"
    finally:
        c.close()
    app.refuse.add("b-refused")
    message(srv, ca_file, sender, user)
    # Registrations are notified in node order: a disabled "a-gone" would come first.
    first, second = await app.next(), await app.next()
    assert [first.node, second.node] == ["b-refused", "c-kept"]
    await asyncio.sleep(0.7)  # past min_interval, and the refusal has been handled
    message(srv, ca_file, sender, user)
    assert (await app.next()).node == "c-kept"  # "b-refused" is gone


async def test_registrations_survive_a_restart_and_the_body_is_opt_in(
    ca: trustme.CA, tmp_path: Any, ca_file: str
) -> None:
    srv = ServerProcess(tmp_path, ca, ("localhost",), SETTINGS + "include_body = true\n")
    for name in ("owner", "sender"):
        srv.adduser(f"{name}@localhost")
    srv.start()
    try:
        register(srv, ca_file, "owner", "device-1")
        srv.stop()
        srv.start()
        app = AppServer()
        await app.online(component_port(srv))
        try:
            message(srv, ca_file, "sender", "owner", "see you at 8")
            note = await app.next()
            assert note.node == "device-1"
            assert note.summary["last-message-body"] == "see you at 8"
        finally:
            app.disconnect()
            await asyncio.sleep(0.1)
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("xml", "condition"),
    [
        (f"<iq type='set'><enable xmlns='{NS_PUSH}' node='n'/></iq>", "bad-request"),
        (f"<iq type='set'><enable xmlns='{NS_PUSH}' jid='{APP}'/></iq>", "bad-request"),
        (f"<iq type='set'><enable xmlns='{NS_PUSH}' jid='a@@b' node='n'/></iq>", "jid-malformed"),
        (f"<iq type='get'><enable xmlns='{NS_PUSH}' jid='{APP}' node='n'/></iq>", "bad-request"),
        (f"<iq type='set' to='push39@localhost'><enable xmlns='{NS_PUSH}' jid='{APP}' node='n'/></iq>",  # noqa: E501
         "forbidden"),
        (f"<iq type='set'><enable xmlns='{NS_PUSH}' jid='{APP}' node='n'><x xmlns='{NS_DATA}' type='submit'><field var='FORM_TYPE'><value>urn:other</value></field></x></enable></iq>",  # noqa: E501
         "bad-request"),
    ],
)  # fmt: skip
def test_enable_errors(srv: ServerProcess, ca_file: str, xml: str, condition: str) -> None:
    c = login(srv, ca_file, next(NAMES))
    try:
        assert stanza_error(ask(c, xml)) == condition
    finally:
        c.close()


def test_registrations_per_account_are_bounded_and_push_is_in_disco(
    srv: ServerProcess, ca_file: str
) -> None:
    user = next(NAMES)
    c = login(srv, ca_file, user)
    try:
        for node in ("n1", "n2", "n3"):
            assert enable(c, node).get("type") == "result"
        assert enable(c, "n1", secret="new").get("type") == "result"  # a replacement
        assert stanza_error(enable(c, "n4")) == "resource-constraint"
        info = ask(
            c,
            f"<iq type='get' to='{user}@localhost'>"
            "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        )
        features = {f.get("var") for f in info.iter("{*}feature")}
        assert NS_PUSH in features
    finally:
        c.close()
