"""Everything stored for an account goes when the account goes, in one LMDB transaction
(XEP-0077 §3.2: "the server MUST remove all data associated with the account").

Each per-module store registers a purge function here at import time; `purge_account` runs
them all inside the caller's write transaction (AccountStore.delete), so a crash leaves
either the whole account or nothing of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import lmdb

from .lmdb_store import Storage, import_stores

# purge(txn, db, domain, local): delete the account's records from the store's database
# `db`, inside the caller's write transaction `txn`.
Purge = Callable[[Any, Any, str, str], None]
_PURGES: dict[str, Purge] = {}
# The same for every database whose name starts with a prefix: the stores of modules from
# other packages (storage/module_store.py), purged even when their module is not installed.
_PREFIX_PURGES: dict[str, Purge] = {}


def account_prefix(domain: str, local: str) -> bytes:
    """The key prefix under which a store keeps all of one account's records."""
    return f"{domain}\0{local}\0".encode()


def purge_prefixed(txn: Any, db: Any, domain: str, local: str) -> None:
    """The purge of a store whose keys start with `account_prefix`."""
    delete_prefix(txn, db, account_prefix(domain, local))


def register_purge(database: str, purge: Purge = purge_prefixed) -> None:
    """Called once per store module, keyed by the store's database name."""
    _PURGES[database] = purge


# Databases holding what was granted with the password (XEP-0484 FAST tokens): a new
# password purges the account's records there as if the account went.
_CREDENTIAL_BOUND: list[str] = []


def register_credential_bound(database: str) -> None:
    _CREDENTIAL_BOUND.append(database)


def purge_credential_bound(storage: Storage, txn: Any, domain: str, local: str) -> None:
    """Inside the caller's write transaction that sets a new password."""
    import_stores()
    for database in _CREDENTIAL_BOUND:
        try:
            db = storage.env.open_db(database.encode(), txn=txn, create=False)
        except lmdb.NotFoundError:
            continue
        _PURGES.get(database, purge_prefixed)(txn, db, domain, local)


def register_prefix_purge(prefix: str, purge: Purge) -> None:
    """`purge` for every database whose name starts with `prefix`."""
    _PREFIX_PURGES[prefix] = purge


def purge_account(storage: Storage, txn: Any, domain: str, local: str) -> None:
    import_stores()
    # The main database lists the named ones (their names are its keys).
    main = storage.env.open_db(None, txn=txn)
    names = [bytes(name).decode() for name in txn.cursor(db=main).iternext(values=False)]
    for prefix, purge in _PREFIX_PURGES.items():
        for name in names:
            if name.startswith(prefix):
                purge(txn, storage.env.open_db(name.encode(), txn=txn, create=False), domain, local)
    for database, purge in _PURGES.items():
        # Opened inside the caller's write transaction: Storage.database would start a
        # second one and wait for the first forever (the CLI's deluser has not opened the
        # store's database yet). A database never created holds nothing to purge.
        try:
            db = storage.env.open_db(database.encode(), txn=txn, create=False)
        except lmdb.NotFoundError:
            continue
        purge(txn, db, domain, local)


def prefixed(txn: Any, prefix: bytes, db: Any = None) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of each record of `db` (the transaction's own by default) whose key
    starts with `prefix`, in key order; copies, valid after the transaction."""
    cursor = txn.cursor() if db is None else txn.cursor(db=db)
    more = cursor.set_range(prefix)
    while more:
        key = bytes(cursor.key())
        if not key.startswith(prefix):
            return
        yield key, bytes(cursor.value())
        more = cursor.next()


def count_prefix(txn: Any, prefix: bytes, db: Any = None) -> int:
    """How many keys of `db` (the transaction's own by default) start with `prefix`."""
    return sum(1 for _ in prefixed(txn, prefix, db))


def delete_prefix(txn: Any, db: Any, prefix: bytes) -> int:
    """Delete every key starting with `prefix` from `db`; the count deleted."""
    cursor = txn.cursor(db=db)
    count = 0
    if cursor.set_range(prefix):
        while cursor.key().startswith(prefix):
            cursor.delete()  # moves to the next record (b"" past the last one)
            count += 1
    return count
