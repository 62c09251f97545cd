"""XEP-0138 stream compression with zlib (RFC 1950), the legacy option `legacy.compression`.

After `<compressed/>` the stream's transport is replaced by a `CompressedTransport`: the
compiled `Session.flush()` writes one batch of queued stanzas at a time through it, and each
batch is compressed and ended with a Z_SYNC_FLUSH (XEP-0138 §6: a partial flush when a send is
complete), so the peer can decode everything we wrote so far. Input goes through an
`Inflater`, which hands the parser bounded pieces so a small "zip bomb" cannot inflate into
a huge buffer before the parser's stanza size limit sees it.

Security: compressing secrets together with attacker-chosen text in one stream is what CRIME
exploits (XEP-0138 §9); the option is off by default and documented as such.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any

NS_FEATURE = "http://jabber.org/features/compress"
NS_PROTOCOL = "http://jabber.org/protocol/compress"
METHODS = ("zlib",)
# Largest piece of inflated input handed to the parser at once.
INFLATE_CHUNK = 65536


class CompressionError(Exception):
    """The peer's compressed data cannot be decoded (XEP-0138 §3 processing-failed)."""


class CompressedTransport:
    """Wraps an asyncio transport: `write` compresses, everything else is delegated."""

    def __init__(self, transport: Any, level: int = zlib.Z_DEFAULT_COMPRESSION) -> None:
        self.transport = transport
        self._compressor = zlib.compressobj(level)

    def write(self, data: bytes) -> None:
        out = self._compressor.compress(data) + self._compressor.flush(zlib.Z_SYNC_FLUSH)
        self.transport.write(out)

    def writelines(self, items: Any) -> None:
        self.write(b"".join(items))

    def is_closing(self) -> bool:
        return bool(self.transport.is_closing())

    def close(self) -> None:
        self.transport.close()

    def abort(self) -> None:
        self.transport.abort()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.transport.resume_reading()

    def __getattr__(self, name: str) -> Any:
        # Anything else (set_write_buffer_limits, ...) goes to the real transport.
        return getattr(self.transport, name)


class Inflater:
    """The receiving half: compressed bytes in, bounded pieces of XML out."""

    def __init__(self, chunk: int = INFLATE_CHUNK) -> None:
        self._decompressor = zlib.decompressobj()
        self._chunk = chunk

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Yield the inflated bytes of `data` in pieces of at most `chunk` bytes; raise
        CompressionError on corrupt input or data past the end of the zlib stream."""
        d = self._decompressor
        while True:
            try:
                out = d.decompress(data, self._chunk)
            except zlib.error as exc:
                raise CompressionError(str(exc)) from None
            if d.unused_data:
                raise CompressionError("data after the end of the zlib stream")
            data = d.unconsumed_tail
            if out:
                yield out
            # A full piece may leave inflated output inside zlib even with no input left.
            if not data and len(out) < self._chunk:
                return
