"""Everything stored for an account goes when the account goes, in one LMDB transaction
(XEP-0077 §3.2: "the server MUST remove all data associated with the account").

Each per-module store registers a purge function here at import time; `purge_account` runs
them all inside the caller's write transaction (AccountStore.delete), so a crash leaves
either the whole account or nothing of it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .lmdb_store import Storage

# purge(storage, txn, domain, local): delete the account's records in `txn`. It runs inside
# a write transaction: get database handles with `storage.database(name, txn=txn)`.
Purge = Callable[[Storage, Any, str, str], None]
_PURGES: dict[str, Purge] = {}


def register_purge(database: str, purge: Purge) -> None:
    """Called once per store module, keyed by the store's database name."""
    _PURGES[database] = purge


def purge_account(storage: Storage, txn: Any, domain: str, local: str) -> None:
    _import_stores()
    for purge in _PURGES.values():
        purge(storage, txn, domain, local)


def delete_prefix(txn: Any, db: Any, prefix: bytes) -> int:
    """Delete every key starting with `prefix` from `db`; the count deleted."""
    cursor = txn.cursor(db=db)
    count = 0
    if cursor.set_range(prefix):
        while cursor.key().startswith(prefix):
            cursor.delete()  # moves to the next record
            count += 1
            if not cursor.key():
                break
    return count


def _import_stores() -> None:
    # Importing a store module registers its purge function; the CLI's deluser never loads
    # the server's modules, so the list of stores lives here.
    import importlib
    import pkgutil

    from .. import storage as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in ("lmdb_store", "account_data", "accounts"):
            importlib.import_module(f"{package.__name__}.{info.name}")
