"""XEP-0049 private XML storage: per (account, namespace), the serialized child elements.

Database "private": key `domain NUL local NUL namespace`, value the XML of the elements the
client stored in that namespace (one or more, concatenated).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .account_data import account_prefix, count_prefix, register_purge
from .lmdb_store import DatabaseStore, Storage
from .xml_check import check_elements

DATABASE = "private"


class TooManyNamespaces(Exception):
    """The account would keep more namespaces than it may."""


class PrivateStore(DatabaseStore):
    """`setting_many` is a change to commit (`now` or `later`)."""

    def __init__(self, storage: Storage) -> None:
        super().__init__(storage, DATABASE)

    def get(self, domain: str, local: str, namespace: str) -> bytes | None:
        key = account_prefix(domain, local) + namespace.encode()
        with self.storage.env.begin(db=self._db) as txn:
            raw = txn.get(key)
        if raw is None:
            return None
        # Every element stored under a namespace is of that namespace (XEP-0049 §2).
        return self.storage.decode(
            DATABASE, key, raw, lambda raw: check_elements(raw, namespace=namespace)
        )

    def setting_many(
        self, domain: str, local: str, fragments: dict[str, bytes], max_namespaces: int
    ) -> Callable[[Any], None]:
        """Replace the stored XML of each namespace in `fragments`, in one transaction;
        TooManyNamespaces (and nothing written) if the account would then keep more than
        `max_namespaces`."""
        prefix = account_prefix(domain, local)

        def replace(txn: Any) -> None:
            new = [ns for ns in fragments if txn.get(prefix + ns.encode()) is None]
            if new and count_prefix(txn, prefix) + len(new) > max_namespaces:
                raise TooManyNamespaces(f"{local}@{domain}")
            for namespace, xml in fragments.items():
                txn.put(prefix + namespace.encode(), xml)

        return replace


register_purge(DATABASE)
