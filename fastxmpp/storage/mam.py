"""XEP-0313 user archives: per account, the messages it sent and received.

Database "mam": key `account_prefix + id` (id: 8 bytes big-endian, microseconds since the
epoch, bumped to stay strictly increasing, so key order is time order), value msgpack
[time, with (the other party's bare JID), direction ("in"/"out"), serialized message].
Database "mam_counts": key `account_prefix`, value the archive's message count (8 bytes
big-endian), so the retention limit costs no scan. The counts are a database of their own
(schema 3; before, each sat under its bare prefix among its archive's records) because a
commit writes every page it changes: beside its archive's oldest records, an account's count
was a second page per archived message; together, the counts of thousands of accounts fit
in a few pages. Database "mam_prefs": key `account_prefix`, value msgpack [default,
always, never] (§5).

Writes come in batches (modules/mam.py hands each turn's records to a GroupCommitWriter,
which commits whatever accumulated while its previous commit ran in one transaction): a
commit costs an fsync, which one per message would make the price of every chat message.
The module keeps records as plain `Row` tuples with integer ids until they are written.

Ids only grow, across restarts too: the highest id handed out by a commit is kept in the
"meta" database (`mam_last_id`) in the same transaction as the records, and a new id is
later than it even if the clock stepped back; a record is never written over another
(schema 2; the step from schema 1 finds the highest id of existing archives).

Rooms' archives (modules/muc/archive.py) are kept here too, each under the prefix
`account_prefix(service domain, room name)` (no account has it: a MUC service's domain is
never a host), with `with` the sender's occupant JID and limits of their own.

The log (storage/archive_log.py): a commit on the path of an acknowledgement does not
write each message into its account's archive, nor into LMDB at all. Each archived message
changes the rightmost leaf page of its account's records, and a synced LMDB commit writes
every page it changed whole and flushes twice: over thousands of accounts that is a page or
more per message, and about 800 µs of CPU per commit whatever it carries. Instead, a
commit's rows are appended to the log, one write and one flush; once an account has
FOLD_ROWS rows there (at most one LMDB commit of such folds every FOLD_INTERVAL seconds, of
about FOLD_BATCH rows), or its oldest is FOLD_AGE seconds old, or it is read, an LMDB
commit moves them into its archive together (one or two leaf pages for all of them; the
retention limits apply then). The account's unfolded rows are kept in memory too
(`ArchiveStore.tails`); a logged row is unfolded while its id is above the account's newest
archived id (folds move an account's rows in id order, and its newest record is never
dropped by a limit) and above the account's purge mark, which is how they are found again
at start. Log files whose rows are all folded are deleted after the fold's commit, so the
log holds about FOLD_AGE seconds of traffic. Every acknowledged row is in the log or in its
archive at any moment.

Purge marks (database "mam_counts", key `\xff + account prefix`, value the highest id
handed out when the archive was purged, 8 bytes): a purged archive's logged rows are not
found again at start. The journal database of earlier versions ("mam_journal", key the id,
value as a log row's) is read at start like the log, and emptied by the folds.

There is no index by `with`: a query filtered by `with` scans the account's records in id
order, bounded by the retention limit (`[mam] max_messages_per_account`).
"""

from __future__ import annotations

import functools
import itertools
import logging
import struct
import time
import weakref
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import lmdb
import msgpack

from .._archive import fold_tail, log_rows, put_direct, trim_journal
from .account_data import account_prefix, delete_prefix, register_purge
from .archive_log import LOG_DIR, ArchiveLog
from .lmdb_store import META_DB, MIGRATIONS, CorruptRecord, Storage, expect, unpack
from .xml_check import check_elements

log = logging.getLogger("fastxmpp.storage.mam")
DATABASE = "mam"
PREFS = "mam_prefs"
COUNTS = "mam_counts"
_ID = struct.Struct(">Q")
JOURNAL = "mam_journal"
HIGH_WATER = b"mam_last_id"  # in the meta database
_PREFIX_LENGTH = struct.Struct(">H")
# An account's rows move from the log into its archive once it has FOLD_ROWS there (in
# a commit at most every FOLD_INTERVAL seconds, FOLD_BATCH rows of such accounts in one:
# the event loop waits while a commit's puts are made), or its oldest is FOLD_AGE seconds
# old; its oldest accounts' rows move early when more than MAX_UNFOLDED rows of all
# accounts wait (the memory they hold is bounded).
FOLD_ROWS = 16
FOLD_INTERVAL = 0.02
FOLD_BATCH = 512
FOLD_AGE = 5.0
MAX_UNFOLDED = 50_000
# Where a purge mark's key starts in "mam_counts" (no account prefix starts so: UTF-8).
PURGED = b"\xff"


# What the module queues per archived message until it is written: (account_prefix,
# id, time, with, direction, serialized message); a tuple, built once per message.
Row = tuple[bytes, int, float, str, str, bytes]


@dataclass(frozen=True)
class Record:
    id: str  # the external id: 16 hex digits
    when: float
    with_: str
    direction: str
    xml: bytes


def encode_id(text: str) -> bytes | None:
    """The 8-byte key part of an external id, or None when `text` is not one."""
    if len(text) != 16:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


def highest_archived_id(txn: Any, db: Any) -> int:
    """The highest id of any account's archive (a scan: for the schema 1 -> 2 step only). A
    count record's value is 8 bytes; an archived message's is a longer msgpack array."""
    highest = 0
    for key, value in txn.cursor(db=db):
        if len(value) != _ID.size:
            highest = max(highest, _ID.unpack(bytes(key[-_ID.size :]))[0])
    return highest


def _add_high_water_mark(storage: Storage, txn: Any) -> None:
    try:
        db = storage.env.open_db(DATABASE.encode(), txn=txn, create=False)
    except lmdb.NotFoundError:
        return  # nothing was ever archived: the mark starts with the first commit
    meta = storage.env.open_db(META_DB.encode(), txn=txn)
    txn.put(HIGH_WATER, _ID.pack(highest_archived_id(txn, db)), db=meta)


MIGRATIONS[1] = _add_high_water_mark


def _move_counts(storage: Storage, txn: Any) -> None:
    """Schema 2 -> 3: each archive's count record (its bare prefix, an 8-byte value; a
    record's value is a longer msgpack array) moves from "mam" to "mam_counts"."""
    try:
        db = storage.env.open_db(DATABASE.encode(), txn=txn, create=False)
    except lmdb.NotFoundError:
        return  # nothing was ever archived
    counts = storage.env.open_db(COUNTS.encode(), txn=txn)
    moved = [
        (bytes(key), bytes(value)) for key, value in txn.cursor(db=db) if len(value) == _ID.size
    ]
    for key, value in moved:
        txn.put(key, value, db=counts)
        txn.delete(key, db=db)


MIGRATIONS[2] = _move_counts


# The stores open in this process: an account purged in another module's transaction
# (account_data.purge_account) is marked with the highest id they handed out.
_OPEN: weakref.WeakSet[ArchiveStore] = weakref.WeakSet()


class ArchiveStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        with storage.env.begin(db=storage.database(META_DB)) as txn:
            raw = txn.get(HIGH_WATER)
        self._last = 0 if raw is None else _ID.unpack(bytes(raw))[0]
        self.log = ArchiveLog(storage.data_dir)
        # Whether the journal database of earlier versions still holds rows.
        self.legacy_journal = False
        # Accounts whose tails reached FOLD_ROWS, folded by the next commit that folds, and
        # when (time.monotonic) the last commit with folds was planned.
        self.full: set[bytes] = set()
        self.last_fold = 0.0
        # account prefix -> its unfolded rows in id order, flat: [id, stored value, id,
        # stored value, ...] (no object per row for the garbage collector to visit).
        self.tails: dict[bytes, list[Any]] = {}
        self.unfolded = 0  # rows in all tails
        # (first id, prefix) of each tail as it began, oldest first; an entry whose tail
        # no longer starts with that id is stale (dropped when met): the oldest unfolded
        # row, below which the journal is trimmed, is the first entry that is not.
        self.starts: deque[tuple[int, bytes]] = deque()
        self._load_tails()
        _OPEN.add(self)

    def close(self) -> None:
        self.log.close()
        if not self.unfolded and self.log.empty:
            self.log.drop_spares()  # a server stopped with everything folded: no log files

    def _drop_purge_marks(self) -> None:
        """With nothing logged, the purge marks have no row left to hide."""
        counts = self._counts
        with self.storage.env.begin(db=counts) as txn:
            if not _purge_marks(txn, counts):
                return

        def drop(txn: Any) -> None:
            for prefix in _purge_marks(txn, counts):
                txn.delete(PURGED + prefix, db=counts)

        self.storage.write(drop)

    # Opened (and created) on first use, not at start: a server whose accounts never
    # archive anything keeps the LMDB environment as it was.
    @property
    def _db(self) -> Any:
        return self.storage.database(DATABASE)

    @property
    def _prefs(self) -> Any:
        return self.storage.database(PREFS)

    @property
    def _counts(self) -> Any:
        return self.storage.database(COUNTS)

    @property
    def _journal(self) -> Any:
        return self.storage.database(JOURNAL)

    def next_id(self) -> str:
        """A new id, later than every id this store handed out (and the time now), as the
        16 hex digits clients see."""
        return _ID.pack(self.next_number()).hex()

    def next_number(self) -> int:
        """`next_id` as the integer it is (the key's 8 bytes, big-endian)."""
        value = int(time.time() * 1_000_000)
        if value <= self._last:
            value = self._last + 1
        self._last = value
        return value

    def last_number(self) -> int:
        """The highest id handed out so far (0: none): every row archived until now has an
        id at most this."""
        return self._last

    def _load_tails(self) -> None:
        """The unfolded rows (in the log, or in the journal of earlier versions) become the
        tails again (at start)."""
        with self.storage.env.begin() as txn:
            # The main database lists the named ones.
            self.legacy_journal = txn.get(JOURNAL.encode()) is not None
            archived = txn.get(DATABASE.encode()) is not None
        if not self.legacy_journal and self.log.empty:
            if archived:
                self._drop_purge_marks()
            return
        newest: dict[bytes, int] = {}
        corrupt: list[tuple[str, bytes, bytes]] = []
        db, counts = self._db, self._counts  # opened before the transaction that uses them
        journal = self._journal if self.legacy_journal else None
        with self.storage.env.begin() as txn:
            purged = _purge_marks(txn, counts) if archived else {}
            archive = txn.cursor(db=db)
            rows: Iterator[tuple[str, bytes, bytes]] = iter(())
            if journal is not None:
                rows = (
                    (JOURNAL, bytes(key), bytes(value)) for key, value in txn.cursor(db=journal)
                )
            logged = ((LOG_DIR, _ID.pack(number), value) for number, value in self.log.rows())
            for source, key, value in itertools.chain(rows, logged):
                try:
                    number, prefix, stored = _decode_journal(key, value)
                except Exception:  # quarantined below, outside the read transaction
                    corrupt.append((source, key, value))
                    continue
                if number > self._last:
                    self._last = number  # (a log row's id is in no high-water mark yet)
                floor = newest.get(prefix)
                if floor is None:
                    floor = newest[prefix] = max(_newest_id(archive, prefix), purged.get(prefix, 0))
                if number > floor:
                    tail = self.tails.get(prefix)
                    if tail is None:
                        tail = self.tails[prefix] = []
                        self.starts.append((number, prefix))
                    elif number <= tail[-2]:
                        continue  # (a journal row logged again: never both, but harmless)
                    tail += (number, stored)
                    self.unfolded += 1
                    if len(tail) // 2 >= FOLD_ROWS:
                        self.full.add(prefix)
        for source, key, raw in corrupt:
            self.storage.decode(source, key, raw, functools.partial(_decode_journal, key))

    def append(
        self,
        batch: list[tuple[str, str, Record]],
        max_messages: int,
        max_age: float,
    ) -> None:
        """Store each (domain, local, record) of `batch` in its archive in one transaction
        (one commit, one fsync), now, with the account's unfolded rows."""
        rows = [
            (account_prefix(domain, local), int(record.id, 16), record.when, record.with_,
             record.direction, record.xml)
            for domain, local, record in batch
        ]  # fmt: skip
        self.commit_now(self.plan(rows, max_messages, max_age, fold={row[0] for row in rows}))

    def plan(
        self,
        rows: list[Row],
        max_messages: int,
        max_age: float,
        limits: dict[bytes, tuple[int, float]] | None = None,
        fold: set[bytes] | frozenset[bytes] = frozenset(),
    ) -> ArchiveCommit:
        """The commit (its `work` for `Storage.write` or a GroupCommitWriter: any thread)
        that stores `rows`: into the journal, or, for the accounts whose tails reach
        FOLD_ROWS and those in `fold`, with their tails into their archives, where the
        limits apply: the oldest beyond `max_messages` and those older than `max_age`
        seconds (0: no age limit) go. `limits`: (max_messages, max_age) of the archives (by
        prefix) that have limits of their own (rooms: modules/muc/archive.py). One commit
        at a time: the next is planned once `committed` ran (or the commit failed, which
        changes nothing)."""
        added = {row[0] for row in rows}
        tails = self.tails
        folds = {prefix for prefix in fold if tails.get(prefix) or prefix in added}
        excess = self.unfolded + len(rows) - MAX_UNFOLDED
        if excess > 0:  # tails go early: the memory they hold stays bounded
            for prefix, tail in tails.items():
                if excess <= 0:
                    break
                if tail:
                    folds.add(prefix)
                    excess -= len(tail) // 2
        now = time.monotonic()
        if self.full and (folds or now - self.last_fold >= FOLD_INTERVAL):
            # The accounts with FOLD_ROWS rows waiting, as many as fit in one commit.
            budget = FOLD_BATCH
            for prefix in self.full:
                if budget <= 0:
                    break
                folds.add(prefix)
                budget -= len(tails.get(prefix, ())) // 2
        if folds:
            self.last_fold = now
        # The journal keeps everything from the oldest row that stays unfolded: a tail's
        # that is not folded now, or one of this commit's journaled rows.
        keep_from = min((row[1] for row in rows if row[0] not in folds), default=None)
        starts = self.starts
        for number, prefix in starts:
            if keep_from is not None and number >= keep_from:
                break
            if self._starts_tail(number, prefix) and prefix not in folds:
                keep_from = number
                break
        while starts and not self._starts_tail(*starts[0]):
            starts.popleft()  # stale entries in front go
        return ArchiveCommit(self, rows, folds, keep_from, limits or {}, max_messages, max_age)

    def commit_now(self, commit: ArchiveCommit) -> None:
        """`commit` made here and now (no group-commit writer): its transaction, its log
        record, then `committed`."""
        try:
            self.storage.write(commit.work)
            commit.log_rows()
        finally:
            commit.committed()

    def _starts_tail(self, number: int, prefix: bytes) -> bool:
        """Whether the account's unfolded rows begin with row `number` (an entry of
        `starts` that is not stale)."""
        tail = self.tails.get(prefix)
        return tail is not None and len(tail) > 0 and tail[0] == number

    def has_unfolded(self, prefix: bytes, upto: int | None = None) -> bool:
        """Whether the account has rows waiting in the journal (with an id at most `upto`)."""
        tail = self.tails.get(prefix)
        if not tail:
            return False
        return upto is None or tail[0] <= upto

    def waiting_ends(self, prefix: bytes) -> tuple[tuple[str, float], tuple[str, float]] | None:
        """(id, time) of the oldest and of the newest of the account's rows in the journal,
        the ids as clients see them; None if it has none."""
        tail = self.tails.get(prefix)
        if not tail:
            return None
        try:
            first, last = _decode_time(tail[1]), _decode_time(tail[-1])
        except Exception:  # a damaged row (quarantined by the first query that reads it)
            return None
        return (_ID.pack(tail[0]).hex(), first), (_ID.pack(tail[-2]).hex(), last)

    def unfolded_rows(self, prefix: bytes) -> int:
        return len(self.tails.get(prefix, ())) // 2

    def unfolded_accounts(self) -> list[bytes]:
        return [prefix for prefix, tail in self.tails.items() if tail]

    def aged(self, before: float) -> list[bytes]:
        """The accounts whose oldest unfolded row is older than `before` (a time: ids are
        microseconds since the epoch); the tails left empty since the last call go."""
        limit = before * 1_000_000
        found = []
        empty = []
        for prefix, tail in self.tails.items():
            if not tail:
                empty.append(prefix)
            elif tail[0] < limit:
                found.append(prefix)
        for prefix in empty:
            del self.tails[prefix]
        return found

    def drop_tail(self, prefix: bytes) -> None:
        """Forget the unfolded rows of `prefix` (its journal rows are purged elsewhere)."""
        tail = self.tails.pop(prefix, None)
        if tail is not None:
            self.unfolded -= len(tail) // 2

    def purge(self, domain: str, local: str) -> None:
        """Every record of the account, and its count, gone (its preferences stay)."""
        prefix = account_prefix(domain, local)
        db, counts = self._db, self._counts
        journal = self._journal if self.legacy_journal else None
        mark = self._last

        def purge(txn: Any) -> None:
            delete_prefix(txn, db, prefix)
            _purge_count(txn, counts, prefix, mark)
            if journal is not None:
                _delete_journal_rows(txn, journal, prefix)

        self.storage.write(purge)
        self.drop_tail(prefix)
        self.full.discard(prefix)

    # `exists` and `query` read the archive: what an account's tail holds is read once it
    # folded (the mam module folds an account before answering a query on it).

    def exists(self, domain: str, local: str, record_id: str) -> bool:
        raw = encode_id(record_id)
        if raw is None:
            return False
        with self.storage.env.begin(db=self._db) as txn:
            return txn.get(account_prefix(domain, local) + raw) is not None

    def count(self, domain: str, local: str) -> int:
        """The account's records, folded or not."""
        key = account_prefix(domain, local)
        with self.storage.env.begin(db=self._counts) as txn:
            raw = txn.get(key)
        stored = None if raw is None else self.storage.decode(COUNTS, key, raw, _decode_count)
        return (stored or 0) + self.unfolded_rows(key)

    def _decode(self, key: bytes, raw: Any, decoder: Any) -> Any:
        return self.storage.decode(DATABASE, key, raw, decoder)

    def query(
        self,
        domain: str,
        local: str,
        *,
        with_: str | None = None,
        start: float | None = None,
        end: float | None = None,
        after: str | None = None,
        before: str | None = None,
        limit: int = 100,
        backwards: bool = False,
    ) -> tuple[list[Record], bool]:
        """Up to `limit` records with ids strictly between `after` and `before` that match
        the filters, in id order; from the oldest, or the newest ones when `backwards`
        (XEP-0059 <before/>). The flag: no further match in the paging direction."""
        prefix = account_prefix(domain, local)
        low = prefix + (bytes.fromhex(after) if after else b"\0" * 8)
        high = prefix + (bytes.fromhex(before) if before else b"\xff" * 8)
        found: list[Record] = []
        complete = True
        corrupt: list[tuple[bytes, bytes]] = []
        with self.storage.env.begin(db=self._db) as txn:
            cursor = txn.cursor()
            if backwards:
                ok = cursor.set_range(high)
                ok = cursor.prev() if ok else cursor.last()
            else:
                ok = cursor.set_range(low)
                if ok and bytes(cursor.key()) == low:
                    ok = cursor.next()
            while ok:
                key = bytes(cursor.key())
                if not key.startswith(prefix) or len(key) != len(prefix) + 8:
                    break
                if key <= low or key >= high:
                    break
                try:
                    when, other, direction, xml = _decode_record(bytes(cursor.value()))
                except Exception:  # quarantined below, outside the read transaction
                    corrupt.append((key, bytes(cursor.value())))
                    ok = cursor.prev() if backwards else cursor.next()
                    continue
                if (
                    (with_ is None or other == with_)
                    and (start is None or when >= start)
                    and (end is None or when <= end)
                ):
                    if len(found) == limit:
                        complete = False
                        break
                    found.append(Record(key[len(prefix) :].hex(), when, other, direction, xml))
                ok = cursor.prev() if backwards else cursor.next()
        for key, raw in corrupt:
            self._decode(key, raw, _decode_record)
        return (found[::-1] if backwards else found), complete

    def prefs(self, domain: str, local: str) -> tuple[str, list[str], list[str]] | None:
        key = account_prefix(domain, local)
        with self.storage.env.begin(db=self._prefs) as txn:
            raw = txn.get(key)
        return None if raw is None else self.storage.decode(PREFS, key, raw, _decode_prefs)

    def set_prefs(
        self, domain: str, local: str, default: str, always: list[str], never: list[str]
    ) -> None:
        value = msgpack.packb([default, always, never])
        self.storage.write(
            lambda txn: txn.put(account_prefix(domain, local), value), db=self._prefs
        )


class ArchiveCommit:
    """What `ArchiveStore.plan` decided for one commit: the accounts in `folds` have their
    tails and their new rows put into their archives (`work`, in an LMDB transaction), the
    other new rows go into the log (`log_rows`, once that transaction has committed); the log
    files below `keep_from` (None: all), the oldest row that stays unfolded, go after a fold."""

    def __init__(
        self,
        store: ArchiveStore,
        rows: list[Row],
        folds: set[bytes],
        keep_from: int | None,
        limits: dict[bytes, tuple[int, float]],
        max_messages: int,
        max_age: float,
    ) -> None:
        self.store = store
        self.rows = rows
        self.folds = folds
        self.keep_from = keep_from
        self.limits = limits
        self.max_messages = max_messages
        self.max_age = max_age
        # The rows the log takes: [prefix, id, value, prefix, id, value, ...] (flat: no
        # object per row), the tails' once committed; the rows of accounts folded now.
        self.journaled: list[Any] = []
        self.direct: list[Row] = []
        # Encoded here, on the planning thread: the writer's thread only writes it.
        self.payload, self.highest = log_rows(rows, folds, self.journaled, self.direct)
        # Every id handed out until now: the high-water mark a fold commit keeps (ids only
        # grow across restarts even once the log files holding them are gone).
        self.high_water = store.last_number()
        # Whether the commit changes anything in LMDB (else its transaction is empty, and
        # LMDB skips its writes and flushes).
        self.transactional = bool(folds)
        # Set by the writer's thread as the commit goes (read once it is done): the
        # transaction committed, the log record written, the old journal emptied.
        self.transaction_done = False
        self.logged = False
        self.journal_emptied = False
        # Opened here, on the caller's thread: the work may run in another one ("mam" and
        # "mam_counts" exist from the first commit on: purges mark "mam_counts").
        storage = store.storage
        journal = store._journal if store.legacy_journal else None
        self._dbs = (store._db, store._counts, journal, storage.database(META_DB))

    def work(self, txn: Any) -> None:
        """Runs while the planning thread waits (or in it): reads the tails as planned. The
        per-row loops are compiled (fastxmpp/_archive.pyx): the loop waits for them."""
        db, counts_db, journal_db, meta = self._dbs
        if not self.folds:
            return
        key_of = _ID.pack
        tails = self.store.tails
        # Cursors' puts, called with positional arguments: a row's put is the loop's wait
        # and py-lmdb's keyword parsing was a third of its cost.
        archive_put = txn.cursor(db=db).put
        # Per account folded: [rows it has in its archive now, newest value], count read.
        folded: dict[bytes, list[Any]] = {}
        for prefix in self.folds:
            stats = folded[prefix] = _archive_count(txn, counts_db, prefix, self.store)
            tail = tails.get(prefix)
            if tail:
                fold_tail(archive_put, prefix, tail, stats, log.error)
        put_direct(self.direct, folded, archive_put, log.error)
        for prefix, (count, newest) in folded.items():
            most, age = self.limits.get(prefix, (self.max_messages, self.max_age))
            if newest is not None and (count > most or age > 0):
                oldest = _decode_time(newest) - age if age > 0 else None
                count = self._drop_oldest(txn, db, prefix, count, most, oldest)
            txn.put(prefix, key_of(count), db=counts_db)
        current = txn.get(HIGH_WATER, db=meta)
        if current is None or _ID.unpack(bytes(current))[0] < self.high_water:
            txn.put(HIGH_WATER, key_of(self.high_water), db=meta)
        if journal_db is not None:
            # The old journal's folded rows at its start go.
            cursor = txn.cursor(db=journal_db)
            trim_journal(cursor, None if self.keep_from is None else key_of(self.keep_from))
            self.journal_emptied = not cursor.first()

    def log_rows(self) -> None:
        """After `work`'s transaction committed (in the writer's thread): the new rows into
        the log; after a fold, the log files that hold folded rows only go."""
        self.transaction_done = True
        log_ = self.store.log
        if self.payload:
            log_.append(self.payload, self.highest)
        self.logged = True
        if self.folds:
            log_.trim(self.keep_from)

    def _drop_oldest(
        self, txn: Any, db: Any, prefix: bytes, count: int, most: int, oldest: float | None
    ) -> int:
        """The archive's oldest records beyond `most`, and those before `oldest` (a time),
        gone; the count left."""
        cursor = txn.cursor(db=db)
        first = prefix + b"\0" * 8
        while cursor.set_range(first) and bytes(cursor.key()).startswith(prefix):
            key = bytes(cursor.key())
            # Only the time: the whole record is checked when it is read.
            when = self.store._decode(key, cursor.value(), _decode_time)
            expired = when is None or (oldest is not None and when < oldest)
            if count <= most and not expired:
                break
            cursor.delete()
            count -= 1
        return count

    def committed(self) -> None:
        """After the commit (on the thread that plans), or after it failed: the tails as it
        left them. A folded tail is emptied, not dropped (the account's next rows reuse it:
        a new list per fold would be garbage collector work, long-lived objects made and
        dropped). A commit whose transaction committed but whose log record failed (a full
        disk) made its folds; its new rows are in no tail (their senders are told)."""
        store = self.store
        tails = store.tails
        if self.transaction_done:
            for prefix in self.folds:
                store.full.discard(prefix)
                tail = tails.get(prefix)
                if tail:
                    store.unfolded -= len(tail) // 2
                    tail.clear()
            if self.journal_emptied:
                store.legacy_journal = False
        if not self.logged:
            return
        journaled = self.journaled
        starts = store.starts
        full = store.full
        for index in range(0, len(journaled), 3):
            prefix = journaled[index]
            tail = tails.get(prefix)
            if tail is None:
                tail = tails[prefix] = []
            if not tail:
                starts.append((journaled[index + 1], prefix))
            tail += (journaled[index + 1], journaled[index + 2])
            if len(tail) >= 2 * FOLD_ROWS:
                full.add(prefix)
        store.unfolded += len(journaled) // 3


def _archive_count(txn: Any, counts_db: Any, prefix: bytes, store: ArchiveStore) -> list[Any]:
    """[the archive's record count, None]: the start of a fold's figures."""
    raw = txn.get(prefix, db=counts_db)
    if raw is None:
        return [0, None]
    if len(raw) == _ID.size:
        return [_ID.unpack(raw)[0], None]
    # not a count: quarantined, counted from 0 again
    return [store.storage.decode(COUNTS, prefix, raw, _decode_count) or 0, None]


def _newest_id(cursor: Any, prefix: bytes) -> int:
    """The highest id in the archive of `prefix` (0: none), with a cursor on "mam"."""
    found = cursor.set_range(prefix + b"\xff" * _ID.size)
    found = cursor.prev() if found else cursor.last()
    if not found:
        return 0
    key = bytes(cursor.key())
    if len(key) != len(prefix) + _ID.size or not key.startswith(prefix):
        return 0
    return int(_ID.unpack(key[len(prefix) :])[0])


def _journal_head(prefix: bytes) -> bytes:
    """What a journal row's value starts with: its account's prefix, with its length."""
    return _PREFIX_LENGTH.pack(len(prefix)) + prefix


def _decode_journal(key: bytes, raw: bytes) -> tuple[int, bytes, bytes]:
    """A journal row: its id, its archive's prefix, and its record's stored value."""
    if len(key) != _ID.size or len(raw) < _PREFIX_LENGTH.size:
        raise CorruptRecord(f"a journal row of {len(key)}/{len(raw)} bytes")
    (length,) = _PREFIX_LENGTH.unpack_from(raw)
    end = _PREFIX_LENGTH.size + length
    prefix, value = raw[_PREFIX_LENGTH.size : end], raw[end:]
    if len(prefix) != length or prefix.count(b"\0") != 2 or not prefix.endswith(b"\0"):
        raise CorruptRecord("a journal row without its account")
    _decode_time(value)
    return int(_ID.unpack(key)[0]), prefix, value


def _delete_journal_rows(txn: Any, db: Any, prefix: bytes) -> None:
    """The journal rows of `prefix` (a scan: the journal holds seconds of traffic)."""
    head = _journal_head(prefix)
    cursor = txn.cursor(db=db)
    found = cursor.first()
    while found:
        if bytes(cursor.value()[: len(head)]) == head:
            found = cursor.delete()
            found = found and bool(cursor.key())
        else:
            found = cursor.next()


def _purge_journal(txn: Any, db: Any, domain: str, local: str) -> None:
    _delete_journal_rows(txn, db, account_prefix(domain, local))


def _purge_count(txn: Any, counts: Any, prefix: bytes, mark: int) -> None:
    """The archive's count gone, and its purge mark: none of its logged rows with an id up
    to `mark` is found again at start."""
    txn.delete(prefix, db=counts)
    txn.put(PURGED + prefix, _ID.pack(mark), db=counts)


def _purge_account_count(txn: Any, counts: Any, domain: str, local: str) -> None:
    """An account removed (account_data.purge_account): marked with the highest id the
    stores of this process handed out (no store open, as in the CLI: the time now, which
    every id of the log is below unless the clock was set back)."""
    mark = max([int(time.time() * 1_000_000)] + [store.last_number() for store in _OPEN])
    _purge_count(txn, counts, account_prefix(domain, local), mark)


def _purge_marks(txn: Any, counts: Any) -> dict[bytes, int]:
    """account prefix -> the id up to which its logged rows were purged."""
    marks = {}
    cursor = txn.cursor(db=counts)
    found = cursor.set_range(PURGED)
    while found:
        key = bytes(cursor.key())
        if not key.startswith(PURGED):
            break
        value = bytes(cursor.value())
        if len(value) == _ID.size:
            marks[key[len(PURGED) :]] = _ID.unpack(value)[0]
        found = cursor.next()
    return marks


def _decode_count(raw: bytes) -> int:
    if len(raw) != _ID.size:
        raise CorruptRecord(f"an archive count of {len(raw)} bytes")
    return int(_ID.unpack(raw)[0])


def _decode_time(raw: bytes) -> float:
    return float(expect(expect(unpack(raw), list, "archived message")[0], (int, float), "time"))


def _decode_record(raw: bytes) -> tuple[float, str, str, bytes]:
    when, other, direction, xml = expect(unpack(raw), list, "archived message")
    if direction not in ("in", "out"):
        raise CorruptRecord(f"archive direction {direction!r:.40}")
    check_elements(expect(xml, bytes, "archived message"), ("{jabber:client}message",), most=1)
    when = float(expect(when, (int, float), "archive time"))
    return when, expect(other, str, "with"), direction, xml


def _decode_prefs(raw: bytes) -> tuple[str, list[str], list[str]]:
    default, always, never = expect(unpack(raw), list, "archive preferences")
    if default not in ("always", "never", "roster"):
        raise CorruptRecord(f"archive default {default!r:.40}")
    for jids in (always, never):
        for jid in expect(jids, list, "archive preference JIDs"):
            expect(jid, str, "archive preference JID")
    return default, always, never


register_purge(DATABASE)
register_purge(COUNTS, _purge_account_count)
register_purge(JOURNAL, _purge_journal)
register_purge(PREFS)
