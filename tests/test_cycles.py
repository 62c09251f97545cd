"""An ended connection is freed when its last reference goes, not by the garbage collector:
each one holds a TLS session (about 16 KiB) and its stream's state, and a long-lived server's
full collections walk every object it holds (tens of milliseconds per thousand connections,
docs/PERFORMANCE.md "Connections freed without the garbage collector"). The collector is off
in these tests: what is still alive after the last reference went is a reference cycle."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ServerProcess, add_accounts
from test_roster import connect
from test_stream_management import SM, resume
from test_stream_management import login as sm_login
from xmpp_raw import RawClient, stanza_error

from fastxmpp.config import LimitsConfig
from fastxmpp.errors import StanzaError
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


class FakeS2S:
    """What an outgoing server-to-server link asks of the server's S2S."""

    def __init__(self, targets: list[tuple[str, int]] | None) -> None:
        from types import SimpleNamespace

        from fastxmpp.config import S2SConfig

        self.config = S2SConfig()
        self.server = SimpleNamespace(
            config=SimpleNamespace(limits=LimitsConfig()), background=set()
        )
        self.links_out: set[Any] = set()
        self.targets = targets
        self.resolving = asyncio.Event()

    async def resolve(self, domain: str) -> list[tuple[str, int]]:
        self.resolving.set()
        if self.targets is None:
            await asyncio.Event().wait()  # a lookup that never answers
        return self.targets or []

    def link_closed(self, link: Any) -> None:
        pass

    def bounce(self, name: str, attrs: dict[str, Any], condition: str, text: str) -> None:
        pass


@pytest.mark.parametrize("targets", [[], None], ids=["no-address", "closed-while-resolving"])
async def test_an_outgoing_link_that_never_connected_is_not_a_cycle(
    targets: list[tuple[str, int]] | None,
) -> None:
    # A link to a domain that has no address, or that closes (idle, shut down) before its
    # lookup answers: its connection never saw connection_lost, and its connecting task
    # ended with an exception whose traceback holds the link.
    from fastxmpp.stream.s2s import Outgoing

    s2s = FakeS2S(targets)
    link = Outgoing(s2s, "a.example", "b.example")  # type: ignore[arg-type]
    await s2s.resolving.wait()
    if targets is None:
        link.close()
    for _ in range(5):
        await asyncio.sleep(0)
    assert link.closing and not s2s.links_out
    ref = weakref.ref(link)
    del link
    assert ref() is None


class Refused(Exception):
    """A store's refusal of a change (over a limit, say)."""


async def test_a_refused_store_change_keeps_no_frames(tmp_path: Path) -> None:
    # The work raised in the writer's transaction: the frames of its traceback hold what
    # they referred to, up to the writer's job list, whose future holds the exception (a
    # cycle), or the event loop's whole stack (the stream) when the transaction ran there.
    from fastxmpp.storage.lmdb_store import Storage

    class Marker:
        """Something a frame of the refused change refers to."""

    held: list[weakref.ref[Marker]] = []

    def refused(txn: Any) -> None:
        marker = Marker()
        held.append(weakref.ref(marker))
        raise Refused("over the limit")

    with Storage(tmp_path / "data") as storage:
        future = storage.commit(refused, storage.database("example"))
        await asyncio.wait([future])
        exc = future.exception()
        assert isinstance(exc, Refused)
        assert held[0]() is None  # while the future and its exception are still here
        # Where it was raised is still told, as text (a note the log prints).
        assert "in refused" in "".join(exc.__notes__)


class Origin:
    """The stream an iq came from, as far as answer_once_stored uses it."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.answered = asyncio.Event()

    def run_iq_step(self, st: Any, step: Any) -> None:
        async def answer() -> None:
            try:
                await step()
            except StanzaError as err:
                self.errors.append(err.condition)
            self.answered.set()

        self.task: asyncio.Task[None] | None = asyncio.ensure_future(answer())


async def test_an_answer_to_a_refused_change_is_not_a_cycle() -> None:
    # The answer awaits the commit's future, which holds the exception whose traceback holds
    # the answer's frame, which holds the future.
    from fastxmpp.modules.base import answer_once_stored

    committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    committed.set_exception(Refused("over the limit"))
    origin = Origin()
    answer_once_stored(
        origin,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        committed,
        lambda result: b"",
        lambda exc: StanzaError("policy-violation", str(exc)),
    )
    await origin.answered.wait()
    assert origin.errors == ["policy-violation"]
    ref = weakref.ref(committed)
    origin.task = None
    del committed
    assert ref() is None


PROBE = Path(__file__).parent / "gc_probe"
PUBSUB = "http://jabber.org/protocol/pubsub"
TUNE = "http://jabber.org/protocol/tune"


def collected_by_the_collector(srv: ServerProcess, out: Path) -> list[str]:
    """What the server's cyclic collector has freed so far (tests/gc_probe)."""
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGUSR2)
    deadline = time.monotonic() + 10
    while not out.exists():
        assert time.monotonic() < deadline, "the server wrote no garbage report"
        time.sleep(0.05)
    return out.read_text().splitlines()


def test_ended_sessions_leave_no_cycles(
    ca: Any, ca_file: str, tmp_path: Path, clients: list[RawClient]
) -> None:
    """End to end: sessions that got stanza errors (one raised from a handler's local
    variable, one a store's refusal in the writer's transaction) and then ended, cleanly or
    not, and XEP-0198 sessions resumed or expired, are freed without the collector: nothing
    of a stream, its connection, its TLS layer or the frames that handled it is among what
    the collector freed."""
    out = tmp_path / "garbage.txt"
    env = {**os.environ, "PYTHONPATH": str(PROBE), "GC_PROBE_OUT": str(out)}
    srv = ServerProcess(
        tmp_path / "s",
        ca,
        ("localhost",),
        "[pep]\nmax_item_size = 2000\nmax_bytes_per_account = 1500\n"
        "[stream_management]\nresume_timeout = 1\n",
        env=env,
    )
    add_accounts(srv, ["alice", "bob", "carol", "dave"])
    srv.start()
    try:
        alice = connect(srv, ca_file, clients, "alice")
        bob = connect(srv, ca_file, clients, "bob")
        tune = f"<tune xmlns='{TUNE}'><title>{'x' * 1000}</title></tune>"
        publish = (
            f"<pubsub xmlns='{PUBSUB}'><publish node='{TUNE}'><item>{tune}</item></publish>"
            "</pubsub>"
        )
        alice.send(f"<iq type='set' id='p1'>{publish}</iq>")
        assert alice.next().get("type") == "result"
        # Over the account's bytes: refused by the store, in the writer's transaction.
        alice.send(f"<iq type='set' id='p2'>{publish}</iq>")
        assert stanza_error(alice.next()) == "policy-violation"
        # Not subscribed to alice's presence: the node's access model refuses bob.
        bob.send(
            f"<iq type='get' id='g1' to='alice@localhost'><pubsub xmlns='{PUBSUB}'>"
            f"<items node='{TUNE}'/></pubsub></iq>"
        )
        assert stanza_error(bob.next()) == "not-authorized"
        alice.close()
        bob.abort()
        srv.wait_for_log("closed (alice@localhost/r)")
        srv.wait_for_log("closed (bob@localhost/r)")
        # XEP-0198: a session resumed on a new connection after its first was dropped,
        # then closed; and one that waited for a resumption in vain.
        carol = sm_login(srv, ca_file, clients, "carol")
        carol.enable()
        carol.c.abort()
        carol, answer = resume(srv, ca_file, clients, carol, 0)
        assert answer.tag == f"{{{SM}}}resumed"
        carol.c.close()
        dave = sm_login(srv, ca_file, clients, "dave")
        dave.enable()
        dave.c.abort()
        srv.wait_for_log("dave@localhost/r was not resumed in time")
        garbage = collected_by_the_collector(srv, out)
    finally:
        srv.stop()
    per_session = [
        line
        for line in garbage
        if line.startswith(("fastxmpp.stream.", "fastxmpp._parser.", "_ssl.", "frame "))
        and "/fastxmpp/cli.py" not in line  # the command line's own parsing, at start
    ]
    assert per_session == []


def test_an_answered_error_keeps_no_frames() -> None:
    # A handler turns a store's failure into a stanza error (`raise StanzaError(...) from
    # None`): the failure is still the error's __context__, with its traceback.
    from fastxmpp.errors import answered

    class Marker:
        """Something the failing frame refers to."""

    held: list[weakref.ref[Marker]] = []

    def store() -> None:
        marker = Marker()
        held.append(weakref.ref(marker))
        failure = OSError("no space left on device")
        raise failure  # this frame holds it: a cycle through the traceback

    try:
        try:
            store()
        except OSError:
            raise StanzaError("resource-constraint") from None
    except StanzaError as err:
        answered(err)
    assert held[0]() is None
