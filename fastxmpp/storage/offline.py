"""Offline messages (RFC 6121 §8.5.2.2.1, XEP-0160): per account, in arrival order.

Database "offline": key `domain NUL local NUL <8-byte big-endian sequence>`, value the message
bytes ready to deliver (the server's XEP-0203 <delay/> already inside). Sequences only grow
and messages leave from the front, so an account's keys are contiguous and its queue length
is `last - first + 1` without a scan.
"""

from __future__ import annotations

import struct
from collections.abc import Collection
from typing import Any

from .account_data import account_prefix, register_purge
from .lmdb_store import Storage
from .xml_check import check_elements

DATABASE = "offline"
_SEQUENCE = struct.Struct(">Q")


class OfflineQueueFull(Exception):
    """The account already has its quota of stored messages."""


def _bounds(cursor: Any, prefix: bytes) -> tuple[int, int] | None:
    """(first, last) sequence of the account whose keys start with `prefix`, or None."""
    if not cursor.set_range(prefix) or not bytes(cursor.key()).startswith(prefix):
        return None
    first = _SEQUENCE.unpack(bytes(cursor.key())[len(prefix) :])[0]
    # The first key after every key of this prefix ('\0' + 1 is '\1'), then one step back.
    after = prefix[:-1] + b"\x01"
    if cursor.set_range(after):
        cursor.prev()
    else:
        cursor.last()
    last = _SEQUENCE.unpack(bytes(cursor.key())[len(prefix) :])[0]
    return first, last


class OfflineStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._db = storage.database(DATABASE)

    def push(self, domain: str, local: str, data: bytes, limit: int) -> None:
        """Append a message, committed (durable) when this returns; OfflineQueueFull when the
        account holds `limit` messages already, StorageFull when the disk is."""
        prefix = account_prefix(domain, local)

        def append(txn: Any) -> None:
            bounds = _bounds(txn.cursor(), prefix)
            if bounds is None:
                sequence = 0
            else:
                first, last = bounds
                if last - first + 1 >= limit:
                    raise OfflineQueueFull(f"{local}@{domain}")
                sequence = last + 1
            txn.put(prefix + _SEQUENCE.pack(sequence), data)

        self.storage.write(append, db=self._db)

    def push_many(self, domain: str, local: str, messages: list[bytes], limit: int) -> int:
        """Append messages in one transaction (one commit for all), oldest first, as many as
        fit under `limit`; how many were stored. StorageFull when the disk is full."""
        prefix = account_prefix(domain, local)
        stored = 0

        def append(txn: Any) -> None:
            nonlocal stored
            stored = 0  # Storage.write may run this again after growing the map
            bounds = _bounds(txn.cursor(), prefix)
            held, sequence = (
                (0, 0) if bounds is None else (bounds[1] - bounds[0] + 1, bounds[1] + 1)
            )
            for data in messages:
                if held >= limit:
                    break
                txn.put(prefix + _SEQUENCE.pack(sequence), data)
                sequence += 1
                held += 1
                stored += 1

        self.storage.write(append, db=self._db)
        return stored

    def push_keyed(
        self, batches: dict[tuple[str, str], list[bytes]], limit: int
    ) -> dict[tuple[str, str], list[bytes]]:
        """Append each account's messages, all accounts in one transaction (one commit),
        as many of each as fit under `limit`; the keys of those stored, by account, in
        order. StorageFull when the disk is full (then nothing is stored)."""
        keys: dict[tuple[str, str], list[bytes]] = {}

        def append(txn: Any) -> None:
            keys.clear()  # Storage.write may run this again after growing the map
            for (domain, local), messages in batches.items():
                prefix = account_prefix(domain, local)
                bounds = _bounds(txn.cursor(), prefix)
                held, sequence = (
                    (0, 0) if bounds is None else (bounds[1] - bounds[0] + 1, bounds[1] + 1)
                )
                stored = keys[domain, local] = []
                for data in messages[: max(0, limit - held)]:
                    key = prefix + _SEQUENCE.pack(sequence)
                    txn.put(key, data)
                    stored.append(key)
                    sequence += 1

        self.storage.write(append, db=self._db)
        return keys

    def peek(
        self,
        domain: str,
        local: str,
        limit: int | None = None,
        after: bytes | None = None,
        skip: Collection[bytes] = (),
    ) -> list[tuple[bytes, bytes]]:
        """(key, message) of the oldest `limit` stored messages (all without a limit), oldest
        first; only those stored after the key `after` if given, none of the keys in `skip`.
        A message that is not one is quarantined, and the next one is read instead."""
        prefix = account_prefix(domain, local)
        corrupt: set[bytes] = set()  # skipped (they stay if quarantine could not move them)
        while True:
            with self.storage.env.begin(db=self._db) as txn:
                stored: list[tuple[bytes, bytes]] = []
                cursor = txn.cursor()
                found = cursor.set_range(prefix if after is None else after)
                while found and (limit is None or len(stored) < limit):
                    key = bytes(cursor.key())
                    if not key.startswith(prefix):
                        break
                    if key != after and key not in corrupt and key not in skip:
                        stored.append((key, bytes(cursor.value())))
                    found = cursor.next()
            messages = []
            for key, raw in stored:
                data = self.storage.decode(DATABASE, key, raw, _decode)
                if data is None:
                    corrupt.add(key)
                else:
                    messages.append((key, data))
            # Read on past a corrupt message: a short batch means the queue is empty.
            if len(messages) == len(stored):
                return messages

    def remove(self, keys: list[bytes]) -> None:
        """Delete delivered messages, in one transaction."""

        def delete(txn: Any) -> None:
            for key in keys:
                txn.delete(key)

        self.storage.write(delete, db=self._db)

    def count(self, domain: str, local: str) -> int:
        with self.storage.env.begin(db=self._db) as txn:
            bounds = _bounds(txn.cursor(), account_prefix(domain, local))
        return 0 if bounds is None else bounds[1] - bounds[0] + 1


def _decode(raw: bytes) -> bytes:
    return check_elements(raw, ("{jabber:client}message",), most=1)


register_purge(DATABASE)
