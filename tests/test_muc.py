"""XEP-0045 multi-user chat over real sockets: the service and its disco (§6), entering
rooms with every error the XEP names (§7.2), room creation (§10.1), groupchat messages,
subject and history (§7.2.15-16, §7.4, §8.1), private messages and iqs between occupants
(§7.5), nickname and availability changes (§7.6, §7.7), exits (§7.14), and slixmpp's
xep_0045 plugin doing the same as a real client."""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import PASSWORD, FreshNames, ServerProcess, assert_still_serving, module_server
from lxml import etree
from slixmpp import ClientXMPP
from test_roster import received, sync
from xmpp_raw import CLIENT, STANZA_ERRORS, RawClient, stanza_error

from fastxmpp.modules.muc.history import MAX_HISTORY_BYTES, History

MUC = "http://jabber.org/protocol/muc"
USER = MUC + "#user"
ADMIN = MUC + "#admin"
OWNER = MUC + "#owner"
DATA = "jabber:x:data"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
DELAY = "urn:xmpp:delay"
SERVICE = "conference.localhost"
PRESENCE = f"{{{CLIENT}}}presence"
MESSAGE = f"{{{CLIENT}}}message"
ACCOUNTS = 180
MUC_TOML = "[muc]\nmax_nick_length = 20\nmax_history = 50\n"

_rooms = itertools.count()


def new_room() -> str:
    return f"room{next(_rooms)}@{SERVICE}"


POOL = FreshNames("m", ACCOUNTS)


@pytest.fixture(scope="module")
def srv(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(
        ca, tmp_path_factory, POOL, MUC_TOML + "[limits]\nmax_unauthenticated_per_ip = 200\n"
    )


@pytest.fixture
def users() -> Iterator[str]:
    return POOL.names()


class User:
    def __init__(self, c: RawClient, name: str, resource: str) -> None:
        self.c = c
        self.name = name
        self.bare = f"{name}@localhost"
        self.full = f"{self.bare}/{resource}"

    def send(self, data: str) -> None:
        self.c.send(data)


def log_in(
    srv: ServerProcess, ca_file: str, clients: list[RawClient], name: str, resource: str = "r"
) -> User:
    """`name` logged in with `resource`, available (its own presence read)."""
    c = srv.client()
    clients.append(c)
    c.login(ca_file, name, PASSWORD, resource)
    c.send("<presence/>")
    sync(c)
    return User(c, name, resource)


@pytest.fixture
def login(srv: ServerProcess, ca_file: str, clients: list[RawClient]) -> Any:
    return functools.partial(log_in, srv, ca_file, clients)


# --- helpers -----------------------------------------------------------------------------------


def user_x(el: Any) -> Any:
    return el.find(f"{{{USER}}}x")


def codes(el: Any) -> set[str]:
    x = user_x(el)
    return set() if x is None else {s.get("code") for s in x.findall(f"{{{USER}}}status")}


def item(el: Any) -> Any:
    x = user_x(el)
    return None if x is None else x.find(f"{{{USER}}}item")


def join(
    user: User,
    room: str,
    nick: str,
    extra: str = f"<x xmlns='{MUC}'/>",
    until_subject: bool = True,
) -> list[Any]:
    """Enter `room`; what arrived up to the subject (or to the self-presence)."""
    user.send(f"<presence to='{room}/{nick}'>{extra}</presence>")
    seen = []
    while True:
        el = user.c.next()
        seen.append(el)
        if el.get("type") == "error":
            return seen
        if el.tag == PRESENCE and "110" in codes(el) and not until_subject:
            return seen
        if el.tag == MESSAGE and el.find(f"{{{CLIENT}}}subject") is not None:
            return seen


def join_error(user: User, room: str, nick: str, extra: str = f"<x xmlns='{MUC}'/>") -> Any:
    """The presence error an entry attempt gets."""
    reply = join(user, room, nick, extra)[-1]
    assert reply.tag == PRESENCE and reply.get("type") == "error", etree.tostring(reply)
    assert reply.get("from") == f"{room}/{nick}"
    return reply


def iq(user: User, to: str, itype: str, payload: str, iq_id: str = "q") -> Any:
    """Send an iq; its answer (anything before it is dropped)."""
    user.send(f"<iq to='{to}' type='{itype}' id='{iq_id}'>{payload}</iq>")
    while True:
        el = user.c.next()
        if el.get("id") == iq_id and el.tag == f"{{{CLIENT}}}iq":
            return el


def create(owner: User, nick: str = "owner", room: str | None = None, form: str = "") -> str:
    """A new room, configured as an instant room (§10.1.2) or with `form`'s fields."""
    room = room or new_room()
    seen = join(owner, room, nick, until_subject=False)
    assert {"110", "201"} <= codes(seen[-1]), etree.tostring(seen[-1])
    reply = iq(
        owner,
        room,
        "set",
        f"<query xmlns='{OWNER}'><x xmlns='{DATA}' type='submit'>{form}</x></query>",
    )
    assert reply.get("type") == "result", etree.tostring(reply)
    sync(owner.c)
    return room


def field(var: str, *values: str) -> str:
    return f"<field var='{var}'>" + "".join(f"<value>{v}</value>" for v in values) + "</field>"


def groupchat(user: User, room: str, body: str) -> None:
    user.send(f"<message to='{room}' type='groupchat'><body>{body}</body></message>")


def bodies(elements: list[Any]) -> list[tuple[str | None, str | None]]:
    return [
        (el.get("from"), el.findtext(f"{{{CLIENT}}}body"))
        for el in elements
        if el.tag == MESSAGE and el.find(f"{{{CLIENT}}}body") is not None
    ]


def presences(elements: list[Any]) -> list[Any]:
    return [el for el in elements if el.tag == PRESENCE]


# --- the service (§6) --------------------------------------------------------------------------


def test_service_listed_in_server_items_and_described(login: Any, users: Iterator[str]) -> None:
    a = login(next(users))
    items = iq(a, "localhost", "get", f"<query xmlns='{DISCO_ITEMS}'/>")
    jids = [i.get("jid") for i in items.iter(f"{{{DISCO_ITEMS}}}item")]
    assert SERVICE in jids
    info = iq(a, SERVICE, "get", f"<query xmlns='{DISCO_INFO}'/>")
    assert info.get("type") == "result" and info.get("from") == SERVICE
    identity = info.find(f".//{{{DISCO_INFO}}}identity")
    assert (identity.get("category"), identity.get("type")) == ("conference", "text")
    features = {f.get("var") for f in info.iter(f"{{{DISCO_INFO}}}feature")}
    assert MUC in features


def test_public_rooms_listed_hidden_and_locked_not(login: Any, users: Iterator[str]) -> None:
    a = login(next(users))
    public = create(a, form=field("muc#roomconfig_roomname", "Public talk"))
    hidden = create(a, form=field("muc#roomconfig_publicroom", "0"))
    locked = new_room()
    join(a, locked, "x", until_subject=False)
    items = iq(a, SERVICE, "get", f"<query xmlns='{DISCO_ITEMS}'/>")
    listed = {i.get("jid"): i.get("name") for i in items.iter(f"{{{DISCO_ITEMS}}}item")}
    assert listed[public] == "Public talk"
    assert hidden not in listed and locked not in listed


def test_room_disco_info_features(login: Any, users: Iterator[str]) -> None:
    a = login(next(users))
    room = create(
        a,
        form=field("muc#roomconfig_membersonly", "1")
        + field("muc#roomconfig_roomdesc", "about things"),
    )
    info = iq(a, room, "get", f"<query xmlns='{DISCO_INFO}'/>")
    features = {f.get("var") for f in info.iter(f"{{{DISCO_INFO}}}feature")}
    assert {MUC, "muc_membersonly", "muc_temporary", "muc_semianonymous"} <= features
    values = {f.get("var"): f.findtext(f"{{{DATA}}}value") for f in info.iter(f"{{{DATA}}}field")}
    assert values["muc#roominfo_description"] == "about things"
    assert values["muc#roominfo_occupants"] == "1"


def test_room_disco_items_list_occupants_of_public_rooms(login: Any, users: Iterator[str]) -> None:
    """§6.5: a public room lists its occupants to anyone (what the XMPP Interop suite's
    MultiUserChatEntityIntegrationTest.mucTestForDiscoveringRoomItems asks of a
    non-occupant); a hidden or members-only room only to its occupants."""
    a, b, c = login(next(users)), login(next(users)), login(next(users))
    public = create(a, "one")
    hidden = create(b, "two", form=field("muc#roomconfig_publicroom", "0"))
    members = create(a, "three", form=field("muc#roomconfig_membersonly", "1"))

    def occupants(user: User, room: str) -> list[str | None]:
        reply = iq(user, room, "get", f"<query xmlns='{DISCO_ITEMS}'/>")
        assert reply.get("type") == "result", etree.tostring(reply)
        return [i.get("jid") for i in reply.iter(f"{{{DISCO_ITEMS}}}item")]

    assert occupants(c, public) == [f"{public}/one"]
    assert occupants(c, hidden) == []
    assert occupants(b, hidden) == [f"{hidden}/two"]
    assert occupants(c, members) == []
    assert occupants(a, members) == [f"{members}/three"]


def test_stanzas_to_the_service_itself(login: Any, users: Iterator[str]) -> None:
    a = login(next(users))
    reply = iq(a, SERVICE, "get", "<query xmlns='jabber:iq:version'/>")
    assert stanza_error(reply) == "service-unavailable"
    a.send(f"<message to='{SERVICE}'><body>hi</body></message>")
    reply = a.c.next()
    assert reply.get("type") == "error" and stanza_error(reply) == "service-unavailable"
    a.send(f"<presence to='{SERVICE}'/>")
    assert sync(a.c) == []
    reply = iq(a, SERVICE, "get", f"<unique xmlns='{MUC}#unique'/>")
    assert reply.get("type") == "result" and reply.findtext(f"{{{MUC}#unique}}unique")


def test_nonexistent_room_queries(login: Any, users: Iterator[str]) -> None:
    a = login(next(users))
    room = new_room()
    reply = iq(a, room, "get", f"<query xmlns='{DISCO_INFO}'/>")
    assert stanza_error(reply) == "item-not-found"
    a.send(f"<message to='{room}' type='groupchat'><body>x</body></message>")
    assert stanza_error(a.c.next()) == "item-not-found"


# --- entering (§7.2) and creating (§10.1) ------------------------------------------------------


def test_create_locked_then_instant(login: Any, users: Iterator[str]) -> None:
    a, b = login(next(users)), login(next(users))
    room = new_room()
    seen = join(a, room, "alice", until_subject=False)
    self_presence = seen[-1]
    assert {"110", "201"} <= codes(self_presence)
    assert (item(self_presence).get("affiliation"), item(self_presence).get("role")) == (
        "owner",
        "moderator",
    )
    # §7.2.9: a locked room is not there for anyone else.
    error = join_error(b, room, "bob")
    assert stanza_error(error) == "item-not-found"
    assert error.find(f"{{{CLIENT}}}error").get("type") == "cancel"
    reply = iq(a, room, "set", f"<query xmlns='{OWNER}'><x xmlns='{DATA}' type='submit'/></query>")
    assert reply.get("type") == "result"
    seen = join(b, room, "bob")
    assert [p.get("from") for p in presences(seen)] == [f"{room}/alice", f"{room}/bob"]
    assert "110" in codes(presences(seen)[-1])
    assert seen[-1].findtext(f"{{{CLIENT}}}subject") == ""
    # alice heard bob come in
    got = received(a.c, b.c)
    assert [p.get("from") for p in presences(got)] == [f"{room}/bob"]
    assert item(presences(got)[0]).get("jid") == b.full  # she is a moderator


def test_creating_a_room_ends_with_the_empty_subject(login: Any, users: Iterator[str]) -> None:
    """§7.1 order of events and §7.2.15: the subject (empty when none is set) ends every
    join sequence, that of a new, locked room included: clients wait for it."""
    a = login(next(users), "one")
    room = new_room()
    a.send(f"<presence to='{room}/owner'><x xmlns='{MUC}'/></presence>")
    self_presence, subject = a.c.next(), a.c.next()
    assert self_presence.tag == PRESENCE and {"110", "201"} <= codes(self_presence)
    assert subject.tag == MESSAGE and subject.get("type") == "groupchat"
    assert subject.get("from") == room and subject.get("to") == a.full
    assert subject.findtext(f"{{{CLIENT}}}subject") == ""
    assert subject.find(f"{{{CLIENT}}}body") is None
    assert sync(a.c) == []  # nothing more
    # Another resource of the owner enters the still locked room under another nickname:
    # the occupants' presence, its self-presence, then the subject.
    second = login(a.name, "two")
    second.send(f"<presence to='{room}/owner2'><x xmlns='{MUC}'/></presence>")
    sequence = [second.c.next() for _ in range(3)]
    assert [(el.tag, el.get("from")) for el in sequence] == [
        (PRESENCE, f"{room}/owner"),
        (PRESENCE, f"{room}/owner2"),
        (MESSAGE, room),
    ]
    assert "110" in codes(sequence[1]) and "201" not in codes(sequence[1])
    assert sequence[2].findtext(f"{{{CLIENT}}}subject") == ""
    assert sync(second.c) == []
    assert f"{room}/owner2" in [p.get("from") for p in presences(sync(a.c))]
    # Unlocking it (an instant room) sends no second subject to the creator.
    reply = iq(a, room, "set", f"<query xmlns='{OWNER}'><x xmlns='{DATA}' type='submit'/></query>")
    assert reply.get("type") == "result"
    assert sync(a.c) == []


def test_reserved_room_configured_with_the_form(login: Any, users: Iterator[str]) -> None:
    a = login(next(users))
    room = new_room()
    join(a, room, "alice", until_subject=False)
    form = iq(a, room, "get", f"<query xmlns='{OWNER}'/>")
    vars_ = {f.get("var") for f in form.iter(f"{{{DATA}}}field")}
    assert {
        "FORM_TYPE",
        "muc#roomconfig_roomname",
        "muc#roomconfig_persistentroom",
        "muc#roomconfig_membersonly",
        "muc#roomconfig_moderatedroom",
        "muc#roomconfig_passwordprotectedroom",
        "muc#roomconfig_roomsecret",
        "muc#roomconfig_whois",
        "muc#roomconfig_maxusers",
        "muc#roomconfig_changesubject",
        "muc#roomconfig_allowinvites",
        "muc#maxhistoryfetch",
    } <= vars_
    # §10.1.3: a password-protected room with a blank password is refused.
    reply = iq(
        a,
        room,
        "set",
        f"<query xmlns='{OWNER}'><x xmlns='{DATA}' type='submit'>"
        + field("muc#roomconfig_passwordprotectedroom", "1")
        + "</x></query>",
    )
    assert stanza_error(reply) == "not-acceptable"
    reply = iq(
        a,
        room,
        "set",
        f"<query xmlns='{OWNER}'><x xmlns='{DATA}' type='submit'>"
        + field("muc#roomconfig_roomname", "Reserved")
        + field("muc#roomconfig_whois", "anyone")
        + "</x></query>",
    )
    assert reply.get("type") == "result"
    info = iq(a, room, "get", f"<query xmlns='{DISCO_INFO}'/>")
    assert info.find(f".//{{{DISCO_INFO}}}identity").get("name") == "Reserved"
    assert "muc_nonanonymous" in {f.get("var") for f in info.iter(f"{{{DISCO_INFO}}}feature")}


def test_cancelled_initial_configuration_destroys_the_room(
    login: Any, users: Iterator[str]
) -> None:
    a = login(next(users))
    room = new_room()
    join(a, room, "alice", until_subject=False)
    reply = iq(a, room, "set", f"<query xmlns='{OWNER}'><x xmlns='{DATA}' type='cancel'/></query>")
    assert reply.get("type") == "result"
    reply = iq(a, room, "get", f"<query xmlns='{DISCO_INFO}'/>")
    assert stanza_error(reply) == "item-not-found"


def out_of_sync_kick(user: User, room: str, nick: str) -> Any:
    """A presence without the MUC <x/> to `room` from a non-occupant; the answer."""
    user.send(f"<presence to='{room}/{nick}'><show>away</show></presence>")
    kick = user.c.next()
    assert kick.tag == PRESENCE, etree.tostring(kick)
    return kick


def test_a_presence_without_x_from_a_non_occupant_is_kicked(
    login: Any, users: Iterator[str]
) -> None:
    """§7.2.1 (since 1.32): such a presence is most likely from a client that lost track of
    the room; it gets an explicit kick with 110, 307 and 333 instead of entering, whether the
    room exists or not, and the occupants see nothing."""
    a, b = login(next(users)), login(next(users))
    room = create(a)
    for target in (room, new_room()):
        kick = out_of_sync_kick(b, target, "ghost")
        assert kick.get("type") == "unavailable" and kick.get("from") == f"{target}/ghost"
        assert kick.get("to") == b.full
        assert codes(kick) == {"110", "307", "333"}
        assert (item(kick).get("affiliation"), item(kick).get("role")) == ("none", "none")
    assert presences(received(a.c, b.c)) == []  # the occupants saw nothing
    seen = join(b, room, "bob")  # joining as MUC clients do works as before
    assert "110" in codes(presences(seen)[-1])
    # An occupant's presence update without <x/> stays an update.
    b.send(f"<presence to='{room}/bob'><show>dnd</show></presence>")
    shown = [el.findtext(f"{{{CLIENT}}}show") for el in presences(received(a.c, b.c))]
    assert shown[-1] == "dnd", shown


def test_groupchat_1_0_entry_when_enabled_makes_an_instant_room(
    make_server: Any, ca_file: str
) -> None:
    """`[muc] groupchat_1_0 = true`: the presence without <x/> enters (as `sendxmpp -c`
    enters rooms), and a room it creates is instant."""
    srv: ServerProcess = make_server("[muc]\ngroupchat_1_0 = true\n")
    srv.adduser("old@localhost")
    srv.adduser("new@localhost")
    srv.start()
    opened: list[RawClient] = []
    a, b = log_in(srv, ca_file, opened, "old"), log_in(srv, ca_file, opened, "new")
    room = new_room()
    seen = join(a, room, "old", extra="")
    assert "201" in codes(presences(seen)[-1])
    assert join(b, room, "new")[-1].tag == MESSAGE  # unlocked: subject received
    for c in opened:
        c.close()


def test_non_anonymous_room_status_100_and_jids(login: Any, users: Iterator[str]) -> None:
    a, b = login(next(users)), login(next(users))
    room = create(a, form=field("muc#roomconfig_whois", "anyone"))
    seen = join(b, room, "bob")
    own = presences(seen)[-1]
    assert {"110", "100"} <= codes(own)
    owner_presence = presences(seen)[0]
    assert item(owner_presence).get("jid") == a.full


def test_semi_anonymous_hides_jids_from_participants(login: Any, users: Iterator[str]) -> None:
    a, b = login(next(users)), login(next(users))
    room = create(a)
    seen = join(b, room, "bob")
    owner_presence = presences(seen)[0]
    assert owner_presence.get("from") == f"{room}/owner"
    assert item(owner_presence).get("jid") is None
    assert "100" not in codes(presences(seen)[-1])


def test_nick_conflict(login: Any, users: Iterator[str]) -> None:
    a, b = login(next(users)), login(next(users))
    room = create(a, nick="taken")
    error = join_error(b, room, "taken")
    assert stanza_error(error) == "conflict"
    assert error.find(f"{{{CLIENT}}}error").get("type") == "cancel"


def test_nicknames_compare_as_rfc8266_nicknames(login: Any, users: Iterator[str]) -> None:
    a, b = login(next(users)), login(next(users))
    room = create(a, nick="bob")
    for lookalike in ("Bob", "BOB", "\uff42\uff4f\uff42"):  # the last: fullwidth letters
        error = join_error(b, room, lookalike)
        assert stanza_error(error) == "conflict", lookalike
    # invisible only: jid-malformed (§17.1)
    assert stanza_error(join_error(b, room, "\u200b")) == "jid-malformed"
    # the holder may change its own nickname's case
    a.send(f"<presence to='{room}/Bob'/>")
    own = presences(sync(a.c))
    assert own[-1].get("from") == f"{room}/Bob" and "110" in codes(own[-1])


def test_a_nickname_the_service_normalizes_gets_status_210(
    login: Any, users: Iterator[str]
) -> None:
    """§7.2.3, §7.6: a nickname not in normalization form C (RFC 7622) is entered as its NFC
    form, and the occupant's own presence says so with 210, so that the client knows its
    nickname; one sent as it is gets no 210."""
    a, b, c = login(next(users)), login(next(users)), login(next(users))
    room = create(a)
    own = presences(join(b, room, "Rene\u0301"))[-1]  # e + combining acute accent
    assert own.get("from") == f"{room}/Ren\u00e9"
    assert {"110", "210"} <= codes(own)
    others = [p for p in presences(received(a.c)) if p.get("from") == f"{room}/Ren\u00e9"]
    assert others and all("210" not in codes(p) for p in others)  # the user's own only
    b.send(f"<presence to='{room}/Zoe\u0308'/>")  # a nickname change, the same way
    changed = presences(received(b.c))
    assert changed[-1].get("from") == f"{room}/Zo\u00eb" and {"110", "210"} <= codes(changed[-1])
    own = presences(join(c, room, "Andr\u00e9"))[-1]
    assert own.get("from") == f"{room}/Andr\u00e9" and "210" not in codes(own)


def test_same_account_two_resources_share_a_nick(login: Any, users: Iterator[str]) -> None:
    name = next(users)
    a1, a2 = login(name, "one"), login(name, "two")
    b = login(next(users))
    room = create(a1, nick="me")
    join(b, room, "bob")
    sync(a1.c)
    seen = join(a2, room, "me")
    assert "110" in codes(presences(seen)[-1])
    # bob sees no second "me"; both resources get the room's messages
    assert presences(received(b.c, a2.c)) == []
    groupchat(b, room, "to both")
    for res in (a1, a2):
        assert bodies(received(res.c, b.c)) == [(f"{room}/bob", "to both")]
    # one resource leaves: the nick stays (bob hears nothing) until the last one goes
    a2.send(f"<presence to='{room}/me' type='unavailable'/>")
    assert presences(received(b.c, a2.c)) == []
    a1.send(f"<presence to='{room}/me' type='unavailable'/>")
    gone = presences(received(b.c, a1.c))
    assert [(p.get("from"), p.get("type")) for p in gone] == [(f"{room}/me", "unavailable")]


def test_password_protected_room(login: Any, users: Iterator[str]) -> None:
    a, b = login(next(users)), login(next(users))
    room = create(
        a,
        form=field("muc#roomconfig_passwordprotectedroom", "1")
        + field("muc#roomconfig_roomsecret", "sesame"),
    )
    error = join_error(b, room, "bob")
    assert stanza_error(error) == "not-authorized"
    assert error.find(f"{{{CLIENT}}}error").get("type") == "auth"
    assert error.findtext(f"{{{CLIENT}}}error/{{{STANZA_ERRORS}}}text") == "a password is required"
    error = join_error(b, room, "bob", f"<x xmlns='{MUC}'><password>wrong</password></x>")
    assert stanza_error(error) == "not-authorized"
    assert error.findtext(f"{{{CLIENT}}}error/{{{STANZA_ERRORS}}}text") == "wrong password"
    seen = join(b, room, "bob", f"<x xmlns='{MUC}'><password>sesame</password></x>")
    assert seen[-1].tag == MESSAGE


def test_members_only_room(login: Any, users: Iterator[str]) -> None:
    a, b = login(next(users)), login(next(users))
    room = create(a, form=field("muc#roomconfig_membersonly", "1"))
    error = join_error(b, room, "bob")
    assert stanza_error(error) == "registration-required"
    assert error.find(f"{{{CLIENT}}}error").get("type") == "auth"
    reply = iq(
        a,
        room,
        "set",
        f"<query xmlns='{ADMIN}'><item affiliation='member' jid='{b.bare}'/></query>",
    )
    assert reply.get("type") == "result"
    seen = join(b, room, "bob")
    assert item(presences(seen)[-1]).get("affiliation") == "member"


def test_banned_user_is_forbidden(login: Any, users: Iterator[str]) -> None:
    a, b = login(next(users)), login(next(users))
    room = create(a)
    iq(
        a,
        room,
        "set",
        f"<query xmlns='{ADMIN}'><item affiliation='outcast' jid='{b.bare}'/></query>",
    )
    error = join_error(b, room, "bob")
    assert stanza_error(error) == "forbidden"
    assert error.find(f"{{{CLIENT}}}error").get("type") == "auth"


def test_max_users(login: Any, users: Iterator[str]) -> None:
    a, b, c = login(next(users)), login(next(users)), login(next(users))
    room = create(a, form=field("muc#roomconfig_maxusers", "2"))
    join(b, room, "bob")
    error = join_error(c, room, "carol")
    assert stanza_error(error) == "service-unavailable"
    assert error.find(f"{{{CLIENT}}}error").get("type") == "wait"


def test_nickname_rules(login: Any, users: Iterator[str]) -> None:
    a = login(next(users))
    room = create(a)
    b = login(next(users))
    # no nickname at all (§7.2.1)
    b.send(f"<presence to='{room}'><x xmlns='{MUC}'/></presence>")
    reply = b.c.next()
    assert reply.get("type") == "error" and stanza_error(reply) == "jid-malformed"
    # blank (§17.1) and too long (max_nick_length = 20)
    assert stanza_error(join_error(b, room, " ")) in ("jid-malformed",)
    assert stanza_error(join_error(b, room, "n" * 21)) == "not-acceptable"
    assert join(b, room, "n" * 20)[-1].tag == MESSAGE


def test_join_is_a_full_resync_for_an_occupant(login: Any, users: Iterator[str]) -> None:
    a, b = login(next(users)), login(next(users))
    room = create(a)
    join(b, room, "bob")
    sync(a.c)
    seen = join(b, room, "bob")
    assert [p.get("from") for p in presences(seen)] == [f"{room}/owner", f"{room}/bob"]
    assert presences(received(a.c, b.c)) == []  # nothing changed: the others hear nothing


# --- messages, subject, history (§7.2.15, §7.4, §8.1) -----------------------------------------


def test_groupchat_broadcast_and_echo(login: Any, users: Iterator[str]) -> None:
    a, b, c = login(next(users)), login(next(users)), login(next(users))
    room = create(a)
    join(b, room, "bob")
    join(c, room, "carol")
    sync(a.c)
    sync(b.c)
    b.send(f"<message to='{room}' type='groupchat' id='m1'><body>hello</body></message>")
    for user in (b, a, c):  # the sender's round trip first: the others have it then
        got = [el for el in sync(user.c) if el.tag == MESSAGE]
        assert bodies(got) == [(f"{room}/bob", "hello")]
        assert got[0].get("to") == user.full and got[0].get("id") == "m1"


def test_each_copy_has_its_own_to(login: Any, users: Iterator[str]) -> None:
    """§7.4: every session in the room gets a copy addressed to its own full JID: two
    sessions of one account sharing a nickname (§7.2.6) each get theirs, and a resource
    holding the characters an attribute value must escape (& ' ") arrives as it was bound."""
    a = login(next(users))
    name = next(users)
    b1 = login(name, "one")
    b2 = login(name, "t&amp;w&apos;o&quot;")
    b2.full = f"{b2.bare}/t&w'o\""
    room = create(a)
    join(b1, room, "bob")
    join(b2, room, "bob")
    for user in (a, b1, b2):
        sync(user.c)
    a.send(f"<message to='{room}' type='groupchat' id='m2'><body>to each</body></message>")
    for user in (a, b1, b2):
        got = [el for el in sync(user.c) if el.tag == MESSAGE]
        assert bodies(got) == [(f"{room}/owner", "to each")]
        assert got[0].get("to") == user.full and got[0].get("id") == "m2"


def test_non_occupant_cannot_send(login: Any, users: Iterator[str]) -> None:
    a, b = login(next(users)), login(next(users))
    room = create(a)
    groupchat(b, room, "let me in")
    reply = b.c.next()
    assert stanza_error(reply) == "not-acceptable"
    assert reply.find(f"{{{CLIENT}}}error").get("type") == "modify"
    assert bodies(received(a.c, b.c)) == []


def test_visitor_in_moderated_room_is_forbidden(login: Any, users: Iterator[str]) -> None:
    a, b = login(next(users)), login(next(users))
    room = create(a, form=field("muc#roomconfig_moderatedroom", "1"))
    seen = join(b, room, "bob")
    assert item(presences(seen)[-1]).get("role") == "visitor"
    groupchat(b, room, "may I?")
    reply = b.c.next()
    assert stanza_error(reply) == "forbidden"
    assert bodies(received(a.c, b.c)) == []


def test_subject_change_and_permission(login: Any, users: Iterator[str]) -> None:
    a, b, c = login(next(users)), login(next(users)), login(next(users))
    room = create(a)
    join(b, room, "bob")
    b.send(f"<message to='{room}' type='groupchat'><subject>mine</subject></message>")
    assert stanza_error(b.c.next()) == "forbidden"
    a.send(f"<message to='{room}' type='groupchat'><subject>Agenda</subject></message>")
    got = [el for el in received(b.c, a.c) if el.tag == MESSAGE]
    assert got[0].findtext(f"{{{CLIENT}}}subject") == "Agenda"
    assert got[0].get("from") == f"{room}/owner"
    seen = join(c, room, "carol")
    assert seen[-1].findtext(f"{{{CLIENT}}}subject") == "Agenda"
    assert seen[-1].get("from") == f"{room}/owner"
    # changesubject lets participants change it
    iq(
        a,
        room,
        "set",
        f"<query xmlns='{OWNER}'><x xmlns='{DATA}' type='submit'>"
        + field("muc#roomconfig_changesubject", "1")
        + "</x></query>",
    )
    b.send(f"<message to='{room}' type='groupchat'><subject>ours</subject></message>")
    got = [el for el in received(c.c, b.c) if el.tag == MESSAGE]
    assert [el.findtext(f"{{{CLIENT}}}subject") for el in got][-1] == "ours"


def test_subject_change_with_an_empty_body(login: Any, users: Iterator[str]) -> None:
    """§8.1 takes only a message without a <body/> as a subject change; an empty <body/>
    beside the subject counts as none (mcabber 1.1.2 sends one with each /room topic,
    test_interop_mcabber.py), and the room relays the change without it. A body with text
    keeps it a message (not a subject change)."""
    a, b, c = login(next(users)), login(next(users)), login(next(users))
    room = create(a)
    join(b, room, "bob")
    a.send(
        f"<message to='{room}' type='groupchat' id='t1'><body></body>"
        "<subject>Agenda</subject></message>"
    )
    got = [el for el in received(b.c, a.c) if el.tag == MESSAGE]
    assert [el.findtext(f"{{{CLIENT}}}subject") for el in got] == ["Agenda"]
    assert got[0].find(f"{{{CLIENT}}}body") is None
    assert got[0].get("from") == f"{room}/owner"
    seen = join(c, room, "carol")
    assert seen[-1].findtext(f"{{{CLIENT}}}subject") == "Agenda"
    # with text in the body: a message that happens to have a subject; the room's stays
    a.send(
        f"<message to='{room}' type='groupchat'><body>see the agenda</body>"
        "<subject>Other</subject></message>"
    )
    got = [el for el in received(b.c, a.c) if el.tag == MESSAGE]
    assert [el.findtext(f"{{{CLIENT}}}body") for el in got] == ["see the agenda"]
    no_history = f"<x xmlns='{MUC}'><history maxchars='0'/></x>"
    seen = join(login(next(users)), room, "dave", no_history)
    assert seen[-1].findtext(f"{{{CLIENT}}}body") is None
    assert seen[-1].findtext(f"{{{CLIENT}}}subject") == "Agenda"


def test_history_on_join_then_subject(login: Any, users: Iterator[str]) -> None:
    a, b, c = login(next(users)), login(next(users)), login(next(users))
    room = create(a, form=field("muc#maxhistoryfetch", "3"))
    for n in range(5):
        groupchat(a, room, f"m{n}")
    a.send(f"<message to='{room}' type='groupchat'><subject>S</subject></message>")
    sync(a.c)
    seen = join(b, room, "bob")
    history = [el for el in seen if el.tag == MESSAGE][:-1]
    assert bodies(history) == [(f"{room}/owner", f"m{n}") for n in (2, 3, 4)]
    delay = history[0].find(f"{{{DELAY}}}delay")
    assert delay is not None and delay.get("from") == room and delay.get("stamp")
    assert history[0].get("to") == b.full
    assert seen[-1].findtext(f"{{{CLIENT}}}subject") == "S"
    # §7.2.15 limits: maxstanzas, and maxchars='0' for none at all
    seen = join(c, room, "carol", f"<x xmlns='{MUC}'><history maxstanzas='1'/></x>")
    assert [b for _, b in bodies(seen)] == ["m4"]
    d = login(next(users))
    seen = join(d, room, "dave", f"<x xmlns='{MUC}'><history maxchars='0'/></x>")
    assert bodies(seen) == []
    e = login(next(users))
    seen = join(e, room, "eve", f"<x xmlns='{MUC}'><history since='2999-01-01T00:00:00Z'/></x>")
    assert bodies(seen) == []


def test_copies_carry_the_payloads_as_sent(login: Any, users: Iterator[str]) -> None:
    """What the room sends on an occupant's behalf (presence, groupchat, history, private
    messages, exit) carries the occupant's payloads as sent: no declaration of the stream
    prefix, no repeated jabber:client (they only cost bytes on every copy)."""
    a, b = login(next(users)), login(next(users))
    room = create(a)
    caps = "<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='n' ver='v'/>"
    a.c.recording = bytearray()
    join(b, room, "bob", f"<x xmlns='{MUC}'/><show>dnd</show><status>busy</status>{caps}")
    b.send(f"<presence to='{room}/bob'><show>away</show>{caps}</presence>")
    groupchat(b, room, "hello")
    b.send(f"<message to='{room}/owner' type='chat'><body>psst</body></message>")
    got = received(a.c, b.c)
    wire = bytes(a.c.recording)
    assert b"xmlns:stream" not in wire and b"jabber:client" not in wire, wire
    joined, changed = presences(got)
    assert joined.findtext(f"{{{CLIENT}}}show") == "dnd"
    assert joined.findtext(f"{{{CLIENT}}}status") == "busy"
    assert changed.findtext(f"{{{CLIENT}}}show") == "away"
    assert changed.find("{http://jabber.org/protocol/caps}c").get("ver") == "v"
    assert bodies(got) == [(f"{room}/bob", "hello"), (f"{room}/bob", "psst")]
    # the history a newcomer gets, and an exit with a status
    c = login(next(users))
    c.c.recording = bytearray()
    seen = join(c, room, "carol")
    b.send(f"<presence to='{room}/bob' type='unavailable'><status>bye</status></presence>")
    exit_presence = presences(received(c.c, b.c))[-1]
    wire = bytes(c.c.recording)
    assert b"xmlns:stream" not in wire and b"jabber:client" not in wire, wire
    assert bodies(seen) == [(f"{room}/bob", "hello")]
    assert presences(seen)[1].findtext(f"{{{CLIENT}}}show") == "away"
    assert exit_presence.findtext(f"{{{CLIENT}}}status") == "bye"


def test_private_messages(login: Any, users: Iterator[str]) -> None:
    a, b, c = login(next(users)), login(next(users)), login(next(users))
    room = create(a)
    join(b, room, "bob")
    b.send(f"<message to='{room}/owner' type='chat'><body>psst</body></message>")
    got = received(a.c, b.c)
    assert bodies(got) == [(f"{room}/bob", "psst")]
    assert got[-1].get("type") == "chat" and user_x(got[-1]) is not None  # added (§7.5)
    # groupchat type to one occupant: bad-request (§7.5)
    b.send(f"<message to='{room}/owner' type='groupchat'><body>x</body></message>")
    assert stanza_error(b.c.next()) == "bad-request"
    # no such occupant: item-not-found
    b.send(f"<message to='{room}/nobody' type='chat'><body>x</body></message>")
    assert stanza_error(b.c.next()) == "item-not-found"
    # non-occupant: not-acceptable
    c.send(f"<message to='{room}/owner' type='chat'><body>x</body></message>")
    assert stanza_error(c.c.next()) == "not-acceptable"


def test_iq_between_occupants_hides_real_jids(login: Any, users: Iterator[str]) -> None:
    a, b, c = login(next(users)), login(next(users)), login(next(users))
    room = create(a)
    join(b, room, "bob")
    sync(a.c)
    b.send(f"<iq to='{room}/owner' type='get' id='v1'><query xmlns='jabber:iq:version'/></iq>")
    forwarded = a.c.next()
    assert forwarded.get("from") == f"{room}/bob" and forwarded.get("to") == a.full
    a.send(
        f"<iq to='{room}/bob' type='result' id='v1'>"
        "<query xmlns='jabber:iq:version'><name>x</name></query></iq>"
    )
    answer = b.c.next()
    assert answer.get("type") == "result" and answer.get("from") == f"{room}/owner"
    assert answer.get("id") == "v1"
    # §6.6: a non-occupant gets bad-request
    reply = iq(c, f"{room}/owner", "get", "<query xmlns='jabber:iq:version'/>")
    assert stanza_error(reply) == "bad-request"


def test_vcard_of_an_occupant_comes_from_its_account(login: Any, users: Iterator[str]) -> None:
    """Gajim and Pidgin ask an occupant's vCard at its occupant JID; the server answers from
    the account (as Prosody and ejabberd do) instead of asking the occupant's client, which
    has none to give. The real JID stays hidden: the answer comes from the occupant JID."""
    a, b = login(next(users)), login(next(users))
    card = "<vCard xmlns='vcard-temp'><FN>Owner Person</FN><NICKNAME>own</NICKNAME></vCard>"
    assert iq(a, a.bare, "set", card).get("type") == "result"
    room = create(a)
    join(b, room, "bob")
    sync(a.c)
    reply = iq(b, f"{room}/owner", "get", "<vCard xmlns='vcard-temp'/>", "vc1")
    assert reply.get("type") == "result", etree.tostring(reply)
    assert reply.get("from") == f"{room}/owner" and reply.get("to") == b.full
    assert reply.findtext("{vcard-temp}vCard/{vcard-temp}FN") == "Owner Person"
    assert a.bare.encode() not in etree.tostring(reply)
    # nothing went to the occupant's client
    assert [el for el in received(a.c, b.c) if el.tag == f"{{{CLIENT}}}iq"] == []
    # an account without a vCard: service-unavailable (XEP-0054 §3.3)
    reply = iq(a, f"{room}/bob", "get", "<vCard xmlns='vcard-temp'/>", "vc2")
    assert stanza_error(reply) == "service-unavailable"
    # other iqs still go to the occupant
    b.send(f"<iq to='{room}/owner' type='get' id='v3'><query xmlns='jabber:iq:version'/></iq>")
    assert a.c.next().get("from") == f"{room}/bob"


def test_an_unconfigured_room_opens_after_lock_timeout(make_server: Any, ca_file: str) -> None:
    """Dino creates rooms and never configures them; after `[muc] lock_timeout` the room
    takes its default configuration (XEP-0045 §10.1.1 step 4) and others may enter."""
    srv: ServerProcess = make_server("[muc]\nlock_timeout = 1.5\n")
    srv.adduser("creator@localhost")
    srv.adduser("guest@localhost")
    srv.start()
    opened: list[RawClient] = []
    a, b = log_in(srv, ca_file, opened, "creator"), log_in(srv, ca_file, opened, "guest")
    room = new_room()
    assert "201" in codes(presences(join(a, room, "creator", until_subject=False))[-1])
    assert stanza_error(join_error(b, room, "guest")) == "item-not-found"  # still locked
    deadline = time.monotonic() + 30
    while True:
        seen = join(b, room, "guest")
        if seen[-1].tag == MESSAGE:
            break
        assert stanza_error(seen[-1]) == "item-not-found"
        assert time.monotonic() < deadline, "the room stayed locked"
        time.sleep(0.25)
    assert [p.get("from") for p in presences(seen)] == [f"{room}/creator", f"{room}/guest"]
    assert [p.get("from") for p in presences(received(a.c, b.c))] == [f"{room}/guest"]
    for c in opened:
        c.close()


def test_self_ping(login: Any, users: Iterator[str]) -> None:
    """XEP-0410: the service answers a joined client's ping to its own occupant JID, and
    tells a client that is not joined with not-acceptable."""
    a, b = login(next(users)), login(next(users))
    room = create(a)
    info = iq(a, room, "get", f"<query xmlns='{DISCO_INFO}'/>")
    features = {f.get("var") for f in info.iter(f"{{{DISCO_INFO}}}feature")}
    assert f"{MUC}#self-ping-optimization" in features
    reply = iq(a, f"{room}/owner", "get", "<ping xmlns='urn:xmpp:ping'/>", "sp1")
    assert reply.get("type") == "result" and reply.get("from") == f"{room}/owner"
    reply = iq(b, f"{room}/bob", "get", "<ping xmlns='urn:xmpp:ping'/>", "sp2")
    assert stanza_error(reply) == "not-acceptable"


def test_nick_change(login: Any, users: Iterator[str]) -> None:
    a, b, c = login(next(users)), login(next(users)), login(next(users))
    room = create(a)
    join(b, room, "bob")
    join(c, room, "carol")
    sync(a.c)
    sync(b.c)
    b.send(f"<presence to='{room}/robert'/>")
    own = presences(received(b.c))
    assert [(p.get("from"), p.get("type")) for p in own] == [
        (f"{room}/bob", "unavailable"),
        (f"{room}/robert", None),
    ]
    assert codes(own[0]) == {"303", "110"} and item(own[0]).get("nick") == "robert"
    assert "110" in codes(own[1])
    theirs = presences(received(c.c, b.c))
    assert codes(theirs[0]) == {"303"} and item(theirs[0]).get("nick") == "robert"
    assert theirs[1].get("from") == f"{room}/robert"
    # to a nick in use: conflict, nothing changes
    b.send(f"<presence to='{room}/carol'/>")
    reply = b.c.next()
    assert stanza_error(reply) == "conflict" and reply.get("from") == f"{room}/carol"
    groupchat(b, room, "still robert")
    assert bodies(received(c.c, b.c)) == [(f"{room}/robert", "still robert")]


def test_nick_change_carries_the_new_presence(login: Any, users: Iterator[str]) -> None:
    """§7.6: a nickname change is updated presence sent to the new occupant JID; the
    presence from the new nickname is that one (its <show/> and <status/>), not the one
    the occupant entered with."""
    a, b = login(next(users)), login(next(users))
    room = create(a)
    join(b, room, "bob", f"<x xmlns='{MUC}'/><status>here</status>")
    sync(a.c)
    b.send(f"<presence to='{room}/robert'><show>away</show><status>lunch</status></presence>")
    own = presences(received(b.c))
    theirs = presences(received(a.c))
    for seen in (own, theirs):
        gone, arrived = seen
        assert gone.get("type") == "unavailable" and "303" in codes(gone)
        assert gone.findtext(f"{{{CLIENT}}}status") is None  # §7.6: no status on the old one
        assert arrived.get("from") == f"{room}/robert"
        assert arrived.findtext(f"{{{CLIENT}}}show") == "away"
        assert arrived.findtext(f"{{{CLIENT}}}status") == "lunch"
    # and it is what a newcomer sees
    c = login(next(users))
    robert = [p for p in presences(join(c, room, "carol")) if p.get("from") == f"{room}/robert"]
    assert robert[0].findtext(f"{{{CLIENT}}}show") == "away"


def test_presence_change_broadcast(login: Any, users: Iterator[str]) -> None:
    a, b = login(next(users)), login(next(users))
    room = create(a)
    join(b, room, "bob")
    sync(a.c)
    b.send(f"<presence to='{room}/bob'><show>away</show><status>lunch</status></presence>")
    got = presences(received(a.c, b.c))
    assert len(got) == 1 and got[0].findtext(f"{{{CLIENT}}}show") == "away"
    assert got[0].findtext(f"{{{CLIENT}}}status") == "lunch"
    assert item(got[0]).get("role") == "participant"


def test_blocked_occupant_is_ignored(login: Any, users: Iterator[str]) -> None:
    """XEP-0191 (one model with XEP-0016, §2.13) applied to what the room sends on an
    occupant's behalf: blocking an occupant JID hides that occupant's groupchat messages,
    presence, private messages and iqs; everyone else still gets them."""
    a, b, c = login(next(users)), login(next(users)), login(next(users))
    room = create(a, nick="alice")
    join(b, room, "bob")
    join(c, room, "carol")
    blocked = f"{room}/alice"
    reply = iq(
        b,
        b.bare,
        "set",
        f"<block xmlns='urn:xmpp:blocking'><item jid='{blocked}'/></block>",
        "blk",
    )
    assert reply.get("type") == "result"
    for user in (a, b, c):
        sync(user.c)
    groupchat(a, room, "hello all")
    a.send(f"<presence to='{blocked}'><show>away</show></presence>")
    got_b, got_c = received(b.c, a.c), received(c.c, a.c)
    assert bodies(got_b) == [] and presences(got_b) == []
    assert bodies(got_c) == [(blocked, "hello all")] and len(presences(got_c)) == 1
    # Carol is not blocked: Bob still hears her.
    groupchat(c, room, "still here")
    assert bodies(received(b.c, c.c)) == [(f"{room}/carol", "still here")]
    sync(a.c)
    # A private message and an iq from the blocked occupant bounce: service-unavailable.
    a.send(f"<message to='{room}/bob' type='chat' id='pm'><body>psst</body></message>")
    assert stanza_error(a.c.next()) == "service-unavailable"
    reply = iq(a, f"{room}/bob", "get", "<query xmlns='jabber:iq:version'/>", "ver")
    assert stanza_error(reply) == "service-unavailable"
    assert received(b.c, a.c) == []


def test_presence_probe(login: Any, users: Iterator[str]) -> None:
    """§17.3 rule 4: occupants may probe occupant JIDs; others get nothing."""
    a, b, c = login(next(users)), login(next(users)), login(next(users))
    room = create(a)
    join(b, room, "bob")
    sync(a.c)
    b.send(f"<presence to='{room}/owner' type='probe'/>")
    got = presences(sync(b.c))
    assert [p.get("from") for p in got] == [f"{room}/owner"]
    assert item(got[0]).get("affiliation") == "owner" and item(got[0]).get("jid") is None
    c.send(f"<presence to='{room}/owner' type='probe'/>")
    assert sync(c.c) == []


def test_exit_and_temporary_room_vanishes(login: Any, users: Iterator[str]) -> None:
    a, b = login(next(users)), login(next(users))
    room = create(a)
    join(b, room, "bob")
    sync(a.c)
    b.send(f"<presence to='{room}/bob' type='unavailable'><status>bye</status></presence>")
    own = presences(received(b.c))
    assert own[0].get("type") == "unavailable" and "110" in codes(own[0])
    assert item(own[0]).get("role") == "none"
    theirs = presences(received(a.c, b.c))
    assert theirs[0].get("type") == "unavailable"
    assert theirs[0].findtext(f"{{{CLIENT}}}status") == "bye"
    a.send(f"<presence to='{room}/owner' type='unavailable'/>")
    sync(a.c)
    reply = iq(a, room, "get", f"<query xmlns='{DISCO_INFO}'/>")
    assert stanza_error(reply) == "item-not-found"


def test_stable_ids(login: Any, users: Iterator[str]) -> None:
    # §7.2.3, §7.4 and the muc#stable_id feature (advertised by the service and its rooms):
    # a message is reflected with its own 'id', and the self-presence answering a join or
    # an exit carries the id of the presence that asked for it (what clients wait for).
    owner, guest = login(next(users)), login(next(users))
    room = create(owner)
    for target in (SERVICE, room):
        info = iq(owner, target, "get", f"<query xmlns='{DISCO_INFO}'/>")
        assert MUC + "#stable_id" in {f.get("var") for f in info.iter(f"{{{DISCO_INFO}}}feature")}
    guest.send(f"<presence to='{room}/guest' id='join-1'><x xmlns='{MUC}'/></presence>")
    while True:
        el = guest.c.next()
        if el.tag == PRESENCE and "110" in codes(el):
            break
    assert el.get("id") == "join-1"
    seen = presences(received(owner.c, guest.c))  # the others' copy answers nothing: no id
    assert [p.get("from") for p in seen] == [f"{room}/guest"] and seen[0].get("id") is None
    guest.send(f"<message to='{room}' type='groupchat' id='msg-1'><body>hi</body></message>")
    for user in (guest, owner):
        reflected = [el for el in received(user.c, guest.c) if el.tag == MESSAGE]
        assert [el.get("id") for el in reflected if el.find(f"{{{CLIENT}}}body") is not None] == [
            "msg-1"
        ]
    guest.send(f"<presence to='{room}/guest' type='unavailable' id='leave-1'/>")
    gone = presences(received(guest.c))
    assert len(gone) == 1 and gone[0].get("type") == "unavailable" and "110" in codes(gone[0])
    assert gone[0].get("id") == "leave-1"


def test_disconnect_and_broadcast_unavailable_leave_rooms(login: Any, users: Iterator[str]) -> None:
    a, b, c = login(next(users)), login(next(users)), login(next(users))
    room = create(a)
    join(b, room, "bob")
    join(c, room, "carol")
    sync(a.c)
    b.c.abort()  # a lost connection
    deadline = 50
    gone: list[Any] = []
    while not gone and deadline:
        gone = [p for p in presences(sync(a.c)) if p.get("type") == "unavailable"]
        deadline -= 1
    assert [p.get("from") for p in gone] == [f"{room}/bob"]
    # RFC 6121 §4.6.3: broadcast unavailable reaches the room too
    c.send("<presence type='unavailable'/>")
    gone = [p for p in presences(received(a.c, c.c)) if p.get("type") == "unavailable"]
    assert [p.get("from") for p in gone] == [f"{room}/carol"]


# --- hostile input -----------------------------------------------------------------------------


def test_closing_the_stream_in_a_room(login: Any, users: Iterator[str]) -> None:
    """RFC 6120 §4.4: nothing follows the server's closing tag; the exit presence a room
    sends the leaving session (§7.14) comes before it."""
    a, b = login(next(users)), login(next(users))
    room = create(a)
    join(b, room, "bob")
    b.send("</stream:stream>")
    assert b.c.wait_closed()  # (raises on anything after the closing tag)
    exits = [el for el in b.c.queue if el.tag == PRESENCE and el.get("type") == "unavailable"]
    assert [el.get("from") for el in exits] == [f"{room}/bob"] and "110" in codes(exits[0])


def test_hostile_input(srv: ServerProcess, ca_file: str, login: Any, users: Iterator[str]) -> None:
    a = login(next(users))
    room = create(a)
    b = login(next(users))
    # a huge nickname (beyond JID limits: jid-malformed from the router; within them but over
    # the service's limit: not-acceptable)
    b.send(f"<presence to='{room}/{'n' * 2000}'><x xmlns='{MUC}'/></presence>")
    assert stanza_error(b.c.next()) == "jid-malformed"
    # malformed x: history attributes that are no numbers, a password element with children
    seen = join(
        b,
        room,
        "bob",
        f"<x xmlns='{MUC}'><history maxstanzas='lots' seconds='-5'/>"
        "<password><b>x</b></password></x>",
    )
    assert seen[-1].tag == MESSAGE
    # admin items without attributes, an iq without id, a form of the wrong kind
    reply = iq(b, room, "set", f"<query xmlns='{ADMIN}'><item/></query>")
    assert stanza_error(reply) == "bad-request"
    b.send(f"<iq to='{room}' type='get'><query xmlns='{DISCO_INFO}'/></iq>")
    assert stanza_error(b.c.next()) == "bad-request"
    reply = iq(a, room, "set", f"<query xmlns='{OWNER}'><x xmlns='{DATA}' type='form'/></query>")
    assert stanza_error(reply) == "bad-request"
    reply = iq(
        a,
        room,
        "set",
        f"<query xmlns='{OWNER}'><x xmlns='{DATA}' type='submit'>"
        + field("muc#roomconfig_maxusers", "many")
        + "</x></query>",
    )
    assert stanza_error(reply) == "not-acceptable"
    # presence spam: many changes and nick flips, the room stays consistent
    for n in range(200):
        b.send(f"<presence to='{room}/bob'><status>{n}</status></presence>")
        b.send(f"<presence to='{room}/bob{n % 3}'/>")
        b.send(f"<presence to='{room}/bob'/>")
    sync(b.c)
    got = received(a.c, b.c)
    assert presences(got)[-1].get("from") == f"{room}/bob"
    # presence of other types is no join (§17.3 rule 1)
    c = login(next(users))
    c.send(f"<presence to='{room}/carol' type='probe'/>")
    c.send(f"<presence to='{room}/carol' type='subscribe'/>")
    assert sync(c.c) == []
    assert_still_serving(srv, ca_file, next(users))


# --- slixmpp (a real client's plugin) ----------------------------------------------------------


class SlixClient(ClientXMPP):
    def __init__(self, jid: str, ca_file: str) -> None:
        super().__init__(jid, PASSWORD)
        self.ca_certs = ca_file
        self.enable_direct_tls = False
        self.enable_plaintext = False
        self.enable_starttls = True
        self.register_plugin("xep_0045")
        self.ready = asyncio.get_running_loop().create_future()
        self.messages: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self.subjects: asyncio.Queue[str] = asyncio.Queue()
        self.add_event_handler("session_start", self._started)
        self.add_event_handler("groupchat_message", self._message)
        self.add_event_handler("groupchat_subject", self._subject)

    async def _started(self, _event: Any) -> None:
        self.send_presence()
        if not self.ready.done():
            self.ready.set_result(True)

    def _message(self, msg: Any) -> None:
        if msg["body"]:
            self.messages.put_nowait((str(msg["mucnick"]), str(msg["body"])))

    def _subject(self, msg: Any) -> None:
        self.subjects.put_nowait(str(msg["subject"]))


async def test_slixmpp_chat(srv: ServerProcess, ca_file: str, users: Iterator[str]) -> None:
    names = [next(users) for _ in range(3)]
    clients = [SlixClient(f"{n}@localhost/slix", ca_file) for n in names]
    room = new_room()
    try:
        for client in clients:
            client.connect("127.0.0.1", srv.port)
            await asyncio.wait_for(client.ready, 20)
        owner, second, third = clients
        muc = owner.plugin["xep_0045"]
        # a new room is locked until configured: the configuration iq follows the join
        # presence on the same stream
        muc.join_muc(room, "owner")
        form = owner.plugin["xep_0004"].make_form(ftype="submit")  # an instant room
        await asyncio.wait_for(muc.set_room_config(room, form), 10)
        await asyncio.wait_for(
            second.plugin["xep_0045"].join_muc_wait(room, "second", maxstanzas=0), 10
        )
        owner.send_message(mto=room, mbody="hi all", mtype="groupchat")
        assert await asyncio.wait_for(second.messages.get(), 10) == ("owner", "hi all")
        muc.set_subject(room, "Topic")
        # (the empty subject of the join came first)
        while await asyncio.wait_for(second.subjects.get(), 10) != "Topic":
            pass
        # the third gets history and subject on joining
        await asyncio.wait_for(third.plugin["xep_0045"].join_muc_wait(room, "third"), 10)
        assert await asyncio.wait_for(third.messages.get(), 10) == ("owner", "hi all")
        assert "owner" in third.plugin["xep_0045"].get_roster(room)
        # a nickname change (303 + 110 in the plugin's eyes), seen by the others
        new_nick = await asyncio.wait_for(third.plugin["xep_0045"].set_self_nick(room, "trois"), 10)
        assert new_nick == "trois"
        for _ in range(50):
            if "trois" in muc.get_roster(room) and "third" not in muc.get_roster(room):
                break
            await asyncio.sleep(0.1)
        assert "trois" in muc.get_roster(room) and "third" not in muc.get_roster(room)
        # kick through the plugin's role call
        await asyncio.wait_for(muc.set_role(room, "trois", "none"), 10)
        for _ in range(50):
            if "trois" not in muc.get_roster(room):
                break
            await asyncio.sleep(0.1)
        assert "trois" not in muc.get_roster(room)
        # ban through the affiliation call
        await asyncio.wait_for(
            muc.set_affiliation(room, "outcast", jid=f"{names[1]}@localhost"), 10
        )
        for _ in range(50):
            if "second" not in muc.get_roster(room):
                break
            await asyncio.sleep(0.1)
        assert "second" not in muc.get_roster(room)
        banned = await asyncio.wait_for(muc.get_affiliation_list(room, "outcast"), 10)
        assert banned == [f"{names[1]}@localhost"]
        # leaving: the plugin forgets the room once its unavailable self-presence is back
        assert room in muc.get_joined_rooms()
        muc.leave_muc(room, "owner")
        for _ in range(50):
            if room not in muc.get_joined_rooms():
                break
            await asyncio.sleep(0.1)
        assert room not in muc.get_joined_rooms()
    finally:
        for client in clients:
            client.disconnect()


async def test_slixmpp_join_muc_wait_creates_a_room(
    srv: ServerProcess, ca_file: str, users: Iterator[str]
) -> None:
    """slixmpp's join_muc_wait ends at the subject (§7.2.15): it completes when the join
    creates the room, locked until configured."""
    client = SlixClient(f"{next(users)}@localhost/slix", ca_file)
    room = new_room()
    try:
        client.connect("127.0.0.1", srv.port)
        await asyncio.wait_for(client.ready, 20)
        muc = client.plugin["xep_0045"]
        own_presence, subject, _occupants, history = await muc.join_muc_wait(
            room, "creator", maxstanzas=0, timeout=10
        )
        assert {"110", "201"} <= {str(code) for code in own_presence["muc"]["status_codes"]}
        assert not subject["subject"] and history == []  # the empty subject
        form = client.plugin["xep_0004"].make_form(ftype="submit")  # an instant room
        await asyncio.wait_for(muc.set_room_config(room, form), 10)
    finally:
        client.disconnect()


def fill_history(history: History, ids: list[str], body: str, numbered: bool = False) -> None:
    """Groupchat messages with these ids, as room@service sends them, into `history`; each
    body is `body`, followed by the message's number when `numbered`."""
    for n, message_id in enumerate(ids):
        text = f"{body}{n}" if numbered else body
        message = (
            f"<message from='room@service/nick' type='groupchat' id='{message_id}'>"
            f"<body>{text}</body></message>"
        ).encode()
        history.add(message, "room@service")


def test_history_is_bounded_in_bytes() -> None:
    """Whatever its configured length, a room's history holds at most MAX_HISTORY_BYTES."""
    history = History(100)
    fill_history(history, [f"h{n}" for n in range(5)], "x" * 300_000)
    assert history.size <= MAX_HISTORY_BYTES
    kept = history.select(None)
    assert len(kept) == 3 and b"id='h4'" in kept[-1].replace(b'"', b"'")
    assert history.size == sum(len(data) for data in kept)


def test_history_maxchars_counts_the_messages_as_sent() -> None:
    """§7.2.15: maxchars counts the characters of each message as it is sent, its <delay/>
    included (stamped with the time the room sent it); non-ASCII text counts characters."""
    history = History(10)
    fill_history(history, [f"c{n}" for n in range(3)], "é", numbered=True)
    everything = history.select(None)
    assert len(everything) == 3 and history.size == sum(len(data) for data in everything)
    last = everything[-1].decode()
    delay = etree.fromstring(everything[-1]).find(f"{{{DELAY}}}delay")
    assert delay is not None and delay.get("from") == "room@service"
    assert delay.get("stamp", "").endswith("Z") and "." in delay.get("stamp", "")
    assert history.select({"maxchars": str(len(last))}) == everything[-1:]
    assert history.select({"maxchars": str(len(last) - 1)}) == []
    assert history.select({"maxchars": str(2 * len(last))}) == everything[-2:]
