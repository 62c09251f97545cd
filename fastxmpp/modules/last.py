"""XEP-0012 Last Activity.

- To the server (§5, Server and Component Query): seconds since it started.
- To an account's bare JID, or with no 'to' (the sender's account, RFC 6120 §10.3.3),
  answered by the server on the account's behalf: only to the account itself and to
  contacts the account lets see its presence (subscription "from" or "both", asked of the
  roster module; without a roster module nobody else), else forbidden
  (§3, §8). With a connected resource: seconds 0 (§3). Offline: seconds since its last
  resource went away, with the status of the last unavailable presence received from the
  user (§3): that of any of its resources, kept until that resource is available again,
  while another one stays online (the last one may go without a word: a lost connection).
  An account that never logged out since this store exists: item-not-found.

The logout time is recorded in fastxmpp/storage/last.py when an account's last session ends:
kept in memory, then written with the other logouts of the same turn of the event loop in one
transaction at the pipeline's "turn/end" (one fdatasync for the many sessions a network outage
or a shutdown ends at once; Server.stop runs it once more before the storage closes), which
the storage's writer thread commits while the event loop goes on (mobile clients come and go
all the time). Nothing acknowledged depends on it, so no output waits for it; a crash loses
at most the logouts not committed yet. Until written, the pending time is the one answered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

from ..errors import StanzaError
from ..storage.last import LastActivityStore
from ..storage.lmdb_store import StorageFailed, StorageFull
from .base import Module, iq_result, sender_account
from .disco import may_see_presence

if TYPE_CHECKING:
    from .._parser import Stanza
    from ..stream.c2s import C2SStream
    from .presence import PresenceModule

log = logging.getLogger("fastxmpp.last")

NS = "jabber:iq:last"


class LastActivityModule(Module):
    name = "last"
    features = (NS,)
    account_features = (NS,)

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        self.started = time.monotonic()
        self.store: LastActivityStore | None = None
        # Accounts online whose last unavailable presence had a status: bare JID ->
        # (full JID of the resource that sent it, the status).
        self.leaving: dict[str, tuple[str, str]] = {}
        # Logouts of this turn, not written yet: (domain, local) -> (unix time, status).
        self.pending: dict[tuple[str, str], tuple[float, str]] = {}
        # Logouts handed to the writer, until committed (answered from here meanwhile).
        self.committing: dict[tuple[str, str], tuple[float, str]] = {}

    def start(self) -> None:
        assert self.server.storage is not None
        self.store = LastActivityStore(self.server.storage)
        self.started = time.monotonic()
        self.router.set_iq_handler(NS, self.answer)
        self.hub.hook(self, "iq/full", self.to_resource)

    def presence_unavailable(self, session: C2SStream, data: bytes) -> None:
        # The <status/> of that unavailable presence, as the presence module keeps it.
        presence: PresenceModule | None = self.hub.get("presence")
        status = None if presence is None else presence.unavailable_status(session)
        self.leaving[session.bare] = (session.full, status or "")

    def presence_available(self, session: C2SStream, st: Stanza) -> None:
        left = self.leaving.get(session.bare)
        if left is not None and left[0] == session.full:
            del self.leaving[session.bare]  # that resource is back: its goodbye is over

    def account_removed(self, domain: str, local: str) -> None:
        self.leaving.pop(f"{local}@{domain}", None)
        # Its sessions ended after the purge: no record may outlive the account (one on
        # its way to the writer is not written: its transaction finds no account).
        self.pending.pop((domain, local), None)
        self.committing.pop((domain, local), None)

    def session_ended(self, session: C2SStream) -> None:
        if self.store is None or self.router.resources(session.bare):
            return
        left = self.leaving.pop(session.bare, None)
        status = "" if left is None else left[1]
        if not self.hub.hooked(self, "turn/end"):
            # Hooked only while logouts wait: nothing runs at every turn's end otherwise.
            self.hub.hook(self, "turn/end", self.commit)
        if not self.pending:
            self.router.request_flush()  # the turn's end runs even if nothing is written
        self.pending[(session.domain, session.local)] = (time.time(), status)

    def commit(self) -> None:
        """At "turn/end": the turn's logouts in one transaction."""
        pending, self.pending = self.pending, {}
        self.hub.unhook(self, "turn/end")
        if not pending or self.store is None:
            return
        self.committing.update(pending)
        committed = self.store.later(self.store.recording_logouts(pending))
        committed.add_done_callback(lambda done: self._committed(pending, done))

    def _committed(
        self, logouts: dict[tuple[str, str], tuple[float, str]], done: asyncio.Future[None]
    ) -> None:
        for account, value in logouts.items():
            if self.committing.get(account) is value:  # (not a later logout's)
                del self.committing[account]
        if done.cancelled():
            return
        exc = done.exception()
        if isinstance(exc, (StorageFull, StorageFailed)):
            log.error("cannot record %d logout(s): %s", len(logouts), exc)
        elif exc is not None:
            log.error("cannot record %d logout(s)", len(logouts), exc_info=exc)

    def last_logout(self, domain: str, local: str) -> tuple[float, str] | None:
        """(Unix time, status) of the account's last logout, written or still pending; None
        if none is recorded."""
        pending = self.pending.get((domain, local)) or self.committing.get((domain, local))
        if pending is not None:
            return pending
        return None if self.store is None else self.store.last_logout(domain, local)

    def to_resource(self, origin: Any, st: Stanza, target: tuple[str, ...]) -> None:
        """At "iq/full": §4, a query for one of the account's resources from someone who
        may not see its presence is refused by the server, not delivered."""
        if st.children[0] == (NS, "query") and not may_see_presence(
            self.hub, origin.bare, target[0], target[1]
        ):
            raise StanzaError("forbidden", "you may not see this account's presence")

    def answer(self, origin: C2SStream, st: Stanza, target: tuple[str, ...] | None) -> bytes:
        if st.attrs.get("type") != "get":
            raise StanzaError("bad-request", "last activity is asked with an iq get")
        target = target or sender_account(origin)
        if not target[0]:
            uptime = int(time.monotonic() - self.started)
            return iq_result(origin, st, f"<query xmlns='{NS}' seconds='{uptime}'/>")
        local, domain, bare = target[0], target[1], target[3]
        if not may_see_presence(self.hub, origin.bare, local, domain):
            raise StanzaError("forbidden", "you may not see this account's presence")
        if self.router.resources(bare):
            return iq_result(origin, st, f"<query xmlns='{NS}' seconds='0'/>")
        last = self.last_logout(domain, local)
        if last is None:
            raise StanzaError("item-not-found", "no logout recorded for this account")
        when, status = last
        seconds = max(0, int(time.time() - when))
        return iq_result(
            origin, st, f"<query xmlns='{NS}' seconds='{seconds}'>{escape(status)}</query>"
        )


MODULE = LastActivityModule
