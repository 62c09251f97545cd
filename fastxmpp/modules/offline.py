"""Offline messages: RFC 6121 §8.5.2.2.1 storage, XEP-0160 best practice, XEP-0203 stamps.

A chat or normal message (or one without a type) for an existing local account with no
available resource of non-negative priority reaches the pipeline's "message/offline" stage
(after the privacy module's check of the account's default list); it is stored with the
server's <delay/> already inside. The messages stored in a loop turn are committed together
at its "turn/commit" stage, before anything that turn writes (a XEP-0198 <a/> telling the
sender its message was handled) leaves: one LMDB commit per turn, not per message, as the
event loop waits for it. A commit that fails (a full disk) sends each of its senders
resource-constraint (RFC 6120 §8.3.3.18) instead.
At the account's next initial presence with a non-negative priority (XEP-0160 §2, Process
Flow) the queue goes to that resource, oldest first. Each message is deleted once written to
the transport, or, when the session has XEP-0198 stream management on, once the client
acknowledges it (a crash or a lost connection before that leaves it stored; at the next
initial presence it comes again: at least once, never lost). A backlog larger than half of
`limits.max_outbound_buffer` goes out in steps as the client reads (a burst would get it
disconnected as a slow reader); live messages may then arrive among the last stored ones.

Policy:
- headline, groupchat and error messages are never stored (XEP-0160 §3, Handling of Message
  Types); the router drops headlines and errors and refuses groupchat itself.
- A chat message carrying only XEP-0085 chat states is dropped without an error (XEP-0160
  §3: SHOULD NOT be stored; bouncing a typing notification helps nobody).
- Beyond `offline.max_messages` the sender gets service-unavailable (XEP-0160 §2, Process Flow).
- `offline.enabled = false`: the stage is not hooked, so the router bounces such messages
  with service-unavailable (RFC 6121 §8.5.2.2.1) and "msgoffline" is not advertised.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from .. import ns
from .._router import with_delay
from ..delay import OFFLINE_REASON
from ..delay import stamp as xep0082_stamp
from ..errors import StanzaError, stanza_error_bytes
from ..storage.lmdb_store import StorageFailed, StorageFull
from ..storage.offline import OfflineStore
from .base import Module

if TYPE_CHECKING:
    from .._parser import Stanza
    from ..stream.c2s import C2SStream
    from ..stream.sm import StreamManagement
    from .privacy import PrivacyModule

    # (its number in the stream, the message as sent, the time for its <delay/> or None)
    Kept = tuple[int, bytes, str | None]

log = logging.getLogger("fastxmpp.offline")

FEATURE = "msgoffline"  # XEP-0160 §4 (Service Discovery)
NS_CHATSTATES = ns.CHATSTATES
# XEP-0160 §3: never stored. Every other type is chat or normal (RFC 6121 §5.2.2: an unknown
# type is handled as normal).
NOT_STORED_TYPES = frozenset(("headline", "groupchat", "error"))
# Delivery: messages read from storage at a time, and how often a paced delivery looks
# whether the client has read what it was sent.
BATCH = 200
PACING_INTERVAL = 0.02


def only_chat_states(st: Stanza) -> bool:
    return bool(st.children) and all(namespace == NS_CHATSTATES for namespace, _ in st.children)


class OfflineModule(Module):
    name = "offline"
    features = (FEATURE,)

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        self.settings = self.config.offline
        self.store: OfflineStore | None = None
        # Unsent output a delivery may fill: half of what gets a slow reader disconnected
        # (limits.max_outbound_buffer), so a large backlog never trips that limit.
        self.output_budget = self.config.limits.max_outbound_buffer // 2
        # Accounts with a paced delivery under way (a second resource does not start one).
        self.delivering: set[str] = set()
        # Per session (full JID): the key of the last stored message it was sent and holds
        # unacknowledged under XEP-0198 (still stored until acknowledged).
        self.kept_until: dict[str, bytes] = {}
        # Copies of what detached XEP-0198 sessions hold (stream/sm.py `keep_detached`):
        # waiting for this turn's commit (session, its state, [(number, message, stamp)]),
        # and the keys of those stored, which no initial presence delivers while their
        # session may still be resumed (the message would arrive twice).
        self._detached_pending: list[tuple[C2SStream, StreamManagement, list[Kept]]] = []
        # Messages stored this turn, by account (committed at "turn/commit"), who sent each
        # (told if it cannot be stored after all), and how many each account holds counting
        # them (read from storage once per turn and account).
        self._turn_stored: dict[tuple[str, str], list[bytes]] = {}
        self._turn_senders: dict[tuple[str, str], list[tuple[Any, str | None, str | None]]] = {}
        self._turn_counts: dict[tuple[str, str], int] = {}
        self.held: set[bytes] = set()
        # When each session sent its initial presence: a message to the bare JID sent
        # before that did not reach it (XEP-0198 §4 redelivery asks, stream/sm.py).
        self.available_since: dict[C2SStream, float] = {}
        self.privacy: PrivacyModule | None = None

    def start(self) -> None:
        self.privacy = self.hub.get("privacy")
        if not self.settings.enabled:
            # Instance-level: disco must not advertise storage that is switched off.
            setattr(self, "features", ())  # noqa: B010
            return
        assert self.server.storage is not None
        self.store = OfflineStore(self.server.storage)
        self.hub.hook(self, "message/offline", self.store_message)
        self.hub.hook(self, "turn/commit", self.commit_turn)

    # --- storing (RFC 6121 §8.5.2.2.1) ---------------------------------------------------

    def store_message(
        self,
        origin: C2SStream,
        st: Stanza,
        target: tuple[str, ...],
        data: bytes | None = None,
    ) -> bool:
        """At "message/offline": True when the message is taken care of. `data` is the
        message as the router would have delivered it ('from' stamped, a XEP-0359
        stanza-id of the recipient's archive added)."""
        assert self.store is not None
        if st.attrs.get("type") in NOT_STORED_TYPES:
            return False
        local, domain = target[0], target[1]
        if only_chat_states(st):
            return True
        account = (domain, local)
        held = self._turn_counts.get(account)
        if held is None:
            held = self.store.count(domain, local)
        if held >= self.settings.max_messages:
            log.info("offline storage of %s@%s is full", local, domain)
            raise StanzaError("service-unavailable", "the recipient's offline storage is full")
        if data is None:
            data = st.with_attrs({"from": origin.full})
        data = with_delay(data, domain, xep0082_stamp(time.time()), OFFLINE_REASON)
        if not self._turn_stored:
            self.router.request_flush()
        self._turn_counts[account] = held + 1
        self._turn_stored.setdefault(account, []).append(data)
        attrs = st.attrs
        self._turn_senders.setdefault(account, []).append(
            (origin, attrs.get("id"), attrs.get("to"))
        )
        return True

    def commit_turn(self, wait: bool = False) -> None:
        """At "turn/commit": the messages stored this turn, then the copies detached
        sessions hold (`commit_detached`). Committed here, on the loop's thread, whatever
        `wait` says: nothing of the turn is written before."""
        self.commit_stored()
        self.commit_detached()

    def commit_stored(self) -> None:
        """The messages stored since the last commit, all accounts in one transaction; run
        before anything reads or adds to the stored messages too (a delivery, XEP-0198
        copies), so the quota counted in memory holds. Should one not fit after all, its
        sender gets service-unavailable; all of them get resource-constraint when the disk
        is full."""
        if not self._turn_stored:
            return  # (every turn: nothing to make or drop)
        batches, self._turn_stored = self._turn_stored, {}
        senders, self._turn_senders = self._turn_senders, {}
        self._turn_counts = {}
        if self.store is None:
            return
        try:
            stored = self.store.push_keyed(batches, self.settings.max_messages)
        except StorageFull as exc:
            log.error(
                "cannot store %d offline message(s): %s", sum(map(len, batches.values())), exc
            )
            refusal = StanzaError("resource-constraint", "the server's storage is full")
            for account_senders in senders.values():
                self._refuse(account_senders, refusal)
            return
        except StorageFailed as exc:
            # The server stops (Storage.failed): nothing of this turn was stored, and nothing
            # leaves that would say it was.
            log.error(
                "cannot store %d offline message(s): %s", sum(map(len, batches.values())), exc
            )
            return
        for account, keys in stored.items():
            if len(keys) < len(batches[account]):
                log.info("offline storage of %s@%s is full", account[1], account[0])
                refusal = StanzaError(
                    "service-unavailable", "the recipient's offline storage is full"
                )
                self._refuse(senders[account][len(keys) :], refusal)

    def _refuse(
        self, senders: list[tuple[Any, str | None, str | None]], error: StanzaError
    ) -> None:
        """Each sender told (once: the archive, which took the message at "message/delivered",
        does not tell it again, modules/mam.py)."""
        mam = self.hub.get("mam")
        for origin, msg_id, to in senders:
            origin.send(stanza_error_bytes("message", msg_id, to, origin.full, error))
            if mam is not None:
                mam.refused_later(origin, msg_id)

    def store_unacknowledged(
        self, domain: str, local: str, messages: list[tuple[bytes, str | None]]
    ) -> int:
        """XEP-0198 §4: messages a session never acknowledged before it ended, kept like
        ones that found the account offline, in one commit. Each is (the message as it was
        sent, its 'from' stamped; the time for its <delay/>, None: it has one already).
        How many were stored, oldest first: the caller bounces the rest (storage off, the
        account's quota reached, or the disk full)."""
        if self.store is None or not messages:
            return 0
        self.commit_stored()  # after what this turn stored already
        delayed = [
            with_delay(data, domain, stamp, OFFLINE_REASON) if stamp else data
            for data, stamp in messages
        ]
        try:
            stored = self.store.push_many(domain, local, delayed, self.settings.max_messages)
        except StorageFull as exc:
            log.error("cannot store unacknowledged messages: %s", exc)
            return 0
        if stored < len(messages):
            log.info("offline storage of %s@%s is full", local, domain)
        return stored

    # --- what detached XEP-0198 sessions hold (issue "Acknowledged means durable", item 4)

    def keep_for_detached(
        self, session: C2SStream, state: StreamManagement, messages: list[Kept]
    ) -> None:
        """Write copies of messages a detached session holds at this turn's "turn/commit":
        before any <a/> of this turn (the one telling their sender they arrived) leaves."""
        if not self._detached_pending:
            self.router.request_flush()
        self._detached_pending.append((session, state, messages))

    def commit_detached(self) -> None:
        """At "turn/commit": the copies queued this turn, in one transaction. A message the
        session no longer holds (acknowledged after a resumption, or its session ended and
        the policy took care of it) is not written; one beyond `offline.max_messages`, or
        when the disk is full, stays in memory only, as without this."""
        pending, self._detached_pending = self._detached_pending, []
        if not pending or self.store is None:
            return
        batches: dict[tuple[str, str], list[bytes]] = {}
        owners: dict[tuple[str, str], list[tuple[StreamManagement, int]]] = {}
        for session, state, messages in pending:
            account = (session.domain, session.local)
            for number, data, stamp in messages:
                if session.sm is not state or not state.holds(number):
                    continue
                delayed = with_delay(data, session.domain, stamp, OFFLINE_REASON) if stamp else data
                batches.setdefault(account, []).append(delayed)
                owners.setdefault(account, []).append((state, number))
        if not batches:
            return
        try:
            stored = self.store.push_keyed(batches, self.settings.max_messages)
        except StorageFull as exc:
            log.error("cannot store what detached sessions hold: %s", exc)
            return
        for account, keys in stored.items():
            if len(keys) < len(batches[account]):
                log.info("offline storage of %s@%s is full", account[1], account[0])
            for (state, number), key in zip(owners[account], keys, strict=False):
                state.persisted[number] = key
                state.release_stored = self._acknowledged
                self.held.add(key)

    def detached_copies_settled(self, released: list[bytes], kept: list[bytes]) -> None:
        """A session that was detached ended: the copies in `released` are not needed (their
        messages went elsewhere), those in `kept` stay as offline messages, deliverable now."""
        self.held.difference_update(kept)
        if released:
            self._acknowledged(released)

    # --- delivery (XEP-0160 §2) -------------------------------------------------------------

    def initial_presence(self, session: C2SStream) -> None:
        self.available_since[session] = time.time()
        if self.store is None or session.priority < 0 or session.bare in self.delivering:
            return
        if not self._deliver_batch(session):
            return
        # More than one output buffer's worth: the rest follows as the client reads.
        self.delivering.add(session.bare)
        task = asyncio.get_running_loop().create_task(self._deliver_rest(session))
        self.server.background.add(task)
        task.add_done_callback(self.server.background.discard)
        task.add_done_callback(lambda _t: self.delivering.discard(session.bare))

    def _deliver_batch(self, session: C2SStream) -> bool:
        """Hand the oldest stored messages to the transport, as many as fit the output budget
        (at least one), and delete them; True when more may remain."""
        assert self.store is not None
        transport = session.transport
        if transport is None or transport.is_closing() or session.closing:
            return False
        room = self.output_budget - transport.get_write_buffer_size()
        # Messages this session holds unacknowledged are still stored (XEP-0198): read on
        # after the last of them.
        after = self.kept_until.get(session.full)
        self.commit_stored()  # what arrived this turn is delivered too
        messages = self.store.peek(session.domain, session.local, BATCH, after, self.held)
        delivered: list[bytes] = []  # leave storage now
        handed = 0
        size = 0
        sm = session.sm
        for key, data in messages:
            if handed and size + len(data) > room:
                break
            handed += 1
            size += len(data)
            # XEP-0016: the list in force now (it may have changed since); a blocked
            # message is dropped (its sender cannot be told any more).
            if self.privacy is None or self.privacy.stored_message_allowed(session, data):
                session.send(data)
                # With XEP-0198 it leaves storage when the client acknowledges it: a crash
                # before that must not lose it (issue "Acknowledged means durable", item 3).
                if sm is not None and sm.keep_stored(data, key, self._acknowledged):
                    self.kept_until[session.full] = key
                    continue
            delivered.append(key)
        # Into the transport before they leave storage: a message is never in neither place.
        session.flush()
        if delivered:
            self.store.remove(delivered)
        if handed:
            log.info("delivered %d offline messages to %s", handed, session.full)
        return handed < len(messages) or len(messages) == BATCH

    def _acknowledged(self, keys: list[bytes]) -> None:
        """The client acknowledged stored messages (XEP-0198 <a/>): now they leave storage.
        If that write fails they stay, and come again at the next login (at least once)."""
        assert self.store is not None
        self.held.difference_update(keys)
        try:
            self.store.remove(keys)
        except StorageFull as exc:
            log.error("cannot delete %d acknowledged offline messages: %s", len(keys), exc)

    def account_removed(self, domain: str, local: str) -> None:
        # Its stored messages went with the account; those of this turn go too.
        self._turn_stored.pop((domain, local), None)
        self._turn_senders.pop((domain, local), None)
        self._turn_counts.pop((domain, local), None)

    def session_ended(self, session: C2SStream) -> None:
        self.kept_until.pop(session.full, None)
        self.available_since.pop(session, None)

    async def _deliver_rest(self, session: C2SStream) -> None:
        while True:
            await asyncio.sleep(PACING_INTERVAL)
            transport = session.transport
            if transport is None or session.closing:
                return
            if transport.get_write_buffer_size() > self.output_budget // 2:
                continue
            try:
                if not self._deliver_batch(session):
                    return
            except Exception:
                log.exception("offline delivery to %s failed", session.full)
                return


MODULE = OfflineModule
