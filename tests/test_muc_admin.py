"""XEP-0045 moderation and administration over real sockets: kicking and voice (§8.2-8.5),
bans and the member, moderator, admin and owner lists with the rules on who may change
whom (§9, §10.3-10.8), configuration changes and their notices (§10.2), destroying a room
(§10.9) and mediated invitations and declines (§7.8.2-7.8.3)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import test_muc
from lxml import etree
from test_muc import (
    ADMIN,
    CLIENT,
    DATA,
    DISCO_INFO,
    MESSAGE,
    MUC,
    OWNER,
    USER,
    User,
    bodies,
    codes,
    create,
    field,
    groupchat,
    iq,
    item,
    join,
    join_error,
    presences,
)
from test_roster import received, sync
from xmpp_raw import stanza_error

# The shared server and helpers' fixtures of test_muc (one server per test module).
srv = test_muc.srv
users = test_muc.users
login = test_muc.login


def admin_set(user: User, room: str, items: str, iq_id: str = "a") -> Any:
    return iq(user, room, "set", f"<query xmlns='{ADMIN}'>{items}</query>", iq_id)


def admin_get(user: User, room: str, attrs: str) -> Any:
    return iq(user, room, "get", f"<query xmlns='{ADMIN}'><item {attrs}/></query>")


def listed(reply: Any) -> dict[str, str | None]:
    assert reply.get("type") == "result", etree.tostring(reply)
    # role lists by nickname, affiliation lists by bare JID (§18.4 rules 5, 6)
    return {
        (i.get("nick") if i.get("role") else i.get("jid")): (i.get("role") or i.get("affiliation"))
        for i in reply.iter(f"{{{ADMIN}}}item")
    }


def error_type(el: Any) -> str | None:
    error = el.find(f"{{{CLIENT}}}error")
    return None if error is None else error.get("type")


def configure(owner: User, room: str, form: str) -> Any:
    return iq(
        owner,
        room,
        "set",
        f"<query xmlns='{OWNER}'><x xmlns='{DATA}' type='submit'>{form}</x></query>",
    )


def room_with(owner: User, *others: tuple[User, str], form: str = "") -> str:
    room = create(owner, form=form)
    for user, nick in others:
        join(user, room, nick)
    sync(owner.c)
    for user, _ in others:
        sync(user.c)
    return room


# --- kick and voice (§8.2-8.5) -----------------------------------------------------------------


def test_kick(login: Any, users: Iterator[str]) -> None:
    a, b, c = login(next(users)), login(next(users)), login(next(users))
    room = room_with(a, (b, "bob"), (c, "carol"))
    reply = admin_set(a, room, "<item nick='bob' role='none'><reason>spam</reason></item>")
    assert reply.get("type") == "result"
    kicked = presences(received(b.c, a.c))
    assert kicked[-1].get("type") == "unavailable"
    assert {"307", "110"} <= codes(kicked[-1])
    it = item(kicked[-1])
    assert it.get("role") == "none" and it.findtext(f"{{{USER}}}reason") == "spam"
    assert it.find(f"{{{USER}}}actor").get("nick") == "owner"
    seen = presences(received(c.c))
    assert seen[-1].get("from") == f"{room}/bob" and codes(seen[-1]) == {"307"}
    # out of the room: bob's messages are refused
    groupchat(b, room, "still here?")
    assert stanza_error(b.c.next()) == "not-acceptable"


def test_kick_rules(login: Any, users: Iterator[str]) -> None:
    a, b, c = login(next(users)), login(next(users)), login(next(users))
    room = room_with(a, (b, "bob"), (c, "carol"))
    # a participant cannot kick (forbidden); a moderator cannot kick an owner (not-allowed)
    reply = admin_set(b, room, "<item nick='carol' role='none'/>")
    assert stanza_error(reply) == "forbidden" and error_type(reply) == "auth"
    admin_set(a, room, "<item nick='bob' role='moderator'/>")
    reply = admin_set(b, room, "<item nick='owner' role='none'/>")
    assert stanza_error(reply) == "not-allowed" and error_type(reply) == "cancel"
    # the new moderator kicks a participant; kicking oneself is a conflict
    reply = admin_set(b, room, "<item nick='bob' role='none'/>")
    assert stanza_error(reply) == "conflict"
    reply = admin_set(b, room, "<item nick='carol' role='none'/>")
    assert reply.get("type") == "result"
    # no such occupant; role and affiliation at once (§18.4 rule 4)
    reply = admin_set(a, room, "<item nick='nobody' role='none'/>")
    assert stanza_error(reply) == "item-not-found"
    reply = admin_set(a, room, f"<item nick='bob' role='none' affiliation='none' jid='{b.bare}'/>")
    assert stanza_error(reply) == "bad-request"


def test_owner_outside_the_room_reads_role_lists_and_changes_roles(
    login: Any, users: Iterator[str]
) -> None:
    """§9.8, §9.6, §9.7: the moderator list and moderator status are an admin's business,
    checked by the bare JID's affiliation, not by a role in the room: an owner who is not
    joined (another resource) reads the list and grants and revokes moderator status."""
    a, b = login(next(users)), login(next(users))
    room = room_with(a, (b, "bee"))
    away = login(a.name, "away")  # the owner's other resource, not in the room
    assert listed(admin_get(away, room, "role='moderator'")) == {"owner": "moderator"}
    assert listed(admin_get(away, room, "role='participant'")) == {"bee": "participant"}
    reply = admin_set(away, room, "<item nick='bee' role='moderator'/>")
    assert reply.get("type") == "result", etree.tostring(reply)
    seen = presences(received(b.c))
    assert item(seen[-1]).get("role") == "moderator" and "110" in codes(seen[-1])
    reply = admin_set(away, room, "<item nick='bee' role='participant'/>")
    assert reply.get("type") == "result", etree.tostring(reply)
    assert item(presences(received(b.c))[-1]).get("role") == "participant"
    # a user neither in the room nor affiliated: forbidden (§9.8)
    c = login(next(users))
    assert stanza_error(admin_get(c, room, "role='moderator'")) == "forbidden"
    assert stanza_error(admin_set(c, room, "<item nick='bee' role='moderator'/>")) == "forbidden"


def test_moderator_status_is_granted_and_revoked_by_admins_only(
    login: Any, users: Iterator[str]
) -> None:
    """§9 (§9.6, §9.7): granting or revoking moderator status is an admin's request; from a
    moderator who is no admin it is denied with forbidden (as the XMPP Interop suite quotes
    §9 for MultiUserChatAdminGrantModerator/RevokeModeratorIntegrationTest)."""
    a, b, c, d = login(next(users)), login(next(users)), login(next(users)), login(next(users))
    room = room_with(a, (b, "bob"), (c, "carol"), (d, "dave"))
    for nick in ("bob", "dave"):
        assert admin_set(a, room, f"<item nick='{nick}' role='moderator'/>").get("type") == "result"
    reply = admin_set(b, room, "<item nick='carol' role='moderator'/>")
    assert stanza_error(reply) == "forbidden" and error_type(reply) == "auth"
    reply = admin_set(b, room, "<item nick='dave' role='participant'/>")
    assert stanza_error(reply) == "forbidden"
    # what a moderator may do: read the moderator list, kick a participant (§8.2)
    assert admin_set(b, room, "<item nick='carol' role='none'/>").get("type") == "result"
    assert listed(admin_get(b, room, "role='moderator'")) == {
        "owner": "moderator",
        "bob": "moderator",
        "dave": "moderator",
    }


def test_voice_in_moderated_room(login: Any, users: Iterator[str]) -> None:
    a, b = login(next(users)), login(next(users))
    room = room_with(a, (b, "bob"), form=field("muc#roomconfig_moderatedroom", "1"))
    groupchat(b, room, "silent")
    assert stanza_error(b.c.next()) == "forbidden"
    # §8.3 grant voice: everyone hears the new role
    assert admin_set(a, room, "<item nick='bob' role='participant'/>").get("type") == "result"
    got = presences(received(b.c, a.c))
    assert item(got[-1]).get("role") == "participant" and "110" in codes(got[-1])
    groupchat(b, room, "now I speak")
    assert bodies(received(a.c, b.c)) == [(f"{room}/bob", "now I speak")]
    # the voice list (§8.5)
    assert listed(admin_get(a, room, "role='participant'")) == {"bob": "participant"}
    reply = admin_get(b, room, "role='participant'")
    assert stanza_error(reply) == "forbidden"
    # §8.4 revoke voice; the owner's voice cannot be revoked
    assert admin_set(a, room, "<item nick='bob' role='visitor'/>").get("type") == "result"
    got = presences(received(b.c, a.c))
    assert item(got[-1]).get("role") == "visitor"
    admin_set(a, room, "<item nick='bob' role='moderator'/>")
    reply = admin_set(b, room, "<item nick='owner' role='visitor'/>")
    assert stanza_error(reply) == "not-allowed"


# --- affiliations (§9, §10) --------------------------------------------------------------------


def test_ban_and_ban_list(login: Any, users: Iterator[str]) -> None:
    a, b, c = login(next(users)), login(next(users)), login(next(users))
    room = room_with(a, (b, "bob"), (c, "carol"))
    reply = admin_set(
        a, room, f"<item affiliation='outcast' jid='{b.bare}'><reason>rude</reason></item>"
    )
    assert reply.get("type") == "result"
    banned = presences(received(b.c, a.c))[-1]
    assert banned.get("type") == "unavailable" and {"301", "110"} <= codes(banned)
    assert (item(banned).get("affiliation"), item(banned).get("role")) == ("outcast", "none")
    seen = presences(received(c.c))[-1]
    assert seen.get("from") == f"{room}/bob" and codes(seen) == {"301"}
    assert listed(admin_get(a, room, "affiliation='outcast'")) == {b.bare: "outcast"}
    assert stanza_error(join_error(b, room, "bob")) == "forbidden"
    # lifting the ban
    admin_set(a, room, f"<item affiliation='none' jid='{b.bare}'/>")
    assert join(b, room, "bob")[-1].tag == MESSAGE


def test_affiliation_rules(login: Any, users: Iterator[str]) -> None:
    a, b, c = login(next(users)), login(next(users)), login(next(users))
    room = room_with(a, (b, "bob"), (c, "carol"))
    # a participant changes no affiliation
    reply = admin_set(b, room, f"<item affiliation='member' jid='{c.bare}'/>")
    assert stanza_error(reply) == "forbidden"
    # the last owner cannot step down (§10.6), nor can anyone ban themselves (§9.1)
    reply = admin_set(a, room, f"<item affiliation='admin' jid='{a.bare}'/>")
    assert stanza_error(reply) == "conflict"
    reply = admin_set(a, room, f"<item affiliation='outcast' jid='{a.bare}'/>")
    assert stanza_error(reply) == "conflict"
    # an admin: becomes moderator; may ban others but not owners, nor edit the admin list
    assert admin_set(a, room, f"<item affiliation='admin' jid='{b.bare}'/>").get("type") == (
        "result"
    )
    got = presences(received(c.c, a.c))
    assert (item(got[-1]).get("affiliation"), item(got[-1]).get("role")) == ("admin", "moderator")
    reply = admin_set(b, room, f"<item affiliation='outcast' jid='{a.bare}'/>")
    assert stanza_error(reply) == "not-allowed"
    # an admin banning themselves: conflict as for an owner (§9.1), not the not-allowed of
    # an admin touching an admin (XMPP Interop AdminBan mucTestAdminCannotBanSelf)
    reply = admin_set(b, room, f"<item affiliation='outcast' jid='{b.bare}'/>")
    assert stanza_error(reply) == "conflict"
    reply = admin_set(b, room, f"<item affiliation='admin' jid='{c.bare}'/>")
    assert stanza_error(reply) == "forbidden"
    # nor revoke an owner's status, an owner's request (§10.4), where a ban of an owner is
    # not-allowed (§9.1)
    reply = admin_set(b, room, f"<item affiliation='member' jid='{a.bare}'/>")
    assert stanza_error(reply) == "forbidden"
    reply = admin_set(b, room, f"<item affiliation='member' jid='{c.bare}' nick='carol'/>")
    assert reply.get("type") == "result"
    assert listed(admin_get(b, room, "affiliation='member'")) == {c.bare: "member"}
    # §10.5, §10.8: the owner and admin lists are the owners' in a semi-anonymous room; an
    # admin reads them once the room is non-anonymous (the MAY of the same sections)
    for wanted in ("owner", "admin"):
        assert stanza_error(admin_get(b, room, f"affiliation='{wanted}'")) == "forbidden"
    configure(a, room, field("muc#roomconfig_whois", "anyone"))
    assert listed(admin_get(b, room, "affiliation='owner'")) == {a.bare: "owner"}
    configure(a, room, field("muc#roomconfig_whois", "moderators"))
    assert listed(admin_get(a, room, "affiliation='admin'")) == {b.bare: "admin"}
    assert listed(admin_get(a, room, "affiliation='owner'")) == {a.bare: "owner"}
    # a member sees no lists of an open room
    reply = admin_get(c, room, "affiliation='member'")
    assert stanza_error(reply) == "forbidden"
    # one set demoting every owner at once is refused as well
    admin_set(a, room, f"<item affiliation='owner' jid='{c.bare}'/>")
    reply = admin_set(
        a,
        room,
        f"<item affiliation='admin' jid='{a.bare}'/><item affiliation='member' jid='{c.bare}'/>",
    )
    assert stanza_error(reply) == "conflict"
    admin_set(a, room, f"<item affiliation='member' jid='{c.bare}'/>")
    # a second owner lets the first step down
    admin_set(a, room, f"<item affiliation='owner' jid='{b.bare}'/>")
    reply = admin_set(a, room, f"<item affiliation='admin' jid='{a.bare}'/>")
    assert reply.get("type") == "result"
    assert listed(admin_get(b, room, "affiliation='owner'")) == {b.bare: "owner"}
    # a malformed JID
    reply = admin_set(b, room, "<item affiliation='member' jid='@@'/>")
    assert stanza_error(reply) == "jid-malformed"


def test_affiliation_of_an_occupant_named_by_nick(login: Any, users: Iterator[str]) -> None:
    """§9.3 and §10 name the user by bare JID; an item with only an occupant's 'nick' (what
    Dino 0.4's /affiliate sends; Prosody takes it so) is about that occupant's
    account."""
    a, b, c = login(next(users)), login(next(users)), login(next(users))
    room = room_with(a, (b, "bob"), (c, "carol"))
    reply = admin_set(a, room, "<item affiliation='member' nick='bob'/>")
    assert reply.get("type") == "result", etree.tostring(reply)
    got = presences(received(c.c, a.c))
    assert got[-1].get("from") == f"{room}/bob" and item(got[-1]).get("affiliation") == "member"
    assert listed(admin_get(a, room, "affiliation='member'")) == {b.bare: "member"}
    # a nick nobody in the room has, and an item naming nobody at all
    reply = admin_set(a, room, "<item affiliation='member' nick='nobody'/>")
    assert stanza_error(reply) == "item-not-found"
    reply = admin_set(a, room, "<item affiliation='member'/>")
    assert stanza_error(reply) == "bad-request"


def test_reserved_nick_is_a_conflict_for_others(login: Any, users: Iterator[str]) -> None:
    a, b, c = login(next(users)), login(next(users)), login(next(users))
    room = create(a)
    admin_set(a, room, f"<item affiliation='member' jid='{b.bare}' nick='bobby'/>")
    assert stanza_error(join_error(c, room, "bobby")) == "conflict"
    assert join(b, room, "bobby")[-1].tag == MESSAGE


def test_members_only_revocation_and_switch(login: Any, users: Iterator[str]) -> None:
    a, b, c = login(next(users)), login(next(users)), login(next(users))
    room = room_with(a, (b, "bob"), (c, "carol"))
    admin_set(a, room, f"<item affiliation='member' jid='{b.bare}'/>")
    received(a.c)
    received(b.c)
    # §9.? switching to members-only removes non-members (322)
    reply = configure(a, room, field("muc#roomconfig_membersonly", "1"))
    assert reply.get("type") == "result"
    gone = presences(received(c.c, a.c))
    assert gone[-1].get("type") == "unavailable" and "322" in codes(gone[-1])
    # §9.4 revoking membership in a members-only room removes the occupant (321)
    admin_set(a, room, f"<item affiliation='none' jid='{b.bare}'/>")
    gone = presences(received(b.c, a.c))
    assert gone[-1].get("type") == "unavailable" and "321" in codes(gone[-1])


# --- configuration (§10.2) and destruction (§10.9) ----------------------------------------------


def test_configuration_rights_and_notices(login: Any, users: Iterator[str]) -> None:
    a, b = login(next(users)), login(next(users))
    room = room_with(a, (b, "bob"))
    reply = iq(b, room, "get", f"<query xmlns='{OWNER}'/>")
    assert stanza_error(reply) == "forbidden" and error_type(reply) == "auth"
    reply = configure(b, room, field("muc#roomconfig_roomname", "mine"))
    assert stanza_error(reply) == "forbidden"
    reply = configure(a, room, field("muc#roomconfig_whois", "anyone"))
    assert reply.get("type") == "result"
    notice = [el for el in received(b.c, a.c) if el.tag == MESSAGE][-1]
    assert notice.get("from") == room and {"104", "172"} <= codes(notice)
    form = iq(a, room, "get", f"<query xmlns='{OWNER}'/>")
    values = {f.get("var"): f.findtext(f"{{{DATA}}}value") for f in form.iter(f"{{{DATA}}}field")}
    assert values["muc#roomconfig_whois"] == "anyone"
    # owners through the form (roomowners), never empty: §10.2, the last owner cannot step
    # down, conflict (MultiUserChatOwnerConfigRoomIntegrationTest.testRoomConfigRemoveLastOwner)
    reply = configure(a, room, "<field var='muc#roomconfig_roomowners'/>")
    assert stanza_error(reply) == "conflict"
    reply = configure(a, room, field("muc#roomconfig_roomowners", a.bare, b.bare))
    assert reply.get("type") == "result"
    owners = iq(a, room, "get", f"<query xmlns='{ADMIN}'><item affiliation='owner'/></query>")
    assert set(listed(owners)) == {a.bare, b.bare}


def test_empty_values_in_the_jid_lists_are_no_jids(login: Any, users: Iterator[str]) -> None:
    """libpurple submits the form back with an empty <value/> in a jid-multi field that had
    none (roomadmins): an empty list, not a JID refused as such (XEP-0004 §3.3 jid-multi)."""
    a, b = login(next(users)), login(next(users))
    room = room_with(a)
    reply = configure(
        a,
        room,
        field("muc#roomconfig_roomadmins", "")
        + field("muc#roomconfig_roomowners", a.bare, "", b.bare)
        + field("muc#roomconfig_roomname", "purple"),
    )
    assert reply.get("type") == "result", etree.tostring(reply)
    owners = iq(a, room, "get", f"<query xmlns='{ADMIN}'><item affiliation='owner'/></query>")
    assert set(listed(owners)) == {a.bare, b.bare}
    admins = iq(a, room, "get", f"<query xmlns='{ADMIN}'><item affiliation='admin'/></query>")
    assert listed(admins) == {}
    # a value that is there but no JID is still refused
    reply = configure(a, room, field("muc#roomconfig_roomadmins", "@@"))
    assert stanza_error(reply) == "not-acceptable"


def test_destroy(login: Any, users: Iterator[str]) -> None:
    a, b = login(next(users)), login(next(users))
    room = room_with(a, (b, "bob"))
    other = create(a)
    reply = iq(b, room, "set", f"<query xmlns='{OWNER}'><destroy/></query>")
    assert stanza_error(reply) == "forbidden"
    reply = iq(
        a,
        room,
        "set",
        f"<query xmlns='{OWNER}'><destroy jid='{other}'><reason>moved</reason></destroy></query>",
    )
    assert reply.get("type") == "result"
    gone = presences(received(b.c, a.c))[-1]
    assert gone.get("type") == "unavailable"
    destroy = gone.find(f"{{{USER}}}x/{{{USER}}}destroy")
    assert destroy.get("jid") == other and destroy.findtext(f"{{{USER}}}reason") == "moved"
    reply = iq(a, room, "get", f"<query xmlns='{DISCO_INFO}'/>")
    assert stanza_error(reply) == "item-not-found"


# --- invitations (§7.8.2, §7.8.3) --------------------------------------------------------------


def invite_xml(room: str, to: str, reason: str = "join us") -> str:
    return (
        f"<message to='{room}'><x xmlns='{USER}'><invite to='{to}'>"
        f"<reason>{reason}</reason></invite></x></message>"
    )


def test_mediated_invitation_and_decline(login: Any, users: Iterator[str]) -> None:
    a, b = login(next(users)), login(next(users))
    room = create(
        a,
        form=field("muc#roomconfig_membersonly", "1")
        + field("muc#roomconfig_passwordprotectedroom", "1")
        + field("muc#roomconfig_roomsecret", "pw"),
    )
    a.send(invite_xml(room, b.bare))
    invitation = [el for el in received(b.c, a.c) if el.tag == MESSAGE][-1]
    assert invitation.get("from") == room
    invite = invitation.find(f"{{{USER}}}x/{{{USER}}}invite")
    assert invite.get("from") == a.full and invite.findtext(f"{{{USER}}}reason") == "join us"
    assert invitation.findtext(f"{{{USER}}}x/{{{USER}}}password") == "pw"
    # §7.8.2: in a members-only room the invitee became a member
    assert join(b, room, "bob", f"<x xmlns='{MUC}'><password>pw</password></x>")[-1].tag == (
        MESSAGE
    )
    # a decline goes back to the inviter from the decliner
    b.send(
        f"<message to='{room}'><x xmlns='{USER}'><decline to='{a.full}'>"
        "<reason>busy</reason></decline></x></message>"
    )
    decline = [el for el in received(a.c, b.c) if el.tag == MESSAGE][-1]
    assert decline.get("from") == room
    assert decline.find(f"{{{USER}}}x/{{{USER}}}decline").get("from") == b.bare


def test_invitation_rules(login: Any, users: Iterator[str]) -> None:
    a, b, c = login(next(users)), login(next(users)), login(next(users))
    room = room_with(a, (b, "bob"))
    # a participant may not invite unless allowinvites (§7.8.2)
    b.send(invite_xml(room, c.bare))
    assert stanza_error(b.c.next()) == "forbidden"
    configure(a, room, field("muc#roomconfig_allowinvites", "1"))
    received(b.c)
    b.send(invite_xml(room, c.bare))
    got = [el for el in received(c.c, b.c) if el.tag == MESSAGE]
    assert got and got[-1].find(f"{{{USER}}}x/{{{USER}}}invite") is not None
    # no such account: item-not-found; non-occupants do not invite
    b.send(invite_xml(room, "nobody-here@localhost"))
    assert stanza_error(b.c.next()) == "item-not-found"
    c.send(invite_xml(room, a.bare))
    assert stanza_error(c.c.next()) == "not-acceptable"
    # a chat message to the room itself is refused (§17.2 rule 1)
    b.send(f"<message to='{room}' type='chat'><body>x</body></message>")
    assert stanza_error(b.c.next()) == "bad-request"


# --- voice requests (§7.13, §8.6) and the reserved nickname (§7.12) ----------------------------

REQUEST = MUC + "#request"


def voice_request(values: dict[str, str]) -> str:
    fields = f"<field var='FORM_TYPE'><value>{REQUEST}</value></field>" + "".join(
        field(var, value) for var, value in values.items()
    )
    return f"<x xmlns='{DATA}' type='submit'>{fields}</x>"


def test_voice_request_and_approval(login: Any, users: Iterator[str]) -> None:
    a, b = login(next(users)), login(next(users))
    room = room_with(a, (b, "bob"), form=field("muc#roomconfig_moderatedroom", "1"))
    b.send(f"<message to='{room}'>{voice_request({'muc#role': 'participant'})}</message>")
    approval = [el for el in received(a.c, b.c) if el.tag == MESSAGE][-1]
    assert approval.get("from") == room
    values = {
        f.get("var"): f.findtext(f"{{{DATA}}}value") for f in approval.iter(f"{{{DATA}}}field")
    }
    assert values["muc#roomnick"] == "bob" and values["muc#jid"] == b.full
    assert values["muc#request_allow"] == "false"
    # a visitor cannot approve; the moderator can
    b.send(
        f"<message to='{room}'>"
        + voice_request(
            {"muc#role": "participant", "muc#roomnick": "bob", "muc#request_allow": "1"}
        )
        + "</message>"
    )
    assert stanza_error(b.c.next()) == "forbidden"
    a.send(
        f"<message to='{room}'>"
        + voice_request(
            {"muc#role": "participant", "muc#roomnick": "bob", "muc#request_allow": "true"}
        )
        + "</message>"
    )
    got = presences(received(b.c, a.c))
    assert item(got[-1]).get("role") == "participant" and "110" in codes(got[-1])
    groupchat(b, room, "thanks")
    assert bodies(received(a.c, b.c)) == [(f"{room}/bob", "thanks")]


def test_reserved_nickname_discovery(login: Any, users: Iterator[str]) -> None:
    a, b = login(next(users)), login(next(users))
    room = create(a)
    query = f"<query xmlns='{DISCO_INFO}' node='x-roomuser-item'/>"
    reply = iq(b, room, "get", query)
    assert reply.get("type") == "result" and reply.find(f".//{{{DISCO_INFO}}}identity") is None
    admin_set(a, room, f"<item affiliation='member' jid='{b.bare}' nick='bobby'/>")
    reply = iq(b, room, "get", query)
    assert reply.find(f".//{{{DISCO_INFO}}}identity").get("name") == "bobby"
