"""XEP-0421 occupant identifiers: every room of the service gives each user (a real bare JID)
an id of its own, the same whatever the nickname or resource and across restarts, which
the room puts in every presence and message it sends about or from that occupant.

- The id (§4.1): HMAC-SHA-256 keyed with the service's secret over `room JID NUL bare JID`,
  the first ID_BYTES bytes in base64url (24 characters; §4.1 allows 128). The secret is 32
  random bytes made once and kept in the store (MucStore.occupant_id_secret): ids survive
  restarts and no one can compute one from the JIDs alone; the room JID in the input gives
  one user different ids in different rooms (§4.1: no matching across rooms).
- The feature is on in every room, so the service advertises it as well (§4).
- Any <occupant-id/> a client put in its own stanza is removed before the room adds its own
  (§4: one element, the room's; §5: no forging). Stanzas the room sends from its own bare
  JID (status notices, invitations, an empty subject) come from no occupant and carry none.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import TYPE_CHECKING, Any

from lxml import etree

if TYPE_CHECKING:
    from ..._parser import Stanza

NS = "urn:xmpp:occupant-id:0"
TAG = (NS, "occupant-id")
CLARK = f"{{{NS}}}occupant-id"
# Stored messages were a client's stanza (no DTD); parsed with no entities all the same.
_STORED_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
# 144 bits: no two users of a room meet by chance, and a multiple of 3 bytes has no padding.
ID_BYTES = 18


def make_id(secret: bytes, room_jid: str, bare: str) -> str:
    """§4.1 (the service secret variant): stable, unique, pseudonymous."""
    digest = hmac.new(secret, f"{room_jid}\0{bare}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:ID_BYTES]).decode()


def element(occupant_id: str) -> str:
    """The element the room adds (base64url needs no escaping in an attribute)."""
    return f"<occupant-id xmlns='{NS}' id='{occupant_id}'/>"


def remove_forged(tree: Any) -> None:
    """§4: the client's <occupant-id/> elements out of `tree` (a stanza's lxml element)."""
    for child in tree.findall(CLARK):
        tree.remove(child)


def without_forged_stored(xml: bytes) -> bytes:
    """A stored message (a room archive's record) without the sender's <occupant-id/>."""
    tree = etree.fromstring(xml, _STORED_PARSER)
    remove_forged(tree)
    return bytes(etree.tostring(tree))


def without_forged(st: Stanza, sender: str) -> bytes:
    """The stanza with 'from' `sender`, no 'to' and none of the client's <occupant-id/>."""
    tree = st.element()
    remove_forged(tree)
    tree.attrib.pop("to", None)
    tree.set("from", sender)
    return bytes(etree.tostring(tree))
