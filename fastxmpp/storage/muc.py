"""XEP-0045 persistent rooms: configuration, affiliations, reserved nicknames and subject.

Database "muc": key `service NUL room`, value a msgpack map
`{"config": {...}, "affiliations": {bare: affiliation}, "nicks": {bare: nick},
"subject": [text, nick] | None}`. Occupants and history are never stored (they live with
the sessions that make them). A room's record may also hold "subject_by": the XEP-0421
occupant id of whoever set the subject (an older server ignores the key), and "vcard": the
room's XEP-0486 vCard, the serialized `<vCard xmlns='vcard-temp'>` element (absent: none).

The secret the XEP-0421 occupant ids are made with (modules/muc/occupant_id.py) is in the
"meta" database, key OCCUPANT_ID_SECRET: 32 random bytes, made once, never changed (every
occupant id in every room would change with it).

When an account is deleted its affiliations and reserved nicknames go with it, in every
room (the purge below): whoever registers the same name later inherits no ownership, no
membership and no ban.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any, TypeVar

import msgpack

from .account_data import register_purge
from .lmdb_store import META_DB, CorruptRecord, Storage, expect, unpack
from .xml_check import check_elements

log = logging.getLogger("fastxmpp.storage.muc")
DATABASE = "muc"
OCCUPANT_ID_SECRET = b"muc-occupant-id-secret"
SECRET_BYTES = 32
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

    def occupant_id_secret(self) -> bytes:
        """The service secret of XEP-0421 §4.1, made (and committed) the first time it is
        asked for. Read again in the write transaction that makes it: if another process
        (the CLI) made one meanwhile, that one is the secret."""
        meta = self.storage.database(META_DB)
        with self.storage.env.begin(db=meta) as txn:
            stored = _secret(txn.get(OCCUPANT_ID_SECRET))
        if stored is not None:
            return stored

        def read_or_make(txn: Any) -> bytes:
            raw = txn.get(OCCUPANT_ID_SECRET)
            stored = _secret(raw)
            if stored is not None:
                return stored
            if raw is not None:
                log.error("the occupant id secret is damaged: a new one changes every id")
            made = secrets.token_bytes(SECRET_BYTES)
            txn.put(OCCUPANT_ID_SECRET, made)
            return made

        secret: bytes = self.storage.write(read_or_make, db=meta)
        return secret

    def save(self, service: str, room: str, record: dict[str, Any]) -> None:
        """Replace a room's record (StorageFull when the disk is full, nothing written)."""
        data = msgpack.packb(record)
        self.storage.write(lambda txn: txn.put(room_key(service, room), data), db=self._db)

    def delete(self, service: str, room: str) -> None:
        self.storage.write(lambda txn: txn.delete(room_key(service, room)), db=self._db)


def _secret(raw: Any) -> bytes | None:
    return None if raw is None or len(raw) != SECRET_BYTES else bytes(raw)


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
    expect(record.get("subject_by", ""), str, "occupant id of the subject's author")
    vcard = record.get("vcard")
    if vcard is not None:
        # handed to whoever asks as it is: one well-formed <vCard/> (storage/vcard.py)
        check_elements(expect(vcard, bytes, "room vCard"), ("{vcard-temp}vCard",), most=1)
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
