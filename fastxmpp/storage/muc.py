"""XEP-0045 persistent rooms: configuration, affiliations, reserved nicknames and subject.

Database "muc": key `service NUL room`, value a msgpack map
`{"config": {...}, "affiliations": {bare: affiliation}, "nicks": {bare: nick},
"subject": [text, nick] | None}`. Occupants and history are never stored (they live with
the sessions that make them).

When an account is deleted its affiliations and reserved nicknames go with it, in every
room (the purge below): whoever registers the same name later inherits no ownership, no
membership and no ban.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgpack

from .account_data import register_purge
from .lmdb_store import Storage

DATABASE = "muc"


def room_key(service: str, room: str) -> bytes:
    return f"{service}\0{room}".encode()


class MucStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._db = storage.database(DATABASE)

    def rooms(self, service: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """(room name, record) of every stored room of `service`."""
        prefix = f"{service}\0".encode()
        with self.storage.env.begin(db=self._db) as txn:
            cursor = txn.cursor()
            found = cursor.set_range(prefix)
            records = []
            while found and bytes(cursor.key()).startswith(prefix):
                name = bytes(cursor.key())[len(prefix) :].decode()
                records.append((name, msgpack.unpackb(cursor.value(), strict_map_key=False)))
                found = cursor.next()
        yield from records

    def save(self, service: str, room: str, record: dict[str, Any]) -> None:
        """Replace a room's record (StorageFull when the disk is full, nothing written)."""
        data = msgpack.packb(record)
        self.storage.write(lambda txn: txn.put(room_key(service, room), data), db=self._db)

    def delete(self, service: str, room: str) -> None:
        self.storage.write(lambda txn: txn.delete(room_key(service, room)), db=self._db)


def purge_account(txn: Any, db: Any, domain: str, local: str) -> None:
    """Drop the account's affiliations and reserved nicknames from every stored room."""
    bare = f"{local}@{domain}"
    changed = []
    cursor = txn.cursor(db=db)
    for key, value in cursor:
        record = msgpack.unpackb(value, strict_map_key=False)
        gone = record.get("affiliations", {}).pop(bare, None)
        gone = record.get("nicks", {}).pop(bare, None) or gone
        if gone is not None:
            changed.append((bytes(key), msgpack.packb(record)))
    for key, value in changed:
        txn.put(key, value, db=db)


register_purge(DATABASE, purge_account)
