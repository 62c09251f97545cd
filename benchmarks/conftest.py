"""Shared inputs for the benchmarks: a realistic client-to-server stream, cut the way a socket
cuts it, and socket-free stand-ins for the event loop and the transports.

Benchmarks run only on request (`make bench`, i.e. `pytest benchmarks --benchmark-only`);
the normal test run collects `tests/` alone.
"""

from __future__ import annotations

import hashlib
import itertools
from base64 import b64encode
from collections.abc import Callable
from typing import Any

import pytest

# What a socket read hands to the parser: TCP does not respect stanza boundaries, so chunks
# end in the middle of tags, attribute values and multi-byte UTF-8 sequences.
CHUNK_SIZE = 4096
# About half a megabyte of client traffic per round: long enough that per-stream setup is
# noise, short enough that the slowest contender still gets its five rounds in a second.
STANZA_COUNT = 1500

STREAM_HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0' "
    b"xml:lang='en'>"
)
STREAM_FOOTER = b"</stream:stream>"

CHATSTATES = "http://jabber.org/protocol/chatstates"
CAPS = "http://jabber.org/protocol/caps"

_BODIES = [
    "Are we still on for lunch tomorrow?",
    "Running ten minutes late, order without me & I'll catch up",
    "Grüße aus München! Das Wetter ist schön \u2600\ufe0f",
    "if (a < b && b > c) { return; }  // this snippet is broken, see the log",
    "\U0001f602\U0001f44d see you at the café",
    "The deploy finished at 14:32 UTC; dashboards look green so far.",
]
_STATUSES = ["In a meeting until 3pm", "Out for lunch", "Working from home", "Ça va bien"]
_SHOWS = ["away", "dnd", "xa", "chat"]


def _text(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _caps_ver(i: int) -> str:
    # XEP-0115 ver strings are base64 SHA-1 digests; a handful of distinct clients.
    return b64encode(hashlib.sha1(f"client-{i % 4}".encode()).digest()).decode()


def chat_message(i: int) -> str:
    body = _text(_BODIES[i % len(_BODIES)])
    return (
        f"<message to='friend{i % 50}@example.com/phone' type='chat' id='msg-{i:06d}'>"
        f"<body>{body}</body><active xmlns='{CHATSTATES}'/>"
        f"<request xmlns='urn:xmpp:receipts'/><origin-id xmlns='urn:xmpp:sid:0' "
        f"id='origin-{i:06d}'/></message>"
    )


def chat_state(i: int) -> str:
    state = "composing" if i % 2 else "paused"
    return (
        f"<message to='friend{i % 50}@example.com' type='chat' id='cs-{i:06d}'>"
        f"<{state} xmlns='{CHATSTATES}'/><no-store xmlns='urn:xmpp:hints'/></message>"
    )


def presence(i: int) -> str:
    return (
        f"<presence id='pres-{i:06d}'><show>{_SHOWS[i % len(_SHOWS)]}</show>"
        f"<status>{_text(_STATUSES[i % len(_STATUSES)])}</status><priority>{i % 10}</priority>"
        f"<c xmlns='{CAPS}' hash='sha-1' node='https://client{i % 4}.example.org/caps' "
        f"ver='{_caps_ver(i)}'/></presence>"
    )


def roster_iq(i: int) -> str:
    if i % 2:
        return f"<iq type='get' id='roster-{i:06d}'><query xmlns='jabber:iq:roster'/></iq>"
    return (
        f"<iq type='set' id='roster-{i:06d}'><query xmlns='jabber:iq:roster'>"
        f"<item jid='contact{i}@example.net' name='Contact {i}'><group>Work</group>"
        f"<group>Friends</group></item></query></iq>"
    )


def pubsub_publish(i: int, size: int = 2048) -> str:
    """An iq publishing a ~2 KB Atom entry to a PEP node (XEP-0163, XEP-0060 §7.1)."""
    head = (
        f"<iq type='set' id='pub-{i:06d}'><pubsub xmlns='http://jabber.org/protocol/pubsub'>"
        f"<publish node='urn:xmpp:microblog:0'><item id='entry-{i:06d}'>"
        f"<entry xmlns='http://www.w3.org/2005/Atom'><title>Notes, day {i}</title>"
        f"<author><name>Alice</name><uri>xmpp:alice@example.com</uri></author>"
        f"<published>2024-05-01T12:00:00Z</published><content type='text'>"
    )
    tail = "</content></entry></item></publish></pubsub></iq>"
    words = itertools.cycle(("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog"))
    filler = ""
    while len(head) + len(filler) + len(tail) < size:
        filler += next(words) + " "
    return head + filler[: size - len(head) - len(tail)] + tail


def groupchat(i: int) -> str:
    body = _text(_BODIES[(i + 3) % len(_BODIES)])
    return (
        f"<message to='team@conference.example.com' type='groupchat' id='gc-{i:06d}'>"
        f"<body>{body}</body><origin-id xmlns='urn:xmpp:sid:0' id='gc-origin-{i:06d}'/>"
        f"</message>"
    )


# One block of twenty stanzas, roughly what a busy client sends: mostly chat and presence,
# some room traffic, the occasional roster change and PEP publication.
_BLOCK: list[Callable[[int], str]] = (
    [chat_message] * 7 + [chat_state] * 3 + [presence] * 5 + [groupchat] * 3
) + [roster_iq, pubsub_publish]


def stanza_mix(count: int = STANZA_COUNT) -> list[bytes]:
    return [_BLOCK[i % len(_BLOCK)](i).encode() for i in range(count)]


def client_stream(stanzas: list[bytes]) -> bytes:
    # A whitespace keepalive (RFC 6120 §4.6.1) every few stanzas, as clients send them.
    parts = [STREAM_HEADER]
    for i, stanza in enumerate(stanzas):
        parts.append(stanza)
        if i % 7 == 6:
            parts.append(b" ")
    parts.append(STREAM_FOOTER)
    return b"".join(parts)


def chunked(data: bytes, size: int = CHUNK_SIZE) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.fixture(scope="session")
def stanzas() -> list[bytes]:
    return stanza_mix()


@pytest.fixture(scope="session")
def stream_bytes(stanzas: list[bytes]) -> bytes:
    return client_stream(stanzas)


@pytest.fixture(scope="session")
def stream_chunks(stream_bytes: bytes) -> list[bytes]:
    return chunked(stream_bytes)


class FakeLoop:
    """Just enough of an event loop for the router: `call_soon` records the callback, and
    the benchmark runs the loop turn itself by calling `router.flush_all()`."""

    def __init__(self) -> None:
        self.scheduled: list[Callable[[], Any]] = []

    def call_soon(self, callback: Callable[[], Any], *args: Any) -> None:
        self.scheduled.append(callback)


class CountingTransport:
    """A transport that counts what it is asked to write instead of sending it."""

    def __init__(self) -> None:
        self.writes = 0
        self.bytes = 0
        self.last = b""

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.bytes += len(data)
        self.last = data

    def is_closing(self) -> bool:
        return False


def record_rate(benchmark: Any, **per_round: float) -> None:
    """Turn amounts handled per round into rates from the median round time.

    `record_rate(benchmark, MB=1.5, stanzas=1500)` stores `MB_per_s` and `stanzas_per_s` in
    `benchmark.extra_info` (they show up in `--benchmark-json` output)."""
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable: nothing was timed
        return
    median = stats.stats.median
    for unit, amount in per_round.items():
        benchmark.extra_info[f"{unit}_per_s"] = round(amount / median, 1)
