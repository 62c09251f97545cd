"""User avatar compatibility (XEP-0479 IM Advanced): XEP-0398 conversion between XEP-0084 PEP
avatars and XEP-0054 vCard photos, and the XEP-0153 photo hash in presence, made by the
server for its accounts.

- PEP to vCard (XEP-0398 §4.1): when an account publishes to urn:xmpp:avatar:metadata, the
  first <info/> without a 'url' names the item of urn:xmpp:avatar:data holding the image;
  its bytes (when their SHA-1 is the id, §4.1 SHOULD) become the vCard's PHOTO (TYPE from
  the info's 'type'). A metadata without <info/> (XEP-0084 §4.2: avatar disabled) removes
  the PHOTO. Only the PHOTO changes; the rest of the vCard is kept.
- vCard to PEP (§4.2): a vCard the account sets with a PHOTO/BINVAL publishes the image to
  urn:xmpp:avatar:data (item id: its SHA-1), then one <info/> to urn:xmpp:avatar:metadata
  (id, bytes, type; width and height for PNG, read from its header). Nodes made this way
  have access model open: a vCard is world-readable (XEP-0054 §5), so the avatar is no more
  visible than it already was. A vCard without a photo, once there was one, publishes an
  empty metadata (avatar disabled).
- Nothing is republished when the avatar did not change, and a conversion never triggers the
  reverse one (vcard.replace_photo and pep.publish_for_account tell no listener). An avatar
  too big for the other side ([vcard] max_size, [pep] max_item_size) is logged and not
  converted; the user's own request succeeds as usual.
- Presence (XEP-0398 §5, XEP-0153 §3): every available presence an account broadcasts
  carries <x xmlns='vcard-temp:x:update'><photo>SHA-1 of its vCard photo</photo></x>
  (<photo/> without one), replacing any <x/> the client put there: the server knows the
  stored photo, while a client's hash may be stale (slixmpp's xep_0153 sends the empty
  <photo/> it computed at login after its avatar went up by PEP, and a photo change is
  rebroadcast by replacing the server's own <x/>), so unlike §5's example a client's empty
  <photo/> is replaced too. Directed available presence (a room join, §5) gets the same,
  through the presence module's rewriter, which the router applies to it before routing.
  The hash is
  cached per online account (dropped with its last session and whenever the vCard changes),
  so the broadcast does not read storage. When the photo changes, the account's available
  resources broadcast their presence again with the new hash (XEP-0153 §4.1).
- The account advertises urn:xmpp:pep-vcard-conversion:0 (XEP-0398 §3).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

from lxml import etree

from .base import Module

if TYPE_CHECKING:
    from .._parser import Stanza
    from ..storage.pep import Item
    from ..stream.c2s import C2SStream

log = logging.getLogger("fastxmpp.avatars")

NS_CONVERSION = "urn:xmpp:pep-vcard-conversion:0"
NS_DATA = "urn:xmpp:avatar:data"
NS_METADATA = "urn:xmpp:avatar:metadata"
NS_UPDATE = "vcard-temp:x:update"
NS_VCARD = "vcard-temp"
B_NS_UPDATE = NS_UPDATE.encode()
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# XEP-0398 §4.2: the nodes a vCard photo makes carry what the vCard already shows everyone.
CONVERTED_NODE_CONFIG = {"access_model": "open"}


def update_x(photo_hash: str) -> bytes:
    """The XEP-0153 §3 presence child for `photo_hash` ("" : no photo)."""
    photo = f"<photo>{photo_hash}</photo>" if photo_hash else "<photo/>"
    return f"<x xmlns='{NS_UPDATE}'>{photo}</x>".encode()


def vcard_photo(xml: bytes | None) -> tuple[str, bytes] | None:
    """(TYPE, image bytes) of a vCard's PHOTO/BINVAL, or None (no photo, EXTVAL only, or
    BINVAL that is not base64)."""
    if xml is None:
        return None
    binval = etree.fromstring(xml).find(f"{{{NS_VCARD}}}PHOTO")
    if binval is None:
        return None
    text = binval.findtext(f"{{{NS_VCARD}}}BINVAL")
    if not text:
        return None
    try:
        image = base64.b64decode("".join(text.split()), validate=True)
    except binascii.Error:
        return None
    mime = (binval.findtext(f"{{{NS_VCARD}}}TYPE") or "").strip() or "image/png"
    return mime, image


def png_size(image: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR (PNG spec §11.2.2), or None for anything else."""
    if len(image) < 24 or not image.startswith(PNG_SIGNATURE) or image[12:16] != b"IHDR":
        return None
    return int.from_bytes(image[16:20], "big"), int.from_bytes(image[20:24], "big")


def with_update(data: bytes, x: bytes) -> bytes:
    """Presence bytes `data` with `x` as their last child."""
    if data.endswith(b"/>"):
        name_end = min(i for i in (data.find(b" "), data.find(b"/"), data.find(b">")) if i > 0)
        return data[:-2] + b">" + x + b"</" + data[1:name_end] + b">"
    cut = data.rfind(b"</")
    return data[:cut] + x + data[cut:]


class AvatarsModule(Module):
    name = "avatars"
    account_features = (NS_CONVERSION,)

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        self.vcard: Any = None
        self.pep: Any = None
        self.presence: Any = None
        # bare JID -> SHA-1 hex of its vCard photo ("" for none), for accounts online.
        self._hashes: dict[str, str] = {}

    def start(self) -> None:
        self.vcard = self.hub.get("vcard")
        self.pep = self.hub.get("pep")
        self.presence = self.hub.get("presence")
        if self.vcard is None:
            log.warning("no vcard module: no avatar conversion, no presence photo hashes")
            return
        self.vcard.on_change(self._vcard_set)
        if self.pep is not None:
            self.pep.on_publish(self._published)
        if self.presence is not None:
            self.presence.rewrite_available(self._stamp)

    # --- XEP-0153 hashes in presence -----------------------------------------------------

    def photo_hash(self, domain: str, local: str) -> str:
        """SHA-1 hex of the account's vCard photo, "" when it has none (cached)."""
        bare = f"{local}@{domain}"
        known = self._hashes.get(bare)
        if known is None:
            photo = vcard_photo(self.vcard.stored(domain, local))
            known = "" if photo is None else hashlib.sha1(photo[1]).hexdigest()
            self._hashes[bare] = known
        return known

    def _stamp(self, session: C2SStream, st: Stanza, data: bytes) -> bytes:
        """The available presence `data` with the server's <x/> (XEP-0398 §5)."""
        if session.is_remote:
            return data  # another server's users: their server's business
        x = update_x(self.photo_hash(session.domain, session.local))
        if B_NS_UPDATE not in data:
            return with_update(data, x)
        copy = etree.fromstring(etree.tostring(st.element(), encoding="utf-8"))
        for old in copy.findall(f"{{{NS_UPDATE}}}x"):
            copy.remove(old)
        copy.set("from", session.full)
        return with_update(etree.tostring(copy, encoding="utf-8"), x)

    def _photo_changed(self, domain: str, local: str) -> None:
        """XEP-0153 §4.1: the account's available resources broadcast the new hash."""
        bare = f"{local}@{domain}"
        old = self._hashes.pop(bare, None)
        if old is None or self.presence is None:
            return  # nobody online broadcast a hash
        new = self.photo_hash(domain, local)
        if new != old:
            before, after = update_x(old), update_x(new)
            self.presence.rebroadcast_available(bare, lambda data: data.replace(before, after))

    def session_ended(self, session: C2SStream) -> None:
        if all(other is session for other in self.router.resources(session.bare).values()):
            self._hashes.pop(session.bare, None)

    def account_removed(self, domain: str, local: str) -> None:
        self._hashes.pop(f"{local}@{domain}", None)

    # --- XEP-0398 §4.1: PEP to vCard -----------------------------------------------------

    def _published(self, domain: str, local: str, node: str, item: Item) -> None:
        if node != NS_METADATA:
            return
        metadata = etree.fromstring(item.payload)
        infos = metadata.findall(f"{{{NS_METADATA}}}info")
        if not infos:
            photo = None  # XEP-0084 §4.2: the avatar is disabled
        else:
            photo = self._pep_photo(domain, local, infos)
            if photo is None:
                return
        if self.vcard.replace_photo(domain, local, photo):
            self._photo_changed(domain, local)

    def _pep_photo(self, domain: str, local: str, infos: list[Any]) -> tuple[str, str] | None:
        """(TYPE, BINVAL) of the image the metadata's first <info/> without 'url' names."""
        owner = f"{local}@{domain}"
        stored = [info for info in infos if not info.get("url")]
        if not stored or self.pep is None:
            return None
        info = stored[0]
        image_id = info.get("id") or ""
        if image_id and image_id == self.photo_hash(domain, local):
            return None  # the vCard shows it already
        item = self.pep.stored_item(domain, local, NS_DATA, image_id)
        if item is None:
            log.info("avatar %s of %s: no such item in %s", image_id, owner, NS_DATA)
            return None
        text = etree.fromstring(item.payload).text or ""
        try:
            image = base64.b64decode("".join(text.split()), validate=True)
        except binascii.Error:
            log.info("avatar %s of %s: the data is not base64", image_id, owner)
            return None
        if hashlib.sha1(image).hexdigest() != image_id:
            log.info("avatar %s of %s: the id is not the SHA-1 of its data", image_id, owner)
            return None
        return info.get("type") or "image/png", base64.b64encode(image).decode()

    # --- XEP-0398 §4.2: vCard to PEP -----------------------------------------------------

    def _vcard_set(self, domain: str, local: str, xml: bytes | None) -> None:
        photo = vcard_photo(xml)
        if self.pep is not None:
            self._publish_avatar(domain, local, photo)
        self._photo_changed(domain, local)

    def _publish_avatar(self, domain: str, local: str, photo: tuple[str, bytes] | None) -> None:
        current = self.pep.stored_item(domain, local, NS_METADATA)
        if photo is None:
            if current is None or b"<info" not in current.payload:
                return  # no avatar published: nothing to disable
            empty = f"<metadata xmlns='{NS_METADATA}'/>".encode()
            self.pep.publish_for_account(
                domain, local, NS_METADATA, "current", empty, CONVERTED_NODE_CONFIG
            )
            return
        mime, image = photo
        image_id = hashlib.sha1(image).hexdigest()
        if current is not None and current.id == image_id:
            return  # already the published avatar
        data = f"<data xmlns='{NS_DATA}'>{base64.b64encode(image).decode()}</data>".encode()
        if not self.pep.publish_for_account(
            domain, local, NS_DATA, image_id, data, CONVERTED_NODE_CONFIG
        ):
            return
        attrs = f"id='{image_id}' bytes='{len(image)}' type={quoteattr(mime)}"
        size = png_size(image) if mime == "image/png" else None
        if size is not None:
            attrs += f" width='{size[0]}' height='{size[1]}'"
        metadata = f"<metadata xmlns='{NS_METADATA}'><info {attrs}/></metadata>".encode()
        self.pep.publish_for_account(
            domain, local, NS_METADATA, image_id, metadata, CONVERTED_NODE_CONFIG
        )


MODULE = AvatarsModule
