"""nbxmpp (Gajim's XMPP library, Debian's python3-nbxmpp) against a running fastxmpp: one
scenario per run, driven by tests/test_interop_nbxmpp.py. Runs under Debian's /usr/bin/python3
(the package is built for it, with PyGObject), not under the test suite's virtual environment.

    scenarios.py SCENARIO --port PORT --ca CA_FILE --password PW --users A,B [--http-port P]

Each client connects the way Gajim does: STARTTLS on the given port (a custom host, as Gajim's
account setting), the server's certificate verified against the test CA (GLib's default TLS
database replaced by one holding the CA only, so no error is ignored), SASL with the strongest
mechanism offered, bind, XEP-0198 enabled right after. The flows then use nbxmpp's own modules,
so the stanzas are the ones Gajim sends. Prints what the clients saw as one JSON object on
stdout; the test asserts on it. A step that does not complete in STEP_TIMEOUT seconds fails
with exit code 1 and names what it awaited, with each client's last stanzas on stderr.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import json
import logging
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import gi

gi.require_version("GLib", "2.0")
gi.require_version("Gio", "2.0")
from gi.repository import Gio, GLib  # noqa: E402
from nbxmpp.client import Client  # noqa: E402
from nbxmpp.const import ConnectionProtocol, ConnectionType  # noqa: E402
from nbxmpp.modules.bookmarks.native_bookmarks import (  # noqa: E402
    BOOKMARK_OPTIONS as NATIVE_BOOKMARK_OPTIONS,
)
from nbxmpp.modules.bookmarks.pep_bookmarks import (  # noqa: E402
    BOOKMARK_OPTIONS as PEP_BOOKMARK_OPTIONS,
)
from nbxmpp.modules.bookmarks.util import (  # noqa: E402
    build_conference_node,
    build_storage_node,
)
from nbxmpp.modules.user_avatar import Avatar  # noqa: E402
from nbxmpp.modules.vcard_temp import VCard  # noqa: E402
from nbxmpp.namespaces import Namespace  # noqa: E402
from nbxmpp.protocol import JID, Iq, Message, NodeProcessed, Presence  # noqa: E402
from nbxmpp.structs import (  # noqa: E402
    BookmarkData,
    DiscoIdentity,
    OMEMOBundle,
    StanzaHandler,
)

STEP_TIMEOUT = 10.0
NEW_PASSWORD = "a new horse"
CAPS_NODE = "https://gajim.org"
# What Gajim 1.7 advertises (gajim/common/const.py, features with +notify included), so the
# server learns its PEP interests through caps (XEP-0115, XEP-0163 §4.3.2).
FEATURES = [
    "http://jabber.org/protocol/bytestreams",
    "http://jabber.org/protocol/caps",
    "http://jabber.org/protocol/chatstates",
    "http://jabber.org/protocol/disco#info",
    "http://jabber.org/protocol/disco#items",
    "http://jabber.org/protocol/muc",
    "http://jabber.org/protocol/nick+notify",
    "jabber:iq:last",
    "jabber:iq:version",
    "jabber:x:conference",
    "urn:xmpp:avatar:metadata+notify",
    "urn:xmpp:bookmarks:1+notify",
    "urn:xmpp:chat-markers:0",
    "urn:xmpp:message-correct:0",
    "urn:xmpp:ping",
    "urn:xmpp:receipts",
    "urn:xmpp:time",
    "eu.siacs.conversations.axolotl.devicelist+notify",
]
IDENTITIES = [DiscoIdentity(category="client", type="pc", name="Gajim")]
# A 1x1 PNG: the avatar's bytes.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


class StepFailed(Exception):
    pass


def wait(what: str, done: Callable[[], bool], timeout: float = STEP_TIMEOUT) -> None:
    """Run GLib's main loop until `done()`; fail naming `what` after `timeout` seconds."""
    context = GLib.MainContext.default()
    deadline = time.monotonic() + timeout
    ticker = GLib.timeout_add(50, lambda: True)  # wakes the loop to look at the clock
    try:
        while not done():
            if time.monotonic() > deadline:
                raise StepFailed(f"timed out waiting for {what}")
            context.iteration(True)
    finally:
        GLib.source_remove(ticker)


def settle(seconds: float) -> None:
    """Let the loop run a while: for what must NOT arrive."""
    end = time.monotonic() + seconds
    wait("nothing", lambda: time.monotonic() >= end, seconds + 1)


def outcome(what: str, task: Any) -> tuple[bool, Any]:
    """Wait for an nbxmpp task: (True, its result) or (False, its error). nbxmpp clears a
    task's result once its callbacks ran, so it is taken in a callback."""
    got: list[tuple[bool, Any]] = []

    def done(finished: Any) -> None:
        try:
            got.append((True, finished.finish()))
        except Exception as error:
            got.append((False, error))

    if task.state.is_init or task.state.is_running:
        task.add_done_callback(done, weak=False)
    else:
        raise StepFailed(f"{what}: the task ended at once (nbxmpp logged why on stderr)")
    wait(what, lambda: bool(got))
    return got[0]


def result_of(what: str, task: Any) -> Any:
    """Wait for an nbxmpp task; its result, or StepFailed with its error."""
    ok, value = outcome(what, task)
    if not ok:
        raise StepFailed(f"{what} failed: {value!r}")
    return value


def error_of(what: str, task: Any) -> Any:
    """Wait for a task expected to fail; its error."""
    ok, value = outcome(what, task)
    if ok:
        raise StepFailed(f"{what} succeeded ({value!r}), an error was expected")
    return value


class Gajim:
    """One nbxmpp client set up as Gajim sets up its account's client."""

    clients: ClassVar[list[Gajim]] = []

    def __init__(
        self, args: argparse.Namespace, user: str, resource: str, password: str | None = None
    ) -> None:
        self.args = args
        self.user = user
        self.bare = f"{user}@localhost"
        self.resource = resource
        self.connected = False
        self.dropping = False
        self.failure: str | None = None
        self.messages: list[tuple[Any, Any]] = []  # (stanza, properties)
        self.presences: list[tuple[Any, Any]] = []
        self.iq_sets: list[tuple[Any, Any]] = []
        self.traffic: list[str] = []
        self.sm_acks: list[int] = []
        client = Client(log_context=f"{user}/{resource}")
        client.set_domain("localhost")
        client.set_username(user)
        client.set_password(password or args.password)
        client.set_resource(resource)
        client.set_custom_host(
            f"127.0.0.1:{args.port}", ConnectionProtocol.TCP, ConnectionType.START_TLS
        )
        client.subscribe("connected", self._on_connected)
        client.subscribe("connection-failed", self._on_failed)
        client.subscribe("disconnected", self._on_disconnected)
        client.subscribe("stanza-sent", self._on_traffic)
        client.subscribe("stanza-received", self._on_traffic)
        client.register_handler(StanzaHandler(name="message", callback=self._on_message))
        client.register_handler(StanzaHandler(name="presence", callback=self._on_presence))
        client.register_handler(
            StanzaHandler(name="iq", callback=self._on_iq_set, typ="set", priority=10)
        )
        self.client = client
        Gajim.clients.append(self)

    # ----- connection

    def connect(self) -> Gajim:
        self.client.connect()
        wait(
            f"{self.bare}/{self.resource} to connect",
            lambda: self.connected or self.failure is not None,
        )
        if self.failure is not None:
            raise StepFailed(f"{self.bare} could not connect: {self.failure}")
        return self

    def _on_connected(self, _client: Any, _signal: str) -> None:
        self.connected = True

    def _on_failed(self, client: Any, _signal: str) -> None:
        self.failure = f"connection failed: {client.get_error()}"

    def _on_disconnected(self, client: Any, _signal: str) -> None:
        if not self.dropping:
            self.failure = f"disconnected: {client.get_error()}"
        self.connected = False
        self.dropping = False

    def resume(self) -> None:
        """After the network went away under Gajim (ping timeout, network change: the socket
        closed without ending the stream), its reconnect resumes (XEP-0198 §5)."""
        resumed: list[bool] = []
        self.client.subscribe("resume-successful", lambda *_: resumed.append(True))
        self.client.subscribe("resume-failed", lambda *_: resumed.append(False))
        self.client.connect()
        wait(
            f"{self.bare}/{self.resource} to resume",
            lambda: bool(resumed) or self.failure is not None,
        )
        if self.failure is not None or not resumed[0]:
            raise StepFailed(f"resumption failed: {self.failure or 'resume-failed'}")

    def _on_traffic(self, _client: Any, signal: str, data: Any) -> None:
        self.traffic.append(f"{'>>' if signal == 'stanza-sent' else '<<'} {data}")
        del self.traffic[:-60]

    def _on_message(self, _client: Any, stanza: Any, properties: Any) -> None:
        self.messages.append((stanza, properties))

    def _on_presence(self, _client: Any, stanza: Any, properties: Any) -> None:
        self.presences.append((stanza, properties))

    def _on_iq_set(self, _client: Any, stanza: Any, properties: Any) -> None:
        self.iq_sets.append((stanza, properties))
        if properties.is_roster or properties.is_blocking:
            # Gajim's own handlers take the pushes nbxmpp's modules acknowledged; without
            # this the dispatcher would answer feature-not-implemented on top.
            raise NodeProcessed

    @property
    def jid(self) -> str:
        return str(self.client.get_bound_jid())

    def module(self, name: str) -> Any:
        return self.client.get_module(name)

    def iq(self, what: str, iq: Any) -> Any:
        """Send an iq as Gajim's own modules do (raw nbxmpp.Iq); wait for the reply."""
        replies: list[Any] = []
        self.client.SendAndCallForResponse(iq, lambda _c, stanza: replies.append(stanza))
        wait(what, lambda: bool(replies))
        return replies[0]

    def wait_message(self, what: str, match: Callable[[Any, Any], bool]) -> tuple[Any, Any]:
        return self._wait_for(what, self.messages, match)

    def wait_presence(self, what: str, match: Callable[[Any, Any], bool]) -> tuple[Any, Any]:
        return self._wait_for(what, self.presences, match)

    def _wait_for(
        self, what: str, received: list[tuple[Any, Any]], match: Callable[[Any, Any], bool]
    ) -> tuple[Any, Any]:
        """The first of `received` (stanza, properties pairs, growing as they arrive) that
        `match` accepts, waiting for it."""
        found: list[tuple[Any, Any]] = []

        def done() -> bool:
            found[:] = [r for r in received if match(*r)]
            return bool(found)

        wait(f"{self.bare}/{self.resource}: {what}", done)
        return found[0]

    # ----- what Gajim does once connected (gajim/common/client.py, _on_connected and the
    # modules it starts)

    def login_flow(self, report: dict[str, Any]) -> None:
        features = self.client.features
        report["sm_supported"] = self.client.sm_supported
        report["roster_versioning"] = features.has_roster_version()
        roster = result_of("roster get", self.module("Roster").request_roster())
        report["roster"] = {
            "version": roster.version,
            "items": sorted(str(item.jid) for item in roster.items or []),
        }
        server = result_of(
            "disco#info of the server", self.module("Discovery").disco_info("localhost")
        )
        report["server_features"] = sorted(server.features)
        report["server_identities"] = sorted(f"{i.category}/{i.type}" for i in server.identities)
        items = result_of(
            "disco#items of the server", self.module("Discovery").disco_items("localhost")
        )
        report["server_items"] = sorted(str(item.jid) for item in items.items)
        account = result_of(
            "disco#info of the account", self.module("Discovery").disco_info(self.bare)
        )
        report["account_features"] = sorted(account.features)
        report["account_identities"] = sorted(f"{i.category}/{i.type}" for i in account.identities)
        enable = Iq("set")
        enable.setTag("enable", namespace=Namespace.CARBONS)
        report["carbons"] = self.iq("carbons enable", enable).getType()
        report["blocklist"] = sorted(
            str(j) for j in result_of("blocklist", self.module("Blocking").request_blocking_list())
        )
        self.send_initial_presence()

    def send_initial_presence(self, priority: int = 0) -> None:
        caps = self.module("EntityCaps")
        caps.set_caps(IDENTITIES, FEATURES, CAPS_NODE)
        presence = Presence()
        presence.setTag("priority").setData(str(priority))
        c = caps.caps
        presence.setTag(
            "c", namespace=Namespace.CAPS, attrs={"hash": c.hash, "node": c.node, "ver": c.ver}
        )
        self.client.send_stanza(presence)
        self.wait_presence(
            "its own initial presence back",
            lambda stanza, _p: str(stanza.getFrom()) == self.jid and stanza.getType() is None,
        )

    def dump(self) -> str:
        return f"--- {self.bare}/{self.resource} ---\n" + "\n".join(self.traffic)


def summary(stanza: Any, properties: Any) -> dict[str, Any]:
    return {
        "from": str(stanza.getFrom()) if stanza.getFrom() else None,
        "to": str(stanza.getTo()) if stanza.getTo() else None,
        "type": stanza.getType(),
        "body": properties.body,
    }


# ----- scenarios


def session(args: argparse.Namespace) -> dict[str, Any]:
    """Login, roster, disco, carbons, caps presence, a chat with its carbons, MAM paging,
    XEP-0198 acks."""
    a_name, b_name = args.users[:2]
    report: dict[str, Any] = {}
    a1 = Gajim(args, a_name, "desktop").connect()
    report["a1_jid"] = a1.jid
    report["a1"] = {}
    a1.login_flow(report["a1"])
    a2 = Gajim(args, a_name, "laptop").connect()
    report["a2"] = {}
    a2.login_flow(report["a2"])
    b = Gajim(args, b_name, "gajim").connect()
    report["b"] = {}
    b.login_flow(report["b"])

    # A chat message from a1 to b's bare JID (Gajim addresses the bare JID until it has a
    # locked resource), with an origin-id and a receipt request as Gajim sends them.
    texts = [f"message {i}" for i in range(5)]
    for text in texts:
        message = Message(to=b.bare, body=text, typ="chat")
        message.setOriginID(f"origin-{text.replace(' ', '-')}")
        message.setTag("request", namespace=Namespace.RECEIPTS)
        a1.client.send_stanza(message)
    got = b.wait_message("a1's last chat message", lambda s, p: p.body == texts[-1])
    report["b_got"] = summary(*got)
    report["b_got_stanza_ids"] = [{"id": sid.id, "by": str(sid.by)} for sid in got[1].stanza_ids]
    carbon = a2.wait_message(
        "the sent carbon of a1's message", lambda s, p: p.is_sent_carbon and p.body == texts[-1]
    )
    report["a2_carbon"] = summary(*carbon)

    # b answers the full JID; a2 gets a received carbon.
    b.client.send_stanza(Message(to=a1.jid, body="answer", typ="chat"))
    a1.wait_message("b's answer", lambda s, p: p.body == "answer")
    received = a2.wait_message(
        "the received carbon of b's answer",
        lambda s, p: p.is_received_carbon and p.body == "answer",
    )
    report["a2_received_carbon"] = summary(*received)

    # MAM (XEP-0313 §4, XEP-0059 §2.2): Gajim's first catch-up of an account pages forwards
    # from a start time (a week back), each next page `after` the last id of the one before.
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=7)
    pages = []
    after = None
    seen_bodies: list[str] = []
    for _ in range(10):
        queryid = f"q{len(pages)}"
        before = len(a2.messages)
        fin = result_of(
            "a MAM page",
            a2.module("MAM").make_query(a2.bare, queryid=queryid, start=start, after=after, max_=2),
        )
        page = [
            p.body
            for s, p in a2.messages[before:]
            if p.is_mam_message and p.mam.query_id == queryid
        ]
        seen_bodies += page
        pages.append(
            {
                "bodies": page,
                "complete": fin.complete,
                "first": fin.rsm.first,
                "last": fin.rsm.last,
                "count": fin.rsm.count,
            }
        )
        if fin.complete:
            break
        after = fin.rsm.last
    report["mam_pages"] = pages
    report["mam_bodies"] = seen_bodies
    # Gajim's next sign-in asks only for what came after the last id it stored: nothing new.
    before = len(a2.messages)
    fin = result_of(
        "the MAM query after the last id",
        a2.module("MAM").make_query(a2.bare, queryid="next", after=after_last(pages)),
    )
    report["mam_after_last"] = {
        "complete": fin.complete,
        "count": sum(1 for s, p in a2.messages[before:] if p.is_mam_message),
    }
    # An id the archive does not know (Gajim then resets and asks by date; XEP-0313 §5.3,
    # XEP-0059 §2.6: item-not-found).
    unknown = error_of(
        "the MAM query after an unknown id",
        a2.module("MAM").make_query(a2.bare, queryid="gone", after="no-such-id"),
    )
    report["mam_unknown_after"] = unknown.condition

    # XEP-0198: nbxmpp enabled it after bind, with resumption; an ack round trip now.
    smacks = a1.client._smacks
    report["sm_enabled"] = smacks.enabled
    report["sm_resume"] = smacks.resume_supported
    acks: list[int] = []
    original = smacks._on_ack

    def on_ack(stream: Any, stanza: Any, properties: Any) -> None:
        acks.append(int(stanza.getAttr("h")))
        original(stream, stanza, properties)

    smacks._on_ack = on_ack
    a1.client.unregister_handler(
        StanzaHandler(name="a", callback=original, xmlns=Namespace.STREAM_MGMT)
    )
    a1.client.register_handler(
        StanzaHandler(name="a", callback=on_ack, xmlns=Namespace.STREAM_MGMT)
    )
    smacks._request_ack()
    wait("the server's <a/> to a1's <r/>", lambda: bool(acks))
    report["sm_ack_h"] = acks[0]
    report["sm_out_h"] = smacks._out_h
    report["sm_queue_after_ack"] = len(smacks._uqueue)

    # The network goes away under a1; b writes to it meanwhile; a1 resumes and gets it.
    dropped_at = len(a1.messages)
    a1.dropping = True
    a1.client.disconnect(immediate=True)
    wait("a1 to be disconnected", lambda: not a1.dropping)
    settle(0.3)  # the server sees the connection close
    b.client.send_stanza(Message(to=a1.jid, body="while away", typ="chat"))
    settle(0.3)
    a1.resume()
    report["resumed_h"] = smacks._out_h
    late = a1.wait_message(
        "b's message sent while a1 was away", lambda s, p: p.body == "while away"
    )
    report["after_resume"] = {
        **summary(*late),
        "delayed": late[1].has_server_delay,
        "count": sum(1 for s, p in a1.messages[dropped_at:] if p.body == "while away"),
    }
    a1.client.send_stanza(Message(to=b.bare, body="after resume", typ="chat"))
    b.wait_message("a1's message after resuming", lambda s, p: p.body == "after resume")

    # Gajim's archiving preferences (XEP-0313 §6.2) and its server info window (XEP-0092,
    # XEP-0012 uptime, XEP-0202).
    mam = a1.module("MAM")
    report["mam_prefs"] = result_of("MAM preferences", mam.request_preferences()).default
    result_of("MAM preferences set", mam.set_preferences("roster", [JID.from_string(b.bare)], []))
    prefs = result_of("MAM preferences again", mam.request_preferences())
    report["mam_prefs_set"] = {
        "default": prefs.default,
        "always": [str(j) for j in prefs.always],
        "never": [str(j) for j in prefs.never],
    }
    server = JID.from_string("localhost")
    version = result_of(
        "the server's version", a1.module("SoftwareVersion").request_software_version(server)
    )
    report["server_version"] = version.name
    uptime = result_of(
        "the server's uptime", a1.module("LastActivity").request_last_activity(server)
    )
    report["server_uptime"] = uptime.seconds
    report["server_time"] = bool(
        result_of("the server's time", a1.module("EntityTime").request_entity_time(server))
    )

    # XEP-0077 §3.3: Gajim's "change password", then a login with the new one.
    if len(args.users) > 2:
        c = Gajim(args, args.users[2], "gajim").connect()
        result_of("password change", c.module("Register").change_password(NEW_PASSWORD))
        again = Gajim(args, args.users[2], "again", password=NEW_PASSWORD).connect()
        report["new_password_login"] = again.jid
    return report


def logged_in(args: argparse.Namespace, user: str) -> Gajim:
    """A client of `user` connected and through Gajim's login flow."""
    client = Gajim(args, user, "gajim").connect()
    client.login_flow({})
    return client


def pep(args: argparse.Namespace) -> dict[str, Any]:
    """Bookmarks (XEP-0402 and XEP-0048 in PEP) with publish-options, an avatar (XEP-0084)
    and its notification to a contact, vCard-temp, blocking (XEP-0191)."""
    a_name, b_name = args.users[:2]
    report: dict[str, Any] = {}
    a, b = logged_in(args, a_name), logged_in(args, b_name)

    # Mutual subscription, as Gajim's "add contact": roster set, subscribe, the other approves
    # and subscribes back.
    for one, other in ((a, b), (b, a)):
        result_of("roster set", one.module("Roster").set_item(JID.from_string(other.bare), None))
        one.client.send_stanza(Presence(to=other.bare, typ="subscribe"))
        other.wait_presence(
            f"{one.bare}'s subscription request",
            lambda s, p, one=one: s.getType() == "subscribe" and s.getFrom().bare == one.bare,
        )
        other.client.send_stanza(Presence(to=one.bare, typ="subscribed"))
    for one, other in ((a, b), (b, a)):
        one.wait_presence(
            f"{other.bare}'s available presence",
            lambda s, p, other=other: s.getType() is None and s.getFrom().bare == other.bare,
        )

    # RFC 6121 §2.6: Gajim's next login sends the version it stored; nothing changed since,
    # so an empty result; with an older one, the changes (pushes or the full roster).
    version = result_of("roster get", a.module("Roster").request_roster()).version
    report["roster_version"] = version
    again = Gajim(args, a.user, "second").connect()
    same = result_of(
        "roster get with the current version", again.module("Roster").request_roster(version)
    )
    report["roster_same_version"] = {
        "items": None if same.items is None else [str(i.jid) for i in same.items],
        "version": same.version,
    }
    pushes_before = len(again.iq_sets)
    stale = result_of("roster get with an old version", again.module("Roster").request_roster("0"))
    settle(0.2)
    report["roster_old_version"] = {
        "items": None if stale.items is None else [str(i.jid) for i in stale.items],
        "version": stale.version,
        "pushed": [str(p.roster.item.jid) for s, p in again.iq_sets[pushes_before:] if p.is_roster],
    }
    again.client.disconnect()

    # XEP-0402: one item per room, with the publish-options Gajim sends.
    pubsub = a.module("PubSub")
    room = JID.from_string("room@conference.localhost")
    bookmark = BookmarkData(jid=room, name="The Room", nick="alice", autojoin=True)
    published = result_of(
        "XEP-0402 bookmark publish",
        pubsub.publish(
            Namespace.BOOKMARKS_1,
            build_conference_node(bookmark),
            id_=str(room),
            options=NATIVE_BOOKMARK_OPTIONS,
            force_node_options=True,
        ),
    )
    report["native_publish"] = {"node": published.node, "id": published.id}
    own_event = a.wait_message(
        "the notification of a's own bookmark",
        lambda s, p: p.is_pubsub_event and p.pubsub_event.node == Namespace.BOOKMARKS_1,
    )
    report["native_event"] = str(own_event[1].pubsub_event.data.jid)
    bookmarks = result_of("XEP-0402 bookmarks", a.module("NativeBookmarks").request_bookmarks())
    report["native_bookmarks"] = [
        {"jid": str(bm.jid), "name": bm.name, "nick": bm.nick, "autojoin": bm.autojoin}
        for bm in bookmarks
    ]
    config = result_of(
        "XEP-0402 node configuration", pubsub.get_node_configuration(Namespace.BOOKMARKS_1)
    )
    report["native_config"] = {
        var: config.form[var].value for var in NATIVE_BOOKMARK_OPTIONS if var in config.form.vars
    }
    # XEP-0048 in PEP (Gajim's fallback): one 'current' item holding all.
    legacy = result_of(
        "XEP-0048 bookmark publish",
        pubsub.publish(
            Namespace.BOOKMARKS,
            build_storage_node([bookmark]),
            id_="current",
            options=PEP_BOOKMARK_OPTIONS,
            force_node_options=True,
        ),
    )
    report["legacy_publish"] = {"node": legacy.node, "id": legacy.id}
    report["legacy_bookmarks"] = [
        str(bm.jid)
        for bm in result_of("XEP-0048 bookmarks", a.module("PEPBookmarks").request_bookmarks())
    ]
    # What Gajim picks from the account's features (gajim/common/modules/bookmarks.py,
    # _bookmark_module): XEP-0402 needs #compat-pep and config-node-max, XEP-0048 in PEP
    # needs bookmarks-conversion, else private XML storage (XEP-0049).
    account = result_of("disco#info of the account", a.module("Discovery").disco_info(a.bare))
    if Namespace.BOOKMARKS_COMPAT_PEP in account.features and (
        "http://jabber.org/protocol/pubsub#config-node-max" in account.features
    ):
        report["gajim_bookmarks"] = "NativeBookmarks"
    elif Namespace.BOOKMARK_CONVERSION in account.features:
        report["gajim_bookmarks"] = "PEPBookmarks"
    else:
        report["gajim_bookmarks"] = "PrivateBookmarks"
    private = a.module("PrivateBookmarks")
    report["private_before_store"] = [
        {"jid": str(bm.jid), "name": bm.name, "nick": bm.nick, "autojoin": bm.autojoin}
        for bm in result_of("XEP-0049 bookmarks (synced)", private.request_bookmarks())
    ]
    result_of("XEP-0049 bookmarks store", private.store_bookmarks([bookmark]))
    stored = result_of("XEP-0049 bookmarks", private.request_bookmarks())
    report["private_bookmarks"] = [
        {"jid": str(bm.jid), "name": bm.name, "nick": bm.nick, "autojoin": bm.autojoin}
        for bm in stored
    ]
    # whitelist: b may not read a's bookmarks
    report["b_reads_bookmarks"] = error_of(
        "b reading a's bookmarks",
        b.module("PubSub").request_items(Namespace.BOOKMARKS_1, jid=JID.from_string(a.bare)),
    ).condition
    report["b_bookmark_events"] = [
        p.pubsub_event.node
        for s, p in b.messages
        if p.is_pubsub_event and "bookmarks" in p.pubsub_event.node
    ]

    # XEP-0084 avatar, as Gajim's "set avatar": data then metadata, access model presence.
    avatar = Avatar()
    sha = hashlib.sha1(PNG).hexdigest()
    avatar.add_image_source(PNG, "image/png", 1, 1)
    result_of("avatar publish", a.module("UserAvatar").set_avatar(avatar, public=False))
    notified = b.wait_message(
        "a's avatar metadata notification",
        lambda s, p: (
            p.is_pubsub_event
            and p.pubsub_event.node == Namespace.AVATAR_METADATA
            and p.pubsub_event.data is not None
        ),
    )
    meta = notified[1].pubsub_event.data
    report["avatar_notification"] = {
        "from": str(notified[0].getFrom()),
        "to": str(notified[0].getTo()),
        "id": notified[1].pubsub_event.id,
        "sha": sha,
        "infos": [{"id": info.id, "bytes": info.bytes, "type": info.type} for info in meta.infos],
    }
    data = result_of(
        "b fetching the avatar data",
        b.module("UserAvatar").request_avatar_data(sha, jid=JID.from_string(a.bare)),
    )
    report["avatar_data_sha"] = hashlib.sha1(data.data).hexdigest() if data else None
    metadata = result_of(
        "b fetching the avatar metadata",
        b.module("UserAvatar").request_avatar_metadata(jid=JID.from_string(a.bare)),
    )
    report["avatar_metadata_default"] = metadata.default if metadata else None

    # vCard-temp (XEP-0054): set own, read back, b reads a's.
    vcard = VCard()
    vcard.set_avatar(PNG, "image/png")
    vcard.data["FN"] = "Alice Gajim"
    vcard.data["NICKNAME"] = "alice"
    result_of("vCard set", a.module("VCardTemp").set_vcard(vcard))
    own = result_of("own vCard", a.module("VCardTemp").request_vcard())
    report["own_vcard"] = {"FN": own.data.get("FN"), "avatar": own.get_avatar()[1]}
    theirs = result_of(
        "b reading a's vCard", b.module("VCardTemp").request_vcard(JID.from_string(a.bare))
    )
    report["b_vcard_of_a"] = {"FN": theirs.data.get("FN"), "avatar": theirs.get_avatar()[1]}

    # OMEMO (Gajim's built-in plugin, nbxmpp's OMEMO module): the device list and a bundle,
    # both 'open' via publish-options; b has +notify for the list.
    result_of("OMEMO device list publish", a.module("OMEMO").set_devicelist([1234], public=True))
    devicelist = b.wait_message(
        "a's OMEMO device list notification",
        lambda s, p: (
            p.is_pubsub_event
            and p.pubsub_event.node == Namespace.OMEMO_TEMP_DL
            and p.pubsub_event.data is not None
        ),
    )
    report["omemo_devicelist_notification"] = sorted(devicelist[1].pubsub_event.data)
    bundle = OMEMOBundle(
        spk={"id": 1, "key": b"spk-key"},
        spk_signature=b"spk-signature",
        ik=b"identity-key",
        otpks=[{"id": n, "key": b"prekey-%d" % n} for n in range(1, 4)],
    )
    result_of("OMEMO bundle publish", a.module("OMEMO").set_bundle(bundle, 1234, public=True))
    fetched = result_of(
        "b fetching a's OMEMO bundle",
        b.module("OMEMO").request_bundle(JID.from_string(a.bare), 1234),
    )
    report["omemo_bundle"] = {"ik": fetched.ik.decode(), "prekeys": len(fetched.otpks)}

    # Blocking (XEP-0191): a blocks b, the push, b's message bounces, unblock.
    blocking = a.module("Blocking")
    result_of("block", blocking.block([JID.from_string(b.bare)]))
    push = wait_iq(a, "the block push", Namespace.BLOCKING, "block")
    report["block_push"] = [str(j) for j in push[1].blocking.block]
    report["blocklist_after_block"] = sorted(
        str(j) for j in result_of("blocklist", blocking.request_blocking_list())
    )
    a.client.send_stanza(Message(to=b.bare, body="to the blocked", typ="chat"))
    own_bounce = a.wait_message(
        "the error for a message to the blocked", lambda s, p: s.getType() == "error"
    )
    report["to_blocked_error"] = {
        "condition": own_bounce[0].getError(),
        "blocked_ns": own_bounce[0]
        .getTag("error")
        .getTag("blocked", namespace="urn:xmpp:blocking:errors")
        is not None,
    }
    b.client.send_stanza(Message(to=a.bare, body="while blocked", typ="chat"))
    bounce = b.wait_message("the blocked message's error", lambda s, p: s.getType() == "error")
    report["blocked_error"] = {
        "condition": bounce[0].getError(),
        "blocked_ns": bounce[0]
        .getTag("error")
        .getTag("blocked", namespace="urn:xmpp:blocking:errors")
        is not None,
    }
    result_of("unblock", blocking.unblock([JID.from_string(b.bare)]))
    push = wait_iq(a, "the unblock push", Namespace.BLOCKING, "unblock")
    report["unblock_push"] = [str(j) for j in push[1].blocking.unblock]
    report["a_got_while_blocked"] = [p.body for s, p in a.messages if p.body == "while blocked"]
    # Gajim's "block and report spam" (XEP-0377 inside the XEP-0191 block).
    result_of(
        "block with a spam report",
        blocking.block([JID.from_string(b.bare)], report="spam"),
    )
    report["blocklist_after_report"] = sorted(
        str(j) for j in result_of("blocklist", blocking.request_blocking_list())
    )
    return report


def after_last(pages: list[dict[str, Any]]) -> str:
    return pages[-1]["last"]


def wait_iq(client: Gajim, what: str, ns: str, name: str) -> tuple[Any, Any]:
    found: list[tuple[Any, Any]] = []

    def done() -> bool:
        found[:] = [(s, p) for s, p in client.iq_sets if s.getTag(name, namespace=ns) is not None]
        return bool(found)

    wait(what, done)
    return found[0]


def muc_upload(args: argparse.Namespace) -> dict[str, Any]:
    """A room: disco, join with history, configuration as Gajim's create, groupchat messages;
    an HTTP upload slot (XEP-0363) and the PUT."""
    a_name, b_name = args.users[:2]
    report: dict[str, Any] = {}
    a, b = logged_in(args, a_name), logged_in(args, b_name)
    room = f"nbxmpp-{a_name}@conference.localhost"
    report["room"] = room

    # Gajim asks the room's disco#info first; a new room does not exist yet.
    report["info_before"] = error_of(
        "disco#info of the not yet existing room", a.module("MUC").request_info(room)
    ).condition
    join(a, room, "alice")
    self_presence = a.wait_presence(
        "a's self-presence in the room",
        lambda s, p: s.getFrom() is not None and str(s.getFrom()) == f"{room}/alice",
    )
    report["created_codes"] = sorted(str(c) for c in (self_presence[1].muc_status_codes or []))
    # Gajim creates an instant room: it fetches the config form and submits it.
    config = result_of("the room's configuration form", a.module("MUC").request_config(room))
    form = config.form
    form["muc#roomconfig_persistentroom"].value = True
    result_of("the room's configuration", a.module("MUC").set_config(room, form))
    info = result_of(
        "disco#info of the room", a.module("MUC").request_info(room, request_vcard=False)
    )
    report["room_features"] = sorted(info.info.features)
    for i in range(3):
        a.client.send_stanza(Message(to=room, body=f"history {i}", typ="groupchat"))
    a.wait_message("a's own last room message", lambda s, p: p.body == "history 2")

    # XEP-0410 §3.2: Gajim's self-ping while not (or no longer) joined
    ping = Iq("get", to=f"{room}/bob")
    ping.setTag("ping", namespace=Namespace.PING)
    report["self_ping_not_joined"] = b.iq("a self-ping before joining", ping).getError()
    join(b, room, "bob", maxstanzas=2)
    b.wait_presence(
        "b's self-presence in the room",
        lambda s, p: s.getFrom() is not None and str(s.getFrom()) == f"{room}/bob",
    )
    b.wait_message("the room's subject", lambda s, p: p.is_muc_subject)
    report["b_history"] = [
        {"body": p.body, "delayed": p.user_timestamp is not None or p.has_server_delay}
        for s, p in b.messages
        if s.getType() == "groupchat" and p.body
    ]
    a.client.send_stanza(Message(to=room, body="live", typ="groupchat"))
    live = b.wait_message("a's live room message", lambda s, p: p.body == "live")
    report["b_live"] = {
        "from": str(live[0].getFrom()),
        "stanza_ids": [{"id": sid.id, "by": str(sid.by)} for sid in live[1].stanza_ids],
    }

    # XEP-0410: Gajim pings its own occupant JID to learn if it is still joined.
    ping = Iq("get", to=f"{room}/bob")
    ping.setTag("ping", namespace=Namespace.PING)
    report["self_ping"] = b.iq("the MUC self-ping", ping).getType()
    ghost = Iq("get", to=f"{room}/nobody")
    ghost.setTag("ping", namespace=Namespace.PING)
    report["ghost_ping_error"] = b.iq("a ping to an absent occupant", ghost).getError()

    # XEP-0313 §5 on the room (Gajim's catch-up after joining with maxchars 0): the room's
    # archive from a start time, paged.
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
    room_pages = []
    after = None
    for _ in range(5):
        queryid = f"room{len(room_pages)}"
        before = len(b.messages)
        fin = result_of(
            "a page of the room's archive",
            b.module("MAM").make_query(
                JID.from_string(room), queryid=queryid, start=start, after=after, max_=3
            ),
        )
        room_pages.append(
            {
                "bodies": [
                    p.body
                    for s, p in b.messages[before:]
                    if p.is_mam_message and p.mam.query_id == queryid
                ],
                "froms": [
                    str(s.getFrom())
                    for s, p in b.messages[before:]
                    if p.is_mam_message and p.mam.query_id == queryid
                ],
                "complete": fin.complete,
                "fin_from": str(fin.jid),
            }
        )
        if fin.complete:
            break
        after = fin.rsm.last
    report["room_mam"] = room_pages

    # XEP-0363: the upload service from the server's disco#items, a slot, the PUT.
    if args.http_port:
        items = result_of(
            "disco#items of the server", a.module("Discovery").disco_items("localhost")
        )
        service = None
        for item in items.items:
            info = result_of(
                f"disco#info of {item.jid}", a.module("Discovery").disco_info(item.jid)
            )
            if info.has_httpupload:
                service = item.jid
                report["upload_max_size"] = info.httpupload_max_file_size
        report["upload_service"] = str(service)
        slot = result_of(
            "an upload slot",
            a.module("HTTPUpload").request_slot(service, "picture one.png", len(PNG), "image/png"),
        )
        report["slot"] = {"put": slot.put_uri, "get": slot.get_uri, "headers": slot.headers}
        too_big = error_of(
            "a slot for a file too large",
            a.module("HTTPUpload").request_slot(
                service, "big.bin", 10**9, "application/octet-stream"
            ),
        )
        report["too_big"] = {
            "condition": too_big.condition,
            "max_file_size": too_big.get_max_file_size(),
        }
        # Gajim's upload: libsoup through nbxmpp's HTTP session, the body from the file.
        path = Path(args.tmp) / "picture one.png"
        path.write_bytes(PNG)
        put = a.client.http_session.create_request()
        for name, value in slot.headers.items():
            put.get_request_headers().append(name, value)
        put.set_request_body_from_path("image/png", path)
        report["put"] = http("the PUT of the upload", put, "PUT", slot.put_uri)
        get = b.client.http_session.create_request()
        report["get"] = http("the GET of the upload", get, "GET", slot.get_uri)
    return report


def http(what: str, request: Any, method: str, uri: str) -> dict[str, Any]:
    """Send an nbxmpp HTTPRequest; what came back, read in its callback (nbxmpp frees the
    request's data once its callbacks ran)."""
    finished: list[dict[str, Any]] = []

    def done(request: Any) -> None:
        data = request.get_data() if request.is_complete() else b""
        finished.append(
            {
                "complete": request.is_complete(),
                "error": None if request.is_complete() else request.get_error_string(),
                "status": int(request.get_status()),
                "sha1": hashlib.sha1(data).hexdigest() if data else None,
                "content_type": request.get_response_headers().get_one("Content-Type"),
            }
        )

    request.send(method, uri, timeout=int(STEP_TIMEOUT), callback=done)
    wait(what, lambda: bool(finished))
    return finished[0]


def join(client: Gajim, room: str, nick: str, maxstanzas: int | None = None) -> None:
    """Gajim's join presence: caps, muc x with history (maxstanzas when it has no archive
    position yet)."""
    presence = Presence(to=f"{room}/{nick}")
    muc = presence.setTag("x", namespace=Namespace.MUC)
    if maxstanzas is not None:
        muc.setTag("history", attrs={"maxstanzas": str(maxstanzas)})
    c = client.module("EntityCaps").caps
    presence.setTag(
        "c", namespace=Namespace.CAPS, attrs={"hash": c.hash, "node": c.node, "ver": c.ver}
    )
    client.client.send_stanza(presence)


SCENARIOS = {"session": session, "pep": pep, "muc_upload": muc_upload}


def trust_only(ca_file: str) -> None:
    """Every TLS client connection GLib makes from now on verifies against this CA."""
    database = Gio.TlsFileDatabase.new(ca_file)
    Gio.TlsBackend.get_default().set_default_database(database)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--users", type=lambda s: s.split(","), required=True)
    parser.add_argument("--http-port", type=int, default=0)
    parser.add_argument("--tmp", default="/tmp")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, stream=sys.stderr)
    trust_only(args.ca)
    try:
        report = SCENARIOS[args.scenario](args)
    except Exception:
        traceback.print_exc()
        for client in Gajim.clients:
            print(client.dump(), file=sys.stderr)
        return 1
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
