"""Offline messages and XEP-0198 (issue "Acknowledged means durable", item 3): with stream
management on, a stored message leaves storage when the client acknowledges it, not when it
was written to the socket; a crash, or a session that ends without acknowledging, leaves it
stored, and the next login gets it (once)."""

from __future__ import annotations

import signal
from typing import Any

from conftest import ServerProcess, add_accounts
from test_durability import login, message
from test_roster import sync
from xmpp_raw import CLIENT, RawClient

from fastxmpp.storage.lmdb_store import Storage
from fastxmpp.storage.offline import OfflineStore

SM = "urn:xmpp:sm:3"
IDS = ["o1", "o2", "o3"]


def store_three(srv: ServerProcess, ca_file: str) -> None:
    alice = login(srv, ca_file, "alice")
    alice.send("".join(message("bob@localhost", mid) for mid in IDS))
    assert sync(alice) == []  # stored: no error
    alice.close()


def stored_count(srv: ServerProcess) -> int:
    with Storage(srv.data_dir) as storage:
        return OfflineStore(storage).count("localhost", "bob")


def come_online(client: RawClient, with_sm: bool) -> list[str]:
    """Enable stream management (or not), send initial presence: the stored messages' ids."""
    if with_sm:
        client.send(f"<enable xmlns='{SM}' resume='true'/>")
        assert client.next().tag == f"{{{SM}}}enabled"
    client.send("<presence/>")
    got = [el for el in sync(client) if el.tag == f"{{{CLIENT}}}message"]
    return [el.get("id") for el in got]


def test_a_crash_before_the_ack_loses_no_stored_message(make_server: Any, ca_file: str) -> None:
    srv: ServerProcess = make_server()
    add_accounts(srv, ["alice", "bob"])
    srv.start()
    store_three(srv, ca_file)
    bob = login(srv, ca_file, "bob")
    assert come_online(bob, with_sm=True) == IDS  # written, not acknowledged
    assert srv.stop(signal.SIGKILL) == -signal.SIGKILL
    bob.abort()
    srv.start()
    bob = login(srv, ca_file, "bob", "again")
    assert come_online(bob, with_sm=True) == IDS
    bob.close()


def test_stored_messages_leave_storage_when_acknowledged(make_server: Any, ca_file: str) -> None:
    srv: ServerProcess = make_server()
    add_accounts(srv, ["alice", "bob"])
    srv.start()
    store_three(srv, ca_file)
    bob = login(srv, ca_file, "bob")
    assert come_online(bob, with_sm=True) == IDS
    assert stored_count(srv) == 3  # still stored until the <a/>
    # The own presence and the three messages: four stanzas handled.
    bob.send(f"<a xmlns='{SM}' h='4'/>")
    sync(bob)
    assert stored_count(srv) == 0
    bob.close()
    bob = login(srv, ca_file, "bob", "again")
    assert come_online(bob, with_sm=False) == []
    bob.close()


def test_a_session_that_ends_unacknowledged_leaves_them_stored_once(
    make_server: Any, ca_file: str
) -> None:
    srv: ServerProcess = make_server()
    add_accounts(srv, ["alice", "bob"])
    srv.start()
    store_three(srv, ca_file)
    bob = login(srv, ca_file, "bob")
    assert come_online(bob, with_sm=True) == IDS
    bob.close()  # no <a/>: the session ends with them unacknowledged
    bob = login(srv, ca_file, "bob", "again")
    assert come_online(bob, with_sm=False) == IDS  # each once, not stored a second time
    assert stored_count(srv) == 0  # without stream management: deleted once written
    bob.close()
