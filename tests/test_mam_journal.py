"""The archive's log (storage/mam.py, storage/archive_log.py): rows wait there, per
account, until the account has FOLD_ROWS of them, its oldest is old, or it is read; a fold
moves them into the archive in one LMDB transaction; log files whose rows are all folded are
deleted; a store opened again (a restart, a crash) finds the unfolded rows, and only those,
again. Checked against the simplest model: each account's archive is every row it was
given, in id order. Data of earlier versions keeps its rows in an LMDB journal, read the
same way."""

from __future__ import annotations

import asyncio
import errno
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ServerProcess, add_accounts, run_cli
from test_mam import bodies, connect, send_all
from xmpp_raw import RawClient

from fastxmpp.storage import archive_log, mam
from fastxmpp.storage.account_data import account_prefix, purge_account
from fastxmpp.storage.archive_log import LOG_DIR, ArchiveLog
from fastxmpp.storage.lmdb_store import GroupCommitWriter, Storage, StorageFull
from fastxmpp.storage.mam import FOLD_ROWS, JOURNAL, ArchiveStore, Row

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
        self.store.commit_now(
            self.store.plan(
                rows,
                limits.get("max_messages", 10_000),
                limits.get("max_age", 0),
                fold=fold or set(),
            )
        )

    def one_by_one(self, locals_: list[str], **limits: Any) -> None:
        """A commit per row."""
        for local in locals_:
            self.commit([self.row(local)], **limits)

    def reopen(self) -> None:
        """As after a crash: nothing folded or deleted on the way out."""
        self.store.log.close()
        self.storage.close()
        self.storage = Storage(self.data_dir)
        self.store = ArchiveStore(self.storage)

    def archived(self, local: str) -> list[int]:
        records, complete = self.store.query("localhost", local, limit=100_000)
        assert complete
        return [int(record.id, 16) for record in records]

    def logged(self) -> list[int]:
        """The ids of the rows in the log files, as a restart reads them."""
        return [number for number, _ in ArchiveLog(self.data_dir).rows()]

    def unfolded(self, local: str) -> list[int]:
        tail = self.store.tails.get(account_prefix("localhost", local), [])
        return list(tail[0::2])


@pytest.fixture
def archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(mam, "FOLD_INTERVAL", 0.0)  # full accounts fold at the next commit
    archive = Archive(tmp_path)
    yield archive
    archive.store.close()
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


def test_rows_wait_in_the_log_until_an_account_has_fold_rows(archive: Archive) -> None:
    archive.one_by_one(["a"] * FOLD_ROWS)
    waiting = archive.given["a"]
    assert archive.archived("a") == []
    assert archive.unfolded("a") == waiting
    assert archive.logged() == waiting
    assert archive.store.count("localhost", "a") == FOLD_ROWS
    archive.commit([archive.row("b")])  # the next commit folds the full account
    assert archive.archived("a") == archive.given["a"]
    assert archive.unfolded("a") == []
    assert archive.logged() == archive.given["a"] + archive.given["b"]  # b's is in that file
    assert archive.store.count("localhost", "a") == FOLD_ROWS
    archive.commit([], fold={account_prefix("localhost", "b")})
    assert archive.logged() == []  # all folded: the files are gone (kept as spares)
    assert not list((archive.data_dir / LOG_DIR).glob("*.log"))


def test_folds_wait_for_the_fold_interval(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Most commits write the log only: full accounts fold at most every FOLD_INTERVAL, or
    with a fold that cannot wait (a read)."""
    monkeypatch.setattr(mam, "FOLD_INTERVAL", 3600.0)
    archive.store.last_fold = time.monotonic()
    archive.one_by_one(["a"] * (FOLD_ROWS + 3))
    assert archive.archived("a") == [] and archive.unfolded("a") == archive.given["a"]
    archive.commit([archive.row("b")], fold={account_prefix("localhost", "b")})
    assert archive.archived("b") == archive.given["b"]
    assert archive.archived("a") == archive.given["a"]  # the full account went along


def test_an_account_folded_in_a_commit_takes_its_new_rows_along(archive: Archive) -> None:
    archive.one_by_one(["a", "b"])
    archive.commit([archive.row("a"), archive.row("a"), archive.row("c")],
                   fold={account_prefix("localhost", "a")})  # fmt: skip
    assert archive.archived("a") == archive.given["a"]  # with its tail
    assert archive.unfolded("a") == []
    assert archive.unfolded("c") == archive.given["c"]
    archive.reopen()
    assert archive.unfolded("a") == [] and archive.archived("a") == archive.given["a"]
    assert archive.unfolded("b") == archive.given["b"]
    assert archive.unfolded("c") == archive.given["c"]


def test_the_log_keeps_rows_from_the_oldest_unfolded_one(archive: Archive) -> None:
    archive.commit([archive.row("a")])
    archive.one_by_one(["b"] * (FOLD_ROWS + 1))  # b's rows fold, the last straight in
    assert archive.archived("b") == archive.given["b"]
    # b's folded rows share a file with a's unfolded one: it stays until a folds.
    assert archive.logged() == archive.given["a"] + archive.given["b"][:FOLD_ROWS]
    archive.reopen()
    # Found again: a's row, not b's (b's archive holds them: folded).
    assert archive.unfolded("a") == archive.given["a"]
    assert archive.unfolded("b") == []
    assert archive.store.count("localhost", "b") == FOLD_ROWS + 1
    archive.commit([], fold={account_prefix("localhost", "a")})
    assert archive.archived("a") == archive.given["a"]
    assert archive.logged() == []


def test_unfolded_rows_come_back_after_a_crash(archive: Archive) -> None:
    archive.one_by_one(["a", "b", "a"])
    archive.reopen()
    assert archive.unfolded("a") == archive.given["a"]
    assert archive.unfolded("b") == archive.given["b"]
    assert archive.store.unfolded == 3
    # New rows go after them, with ids that still grow (the log's ids are in no high-water
    # mark yet: the store reads them).
    archive.commit([archive.row("a") for _ in range(FOLD_ROWS - 2)])
    archive.commit([])
    assert archive.archived("a") == archive.given["a"]
    assert sorted(archive.given["a"]) == archive.given["a"]


def test_ids_grow_past_the_log_after_a_crash(archive: Archive) -> None:
    archive.one_by_one(["a"] * 3)
    last = archive.given["a"][-1]
    archive.reopen()
    archive.store._last = 0  # as if the clock had gone back: the log's ids still count
    archive.store.__init__(archive.storage)  # type: ignore[misc]
    assert archive.store.next_number() > last


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
    assert archive.logged() == []
    for local in accounts:
        assert archive.archived(local) == archive.given.get(local, [])
        assert archive.store.count("localhost", local) == len(archive.given.get(local, []))


def test_a_failed_transaction_changes_nothing(archive: Archive) -> None:
    archive.one_by_one(["a"] * (FOLD_ROWS - 1))
    commit = archive.store.plan(
        [archive.row("a")], 10_000, 0, fold={account_prefix("localhost", "a")}
    )

    def fails(txn: Any) -> None:
        commit.work(txn)
        raise RuntimeError("the commit fails (a full disk, say)")

    with pytest.raises(RuntimeError):
        archive.storage.write(fails)
    commit.committed()  # what the module does after any commit, failed or not
    archive.given["a"].pop()  # that row was refused, its sender told
    assert archive.archived("a") == []
    assert archive.unfolded("a") == archive.given["a"] == archive.logged()
    archive.commit([archive.row("a")], fold={account_prefix("localhost", "a")})
    assert archive.archived("a") == archive.given["a"]
    assert archive.logged() == []


def test_a_log_write_that_fails_keeps_the_folds_and_refuses_the_new_rows(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The transaction (the folds) committed, then the disk filled up before the log record
    was written: the folded rows are in their archive, the new ones nowhere (their senders
    are told), and the next commits work as usual."""
    archive.one_by_one(["a"] * 3)
    commit = archive.store.plan(
        [archive.row("b"), archive.row("a")], 10_000, 0, fold={account_prefix("localhost", "a")}
    )

    def full(payload: bytes, highest: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(archive.store.log, "append", full)
    with pytest.raises(OSError):
        archive.store.commit_now(commit)
    monkeypatch.undo()
    monkeypatch.setattr(mam, "FOLD_INTERVAL", 0.0)
    archive.given["b"].pop()
    assert archive.archived("a") == archive.given["a"]  # its new row went in with the fold
    assert archive.unfolded("b") == [] and archive.store.unfolded == 0
    archive.one_by_one(["b"])
    archive.reopen()
    assert archive.unfolded("b") == archive.given["b"]
    assert archive.archived("a") == archive.given["a"]


def test_the_writer_turns_a_full_disk_into_storage_full(archive: Archive) -> None:
    """A log write's ENOSPC fails the commit's future as StorageFull (the module tells the
    senders, type wait), not as a failed storage (which stops the server)."""
    loop = asyncio.new_event_loop()
    try:
        writer = GroupCommitWriter(archive.storage, loop)

        def full() -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        future = writer.submit(lambda txn: None, after=full)
        with pytest.raises(StorageFull):
            future.result(timeout=10)
        writer.close()
    finally:
        loop.close()


def test_limits_apply_when_rows_fold(archive: Archive) -> None:
    archive.one_by_one(["a"] * FOLD_ROWS, max_messages=5)
    assert archive.store.count("localhost", "a") == FOLD_ROWS  # not folded yet
    archive.commit([], fold={account_prefix("localhost", "a")}, max_messages=5)
    assert archive.archived("a") == archive.given["a"][-5:]
    assert archive.store.count("localhost", "a") == 5


def test_a_purge_hides_the_logged_rows(archive: Archive) -> None:
    archive.one_by_one(["a", "b", "a"])
    archive.store.purge("localhost", "a")
    assert archive.unfolded("a") == []
    archive.reopen()
    assert archive.unfolded("a") == [] and archive.store.count("localhost", "a") == 0
    assert archive.unfolded("b") == archive.given["b"]
    # An archive of the same name begun after the purge keeps its rows.
    archive.given["a"] = []
    archive.one_by_one(["a"])
    archive.reopen()
    assert archive.unfolded("a") == archive.given["a"]


def test_account_removal_hides_the_logged_rows(archive: Archive) -> None:
    archive.commit([archive.row("a"), archive.row("b")])
    archive.storage.write(lambda txn: purge_account(archive.storage, txn, "localhost", "a"))
    archive.store.drop_tail(account_prefix("localhost", "a"))  # (the module's part)
    archive.reopen()
    assert archive.unfolded("a") == [] and archive.unfolded("b") == archive.given["b"]


def test_purge_marks_go_once_nothing_is_logged(archive: Archive) -> None:
    archive.one_by_one(["a", "b"])
    archive.store.purge("localhost", "a")
    archive.commit([], fold={account_prefix("localhost", "b")})
    assert archive.logged() == []
    archive.reopen()
    counts = archive.storage.database(mam.COUNTS)
    with archive.storage.env.begin(db=counts) as txn:
        assert mam._purge_marks(txn, counts) == {}


def test_aged_names_old_tails_and_forgets_empty_ones(archive: Archive) -> None:
    archive.commit([archive.row("a")])
    archive.one_by_one(["b"] * FOLD_ROWS)
    archive.commit([], fold={account_prefix("localhost", "b")})  # folded: an empty tail
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


def record_ends(path: Path) -> list[int]:
    """Where each record of a log file ends (its length is in its first 4 bytes)."""
    data = path.read_bytes()
    ends, at = [], 0
    while (length := int.from_bytes(data[at : at + 4], "big")) != 0:
        at += 8 + length
        ends.append(at)
    return ends


def test_a_torn_or_damaged_log_end_is_ignored(archive: Archive) -> None:
    """A crash during a log write leaves part of a record (never acknowledged: the flush
    comes after it); reading stops at the first record that does not check."""
    archive.one_by_one(["a", "a"])
    (path,) = sorted((archive.data_dir / LOG_DIR).iterdir())
    whole = path.read_bytes()
    first, second = record_ends(path)
    torn = whole[:second] + whole[first : first + (second - first) // 2]  # a third, cut short
    path.write_bytes(torn + whole[len(torn) :])
    archive.reopen()
    assert archive.unfolded("a") == archive.given["a"]
    damaged = bytearray(whole)
    damaged[second - 1] ^= 0xFF  # the second record's last byte: its crc32 no longer matches
    path.write_bytes(bytes(damaged))
    archive.reopen()
    assert archive.unfolded("a") == archive.given["a"][:1]


def test_a_spare_file_is_reused_and_its_old_records_are_not_read(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file whose rows all folded becomes the next file: what it held fails the crc32 of
    its new number, so none of it comes back as rows."""
    monkeypatch.setattr(archive_log, "SEGMENT_BYTES", 1 << 20)  # small files, quickly full
    big = [archive.row("a") for _ in range(3)]
    big = [(r[0], r[1], r[2], r[3], r[4], r[5] + b" " * 400_000) for r in big]
    for row in big:
        archive.commit([row])  # a file holds two of these
    archive.commit([], fold={account_prefix("localhost", "a")})
    names = sorted(p.name for p in (archive.data_dir / LOG_DIR).iterdir())
    assert names and all(name.endswith(".spare") for name in names), names
    archive.one_by_one(["b"])  # written into a spare renamed
    assert len(list((archive.data_dir / LOG_DIR).glob("*.log"))) == 1
    archive.reopen()
    assert archive.unfolded("b") == archive.given["b"]
    assert archive.unfolded("a") == []
    assert archive.archived("a") == archive.given["a"]
    archive.commit([], fold={account_prefix("localhost", "b")})
    archive.store.close()
    assert not any((archive.data_dir / LOG_DIR).iterdir())  # nothing left when stopped


def test_a_file_number_is_never_reused_while_a_spare_has_it(archive: Archive) -> None:
    """A spare keeps its old records; renamed to its own old number they would read as rows
    again (here: a purged account's, whose mark went with the empty log)."""
    archive.one_by_one(["a", "a", "b"])
    archive.store.purge("localhost", "a")
    archive.commit([], fold={account_prefix("localhost", "b")})  # everything folded: a spare
    archive.reopen()  # nothing logged: the purge marks go
    archive.one_by_one(["c"])
    archive.reopen()
    assert archive.unfolded("a") == []
    assert archive.unfolded("c") == archive.given["c"]


def test_a_log_file_per_run(archive: Archive) -> None:
    """Appends never go to a file found at start (its end may be torn)."""
    archive.one_by_one(["a"])
    archive.reopen()
    archive.one_by_one(["a"])
    assert len(list((archive.data_dir / LOG_DIR).glob("*.log"))) == 2
    archive.reopen()
    assert archive.unfolded("a") == archive.given["a"]


def legacy_journal_row(number: int, local: str) -> tuple[bytes, bytes]:
    """A row as the journal of earlier versions kept it."""
    from fastxmpp._archive import record_value

    prefix = account_prefix("localhost", local)
    value = record_value(time.time(), "x@localhost", "in", MESSAGE % number)
    return number.to_bytes(8, "big"), len(prefix).to_bytes(2, "big") + prefix + value


def test_the_journal_of_earlier_versions_is_read_and_emptied(archive: Archive) -> None:
    db = archive.storage.database(JOURNAL)
    rows = [archive.store.next_number() for _ in range(3)]
    archive.given["a"] = rows[:2]
    archive.given["b"] = rows[2:]

    def put(txn: Any) -> None:
        for number, local in zip(rows, ["a", "a", "b"], strict=True):
            txn.put(*legacy_journal_row(number, local), db=db)
        txn.put((rows[0] - 1).to_bytes(8, "big"), b"\x00\x05junk", db=db)  # damaged

    archive.storage.write(put)
    archive.reopen()
    assert archive.unfolded("a") == rows[:2] and archive.unfolded("b") == rows[2:]
    assert [q.database for q in archive.storage.quarantined()] == [JOURNAL]
    archive.one_by_one(["a"])  # new rows go to the log, after the journal's
    archive.commit([], fold=set(archive.store.unfolded_accounts()))
    assert archive.archived("a") == archive.given["a"]
    assert archive.archived("b") == archive.given["b"]
    assert not archive.store.legacy_journal
    db = archive.storage.database(JOURNAL)
    with archive.storage.env.begin(db=db) as txn:
        assert txn.stat(db)["entries"] == 0


# --- in the server ------------------------------------------------------------------------------


def logged_rows(data_dir: Path) -> int:
    return sum(1 for _ in ArchiveLog(data_dir).rows())


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


def test_sigkill_with_rows_only_in_the_log(alice_and_bob: Any) -> None:
    srv, login = alice_and_bob
    alice = login("alice")
    for text in ("1", "2", "3"):  # one commit each (answered: committed)
        send_all(alice, "bob@localhost", [text])
    srv.stop(signal.SIGKILL)
    assert logged_rows(srv.data_dir) == 6  # both archives' rows, none folded
    srv.start()
    assert bodies(login("alice").query()[0]) == ["1", "2", "3"]
    assert bodies(login("bob").query()[0]) == ["1", "2", "3"]
    srv.stop()
    assert logged_rows(srv.data_dir) == 0  # folded on the way out


def test_a_backup_takes_the_logged_rows(
    alice_and_bob: Any, make_server: Any, ca_file: str, tmp_path: Path
) -> None:
    """Acknowledged rows that are only in the log (a crash before any fold) are in a backup
    of the data directory, and in the server restored from it."""
    srv, login = alice_and_bob
    send_all(login("alice"), "bob@localhost", ["1", "2"])
    srv.stop(signal.SIGKILL)
    assert logged_rows(srv.data_dir) == 4
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
    while logged_rows(srv.data_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert logged_rows(srv.data_dir) == 0
    with Storage(srv.data_dir) as storage:
        store = ArchiveStore(storage)
        assert store.count("localhost", "bob") == 1 and not store.tails


def test_an_unopened_archive_creates_nothing(tmp_path: Path) -> None:
    with Storage(tmp_path) as storage:
        ArchiveStore(storage).close()
        with storage.env.begin() as txn:
            assert txn.get(JOURNAL.encode()) is None
            assert txn.get(mam.DATABASE.encode()) is None
    assert not (tmp_path / LOG_DIR).exists()
