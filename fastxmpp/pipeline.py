"""The stanza pipeline: the named stages the compiled router runs, and the one table that
says who hooks each stage in which order.

The router (`_router.pyx`) knows stages, never features: at each stage it calls the handlers
modules registered, in order, and a stage nobody hooked costs it one check. A handler may

- pass: return None, and the next handler runs;
- modify: return bytes (only where the stage says so), which are what is delivered from then
  on;
- consume: return True, and the stanza goes no further (taken care of);
- bounce: raise `StanzaError`; the stream turns it into the error reply to the sender (one
  place, `C2SStream._handle`), and nothing after it runs: no later stage sees the stanza.

The model is Prosody's `module:hook("message/bare", handler, priority)` and ejabberd's
`user_send_packet` / `user_receive_packet` / `offline_message_hook` run by sequence number:
the order in which archive, carbons, privacy and offline storage see a stanza is written here
and nowhere else (`ORDER`), and docs/ARCHITECTURE.md ("The stanza pipeline") explains it.

Two per-session checks stay in the compiled router because they cost a pointer comparison
there and a Python call per stanza as handlers: `Session.stanza_filter` (the privacy module's
compiled list in force for the session, asked before a stanza is written to or routed from
it) and, in `Session.send`, `csi` then `sm` (stream/csi.py holds unimportant stanzas of an
inactive client, stream/sm.py counts and keeps what is written).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# What each stage is, and what its handlers are called with. `target` is the prepared 'to'
# (local, domain, resource, bare JID); `data` the bytes as delivered ('from' stamped), None
# where the router has not made them yet.
STAGES: dict[str, str] = {
    "message/in": (
        "(origin, st, target, data): a message for a local account (its bare or a full "
        "JID), before the delivery decision. Pass, modify (the bytes to deliver), consume, "
        "bounce."
    ),
    "message/offline": (
        "(origin, st, target, data): a chat/normal message for an existing account with no "
        "resource to take it (RFC 6121 §8.5.2.2.1). Consume (stored), pass, bounce; nobody "
        "consuming it bounces it with service-unavailable."
    ),
    "message/delivered": (
        "(origin, st, target, data, sessions): the message went to `sessions` (those "
        "addressed; none when it was stored for later). Nothing refused it."
    ),
    "message/sent": (
        "(origin, st, target): a message a session sent was routed (to anyone, a room or "
        "another server included); target None: to its own account."
    ),
    "presence/broadcast": "(origin, st): presence without 'to' (RFC 6121 §4.2-§4.5).",
    "presence/subscription": (
        "(origin, st): a subscription request/answer or probe with 'to' (RFC 6121 §3, "
        "§4.3); hooked, the router routes nothing itself."
    ),
    "presence/directed": (
        "(origin, st, target): available/unavailable presence went to `target` (RFC 6121 "
        "§4.6), delivered or not."
    ),
    "iq/account": (
        "(origin, st, target): an iq get/set another entity sends to an account's bare JID, "
        "before the server answers it on the account's behalf. Pass or bounce."
    ),
    "iq/full": (
        "(origin, st, target): an iq get/set another entity sends to one of a local "
        "account's resources, before it is delivered. Pass or bounce."
    ),
    "iq/response": "(origin, st): an iq result/error addressed to the server.",
    "turn/commit": (
        "(wait): the end of a turn of the event loop, before anything queued in it is "
        "written: commit what those writes may acknowledge (a XEP-0198 <a/>, an iq result "
        "answered after a message), or hand it to a writer thread and `hold_writes` on each "
        "session whose output may acknowledge it, releasing them once committed. wait: "
        "every commit under way is done on return (a session closing, STARTTLS). A handler "
        "may queue error stanzas for what it could not commit."
    ),
    "turn/end": (
        "(): once per turn of the event loop, after turn/commit, before the turn's writes "
        "go out; unlike turn/commit, never run for one session's flush (STARTTLS, a closing "
        "stream: a shutdown closes every stream in one turn). For writes that acknowledge "
        "nothing, batched per turn: a crash loses at most one turn of them."
    ),
}

# The order: stage -> ((owner, priority), ...). Higher priority runs first. An owner is a
# module name (or "hub" for the module hub itself); a handler whose (stage, owner) is not in
# this table cannot be hooked.
ORDER: dict[str, tuple[tuple[str, int], ...]] = {
    # XEP-0313/XEP-0359: the recipient's archive id goes into what is delivered or stored.
    "message/in": (("mam", 0),),
    # The account's default list first (XEP-0016 §2.13: no active list while offline), then
    # storage, whose quota may still refuse it (XEP-0160 §2).
    "message/offline": (("privacy", 100), ("offline", 0)),
    # Only now, when nothing can refuse it any more, the archive record (XEP-0313 §6.1: what
    # the account received), then the copies for the other resources (XEP-0280 §4).
    # XEP-0357 last: a notification for what reached no attached session (offline, or a
    # session detached under XEP-0198).
    "message/delivered": (("mam", 100), ("carbons", 0), ("push", -100)),
    # XEP-0280 §5 copies, then the sender's archive.
    "message/sent": (("carbons", 100), ("mam", 0)),
    "presence/broadcast": (("presence", 0),),
    "presence/subscription": (("presence", 0),),
    # RFC 6121 §4.6 bookkeeping, then XEP-0163 §4.3: PEP learns the caps of contacts on
    # other servers from the presence they send.
    "presence/directed": (("presence", 0), ("pep", -100)),
    # XEP-0016 §2.13: the account's default list for iqs answered on its behalf.
    "iq/account": (("privacy", 0),),
    # XEP-0012 §4: last activity is the server's to refuse, even to a resource.
    "iq/full": (("last", 0),),
    "iq/response": (("hub", 0),),
    # The offline messages of the turn and the copies of what detached XEP-0198 sessions
    # hold are committed (a message refused then is archived by nobody: the archive hears
    # of it before its batch leaves), then the archive's batch goes to its writer thread
    # (the output of its senders waits for that commit); all before the writes that
    # acknowledge their messages (issue "Acknowledged means durable", items 1 and 4).
    "turn/commit": (("offline", 100), ("mam", 0)),
    # XEP-0012: the logout times of the sessions that ended in the turn, one transaction.
    "turn/end": (("last", 0),),
}

Handler = Callable[..., Any]


class Pipeline:
    """The handlers hooked at each stage of one router, kept in the order of `ORDER`."""

    def __init__(self, router: Any) -> None:
        self.router = router
        self._hooked: dict[str, dict[str, Handler]] = {stage: {} for stage in ORDER}
        # ORDER, plus the places of modules from other packages (`place`).
        self._order: dict[str, tuple[tuple[str, int], ...]] = dict(ORDER)

    def place(self, owner: str, stage: str, priority: int) -> None:
        """Give a module from another package its place at `stage` (docs/MODULES.md): it
        runs after the handlers of higher priority. A place is given once."""
        if stage not in STAGES:
            raise ValueError(f"no pipeline stage {stage!r}")
        if owner in dict(self._order[stage]):
            raise ValueError(f"{owner} has a place at {stage} already")
        if any(taken == priority for _, taken in self._order[stage]):
            raise ValueError(f"{owner}: priority {priority} at {stage} is taken; pick another")
        self._order[stage] = (*self._order[stage], (owner, priority))

    def hook(self, owner: str, stage: str, handler: Handler) -> None:
        """`owner`'s handler for `stage`, at the place `ORDER` gives it."""
        if stage not in STAGES:
            raise ValueError(f"no pipeline stage {stage!r}")
        if owner not in dict(self._order[stage]):
            raise ValueError(f"{owner} has no place at {stage} in fastxmpp.pipeline.ORDER")
        hooked = self._hooked[stage]
        if owner in hooked:
            raise ValueError(f"{owner} hooked {stage} already")
        hooked[owner] = handler
        self._publish(stage)

    def unhook(self, owner: str, stage: str) -> None:
        """Take `owner`'s handler off `stage` (nothing when it is not there)."""
        if self._hooked[stage].pop(owner, None) is not None:
            self._publish(stage)

    def hooked(self, owner: str, stage: str) -> bool:
        return owner in self._hooked[stage]

    def _publish(self, stage: str) -> None:
        hooked = self._hooked[stage]
        ranked = sorted(self._order[stage], key=lambda entry: -entry[1])
        self.router.set_stage(stage, tuple(hooked[o] for o, _ in ranked if o in hooked))
