"""XEP-0199 XMPP Ping, both ways.

- Client to server (§4.2): an iq get with <ping/> to the server (a domain served here), or
  to the sender's own bare JID (or without 'to', the same, RFC 6120 §10.3.3), gets an empty
  result. Pings to another
  account's bare JID get service-unavailable, as for an account that does not exist, so
  pings cannot harvest accounts.
- Server to client (§4.1): a session silent for `ping.idle_interval` seconds (nothing read,
  `session.last_received`) gets a ping. If nothing at all arrives within `ping.timeout` (any
  bytes count as alive: the answer, an error, other stanzas, whitespace), the stream ends with
  connection-timeout. `idle_interval = 0` switches server pings off.

Each session waits in a timer wheel (buckets of one tick) for the moment it could first be
due: `idle_interval` after it was last heard from, or `timeout` after its ping. A tick looks
only at the buckets that came due, so an idle server visits each session once per
`idle_interval` rather than walking every session every tick (docs/PERFORMANCE.md, "Logout
and shutdown cost"). Reading input costs nothing here: a session heard from since is put
back for its new moment when its bucket comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import TYPE_CHECKING, Any

from ..errors import StanzaError
from .base import Module, iq_result

if TYPE_CHECKING:
    from .._parser import Stanza
    from ..stream.c2s import C2SStream

log = logging.getLogger("fastxmpp.ping")

NS = "urn:xmpp:ping"
PING = f"<ping xmlns='{NS}'/>"
# Seconds between idle checks (the width of a bucket of the wheel): a quarter of the shorter
# period, within these bounds.
MIN_TICK, MAX_TICK = 0.05, 15.0


class PingModule(Module):
    name = "ping"
    features = (NS,)

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        self.settings = self.config.ping
        self.task: asyncio.Task[None] | None = None
        # Sessions pinged and not heard from since: session -> (monotonic time, answer).
        self.waiting: dict[C2SStream, tuple[float, asyncio.Future[Any]]] = {}
        idle, timeout = self.settings.idle_interval, self.settings.timeout
        self.tick = max(MIN_TICK, min(MAX_TICK, min(idle, timeout) / 4))
        # The wheel: bucket number (monotonic time / tick, rounded up) -> the sessions to
        # look at when it comes due; every bucket up to `_done` has been looked at.
        self.buckets: dict[int, set[C2SStream]] = {}
        self._done = math.floor(time.monotonic() / self.tick)

    def start(self) -> None:
        self.router.set_iq_handler(NS, self.answer)
        if self.settings.idle_interval > 0:
            self.task = asyncio.get_running_loop().create_task(self._watch_idle())
            self.server.background.add(self.task)
            self.task.add_done_callback(self.server.background.discard)

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        for _, answer in self.waiting.values():
            answer.cancel()
        self.waiting.clear()
        self.buckets.clear()  # no more ticks: the sessions' ends need not look

    def session_bound(self, session: C2SStream) -> None:
        if self.task is not None:
            self._drop(session)  # bound again (XEP-0388 after XEP-0386): one place only
            self._put(session, session.last_received + self.settings.idle_interval)

    def session_ended(self, session: C2SStream) -> None:
        pending = self.waiting.pop(session, None)
        if pending is not None:
            pending[1].cancel()
        self._drop(session)

    def _put(self, session: C2SStream, at: float) -> None:
        """Look at `session` again at the first tick from monotonic time `at` on."""
        slot = max(math.ceil(at / self.tick), self._done + 1)
        bucket = self.buckets.get(slot)
        if bucket is None:
            bucket = self.buckets[slot] = set()
        bucket.add(session)

    def _drop(self, session: C2SStream) -> None:
        # A few dozen buckets at most ((idle_interval + timeout) / tick): cheaper than a
        # session -> bucket map kept for every idle session.
        for bucket in self.buckets.values():
            bucket.discard(session)

    # --- client to server ----------------------------------------------------------------------

    def answer(self, origin: C2SStream, st: Stanza, target: tuple[str, ...] | None) -> bytes:
        if st.attrs.get("type") != "get":
            raise StanzaError("bad-request", "a ping is an iq get")
        if target is not None and target[0] and target[3] != origin.bare:
            raise StanzaError("service-unavailable")
        return iq_result(origin, st)

    # --- server to client ----------------------------------------------------------------------

    async def _watch_idle(self) -> None:
        idle, timeout = self.settings.idle_interval, self.settings.timeout
        while True:
            await asyncio.sleep(self.tick)
            try:
                self._check(time.monotonic(), idle, timeout)
            except Exception:
                log.exception("idle check failed")

    def _check(self, now: float, idle: float, timeout: float) -> None:
        """The buckets due by `now`: each of their sessions is pinged, ended, or put back
        for the moment it could next be due."""
        due = math.floor(now / self.tick)
        while self._done < due:
            self._done += 1
            bucket = self.buckets.pop(self._done, None)
            if bucket:
                for session in bucket:
                    # Skip one that ended while this bucket was looked at (another's
                    # closing ended it): session_ended took it out of the buckets left.
                    if session.bound:
                        self._visit(session, now, idle, timeout)

    def _visit(self, session: C2SStream, now: float, idle: float, timeout: float) -> None:
        if session.closing:
            self._put(session, now + idle)  # ending: session_ended takes it out
            return
        pending = self.waiting.get(session)
        if pending is not None:
            sent_at, answer = pending
            if session.last_received > sent_at:
                # Heard from: alive, whether or not this was the answer.
                del self.waiting[session]
                answer.cancel()
            elif now - sent_at >= timeout:
                del self.waiting[session]
                answer.cancel()
                log.info("%s did not answer a ping within %gs", session.full, timeout)
                session.close_with_error("connection-timeout", "no answer to a ping")
                if session.bound:
                    # Detached (XEP-0198): still a session, looked at from the next tick on.
                    self._put(session, now)
                return
            else:
                self._put(session, sent_at + timeout)
                return
        if now - session.last_received >= idle:
            answer = self.hub.send_iq(session, "get", PING)
            # The future's result is not needed: any bytes received prove liveness.
            answer.add_done_callback(_consume)
            self.waiting[session] = (now, answer)
            self._put(session, now + timeout)
        else:
            self._put(session, session.last_received + idle)


def _consume(future: asyncio.Future[Any]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        future.exception()


MODULE = PingModule
