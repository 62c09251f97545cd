"""The multi-user chat service (XEP-0045): one service domain per host (`[muc] domain`),
registered with `Router.add_service`, which hands it every stanza a client addresses to the
service, a room or an occupant.

- The service itself (§6.1-6.3): disco#info (conference/text, the MUC features), disco#items
  (the public rooms), muc#unique room names (§10.1.4), a vCard request (it has none: vcard.py);
  other iqs: service-unavailable. Rooms answer vCard requests too (XEP-0486, vcard.py).
- Rooms are created by entering them (§10.1): locked (status 201) until the owner submits a
  configuration (an empty form: an instant room), or until `[muc] lock_timeout` passes
  without one (§10.1.1 step 4: the default configuration is taken as accepted). A presence
  without <x xmlns='http://jabber.org/protocol/muc'/> from a non-occupant gets the kick
  §7.2.1 recommends (110, 307, 333: a client out of sync with the room); with `[muc]
  groupchat_1_0 = true` it enters as a groupchat 1.0 client did, and a room it creates is
  instant.
- Rooms live in memory; persistent ones (muc#roomconfig_persistentroom) are also stored
  (fastxmpp/storage/muc.py) and reloaded at start. A temporary room goes with its last
  occupant.
- Occupants are local sessions: a session that ends, or broadcasts unavailable presence
  (RFC 6121 §4.6.3), leaves every room it is in.
- Users of other servers too, when federation is on (`[s2s] enabled`): the service's domain
  has server links of its own (stream/s2s.py, `S2S.federate_service`). Their stanzas come
  with a new RemoteOrigin each; the service keeps the first one of a full JID as that
  occupant's session (`remote_occupants`) while it is in one of its rooms, so that a room
  finds the same object in its occupants whatever stanza comes next, and forgets it with
  the last room it leaves. A remote occupant leaves as a local one does (unavailable
  presence, which its server also sends when its session ends), is kicked or banned, or is
  removed when it or its server answers with an error that shows it gone (§19.1.2, status
  333; our own link failing to its server bounces a room's message as such an error). A
  link that fails removes no one by itself: the next message the room sends finds out.
  Bounded by `[muc] max_remote_occupants` and `max_remote_occupants_per_server`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape, quoteattr

from ...errors import StanzaError
from ...jid import JIDError, normalize_domain, parse_jid
from ...metrics import Figure
from ...records import RecordSlot
from ...storage.lmdb_store import StorageFull
from ...storage.muc import MucStore
from ..base import Module, iq_result
from .admin import (
    NS_ADMIN,
    NS_OWNER,
    REQUEST_FORM,
    admin_iq,
    form_values,
    invitations,
    owner_iq,
    voice_form,
)
from .archive import archive_of, forget, query_iq
from .config import NS_DATA, RoomConfig, roominfo_form
from .occupant_id import NS as NS_OCCUPANT_ID
from .room import (
    NS_MUC,
    NS_USER,
    REMOVED_FOR_ERROR,
    Room,
    nick_key,
    reflected_children,
    shows_gone,
)
from .vcard import NS as NS_VCARD
from .vcard import service_vcard_iq, vcard_iq

if TYPE_CHECKING:
    from ..._parser import Stanza
    from ...config import MucConfig
    from ...stream.s2s import S2S
    from ..presence import PresenceModule
    from .room import OccupantSession

log = logging.getLogger("fastxmpp.muc")

NS_INFO = "http://jabber.org/protocol/disco#info"
NS_MAM = "urn:xmpp:mam:2"
NS_SID = "urn:xmpp:sid:0"
NS_ITEMS = "http://jabber.org/protocol/disco#items"
NS_UNIQUE = NS_MUC + "#unique"
NS_TRAFFIC = NS_MUC + "#traffic"
ROOMUSER_NODE = "x-roomuser-item"
SELF_PING = NS_MUC + "#self-ping-optimization"  # XEP-0410 §3.3
# §7.4: messages are reflected with their 'id'; self-presence answering a join or an exit
# carries the id of the presence that asked (clients that see this feature wait for it).
STABLE_ID = NS_MUC + "#stable_id"
SERVICE_NAME = "Chatrooms"
# XEP-0421 §4: every room has occupant ids, so the service says so as well; XEP-0486 §3.1:
# clients look for the service's vcard-temp feature before using room avatars.
SERVICE_FEATURES = (NS_INFO, NS_ITEMS, NS_MUC, NS_UNIQUE, STABLE_ID, NS_OCCUPANT_ID, NS_VCARD)
IQ_TYPES = ("get", "set", "result", "error")


@dataclass(slots=True)
class MucRecord:
    """The rooms a session is in: it leaves them when it ends or goes unavailable."""

    rooms: set[Room] = field(default_factory=set)


MUC = RecordSlot(MucRecord)


class MucService:
    """The rooms of one service domain."""

    def __init__(self, module: MucModule, domain: str, host: str) -> None:
        self.module = module
        self.domain = domain
        self.host = host
        self.router = module.router
        self.limits: MucConfig = module.config.muc
        self.admins = frozenset(self.limits.admins)
        self.rooms: dict[str, Room] = {}
        # Users of other servers in the rooms: full JID -> the session that stands for it
        # (the RemoteOrigin of its first stanza that joined), and how many per server.
        self.remote_occupants: dict[str, OccupantSession] = {}
        self.remote_per_server: Counter[str] = Counter()
        self.federation: S2S | None = module.federation
        assert module.store is not None
        self.occupant_id_secret = module.store.occupant_id_secret()  # XEP-0421 §4.1

    def load(self) -> None:
        assert self.module.store is not None
        # A stored room that does not load is quarantined by the store, the others load.
        for name, room in self.module.store.rooms(self.domain, self._load_room):
            self.rooms[name] = room
        if self.rooms:
            log.info("%s: %d persistent rooms", self.domain, len(self.rooms))

    def _load_room(self, name: str, record: dict[str, Any]) -> Room:
        config = RoomConfig.from_record(record.get("config", {}))
        # limits lowered since the room was configured apply to it now
        config.max_users = min(config.max_users, self.limits.max_occupants)
        config.history_length = min(config.history_length, self.limits.max_history)
        room = Room(self, name, config)
        room.load_record(record)
        room.stored = True
        return room

    # --- bookkeeping the rooms call ----------------------------------------------------------

    def joined(self, session: OccupantSession, room: Room) -> None:
        MUC.of(session).rooms.add(room)
        if session.is_remote and session.full not in self.remote_occupants:
            self.remote_occupants[session.full] = session
            self.remote_per_server[session.domain] += 1

    def left(self, session: OccupantSession, room: Room) -> None:
        record = MUC.get(session)
        if record is not None:
            record.rooms.discard(room)
            if not record.rooms:
                MUC.drop(session)
                if self.remote_occupants.get(session.full) is session:
                    del self.remote_occupants[session.full]
                    self.remote_per_server[session.domain] -= 1
                    if self.remote_per_server[session.domain] <= 0:
                        del self.remote_per_server[session.domain]

    def _check_remote_room_for(self, origin: OccupantSession) -> None:
        """A user of another server that is in none of the rooms yet, joining one: within
        `max_remote_occupants` and `max_remote_occupants_per_server`."""
        limits = self.limits
        if (
            len(self.remote_occupants) >= limits.max_remote_occupants
            or self.remote_per_server[origin.domain] >= limits.max_remote_occupants_per_server
        ):
            raise StanzaError(
                "resource-constraint", "the rooms hold all the remote users they can", "wait"
            )

    def save(self, room: Room) -> None:
        store = self.module.store
        assert store is not None
        if self.rooms.get(room.name) is not room:
            return
        try:
            if room.config.persistent and not room.locked:
                store.save(self.domain, room.name, room.to_record())
                room.stored = True
            elif room.stored:
                store.delete(self.domain, room.name)
                room.stored = False
        except StorageFull:
            raise StanzaError("resource-constraint", "the server's storage is full") from None

    def maybe_discard(self, room: Room) -> None:
        """A temporary room ends with its last occupant (§10.1.3 persistentroom)."""
        if not room.occupants and not room.config.persistent:
            self.discard(room)

    def _open_unconfigured(self, room: Room) -> None:
        """§10.1.1 step 4: an owner that did not configure the room within [muc]
        lock_timeout is taken to have accepted the default configuration (an instant room,
        §10.1.2), so that others may enter."""
        room.unlock_timer = None
        if self.rooms.get(room.name) is room and room.locked:
            room.locked = False
            log.info("room %s opened with the default configuration (not configured)", room.jid)
            room.changed()

    def discard(self, room: Room) -> None:
        if room.unlock_timer is not None:
            room.unlock_timer.cancel()
            room.unlock_timer = None
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]
            forget(room)  # its XEP-0313 archive goes with it
            assert self.module.store is not None
            if not room.stored:
                return  # a temporary room: nothing was written
            try:
                self.module.store.delete(self.domain, room.name)
            except StorageFull:
                log.warning("cannot delete room %s: storage full", room.jid)

    def account_vcard(self, bare: str) -> bytes | None:
        """The vCard of `bare` when it is an account of this server, for a vCard request
        sent to its occupant JID (clients ask there: Gajim, Pidgin; Prosody and ejabberd
        answer from the account too); service-unavailable when it has none (XEP-0054 §3.3).
        None for a user of another server, whose request goes on to its client."""
        vcards = self.module.server.modules.get("vcard")
        jid = parse_jid(bare)
        if vcards is None or not self.router.is_local(jid.domain):
            return None
        stored: bytes | None = vcards.stored(jid.domain, jid.local)
        if stored is None:
            raise StanzaError("service-unavailable")
        return stored

    def send_remote(self, data: bytes, to: str) -> None:
        """`data`, from one of the service's JIDs, to a JID of another server."""
        if self.federation is not None:
            self.federation.deliver(data, to)

    def can_invite(self, bare: str) -> bool:
        """Whether an invitation can go to `bare`: an account here, or a user of another
        server when federation is on (whether it exists is its server's business)."""
        try:
            jid = parse_jid(bare)
        except JIDError:
            return False
        if not jid.local or self.router.is_service(jid.domain):
            return False
        if not self.router.is_local(jid.domain):
            return self.federation is not None
        return bool(self.router.resources(jid.bare)) or bool(
            self.router.user_exists(jid.domain, jid.local)
        )

    def deliver(self, bare: str, xml: str) -> None:
        """A message from the service to an account's available resources (invitations and
        declines; nothing is stored for an account that is offline), or to a user of
        another server, over the service's server links (§7.8.2: from the room's JID)."""
        data = xml.encode()
        if self.federation is not None and not self.router.is_local(parse_jid(bare).domain):
            self.federation.deliver(data, bare)
            return
        for session in self.router.resources(bare).values():
            if session.available:
                session.send(data)

    # --- stanzas -----------------------------------------------------------------------------

    def handle(
        self, origin: OccupantSession, st: Stanza, target: tuple[str, str, str, str]
    ) -> None:
        """Router.add_service handler: every stanza to the service, a room or an occupant."""
        if origin.is_remote:
            # One object per remote occupant: the one the rooms hold, once it is in one.
            origin = self.remote_occupants.get(origin.full, origin)
        room_name, _, nick, _ = target
        kind = st.name
        if kind == "iq":
            self._check_iq(st)
        if not room_name:
            self._to_service(origin, st)
        elif kind == "presence":
            self._presence(origin, st, room_name, nick)
        elif kind == "message":
            self._message(origin, st, room_name, nick)
        else:
            self._iq(origin, st, room_name, nick)

    @staticmethod
    def _check_iq(st: Stanza) -> None:
        # RFC 6120 §8.2.3, as the router checks iqs it routes itself.
        itype = st.attrs.get("type")
        if st.attrs.get("id") is None:
            raise StanzaError("bad-request", "an iq needs an 'id' (RFC 6120 §8.2.3)")
        if itype not in IQ_TYPES:
            raise StanzaError("bad-request", "iq type must be get, set, result or error")
        if itype in ("get", "set") and len(st.children) != 1:
            raise StanzaError("bad-request", "an iq get/set has exactly one payload")

    def _to_service(self, origin: OccupantSession, st: Stanza) -> None:
        if st.name == "presence":
            return  # nothing to do with presence to the service itself
        itype = st.attrs.get("type")
        if st.name == "message":
            if itype != "error":
                raise StanzaError("service-unavailable", "send messages to a room")
            return
        if itype not in ("get", "set"):
            return
        namespace = st.children[0][0]
        element = st.element()
        if itype == "get" and namespace == NS_INFO:
            self._node_check(element, NS_INFO)
            features = "".join(f"<feature var='{f}'/>" for f in SERVICE_FEATURES)
            payload = (
                f"<query xmlns='{NS_INFO}'><identity category='conference' type='text' "
                f"name='{SERVICE_NAME}'/>{features}</query>"
            )
        elif itype == "get" and namespace == NS_ITEMS:
            self._node_check(element, NS_ITEMS)
            items = "".join(
                f"<item jid={quoteattr(room.jid)} name={quoteattr(room.config.name or name)}/>"
                for name, room in sorted(self.rooms.items())
                if room.config.public and not room.locked
            )
            payload = f"<query xmlns='{NS_ITEMS}'>{items}</query>"
        elif itype == "get" and namespace == NS_UNIQUE:
            # §10.1.4: a name no room has.
            name = secrets.token_hex(8)
            while name in self.rooms:
                name = secrets.token_hex(8)
            payload = f"<unique xmlns='{NS_UNIQUE}'>{name}</unique>"
        elif namespace == NS_VCARD:
            service_vcard_iq(st)
            return
        else:
            raise StanzaError("service-unavailable")
        origin.send(iq_result(origin, st, payload))

    @staticmethod
    def _node_check(element: Any, namespace: str) -> Any:
        query = element.find(f"{{{namespace}}}query")
        if query is None:
            raise StanzaError("bad-request", "a <query/> is expected")
        node = query.get("node")
        if node == NS_TRAFFIC:
            # §16.1.1: no extended namespace is filtered.
            raise StanzaError("service-unavailable")
        if node is not None:
            raise StanzaError("item-not-found", "no such node")
        return query

    # --- presence: entering, changing, leaving ----------------------------------------------

    def _presence(self, origin: OccupantSession, st: Stanza, room_name: str, nick: str) -> None:
        ptype = st.attrs.get("type")
        room = self.rooms.get(room_name)
        if ptype in ("unavailable", "error"):
            # §7.14 (and §17.3 rule 5: from a non-occupant it is ignored).
            if room is None or origin.full not in room.by_jid:
                return
            if ptype == "error":
                # §19.1.2 (ghost users): an error presence from an occupant's client or its
                # server removes it, as if it had left, with status 333.
                room.leave(origin, codes=REMOVED_FOR_ERROR)
            else:
                room.leave(origin, reflected_children(st), st.attrs.get("id"))
            return
        if ptype == "probe" and room is not None and origin.full in room.by_jid:
            # §17.3 rule 4: an occupant asks for another occupant's (or its own) presence.
            room.probe(origin, nick)
            return
        if ptype is not None:
            return  # §17.3 rules 1, 4: probes and subscriptions are no join
        if not nick:
            raise StanzaError("jid-malformed", "enter a room as room@service/nickname")
        nick_key(nick)  # §17.1: not blank, nothing invisible
        if len(nick) > self.limits.max_nick_length:
            raise StanzaError(
                "not-acceptable", f"nicknames are at most {self.limits.max_nick_length} characters"
            )
        element = st.element()
        muc_x = element.find(f"{{{NS_MUC}}}x")
        if room is not None and origin.full in room.by_jid:
            if room.by_jid[origin.full].nick != nick:
                room.change_nick(origin, st, nick)
            elif muc_x is not None:
                room.resync(origin, st, muc_x)
            else:
                room.change_presence(origin, st)
            return
        if muc_x is None and not self.limits.groupchat_1_0:
            # §7.2.1 (since version 1.32): a presence without <x/> from a non-occupant is
            # most likely a client that lost track of the room (a restart, a missed exit);
            # entering it would hide that. Told with a kick (110, 307, 333), it joins again.
            self._kick_out_of_sync(origin, room_name, nick)
            return
        if origin.is_remote and origin.full not in self.remote_occupants:
            self._check_remote_room_for(origin)
        created = room is None
        if room is None:
            room = self._create(origin, room_name, locked=muc_x is not None)
        try:
            room.enter(origin, st, nick, muc_x, created)
        except StanzaError:
            if created:
                self.discard(room)
            raise

    def _kick_out_of_sync(self, origin: OccupantSession, room_name: str, nick: str) -> None:
        occupant_jid = f"{room_name}@{self.domain}/{nick}"
        origin.send(
            f"<presence from={quoteattr(occupant_jid)} to={quoteattr(origin.full)} "
            f"type='unavailable'><x xmlns='{NS_USER}'><item affiliation='none' role='none'>"
            "<reason>You are not in the room.</reason></item><status code='110'/>"
            "<status code='307'/><status code='333'/></x></presence>".encode()
        )

    def _create(self, origin: OccupantSession, name: str, locked: bool) -> Room:
        """§10.1.1: the creator becomes the room's owner."""
        limits = self.limits
        policy = limits.create_rooms
        if policy == "admins" and origin.bare not in self.admins:
            raise StanzaError("not-allowed", "only the service's admins create rooms")
        if policy == "local" and not self.router.is_local(origin.domain):
            raise StanzaError("not-allowed", "only local users create rooms")
        if len(self.rooms) >= limits.max_rooms:
            raise StanzaError("resource-constraint", "the service holds all the rooms it can")
        owned = sum(1 for r in self.rooms.values() if r.affiliations.get(origin.bare) == "owner")
        if owned >= limits.max_rooms_per_user and origin.bare not in self.admins:
            raise StanzaError(
                "resource-constraint", f"you own {owned} rooms already, the most allowed"
            )
        room = Room(
            self,
            name,
            RoomConfig(max_users=limits.max_occupants, history_length=limits.history_default),
        )
        room.affiliations[origin.bare] = "owner"
        room.locked = locked
        if locked and limits.lock_timeout > 0:
            room.unlock_timer = asyncio.get_running_loop().call_later(
                limits.lock_timeout, self._open_unconfigured, room
            )
        # An archive a temporary room of that name left when the server stopped without
        # discarding it is not the new room's.
        forget(room)
        self.rooms[name] = room
        return room

    # --- messages ----------------------------------------------------------------------------

    def _message(self, origin: OccupantSession, st: Stanza, room_name: str, nick: str) -> None:
        mtype = st.attrs.get("type", "normal")
        room = self.rooms.get(room_name)
        if room is None or (room.locked and origin.full not in room.by_jid):
            if mtype != "error":
                raise StanzaError("item-not-found", "no such room")  # §17.2 rule 3
            return
        if nick:
            room.private_message(origin, st, nick)
            return
        if mtype == "groupchat":
            room.groupchat(origin, st)
            return
        if mtype == "error":
            if origin.full in room.by_jid and shows_gone(st):
                # §19.1.2: a message of the room's own (an invitation, a notice, the
                # subject) bounced; the occupant is gone.
                room.leave(origin, codes=REMOVED_FOR_ERROR)
            return
        element = st.element()
        x = element.find(f"{{{NS_USER}}}x")
        if x is not None and (
            x.find(f"{{{NS_USER}}}invite") is not None
            or x.find(f"{{{NS_USER}}}decline") is not None
        ):
            invitations(room, origin, x)
            return
        form = element.find(f"{{{NS_DATA}}}x")
        if form is not None and form_values(form).get("FORM_TYPE") == REQUEST_FORM:
            voice_form(room, origin, form)
            return
        raise StanzaError("bad-request", "messages to the room are of type groupchat")

    # --- iqs ---------------------------------------------------------------------------------

    def _iq(self, origin: OccupantSession, st: Stanza, room_name: str, nick: str) -> None:
        itype = st.attrs.get("type")
        room = self.rooms.get(room_name)
        if nick:
            if room is None:
                if itype in ("get", "set"):
                    raise StanzaError("item-not-found", "no such room")
                return
            room.occupant_iq(origin, st, nick)
            return
        if itype not in ("get", "set"):
            return
        if room is None or (room.locked and room.affiliation(origin.bare) != "owner"):
            raise StanzaError("item-not-found", "no such room")
        namespace = st.children[0][0]
        if namespace == NS_INFO and itype == "get":
            reply = self._room_info(room, origin, st)
        elif namespace == NS_ITEMS and itype == "get":
            self._node_check(st.element(), NS_ITEMS)
            items = ""
            if origin.full in room.by_jid or (room.config.public and not room.config.members_only):
                # §6.5: occupants see who is in, and so does anyone for a public open room
                # (the service MAY list them); of other rooms strangers learn nothing.
                items = "".join(
                    f"<item jid={quoteattr(room.occupant_jid(nick))}/>" for nick in room.occupants
                )
            reply = iq_result(origin, st, f"<query xmlns='{NS_ITEMS}'>{items}</query>")
        elif namespace == NS_ADMIN:
            reply = admin_iq(room, origin, st)
        elif namespace == NS_OWNER:
            reply = owner_iq(room, origin, st)
        elif namespace == NS_MAM:
            answer = query_iq(room, origin, st)
            if answer is None:
                return  # answered once the room's archive is settled
            reply = answer
        elif namespace == NS_VCARD:
            answer = vcard_iq(room, origin, st)
            if answer is None:
                return  # a set: answered, then the occupants told
            reply = answer
        else:
            raise StanzaError("service-unavailable")
        origin.send(reply)

    def _room_info(self, room: Room, origin: OccupantSession, st: Stanza) -> bytes:
        """§6.4: identity, room type features, and the muc#roominfo form."""
        query = st.element().find(f"{{{NS_INFO}}}query")
        if query is not None and query.get("node") == ROOMUSER_NODE:
            # §7.12: the asker's reserved nickname, or an empty answer.
            nick = room.nicks.get(origin.bare)
            identity = (
                ""
                if nick is None
                else f"<identity category='conference' type='text' name={quoteattr(nick)}/>"
            )
            return iq_result(
                origin,
                st,
                f"<query xmlns='{NS_INFO}' node='{ROOMUSER_NODE}'>{identity}</query>",
            )
        self._node_check(st.element(), NS_INFO)
        features = [NS_MUC, NS_INFO, NS_ITEMS, SELF_PING, STABLE_ID, NS_OCCUPANT_ID, NS_VCARD]
        features += room.config.features()
        if archive_of(room) is not None:
            features += [NS_MAM, NS_SID]  # XEP-0313 §3.2 (MUC archives), XEP-0359 §4
        feature_xml = "".join(f"<feature var='{f}'/>" for f in features)
        name = room.config.name or room.name
        info = roominfo_form(room.config, len(room.occupants), room.subject[0], room.avatar_hashes)
        return iq_result(
            origin,
            st,
            f"<query xmlns='{NS_INFO}'><identity category='conference' type='text' "
            f"name={quoteattr(name)}/>{feature_xml}{info}</query>",
        )

    # --- server events -----------------------------------------------------------------------

    def shutdown(self) -> None:
        """§19.2: occupants hear that the service is going away (status 332)."""
        for room in list(self.rooms.values()):
            for occupant in list(room.occupants.values()):
                room.remove(occupant, "332")

    def account_removed(self, bare: str) -> None:
        for room in self.rooms.values():
            room.affiliations.pop(bare, None)
            room.nicks.pop(bare, None)


class MucModule(Module):
    name = "muc"

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        self.store: MucStore | None = None
        self.services: dict[str, MucService] = {}
        # Server links (stream/s2s.py) when federation is on: the services federate.
        s2s = server.s2s
        self.federation: S2S | None = s2s if s2s is not None and s2s.config.enabled else None

    def start(self) -> None:
        settings = self.config.muc
        if not settings.enabled:
            return
        assert self.server.storage is not None
        self.store = MucStore(self.server.storage)
        for host in self.config.hosts:
            try:
                domain = normalize_domain(settings.domain.replace("{host}", host))
            except JIDError as exc:
                log.error("no multi-user chat service for %s: %s", host, exc)
                continue
            if domain in self.services:
                continue  # a template without {host}: one service for every host
            if domain in self.config.hosts:
                raise ValueError(f"[muc] domain {domain} is also a host")
            service = MucService(self, domain, host)
            service.load()
            self.router.add_service(domain, service.handle)
            self.services[domain] = service
            if self.federation is not None:
                self.federation.federate_service(domain, host)
            log.info("multi-user chat service %s", domain)

    def disco_items(self, domain: str) -> list[tuple[str, str | None]]:
        """The server's disco#items lists its MUC service (XEP-0045 §6.1)."""
        return [(s.domain, SERVICE_NAME) for s in self.services.values() if s.host == domain]

    def _leave_all(self, session: OccupantSession, status_xml: str = "") -> None:
        record = MUC.drop(session)
        for room in () if record is None else list(record.rooms):
            room.leave(session, status_xml)

    def session_ended(self, session: OccupantSession) -> None:
        self._leave_all(session)

    def presence_unavailable(self, session: OccupantSession, data: bytes) -> None:
        # RFC 6121 §4.6.3: broadcast unavailable presence also reaches the rooms.
        presence: PresenceModule | None = self.hub.get("presence")
        status = None if presence is None else presence.unavailable_status(session)
        self._leave_all(session, "" if status is None else f"<status>{escape(status)}</status>")

    def metrics(self) -> list[Figure]:
        services = sorted(self.services.values(), key=lambda service: service.domain)
        return [
            Figure(
                "muc_rooms",
                "XEP-0045 rooms (persistent, and temporary ones with occupants), by service",
                "gauge",
                [((s.domain,), len(s.rooms)) for s in services],
                ("service",),
            ),
            Figure(
                "muc_occupants",
                "occupants of the rooms, by service",
                "gauge",
                [((s.domain,), sum(len(r.occupants) for r in s.rooms.values())) for s in services],
                ("service",),
            ),
        ]

    def account_removed(self, domain: str, local: str) -> None:
        # The store purged it already (storage/muc.py); the rooms in memory follow.
        for service in self.services.values():
            service.account_removed(f"{local}@{domain}")

    def stop(self) -> None:
        for service in self.services.values():
            service.shutdown()


MODULE = MucModule
