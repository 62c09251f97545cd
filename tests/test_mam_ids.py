"""XEP-0313 archive ids only grow, across restarts and a clock stepped back, and a record is
never written over another (issue "durable" item 5). The store is used directly on a real
LMDB environment, reopened the way a restarted server reopens it."""

from __future__ import annotations

import struct
import time
from pathlib import Path
from typing import Any

import pytest

from fastxmpp.storage.lmdb_store import SCHEMA_VERSION, Storage
from fastxmpp.storage.mam import HIGH_WATER, ArchiveStore, Record


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


def test_schema_1_archives_get_their_high_water_mark(tmp_path: Path) -> None:
    """Data from before the mark existed: opening it finds the highest id of all archives."""
    data = tmp_path / "data"
    with Storage(data) as storage:
        store = ArchiveStore(storage)
        archive(store, "alice", "a")
        highest = archive(store, "bob", "b")
        archive(store, "alice", "c", record_id="0000000000000001")  # an old, low id
        meta = storage.database("meta")

        def as_schema_1(txn: Any) -> None:
            txn.delete(HIGH_WATER, db=meta)
            txn.put(b"schema", b"1", db=meta)

        storage.write(as_schema_1)
    with Storage(data) as storage:
        assert storage.schema == SCHEMA_VERSION == 2
        with storage.env.begin(db=storage.database("meta")) as txn:
            mark = bytes(txn.get(HIGH_WATER))
        assert mark == bytes.fromhex(highest)
        assert struct.unpack(">Q", mark)[0] < int(ArchiveStore(storage).next_id(), 16)
