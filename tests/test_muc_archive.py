"""XEP-0313 archives of XEP-0045 rooms over real sockets: muc#roomconfig_enablearchiving
(default on for persistent rooms, off for temporary ones, [muc] archive_rooms), XEP-0359
stanza-ids by the room on every live copy matching the archive's ids, queries at the room
JID (results from the room, paging, 'with' an occupant JID, <fin/>), access as entering
(§6.1.2: members-only rooms answer members only, outcasts never), real JIDs only to those
who may see them, the archive across a restart and a SIGKILL after the sender's XEP-0198
<a/>, gone with the destroyed room, bounded by [muc] archive_max_messages; and slixmpp's
xep_0313 plugin paging through a room's archive."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from typing import Any

import pytest
import xmpp_raw
from conftest import PASSWORD, FreshNames, ServerProcess, add_accounts, module_server
from lxml import etree
from slix_client import SlixClient
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
    create,
    field,
    groupchat,
    iq,
    join,
)
from test_muc_persist import Session, start
from test_roster import sync
from test_stream_management import SM
from test_stream_management import login as sm_login
from xmpp_raw import RawClient, stanza_error

from fastxmpp.storage.lmdb_store import Storage
from fastxmpp.storage.mam import ArchiveStore
from fastxmpp.storage.muc import MucStore

MAM = "urn:xmpp:mam:2"
SID = "urn:xmpp:sid:0"
RSM = "http://jabber.org/protocol/rsm"
FORWARD = "urn:xmpp:forward:0"
PERSISTENT = field("muc#roomconfig_persistentroom", "1")
POOL = FreshNames("ra", 60)


@pytest.fixture(scope="module")
def srv(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(ca, tmp_path_factory, POOL, "[muc]\nmax_history = 50\n")


@pytest.fixture
def login(srv: ServerProcess, ca_file: str, clients: list[RawClient]) -> Any:
    def connect(name: str | None = None) -> User:
        c = srv.client()
        clients.append(c)
        name = name or next(POOL.names())
        c.login(ca_file, name, PASSWORD, "r")
        c.send("<presence/>")
        sync(c)
        return User(c, name, "r")

    return connect


# --- helpers -------------------------------------------------------------------------------------


def query(
    user: User, room: str, rsm: str = "", fields: dict[str, str] | None = None, qid: str = "q"
) -> tuple[list[Any], Any]:
    """(the <result/> messages of a query at `room`, the answering iq)."""
    form = ""
    if fields:
        form = f"<x xmlns='{DATA}' type='submit'>" + field("FORM_TYPE", MAM)
        form += "".join(field(k, v) for k, v in fields.items()) + "</x>"
    rset = f"<set xmlns='{RSM}'>{rsm}</set>" if rsm else ""
    user.send(
        f"<iq to='{room}' type='set' id='{qid}'><query xmlns='{MAM}' queryid='{qid}'>"
        f"{form}{rset}</query></iq>"
    )
    results = []
    while True:
        el = user.c.next()
        if el.tag == f"{{{CLIENT}}}iq" and el.get("id") == qid:
            return results, el
        result = el.find(f"{{{MAM}}}result")
        if result is not None:
            assert el.get("from") == room and result.get("queryid") == qid, etree.tostring(el)
            results.append(result)


def archived(result: Any) -> Any:
    """The message a <result/> forwards."""
    inner = result.find(f"{{{FORWARD}}}forwarded/{MESSAGE}")
    assert inner is not None, etree.tostring(result)
    return inner


def texts(results: list[Any]) -> list[str | None]:
    return [archived(r).findtext(f"{{{CLIENT}}}body") for r in results]


def real_jid(result: Any) -> str | None:
    items = archived(result).findall(f"{{{USER}}}x/{{{USER}}}item")
    assert len(items) <= 1, etree.tostring(result)
    return items[0].get("jid") if items else None


def fin(reply: Any) -> tuple[bool, str | None, str | None]:
    assert reply.get("type") == "result", etree.tostring(reply)
    el = reply.find(f"{{{MAM}}}fin")
    return (
        el.get("complete") == "true",
        el.findtext(f"{{{RSM}}}set/{{{RSM}}}first"),
        el.findtext(f"{{{RSM}}}set/{{{RSM}}}last"),
    )


def features(user: User, room: str) -> set[str]:
    info = iq(user, room, "get", f"<query xmlns='{DISCO_INFO}'/>")
    return {f.get("var") for f in info.iter(f"{{{DISCO_INFO}}}feature")}


def form_value(user: User, room: str, var: str) -> str | None:
    reply = iq(user, room, "get", f"<query xmlns='{OWNER}'/>")
    for f in reply.iter(f"{{{DATA}}}field"):
        if f.get("var") == var:
            return f.findtext(f"{{{DATA}}}value")
    return None


def configure(owner: User, room: str, form: str) -> None:
    reply = iq(
        owner,
        room,
        "set",
        f"<query xmlns='{OWNER}'><x xmlns='{DATA}' type='submit'>{form}</x></query>",
    )
    assert reply.get("type") == "result", etree.tostring(reply)


def received_copies(user: User, count: int) -> list[Any]:
    copies = []
    while len(copies) < count:
        el = user.c.next()
        if el.tag == MESSAGE and el.get("type") == "groupchat":
            copies.append(el)
    return copies


def stanza_ids(el: Any, room: str) -> list[str]:
    return [s.get("id") for s in el.findall(f"{{{SID}}}stanza-id") if s.get("by") == room]


ENABLE = "muc#roomconfig_enablearchiving"


def room_archive_count(server: ServerProcess, name: str) -> int:
    """Records of the room's archive on disk (read beside the running server)."""
    with Storage(server.data_dir) as storage:
        return ArchiveStore(storage).count(SERVICE_DOMAIN, name)


# --- configuration -------------------------------------------------------------------------------


def test_on_for_persistent_rooms_off_for_temporary_ones(login: Any) -> None:
    ann = login()
    temporary = create(ann)
    assert MAM not in features(ann, temporary)
    assert form_value(ann, temporary, ENABLE) == "0"
    assert stanza_error(query(ann, temporary)[1]) == "service-unavailable"
    groupchat(ann, temporary, "not kept")
    (copy,) = received_copies(ann, 1)
    assert copy.find(f"{{{SID}}}stanza-id") is None
    # made persistent with the whole form sent back (as clients do): the room archives now
    configure(ann, temporary, PERSISTENT + field(ENABLE, "0"))
    assert {MAM, SID} <= features(ann, temporary)
    assert form_value(ann, temporary, ENABLE) == "1"
    groupchat(ann, temporary, "kept")
    sync(ann.c)
    assert texts(query(ann, temporary)[0]) == ["kept"]
    # the owner switches it off: no more archiving, no queries
    configure(ann, temporary, field(ENABLE, "0"))
    assert MAM not in features(ann, temporary)
    groupchat(ann, temporary, "after")
    (copy,) = received_copies(ann, 1)
    assert copy.find(f"{{{SID}}}stanza-id") is None
    assert stanza_error(query(ann, temporary)[1]) == "service-unavailable"
    # and on again: what it kept is there, nothing from while it was off
    configure(ann, temporary, field(ENABLE, "1"))
    assert texts(query(ann, temporary)[0]) == ["kept"]
    # a temporary room whose owner asks for archiving archives
    chosen = create(ann, form=field(ENABLE, "1"))
    groupchat(ann, chosen, "chosen")
    sync(ann.c)
    assert texts(query(ann, chosen)[0]) == ["chosen"]


def test_bad_enablearchiving_value(login: Any) -> None:
    ann = login()
    room = create(ann)
    reply = iq(
        ann,
        room,
        "set",
        f"<query xmlns='{OWNER}'><x xmlns='{DATA}' type='submit'>{field(ENABLE, 'maybe')}"
        "</x></query>",
    )
    assert stanza_error(reply) == "not-acceptable"


# --- what is archived, the stanza-ids -------------------------------------------------------------


def test_live_stanza_ids_are_the_archive_ids(login: Any) -> None:
    ann, ben = login(), login()
    room = create(ann, form=PERSISTENT)
    join(ben, room, "ben")
    sync(ann.c)
    groupchat(ann, room, "one")
    ben.send(
        f"<message to='{room}' type='groupchat'><body>two</body>"
        f"<stanza-id xmlns='{SID}' by='{room}' id='forged'/>"
        f"<x xmlns='{USER}'><item jid='boss@localhost'/></x></message>"
    )
    ann.send(f"<message to='{room}' type='groupchat'><subject>Topic</subject></message>")
    ann.send(f"<message to='{room}/ben' type='chat'><body>private</body></message>")
    ann.send(f"<message to='{room}' type='groupchat'><body>hidden</body>"
             "<no-store xmlns='urn:xmpp:hints'/></message>")  # fmt: skip
    sync(ann.c)
    copies = received_copies(ben, 4)
    live = [stanza_ids(el, room) for el in copies]
    assert [len(ids) for ids in live] == [1, 1, 1, 0]  # the forged one is gone; no-store: none
    results, reply = query(ben, room)
    assert fin(reply)[0]
    assert [r.get("id") for r in results] == [ids[0] for ids in live[:3]]
    assert texts(results) == ["one", "two", None]
    assert archived(results[2]).findtext(f"{{{CLIENT}}}subject") == "Topic"
    assert [archived(r).get("from") for r in results] == [
        f"{room}/owner",
        f"{room}/ben",
        f"{room}/owner",
    ]
    # §8.2: the <x/> ben put in is not in the archive (ben, a participant of a semi-anonymous
    # room, sees no real JID); private messages are not in it either
    assert real_jid(results[1]) is None
    assert real_jid(query(ann, room)[0][1]) == ben.full  # the owner sees ben's, not boss's
    # the newcomer's history carries the same ids
    cat = login()
    seen = join(cat, room, "cat")
    history = [el for el in seen if el.tag == MESSAGE and el.find(f"{{{CLIENT}}}body") is not None]
    # ("hidden", <no-store/>, is in the history without one)
    assert [stanza_ids(el, room) for el in history] == [*live[:2], []]


def test_a_prefix_declared_on_the_stream_root(login: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A groupchat message using a prefix its sender's stream root declares is written anew
    with its declarations: the room's archived copy is well-formed, in jabber:client, its
    prefixed child intact (it once got a second xmlns)."""
    ext = "urn:example:ext"
    root = xmpp_raw.HEADER.replace(" version='1.0'>", f" xmlns:ext='{ext}' version='1.0'>")
    monkeypatch.setattr(xmpp_raw, "HEADER", root)
    ann = login()
    monkeypatch.undo()
    room = create(ann, form=PERSISTENT)
    ann.send(f"<message to='{room}' type='groupchat'><body>rooted</body><ext:mark/></message>")
    sync(ann.c)
    results, reply = query(ann, room)
    assert fin(reply)[0]
    assert texts(results) == ["rooted"]
    assert archived(results[0]).find(f"{{{ext}}}mark") is not None


def test_paging_and_with(login: Any) -> None:
    ann, ben = login(), login()
    room = create(ann, form=PERSISTENT)
    join(ben, room, "ben")
    for n in range(7):
        groupchat(ann if n % 2 == 0 else ben, room, f"m{n}")
        sync(ann.c if n % 2 == 0 else ben.c)
    got: list[str | None] = []
    after = ""
    while True:
        results, reply = query(ben, room, rsm=f"<max>3</max>{after}")
        complete, _first, last = fin(reply)
        got += texts(results)
        if complete:
            break
        assert len(results) == 3
        after = f"<after>{last}</after>"
    assert got == [f"m{n}" for n in range(7)]
    results, reply = query(ben, room, rsm="<max>2</max><before/>")
    assert texts(results) == ["m5", "m6"] and not fin(reply)[0]
    results, _ = query(ben, room, fields={"with": f"{room}/ben"})
    assert texts(results) == ["m1", "m3", "m5"]
    results, _ = query(ben, room, fields={"with": ben.bare})
    assert results == []  # 'with' names an occupant JID, not a real one
    assert stanza_error(query(ben, room, rsm="<after>0000000000000001</after>")[1]) == (
        "item-not-found"
    )
    assert stanza_error(query(ben, room, fields={"foo": "x"})[1]) == "feature-not-implemented"


# --- access and real JIDs -------------------------------------------------------------------------


def test_members_only_archive_answers_members_only(login: Any) -> None:
    ann, ben, cat = login(), login(), login()
    room = create(ann, form=PERSISTENT + field("muc#roomconfig_membersonly", "1"))
    groupchat(ann, room, "members talk")
    sync(ann.c)
    assert stanza_error(query(cat, room)[1]) == "forbidden"
    iq(
        ann,
        room,
        "set",
        f"<query xmlns='{ADMIN}'><item affiliation='member' jid='{ben.bare}'/></query>",
    )
    results, _ = query(ben, room)  # a member who never entered
    assert texts(results) == ["members talk"]
    # an open room: anyone but outcasts
    open_room = create(ann, form=PERSISTENT)
    groupchat(ann, open_room, "open talk")
    sync(ann.c)
    assert texts(query(cat, open_room)[0]) == ["open talk"]
    ban = f"<query xmlns='{ADMIN}'><item affiliation='outcast' jid='{cat.bare}'/></query>"
    assert iq(ann, open_room, "set", ban).get("type") == "result"
    assert stanza_error(query(cat, open_room)[1]) == "forbidden"
    # a password-protected room: those who entered it (with the password), and members
    locked = create(
        ann,
        form=PERSISTENT
        + field("muc#roomconfig_passwordprotectedroom", "1")
        + field("muc#roomconfig_roomsecret", "pw"),
    )
    groupchat(ann, locked, "behind a password")
    sync(ann.c)
    dan = login()
    assert stanza_error(query(dan, locked)[1]) == "forbidden"
    join(dan, locked, "dan", f"<x xmlns='{MUC}'><password>pw</password></x>")
    assert texts(query(dan, locked)[0]) == ["behind a password"]


def test_real_jids_only_to_those_who_may_see_them(login: Any) -> None:
    ann, ben = login(), login()
    room = create(ann, form=PERSISTENT)  # semi-anonymous (whois moderators)
    join(ben, room, "ben")
    groupchat(ben, room, "who am I")
    sync(ben.c)
    (result,) = query(ben, room)[0]
    assert real_jid(result) is None  # a participant of a semi-anonymous room
    (result,) = query(ann, room)[0]
    assert real_jid(result) == ben.full  # the owner, a moderator
    configure(ann, room, field("muc#roomconfig_whois", "anyone"))
    (result,) = query(ben, room)[0]
    assert real_jid(result) == ben.full  # non-anonymous: everyone


# --- restarts, SIGKILL, destruction, limits -------------------------------------------------


def test_archive_survives_restart_and_goes_with_the_room(make_server: Any, ca_file: str) -> None:
    server = start(make_server, "[muc]\narchive_max_messages = 3\n")
    users = Session(server, ca_file)
    ann = users.login("ann")
    room = create(ann, room=f"kept@{SERVICE_DOMAIN}", form=PERSISTENT)
    for n in range(5):
        groupchat(ann, room, f"m{n}")
    sync(ann.c)
    before, _ = query(ann, room)
    assert texts(before) == ["m2", "m3", "m4"]  # archive_max_messages: the oldest go
    users.close()
    server.stop()
    server.start()
    users = Session(server, ca_file)
    ann = users.login("ann")
    after, _ = query(ann, room)
    assert [r.get("id") for r in after] == [r.get("id") for r in before]
    join(ann, room, "owner")
    assert room_archive_count(server, "kept") == 3
    reply = iq(ann, room, "set", f"<query xmlns='{OWNER}'><destroy/></query>")
    assert reply.get("type") == "result"
    sync(ann.c)
    assert room_archive_count(server, "kept") == 0  # gone with the room, on disk
    # a new room of the same name starts with an empty archive
    create(ann, room=room, form=PERSISTENT)
    assert query(ann, room)[0] == []
    users.close()


def test_acknowledged_groupchat_is_archived_after_sigkill(
    make_server: Any, ca_file: str, clients: list[RawClient]
) -> None:
    server = start(make_server)
    users = Session(server, ca_file)
    ann = users.login("ann")
    room = create(ann, room=f"durable@{SERVICE_DOMAIN}", form=PERSISTENT)
    users.close()
    sender = sm_login(server, ca_file, clients, "ben")
    assert sender.enable(resume=False).tag == f"{{{SM}}}enabled"
    sender.send(f"<presence to='{room}/ben'><x xmlns='http://jabber.org/protocol/muc'/></presence>")
    sender.sync()
    sent = [f"durable {n}" for n in range(20)]
    sender.send(
        "".join(f"<message to='{room}' type='groupchat'><body>{t}</body></message>" for t in sent)
    )
    # <presence/> + the join's + 20 messages + the sync ping: all covered by this <a/>
    acknowledged = sender.request_ack()
    assert acknowledged >= 22
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    server.start()
    users = Session(server, ca_file)
    ann = users.login("ann")
    results, _ = query(ann, room)
    assert texts(results) == sent
    users.close()


SERVICE_DOMAIN = "conference.localhost"


# --- a real client library -------------------------------------------------------------------


async def test_slixmpp_pages_through_a_room_archive(
    login: Any, srv: ServerProcess, ca_file: str
) -> None:
    owner = login()
    room = create(owner, form=PERSISTENT)
    for n in range(5):
        groupchat(owner, room, f"s{n}")
    sync(owner.c)
    reader = SlixClient(f"{next(POOL.names())}@localhost/s", ca_file, plugins=("xep_0313",))
    await reader.online(srv.port)
    try:
        got = []
        async for msg in reader.plugin["xep_0313"].iterate(jid=room, rsm={"max": 2}):
            forwarded = msg["mam_result"]["forwarded"]["stanza"]
            assert str(forwarded["from"]).startswith(f"{room}/")
            got.append(forwarded["body"])
        assert got == [f"s{n}" for n in range(5)]
    finally:
        reader.disconnect()
        await asyncio.sleep(0.1)


def test_rooms_stored_before_room_archives_follow_the_service_default(
    make_server: Any, ca_file: str
) -> None:
    """The stored room format only gained the optional "archiving" key (no migration): a
    persistent room stored without it archives as `archive_rooms` says; one whose owner
    switched archiving off stays off across a restart; a value that is none of
    default/on/off is a corrupt record, quarantined."""
    server: ServerProcess = make_server()
    add_accounts(server, ["ann"])
    config = {"persistent": True, "name": "Old"}
    with Storage(server.data_dir) as storage:
        store = MucStore(storage)
        store.save(
            SERVICE_DOMAIN, "old", {"config": config, "affiliations": {"ann@localhost": "owner"}}
        )
        store.save(
            SERVICE_DOMAIN,
            "off",
            {"config": {**config, "archiving": "off"}, "affiliations": {"ann@localhost": "owner"}},
        )
        store.save(
            SERVICE_DOMAIN,
            "bad",
            {
                "config": {**config, "archiving": "maybe"},
                "affiliations": {"ann@localhost": "owner"},
            },
        )
    server.start()
    users = Session(server, ca_file)
    ann = users.login("ann")
    old, off, bad = (f"{name}@{SERVICE_DOMAIN}" for name in ("old", "off", "bad"))
    assert MAM in features(ann, old)
    assert form_value(ann, old, ENABLE) == "1"
    assert MAM not in features(ann, off)
    assert form_value(ann, off, ENABLE) == "0"
    assert stanza_error(iq(ann, bad, "get", f"<query xmlns='{DISCO_INFO}'/>")) == "item-not-found"
    join(ann, old, "ann")
    groupchat(ann, old, "after the upgrade")
    sync(ann.c)
    assert texts(query(ann, old)[0]) == ["after the upgrade"]
    users.close()
