"""User avatar compatibility: XEP-0398 (the server converts XEP-0084 PEP avatars to vCard
photos and back) and XEP-0153 (the server's photo hash in presence). Real clients (slixmpp's
xep_0084, xep_0054, xep_0153) publish and read avatars; raw streams check removal both ways,
avatars too big for the other side, the client's <x/> replaced and the absence of loops."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import logging
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import PASSWORD, FreshNames, ServerProcess, module_server
from lxml import etree
from slixmpp import ClientXMPP
from slixmpp.exceptions import IqError
from test_roster import connect, reply_to, sync
from xmpp_raw import CLIENT, RawClient

logging.getLogger("slixmpp").setLevel(logging.WARNING)

PUBSUB = "http://jabber.org/protocol/pubsub"
EVENT = PUBSUB + "#event"
CAPS = "http://jabber.org/protocol/caps"
INFO = "http://jabber.org/protocol/disco#info"
VCARD = "vcard-temp"
UPDATE = "vcard-temp:x:update"
DATA = "urn:xmpp:avatar:data"
METADATA = "urn:xmpp:avatar:metadata"
CONVERSION = "urn:xmpp:pep-vcard-conversion:0"
CAPS_NODE = "https://fastxmpp.test/avatars"
# A vCard holds 20000 bytes, a PEP item 6000: a 5000-byte image (6668 in base64) fits the
# vCard and not PEP; a vCard already holding 19000 bytes has no room for a PEP avatar.
LIMITS = "[vcard]\nmax_size = 20000\n[pep]\nmax_item_size = 6000\n"
POOL = FreshNames("av", 60)
_fresh = POOL.names()
_ids = itertools.count()


@pytest.fixture(scope="module")
def srv(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(ca, tmp_path_factory, POOL, LIMITS)


@pytest.fixture
def clients() -> Iterator[list[RawClient]]:
    opened: list[RawClient] = []
    yield opened
    for c in opened:
        c.close()


def png(width: int, height: int) -> bytes:
    """A real (grey, 8-bit) PNG of that size."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


class User:
    def __init__(self, c: RawClient, name: str) -> None:
        self.c = c
        self.bare = f"{name}@localhost"

    def iq(self, kind: str, payload: str, to: str | None = None) -> Any:
        iq_id = f"a{next(_ids)}"
        to_attr = f" to='{to}'" if to else ""
        self.c.send(f"<iq type='{kind}' id='{iq_id}'{to_attr}>{payload}</iq>")
        reply = reply_to(self.c, iq_id)
        assert reply.get("type") == "result", etree.tostring(reply)
        return reply

    def publish(self, node: str, item_id: str, payload: str) -> None:
        self.iq(
            "set",
            f"<pubsub xmlns='{PUBSUB}'><publish node='{node}'>"
            f"<item id='{item_id}'>{payload}</item></publish></pubsub>",
        )

    def publish_avatar(self, image: bytes, mime: str = "image/png") -> str:
        """XEP-0084 §4.1, §4.2: the data, then the metadata."""
        image_id = hashlib.sha1(image).hexdigest()
        self.publish(
            DATA, image_id, f"<data xmlns='{DATA}'>{base64.b64encode(image).decode()}</data>"
        )
        info = f"<info id='{image_id}' bytes='{len(image)}' type='{mime}'/>"
        self.publish(METADATA, image_id, f"<metadata xmlns='{METADATA}'>{info}</metadata>")
        return image_id

    def set_vcard(self, body: str) -> None:
        self.iq("set", f"<vCard xmlns='{VCARD}'>{body}</vCard>")

    def vcard_photo(self, of: str) -> tuple[str | None, bytes | None]:
        reply = self.iq("get", f"<vCard xmlns='{VCARD}'/>", to=of)
        photo = reply.find(f"{{{VCARD}}}vCard/{{{VCARD}}}PHOTO")
        if photo is None:
            return None, None
        binval = photo.findtext(f"{{{VCARD}}}BINVAL") or ""
        return photo.findtext(f"{{{VCARD}}}TYPE"), base64.b64decode(binval)

    def newest(self, of: str, node: str) -> Any | None:
        """The newest item of `node` at `of` (None: the node has none)."""
        iq_id = f"a{next(_ids)}"
        self.c.send(
            f"<iq type='get' id='{iq_id}' to='{of}'><pubsub xmlns='{PUBSUB}'>"
            f"<items node='{node}' max_items='1'/></pubsub></iq>"
        )
        reply = reply_to(self.c, iq_id)
        if reply.get("type") == "error":
            assert reply.find(f"{{{CLIENT}}}error/*").tag.endswith("item-not-found")
            return None
        items = list(reply.iter(f"{{{PUBSUB}}}item"))
        return items[-1] if items else None


def login(
    srv: ServerProcess, ca_file: str, opened: list[RawClient], name: str | None = None
) -> User:
    name = name or next(_fresh)
    return User(connect(srv, ca_file, opened, name), name)


def befriend(a: User, b: User) -> None:
    for x, y in ((a, b), (b, a)):
        x.c.send(f"<presence type='subscribe' to='{y.bare}'/>")
        sync(x.c)
        y.c.send(f"<presence type='subscribed' to='{x.bare}'/>")
        sync(y.c)
    sync(a.c)
    sync(b.c)


def photo_hashes(elements: list[Any], sender: str) -> list[str | None]:
    """The <photo/> of each available presence from `sender` ("" when empty, None: no <x/>);
    a presence carrying more than one <x/> fails."""
    found: list[str | None] = []
    for el in elements:
        if (
            el.tag != f"{{{CLIENT}}}presence"
            or el.get("type")
            or not el.get("from", "").startswith(sender)
        ):
            continue
        xs = el.findall(f"{{{UPDATE}}}x")
        assert len(xs) <= 1, etree.tostring(el)
        found.append(None if not xs else (xs[0].findtext(f"{{{UPDATE}}}photo") or ""))
    return found


def available(user: User, payload: str = "") -> list[Any]:
    user.c.send(f"<presence>{payload}</presence>")
    return sync(user.c)


# --- raw streams -----------------------------------------------------------------------


def test_account_advertises_conversion(
    srv: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    """XEP-0398 §3."""
    alice = login(srv, ca_file, clients)
    reply = alice.iq("get", f"<query xmlns='{INFO}'/>", to=alice.bare)
    assert CONVERSION in {f.get("var") for f in reply.iter(f"{{{INFO}}}feature")}


def test_pep_avatar_to_vcard_and_back_to_none(
    srv: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    alice, bob = login(srv, ca_file, clients), login(srv, ca_file, clients)
    befriend(alice, bob)
    alice.set_vcard("<FN>Alice</FN>")
    assert photo_hashes(available(alice), alice.bare) == [""]
    available(bob)
    sync(alice.c)
    sync(bob.c)
    image = png(3, 2)
    image_id = alice.publish_avatar(image, "image/x-test")
    # §4.1: the vCard shows it (TYPE from the metadata), the rest of the vCard kept.
    assert bob.vcard_photo(alice.bare) == ("image/x-test", image)
    reply = bob.iq("get", f"<vCard xmlns='{VCARD}'/>", to=alice.bare)
    assert reply.findtext(f"{{{VCARD}}}vCard/{{{VCARD}}}FN") == "Alice"
    # XEP-0153 §4.1: alice's presence goes out again with the new hash.
    assert photo_hashes(sync(bob.c), alice.bare) == [image_id]
    # XEP-0084 §4.2: metadata without <info/> disables the avatar: the PHOTO goes.
    alice.publish(METADATA, "none", f"<metadata xmlns='{METADATA}'/>")
    assert bob.vcard_photo(alice.bare) == (None, None)
    assert photo_hashes(sync(bob.c), alice.bare) == [""]


def test_vcard_photo_to_pep_and_removal(
    srv: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    alice, bob = login(srv, ca_file, clients), login(srv, ca_file, clients)
    befriend(alice, bob)
    available(alice)
    available(bob)
    sync(alice.c)
    sync(bob.c)
    image = png(5, 4)
    image_id = hashlib.sha1(image).hexdigest()
    binval = base64.b64encode(image).decode()
    alice.set_vcard(f"<PHOTO><TYPE>image/png</TYPE><BINVAL>{binval}</BINVAL></PHOTO>")
    assert photo_hashes(sync(bob.c), alice.bare) == [image_id]
    # §4.2: data (id = SHA-1) then metadata with one <info/>; open access: a stranger reads.
    stranger = login(srv, ca_file, clients)
    data = stranger.newest(alice.bare, DATA)
    assert data is not None and data.get("id") == image_id
    assert base64.b64decode(data.findtext(f"{{{DATA}}}data") or "") == image
    meta = stranger.newest(alice.bare, METADATA)
    assert meta is not None and meta.get("id") == image_id
    (info,) = meta.iter(f"{{{METADATA}}}info")
    assert dict(info.attrib) == {
        "id": image_id,
        "bytes": str(len(image)),
        "type": "image/png",
        "width": "5",
        "height": "4",
    }
    # The same vCard again: nothing republished, no presence again.
    alice.set_vcard(f"<PHOTO><TYPE>image/png</TYPE><BINVAL>{binval}</BINVAL></PHOTO>")
    assert stranger.newest(alice.bare, METADATA).get("id") == image_id
    assert photo_hashes(sync(bob.c), alice.bare) == []
    # A vCard without photo: the avatar is disabled (empty metadata), the hash emptied.
    alice.set_vcard("<FN>Alice</FN>")
    meta = stranger.newest(alice.bare, METADATA)
    assert meta is not None and list(meta.iter(f"{{{METADATA}}}info")) == []
    assert photo_hashes(sync(bob.c), alice.bare) == [""]


def test_conversion_does_not_loop(
    srv: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    """A PEP avatar becomes the vCard photo and nothing more is published to PEP; a vCard
    photo is published to PEP once, and the vCard is not rewritten by it."""
    alice = login(srv, ca_file, clients)
    alice.c.send(
        f"<presence><c xmlns='{CAPS}' hash='sha-1' node='{CAPS_NODE}' ver='v1'/></presence>"
    )
    # Answer the caps query: alice wants metadata notifications.
    while True:
        el = alice.c.next()
        if el.tag == f"{{{CLIENT}}}iq" and el.get("type") == "get":
            node = el.find(f"{{{INFO}}}query").get("node")
            features = "".join(f"<feature var='{f}'/>" for f in (CAPS, INFO, f"{METADATA}+notify"))
            alice.c.send(
                f"<iq type='result' id='{el.get('id')}' to='{el.get('from')}'>"
                f"<query xmlns='{INFO}' node='{node}'>{features}</query></iq>"
            )
            break
    sync(alice.c)
    sync(alice.c)
    alice.publish_avatar(png(2, 2))
    got = sync(alice.c)
    events = [e for e in got if e.find(f"{{{EVENT}}}event") is not None]
    assert len(events) == 1  # the client's own publish, no server republication
    image = png(6, 6)
    binval = base64.b64encode(image).decode()
    alice.set_vcard(f"<PHOTO><TYPE>image/png</TYPE><BINVAL>{binval}</BINVAL></PHOTO>")
    got = sync(alice.c)
    events = [e for e in got if e.find(f"{{{EVENT}}}event") is not None]
    assert len(events) == 1
    assert events[0].find(f"{{{EVENT}}}event/{{{EVENT}}}items").get("node") == METADATA
    assert alice.vcard_photo(alice.bare) == ("image/png", image)


def test_too_big_for_the_other_side(
    srv: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    alice, bob = login(srv, ca_file, clients), login(srv, ca_file, clients)
    # vCard to PEP: 5000 bytes fit the vCard, not a PEP item: the vCard is stored, its hash
    # is in presence, PEP has nothing.
    image = b"\xff\xd8" + bytes(range(256)) * 19 + b"\xff\xd9" * 200
    assert len(base64.b64encode(image)) > 6000
    alice.set_vcard(
        f"<PHOTO><TYPE>image/jpeg</TYPE><BINVAL>{base64.b64encode(image).decode()}</BINVAL></PHOTO>"
    )
    assert alice.vcard_photo(alice.bare) == ("image/jpeg", image)
    assert bob.newest(alice.bare, DATA) is None and bob.newest(alice.bare, METADATA) is None
    assert photo_hashes(available(alice), alice.bare) == [hashlib.sha1(image).hexdigest()]
    # PEP to vCard: a vCard with no room left keeps as it was; the publish succeeds.
    bob.set_vcard(f"<DESC>{'x' * 19000}</DESC>")
    small = b"\x89PNG" + bytes(range(256)) * 15
    bob.publish_avatar(small)
    assert bob.vcard_photo(bob.bare) == (None, None)
    assert bob.newest(bob.bare, DATA).get("id") == hashlib.sha1(small).hexdigest()
    assert photo_hashes(available(bob), bob.bare) == [""]


def test_client_x_update_replaced(
    srv: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    """XEP-0398 §5: the server's hash, whatever the client's <x/> said (an empty <photo/>
    too: a client's may be stale, docs/COMPLIANCE.md)."""
    alice, bob = login(srv, ca_file, clients), login(srv, ca_file, clients)
    befriend(alice, bob)
    available(bob)
    image = png(1, 1)
    image_id = alice.publish_avatar(image)
    for payload in (
        "",
        f"<x xmlns='{UPDATE}'><photo>{'0' * 40}</photo></x>",
        f"<x xmlns='{UPDATE}'/>",
        f"<x xmlns='{UPDATE}'><photo/></x>",
        f"<x xmlns='{UPDATE}'/><show>away</show><x xmlns='{UPDATE}'><photo>1</photo></x>",
    ):
        mine = available(alice, payload)
        theirs = sync(bob.c)
        assert photo_hashes(mine, alice.bare) == [image_id], payload
        assert photo_hashes(theirs, alice.bare) == [image_id], payload
    assert [
        p.findtext(f"{{{CLIENT}}}show") for p in theirs if p.tag == f"{{{CLIENT}}}presence"
    ] == ["away"]


def test_hash_in_directed_presence(
    srv: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    """XEP-0398 §5: "The hash MUST also be injected into directed presences such as MUC
    joins": the room reflects it to the occupants, and a JID that gets directed presence
    sees it too (replacing a client's stale one, as broadcasts do)."""
    alice, bob = login(srv, ca_file, clients), login(srv, ca_file, clients)
    image_id = alice.publish_avatar(png(2, 1))
    room = f"{next(_fresh)}@conference.localhost"
    bob.c.send(f"<presence to='{room}/bob'><x xmlns='http://jabber.org/protocol/muc'/></presence>")
    bob.iq(  # §10.1.2: an instant room, open to others
        "set",
        "<query xmlns='http://jabber.org/protocol/muc#owner'>"
        "<x xmlns='jabber:x:data' type='submit'/></query>",
        to=room,
    )
    sync(bob.c)
    alice.c.send(
        f"<presence to='{room}/alice'><x xmlns='http://jabber.org/protocol/muc'/>"
        f"<x xmlns='{UPDATE}'><photo>{'0' * 40}</photo></x></presence>"
    )
    joined = sync(alice.c)
    seen = sync(bob.c)
    assert photo_hashes(joined, f"{room}/alice") == [image_id]
    assert photo_hashes(seen, f"{room}/alice") == [image_id]
    available(bob)
    alice.c.send(f"<presence to='{bob.bare}'><show>chat</show></presence>")
    sync(alice.c)
    assert photo_hashes(sync(bob.c), alice.bare) == [image_id]


# --- slixmpp ---------------------------------------------------------------------------


class Slix(ClientXMPP):
    def __init__(self, jid: str, ca_file: str) -> None:
        super().__init__(jid, PASSWORD)
        self.ca_certs = ca_file
        self.enable_direct_tls = False
        self.enable_plaintext = False
        self.enable_starttls = True
        for plugin in (
            "xep_0030",
            "xep_0060",
            "xep_0115",
            "xep_0163",
            "xep_0084",
            "xep_0054",
            "xep_0153",
        ):
            self.register_plugin(plugin)
        self.metadata: asyncio.Queue[Any] = asyncio.Queue()
        self.hashes: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self.ready = asyncio.get_running_loop().create_future()
        self.add_event_handler("session_start", self._started)
        self.add_event_handler("avatar_metadata_publish", self.metadata.put_nowait)
        self.add_event_handler("presence_available", self._hash)

    def _hash(self, pres: Any) -> None:
        # The xep_0153 stanza plugin reads an empty <photo/> as no photo: read the XML.
        photo = pres.xml.find(f"{{{UPDATE}}}x/{{{UPDATE}}}photo")
        if photo is not None:
            self.hashes.put_nowait((pres["from"].bare, photo.text or ""))

    async def _started(self, _event: Any) -> None:
        self.send_presence()
        if not self.ready.done():
            self.ready.set_result(True)

    async def online(self, port: int) -> None:
        self.connect("127.0.0.1", port)
        await asyncio.wait_for(self.ready, 20)

    async def hash_of(self, bare: str, wanted: str) -> None:
        """Waits for presence of `bare` carrying `wanted`, the hashes before it skipped."""
        while True:
            frm, photo = await asyncio.wait_for(self.hashes.get(), 15)
            if frm == bare and photo == wanted:
                return


async def slix_pair(
    srv: ServerProcess, ca_file: str, clients: list[RawClient]
) -> tuple[Slix, Slix]:
    raw = [login(srv, ca_file, clients) for _ in range(2)]
    befriend(*raw)
    for user in raw:
        user.c.close()
    alice = Slix(f"{raw[0].bare}/slix", ca_file)
    bob = Slix(f"{raw[1].bare}/slix", ca_file)
    await alice.online(srv.port)
    await bob.online(srv.port)
    return alice, bob


async def test_slixmpp_pep_avatar_seen_as_vcard(
    srv: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    alice, bob = await slix_pair(srv, ca_file, clients)
    alice_bare = alice.boundjid.bare
    try:
        image = png(4, 4)
        image_id = hashlib.sha1(image).hexdigest()
        await alice.plugin["xep_0084"].publish_avatar(image)
        await alice.plugin["xep_0084"].publish_avatar_metadata(
            [{"id": image_id, "type": "image/png", "bytes": len(image)}]
        )
        # bob's XEP-0153 view: the hash in alice's presence, then her vCard's photo.
        await bob.hash_of(alice_bare, image_id)
        vcard = await bob.plugin["xep_0054"].get_vcard(alice_bare, cached=False)
        assert vcard["vcard_temp"]["PHOTO"]["BINVAL"] == image
        assert vcard["vcard_temp"]["PHOTO"]["TYPE"] == "image/png"
        # Removal: XEP-0084 §4.2 empty metadata; the presence hash empties.
        await alice.plugin["xep_0084"].stop()
        await bob.hash_of(alice_bare, "")
        # A vCard that held only the photo is gone: XEP-0054 §3.3 service-unavailable.
        with pytest.raises(IqError) as refused:
            await bob.plugin["xep_0054"].get_vcard(alice_bare, cached=False)
        assert refused.value.condition == "service-unavailable"
    finally:
        for client in (alice, bob):
            client.disconnect()
        await asyncio.sleep(0.2)


async def test_slixmpp_vcard_avatar_seen_in_pep(
    srv: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    alice, bob = await slix_pair(srv, ca_file, clients)
    alice_bare = alice.boundjid.bare
    try:
        image = png(7, 3)
        image_id = hashlib.sha1(image).hexdigest()
        await alice.plugin["xep_0153"].set_avatar(avatar=image, mtype="image/png")
        # bob's XEP-0084 view: a metadata notification, then the data.
        while True:
            event = await asyncio.wait_for(bob.metadata.get(), 15)
            if event["from"].bare == alice_bare:
                break
        item = event["pubsub_event"]["items"]["item"]
        assert item["id"] == image_id
        info = item["avatar_metadata"]["items"][0]
        assert (info["type"], info["bytes"], info["width"], info["height"]) == (
            "image/png",
            len(image),
            7,
            3,
        )
        fetched = await bob.plugin["xep_0084"].retrieve_avatar(alice_bare, image_id)
        assert fetched["pubsub"]["items"]["item"]["avatar_data"]["value"] == image
        await bob.hash_of(alice_bare, image_id)
    finally:
        for client in (alice, bob):
            client.disconnect()
        await asyncio.sleep(0.2)
