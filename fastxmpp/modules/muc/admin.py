"""Moderation and administration of a room: roles and affiliations through muc#admin (§8
kick and voice, §9 bans, members and moderators, §10.3-10.8 owners and admins), the owner's
configuration form and room destruction through muc#owner (§10.1-10.2, §10.9), and mediated
invitations and declines (§7.8.2, §7.8.3)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape, quoteattr

from ...errors import StanzaError
from ...jid import JIDError, parse_jid
from ..base import iq_result
from .archive import archives_anything
from .config import NS_DATA, config_form, parse_submission
from .room import AFFILIATION_RANK, NS_MUC, NS_USER, ROLE_RANK, Occupant, Room, nick_key

if TYPE_CHECKING:
    from ..._parser import Stanza
    from .room import OccupantSession

NS_ADMIN = NS_MUC + "#admin"
NS_OWNER = NS_MUC + "#owner"
PRIVILEGED = ("owner", "admin")


def _reason(item: Any, namespace: str) -> str | None:
    text = item.findtext(f"{{{namespace}}}reason")
    return None if text is None else text.strip()


def _reason_xml(actor: Occupant | None, reason: str | None) -> str:
    xml = "" if actor is None else f"<actor nick={quoteattr(actor.nick)}/>"
    return xml + ("" if not reason else f"<reason>{escape(reason)}</reason>")


def _bare(text: str | None) -> str:
    if not text:
        raise StanzaError("bad-request", "the item needs a 'jid'")
    try:
        return parse_jid(text).bare
    except JIDError:
        raise StanzaError("jid-malformed", f"{text!r} is not a JID") from None


def _affiliation_target(room: Room, item: Any) -> str:
    """The bare JID an affiliation change is about: its 'jid' (§9, §10 name the user by
    bare JID); without one, the occupant its 'nick' names, whose real JID the room knows
    (Dino 0.4's /affiliate sends the nick only; Prosody accepts that too)."""
    nick = item.get("nick")
    if not item.get("jid") and nick:
        occupant = room.occupants.get(nick)
        if occupant is None:
            raise StanzaError("item-not-found", "no occupant has that nickname")
        return occupant.bare
    return _bare(item.get("jid"))


# --- muc#admin (§8, §9, §10) -------------------------------------------------------------------


def admin_iq(room: Room, origin: OccupantSession, st: Stanza) -> bytes:
    query = st.element().find(f"{{{NS_ADMIN}}}query")
    if query is None:
        raise StanzaError("bad-request", "a muc#admin <query/> is expected")
    items = query.findall(f"{{{NS_ADMIN}}}item")
    if not items:
        raise StanzaError("bad-request", "at least one <item/> is expected")
    if st.attrs.get("type") == "get":
        return iq_result(
            origin, st, f"<query xmlns='{NS_ADMIN}'>{_list(room, origin, items[0])}</query>"
        )
    changes = [_change(room, origin, item) for item in items]  # all checked before any applies
    owners = set(room.owners())
    for item in items:
        affiliation = item.get("affiliation")
        if affiliation is not None:
            bare = _affiliation_target(room, item)
            if affiliation == "owner":
                owners.add(bare)
            else:
                owners.discard(bare)
    if not owners and room.owners():
        # §10.6: the room keeps an owner, also when one set demotes them all.
        raise StanzaError("conflict", "the room's last owner cannot step down")
    for apply in changes:
        apply()
    room.changed()
    return iq_result(origin, st)


def _list(room: Room, origin: OccupantSession, item: Any) -> str:
    """§8.5 voice list, §9.5 ban list, §9.8 member list, §9.11 moderator list, §10.5 owner
    list, §10.8 admin list."""
    actor_affiliation = room.affiliation(origin.bare)
    affiliation = item.get("affiliation")
    role = item.get("role")
    if affiliation is not None:
        if affiliation not in AFFILIATION_RANK or affiliation == "none":
            raise StanzaError("bad-request", "no such affiliation list")
        if affiliation in PRIVILEGED:
            # §10.5, §10.8: the owner and admin lists are the owners'; "forbidden ... in
            # semi-anonymous rooms", so an admin reads them in non-anonymous rooms only.
            allowed = actor_affiliation == "owner" or (
                actor_affiliation == "admin" and room.config.whois == "anyone"
            )
        else:
            allowed = actor_affiliation in PRIVILEGED or (
                # §9.5 note: members of a members-only room may see the member list.
                affiliation == "member"
                and room.config.members_only
                and actor_affiliation == "member"
            )
        if not allowed:
            raise StanzaError("forbidden", "you may not see this list")
        out = ""
        for bare, held in sorted(room.affiliations.items()):
            if held == affiliation:
                nick = room.nicks.get(bare)
                nick_attr = "" if nick is None or held == "outcast" else f" nick={quoteattr(nick)}"
                out += f"<item affiliation='{held}' jid={quoteattr(bare)}{nick_attr}/>"
        return out
    if role not in ("moderator", "participant", "visitor"):
        raise StanzaError("bad-request", "an item with 'role' or 'affiliation' is expected")
    if _acting_role(room, origin) != "moderator":
        raise StanzaError("forbidden", "only moderators see this list")
    out = ""
    for occupant in room.occupants.values():
        if occupant.role == role:
            out += (
                f"<item role='{role}' nick={quoteattr(occupant.nick)} "
                f"affiliation='{room.affiliation(occupant.bare)}' jid={quoteattr(occupant.jid)}/>"
            )
    return out


def _change(room: Room, origin: OccupantSession, item: Any) -> Callable[[], None]:
    """Check one change of a muc#admin set; the function that applies it."""
    role = item.get("role")
    affiliation = item.get("affiliation")
    if role is not None and affiliation is not None:
        raise StanzaError("bad-request", "change a role or an affiliation, not both (§18.4)")
    if role is not None:
        return _role_change(room, origin, item, role)
    if affiliation is not None:
        return _affiliation_change(room, origin, item, affiliation)
    raise StanzaError("bad-request", "an item needs a 'role' or an 'affiliation'")


def _acting_role(room: Room, origin: OccupantSession) -> str:
    """The role a muc#admin request acts with: the occupant's; for an admin or owner not in
    the room, moderator, as §9.6-9.8 check the sender's bare JID against the admin list."""
    occupant = room.by_jid.get(origin.full)
    if occupant is not None:
        return occupant.role
    return "moderator" if room.affiliation(origin.bare) in PRIVILEGED else "none"


def _role_change(room: Room, origin: OccupantSession, item: Any, role: str) -> Callable[[], None]:
    if role not in ROLE_RANK:
        raise StanzaError("bad-request", f"no role {role!r}")
    actor = room.by_jid.get(origin.full)
    if _acting_role(room, origin) != "moderator":
        raise StanzaError("forbidden", "only moderators change roles")
    nick = item.get("nick")
    if not nick:
        raise StanzaError("bad-request", "a role change names the occupant's 'nick'")
    target = room.occupants.get(nick)
    if target is None:
        raise StanzaError("item-not-found", "no occupant has that nickname")
    actor_rank = AFFILIATION_RANK[room.affiliation(origin.bare)]
    target_affiliation = room.affiliation(target.bare)
    target_rank = AFFILIATION_RANK[target_affiliation]
    if role == "none":
        if target is actor:
            raise StanzaError("conflict", "you cannot kick yourself")  # §8.2 (MAY)
        if target_rank > actor_rank:
            # §8.2: nobody is kicked by a moderator of a lower affiliation.
            raise StanzaError("not-allowed", "the occupant's affiliation is above yours")
    elif role == "moderator":
        if actor_rank < AFFILIATION_RANK["admin"]:
            # §9: a request of an admin's from someone who is none is forbidden
            raise StanzaError("forbidden", "only admins and owners grant moderator status")
    else:
        if target_affiliation in PRIVILEGED:
            # §8.4, §9.7: admins and owners keep voice and moderator status.
            raise StanzaError("not-allowed", "admins and owners cannot lose their role")
        if target.role == "moderator" and actor_rank < AFFILIATION_RANK["admin"]:
            raise StanzaError("forbidden", "only admins and owners revoke moderator status")
        if role == "visitor" and target is not actor and target_rank >= actor_rank:
            raise StanzaError("not-allowed", "the occupant's affiliation is not below yours")
    reason = _reason(item, NS_ADMIN)

    def apply() -> None:
        if target.nick not in room.occupants:
            return
        if role == "none":
            room.remove(target, "307", actor, reason)  # §8.2: kicked
            return
        target.role = role
        room.broadcast_presence(target, item_extra=_reason_xml(actor, reason))

    return apply


def _affiliation_change(
    room: Room, origin: OccupantSession, item: Any, affiliation: str
) -> Callable[[], None]:
    if affiliation not in AFFILIATION_RANK:
        raise StanzaError("bad-request", f"no affiliation {affiliation!r}")
    actor_affiliation = room.affiliation(origin.bare)
    if actor_affiliation not in PRIVILEGED:
        raise StanzaError("forbidden", "only admins and owners change affiliations")
    bare = _affiliation_target(room, item)
    current = room.affiliations.get(bare, "none")
    if affiliation == "outcast" and bare == origin.bare:
        # §9.1: "If an admin or owner attempts to ban himself" conflict, before the rule
        # that an admin changes no admin's affiliation (XMPP Interop
        # MultiUserChatAdminBanIntegrationTest.mucTestAdminCannotBanSelf)
        raise StanzaError("conflict", "you cannot ban yourself")
    if actor_affiliation == "admin":
        if affiliation in PRIVILEGED:
            raise StanzaError("forbidden", "only owners change the admin and owner lists")
        if current in PRIVILEGED:
            if affiliation != "outcast":
                # §10.4, §10.7: revoking owner or admin status is an owner's request
                raise StanzaError("forbidden", "only owners revoke owner or admin status")
            # §9.1: nobody is banned by an admin of a lower (or the same) affiliation
            raise StanzaError("not-allowed", "an admin cannot ban an admin or owner")
    if current == "owner" and affiliation != "owner" and room.owners() == [bare]:
        raise StanzaError("conflict", "the room's last owner cannot step down")  # §10.5
    nick = item.get("nick")
    if nick is not None:
        if len(nick) > room.service.limits.max_nick_length:
            raise StanzaError("not-acceptable", "that nickname is too long")
        nick_key(nick)  # jid-malformed when blank
        try:
            nick = parse_jid(f"x@y/{nick}").resource  # prepared as occupant JIDs are
        except JIDError:
            raise StanzaError("jid-malformed", "that nickname is not allowed") from None
    reason = _reason(item, NS_ADMIN)
    actor = room.by_jid.get(origin.full)

    def apply() -> None:
        set_affiliation(room, bare, affiliation, actor, reason, nick)

    return apply


def set_affiliation(
    room: Room,
    bare: str,
    affiliation: str,
    actor: Occupant | None = None,
    reason: str | None = None,
    nick: str | None = None,
) -> None:
    """Record an affiliation and apply it to the account's occupant, if in the room."""
    if affiliation == "none":
        room.affiliations.pop(bare, None)
        room.nicks.pop(bare, None)
    else:
        room.affiliations[bare] = affiliation
        if affiliation == "outcast":
            room.nicks.pop(bare, None)  # §18.4 rule 6: outcasts have no reserved nickname
        elif nick:
            room.nicks[bare] = nick
    for occupant in [o for o in room.occupants.values() if o.bare == bare]:
        if affiliation == "outcast":
            room.remove(occupant, "301", actor, reason)  # §9.1: banned
        elif room.config.members_only and affiliation == "none":
            room.remove(occupant, "321", actor, reason)  # §9.4: membership revoked
        else:
            occupant.role = room.default_role(room.affiliation(bare))
            room.broadcast_presence(occupant, item_extra=_reason_xml(actor, reason))


# --- muc#owner (§10) ---------------------------------------------------------------------------


def owner_iq(room: Room, origin: OccupantSession, st: Stanza) -> bytes:
    query = st.element().find(f"{{{NS_OWNER}}}query")
    if query is None:
        raise StanzaError("bad-request", "a muc#owner <query/> is expected")
    if room.affiliation(origin.bare) != "owner":
        raise StanzaError("forbidden", "only owners configure the room")
    service = room.service
    if st.attrs.get("type") == "get":
        admins = [j for j, a in room.affiliations.items() if a == "admin"]
        archiving = room.config.archives(service.limits.archive_rooms)
        form = config_form(
            room.config,
            room.owners(),
            admins,
            service.limits.max_history,
            archiving if archives_anything(room) else None,
        )
        return iq_result(origin, st, f"<query xmlns='{NS_OWNER}'>{form}</query>")
    destroy = query.find(f"{{{NS_OWNER}}}destroy")
    if destroy is not None:
        alternate = destroy.get("jid")
        if alternate is not None:
            alternate = _bare(alternate)
        destroy_room(
            room,
            alternate,
            _reason(destroy, NS_OWNER),
            destroy.findtext(f"{{{NS_OWNER}}}password"),
        )
        return iq_result(origin, st)
    form = query.find(f"{{{NS_DATA}}}x")
    if form is None:
        raise StanzaError("bad-request", "a data form or <destroy/> is expected")
    if form.get("type") == "cancel":
        # §10.1.3: cancelling the initial configuration destroys the room.
        if room.locked:
            destroy_room(room, None, None, None)
        return iq_result(origin, st)
    if form.get("type") != "submit":
        raise StanzaError("bad-request", "the form must be submitted or cancelled")
    configure(room, form, origin.bare)
    return iq_result(origin, st)


def configure(room: Room, form: Any, by: str) -> None:
    """Apply a submitted configuration form (an empty one: an instant room, §10.1.2)."""
    submitted = parse_submission(form, room.config, room.service.limits)
    if submitted.owners is not None and not submitted.owners:
        # §10.2: an owner cannot revoke their own status when no other owner is left
        raise StanzaError("conflict", "the room's last owner cannot step down")
    old = room.config
    new = submitted.config
    room.config = new
    room.history.resize(new.history_length)
    was_locked = room.locked
    room.locked = False
    if room.unlock_timer is not None:
        room.unlock_timer.cancel()
        room.unlock_timer = None
    for wanted, listed in (("owner", submitted.owners), ("admin", submitted.admins)):
        if listed is None:
            continue
        for bare, held in list(room.affiliations.items()):
            if held == wanted and bare not in listed:
                set_affiliation(room, bare, "none")
        for bare in listed:
            if room.affiliations.get(bare) != wanted:
                set_affiliation(room, bare, wanted)
    if new.members_only and not old.members_only:
        for occupant in list(room.occupants.values()):
            if room.affiliation(occupant.bare) == "none":
                room.remove(occupant, "322")  # §9.? members-only: non-members leave
    if not was_locked:
        # §10.2.1: occupants hear of the change; 172/173 when anonymity changed.
        codes = ["104"]
        if new.whois != old.whois:
            codes.append("172" if new.whois == "anyone" else "173")
        room.notify(codes)
    room.changed()
    room.service.maybe_discard(room)


def destroy_room(
    room: Room, alternate: str | None, reason: str | None, password: str | None
) -> None:
    """§10.9: every occupant gets unavailable presence carrying <destroy/>; the room goes."""
    jid_attr = "" if alternate is None else f" jid={quoteattr(alternate)}"
    inner = "" if not reason else f"<reason>{escape(reason)}</reason>"
    if password:
        inner += f"<password>{escape(password)}</password>"
    destroy_xml = f"<destroy{jid_attr}>{inner}</destroy>"
    for occupant, full, session in list(room.sessions()):
        session.send(
            f"<presence from={quoteattr(room.occupant_jid(occupant.nick))} to={quoteattr(full)} "
            f"type='unavailable'><x xmlns='{NS_USER}'><item affiliation='none' role='none'/>"
            f"{destroy_xml}</x>{occupant.id_xml}</presence>".encode()  # XEP-0421 §4
        )
        room.service.left(session, room)
    room.occupants.clear()
    room.by_jid.clear()
    room.service.discard(room)


# --- invitations (§7.8.2) ----------------------------------------------------------------------


def invitations(room: Room, origin: OccupantSession, x: Any) -> None:
    """Mediated invitations and declines in a message to the room."""
    for decline in x.findall(f"{{{NS_USER}}}decline"):
        inviter = _bare(decline.get("to"))
        reason = _reason(decline, NS_USER)
        reason_xml = "" if not reason else f"<reason>{escape(reason)}</reason>"
        room.service.deliver(
            inviter,
            f"<message from={quoteattr(room.jid)} to={quoteattr(inviter)}>"
            f"<x xmlns='{NS_USER}'><decline from={quoteattr(origin.bare)}>{reason_xml}"
            f"</decline></x></message>",
        )
    invites = x.findall(f"{{{NS_USER}}}invite")
    if not invites:
        return
    occupant = room.by_jid.get(origin.full)
    if occupant is None:
        raise StanzaError("not-acceptable", "only occupants invite")
    affiliation = room.affiliation(origin.bare)
    privileged = affiliation in PRIVILEGED
    if room.config.members_only:
        # §7.8.2: in members-only rooms inviting is for admins (or members when allowed),
        # and the invitee joins the member list.
        allowed = privileged or (room.config.allow_invites and affiliation == "member")
    else:
        allowed = privileged or room.config.allow_invites or occupant.role == "moderator"
    if not allowed:
        raise StanzaError("forbidden", "you may not invite to this room")
    invitees = [_bare(invite.get("to")) for invite in invites]
    for invitee in invitees:
        if not room.service.can_invite(invitee):
            raise StanzaError("item-not-found", f"no account {invitee}")
    for invite, invitee in zip(invites, invitees, strict=True):
        if room.config.members_only and room.affiliation(invitee) == "none":
            set_affiliation(room, invitee, "member")
            room.changed()
        reason = _reason(invite, NS_USER)
        reason_xml = "" if not reason else f"<reason>{escape(reason)}</reason>"
        password = ""
        if room.config.password_protected:
            password = f"<password>{escape(room.config.password)}</password>"
        room.service.deliver(
            invitee,
            f"<message from={quoteattr(room.jid)} to={quoteattr(invitee)}>"
            f"<x xmlns='{NS_USER}'><invite from={quoteattr(origin.full)}>{reason_xml}</invite>"
            f"{password}</x></message>",
        )


# --- voice requests (§7.13, §8.6) --------------------------------------------------------------

REQUEST_FORM = NS_MUC + "#request"


def form_values(form: Any) -> dict[str, str]:
    """var -> first value of a data form's fields."""
    return {
        f.get("var"): (f.findtext(f"{{{NS_DATA}}}value") or "").strip()
        for f in form.findall(f"{{{NS_DATA}}}field")
        if f.get("var")
    }


def voice_form(room: Room, origin: OccupantSession, form: Any) -> None:
    """A muc#request form sent to the room: a visitor's request (§7.13), which goes to the
    moderators as an approval form, or a moderator's approval (§8.6)."""
    values = form_values(form)
    if values.get("muc#role", "participant") != "participant":
        raise StanzaError("bad-request", "only voice (muc#role participant) can be requested")
    occupant = room.by_jid.get(origin.full)
    if occupant is None:
        raise StanzaError("not-acceptable", "only occupants request voice")
    if "muc#request_allow" in values:
        if occupant.role != "moderator":
            raise StanzaError("forbidden", "only moderators approve voice requests")
        if values["muc#request_allow"] not in ("1", "true"):
            return
        target = room.occupants.get(values.get("muc#roomnick", ""))
        if target is not None and target.role == "visitor":
            target.role = "participant"
            room.broadcast_presence(target, item_extra=_reason_xml(occupant, None))
        return
    if occupant.role != "visitor":
        return  # §7.13: only visitors lack voice; nothing to ask for
    approval = (
        f"<x xmlns='{NS_DATA}' type='form'><title>Voice request</title>"
        "<instructions>To approve this request for voice, select the &quot;Grant voice to "
        "this person?&quot; checkbox and submit the form.</instructions>"
        f"<field var='FORM_TYPE' type='hidden'><value>{REQUEST_FORM}</value></field>"
        "<field var='muc#role' type='list-single' label='Requested role'>"
        "<value>participant</value></field>"
        "<field var='muc#jid' type='jid-single' label='User ID'>"
        f"<value>{escape(origin.full)}</value></field>"
        "<field var='muc#roomnick' type='text-single' label='Room Nickname'>"
        f"<value>{escape(occupant.nick)}</value></field>"
        "<field var='muc#request_allow' type='boolean' label='Grant voice to this person?'>"
        "<value>false</value></field></x>"
    )
    for moderator, full, session in room.sessions():
        if moderator.role == "moderator":
            session.send(
                f"<message from={quoteattr(room.jid)} to={quoteattr(full)}>{approval}"
                "</message>".encode()
            )
