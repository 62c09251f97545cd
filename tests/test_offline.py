"""Offline messages (RFC 6121 §8.5.2.2.1, XEP-0160, XEP-0203 delay stamps): what is stored,
in which order it comes back at the next initial presence, quota, restarts.

What is stored is also read straight from the LMDB data (as the CLI can while the server
runs), so storage is checked independently of delivery."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import PASSWORD, ServerProcess
from lxml import etree
from xmpp_raw import CLIENT, RawClient, stanza_error

from fastxmpp.storage.lmdb_store import Storage
from fastxmpp.storage.offline import OfflineStore

DELAY = "urn:xmpp:delay"
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


@pytest.fixture
def clients() -> Iterator[list[RawClient]]:
    opened: list[RawClient] = []
    yield opened
    for c in opened:
        c.close()


@pytest.fixture
def srv(make_server: Any) -> ServerProcess:
    server: ServerProcess = make_server(extra_toml="[offline]\nmax_messages = 5\n")
    for user in ("alice", "bob", "carol"):
        server.adduser(f"{user}@localhost")
    server.start()
    return server


def login(srv: ServerProcess, ca_file: str, opened: list[RawClient], user: str) -> RawClient:
    c = srv.client()
    opened.append(c)
    c.login(ca_file, user, PASSWORD, "r")
    return c


def sync(c: RawClient) -> list[Any]:
    """Round-trip a ping: everything sent before has been processed. Returns what arrived
    meanwhile."""
    c.send("<iq type='get' id='sync'><ping xmlns='urn:xmpp:ping'/></iq>")
    seen: list[Any] = []
    while True:
        el = c.next()
        if el.get("id") == "sync" and el.tag == f"{{{CLIENT}}}iq":
            return seen
        seen.append(el)


def stored(srv: ServerProcess, user: str) -> list[Any]:
    """The messages stored for user@localhost, oldest first, parsed."""
    with Storage(srv.data_dir) as storage:
        messages = OfflineStore(storage).peek("localhost", user)
    # Stored as routed: the stanza's default namespace comes from the stream.
    return [
        etree.fromstring(b"<w xmlns='jabber:client'>" + data + b"</w>")[0] for _, data in messages
    ]


def bodies(messages: list[Any]) -> list[str | None]:
    return [m.findtext(f"{{{CLIENT}}}body") for m in messages]


def send_three(alice: RawClient) -> None:
    alice.send("<message to='bob@localhost' type='chat' id='m1'><body>one</body></message>")
    alice.send("<message to='bob@localhost' type='normal' id='m2'><body>two</body></message>")
    # A chat message to a resource that is gone is handled as if to the bare JID (RFC 6121
    # §8.5.3.2.1; a normal one is refused: tests/test_routing.py).
    alice.send("<message to='bob@localhost/gone' type='chat' id='m3'><body>three</body></message>")
    errors = [el for el in sync(alice) if el.get("type") == "error"]
    assert errors == []


def test_stored_while_offline(srv: ServerProcess, ca_file: str, clients: list[RawClient]) -> None:
    alice = login(srv, ca_file, clients, "alice")
    send_three(alice)
    messages = stored(srv, "bob")
    assert bodies(messages) == ["one", "two", "three"]
    for message in messages:
        assert message.tag == f"{{{CLIENT}}}message"
        assert message.get("from") == "alice@localhost/r"
        delay = message.find(f"{{{DELAY}}}delay")
        assert delay is not None and delay.get("from") == "localhost"
        assert STAMP.fullmatch(delay.get("stamp"))


def test_delivered_in_order_at_initial_presence(
    srv: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    alice = login(srv, ca_file, clients, "alice")
    send_three(alice)
    alice.send("<message to='bob@localhost'/>")  # an empty message is stored too
    sync(alice)
    bob = login(srv, ca_file, clients, "bob")
    # Nothing before initial presence (XEP-0160 §2).
    assert [el for el in sync(bob) if el.tag == f"{{{CLIENT}}}message"] == []
    bob.send("<presence/>")
    messages = [el for el in sync(bob) if el.tag == f"{{{CLIENT}}}message"]
    assert bodies(messages) == ["one", "two", "three", None]
    assert [m.get("id") for m in messages[:3]] == ["m1", "m2", "m3"]
    for message in messages:
        assert message.get("from") == "alice@localhost/r"
        delay = message.find(f"{{{DELAY}}}delay")
        assert delay is not None and delay.get("from") == "localhost"
        assert STAMP.fullmatch(delay.get("stamp"))
    # Delivered means gone.
    assert stored(srv, "bob") == []
    bob.close()
    again = login(srv, ca_file, clients, "bob")
    again.send("<presence/>")
    assert [el for el in sync(again) if el.tag == f"{{{CLIENT}}}message"] == []


def test_negative_priority_gets_nothing(
    srv: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    alice = login(srv, ca_file, clients, "alice")
    alice.send("<message to='carol@localhost'><body>wait</body></message>")
    sync(alice)
    carol = login(srv, ca_file, clients, "carol")
    carol.send("<presence><priority>-1</priority></presence>")
    assert [el for el in sync(carol) if el.tag == f"{{{CLIENT}}}message"] == []
    # Still no resource with non-negative priority: new messages are stored as well.
    alice.send("<message to='carol@localhost'><body>still</body></message>")
    sync(alice)
    assert bodies(stored(srv, "carol")) == ["wait", "still"]


def test_survives_restart(make_server: Any, ca_file: str) -> None:
    srv = make_server()
    srv.adduser("alice@localhost")
    srv.adduser("bob@localhost")
    srv.start()
    opened: list[RawClient] = []
    try:
        alice = login(srv, ca_file, opened, "alice")
        send_three(alice)
        alice.close()
        srv.stop()
        assert bodies(stored(srv, "bob")) == ["one", "two", "three"]
        srv.start()
        bob = login(srv, ca_file, opened, "bob")
        bob.send("<presence/>")
        messages = [el for el in sync(bob) if el.tag == f"{{{CLIENT}}}message"]
        assert bodies(messages) == ["one", "two", "three"]
    finally:
        for c in opened:
            c.close()


def test_other_types_not_stored(srv: ServerProcess, ca_file: str, clients: list[RawClient]) -> None:
    alice = login(srv, ca_file, clients, "alice")
    alice.send("<message to='bob@localhost' type='headline'><body>news</body></message>")
    alice.send("<message to='bob@localhost' type='error' id='e'><body>err</body></message>")
    assert [el for el in sync(alice) if el.get("type") == "error"] == []
    alice.send("<message to='bob@localhost' type='groupchat' id='g'><body>gc</body></message>")
    reply = alice.next()
    assert reply.get("id") == "g" and stanza_error(reply) == "service-unavailable"
    # XEP-0160 §3: chat states alone are not stored (and not bounced).
    alice.send(
        "<message to='bob@localhost' type='chat' id='cs'>"
        "<composing xmlns='http://jabber.org/protocol/chatstates'/></message>"
    )
    assert [el for el in sync(alice) if el.get("type") == "error"] == []
    assert stored(srv, "bob") == []


def test_quota_bounces_with_service_unavailable(
    srv: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    alice = login(srv, ca_file, clients, "alice")
    for n in range(5):
        alice.send(f"<message to='bob@localhost' id='q{n}'><body>{n}</body></message>")
    assert [el for el in sync(alice) if el.get("type") == "error"] == []
    alice.send("<message to='bob@localhost' id='over'><body>too many</body></message>")
    reply = alice.next()
    assert reply.get("id") == "over" and reply.get("type") == "error"
    assert stanza_error(reply) == "service-unavailable"
    assert reply.get("from") == "bob@localhost"
    assert bodies(stored(srv, "bob")) == ["0", "1", "2", "3", "4"]


def test_a_burst_is_one_commit_per_loop_turn(
    make_server: Any, ca_file: str, clients: list[RawClient], tmp_path: Any
) -> None:
    # Each commit is an fsync the event loop waits for: the messages stored in one turn are
    # committed together, not one by one (a quota past the limit still bounces at once).
    from test_storage_failure import build_disk_faults

    flushes = tmp_path / "flushes"
    server: ServerProcess = make_server(extra_toml="[offline]\nmax_messages = 30\n")
    server.env = dict(
        __import__("os").environ,
        LD_PRELOAD=str(build_disk_faults(tmp_path)),
        FASTXMPP_SYNC_LOG=str(flushes),
    )
    for user in ("alice", "bob"):
        server.adduser(f"{user}@localhost")
    server.start()
    alice = login(server, ca_file, clients, "alice")
    sync(alice)
    before = flushes.stat().st_size if flushes.exists() else 0
    burst = "".join(
        f"<message to='bob@localhost' id='b{n}'><body>{n}</body></message>" for n in range(40)
    )
    alice.send(burst)  # one write: read, routed and committed in one or a few turns
    errors = [el for el in sync(alice) if el.get("type") == "error"]
    assert [e.get("id") for e in errors] == [f"b{n}" for n in range(30, 40)]
    assert all(stanza_error(e) == "service-unavailable" for e in errors)
    flushed = flushes.stat().st_size - before
    # 30 stored: one commit (an fdatasync) per turn that stored any, and the archive's
    # commits: 6 here; committed one by one they were 35.
    assert flushed <= 15, flushed
    assert bodies(stored(server, "bob")) == [str(n) for n in range(30)]


def test_unknown_user_stores_nothing(
    srv: ServerProcess, ca_file: str, clients: list[RawClient]
) -> None:
    alice = login(srv, ca_file, clients, "alice")
    alice.send("<message to='nobody@localhost' id='n'><body>hello?</body></message>")
    reply = alice.next()
    assert reply.get("id") == "n" and stanza_error(reply) == "service-unavailable"
    assert stored(srv, "nobody") == []
    # the bounce carries the message's payload back (RFC 6120 §8.3.1 MAY; libpurple shows
    # a failed message only so), before the <error/>, in the client namespace
    assert reply.findtext(f"{{{CLIENT}}}body") == "hello?"
    assert [child.tag for child in reply] == [f"{{{CLIENT}}}body", f"{{{CLIENT}}}error"]
    # a payload using a prefix declared on the message would not stand alone: left out
    alice.send(
        "<message to='nobody@localhost' id='p' xmlns:e='urn:example'>"
        "<body>x</body><e:data/></message>"
    )
    reply = alice.next()
    assert reply.get("id") == "p" and stanza_error(reply) == "service-unavailable"
    assert [child.tag for child in reply] == [f"{{{CLIENT}}}error"]
    # other stanzas' errors carry no payload
    alice.send("<iq to='nobody@localhost' id='q' type='get'><query xmlns='urn:example'/></iq>")
    reply = alice.next()
    assert reply.get("id") == "q" and stanza_error(reply) == "service-unavailable"
    assert [child.tag for child in reply] == [f"{{{CLIENT}}}error"]


def test_disabled(make_server: Any, ca_file: str, clients: list[RawClient]) -> None:
    srv = make_server(extra_toml="[offline]\nenabled = false\n")
    srv.adduser("alice@localhost")
    srv.adduser("bob@localhost")
    srv.start()
    alice = login(srv, ca_file, clients, "alice")
    alice.send("<message to='bob@localhost' id='d'><body>hi</body></message>")
    reply = alice.next()
    assert reply.get("id") == "d" and stanza_error(reply) == "service-unavailable"
    alice.send(
        "<iq type='get' id='i' to='localhost'>"
        "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
    )
    info = alice.next()
    features = {f.get("var") for f in info.iter("{http://jabber.org/protocol/disco#info}feature")}
    assert "msgoffline" not in features and "urn:xmpp:ping" in features


def test_account_removal_purges(srv: ServerProcess, ca_file: str, clients: list[RawClient]) -> None:
    from conftest import run_cli

    alice = login(srv, ca_file, clients, "alice")
    alice.send("<message to='carol@localhost'><body>for carol</body></message>")
    sync(alice)
    assert len(stored(srv, "carol")) == 1
    result = run_cli("deluser", "carol@localhost", config=srv.config)
    assert result.returncode == 0, result.stderr
    time.sleep(0.1)
    assert stored(srv, "carol") == []


# --- delivery in-process: the module against a stand-in session --------------------------
#
# These do not need the presence module: they call `initial_presence` the way the hub does.


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False
        self.unread = 0  # bytes the client has not read yet

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.unread


class FakeSession:
    def __init__(self, local: str, priority: int = 0) -> None:
        self.local, self.domain, self.resource = local, "localhost", "fake"
        self.bare = f"{local}@localhost"
        self.full = f"{self.bare}/fake"
        self.priority = priority
        self.closing = False
        self.transport: FakeTransport | None = FakeTransport()
        self.sm = None  # no XEP-0198: a stored message leaves storage once written
        self._out: list[bytes] = []

    def send(self, data: bytes) -> None:
        if self.transport is not None:
            self._out.append(data)

    def flush(self) -> None:
        if self.transport is not None:
            self.transport.written.extend(self._out)
            self.transport.unread += sum(map(len, self._out))
        self._out = []


def offline_module(tmp_path: Any, max_messages: int = 1000, max_output: int = 1 << 20) -> Any:
    """The module over a real store, in the running loop (called from async tests): what it
    stores is committed at `commit_turn`, the end of the loop turn in the server."""
    from types import SimpleNamespace

    from fastxmpp._router import Router

    from fastxmpp.config import LimitsConfig, OfflineConfig, load_config
    from fastxmpp.jid import parse_jid
    from fastxmpp.modules.base import ModuleHub
    from fastxmpp.modules.offline import OfflineModule

    config = load_config(None)
    object.__setattr__(config, "offline", OfflineConfig(True, max_messages))
    object.__setattr__(config, "limits", LimitsConfig(max_outbound_buffer=max_output))
    server = SimpleNamespace(
        config=config,
        router=Router(asyncio.get_running_loop(), parse_jid),
        modules=ModuleHub(),
        storage=Storage(tmp_path / "data"),
        background=set(),
    )
    module = OfflineModule(server)
    server.modules.load([module])
    return module


def stanzas(*raw: str) -> list[Any]:
    from fastxmpp._parser import StreamParser

    parser = StreamParser()
    parser.feed(
        b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
        b" to='localhost' version='1.0'>"
    )
    return list(parser.feed("".join(raw).encode()))


async def test_module_delivers_in_order_and_forgets(tmp_path: Any) -> None:
    module = offline_module(tmp_path)
    sender = FakeSession("alice")
    target = ("bob", "localhost", "", "bob@localhost")
    for st in stanzas(
        "<message to='bob@localhost' id='1'><body>a</body></message>",
        "<message to='bob@localhost' id='2' type='chat'/>",
        "<message to='bob@localhost' id='3' type='headline'><body>h</body></message>",
    ):
        module.store_message(sender, st, target)
    module.commit_turn()
    negative = FakeSession("bob", priority=-1)
    module.initial_presence(negative)
    assert negative.transport is not None and negative.transport.written == []
    closed = FakeSession("bob")
    closed.transport = None
    module.initial_presence(closed)
    assert module.store.count("localhost", "bob") == 2
    bob = FakeSession("bob")
    module.initial_presence(bob)
    assert bob.transport is not None
    delivered = [
        etree.fromstring(b"<w xmlns='jabber:client'>" + d + b"</w>")[0]
        for d in bob.transport.written
    ]
    assert [m.get("id") for m in delivered] == ["1", "2"]
    for message in delivered:
        assert message.get("from") == "alice@localhost/fake"
        assert message.find(f"{{{DELAY}}}delay").get("from") == "localhost"
    assert module.store.count("localhost", "bob") == 0
    module.server.storage.close()


async def test_module_quota(tmp_path: Any) -> None:
    from fastxmpp.errors import StanzaError

    module = offline_module(tmp_path, max_messages=2)
    sender = FakeSession("alice")
    target = ("bob", "localhost", "", "bob@localhost")
    first, second, third = stanzas(*["<message to='bob@localhost'><body>x</body></message>"] * 3)
    assert module.store_message(sender, first, target)
    assert module.store_message(sender, second, target)
    with pytest.raises(StanzaError) as err:
        module.store_message(sender, third, target)  # counted before the turn's commit
    assert err.value.condition == "service-unavailable"
    module.commit_turn()
    assert module.store.count("localhost", "bob") == 2
    with pytest.raises(StanzaError) as err:
        module.store_message(sender, third, target)
    assert err.value.condition == "service-unavailable"
    module.server.storage.close()


async def test_module_paces_a_large_backlog(tmp_path: Any) -> None:
    """More than half the output limit waits for the client to read: a burst would get it
    disconnected as a slow reader, after its messages had left storage."""
    module = offline_module(tmp_path, max_output=4000)
    sender = FakeSession("alice")
    target = ("bob", "localhost", "", "bob@localhost")
    body = "x" * 100
    for st in stanzas(
        *[f"<message to='bob@localhost' id='{n}'><body>{body}</body></message>" for n in range(50)]
    ):
        module.store_message(sender, st, target)
    module.commit_turn()
    bob = FakeSession("bob")
    transport = bob.transport
    assert transport is not None
    module.initial_presence(bob)
    first = len(transport.written)
    assert 0 < first < 50
    assert transport.unread <= 2000  # half of max_outbound_buffer
    assert module.store.count("localhost", "bob") == 50 - first
    # A second resource does not start a second delivery of the same messages.
    other = FakeSession("bob")
    module.initial_presence(other)
    assert other.transport is not None and other.transport.written == []
    # Unread output: nothing more goes out.
    await asyncio.sleep(0.1)
    assert len(transport.written) == first
    # The client reads; the rest follows, in order.
    for _ in range(100):
        transport.unread = 0
        await asyncio.sleep(0.03)
        if len(transport.written) == 50:
            break
    ids = [
        etree.fromstring(b"<w xmlns='jabber:client'>" + d + b"</w>")[0].get("id")
        for d in transport.written
    ]
    assert ids == [str(n) for n in range(50)]
    assert module.store.count("localhost", "bob") == 0
    await asyncio.sleep(0.05)
    assert not module.delivering
    module.server.storage.close()
