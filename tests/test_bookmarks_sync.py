"""XEP-0402 §5.3 compatibility (the bookmarks module): room bookmarks written in one of the
three places clients keep them (XEP-0402 native PEP items, XEP-0048 in PEP, XEP-0048 in
XEP-0049 private storage) are found in the other two, with notifications only for what
changed; the account advertises #compat and #compat-pep. Raw streams over real sockets."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import PASSWORD, FreshNames, ServerProcess, module_server
from lxml import etree
from test_client_flows import (
    BOOKMARKS_1,
    DISCO_INFO,
    LEGACY_BOOKMARKS,
    PRIVATE,
    PUBSUB,
    PUBSUB_EVENT,
    Client,
    features_of,
    online_with_notify,
    publish_bookmark,
)
from test_roster import sync
from xmpp_raw import RawClient

SERVICE = "conference.localhost"
POOL = FreshNames("bms", 20)
MESSAGE = "{jabber:client}message"


@pytest.fixture(scope="module")
def srv(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(ca, tmp_path_factory, POOL)


@pytest.fixture
def users() -> Iterator[str]:
    return POOL.names()


@pytest.fixture
def login(srv: ServerProcess, ca_file: str, clients: list[RawClient]) -> Any:
    def connect(name: str, resource: str = "r", presence: bool = True) -> Client:
        c = srv.client()
        clients.append(c)
        full = c.login(ca_file, name, PASSWORD, resource)
        if presence:
            c.send("<presence/>")
            sync(c)
        return Client(c, name, full)

    return connect


def conferences(storage: Any) -> dict[str, dict[str, Any]]:
    """The XEP-0048 conferences of a <storage/>, by room JID."""
    assert storage is not None
    return {
        c.get("jid"): {
            "name": c.get("name"),
            "autojoin": c.get("autojoin") in ("1", "true"),
            "nick": c.findtext(f"{{{LEGACY_BOOKMARKS}}}nick"),
            "password": c.findtext(f"{{{LEGACY_BOOKMARKS}}}password"),
        }
        for c in storage.findall(f"{{{LEGACY_BOOKMARKS}}}conference")
    }


def private_storage(client: Client) -> Any:
    reply = client.iq(
        "get", f"<query xmlns='{PRIVATE}'><storage xmlns='{LEGACY_BOOKMARKS}'/></query>"
    )
    assert reply.get("type") == "result", etree.tostring(reply)
    return reply.find(f"{{{PRIVATE}}}query/{{{LEGACY_BOOKMARKS}}}storage")


def pep_storage(client: Client) -> Any:
    reply = client.iq(
        "get", f"<pubsub xmlns='{PUBSUB}'><items node='{LEGACY_BOOKMARKS}'/></pubsub>"
    )
    assert reply.get("type") == "result", etree.tostring(reply)
    items = list(reply.iter(f"{{{PUBSUB}}}item"))
    assert [i.get("id") for i in items] == ["current"]
    return items[0].find(f"{{{LEGACY_BOOKMARKS}}}storage")


def native(client: Client) -> dict[str, dict[str, Any]]:
    reply = client.iq("get", f"<pubsub xmlns='{PUBSUB}'><items node='{BOOKMARKS_1}'/></pubsub>")
    assert reply.get("type") == "result", etree.tostring(reply)
    found = {}
    for item in reply.iter(f"{{{PUBSUB}}}item"):
        c = item.find(f"{{{BOOKMARKS_1}}}conference")
        found[item.get("id")] = {
            "name": c.get("name"),
            "autojoin": c.get("autojoin") in ("1", "true"),
            "nick": c.findtext(f"{{{BOOKMARKS_1}}}nick"),
            "password": c.findtext(f"{{{BOOKMARKS_1}}}password"),
            "extensions": [
                etree.QName(e).localname for e in c.findall(f"{{{BOOKMARKS_1}}}extensions/*")
            ],
        }
    return found


def events(elements: list[Any], node: str) -> list[tuple[str, str | None]]:
    found = []
    for el in elements:
        items = el.find(f"{{{PUBSUB_EVENT}}}event/{{{PUBSUB_EVENT}}}items")
        if el.tag == MESSAGE and items is not None and items.get("node") == node:
            found += [(etree.QName(child).localname, child.get("id")) for child in items]
    return found


def set_private(client: Client, conferences_xml: str, iq_id: str = "priv") -> None:
    reply = client.iq(
        "set",
        f"<query xmlns='{PRIVATE}'><storage xmlns='{LEGACY_BOOKMARKS}'>{conferences_xml}"
        "</storage></query>",
        iq_id=iq_id,
    )
    assert reply.get("type") == "result", etree.tostring(reply)


def test_account_advertises_compat(login: Any, users: Iterator[str]) -> None:
    user = login(next(users))
    features = features_of(user.iq("get", f"<query xmlns='{DISCO_INFO}'/>", user.bare))
    # What Gajim needs to pick XEP-0402 (#compat-pep, config-node-max), Dino (#compat).
    assert {
        BOOKMARKS_1 + "#compat",
        BOOKMARKS_1 + "#compat-pep",
        PUBSUB + "#config-node-max",
        PUBSUB + "#publish-options",
    } <= features


def test_native_publish_seen_in_both_legacy_forms(login: Any, users: Iterator[str]) -> None:
    name = next(users)
    phone = login(name, "phone")
    for n, room in enumerate((f"a@{SERVICE}", f"b@{SERVICE}")):
        reply = publish_bookmark(phone, room, f"Room {n}", f"pub{n}")
        assert reply.get("type") == "result", etree.tostring(reply)
    laptop = login(name, "laptop")
    expected = {
        f"a@{SERVICE}": {"name": "Room 0", "autojoin": True, "nick": name, "password": None},
        f"b@{SERVICE}": {"name": "Room 1", "autojoin": True, "nick": name, "password": None},
    }
    assert conferences(private_storage(laptop)) == expected
    assert conferences(pep_storage(laptop)) == expected
    # A retract (Dino's remove_conference) goes to both legacy forms too.
    reply = phone.iq(
        "set",
        f"<pubsub xmlns='{PUBSUB}'><retract node='{BOOKMARKS_1}' notify='true'>"
        f"<item id='a@{SERVICE}'/></retract></pubsub>",
    )
    assert reply.get("type") == "result"
    del expected[f"a@{SERVICE}"]
    assert conferences(private_storage(laptop)) == expected
    assert conferences(pep_storage(laptop)) == expected


def test_native_publish_notifies_legacy_pep_subscribers(login: Any, users: Iterator[str]) -> None:
    """A client on XEP-0048 in PEP (+notify storage:bookmarks) hears of a native change."""
    name = next(users)
    phone = login(name, "phone")
    laptop = login(name, "laptop", presence=False)
    online_with_notify(laptop, LEGACY_BOOKMARKS)
    reply = publish_bookmark(phone, f"a@{SERVICE}", "A", "pub-a")
    assert reply.get("type") == "result", etree.tostring(reply)
    assert events(sync(laptop.c), LEGACY_BOOKMARKS) == [("item", "current")]
    # The same bookmark again: the legacy form holds it already, no new event.
    reply = publish_bookmark(phone, f"a@{SERVICE}", "A", "pub-a-again")
    assert reply.get("type") == "result", etree.tostring(reply)
    assert events(sync(laptop.c), LEGACY_BOOKMARKS) == []


def test_private_storage_set_updates_native_and_pep(login: Any, users: Iterator[str]) -> None:
    name = next(users)
    old_client = login(name, "old")
    modern = login(name, "modern", presence=False)
    online_with_notify(modern, BOOKMARKS_1)
    set_private(
        old_client,
        f"<conference jid='a@{SERVICE}' autojoin='true' name='A'><nick>me</nick></conference>"
        f"<conference jid='b@{SERVICE}' autojoin='false'><password>pw</password></conference>"
        "<url name='site' url='https://example.org/'/>",
    )
    assert sorted(events(sync(modern.c), BOOKMARKS_1)) == [
        ("item", f"a@{SERVICE}"),
        ("item", f"b@{SERVICE}"),
    ]
    assert native(modern) == {
        f"a@{SERVICE}": {
            "name": "A",
            "autojoin": True,
            "nick": "me",
            "password": None,
            "extensions": [],
        },
        f"b@{SERVICE}": {
            "name": None,
            "autojoin": False,
            "nick": None,
            "password": "pw",
            "extensions": [],
        },
    }
    assert set(conferences(pep_storage(modern))) == {f"a@{SERVICE}", f"b@{SERVICE}"}
    # The same list with b removed and a unchanged: b retracted, nothing said of a.
    set_private(
        old_client,
        f"<conference jid='a@{SERVICE}' autojoin='true' name='A'><nick>me</nick></conference>"
        "<url name='site' url='https://example.org/'/>",
        "priv2",
    )
    assert events(sync(modern.c), BOOKMARKS_1) == [("retract", f"b@{SERVICE}")]
    assert set(native(modern)) == {f"a@{SERVICE}"}
    assert set(conferences(pep_storage(modern))) == {f"a@{SERVICE}"}
    # The private storage keeps what XEP-0402 has no place for (the <url/>) when a native
    # change rewrites it.
    reply = publish_bookmark(modern, f"c@{SERVICE}", "C", "pub-c")
    assert reply.get("type") == "result", etree.tostring(reply)
    stored = private_storage(old_client)
    assert set(conferences(stored)) == {f"a@{SERVICE}", f"c@{SERVICE}"}
    assert stored.find(f"{{{LEGACY_BOOKMARKS}}}url").get("name") == "site"


def test_legacy_pep_publish_updates_native_and_keeps_extensions(
    login: Any, users: Iterator[str]
) -> None:
    """The native node made with the defaults (max_items 1) by a client without
    publish-options: the legacy list of two rooms keeps both (max_items raised to 'max')."""
    name = next(users)
    user = login(name)
    conference = (
        f"<conference xmlns='{BOOKMARKS_1}' autojoin='true' name='A'><nick>me</nick>"
        "<extensions><state xmlns='urn:example:client'/></extensions></conference>"
    )
    reply = user.iq(
        "set",
        f"<pubsub xmlns='{PUBSUB}'><publish node='{BOOKMARKS_1}'><item id='a@{SERVICE}'>"
        f"{conference}</item></publish></pubsub>",
    )
    assert reply.get("type") == "result", etree.tostring(reply)
    # Conversations' pushBookmarksPep: the whole list as 'current', a renamed and b added.
    storage = (
        f"<storage xmlns='{LEGACY_BOOKMARKS}'>"
        f"<conference jid='a@{SERVICE}' autojoin='true' name='A2'><nick>me</nick></conference>"
        f"<conference jid='b@{SERVICE}' autojoin='true'/></storage>"
    )
    reply = user.iq(
        "set",
        f"<pubsub xmlns='{PUBSUB}'><publish node='{LEGACY_BOOKMARKS}'><item id='current'>"
        f"{storage}</item></publish></pubsub>",
    )
    assert reply.get("type") == "result", etree.tostring(reply)
    found = native(user)
    assert set(found) == {f"a@{SERVICE}", f"b@{SERVICE}"}
    assert found[f"a@{SERVICE}"]["name"] == "A2"
    assert found[f"a@{SERVICE}"]["extensions"] == ["state"]
    assert set(conferences(private_storage(user))) == {f"a@{SERVICE}", f"b@{SERVICE}"}


def test_sync_does_not_loop_or_storm(login: Any, users: Iterator[str]) -> None:
    """A legacy write the native node already matches changes nothing and notifies nobody."""
    name = next(users)
    phone = login(name, "phone")
    watcher = login(name, "watcher", presence=False)
    online_with_notify(watcher, BOOKMARKS_1)
    reply = publish_bookmark(phone, f"a@{SERVICE}", "A", "pub-a")
    assert reply.get("type") == "result", etree.tostring(reply)
    assert events(sync(watcher.c), BOOKMARKS_1) == [("item", f"a@{SERVICE}")]
    # What the sync wrote, written back by a legacy client as it read it.
    storage = private_storage(phone)
    assert set(conferences(storage)) == {f"a@{SERVICE}"}
    stored = etree.tostring(storage).decode()
    reply = phone.iq("set", f"<query xmlns='{PRIVATE}'>{stored}</query>", iq_id="back")
    assert reply.get("type") == "result", etree.tostring(reply)
    assert events(sync(watcher.c), BOOKMARKS_1) == []
    assert set(native(phone)) == {f"a@{SERVICE}"}
