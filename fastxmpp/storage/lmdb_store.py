"""The data directory: one LMDB environment (`data_dir/db`) shared by every store, and the
`server.lock` file that keeps a second server off the same data."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import importlib
import logging
import os
import pkgutil
import queue
import struct
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import lmdb
import msgpack

from ..errors import drop_tracebacks

log = logging.getLogger("fastxmpp.storage")
T = TypeVar("T")

LOCK_FILE = "server.lock"
DB_DIR = "db"
# The version of the stored formats, kept in the "meta" database. Bump it when a store
# changes how it encodes records, and add the step from the previous version to MIGRATIONS.
# Data from before versioning (round 1) is version 1's format. Version 2 adds the archive's
# persisted id high-water mark (storage/mam.py); version 3 moves the archives' message counts
# into a database of their own (storage/mam.py).
SCHEMA_VERSION = 3
META_DB = "meta"
SCHEMA_KEY = b"schema"
# version -> the step that rewrites version-N data as version N+1, in the open transaction.
MIGRATIONS: dict[int, Callable[[Storage, Any], None]] = {}
# Records that did not decode, moved aside (Storage.decode): key `database NUL key NUL
# <8-byte big-endian microseconds>` (`database NUL # sha256(key) NUL ...` when that would be
# longer than LMDB allows), value msgpack [database, key, raw bytes, reason, time].
QUARANTINE_DB = "quarantine"
_STAMP = struct.Struct(">Q")


def make_private_dir(path: Path) -> None:
    """Create `path` accessible to its owner only (missing parents get the usual mode); an
    existing directory is left as the operator made it."""
    if path.is_dir():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)  # mkdir's mode is filtered through the umask


class StorageFull(Exception):
    """The disk (or the address space for the map) is exhausted: nothing was written."""


class SchemaTooNew(Exception):
    """The data was written by a newer fastxmpp: opening it could misread or damage it."""


class CorruptRecord(ValueError):
    """A stored value is not what its store writes (a decoder's own complaint)."""


def expect(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    """`value` if it is a `kind`; CorruptRecord naming `what` otherwise (for decoders)."""
    if not isinstance(value, kind):
        raise CorruptRecord(f"{what}: {type(value).__name__} {value!r:.40}")
    return value


def unpack(raw: bytes) -> Any:
    """One msgpack value filling all of `raw` (garbage, truncation and trailing bytes
    raise); strings must be UTF-8, maps may have non-string keys only where stores use them."""
    return msgpack.unpackb(raw, strict_map_key=False)


@dataclass(frozen=True)
class Quarantined:
    database: str
    key: bytes
    raw: bytes
    reason: str
    when: float


class MapNeedsGrowth(Exception):
    """A write off the event loop's thread met a full map (or one another process grew).
    LMDB may only remap while no transaction of this process is open, and only the loop's
    thread can know that (its read transactions all end before it returns to the loop): the
    loop grows the map (`GroupCommitWriter.grow_if_asked`), then the write runs again."""

    def __init__(self, resized: bool) -> None:
        super().__init__("the map is resized elsewhere" if resized else "the map is full")
        self.resized = resized


class StorageFailed(Exception):
    """The storage cannot be trusted any more (an I/O error on a disk with free space, LMDB's
    MDB_PANIC): the server stops, with a non-zero exit code, for its supervisor to act on."""


# Free space below which an EIO at commit is read as a full disk: LMDB reports a short
# page write as EIO (mdb_page_flush), which is how ENOSPC can reach us.
FULL_DISK_SLACK = 1 << 20


class Storage:
    """The LMDB environment of a data directory. Several processes may open it at once (LMDB
    locks internally): the server and the CLI's account commands."""

    def __init__(self, data_dir: Path, map_size: int = 1 << 30) -> None:
        db_dir = data_dir / DB_DIR
        self.data_dir = data_dir
        make_private_dir(data_dir)
        make_private_dir(db_dir)
        # sync and metasync (LMDB's defaults, spelled out because the server relies on
        # them): every commit is on disk when it returns, so a stanza the server has
        # acknowledged (an offline message followed by an answered iq) survives a crash or a
        # power cut. No writemap/map_async: those trade that guarantee for speed.
        self._env: lmdb.Environment | None = lmdb.open(
            str(db_dir), map_size=map_size, max_dbs=64, mode=0o600, sync=True, metasync=True
        )
        self._databases: dict[str, Any] = {}
        # Per thread, while a write transaction is open: the corrupt records its work met,
        # quarantined when it has ended (a write cannot nest in LMDB).
        self._local = threading.local()
        # Held around every write transaction of this process, in any thread (the event
        # loop's and GroupCommitWriter's): one writer at a time, and a map resize by the
        # writer that holds it never meets another thread's open write transaction.
        self._write_lock = threading.Lock()
        # Called once with the reason when the storage fails (the server stops itself).
        self.on_failure: Callable[[str], None] | None = None
        # The thread that commits off the event loop, started by the first `writer` use.
        self._writer: GroupCommitWriter | None = None
        self._failed: str | None = None
        try:
            self.schema = self._check_schema()
        except BaseException:
            self.close()
            raise

    def _check_schema(self) -> int:
        """Refuse data of a newer schema; bring older data up to SCHEMA_VERSION, all steps
        in one transaction (a crash leaves it as it was); stamp new or unversioned data."""
        meta = self.database(META_DB)
        with self.env.begin(db=meta) as txn:
            raw = txn.get(SCHEMA_KEY)
        # Unversioned data: new (stamped as it is), or round 1's, which is version 1.
        stored = int(bytes(raw)) if raw is not None else 1 if self._has_data() else SCHEMA_VERSION
        if stored > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"the data in {self.data_dir} was written by a newer fastxmpp (storage schema "
                f"{stored}; this version reads up to {SCHEMA_VERSION}): run that version, or "
                "restore a backup made by this one"
            )
        if raw is not None and stored == SCHEMA_VERSION:
            return stored

        import_stores()  # the stores register their steps

        def migrate(txn: Any) -> None:
            for version in range(stored, SCHEMA_VERSION):
                log.warning("migrating %s from storage schema %d", self.data_dir, version)
                MIGRATIONS[version](self, txn)
            txn.put(SCHEMA_KEY, str(SCHEMA_VERSION).encode(), db=meta)

        self.write(migrate)
        return SCHEMA_VERSION

    def _has_data(self) -> bool:
        """Whether any database other than meta exists (the main database lists them)."""
        with self.env.begin() as txn:
            return any(bytes(key) != META_DB.encode() for key, _ in txn.cursor())

    def failed(self, exc: BaseException) -> StorageFailed:
        """Record a fatal storage error, tell the owner once; the exception to raise."""
        reason = f"storage failed in {self.data_dir}: {type(exc).__name__}: {exc}"
        if self._failed is None:
            self._failed = reason
            log.critical("%s", reason)
            if self.on_failure is not None:
                self.on_failure(reason)
        return StorageFailed(reason)

    def _disk_nearly_full(self) -> bool:
        try:
            stat = os.statvfs(self.data_dir)
        except OSError:
            return False
        return stat.f_bavail * stat.f_frsize < FULL_DISK_SLACK

    @property
    def env(self) -> lmdb.Environment:
        if self._env is None:
            raise RuntimeError("storage is closed")
        return self._env

    def database(self, name: str, txn: Any = None) -> Any:
        """A named sub-database, created on first use; the handle is opened once and reused.
        Inside a write transaction pass it as `txn`: opening a database starts a transaction
        of its own otherwise, which would wait forever for the write lock we hold."""
        handle = self._databases.get(name)
        if handle is None:
            handle = self.env.open_db(name.encode(), txn=txn, create=True)
            self._databases[name] = handle
        return handle

    # --- corrupt records ---------------------------------------------------------------------

    def decode(
        self,
        database: str,
        key: bytes,
        raw: Any,
        decoder: Callable[[bytes], T],
        *,
        keep: bool = False,
    ) -> T | None:
        """`decoder(raw)`, the value of `key` in `database`; None when it fails. A value that
        does not decode (garbage, truncated, the wrong shape: whatever the decoder raises) is
        copied into the quarantine database with the reason and logged once, at error level,
        and removed from `database` so that it reads as missing from then on and nobody
        trips over it again; with `keep` it stays where it is (a record whose absence would
        mean something else, e.g. an account that could then be registered again)."""
        data = bytes(raw)
        try:
            return decoder(data)
        except Exception as exc:  # any failure of a pure decoder means a corrupt record
            # One line (a parser's message may span several), of bounded length.
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
        pending = getattr(self._local, "pending", None)
        if pending is not None:
            pending.append((database, bytes(key), data, reason, keep))
        else:
            self._quarantine(database, bytes(key), data, reason, keep)
        return None

    def _quarantine(self, database: str, key: bytes, raw: bytes, reason: str, keep: bool) -> None:
        prefix = database.encode() + b"\0" + key + b"\0"
        if len(prefix) + _STAMP.size > self.env.max_key_size():
            prefix = database.encode() + b"\0#" + hashlib.sha256(key).digest() + b"\0"
        quarantine = self.database(QUARANTINE_DB)
        with self.env.begin(db=quarantine) as txn:
            if any(bytes(entry[2]) == raw for entry in _entries(txn, prefix)):
                return  # already there (a kept record): logged when it was put there
        now = time.time()
        entry = msgpack.packb([database, key, raw, reason, now])
        handle = self.database(database)

        def move(txn: Any) -> None:
            txn.put(prefix + _STAMP.pack(int(now * 1_000_000)), entry, db=quarantine)
            # Only if it is still the bad value: a write may have replaced it meanwhile.
            current = txn.get(key, db=handle)
            if not keep and current is not None and bytes(current) == raw:
                txn.delete(key, db=handle)

        try:
            self.write(move)
        except (StorageFull, StorageFailed) as exc:
            log.error("cannot quarantine a corrupt record of %s %r: %s", database, key, exc)
            return
        log.error(
            "corrupt record in database %s, key %r (%d bytes): %s; %s the quarantine "
            "(fastxmpp quarantine list)",
            database,
            key,
            len(raw),
            reason,
            "copied to" if keep else "moved to",
        )

    def quarantined(self) -> list[Quarantined]:
        """Every record in quarantine, by database and key."""
        with self.env.begin(db=self.database(QUARANTINE_DB)) as txn:
            return [Quarantined(*entry) for entry in _entries(txn, b"")]

    def write(self, work: Callable[[Any], T], db: Any = None, *, grow: bool = True) -> T:
        """`_write`, then the quarantine of the corrupt records `work` decoded (whether it
        committed or not). `grow` False (a thread other than the event loop's): a full map
        raises MapNeedsGrowth instead of growing it here."""
        if getattr(self._local, "pending", None) is not None:
            raise RuntimeError("nested write transaction")
        self._local.pending = []
        try:
            with self._write_lock:
                return self._write(work, db, grow)
        finally:
            pending, self._local.pending = self._local.pending, None
            # `work` may have run more than once (a grown map): each record once.
            for database, key, raw, reason, keep in dict.fromkeys(pending):
                self._quarantine(database, key, raw, reason, keep)

    def _write(self, work: Callable[[Any], T], db: Any, grow: bool) -> T:
        """Run `work(txn)` in one write transaction and commit; the result of `work`.

        When the map is full (MDB_MAP_FULL) the map is doubled and `work` runs again from the
        start, in a new transaction, so an operator never has to size the map by hand; a full
        disk raises StorageFull with a message that says so. An I/O error on a disk that is
        not full, or LMDB's panic, raises StorageFailed: nothing more can be trusted to it."""
        if self._failed is not None:
            raise StorageFailed(self._failed)
        while True:
            try:
                with self.env.begin(db=db, write=True) as txn:
                    return work(txn)
            except lmdb.MapFullError:
                if not grow:
                    raise MapNeedsGrowth(False) from None
                self._grow()
            except lmdb.MapResizedError:
                # Another process (the CLI, or the server) grew the map: adopt its size.
                if not grow:
                    raise MapNeedsGrowth(True) from None
                self.env.set_mapsize(0)
            except lmdb.DiskError as exc:
                raise StorageFull(f"the disk holding {self.data_dir} is full: {exc}") from exc
            except (lmdb.PanicError, lmdb.CorruptedError) as exc:
                raise self.failed(exc) from exc
            except lmdb.Error as exc:
                # LMDB has no class for EIO. On a full disk its page writes at commit can
                # fail with it rather than ENOSPC: nothing was written, refuse the write the
                # same way and keep serving. With free space, it is the disk failing.
                if os.strerror(errno.EIO) not in str(exc):
                    raise
                if not self._disk_nearly_full():
                    raise self.failed(exc) from exc
                raise StorageFull(f"cannot write to {self.data_dir}: {exc}") from exc
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise StorageFull(f"the disk holding {self.data_dir} is full") from exc
                raise

    def grow(self, resized: bool) -> None:
        """What MapNeedsGrowth asked for, on the event loop's thread: adopt the size another
        process set, or double the map."""
        with self._write_lock:
            if resized:
                self.env.set_mapsize(0)
            else:
                self._grow()

    def _grow(self) -> None:
        size = self.env.info()["map_size"] * 2
        log.warning("LMDB map full: growing it to %d MiB", size >> 20)
        try:
            self.env.set_mapsize(size)
        except lmdb.Error as exc:
            raise StorageFull(f"cannot grow the database map to {size} bytes: {exc}") from exc

    @property
    def writer(self) -> GroupCommitWriter:
        """The group-commit writer of this storage, started on first use (from the event
        loop's thread: its notifications and `commit`'s futures belong to that loop)."""
        if self._writer is None:
            self._writer = GroupCommitWriter(self, asyncio.get_running_loop())
        return self._writer

    def commit(self, work: Callable[[Any], T], db: Any = None) -> asyncio.Future[T]:
        """`work(txn)` committed by the writer thread while the event loop goes on: the
        future's result is what `work` returned, once committed (on disk, like `write`);
        its exception what `work` raised (its writes undone) or why the transaction failed
        (StorageFull, StorageFailed). For a request answered only when its change is
        stored: the answer waits, the server does not."""
        return self.writer.commit(work, db)

    def stop_writer(self) -> None:
        """Commit what was handed to the writer and stop its thread (at shutdown, while the
        event loop still runs: the requests that wait for those commits are answered); from
        then on `commit` commits at once, on the calling thread."""
        if self._writer is not None:
            self._writer.close()

    def close(self) -> None:
        self.stop_writer()
        self._writer = None
        if self._env is not None:
            self._env.close()
            self._env = None
            self._databases.clear()

    def __enter__(self) -> Storage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class DatabaseStore:
    """A store over one database of `storage`, whose changes are works (functions of a
    write transaction) that the caller commits now or has the writer commit."""

    def __init__(self, storage: Storage, database: str) -> None:
        self.storage = storage
        self._db = storage.database(database)

    def now(self, work: Callable[[Any], T]) -> T:
        """A change committed on the calling thread, when this returns."""
        return self.storage.write(work, db=self._db)

    def later(self, work: Callable[[Any], T]) -> asyncio.Future[T]:
        """A change committed by the storage's writer while the event loop goes on
        (`Storage.commit`: for a request answered once its change is stored)."""
        return self.storage.commit(work, db=self._db)


# What GroupCommitWriter.submit queues: the work, its Future, and the Event its submitter
# waits on until the work has run (None: the submitter does not wait).
_Job = tuple[Callable[[Any], Any], Future[Any], threading.Event | None]


class _Refused:
    """What a job of `GroupCommitWriter.commit` returns in place of a result when its work
    raised: that job alone fails, the transaction goes on for the others."""

    __slots__ = ("exc",)

    def __init__(self, exc: Exception) -> None:
        # Handed on without its traceback: the frames in it (the writer's, or the event
        # loop's whole stack when the transaction ran there) hold the job list, whose
        # future holds the exception, a cycle that only a full collection would free. Where
        # it was raised stays with it as text, for the log of whoever gets an unexpected one.
        exc.add_note(
            "raised in the store's change:\n" + "".join(traceback.format_tb(exc.__traceback__))
        )
        drop_tracebacks(exc)
        self.exc = exc


class GroupCommitWriter:
    """One thread that commits the write work the event loop hands it (`submit`), so that
    the loop goes on serving while LMDB writes pages and fsyncs (py-lmdb releases the GIL
    for the commit). Group commit: whatever was submitted while a commit ran goes into the
    next transaction together, so the number of fsyncs follows the disk's speed, not the
    number of loop turns. Each submission gets a Future, done when its transaction has
    committed (result: what its work returned) or failed (the exception: StorageFull,
    StorageFailed, ...); after each transaction `notify` is called on the loop's thread.

    Every other write of the process (the other stores' `Storage.write` on the loop's thread)
    takes the same `Storage._write_lock`: it waits for a commit under way and then commits on
    its own, so writes are ordered by when they commit, one at a time, as LMDB requires.
    Nothing written here is visible to readers before its Future is done.

    One writer per storage (`Storage.writer`), shared: the archive's batches (`submit`) and
    the other stores' single changes (`commit`, awaited by the request that made them) go
    into the same transactions."""

    def __init__(self, storage: Storage, loop: Any) -> None:
        self.storage = storage
        self.loop = loop
        # Called on the loop's thread after each transaction (the archive releases what
        # its commit held).
        self.listeners: list[Callable[[], None]] = []
        self._queue: queue.SimpleQueue[list[_Job] | None] = queue.SimpleQueue()
        # Changes (`commit`) waiting for the transaction under way to end.
        self._later: list[_Job] = []
        self._handing_soon = False  # `_hand_soon` is scheduled
        # The future of the last job handed over (`wait_idle`), and who waits for the end
        # of the transaction under way (`transaction_end`).
        self._last: Future[Any] | None = None
        self._ending: list[asyncio.Future[None]] = []
        # Jobs queued (by the loop's thread) and jobs whose transaction has ended (by the
        # writer's): equal when the writer has nothing to do.
        self._submitted = 0
        self._finished = 0
        self._growth: MapNeedsGrowth | None = None
        self._growth_error: BaseException | None = None
        self._grown = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="lmdb-group-commit", daemon=True)
        self._thread.start()

    def submit(self, work: Callable[[Any], Any], wait_applied: bool = False) -> Future[Any]:
        """`work(txn)` in the next transaction; once closed, committed here and now.
        `wait_applied`: return once `work` has run (or failed), before the commit: the
        caller's thread waits with the GIL released, so `work`'s many short LMDB calls are
        not each a hand-over of the GIL between two busy threads. Meant for when no commit
        is under way (else the caller waits for that commit too)."""
        future: Future[Any] = Future()
        if self._closed:
            try:
                result = self.storage.write(work)
            except Exception as exc:
                future.set_exception(exc)
            else:
                _settle(future, result)
            return future
        # The changes waiting for the writer (`commit`) go in the same transaction.
        batch, self._later = self._later, []
        batch.append((work, future, None))
        self._hand_over(batch, wait_applied)
        return future

    def _hand_over(self, batch: list[_Job], wait_applied: bool) -> None:
        """`batch` to the writer, for one transaction; with `wait_applied`, return once its
        works have run."""
        applied = None
        if wait_applied:
            applied = threading.Event()
            work, future, _ = batch[-1]
            batch[-1] = (work, future, applied)
        self._submitted += len(batch)
        self._last = batch[-1][1]
        self._queue.put(batch)
        if applied is not None:
            # Set by the writer once the works ran or the transaction failed; the map
            # growth a full map waits for is this thread's to do meanwhile.
            while not applied.wait(0.05):
                self.grow_if_asked()
                if not self._thread.is_alive():
                    break

    @property
    def idle(self) -> bool:
        """Nothing queued and no transaction under way."""
        return self._submitted == self._finished

    def commit(self, work: Callable[[Any], T], db: Any = None) -> asyncio.Future[T]:
        """`work(txn)` in the next transaction, in a nested transaction of its own (over
        `db` as its default database): when it raises, its writes are undone and its future
        gets the exception, and the others in the transaction commit. An asyncio future of
        the loop, done once the transaction has committed or failed.

        Handed to the writer with what the archive submits at the end of this loop turn, or
        on its own just after if nothing is (the loop waits while the work runs, as with
        `wait_applied`); if a transaction is under way, when it ends, together with what the
        listeners then submit. The writer only ever gets work while it is idle, so no loop
        waits for another's commit and no work is put while the loop runs."""
        storage = self.storage

        def isolated(txn: Any) -> Any:
            try:
                with storage.env.begin(db=db, parent=txn, write=True) as nested:
                    return work(nested)
            except lmdb.Error:
                raise  # the whole transaction's (a full map: it runs again after growth)
            except Exception as exc:
                return _Refused(exc)

        if self._closed:
            future = self.submit(isolated, wait_applied=True)
        else:
            future = Future()
            self._later.append((isolated, future, None))
            if not self._handing_soon:
                self._handing_soon = True
                self.loop.call_soon(self._hand_soon)
        return asyncio.wrap_future(future, loop=self.loop)

    def _hand_soon(self) -> None:
        self._handing_soon = False
        if self.idle:
            self._hand_later()

    def wait(self, future: Future[Any]) -> None:
        """Block the loop's thread until `future` is done (a query that must see what was
        archived, a session that closes), growing the map meanwhile if the writer asks."""
        while True:
            try:
                future.exception(timeout=0.05)
                return
            except TimeoutError:
                self.grow_if_asked()

    def wait_idle(self) -> None:
        """Block the loop's thread until the transaction under way has ended."""
        if not self.idle and self._last is not None:
            self.wait(self._last)

    def transaction_end(self) -> asyncio.Future[None]:
        """Done once the transaction under way has ended and the listeners have run (ask
        only while not `idle`)."""
        ended: asyncio.Future[None] = self.loop.create_future()
        self._ending.append(ended)
        return ended

    def close(self) -> None:
        """Commit what was submitted, then stop the thread; later submissions commit inline."""
        if self._closed:
            return
        self._hand_later()
        self._closed = True
        self._queue.put(None)
        while self._thread.is_alive():
            self._thread.join(0.05)
            self.grow_if_asked()

    def grow_if_asked(self) -> None:
        """On the loop's thread: the map growth the writer waits for, if it asked for one."""
        need, self._growth = self._growth, None
        if need is None:
            return
        try:
            self.storage.grow(need.resized)
        except BaseException as exc:
            self._growth_error = exc
        finally:
            self._grown.set()

    def _run(self) -> None:
        while True:
            items = [self._queue.get()]
            with contextlib.suppress(queue.Empty):
                while True:
                    items.append(self._queue.get_nowait())
            jobs = [job for batch in items if batch is not None for job in batch]
            if jobs:
                self._commit(jobs)
                self._finished += len(jobs)
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                    self.loop.call_soon_threadsafe(self._notify)
            if None in items:
                return

    def _notify(self) -> None:
        """After a transaction, on the loop's thread: the listeners (the archive hands over
        what accumulated, and the waiting changes with it), then the changes still waiting."""
        for listener in self.listeners:
            listener()
        if self.idle:
            self._hand_later()
        ending, self._ending = self._ending, []
        for ended in ending:
            if not ended.done():
                ended.set_result(None)

    def _hand_later(self) -> None:
        if self._later:
            batch, self._later = self._later, []
            self._hand_over(batch, wait_applied=True)

    def _commit(self, jobs: list[_Job]) -> None:
        def applied() -> None:
            # The submitters that wait go on: the work ran, or will not (a failed or
            # refused transaction; a map to grow, which the loop's thread does).
            for _, _, event in jobs:
                if event is not None:
                    event.set()

        def work(txn: Any) -> list[Any]:
            try:
                return [job(txn) for job, _, _ in jobs]
            finally:
                applied()

        while True:
            try:
                results = self.storage.write(work, grow=False)
            except MapNeedsGrowth as need:
                applied()
                self._grown.clear()
                self._growth = need
                try:
                    self.loop.call_soon_threadsafe(self.grow_if_asked)
                except RuntimeError:  # the loop is closed: no reader left to race with
                    self.grow_if_asked()
                self._grown.wait()
                error, self._growth_error = self._growth_error, None
                if error is None:
                    continue
                for _, future, _ in jobs:
                    future.set_exception(error)
                return
            except BaseException as exc:
                applied()
                for _, future, _ in jobs:
                    future.set_exception(exc)
                return
            for (_, future, _), result in zip(jobs, results, strict=True):
                _settle(future, result)
            return


def _settle(future: Future[Any], result: Any) -> None:
    if type(result) is _Refused:
        future.set_exception(result.exc)
    else:
        future.set_result(result)


def _entries(txn: Any, prefix: bytes) -> Iterator[list[Any]]:
    """The decoded quarantine entries whose keys start with `prefix`."""
    cursor = txn.cursor()
    found = cursor.set_range(prefix)
    while found and bytes(cursor.key()).startswith(prefix):
        try:
            entry = msgpack.unpackb(cursor.value())
            database, key, raw, reason, when = entry
            yield [str(database), bytes(key), bytes(raw), str(reason), float(when)]
        except Exception:  # the quarantine's own record damaged: shown as it is
            database, _, key = bytes(cursor.key()).partition(b"\0")
            reason = "this quarantine entry does not decode either"
            yield [database.decode(errors="replace"), key, bytes(cursor.value()), reason, 0.0]
        found = cursor.next()


class DataDirLocked(Exception):
    """Another server already runs on this data directory."""


class ServerLock:
    """An exclusive `flock` on `data_dir/server.lock`, holding the owner's pid.

    The kernel drops the lock when the process dies, so a crash never leaves a stale lock
    behind; the file itself stays (removing it would race with a starting server)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        make_private_dir(self.data_dir)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirLocked(
                f"data directory {self.data_dir} is in use by another fastxmpp server "
                f"(pid {holder}); stop it or choose another data_dir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def holder(self) -> int | None:
        """The pid of the server holding the lock now, or None when none does."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text = os.read(fd, 32).decode(errors="replace").strip()
                return int(text) if text.isdigit() else None
            fcntl.flock(fd, fcntl.LOCK_UN)  # nobody held it
            return None
        finally:
            os.close(fd)

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing the descriptor drops the flock
        self._fd = None

    def __enter__(self) -> ServerLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def import_stores() -> None:
    """Import every store module: each registers its purge function (and its steps between
    storage schema versions) at import, and the CLI never loads the server's modules."""
    from .. import storage as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in ("lmdb_store", "account_data", "accounts", "backup"):
            importlib.import_module(f"{package.__name__}.{info.name}")
