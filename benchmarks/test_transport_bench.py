"""A connection's per-read and per-write path over TLS, without sockets (docs/PERFORMANCE.md,
"Compiling the per-read path").

An unbatched message (a client sending now and then) arrives alone: one TCP read holding one
TLS record holding one stanza. `test_read_one_record_per_stanza` measures what the server
does with such a read, from `Connection.data_received` to the events reaching the stream's
owner: TLS decrypt, input pacing (on, as by default), parsing; on one connection, whose
state stays in the CPU's caches. `test_read_one_record_each_on_many_connections` makes each
read on another of 2000 connections, as unbatched traffic does. `test_write_one_record_per_
stanza` measures the other side: one stanza written through the connection's TLS layer
(`ServerTLS.write`: encrypt, one transport write). The client's side (encrypting the records
fed) is done before each round and not timed.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import pytest
from conftest import STREAM_HEADER, CountingTransport, record_rate

from fastxmpp.certs import generate_self_signed
from fastxmpp.config import LimitsConfig
from fastxmpp.server import make_tls_context
from fastxmpp.stream.connection import Connection

pytestmark = pytest.mark.benchmark(group="transport")

STANZAS = 2000
MANY = 2000  # connections, for the read spread over many
CHAT = (
    b"<message to='bob@example.com' type='chat' id='m{i:06d}'><body>Running ten minutes "
    b"late, order without me</body><active xmlns='http://jabber.org/protocol/chatstates'/>"
    b"</message>"
)


class Owner:
    """A stream owner that counts the stanzas it is handed."""

    transport: Any = None

    def __init__(self) -> None:
        self.events = 0

    def connected(self, connection: Connection) -> None:
        pass

    def handle(self, events: list[Any]) -> None:
        self.events += len(events)

    def connection_lost(self, exc: Exception | None) -> None:
        pass

    def pause_writing(self) -> None:
        pass

    def close_with_error(self, condition: Any, text: Any = None, app_xml: str = "") -> None:
        raise AssertionError(f"stream error {condition}: {text}")


class TCP(CountingTransport):
    """The TCP transport under the connection: keeps what the server wrote for the client."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []

    def write(self, data: bytes) -> None:
        super().write(data)
        self.sent.append(data)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5222) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


class TLSPair:
    """A Connection after STARTTLS's handshake and the stream restart, and the client side of
    its TLS session over memory BIOs."""

    def __init__(self, cert_dir: Path) -> None:
        cert, key = cert_dir / "example.com.crt", cert_dir / "example.com.key"
        if not cert.exists():
            generate_self_signed("example.com", cert, key)
        limits = LimitsConfig()
        self.owner = Owner()
        self.connection = Connection(self.owner, limits, "c2s", set())
        self.connection.pace_input(float(limits.max_bytes_per_second), float(limits.burst_bytes))
        self.tcp = TCP()
        client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client_context.check_hostname = False
        client_context.verify_mode = ssl.CERT_NONE
        self.to_server = ssl.MemoryBIO()
        self.from_server = ssl.MemoryBIO()
        self.client = client_context.wrap_bio(self.from_server, self.to_server)
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._handshake(make_tls_context(str(cert), str(key))))
        finally:
            loop.close()
        assert self.connection.tls is not None and self.connection.tls.established
        self.connection.data_received(self._records([STREAM_HEADER])[0])

    async def _handshake(self, context: ssl.SSLContext) -> None:
        self.connection.connection_made(self.tcp)
        self.connection.start_tls(context, lambda: None)
        for _ in range(10):
            try:
                self.client.do_handshake()
                # TLS 1.3: the client is done once it has written its Finished.
                self.connection.data_received(self.to_server.read())
                self._to_client()  # the server's session tickets
                return
            except ssl.SSLWantReadError:
                self.connection.data_received(self.to_server.read())
                self._to_client()

    def _to_client(self) -> None:
        for data in self.tcp.sent:
            self.from_server.write(data)
        self.tcp.sent.clear()

    def _records(self, pieces: list[bytes]) -> list[bytes]:
        """Each piece in a TLS record of its own, as the client's TCP reads would bring."""
        records = []
        for piece in pieces:
            self.client.write(piece)
            records.append(self.to_server.read())
        return records

    def chats(self) -> list[bytes]:
        return self._records([CHAT.replace(b"{i:06d}", b"%06d" % i) for i in range(STANZAS)])


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> TLSPair:
    return TLSPair(tmp_path_factory.mktemp("certs"))


def test_read_one_record_per_stanza(benchmark: Any, pair: TLSPair) -> None:
    connection = pair.connection
    received = pair.owner.events

    rounds = []

    def read_all(records: list[bytes]) -> None:
        rounds.append(len(records))
        for record in records:
            connection.data_received(record)

    def next_round() -> tuple[tuple[list[bytes]], dict[str, Any]]:
        # A client within its input budget (limits.max_bytes_per_second): pacing is paid
        # for, as by default, but never holds input back here.
        connection.tokens = connection.burst
        return (pair.chats(),), {}

    benchmark.pedantic(read_all, setup=next_round, rounds=20)
    record_rate(benchmark, stanzas=STANZAS)
    # Every stanza reached the owner (one round only with --benchmark-disable).
    assert rounds and pair.owner.events - received == sum(rounds)
    assert not connection.closing


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> list[TLSPair]:
    cert_dir = tmp_path_factory.mktemp("certs")
    return [TLSPair(cert_dir) for _ in range(MANY)]


def test_read_one_record_each_on_many_connections(benchmark: Any, many: list[TLSPair]) -> None:
    """As in production unbatched traffic: each read on another of 2000 connections, whose
    state (OpenSSL session, expat parser, objects) the caches no longer hold."""
    received = sum(pair.owner.events for pair in many)

    rounds = []

    def read_all(records: list[tuple[Connection, bytes]]) -> None:
        rounds.append(len(records))
        for connection, record in records:
            connection.data_received(record)

    def next_round() -> tuple[tuple[list[tuple[Connection, bytes]]], dict[str, Any]]:
        for pair in many:
            pair.connection.tokens = pair.connection.burst
        chat = CHAT.replace(b"{i:06d}", b"000000")
        return ([(pair.connection, pair._records([chat])[0]) for pair in many],), {}

    benchmark.pedantic(read_all, setup=next_round, rounds=10)
    record_rate(benchmark, stanzas=MANY)
    assert rounds and sum(pair.owner.events for pair in many) - received == sum(rounds)


def test_write_one_record_per_stanza(benchmark: Any, pair: TLSPair) -> None:
    tls = pair.connection.tls
    assert tls is not None
    stanzas = [CHAT.replace(b"{i:06d}", b"%06d" % i) for i in range(STANZAS)]
    # Each stanza goes out as one TLS record, which the client decrypts to the stanza.
    pair.tcp.sent.clear()
    for stanza in stanzas[:3]:
        tls.write(stanza)
    assert len(pair.tcp.sent) == 3
    pair._to_client()
    assert [pair.client.read(65536) for _ in range(3)] == stanzas[:3]

    def write_all() -> None:
        pair.tcp.sent.clear()
        for stanza in stanzas:
            tls.write(stanza)

    benchmark(write_all)
    record_rate(benchmark, stanzas=STANZAS)
    assert len(pair.tcp.sent) == STANZAS
