"""When each account's last resource went away, and the status it left with (XEP-0012 §3).

Database "last": key `domain NUL local`, value msgpack [unix time, status text].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

from . import accounts
from .account_data import register_purge
from .lmdb_store import DatabaseStore, Storage, expect, unpack

DATABASE = "last"


def _key(domain: str, local: str) -> bytes:
    return f"{domain}\0{local}".encode()


class LastActivityStore(DatabaseStore):
    """`recording_logouts` is a change to commit (`now` or `later`)."""

    def __init__(self, storage: Storage) -> None:
        super().__init__(storage, DATABASE)
        self._accounts = storage.database(accounts.DATABASE)

    def record_logout(self, domain: str, local: str, when: float, status: str) -> None:
        self.record_logouts({(domain, local): (when, status)})

    def record_logouts(self, logouts: dict[tuple[str, str], tuple[float, str]]) -> None:
        self.now(self.recording_logouts(logouts))

    def recording_logouts(
        self, logouts: dict[tuple[str, str], tuple[float, str]]
    ) -> Callable[[Any], None]:
        """Many accounts' logouts, (domain, local) -> (unix time, status), in one
        transaction: one commit (one fdatasync) however many there are. An account deleted
        before the transaction gets none (no record outlives its account)."""
        records = [
            (domain, local, _key(domain, local), msgpack.packb(list(value)))
            for (domain, local), value in logouts.items()
        ]

        def work(txn: Any) -> None:
            for domain, local, key, record in records:
                if accounts.exists_in(txn, self._accounts, domain, local):
                    txn.put(key, record)

        return work

    def last_logout(self, domain: str, local: str) -> tuple[float, str] | None:
        """(unix time, status) of the account's last logout; None if it never logged out."""
        key = _key(domain, local)
        with self.storage.env.begin(db=self._db) as txn:
            raw = txn.get(key)
        return None if raw is None else self.storage.decode(DATABASE, key, raw, _decode)


def _decode(raw: bytes) -> tuple[float, str]:
    when, status = expect(unpack(raw), list, "last activity")
    return float(expect(when, (int, float), "logout time")), expect(status, str, "status")


def _purge(txn: Any, db: Any, domain: str, local: str) -> None:
    txn.delete(_key(domain, local), db=db)


register_purge(DATABASE, _purge)
