"""XEP-0313 Message Archive Management: user archives (urn:xmpp:mam:2), with XEP-0359
stanza-ids, XEP-0059 paging and XEP-0004 query forms.

- What is archived (§6.1 business rules, as Prosody's mod_mam does by default): messages
  of type chat or normal with a <body/> that a local account receives (delivered, or
  stored offline) or sends, both ways of the conversation; not groupchat (rooms keep
  their own archives: modules/muc/archive.py, through `archive` and the query functions
  below), headline, error, nor a message with the XEP-0334 <no-store/> or
  <no-permanent-store/> hint. §5 preferences decide per conversation partner; the default
  is 'always'.
- Pipeline handlers (fastxmpp/pipeline.py): at "message/in", before the delivery
  decision, `received` gives a message to a local account the XEP-0359 <stanza-id
  by=bare id=.../> of its archive record (one a sender put there with by= the recipient's
  bare JID is removed first, XEP-0359 §5); the record is written at "message/delivered"
  (`archive_received`), which only runs once the message went to a session or into
  offline storage: a message the recipient's privacy lists or its full offline storage
  refuse (it bounces) is in no archive, nor is one to an account that does not exist.
  Messages stored offline are stored as they would have been delivered, stanza-id
  included. At "message/sent", `sent` archives what a local account sent once it was
  routed.
- §4 queries: an iq set to the account's bare JID or without 'to' (others: forbidden);
  form fields with, start, end, before-id, after-id (v0.7), XEP-0059 <max/> (capped at
  `[mam] max_page`), <after/>, <before/>; <index/> and other fields: feature-not-
  implemented. An id not in the archive: item-not-found. Results as <result/> messages,
  then <fin complete=...> with <first>/<last>, and XEP-0059 <count/> when the query has no
  filter (the archive's kept size; a filtered count would mean a scan, which §2.2 spares).
- Archive writes leave the event loop: at the pipeline's "turn/commit" stage (which the
  router runs before it writes anything queued in that turn) the turn's records go to a
  GroupCommitWriter thread (storage/lmdb_store.py), which commits whatever accumulated while
  its previous commit ran in one transaction. Deliveries to recipients leave at once; the
  output of each local session that sent an archived message is held (`Session.hold_writes`)
  until that commit is done, so no XEP-0198 <a/> or iq result that acknowledges an archived
  message leaves before the record is on disk. Closing sessions and shutdown wait for the
  commits under way. If a commit fails (StorageFull), every sender of its messages gets
  resource-constraint (type wait), then its held output leaves.
- Commits put the records into a journal, and an account's records fold into its archive
  together later (storage/mam.py: at FOLD_ROWS of them, after about FOLD_AGE seconds, at
  shutdown, or before a read): a query (a user's or a room's) is answered once the archive
  it reads has its records folded (`answer_settled`: the querying stream's later input
  waits, the event loop serves everyone else). Retention limits apply when records fold,
  so a query never sees more than the limit; §7 metadata (and XEP-0386's at login) reads
  the archive and its journal's rows as they are, without waiting.
- `with`: messages are stored with the partner's bare JID; a full JID in `with` matches
  its bare JID's messages. JIDs in `with` and in the §5 preferences are prepared (RFC 7622):
  `JULIET@CAPULET.LIT` names juliet@capulet.lit; one that is no JID gets jid-malformed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape, quoteattr

from lxml import etree

from .. import ns
from .._router import ArchiveHooks, delay_element, forwarded_message
from ..delay import parse_stamp, stamp
from ..errors import StanzaError, stanza_error_bytes
from ..jid import JIDError, parse_jid
from ..metrics import Figure, gauge
from ..storage.account_data import account_prefix
from ..storage.lmdb_store import GroupCommitWriter, StorageFull
from ..storage.mam import FOLD_AGE, ArchiveCommit, ArchiveStore, Record, Row
from .base import Module, iq_result

if TYPE_CHECKING:
    from .._parser import Stanza
    from ..stream.c2s import C2SStream

log = logging.getLogger("fastxmpp.mam")

NS = ns.MAM
NS_SID = "urn:xmpp:sid:0"  # XEP-0359
NS_RSM = "http://jabber.org/protocol/rsm"  # XEP-0059
NS_DATA = "jabber:x:data"  # XEP-0004
# What §6.1 looks at (the user archives' test is `_router.archivable`; rooms' in muc/archive.py).
BODY = (ns.CLIENT, "body")
NOT_STORED = frozenset(((ns.HINTS, "no-store"), (ns.HINTS, "no-permanent-store")))
FIELDS = ("with", "start", "end", "before-id", "after-id")
# The rows of old tails (storage/mam.py: FOLD_AGE) one commit folds at most: the loop waits
# while the writer makes a commit's puts, so a burst of them is spread over several.
AGED_FOLD_ROWS = 256
DEFAULTS = ("always", "never", "roster")


def prepared_bare(text: str | None) -> str:
    """The bare JID `text` names, prepared (RFC 7622); jid-malformed when it is no JID."""
    try:
        return parse_jid((text or "").strip()).bare
    except JIDError as exc:
        raise StanzaError("jid-malformed", f"{text!r} is no JID: {exc}") from None


def without_sid(st: Stanza, by: str, changes: dict[str, str]) -> bytes:
    """XEP-0359 §5: the stanza without the <stanza-id/>s naming `by`, attributes changed."""
    el = st.element()
    for child in el.findall(f"{{{NS_SID}}}stanza-id"):
        if child.get("by") == by:
            el.remove(child)
    for key, value in changes.items():
        el.set(key, value)
    return bytes(etree.tostring(el))


@dataclass(frozen=True)
class ArchiveQuery:
    """A §4 query, parsed: the form's filters and the XEP-0059 paging."""

    with_: str | None
    start: float | None
    end: float | None
    after: str | None
    before: str | None
    limit: int
    backwards: bool
    queryid: str | None
    # No with/start/end/after-id/before-id: the result set is the whole archive, whose size
    # is kept (XEP-0059 §2.2 <count/>, sent only then: a filtered count would be a scan).
    whole: bool = False


def query_form() -> str:
    """§4.1.2: the fields this server accepts."""
    kinds = {"with": "jid-single"}
    fields = "".join(
        f"<field type='{kinds.get(var, 'text-single')}' var='{var}'/>" for var in FIELDS
    )
    return (
        f"<x xmlns='{NS_DATA}' type='form'><field type='hidden' var='FORM_TYPE'>"
        f"<value>{NS}</value></field>{fields}</x>"
    )


def parse_query(query: Any, max_page: int, prepare_with: Callable[[str], str]) -> ArchiveQuery:
    """The filters (§4.1.1) and paging (XEP-0059, <max/> capped at `max_page`) of a
    <query/>; `prepare_with` turns the 'with' field into what the archive stores."""
    fields = _form_fields(query)
    with_ = fields.get("with")
    after = fields.get("after-id")
    before = fields.get("before-id")
    limit = max_page
    backwards = False
    rsm = query.find(f"{{{NS_RSM}}}set")
    if rsm is not None:
        for child in rsm:
            if not isinstance(child.tag, str):
                continue
            name = etree.QName(child).localname
            text = (child.text or "").strip()
            if name == "max":
                if not text.isdigit():
                    raise StanzaError("bad-request", "<max/> is a number")
                limit = min(int(text), limit)
            elif name == "after":
                after = _later(after, text)
            elif name == "before":
                backwards = True
                if text:
                    before = _earlier(before, text)
            elif name == "index":
                raise StanzaError("feature-not-implemented", "no <index/> paging")
    return ArchiveQuery(
        whole=not (
            with_
            or fields.get("start")
            or fields.get("end")
            or fields.get("after-id")
            or fields.get("before-id")
        ),
        with_=None if with_ is None else prepare_with(with_),
        start=_time(fields.get("start")),
        end=_time(fields.get("end")),
        after=after,
        before=before,
        limit=limit,
        backwards=backwards,
        queryid=query.get("queryid"),
    )


def answer_query(
    store: ArchiveStore,
    origin: C2SStream,
    st: Stanza,
    domain: str,
    local: str,
    request: ArchiveQuery,
    results_from: str | None = None,
    render: Callable[[Record], bytes] | None = None,
) -> bytes:
    """§4.2-§4.3 for the archive of domain/local (an account, or a room: modules/muc/
    archive.py): each match as a <result/> message from `results_from` (default: the
    asker's bare JID) holding the archived message (`render`ed: what the asker may see),
    then the iq result with <fin/>. An id not in the archive: item-not-found."""
    for record_id in (request.after, request.before):
        if record_id is not None and not store.exists(domain, local, record_id):
            raise StanzaError("item-not-found", f"no message {record_id} in the archive")
    records, complete = store.query(
        domain,
        local,
        with_=request.with_,
        start=request.start,
        end=request.end,
        after=request.after,
        before=request.before,
        limit=request.limit,
        backwards=request.backwards,
    )
    queryid = request.queryid
    qattr = "" if queryid is None else f" queryid={quoteattr(queryid)}"
    sender = origin.bare if results_from is None else results_from
    for record in records:
        # §4.2: each result forwards the archived message with its time.
        wrapper = f"<result xmlns='{NS}'{qattr} id='{record.id}'>"
        delay = delay_element(None, stamp(record.when))
        xml = record.xml if render is None else render(record)
        origin.send(forwarded_message(sender, origin.full, None, wrapper, xml, delay))
    count = f"<count>{store.count(domain, local)}</count>" if request.whole else ""
    if records:
        rset = (
            f"<set xmlns='{NS_RSM}'><first>{records[0].id}</first>"
            f"<last>{records[-1].id}</last>{count}</set>"
        )
    else:
        rset = f"<set xmlns='{NS_RSM}'>{count}</set>"
    flag = " complete='true'" if complete else ""
    return iq_result(origin, st, f"<fin xmlns='{NS}'{flag}>{rset}</fin>")


def archive_metadata(
    store: ArchiveStore, domain: str, local: str, newer: list[Row] | tuple[()] = ()
) -> str:
    """§7: the first and last message of the archive of domain/local, the rows in its
    journal included (committed, not folded yet: no read waits for a fold here, so a
    XEP-0386 login answers at once), and `newer`: its rows archived and not committed yet,
    oldest first (a message the account sent just before it asked is in its archive)."""
    first, _ = store.query(domain, local, limit=1)
    waiting = store.waiting_ends(account_prefix(domain, local))
    ends = [(f"{row[1]:016x}", row[2]) for row in (newer[0], newer[-1])] if newer else None
    if first:
        start: tuple[str, float] | None = (first[0].id, first[0].when)
    else:
        start = waiting[0] if waiting else ends[0] if ends else None
    if start is None:
        return f"<metadata xmlns='{NS}'/>"
    if ends:
        end = ends[1]
    elif waiting:
        end = waiting[1]
    else:
        last, _ = store.query(domain, local, limit=1, backwards=True)
        end = (last[0].id, last[0].when)
    return (
        f"<metadata xmlns='{NS}'><start id='{start[0]}' timestamp='{stamp(start[1])}'/>"
        f"<end id='{end[0]}' timestamp='{stamp(end[1])}'/></metadata>"
    )


def _later(current: str | None, other: str) -> str:
    return other if current is None or other > current else current


def _earlier(current: str | None, other: str) -> str:
    return other if current is None or other < current else current


def _time(text: str | None) -> float | None:
    if text is None:
        return None
    when = parse_stamp(text)
    if when is None:
        raise StanzaError("bad-request", f"{text!r} is no XEP-0082 DateTime")
    return when


def _form_fields(query: Any) -> dict[str, str]:
    form = query.find(f"{{{NS_DATA}}}x")
    found: dict[str, str] = {}
    if form is None:
        return found
    for field in form.findall(f"{{{NS_DATA}}}field"):
        var = field.get("var")
        value = field.findtext(f"{{{NS_DATA}}}value")
        if var == "FORM_TYPE":
            if (value or "").strip() != NS:
                raise StanzaError("bad-request", f"FORM_TYPE is {NS}")
            continue
        if var not in FIELDS:
            # §4.1.1: fields the server does not support.
            raise StanzaError("feature-not-implemented", f"no field {var}")
        if value is not None and value.strip():
            found[var] = value.strip()
    return found


class MamModule(Module):
    name = "mam"
    account_features = (NS, NS_SID)

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        self.settings = server.config.mam
        self.store: ArchiveStore | None = None
        self._prefs: dict[str, tuple[str, list[str], list[str]]] = {}
        # The work per message (compiled, fastxmpp/_router.pyx): its rows not handed to the
        # writer yet (`hooks.pending`), given to it at "turn/commit" when no commit is under
        # way, else when that commit ends; for each message among them, who sent it (told if
        # the commit fails); the local sessions whose output waits for them.
        self.hooks: ArchiveHooks  # made by `start`, with the store
        # (max_messages, max_age) of the archives with limits of their own that have rows
        # pending or unfolded (storage/mam.py: the journal).
        self._limits: dict[bytes, tuple[int, float]] = {}
        # Archives whose unfolded rows the next commit moves into them (read soon); those
        # whose oldest row is old, a few per commit (AGED_FOLD_ROWS), and the timer that
        # finds them.
        self._fold: set[bytes] = set()
        self._aged: deque[bytes] = deque()
        self._fold_timer: asyncio.TimerHandle | None = None
        self._stopped = False
        # The commit under way (one at a time: each is planned from the tails the one
        # before left): (future, senders, sessions whose output waits, the plan).
        self._commits: deque[tuple[Future[Any], Any, list[Any], ArchiveCommit]] = deque()
        self.writer: GroupCommitWriter | None = None
        # Reads waiting for a commit under way (`settled`): its future -> theirs, told
        # whether it committed once it is released.
        self._settling: dict[Future[Any], list[asyncio.Future[bool]]] = {}
        self.commit_results: Counter[str] = Counter()  # "committed" / "failed" (/metrics)

    def start(self) -> None:
        assert self.server.storage is not None
        self.store = ArchiveStore(self.server.storage)
        self.hooks = ArchiveHooks(self, self.store.next_number, self.router)
        self.router.set_iq_handler(NS, self.answer)
        if self.settings.enabled or self.store.tails:
            # (Rows a crash left unfolded are folded even if archiving is off now.)
            self._start_writer()
            self._schedule_fold()
        if self.settings.enabled:
            self.hub.hook(self, "message/in", self.hooks.received)
            self.hub.hook(self, "message/delivered", self.hooks.archive_received)
            self.hub.hook(self, "message/sent", self.hooks.sent)

    def _start_writer(self) -> None:
        """The storage's group-commit writer (its thread starts on first use) and the
        "turn/commit" handler: at start for user archives, else when a room first archives
        something (no per-turn call on a server that archives nothing)."""
        assert self.server.storage is not None
        self.writer = self.server.storage.writer
        self.writer.listeners.append(self.flush)
        self.hub.hook(self, "turn/commit", self.flush)

    def account_removed(self, domain: str, local: str) -> None:
        self._prefs.pop(f"{local}@{domain}", None)
        self.hooks.forget(f"{local}@{domain}")
        self._drop_archive(domain, local, purged=True)

    def forget(self, domain: str, local: str) -> None:
        """Another module's archive under domain/local (a room's, modules/muc/archive.py)
        goes: what is pending, under way and stored."""
        self._drop_archive(domain, local, purged=False)

    def _drop_archive(self, domain: str, local: str, purged: bool) -> None:
        """`purged`: the account purge removed the stored records already."""
        prefix = account_prefix(domain, local)
        hooks = self.hooks
        hooks.pending = [row for row in hooks.pending if row[0] != prefix]
        self._limits.pop(prefix, None)
        self._fold.discard(prefix)
        if not hooks.pending and hooks.held:
            # Nothing left for the held sessions to wait for.
            _rows, _senders, held = hooks.take()
            for session in held.values():
                session.release_writes()
        if self._commits or not purged:
            # Rows handed to the writer before the purge may commit after it: wait for
            # them, then remove what they wrote.
            assert self.store is not None
            self.flush(wait=True)
            self.store.purge(domain, local)
        elif self.store is not None:
            self.store.drop_tail(prefix)  # its journal rows went with the account

    def archive(self, row: Row, origin: Any, st: Stanza, max_messages: int, max_age: float) -> None:
        """Another module's record (a room's message, modules/muc/archive.py), committed
        with the turn's others and acknowledged only once committed, as a user archive's;
        its archive keeps at most `max_messages`, none older than `max_age` seconds."""
        if self.writer is None:
            self._start_writer()
        self._limits[row[0]] = (max_messages, max_age)
        self.hooks.queue(row, origin, st)

    # --- archiving (the pipeline handlers are `hooks`'; what they ask of the module) -----

    def account_entry(self, domain: str, local: str) -> tuple[bytes, bool]:
        """For `hooks`: the account's key prefix, and whether its §5 preferences archive every
        message (default 'always' and no 'never' JID): no per-message `wanted` then."""
        default, _always, never = self._load_prefs(domain, local)
        return account_prefix(domain, local), default == "always" and not never

    without_sid = staticmethod(without_sid)  # for `hooks`: a forged stanza-id (XEP-0359 §5)

    def refused_later(self, origin: Any, msg_id: str | None) -> None:
        """A message of this turn that another module refused after "message/delivered"
        (offline storage, at its commit): that module told its sender; this turn's archive
        commit, if it fails too, does not tell it again."""
        self.hooks.senders.pop((id(origin), msg_id), None)

    def flush(self, wait: bool = False) -> None:
        """At "turn/commit", and on the loop's thread when a commit ends (the writer's
        notify): what an ended commit held is released (`_release`), then the pending rows
        and folds go to the writer if no commit is under way (else they wait for its end:
        group commit). `wait`: return only once they and every commit under way are done
        and settled."""
        writer = self.writer
        if writer is None:
            return  # nothing was ever archived
        if wait and self._commits:
            writer.wait(self._commits[-1][0])
        self._release()
        # The writer may be committing other stores' changes: then their end calls this
        # again (the writer's listener), and the rows go with the changes waiting by then.
        if (self.hooks.pending or self._fold or self._aged) and not self._commits:
            if wait:
                writer.wait_idle()
            if writer.idle or wait:
                self._hand_over()
        if wait and self._commits:
            writer.wait(self._commits[-1][0])
            self._release()

    def settle(self, domain: str, local: str) -> None:
        """Before a read of the archive of domain/local: everything archived until now is
        in it (the pending rows committed, its unfolded rows folded)."""
        assert self.store is not None
        prefix = account_prefix(domain, local)
        if self.store.has_unfolded(prefix) or any(row[0] == prefix for row in self.hooks.pending):
            self._fold.add(prefix)
        self.flush(wait=True)
        if self.store.has_unfolded(prefix):  # its rows were in the commit under way
            self._fold.add(prefix)
            self.flush(wait=True)

    def _waiting(self, prefix: bytes, upto: int) -> bool:
        """Whether rows of the archive `prefix` with ids at most `upto` wait to be handed
        to the writer: pending, or in the journal (rows a commit under way folds stay in
        their tail until it ends)."""
        assert self.store is not None
        return self.store.has_unfolded(prefix, upto) or any(
            row[0] == prefix and row[1] <= upto for row in self.hooks.pending
        )

    def _carried(self, prefix: bytes, upto: int) -> bool:
        """Whether the commit under way holds new rows of `prefix` with ids at most `upto`."""
        return any(
            row[0] == prefix and row[1] <= upto for entry in self._commits for row in entry[3].rows
        )

    def answer_settled(
        self, origin: C2SStream, st: Stanza, domain: str, local: str, answer: Callable[[], bytes]
    ) -> bytes | None:
        """`answer()` to the iq `st`, read from the archive of domain/local once everything
        archived in it until now is there: now if nothing is on its way to it (None
        returned: the answer goes out later, and the stream's later input waits for it).
        Unlike `settle`, the event loop serves everyone else meanwhile: a query at login,
        as every phone makes, would otherwise stop the server for a commit or two."""
        assert self.store is not None
        prefix = account_prefix(domain, local)
        upto = self.store.last_number()
        if not self._waiting(prefix, upto) and not self._carried(prefix, upto):
            return answer()
        if origin.is_remote:
            # A remote entity's query of a room's archive (no stream of its own whose input
            # could wait): answered after waiting here.
            self.settle(domain, local)
            return answer()

        async def settled() -> bytes:
            await self.settled(prefix, upto)
            return answer()

        origin.run_iq_step(st, settled)
        return None

    async def settled(self, prefix: bytes, upto: int) -> None:
        """Returns once every row of `prefix` with an id at most `upto` is in its archive
        (folded there by a commit that has ended), or a commit failed (the read then shows
        what is there, as after any failed commit)."""
        loop = asyncio.get_running_loop()
        writer = self.writer
        assert writer is not None
        while True:
            if self._waiting(prefix, upto):
                self._fold.add(prefix)
                if not self._commits:
                    if not writer.idle:  # (other stores' changes)
                        await writer.transaction_end()
                        continue
                    self._hand_over()
            elif not self._carried(prefix, upto):
                return
            ended: asyncio.Future[bool] = loop.create_future()
            self._settling.setdefault(self._commits[-1][0], []).append(ended)
            if not await ended:
                return

    def _hand_over(self) -> None:
        """The pending rows, and the folds asked for, to the writer in one transaction. The
        writer is idle (one commit at a time: each is planned from the tails the one before
        left): the loop waits while the writer thread puts the rows (a few µs each), then
        goes on while it commits. Put by the writer while the loop runs, every
        put would hand the GIL back and forth between the threads (py-lmdb releases it for
        each call): that cost more than the puts themselves (docs/PERFORMANCE.md, "The
        archive writer and the GIL")."""
        assert self.store is not None and self.writer is not None
        batch, senders, held = self.hooks.take()
        fold, self._fold = self._fold, set()
        budget = AGED_FOLD_ROWS
        while self._aged and budget > 0:
            prefix = self._aged.popleft()
            rows = self.store.unfolded_rows(prefix)
            if rows:
                fold.add(prefix)
                budget -= rows
        commit = self.store.plan(
            batch,
            self.settings.max_messages_per_account,
            self.settings.max_age_days * 86400.0,
            self._limits,
            fold,
        )
        future = self.writer.submit(commit.work, wait_applied=True)
        self._commits.append((future, senders, list(held.values()), commit))

    def _release(self) -> None:
        commits = self._commits
        while commits and commits[0][0].done():
            future, senders, sessions, commit = commits.popleft()
            exc = future.exception()
            self.commit_results["failed" if exc is not None else "committed"] += 1
            if exc is None:
                commit.committed()
                self._forget_limits(commit)
            for ended in self._settling.pop(future, ()):
                if not ended.done():  # (a reader whose stream closed meanwhile)
                    ended.set_result(exc is None)
            self._schedule_fold()  # also for the folds a failed commit did not make
            if isinstance(exc, StorageFull):
                # Not archived: each sender is told (RFC 6120 §8.3.3.18, type wait) before
                # any acknowledgement held for this commit leaves, and may send again.
                log.error("archive commit failed, %d message(s) refused: %s", len(senders), exc)
                refusal = StanzaError("resource-constraint", "the message archive cannot store it")
                for origin, msg_id, to in senders.values():
                    origin.send(stanza_error_bytes("message", msg_id, to, origin.full, refusal))
            elif exc is not None:
                # The storage failed (the server stops: Storage.failed) or a fault of ours:
                # what the held output would acknowledge is not on disk, so it never leaves
                # (the stream error the server ends the stream with does).
                log.error("archive commit failed: %s: %s", type(exc).__name__, exc)
                for session in sessions:
                    session.drop_held_writes()
                continue
            for session in sessions:
                session.release_writes()

    def _forget_limits(self, commit: ArchiveCommit) -> None:
        """The limits of archives with nothing pending or unfolded any more."""
        if not self._limits:
            return
        assert self.store is not None
        store = self.store
        pending = {row[0] for row in self.hooks.pending}
        for prefix in commit.folds:
            if not store.has_unfolded(prefix) and prefix not in pending:
                self._limits.pop(prefix, None)

    def _schedule_fold(self) -> None:
        """Every FOLD_AGE / 2 seconds while rows are unfolded (an idle server has no timer),
        the tails older than that fold: none waits much longer than FOLD_AGE."""
        assert self.store is not None
        if not self.store.tails or self._fold_timer is not None or self._stopped:
            return
        assert self.writer is not None
        self._fold_timer = self.writer.loop.call_later(FOLD_AGE / 2, self._fold_aged)

    def _fold_aged(self) -> None:
        self._fold_timer = None
        assert self.store is not None
        if not self._aged:
            self._aged.extend(self.store.aged(time.time() - FOLD_AGE / 2))
        if self._aged:
            self.router.request_flush()  # folds begin at this turn's "turn/commit"
        self._schedule_fold()

    def metrics(self) -> list[Figure]:
        results = self.commit_results
        return [
            Figure(
                "archive_commits",
                "XEP-0313 archive transactions (each with what arrived meanwhile), by result",
                "counter",
                [(("committed",), results["committed"]), (("failed",), results["failed"])],
                ("result",),
            ),
            gauge(
                "archive_rows_pending",
                "archive rows waiting for the next transaction",
                len(self.hooks.pending) if self.writer is not None else 0,
            ),
        ]

    def stop(self) -> None:
        self._stopped = True
        if self._fold_timer is not None:
            self._fold_timer.cancel()
            self._fold_timer = None
        if self.writer is None:
            return
        self.flush(wait=True)
        if self.store is not None and self.store.unfolded:
            # Everything into the archives: the journal is empty while the server is off.
            self._fold.update(self.store.unfolded_accounts())
            self.flush(wait=True)
        self.writer.listeners.remove(self.flush)  # (the storage closes the writer)

    def wanted(self, domain: str, local: str, peer: str) -> bool:
        """§5: the account's preferences for `peer`."""
        default, always, never = self._load_prefs(domain, local)
        if default == "always" and not never:
            return True
        if peer in always:
            return True
        if peer in never:
            return False
        if default == "always":
            return True
        if default == "roster":
            roster = self.hub.get("roster")
            return roster is not None and roster.item(domain, local, peer) is not None
        return False

    def _load_prefs(self, domain: str, local: str) -> tuple[str, list[str], list[str]]:
        key = f"{local}@{domain}"
        prefs = self._prefs.get(key)
        if prefs is None:
            assert self.store is not None
            prefs = self.store.prefs(domain, local) or ("always", [], [])
            if len(self._prefs) > 10000:
                self._prefs.clear()
            self._prefs[key] = prefs
        return prefs

    # --- iqs ---------------------------------------------------------------------------

    def answer(self, origin: C2SStream, st: Stanza, target: tuple[str, ...] | None) -> bytes | None:
        if target is not None and target[3] != origin.bare:
            raise StanzaError("forbidden", "an archive belongs to its account only")
        el = st.element()
        payload = next((c for c in el if isinstance(c.tag, str)), None)
        if payload is None:
            raise StanzaError("bad-request", "a urn:xmpp:mam:2 element is expected")
        tag = etree.QName(payload).localname
        itype = st.attrs.get("type")
        if tag == "query" and itype == "set":
            return self._query(origin, st, payload)
        if tag == "query" and itype == "get":
            return iq_result(origin, st, f"<query xmlns='{NS}'>{query_form()}</query>")
        if tag == "prefs":
            if itype == "set":
                self._set_prefs(origin, payload)
            return iq_result(origin, st, self._prefs_xml(origin))
        if tag == "metadata" and itype == "get":
            return iq_result(origin, st, self._metadata(origin))
        raise StanzaError("bad-request", f"unexpected {tag} in an iq {itype}")

    def _query(self, origin: C2SStream, st: Stanza, query: Any) -> bytes | None:
        store = self.store
        assert store is not None
        request = parse_query(query, self.settings.max_page, prepared_bare)
        domain, local = origin.domain, origin.local
        # What was archived until now is part of the answer.
        return self.answer_settled(
            origin, st, domain, local,
            lambda: answer_query(store, origin, st, domain, local, request),
        )  # fmt: skip

    def _set_prefs(self, origin: C2SStream, prefs: Any) -> None:
        assert self.store is not None
        default = prefs.get("default")
        if default not in DEFAULTS:
            raise StanzaError("bad-request", "default is always, never or roster")
        lists: dict[str, list[str]] = {"always": [], "never": []}
        for name, jids in lists.items():
            holder = prefs.find(f"{{{NS}}}{name}")
            if holder is not None:
                for jid in holder.findall(f"{{{NS}}}jid"):
                    jids.append(prepared_bare(jid.text))
        try:
            self.store.set_prefs(
                origin.domain, origin.local, default, lists["always"], lists["never"]
            )
        except StorageFull:
            raise StanzaError("resource-constraint", "the server's storage is full") from None
        self._prefs[origin.bare] = (default, lists["always"], lists["never"])
        self.hooks.forget(origin.bare)

    def _prefs_xml(self, origin: C2SStream) -> str:
        default, always, never = self._load_prefs(origin.domain, origin.local)

        def jids(items: list[str]) -> str:
            return "".join(f"<jid>{escape(j)}</jid>" for j in items)

        return (
            f"<prefs xmlns='{NS}' default='{default}'><always>{jids(always)}</always>"
            f"<never>{jids(never)}</never></prefs>"
        )

    def archive_metadata(self, session: C2SStream) -> str | None:
        """The <metadata/> of the session's archive (XEP-0386 <bound/>); None while
        archiving is off."""
        return self._metadata(session) if self.settings.enabled else None

    def _metadata(self, origin: C2SStream) -> str:
        assert self.store is not None
        return archive_metadata(
            self.store, origin.domain, origin.local, self.uncommitted(origin.domain, origin.local)
        )

    def uncommitted(self, domain: str, local: str) -> list[Row]:
        """The rows of the archive of domain/local in the commits under way and not handed
        over yet, oldest first: archived, not in the store yet (a message the account sent
        just before it asked)."""
        prefix = account_prefix(domain, local)
        rows = [row for entry in self._commits for row in entry[3].rows if row[0] == prefix]
        return rows + [row for row in self.hooks.pending if row[0] == prefix]


MODULE = MamModule
