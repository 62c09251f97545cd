"""Load scenarios, run by worker processes (each its own uvloop) under a coordinating parent.

Protocol between parent and workers: each worker sets up (logs in) and reports "ready"; the
parent reads the server's CPU time and RSS, sets `go`; workers run the measured phase, bounded
by `duration` plus a drain timeout, and report their counts, latency samples and their own
CPU time. Nothing loops without a bound on count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing as mp
import queue as queue_module
import random
import resource
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import uvloop
from fastxmpp._parser import Stanza

from . import many, procstat
from .client import Account, LoginOptions, XMPPConnection, login

# Seconds after the measured phase for what is still on its way to arrive (Spec.drain);
# what has not arrived by then counts as lost. Scenarios stop waiting as soon as all has.
DRAIN_TIMEOUT = 5.0
SETUP_TIMEOUT = 300.0
LOGIN_CONCURRENCY = 64  # logins in flight per worker during setup
# idle: RSS is read after the server has been left alone, before the logins (5 s) and after
# them (30 s), so that every server has had the same time to collect and return what the
# logins left behind (Lua and Erlang garbage collection; fastxmpp trims its heap 1 s after
# the churn and frees the parsers of streams silent for 10 s): the memory an idle connection
# holds, not the high-water mark of the login wave.
IDLE_SETTLE_BEFORE_S = 5.0
IDLE_SETTLE_S = 30.0
# Before the measured phase the server must have finished the setup's work (Prosody's file
# storage rewrites a 1000-item roster for every subscription change, for tens of seconds):
# "quiet" is under 5% of a core over half a second; waited for at most QUIET_TIMEOUT_S.
QUIET_CPU_SHARE = 0.05
QUIET_TIMEOUT_S = 180.0
SUBSCRIBE_BATCH = 50  # subscription handshakes in flight per worker during setup
SUBSCRIBE_TIMEOUT_S = 120.0  # per batch


@dataclass
class Spec:
    scenario: str  # login | idle | msg | presence | roster_login | flood | muc | many
    host: str = "127.0.0.1"
    port: int = 5222
    domain: str = "localhost"
    user_prefix: str = "bench"
    users: int = 200  # accounts bench0 .. bench{users-1} exist with `password`
    password: str = "bench-password"
    starttls: bool = True
    mechanism: str = "SCRAM-SHA-1"
    workers: int = 2
    duration: float = 10.0
    pairs: int = 50  # msg: sender/receiver pairs
    window: int = 8  # msg: outstanding messages per pair (closed loop)
    # msg: XEP-0198 on every connection, as mobile clients have it: the sender asks for the
    # server's <a/> after each message (<r/> with it, as Conversations does to mark a
    # message sent), the receiver answers the server's <r/>s
    stream_management: bool = False
    rate: float = 0.0  # msg: total messages/s, open loop (0: closed loop with `window`)
    # msg: XEP-0313 queries/s in all, spread over the senders, each for the last 10 records
    # of the sender's own archive (as a phone asks at every login); not with
    # stream_management (both read the senders' input)
    archive_queries: float = 0.0
    # msg: XEP-0163 publishes/s in all, spread over the senders: each marks its chat with its
    # receiver displayed (XEP-0490, node urn:xmpp:mds:displayed:0, item id the receiver's
    # bare JID, with the publish-options clients send), as a client does at every chat read;
    # not with stream_management or archive_queries (they read the senders' input too)
    pep_publishes: float = 0.0
    connections: int = 1000  # idle: authenticated connections held
    contacts: int = 500  # presence / roster_login: contacts of the hub account (bench0)
    changes_per_s: float = 20.0  # presence: status changes of the hub per second
    concurrency: int = 16  # login: login loops per worker
    # flood: "online" (a victim that reads everything) or "offline" (an account without a
    # session: every message goes to offline storage, up to its quota)
    flood_target: str = "online"
    # flood, online: seconds the victim goes on counting the flood's deliveries after the
    # phase (None: `drain`); the server paces the flooder's input, so what it had taken in
    # trickles out for many seconds (the test suite's smoke run stops early)
    flood_drain: float | None = None
    rooms: int = 10  # muc: rooms, each with `occupants` occupants sending at `rate` in all
    occupants: int = 20
    muc_domain: str = "conference.localhost"
    drain: float = DRAIN_TIMEOUT
    # idle, many: seconds the server is left alone before RSS is read, before the logins
    # and after them (see IDLE_SETTLE_BEFORE_S, IDLE_SETTLE_S)
    settle_before: float = IDLE_SETTLE_BEFORE_S
    settle: float = IDLE_SETTLE_S
    # many (benchmarks/load/many.py): `connections` logged in from the `sources` addresses,
    # held `hold` seconds with a keepalive every `keepalive` s, then `sample` messages;
    # `shutdown`: SIGTERM the server at the end and time its exit
    sources: str = "127.0.0.2-127.0.0.9"
    hold: float = 60.0
    keepalive: float = 30.0
    sample: int = 1000
    shutdown: bool = False
    body: str = "Hello! This is a benchmark message of ordinary chat length, about 80 bytes."
    server_pids: list[int] = field(default_factory=list)

    def account(self, index: int) -> Account:
        return Account(self.domain, f"{self.user_prefix}{index % self.users}", self.password)

    @property
    def options(self) -> LoginOptions:
        return LoginOptions(starttls=self.starttls, mechanism=self.mechanism)


# --- the parent ---------------------------------------------------------------------------


def run(spec: Spec) -> dict[str, Any]:
    """Run one scenario; a dict of results (counts, rates, latencies, server CPU and RSS)."""
    if spec.scenario == "many":
        return many.run(spec)
    ctx = mp.get_context("spawn")
    results: Any = ctx.Queue()
    go = ctx.Event()
    workers = [
        ctx.Process(target=_worker_main, args=(asdict(spec), i, results, go), daemon=True)
        for i in range(spec.workers)
    ]
    pids = _server_pids(spec)
    if spec.scenario == "idle":
        time.sleep(spec.settle_before)
    rss_before = procstat.rss_bytes(pids)
    for w in workers:
        w.start()
    try:
        ready = [_receive(results, "ready", SETUP_TIMEOUT, workers) for _ in workers]
        pids = _server_pids(spec)
        quiet_after = _wait_quiet(pids)
        if spec.scenario == "idle":
            time.sleep(spec.settle)
        rss_ready = procstat.rss_bytes(pids)
        cpu_start = procstat.cpu_seconds(pids)
        started = time.perf_counter()
        go.set()
        # flood: a phase without the flood, then one with it
        measured_s = spec.duration * (2 if spec.scenario == "flood" else 1)
        done = [_receive(results, "done", measured_s + spec.drain + 60, workers) for _ in workers]
        elapsed = time.perf_counter() - started
        cpu_used = procstat.cpu_seconds(pids) - cpu_start
    finally:
        for w in workers:
            w.join(10)
            if w.is_alive():
                w.kill()
    summary = _summarize(spec, ready, done, elapsed, cpu_used, rss_before, rss_ready, pids)
    summary["setup_quiet_after_s"] = quiet_after
    summary["setup_incomplete"] = sum(r.get("incomplete", 0) for r in ready)
    return summary


def _wait_quiet(pids: list[int]) -> float | None:
    """Seconds until the server's CPU use fell below QUIET_CPU_SHARE; None: it never did."""
    started = time.monotonic()
    while time.monotonic() - started < QUIET_TIMEOUT_S:
        before = procstat.cpu_seconds(pids)
        time.sleep(0.5)
        if procstat.cpu_seconds(pids) - before < QUIET_CPU_SHARE * 0.5:
            return round(time.monotonic() - started, 1)
    return None


def _server_pids(spec: Spec) -> list[int]:
    return [p for pid in spec.server_pids for p in procstat.process_tree(pid)]


def _receive(queue: Any, kind: str, timeout: float, workers: list[Any]) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            message = queue.get(timeout=1.0)
            break
        except queue_module.Empty:
            if any(w.exitcode not in (None, 0) for w in workers):
                raise RuntimeError("a load worker died; see its traceback above") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {kind} from the load workers") from None
    if message.get("error"):
        raise RuntimeError(f"worker failed: {message['error']}")
    if message["kind"] != kind:
        raise RuntimeError(f"expected {kind} from a worker, got {message['kind']}")
    return dict(message)


def _percentile(samples: list[float], q: float) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summarize(
    spec: Spec,
    ready: list[dict[str, Any]],
    done: list[dict[str, Any]],
    elapsed: float,
    cpu_used: float,
    rss_before: int,
    rss_ready: int,
    pids: list[int],
) -> dict[str, Any]:
    latencies = [x for d in done for x in d["latencies_ms"]]
    count = sum(d["count"] for d in done)
    active = max((d["active_s"] for d in done), default=elapsed) or elapsed
    summary: dict[str, Any] = {
        "scenario": spec.scenario,
        "count": count,
        "rate_per_s": count / active if active else 0.0,
        "p50_ms": _percentile(latencies, 0.50),
        "p99_ms": _percentile(latencies, 0.99),
        "max_ms": max(latencies) if latencies else None,
        "server_cpu_s": cpu_used,
        "server_cpu_us_per_item": cpu_used * 1e6 / count if count else None,
        "loadgen_cpu_s": sum(d["cpu_s"] for d in done),
        "elapsed_s": elapsed,
        "server_rss_bytes": rss_ready,
        "server_pids": pids,
        "errors": sum(d["errors"] for d in done),
    }
    if spec.scenario in ("msg", "muc"):
        summary["sent"] = sum(d["sent"] for d in done)
        # muc: every occupant (the sender too, XEP-0045 §7.4) gets each message once
        fanout = spec.occupants if spec.scenario == "muc" else 1
        summary["lost"] = summary["sent"] * fanout - count
    if spec.scenario == "msg" and spec.stream_management:
        # XEP-0198: what the senders' last <a/> said the server handled, against what they sent
        summary["sm_unacked"] = summary["sent"] - sum(d["sm_acked"] for d in done)
    # msg's side requests (one kind per run): how many were answered, and how fast
    for rate, plural, singular in (
        (spec.archive_queries, "archive_queries", "archive_query"),
        (spec.pep_publishes, "pep_publishes", "pep_publish"),
    ):
        if spec.scenario == "msg" and rate:
            answered = [x for d in done for x in d["query_latencies_ms"]]
            summary[f"{plural}_answered"] = len(answered)
            summary[f"{singular}_p50_ms"] = _percentile(answered, 0.50)
            summary[f"{singular}_p99_ms"] = _percentile(answered, 0.99)
    if spec.scenario == "flood":
        summary.update(_flood_summary(spec, done))
    if spec.scenario == "idle":
        held = sum(r["connections"] for r in ready)
        summary["connections"] = held
        summary["rss_per_connection_bytes"] = (rss_ready - rss_before) / held if held else None
    return summary


# --- a worker -----------------------------------------------------------------------------


def _worker_main(spec_dict: dict[str, Any], index: int, results: Any, go: Any) -> None:
    spec = Spec(**spec_dict)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        uvloop.run(_worker(spec, index, results, go))
    except BaseException as exc:  # reported to the parent, which fails the run
        results.put({"kind": "error", "error": f"worker {index}: {exc!r}"})


async def _wait_event(go: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not go.is_set():
        if time.monotonic() > deadline:
            raise TimeoutError("the parent never said go")
        await asyncio.sleep(0.005)


async def _worker(spec: Spec, index: int, results: Any, go: Any) -> None:
    scenario = {
        "login": _login_scenario,
        "idle": _idle_scenario,
        "msg": _msg_scenario,
        "presence": _presence_scenario,
        "roster_login": _roster_login_scenario,
        "flood": _flood_scenario,
        "muc": _muc_scenario,
    }
    await scenario[spec.scenario](spec, index, results, go)


def _mine(spec: Spec, index: int, total: int) -> list[int]:
    return [i for i in range(total) if i % spec.workers == index]


async def _bounded_logins(spec: Spec, jobs: list[tuple[Account, str]]) -> list[XMPPConnection]:
    gate = asyncio.Semaphore(LOGIN_CONCURRENCY)

    async def one(account: Account, resource_name: str) -> XMPPConnection:
        async with gate:
            return await login(spec.host, spec.port, account, resource_name, spec.options)

    return list(await asyncio.gather(*(one(a, r) for a, r in jobs)))


def _report(results: Any, kind: str, **values: Any) -> None:
    results.put({"kind": kind, **values})


def _report_done(
    results: Any, cpu0: float, t0: float, count: int, latencies: list[float], errors: int
) -> None:
    """The measured phase is over: what it delivered and what it cost this worker."""
    _report(
        results,
        "done",
        count=count,
        latencies_ms=latencies,
        errors=errors,
        cpu_s=time.process_time() - cpu0,
        active_s=time.perf_counter() - t0,
    )


# login: logins per second and login latency (connect .. bind result)
async def _login_scenario(spec: Spec, index: int, results: Any, go: Any) -> None:
    _report(results, "ready", connections=0)
    await _wait_event(go, SETUP_TIMEOUT)
    cpu0, t0 = time.process_time(), time.perf_counter()
    end = t0 + spec.duration
    latencies: list[float] = []
    errors = 0
    counter = itertools.count(index * 1_000_000)

    async def loop(slot: int) -> None:
        nonlocal errors
        while time.perf_counter() < end:
            n = next(counter)
            started = time.perf_counter()
            try:
                conn = await login(
                    spec.host, spec.port, spec.account(n), f"l{index}-{slot}-{n}", spec.options
                )
            except Exception:
                errors += 1
                await asyncio.sleep(0.05)
                continue
            latencies.append((time.perf_counter() - started) * 1000)
            conn.close()

    await asyncio.wait_for(
        asyncio.gather(*(loop(s) for s in range(spec.concurrency))),
        spec.duration + spec.drain + 30,
    )
    _report_done(results, cpu0, t0, len(latencies), latencies, errors)


# idle: server memory per authenticated idle connection
async def _idle_scenario(spec: Spec, index: int, results: Any, go: Any) -> None:
    mine = _mine(spec, index, spec.connections)
    conns = await _bounded_logins(spec, [(spec.account(i), f"idle{i}") for i in mine])
    # Presence makes them "online" as a real client would be.
    for conn in conns:
        conn.send(b"<presence/>")
    await asyncio.sleep(1.0)  # let the server settle the presences before RSS is read
    _report(results, "ready", connections=len(conns))
    await _wait_event(go, SETUP_TIMEOUT)
    for conn in conns:
        conn.close()
    _report(results, "done", count=len(conns), latencies_ms=[], errors=0, cpu_s=0.0, active_s=0)


STAMPED_POLL_S = 0.1


async def _stamped_messages(
    conn: XMPPConnection, deadline: float, done: Callable[[], bool]
) -> AsyncIterator[tuple[int, int]]:
    """(send stamp, arrival) in ns of each timestamped message arriving on `conn`, until
    `done()` or `deadline` (what is missing then counts as lost). `done()` is checked at
    least every STAMPED_POLL_S, not only when something arrives: once everything has
    arrived it becomes true without further input."""
    while not done():
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            return
        try:
            # a read cancelled by the timeout loses nothing: StreamReader keeps the data
            events = await asyncio.wait_for(conn.read_events(), min(remaining, STAMPED_POLL_S))
        except TimeoutError:
            continue
        now = time.perf_counter_ns()
        for event in events:
            if type(event) is Stanza and event.name == "message":
                stamp = event.attrs.get("id", "")
                if stamp.isdigit():
                    yield int(stamp), now


# msg: 1:1 chat between pairs, closed loop (window) or open loop (rate)
ARCHIVE_QUERY = (
    b"<iq type='set' id='side'><query xmlns='urn:xmpp:mam:2'>"
    b"<set xmlns='http://jabber.org/protocol/rsm'><max>10</max><before/></set></query></iq>"
)


def mds_publish(chat: bytes, archive: bytes, stanza_id: bytes) -> bytes:
    """XEP-0490: `chat` (a bare JID) displayed up to the message with this stanza-id in
    `archive` (the account's own, for a 1:1 chat), with the publish-options of §3.1 (a
    private node that keeps one item per chat)."""
    fields = (
        (b"FORM_TYPE", b"http://jabber.org/protocol/pubsub#publish-options"),
        (b"pubsub#persist_items", b"true"),
        (b"pubsub#max_items", b"max"),
        (b"pubsub#send_last_published_item", b"never"),
        (b"pubsub#access_model", b"whitelist"),
    )
    form = b"".join(
        b"<field var='" + var + b"'><value>" + value + b"</value></field>" for var, value in fields
    )
    return (
        b"<iq type='set' id='side'><pubsub xmlns='http://jabber.org/protocol/pubsub'>"
        b"<publish node='urn:xmpp:mds:displayed:0'><item id='" + chat + b"'>"
        b"<displayed xmlns='urn:xmpp:mds:displayed:0'><stanza-id xmlns='urn:xmpp:sid:0' id='"
        + stanza_id
        + b"' by='"
        + archive
        + b"'/></displayed></item></publish>"
        b"<publish-options><x xmlns='jabber:x:data' type='submit'>" + form + b"</x>"
        b"</publish-options></pubsub></iq>"
    )


async def _msg_scenario(spec: Spec, index: int, results: Any, go: Any) -> None:
    pairs = _mine(spec, index, spec.pairs)
    jobs: list[tuple[Account, str]] = []
    for p in pairs:
        jobs += [(spec.account(2 * p), f"s{p}"), (spec.account(2 * p + 1), f"r{p}")]
    conns = await _bounded_logins(spec, jobs)
    senders, receivers = conns[0::2], conns[1::2]
    if spec.stream_management:
        await asyncio.gather(*(conn.enable_sm(SETUP_TIMEOUT) for conn in conns))
    for conn in conns:
        conn.send(b"<presence/>")
    await asyncio.sleep(0.5)
    for conn in conns:  # drop whatever presence traffic arrived during setup
        conn.queue.clear()
    _report(results, "ready", connections=len(conns))
    await _wait_event(go, SETUP_TIMEOUT)

    body = spec.body.encode()
    cpu0, t0 = time.process_time(), time.perf_counter()
    end = t0 + spec.duration
    latencies: list[float] = []
    sent = [0] * len(pairs)
    received = [0] * len(pairs)

    ack_request = b"<r xmlns='urn:xmpp:sm:3'/>" if spec.stream_management else b""

    def message(to: bytes) -> bytes:
        stamp = str(time.perf_counter_ns()).encode()
        return (
            b"<message type='chat' to='"
            + to
            + b"' id='"
            + stamp
            + b"'><body>"
            + body
            + b"</body></message>"
            + ack_request
        )

    targets = [r.full_jid.encode() for r in receivers]

    async def receive(pair: int) -> None:
        conn, sender, to = receivers[pair], senders[pair], targets[pair]
        async for stamp, now in _stamped_messages(
            conn,
            end + spec.drain,
            lambda: time.perf_counter() > end and received[pair] >= sent[pair],
        ):
            latencies.append((now - stamp) / 1e6)
            received[pair] += 1
            if not spec.rate and time.perf_counter() < end:
                sender.send(message(to))
                sent[pair] += 1

    async def paced(pair: int, per_second: float) -> None:
        sender, to = senders[pair], targets[pair]
        tick = 0.01
        owed = 0.0
        while time.perf_counter() < end:
            owed += per_second * tick
            while owed >= 1:
                sender.send(message(to))
                sent[pair] += 1
                owed -= 1
            await asyncio.sleep(tick)

    acked = [0] * len(pairs)

    async def read_acks(pair: int) -> None:
        """A sender's input: the server's <a/> for each message; the last one's 'h' counts
        the stanzas the server handled (its initial presence, then every message)."""
        sender = senders[pair]
        with contextlib.suppress(ConnectionError):
            while time.perf_counter() < end + spec.drain:
                with contextlib.suppress(TimeoutError):
                    for event in await asyncio.wait_for(sender.read_events(), STAMPED_POLL_S):
                        if type(event) is Stanza and event.name == "a":
                            acked[pair] = int(event.attrs.get("h", 0)) - 1

    query_latencies: list[float] = []

    async def side_requests(pair: int, interval: float, request: Callable[[int], bytes]) -> None:
        """Every `interval` s (from a random start) the iq `request(pair)` (id 'side') from
        the sender: the time to its result, whatever else arrives read on the way (an
        archive query's <result/>s)."""
        sender = senders[pair]
        await asyncio.sleep(random.uniform(0, interval))
        with contextlib.suppress(ConnectionError):
            while time.perf_counter() < end:
                asked = time.perf_counter()
                sender.send(request(pair))
                answered = False
                while not answered:
                    for event in await asyncio.wait_for(sender.read_events(), SETUP_TIMEOUT):
                        if type(event) is Stanza and event.attrs.get("id") == "side":
                            if event.attrs.get("type") != "result":
                                raise RuntimeError(f"{request(pair)!r}: {event.attrs}")
                            answered = True
                query_latencies.append((time.perf_counter() - asked) * 1e3)
                await asyncio.sleep(max(0.0, asked + interval - time.perf_counter()))

    def displayed(pair: int) -> bytes:
        own = senders[pair].full_jid.encode().partition(b"/")[0]
        return mds_publish(targets[pair].partition(b"/")[0], own, str(time.time_ns()).encode())

    tasks = [asyncio.ensure_future(receive(p)) for p in range(len(pairs))]
    readers = (
        [asyncio.ensure_future(read_acks(p)) for p in range(len(pairs))] if ack_request else []
    )
    side: list[tuple[float, Callable[[int], bytes]]] = [
        (spec.archive_queries, lambda pair: ARCHIVE_QUERY),
        (spec.pep_publishes, displayed),
    ]
    chosen = [(per_second, request) for per_second, request in side if per_second]
    if chosen:
        if ack_request or len(chosen) > 1:
            raise ValueError(
                "archive_queries, pep_publishes and stream_management all read the senders"
            )
        per_second, request = chosen[0]
        interval = spec.pairs / per_second  # each pair's share of the rate
        readers += [
            asyncio.ensure_future(side_requests(p, interval, request)) for p in range(len(pairs))
        ]
    if spec.rate:
        per_pair = spec.rate / spec.pairs
        tasks += [asyncio.ensure_future(paced(p, per_pair)) for p in range(len(pairs))]
    else:
        for p in range(len(pairs)):
            for _ in range(spec.window):
                senders[p].send(message(targets[p]))
                sent[p] += 1
    await asyncio.wait(tasks, timeout=spec.duration + spec.drain + 30)
    if ack_request:  # the last <a/>s answer the last messages' <r/>
        await _wait_until(lambda: acked == sent, spec.drain)
    for t in tasks + readers:
        t.cancel()
    active = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    for conn in conns:
        conn.close()
    _report(
        results,
        "done",
        count=sum(received),
        sent=sum(sent),
        sm_acked=sum(acked) if ack_request else None,
        latencies_ms=latencies,
        query_latencies_ms=query_latencies,
        errors=0,
        cpu_s=cpu,
        active_s=min(active, spec.duration + spec.drain),
    )


# --- presence: the hub account bench0 and its contacts bench1..benchN, subscribed both ways ---


class _Reader:
    """A logged-in connection whose stanzas a task hands to `handle` as they arrive."""

    def __init__(self, conn: XMPPConnection) -> None:
        self.conn = conn
        self.task: asyncio.Task[None] | None = None

    def handle(self, st: Stanza, now_ns: int) -> None:
        raise NotImplementedError

    async def run(self) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while True:
                events = await self.conn.read_events()
                now = time.perf_counter_ns()
                for event in events:
                    if type(event) is Stanza:
                        self.handle(event, now)

    def start(self) -> None:
        self.task = asyncio.ensure_future(self.run())


class _Peer(_Reader):
    """A logged-in connection that answers subscription requests (so that the handshake
    completes without a roster UI) and counts presences from one watched JID."""

    def __init__(self, conn: XMPPConnection, watched: str) -> None:
        super().__init__(conn)
        self.watched = watched
        self.subscribed_by: set[str] = set()  # bare JIDs that approved our subscription
        self.from_watched = 0
        self.available_from: set[str] = set()
        self.latencies: list[float] = []
        self.roster_loaded = False

    def handle(self, st: Stanza, now_ns: int) -> None:
        if st.name == "iq" and st.attrs.get("id") == "roster":
            # Subscriptions a previous scenario made are in the roster: nothing to ask for
            # ('to' or 'both': that contact approved ours, RFC 6121 §2.1.2.5).
            for item in st.element().iter("{jabber:iq:roster}item"):
                if item.get("subscription") in ("to", "both"):
                    self.subscribed_by.add(item.get("jid", ""))
            self.roster_loaded = True
            return
        if st.name != "presence":
            return
        sender = st.attrs.get("from", "")
        bare = sender.split("/", 1)[0]
        ptype = st.attrs.get("type")
        if ptype == "subscribe":
            self.conn.send(f"<presence type='subscribed' to='{bare}'/>".encode())
        elif ptype == "subscribed":
            self.subscribed_by.add(bare)
        elif ptype is None:
            self.available_from.add(bare)
            if bare == self.watched:
                self.from_watched += 1
                status = st.element().findtext("{jabber:client}status") or ""
                if status.isdigit():
                    self.latencies.append((now_ns - int(status)) / 1e6)
        elif ptype == "unavailable":
            self.available_from.discard(bare)


def _close_peers(peers: list[_Peer]) -> None:
    for peer in peers:
        if peer.task:
            peer.task.cancel()
        peer.conn.close()


async def _wait_until(check: Any, timeout: float, poll: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(poll)
    return True


async def _subscribed_contacts(spec: Spec, index: int) -> tuple[_Peer | None, list[_Peer], int]:
    """Log in this worker's share of the contacts (and the hub in worker 0), make every
    contact and the hub subscribe to each other (RFC 6121 §3), and make all available.
    Handshakes go in batches, each waited for: thousands of requests at once only measure
    how a server copes with a burst, and slow ones were still working when the measured
    phase began. Also the number of handshakes that never completed."""
    if spec.users <= spec.contacts:
        raise ValueError("presence scenarios need users > contacts (bench0 is the hub)")
    hub_bare = spec.account(0).bare
    mine = [i for i in range(1, spec.contacts + 1) if i % spec.workers == index]
    conns = await _bounded_logins(spec, [(spec.account(i), "contact") for i in mine])
    contacts = [_Peer(c, hub_bare) for c in conns]
    for peer in contacts:
        peer.start()
        peer.conn.send(ROSTER_GET)
        peer.conn.send(b"<presence/>")
    await _wait_until(lambda: all(p.roster_loaded for p in contacts), SUBSCRIBE_TIMEOUT_S)
    incomplete = 0
    if index == 0:
        # The hub asks every contact, batch by batch; each contact's _Peer approves.
        hub_conn = await login(spec.host, spec.port, spec.account(0), "hub", spec.options)
        hub = _Peer(hub_conn, "")
        hub.start()
        hub_conn.send(ROSTER_GET)
        hub_conn.send(b"<presence/>")
        await _wait_until(lambda: hub.roster_loaded, SUBSCRIBE_TIMEOUT_S)
        everyone = [spec.account(i).bare for i in range(1, spec.contacts + 1)]
        for batch in _batches([bare for bare in everyone if bare not in hub.subscribed_by]):
            for bare in batch:
                hub_conn.send(f"<presence type='subscribe' to='{bare}'/>".encode())
            await _wait_until(lambda b=batch: hub.subscribed_by.issuperset(b), SUBSCRIBE_TIMEOUT_S)
        incomplete += len(set(everyone) - hub.subscribed_by)
    # This worker's contacts ask the hub, batch by batch; the hub's _Peer approves. (A
    # server that holds the subscription already answers for the hub, RFC 6121 §3.1.3.)
    for batch in _batches([p for p in contacts if hub_bare not in p.subscribed_by]):
        for peer in batch:
            peer.conn.send(f"<presence type='subscribe' to='{hub_bare}'/>".encode())
        await _wait_until(
            lambda b=batch: all(hub_bare in p.subscribed_by for p in b), SUBSCRIBE_TIMEOUT_S
        )
    incomplete += sum(hub_bare not in p.subscribed_by for p in contacts)
    return (hub if index == 0 else None), contacts, incomplete


# Clients fetch the roster first, as real ones do: that makes them "interested resources",
# the only ones subscription approvals are delivered to (RFC 6121 §2.1.6, §3.1.6).
ROSTER_GET = b"<iq type='get' id='roster'><query xmlns='jabber:iq:roster'/></iq>"


def _batches(items: list[Any]) -> list[list[Any]]:
    return [items[i : i + SUBSCRIBE_BATCH] for i in range(0, len(items), SUBSCRIBE_BATCH)]


async def _presence_scenario(spec: Spec, index: int, results: Any, go: Any) -> None:
    hub, contacts, incomplete = await _subscribed_contacts(spec, index)
    await asyncio.sleep(1.0)
    for peer in contacts:
        peer.from_watched = 0
        peer.latencies.clear()
    _report(results, "ready", connections=len(contacts), incomplete=incomplete)
    await _wait_event(go, SETUP_TIMEOUT)
    cpu0, t0 = time.process_time(), time.perf_counter()
    changes = max(1, int(spec.duration * spec.changes_per_s))
    if hub is not None:
        for _ in range(changes):
            stamp = time.perf_counter_ns()
            hub.conn.send(f"<presence><status>{stamp}</status></presence>".encode())
            await asyncio.sleep(1 / spec.changes_per_s)
    else:
        await asyncio.sleep(spec.duration)
    # Until the last broadcast has reached every contact (what has not by then is lost).
    await _wait_until(
        lambda: all(p.from_watched >= changes for p in contacts), 1.0 + spec.drain, 0.01
    )
    received = sum(p.from_watched for p in contacts)
    latencies = [x for p in contacts for x in p.latencies]
    _close_peers([*contacts, *([hub] if hub else [])])
    _report_done(results, cpu0, t0, received, latencies, 0)


ROSTER_LOGIN_GRACE_S = 3.0


async def _roster_login_scenario(spec: Spec, index: int, results: Any, go: Any) -> None:
    """The hub logs in again and again with a new resource while all its contacts are
    online: each login costs the server the roster, the probes and the broadcasts."""
    hub, contacts, incomplete = await _subscribed_contacts(spec, index)
    await asyncio.sleep(1.0)
    _report(results, "ready", connections=len(contacts), incomplete=incomplete)
    await _wait_event(go, SETUP_TIMEOUT)
    cpu0, t0 = time.process_time(), time.perf_counter()
    latencies: list[float] = []
    errors = 0
    if hub is not None:
        hub_bare = spec.account(0).bare
        end = t0 + spec.duration
        n = 0
        while time.perf_counter() < end:
            n += 1
            started = time.perf_counter()
            try:
                conn = await login(spec.host, spec.port, spec.account(0), f"re{n}", spec.options)
            except Exception:
                errors += 1
                continue
            peer = _Peer(conn, "")
            peer.start()
            conn.send(ROSTER_GET)
            conn.send(b"<presence/>")
            # Done when every contact's presence has come back from the probes.
            # (The hub's own other resource is not a contact: it does not count.)
            complete = await _wait_until(
                lambda p=peer: len(p.available_from - {hub_bare}) >= spec.contacts, 30, 0.002
            )
            if complete:
                latencies.append((time.perf_counter() - started) * 1000)
            else:
                errors += 1
            _close_peers([peer])
    else:
        # The contacts stay online a little longer than the hub's loop, whose last login
        # may start just before `duration` is over and needs all of them to complete;
        # that grace is not part of this worker's active time.
        await asyncio.sleep(spec.duration + ROSTER_LOGIN_GRACE_S)
        t0 += ROSTER_LOGIN_GRACE_S
    _close_peers([*contacts, *([hub] if hub else [])])
    _report_done(results, cpu0, t0, len(latencies), latencies, errors)


# --- flood: one session sends as fast as the server reads, the others chat at a fixed rate ---

FLOOD_PAIR_RATE = 20.0  # messages/s of each ordinary pair when --rate is not given
FLOOD_BATCH = 50  # messages the flooder writes between two waits for its socket
VICTIM_QUIET_S = 1.0


def _flood_summary(spec: Spec, done: list[dict[str, Any]]) -> dict[str, Any]:
    """The ordinary pairs' latency without and with the flood, the server's CPU share in
    each phase (measured by worker 0), and what the flood got through."""
    phases: dict[str, Any] = {}
    main = next(d for d in done if "flood_sent" in d)
    for phase in ("baseline", "flood"):
        latencies = [x for d in done for x in d["phase_ms"][phase]]
        cpu = main[f"{phase}_server_cpu_s"]
        sent = sum(d["phase_sent"][phase] for d in done)
        phases[phase] = {
            "sent": sent,
            "lost": sent - len(latencies),
            "p50_ms": _percentile(latencies, 0.50),
            "p99_ms": _percentile(latencies, 0.99),
            "max_ms": max(latencies) if latencies else None,
            "server_cpu_s": cpu,
            "server_cpu_share": cpu / spec.duration if cpu is not None else None,
        }
    flood_sent, flood_delivered = main["flood_sent"], main["flood_delivered"]
    phases["flood"].update(
        flood_written=flood_sent,
        flood_delivered=flood_delivered,
        flood_delivered_per_s=main["flood_in_phase"] / spec.duration,
        flooder_disconnected=main["flooder_disconnected"],
        flooder_errors=main["flooder_errors"],
        flooder_max_buffered_bytes=main["flooder_max_buffered_bytes"],
    )
    return {
        "phases": phases,
        "pair_rate_per_s": _pair_rate(spec),
        "flood_target": spec.flood_target,
    }


def _pair_rate(spec: Spec) -> float:
    return spec.rate / spec.pairs if spec.rate else FLOOD_PAIR_RATE


async def _flood_scenario(spec: Spec, index: int, results: Any, go: Any) -> None:
    """`duration` seconds of the pairs chatting at a fixed rate (baseline), then `duration`
    more while one session sends messages to a victim as fast as the server reads them: with
    input pacing (limits.max_bytes_per_second) the flooder is slowed down by TCP and the
    others should not notice. Worker 0 holds only the flooder and its victim, so that the
    flooder's own CPU use does not delay the pairs' clients (the other workers). Accounts:
    the pairs bench0..bench{2P-1}, the flooder bench{2P}, its victim bench{2P+1}."""
    if spec.users < 2 * spec.pairs + 2:
        raise ValueError("flood needs users >= 2 * pairs + 2 (flooder and victim)")
    if spec.workers < 2:
        raise ValueError("flood needs 2 workers or more: one for the flooder, the rest for pairs")
    if spec.flood_target not in ("online", "offline"):
        raise ValueError("--flood-target is online or offline")
    pairs = [p for p in range(spec.pairs) if index and p % (spec.workers - 1) == index - 1]
    jobs: list[tuple[Account, str]] = []
    for p in pairs:
        jobs += [(spec.account(2 * p), f"s{p}"), (spec.account(2 * p + 1), f"r{p}")]
    if index == 0:
        jobs += [(spec.account(2 * spec.pairs), "flooder")]
        if spec.flood_target == "online":
            jobs += [(spec.account(2 * spec.pairs + 1), "victim")]
    conns = await _bounded_logins(spec, jobs)
    senders, receivers = conns[0 : 2 * len(pairs) : 2], conns[1 : 2 * len(pairs) : 2]
    await asyncio.sleep(0.5)
    for conn in conns:
        conn.queue.clear()
    _report(results, "ready", connections=len(conns))
    await _wait_event(go, SETUP_TIMEOUT)

    body = spec.body.encode()
    pids = [p for pid in spec.server_pids for p in procstat.process_tree(pid)]
    cpu0, t0_ns = time.process_time(), time.perf_counter_ns()
    t0 = t0_ns / 1e9
    mid, end = t0 + spec.duration, t0 + 2 * spec.duration
    # A message belongs to the phase of its send stamp, for the sender and the receiver.
    mid_ns = t0_ns + int(spec.duration * 1e9)
    server_cpu = [procstat.cpu_seconds(pids)]
    latencies: dict[str, list[float]] = {"baseline": [], "flood": []}
    sent = {"baseline": 0, "flood": 0}
    received = [0] * len(pairs)
    pair_sent = [0] * len(pairs)
    flood = {
        "sent": 0,
        "delivered": 0,
        "in_phase": 0,
        "errors": 0,
        "max_buffered": 0,
        "disconnected": False,
    }

    def message(to: bytes, stamp: int | None = None) -> bytes:
        return b"<message type='chat' to='%s' id='%d'><body>%s</body></message>" % (
            to,
            time.perf_counter_ns() if stamp is None else stamp,
            body,
        )

    async def paced(pair: int) -> None:
        sender, to = senders[pair], receivers[pair].full_jid.encode()
        interval = 1 / _pair_rate(spec)
        next_at = time.perf_counter() + interval * (pair / max(1, len(pairs)))
        while next_at < end:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            stamp = time.perf_counter_ns()
            sender.send(message(to, stamp))
            sent["baseline" if stamp < mid_ns else "flood"] += 1
            pair_sent[pair] += 1
            next_at += interval

    async def receive(pair: int) -> None:
        async for stamp, now in _stamped_messages(
            receivers[pair],
            end + spec.drain,
            lambda: time.perf_counter() > end and received[pair] >= pair_sent[pair],
        ):
            latencies["baseline" if stamp < mid_ns else "flood"].append((now - stamp) / 1e6)
            received[pair] += 1

    async def flooder(conn: XMPPConnection, to: bytes) -> None:
        await asyncio.sleep(max(0.0, mid - time.perf_counter()))
        transport = conn.writer.transport
        try:
            while time.perf_counter() < end and not transport.is_closing():
                conn.send(b"".join(message(to) for _ in range(FLOOD_BATCH)))
                flood["sent"] += FLOOD_BATCH
                flood["max_buffered"] = max(
                    flood["max_buffered"], transport.get_write_buffer_size()
                )
                await asyncio.wait_for(conn.writer.drain(), max(0.001, end - time.perf_counter()))
        except TimeoutError:
            pass
        except ConnectionError:
            flood["disconnected"] = True
        # What the flooder still has queued (here and in the kernel) is thrown away: a reset,
        # not a close, so that the server does not go on reading it after the measurement.
        sock = conn.writer.get_extra_info("socket")
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.writer.transport.abort()

    async def flooder_input(conn: XMPPConnection) -> None:
        """What the server says to the flooder: errors are counted, the end of the stream
        (closed as a slow reader, say) is noted."""
        while time.perf_counter() < end:
            try:
                events = await asyncio.wait_for(
                    conn.read_events(), max(0.05, end - time.perf_counter())
                )
            except TimeoutError:
                return
            except (ConnectionError, OSError):
                flood["disconnected"] = True
                return
            for event in events:
                if type(event) is Stanza and event.attrs.get("type") == "error":
                    flood["errors"] += 1
                elif type(event) is not Stanza:  # a stream error or the closing tag
                    flood["disconnected"] = True

    async def victim(conn: XMPPConnection) -> None:
        """Counts the flood's deliveries until `drain` after the phase, or until none has
        come for VICTIM_QUIET_S after it (the flooder's unsent rest was thrown away, so
        how many will come is not known)."""
        drain = spec.drain if spec.flood_drain is None else spec.flood_drain
        while time.perf_counter() < end + drain:
            now = time.perf_counter()
            wait = end + drain - now
            if now > end:
                wait = min(wait, VICTIM_QUIET_S)
            try:
                events = await asyncio.wait_for(conn.read_events(), max(0.05, wait))
            except TimeoutError:
                if time.perf_counter() > end:
                    return
                continue
            except ConnectionError:
                return
            for event in events:
                if type(event) is Stanza and event.name == "message":
                    flood["delivered"] += 1
                    if time.perf_counter() < end:
                        flood["in_phase"] += 1

    async def phase_marks() -> None:
        for mark in (mid, end):
            await asyncio.sleep(max(0.0, mark - time.perf_counter()))
            server_cpu.append(procstat.cpu_seconds(pids))

    tasks = [asyncio.ensure_future(receive(p)) for p in range(len(pairs))]
    tasks += [asyncio.ensure_future(paced(p)) for p in range(len(pairs))]
    if index == 0:
        if spec.flood_target == "online":
            flood_conn, victim_conn = conns[-2], conns[-1]
            target = victim_conn.full_jid.encode()
            tasks.append(asyncio.ensure_future(victim(victim_conn)))
        else:
            flood_conn, target = conns[-1], spec.account(2 * spec.pairs + 1).bare.encode()
        tasks += [
            asyncio.ensure_future(flooder(flood_conn, target)),
            asyncio.ensure_future(flooder_input(flood_conn)),
            asyncio.ensure_future(phase_marks()),
        ]
    await asyncio.wait(tasks, timeout=2 * spec.duration + spec.drain + 30)
    for t in tasks:
        t.cancel()
    active = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    for conn in conns:
        conn.close()
    extra: dict[str, Any] = {}
    if index == 0:
        measured = bool(pids) and len(server_cpu) == 3
        extra = {
            "baseline_server_cpu_s": server_cpu[1] - server_cpu[0] if measured else None,
            "flood_server_cpu_s": server_cpu[2] - server_cpu[1] if measured else None,
            "flood_sent": flood["sent"],
            "flood_delivered": flood["delivered"],
            "flood_in_phase": flood["in_phase"],
            "flooder_disconnected": flood["disconnected"],
            "flooder_errors": flood["errors"],
            "flooder_max_buffered_bytes": flood["max_buffered"],
        }
    _report(
        results,
        "done",
        count=sum(received),
        sent=sum(pair_sent),
        latencies_ms=latencies["baseline"] + latencies["flood"],
        phase_ms=latencies,
        phase_sent=sent,
        errors=0,
        cpu_s=cpu,
        active_s=min(active, 2 * spec.duration + spec.drain),
        **extra,
    )


# --- muc: groupchat fan-out in rooms of a XEP-0045 service ---

NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = NS_MUC + "#user"
MUC_RATE = 250.0  # messages/s sent in all when --rate is not given
MUC_JOIN_TIMEOUT_S = 60.0


class _Occupant(_Reader):
    """One occupant's connection: notices its own presence in the room (status 110,
    XEP-0045 §7.2.2), answers to its iqs, and timestamped groupchat messages."""

    def __init__(self, conn: XMPPConnection, room: str, nick: str) -> None:
        super().__init__(conn)
        self.room_jid = f"{room}/{nick}"
        self.joined = False
        self.created = False  # status 201: a new room, locked until configured (§10.1.2)
        self.answered: set[str] = set()
        self.refused: str | None = None
        self.received = 0
        self.latencies: list[float] = []

    def handle(self, st: Stanza, now_ns: int) -> None:
        if st.name == "message":
            stamp = st.attrs.get("id", "")
            if not stamp.isdigit():  # a service that does not keep the id: the body has it
                stamp = (st.element().findtext("{jabber:client}body") or "").split(" ", 1)[0]
            if stamp.isdigit():
                self.received += 1
                self.latencies.append((now_ns - int(stamp)) / 1e6)
        elif st.name == "presence" and st.attrs.get("from") == self.room_jid:
            if st.attrs.get("type") == "error":
                self.refused = st.raw.decode(errors="replace")
                return
            codes = {status.get("code") for status in st.element().iter(f"{{{NS_MUC_USER}}}status")}
            self.created = self.created or "201" in codes
            self.joined = True
        elif st.name == "iq":
            self.answered.add(st.attrs.get("id", ""))

    async def join(self) -> bool:
        self.conn.send(
            f"<presence to='{self.room_jid}'><x xmlns='{NS_MUC}'>"
            "<history maxstanzas='0'/></x></presence>".encode()
        )
        return await _wait_until(
            lambda: self.joined or self.refused is not None, MUC_JOIN_TIMEOUT_S, 0.01
        )

    async def configure_instant(self) -> bool:
        """Accept the default configuration of a room this occupant created (§10.1.2)."""
        room = self.room_jid.split("/", 1)[0]
        self.conn.send(
            f"<iq type='set' id='instant' to='{room}'><query xmlns='{NS_MUC}#owner'>"
            "<x xmlns='jabber:x:data' type='submit'/></query></iq>".encode()
        )
        return await _wait_until(lambda: "instant" in self.answered, MUC_JOIN_TIMEOUT_S, 0.01)


async def _muc_scenario(spec: Spec, index: int, results: Any, go: Any) -> None:
    """`rooms` rooms of `occupants` each (accounts bench0.. in order, a room wholly in one
    worker); in the measured phase the occupants send groupchat messages at `rate`
    messages/s in all (open loop), each delivered to every occupant. Room names are new for
    every run, so that nothing left from an earlier run (history, configuration) counts."""
    if spec.users < spec.rooms * spec.occupants:
        raise ValueError("muc needs users >= rooms * occupants")
    tag = f"{int(time.time())}"
    rooms = _mine(spec, index, spec.rooms)
    jobs: list[tuple[Account, str]] = []
    for r in rooms:
        jobs += [(spec.account(r * spec.occupants + k), f"muc{r}") for k in range(spec.occupants)]
    conns = await _bounded_logins(spec, jobs)
    occupants: list[_Occupant] = []
    for i, conn in enumerate(conns):
        r, k = rooms[i // spec.occupants], i % spec.occupants
        occupants.append(_Occupant(conn, f"bench-{tag}-{r}@{spec.muc_domain}", f"n{k}"))
    for occupant in occupants:
        occupant.conn.send(b"<presence/>")
        occupant.start()
    incomplete = 0
    for start in range(0, len(occupants), spec.occupants):
        room = occupants[start : start + spec.occupants]
        creator = room[0]
        if not await creator.join() or creator.refused:
            raise RuntimeError(f"could not create {creator.room_jid}: {creator.refused}")
        if creator.created and not await creator.configure_instant():
            raise RuntimeError(f"{creator.room_jid}: the instant room was not confirmed")
        joined = await asyncio.gather(*(o.join() for o in room[1:]))
        incomplete += sum(1 for ok, o in zip(joined, room[1:], strict=True) if not ok or o.refused)
    await asyncio.sleep(1.0)  # the join presences have reached everyone
    for occupant in occupants:
        occupant.received = 0
        occupant.latencies.clear()
    _report(results, "ready", connections=len(occupants), incomplete=incomplete)
    await _wait_event(go, SETUP_TIMEOUT)

    body = spec.body
    cpu0, t0 = time.process_time(), time.perf_counter()
    end = t0 + spec.duration
    per_occupant = (spec.rate or MUC_RATE) / (spec.rooms * spec.occupants)
    sent = 0

    async def paced(occupant: _Occupant, phase: float) -> None:
        nonlocal sent
        room = occupant.room_jid.split("/", 1)[0].encode()
        tick = 0.01
        # Occupants start out of step (phase in [0, 1)): in step, all of them would owe
        # their next message in the same tick, a burst of every occupant at once.
        owed = phase
        while time.perf_counter() < end:
            owed += per_occupant * tick
            while owed >= 1:
                stamp = str(time.perf_counter_ns()).encode()
                occupant.conn.send(
                    b"<message type='groupchat' to='" + room + b"' id='" + stamp
                    + b"'><body>" + stamp + b" " + body.encode() + b"</body></message>"
                )  # fmt: skip
                sent += 1
                owed -= 1
            await asyncio.sleep(tick)

    await asyncio.gather(*(paced(o, i / len(occupants)) for i, o in enumerate(occupants)))
    expected = sent * spec.occupants
    await _wait_until(lambda: sum(o.received for o in occupants) >= expected, spec.drain, 0.01)
    received = sum(o.received for o in occupants)
    latencies = [x for o in occupants for x in o.latencies]
    for occupant in occupants:
        if occupant.task:
            occupant.task.cancel()
        occupant.conn.close()
    _report(
        results,
        "done",
        count=received,
        sent=sent,
        latencies_ms=latencies,
        errors=0,
        cpu_s=time.process_time() - cpu0,
        active_s=min(time.perf_counter() - t0, spec.duration + spec.drain),
    )
