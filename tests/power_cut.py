"""A power cut for the SIGKILL tests: after the kill, the server's files are put back in a
state that a power cut at that moment could have left (tests/faults/power_cut.c, preloaded
into the server, journals every write under the data directory that is not yet durable).

A SIGKILL alone loses nothing the kernel was given: every write() is in the page cache and
reaches the disk later. A power cut loses what was not flushed, in any order the disk chose:
here each 4 KiB page written since the file's last fsync()/fdatasync() (or O_DSYNC write)
gets, independently and at random, any of the contents it had since then: as it was at the
flush, or after one of the writes since, or the latest. That is the guarantee LMDB is built on
(a page written whole or not at all, nothing unflushed relied on), and what a server that
acknowledges only what it flushed must survive.
"""

from __future__ import annotations

import os
import random
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from conftest import ServerProcess

FAULTS = Path(__file__).parent / "faults"
PAGE = 4096
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def build_power_cut(out_dir: Path) -> Path:
    """tests/faults/power_cut.c as a library to preload."""
    out = out_dir / "power_cut.so"
    subprocess.run(
        ["cc", "-shared", "-fPIC", "-O1", "-o", str(out), str(FAULTS / "power_cut.c"), "-ldl"],
        check=True,
        timeout=120,
    )
    return out


@dataclass
class CutResult:
    """What a cut did: pages written since their last flush, and how many of them were put
    back to an older content (the others kept the latest)."""

    unflushed_pages: int
    reverted_pages: int
    records: int


CRASHES = ["sigkill", "power cut"]


def power_cut_for(crash: str, out_dir: Path, rng: random.Random) -> PowerCut | None:
    """For a test parametrized over CRASHES: the PowerCut of "power cut", None for a SIGKILL
    alone."""
    if crash == "sigkill":
        return None
    assert crash == "power cut", crash
    return PowerCut(build_power_cut(out_dir), rng)


class PowerCut:
    """Preloads the journal into a server (`prepare`), and cuts the power after its SIGKILL
    (`cut`)."""

    def __init__(self, library: Path, rng: random.Random) -> None:
        self.library = library
        self.rng = rng
        self.journal: Path | None = None
        self.results: list[CutResult] = []

    def prepare(self, srv: ServerProcess) -> None:
        srv.data_dir.mkdir(parents=True, exist_ok=True)
        self.journal = srv.root / "power-cut.journal"
        srv.env = {
            **os.environ,
            "LD_PRELOAD": str(self.library),
            "FASTXMPP_POWER_CUT_DIR": str(srv.data_dir.resolve()),
            "FASTXMPP_POWER_CUT_LOG": str(self.journal),
        }

    def wait_unflushed(self, timeout: float = 3.0) -> None:
        """Until the server has written something it has not flushed yet (the journal is
        emptied whenever everything is flushed), so that a kill now cuts a write in flight;
        at most `timeout` seconds (then the kill cuts whatever there is)."""
        assert self.journal is not None, "prepare() first"
        deadline = time.monotonic() + timeout
        settle = True
        while time.monotonic() < deadline:
            if self._unflushed():
                if not settle:
                    return
                # A moment later, so that the cut falls anywhere in a commit (its data
                # pages, its flush, its meta page), if the writes are still unflushed then.
                time.sleep(self.rng.uniform(0, 0.002))
                settle = False
                if self._unflushed():
                    return
            time.sleep(0.0005)

    def _unflushed(self) -> bool:
        assert self.journal is not None
        try:
            return self.journal.stat().st_size > 0
        except FileNotFoundError:
            return False

    def summary(self) -> str:
        return ", ".join(f"{r.reverted_pages}/{r.unflushed_pages} pages" for r in self.results)

    def cut(self) -> CutResult:
        """After the server was killed: its unflushed pages as a power cut leaves them; the
        journal starts again for the next run."""
        assert self.journal is not None, "prepare() first"
        # The journal exists once the server wrote anything under its data directory (it
        # always does: its storage at start): a missing one means the library was not loaded.
        assert self.journal.exists(), "the power-cut library was not preloaded"
        result = apply_cut(self.journal.read_bytes(), self.rng)
        self.journal.unlink()
        self.results.append(result)
        return result


def apply_cut(journal: bytes, rng: random.Random) -> CutResult:
    # Per (file, page): the contents it had since its last flush, oldest first (the first
    # is the flushed one); the latest is what the file holds now.
    versions: dict[tuple[str, int], list[bytes]] = {}
    records = 0
    at = 0
    while at < len(journal):
        record = _read_record(journal, at)
        if record is None:
            # The kill came while this record was written: its write had not begun (the
            # record comes first).
            break
        kind, path, start, span, at = record
        records += 1
        if kind == b"S":
            for key in [key for key in versions if key[0] == path]:
                del versions[key]
            continue
        assert start % PAGE == 0 and span % PAGE == 0, (kind, start, span)
        pages = range(start // PAGE, (start + span) // PAGE)
        if kind == b"D":  # durable once written
            for page in pages:
                versions.pop((path, page), None)
            continue
        old = journal[at - span : at]
        for index, page in enumerate(pages):
            versions.setdefault((path, page), []).append(old[index * PAGE : (index + 1) * PAGE])
    reverted = 0
    by_file: dict[str, list[tuple[int, bytes]]] = {}
    for (path, page), older in versions.items():
        choice = rng.randrange(len(older) + 1)
        if choice < len(older):  # else the latest write stays
            by_file.setdefault(path, []).append((page, older[choice]))
            reverted += 1
    for path, pages_back in by_file.items():
        with open(path, "r+b") as f:
            for page, content in pages_back:
                f.seek(page * PAGE)
                f.write(content)
    return CutResult(len(versions), reverted, records)


def _read_record(journal: bytes, at: int) -> tuple[bytes, str, int, int, int] | None:
    """The record at `at`: (kind, path, start, span, where the next begins); for 'W' the
    old pages are the span bytes before the next. None: it is incomplete."""
    kind = journal[at : at + 1]
    assert kind in (b"W", b"S", b"D"), f"journal damaged at byte {at}: {kind!r}"
    at += 1
    if at + _U32.size > len(journal):
        return None
    (length,) = _U32.unpack_from(journal, at)
    at += _U32.size + length
    if at > len(journal):
        return None
    path = journal[at - length : at].decode()
    if kind == b"S":
        return kind, path, 0, 0, at
    if at + 2 * _U64.size > len(journal):
        return None
    (start,) = _U64.unpack_from(journal, at)
    (span,) = _U64.unpack_from(journal, at + _U64.size)
    at += 2 * _U64.size
    if kind == b"W":
        at += span
        if at > len(journal):
            return None
    return kind, path, start, span, at
