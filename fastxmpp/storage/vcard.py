"""XEP-0054 vcard-temp: one vCard per account, as the XML the account last stored.

Database "vcard": key `domain NUL local NUL` (the account prefix itself), value the serialized
`<vCard xmlns='vcard-temp'>` element, unknown children included.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .account_data import account_prefix, register_purge
from .lmdb_store import DatabaseStore, Storage
from .xml_check import check_elements

DATABASE = "vcard"


class VCardStore(DatabaseStore):
    """`replacing` is a change to commit (`now` or `later`)."""

    def __init__(self, storage: Storage) -> None:
        super().__init__(storage, DATABASE)

    def get(self, domain: str, local: str) -> bytes | None:
        key = account_prefix(domain, local)
        with self.storage.env.begin(db=self._db) as txn:
            raw = txn.get(key)
        return None if raw is None else self.storage.decode(DATABASE, key, raw, _decode)

    def put(self, domain: str, local: str, xml: bytes) -> None:
        """Replace the account's vCard now (StorageFull when the disk is full)."""
        self.now(self.replacing(domain, local, xml))

    def delete(self, domain: str, local: str) -> None:
        self.now(self.replacing(domain, local, None))

    def replacing(self, domain: str, local: str, xml: bytes | None) -> Callable[[Any], None]:
        """Replace the account's vCard with `xml` (None: remove it)."""
        key = account_prefix(domain, local)

        def replace(txn: Any) -> None:
            if xml is None:
                txn.delete(key)
            else:
                txn.put(key, xml)

        return replace


def _decode(raw: bytes) -> bytes:
    check_elements(raw, ("{vcard-temp}vCard",), most=1)
    return raw


register_purge(DATABASE)
