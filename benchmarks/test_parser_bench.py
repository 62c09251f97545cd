"""Parser throughput on a realistic client stream fed in 4 KiB chunks (docs/PERFORMANCE.md).

Every contender turns the same chunks into stanzas:

- `fastxmpp`: the compiled parser (libexpat driven from C callbacks, raw bytes sliced by offset);
- `stdlib-expat`: the same job in pure Python on `xml.parsers.expat` — one Python call per
  start and end tag, raw bytes sliced with `CurrentByteIndex`;
- `lxml-pull`: libxml2 through lxml's `XMLPullParser`, building each stanza's element tree,
  which is what a libxml2-based stream parser hands to its handlers; `lxml-pull+tostring`
  adds the serialization such a design needs to forward a stanza, since libxml2 through lxml
  reports no byte offsets.

The `sax-*` entries measure the C libraries alone on the same chunks: a push parser with
namespace processing and no handlers at all, called through ctypes once per chunk — the floor
under any design built on that library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any
from xml.parsers import expat

import pytest
from conftest import record_rate
from fastxmpp._parser import Stanza, StreamParser, XMLStreamError
from lxml import etree

pytestmark = pytest.mark.benchmark(group="parse 4 KiB chunks")


# --- the contenders -------------------------------------------------------------------------


def parse_fastxmpp(chunks: list[bytes]) -> list[Stanza]:
    parser = StreamParser()
    stanzas = []
    for chunk in chunks:
        for event in parser.feed(chunk):
            if type(event) is Stanza:
                stanzas.append(event)
            elif isinstance(event, XMLStreamError):
                raise event
    return stanzas


class ExpatBaseline:
    """A stream parser in pure Python over the stdlib's libexpat binding, doing the compiled
    parser's job: track depth, and for each top-level child of the stream keep its name, its
    attributes and the exact bytes received."""

    def __init__(self) -> None:
        self.parser = expat.ParserCreate("UTF-8", "\x01")
        self.parser.StartElementHandler = self._start
        self.parser.EndElementHandler = self._end
        self.buf = bytearray()
        self.base = 0  # stream offset of buf[0]
        self.depth = 0
        self.stanza_start = -1
        self.keep_from = 0  # stream offset just after the last complete stanza
        self.current: tuple[str, dict[str, str]] | None = None
        self.stanzas: list[tuple[str, dict[str, str], bytes]] = []

    def feed(self, data: bytes) -> None:
        self.buf += data
        self.parser.Parse(data, False)
        # Keep what an unfinished stanza, or a tag expat has not reported yet, may still need.
        keep = self.stanza_start if self.stanza_start >= 0 else self.keep_from
        if keep > self.base:
            del self.buf[: keep - self.base]
            self.base = keep

    def _start(self, name: str, attrs: dict[str, str]) -> None:
        if self.depth == 1:
            self.stanza_start = self.parser.CurrentByteIndex
            self.current = (name, attrs)
        self.depth += 1

    def _end(self, name: str) -> None:
        self.depth -= 1
        if self.depth != 1:
            return
        index = self.parser.CurrentByteIndex - self.base
        start = self.stanza_start - self.base
        # After an end tag ('</name' optional whitespace '>') or an empty-element tag.
        end = self.buf.index(b">", index) + 1 if index != start else self._empty_tag_end(start)
        assert self.current is not None
        self.stanzas.append((*self.current, bytes(self.buf[start:end])))
        self.keep_from = self.base + end
        self.stanza_start = -1
        self.current = None

    def _empty_tag_end(self, pos: int) -> int:
        # pyexpat has no XML_GetCurrentByteCount: find the '/>' outside quoted values.
        quote = 0
        buf = self.buf
        while True:
            c = buf[pos]
            if quote:
                if c == quote:
                    quote = 0
            elif c in (0x22, 0x27):
                quote = c
            elif c == 0x3E:
                return pos + 1
            pos += 1


def parse_stdlib_expat(chunks: list[bytes]) -> list[tuple[str, dict[str, str], bytes]]:
    baseline = ExpatBaseline()
    for chunk in chunks:
        baseline.feed(chunk)
    return baseline.stanzas


def parse_lxml_pull(chunks: list[bytes], serialize: bool = False) -> list[Any]:
    parser = etree.XMLPullParser(
        events=("end",), resolve_entities=False, no_network=True, remove_comments=True
    )
    root = None
    stanzas: list[Any] = []
    for chunk in chunks:
        parser.feed(chunk)
        for _, element in parser.read_events():
            parent = element.getparent()
            if root is None and parent is not None:
                # The first element to end is the first stanza's innermost child; the stream
                # root is at the top of its ancestors.
                root = parent
                while root.getparent() is not None:
                    root = root.getparent()
            if parent is None or parent is not root:
                continue
            # A top-level stanza: detach it so the stream's tree does not grow without end.
            root.remove(element)
            stanzas.append(etree.tostring(element) if serialize else element)
    parser.close()
    return stanzas


# --- the C libraries alone, through ctypes ----------------------------------------------------


class _SaxOnly:
    """A push parser of one C library with namespace processing and no handlers."""

    label: str

    def parse(self, chunks: list[bytes]) -> None:
        raise NotImplementedError


class _Libexpat(_SaxOnly):
    def __init__(self) -> None:
        # The same shared library that fastxmpp/_parser links against.
        lib = ctypes.CDLL(ctypes.util.find_library("expat") or "libexpat.so.1")
        lib.XML_ExpatVersion.restype = ctypes.c_char_p
        lib.XML_ParserCreateNS.restype = ctypes.c_void_p
        lib.XML_ParserCreateNS.argtypes = [ctypes.c_char_p, ctypes.c_char]
        lib.XML_Parse.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int]
        lib.XML_ParserFree.argtypes = [ctypes.c_void_p]
        self.lib = lib
        self.label = lib.XML_ExpatVersion().decode().replace("expat_", "libexpat ")

    def parse(self, chunks: list[bytes]) -> None:
        lib = self.lib
        parser = lib.XML_ParserCreateNS(b"UTF-8", b"\x01")
        try:
            for chunk in chunks:
                if lib.XML_Parse(parser, chunk, len(chunk), 0) != 1:
                    raise AssertionError("libexpat rejected the stream")
            if lib.XML_Parse(parser, b"", 0, 1) != 1:
                raise AssertionError("libexpat rejected the end of the stream")
        finally:
            lib.XML_ParserFree(parser)


class _Libxml2(_SaxOnly):
    # xmlSAXHandler: 27 callback pointers, `unsigned int initialized`, `void *_private`, then
    # the SAX2 callbacks startElementNs, endElementNs, serror. All callbacks stay NULL.
    _SAX2_MAGIC = 0xDEEDBEAF
    _INITIALIZED_OFFSET = 27 * ctypes.sizeof(ctypes.c_void_p)
    _XML_PARSE_NONET = 1 << 11

    def __init__(self, path: str, version: str, where: str) -> None:
        lib = ctypes.CDLL(path)
        lib.xmlInitParser()
        lib.xmlCreatePushParserCtxt.restype = ctypes.c_void_p
        lib.xmlCreatePushParserCtxt.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_char_p,
        ]
        lib.xmlParseChunk.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int]
        lib.xmlCtxtUseOptions.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.xmlFreeParserCtxt.argtypes = [ctypes.c_void_p]
        self.lib = lib
        self.sax = ctypes.create_string_buffer(64 * ctypes.sizeof(ctypes.c_void_p))
        ctypes.c_uint.from_buffer(self.sax, self._INITIALIZED_OFFSET).value = self._SAX2_MAGIC
        self.label = f"libxml2 {version} ({where})"

    def parse(self, chunks: list[bytes]) -> None:
        lib = self.lib
        first = chunks[0]
        ctxt = lib.xmlCreatePushParserCtxt(
            ctypes.addressof(self.sax), None, first, len(first), None
        )
        lib.xmlCtxtUseOptions(ctxt, self._XML_PARSE_NONET)
        try:
            for chunk in chunks[1:]:
                if lib.xmlParseChunk(ctxt, chunk, len(chunk), 0) != 0:
                    raise AssertionError("libxml2 rejected the stream")
            if lib.xmlParseChunk(ctxt, None, 0, 1) != 0:
                raise AssertionError("libxml2 rejected the end of the stream")
        finally:
            lib.xmlFreeParserCtxt(ctxt)


def _libxml2_version(number: int) -> str:
    return f"{number // 10000}.{number // 100 % 100}.{number % 100}"


def _sax_parsers() -> list[Any]:
    params: list[Any] = [pytest.param(_Libexpat, id="sax-libexpat")]
    # lxml links libxml2 statically and its extension module happens to export the libxml2
    # symbols, so ctypes can reach the very copy lxml parses with.
    lxml_version = ".".join(map(str, etree.LIBXML_VERSION))
    params.append(
        pytest.param(
            lambda: _Libxml2(etree.__file__, lxml_version, "inside lxml"),
            id="sax-libxml2-lxml",
        )
    )
    system = ctypes.util.find_library("xml2")
    if system:

        def system_libxml2() -> _Libxml2:
            lib = ctypes.CDLL(system)
            number = int(ctypes.c_char_p.in_dll(lib, "xmlParserVersion").value or b"0")
            return _Libxml2(system, _libxml2_version(number), "system")

        params.append(pytest.param(system_libxml2, id="sax-libxml2-system"))
    return params


# --- the benchmarks ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def expected(stanzas: list[bytes], stream_chunks: list[bytes]) -> list[bytes]:
    """Check, outside the timed rounds, that the contenders agree with each other."""
    fast = [s.raw for s in parse_fastxmpp(stream_chunks)]
    assert fast == stanzas
    assert [raw for _, _, raw in parse_stdlib_expat(stream_chunks)] == stanzas
    assert len(parse_lxml_pull(stream_chunks)) == len(stanzas)
    return stanzas


def _record(benchmark: Any, stream: bytes, count: int) -> None:
    record_rate(benchmark, MB=len(stream) / 1e6, stanzas=count)
    benchmark.extra_info["stream_bytes"] = len(stream)
    benchmark.extra_info["stanzas"] = count


def test_fastxmpp(benchmark, stream_chunks, stream_bytes, expected):
    stanzas = benchmark(parse_fastxmpp, stream_chunks)
    assert len(stanzas) == len(expected)
    _record(benchmark, stream_bytes, len(stanzas))


def test_stdlib_expat(benchmark, stream_chunks, stream_bytes, expected):
    stanzas = benchmark(parse_stdlib_expat, stream_chunks)
    assert len(stanzas) == len(expected)
    _record(benchmark, stream_bytes, len(stanzas))


@pytest.mark.parametrize("serialize", [False, True], ids=["lxml-pull", "lxml-pull+tostring"])
def test_lxml(benchmark, stream_chunks, stream_bytes, expected, serialize):
    stanzas = benchmark(parse_lxml_pull, stream_chunks, serialize)
    assert len(stanzas) == len(expected)
    _record(benchmark, stream_bytes, len(stanzas))


@pytest.mark.parametrize("make_parser", _sax_parsers())
def test_sax_only(benchmark, stream_chunks, stream_bytes, expected, make_parser):
    sax = make_parser()
    benchmark.extra_info["library"] = sax.label
    benchmark(sax.parse, stream_chunks)
    _record(benchmark, stream_bytes, len(expected))
