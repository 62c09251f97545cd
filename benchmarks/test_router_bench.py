"""Router deliveries per second between two local sessions, without sockets (docs/PERFORMANCE.md).

A delivery is one stanza queued on the target session with its outer tag rewritten (`from`
stamped, RFC 6120 §8.1.2.1); writes are flushed once per simulated loop turn, as
`loop.call_soon(router.flush_all)` would on a running loop.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import CHUNK_SIZE, STREAM_HEADER, CountingTransport, FakeLoop, chunked, record_rate
from fastxmpp._parser import Stanza, StreamParser
from fastxmpp._router import Router, Session, append_child, archive_copies, forwardable

from fastxmpp.jid import parse_jid

pytestmark = pytest.mark.benchmark(group="router")

DOMAIN = "example.com"
# Deliveries per timed round, and per loop turn: a 4 KiB read holds about this many chats.
DELIVERIES = 2000
PER_LOOP_TURN = 12


class BenchSession(Session):
    pass


class Pair:
    """alice@example.com/phone sends to bob@example.com/laptop through one router."""

    def __init__(self) -> None:
        self.loop = FakeLoop()
        self.router = Router(self.loop, parse_jid)
        self.router.add_host(DOMAIN)
        self.router.user_exists = lambda domain, local: local in ("alice", "bob")
        self.alice = self._session("alice", "phone")
        self.bob = self._session("bob", "laptop")
        self.bob_out: CountingTransport = self.bob.transport

    def _session(self, local: str, resource: str) -> BenchSession:
        session = BenchSession()
        session.transport = CountingTransport()
        self.router.bind(session, local, DOMAIN, resource)
        # Initial presence sent (RFC 6121 §4.2): eligible for bare-JID delivery.
        session.available = True
        session.priority = 0
        return session

    def loop_turn(self) -> None:
        self.loop.scheduled.clear()
        self.router.flush_all()


def chat(to: str, i: int) -> bytes:
    return (
        f"<message to='{to}' type='chat' id='m{i:06d}'><body>Running ten minutes late, "
        f"order without me ({i})</body><active xmlns='http://jabber.org/protocol/chatstates'/>"
        f"</message>"
    ).encode()


def parse_one(data: bytes) -> Stanza:
    events = StreamParser().feed(STREAM_HEADER + data)
    stanza = events[-1]
    assert isinstance(stanza, Stanza)
    return stanza


def route_repeatedly(pair: Pair, stanza: Stanza) -> int:
    route = pair.router.route
    alice = pair.alice
    turns = DELIVERIES // PER_LOOP_TURN
    for _ in range(turns):
        for _ in range(PER_LOOP_TURN):
            route(alice, stanza)
        pair.loop_turn()
    return turns


@pytest.mark.parametrize(
    "to", [f"bob@{DOMAIN}/laptop", f"bob@{DOMAIN}"], ids=["full-jid", "bare-jid"]
)
def test_route_parsed_stanza(benchmark: Any, to: str) -> None:
    """One stanza parsed once and routed again and again: the router's own cost."""
    pair = Pair()
    stanza = parse_one(chat(to, 0))
    turns = benchmark(route_repeatedly, pair, stanza)
    deliveries = turns * PER_LOOP_TURN
    assert pair.bob_out.last.startswith(b"<message to=")
    assert pair.bob_out.last.count(b'from="alice@example.com/phone"') == PER_LOOP_TURN
    record_rate(benchmark, deliveries=deliveries)
    benchmark.extra_info["deliveries_per_round"] = deliveries


def parse_and_route(pair: Pair, chunks: list[bytes]) -> int:
    parser = StreamParser()
    route = pair.router.route
    alice = pair.alice
    delivered = 0
    for chunk in chunks:
        # One socket read per loop turn: parse it, route what it completed, flush.
        for event in parser.feed(chunk):
            if type(event) is Stanza:
                route(alice, event)
                delivered += 1
        pair.loop_turn()
    return delivered


@pytest.mark.parametrize(
    "to", [f"bob@{DOMAIN}/laptop", f"bob@{DOMAIN}"], ids=["full-jid", "bare-jid"]
)
def test_parse_and_route(benchmark: Any, to: str) -> None:
    """Alice's stream in 4 KiB reads, each stanza parsed and routed to Bob."""
    pair = Pair()
    stream = STREAM_HEADER + b"".join(chat(to, i) for i in range(DELIVERIES))
    chunks = chunked(stream, CHUNK_SIZE)
    deliveries = benchmark(parse_and_route, pair, chunks)
    assert deliveries == DELIVERIES
    record_rate(benchmark, deliveries=deliveries, MB=len(stream) / 1e6)
    benchmark.extra_info["deliveries_per_round"] = deliveries


# --- with handlers at the pipeline's stages, as the real server hooks them -----------------
#
# The server's modules hook the stanza pipeline (fastxmpp/pipeline.py); for a chat message
# between two local sessions the archive's three handlers run ("message/in",
# "message/delivered", "message/sent"), carbons only while someone has them on. The handlers
# here do no work of their own (the archive's real work is measured by `make compare`), so
# that what is timed is the router with its stages. `hook` also drives a router from before
# the pipeline (named hook attributes), for the A/B in docs/PERFORMANCE.md.

ROOM = f"room@conference.{DOMAIN}"
OCCUPANTS = 20
CONTACTS = 20

try:
    from fastxmpp.pipeline import Pipeline
except ImportError:  # a router from before the pipeline, for the A/B
    Pipeline = None


class ArchiveLike:
    """What the archive module does at each stage, minus its work: look at the type."""

    def stamp(self, origin: Any, st: Stanza, target: Any, data: Any) -> None:
        st.attrs.get("type", "normal")
        return None

    def received(self, origin: Any, st: Stanza, target: Any, data: Any, sessions: Any) -> None:
        return None

    def sent(self, origin: Any, st: Stanza, target: Any) -> None:
        return None


class OldArchiveLike:
    """The same for a router from before the pipeline (its `mam` attribute)."""

    def received(self, origin: Any, st: Stanza, target: Any, data: Any) -> Any:
        st.attrs.get("type", "normal")
        return data

    def sent(self, origin: Any, st: Stanza, target: Any) -> None:
        return None


class ServerLike(Pair):
    """A Pair whose router has the archive's handlers, a room of OCCUPANTS sessions at a
    service domain, and CONTACTS sessions that see alice's presence."""

    def __init__(self) -> None:
        super().__init__()
        self.occupants = [self._session(f"occupant{i}", "r") for i in range(OCCUPANTS)]
        self.contacts = [self._session(f"contact{i}", "r") for i in range(CONTACTS)]
        self.router.add_service(f"conference.{DOMAIN}", self.room)
        if Pipeline is None:
            self.router.mam = OldArchiveLike()
            self.router.presence_hook = self.broadcast
            return
        pipeline = Pipeline(self.router)
        archive = ArchiveLike()
        pipeline.hook("mam", "message/in", archive.stamp)
        pipeline.hook("mam", "message/delivered", archive.received)
        pipeline.hook("mam", "message/sent", archive.sent)
        pipeline.hook("presence", "presence/broadcast", self.broadcast)
        # The rest of what the server hooks, off the paths measured here.
        pipeline.hook("presence", "presence/subscription", self.broadcast)
        pipeline.hook("presence", "presence/directed", archive.sent)
        pipeline.hook("privacy", "message/offline", archive.stamp)
        pipeline.hook("offline", "message/offline", archive.stamp)
        pipeline.hook("privacy", "iq/account", archive.sent)
        pipeline.hook("hub", "iq/response", self.broadcast)

    def room(self, origin: Any, st: Stanza, target: Any) -> None:
        """XEP-0045 §7.4 as modules/muc/room.py does it: one copy per occupant, 'from' the
        sender's occupant JID, 'to' the occupant."""
        sender = f"{ROOM}/alice"
        for session in self.occupants:
            session.send(st.with_attrs({"from": sender, "to": session.full}))

    def broadcast(self, origin: Any, st: Stanza) -> None:
        """RFC 6121 §4.2.2 as modules/presence.py does it: a copy per contact's session."""
        for session in self.contacts:
            session.send(st.with_attrs({"from": origin.full, "to": session.full}))


@pytest.mark.parametrize(
    "to", [f"bob@{DOMAIN}/laptop", f"bob@{DOMAIN}"], ids=["full-jid", "bare-jid"]
)
def test_route_through_server_stages(benchmark: Any, to: str) -> None:
    """A chat message with the archive's handlers hooked, as on the real server."""
    pair = ServerLike()
    stanza = parse_one(chat(to, 0))
    turns = benchmark(route_repeatedly, pair, stanza)
    assert pair.bob_out.last.count(b'from="alice@example.com/phone"') == PER_LOOP_TURN
    record_rate(benchmark, deliveries=turns * PER_LOOP_TURN)


def test_room_fan_out(benchmark: Any) -> None:
    """A groupchat message to a room served at a service domain, to OCCUPANTS sessions."""
    pair = ServerLike()
    stanza = parse_one(
        f"<message to='{ROOM}' type='groupchat' id='g1'><body>Lunch?</body></message>".encode()
    )
    turns = benchmark(route_repeatedly, pair, stanza)
    assert pair.occupants[-1].transport.last.count(b"<message") == PER_LOOP_TURN
    record_rate(benchmark, deliveries=turns * PER_LOOP_TURN * OCCUPANTS)


def test_presence_broadcast(benchmark: Any) -> None:
    """Available presence without 'to', broadcast to CONTACTS sessions."""
    pair = ServerLike()
    stanza = parse_one(b"<presence><show>away</show><status>at lunch</status></presence>")
    turns = benchmark(route_repeatedly, pair, stanza)
    assert pair.contacts[-1].transport.last.count(b"<presence") == PER_LOOP_TURN
    record_rate(benchmark, deliveries=turns * PER_LOOP_TURN * CONTACTS)


def _archive_copies_piece_by_piece(st: Stanza, sender: str, to: str, sid: bytes) -> tuple:
    # What modules/mam.py `received` did before `archive_copies`: three edits, three copies.
    changes = {"from": sender}
    if "to" not in st.attrs:
        changes["to"] = to
    return append_child(st.with_attrs(changes), sid), forwardable(st, sender, to)


@pytest.mark.parametrize("how", ["piece_by_piece", "one_pass"])
def test_archive_copies(benchmark: Any, how: str) -> None:
    """The two copies the message archive makes of each message to a local account: the
    delivered one (from stamped, stanza-id appended) and the archived one (from, to and
    jabber:client declared)."""
    stanza = parse_one(chat(f"bob@{DOMAIN}", 0))
    sender, to = f"alice@{DOMAIN}/phone", f"bob@{DOMAIN}"
    sid = b"<stanza-id xmlns='urn:xmpp:sid:0' by='bob@example.com' id='00000000000004d2'/>"
    make = _archive_copies_piece_by_piece if how == "piece_by_piece" else archive_copies
    assert make(stanza, sender, None, sid) == _archive_copies_piece_by_piece(
        stanza, sender, to, sid
    )

    def run() -> None:
        for _ in range(DELIVERIES):
            make(stanza, sender, None, sid)

    benchmark(run)
    record_rate(benchmark, messages=DELIVERIES)
