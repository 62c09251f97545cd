"""XEP-0054 vcard-temp: one vCard per account, as the XML the account last stored.

Database "vcard": key `domain NUL local NUL` (the account prefix itself), value the serialized
`<vCard xmlns='vcard-temp'>` element, unknown children included.
"""

from __future__ import annotations

from typing import Any

from .account_data import account_prefix, register_purge
from .lmdb_store import Storage
from .xml_check import check_elements

DATABASE = "vcard"


class VCardStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._db = storage.database(DATABASE)

    def get(self, domain: str, local: str) -> bytes | None:
        key = account_prefix(domain, local)
        with self.storage.env.begin(db=self._db) as txn:
            raw = txn.get(key)
        return None if raw is None else self.storage.decode(DATABASE, key, raw, _decode)

    def put(self, domain: str, local: str, xml: bytes) -> None:
        """Replace the account's vCard (StorageFull when the disk is full)."""

        def replace(txn: Any) -> None:
            txn.put(account_prefix(domain, local), xml)

        self.storage.write(replace, db=self._db)

    def delete(self, domain: str, local: str) -> None:
        def remove(txn: Any) -> None:
            txn.delete(account_prefix(domain, local))

        self.storage.write(remove, db=self._db)


def _decode(raw: bytes) -> bytes:
    check_elements(raw, ("{vcard-temp}vCard",), most=1)
    return raw


register_purge(DATABASE)
