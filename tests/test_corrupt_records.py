"""Corrupt records (docs/SECURITY.md, "Durability"): a stored value that does not decode
(garbage bytes, truncated msgpack, a value of the wrong shape, XML that is not) is moved to
the quarantine database, logged once at error level, and reads as missing; the account logs
in, the rest of its data is served, and nobody's stream is closed over it. The records are
written straight into the server's LMDB environment, as a bad disk or a bug would leave them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgpack
from conftest import PASSWORD, ServerProcess, add_accounts, run_cli
from test_durability import login
from test_muc import DISCO_ITEMS, User, create, field, iq
from test_roster import items, roster_get, sync
from xmpp_raw import CLIENT, RawClient, stanza_error

from fastxmpp.storage.account_data import account_prefix
from fastxmpp.storage.accounts import AccountStore
from fastxmpp.storage.last import LastActivityStore
from fastxmpp.storage.lmdb_store import Storage
from fastxmpp.storage.mam import ArchiveStore, Record
from fastxmpp.storage.offline import OfflineStore
from fastxmpp.storage.private import PrivateStore
from fastxmpp.storage.roster import Roster, RosterItem, RosterStore
from fastxmpp.storage.vcard import VCardStore

PUBSUB = "http://jabber.org/protocol/pubsub"
EVENT = PUBSUB + "#event"
PRIVATE = "jabber:iq:private"
MAM = "urn:xmpp:mam:2"
SERVICE = "conference.localhost"
ROOMCONFIG = "http://jabber.org/protocol/muc#roomconfig"
ALICE = account_prefix("localhost", "alice")
# Intact; its node intact, its (last and only) item not; its node record corrupt.
GOOD_NODE, ITEM_NODE, BAD_NODE = "urn:example:good", "urn:example:item", "urn:example:bad"
# A namespace as long as keys allow: the quarantine's key for its record would be longer.
NOTES = "urn:example:" + "n" * 468
# msgpack never uses 0xc1: no decoder accepts it.
GARBAGE = b"\xc1\x00\xffgarbage"


def message(mid: str) -> bytes:
    return (
        f"<message xmlns='jabber:client' from='bob@localhost/r' to='alice@localhost' "
        f"type='chat' id='{mid}'><body>{mid}</body></message>"
    ).encode()


def put(storage: Storage, database: str, key: bytes, value: bytes) -> None:
    db = storage.database(database)
    storage.write(lambda txn: txn.put(key, value, db=db))


def truncated(value: Any) -> bytes:
    packed = bytes(msgpack.packb(value))
    return packed[: len(packed) // 2]


def publish(user: User, node: str, item_id: str, title: str) -> None:
    reply = iq(
        user,
        user.bare,
        "set",
        f"<pubsub xmlns='{PUBSUB}'><publish node='{node}'><item id='{item_id}'>"
        f"<title xmlns='urn:example:t'>{title}</title></item></publish></pubsub>",
    )
    assert reply.get("type") == "result", reply.attrib


def seed_through_the_server(srv: ServerProcess, ca_file: str) -> None:
    """PEP nodes and persistent rooms, made the way clients make them."""
    srv.start()
    c = login(srv, ca_file, "alice")
    c.send("<presence/>")
    sync(c)
    alice = User(c, "alice", "r")
    for node in (GOOD_NODE, ITEM_NODE, BAD_NODE):
        publish(alice, node, "i1", f"{node} one")
    persistent = field("muc#roomconfig_persistentroom", "1")
    for room in ("good", "bad"):
        create(alice, room=f"{room}@{SERVICE}", form=field("FORM_TYPE", ROOMCONFIG) + persistent)
    c.close()
    assert srv.stop() == 0


def seed_and_corrupt(srv: ServerProcess) -> dict[tuple[str, bytes], bytes]:
    """Good records next to corrupt ones; the corrupt ones by (database, key)."""
    corrupt: dict[tuple[str, bytes], bytes] = {}
    with Storage(srv.data_dir) as storage:

        def spoil(database: str, key: bytes, value: bytes) -> None:
            put(storage, database, key, value)
            corrupt[database, key] = value

        rosters = RosterStore(storage)
        for owner, contacts in (("alice", ["bob", "carol", "dave"]), ("bob", ["alice"])):
            roster = Roster()
            for contact in contacts:
                roster.version += 1
                item = RosterItem(f"{contact}@localhost", subscription="both")
                item.version = roster.version
                rosters.save("localhost", owner, item, roster)
        spoil("roster", ALICE + b"eve@localhost", GARBAGE)

        offline = OfflineStore(storage)
        offline.push("localhost", "alice", message("first"), 100)
        offline.push("localhost", "alice", message("broken")[:40], 100)  # truncated XML
        offline.push("localhost", "alice", message("third"), 100)
        corrupt["offline", ALICE + (1).to_bytes(8, "big")] = message("broken")[:40]

        private = PrivateStore(storage)
        private.now(
            private.setting_many(
                "localhost",
                "alice",
                {"urn:example:prefs": b"<prefs xmlns='urn:example:prefs'>kept</prefs>"},
                100,
            )
        )
        spoil("private", ALICE + NOTES.encode(), b"\x00\xffnot XML")

        vcards = VCardStore(storage)
        vcards.put("localhost", "bob", b"<vCard xmlns='vcard-temp'><FN>Bob</FN></vCard>")
        spoil("vcard", ALICE, b"<vCard xmlns='vcard-temp'><FN>Ali")

        # A node of the wrong shape, and one item of the other node cut short.
        spoil("pep", ALICE + b"n" + BAD_NODE.encode(), msgpack.packb({"config": 5}))
        spoil(
            "pep",
            ALICE + b"i" + ITEM_NODE.encode() + b"\0i1",
            truncated([b"x" * 50, "a", 1]),
        )

        # A room whose stored configuration has a value of the wrong type.
        room_key = f"{SERVICE}\0bad".encode()
        with storage.env.begin(db=storage.database("muc")) as txn:
            room = msgpack.unpackb(txn.get(room_key))
        room["config"]["max_users"] = "many"
        spoil("muc", room_key, msgpack.packb(room))

        archive = ArchiveStore(storage)
        kept = Record(archive.next_id(), time.time(), "bob@localhost", "in", message("kept"))
        archive.append([("localhost", "alice", kept)], 1000, 0)
        spoil("mam", ALICE + bytes.fromhex(archive.next_id()), truncated([1.0, "bob", "in"]))

        spoil("privacy", ALICE, msgpack.packb({"l": {"x": [[1, "bogus", None, True, 0]]}}))
        spoil("last", b"localhost\0alice", msgpack.packb(["yesterday", 5]))
        LastActivityStore(storage).record_logout("localhost", "bob", time.time(), "gone")
    return corrupt


def logged(srv: ServerProcess, database: str, key: bytes) -> int:
    return srv.log_text().count(f"corrupt record in database {database}, key {key!r}")


def ask(c: RawClient, to: str | None, itype: str, payload: str, iq_id: str) -> Any:
    target = "" if to is None else f" to='{to}'"
    c.send(f"<iq type='{itype}' id='{iq_id}'{target}>{payload}</iq>")
    while True:
        el = c.next()
        if el.get("id") == iq_id:
            return el


def check_alice(srv: ServerProcess, ca_file: str, resource: str) -> None:
    """Everything of alice's that is intact is served; the corrupt records read as missing."""
    c = login(srv, ca_file, "alice", resource)
    # Presenting the version it had before: the whole roster, without what is gone (a
    # diff from there could not say that eve's item went).
    reply, _ = roster_get(c, "3")
    assert sorted(items(reply)) == ["bob@localhost", "carol@localhost", "dave@localhost"]

    private = ask(
        c,
        None,
        "get",
        f"<query xmlns='{PRIVATE}'><prefs xmlns='urn:example:prefs'/></query>",
        "p1",
    )
    assert private.findtext(f"{{{PRIVATE}}}query/{{urn:example:prefs}}prefs") == "kept"
    query = f"<query xmlns='{PRIVATE}'><notes xmlns='{NOTES}'/></query>"
    notes = ask(c, None, "get", query, "p2")
    assert notes.get("type") == "result"
    assert len(notes.find(f"{{{PRIVATE}}}query/{{{NOTES}}}notes")) == 0

    own = ask(c, None, "get", "<vCard xmlns='vcard-temp'/>", "v1")
    assert own.get("type") == "result" and len(own.find("{vcard-temp}vCard")) == 0
    bob = ask(c, "bob@localhost", "get", "<vCard xmlns='vcard-temp'/>", "v2")
    assert bob.findtext("{vcard-temp}vCard/{vcard-temp}FN") == "Bob"

    nodes = ask(c, "alice@localhost", "get", f"<query xmlns='{DISCO_ITEMS}'/>", "d1")
    listed = sorted(i.get("node") for i in nodes.iter(f"{{{DISCO_ITEMS}}}item"))
    assert listed == [GOOD_NODE, ITEM_NODE]
    got = ask(
        c,
        "alice@localhost",
        "get",
        f"<pubsub xmlns='{PUBSUB}'><items node='{GOOD_NODE}'/></pubsub>",
        "i1",
    )
    assert [i.get("id") for i in got.iter(f"{{{PUBSUB}}}item")] == ["i1"]
    assert got.findtext(f".//{{{PUBSUB}}}item/{{urn:example:t}}title") == f"{GOOD_NODE} one"
    query = f"<pubsub xmlns='{PUBSUB}'><items node='{ITEM_NODE}'/></pubsub>"
    got = ask(c, "alice@localhost", "get", query, "i2")
    assert got.get("type") == "result" and list(got.iter(f"{{{PUBSUB}}}item")) == []

    rooms = ask(c, SERVICE, "get", f"<query xmlns='{DISCO_ITEMS}'/>", "d2")
    assert [i.get("jid") for i in rooms.iter(f"{{{DISCO_ITEMS}}}item")] == [f"good@{SERVICE}"]

    c.send(f"<iq type='set' id='m1'><query xmlns='{MAM}' queryid='q'/></iq>")
    archived = []
    while (el := c.next()).get("id") != "m1":
        archived.append(el.findtext(f".//{{{CLIENT}}}body"))
    assert el.get("type") == "result" and archived == ["kept"]

    lists = ask(c, None, "get", "<query xmlns='jabber:iq:privacy'/>", "l1")
    assert lists.get("type") == "result"
    assert lists.find("{jabber:iq:privacy}query/{jabber:iq:privacy}list") is None

    c.send("<presence/>")
    delivered = [el.get("id") for el in sync(c) if el.tag == f"{{{CLIENT}}}message"]
    delivered += [el.get("id") for el in sync(c) if el.tag == f"{{{CLIENT}}}message"]
    if resource == "first":
        assert delivered == ["first", "third"]
    else:
        assert delivered == []
    assert sync(c) == []  # the stream is still open and serving
    c.close()


def test_corrupt_records_are_quarantined_once(make_server: Any, ca_file: str) -> None:
    srv: ServerProcess = make_server()
    add_accounts(srv, ["alice", "bob", "carol", "dave"])
    seed_through_the_server(srv, ca_file)
    corrupt = seed_and_corrupt(srv)
    srv.start()

    bob = login(srv, ca_file, "bob")
    # alice is offline and her last-activity record is corrupt: as if she never logged out.
    last = ask(bob, "alice@localhost", "get", "<query xmlns='jabber:iq:last'/>", "last")
    assert stanza_error(last) == "item-not-found", last.attrib
    # Subscribing sends the node's last item (XEP-0060 §6.1.7): none when it is corrupt.
    bob.send("<presence/>")
    sync(bob)
    for node in (ITEM_NODE, GOOD_NODE):  # an answer's wait drops what comes before it
        subscribe = (
            f"<pubsub xmlns='{PUBSUB}'><subscribe node='{node}' jid='bob@localhost/r'/></pubsub>"
        )
        assert ask(bob, "alice@localhost", "set", subscribe, node).get("type") == "result"
    events = [el for el in sync(bob) if el.tag == f"{{{CLIENT}}}message"]
    assert [el.find(f".//{{{EVENT}}}items").get("node") for el in events] == [GOOD_NODE]
    bob.close()

    check_alice(srv, ca_file, "first")
    check_alice(srv, ca_file, "second")  # nothing logged again
    assert "Traceback" not in srv.log_text()
    for database, key in corrupt:
        assert logged(srv, database, key) == 1, (database, key, srv.log_text())
    srv.wait_for_log("ERROR fastxmpp.storage: corrupt record in database muc")

    with Storage(srv.data_dir) as storage:
        quarantined = {(q.database, q.key): q for q in storage.quarantined()}
    assert set(quarantined) == set(corrupt)
    for where, raw in corrupt.items():
        assert quarantined[where].raw == raw
        assert quarantined[where].reason

    listed = run_cli("quarantine", "list", config=srv.config)
    assert listed.returncode == 0, listed.stderr
    assert len(listed.stdout.splitlines()) == len(corrupt)
    assert f"{ALICE + b'eve@localhost'!r}" in listed.stdout

    # After a restart nothing is found corrupt again, and everything else is still there.
    assert srv.stop() == 0
    srv.start()
    check_alice(srv, ca_file, "third")
    assert "corrupt record" not in srv.log_text()


def test_corrupt_account_record_stays_and_passwd_repairs_it(
    make_server: Any, ca_file: str, tmp_path: Path
) -> None:
    """An account whose credentials do not decode cannot log in, but still exists: its name
    cannot be registered by someone else (XEP-0077). `fastxmpp passwd` gives it new ones."""
    srv: ServerProcess = make_server("[register]\nenabled = true\n")
    add_accounts(srv, ["alice", "bob"])
    key = b"localhost\0alice"
    with Storage(srv.data_dir) as storage:
        put(storage, "accounts", key, truncated({"scram": {}, "created": 1}))
    srv.start()
    for attempt in range(2):
        c = srv.client()
        c.open_stream()
        c.starttls(ca_file)
        assert c.sasl_scram("alice", PASSWORD).tag.endswith("failure"), attempt
        c.close()
    c = srv.client()
    c.open_stream()
    c.starttls(ca_file)
    taken = ask(
        c,
        None,
        "set",
        "<query xmlns='jabber:iq:register'><username>alice</username>"
        "<password>mine now</password></query>",
        "reg",
    )
    assert stanza_error(taken) == "conflict", taken.attrib
    c.close()
    assert logged(srv, "accounts", key) == 1
    with Storage(srv.data_dir) as storage:
        assert AccountStore(storage).exists("localhost", "alice")
        assert [q.key for q in storage.quarantined()] == [key]
    login(srv, ca_file, "bob").close()

    changed = run_cli(
        "passwd", "alice@localhost", "--password-stdin", config=srv.config, stdin="new secret\n"
    )
    assert changed.returncode == 0, changed.stderr
    c = srv.client()
    c.login(ca_file, "alice", "new secret", "r")
    assert sync(c) == []
    c.close()
