"""One room (XEP-0045): occupants with their roles, affiliations, entering and leaving (§7.2,
§7.14), presence broadcast with muc#user items and status codes (§7.2.3, §17), groupchat
messages (§7.4), the subject (§7.2.16, §8.1), private messages and iqs between occupants
(§7.5, §18.4), nickname changes (§7.6) and availability changes (§7.7), and occupants an
error shows gone (§19.1.2 "Ghost Users": removed with status 333, §15.2).

An occupant's sessions are the router's: a local client stream, or for a user of another
server the one RemoteOrigin the service keeps for its full JID (service.py), whose `send`
goes over server links. The room treats both alike."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape, quoteattr

from lxml import etree
from precis_i18n import get_profile

from ... import ns
from ..._router import append_child, fan_out, insert_attr
from ...errors import StanzaError
from ..base import iq_result
from ..privacy_rules import PRIVACY_IQ, PRIVACY_MESSAGE, PRIVACY_PRESENCE_IN
from .archive import outgoing
from .config import RoomConfig
from .history import History
from .occupant_id import TAG as OCCUPANT_ID
from .occupant_id import element as occupant_id_element
from .occupant_id import make_id, without_forged
from .vcard import NS as NS_VCARD
from .vcard import NS_UPDATE, stored_hashes

if TYPE_CHECKING:
    import asyncio

    from ..._parser import Stanza
    from ...stream.c2s import C2SStream
    from ...stream.xmlstream import PeerOrigin

    # An occupant's session: a local client's stream, or for a user of another server the
    # RemoteOrigin the service keeps for its full JID (service.py).
    OccupantSession = C2SStream | PeerOrigin
    from .service import MucService

NS_MUC = "http://jabber.org/protocol/muc"
NS_PING = "urn:xmpp:ping"
NS_USER = ns.MUC_USER
CLIENT = "jabber:client"
SUBJECT = f"{{{CLIENT}}}subject"
BODY = f"{{{CLIENT}}}body"

# §19.1.2: the delivery-related errors that show an occupant gone, and service-unavailable,
# what a server answers a groupchat message to a resource that is gone (RFC 6121
# §8.5.3.2.1). An occupant that answers with one of them is removed (status 333).
GONE_CONDITIONS = frozenset(
    (
        "gone",
        "item-not-found",
        "recipient-unavailable",
        "redirect",
        "remote-server-not-found",
        "remote-server-timeout",
        "service-unavailable",
    )
)
REMOVED_FOR_ERROR = ("333",)  # §15.2 (status codes), the service-error-kick use case
STANZA_ERROR = f"{{{CLIENT}}}error"
CONDITION_PREFIX = f"{{{ns.STANZA_ERRORS}}}"

ROLE_RANK = {"none": 0, "visitor": 1, "participant": 2, "moderator": 3}
AFFILIATION_RANK = {"outcast": -1, "none": 0, "member": 1, "admin": 2, "owner": 3}
# Forwarded iqs waiting for their answer, per room: a bound on what occupants can pile up.
MAX_PENDING_IQS = 1000
# RFC 8266 (PRECIS nicknames): "Bob", "bob", " bob " and its fullwidth form are one nickname
# in a room, so that no occupant can pass for another.
_NICKNAME = get_profile("NicknameCaseMapped")


def nick_key(nick: str) -> str:
    """The form two nicknames are compared in; StanzaError(jid-malformed) for a nickname
    that is blank or made of invisible characters (§17.1)."""
    try:
        return str(_NICKNAME.enforce(nick))
    except UnicodeError:
        raise StanzaError("jid-malformed", "that nickname is blank or not allowed") from None


def _same_nick(nick: str, key: str) -> bool:
    try:
        return nick_key(nick) == key
    except StanzaError:
        return False


def shows_gone(st: Stanza) -> bool:
    """Whether an error stanza's condition is one of GONE_CONDITIONS."""
    error = st.element().find(STANZA_ERROR)
    if error is None:
        return False
    return any(
        isinstance(child.tag, str)
        and child.tag.startswith(CONDITION_PREFIX)
        and child.tag[len(CONDITION_PREFIX) :] in GONE_CONDITIONS
        for child in error
    )


def privacy_allows(session: OccupantSession, kind: int, sender: str) -> bool:
    """XEP-0016 §2.13 for what the room sends on an occupant's behalf: the recipient's list
    in force may refuse stanzas from an occupant JID (how clients ignore someone in a room)
    or from the room itself. Sessions without a list (nearly all) cost one attribute read."""
    rules = session.stanza_filter
    return rules is None or bool(rules.allows_in(kind, sender))


class Occupant:
    """One nickname in the room: the sessions of one account using it (several resources
    may share a nickname), its role and its last presence."""

    __slots__ = ("bare", "id_xml", "last_jid", "nick", "presence", "role", "sessions")

    def __init__(self, nick: str, bare: str, role: str, occupant_id: str) -> None:
        self.nick = nick
        self.bare = bare
        # XEP-0421: what the room adds to every stanza about or from the occupant
        self.id_xml = occupant_id_element(occupant_id)
        self.sessions: dict[str, OccupantSession] = {}  # full JID -> session, in joining order
        self.role = role
        self.presence = ""  # the reflected children of the occupant's presence (show, ...)
        self.last_jid = ""  # the session that left last, for the exit presence

    @property
    def jid(self) -> str:
        """The full JID shown to those allowed to see it: the latest session's."""
        return next(reversed(self.sessions)) if self.sessions else self.last_jid


# The MUC extensions only the service generates (or carrying the password), and XEP-0421's
# occupant id, which the room adds itself (§4).
MUC_EXTENSIONS = ((NS_MUC, "x"), (NS_USER, "x"), OCCUPANT_ID)
_NOT_REFLECTED = frozenset(f"{{{namespace}}}{name}" for namespace, name in MUC_EXTENSIONS)


def nick_modified(st: Stanza, nick: str) -> list[str]:
    """Status 210 (§7.2.3, §7.6) when the nickname the occupant has is not the one it asked
    for: the room JID's resourcepart as sent, before RFC 7622 normalization (NFC)."""
    asked = st.attrs.get("to", "").partition("/")[2]
    return ["210"] if asked and asked != nick else []


def reflected_children(st: Stanza) -> str:
    """A presence's children as reflected to the room: everything but the MUC extensions the
    service alone generates or that carry the password (§17.3 rule 6), and any XEP-0421
    occupant id (the room's own goes with every presence it sends). Spliced from the
    received bytes when they stand on their own; else copied into a jabber:client element
    so that no declaration the children inherited from the stream (xmlns:stream, the
    default namespace) is repeated on each of them."""
    if st.empty:
        return ""
    if (
        not st.needs_reserialize
        and all(prefix is None for prefix, _ in st.nsdecls or ())
        and not any(child in MUC_EXTENSIONS for child in st.children)
    ):
        raw: bytes = st.raw
        return raw[st.start_len : raw.rindex(b"</")].decode()
    holder = etree.Element(f"{{{CLIENT}}}presence", nsmap={None: CLIENT})
    for child in st.element():
        if isinstance(child.tag, str) and child.tag not in _NOT_REFLECTED:
            copied = copy.deepcopy(child)
            copied.tail = None
            holder.append(copied)
    if not len(holder):
        return ""
    serialized: str = etree.tostring(holder, encoding="unicode")
    return serialized[serialized.index(">") + 1 : serialized.rindex("</")]


class Room:
    def __init__(self, service: MucService, name: str, config: RoomConfig) -> None:
        self.service = service
        self.name = name
        self.jid = f"{name}@{service.domain}"
        self.config = config
        self.affiliations: dict[str, str] = {}  # bare JID -> owner | admin | member | outcast
        self.nicks: dict[str, str] = {}  # bare JID -> reserved nickname (§7.10)
        self.occupants: dict[str, Occupant] = {}  # nick -> occupant
        self.nick_keys: dict[str, str] = {}  # nick_key(nick) -> nick in use
        self.by_jid: dict[str, Occupant] = {}  # occupant's full JID -> occupant
        self.subject: tuple[str, str] = ("", "")  # (text, nick of who set it)
        self.subject_by = ""  # the XEP-0421 occupant id of who set it ("": none known)
        self.history = History(config.history_length)
        self.locked = False  # §10.1.1: created, not yet configured
        self.unlock_timer: asyncio.TimerHandle | None = None  # [muc] lock_timeout (service.py)
        self.stored = False  # a record of it is in the store
        self.archived = False  # it queued a message for its XEP-0313 archive (archive.py)
        # (responder, id) -> (requester, the nick it asked)
        self.pending_iqs: dict[tuple[str, str], tuple[str, str]] = {}
        self.vcard: bytes | None = None  # XEP-0486: the room's vCard as stored (vcard.py)
        self.avatar_hashes: tuple[str, ...] = ()  # of its PHOTOs (muc#roominfo_avatarhash)

    # --- state -----------------------------------------------------------------------------

    def affiliation(self, bare: str) -> str:
        if bare in self.service.admins:
            return "owner"
        return self.affiliations.get(bare, "none")

    def default_role(self, affiliation: str) -> str:
        """§5.1.2: the role an affiliation enters with."""
        if affiliation in ("owner", "admin"):
            return "moderator"
        if affiliation == "member":
            return "participant"
        if affiliation == "none":
            return "visitor" if self.config.moderated else "participant"
        return "none"

    def owners(self) -> list[str]:
        return [j for j, a in self.affiliations.items() if a == "owner"]

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "config": self.config.to_record(),
            "affiliations": dict(self.affiliations),
            "nicks": dict(self.nicks),
            "subject": list(self.subject),
            "subject_by": self.subject_by,
        }
        if self.vcard is not None:
            record["vcard"] = self.vcard
        return record

    def load_record(self, record: dict[str, Any]) -> None:
        self.affiliations = dict(record.get("affiliations", {}))
        self.nicks = dict(record.get("nicks", {}))
        subject = record.get("subject") or ["", ""]
        self.subject = (str(subject[0]), str(subject[1]))
        self.subject_by = str(record.get("subject_by", ""))
        vcard = record.get("vcard")
        if vcard is not None:
            self.vcard = bytes(vcard)
            self.avatar_hashes = stored_hashes(self.vcard)

    def changed(self) -> None:
        """Persist what survives a restart (§10.1.3 persistentroom)."""
        self.service.save(self)

    def occupant_id(self, bare: str) -> str:
        """XEP-0421: the id of the user `bare` in this room."""
        return make_id(self.service.occupant_id_secret, self.jid, bare)

    def occupant_jid(self, nick: str) -> str:
        return f"{self.jid}/{nick}"

    def sessions(self) -> Iterable[tuple[Occupant, str, OccupantSession]]:
        for occupant in list(self.occupants.values()):
            for full, session in list(occupant.sessions.items()):
                yield occupant, full, session

    def check_nick(self, nick: str, bare: str, mine: Occupant | None) -> None:
        """§7.2.9, §7.6: conflict when the nickname (compared as RFC 8266 nicknames) is used
        by another occupant, or reserved by another account (§7.12)."""
        key = nick_key(nick)
        held = self.nick_keys.get(key)
        if held is not None:
            holder = self.occupants[held]
            if holder is not mine and (holder.bare != bare or held != nick):
                raise StanzaError("conflict", "that nickname is in use")
        for owner_of_nick, reserved in self.nicks.items():
            if owner_of_nick != bare and (reserved == nick or _same_nick(reserved, key)):
                raise StanzaError("conflict", "that nickname is reserved")

    def _drop(self, occupant: Occupant) -> None:
        if self.occupants.get(occupant.nick) is occupant:
            del self.occupants[occupant.nick]
            self.nick_keys.pop(nick_key(occupant.nick), None)

    # --- presence --------------------------------------------------------------------------

    def presence(
        self,
        subject: Occupant,
        to: str,
        *,
        show_jid: bool,
        unavailable: bool = False,
        codes: Iterable[str] = (),
        item_extra: str = "",
        item_attrs: str = "",
        x_extra: str = "",
        status_xml: str | None = None,
        answers: str | None = None,
    ) -> bytes:
        """In-room presence of `subject` for the session `to` (§7.2.3, §17.3 rule 8);
        `answers`: the id of the presence of `to`'s it answers (muc#stable_id)."""
        jid_attr = f" jid={quoteattr(subject.jid)}" if show_jid else ""
        id_attr = "" if answers is None else f" id={quoteattr(answers)}"
        codes_xml = "".join(f"<status code='{code}'/>" for code in codes)
        type_attr = " type='unavailable'" if unavailable else ""
        inner = subject.presence if status_xml is None else status_xml
        return (
            f"<presence from={quoteattr(self.occupant_jid(subject.nick))} to={quoteattr(to)}"
            f"{id_attr}{type_attr}>{inner}<x xmlns='{NS_USER}'>"
            f"<item affiliation='{self.affiliation(subject.bare)}' role='{subject.role}'"
            f"{jid_attr}{item_attrs}>{item_extra}</item>{codes_xml}{x_extra}</x>"
            f"{subject.id_xml}</presence>"
        ).encode()

    def sees_jids(self, viewer: Occupant) -> bool:
        """§4.1: non-anonymous rooms show real JIDs to all, semi-anonymous to moderators."""
        return self.config.whois == "anyone" or viewer.role == "moderator"

    def broadcast_presence(
        self,
        subject: Occupant,
        *,
        unavailable: bool = False,
        codes: Iterable[str] = (),
        self_codes: Iterable[str] = (),
        item_extra: str = "",
        item_attrs: str = "",
        x_extra: str = "",
        status_xml: str | None = None,
        also: Iterable[tuple[str, OccupantSession]] = (),
        answers: str | None = None,
    ) -> None:
        """`subject`'s presence to every occupant; its own sessions (and `also`, sessions
        that just left it) get status 110 and `self_codes` (§7.2.3), those in `also` with
        the id `answers` of the presence they left with."""
        codes = list(codes)
        leaving = {full for full, _session in also}
        own = [*subject.sessions.items(), *also]
        subject_jid = self.occupant_jid(subject.nick)
        for occupant, full, session in self.sessions():
            if occupant is subject or not privacy_allows(session, PRIVACY_PRESENCE_IN, subject_jid):
                continue
            session.send(
                self.presence(
                    subject,
                    full,
                    show_jid=self.sees_jids(occupant),
                    unavailable=unavailable,
                    codes=codes,
                    item_extra=item_extra,
                    item_attrs=item_attrs,
                    x_extra=x_extra,
                    status_xml=status_xml,
                )
            )
        for full, session in own:
            session.send(
                self.presence(
                    subject,
                    full,
                    show_jid=True,
                    unavailable=unavailable,
                    codes=[*codes, "110", *self_codes],
                    item_extra=item_extra,
                    item_attrs=item_attrs,
                    x_extra=x_extra,
                    status_xml=status_xml,
                    answers=answers if full in leaving else None,
                )
            )

    # --- entering (§7.2) -------------------------------------------------------------------

    def enter(
        self, origin: OccupantSession, st: Stanza, nick: str, muc_x: Any, created: bool
    ) -> None:
        config = self.config
        bare = origin.bare
        affiliation = self.affiliation(bare)
        privileged = affiliation in ("owner", "admin")
        if self.locked and affiliation != "owner":
            raise StanzaError("item-not-found", "the room is locked until it is configured")
        if affiliation == "outcast":
            raise StanzaError("forbidden", "you are banned from this room")
        if config.members_only and affiliation == "none":
            raise StanzaError("registration-required", "the room is members-only")
        existing = self.occupants.get(nick)
        if existing is not None and existing.bare != bare:
            raise StanzaError("conflict", "that nickname is in use")
        self.check_nick(nick, bare, existing)
        if config.password_protected and not privileged:
            given = None if muc_x is None else muc_x.findtext(f"{{{NS_MUC}}}password")
            if given != config.password:
                # §7.2.6: not-authorized either way; the text tells the user which
                told = "a password is required" if given is None else "wrong password"
                raise StanzaError("not-authorized", told)
        if existing is None and len(self.occupants) >= config.max_users and not privileged:
            raise StanzaError("service-unavailable", "the room is full", error_type="wait")
        newcomer = existing is None
        occupant = existing or Occupant(
            nick, bare, self.default_role(affiliation), self.occupant_id(bare)
        )
        occupant.sessions[origin.full] = origin
        presence = reflected_children(st)
        changed = not newcomer and presence != occupant.presence
        occupant.presence = presence
        self.occupants[nick] = occupant
        self.nick_keys[nick_key(nick)] = nick
        self.by_jid[origin.full] = occupant
        self.service.joined(origin, self)
        # §7.2.3 order: the others' presence, the newcomer's to all, then self-presence.
        for other in list(self.occupants.values()):
            if other is not occupant:
                origin.send(self.presence(other, origin.full, show_jid=self.sees_jids(occupant)))
        if newcomer or changed:
            # (another resource joining under the same nickname shows only a new presence)
            for other, full, session in self.sessions():
                if other is not occupant:
                    session.send(self.presence(occupant, full, show_jid=self.sees_jids(other)))
        codes = ["110"]
        if config.whois == "anyone":
            codes.append("100")  # §7.2.4: the room is non-anonymous
        if created:
            codes.append("201")  # §10.1.1: a new room
        codes += nick_modified(st, nick)
        origin.send(
            self.presence(
                occupant, origin.full, show_jid=True, codes=codes, answers=st.attrs.get("id")
            )
        )
        if self.avatar_hashes:
            # XEP-0486 §5.2 (as Prosody and ejabberd): the avatar's hash, for the clients
            # that take it from the room's presence
            self.send_avatar_update(origin.full, origin)
        # §7.1: then history and the subject, for a new (locked) room too: clients take the
        # subject as the end of the join (§7.2.15).
        history = None if muc_x is None else muc_x.find(f"{{{NS_MUC}}}history")
        for data in self.history.select(history):
            origin.send(insert_attr(data, "to", origin.full))
        self.send_subject(origin.full, origin)

    def send_subject(self, full: str, session: OccupantSession) -> None:
        """§7.2.15: the subject, empty when there is none, last in the join sequence."""
        text, nick = self.subject
        sender = self.occupant_jid(nick) if nick else self.jid
        # XEP-0421 §4: from the occupant who set it, with that occupant's id (none for a
        # subject set before the room had occupant ids)
        by = occupant_id_element(self.subject_by) if nick and self.subject_by else ""
        session.send(
            f"<message from={quoteattr(sender)} to={quoteattr(full)} type='groupchat'>"
            f"<subject>{escape(text)}</subject>{by}</message>".encode()
        )

    def resync(self, origin: OccupantSession, st: Stanza, muc_x: Any) -> None:
        """§17.3 rule 3: a join from a session already in the room is a full synchronization;
        a changed presence goes to the others."""
        occupant = self.by_jid[origin.full]
        presence = reflected_children(st)
        if presence != occupant.presence:
            occupant.presence = presence
            self.broadcast_presence(occupant)
        for other in list(self.occupants.values()):
            if other is not occupant:
                origin.send(self.presence(other, origin.full, show_jid=self.sees_jids(occupant)))
        origin.send(
            self.presence(
                occupant, origin.full, show_jid=True, codes=["110"], answers=st.attrs.get("id")
            )
        )
        history = None if muc_x is None else muc_x.find(f"{{{NS_MUC}}}history")
        for data in self.history.select(history):
            origin.send(insert_attr(data, "to", origin.full))
        self.send_subject(origin.full, origin)

    def probe(self, origin: OccupantSession, nick: str) -> None:
        """The current in-room presence of `nick` (the room's own view: all of them, without
        a nickname) for an occupant that asks."""
        asker = self.by_jid[origin.full]
        targets = [self.occupants[nick]] if nick in self.occupants else []
        if not nick:
            targets = list(self.occupants.values())
        for target in targets:
            codes = ["110"] if target is asker else []
            origin.send(
                self.presence(
                    target,
                    origin.full,
                    show_jid=target is asker or self.sees_jids(asker),
                    codes=codes,
                )
            )

    def change_presence(self, origin: OccupantSession, st: Stanza) -> None:
        """§7.7: an occupant's new availability goes to everyone."""
        occupant = self.by_jid[origin.full]
        occupant.presence = reflected_children(st)
        self.broadcast_presence(occupant)

    def change_nick(self, origin: OccupantSession, st: Stanza, new_nick: str) -> None:
        """§7.6: unavailable from the old nickname with 303 and the new one, then available
        from the new one, with the presence that asked for the change."""
        occupant = self.by_jid[origin.full]
        self.check_nick(new_nick, occupant.bare, occupant)
        self.broadcast_presence(
            occupant,
            unavailable=True,
            codes=["303"],
            item_attrs=f" nick={quoteattr(new_nick)}",
            status_xml="",
        )
        self._drop(occupant)
        occupant.nick = new_nick
        occupant.presence = reflected_children(st)
        self.occupants[new_nick] = occupant
        self.nick_keys[nick_key(new_nick)] = new_nick
        self.broadcast_presence(occupant, self_codes=nick_modified(st, new_nick))

    # --- leaving (§7.14) -------------------------------------------------------------------

    def leave(
        self,
        session: OccupantSession,
        status_xml: str = "",
        answers: str | None = None,
        codes: Iterable[str] = (),
    ) -> None:
        """The session exits: its own unavailable presence (with the id `answers` of the
        presence it exits with); the others hear of it when it was the occupant's last
        session; `codes`: status codes for all (REMOVED_FOR_ERROR)."""
        occupant = self.by_jid.get(session.full)
        if occupant is None or occupant.sessions.get(session.full) is not session:
            return  # not in the room (or a newer session of the same full JID is)
        del self.by_jid[session.full]
        del occupant.sessions[session.full]
        occupant.last_jid = session.full
        self.service.left(session, self)
        if occupant.sessions:
            session.send(
                self.presence(
                    occupant,
                    session.full,
                    show_jid=True,
                    unavailable=True,
                    codes=["110", *codes],
                    status_xml=status_xml,
                    answers=answers,
                )
            )
            return
        self._drop(occupant)
        occupant.role = "none"  # §17.3 rule 8: the exit presence carries role none
        self.broadcast_presence(
            occupant,
            unavailable=True,
            codes=codes,
            status_xml=status_xml,
            also=[(session.full, session)],
            answers=answers,
        )
        self.service.maybe_discard(self)

    def remove(
        self,
        occupant: Occupant,
        code: str,
        actor: Occupant | None = None,
        reason: str | None = None,
    ) -> None:
        """Take an occupant out (kick 307, ban 301, affiliation change 321, members-only
        322, shutdown 332): every session of it goes, everyone hears it (§8.2, §9.1)."""
        sessions = list(occupant.sessions.items())
        occupant.last_jid = occupant.jid
        for full, session in sessions:
            self.by_jid.pop(full, None)
            self.service.left(session, self)
        occupant.sessions = {}
        self._drop(occupant)
        occupant.role = "none"
        item_extra = ""
        if actor is not None:
            item_extra += f"<actor nick={quoteattr(actor.nick)}/>"
        if reason:
            item_extra += f"<reason>{escape(reason)}</reason>"
        self.broadcast_presence(
            occupant,
            unavailable=True,
            codes=[code],
            item_extra=item_extra,
            status_xml="",
            also=sessions,
        )
        self.service.maybe_discard(self)

    # --- messages --------------------------------------------------------------------------

    def groupchat(self, origin: OccupantSession, st: Stanza) -> None:
        """§7.4 (and §8.1 for a subject change)."""
        occupant = self.by_jid.get(origin.full)
        if occupant is None:
            raise StanzaError("not-acceptable", "only occupants may send to the room")
        if occupant.role == "visitor":
            raise StanzaError("forbidden", "visitors have no voice in this moderated room")
        has_body = (CLIENT, "body") in st.children
        # the tree only for a subject change: a message's children are known without it
        subject = st.element().find(SUBJECT) if (CLIENT, "subject") in st.children else None
        # An empty <body/> beside the subject is no body: mcabber 1.1.2, its latest release,
        # sends one with each /room topic. The room relays the change without it, so that
        # every client takes it as one.
        empty_body = (
            has_body
            and subject is not None
            and all(not b.text and len(b) == 0 for b in st.element().iterfind(BODY))
        )
        if empty_body:
            has_body = False
        if subject is not None and not has_body:
            # §8.1: a subject change is a message with a <subject/> and no <body/>.
            if not (self.config.change_subject or occupant.role == "moderator"):
                raise StanzaError("forbidden", "you may not change the subject")
            self.subject = (subject.text or "", occupant.nick)
            self.subject_by = self.occupant_id(occupant.bare)
            self.changed()
        sender = self.occupant_jid(occupant.nick)
        # as sent, spliced: no tree is serialized again (docs/ARCHITECTURE.md, principle 2),
        # with the room's XEP-0359 stanza-id when it archives the message (archive.py)
        data = outgoing(self, origin, st, occupant, without_body=empty_body)
        fan_out(data, [o.sessions for o in self.occupants.values()], sender, PRIVACY_MESSAGE)
        if has_body:
            self.history.add(data, self.jid)

    def private_message(self, origin: OccupantSession, st: Stanza, nick: str) -> None:
        """§7.5: a message to one occupant, from the sender's occupant JID."""
        mtype = st.attrs.get("type", "normal")
        occupant = self.by_jid.get(origin.full)
        if mtype == "error":
            if occupant is None:
                return
            if shows_gone(st):
                # §19.1.2: the occupant's server says it is gone (an answer to a groupchat
                # copy or a private message, or the bounce of our own link to it).
                self.leave(origin, codes=REMOVED_FOR_ERROR)
                return
            # Another error answering a private message goes back the same way, or nowhere.
            target = self.occupants.get(nick)
            if target is not None:
                self._deliver(st, occupant, target)
            return
        if mtype == "groupchat":
            raise StanzaError("bad-request", "a private message cannot be of type groupchat")
        if occupant is None:
            raise StanzaError("not-acceptable", "only occupants may send private messages")
        target = self.occupants.get(nick)
        if target is None:
            raise StanzaError("item-not-found", "no occupant has that nickname")
        allowed = self.config.allow_pm
        rank = ROLE_RANK[occupant.role]
        if (
            allowed == "none"
            or (allowed == "participants" and rank < ROLE_RANK["participant"])
            or (allowed == "moderators" and rank < ROLE_RANK["moderator"])
        ):
            raise StanzaError("forbidden", "private messages are not allowed here")
        self._deliver(st, occupant, target)

    def _deliver(self, st: Stanza, sender: Occupant, target: Occupant) -> None:
        """The message from `sender`'s occupant JID to each session of `target`, with the
        room's muc#user <x/> (§7.5) and `sender`'s occupant id (XEP-0421 §4: on every
        message the room sends; one the client put in is replaced)."""
        sender_jid = self.occupant_jid(sender.nick)
        marked = (NS_USER, "x") in st.children
        allowed = [
            (full, session)
            for full, session in target.sessions.items()
            if privacy_allows(session, PRIVACY_MESSAGE, sender_jid)
        ]
        if not allowed:
            if st.attrs.get("type") != "error":
                raise StanzaError("service-unavailable")  # XEP-0016 §2.13: blocked inbound
            return
        # §7.5: the service adds <x xmlns='muc#user'/> (for XEP-0280 carbons).
        added = (("" if marked else f"<x xmlns='{NS_USER}'/>") + sender.id_xml).encode()
        stripped = without_forged(st, sender_jid) if OCCUPANT_ID in st.children else None
        for full, session in allowed:
            if stripped is None:
                data = st.with_attrs({"from": sender_jid, "to": full})
            else:
                data = insert_attr(stripped, "to", full)
            session.send(append_child(data, added))

    # --- iqs between occupants (§18.4 rule 3) ----------------------------------------------

    def occupant_iq(self, origin: OccupantSession, st: Stanza, nick: str) -> None:
        """An iq to an occupant JID goes to that occupant's latest session; its answer comes
        back to the asking session. Real JIDs stay hidden both ways. A vCard request is for
        the occupant's account: answered here for an account of this server
        (service.account_vcard), sent to the bare JID of a user of another server, whose
        server answers (as Prosody does)."""
        itype = st.attrs.get("type")
        iq_id = st.attrs.get("id")
        sender = self.by_jid.get(origin.full)
        if itype in ("result", "error"):
            # from the occupant's session, or from its bare JID for a vCard
            pending = self.pending_iqs.pop((origin.full, iq_id or ""), None)
            if pending is None or (sender is None and origin.resource):
                return
            requester, answering = pending
            asker = self.by_jid.get(requester)
            if asker is not None and asker.nick == nick:
                session = asker.sessions[requester]
                if sender is not None:
                    answering = sender.nick
                session.send(st.with_attrs({"from": self.occupant_jid(answering), "to": requester}))
            return
        is_ping = st.children[0] == (NS_PING, "ping")
        if sender is None:
            # §6.6: a non-occupant asking an occupant JID; XEP-0410 §3.2: a self-ping of a
            # client that is not joined gets not-acceptable, so that it joins again.
            if is_ping:
                raise StanzaError("not-acceptable", "you are not in this room")
            raise StanzaError("bad-request", "only occupants may query occupants")
        if is_ping and sender.nick == nick and itype == "get":
            # XEP-0410 §3.3: the service answers a self-ping itself.
            session = sender.sessions[origin.full]
            session.send(iq_result(origin, st))
            return
        target = self.occupants.get(nick)
        if target is None:
            raise StanzaError("item-not-found", "no occupant has that nickname")
        full = target.jid
        if not privacy_allows(target.sessions[full], PRIVACY_IQ, self.occupant_jid(sender.nick)):
            raise StanzaError("service-unavailable")  # XEP-0016 §2.13: blocked inbound iq
        responder = full
        if itype == "get" and st.children[0] == (NS_VCARD, "vCard"):
            vcard = self.service.account_vcard(target.bare)
            if vcard is not None:
                sender.sessions[origin.full].send(iq_result(origin, st, vcard.decode()))
                return
            responder = target.bare  # a user of another server: its server answers
        if len(self.pending_iqs) >= MAX_PENDING_IQS:
            self.pending_iqs.pop(next(iter(self.pending_iqs)))
        self.pending_iqs[(responder, iq_id or "")] = (origin.full, nick)
        forwarded = st.with_attrs({"from": self.occupant_jid(sender.nick), "to": responder})
        if responder == full:
            target.sessions[full].send(forwarded)
        else:
            self.service.send_remote(forwarded, responder)

    # --- room-wide notices -----------------------------------------------------------------

    def send_avatar_update(self, full: str, session: OccupantSession) -> None:
        """The XEP-0153 presence from the room's bare JID with its avatar's hash (XEP-0486
        §5.2); an empty <photo/> when it has none (XEP-0153 §4.1)."""
        if not privacy_allows(session, PRIVACY_PRESENCE_IN, self.jid):
            return
        hashes = self.avatar_hashes
        photo = f"<photo>{hashes[0]}</photo>" if hashes else "<photo/>"
        session.send(
            f"<presence from={quoteattr(self.jid)} to={quoteattr(full)}>"
            f"<x xmlns='{NS_UPDATE}'>{photo}</x></presence>".encode()
        )

    def notify(self, codes: Iterable[str]) -> None:
        """A message from the room carrying status codes (§10.2.1: configuration changes)."""
        codes_xml = "".join(f"<status code='{code}'/>" for code in codes)
        for _, full, session in self.sessions():
            session.send(
                f"<message from={quoteattr(self.jid)} to={quoteattr(full)} type='groupchat'>"
                f"<x xmlns='{NS_USER}'>{codes_xml}</x></message>".encode()
            )
