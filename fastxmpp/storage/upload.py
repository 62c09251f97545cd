"""XEP-0363 uploaded files: what is known of each file the upload service holds (the bytes
are files of their own under <data_dir>/upload/files, named by the file's random id).

Database "upload": key `domain NUL local NUL file_id`, value msgpack [filename, size,
content_type, created (Unix time)]: an account's files, for its quota, purged with the
account. Database "upload_files": key `file_id`, value `domain NUL local`: whose a file is,
for serving it. An index entry whose account record is gone (the CLI's deluser purges
records only) reads as no file; the module's sweep removes it and the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from .account_data import account_prefix, register_purge
from .lmdb_store import Storage, expect, unpack

DATABASE = "upload"
INDEX = "upload_files"


@dataclass(frozen=True, slots=True)
class StoredFile:
    file_id: str
    filename: str
    size: int
    content_type: str
    created: float


def _decode(file_id: str) -> Any:
    def decode(raw: bytes) -> StoredFile:
        filename, size, content_type, created = expect(unpack(raw), list, "upload record")
        return StoredFile(
            file_id,
            expect(filename, str, "filename"),
            expect(size, int, "size"),
            expect(content_type, str, "content type"),
            float(expect(created, (int, float), "created")),
        )

    return decode


class UploadStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._db = storage.database(DATABASE)
        self._index = storage.database(INDEX)

    def add(self, domain: str, local: str, stored: StoredFile) -> None:
        record = msgpack.packb([stored.filename, stored.size, stored.content_type, stored.created])
        key = account_prefix(domain, local) + stored.file_id.encode()

        def work(txn: Any) -> None:
            txn.put(key, record, db=self._db)
            txn.put(stored.file_id.encode(), f"{domain}\0{local}".encode(), db=self._index)

        self.storage.write(work)

    def files(self, domain: str, local: str) -> list[StoredFile]:
        """The account's files, oldest first."""
        prefix = account_prefix(domain, local)
        records: list[tuple[bytes, bytes]] = []
        with self.storage.env.begin(db=self._db) as txn:
            cursor = txn.cursor()
            more = cursor.set_range(prefix)
            while more and bytes(cursor.key()).startswith(prefix):
                records.append((bytes(cursor.key()), bytes(cursor.value())))
                more = cursor.next()
        found = []
        for key, raw in records:
            decoded = self.storage.decode(DATABASE, key, raw, _decode(key[len(prefix) :].decode()))
            if decoded is not None:
                found.append(decoded)
        return sorted(found, key=lambda f: f.created)

    def owner(self, file_id: str) -> tuple[str, str] | None:
        """(domain, local) of the account holding `file_id`, from the index."""
        with self.storage.env.begin(db=self._index) as txn:
            raw = txn.get(file_id.encode())
        if raw is None:
            return None
        domain, _, local = bytes(raw).decode().partition("\0")
        return domain, local

    def find(self, file_id: str) -> StoredFile | None:
        """The file's record, None when there is none (or its account's records are gone)."""
        owner = self.owner(file_id)
        if owner is None:
            return None
        key = account_prefix(*owner) + file_id.encode()
        with self.storage.env.begin(db=self._db) as txn:
            raw = txn.get(key)
            data = None if raw is None else bytes(raw)
        if data is None:
            return None
        return self.storage.decode(DATABASE, key, data, _decode(file_id))

    def remove(self, file_id: str) -> None:
        """The file's record and index entry (either may be gone already)."""
        owner = self.owner(file_id)

        def work(txn: Any) -> None:
            if owner is not None:
                txn.delete(account_prefix(*owner) + file_id.encode(), db=self._db)
            txn.delete(file_id.encode(), db=self._index)

        self.storage.write(work)

    def indexed(self) -> list[str]:
        """Every file id in the index."""
        with self.storage.env.begin(db=self._index) as txn:
            return [bytes(key).decode() for key in txn.cursor().iternext(values=False)]


register_purge(DATABASE)
