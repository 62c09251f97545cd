"""XEP-0045 rooms across restarts and the service's limits and settings: persistent rooms keep
their configuration, affiliations and subject (§10.1.3 persistentroom), temporary ones vanish;
deleting an account drops its affiliations; [muc] limits (rooms, rooms per user, occupants,
history length), who may create rooms, the service switched off; occupants hear of a
shutdown (§19.2, status 332); and the [muc] configuration checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import PASSWORD, ServerProcess, add_accounts, assert_still_serving
from test_muc import (
    ADMIN,
    CLIENT,
    DATA,
    DISCO_INFO,
    DISCO_ITEMS,
    MESSAGE,
    OWNER,
    SERVICE,
    USER,
    User,
    bodies,
    codes,
    create,
    field,
    groupchat,
    iq,
    join,
    join_error,
    presences,
)
from test_roster import sync
from xmpp_raw import RawClient, StreamClosed, stanza_error

from fastxmpp.config import MucConfig, check_config, load_config

NAMES = ["ann", "ben", "cat", "dan", "boss"]


def start(make_server: Any, extra: str = "") -> ServerProcess:
    server: ServerProcess = make_server(extra)
    add_accounts(server, NAMES)
    server.start()
    return server


class Session:
    """Logged-in users of one server run, closed together."""

    def __init__(self, server: ServerProcess, ca_file: str) -> None:
        self.server = server
        self.ca_file = ca_file
        self.opened: list[RawClient] = []

    def login(self, name: str) -> User:
        c = self.server.client()
        self.opened.append(c)
        c.login(self.ca_file, name, PASSWORD, "r")
        c.send("<presence/>")
        sync(c)
        return User(c, name, "r")

    def close(self) -> None:
        for c in self.opened:
            c.close()
        self.opened = []


def admin_list(user: User, room: str, affiliation: str) -> set[str]:
    reply = iq(
        user, room, "get", f"<query xmlns='{ADMIN}'><item affiliation='{affiliation}'/></query>"
    )
    assert reply.get("type") == "result"
    return {i.get("jid") for i in reply.iter(f"{{{ADMIN}}}item")}


def test_persistent_room_survives_restart(make_server: Any, ca_file: str) -> None:
    server = start(make_server)
    users = Session(server, ca_file)
    ann, ben = users.login("ann"), users.login("ben")
    kept = create(
        ann,
        room=f"kept@{SERVICE}",
        form=field("muc#roomconfig_persistentroom", "1")
        + field("muc#roomconfig_roomname", "Kept")
        + field("muc#roomconfig_membersonly", "1"),
    )
    temporary = create(ann, room=f"temporary@{SERVICE}")
    iq(
        ann,
        kept,
        "set",
        f"<query xmlns='{ADMIN}'><item affiliation='member' jid='ben@localhost' nick='benny'/>"
        "<item affiliation='outcast' jid='cat@localhost'/></query>",
    )
    ann.send(f"<message to='{kept}' type='groupchat'><subject>Kept topic</subject></message>")
    groupchat(ann, kept, "said before the restart")
    sync(ann.c)
    # everyone leaves: the persistent room stays, listed, with its name
    ann.send(f"<presence to='{kept}/owner' type='unavailable'/>")
    sync(ann.c)
    items = iq(ben, SERVICE, "get", f"<query xmlns='{DISCO_ITEMS}'/>")
    assert {i.get("jid") for i in items.iter(f"{{{DISCO_ITEMS}}}item")} >= {kept, temporary}
    users.close()
    server.stop()
    server.start()
    users = Session(server, ca_file)
    ann, ben, cat = users.login("ann"), users.login("ben"), users.login("cat")
    info = iq(ben, kept, "get", f"<query xmlns='{DISCO_INFO}'/>")
    assert info.find(f".//{{{DISCO_INFO}}}identity").get("name") == "Kept"
    features = {f.get("var") for f in info.iter(f"{{{DISCO_INFO}}}feature")}
    assert {"muc_persistent", "muc_membersonly"} <= features
    assert stanza_error(iq(ben, temporary, "get", f"<query xmlns='{DISCO_INFO}'/>")) == (
        "item-not-found"
    )
    # affiliations and the subject came back; history is not kept over a restart
    assert stanza_error(join_error(cat, kept, "cat")) == "forbidden"
    seen = join(ben, kept, "benny")
    assert seen[-1].findtext(f"{{{CLIENT}}}subject") == "Kept topic"
    assert bodies(seen) == []
    assert admin_list(ann, kept, "member") == {"ben@localhost"}
    assert admin_list(ann, kept, "outcast") == {"cat@localhost"}
    assert admin_list(ann, kept, "owner") == {"ann@localhost"}
    # made temporary again: it goes with its last occupant, and stays gone after a restart
    seen = join(ann, kept, "owner")
    reply = iq(
        ann,
        kept,
        "set",
        f"<query xmlns='{OWNER}'><x xmlns='{DATA}' type='submit'>"
        + field("muc#roomconfig_persistentroom", "0")
        + "</x></query>",
    )
    assert reply.get("type") == "result"
    for user, nick in ((ann, "owner"), (ben, "benny")):
        user.send(f"<presence to='{kept}/{nick}' type='unavailable'/>")
        sync(user.c)
    assert stanza_error(iq(ann, kept, "get", f"<query xmlns='{DISCO_INFO}'/>")) == (
        "item-not-found"
    )
    users.close()
    server.stop()
    server.start()
    users = Session(server, ca_file)
    ann = users.login("ann")
    assert stanza_error(iq(ann, kept, "get", f"<query xmlns='{DISCO_INFO}'/>")) == (
        "item-not-found"
    )
    users.close()


def test_removed_account_loses_its_affiliations(make_server: Any, ca_file: str) -> None:
    server = start(make_server)
    users = Session(server, ca_file)
    ann, ben = users.login("ann"), users.login("ben")
    room = create(ann, room=f"club@{SERVICE}", form=field("muc#roomconfig_persistentroom", "1"))
    iq(
        ann,
        room,
        "set",
        f"<query xmlns='{ADMIN}'><item affiliation='admin' jid='ben@localhost'/></query>",
    )
    ben.send("<iq type='set' id='rm'><query xmlns='jabber:iq:register'><remove/></query></iq>")
    reply = ben.c.next()
    assert reply.get("type") == "result"
    assert admin_list(ann, room, "admin") == set()
    users.close()
    server.stop()
    server.start()
    users = Session(server, ca_file)
    ann = users.login("ann")
    assert admin_list(ann, room, "admin") == set()
    users.close()


def test_limits(make_server: Any, ca_file: str) -> None:
    server = start(
        make_server,
        "[muc]\nmax_rooms = 2\nmax_rooms_per_user = 1\nmax_occupants = 2\nmax_history = 5\n",
    )
    users = Session(server, ca_file)
    ann, ben, cat = users.login("ann"), users.login("ben"), users.login("cat")
    room = create(ann)
    # rooms per user
    error = join_error(ann, f"second@{SERVICE}", "owner")
    assert stanza_error(error) == "resource-constraint"
    # rooms per service
    create(ben)
    error = join_error(cat, f"third@{SERVICE}", "cat")
    assert stanza_error(error) == "resource-constraint"
    # occupants: the default maxusers is max_occupants, and it is also the most allowed
    join(ben, room, "ben")
    error = join_error(cat, room, "cat")
    assert stanza_error(error) == "service-unavailable"
    for var, value in (("muc#roomconfig_maxusers", "3"), ("muc#maxhistoryfetch", "6")):
        reply = iq(
            ann,
            room,
            "set",
            f"<query xmlns='{OWNER}'><x xmlns='{DATA}' type='submit'>{field(var, value)}"
            "</x></query>",
        )
        assert stanza_error(reply) == "not-acceptable", var
    # the room name's length (max_name_length default 100)
    reply = iq(
        ann,
        room,
        "set",
        f"<query xmlns='{OWNER}'><x xmlns='{DATA}' type='submit'>"
        + field("muc#roomconfig_roomname", "n" * 101)
        + "</x></query>",
    )
    assert stanza_error(reply) == "not-acceptable"
    users.close()
    assert_still_serving(server, ca_file, "dan")


def test_only_admins_create_rooms(make_server: Any, ca_file: str) -> None:
    server = start(make_server, '[muc]\ncreate_rooms = "admins"\nadmins = ["boss@localhost"]\n')
    users = Session(server, ca_file)
    ann, boss = users.login("ann"), users.login("boss")
    error = join_error(ann, f"mine@{SERVICE}", "ann")
    assert stanza_error(error) == "not-allowed"
    assert error.find(f"{{{CLIENT}}}error").get("type") == "cancel"
    room = create(boss)
    assert join(ann, room, "ann")[-1].tag == MESSAGE
    users.close()


def test_service_admins_own_every_room(make_server: Any, ca_file: str) -> None:
    server = start(make_server, '[muc]\nadmins = ["boss@localhost"]\n')
    users = Session(server, ca_file)
    ann, boss, ben = users.login("ann"), users.login("boss"), users.login("ben")
    room = create(ann)
    join(ben, room, "ben")
    reply = iq(boss, room, "get", f"<query xmlns='{OWNER}'/>")
    assert reply.get("type") == "result"
    seen = join(boss, room, "boss")
    own = presences(seen)[-1]
    assert own.find(f".//{{{USER}}}item").get("affiliation") == "owner"
    reply = iq(boss, room, "set", f"<query xmlns='{ADMIN}'><item nick='ben' role='none'/></query>")
    assert reply.get("type") == "result"
    users.close()


def test_service_switched_off(make_server: Any, ca_file: str) -> None:
    server = start(make_server, "[muc]\nenabled = false\n")
    users = Session(server, ca_file)
    ann = users.login("ann")
    items = iq(ann, "localhost", "get", f"<query xmlns='{DISCO_ITEMS}'/>")
    assert SERVICE not in {i.get("jid") for i in items.iter(f"{{{DISCO_ITEMS}}}item")}
    reply = iq(ann, SERVICE, "get", f"<query xmlns='{DISCO_INFO}'/>")
    assert stanza_error(reply) == "remote-server-not-found"
    users.close()


def test_custom_domain(make_server: Any, ca_file: str) -> None:
    server = start(make_server, '[muc]\ndomain = "rooms.{host}"\n')
    users = Session(server, ca_file)
    ann = users.login("ann")
    items = iq(ann, "localhost", "get", f"<query xmlns='{DISCO_ITEMS}'/>")
    assert "rooms.localhost" in {i.get("jid") for i in items.iter(f"{{{DISCO_ITEMS}}}item")}
    seen = join(ann, "r@rooms.localhost", "ann", until_subject=False)
    assert "201" in codes(seen[-1])
    users.close()


def test_shutdown_tells_occupants(make_server: Any, ca_file: str) -> None:
    server = start(make_server)
    users = Session(server, ca_file)
    ann = users.login("ann")
    room = create(ann)
    server.stop()
    got = []
    try:
        while True:
            got.append(ann.c.next(timeout=5))
    except (StreamClosed, TimeoutError):
        pass
    gone = [p for p in presences(got) if p.get("from") == f"{room}/owner"]
    assert gone and gone[0].get("type") == "unavailable" and "332" in codes(gone[0])
    users.close()


def test_muc_config_checks(tmp_path: Path) -> None:
    base = '[[listeners]]\naddress = "127.0.0.1"\n[hosts."example.org"]\n'
    path = tmp_path / "ok.toml"
    path.write_text(base)
    assert load_config(path).muc == MucConfig()
    for bad in (
        'create_rooms = "everyone"',
        'admins = ["not a jid@@"]',
        'admins = ["room@example.org/res"]',
        'domain = "bad domain {host}"',
        "max_occupants = 0",
        "history_default = -1",
    ):
        path = tmp_path / "bad.toml"
        path.write_text(base + "[muc]\n" + bad + "\n")
        problems = check_config(path)
        assert problems and "muc." in problems[0].message, bad
