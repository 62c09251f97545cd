"""XEP-0012 last activity: the logout times of many sessions ending at once, batched per turn
of the event loop (fastxmpp/modules/last.py, the pipeline's "turn/end"): none is lost at a
clean shutdown, they cost one commit there, and a query in the same turn as a logout sees it
before it is written."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import lmdb
from conftest import ServerProcess, add_accounts
from lxml import etree
from test_vcard import login
from xmpp_raw import CLIENT, RawClient

from fastxmpp.storage.lmdb_store import DB_DIR, Storage
from fastxmpp.storage.roster import RosterItem, RosterStore

LAST = "jabber:iq:last"
QUERY = f"<query xmlns='{LAST}'/>"


def lets_see(srv: ServerProcess, watcher: str, names: list[str]) -> None:
    """Each of `names` has `watcher` in its roster with subscription "from": the watcher may
    ask their last activity (XEP-0012 §8)."""
    with Storage(srv.data_dir) as storage:
        rosters = RosterStore(storage)
        for name in names:
            roster = rosters.load("localhost", name)
            rosters.save("localhost", name, RosterItem(watcher, subscription="from"), roster)


def last_txnid(srv: ServerProcess) -> int:
    """The id of the newest committed write transaction of the server's LMDB environment
    (one per commit; LMDB may be read by another process while the server runs)."""
    env = lmdb.open(str(srv.data_dir / DB_DIR), readonly=True, max_dbs=64)
    try:
        txnid: int = env.info()["last_txnid"]
        return txnid
    finally:
        env.close()


def ask(c: RawClient, to: str) -> Any:
    iq_id = f"q{time.monotonic_ns()}"
    c.send(f"<iq type='get' id='{iq_id}' to='{to}'>{QUERY}</iq>")
    while True:
        el = c.next()
        if el.tag == f"{{{CLIENT}}}iq" and el.get("id") == iq_id:
            assert el.get("type") == "result", etree.tostring(el)
            return el[0]


def test_logouts_of_a_shutdown_are_recorded_in_one_commit(make_server: Any, ca_file: str) -> None:
    """SIGTERM ends every session in one turn (system-shutdown to each stream): all their
    logout times are on disk after the restart, written in one transaction (they were one
    synced commit each, 10 000 in a row on the event loop with 10 000 sessions)."""
    srv: ServerProcess = make_server()
    names = [f"u{i}" for i in range(30)]
    add_accounts(srv, [*names, "watcher"])
    lets_see(srv, "watcher@localhost", names)
    srv.start()
    opened: list[RawClient] = []
    try:
        for name in names:
            login(srv, opened, ca_file, name)
        started = time.time()
        before = last_txnid(srv)
        assert srv.stop() == 0
        # The logouts' transaction; at most one more for anything else written on the way out.
        assert last_txnid(srv) - before <= 2
        srv.start()
        watcher = login(srv, opened, ca_file, "watcher")
        for name in names:
            query = ask(watcher, f"{name}@localhost")
            assert 0 <= int(query.get("seconds")) <= time.time() - started + 1, name
    finally:
        for c in opened:
            c.close()


def test_query_in_the_turn_of_the_logout_sees_it(make_server: Any, ca_file: str) -> None:
    """A logout not written yet (it is at the end of the turn) is answered from memory. The
    server is stopped while alice's closing tag and then bob's query arrive, so that it reads
    both in one turn of its event loop; the kernel does not promise to hand them over in
    that order, so an answer that alice is still online is tried again (with a new status:
    a stale answer would show the previous one)."""
    srv: ServerProcess = make_server()
    add_accounts(srv, ["alice", "bob"])
    lets_see(srv, "bob@localhost", ["alice"])
    srv.start()
    assert srv.proc is not None
    opened: list[RawClient] = []
    try:
        bob = login(srv, opened, ca_file, "bob")
        for attempt in range(20):
            alice = login(srv, opened, ca_file, "alice")
            status = f"gone fishing {attempt}"
            alice.send(f"<presence type='unavailable'><status>{status}</status></presence>")
            assert not (ask(bob, "alice@localhost").text or "")  # online: no status
            iq_id = f"same-turn-{attempt}"
            os.kill(srv.proc.pid, signal.SIGSTOP)
            try:
                alice.send("</stream:stream>")
                time.sleep(0.05)
                bob.send(f"<iq type='get' id='{iq_id}' to='alice@localhost'>{QUERY}</iq>")
                time.sleep(0.05)
            finally:
                os.kill(srv.proc.pid, signal.SIGCONT)
            while True:
                el = bob.next()
                if el.tag == f"{{{CLIENT}}}iq" and el.get("id") == iq_id:
                    break
            alice.close()
            # Offline, with the status of its last unavailable presence (§3); the store alone
            # would have said item-not-found, or the previous attempt's status.
            assert el.get("type") == "result", etree.tostring(el)
            text = el[0].text or ""
            if text:
                assert text == status
                assert int(el[0].get("seconds")) <= 1
                # And once written, the same answer.
                assert ask(bob, "alice@localhost").text == status
                return
        raise AssertionError("the query never came after the logout in 20 attempts")
    finally:
        for c in opened:
            c.close()
