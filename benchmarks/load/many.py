"""many: N authenticated connections held idle, then a sample of deliveries, then shutdown.

Every connection logs in as a real client would (STARTTLS, SASL, resource binding, initial
presence) from one of several loopback source addresses (`sources`: one address has about
28 000 ephemeral ports, net.ipv4.ip_local_port_range), then stays for `hold` seconds,
sending a whitespace keepalive every `keepalive` seconds (RFC 6120 §4.6.1) and answering
the server's pings (XEP-0199 §4.1). Then one message to each of `sample` connections,
every delivery checked. With `shutdown`, the parent then sends SIGTERM to the server and
times its exit, while the workers count the streams the server closed properly (a
<system-shutdown/> stream error or a closing tag before the connection ended).

What it reports: logins/s, the server's CPU per login, its RSS before the connections, after
them (settled, as in `idle`) and after the hold, per connection; its CPU over the hold
(user + sys, /proc/PID/stat: should be near nothing); the deliveries; the shutdown time.

Phases between the parent and the workers (several processes, each its own uvloop, each
with its share of the connections): ready (logged in) -> hold -> held -> sample ->
delivered -> finish -> done. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import math
import multiprocessing as mp
import os
import resource
import signal
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import uvloop
from fastxmpp._parser import STREAM_END, Stanza, StreamParser, XMLStreamError

from . import procstat
from .client import STREAMS, login

if TYPE_CHECKING:
    from .scenarios import Spec

FD_MARGIN = 256  # descriptors a worker keeps for itself (its loop, pipes, libraries)
LOGIN_CONCURRENCY = 64  # logins in flight per worker
KEEPALIVE_TICK = 0.25  # seconds between two slices of keepalives
SAMPLE_TIMEOUT = 30.0  # for every sampled message to arrive
CLOSE_TIMEOUT = 120.0  # for the server to close every stream after SIGTERM
NS_PING = b"urn:xmpp:ping"


def source_addresses(spec: Spec) -> list[str]:
    """`sources` is "A-B" (a range of IPv4 addresses), "A,B,C", or "" (let the system pick)."""
    if not spec.sources:
        return []
    if "-" in spec.sources:
        first, last = (ipaddress.IPv4Address(a.strip()) for a in spec.sources.split("-"))
        return [str(ipaddress.IPv4Address(n)) for n in range(int(first), int(last) + 1)]
    return [a.strip() for a in spec.sources.split(",") if a.strip()]


def worker_count(spec: Spec) -> int:
    """Enough workers that each stays under its open-files limit (the hard limit, which
    an unprivileged process cannot raise: see docs/CONFIGURATION.md, Many connections)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    per_worker = max(1, (hard if hard != resource.RLIM_INFINITY else 1 << 20) - FD_MARGIN)
    return max(spec.workers, math.ceil(spec.connections / per_worker))


# --- the parent ---------------------------------------------------------------------------


def run(spec: Spec) -> dict[str, Any]:
    from .scenarios import _receive, _server_pids, _wait_quiet

    if spec.sample > spec.connections:
        raise ValueError("many: --sample must not exceed --connections")
    ctx = mp.get_context("spawn")
    results: Any = ctx.Queue()
    phases = {name: ctx.Event() for name in ("hold", "sample", "finish")}
    workers_n = worker_count(spec)
    workers = [
        ctx.Process(
            target=_worker_main,
            args=(asdict(spec), i, workers_n, results, phases),
            daemon=True,
        )
        for i in range(workers_n)
    ]
    pids = _server_pids(spec)
    time.sleep(spec.settle_before)
    rss_before = procstat.rss_bytes(pids)
    cpu_before = procstat.cpu_seconds(pids)
    setup_timeout = 120 + spec.connections / 50  # at least 50 logins/s
    summary: dict[str, Any] = {"scenario": "many", "workers": workers_n}
    try:
        for w in workers:
            w.start()
        ready = [_receive(results, "ready", setup_timeout, workers) for _ in workers]
        cpu_logins = procstat.cpu_seconds(pids) - cpu_before
        held = sum(r["connections"] for r in ready)
        failures: collections.Counter[str] = collections.Counter()
        sources: collections.Counter[str] = collections.Counter()
        for r in ready:
            failures.update(r["failures"])
            sources.update(r["sources"])
        login_s = max(r["login_end"] for r in ready) - min(r["login_start"] for r in ready)
        summary.update(
            connections_asked=spec.connections,
            connections=held,
            login_failures=sum(failures.values()),
            login_failure_reasons=dict(failures.most_common(10)),
            connections_per_source=dict(sorted(sources.items())),
            login_s=login_s,
            logins_per_s=held / login_s if login_s > 0 else None,
            server_cpu_ms_per_login=cpu_logins * 1e3 / held if held else None,
            server_rss_before_bytes=rss_before,
        )
        summary["setup_quiet_after_s"] = _wait_quiet(pids)
        time.sleep(spec.settle)
        rss_idle = procstat.rss_bytes(pids)
        summary.update(
            server_rss_idle_bytes=rss_idle,
            rss_per_connection_bytes=(rss_idle - rss_before) / held if held else None,
        )

        cpu_hold = procstat.cpu_seconds(pids)
        hold_started = time.perf_counter()
        phases["hold"].set()
        after_hold = [_receive(results, "held", spec.hold + 120, workers) for _ in workers]
        hold_s = time.perf_counter() - hold_started
        cpu_hold = procstat.cpu_seconds(pids) - cpu_hold
        rss_held = procstat.rss_bytes(pids)
        summary.update(
            hold_s=hold_s,
            server_cpu_hold_s=cpu_hold,
            server_cpu_hold_share=cpu_hold / hold_s,
            keepalives_sent=sum(h["keepalives"] for h in after_hold),
            pings_answered=sum(h["pings"] for h in after_hold),
            lost_during_hold=sum(h["lost"] for h in after_hold),
            server_rss_after_hold_bytes=rss_held,
            rss_per_connection_after_hold_bytes=(rss_held - rss_before) / held if held else None,
        )

        phases["sample"].set()
        delivered = [_receive(results, "delivered", SAMPLE_TIMEOUT + 60, workers) for _ in workers]
        latencies = sorted(x for d in delivered for x in d["latencies_ms"])
        summary.update(
            sample_sent=sum(d["sent"] for d in delivered),
            sample_delivered=sum(d["delivered"] for d in delivered),
            sample_bounced=sum(d["bounced"] for d in delivered),
            sample_p50_ms=latencies[len(latencies) // 2] if latencies else None,
            sample_max_ms=latencies[-1] if latencies else None,
        )
        summary["sample_lost"] = summary["sample_sent"] - summary["sample_delivered"]

        if spec.shutdown:
            server = spec.server_pids[0]
            os.kill(server, signal.SIGTERM)
            stopped = time.time()  # the workers' close times are wall-clock times
            summary["shutdown_s"] = _wait_exit(server, CLOSE_TIMEOUT)
            if summary["shutdown_s"] is None:
                summary["shutdown_error"] = f"still running {CLOSE_TIMEOUT:g} s after SIGTERM"
        phases["finish"].set()
        done = [_receive(results, "done", CLOSE_TIMEOUT + 30, workers) for _ in workers]
        if spec.shutdown:
            summary.update(
                closed_by_server=sum(d["closed"] for d in done),
                closed_with_system_shutdown=sum(d["system_shutdown"] for d in done),
                closed_with_stream_end=sum(d["stream_end"] for d in done),
                last_close_after_sigterm_s=max(d["last_close"] for d in done) - stopped
                if any(d["closed"] for d in done)
                else None,
            )
        summary["loadgen_cpu_s"] = sum(d["cpu_s"] for d in done)
        summary["loadgen_max_rss_bytes"] = max(d["max_rss"] for d in done)
    finally:
        for p in phases.values():
            p.set()
        for w in workers:
            w.join(10)
            if w.is_alive():
                w.kill()
    summary["server_pids"] = pids
    summary["errors"] = summary.get("login_failures", 0) + summary.get("sample_lost", 0)
    return summary


def _wait_exit(pid: int, timeout: float) -> float | None:
    """Seconds until `pid` has exited (gone, or a zombie its parent has not reaped yet);
    None if it is still running after `timeout`."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                state = stat.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return time.perf_counter() - started
        if state in ("Z", "X"):
            return time.perf_counter() - started
        time.sleep(0.005)
    return None


# --- a worker -----------------------------------------------------------------------------


class Held(asyncio.Protocol):
    """A logged-in stream once its login is over: the asyncio stream objects that did the
    login are dropped and this small protocol takes the transport over, so that a held
    connection costs the load generator its TLS state, this object and a hibernated parser
    (expat's memory is freed between inputs)."""

    __slots__ = (
        "arrived",
        "bounced",
        "closed",
        "closed_at",
        "full_jid",
        "parser",
        "pings",
        "stream_end",
        "system_shutdown",
        "transport",
    )  # fmt: skip

    def __init__(self, transport: Any, parser: StreamParser, full_jid: str) -> None:
        self.transport = transport
        self.parser = parser
        self.full_jid = full_jid
        self.pings = 0
        self.arrived: dict[str, float] = {}  # sample message id -> arrival (perf_counter)
        self.bounced = 0
        self.closed = False
        self.closed_at = 0.0
        self.system_shutdown = False
        self.stream_end = False
        parser.hibernate()

    def data_received(self, data: bytes) -> None:
        for event in self.parser.feed(data):
            if type(event) is Stanza:
                self.stanza(event)
            elif event is STREAM_END:
                self.stream_end = True
            elif isinstance(event, XMLStreamError):
                self.transport.abort()
        self.parser.hibernate()

    def stanza(self, st: Stanza) -> None:
        kind = st.attrs.get("type")
        if st.name == "iq" and kind in ("get", "set"):
            reply_to = st.attrs.get("from")
            to = f" to='{reply_to}'" if reply_to else ""
            if kind == "get" and NS_PING in st.raw:  # XEP-0199 §4.1: an empty result
                self.pings += 1
                answer = f"<iq type='result' id='{st.attrs.get('id', '')}'{to}/>"
            else:  # RFC 6120 §8.4: an iq we do not understand gets an error
                answer = (
                    f"<iq type='error' id='{st.attrs.get('id', '')}'{to}><error type='cancel'>"
                    "<service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
                    "</error></iq>"
                )
            self.transport.write(answer.encode())
        elif st.name == "message":
            if kind == "error":
                self.bounced += 1
            else:
                self.arrived[st.attrs.get("id", "")] = time.perf_counter()
        elif st.ns == STREAMS and st.name == "error":
            self.system_shutdown = b"system-shutdown" in st.raw

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.closed_at = time.time()


def _worker_main(
    spec_dict: dict[str, Any], index: int, workers: int, results: Any, phases: dict[str, Any]
) -> None:
    from .scenarios import Spec

    spec = Spec(**spec_dict)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        uvloop.run(_worker(spec, index, workers, results, phases))
    except BaseException as exc:  # reported to the parent, which fails the run
        results.put({"kind": "error", "error": f"worker {index}: {exc!r}"})


async def _phase(event: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not event.is_set():
        if time.monotonic() > deadline:
            raise TimeoutError("the parent never started the next phase")
        await asyncio.sleep(0.01)


async def _worker(
    spec: Spec, index: int, workers: int, results: Any, phases: dict[str, Any]
) -> None:
    from .scenarios import _report

    sources = source_addresses(spec)
    mine = [i for i in range(spec.connections) if i % workers == index]
    gate = asyncio.Semaphore(LOGIN_CONCURRENCY)
    failures: collections.Counter[str] = collections.Counter()
    sources_used: collections.Counter[str] = collections.Counter()
    held: list[Held] = []

    async def one(i: int) -> None:
        async with gate:
            try:
                conn = await login(
                    spec.host,
                    spec.port,
                    spec.account(i),
                    f"many{i}",
                    spec.options,
                    sources[i % len(sources)] if sources else None,
                )
            except Exception as exc:
                failures[f"{type(exc).__name__}: {str(exc)[:120]}"] += 1
                return
        transport = conn.writer.transport
        sources_used[transport.get_extra_info("sockname")[0]] += 1
        conn.queue.clear()
        connection = Held(transport, conn.parser, conn.full_jid)
        transport.set_protocol(connection)
        transport.write(b"<presence/>")  # available, as a real client (RFC 6121 §4.2)
        held.append(connection)

    login_start = time.time()
    await asyncio.gather(*(one(i) for i in mine))
    login_end = time.time()
    _report(
        results,
        "ready",
        connections=len(held),
        failures=dict(failures),
        sources=dict(sources_used),
        login_start=login_start,
        login_end=login_end,
    )

    setup = 120 + spec.connections / 50
    await _phase(phases["hold"], setup + spec.settle + 300)
    cpu0 = time.process_time()
    keepalives = await _hold(spec, held)
    _report(
        results,
        "held",
        keepalives=keepalives,
        pings=sum(c.pings for c in held),
        lost=sum(c.closed for c in held),
    )

    await _phase(phases["sample"], 300)
    sent, delivered, bounced, latencies = await _sample(spec, held, index, workers)
    _report(
        results,
        "delivered",
        sent=sent,
        delivered=delivered,
        bounced=bounced,
        latencies_ms=latencies,
    )

    open_before = [c for c in held if not c.closed]  # before the parent's SIGTERM
    await _phase(phases["finish"], CLOSE_TIMEOUT + 300)
    if spec.shutdown:
        deadline = time.monotonic() + CLOSE_TIMEOUT
        while any(not c.closed for c in held) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    closed = [c for c in open_before if c.closed]
    for c in held:
        if not c.closed:
            c.transport.write(b"</stream:stream>")
            c.transport.close()
    _report(
        results,
        "done",
        closed=len(closed) if spec.shutdown else 0,
        system_shutdown=sum(c.system_shutdown for c in closed),
        stream_end=sum(c.stream_end for c in closed),
        last_close=max((c.closed_at for c in closed), default=0.0),
        cpu_s=time.process_time() - cpu0,
        max_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    )
    await asyncio.sleep(0.2)  # the closing tags go out


async def _hold(spec: Spec, held: list[Held]) -> int:
    """`hold` seconds; each connection sends a space every `keepalive` seconds, the
    connections spread evenly over the interval (a slice each tick), not all at once."""
    end = time.perf_counter() + spec.hold
    sent = 0
    if spec.keepalive <= 0 or not held:
        await asyncio.sleep(spec.hold)
        return 0
    per_tick = len(held) * KEEPALIVE_TICK / spec.keepalive
    owed = 0.0
    position = 0
    while time.perf_counter() < end:
        await asyncio.sleep(min(KEEPALIVE_TICK, max(0.0, end - time.perf_counter())))
        owed += per_tick
        while owed >= 1:
            connection = held[position % len(held)]
            position += 1
            owed -= 1
            if not connection.closed:
                connection.transport.write(b" ")
                sent += 1
    return sent


async def _sample(
    spec: Spec, held: list[Held], index: int, workers: int
) -> tuple[int, int, int, list[float]]:
    """This worker's share of `sample` messages, each from one held connection to another
    one's full JID, evenly spread over its connections; all checked on arrival."""
    share = spec.sample // workers + (1 if index < spec.sample % workers else 0)
    alive = [c for c in held if not c.closed]
    if len(alive) < 2:
        return 0, 0, 0, []
    share = min(share, len(alive))
    step = len(alive) / share if share else 1
    sent_at: dict[tuple[int, str], float] = {}
    for k in range(share):
        target = int(k * step)
        sender = alive[(target + 1) % len(alive)]
        message_id = f"many-{index}-{k}"
        sent_at[(target, message_id)] = time.perf_counter()
        sender.transport.write(
            f"<message type='chat' to='{alive[target].full_jid}' id='{message_id}'>"
            f"<body>{spec.body}</body></message>".encode()
        )

    def arrived() -> int:
        return sum(1 for (t, m) in sent_at if m in alive[t].arrived)

    deadline = time.monotonic() + SAMPLE_TIMEOUT
    while arrived() < len(sent_at) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    latencies = [
        (alive[t].arrived[m] - at) * 1000 for (t, m), at in sent_at.items() if m in alive[t].arrived
    ]
    return len(sent_at), len(latencies), sum(c.bounced for c in alive), latencies
