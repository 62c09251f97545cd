"""Accounts: salted SCRAM credentials per (domain, localpart), never the password itself.

Each record (msgpack, in the "accounts" database, key `domain NUL localpart`) holds, for both
SCRAM-SHA-1 and SCRAM-SHA-256, what RFC 5802 §3 lets a server keep: the salt, StoredKey,
ServerKey and iteration count; and the creation time.
"""

from __future__ import annotations

import builtins
import hmac
import time
from typing import Any

import msgpack
from scramp import ScramException, ScramMechanism

from .account_data import purge_account
from .lmdb_store import Storage

DATABASE = "accounts"
MECHANISMS = ("SCRAM-SHA-1", "SCRAM-SHA-256")
# SCRAM-SHA-256 credentials also serve PLAIN: the password is checked by recomputing them.
_PLAIN_MECHANISM = "SCRAM-SHA-256"

ScramAuthInfo = tuple[bytes, bytes, bytes, int]  # salt, StoredKey, ServerKey, iterations


class AccountError(Exception):
    """Base of the account store's expected failures."""


class AccountExists(AccountError):
    pass


class NoSuchAccount(AccountError):
    pass


class UnusablePassword(AccountError, ValueError):
    """Empty, or refused by SASLprep (RFC 4013)."""


def _key(domain: str, local: str) -> bytes:
    return f"{domain}\0{local}".encode()


class AccountStore:
    """Inputs are already-prepared localparts and domainparts (see fastxmpp.jid)."""

    def __init__(self, storage: Storage, iterations: int = 4096) -> None:
        self.storage = storage
        self.iterations = iterations
        self._db = storage.database(DATABASE)
        self._mechanisms = {name: ScramMechanism(name) for name in MECHANISMS}

    def _credentials(self, password: str) -> dict[str, list[Any]]:
        if not password:
            raise UnusablePassword("the password must not be empty")
        try:
            return {
                name: list(mechanism.make_auth_info(password, iteration_count=self.iterations))
                for name, mechanism in self._mechanisms.items()
            }
        except ScramException as exc:
            # SASLprep (RFC 4013) refused the password, e.g. control characters.
            raise UnusablePassword(f"unusable password: {exc}") from None

    def _read(self, domain: str, local: str) -> dict[str, Any] | None:
        with self.storage.env.begin(db=self._db) as txn:
            raw = txn.get(_key(domain, local))
        return None if raw is None else msgpack.unpackb(raw)

    def create(self, domain: str, local: str, password: str) -> None:
        # Hash before opening the write transaction: PBKDF2 is slow, the write lock is shared.
        record = {"scram": self._credentials(password), "created": int(time.time())}

        def put(txn: Any) -> None:
            if not txn.put(_key(domain, local), msgpack.packb(record), overwrite=False):
                raise AccountExists(f"account {local}@{domain} already exists")

        self.storage.write(put, db=self._db)

    def set_password(self, domain: str, local: str, password: str) -> None:
        credentials = self._credentials(password)
        key = _key(domain, local)

        def update(txn: Any) -> None:
            raw = txn.get(key)
            if raw is None:
                raise NoSuchAccount(f"no account {local}@{domain}")
            record = msgpack.unpackb(raw)
            record["scram"] = credentials
            txn.put(key, msgpack.packb(record))

        self.storage.write(update, db=self._db)

    def delete(self, domain: str, local: str) -> None:
        """Delete the account and everything stored for it, in one transaction."""

        def remove(txn: Any) -> None:
            if not txn.delete(_key(domain, local), db=self._db):
                raise NoSuchAccount(f"no account {local}@{domain}")
            purge_account(self.storage, txn, domain, local)

        self.storage.write(remove)

    def exists(self, domain: str, local: str) -> bool:
        with self.storage.env.begin(db=self._db) as txn:
            return txn.get(_key(domain, local)) is not None

    def scram_auth_info(self, domain: str, local: str, mechanism: str) -> ScramAuthInfo | None:
        """What scramp's server-side `auth_fn` returns, or None for an unknown account."""
        record = self._read(domain, local)
        if record is None or mechanism not in record["scram"]:
            return None
        salt, stored_key, server_key, iterations = record["scram"][mechanism]
        return salt, stored_key, server_key, iterations

    def check_password(self, domain: str, local: str, password: str) -> bool:
        """For SASL PLAIN (RFC 4616): derive the StoredKey from the offered password with the
        stored salt and iteration count, and compare in constant time."""
        info = self.scram_auth_info(domain, local, _PLAIN_MECHANISM)
        if info is None or not password:
            return False
        salt, stored_key, _, iterations = info
        try:
            _, candidate, _, _ = self._mechanisms[_PLAIN_MECHANISM].make_auth_info(
                password, iteration_count=iterations, salt=salt
            )
        except ScramException:
            return False
        return hmac.compare_digest(candidate, stored_key)

    def list(self, domain: str | None = None) -> builtins.list[tuple[str, str]]:
        """(domain, localpart) pairs, sorted; only those of `domain` when given."""
        prefix = b"" if domain is None else f"{domain}\0".encode()
        accounts = []
        with self.storage.env.begin(db=self._db) as txn:
            cursor = txn.cursor()
            found = cursor.set_range(prefix)
            while found:
                key = bytes(cursor.key())
                if not key.startswith(prefix):
                    break
                account_domain, _, local = key.decode().partition("\0")
                accounts.append((account_domain, local))
                found = cursor.next()
        return sorted(accounts)
