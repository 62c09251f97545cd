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
from .lmdb_store import CorruptRecord, Storage, expect, unpack

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
        key = account_prefix(domain, local)
        with self.storage.env.begin(db=self._db) as txn:
            raw = txn.get(key)
        stored = None if raw is None else self.storage.decode(DATABASE, key, raw, _decode)
        return StoredLists() if stored is None else stored

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


def _decode_item(item: Any) -> ItemRecord:
    order, kind, value, allow, kinds = expect(item, list, "privacy item")
    if kind not in (None, "jid", "group", "subscription"):
        raise CorruptRecord(f"privacy item type {kind!r:.40}")
    return (
        expect(order, int, "privacy item order"),
        kind,
        expect(value, (str, type(None)), "privacy item value"),
        expect(allow, bool, "privacy item action"),
        expect(kinds, int, "privacy item kinds"),
    )


def _decode(raw: bytes) -> StoredLists:
    record = expect(unpack(raw), dict, "privacy lists")
    lists = {
        expect(name, str, "privacy list name"): tuple(
            _decode_item(item) for item in expect(items, list, "privacy list")
        )
        for name, items in expect(record.get("l", {}), dict, "privacy lists").items()
    }
    default = expect(record.get("d"), (str, type(None)), "default privacy list")
    if default is not None and default not in lists:
        raise CorruptRecord(f"default privacy list {default!r:.40} does not exist")
    return StoredLists(lists, default)


register_purge(DATABASE)
