"""XEP-0486 MUC Avatars over real sockets: rooms (and the service) advertise vcard-temp, a room's
vCard is got by anyone and set by its owners only (the stanzas Smack sends in the XMPP Interop
suite's MUCAvatarIntegrationTest), the muc#roominfo_avatarhash field, what occupants hear of
a change (status 104, the XEP-0153 presence from the room), removal, limits, and the vCard
living with its room: across a restart for a persistent room, gone with a destroyed one."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import trustme
from conftest import PASSWORD, FreshNames, ServerProcess, add_accounts, module_server
from federation import Federation, sign_in, wait_for
from lxml import etree
from slix_client import SlixClient
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath
from test_muc import (
    ADMIN,
    DATA,
    DISCO_INFO,
    MESSAGE,
    OWNER,
    PRESENCE,
    SERVICE,
    User,
    codes,
    create,
    field,
    iq,
    join,
    log_in,
    new_room,
)
from test_muc_federation import Member
from test_roster import received, sync
from xmpp_raw import CLIENT, RawClient, stanza_error

from fastxmpp.storage.lmdb_store import Storage

VCARD = "vcard-temp"
UPDATE = "vcard-temp:x:update"
ROOMINFO = "http://jabber.org/protocol/muc#roominfo"
HASH_FIELD = "muc#roominfo_avatarhash"
# MUCAvatarIntegrationTest.TINY_PNG_BASE64
TINY_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAABQAAAAPCAYAAADkmO9VAAABEElEQVQ4y53TO0pDQRQG4I8YNI2PIEi2IG5BECsNxAV"
    "kDQpaWCkEraztBHcgYp1WwT4WFqIi+GgUCRirJBKbES7DvdckBw7MnP9xOPOYwA0W8Y1n48USNnEE9xiEfMQxloc0OcB"
    "tQn8HF4lCMks5ZqUMzXkBzQzRQo5hFtaEeXRSutVyDGsp/C+UC/jEaYpoI8cwDTtB+28zi5eo4weKKcIi3iPuG+ZiYhU"
    "/EbGeYliPOH2sZY2yG5GfMJXAJ/EQcXb+e1+HkaCRwBo5WG5so5cYqRqyH2o9bI36nVbDYQ/C7bXD+hUrY35RZbQSI7b"
    "SbnOYmAkjXqGLs5BdXGId06MYdnCNPVQS9Qr2A9ZJE/4C57hm5CFALooAAAAASUVORK5CYII="
)
TINY_HASH = hashlib.sha1(base64.b64decode(TINY_PNG)).hexdigest()
# What Smack's VCard.setAvatar(TINY_PNG_BASE64, "image/png") serializes to
SMACK_AVATAR = (
    f"<vCard xmlns='{VCARD}'><PHOTO><BINVAL>{TINY_PNG}</BINVAL><TYPE>image/png</TYPE></PHOTO>"
    "</vCard>"
)
EMPTY = f"<vCard xmlns='{VCARD}'/>"
MAX_SIZE = 4096

POOL = FreshNames("av", 40)


@pytest.fixture(scope="module")
def srv(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # av0 is the service's admin: owner of every room (XEP-0486 §6 "or service administrators")
    toml = f"[vcard]\nmax_size = {MAX_SIZE}\n[muc]\nadmins = ['av0@localhost']\n"
    yield from module_server(ca, tmp_path_factory, POOL, toml)


@pytest.fixture
def users() -> Iterator[str]:
    names = POOL.names()
    next(names, None)  # av0 is the admin, logged in by name
    return names


@pytest.fixture
def login(srv: ServerProcess, ca_file: str, clients: list[RawClient]) -> Any:
    return functools.partial(log_in, srv, ca_file, clients)


def set_vcard(user: User, room: str, vcard: str) -> Any:
    return iq(user, room, "set", vcard)


def get_vcard(user: User, room: str) -> Any:
    reply = iq(user, room, "get", EMPTY)
    assert reply.get("type") == "result", etree.tostring(reply)
    assert reply.get("from") == room
    vcard = reply.find(f"{{{VCARD}}}vCard")
    assert vcard is not None, etree.tostring(reply)
    return vcard


def info(user: User, jid: str) -> Any:
    reply = iq(user, jid, "get", f"<query xmlns='{DISCO_INFO}'/>")
    assert reply.get("type") == "result", etree.tostring(reply)
    return reply


def features(reply: Any) -> set[str]:
    return {f.get("var") for f in reply.iter(f"{{{DISCO_INFO}}}feature")}


def avatar_hashes(reply: Any) -> list[str] | None:
    """The muc#roominfo_avatarhash values (None: no such field), checking the field's type."""
    for form in reply.iter(f"{{{DATA}}}x"):
        if form.findtext(f"{{{DATA}}}field[@var='FORM_TYPE']/{{{DATA}}}value") != ROOMINFO:
            continue
        found = form.find(f"{{{DATA}}}field[@var='{HASH_FIELD}']")
        if found is None:
            return None
        assert found.get("type") == "text-multi"  # §7.1 registry
        return [v.text for v in found.findall(f"{{{DATA}}}value")]
    raise AssertionError("no muc#roominfo form")


def photo_of(vcard: Any) -> tuple[str | None, str | None] | None:
    photo = vcard.find(f"{{{VCARD}}}PHOTO")
    if photo is None:
        return None
    return photo.findtext(f"{{{VCARD}}}TYPE"), photo.findtext(f"{{{VCARD}}}BINVAL")


def announcements(elements: list[Any], room: str) -> tuple[list[Any], list[Any]]:
    """(the status-104 messages, the XEP-0153 presences) from the room's bare JID."""
    messages = [
        el
        for el in elements
        if el.tag == MESSAGE and el.get("from") == room and el.get("type") == "groupchat"
    ]
    updates = room_updates(elements, room)
    assert all(codes(m) == {"104"} for m in messages), [etree.tostring(m) for m in messages]
    return messages, updates


def room_updates(elements: list[Any], room: str) -> list[Any]:
    """The XEP-0153 presences from the room's bare JID (the server puts one in its users'
    presence too, XEP-0398)."""
    updates = [
        el
        for el in elements
        if el.tag == PRESENCE and el.get("from") == room and el.find(f"{{{UPDATE}}}x") is not None
    ]
    assert all(el.get("type") is None for el in updates)
    return updates


def photo_hash(update: Any) -> str | None:
    photo = update.find(f"{{{UPDATE}}}x/{{{UPDATE}}}photo")
    assert photo is not None, etree.tostring(update)
    return photo.text


async def test_slixmpp_sets_and_reads_a_room_avatar(
    srv: ServerProcess, ca_file: str, users: Iterator[str]
) -> None:
    """A real client's plugins (slixmpp's xep_0045, xep_0054): the owner publishes the
    room's vCard, an occupant gets the hash in the presence from the room (parsed by xep_0153's
    stanza plugin) and reads the photo."""
    plugins = ("xep_0004", "xep_0045", "xep_0054", "xep_0153")
    owner = SlixClient(f"{next(users)}@localhost/slix", ca_file, plugins=plugins)
    occupant = SlixClient(f"{next(users)}@localhost/slix", ca_file, plugins=plugins)
    updates: asyncio.Queue[Any] = asyncio.Queue()
    occupant.register_handler(
        Callback("avatar", MatchXPath(f"{{{CLIENT}}}presence/{{{UPDATE}}}x"), updates.put_nowait)
    )
    room = new_room()
    try:
        await owner.online(srv.port)
        await occupant.online(srv.port)
        muc = owner.plugin["xep_0045"]
        await muc.join_muc_wait(room, "owner", maxstanzas=0, timeout=10)
        instant = owner.plugin["xep_0004"].make_form(ftype="submit")
        await asyncio.wait_for(muc.set_room_config(room, instant), 10)
        await occupant.plugin["xep_0045"].join_muc_wait(room, "occupant", maxstanzas=0, timeout=10)
        vcard = owner.plugin["xep_0054"].make_vcard()
        vcard["PHOTO"]["TYPE"] = "image/png"
        vcard["PHOTO"]["BINVAL"] = base64.b64decode(TINY_PNG)
        await asyncio.wait_for(owner.plugin["xep_0054"].publish_vcard(vcard, jid=room), 10)
        update = await asyncio.wait_for(updates.get(), 10)
        while update["from"].full != room:  # the occupants' presence comes too
            update = await asyncio.wait_for(updates.get(), 10)
        assert update["vcard_temp_update"]["photo"] == TINY_HASH
        reply = await occupant.plugin["xep_0054"].get_vcard(room, timeout=10)
        assert reply["vcard_temp"]["PHOTO"]["BINVAL"] == base64.b64decode(TINY_PNG)
        assert reply["vcard_temp"]["PHOTO"]["TYPE"] == "image/png"
    finally:
        owner.disconnect()
        occupant.disconnect()


def test_rooms_and_service_advertise_vcard_temp(login: Any, users: Iterator[str]) -> None:
    """§3.1 (the suite skips every test unless the room advertises vcard-temp); without an
    avatar no avatarhash field (§4), and the room's vCard is empty."""
    owner, stranger = login(next(users)), login(next(users))
    room = create(owner)
    assert "vcard-temp" in features(info(stranger, room))
    assert avatar_hashes(info(stranger, room)) is None
    assert "vcard-temp" in features(info(stranger, SERVICE))
    vcard = get_vcard(stranger, room)
    assert len(vcard) == 0 and not (vcard.text or "").strip()
    # the service itself has no vCard, and none can be set on it
    assert stanza_error(iq(stranger, SERVICE, "get", EMPTY)) == "item-not-found"
    assert stanza_error(iq(owner, SERVICE, "set", SMACK_AVATAR)) == "forbidden"
    # a room that does not exist
    assert stanza_error(iq(stranger, new_room(), "get", EMPTY)) == "item-not-found"


def test_owner_publishes_and_everyone_sees_it(login: Any, users: Iterator[str]) -> None:
    """MUCAvatarIntegrationTest.testPublishAvatar, testPNGSupport and testRetrieveAvatar
    (§3.2, §3.4, §4), the hash in disco#info (§3.3), the notifications (§3.2, §5.2)."""
    owner, occupant, stranger = login(next(users)), login(next(users)), login(next(users))
    room = create(owner)
    join(occupant, room, "occupant")
    sync(owner.c)
    reply = set_vcard(owner, room, SMACK_AVATAR)
    assert reply.get("type") == "result" and reply.get("from") == room, etree.tostring(reply)
    assert len(reply) == 0
    # everyone in the room hears of it: status 104, then the hash from the room's bare JID
    for user in (owner, occupant):
        messages, updates = announcements(received(user.c, owner.c), room)
        assert len(messages) == 1 and len(updates) == 1
        assert photo_hash(updates[0]) == TINY_HASH
    assert announcements(received(stranger.c), room) == ([], [])
    # anyone, in the room or not, gets the hash and the vCard as set (Smack compares the
    # base64 text it gets back with what it sent)
    for user in (owner, stranger):
        assert avatar_hashes(info(user, room)) == [TINY_HASH]
        assert photo_of(get_vcard(user, room)) == ("image/png", TINY_PNG)
    # someone entering hears the hash after its self-presence, before the subject
    newcomer = login(next(users))
    seen = join(newcomer, room, "newcomer")
    updates = room_updates(seen, room)
    assert len(updates) == 1 and photo_hash(updates[0]) == TINY_HASH
    position = seen.index(updates[0])
    assert "110" in codes(seen[position - 1]) and seen[-1].tag == MESSAGE
    # the same vCard again changes nothing: nobody is told
    assert set_vcard(owner, room, SMACK_AVATAR).get("type") == "result"
    assert announcements(received(occupant.c, owner.c), room) == ([], [])


def test_only_owners_set_the_vcard(login: Any, users: Iterator[str]) -> None:
    """§3.2, §6: a member, an admin, an occupant or a stranger get forbidden; the service's
    admins own every room."""
    owner, admin, member = login(next(users)), login(next(users)), login(next(users))
    occupant, stranger = login(next(users)), login(next(users))
    room = create(owner)
    reply = iq(
        owner,
        room,
        "set",
        f"<query xmlns='{ADMIN}'><item affiliation='admin' jid='{admin.bare}'/>"
        f"<item affiliation='member' jid='{member.bare}'/></query>",
    )
    assert reply.get("type") == "result"
    for user, nick in ((admin, "admin"), (member, "member"), (occupant, "occupant")):
        join(user, room, nick)
    for user in (admin, member, occupant, stranger):
        reply = set_vcard(user, room, SMACK_AVATAR)
        assert stanza_error(reply) == "forbidden", etree.tostring(reply)
        assert reply.find(f"{{{CLIENT}}}error").get("type") == "auth"
        assert photo_of(get_vcard(user, room)) is None
    assert avatar_hashes(info(stranger, room)) is None
    assert announcements(received(occupant.c), room) == ([], [])
    service_admin = login("av0")
    assert set_vcard(service_admin, room, SMACK_AVATAR).get("type") == "result"
    assert avatar_hashes(info(stranger, room)) == [TINY_HASH]


def test_empty_vcard_unpublishes(login: Any, users: Iterator[str]) -> None:
    """MUCAvatarIntegrationTest.testUnpublishAvatar (§3.2: an empty vCard unpublishes), and a
    vCard without a PHOTO: no avatar, no avatarhash field (§4), an empty <photo/> (XEP-0153
    §4.1) for the occupants."""
    owner, occupant = login(next(users)), login(next(users))
    room = create(owner)
    join(occupant, room, "occupant")
    assert set_vcard(owner, room, SMACK_AVATAR).get("type") == "result"
    received(occupant.c, owner.c)
    assert set_vcard(owner, room, EMPTY).get("type") == "result"
    messages, updates = announcements(received(occupant.c, owner.c), room)
    assert len(messages) == 1 and len(updates) == 1 and photo_hash(updates[0]) is None
    vcard = get_vcard(owner, room)
    assert photo_of(vcard) is None and len(vcard) == 0
    assert avatar_hashes(info(occupant, room)) is None
    # a vCard with a description and no photo is kept, without an avatar
    described = f"<vCard xmlns='{VCARD}'><DESC>The garden</DESC></vCard>"
    assert set_vcard(owner, room, SMACK_AVATAR).get("type") == "result"
    assert set_vcard(owner, room, described).get("type") == "result"
    updates = announcements(received(occupant.c, owner.c), room)[1]
    assert [photo_hash(u) for u in updates] == [TINY_HASH, None]
    vcard = get_vcard(occupant, room)
    assert photo_of(vcard) is None and vcard.findtext(f"{{{VCARD}}}DESC") == "The garden"
    assert avatar_hashes(info(occupant, room)) is None
    # nobody entering now hears of an avatar
    newcomer = login(next(users))
    assert room_updates(join(newcomer, room, "new"), room) == []


def test_several_photos_all_hashed(login: Any, users: Iterator[str]) -> None:
    """§5.1: one hash per PHOTO (base64 with line breaks decodes as well)."""
    owner = login(next(users))
    room = create(owner)
    svg = base64.b64encode(b"<svg xmlns='http://www.w3.org/2000/svg'/>").decode()
    wrapped = "\n".join(TINY_PNG[i : i + 76] for i in range(0, len(TINY_PNG), 76))
    vcard = (
        f"<vCard xmlns='{VCARD}'>"
        f"<PHOTO><TYPE>image/svg+xml</TYPE><BINVAL>{svg}</BINVAL></PHOTO>"
        f"<PHOTO><TYPE>image/png</TYPE><BINVAL>{wrapped}</BINVAL></PHOTO></vCard>"
    )
    assert set_vcard(owner, room, vcard).get("type") == "result"
    svg_hash = hashlib.sha1(base64.b64decode(svg)).hexdigest()
    # the presence carries the first one (XEP-0153 has one <photo/>)
    updates = announcements(sync(owner.c), room)[1]
    assert [photo_hash(u) for u in updates] == [svg_hash]
    assert avatar_hashes(info(owner, room)) == [svg_hash, TINY_HASH]


def test_bad_vcards_refused(login: Any, users: Iterator[str], srv: ServerProcess) -> None:
    """Over `[vcard] max_size`: not-acceptable; a BINVAL that is not base64, another element
    than <vCard/>: bad-request. The vCard stored before stays; nobody is told."""
    owner, occupant = login(next(users)), login(next(users))
    room = create(owner)
    join(occupant, room, "occupant")
    assert set_vcard(owner, room, SMACK_AVATAR).get("type") == "result"
    received(occupant.c, owner.c)
    big = base64.b64encode(bytes(MAX_SIZE)).decode()
    too_big = f"<vCard xmlns='{VCARD}'><PHOTO><BINVAL>{big}</BINVAL></PHOTO></vCard>"
    assert stanza_error(set_vcard(owner, room, too_big)) == "not-acceptable"
    not_base64 = f"<vCard xmlns='{VCARD}'><PHOTO><BINVAL>not base64!</BINVAL></PHOTO></vCard>"
    assert stanza_error(set_vcard(owner, room, not_base64)) == "bad-request"
    assert stanza_error(set_vcard(owner, room, f"<vcard xmlns='{VCARD}'/>")) == "bad-request"
    assert photo_of(get_vcard(occupant, room)) == ("image/png", TINY_PNG)
    assert avatar_hashes(info(occupant, room)) == [TINY_HASH]
    assert announcements(received(occupant.c, owner.c), room) == ([], [])
    assert srv.alive()


def test_vcard_lives_with_the_room(make_server: Any, ca_file: str) -> None:
    """A persistent room keeps its vCard over a restart (storage/muc.py); a temporary room's
    vCard (the suite's instant rooms) goes with the room, a destroyed room's with it: a new
    room of the same name has none. A stored vCard that is not XML is a corrupt record: its
    room is quarantined, the others load."""
    server: ServerProcess = make_server()
    add_accounts(server, ["ann", "ben"])
    server.start()
    opened: list[RawClient] = []

    def login(name: str) -> User:
        c = server.client()
        opened.append(c)
        c.login(ca_file, name, PASSWORD, "r")
        c.send("<presence/>")
        sync(c)
        return User(c, name, "r")

    ann = login("ann")
    kept = create(ann, room=f"kept@{SERVICE}", form=field("muc#roomconfig_persistentroom", "1"))
    temporary = create(ann, room=f"temporary@{SERVICE}")
    for room in (kept, temporary):
        assert set_vcard(ann, room, SMACK_AVATAR).get("type") == "result"
    # made persistent after the avatar was set: it is stored with the rest
    later = create(ann, room=f"later@{SERVICE}")
    assert set_vcard(ann, later, SMACK_AVATAR).get("type") == "result"
    reply = iq(
        ann,
        later,
        "set",
        f"<query xmlns='{OWNER}'><x xmlns='{DATA}' type='submit'>"
        + field("muc#roomconfig_persistentroom", "1")
        + "</x></query>",
    )
    assert reply.get("type") == "result"
    spoiled = create(
        ann, room=f"spoiled@{SERVICE}", form=field("muc#roomconfig_persistentroom", "1")
    )
    assert set_vcard(ann, spoiled, SMACK_AVATAR).get("type") == "result"
    ann.send(f"<presence to='{temporary}/owner' type='unavailable'/>")
    sync(ann.c)
    for c in opened:
        c.close()
    opened.clear()
    server.stop()
    with Storage(server.data_dir) as storage:
        db = storage.database("muc")
        key = f"{SERVICE}\0spoiled".encode()
        with storage.env.begin(db=db) as txn:
            record = msgpack.unpackb(txn.get(key))
        assert record["vcard"].startswith(b"<vCard xmlns=")
        record["vcard"] = b"<vCard xmlns='vcard-temp'><PHOTO>"
        storage.write(lambda txn: txn.put(key, msgpack.packb(record), db=db))
    server.start()
    ben = login("ben")
    for room in (kept, later):
        assert avatar_hashes(info(ben, room)) == [TINY_HASH]
        assert photo_of(get_vcard(ben, room)) == ("image/png", TINY_PNG)
    assert stanza_error(iq(ben, temporary, "get", EMPTY)) == "item-not-found"
    assert stanza_error(iq(ben, spoiled, "get", EMPTY)) == "item-not-found"
    server.wait_for_log("corrupt record in database muc")
    # the temporary room's name, taken again: no avatar
    create(ben, room=temporary)
    assert photo_of(get_vcard(ben, temporary)) is None
    # destroyed, then made again: no avatar
    ann = login("ann")
    join(ann, kept, "owner")
    reply = iq(ann, kept, "set", f"<query xmlns='{OWNER}'><destroy/></query>")
    assert reply.get("type") == "result"
    create(ann, room=kept, form=field("muc#roomconfig_persistentroom", "1"))
    assert photo_of(get_vcard(ben, kept)) is None
    assert avatar_hashes(info(ben, kept)) is None
    for c in opened:
        c.close()
    server.stop()


def test_users_of_other_servers(
    ca: trustme.CA, ca_file: str, tmp_path: Any, clients: list[RawClient]
) -> None:
    """The service serves users of other servers as local ones (service.py): one reads the
    room's hash and vCard without being in it, is forbidden to set it, sets it once made an
    owner, and hears of a change as an occupant."""
    fed = Federation(ca, tmp_path, ca_file, True, ("a.test", "b.test"), users=("u0", "u1"))
    try:
        local = Member(
            sign_in(fed.servers["a.test"], ca_file, clients, "u0@a.test"), "u0@a.test", "r"
        )
        remote = Member(
            sign_in(fed.servers["b.test"], ca_file, clients, "u1@b.test"), "u1@b.test", "r"
        )
        room = create(local, room="pictured@conference.a.test")
        assert set_vcard(local, room, SMACK_AVATAR).get("type") == "result"
        assert avatar_hashes(info(remote, room)) == [TINY_HASH]
        assert photo_of(get_vcard(remote, room)) == ("image/png", TINY_PNG)
        assert stanza_error(set_vcard(remote, room, EMPTY)) == "forbidden"
        grant = f"<item affiliation='owner' jid='{remote.bare}'/>"
        assert iq(local, room, "set", f"<query xmlns='{ADMIN}'>{grant}</query>").get("type") == (
            "result"
        )
        seen = join(remote, room, "remote")
        assert [photo_hash(u) for u in room_updates(seen, room)] == [TINY_HASH]
        assert set_vcard(remote, room, EMPTY).get("type") == "result"
        for user in (local, remote):
            wait_for(user.c, lambda el: el.tag == MESSAGE and codes(el) == {"104"})
            update = wait_for(user.c, lambda el: bool(room_updates([el], room)))
            assert photo_hash(update) is None
        assert photo_of(get_vcard(local, room)) is None
    finally:
        fed.stop()
