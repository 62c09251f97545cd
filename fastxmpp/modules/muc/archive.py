"""XEP-0313 archives of rooms (§3.2 "MUC archives", §6.1.2 business rules), with the
room's XEP-0359 stanza-ids.

- Whether a room archives: muc#roomconfig_enablearchiving as its owner chose, else
  `[muc] archive_rooms` ("persistent": persistent rooms do, temporary ones do not).
- What: each groupchat message with a <body/> and each subject change the room accepts,
  once (§6.1.2), not private messages; none with a XEP-0334 storage hint against it. The
  record is the message as the room sends it ('from' the occupant JID, no 'to'), without
  any muc#user <x/> the sender put in (§8.2: spoofing), with the room's own <x/> carrying
  the sender's real JID, which a query shows only to those who may see real JIDs (§6.1.2,
  XEP-0045 §4.1). Every delivered copy (and the discussion history's) carries
  <stanza-id by=room id=.../> with the record's id; one a sender put there by the room is
  removed (XEP-0359 §5), archiving or not.
- XEP-0421 occupant ids: every copy (and the history's) carries the sender's; a sender's own
  <occupant-id/> is removed from the copies and the record (§4, §5). A query's results
  get theirs computed from the real JID the record keeps (`with_occupant_id`), rather than
  stored in the record: the real JID is in every record anyway, so messages archived
  before the room had occupant ids get theirs too, and the same HMAC (occupant_id.py) makes
  every id the room ever shows, live or archived.
- Where: the user archives' store (storage/mam.py), as the "account" `room@service`: keys
  `account_prefix(service, room)`, which no account can have (the service domain is never a
  host, service.py). The store's ids, paging, retention and group commit serve rooms
  unchanged; the records go through the user archives' writer (MamModule.archive), so the
  sender's output (its XEP-0198 <a/>) is held until they are on disk. Limits of its own:
  `[muc] archive_max_messages`, `archive_max_age_days`.
- Queries (§4) at the room's bare JID: the same parsing and paging as user archives
  (mam.parse_query, mam.answer_query). 'with' is an occupant JID (room@service/nick: the
  publisher, visible to all in the results anyway); a real JID matches nothing. Access as
  entering the room at the time of the query (§6.1.2): outcasts never; members-only and
  password-protected rooms only for members, admins, owners (and occupants, who entered).
- The archive goes with the room (destroyed, or a temporary room's last occupant gone).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

from lxml import etree

from ... import ns
from ..._router import append_child, declares_its_namespace, start_tag_attr
from ...errors import StanzaError
from ...jid import JIDError, parse_jid
from ...storage.account_data import account_prefix
from ..base import iq_result
from ..mam import (
    BODY,
    NOT_STORED,
    NS,
    NS_SID,
    answer_query,
    archive_metadata,
    parse_query,
    query_form,
)
from . import occupant_id

if TYPE_CHECKING:
    from ..._parser import Stanza
    from ..mam import MamModule
    from .room import Occupant, OccupantSession, Room

CLIENT = ns.CLIENT
NS_USER = ns.MUC_USER
SUBJECT = (CLIENT, "subject")
FORGED = frozenset(((NS_SID, "stanza-id"), (NS_USER, "x"), occupant_id.TAG))
# The start of the muc#user <x/> the room adds to a record: the last one in it (a sender's
# are removed first), cut for askers who may not see real JIDs.
REAL_JID_HEAD = f"<x xmlns='{NS_USER}'><item".encode()
OCCUPANT_ID_NS = occupant_id.NS.encode()


def archive_of(room: Room) -> MamModule | None:
    """The module keeping the room's archive, None when the room does not archive."""
    service = room.service
    if not room.config.archives(service.limits.archive_rooms):
        return None
    mam: MamModule | None = service.module.hub.get("mam")
    return None if mam is None or mam.store is None else mam


def archives_anything(room: Room) -> bool:
    """Whether the server keeps room archives at all (the config form's field)."""
    mam = room.service.module.hub.get("mam")
    return mam is not None and mam.store is not None


def archivable(st: Stanza) -> bool:
    """§6.1.2: a message with a body, or a subject change; no XEP-0334 hint against it."""
    children = st.children
    if BODY not in children and SUBJECT not in children:
        return False
    return not any(child in NOT_STORED for child in children)


def outgoing(
    room: Room,
    origin: OccupantSession,
    st: Stanza,
    occupant: Occupant,
    without_body: bool = False,
) -> bytes:
    """The groupchat message as the room sends it, without 'to' (each copy gets its own):
    'from' the occupant JID, no stanza-id by the room nor occupant id that the sender
    forged, the sender's occupant id, and, when the room archives it, its own stanza-id;
    the record is queued for the archive. `without_body`: its <body/> left out (an empty
    one beside a subject, room.groupchat)."""
    sender = room.occupant_jid(occupant.nick)
    forged = without_body or any(child in FORGED for child in st.children)
    mam = archive_of(room) if archivable(st) else None
    if not forged:
        data: bytes = st.with_attrs({"from": sender, "to": None})
        record = data if mam is None else _declared(st, sender)
    else:
        element = st.element()
        if without_body:
            _remove(element, (f"{{{CLIENT}}}body",))
        _remove(element, (f"{{{NS_SID}}}stanza-id",), by=room.jid)
        occupant_id.remove_forged(element)
        element.attrib.pop("to", None)
        element.set("from", sender)
        data = bytes(etree.tostring(element))
        # §8.2 (MUC message spoofing): no muc#user <x/> of the sender's in the archive.
        _remove(element, (f"{{{NS_USER}}}x",))
        record = bytes(etree.tostring(element))
    data = append_child(data, occupant.id_xml.encode())
    if mam is None:
        return data
    assert mam.store is not None
    number = mam.store.next_number()
    record = append_child(
        record, f"{REAL_JID_HEAD.decode()} jid={quoteattr(origin.full)}/></x>".encode()
    )
    limits = room.service.limits
    row = (archive_prefix(room), number, time.time(), sender, "in", record)
    mam.archive(row, origin, st, limits.archive_max_messages, limits.archive_max_age_days * 86400.0)
    room.archived = True
    sid = f"<stanza-id xmlns='{NS_SID}' by={quoteattr(room.jid)} id='{number:016x}'/>"
    return append_child(data, sid.encode())


def _declared(st: Stanza, sender: str) -> bytes:
    """The message for inside a <forwarded/>: declared in jabber:client, which it no longer
    inherits from the stream there."""
    changes: dict[str, str | None] = {"from": sender, "to": None}
    if not declares_its_namespace(st):
        changes["xmlns"] = CLIENT
    record: bytes = st.with_attrs(changes)
    return record


def _remove(element: Any, tags: tuple[str, ...], by: str | None = None) -> None:
    for child in list(element):
        if child.tag in tags and (by is None or child.get("by") == by):
            element.remove(child)


def archive_prefix(room: Room) -> bytes:
    return account_prefix(room.service.domain, room.name)


# --- queries (§4) -------------------------------------------------------------------------------


def query_iq(room: Room, origin: OccupantSession, st: Stanza) -> bytes | None:
    """An iq in urn:xmpp:mam:2 to the room's bare JID; None: answered later."""
    mam = archive_of(room)
    if mam is None:
        raise StanzaError("service-unavailable", "this room keeps no archive")
    _check_access(room, origin)
    assert mam.store is not None
    payload = next(c for c in st.element() if isinstance(c.tag, str))
    tag = etree.QName(payload).localname
    itype = st.attrs.get("type")
    if tag == "query" and itype == "get":
        return iq_result(origin, st, f"<query xmlns='{NS}'>{query_form()}</query>")
    domain, local = room.service.domain, room.name
    store = mam.store
    if tag == "metadata" and itype == "get":
        return iq_result(
            origin, st, archive_metadata(store, domain, local, mam.uncommitted(domain, local))
        )
    if tag != "query" or itype != "set":
        raise StanzaError("bad-request", f"unexpected {tag} in an iq {itype}")
    request = parse_query(payload, mam.settings.max_page, _occupant_jid)
    real_jids = _sees_real_jids(room, origin)
    ids: dict[str, str] = {}  # bare JID -> occupant id, for this answer's records

    def render(record: Any) -> bytes:
        return with_occupant_id(room, record.xml, real_jids, ids)

    # What the room archived until now is part of the answer (`MamModule.answer_settled`).
    return mam.answer_settled(
        origin, st, domain, local,
        lambda: answer_query(store, origin, st, domain, local, request, room.jid, render),
    )  # fmt: skip


def _check_access(room: Room, origin: OccupantSession) -> None:
    """§6.1.2: whoever may enter the room now may read its archive."""
    affiliation = room.affiliation(origin.bare)
    if affiliation == "outcast":
        raise StanzaError("forbidden", "you are banned from this room")
    if affiliation != "none":
        return
    if room.config.members_only:
        raise StanzaError("forbidden", "the archive of a members-only room is for members")
    if room.config.password_protected and origin.full not in room.by_jid:
        # entering needs the password, which a query does not carry
        raise StanzaError("forbidden", "the archive of this room is for those who entered")


def _sees_real_jids(room: Room, origin: OccupantSession) -> bool:
    """XEP-0045 §4.1: everyone in a non-anonymous room; in a semi-anonymous one, moderators
    (admins and owners enter as moderators)."""
    if room.config.whois == "anyone" or room.affiliation(origin.bare) in ("owner", "admin"):
        return True
    occupant = room.by_jid.get(origin.full)
    return occupant is not None and occupant.role == "moderator"


def with_occupant_id(room: Room, xml: bytes, real_jid: bool, ids: dict[str, str]) -> bytes:
    """An archived message as a query shows it: with the sender's XEP-0421 occupant id
    (computed from the real JID in the room's muc#user <x/>, cached in `ids`), and that
    <x/> only if `real_jid` (those who may see real JIDs)."""
    start = xml.rfind(REAL_JID_HEAD)
    if start < 0:
        return xml  # not a record the room made (it always adds the real JID)
    end = xml.index(b"</x>", start) + len(b"</x>")
    sender = start_tag_attr(xml[start + len(REAL_JID_HEAD) - len(b"<item") :], "jid") or ""
    bare = sender.partition("/")[0]
    if not real_jid:
        xml = xml[:start] + xml[end:]
    if OCCUPANT_ID_NS in xml:
        # a sender's own, archived before the room removed them (§4: one, the room's)
        xml = occupant_id.without_forged_stored(xml)
    if not bare:
        return xml  # no sender to make an id for
    known = ids.get(bare)
    if known is None:
        known = ids[bare] = room.occupant_id(bare)
    return append_child(xml, occupant_id.element(known).encode())


def _occupant_jid(text: str) -> str:
    """'with' in a room's archive: an occupant JID, prepared as the room's are."""
    try:
        return parse_jid(text.strip()).full
    except JIDError as exc:
        raise StanzaError("jid-malformed", f"{text!r} is no JID: {exc}") from None


# --- the archive's end ----------------------------------------------------------------------------


def forget(room: Room) -> None:
    """The room's archive goes (the room is destroyed, or ends): nothing of it stays."""
    mam = room.service.module.hub.get("mam")
    if mam is None or mam.store is None:
        return
    if room.archived or mam.store.count(room.service.domain, room.name):
        mam.forget(room.service.domain, room.name)
        room.archived = False
