"""Resident memory of the per-connection building blocks, measured in isolation:
`python -m benchmarks.memory_probe [N]`. Each probe makes N objects, keeps them alive and
reports the RSS growth per object after glibc has been asked to return free pages, so
that only what the objects really hold is counted. A measurement, not a test: the figures
go to docs/PERFORMANCE.md ("Idle memory")."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import ssl
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastxmpp._parser import StreamParser

from fastxmpp.certs import ensure_certificate

HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>"
)
STANZA = b"<presence><show>away</show></presence>"
_LIBC = ctypes.CDLL("libc.so.6")


def rss_kib() -> int:
    gc.collect()
    _LIBC.malloc_trim(0)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def per_object(make: Callable[[], Any], n: int) -> tuple[float, list[Any]]:
    before = rss_kib()
    kept = [make() for _ in range(n)]
    return (rss_kib() - before) / n, kept


def parser_after_header() -> StreamParser:
    parser = StreamParser()
    parser.feed(HEADER)
    parser.feed(STANZA)
    return parser


def parser_hibernated() -> StreamParser:
    parser = parser_after_header()
    parser.hibernate()
    return parser


def tls_server_side(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> Any:
    """A server-side SSLObject after a full TLS handshake and one record of data (the client
    side is dropped)."""
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    for _ in range(10):
        for end in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                end.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    client.write(b"<presence/>")
    s_in.write(c_out.read())
    server.read(100)
    return server, s_in, s_out


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    print(f"{n} objects each, RSS growth per object after malloc_trim:")
    kib, _kept = per_object(StreamParser, n)
    print(f"  stream parser, new:                   {kib:5.1f} KiB")
    kib, _kept = per_object(parser_after_header, n)
    print(f"  stream parser after a header:         {kib:5.1f} KiB")
    kib, kept = per_object(parser_hibernated, n)
    print(f"  stream parser, hibernated:            {kib:5.1f} KiB")
    started = time.perf_counter()
    for parser in kept:
        parser.feed(STANZA)
        parser.hibernate()
    wake_us = (time.perf_counter() - started) / n * 1e6
    print(f"  waking a parser for one stanza:       {wake_us:5.1f} µs")
    del kept, _kept
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = ensure_certificate("localhost", Path(tmp))
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(str(cert), str(key))
        client_ctx = ssl.create_default_context()
        client_ctx.check_hostname = False
        client_ctx.verify_mode = ssl.CERT_NONE
        kib, _kept = per_object(lambda: tls_server_side(server_ctx, client_ctx), n // 2)
        print(f"  TLS 1.3 server side (SSLObject+BIOs): {kib:5.1f} KiB")


if __name__ == "__main__":
    main()
