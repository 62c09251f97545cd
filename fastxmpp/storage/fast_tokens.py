"""XEP-0484 FAST tokens: per (account, client), what checking a token needs, not the token.

Database "fast_tokens": key `domain NUL local NUL sha256(user-agent id)` (a key of bounded
length whatever the id), value (msgpack)
`{"new": slot | None, "current": slot | None}`, the two slots of XEP-0484 §"Server-side
handling of multiple active tokens". A slot is `[mechanism, sha256(initiator), responder,
issued, expiry, last count]`: for the HT mechanisms (draft-schmaus-kitten-sasl-ht) the client proves
the token with `initiator = HMAC(token, "Initiator")` and the server answers with
`responder = HMAC(token, "Responder")`. Only a hash of the initiator value is stored, so a
copy of the database logs nobody in; the token itself is never stored.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

import msgpack

from .account_data import account_prefix, register_credential_bound, register_purge
from .lmdb_store import Storage, unpack

DATABASE = "fast_tokens"
# Clients (user-agent ids) with a token per account: a client that knows the password cannot
# make the store grow without bound; the slots expiring first give way.
MAX_CLIENTS_PER_ACCOUNT = 32
HT_DIGESTS = {"HT-SHA-256-NONE": hashlib.sha256, "HT-SHA-512-NONE": hashlib.sha512}


def ht_values(mechanism: str, token: bytes) -> tuple[bytes, bytes]:
    """The initiator and responder values of an HT mechanism for `token`."""
    digest = HT_DIGESTS[mechanism]
    return (
        hmac.new(token, b"Initiator", digest).digest(),
        hmac.new(token, b"Responder", digest).digest(),
    )


@dataclass(frozen=True, slots=True)
class Verified:
    responder: bytes  # the mechanism's additional data for <success/>
    expiry: float  # of the token used
    rotate: bool  # past half its lifetime: a new one goes with <success/> (§token-rotation)


class FastTokenStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._db = storage.database(DATABASE)

    def issue(
        self, domain: str, local: str, client: str, mechanism: str, lifetime: float
    ) -> tuple[str, float]:
        """A new token in the client's 'new' slot (an unused one there is replaced,
        §token-rotation); (token, expiry)."""
        token = secrets.token_urlsafe(32)
        initiator, responder = ht_values(mechanism, token.encode())
        issued = time.time()
        expiry = issued + lifetime
        slot = [mechanism, hashlib.sha256(initiator).digest(), responder, issued, expiry, 0]
        prefix = account_prefix(domain, local)
        key = prefix + _client_key(client)

        def put(txn: Any) -> None:
            record = self._record(txn, key) or {"new": None, "current": None}
            record["new"] = slot
            txn.put(key, msgpack.packb(record))
            self._bound_clients(txn, prefix, key)

        self.storage.write(put, db=self._db)
        return token, expiry

    def verify(
        self,
        domain: str,
        local: str,
        client: str,
        mechanism: str,
        initiator: bytes,
        count: int | None,
        invalidate: bool,
    ) -> Verified | str:
        """Check `initiator` against the client's slots ('new' first); the outcome, or the
        SASL condition of the failure. Read first: a write transaction (and its sync) only
        when a slot changes (the 'new' token used, a count, an invalidation)."""
        key = account_prefix(domain, local) + _client_key(client)
        offered = hashlib.sha256(initiator).digest()
        with self.storage.env.begin(db=self._db) as txn:
            outcome = self._check(txn, key, mechanism, offered, count, invalidate, write=False)
        if outcome is not None:
            return outcome
        return self.storage.write(
            lambda txn: self._check(txn, key, mechanism, offered, count, invalidate, write=True),
            db=self._db,
        )

    def _check(
        self,
        txn: Any,
        key: bytes,
        mechanism: str,
        offered: bytes,
        count: int | None,
        invalidate: bool,
        write: bool,
    ) -> Any:
        """The outcome; None (before `write`) when the record is to change."""
        record = self._record(txn, key)
        if record is None:
            return "credentials-expired"
        now = time.time()
        for name in ("new", "current"):
            slot = record.get(name)
            if slot is None:
                continue
            slot_mechanism, digest, responder, issued, expiry, last_count = slot
            # Compared in constant time whatever else is wrong (XEP-0484 §impl-tokens).
            if not hmac.compare_digest(digest, offered):
                continue
            if expiry <= now:
                return "credentials-expired"
            if slot_mechanism != mechanism:
                # §fast-auth: a token is bound to the mechanism it was issued for.
                return "credentials-expired"
            if count is not None and count <= last_count:
                # §fast-auth: a replayed (0-RTT) authentication.
                return "not-authorized"
            # Past half its lifetime: time for the next one (§token-rotation).
            verified = Verified(responder, expiry, rotate=now >= (issued + expiry) / 2)
            if not (invalidate or count is not None or name == "new"):
                return verified  # nothing changes
            if not write:
                return None
            if invalidate:
                # §invalidation: this client's tokens are gone.
                txn.delete(key)
                return Verified(responder, expiry, rotate=False)
            if count is not None:
                slot[5] = count
            # §impl-tokens: the 'new' token used moves to 'current'; tokens of this client
            # issued before it are no longer valid.
            record["current"] = slot
            if name == "new":
                record["new"] = None
            txn.put(key, msgpack.packb(record))
            return verified
        return "credentials-expired"

    def _record(self, txn: Any, key: bytes) -> dict[str, Any] | None:
        raw = txn.get(key)
        if raw is None:
            return None
        record = self.storage.decode(DATABASE, key, raw, _decode)
        return record if isinstance(record, dict) else None

    def _bound_clients(self, txn: Any, prefix: bytes, keep: bytes) -> None:
        cursor = txn.cursor()
        clients: list[tuple[float, bytes]] = []
        if cursor.set_range(prefix):
            for key in cursor.iternext(values=False):
                if not key.startswith(prefix):
                    break
                record = self._record(txn, bytes(key))
                slots = [s for s in (record or {}).values() if isinstance(s, list)]
                clients.append((max((s[4] for s in slots), default=0.0), bytes(key)))
        clients.sort()
        while len(clients) > MAX_CLIENTS_PER_ACCOUNT:
            _, key = clients.pop(0)
            if key != keep:
                txn.delete(key)


def _client_key(client: str) -> bytes:
    return hashlib.sha256(client.encode()).digest()


def _decode(raw: bytes) -> Any:
    record = unpack(raw)
    if not isinstance(record, dict) or set(record) != {"new", "current"}:
        raise ValueError("a FAST token record is a map of 'new' and 'current'")
    for slot in record.values():
        if slot is not None and not (
            isinstance(slot, list)
            and len(slot) == 6
            and isinstance(slot[0], str)
            and isinstance(slot[1], bytes)
            and isinstance(slot[2], bytes)
            and all(isinstance(v, int | float) for v in slot[3:])
        ):
            raise ValueError("a FAST token slot is [mechanism, digest, responder, times, count]")
    return record


register_purge(DATABASE)
# A password change ends every FAST token of the account (docs/SECURITY.md).
register_credential_bound(DATABASE)
