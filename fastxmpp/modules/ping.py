"""XEP-0199 XMPP Ping, both ways.

- Client to server (§4.2): an iq get with <ping/> to the server (a domain served here), or
  to the sender's own bare JID (or without 'to', the same, RFC 6120 §10.3.3), gets an empty
  result. Pings to another
  account's bare JID get service-unavailable, as for an account that does not exist, so
  pings cannot harvest accounts.
- Server to client (§4.1): a task looks at every bound session once per tick; one silent
  for `ping.idle_interval` seconds (nothing read, `session.last_received`) gets a ping. If
  nothing at all arrives within `ping.timeout` (any bytes count as alive: the answer, an
  error, other stanzas, whitespace), the stream ends with connection-timeout.
  `idle_interval = 0` switches server pings off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
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
# Seconds between idle checks: a quarter of the shorter period, within these bounds (each
# check walks every bound session).
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

    def session_ended(self, session: C2SStream) -> None:
        pending = self.waiting.pop(session, None)
        if pending is not None:
            pending[1].cancel()

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
        tick = max(MIN_TICK, min(MAX_TICK, min(idle, timeout) / 4))
        while True:
            await asyncio.sleep(tick)
            try:
                self._check(time.monotonic(), idle, timeout)
            except Exception:
                log.exception("idle check failed")

    def _check(self, now: float, idle: float, timeout: float) -> None:
        for session in self.router.all_sessions():
            if session.closing:
                continue
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
                continue
            if now - session.last_received >= idle:
                answer = self.hub.send_iq(session, "get", PING)
                # The future's result is not needed: any bytes received prove liveness.
                answer.add_done_callback(_consume)
                self.waiting[session] = (now, answer)


def _consume(future: asyncio.Future[Any]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        future.exception()


MODULE = PingModule
