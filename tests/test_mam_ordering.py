"""The archive and the acknowledgement (issue "Acknowledged means durable", item 1): no
XEP-0198 <a/> that covers an archived message leaves before the archive's commit, whatever
the disk's speed; and a message the archive cannot store is refused with resource-constraint
instead of being dropped from the archive in silence.

The slow disk is tests/faults/disk_faults.c preloaded into the real server: with its trigger
file present every fsync waits half a second, so a commit is still running when anything
written after it would reach the client. The full disk is a tmpfs of its own, filled."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from conftest import ServerProcess, add_accounts
from test_durability import fill, login, tmpfs
from test_roster import sync
from test_storage_failure import build_disk_faults
from xmpp_raw import CLIENT, RawClient, stanza_error

SM = "urn:xmpp:sm:3"
MAM = "urn:xmpp:mam:2"


def enable_sm(client: RawClient) -> None:
    client.send(f"<enable xmlns='{SM}'/>")
    assert client.next().tag == f"{{{SM}}}enabled"


def archived(client: RawClient) -> list[Any]:
    """The <result/> of every message in the account's archive, oldest first (one page is
    enough here)."""
    client.send(f"<iq type='set' id='all'><query xmlns='{MAM}' queryid='q'/></iq>")
    results = []
    while True:
        el = client.next()
        if el.tag == f"{{{CLIENT}}}iq" and el.get("id") == "all":
            assert el.get("type") == "result", el.get("type")
            return results
        results += el.iter(f"{{{MAM}}}result")


def archived_bodies(client: RawClient) -> list[str]:
    return [body.text for result in archived(client) for body in result.iter(f"{{{CLIENT}}}body")]


def slow_disk_server(make_server: Any, tmp_path: Path) -> tuple[ServerProcess, Path]:
    """A started server with accounts alice and bob whose every fsync takes half a second
    once the returned trigger file exists (tests/faults/disk_faults.c)."""
    slow = tmp_path / "slow-disk-now"
    library = build_disk_faults(tmp_path)
    srv: ServerProcess = make_server()
    srv.env = dict(os.environ, LD_PRELOAD=str(library), FASTXMPP_SLOW_SYNC_TRIGGER=str(slow))
    add_accounts(srv, ["alice", "bob"])
    srv.start()
    return srv, slow


def test_the_ack_waits_for_the_archive_commit(
    make_server: Any, ca_file: str, tmp_path: Path
) -> None:
    srv, slow = slow_disk_server(make_server, tmp_path)
    alice = login(srv, ca_file, "alice")
    bob = login(srv, ca_file, "bob")
    bob.send("<presence/>")  # online: the message is written to bob in the same turn
    sync(bob)
    enable_sm(alice)

    slow.touch()  # every commit from now on takes a second or more
    alice.send(
        "<message to='bob@localhost' id='m1' type='chat'><body>kept</body></message>"
        f"<r xmlns='{SM}'/>"
    )
    ack = alice.next(timeout=30)
    assert ack.tag == f"{{{SM}}}a" and ack.get("h") == "1", ack.tag
    # Acknowledged: the server dies at once, in the middle of whatever it does next.
    assert srv.stop(signal.SIGKILL) == -signal.SIGKILL
    alice.abort()
    bob.abort()

    slow.unlink()
    srv.start()
    for name in ("alice", "bob"):
        client = login(srv, ca_file, name, "after")
        assert archived_bodies(client) == ["kept"], name
        client.close()


def test_a_message_the_archive_cannot_store_is_refused(make_server: Any, ca_file: str) -> None:
    srv: ServerProcess = make_server()
    with tmpfs(srv.data_dir, "16m"):
        try:
            add_accounts(srv, ["alice", "bob"])
            srv.start()
            alice = login(srv, ca_file, "alice")
            bob = login(srv, ca_file, "bob")
            bob.send("<presence/>")  # online: the message is delivered, not stored offline
            sync(bob)  # its own presence comes back (RFC 6121 §4.2.2)
            enable_sm(alice)
            fill(srv.data_dir / "filler")
            big = "x" * 100_000  # new pages: LMDB cannot reuse a few freed ones for it
            alice.send(
                f"<message to='bob@localhost' id='m2' type='chat'><body>{big}</body></message>"
                f"<r xmlns='{SM}'/>"
            )
            got = [alice.next(timeout=30), alice.next(timeout=30)]
            [error] = [el for el in got if el.tag == f"{{{CLIENT}}}message"]
            assert error.get("id") == "m2" and error.get("type") == "error"
            assert stanza_error(error) == "resource-constraint"
            assert error.find(f"{{{CLIENT}}}error").get("type") == "wait"
            assert any(el.tag == f"{{{SM}}}a" for el in got)
            srv.wait_for_log("archive commit failed, 1 message(s) refused: ")
            assert srv.alive()
            alice.close()
            bob.close()
        finally:
            srv.stop()


def test_metadata_counts_messages_whose_commit_is_under_way(
    make_server: Any, ca_file: str, tmp_path: Path
) -> None:
    """XEP-0313 §7: a message the account sent just before asking is in the metadata's
    <end/>, whether its commit is under way (a slow disk) or not yet begun (the same turn)."""
    srv, slow = slow_disk_server(make_server, tmp_path)
    alice = login(srv, ca_file, "alice")
    slow.touch()  # every commit from now on takes a second or more
    alice.send("<message to='bob@localhost' id='m1' type='chat'><body>one</body></message>")
    time.sleep(0.2)  # m1's commit is under way (its fsync waits)
    alice.send(
        "<message to='bob@localhost' id='m2' type='chat'><body>two</body></message>"
        f"<iq type='get' id='meta'><metadata xmlns='{MAM}'/></iq>"
    )
    reply = alice.next(timeout=30)
    assert reply.get("id") == "meta" and reply.get("type") == "result", reply.attrib
    slow.unlink()
    ends = {child.tag: child.get("id") for child in reply.find(f"{{{MAM}}}metadata")}
    ids = [result.get("id") for result in archived(alice)]
    assert len(ids) == 2
    assert ends == {f"{{{MAM}}}start": ids[0], f"{{{MAM}}}end": ids[1]}
    alice.close()
