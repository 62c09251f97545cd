"""The archive's journal (storage/mam.py): rows wait there, per account, until the account
has FOLD_ROWS of them, its oldest is old, or it is read; a fold moves them into the archive
in one transaction; the journal is trimmed up to its oldest unfolded row; a store opened
again (a restart, a crash) finds the unfolded rows, and only those, again. Checked against
the simplest model: each account's archive is every row it was given, in id order."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ServerProcess, add_accounts, run_cli
from test_mam import bodies, connect, send_all
from xmpp_raw import RawClient

from fastxmpp.storage import mam
from fastxmpp.storage.account_data import account_prefix, purge_account
from fastxmpp.storage.lmdb_store import Storage
from fastxmpp.storage.mam import DIRECT_ROWS, FOLD_ROWS, JOURNAL, ArchiveStore, Row

MESSAGE = b"<message xmlns='jabber:client' type='chat'><body>%d</body></message>"


class Archive:
    """A store, and what each account was given (the model)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.storage = Storage(data_dir)
        self.store = ArchiveStore(self.storage)
        self.given: dict[str, list[int]] = {}

    def row(self, local: str) -> Row:
        number = self.store.next_number()
        self.given.setdefault(local, []).append(number)
        body = MESSAGE % number
        return (account_prefix("localhost", local), number, time.time(), "x@localhost", "in", body)

    def commit(self, rows: list[Row], fold: set[bytes] | None = None, **limits: Any) -> None:
        commit = self.store.plan(
            rows, limits.get("max_messages", 10_000), limits.get("max_age", 0), fold=fold or set()
        )
        self.storage.write(commit.work)
        commit.committed()

    def one_by_one(self, locals_: list[str], **limits: Any) -> None:
        """A commit per row (each account with one row per commit goes to the journal)."""
        for local in locals_:
            self.commit([self.row(local)], **limits)

    def reopen(self) -> None:
        """As after a crash: nothing folded on the way out."""
        self.storage.close()
        self.storage = Storage(self.data_dir)
        self.store = ArchiveStore(self.storage)

    def archived(self, local: str) -> list[int]:
        records, complete = self.store.query("localhost", local, limit=100_000)
        assert complete
        return [int(record.id, 16) for record in records]

    def journal(self) -> list[int]:
        db = self.storage.database(JOURNAL)
        with self.storage.env.begin(db=db) as txn:
            return [int.from_bytes(key, "big") for key, _ in txn.cursor()]

    def unfolded(self, local: str) -> list[int]:
        tail = self.store.tails.get(account_prefix("localhost", local), [])
        return list(tail[0::2])


@pytest.fixture
def archive(tmp_path: Path) -> Any:
    archive = Archive(tmp_path)
    yield archive
    archive.storage.close()


def test_records_are_written_as_msgpack_writes_them() -> None:
    """The compiled writer (fastxmpp/_archive.pyx) encodes a record itself; the readers
    decode it with msgpack: the bytes are msgpack-python's, at every length where msgpack
    changes its header (str: 31/32, 255/256, 65535/65536; bin: 255/256, 65535/65536)."""
    import msgpack

    from fastxmpp._archive import record_value

    rng = random.Random(7)
    letters = "ab\u00e9\u20ac\U0001d11e<'&"
    for peer_length in (0, 1, 31, 32, 255, 256, 65535, 65536, 70000):
        peer = "".join(rng.choice(letters) for _ in range(peer_length))
        for xml_length in (0, 1, 255, 256, 65535, 65536, 70000):
            xml = rng.randbytes(xml_length)
            when = rng.choice([0.0, time.time(), -1.5, 1e300, rng.random()])
            for direction in ("in", "out"):
                stored = record_value(when, peer, direction, xml)
                assert stored == msgpack.packb([when, peer, direction, xml])
                assert msgpack.unpackb(stored) == [when, peer, direction, xml]


def test_rows_wait_in_the_journal_until_an_account_has_fold_rows(archive: Archive) -> None:
    archive.one_by_one(["a"] * (FOLD_ROWS - 1))
    waiting = archive.given["a"]
    assert archive.archived("a") == []
    assert archive.unfolded("a") == waiting
    assert archive.journal() == waiting
    assert archive.store.count("localhost", "a") == FOLD_ROWS - 1
    archive.commit([archive.row("a")])
    assert archive.archived("a") == archive.given["a"]
    assert archive.unfolded("a") == []
    assert archive.journal() == []  # all folded: trimmed
    assert archive.store.count("localhost", "a") == FOLD_ROWS


def test_an_account_with_several_rows_in_a_commit_skips_the_journal(archive: Archive) -> None:
    archive.one_by_one(["a", "b"])
    archive.commit([archive.row("a") for _ in range(DIRECT_ROWS)] + [archive.row("c")])
    assert archive.archived("a") == archive.given["a"]  # with its tail
    assert archive.unfolded("a") == []
    assert archive.unfolded("c") == archive.given["c"]
    assert archive.journal() == archive.given["b"] + archive.given["c"]  # a's row trimmed


def test_the_journal_keeps_rows_from_the_oldest_unfolded_one(archive: Archive) -> None:
    archive.commit([archive.row("a")])
    archive.one_by_one(["b"] * FOLD_ROWS)  # b's rows fold, the last straight into the archive
    assert archive.archived("b") == archive.given["b"]
    # b's journal rows come after a's unfolded one: they stay until a folds.
    assert archive.journal() == archive.given["a"] + archive.given["b"][:-1]
    archive.reopen()
    # Found again: a's row, not b's (b's archive holds them: folded).
    assert archive.unfolded("a") == archive.given["a"]
    assert archive.unfolded("b") == []
    assert archive.store.count("localhost", "b") == FOLD_ROWS
    archive.commit([], fold={account_prefix("localhost", "a")})
    assert archive.archived("a") == archive.given["a"]
    assert archive.journal() == []


def test_unfolded_rows_come_back_after_a_crash(archive: Archive) -> None:
    archive.one_by_one(["a", "b", "a"])
    archive.reopen()
    assert archive.unfolded("a") == archive.given["a"]
    assert archive.unfolded("b") == archive.given["b"]
    assert archive.store.unfolded == 3
    # New rows go after them, with ids that still grow.
    archive.commit([archive.row("a") for _ in range(FOLD_ROWS - 2)])
    assert archive.archived("a") == archive.given["a"]
    assert sorted(archive.given["a"]) == archive.given["a"]


def test_random_traffic_folds_and_crashes_lose_and_repeat_nothing(archive: Archive) -> None:
    rng = random.Random(7)
    accounts = [f"u{i}" for i in range(40)]
    for step in range(300):
        rows = [archive.row(rng.choice(accounts)) for _ in range(rng.randrange(0, 12))]
        fold = {account_prefix("localhost", rng.choice(accounts))} if rng.random() < 0.2 else None
        archive.commit(rows, fold)
        if rng.random() < 0.05:
            archive.reopen()
        if step % 50 == 0:
            local = rng.choice(accounts)
            assert archive.archived(local) + archive.unfolded(local) == archive.given.get(local, [])
    archive.commit([], fold=set(archive.store.unfolded_accounts()))
    assert archive.journal() == []
    for local in accounts:
        assert archive.archived(local) == archive.given.get(local, [])
        assert archive.store.count("localhost", local) == len(archive.given.get(local, []))


def test_a_failed_commit_changes_nothing(archive: Archive) -> None:
    archive.one_by_one(["a"] * (FOLD_ROWS - 1))
    commit = archive.store.plan([archive.row("a")], 10_000, 0)  # the fold

    def fails(txn: Any) -> None:
        commit.work(txn)
        raise RuntimeError("the commit fails (a full disk, say)")

    with pytest.raises(RuntimeError):
        archive.storage.write(fails)
    archive.given["a"].pop()  # that row was refused, its sender told
    assert archive.archived("a") == []
    assert archive.unfolded("a") == archive.given["a"] == archive.journal()
    archive.commit([archive.row("a")])  # the next fold takes the tail
    assert archive.archived("a") == archive.given["a"]
    assert archive.journal() == []


def test_limits_apply_when_rows_fold(archive: Archive) -> None:
    archive.one_by_one(["a"] * (FOLD_ROWS - 1), max_messages=5)
    assert archive.store.count("localhost", "a") == FOLD_ROWS - 1  # not folded yet
    archive.commit([archive.row("a")], max_messages=5)
    assert archive.archived("a") == archive.given["a"][-5:]
    assert archive.store.count("localhost", "a") == 5


def test_a_purge_takes_the_journal_rows_too(archive: Archive) -> None:
    archive.one_by_one(["a", "b", "a"])
    archive.store.purge("localhost", "a")
    assert archive.unfolded("a") == []
    assert archive.journal() == archive.given["b"]
    archive.reopen()
    assert archive.unfolded("a") == [] and archive.store.count("localhost", "a") == 0


def test_account_removal_takes_the_journal_rows_too(archive: Archive) -> None:
    archive.commit([archive.row("a"), archive.row("b")])
    archive.storage.write(lambda txn: purge_account(archive.storage, txn, "localhost", "a"))
    assert archive.journal() == archive.given["b"]
    archive.reopen()
    assert archive.unfolded("a") == [] and archive.unfolded("b") == archive.given["b"]


def test_aged_names_old_tails_and_forgets_empty_ones(archive: Archive) -> None:
    archive.commit([archive.row("a")])
    archive.one_by_one(["b"] * FOLD_ROWS)  # folded: an empty tail
    assert archive.store.aged(time.time() - 60) == []
    assert archive.store.aged(time.time() + 1) == [account_prefix("localhost", "a")]
    assert set(archive.store.tails) == {account_prefix("localhost", "a")}


def test_unfolded_rows_are_bounded(archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mam, "MAX_UNFOLDED", 10)
    for i in range(8):
        archive.commit([archive.row(f"u{i}")])
    archive.commit([archive.row("x"), archive.row("y"), archive.row("z")])
    assert archive.store.unfolded <= 10
    for local in archive.given:
        assert archive.archived(local) + archive.unfolded(local) == archive.given[local]


def test_a_corrupt_journal_row_is_quarantined_at_start(archive: Archive) -> None:
    archive.one_by_one(["a", "a"])
    db = archive.storage.database(JOURNAL)
    bad = archive.given["a"][0].to_bytes(8, "big")
    archive.storage.write(lambda txn: txn.put(bad, b"\x00\x05junk", db=db))
    archive.reopen()
    assert archive.unfolded("a") == archive.given["a"][1:]
    assert [q.database for q in archive.storage.quarantined()] == [JOURNAL]


# --- in the server ------------------------------------------------------------------------------


def journal_rows(data_dir: Path) -> int:
    with Storage(data_dir) as storage:
        with storage.env.begin() as txn:
            if txn.get(JOURNAL.encode()) is None:
                return 0
        with storage.env.begin(db=storage.database(JOURNAL)) as txn:
            return int(txn.stat(storage.database(JOURNAL))["entries"])


@pytest.fixture
def alice_and_bob(make_server: Any, ca_file: str) -> Any:
    """A server of one's own with accounts alice and bob; a function that logs one in."""
    srv: ServerProcess = make_server()
    add_accounts(srv, ["alice", "bob"])
    srv.start()
    opened: list[RawClient] = []
    yield srv, lambda name: connect(srv, ca_file, opened, name)
    for c in opened:
        c.close()


def test_sigkill_with_rows_only_in_the_journal(alice_and_bob: Any) -> None:
    srv, login = alice_and_bob
    alice = login("alice")
    for text in ("1", "2", "3"):  # one commit each (answered: committed)
        send_all(alice, "bob@localhost", [text])
    srv.stop(signal.SIGKILL)
    assert journal_rows(srv.data_dir) == 6  # both archives' rows, none folded
    srv.start()
    assert bodies(login("alice").query()[0]) == ["1", "2", "3"]
    assert bodies(login("bob").query()[0]) == ["1", "2", "3"]
    srv.stop()
    assert journal_rows(srv.data_dir) == 0  # folded on the way out


def test_a_backup_takes_the_journal_rows(
    alice_and_bob: Any, make_server: Any, ca_file: str, tmp_path: Path
) -> None:
    """Acknowledged rows that are only in the journal (a crash before any fold) are in a
    backup of the data directory, and in the server restored from it."""
    srv, login = alice_and_bob
    send_all(login("alice"), "bob@localhost", ["1", "2"])
    srv.stop(signal.SIGKILL)
    assert journal_rows(srv.data_dir) == 4
    made = run_cli("backup", str(tmp_path / "copy"), config=srv.config)
    assert made.returncode == 0, made.stderr
    target: ServerProcess = make_server()
    restored = run_cli("restore", str(tmp_path / "copy"), config=target.config)
    assert restored.returncode == 0, restored.stderr
    target.start()
    opened: list[RawClient] = []
    try:
        assert bodies(connect(target, ca_file, opened, "bob").query()[0]) == ["1", "2"]
    finally:
        for c in opened:
            c.close()


def test_old_rows_fold_on_their_own(alice_and_bob: Any) -> None:
    srv, login = alice_and_bob
    send_all(login("alice"), "bob@localhost", ["1"])
    deadline = time.monotonic() + mam.FOLD_AGE * 2
    while journal_rows(srv.data_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert journal_rows(srv.data_dir) == 0
    with Storage(srv.data_dir) as storage:
        store = ArchiveStore(storage)
        assert store.count("localhost", "bob") == 1 and not store.tails


def test_an_unopened_journal_is_not_created(tmp_path: Path) -> None:
    with Storage(tmp_path) as storage:
        ArchiveStore(storage)
        with storage.env.begin() as txn:
            assert txn.get(JOURNAL.encode()) is None
