"""The stanza pipeline (fastxmpp/pipeline.py) on a real router: the order of a stage's
handlers is the one ORDER writes down whatever the order of hooking, and what a handler
returns decides what happens to the stanza (pass, modify, consume, bounce)."""

from __future__ import annotations

from typing import Any

import pytest
from fastxmpp._parser import Stanza, StreamParser
from fastxmpp._router import Router, Session

from fastxmpp.errors import StanzaError
from fastxmpp.jid import parse_jid
from fastxmpp.pipeline import ORDER, STAGES, Pipeline

HEADER = (
    b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
    b" to='example.com' version='1.0'>"
)


class Loop:
    def call_soon(self, callback: Any, *args: Any) -> None:
        pass


class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False


class Client(Session):
    pass


def parsed(xml: str) -> Stanza:
    stanza = StreamParser().feed(HEADER + xml.encode())[-1]
    assert isinstance(stanza, Stanza)
    return stanza


@pytest.fixture
def net() -> tuple[Router, Pipeline, Client, Client]:
    router = Router(Loop(), parse_jid)
    router.add_host("example.com")
    router.user_exists = lambda domain, local: local in ("alice", "bob")
    sessions = []
    for local in ("alice", "bob"):
        session = Client()
        session.transport = Transport()
        router.bind(session, local, "example.com", "r")
        session.available = True
        sessions.append(session)
    return router, Pipeline(router), sessions[0], sessions[1]


def chat(to: str, body: str = "x") -> Stanza:
    return parsed(f"<message to='{to}' type='chat'><body>{body}</body></message>")


def delivered(session: Client) -> list[bytes]:
    session.flush()
    return session.transport.written


def test_every_stage_in_the_table_is_one_the_router_runs() -> None:
    router = Router(Loop(), parse_jid)
    assert set(ORDER) == set(STAGES)
    for stage in STAGES:
        router.set_stage(stage, ())
    with pytest.raises(ValueError):
        router.set_stage("message/nowhere", ())


def test_order_comes_from_the_table(net: Any) -> None:
    """carbons hooks message/delivered before mam does, yet mam runs first (ORDER)."""
    router, pipeline, alice, _bob = net
    seen: list[str] = []
    pipeline.hook("carbons", "message/delivered", lambda *args: seen.append("carbons"))
    pipeline.hook("mam", "message/delivered", lambda *args: seen.append("mam"))
    router.route(alice, chat("bob@example.com", "hi"))
    assert seen == ["mam", "carbons"]
    pipeline.unhook("mam", "message/delivered")
    seen.clear()
    router.route(alice, chat("bob@example.com", "hi"))
    assert seen == ["carbons"]


def test_only_owners_in_the_table_may_hook(net: Any) -> None:
    _router, pipeline, _alice, _bob = net
    with pytest.raises(ValueError, match="no place"):
        pipeline.hook("vcard", "message/in", lambda *args: None)
    pipeline.hook("mam", "message/in", lambda *args: None)
    with pytest.raises(ValueError, match="already"):
        pipeline.hook("mam", "message/in", lambda *args: None)


def test_modify_then_delivered_sees_the_new_bytes(net: Any) -> None:
    router, pipeline, alice, bob = net
    after: list[tuple[bytes, tuple[Any, ...]]] = []
    pipeline.hook("mam", "message/in", lambda origin, st, target, data: b"<message>new</message>")
    pipeline.hook(
        "carbons",
        "message/delivered",
        lambda o, st, t, data, sessions: after.append((data, sessions)),
    )
    router.route(alice, chat("bob@example.com/r", "old"))
    assert delivered(bob) == [b"<message>new</message>"]
    assert after == [(b"<message>new</message>", (bob,))]


def test_consume_stops_delivery(net: Any) -> None:
    router, pipeline, alice, bob = net
    after: list[Any] = []
    pipeline.hook("mam", "message/in", lambda *args: True)
    pipeline.hook("carbons", "message/delivered", lambda *args: after.append(args))
    router.route(alice, chat("bob@example.com", "x"))
    assert delivered(bob) == [] and after == []


def test_bounce_stops_everything_after_it(net: Any) -> None:
    """A handler's StanzaError reaches the caller (the stream makes the error reply); no
    later stage sees the stanza, so nothing is archived or copied."""
    router, pipeline, alice, bob = net
    after: list[Any] = []

    def refuse(*args: Any) -> None:
        raise StanzaError("not-acceptable")

    pipeline.hook("privacy", "message/offline", refuse)
    pipeline.hook("offline", "message/offline", lambda *args: after.append("stored") or True)
    pipeline.hook("mam", "message/delivered", lambda *args: after.append("archived"))
    pipeline.hook("mam", "message/sent", lambda *args: after.append("sent"))
    bob.available = False
    with pytest.raises(StanzaError) as err:
        router.route(alice, chat("bob@example.com", "x"))
    assert err.value.condition == "not-acceptable"
    assert after == []
    pipeline.unhook("privacy", "message/offline")
    router.route(alice, chat("bob@example.com", "x"))
    assert after == ["stored", "archived", "sent"]


def test_nobody_takes_it_offline(net: Any) -> None:
    """Without a handler consuming it, a message for an account with nobody available
    bounces (RFC 6121 §8.5.2.2.1)."""
    router, pipeline, alice, bob = net
    pipeline.hook("offline", "message/offline", lambda *args: None)
    bob.available = False
    with pytest.raises(StanzaError) as err:
        router.route(alice, chat("bob@example.com", "x"))
    assert err.value.condition == "service-unavailable"
