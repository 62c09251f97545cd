"""Changes other stores make for a request commit off the event loop (issue 13): the
request is answered once its change is on disk (Storage.commit, modules/base.py
`answer_once_stored`), and meanwhile the server serves everyone else. Phones publish to PEP
often (XEP-0490 displayed markers at every chat read, OMEMO device lists and bundles) and
enable push at every login; each of those commits used to stop the whole server for its
fsyncs.

The commit in progress is tests/faults/disk_faults.c preloaded into the real server: while
its hold trigger file exists, every fsync waits, so no commit can end. And the writer's
transactions, shared by all stores, are checked directly: one change that its store refuses
leaves the others of its transaction committed."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import PASSWORD
from lxml import etree
from test_last_activity import ask as ask_last
from test_last_activity import lets_see
from test_mam_group_commit import everything_until_closed, with_disk_fault
from xmpp_raw import CLIENT, STREAMS, RawClient

from fastxmpp.storage.lmdb_store import Storage
from fastxmpp.storage.module_store import ModuleStore

PUBSUB = "http://jabber.org/protocol/pubsub"
STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"
MDS = "urn:xmpp:mds:displayed:0"
PUSH = "urn:xmpp:push:0"
PING = "<iq type='get' id='after'><ping xmlns='urn:xmpp:ping'/></iq>"


def displayed(chat: str, stanza_id: str, iq_id: str) -> str:
    """XEP-0490 §3.1: `chat` displayed up to `stanza_id`, with the publish-options."""
    options = "".join(
        f"<field var='{var}'><value>{value}</value></field>"
        for var, value in (
            ("FORM_TYPE", f"{PUBSUB}#publish-options"),
            ("pubsub#persist_items", "true"),
            ("pubsub#max_items", "max"),
            ("pubsub#send_last_published_item", "never"),
            ("pubsub#access_model", "whitelist"),
        )
    )
    return (
        f"<iq type='set' id='{iq_id}'><pubsub xmlns='{PUBSUB}'>"
        f"<publish node='{MDS}'><item id='{chat}'><displayed xmlns='{MDS}'>"
        f"<stanza-id xmlns='urn:xmpp:sid:0' by='alice@localhost' id='{stanza_id}'/>"
        "</displayed></item></publish>"
        f"<publish-options><x xmlns='jabber:x:data' type='submit'>{options}</x>"
        "</publish-options></pubsub></iq>"
    )


def others_are_served(client: RawClient) -> None:
    for n in range(3):
        client.send(f"<iq type='get' id='p{n}'><ping xmlns='urn:xmpp:ping'/></iq>")
        pong = client.next(timeout=10)
        assert (pong.get("id"), pong.get("type")) == (f"p{n}", "result")


def answered_after_the_commit(client: RawClient, request_id: str, hold: Path) -> None:
    """Nothing reaches `client` while the commit is held; once it ends, the answer to its
    request, then the answer to the ping it sent after it (its later input waited)."""
    with pytest.raises(TimeoutError):
        client.next(timeout=0.5)
    hold.unlink()
    answer = client.next(timeout=30)
    assert (answer.tag, answer.get("id"), answer.get("type")) == (
        f"{{{CLIENT}}}iq",
        request_id,
        "result",
    )
    pong = client.next(timeout=30)
    assert (pong.get("id"), pong.get("type")) == ("after", "result")


# (the request, with id 'req'; a request that reads it back, with id 'read'; what the answer
# to that shows once the change is stored)
CHANGES = {
    "pep publish (XEP-0490)": (
        displayed("bob@localhost", "s1", "req"),
        f"<iq type='get' id='read'><pubsub xmlns='{PUBSUB}'><items node='{MDS}'/></pubsub></iq>",
        "id='s1'",
    ),
    "push enable (XEP-0357)": (
        f"<iq type='set' id='req'><enable xmlns='{PUSH}' jid='push.example' node='n1'/></iq>",
        f"<iq type='set' id='read'><disable xmlns='{PUSH}' jid='push.example' node='n1'/></iq>",
        "type='result'",
    ),
    "vCard set (XEP-0054)": (
        "<iq type='set' id='req'><vCard xmlns='vcard-temp'><FN>Alice A.</FN></vCard></iq>",
        "<iq type='get' id='read'><vCard xmlns='vcard-temp'/></iq>",
        "Alice A.",
    ),
    "private XML set (XEP-0049)": (
        "<iq type='set' id='req'><query xmlns='jabber:iq:private'>"
        "<prefs xmlns='urn:example:prefs'>dark</prefs></query></iq>",
        "<iq type='get' id='read'><query xmlns='jabber:iq:private'>"
        "<prefs xmlns='urn:example:prefs'/></query></iq>",
        ">dark<",
    ),
}


@pytest.mark.parametrize("kind", list(CHANGES))
def test_a_change_waiting_for_its_commit_stops_nobody_else(
    make_server: Any, ca_file: str, tmp_path: Path, kind: str
) -> None:
    request, read, shown = CHANGES[kind]
    srv, hold, (alice, bob) = with_disk_fault(make_server, ca_file, tmp_path, ["alice", "bob"])
    hold.touch()  # from now on no commit ends
    alice.send(request + PING)
    others_are_served(bob)
    answered_after_the_commit(alice, "req", hold)
    alice.send(read)
    answer = alice.next(timeout=30)
    assert answer.get("id") == "read"
    assert shown in etree.tostring(answer).decode().replace('"', "'")
    for client in (alice, bob):
        client.close()
    srv.stop()


def test_push_disable_waiting_for_its_commit_stops_nobody_else(
    make_server: Any, ca_file: str, tmp_path: Path
) -> None:
    srv, hold, (alice, bob) = with_disk_fault(make_server, ca_file, tmp_path, ["alice", "bob"])
    alice.send(f"<iq type='set' id='en'><enable xmlns='{PUSH}' jid='push.example' node='n1'/></iq>")
    assert alice.next(timeout=30).get("type") == "result"
    hold.touch()
    alice.send(f"<iq type='set' id='req'><disable xmlns='{PUSH}' jid='push.example'/></iq>" + PING)
    others_are_served(bob)
    answered_after_the_commit(alice, "req", hold)
    for client in (alice, bob):
        client.close()
    srv.stop()


class Refused(Exception):
    pass


def test_a_refused_change_leaves_the_others_of_its_transaction(tmp_path: Path) -> None:
    """The writer puts every change queued while it committed into one transaction: a
    change whose work raises (a store's limit, after some of its puts) is undone alone, and
    only its future has the exception; the rest commit, and nothing is visible before."""

    async def run() -> None:
        with Storage(tmp_path / "data") as storage:
            db = storage.database("example")
            other = storage.database("other")

            def first(txn: Any) -> str:
                txn.put(b"a", b"1")
                return "first"

            def refused(txn: Any) -> None:
                txn.put(b"b", b"2")
                txn.put(b"x", b"3", db=other)
                raise Refused("over the limit")

            def last(txn: Any) -> bytes | None:
                txn.put(b"c", b"4")
                return bytes(txn.get(b"a"))  # sees the change before it in the transaction

            futures = [storage.commit(work, db) for work in (first, refused, last)]
            with storage.env.begin(db=db) as txn:
                assert txn.get(b"a") is None  # not before its commit
            results = await asyncio.gather(*futures, return_exceptions=True)
            assert results[0] == "first" and results[2] == b"1"
            assert isinstance(results[1], Refused)
            with storage.env.begin(db=db) as txn:
                stored = {bytes(k): bytes(v) for k, v in txn.cursor()}
            assert stored == {b"a": b"1", b"c": b"4"}
            with storage.env.begin(db=other) as txn:
                assert txn.get(b"x") is None

    asyncio.run(run())


def test_a_change_that_fills_the_map_commits_once_it_has_grown(tmp_path: Path) -> None:
    """The writer's thread may not grow the map (storage/lmdb_store.py MapNeedsGrowth): the
    loop grows it while the change waits, and the change runs again, once."""

    async def run() -> None:
        with Storage(tmp_path / "data", map_size=1 << 20) as storage:
            db = storage.database("example")
            runs: list[int] = []

            def big(txn: Any) -> int:
                runs.append(1)
                for n in range(300):
                    txn.put(b"k%04d" % n, b"v" * 8000)
                return len(runs)

            ran = await storage.commit(big, db)
            assert ran == len(runs) >= 2  # ran again after the growth, and that one counted
            with storage.env.begin(db=db) as txn:
                assert txn.stat(db)["entries"] == 300
            assert storage.env.info()["map_size"] > 1 << 20

    asyncio.run(run())


def test_changes_made_during_a_commit_go_together_once_it_ends(tmp_path: Path) -> None:
    """While the writer commits, new changes wait on the loop's side (no work is put while
    the loop runs, nobody's hand-over waits for another's commit); when the transaction
    ends they go to the writer together, in one transaction."""

    async def run() -> None:
        with Storage(tmp_path / "data") as storage:
            db = storage.database("example")
            writer = storage.writer
            started, release = threading.Event(), threading.Event()

            def slow(txn: Any) -> None:
                txn.put(b"slow", b"1", db=db)
                started.set()
                release.wait(10)

            first = writer.submit(slow)  # the writer is busy until `release`
            assert started.wait(10)
            before = storage.env.info()["last_txnid"]

            def put(n: int) -> Any:
                return lambda txn: txn.put(b"k%d" % n, b"v")

            waiting = [storage.commit(put(n), db) for n in range(3)]
            assert not writer.idle
            assert writer._queue.empty()  # on the loop's side until the commit ends
            release.set()
            await asyncio.gather(*waiting)
            assert first.done() and first.exception() is None
            # the slow transaction, then one for the three changes
            assert storage.env.info()["last_txnid"] == before + 2
            for _ in range(500):  # (the writer counts them just after their futures)
                if writer.idle:
                    break
                await asyncio.sleep(0.01)
            assert writer.idle

    asyncio.run(run())


def test_a_module_store_change_commits_later(tmp_path: Path) -> None:
    """A third-party module's store (docs/MODULES.md): `later(updating(...))` is committed by
    the writer; the new value is the future's result, and is stored once it is done."""

    async def run() -> None:
        with Storage(tmp_path / "data") as storage:
            store = ModuleStore(storage, "example")
            store.put("localhost", "alice", b"n", b"1")
            change = store.updating("localhost", "alice", b"n", lambda old: (old or b"") + b"+")
            done = store.later(change)
            assert store.get("localhost", "alice", b"n") == b"1"  # not before its commit
            assert await done == b"1+"
            assert store.get("localhost", "alice", b"n") == b"1+"

    asyncio.run(run())


def test_a_change_in_flight_at_shutdown_is_stored_and_answered(
    make_server: Any, ca_file: str, tmp_path: Path
) -> None:
    """SIGTERM while a publish waits for its commit: the server commits it before it stops,
    answers it before the stream's <system-shutdown/>, and has it after the restart."""
    srv, hold, (alice, bob) = with_disk_fault(make_server, ca_file, tmp_path, ["alice", "bob"])
    hold.touch()
    alice.send(displayed("bob@localhost", "s9", "req"))
    others_are_served(bob)  # the publish is handed over by now, its commit hangs
    threading.Timer(1.0, hold.unlink).start()
    assert srv.stop() == 0
    got = everything_until_closed(alice)
    tags = [(el.tag, el.get("id"), el.get("type")) for el in got]
    assert tags[0] == (f"{{{CLIENT}}}iq", "req", "result"), tags
    assert got[-1].tag == f"{{{STREAMS}}}error", tags
    assert got[-1].find(f"{{{STREAM_ERRORS}}}system-shutdown") is not None, tags
    assert "internal error" not in srv.log_text()
    srv.env = None  # without the disk fault
    srv.start()
    alice = srv.client()
    alice.login(ca_file, "alice", PASSWORD, "again")
    alice.send(
        f"<iq type='get' id='read'><pubsub xmlns='{PUBSUB}'><items node='{MDS}'/></pubsub></iq>"
    )
    answer = alice.next(timeout=30)
    assert "id='s9'" in etree.tostring(answer).decode().replace('"', "'")
    alice.close()
    srv.stop()


def test_a_logout_waiting_for_its_commit_stops_nobody_else(
    make_server: Any, ca_file: str, tmp_path: Path
) -> None:
    """XEP-0012: the logout time of an account whose last session ended is written at the
    turn's end by the writer thread (phones come and go all the time): while that commit
    hangs, others are served and the time is answered from memory; it is on disk after."""
    srv, hold, (alice, bob) = with_disk_fault(
        make_server, ca_file, tmp_path, ["alice", "bob"], config=""
    )
    srv.stop()
    lets_see(srv, "bob@localhost", ["alice"])
    srv.start()
    alice, bob = srv.client(), srv.client()
    alice.login(ca_file, "alice", PASSWORD, "phone")
    bob.login(ca_file, "bob", PASSWORD, "desk")
    hold.touch()
    alice.send("</stream:stream>")
    everything_until_closed(alice)
    others_are_served(bob)
    assert int(ask_last(bob, "alice@localhost").get("seconds")) >= 0  # from memory
    hold.unlink()
    assert srv.stop() == 0
    srv.env = None
    srv.start()
    bob = srv.client()
    bob.login(ca_file, "bob", PASSWORD, "desk")
    assert int(ask_last(bob, "alice@localhost").get("seconds")) >= 0  # stored
    bob.close()
    srv.stop()
