"""XEP-0016 privacy lists of an account, which are also its XEP-0191 blocklist (the blocked
JIDs of the default list, XEP-0191 §6).

Database "privacy": one record per account, key `domain NUL local NUL`, value msgpack
{"d": name of the default list or nil, "l": {list name: [item, ...]}}, each item
[order, type or nil, value or nil, allow (bool), kinds (bit mask, privacy_rules)] in
ascending order. An account with no list and no default has no record. One record per
account keeps every change (a list and the default together) one write, and the limits
(`privacy.max_lists` times `privacy.max_items` items) keep it small.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack

from .account_data import account_prefix, register_purge
from .lmdb_store import Storage

DATABASE = "privacy"

# [order, type, value, allow, kinds]
ItemRecord = tuple[int, str | None, str | None, bool, int]


@dataclass
class StoredLists:
    """What one account keeps: its lists by name (items as records) and its default."""

    lists: dict[str, tuple[ItemRecord, ...]] = field(default_factory=dict)
    default: str | None = None

    def copy(self) -> StoredLists:
        return StoredLists(dict(self.lists), self.default)


class PrivacyStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._db = storage.database(DATABASE)

    def load(self, domain: str, local: str) -> StoredLists:
        with self.storage.env.begin(db=self._db) as txn:
            raw = txn.get(account_prefix(domain, local))
        if raw is None:
            return StoredLists()
        record = msgpack.unpackb(raw)
        lists = {
            name: tuple((int(o), t, v, bool(a), int(k)) for o, t, v, a, k in items)
            for name, items in record.get("l", {}).items()
        }
        return StoredLists(lists, record.get("d"))

    def save(self, domain: str, local: str, data: StoredLists) -> None:
        """Replace the account's record (delete it when nothing is left); StorageFull
        propagates with nothing written."""
        key = account_prefix(domain, local)
        if not data.lists and data.default is None:
            self.storage.write(lambda txn: txn.delete(key), db=self._db)
            return
        record: dict[str, Any] = {
            "l": {n: [list(i) for i in items] for n, items in data.lists.items()}
        }
        if data.default is not None:
            record["d"] = data.default
        raw = msgpack.packb(record)
        self.storage.write(lambda txn: txn.put(key, raw), db=self._db)


register_purge(DATABASE)
