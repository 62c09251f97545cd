"""XEP-0486 MUC Avatars: a room's vcard-temp (XEP-0054) on its bare JID.

- Rooms (and the service, §3.1) advertise `vcard-temp`; a room with an avatar adds
  `muc#roominfo_avatarhash` to its muc#roominfo form (§3.3): the XEP-0153 hash (SHA-1, hex)
  of each <PHOTO/>'s decoded <BINVAL/> (§5.1), absent without an avatar (§4).
- A get to the room's bare JID, from anyone (§2: users discover the avatar before joining),
  returns the room's vCard, or an empty <vCard/> when it has none (as the vcard module does
  for accounts: XEP-0054 §3.1). A get to the service's own JID: item-not-found (it has none).
- A set: owners only (the service's admins are owners of every room), others forbidden (§3.2,
  §6); it replaces the whole vCard (XEP-0054 §3.2), an empty one removes it (§3.2); the vCard
  is kept as sent (namespace declarations reduced to those used), within `[vcard] max_size`
  bytes (not-acceptable beyond, as for accounts). A BINVAL that is not base64: bad-request.
- A change is acknowledged once stored, then occupants hear of it (§3.2): a groupchat message
  with status 104, and, as Prosody and ejabberd do for the clients that look for it
  (Conversations), the XEP-0153 presence from the room's bare JID (§5.2, with an empty
  <photo/> once the avatar is gone). Each session entering a room with an avatar gets that
  presence too, after its self-presence.
- The vCard lives with the room: stored in a persistent room's record (storage/muc.py), in
  memory only for a temporary room (as ejabberd keeps it in the room's configuration), gone
  when the room is destroyed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import TYPE_CHECKING, Any

from lxml import etree

from ...errors import StanzaError
from ..base import iq_result
from ..private import fragment_xml

if TYPE_CHECKING:
    from ..._parser import Stanza
    from .room import OccupantSession, Room

NS = "vcard-temp"
NS_UPDATE = "vcard-temp:x:update"  # XEP-0153
VCARD = f"{{{NS}}}vCard"
PHOTO = f"{{{NS}}}PHOTO"
BINVAL = f"{{{NS}}}BINVAL"
EMPTY_VCARD = f"<vCard xmlns='{NS}'/>"
AVATAR_HASH_FIELD = "muc#roominfo_avatarhash"


def avatar_hashes(vcard: Any) -> tuple[str, ...]:
    """§5.1: the hash of every <PHOTO/> (XEP-0153 §4.3: SHA-1 of the image data, in hex),
    each once; StanzaError(bad-request) for a BINVAL that is not base64."""
    hashes: list[str] = []
    for photo in vcard.findall(PHOTO):
        text = photo.findtext(BINVAL)
        if not text or not text.strip():
            continue  # an EXTVAL photo, or none: nothing the room can hash
        try:
            data = base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError):
            raise StanzaError("bad-request", "a BINVAL is not base64") from None
        digest = hashlib.sha1(data).hexdigest()  # XEP-0153 §4.3 names SHA-1
        if digest not in hashes:
            hashes.append(digest)
    return tuple(hashes)


def stored_hashes(xml: bytes) -> tuple[str, ...]:
    """The avatar hashes of a vCard from the store (checked there: storage/muc.py)."""
    try:
        return avatar_hashes(etree.fromstring(xml))
    except StanzaError:
        return ()


def service_vcard_iq(st: Stanza) -> None:
    """A vCard request to the service's own JID: it has no vCard (XEP-0054 §3.1), and none
    can be set there."""
    if st.attrs.get("type") == "set":
        raise StanzaError("forbidden", "the service's vCard cannot be set")
    raise StanzaError("item-not-found", "the service has no vCard")


def vcard_iq(room: Room, origin: OccupantSession, st: Stanza) -> bytes | None:
    """A get or set of the room's vCard; a set is answered here (then occupants hear of the
    change), and None returned."""
    vcard = st.element().find(VCARD)
    if vcard is None:
        raise StanzaError("bad-request", "the vcard-temp payload is <vCard/>")
    if st.attrs.get("type") == "get":
        current = room.vcard
        return iq_result(origin, st, EMPTY_VCARD if current is None else current.decode())
    if room.affiliation(origin.bare) != "owner":
        raise StanzaError("forbidden", "only the room's owners may set its vCard")
    xml = None
    hashes: tuple[str, ...] = ()
    if any(isinstance(child.tag, str) for child in vcard):
        xml = fragment_xml(vcard)
        limit = room.service.module.config.vcard.max_size
        if len(xml) > limit:
            raise StanzaError("not-acceptable", f"a vCard may hold at most {limit} bytes")
        hashes = avatar_hashes(vcard)
    if xml == room.vcard:
        origin.send(iq_result(origin, st))
        return None
    previous = (room.vcard, room.avatar_hashes)
    room.vcard, room.avatar_hashes = xml, hashes
    try:
        room.changed()
    except StanzaError:
        room.vcard, room.avatar_hashes = previous
        raise
    origin.send(iq_result(origin, st))
    room.notify(["104"])  # §3.2: the room's configuration changed
    for _, full, session in room.sessions():
        room.send_avatar_update(full, session)
    return None
