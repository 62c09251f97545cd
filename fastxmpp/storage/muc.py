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

from collections.abc import Callable
from typing import Any, TypeVar

import msgpack

from .account_data import register_purge
from .lmdb_store import CorruptRecord, Storage, expect, unpack

DATABASE = "muc"
AFFILIATIONS = ("owner", "admin", "member", "outcast")
T = TypeVar("T")


def room_key(service: str, room: str) -> bytes:
    return f"{service}\0{room}".encode()


class MucStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._db = storage.database(DATABASE)

    def rooms(self, service: str, load: Callable[[str, dict[str, Any]], T]) -> list[tuple[str, T]]:
        """(room name, `load(name, record)`) of every stored room of `service`. A record
        that does not decode, or that `load` refuses (raising), is quarantined: the room
        is not there."""
        prefix = f"{service}\0".encode()
        with self.storage.env.begin(db=self._db) as txn:
            cursor = txn.cursor()
            found = cursor.set_range(prefix)
            records = []
            while found and bytes(cursor.key()).startswith(prefix):
                records.append((bytes(cursor.key()), bytes(cursor.value())))
                found = cursor.next()
        rooms = []
        for key, raw in records:
            name = key[len(prefix) :]

            def decode(raw: bytes, name: bytes = name) -> tuple[str, T]:
                text = name.decode()
                return text, load(text, _decode(raw))

            room = self.storage.decode(DATABASE, key, raw, decode)
            if room is not None:
                rooms.append(room)
        return rooms

    def save(self, service: str, room: str, record: dict[str, Any]) -> None:
        """Replace a room's record (StorageFull when the disk is full, nothing written)."""
        data = msgpack.packb(record)
        self.storage.write(lambda txn: txn.put(room_key(service, room), data), db=self._db)

    def delete(self, service: str, room: str) -> None:
        self.storage.write(lambda txn: txn.delete(room_key(service, room)), db=self._db)


def _decode(raw: bytes) -> dict[str, Any]:
    """The record as `save` stored it; CorruptRecord when it has another shape."""
    record = expect(unpack(raw), dict, "room")
    for name, value in expect(record.get("config", {}), dict, "room configuration").items():
        expect(name, str, "room configuration field")
        expect(value, (bool, int, float, str), f"room configuration {name}")
    for bare, held in expect(record.get("affiliations", {}), dict, "affiliations").items():
        expect(bare, str, "affiliated JID")
        if held not in AFFILIATIONS:
            raise CorruptRecord(f"affiliation {held!r:.40}")
    for bare, nick in expect(record.get("nicks", {}), dict, "reserved nicknames").items():
        expect(bare, str, "JID of a reserved nickname")
        expect(nick, str, "reserved nickname")
    subject = expect(record.get("subject"), (list, type(None)), "subject")
    if subject is not None and (len(subject) != 2 or not all(isinstance(s, str) for s in subject)):
        raise CorruptRecord("subject")
    return record


def purge_account(txn: Any, db: Any, domain: str, local: str) -> None:
    """Drop the account's affiliations and reserved nicknames from every stored room."""
    bare = f"{local}@{domain}"
    changed = []
    cursor = txn.cursor(db=db)
    for key, value in cursor:
        try:
            record = _decode(bytes(value))
        except Exception:  # a corrupt room: quarantined when loaded, nothing to purge
            continue
        gone = record.get("affiliations", {}).pop(bare, None)
        gone = record.get("nicks", {}).pop(bare, None) or gone
        if gone is not None:
            changed.append((bytes(key), msgpack.packb(record)))
    for key, value in changed:
        txn.put(key, value, db=db)


register_purge(DATABASE, purge_account)
