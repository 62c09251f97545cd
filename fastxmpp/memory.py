"""Giving freed heap memory back to the system.

A login leaves a trail of short-lived native allocations (the TLS handshake in OpenSSL, the
SCRAM exchange, the parser restarts) between the long-lived ones of the sessions that stay.
glibc's malloc only returns memory from the top of its heaps by itself, so the process kept
what login waves had freed: 15-33 MB more after each cycle of 1000 connections opened and
closed, and one trim took such a server from 179 MB to 62 MB (docs/PERFORMANCE.md, "Idle
memory"). `malloc_trim(0)` hands the free pages inside the heaps back (madvise), so the server
calls it shortly after connections come and go, at most once per `interval` seconds.

Only glibc has `malloc_trim`; elsewhere (musl, macOS) the trimmer does nothing."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import time
from collections.abc import Callable, Collection
from typing import Any

log = logging.getLogger("fastxmpp.memory")


def _find_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_MALLOC_TRIM = _find_malloc_trim()


def release_free_memory() -> bool:
    """Return the heap's free pages to the system; False where the C library cannot."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


class HeapTrimmer:
    """Trims the heap `interval` seconds after connection churn, at most once per interval:
    a burst of logins costs one trim, not one per login. interval 0 turns trimming off."""

    def __init__(self, interval: float) -> None:
        self.interval = interval if _MALLOC_TRIM is not None else 0.0
        self._scheduled: asyncio.TimerHandle | None = None

    def churned(self) -> None:
        """Connections came or went (or a session was set up): garbage is likely."""
        if self.interval <= 0 or self._scheduled is not None:
            return
        self._scheduled = asyncio.get_running_loop().call_later(self.interval, self._trim)

    def _trim(self) -> None:
        self._scheduled = None
        started = time.perf_counter()
        release_free_memory()
        log.debug("heap trimmed in %.1f ms", (time.perf_counter() - started) * 1000)

    def stop(self) -> None:
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None


class FrozenSurvivors:
    """Python's cyclic garbage collector walks every object it tracks at each full
    collection, and a full collection comes each time the objects that survived the younger
    ones have grown by a quarter: the server stops for it, longer with each connection it
    holds (20-30 objects each; 55, 83, 109, 144 ms at 2 500 to 10 000 connections during a
    login wave here, docs/PERFORMANCE.md "Connections freed without the garbage collector").
    So what survives a full collection is frozen (`gc.freeze`: later collections skip it,
    as they skip it for good in a forked worker), and each collection walks only what came
    since. A frozen object is still freed when its last reference goes, which is how an
    ended connection goes (tests/test_cycles.py); only a reference cycle that forms among
    frozen objects waits, so every `full_interval` seconds everything is unfrozen and the
    next full collection walks it all once. 0 turns freezing off (Python's own policy)."""

    def __init__(self, full_interval: float) -> None:
        self.full_interval = full_interval
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self.full_interval <= 0:
            return
        gc.callbacks.append(self._collected)
        self._timer = asyncio.get_running_loop().call_later(self.full_interval, self._thaw)

    def _collected(self, phase: str, info: dict[str, Any]) -> None:
        # (in whichever thread collected; the collection is over at "stop")
        if phase == "stop" and info["generation"] == 2:
            gc.freeze()

    def _thaw(self) -> None:
        gc.unfreeze()  # the next full collection looks at every object again
        self._timer = asyncio.get_running_loop().call_later(self.full_interval, self._thaw)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._collected in gc.callbacks:
            gc.callbacks.remove(self._collected)
            gc.unfreeze()


class ParserHibernation:
    """Streams silent for `after` seconds give back their XML parser's memory
    (StreamParser.hibernate: about 10 KiB of expat state per stream, rebuilt from the stream
    header on the next input, docs/PARSER.md). Checked every after/2 seconds; 0: never."""

    def __init__(
        self, streams: Collection[Any], after: float, trimmer: HeapTrimmer | None = None
    ) -> None:
        self.streams = streams
        self.after = after
        self.trimmer = trimmer  # freed parsers leave holes in the heap: trim after a sweep
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self.after > 0:
            self._timer = asyncio.get_running_loop().call_later(self.after / 2, self._sweep)

    def _sweep(self) -> None:
        idle_since = time.monotonic() - self.after
        freed = 0
        for stream in self.streams:
            connection = stream.connection
            if (
                connection is not None
                and connection.last_received <= idle_since
                and connection.parser.hibernate()
            ):
                freed += 1
        if freed:
            log.debug("released the parsers of %d idle streams", freed)
            if self.trimmer is not None:
                self.trimmer.churned()
        self.start()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
