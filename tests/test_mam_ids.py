"""XEP-0313 archive ids only grow, across restarts and a clock stepped back, and a record is
never written over another (issue "durable" item 5). The store is used directly on a real
LMDB environment, reopened the way a restarted server reopens it."""

from __future__ import annotations

import struct
import time
from pathlib import Path
from typing import Any

import pytest

from fastxmpp.storage.account_data import account_prefix
from fastxmpp.storage.lmdb_store import SCHEMA_VERSION, Storage
from fastxmpp.storage.mam import COUNTS, HIGH_WATER, ArchiveStore, Record


def archive(store: ArchiveStore, local: str, body: str, record_id: str | None = None) -> str:
    record_id = record_id or store.next_id()
    xml = f"<message><body>{body}</body></message>".encode()
    store.append([("localhost", local, Record(record_id, time.time(), "x@localhost", "in", xml))],
                 max_messages=1000, max_age=0)  # fmt: skip
    return record_id


def bodies(store: ArchiveStore, local: str) -> list[bytes]:
    records, _ = store.query("localhost", local, limit=100)
    return [record.xml for record in records]


def test_ids_grow_across_a_restart_with_the_clock_stepped_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Storage(tmp_path / "data") as storage:
        first = archive(ArchiveStore(storage), "alice", "before")
    # The restarted server's clock is an hour behind (an NTP step, a wrong RTC).
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() - 3600)
    with Storage(tmp_path / "data") as storage:
        store = ArchiveStore(storage)
        second = archive(store, "alice", "after")
        assert second > first  # hex of big-endian integers: text order is number order
        assert bodies(store, "alice") == [
            b"<message><body>before</body></message>",
            b"<message><body>after</body></message>",
        ]


def test_an_existing_record_is_never_overwritten(tmp_path: Path) -> None:
    with Storage(tmp_path / "data") as storage:
        store = ArchiveStore(storage)
        taken = archive(store, "alice", "first")
        archive(store, "alice", "second", record_id=taken)
        assert bodies(store, "alice") == [b"<message><body>first</body></message>"]
        assert store.count("localhost", "alice") == 1


def as_older_schema(storage: Storage, version: int) -> None:
    """Rewrite this version's archive layout as `version`'s: the counts back among the
    records (before 3), no id high-water mark (1)."""
    meta, records = storage.database("meta"), storage.database("mam")
    counts = storage.database(COUNTS)

    def rewrite(txn: Any) -> None:
        for key, value in list(txn.cursor(db=counts)):
            txn.put(bytes(key), bytes(value), db=records)
        txn.drop(counts, delete=True)
        if version < 2:
            txn.delete(HIGH_WATER, db=meta)
        txn.put(b"schema", str(version).encode(), db=meta)

    storage.write(rewrite)


def test_schema_1_archives_get_their_high_water_mark(tmp_path: Path) -> None:
    """Data from before the mark existed: opening it finds the highest id of all archives."""
    data = tmp_path / "data"
    with Storage(data) as storage:
        store = ArchiveStore(storage)
        archive(store, "alice", "a")
        highest = archive(store, "bob", "b")
        archive(store, "alice", "c", record_id="0000000000000001")  # an old, low id
        as_older_schema(storage, 1)
    with Storage(data) as storage:
        assert storage.schema == SCHEMA_VERSION == 3
        with storage.env.begin(db=storage.database("meta")) as txn:
            mark = bytes(txn.get(HIGH_WATER))
        assert mark == bytes.fromhex(highest)
        assert struct.unpack(">Q", mark)[0] < int(ArchiveStore(storage).next_id(), 16)
        assert ArchiveStore(storage).count("localhost", "alice") == 2


def test_schema_2_counts_move_to_their_own_database(tmp_path: Path) -> None:
    """Schema 2 kept each archive's count under its bare prefix among its records: opening
    such data moves the counts, the records stay, and counting goes on from them."""
    data = tmp_path / "data"
    with Storage(data) as storage:
        store = ArchiveStore(storage)
        for body in ("a", "b", "c"):
            archive(store, "alice", body)
        archive(store, "bob", "d")
        as_older_schema(storage, 2)
        with storage.env.begin(db=storage.database("mam")) as txn:
            assert txn.get(account_prefix("localhost", "alice")) == struct.pack(">Q", 3)
    with Storage(data) as storage:
        assert storage.schema == 3
        store = ArchiveStore(storage)
        with storage.env.begin(db=storage.database("mam")) as txn:
            assert txn.get(account_prefix("localhost", "alice")) is None
            # Only messages are left there: no 8-byte count value.
            assert all(len(value) != 8 for value in txn.cursor().iternext(keys=False))
        assert (store.count("localhost", "alice"), store.count("localhost", "bob")) == (3, 1)
        archive(store, "alice", "e")
        assert store.count("localhost", "alice") == 4
        assert bodies(store, "alice")[-1] == b"<message><body>e</body></message>"
        assert len(bodies(store, "alice")) == 4
