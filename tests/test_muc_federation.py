"""XEP-0045 rooms across servers: two real fastxmpp servers federated over loopback, rooms at
conference.a.test and users of b.test in them. The service domain has server links of its
own (SASL EXTERNAL with a certificate naming it, or dialback that b.test verifies by
connecting back to conference.a.test). A remote user discovers the service and its rooms,
enters (password, members-only, bans, nickname conflicts as for local users), gets the
presence of the others with their XEP-0421 occupant ids, the history and the subject, sends
and gets groupchat and private messages, changes nickname, pings itself (XEP-0410), reads
the room's archive (XEP-0313), gets mediated invitations, is kicked or kicks as moderator,
and leaves. An occupant whose server answers with an error that shows it gone, or whose
server cannot be reached, is removed with status 333 (§19.1.2); the service bounds how many
remote users its rooms hold."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trustme
from federation import Federation, sign_in, sync, wait_for
from lxml import etree
from test_muc import (
    ADMIN,
    DELAY,
    DISCO_INFO,
    DISCO_ITEMS,
    MESSAGE,
    MUC,
    PRESENCE,
    USER,
    codes,
    create,
    field,
    groupchat,
    iq,
    item,
    join,
    join_error,
)
from test_muc_admin import invite_xml
from test_muc_archive import query, texts
from test_muc_occupant_id import occupant_id
from test_s2s import RawPeer
from xmpp_raw import CLIENT, SASL, RawClient, stanza_error

SERVICE = "conference.a.test"
PERSISTENT = field("muc#roomconfig_persistentroom", "1")
_rooms = itertools.count()
_names = itertools.count()


def new_room(service: str = SERVICE) -> str:
    return f"fed{next(_rooms)}@{service}"


@pytest.fixture(scope="module")
def fed(
    ca: trustme.CA, ca_file: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Federation]:
    """SASL EXTERNAL both ways (certificates of the test CA, which name conference.<host>);
    every room archives."""
    users = tuple(f"u{i}" for i in range(60))
    fed = Federation(
        ca,
        tmp_path_factory.mktemp("mucfed"),
        ca_file,
        True,
        ("a.test", "b.test"),
        users=users,
        extra_toml='[muc]\narchive_rooms = "all"\n',
    )
    yield fed
    fed.stop()


@pytest.fixture(scope="module")
def dialback(
    ca: trustme.CA, ca_file: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Federation]:
    """No CA for peers: the service domain authenticates by dialback. At most two users of
    one other server in the rooms."""
    fed = Federation(
        ca,
        tmp_path_factory.mktemp("mucdb"),
        ca_file,
        False,
        ("c.test", "d.test"),
        users=tuple(f"u{i}" for i in range(60)),
        extra_toml="[muc]\nmax_remote_occupants_per_server = 2\n",
    )
    yield fed
    fed.stop()


class Member:
    """A signed-in client (the shape test_muc's helpers take)."""

    def __init__(self, c: RawClient, bare: str, resource: str) -> None:
        self.c = c
        self.bare = bare
        self.full = f"{bare}/{resource}"

    def send(self, data: str) -> None:
        self.c.send(data)


@pytest.fixture
def sign(fed: Federation, ca_file: str, clients: list[RawClient]) -> Callable[..., Member]:
    return signer(fed, ca_file, clients)


def signer(fed: Federation, ca_file: str, clients: list[RawClient]) -> Callable[..., Member]:
    def make(domain: str, resource: str = "r") -> Member:
        bare = f"u{next(_names)}@{domain}"
        return Member(
            sign_in(fed.servers[domain], ca_file, clients, bare, resource), bare, resource
        )

    return make


def until(user: Member, match: Callable[[Any], bool]) -> Any:
    return wait_for(user.c, match)


def presence_of(occupant: str, *wanted: str, unavailable: bool = False) -> Callable[[Any], bool]:
    """A presence from the occupant JID `occupant` carrying the status codes `wanted`."""

    def match(el: Any) -> bool:
        return (
            el.tag == PRESENCE
            and el.get("from") == occupant
            and (el.get("type") == "unavailable") == unavailable
            and set(wanted) <= codes(el)
        )

    return match


def body_from(sender: str, body: str) -> Callable[[Any], bool]:
    return lambda el: (
        el.tag == MESSAGE and el.get("from") == sender and el.findtext(f"{{{CLIENT}}}body") == body
    )


def make_room(owner: Member, form: str = "", service: str = SERVICE) -> str:
    """A new room at `service`, `owner` in it (nick owner), configured with `form`."""
    return create(owner, room=new_room(service), form=form)


def room_with_remote(local: Member, remote: Member, form: str = "") -> str:
    """A room at a.test made by `local` (nick owner), `remote` in it (nick guest)."""
    room = make_room(local, form=form)
    assert join(remote, room, "guest")[-1].tag == MESSAGE
    until(local, presence_of(f"{room}/guest"))
    return room


# --- discovery (§6) ------------------------------------------------------------------------------


def test_remote_user_discovers_the_service_and_its_rooms(sign: Any) -> None:
    owner, remote = sign("a.test"), sign("b.test")
    room = make_room(owner, form=field("muc#roomconfig_roomname", "Across"))
    items = iq(remote, "a.test", "get", f"<query xmlns='{DISCO_ITEMS}'/>")
    assert SERVICE in [i.get("jid") for i in items.iter(f"{{{DISCO_ITEMS}}}item")]
    info = iq(remote, SERVICE, "get", f"<query xmlns='{DISCO_INFO}'/>")
    assert info.get("type") == "result" and info.get("from") == SERVICE
    identity = info.find(f".//{{{DISCO_INFO}}}identity")
    assert (identity.get("category"), identity.get("type")) == ("conference", "text")
    assert MUC in {f.get("var") for f in info.iter(f"{{{DISCO_INFO}}}feature")}
    rooms = iq(remote, SERVICE, "get", f"<query xmlns='{DISCO_ITEMS}'/>")
    listed = {i.get("jid"): i.get("name") for i in rooms.iter(f"{{{DISCO_ITEMS}}}item")}
    assert listed[room] == "Across"
    room_info = iq(remote, room, "get", f"<query xmlns='{DISCO_INFO}'/>")
    assert room_info.get("type") == "result" and room_info.get("from") == room
    assert MUC in {f.get("var") for f in room_info.iter(f"{{{DISCO_INFO}}}feature")}


# --- entering, presence, history, subject (§7.2) -------------------------------------------------


def test_remote_user_enters_with_occupant_ids_history_and_subject(sign: Any) -> None:
    owner, remote = sign("a.test"), sign("b.test")
    room = make_room(owner, form=field("muc#roomconfig_whois", "anyone"))
    owner.send(f"<message to='{room}' type='groupchat'><subject>Federated</subject></message>")
    groupchat(owner, room, "before you came")
    until(owner, body_from(f"{room}/owner", "before you came"))
    seen = join(remote, room, "guest", f"<show>chat</show><x xmlns='{MUC}'/>")
    # §7.2.3: the owner's presence, the remote user's own (110, and 100: non-anonymous)
    others = [el for el in seen if presence_of(f"{room}/owner")(el)]
    assert len(others) == 1 and item(others[0]).get("jid") == owner.full
    own = [el for el in seen if presence_of(f"{room}/guest", "110", "100")(el)]
    assert len(own) == 1 and item(own[0]).get("jid") == remote.full
    assert own[0].get("to") == remote.full
    # then the history (with its delay) and the subject, last
    history = [el for el in seen if body_from(f"{room}/owner", "before you came")(el)]
    assert len(history) == 1 and history[0].find(f"{{{DELAY}}}delay") is not None
    assert seen[-1].findtext(f"{{{CLIENT}}}subject") == "Federated"
    # the owner sees the remote user come in, with its real JID and occupant id (XEP-0421)
    arrival = until(owner, presence_of(f"{room}/guest"))
    assert item(arrival).get("jid") == remote.full
    assert arrival.findtext(f"{{{CLIENT}}}show") == "chat"
    assert occupant_id(arrival) == occupant_id(own[0]) != occupant_id(others[0])


def test_groupchat_both_ways_nick_change_and_exit(sign: Any) -> None:
    owner, remote = sign("a.test"), sign("b.test")
    room = room_with_remote(owner, remote, form=field("muc#roomconfig_changesubject", "1"))
    groupchat(remote, room, "hello from b")
    for user in (owner, remote):  # everyone, the sender too (§7.4)
        copy = until(user, body_from(f"{room}/guest", "hello from b"))
        assert copy.get("to") == user.full and copy.get("type") == "groupchat"
    groupchat(owner, room, "hello from a")
    until(remote, body_from(f"{room}/owner", "hello from a"))
    # §8.1: a subject change (the room lets participants change it)
    remote.send(f"<message to='{room}' type='groupchat'><subject>From b</subject></message>")
    subject = until(owner, lambda el: el.findtext(f"{{{CLIENT}}}subject") == "From b")
    assert subject.get("from") == f"{room}/guest"
    # §7.6: a new nickname, seen by both
    remote.send(f"<presence to='{room}/visitor'/>")
    for user in (owner, remote):
        gone = until(user, presence_of(f"{room}/guest", "303", unavailable=True))
        assert item(gone).get("nick") == "visitor"
        until(user, presence_of(f"{room}/visitor"))
    groupchat(remote, room, "renamed")
    until(owner, body_from(f"{room}/visitor", "renamed"))
    # §7.7: a new availability
    remote.send(f"<presence to='{room}/visitor'><show>away</show></presence>")
    away = until(owner, presence_of(f"{room}/visitor"))
    assert away.findtext(f"{{{CLIENT}}}show") == "away"
    # §7.14: the exit, to both
    remote.send(f"<presence to='{room}/visitor' type='unavailable'/>")
    until(remote, presence_of(f"{room}/visitor", "110", unavailable=True))
    until(owner, presence_of(f"{room}/visitor", unavailable=True))
    # out: what the room sends no longer reaches it
    groupchat(owner, room, "after you left")
    until(owner, body_from(f"{room}/owner", "after you left"))
    assert not [el for el in sync(remote.c) if el.tag == MESSAGE]


def test_remote_session_end_leaves_the_room(sign: Any) -> None:
    """Its server sends the unavailable presence (RFC 6121 §4.6.3: to the JIDs the session
    sent directed presence to), and the room forgets the occupant."""
    owner, remote = sign("a.test"), sign("b.test")
    room = room_with_remote(owner, remote)
    remote.c.close()
    until(owner, presence_of(f"{room}/guest", unavailable=True))
    disco = iq(owner, room, "get", f"<query xmlns='{DISCO_ITEMS}'/>")
    assert [i.get("jid") for i in disco.iter(f"{{{DISCO_ITEMS}}}item")] == [f"{room}/owner"]


def test_private_messages_both_ways(sign: Any) -> None:
    owner, remote = sign("a.test"), sign("b.test")
    room = room_with_remote(owner, remote)
    remote.send(f"<message to='{room}/owner' type='chat'><body>psst</body></message>")
    pm = until(owner, body_from(f"{room}/guest", "psst"))
    assert pm.get("to") == owner.full and pm.find(f"{{{USER}}}x") is not None  # §7.5
    owner.send(f"<message to='{room}/guest' type='chat'><body>psst back</body></message>")
    pm = until(remote, body_from(f"{room}/owner", "psst back"))
    assert pm.get("to") == remote.full
    # XEP-0410 §3.3: the remote occupant's self-ping is answered by the room
    pong = iq(remote, f"{room}/guest", "get", "<ping xmlns='urn:xmpp:ping'/>")
    assert pong.get("type") == "result" and pong.get("from") == f"{room}/guest"


def test_vcards_of_occupants_come_from_their_accounts_across_servers(sign: Any) -> None:
    """A vCard asked at an occupant JID is the occupant's account's: for a user of the
    other server, the room asks that user's bare JID and its server answers (the client
    has none to give); for a local user, the room answers; the real JIDs stay hidden."""
    owner, remote = sign("a.test"), sign("b.test")
    for member, name in ((owner, "Local Owner"), (remote, "Remote Guest")):
        card = f"<vCard xmlns='vcard-temp'><FN>{name}</FN></vCard>"
        assert iq(member, member.bare, "set", card).get("type") == "result"
    room = room_with_remote(owner, remote)
    reply = iq(owner, f"{room}/guest", "get", "<vCard xmlns='vcard-temp'/>", "rv")
    assert reply.get("type") == "result", etree.tostring(reply)
    assert reply.get("from") == f"{room}/guest" and reply.get("to") == owner.full
    assert reply.findtext("{vcard-temp}vCard/{vcard-temp}FN") == "Remote Guest"
    assert remote.bare.encode() not in etree.tostring(reply)
    reply = iq(remote, f"{room}/owner", "get", "<vCard xmlns='vcard-temp'/>", "lv")
    assert reply.get("type") == "result", etree.tostring(reply)
    assert reply.get("from") == f"{room}/owner" and reply.get("to") == remote.full
    assert reply.findtext("{vcard-temp}vCard/{vcard-temp}FN") == "Local Owner"
    # a remote account without a vCard: its server's error comes back from the occupant JID
    other = sign("b.test")
    join(other, room, "plain")
    reply = iq(owner, f"{room}/plain", "get", "<vCard xmlns='vcard-temp'/>", "nv")
    assert reply.get("from") == f"{room}/plain"
    assert stanza_error(reply) == "service-unavailable"


# --- entering refused (§7.2.5-7.2.9) -------------------------------------------------------------


def test_password_members_only_bans_and_conflicts_refuse_a_remote_user(sign: Any) -> None:
    owner, remote = sign("a.test"), sign("b.test")
    secret = make_room(
        owner,
        form=field("muc#roomconfig_passwordprotectedroom", "1")
        + field("muc#roomconfig_roomsecret", "pw"),
    )
    assert stanza_error(join_error(remote, secret, "guest")) == "not-authorized"
    seen = join(remote, secret, "guest", f"<x xmlns='{MUC}'><password>pw</password></x>")
    assert seen[-1].tag == MESSAGE
    # a nickname in use is a conflict, for a remote user as for a local one
    other = sign("b.test")
    assert stanza_error(join_error(other, secret, "owner")) == "conflict"
    members = make_room(owner, form=field("muc#roomconfig_membersonly", "1"))
    assert stanza_error(join_error(remote, members, "guest")) == "registration-required"
    reply = iq(
        owner,
        members,
        "set",
        f"<query xmlns='{ADMIN}'><item affiliation='member' jid='{remote.bare}'/></query>",
    )
    assert reply.get("type") == "result", etree.tostring(reply)
    assert join(remote, members, "guest")[-1].tag == MESSAGE
    # a ban by bare JID (§9.1) holds for a remote user too
    banned = make_room(owner)
    iq(
        owner,
        banned,
        "set",
        f"<query xmlns='{ADMIN}'><item affiliation='outcast' jid='{other.bare}'/></query>",
    )
    assert stanza_error(join_error(other, banned, "x")) == "forbidden"
    # rooms are created by local users only ([muc] create_rooms = "local")
    assert stanza_error(join_error(other, new_room(), "maker")) == "not-allowed"


# --- moderation (§8, §9) -------------------------------------------------------------------------


def test_moderator_kicks_a_remote_occupant_and_a_remote_admin_moderates(sign: Any) -> None:
    owner, remote, local = sign("a.test"), sign("b.test"), sign("a.test")
    room = room_with_remote(owner, remote)
    assert join(local, room, "local")[-1].tag == MESSAGE
    reply = iq(
        owner,
        room,
        "set",
        f"<query xmlns='{ADMIN}'><item nick='guest' role='none'><reason>out</reason></item>"
        "</query>",
    )
    assert reply.get("type") == "result", etree.tostring(reply)
    kicked = until(remote, presence_of(f"{room}/guest", "110", "307", unavailable=True))
    assert kicked.findtext(f"{{{USER}}}x/{{{USER}}}item/{{{USER}}}reason") == "out"
    until(local, presence_of(f"{room}/guest", "307", unavailable=True))
    # affiliations are by bare JID: a remote admin enters as a moderator and kicks
    iq(
        owner,
        room,
        "set",
        f"<query xmlns='{ADMIN}'><item affiliation='admin' jid='{remote.bare}'/></query>",
    )
    seen = join(remote, room, "guest")
    own = next(el for el in seen if presence_of(f"{room}/guest", "110")(el))
    assert (item(own).get("affiliation"), item(own).get("role")) == ("admin", "moderator")
    reply = iq(
        remote, room, "set", f"<query xmlns='{ADMIN}'><item nick='local' role='none'/></query>"
    )
    assert reply.get("type") == "result", etree.tostring(reply)
    until(local, presence_of(f"{room}/local", "110", "307", unavailable=True))


# --- invitations (§7.8.2) ------------------------------------------------------------------------


def test_mediated_invitation_reaches_a_remote_user(sign: Any) -> None:
    owner, invitee = sign("a.test"), sign("b.test")
    room = make_room(owner, form=field("muc#roomconfig_membersonly", "1"))
    owner.send(invite_xml(room, invitee.bare))
    invitation = until(
        invitee,
        lambda el: el.tag == MESSAGE and el.find(f"{{{USER}}}x/{{{USER}}}invite") is not None,
    )
    assert invitation.get("from") == room
    invite = invitation.find(f"{{{USER}}}x/{{{USER}}}invite")
    assert invite.get("from") == owner.full and invite.findtext(f"{{{USER}}}reason") == "join us"
    # the invitee became a member (§7.8.2) and enters; its decline would go back the same way
    assert join(invitee, room, "guest")[-1].tag == MESSAGE
    invitee.send(
        f"<message to='{room}'><x xmlns='{USER}'><decline to='{owner.bare}'>"
        "<reason>busy</reason></decline></x></message>"
    )
    decline = until(
        owner,
        lambda el: el.tag == MESSAGE and el.find(f"{{{USER}}}x/{{{USER}}}decline") is not None,
    )
    assert decline.get("from") == room
    assert decline.find(f"{{{USER}}}x/{{{USER}}}decline").get("from") == invitee.bare


# --- archive (XEP-0313) --------------------------------------------------------------------------


def test_remote_occupant_reads_the_room_archive(sign: Any) -> None:
    owner, remote = sign("a.test"), sign("b.test")
    room = room_with_remote(owner, remote, form=PERSISTENT)
    groupchat(owner, room, "one")
    groupchat(remote, room, "two")
    until(owner, body_from(f"{room}/guest", "two"))
    results, fin = query(remote, room)
    assert fin.get("type") == "result", etree.tostring(fin)
    assert texts(results) == ["one", "two"]


# --- occupants gone (§19.1.2) --------------------------------------------------------------------


def test_error_presence_from_a_remote_occupant_removes_it(sign: Any) -> None:
    owner, remote = sign("a.test"), sign("b.test")
    room = room_with_remote(owner, remote)
    remote.send(
        f"<presence to='{room}/guest' type='error'><error type='cancel'>"
        "<recipient-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>"
    )
    until(owner, presence_of(f"{room}/guest", "333", unavailable=True))


def test_error_message_from_a_remote_occupant_removes_it(sign: Any) -> None:
    owner, remote, other = sign("a.test"), sign("b.test"), sign("b.test")
    room = room_with_remote(owner, remote)
    assert join(other, room, "other")[-1].tag == MESSAGE
    # an error that shows nothing about the occupant (a private message refused) stays one
    remote.send(
        f"<message to='{room}/owner' type='error'><error type='modify'>"
        "<not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"
    )
    # its server answering a groupchat copy with service-unavailable (RFC 6121 §8.5.3.2.1:
    # the resource is gone) removes it
    remote.send(
        f"<message to='{room}/owner' type='error'><error type='cancel'>"
        "<service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"
    )
    for user in (owner, other):
        until(user, presence_of(f"{room}/guest", "333", unavailable=True))
    assert not [el for el in sync(owner.c) if presence_of(f"{room}/other", unavailable=True)(el)]


def unreachable_occupant(fed: Federation, ca: trustme.CA, ca_file: str, clients: list[Any]) -> Any:
    """A raw peer authenticated by SASL EXTERNAL as nowhere.test to conference.a.test: it can
    send to the service, and nothing reaches it (its route leads to a closed port)."""
    peer = RawPeer(fed.ports["a.test"])
    clients.append(peer)
    peer.open_s2s("nowhere.test", SERVICE)
    peer.features()
    peer.tls(ca_file, SERVICE, ca.issue_cert("nowhere.test"))
    peer.open_s2s("nowhere.test", SERVICE)
    peer.features()
    peer.send(f"<auth xmlns='{SASL}' mechanism='EXTERNAL'>=</auth>")
    assert peer.next().tag == f"{{{SASL}}}success"
    peer.open_s2s("nowhere.test", SERVICE)
    peer.features()
    return peer


def test_occupant_whose_server_cannot_be_reached_is_removed(
    fed: Federation, ca: trustme.CA, ca_file: str, clients: list[Any], sign: Any
) -> None:
    owner = sign("a.test")
    room = make_room(owner)
    peer = unreachable_occupant(fed, ca, ca_file, clients)
    peer.send(
        f"<presence from='ghost@nowhere.test/r' to='{room}/ghost'><x xmlns='{MUC}'/></presence>"
    )
    until(owner, presence_of(f"{room}/ghost"))
    # the room's copies for it bounce (remote-server-not-found): it is gone (status 333)
    until(owner, presence_of(f"{room}/ghost", "333", unavailable=True))
    groupchat(owner, room, "alone again")
    until(owner, body_from(f"{room}/owner", "alone again"))
    disco = iq(owner, room, "get", f"<query xmlns='{DISCO_ITEMS}'/>")
    assert [i.get("jid") for i in disco.iter(f"{{{DISCO_ITEMS}}}item")] == [f"{room}/owner"]


# --- dialback, bounds ----------------------------------------------------------------------------


def test_rooms_across_dialback_links_and_the_remote_occupant_bound(
    dialback: Federation, ca_file: str, clients: list[RawClient]
) -> None:
    sign = signer(dialback, ca_file, clients)
    service = "conference.c.test"
    owner = sign("c.test")
    first, second, third = sign("d.test"), sign("d.test"), sign("d.test")
    room, other_room = make_room(owner, service=service), make_room(owner, service=service)
    assert join(first, room, "first")[-1].tag == MESSAGE
    groupchat(first, room, "over dialback")
    until(owner, body_from(f"{room}/first", "over dialback"))
    groupchat(owner, room, "and back")
    until(first, body_from(f"{room}/owner", "and back"))
    # [muc] max_remote_occupants_per_server = 2: one user in two rooms counts once
    assert join(first, other_room, "first")[-1].tag == MESSAGE
    assert join(second, room, "second")[-1].tag == MESSAGE
    assert stanza_error(join_error(third, room, "third")) == "resource-constraint"
    # one leaves every room: there is room for another
    for left in (room, other_room):
        first.send(f"<presence to='{left}/first' type='unavailable'/>")
        until(first, presence_of(f"{left}/first", "110", unavailable=True))
    assert join(third, room, "third")[-1].tag == MESSAGE
