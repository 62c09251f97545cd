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

There is no index by `with`: a query filtered by `with` scans the account's records in id
order, bounded by the retention limit (`[mam] max_messages_per_account`).
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lmdb
import msgpack

from .account_data import account_prefix, delete_prefix, register_purge
from .lmdb_store import META_DB, MIGRATIONS, CorruptRecord, Storage, expect, unpack
from .xml_check import check_elements

log = logging.getLogger("fastxmpp.storage.mam")
DATABASE = "mam"
PREFS = "mam_prefs"
COUNTS = "mam_counts"
_ID = struct.Struct(">Q")
HIGH_WATER = b"mam_last_id"  # in the meta database


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

    def append(
        self,
        batch: list[tuple[str, str, Record]],
        max_messages: int,
        max_age: float,
    ) -> None:
        """Store each (domain, local, record) of `batch` in one transaction (one commit,
        one fsync), now; see `append_rows`."""
        rows = [
            (account_prefix(domain, local), int(record.id, 16), record.when, record.with_,
             record.direction, record.xml)
            for domain, local, record in batch
        ]  # fmt: skip
        self.storage.write(self.append_rows(rows, max_messages, max_age), db=self._db)

    def append_rows(
        self,
        rows: list[Row],
        max_messages: int,
        max_age: float,
        limits: dict[bytes, tuple[int, float]] | None = None,
    ) -> Callable[[Any], None]:
        """The work (for `Storage.write` or a GroupCommitWriter: any thread) that stores
        `rows`; per account, it drops the oldest beyond `max_messages`, and those older
        than `max_age` seconds (0: no age limit). `limits`: (max_messages, max_age) of the
        archives (by prefix) that have limits of their own (rooms: modules/muc/archive.py)."""
        limits = limits or {}
        # Opened here, on the caller's thread: the work may run in another one.
        db = self._db
        counts_db = self._counts
        meta = self.storage.database(META_DB)
        pack = msgpack.Packer().pack
        key_of = _ID.pack

        def put(txn: Any) -> None:
            counts: dict[bytes, int] = {}
            newest: dict[bytes, float] = {}
            highest = 0
            for prefix, number, when, with_, direction, xml in rows:
                count = counts.get(prefix)
                if count is None:
                    raw = txn.get(prefix, db=counts_db)
                    if raw is None:
                        count = 0
                    elif len(raw) == _ID.size:
                        count = _ID.unpack(raw)[0]
                    else:  # not a count: quarantined, counted from 0 again
                        count = self.storage.decode(COUNTS, prefix, raw, _decode_count) or 0
                if not txn.put(
                    prefix + key_of(number), pack([when, with_, direction, xml]), db=db,
                    overwrite=False,
                ):  # fmt: skip
                    # Cannot happen while ids only grow; if it does, the older record wins.
                    log.error("archive id %016x under %r exists: not overwritten", number,
                              prefix)  # fmt: skip
                    counts[prefix] = count
                    continue
                if number > highest:
                    highest = number
                counts[prefix] = count + 1
                newest[prefix] = when
            if highest:
                current = txn.get(HIGH_WATER, db=meta)
                if current is None or _ID.unpack(bytes(current))[0] < highest:
                    txn.put(HIGH_WATER, key_of(highest), db=meta)
            cursor = None
            for prefix, count in counts.items():
                if prefix not in newest:
                    continue  # nothing of the account's was written
                most, age = limits.get(prefix, (max_messages, max_age))
                if count <= most and age <= 0:
                    # Within the limit and no age limit: the oldest record need not be read.
                    txn.put(prefix, key_of(count), db=counts_db)
                    continue
                if cursor is None:
                    cursor = txn.cursor(db=db)
                oldest = newest[prefix] - age if age > 0 else None
                first = prefix + b"\0" * 8
                while cursor.set_range(first) and bytes(cursor.key()).startswith(prefix):
                    key = bytes(cursor.key())
                    # Only the time: the whole record is checked when it is read.
                    when = self._decode(key, cursor.value(), _decode_time)
                    expired = when is None or (oldest is not None and when < oldest)
                    if count <= most and not expired:
                        break
                    cursor.delete()
                    count -= 1
                txn.put(prefix, key_of(count), db=counts_db)

        return put

    def purge(self, domain: str, local: str) -> None:
        """Every record of the account, and its count, gone (its preferences stay)."""
        prefix = account_prefix(domain, local)
        db, counts = self._db, self._counts

        def purge(txn: Any) -> None:
            delete_prefix(txn, db, prefix)
            txn.delete(prefix, db=counts)

        self.storage.write(purge)

    def exists(self, domain: str, local: str, record_id: str) -> bool:
        raw = encode_id(record_id)
        if raw is None:
            return False
        with self.storage.env.begin(db=self._db) as txn:
            return txn.get(account_prefix(domain, local) + raw) is not None

    def count(self, domain: str, local: str) -> int:
        key = account_prefix(domain, local)
        with self.storage.env.begin(db=self._counts) as txn:
            raw = txn.get(key)
        return (None if raw is None else self.storage.decode(COUNTS, key, raw, _decode_count)) or 0

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
register_purge(PREFS)
