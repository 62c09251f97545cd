"""XEP-0357 push registrations: per account, the app servers (a JID and a node) to notify, with
the publish-options form each one gave.

Database "push": key `domain NUL local NUL jid NUL node`, value the resource that enabled it,
NUL, then the XML of the publish-options data form the client sent with `<enable/>` (nothing
when it sent none).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .account_data import account_prefix, count_prefix, prefixed, register_purge
from .lmdb_store import DatabaseStore, Storage
from .xml_check import check_elements

DATABASE = "push"


class TooManyRegistrations(Exception):
    """The account would keep more registrations than it may."""


def _check_form(raw: bytes) -> None:
    if raw:
        check_elements(raw, namespace="jabber:x:data")


class PushStore(DatabaseStore):
    """Registrations; `enabling` and `disabling` are changes to commit (`now` or `later`)."""

    def __init__(self, storage: Storage) -> None:
        super().__init__(storage, DATABASE)

    @staticmethod
    def _key(domain: str, local: str, jid: str, node: str) -> bytes:
        return account_prefix(domain, local) + f"{jid}\0{node}".encode()

    def any(self) -> bool:
        """Whether any account has a registration."""
        with self.storage.env.begin(db=self._db) as txn:
            return bool(txn.cursor().first())

    def registrations(self, domain: str, local: str) -> list[tuple[str, str, str, bytes]]:
        """(app server JID, node, resource that enabled it, publish-options XML) of each
        registration."""
        prefix = account_prefix(domain, local)
        with self.storage.env.begin(db=self._db) as txn:
            records = list(prefixed(txn, prefix))
        found: list[tuple[str, str, str, bytes]] = []
        # Decoded once the read has ended: a corrupt one is moved to quarantine (a write).
        for key, raw in records:
            value = self.storage.decode(DATABASE, key, raw, _decoded)
            if value is not None:
                jid, _, node = key[len(prefix) :].decode().partition("\0")
                found.append((jid, node, *value))
        return found

    def enabling(
        self, domain: str, local: str, jid: str, node: str, resource: str, form: bytes, limit: int
    ) -> Callable[[Any], None]:
        """Add or replace a registration; TooManyRegistrations (nothing written) when the
        account would then keep more than `limit`."""
        key = self._key(domain, local, jid, node)
        prefix = account_prefix(domain, local)

        def work(txn: Any) -> None:
            if txn.get(key) is None and count_prefix(txn, prefix) >= limit:
                raise TooManyRegistrations(f"{local}@{domain}")
            txn.put(key, resource.encode() + b"\0" + form)

        return work

    def disabling(
        self, domain: str, local: str, jid: str, node: str | None
    ) -> Callable[[Any], int]:
        """Remove the registration of (jid, node), or every one of `jid` when node is None;
        the work returns how many went."""
        if node is not None:
            key = self._key(domain, local, jid, node)
            return lambda txn: 1 if txn.delete(key) else 0
        every_node = account_prefix(domain, local) + f"{jid}\0".encode()

        def work(txn: Any) -> int:
            cursor = txn.cursor()
            count = 0
            if cursor.set_range(every_node):
                while bytes(cursor.key()).startswith(every_node):
                    cursor.delete()
                    count += 1
            return count

        return work


def _decoded(raw: bytes) -> tuple[str, bytes]:
    resource, separator, form = raw.partition(b"\0")
    if not separator:
        raise ValueError("no resource")
    _check_form(form)
    return resource.decode(), form


register_purge(DATABASE)
