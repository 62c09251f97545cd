"""Running out of file descriptors, said in the log.

Every connection holds a descriptor. At the RLIMIT_NOFILE soft limit accept() fails with
EMFILE, and libuv (under uvloop) then accepts each waiting connection on a descriptor it keeps
spare and closes it at once, so that clients are told rather than left waiting, but the
server hears nothing of it. The kernel hands out the lowest free descriptor, so the number an
accepted connection gets says how full the table is: from `warn_at` on, the watch logs a
warning and checks every few seconds whether a descriptor can still be opened, saying (once
per `interval`) that new connections are refused (EMFILE) while none can, and when
descriptors are free again. Below `warn_at` it costs one comparison per connection and no
timer."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import time

log = logging.getLogger("fastxmpp.descriptors")

# Seconds between two warnings about the same condition.
WARNING_INTERVAL = 60.0
# Seconds between two checks while the table is nearly full (an open() and a close()).
CHECK_INTERVAL = 5.0


class DescriptorWatch:
    def __init__(self, limit: int | None = None, interval: float = WARNING_INTERVAL) -> None:
        if limit is None:
            limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.limit = limit  # RLIM_INFINITY (-1) never warns: see warn_at
        # 1% of the table (at least 16 descriptors) before the limit: listeners, the
        # database, log files and outgoing s2s links need some too.
        self.warn_at = limit - max(16, limit // 100) if limit > 0 else 1 << 62
        self.interval = interval
        self._warned_at = {"near": -interval, "out": -interval}
        self._timer: asyncio.TimerHandle | None = None

    def opened(self, fd: int) -> None:
        """A connection was accepted (or opened) on descriptor `fd`."""
        if fd < self.warn_at:
            return
        self._warn(
            "near",
            "file descriptor %d of %d (RLIMIT_NOFILE) taken by a new connection: at the limit "
            "accept() fails with EMFILE and new connections are closed at once; raise the "
            "limit (docs/CONFIGURATION.md, 'Many connections')",
            fd,
            self.limit,
        )
        if self._timer is None:
            # The first check soon: the table may be full already.
            self._timer = asyncio.get_running_loop().call_later(1.0, self._check)

    def _warn(self, kind: str, message: str, *args: object) -> None:
        """At most once per interval for each kind of warning."""
        now = time.monotonic()
        if now - self._warned_at[kind] < self.interval:
            return
        self._warned_at[kind] = now
        log.warning(message, *args)

    def _check(self) -> None:
        self._timer = None
        try:
            fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            self._warn(
                "out",
                "out of file descriptors (EMFILE: all %d in use, RLIMIT_NOFILE): new "
                "connections are closed as they are accepted; the open ones are served",
                self.limit,
            )
        else:
            os.close(fd)
            if fd < self.warn_at:
                self._warned_at = dict.fromkeys(self._warned_at, -self.interval)
                log.info(
                    "file descriptors free again (the lowest free is %d of %d)", fd, self.limit
                )
                return
            self._warn("near", "file descriptor %d of %d is the lowest free", fd, self.limit)
        self._timer = asyncio.get_running_loop().call_later(CHECK_INTERVAL, self._check)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


# The process's file descriptor table is one: so is its watch (set by Server.start).
watch: DescriptorWatch | None = None


def opened(fd: int) -> None:
    if watch is not None:
        watch.opened(fd)
