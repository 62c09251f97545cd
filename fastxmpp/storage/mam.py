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

The journal (database "mam_journal"): a commit on the path of an acknowledgement does not
write each message into its account's archive. Each archived message changes the rightmost
leaf page of its account's records, and a synced commit writes every page it changed whole:
over thousands of accounts that is a page or more per message. Instead, rows go to the
journal, key the global id (8 bytes, so the rows of a commit share its last pages), value
`len(prefix) (2 bytes) + account prefix + the record's value`; once an account has
FOLD_ROWS rows there, or its oldest is FOLD_AGE seconds old, or it is read, a later commit
moves them into its archive together (one or two leaf pages for all of them; the retention
limits apply then). The account's unfolded rows are kept in memory too (`ArchiveStore.
tails`); a journal row is unfolded while its id is above the account's newest archived id
(folds move an account's rows in id order, and its newest record is never dropped by a
limit), which is how they are found again at start. The journal is trimmed from its start
up to the oldest unfolded row, in the commits, so it holds about FOLD_AGE seconds of
traffic. Nothing is in no database at any moment: a fold moves rows in one transaction.

There is no index by `with`: a query filtered by `with` scans the account's records in id
order, bounded by the retention limit (`[mam] max_messages_per_account`).
"""

from __future__ import annotations

import functools
import logging
import struct
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import lmdb
import msgpack

from .._archive import fold_tail, put_rows, trim_journal
from .account_data import account_prefix, delete_prefix, register_purge
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
# An account's rows move from the journal into its archive once it has FOLD_ROWS there,
# or its oldest is FOLD_AGE seconds old; its oldest accounts' rows move early when more
# than MAX_UNFOLDED rows of all accounts wait (the memory they hold is bounded).
FOLD_ROWS = 16
# An account with this many rows in one commit has them (and its tail) put into its archive
# at once: they share its leaf page, which is cheaper than the journal's work for each.
DIRECT_ROWS = 2
FOLD_AGE = 5.0
MAX_UNFOLDED = 50_000


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


class ArchiveStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        with storage.env.begin(db=storage.database(META_DB)) as txn:
            raw = txn.get(HIGH_WATER)
        self._last = 0 if raw is None else _ID.unpack(bytes(raw))[0]
        # account prefix -> its unfolded rows in id order, flat: [id, stored value, id,
        # stored value, ...] (no object per row for the garbage collector to visit).
        self.tails: dict[bytes, list[Any]] = {}
        self.unfolded = 0  # rows in all tails
        # (first id, prefix) of each tail as it began, oldest first; an entry whose tail
        # no longer starts with that id is stale (dropped when met): the oldest unfolded
        # row, below which the journal is trimmed, is the first entry that is not.
        self.starts: deque[tuple[int, bytes]] = deque()
        self._load_tails()

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
        """The journal's unfolded rows become the tails again (at start)."""
        with self.storage.env.begin() as txn:
            if txn.get(JOURNAL.encode()) is None:
                return  # the main database lists the named ones: no journal yet
        newest: dict[bytes, int] = {}
        corrupt: list[tuple[bytes, bytes]] = []
        db, journal = self._db, self._journal  # opened before the transaction that uses them
        with self.storage.env.begin() as txn:
            archive = txn.cursor(db=db)
            for key, value in txn.cursor(db=journal):
                try:
                    number, prefix, stored = _decode_journal(bytes(key), bytes(value))
                except Exception:  # quarantined below, outside the read transaction
                    corrupt.append((bytes(key), bytes(value)))
                    continue
                archived = newest.get(prefix)
                if archived is None:
                    archived = newest[prefix] = _newest_id(archive, prefix)
                if number > archived:
                    tail = self.tails.get(prefix)
                    if tail is None:
                        tail = self.tails[prefix] = []
                        self.starts.append((number, prefix))
                    tail += (number, stored)
                    self.unfolded += 1
        for key, raw in corrupt:
            self.storage.decode(JOURNAL, key, raw, functools.partial(_decode_journal, key))

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
        commit = self.plan(rows, max_messages, max_age, fold={row[0] for row in rows})
        self.storage.write(commit.work)
        commit.committed()

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
        added: dict[bytes, int] = {}
        for row in rows:
            prefix = row[0]
            added[prefix] = added.get(prefix, 0) + 1
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
        for prefix, count in added.items():
            if count >= DIRECT_ROWS or count + len(tails.get(prefix, ())) // 2 >= FOLD_ROWS:
                folds.add(prefix)
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

    def journaled(self, domain: str, local: str) -> list[Record]:
        """The account's rows in the journal (as this store loaded or wrote them), oldest
        first: newer than any `query` reads before they fold. For a reader in another
        process than the server's (`fastxmpp export`), which must not fold them itself."""
        tail = self.tails.get(account_prefix(domain, local), [])
        found = []
        for index in range(0, len(tail), 2):
            try:
                when, other, direction, xml = _decode_record(tail[index + 1])
            except Exception:  # a damaged row: the server's next read quarantines it
                continue
            found.append(Record(_ID.pack(tail[index]).hex(), when, other, direction, xml))
        return found

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
        db, counts, journal = self._db, self._counts, self._journal

        def purge(txn: Any) -> None:
            delete_prefix(txn, db, prefix)
            txn.delete(prefix, db=counts)
            _delete_journal_rows(txn, journal, prefix)

        self.storage.write(purge)
        self.drop_tail(prefix)

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
    """What `ArchiveStore.plan` decided for one commit: the rows of the accounts in `folds`
    go into their archives with their tails, the others into the journal; the journal
    loses its rows below `keep_from` (None: all), the oldest that stays unfolded."""

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
        # The rows the journal took: [prefix, id, value, prefix, id, value, ...] (flat: no
        # object per row); the tails get them once committed.
        self.journaled: list[Any] = []
        # Opened here, on the caller's thread: the work may run in another one.
        storage = store.storage
        self._dbs = (store._db, store._counts, store._journal, storage.database(META_DB))

    def work(self, txn: Any) -> None:
        """Runs while the planning thread waits (or in it): reads the tails as planned. The
        per-row loops are compiled (fastxmpp/_archive.pyx): the loop waits for them."""
        db, counts_db, journal_db, meta = self._dbs
        key_of = _ID.pack
        folds = self.folds
        tails = self.store.tails
        # Cursors' puts, called with positional arguments: a row's put is the loop's wait
        # and py-lmdb's keyword parsing was a third of its cost.
        archive_put = txn.cursor(db=db).put
        # Per account folded: [rows it has in its archive now, newest value], count read.
        folded: dict[bytes, list[Any]] = {}
        for prefix in folds:
            stats = folded[prefix] = _archive_count(txn, counts_db, prefix, self.store)
            tail = tails.get(prefix)
            if tail:
                fold_tail(archive_put, prefix, tail, stats, log.error)
        journaled: list[Any] = []
        highest = put_rows(
            self.rows, folded, txn.cursor(db=journal_db).put, archive_put, journaled, log.error
        )
        for prefix, (count, newest) in folded.items():
            most, age = self.limits.get(prefix, (self.max_messages, self.max_age))
            if newest is not None and (count > most or age > 0):
                oldest = _decode_time(newest) - age if age > 0 else None
                count = self._drop_oldest(txn, db, prefix, count, most, oldest)
            txn.put(prefix, key_of(count), db=counts_db)
        if highest:
            current = txn.get(HIGH_WATER, db=meta)
            if current is None or _ID.unpack(bytes(current))[0] < highest:
                txn.put(HIGH_WATER, key_of(highest), db=meta)
        # The folded rows at the journal's start go.
        trim_journal(
            txn.cursor(db=journal_db), None if self.keep_from is None else key_of(self.keep_from)
        )
        self.journaled = journaled

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
        """After the commit (on the thread that plans): the tails as it left them. A folded
        tail is emptied, not dropped (the account's next rows reuse it: a new list per
        fold would be garbage collector work, long-lived objects made and dropped)."""
        store = self.store
        tails = store.tails
        for prefix in self.folds:
            tail = tails.get(prefix)
            if tail:
                store.unfolded -= len(tail) // 2
                tail.clear()
        journaled = self.journaled
        starts = store.starts
        for index in range(0, len(journaled), 3):
            prefix = journaled[index]
            tail = tails.get(prefix)
            if tail is None:
                tail = tails[prefix] = []
            if not tail:
                starts.append((journaled[index + 1], prefix))
            tail += (journaled[index + 1], journaled[index + 2])
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
register_purge(COUNTS)
register_purge(JOURNAL, _purge_journal)
register_purge(PREFS)
