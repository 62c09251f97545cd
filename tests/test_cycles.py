"""An ended connection is freed when its last reference goes, not by the garbage collector:
each one holds a TLS session (about 16 KiB) and its stream's state, and a long-lived server's
full collections walk every object it holds (tens of milliseconds per thousand connections,
docs/PERFORMANCE.md "Connections freed without the garbage collector"). The collector is off
in these tests: what is still alive after the last reference went is a reference cycle."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from fastxmpp.config import LimitsConfig
from fastxmpp.stream.connection import GONE, Connection, Released
from fastxmpp.stream.sasl import ScramExchange


@pytest.fixture(autouse=True)
def no_collector() -> Iterator[None]:
    gc.collect()
    gc.disable()
    yield
    gc.enable()


class Stream(Released):
    """An owner that refers to its connection, as a stream does."""

    def __init__(self) -> None:
        self.connection: Connection | None = None
        self.lost = False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


def test_a_connection_gives_up_its_owner_when_it_is_lost() -> None:
    stream = Stream()
    connection = Connection(stream, LimitsConfig(), "c2s", set())
    stream.connection = connection
    connection.connection_lost(None)
    assert stream.lost and connection.owner is GONE and connection.tls is None
    stream_ref = weakref.ref(stream)  # (a connection has slots, no weak references)
    del stream, connection
    assert stream_ref() is None


def test_a_scram_exchange_is_not_a_cycle() -> None:
    # The SCRAM server object keeps the exchange's callback for the stored credentials.
    accounts: Any = None  # not asked before the client's first message
    exchange = ScramExchange("SCRAM-SHA-1", "localhost", accounts)
    ref = weakref.ref(exchange)
    del exchange
    assert ref() is None
