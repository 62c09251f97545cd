"""The store a module from another package gets (`Module.open_store()`, docs/MODULES.md).

One LMDB database per module, named `module/<name>`, with keys of the form
`domain NUL local NUL key`: every record belongs to an account (local "" for data of a whole
host), so the account's records go with the account (XEP-0077 §3.2) even when the module that
wrote them is no longer installed: `purge_account` purges every `module/` database by prefix.
Each call is one transaction, committed to disk (sync on) when it returns; `updating` is the
same change as `update` as a work for `later` (committed off the event loop).
"""

from __future__ import annotations

from collections.abc import Callable

import lmdb

from .account_data import account_prefix, prefixed, purge_prefixed, register_prefix_purge
from .lmdb_store import DatabaseStore, Storage, StorageFull

DATABASE_PREFIX = "module/"
# LMDB keys are at most 511 bytes; the account prefix takes up to 2 + 2 * 1023 bytes of it in
# theory, so a module's own part of the key is kept short.
MAX_KEY = 256

__all__ = ["DATABASE_PREFIX", "ModuleStore", "StorageFull"]


class ModuleStore(DatabaseStore):
    """Records of one module, per account: bytes under the module's own byte-string keys."""

    def __init__(self, storage: Storage, module: str) -> None:
        self.database_name = DATABASE_PREFIX + module
        super().__init__(storage, self.database_name)

    def _key(self, domain: str, local: str, key: bytes) -> bytes:
        if not key or len(key) > MAX_KEY:
            raise ValueError(f"a module's key is 1 to {MAX_KEY} bytes")
        return account_prefix(domain, local) + key

    def get(self, domain: str, local: str, key: bytes) -> bytes | None:
        with self.storage.env.begin(db=self._db) as txn:
            raw = txn.get(self._key(domain, local, key))
        return None if raw is None else bytes(raw)

    def put(self, domain: str, local: str, key: bytes, value: bytes) -> None:
        full_key = self._key(domain, local, key)
        self.storage.write(lambda txn: txn.put(full_key, value), db=self._db)

    def delete(self, domain: str, local: str, key: bytes) -> bool:
        """Whether there was a record to delete."""
        full_key = self._key(domain, local, key)
        return bool(self.storage.write(lambda txn: txn.delete(full_key), db=self._db))

    def update(
        self, domain: str, local: str, key: bytes, change: Callable[[bytes | None], bytes | None]
    ) -> bytes | None:
        """Read, change and write one record in one transaction (no other write can come
        between): `change` gets the stored value (None: none) and returns the new one (None:
        delete it). The new value."""
        return self.now(self.updating(domain, local, key, change))

    def updating(
        self, domain: str, local: str, key: bytes, change: Callable[[bytes | None], bytes | None]
    ) -> Callable[[lmdb.Transaction], bytes | None]:
        """`update` as a work: `later(store.updating(...))` commits it off the event loop
        (`change` then runs in the writer's thread)."""
        full_key = self._key(domain, local, key)

        def work(txn: lmdb.Transaction) -> bytes | None:
            old = txn.get(full_key)
            new = change(None if old is None else bytes(old))
            if new is None:
                txn.delete(full_key)
            else:
                txn.put(full_key, new)
            return new

        return work

    def items(self, domain: str, local: str) -> list[tuple[bytes, bytes]]:
        """Every (key, value) of the account, in key order."""
        prefix = account_prefix(domain, local)
        with self.storage.env.begin(db=self._db) as txn:
            return [(key[len(prefix) :], value) for key, value in prefixed(txn, prefix)]


register_prefix_purge(DATABASE_PREFIX, purge_prefixed)
