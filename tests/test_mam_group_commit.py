"""The archive commits off the event loop (issue 13; the rule of issue "Acknowledged means
durable", item 1): while an archive commit is in progress, the message has already gone to
its recipient and the server serves everyone else, but the sender's XEP-0198 <a/> waits for
the commit. And a map that fills up during such a commit grows and loses nothing.

The commit in progress is tests/faults/disk_faults.c preloaded into the real server: while
its hold trigger file exists, every fsync waits, so the commit cannot end."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ServerProcess, add_accounts
from test_durability import login
from test_mam_ordering import MAM, SM, archived_bodies, enable_sm
from test_roster import sync
from test_storage_failure import build_disk_faults
from xmpp_raw import CLIENT, RawClient, StreamClosed

from fastxmpp.storage.lmdb_store import GroupCommitWriter, Storage, StorageFailed

SID = "urn:xmpp:sid:0"


def everything_until_closed(client: RawClient) -> list[Any]:
    """Each element the server wrote to `client` until the connection ended."""
    got = []
    while True:
        try:
            got.append(client.next(timeout=30))
        except StreamClosed:
            return got


def with_disk_fault(
    make_server: Any,
    ca_file: str,
    tmp_path: Path,
    users: list[str],
    trigger: str = "FASTXMPP_HOLD_SYNC_TRIGGER",
    config: str = "",
) -> tuple[ServerProcess, Path, list[RawClient]]:
    """A server (with `config`) with tests/faults/disk_faults.c whose fault `trigger` acts
    while the returned file exists (by default: commits never end), and its users logged
    in; the second one available."""
    switch = tmp_path / "disk-fault-now"
    library = build_disk_faults(tmp_path)
    srv: ServerProcess = make_server(config)
    srv.env = dict(os.environ, LD_PRELOAD=str(library), **{trigger: str(switch)})
    add_accounts(srv, users)
    srv.start()
    clients = [login(srv, ca_file, user) for user in users]
    clients[1].send("<presence/>")
    sync(clients[1])
    return srv, switch, clients


def test_delivery_and_other_clients_do_not_wait_for_the_archive_commit(
    make_server: Any, ca_file: str, tmp_path: Path
) -> None:
    srv, hold, (alice, bob, carol) = with_disk_fault(
        make_server, ca_file, tmp_path, ["alice", "bob", "carol"]
    )
    enable_sm(alice)
    # One message first: the archive's databases exist from then on (creating one is a
    # commit of its own, on the loop's thread).
    alice.send("<message to='bob@localhost' id='m0' type='chat'><body>first</body></message>")
    assert bob.next(timeout=30).get("id") == "m0"
    alice.send(f"<r xmlns='{SM}'/>")
    assert alice.next(timeout=30).get("h") == "1"

    hold.touch()  # from now on no commit ends
    alice.send(
        "<message to='bob@localhost' id='m1' type='chat'><body>held</body></message>"
        f"<r xmlns='{SM}'/>"
    )
    # The recipient gets the message while its archive records are being committed ...
    message = bob.next(timeout=30)
    assert message.tag == f"{{{CLIENT}}}message" and message.get("id") == "m1"
    assert message.findtext(f"{{{CLIENT}}}body") == "held"
    # ... and the server answers others meanwhile (XEP-0199).
    carol.send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
    pong = carol.next(timeout=30)
    assert pong.get("id") == "p1" and pong.get("type") == "result"
    # The commit never ended: the sender has had no acknowledgement when the server dies.
    assert srv.stop(signal.SIGKILL) == -signal.SIGKILL
    got = everything_until_closed(alice)
    assert not [el for el in got if el.tag == f"{{{SM}}}a"], [el.tag for el in got]
    bob.abort()
    carol.abort()
    hold.unlink()


def test_a_query_that_waits_for_the_archive_commit_stops_nobody_else(
    make_server: Any, ca_file: str, tmp_path: Path
) -> None:
    # Mobile clients query their archive at every login. A query must see what was
    # archived before it (a commit under way, then the fold of the account's rows), but
    # while it waits the server serves everyone else; only the querying stream's later
    # input waits for its answer.
    srv, hold, (alice, bob, carol) = with_disk_fault(
        make_server, ca_file, tmp_path, ["alice", "bob", "carol"]
    )
    alice.send("<message to='bob@localhost' id='m0' type='chat'><body>first</body></message>")
    assert bob.next(timeout=30).get("id") == "m0"
    assert archived_bodies(bob) == ["first"]

    hold.touch()  # from now on no commit ends
    alice.send("<message to='bob@localhost' id='m1' type='chat'><body>held</body></message>")
    assert bob.next(timeout=30).get("id") == "m1"
    bob.send(
        f"<iq type='set' id='q1'><query xmlns='{MAM}' queryid='q'/></iq>"
        "<iq type='get' id='after'><ping xmlns='urn:xmpp:ping'/></iq>"
    )
    for n in range(3):  # the server goes on answering others
        carol.send(f"<iq type='get' id='p{n}'><ping xmlns='urn:xmpp:ping'/></iq>")
        pong = carol.next(timeout=10)
        assert pong.get("id") == f"p{n}" and pong.get("type") == "result"
    with pytest.raises(TimeoutError):
        bob.next(timeout=0.5)  # nothing for bob until his query is answered

    hold.unlink()
    bodies = []
    while True:
        el = bob.next(timeout=30)
        if el.tag == f"{{{CLIENT}}}iq":
            break
        bodies += [body.text for body in el.iter(f"{{{CLIENT}}}body")]
    assert (el.get("id"), el.get("type")) == ("q1", "result")
    assert bodies == ["first", "held"]
    pong = bob.next(timeout=30)  # bob's later input waited for the answer
    assert (pong.get("id"), pong.get("type")) == ("after", "result")
    for client in (alice, bob, carol):
        client.close()
    srv.stop()


def test_a_query_during_steady_traffic_ends_and_has_what_came_before(
    make_server: Any, ca_file: str, tmp_path: Path
) -> None:
    # Messages keep arriving for the querying account while its query waits for slow
    # commits: the answer comes (the wait is bounded by what was archived before the
    # query), and it holds every message sent before the query.
    srv, slow, (alice, bob) = with_disk_fault(
        make_server, ca_file, tmp_path, ["alice", "bob"], "FASTXMPP_SLOW_SYNC_TRIGGER"
    )

    def send(n: int) -> None:
        alice.send(f"<message to='bob@localhost' id='m{n}' type='chat'><body>{n}</body></message>")

    for n in range(5):
        send(n)
    slow.touch()  # every commit from now on takes half a second or more
    send(5)
    # Routed (so archived, its commit pending) once bob has it.
    assert [bob.next(timeout=30).get("id") for _ in range(6)] == [f"m{k}" for k in range(6)]
    bob.send(f"<iq type='set' id='q'><query xmlns='{MAM}' queryid='q'/></iq>")
    answered = None
    bodies: list[str] = []
    n = 6
    deadline = time.monotonic() + 60
    while answered is None and time.monotonic() < deadline:
        send(n)  # one more message for bob every 0.2 s while he waits
        n += 1
        with contextlib.suppress(TimeoutError):
            while True:
                el = bob.next(timeout=0.2)
                if el.tag == f"{{{CLIENT}}}iq" and el.get("id") == "q":
                    answered = el
                    break
                if el.find(f"{{{MAM}}}result") is not None:
                    bodies += [b.text for b in el.iter(f"{{{CLIENT}}}body")]
    assert answered is not None and answered.get("type") == "result"
    assert bodies[:6] == [str(k) for k in range(6)], bodies
    assert n > 7  # messages went on arriving while the query waited
    slow.unlink()
    alice.close()
    bob.close()
    srv.stop()


def metadata_ends(client: RawClient, iq_id: str) -> tuple[str | None, str | None]:
    """The ids of <start/> and <end/> in the account's XEP-0313 §7 metadata."""
    client.send(f"<iq type='get' id='{iq_id}'><metadata xmlns='{MAM}'/></iq>")
    reply = client.next(timeout=10)
    assert (reply.get("id"), reply.get("type")) == (iq_id, "result")
    start = reply.find(f"{{{MAM}}}metadata/{{{MAM}}}start")
    end = reply.find(f"{{{MAM}}}metadata/{{{MAM}}}end")
    return (
        None if start is None else start.get("id"),
        None if end is None else end.get("id"),
    )


def test_archive_metadata_shows_the_journal_and_waits_for_no_commit(
    make_server: Any, ca_file: str, tmp_path: Path
) -> None:
    # XEP-0386 logins (and §7 metadata queries) read the archive, the rows still in its
    # journal and those not committed yet: nothing is folded or committed first, so a commit
    # under way delays nothing.
    srv, hold, (alice, bob) = with_disk_fault(make_server, ca_file, tmp_path, ["alice", "bob"])
    assert metadata_ends(bob, "empty") == (None, None)
    enable_sm(alice)

    def message_to_bob(n: int, committed: bool = True) -> str:
        alice.send(
            f"<message to='bob@localhost' id='m{n}' type='chat'><body>{n}</body></message>"
            f"<r xmlns='{SM}'/>"
        )
        got = bob.next(timeout=30)
        assert got.get("id") == f"m{n}"
        if committed:  # the <a/> leaves once the message's records are committed
            assert alice.next(timeout=30).get("h") == str(n)
        return str(got.find(f"{{{SID}}}stanza-id").get("id"))

    first = message_to_bob(1)
    second = message_to_bob(2)
    # Both wait in the journal (fewer than FOLD_ROWS, younger than FOLD_AGE).
    assert metadata_ends(bob, "journal") == (first, second)
    assert archived_bodies(bob) == ["1", "2"]  # folded now
    assert metadata_ends(bob, "folded") == (first, second)

    hold.touch()  # the next commit does not end
    third = message_to_bob(3, committed=False)
    # Answered at once, with the row under way: bob was given its stanza-id already.
    assert metadata_ends(bob, "held") == (first, third)
    hold.unlink()
    assert alice.next(timeout=30).get("h") == "3"
    assert metadata_ends(bob, "after") == (first, third)
    assert archived_bodies(bob) == ["1", "2", "3"]
    alice.close()
    bob.close()
    srv.stop()


def test_the_map_grows_under_the_archive_writer(make_server: Any, ca_file: str) -> None:
    # A 1 MiB map: the archive (two copies of ~1.6 MB of messages) fills it more than once
    # while the writer thread commits, and the event loop grows it (storage/lmdb_store.py).
    srv: ServerProcess = make_server(
        "[storage]\nmap_size = 1048576\n[limits]\nmax_bytes_per_second = 0\n"
    )
    add_accounts(srv, ["alice", "bob"])
    srv.start()
    alice = login(srv, ca_file, "alice")
    bob = login(srv, ca_file, "bob")
    bob.send("<presence/>")
    sync(bob)
    enable_sm(alice)
    body = "y" * 40_000
    sent = [f"{n}-{body}" for n in range(40)]
    for n, text in enumerate(sent):
        alice.send(
            f"<message to='bob@localhost' id='g{n}' type='chat'><body>{text}</body></message>"
        )
    alice.send(f"<r xmlns='{SM}'/>")
    while True:
        el = alice.next(timeout=60)
        assert el.tag != f"{{{CLIENT}}}message", el.get("type")  # no refusal
        if el.tag == f"{{{SM}}}a":
            assert el.get("h") == "40"
            break
    srv.wait_for_log("LMDB map full: growing it")
    for client in (alice, bob):
        assert archived_bodies(client)[:40] == sent
    alice.close()
    bob.close()
    srv.stop()


def test_a_session_that_closes_gets_its_ack_after_the_commit(
    make_server: Any, ca_file: str, tmp_path: Path
) -> None:
    # The client closes its stream right after the message: the session's held output
    # (its <a/>) is written once the commit is done, before the closing tag, not dropped.
    srv, slow, (alice, bob) = with_disk_fault(
        make_server, ca_file, tmp_path, ["alice", "bob"], "FASTXMPP_SLOW_SYNC_TRIGGER"
    )
    enable_sm(alice)

    slow.touch()
    alice.send(
        "<message to='bob@localhost' id='c1' type='chat'><body>closing</body></message>"
        f"<r xmlns='{SM}'/></stream:stream>"
    )
    got = everything_until_closed(alice)
    # The answer to <r/>, and the <a/> the server adds when the stream closes (XEP-0198 §4).
    acks = [el.get("h") for el in got if el.tag == f"{{{SM}}}a"]
    assert acks and set(acks) == {"1"}, [el.tag for el in got]
    assert alice.closed_stream
    assert srv.stop(signal.SIGKILL) == -signal.SIGKILL
    bob.abort()

    slow.unlink()
    srv.start()
    for name in ("alice", "bob"):
        client = login(srv, ca_file, name, "after")
        assert archived_bodies(client) == ["closing"], name
        client.close()


def submitted_in_thread(writer: GroupCommitWriter, work: Any) -> list[Any]:
    """`writer.submit(work, wait_applied=True)` from another thread: [its future] once it
    returned within 10 s, [] if it is still waiting."""
    returned: list[Any] = []
    thread = threading.Thread(
        target=lambda: returned.append(writer.submit(work, wait_applied=True)), daemon=True
    )
    thread.start()
    thread.join(10)
    return returned


def test_a_submitter_that_waits_for_its_work_goes_on_before_the_commit(tmp_path: Path) -> None:
    """`wait_applied`: the caller's thread (the loop's, modules/mam.py `_hand_over`) waits
    until the work has run in the writer's transaction, then goes on; the Future ends with
    the commit."""

    async def run() -> None:
        with Storage(tmp_path / "data") as storage:
            writer = GroupCommitWriter(storage, asyncio.get_running_loop())
            db = storage.database("example")
            ran: list[int] = []

            def work(txn: Any) -> str:
                txn.put(b"k", b"v", db=db)
                ran.append(threading.get_ident())
                return "done"

            returned = submitted_in_thread(writer, work)
            assert returned, "submit did not return"
            assert ran and ran[0] != threading.get_ident()  # ran, in the writer's thread
            assert returned[0].result(timeout=10) == "done"
            writer.close()
            with storage.env.begin(db=db) as txn:
                assert txn.get(b"k") == b"v"

    asyncio.run(run())


def test_a_submitter_that_waits_goes_on_when_the_work_cannot_run(tmp_path: Path) -> None:
    """A storage that failed refuses the transaction before the work runs: the waiting
    caller must not wait forever (it is the event loop), and learns why from the Future."""

    async def run() -> None:
        with Storage(tmp_path / "data") as storage:
            writer = GroupCommitWriter(storage, asyncio.get_running_loop())
            storage.failed(OSError("the disk is gone"))
            ran: list[Any] = []
            returned = submitted_in_thread(writer, ran.append)
            assert returned, "submit is still waiting for work that will never run"
            assert isinstance(returned[0].exception(timeout=10), StorageFailed)
            assert ran == []
            writer.close()

    asyncio.run(run())
