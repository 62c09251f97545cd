"""XEP-0049 private XML storage: per (account, namespace), the serialized child elements.

Database "private": key `domain NUL local NUL namespace`, value the XML of the elements the
client stored in that namespace (one or more, concatenated).
"""

from __future__ import annotations

from typing import Any

import lmdb

from .account_data import delete_prefix, register_purge
from .lmdb_store import Storage

DATABASE = "private"


def _prefix(domain: str, local: str) -> bytes:
    return f"{domain}\0{local}\0".encode()


class PrivateStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._db = storage.database(DATABASE)

    def get(self, domain: str, local: str, namespace: str) -> bytes | None:
        with self.storage.env.begin(db=self._db) as txn:
            raw = txn.get(_prefix(domain, local) + namespace.encode())
        return None if raw is None else bytes(raw)

    def set_many(self, domain: str, local: str, fragments: dict[str, bytes]) -> None:
        """Replace the stored XML of each namespace in `fragments`, in one transaction."""
        prefix = _prefix(domain, local)
        with self.storage.env.begin(db=self._db, write=True) as txn:
            for namespace, xml in fragments.items():
                txn.put(prefix + namespace.encode(), xml)


def _purge(storage: Storage, txn: Any, domain: str, local: str) -> None:
    # Opened inside the caller's write transaction: Storage.database would start a second
    # one and wait for the first forever (the CLI's deluser has not opened this db yet).
    try:
        db = storage.env.open_db(DATABASE.encode(), txn=txn, create=False)
    except lmdb.NotFoundError:
        return
    delete_prefix(txn, db, _prefix(domain, local))


register_purge(DATABASE, _purge)
