"""Backups of a data directory: `fastxmpp backup DEST` while the server runs, `fastxmpp
restore SRC` while it is stopped.

A backup is a directory: `db/data.mdb`, LMDB's compacting copy of the environment made inside
one read transaction (a consistent snapshot: every transaction committed before it began, none
after; the server keeps reading and writing meanwhile, LMDB being multi-process), the
`certs/` directory (the self-signed certificates clients have pinned) and `BACKUP.json`
saying what it is. It is written under a temporary name next to DEST and renamed when complete,
so a directory named DEST is always a whole backup.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import lmdb

from .lmdb_store import DB_DIR, SCHEMA_VERSION, Storage, make_private_dir

MANIFEST = "BACKUP.json"
CERTS_DIR = "certs"
DATA_FILE = "data.mdb"


class BackupError(Exception):
    """A backup or restore that cannot be done: the message says why."""


def _fsync_tree(root: Path) -> None:
    """Everything under `root`, and the directories naming it, on disk."""
    for path in sorted(root.rglob("*"), reverse=True):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for directory in (root, root.parent):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def backup(data_dir: Path, destination: Path, version: str) -> dict[str, Any]:
    """Copy the data directory to `destination` (which must not exist); the manifest."""
    if not (data_dir / DB_DIR / DATA_FILE).is_file():
        raise BackupError(f"no fastxmpp data in {data_dir} (no {DB_DIR}/{DATA_FILE})")
    if destination.exists():
        raise BackupError(f"{destination} exists: a backup never overwrites anything")
    partial = destination.with_name(f".{destination.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    make_private_dir(partial / DB_DIR)
    try:
        with Storage(data_dir) as storage:
            # One read transaction: a snapshot of every committed write, while the server
            # goes on committing; compact leaves free pages out.
            storage.env.copy(str(partial / DB_DIR), compact=True)
            entries = storage.env.stat()["entries"]
            schema = storage.schema
        certs = data_dir / CERTS_DIR
        if certs.is_dir():
            shutil.copytree(certs, partial / CERTS_DIR)
        manifest = {
            "format": 1,
            "fastxmpp": version,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source": str(data_dir.resolve()),
            "bytes": (partial / DB_DIR / DATA_FILE).stat().st_size,
            "databases": entries,
            "schema": schema,
        }
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _fsync_tree(partial)
        partial.rename(destination)
        _fsync_tree(destination)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return manifest


def read_manifest(source: Path) -> dict[str, Any]:
    """The manifest of a backup directory, after checking that its database opens."""
    try:
        manifest = json.loads((source / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise BackupError(f"{source} is not a fastxmpp backup (no readable {MANIFEST})") from exc
    database = source / DB_DIR / DATA_FILE
    if manifest.get("format") != 1 or not database.is_file():
        raise BackupError(f"{source} is not a fastxmpp backup this version can restore")
    if manifest.get("schema", SCHEMA_VERSION) > SCHEMA_VERSION:
        raise BackupError(
            f"{source} was made by a newer fastxmpp (storage schema {manifest['schema']}; "
            f"this version reads up to {SCHEMA_VERSION})"
        )
    try:
        # lock=False: reading a backup must not write a lock file into it.
        env = lmdb.open(str(source / DB_DIR), readonly=True, lock=False, max_dbs=64)
    except lmdb.Error as exc:
        raise BackupError(f"{database} is damaged: {exc}") from exc
    env.close()
    return manifest


def restore(source: Path, data_dir: Path) -> Path | None:
    """Put the backup `source` in place as `data_dir`'s data (the caller holds the server
    lock). What was there is moved aside, never deleted: that directory, or None."""
    read_manifest(source)
    make_private_dir(data_dir)
    aside = None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    if (data_dir / DB_DIR).exists() or (data_dir / CERTS_DIR).exists():
        aside = data_dir / f"replaced-{stamp}"
        aside.mkdir(mode=0o700)
        for name in (DB_DIR, CERTS_DIR):
            if (data_dir / name).exists():
                (data_dir / name).rename(aside / name)
    incoming = data_dir / f".restoring-{stamp}"
    make_private_dir(incoming / DB_DIR)
    shutil.copy2(source / DB_DIR / DATA_FILE, incoming / DB_DIR / DATA_FILE)
    if (source / CERTS_DIR).is_dir():
        shutil.copytree(source / CERTS_DIR, incoming / CERTS_DIR)
    _fsync_tree(incoming)
    for name in (DB_DIR, CERTS_DIR):
        if (incoming / name).exists():
            (incoming / name).rename(data_dir / name)
    incoming.rmdir()
    _fsync_tree(data_dir / DB_DIR)
    return aside
