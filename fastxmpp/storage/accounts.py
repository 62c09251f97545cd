"""Accounts: salted SCRAM credentials per (domain, localpart), never the password itself.

Each record (msgpack, in the "accounts" database, key `domain NUL localpart`) holds, for both
SCRAM-SHA-1 and SCRAM-SHA-256, what RFC 5802 §3 lets a server keep: the salt, StoredKey,
ServerKey and iteration count; the creation time; and `disabled` while an administrator has
disabled it (XEP-0133 §4.3: nobody logs in to it, its data stays).
"""

from __future__ import annotations

import builtins
import hmac
import logging
import time
from typing import Any

import msgpack
from scramp import ScramException, ScramMechanism

from .account_data import purge_account, purge_credential_bound
from .lmdb_store import CorruptRecord, Storage, StorageFull, expect, unpack

log = logging.getLogger("fastxmpp.accounts")

DATABASE = "accounts"
MECHANISMS = ("SCRAM-SHA-1", "SCRAM-SHA-256")
# SCRAM-SHA-256 credentials also serve PLAIN: the password is checked by recomputing them.
_PLAIN_MECHANISM = "SCRAM-SHA-256"

ScramAuthInfo = tuple[bytes, bytes, bytes, int]  # salt, StoredKey, ServerKey, iterations
Credentials = dict[str, list[Any]]  # per mechanism: salt, StoredKey, ServerKey, iterations
# RFC 7677 §4: at least 4096 iterations; ten thousand, as Prosody uses, costs a login about
# 2.5 times as much PBKDF2 (a few milliseconds here, where it runs: on the client for SCRAM,
# on the server only for PLAIN and password changes) and an offline guesser as much.
DEFAULT_ITERATIONS = 10000


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


def exists_in(txn: Any, db: Any, domain: str, local: str) -> bool:
    """Whether the account is there, read in `txn` (a write transaction of another store,
    which must not write for an account that is gone): `db` is the "accounts" database."""
    return txn.get(_key(domain, local), db=db) is not None


class AccountStore:
    """Inputs are already-prepared localparts and domainparts (see fastxmpp.jid)."""

    def __init__(self, storage: Storage, iterations: int = DEFAULT_ITERATIONS) -> None:
        self.storage = storage
        self.iterations = iterations
        self._db = storage.database(DATABASE)
        self._mechanisms = {name: ScramMechanism(name) for name in MECHANISMS}

    def _credentials(self, password: str) -> Credentials:
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
        """The account's record; None when there is none, or it is corrupt (kept in place,
        a copy quarantined: the account still exists, nobody can register its name, and
        nobody can log in to it until `fastxmpp passwd` gives it new credentials)."""
        key = _key(domain, local)
        with self.storage.env.begin(db=self._db) as txn:
            raw = txn.get(key)
        return None if raw is None else self._decode(key, raw)

    def _decode(self, key: bytes, raw: Any) -> dict[str, Any] | None:
        return self.storage.decode(DATABASE, key, raw, _decode, keep=True)

    def credentials_of(self, password: str) -> Credentials:
        """Credentials for every mechanism derived from `password` (UnusablePassword)."""
        return self._credentials(password)

    def create(self, domain: str, local: str, password: str) -> None:
        # Hash before opening the write transaction: PBKDF2 is slow, the write lock is shared.
        self.create_with(domain, local, self._credentials(password))

    def create_with(self, domain: str, local: str, credentials: Credentials) -> None:
        """Create the account with credentials made elsewhere (an import: another server's
        SCRAM credentials, perhaps for SCRAM-SHA-1 only; `rederived` adds the missing
        mechanism at the next login with the password in hand)."""
        record = {"scram": credentials, "created": int(time.time())}

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
            record = self._decode(key, raw) or {"created": int(time.time())}
            record["scram"] = credentials
            txn.put(key, msgpack.packb(record))
            purge_credential_bound(self.storage, txn, domain, local)

        self.storage.write(update, db=self._db)

    def rederived(self, domain: str, local: str, password: str) -> Credentials | None:
        """After `password` was checked (PLAIN): new credentials when the stored ones use
        fewer iterations than configured, else None. Salts are kept nowhere but in the
        account, so the iteration count goes up only when the password is at hand (at a
        PLAIN login or a password change); SCRAM logins never reveal it."""
        record = self._read(domain, local)
        if record is None:
            return None
        counts = [info[3] for info in record["scram"].values()]
        if min(counts) >= self.iterations and set(record["scram"]) >= set(MECHANISMS):
            return None
        return self._credentials(password)

    def verify_password(
        self, domain: str, local: str, password: str
    ) -> tuple[bool, Credentials | None]:
        """`check_password`, and when it holds, `rederived`: one blocking call for a login
        with the password in hand (SASL PLAIN, XEP-0078); store the credentials, if any,
        with `replace_credentials` from the event loop."""
        if not self.check_password(domain, local, password):
            return False, None
        return True, self.rederived(domain, local, password)

    def replace_credentials(self, domain: str, local: str, credentials: Credentials) -> None:
        """Store what `rederived` made, unless the account went away meanwhile. A full disk
        only postpones it to a later login."""
        key = _key(domain, local)

        def update(txn: Any) -> None:
            raw = txn.get(key)
            if raw is None:
                return
            record = self._decode(key, raw)
            if record is None:
                return  # a corrupt record gets new credentials only from `passwd`
            record["scram"] = credentials
            txn.put(key, msgpack.packb(record))

        try:
            self.storage.write(update, db=self._db)
        except StorageFull as exc:
            log.warning("credentials of %s@%s not re-derived: %s", local, domain, exc)

    def delete(self, domain: str, local: str) -> None:
        """Delete the account and everything stored for it, in one transaction."""

        def remove(txn: Any) -> None:
            if not txn.delete(_key(domain, local), db=self._db):
                raise NoSuchAccount(f"no account {local}@{domain}")
            purge_account(self.storage, txn, domain, local)

        self.storage.write(remove)

    def exists(self, domain: str, local: str) -> bool:
        """Whether the account is there (even with a corrupt record)."""
        with self.storage.env.begin(db=self._db) as txn:
            return txn.get(_key(domain, local)) is not None

    def set_disabled(self, domain: str, local: str, disabled: bool) -> None:
        """Disable the account (XEP-0133 §4.3: no login, by any mechanism, until re-enabled;
        its data stays) or re-enable it. Disabling also ends its FAST tokens (XEP-0484), as a
        password change does."""
        key = _key(domain, local)

        def update(txn: Any) -> None:
            raw = txn.get(key)
            if raw is None:
                raise NoSuchAccount(f"no account {local}@{domain}")
            record = self._decode(key, raw)
            if record is None:
                return  # corrupt: nobody logs in to it anyway (`_read`)
            if disabled:
                record["disabled"] = True
                purge_credential_bound(self.storage, txn, domain, local)
            else:
                record.pop("disabled", None)
            txn.put(key, msgpack.packb(record))

        self.storage.write(update, db=self._db)

    def disabled(self, domain: str) -> builtins.list[str]:
        """The localparts of `domain`'s disabled accounts, sorted."""
        prefix = f"{domain}\0".encode()
        found = []
        # Decoded after the read transaction: a corrupt record is quarantined (a write).
        for key, raw in self._scan(prefix, values=True):
            record = self._decode(key, raw)
            if record is not None and record.get("disabled"):
                found.append(key[len(prefix) :].decode())
        return sorted(found)

    def _scan(self, prefix: bytes, values: bool) -> builtins.list[tuple[bytes, bytes]]:
        """(key, raw record, or b"" without `values`) of every account whose key starts with
        `prefix`, in key order."""
        found = []
        with self.storage.env.begin(db=self._db) as txn:
            cursor = txn.cursor()
            more = cursor.set_range(prefix)
            while more:
                key = bytes(cursor.key())
                if not key.startswith(prefix):
                    break
                found.append((key, bytes(cursor.value()) if values else b""))
                more = cursor.next()
        return found

    def is_disabled(self, domain: str, local: str) -> bool:
        record = self._read(domain, local)
        return record is not None and bool(record.get("disabled"))

    def scram_auth_info(
        self, domain: str, local: str, mechanism: str, *, disabled_too: bool = False
    ) -> ScramAuthInfo | None:
        """What scramp's server-side `auth_fn` returns, or None for an unknown or (unless
        `disabled_too`: to tell a right password for it, RFC 6120 §6.5.1) disabled account
        (every password mechanism, PLAIN and XEP-0078 included, asks here)."""
        info, disabled = self.scram_credentials(domain, local, mechanism)
        return None if disabled and not disabled_too else info

    def scram_credentials(
        self, domain: str, local: str, mechanism: str
    ) -> tuple[ScramAuthInfo | None, bool]:
        """`scram_auth_info` whether disabled or not, and whether the account is disabled,
        from one read (a SCRAM exchange goes on for a disabled account: only a right proof
        hears that it is)."""
        record = self._read(domain, local)
        if record is None or mechanism not in record["scram"]:
            return None, False
        salt, stored_key, server_key, iterations = record["scram"][mechanism]
        return (salt, stored_key, server_key, iterations), bool(record.get("disabled"))

    def check_password(
        self, domain: str, local: str, password: str, *, disabled_too: bool = False
    ) -> bool:
        """For SASL PLAIN (RFC 4616): derive the StoredKey from the offered password with the
        stored salt and iteration count, and compare in constant time."""
        mechanism = _PLAIN_MECHANISM
        info = self.scram_auth_info(domain, local, mechanism, disabled_too=disabled_too)
        if info is None:
            # An imported account may have SCRAM-SHA-1 credentials only (portable.py).
            mechanism = "SCRAM-SHA-1"
            info = self.scram_auth_info(domain, local, mechanism, disabled_too=disabled_too)
        if info is None or not password:
            return False
        salt, stored_key, _, iterations = info
        try:
            _, candidate, _, _ = self._mechanisms[mechanism].make_auth_info(
                password, iteration_count=iterations, salt=salt
            )
        except ScramException:
            return False
        return hmac.compare_digest(candidate, stored_key)

    def stored_credentials(self, domain: str, local: str) -> Credentials:
        """The account's SCRAM credentials per mechanism ({} for none or a corrupt record)."""
        record = self._read(domain, local)
        return {} if record is None else dict(record["scram"])

    def count(self) -> int:
        """How many accounts there are, every host: the database's entry count, no scan."""
        with self.storage.env.begin() as txn:
            return int(txn.stat(self._db)["entries"])

    def list(self, domain: str | None = None) -> builtins.list[tuple[str, str]]:
        """(domain, localpart) pairs, sorted; only those of `domain` when given."""
        prefix = b"" if domain is None else f"{domain}\0".encode()
        accounts = []
        for key, _ in self._scan(prefix, values=False):
            account_domain, _, local = key.decode().partition("\0")
            accounts.append((account_domain, local))
        return sorted(accounts)


def _decode(raw: bytes) -> dict[str, Any]:
    record = expect(unpack(raw), dict, "account")
    for mechanism, info in expect(record["scram"], dict, "credentials").items():
        salt, stored_key, server_key, iterations = expect(info, list, f"{mechanism} credentials")
        for part in (salt, stored_key, server_key):
            expect(part, bytes, f"{mechanism} credentials")
        if expect(iterations, int, "iterations") < 1:
            raise CorruptRecord(f"{iterations} iterations")
    return record
