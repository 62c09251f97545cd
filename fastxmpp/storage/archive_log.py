"""The archive's log: where a commit's new archive rows are made durable (storage/mam.py).

A synced LMDB commit writes every page it changed and flushes twice (the data, then the meta
page): about 15 scattered page writes and 800 µs of CPU per commit whatever it carries
(docs/PERFORMANCE.md, "Where a message's time goes at 10 000 msgs/s"). Rows on the way to an
acknowledgement are instead appended here, one write and one `fdatasync` per commit, and move
into LMDB later, many commits' worth at a time (the folds of storage/mam.py), after which the
log files that hold only folded rows are deleted.

Files: `data_dir/mam-log/<16 hex digits>.log`, numbered in the order they were begun. A file
is a sequence of records `length (4 bytes) + crc32 (4 bytes) + payload`, big-endian, the crc32
over the file's number (8 bytes) and the payload; a payload is rows, each `id (8 bytes) +
length (4 bytes) + value`, the value as the old LMDB journal kept it (`len(prefix)` in 2
bytes, the archive's key prefix, the record's msgpack). A record is written whole and flushed
before its commit is acknowledged, so only the last record of the file written last can be
torn (a crash during its write): reading stops at the first record whose length or crc32
does not match. Appends never go to a file found at start (its end may be torn): each run
begins a new file.

Files are made SEGMENT_BYTES long (zeros) before records go into them, and a file whose rows
are all folded is kept as a spare (`<n>.spare`, up to SPARES of them) that the next file is
renamed from: a record then overwrites blocks the file already has, and its flush writes the
data alone, not the file's new size and blocks through the file system's journal too (half
the CPU per flush measured on ext4). Whatever a reused file held before fails the crc32 of
its new number.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

from .lmdb_store import make_private_dir

log = logging.getLogger("fastxmpp.storage.archive_log")

LOG_DIR = "mam-log"
SUFFIX = ".log"
# A new file is begun once the current one holds this much (files are deleted whole).
SEGMENT_BYTES = 16 << 20
SPARES = 2
SPARE_SUFFIX = ".spare"
_ZEROS = bytes(1 << 20)
_NUMBER = struct.Struct(">Q")
_HEADER = struct.Struct(">II")
_ROW = struct.Struct(">QI")
# A record larger than this is damage, not a commit (a commit's rows are bounded by the
# stanza size limit times the rows one turn can archive).
MAX_RECORD = 1 << 30


class _Segment:
    __slots__ = ("highest", "number", "path", "seed", "size")

    def __init__(self, path: Path, number: int, highest: int, size: int) -> None:
        self.path = path
        self.number = number
        self.highest = highest  # the highest row id in it (0: none)
        self.size = size  # where the next record goes
        self.seed = zlib.crc32(_NUMBER.pack(number))  # its records' crc32 start from it


class ArchiveLog:
    """The log files of a data directory. `rows` reads them (at start, on the opening
    thread); afterwards `append` and `trim` are called by one thread at a time (the
    group-commit writer's, or the caller's when there is none)."""

    def __init__(self, data_dir: Path) -> None:
        self.directory = data_dir / LOG_DIR
        self._segments: list[_Segment] = []
        self._fd: int | None = None  # the file appended to: the last segment, begun by us
        self._spares: list[Path] = []
        if self.directory.is_dir():
            for path in sorted(self.directory.glob("*" + SUFFIX)):
                with contextlib.suppress(ValueError):
                    number = int(path.stem, 16)
                    self._segments.append(_Segment(path, number, 0, path.stat().st_size))
            self._spares = sorted(self.directory.glob("*" + SPARE_SUFFIX))
        # Numbers are never handed out twice while a file of that number exists, spares
        # included: a spare renamed to its own old number would have its old records read.
        self._next = 1 + max(
            [segment.number for segment in self._segments] + [_number(p) for p in self._spares],
            default=0,
        )

    @property
    def empty(self) -> bool:
        """No log file (nothing waits to be folded, or nothing was ever logged)."""
        return not self._segments

    def rows(self) -> Iterator[tuple[int, bytes]]:
        """(id, value) of every row in the files found at start, in the order written;
        each file's highest id is noted (for `trim`)."""
        for segment in list(self._segments):
            try:
                data = segment.path.read_bytes()
            except FileNotFoundError:
                continue
            for number, value in _records(data, segment.seed, segment.path):
                segment.highest = max(segment.highest, number)
                yield number, value

    def append(self, payload: bytes, highest: int) -> None:
        """One record (a commit's rows, see `encode_rows`) written and flushed; `highest`:
        its highest row id. OSError (ENOSPC, EIO) leaves the record unacknowledged: a torn
        one is skipped when read."""
        segment = self._segments[-1] if self._fd is not None else None
        size = _HEADER.size + len(payload)
        # (A record larger than a file has one of its own, which grows to hold it.)
        if segment is None or (segment.size and segment.size + size > SEGMENT_BYTES):
            segment = self._begin()
        assert self._fd is not None
        record = _HEADER.pack(len(payload), zlib.crc32(payload, segment.seed)) + payload
        written = os.pwrite(self._fd, record, segment.size)
        if written != len(record):  # a full disk mid-write: the record is torn, not kept
            raise OSError(28, "short write to the archive log (No space left on device)")
        os.fdatasync(self._fd)
        segment.size += len(record)
        segment.highest = max(segment.highest, highest)

    def _begin(self) -> _Segment:
        """A new file after every other one, its name on disk before rows go into it."""
        make_private_dir(self.directory)
        number = self._next
        self._next += 1
        path = self.directory / f"{number:016x}{SUFFIX}"
        if self._spares:
            self._spares.pop().rename(path)
            fd = os.open(path, os.O_WRONLY)
        else:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                for _ in range(SEGMENT_BYTES // len(_ZEROS)):
                    os.write(fd, _ZEROS)
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                path.unlink()
                raise
        _sync_directory(self.directory)
        if self._fd is not None:
            os.close(self._fd)
        self._fd = fd
        segment = _Segment(path, number, 0, 0)
        self._segments.append(segment)
        return segment

    def trim(self, keep_from: int | None) -> None:
        """Delete the files whose rows all have ids below `keep_from` (None: every file),
        once every row below it is in LMDB for good (a synced commit)."""
        segments = self._segments
        while segments and (keep_from is None or segments[0].highest < keep_from):
            segment = segments.pop(0)
            if not segments and self._fd is not None:
                os.close(self._fd)
                self._fd = None
            with contextlib.suppress(FileNotFoundError):
                if len(self._spares) < SPARES and segment.size <= SEGMENT_BYTES:
                    spare = segment.path.with_suffix(SPARE_SUFFIX)
                    segment.path.rename(spare)
                    self._spares.append(spare)
                else:
                    segment.path.unlink()

    def drop_spares(self) -> None:
        """The spare files deleted (the server stops with nothing left to fold)."""
        for spare in self._spares:
            spare.unlink(missing_ok=True)
        self._spares.clear()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def encode_rows(rows: list[tuple[int, bytes]]) -> bytes:
    """A record's payload: (id, value) rows (tests and tools; the server's are compiled,
    fastxmpp/_archive.pyx `log_rows`)."""
    return b"".join(_ROW.pack(number, len(value)) + value for number, value in rows)


def _records(data: bytes, seed: int, path: Path) -> Iterator[tuple[int, bytes]]:
    view = memoryview(data)
    at = 0
    while at + _HEADER.size <= len(data):
        length, crc = _HEADER.unpack_from(data, at)
        start = at + _HEADER.size
        payload = view[start : start + length]
        if not length or length > MAX_RECORD or len(payload) != length:
            break
        if zlib.crc32(payload, seed) != crc:
            break
        try:
            rows = list(_rows(payload))
        except ValueError as exc:  # whole (its crc32 matches) but not what `append` writes
            log.error("%s: a record at byte %d is damaged (%s): the rest is ignored", path, at, exc)
            return
        yield from rows
        at = start + length


def _rows(payload: memoryview) -> Iterator[tuple[int, bytes]]:
    at = 0
    while at < len(payload):
        if at + _ROW.size > len(payload):
            raise ValueError("a row header cut short")
        number, length = _ROW.unpack_from(payload, at)
        start = at + _ROW.size
        value = bytes(payload[start : start + length])
        if len(value) != length:
            raise ValueError("an archive log record whose rows overrun it")
        yield number, value
        at = start + length


def _number(path: Path) -> int:
    try:
        return int(path.stem, 16)
    except ValueError:
        return 0


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
