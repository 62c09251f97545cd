"""XEP-0421 occupant identifiers in XEP-0045 rooms over real sockets: the feature on rooms
and on the service (§2, §4); the sender's id on every presence and message the room sends
about or from an occupant (§3, §4): entering, self-presence, availability and nickname
changes, role changes, exits, kicks, groupchat, subject, private messages; the same id for
one user's resources, nicknames and visits, and across a restart; different ids for
different users and for one user in different rooms (§4.1); a client's own occupant-id
replaced (§4, §5); the discussion history and the room archive (XEP-0313) with ids, also
for messages archived before the room had them; the secret the ids are made with."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PASSWORD, FreshNames, ServerProcess, add_accounts, module_server
from lxml import etree
from test_muc import (
    ADMIN,
    CLIENT,
    DISCO_INFO,
    MESSAGE,
    MUC,
    OWNER,
    SERVICE,
    User,
    bodies,
    codes,
    create,
    groupchat,
    iq,
    item,
    join,
    presences,
)
from test_muc_archive import PERSISTENT, archived, query, texts
from test_muc_persist import Session, start
from test_roster import received, sync
from xmpp_raw import RawClient

from fastxmpp.storage.lmdb_store import Storage
from fastxmpp.storage.mam import ArchiveStore, Record
from fastxmpp.storage.muc import MucStore

OID = "urn:xmpp:occupant-id:0"
POOL = FreshNames("oi", 60)


@pytest.fixture(scope="module")
def srv(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(ca, tmp_path_factory, POOL, "[muc]\nmax_history = 50\n")


@pytest.fixture
def login(srv: ServerProcess, ca_file: str, clients: list[RawClient]) -> Any:
    def connect(name: str | None = None, resource: str = "r") -> User:
        c = srv.client()
        clients.append(c)
        name = name or next(POOL.names())
        c.login(ca_file, name, PASSWORD, resource)
        c.send("<presence/>")
        sync(c)
        return User(c, name, resource)

    return connect


def occupant_id(el: Any) -> str:
    """The one occupant id `el` carries (§4: never more than one)."""
    ids = [e.get("id") for e in el.findall(f"{{{OID}}}occupant-id")]
    assert len(ids) == 1, etree.tostring(el)
    assert 0 < len(ids[0]) <= 128  # §4.1
    return str(ids[0])


def self_presence(seen: list[Any]) -> Any:
    return next(p for p in presences(seen) if "110" in codes(p))


def id_in(user: User, room: str, nick: str) -> str:
    """`user` enters `room` as `nick`: the id of its self-presence."""
    return occupant_id(self_presence(join(user, room, nick)))


def leave(user: User, room: str, nick: str) -> None:
    user.send(f"<presence to='{room}/{nick}' type='unavailable'/>")
    sync(user.c)


def admin(user: User, room: str, namespace: str, payload: str) -> list[Any]:
    """An iq set to the room; everything `user` got up to its result (the presences it
    causes come first)."""
    user.send(
        f"<iq to='{room}' type='set' id='adm'><query xmlns='{namespace}'>{payload}</query></iq>"
    )
    got = sync(user.c)
    assert [el.get("type") for el in got if el.get("id") == "adm"] == ["result"], got
    return got


def features(user: User, jid: str) -> set[str]:
    info = iq(user, jid, "get", f"<query xmlns='{DISCO_INFO}'/>")
    return {f.get("var") for f in info.iter(f"{{{DISCO_INFO}}}feature")}


# --- discovery (§2, §4) --------------------------------------------------------------------------


def test_rooms_and_the_service_advertise_occupant_ids(login: Any) -> None:
    ann = login()
    room = create(ann)
    assert OID in features(ann, room)
    # §4: on in every room, so the service says so too
    assert OID in features(ann, SERVICE)


# --- what the room sends (§3, §4) ----------------------------------------------------------------


def test_presence_carries_the_occupants_id(login: Any) -> None:
    """Entering (to the others and the self-presence), the others' presence a newcomer
    gets, an availability change, a nickname change (both halves), a role change, a probe
    answer and the exit: each with the id of the occupant it is about."""
    ann, ben = login(), login()
    room = create(ann, nick="ann")
    seen = join(ben, room, "ben")
    ben_id = occupant_id(self_presence(seen))
    (ann_seen,) = [p for p in presences(seen) if p.get("from") == f"{room}/ann"]
    ann_id = occupant_id(ann_seen)
    assert ann_id != ben_id
    (entered,) = presences(received(ann.c, ben.c))
    assert occupant_id(entered) == ben_id
    ben.send(f"<presence to='{room}/ben'><show>away</show></presence>")
    for user in (ben, ann):  # the sender's round trip first
        (changed,) = presences(received(user.c, ben.c))
        assert changed.findtext(f"{{{CLIENT}}}show") == "away"
        assert occupant_id(changed) == ben_id
    ben.send(f"<presence to='{room}/benjamin'/>")
    for user in (ben, ann):  # the sender's round trip first
        old, new = presences(received(user.c, ben.c))
        assert "303" in codes(old) and new.get("from") == f"{room}/benjamin"
        assert occupant_id(old) == occupant_id(new) == ben_id
    got = admin(ann, room, ADMIN, "<item nick='benjamin' role='moderator'/>")
    for granted in (*presences(got), *presences(received(ben.c))):
        assert item(granted).get("role") == "moderator" and occupant_id(granted) == ben_id
    got = admin(ann, room, ADMIN, f"<item jid='{ben.bare}' affiliation='admin'/>")
    for made in (*presences(got), *presences(received(ben.c))):
        assert item(made).get("affiliation") == "admin" and occupant_id(made) == ben_id
    ben.send(f"<presence to='{room}/ann' type='probe'/>")
    (probed,) = presences(sync(ben.c))
    assert occupant_id(probed) == ann_id
    ben.send(f"<presence to='{room}/benjamin' type='unavailable'/>")
    for user in (ben, ann):  # the sender's round trip first
        (gone,) = presences(received(user.c, ben.c))
        assert gone.get("type") == "unavailable" and occupant_id(gone) == ben_id


def test_a_kicked_occupant_and_a_destroyed_room(login: Any) -> None:
    ann, ben = login(), login()
    room = create(ann, nick="ann")
    ben_id = id_in(ben, room, "ben")
    sync(ann.c)
    got = admin(ann, room, ADMIN, "<item nick='ben' role='none'/>")
    for kicked in (*presences(got), *presences(received(ben.c))):
        assert "307" in codes(kicked) and occupant_id(kicked) == ben_id
    ann_id = id_in(ann, room, "ann")
    (destroyed,) = presences(admin(ann, room, OWNER, "<destroy/>"))
    assert destroyed.get("type") == "unavailable" and occupant_id(destroyed) == ann_id


def test_messages_carry_the_senders_id(login: Any) -> None:
    """Groupchat copies (the sender's echo too), a subject change and the subject a
    newcomer gets, and private messages both ways."""
    ann, ben, cat = login(), login(), login()
    room = create(ann, nick="ann")
    ann_id = id_in(ann, room, "ann")
    ben_id = id_in(ben, room, "ben")
    sync(ann.c)
    groupchat(ben, room, "hello")
    for user in (ben, ann):
        (copy,) = [el for el in received(user.c, ben.c) if el.tag == MESSAGE]
        assert bodies([copy]) == [(f"{room}/ben", "hello")] and occupant_id(copy) == ben_id
    ann.send(f"<message to='{room}' type='groupchat'><subject>Agenda</subject></message>")
    for user in (ann, ben):  # the sender's round trip first
        (subject,) = [el for el in received(user.c, ann.c) if el.tag == MESSAGE]
        assert subject.findtext(f"{{{CLIENT}}}subject") == "Agenda"
        assert occupant_id(subject) == ann_id
    seen = join(cat, room, "cat")
    assert seen[-1].findtext(f"{{{CLIENT}}}subject") == "Agenda"
    assert occupant_id(seen[-1]) == ann_id  # from the occupant who set it
    sync(ann.c)
    ben.send(f"<message to='{room}/ann' type='chat'><body>psst</body></message>")
    (private,) = [el for el in received(ann.c, ben.c) if el.tag == MESSAGE]
    assert bodies([private]) == [(f"{room}/ben", "psst")] and occupant_id(private) == ben_id
    ann.send(
        f"<message to='{room}/ben' type='chat'><body>marked</body>"
        "<x xmlns='http://jabber.org/protocol/muc#user'/></message>"
    )
    (private,) = [el for el in received(ben.c, ann.c) if el.tag == MESSAGE]
    assert occupant_id(private) == ann_id


# --- stable, unique, pseudonymous (§4.1) ---------------------------------------------------------


def test_one_user_one_id_per_room(login: Any) -> None:
    """Two resources of one account (under one nickname or two), a nickname change and a
    second visit: one id. Another user: another id. The same user in another room:
    another id."""
    ann = login()
    name = next(POOL.names())
    ben1, ben2 = login(name, "one"), login(name, "two")
    room, other_room = create(ann, nick="ann"), create(ann, nick="ann")
    first = id_in(ben1, room, "ben")
    assert id_in(ben2, room, "ben") == first  # sharing the nickname
    leave(ben2, room, "ben")
    assert id_in(ben2, room, "ben-too") == first  # a nickname of its own
    ben1.send(f"<presence to='{room}/benny'/>")
    renamed = [p for p in presences(received(ben1.c)) if p.get("from") == f"{room}/benny"]
    assert [occupant_id(p) for p in renamed] == [first]
    leave(ben1, room, "benny")
    leave(ben2, room, "ben-too")
    assert id_in(ben1, room, "back") == first  # §4.1: the same on a second visit
    assert id_in(ben2, other_room, "ben") not in (first, id_in(ann, room, "ann"))
    # the room sees the others' ids as the others see their own
    cat = login()
    cat_id = id_in(cat, room, "cat")
    assert cat_id != first
    seen = join(cat, room, "cat")
    by_nick = {p.get("from"): occupant_id(p) for p in presences(seen)}
    assert by_nick[f"{room}/back"] == first and by_nick[f"{room}/cat"] == cat_id


def test_secret_made_once_and_ids_depend_on_it(tmp_path: Path) -> None:
    """The secret: 32 random bytes, made the first time and then the same; another data
    directory has another one. The id of a user in a room comes from it, the room JID and
    the bare JID (so no one can make it from the JIDs alone)."""
    from fastxmpp.modules.muc.occupant_id import make_id

    with Storage(tmp_path / "one") as storage:
        secret = MucStore(storage).occupant_id_secret()
        assert len(secret) == 32
        assert MucStore(storage).occupant_id_secret() == secret
    with Storage(tmp_path / "one") as storage:
        assert MucStore(storage).occupant_id_secret() == secret
    with Storage(tmp_path / "two") as storage:
        other = MucStore(storage).occupant_id_secret()
    assert other != secret
    room, user = f"r@{SERVICE}", "u@localhost"
    same = make_id(secret, room, user)
    assert same == make_id(secret, room, user) and len(same) <= 128
    assert len({same, make_id(other, room, user), make_id(secret, f"s@{SERVICE}", user)}) == 3
    assert make_id(secret, room, "v@localhost") != same


def test_ids_survive_a_restart(make_server: Any, ca_file: str) -> None:
    """A persistent room after a restart: the same ids on presence, on the subject (set
    before the restart) and in the archive."""
    server = start(make_server)
    users = Session(server, ca_file)
    ann, ben = users.login("ann"), users.login("ben")
    room = create(ann, nick="ann", room=f"kept@{SERVICE}", form=PERSISTENT)
    ann_id = id_in(ann, room, "ann")
    ben_id = id_in(ben, room, "ben")
    ann.send(f"<message to='{room}' type='groupchat'><subject>Kept</subject></message>")
    sync(ann.c)
    groupchat(ben, room, "before")
    sync(ben.c)
    users.close()
    server.stop()
    server.start()
    users = Session(server, ca_file)
    ann, ben = users.login("ann"), users.login("ben")
    seen = join(ben, room, "benjamin")
    assert occupant_id(self_presence(seen)) == ben_id
    assert seen[-1].findtext(f"{{{CLIENT}}}subject") == "Kept"
    assert occupant_id(seen[-1]) == ann_id
    results, _ = query(ann, room)
    assert texts(results) == [None, "before"]  # the subject change is archived too
    assert [occupant_id(archived(r)) for r in results] == [ann_id, ben_id]
    users.close()


# --- forged ids (§4, §5) -------------------------------------------------------------------------


def test_a_clients_own_occupant_id_is_replaced(login: Any) -> None:
    """An <occupant-id/> a client puts in its presence, groupchat message or private
    message (in any prefix) never reaches anyone: only the room's, once."""
    ann, ben = login(), login()
    room = create(ann, nick="ann")
    ann_id = id_in(ann, room, "ann")
    forged = f"<occupant-id xmlns='{OID}' id='{ann_id}'/>"
    prefixed = f"<o:occupant-id xmlns:o='{OID}' id='{ann_id}'/>"
    seen = join(ben, room, "ben", f"<x xmlns='{MUC}'/>{forged}<status>hi</status>")
    ben_id = occupant_id(self_presence(seen))
    assert ben_id != ann_id
    (entered,) = presences(received(ann.c, ben.c))
    assert entered.findtext(f"{{{CLIENT}}}status") == "hi" and occupant_id(entered) == ben_id
    ben.send(f"<presence to='{room}/ben'>{prefixed}<show>xa</show></presence>")
    (changed,) = presences(received(ann.c, ben.c))
    assert changed.findtext(f"{{{CLIENT}}}show") == "xa" and occupant_id(changed) == ben_id
    ben.send(f"<message to='{room}' type='groupchat'><body>it is me</body>{forged}</message>")
    ben.send(f"<message to='{room}' type='groupchat'>{prefixed}<body>really</body></message>")
    copies = [el for el in received(ann.c, ben.c) if el.tag == MESSAGE]
    assert [b for _, b in bodies(copies)] == ["it is me", "really"]
    assert [occupant_id(el) for el in copies] == [ben_id, ben_id]
    ben.send(f"<message to='{room}/ann' type='chat'><body>psst</body>{forged}</message>")
    (private,) = [el for el in received(ann.c, ben.c) if el.tag == MESSAGE]
    assert private.get("from") == f"{room}/ben" and occupant_id(private) == ben_id
    # the history keeps the room's id only
    cat = login()
    history = [el for el in join(cat, room, "cat") if el.tag == MESSAGE][:-1]
    assert [occupant_id(el) for el in history] == [ben_id, ben_id]


# --- history and archive (§4: "discussion history ... requested via XEP-0313") ----------------


def test_history_and_archive_carry_ids(login: Any) -> None:
    ann, ben, cat = login(), login(), login()
    room = create(ann, nick="ann", form=PERSISTENT)
    ann_id = id_in(ann, room, "ann")
    ben_id = id_in(ben, room, "ben")
    groupchat(ann, room, "one")
    sync(ann.c)
    groupchat(ben, room, "two")
    ben.send(
        f"<message to='{room}' type='groupchat'><body>three</body>"
        f"<occupant-id xmlns='{OID}' id='{ann_id}'/></message>"
    )
    sync(ann.c)
    sync(ben.c)
    history = [el for el in join(cat, room, "cat") if el.tag == MESSAGE][:-1]
    assert [b for _, b in bodies(history)] == ["one", "two", "three"]
    assert [occupant_id(el) for el in history] == [ann_id, ben_id, ben_id]
    # in the archive, for a participant (no real JIDs) and for the owner (real JIDs)
    for reader in (cat, ann):
        results, _ = query(reader, room)
        assert texts(results) == ["one", "two", "three"]
        assert [occupant_id(archived(r)) for r in results] == [ann_id, ben_id, ben_id]


def test_messages_archived_before_the_room_had_ids(make_server: Any, ca_file: str) -> None:
    """A record a server without occupant ids archived (with a client's own occupant-id
    in it, which that server kept): a query shows it with the sender's id, the room's
    only."""
    server: ServerProcess = make_server()
    add_accounts(server, ["ann", "ben"])
    room = f"old@{SERVICE}"
    old = (
        f"<message xmlns='jabber:client' from='{room}/ben' type='groupchat'><body>before</body>"
        f"<occupant-id xmlns='{OID}' id='forged'/>"
        "<x xmlns='http://jabber.org/protocol/muc#user'><item jid=\"ben@localhost/r\"/></x>"
        "</message>"
    ).encode()
    with Storage(server.data_dir) as storage:
        MucStore(storage).save(
            SERVICE,
            "old",
            {"config": {"persistent": True}, "affiliations": {"ann@localhost": "owner"}},
        )
        archive = ArchiveStore(storage)
        record = Record(archive.next_id(), 1.0e9, f"{room}/ben", "in", old)
        archive.append([(SERVICE, "old", record)], 100, 0.0)
    server.start()
    users = Session(server, ca_file)
    ann, ben = users.login("ann"), users.login("ben")
    ben_id = id_in(ben, room, "ben")
    for reader in (ben, ann):  # without real JIDs, and with them
        (result,) = query(reader, room)[0]
        assert occupant_id(archived(result)) == ben_id
    users.close()
