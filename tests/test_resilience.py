"""Hostile load against a real server process: a slowloris crowd must not starve real clients.

1000 connections each send one byte per second (the start of a stream header, which at that
pace never completes) while a few pairs of ordinary clients log in (STARTTLS, SCRAM-SHA-256,
bind) and exchange messages. The ordinary clients must be served in full, the server must
stay up, and every trickling connection must be closed by the pre-authentication timeout
(`c2s.auth_timeout`, which runs from the moment of connecting: a trickle cannot extend it).

The trickling connections come from 20 loopback source addresses (127.0.0.2 ... 127.0.0.21,
all of 127/8 is loopback on Linux), 50 from each: below the default
`limits.max_unauthenticated_per_ip` (64), which stays as shipped. An attacker with one
address gets 64 unauthenticated connections; this is the many-address case that limit cannot
stop.

The server is started with a soft open-files limit of 512 (below the 1000 connections), so
the test also proves that the server raises its own soft RLIMIT_NOFILE to the hard limit at
start: without that, accept() fails with EMFILE and the ordinary clients never get in.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from conftest import PASSWORD, ServerProcess, assert_still_serving
from xmpp_raw import CLIENT, HEADER

TRICKLERS = 1000
SOURCES = [f"127.0.0.{2 + i}" for i in range(20)]  # 50 connections each, under 64 per IP
PAIRS = 4
MESSAGES = 50  # each way, per pair
AUTH_TIMEOUT = 8.0  # seconds; the shipped default is 60
CHILD_SOFT_NOFILE = 512
# The trickle: a stream header, one byte per tick; far longer than AUTH_TIMEOUT ticks.
TRICKLE = HEADER.format(to="localhost").encode()


class Trickler(asyncio.Protocol):
    """One slowloris connection: writes what it is told, records what comes back."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = bytearray()
        self.lost = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += data

    def eof_received(self) -> bool:
        return False  # the server closed: close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


async def open_tricklers(port: int) -> list[Trickler]:
    loop = asyncio.get_running_loop()

    async def one(index: int) -> Trickler:
        source = SOURCES[index % len(SOURCES)]
        _, protocol = await loop.create_connection(
            Trickler, "127.0.0.1", port, local_addr=(source, 0)
        )
        return protocol

    opened: list[Trickler] = []
    for start in range(0, TRICKLERS, 100):  # 100 connects in flight at a time
        opened += await asyncio.gather(*(one(i) for i in range(start, start + 100)))
    return opened


async def trickle(tricklers: list[Trickler]) -> None:
    """One more byte to every open trickling connection each second, until cancelled."""
    for position in range(len(TRICKLE)):
        for t in tricklers:
            if not t.lost and t.transport is not None:
                t.transport.write(TRICKLE[position : position + 1])
        await asyncio.sleep(1.0)


def chat_pair(srv: ServerProcess, ca_file: str, pair: int) -> None:
    """Two ordinary clients log in and send MESSAGES to each other; all must arrive, in
    order. Blocking sockets: run in a thread."""
    a, b = srv.client(), srv.client()
    try:
        jid_a = a.login(ca_file, f"user{2 * pair}", PASSWORD, "chat")
        jid_b = b.login(ca_file, f"user{2 * pair + 1}", PASSWORD, "chat")
        for i in range(MESSAGES):
            a.send(f"<message to='{jid_b}' type='chat' id='a{i}'><body>{i}</body></message>")
            b.send(f"<message to='{jid_a}' type='chat' id='b{i}'><body>{i}</body></message>")
        for receiver, sender, prefix in ((b, jid_a, "a"), (a, jid_b, "b")):
            got = [receiver.next() for _ in range(MESSAGES)]
            assert [m.tag for m in got] == [f"{{{CLIENT}}}message"] * MESSAGES
            assert {m.get("from") for m in got} == {sender}
            assert [m.get("id") for m in got] == [f"{prefix}{i}" for i in range(MESSAGES)]
    finally:
        a.close()
        b.close()


@contextmanager
def soft_nofile(limit: int) -> Iterator[None]:
    """Our soft open-files limit lowered to `limit` (children started meanwhile inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def ensure_nofile(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.fail(f"RLIMIT_NOFILE hard limit {hard} < {needed}: raise it (ulimit -Hn)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


@pytest.mark.slow
async def test_slowloris_crowd_does_not_starve_clients(make_server: Any, ca_file: str) -> None:
    # The test process and the server each hold over 1000 sockets.
    ensure_nofile(TRICKLERS + 500)
    srv: ServerProcess = make_server(f"[c2s]\nauth_timeout = {AUTH_TIMEOUT}\n")
    for i in range(2 * PAIRS):
        srv.adduser(f"user{i}@localhost")
    srv.adduser("alice@localhost")
    with soft_nofile(CHILD_SOFT_NOFILE):
        srv.start()
    assert f"open files limit raised from {CHILD_SOFT_NOFILE} to" in srv.log_text()

    tricklers = await open_tricklers(srv.port)
    trickling = asyncio.ensure_future(trickle(tricklers))
    try:
        await asyncio.gather(
            *(asyncio.to_thread(chat_pair, srv, ca_file, pair) for pair in range(PAIRS))
        )
        # The clients above were served while the whole crowd was connected (otherwise this
        # test proved nothing: the crowd must still be there when the chat is over).
        still_open = sum(not t.lost for t in tricklers)
        assert still_open == TRICKLERS, (
            f"only {still_open} trickling connections were open when the clients finished: "
            f"this machine is too slow for auth_timeout = {AUTH_TIMEOUT}"
        )
        # Then the pre-authentication timeout closes every trickling connection.
        deadline = time.monotonic() + AUTH_TIMEOUT + 30
        while not all(t.lost for t in tricklers) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
    finally:
        trickling.cancel()
        for t in tricklers:
            if t.transport is not None:
                t.transport.abort()
    assert all(t.lost for t in tricklers), "trickling connections were never closed"
    timed_out = [t for t in tricklers if b"<connection-timeout" in t.received]
    other = [bytes(t.received[-300:]) for t in tricklers if t not in timed_out]
    assert len(timed_out) == TRICKLERS, other[:3]
    assert srv.log_text().count("stream error connection-timeout") >= TRICKLERS
    await asyncio.to_thread(assert_still_serving, srv, ca_file)
