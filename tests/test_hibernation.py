"""Idle streams give their XML parser's memory back (StreamParser.hibernate, c2s
hibernate_after) and carry on exactly as before when input comes again."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from conftest import PASSWORD, ServerProcess
from fastxmpp._parser import STREAM_END, Stanza, StreamParser
from xmpp_raw import CLIENT

RELEASED = re.compile(r"released the parsers of (\d+) idle streams")
HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams' xmlns:ext='urn:example:ext' "
    b"to='localhost' version='1.0'>"
)
# Input after the pause, cut at awkward places; one stanza uses a prefix declared only on the
# stream header, which a rebuilt parser must still know.
LATER = [
    b"<message to='bob@localhost' id='m1'><ext:note>x</ext:note><body>hi</body></message>",
    b"  \n",
    b"<pres",
    b"ence type='unavailable'/><iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>",
    b"</stream:stream>",
]


def describe(events: list[Any]) -> list[Any]:
    out = []
    for e in events:
        if isinstance(e, Stanza):
            out.append((e.raw, e.attrs, e.needs_reserialize, e.with_attrs({"from": "a@b/c"})))
        else:
            out.append(type(e).__name__)
    return out


@pytest.mark.parametrize("pause_after", range(len(LATER)))
def test_hibernated_parser_parses_as_before(pause_after: int) -> None:
    steady, sleeper = StreamParser(), StreamParser()
    for parser in (steady, sleeper):
        parser.feed(HEADER)
        parser.feed(b"<presence/>")
    assert sleeper.hibernate() and sleeper.hibernating
    assert not sleeper.hibernate()  # nothing left to free
    for i, chunk in enumerate(LATER):
        assert describe(sleeper.feed(chunk)) == describe(steady.feed(chunk))
        if i == pause_after:
            sleeper.hibernate()
    assert sleeper.ended and steady.ended


def test_no_hibernation_inside_a_stanza_or_before_the_header() -> None:
    parser = StreamParser()
    assert not parser.hibernate()  # no stream header yet: nothing to rebuild from
    parser.feed(HEADER)
    parser.feed(b"<message><body>unfinished")
    assert not parser.hibernate()
    (message,) = parser.feed(b"</body></message>")
    assert message.raw == b"<message><body>unfinished</body></message>"
    assert parser.hibernate()
    parser.feed(b"<message><bo")  # an unfinished token
    assert not parser.hibernate()
    assert parser.feed(b"dy/></message></stream:stream>")[-1] is STREAM_END


def test_errors_after_waking_are_the_same() -> None:
    parser = StreamParser()
    parser.feed(HEADER)
    assert parser.hibernate()
    (error,) = parser.feed(b"<message><body></message>")
    assert error.condition == "not-well-formed"


def test_whitespace_keepalive_does_not_wake_the_parser() -> None:
    """RFC 6120 §4.6.1: a whitespace keepalive between stanzas carries nothing; it must not
    rebuild expat (the cost of a wake, times every idle client's keepalive)."""
    parser = StreamParser()
    parser.feed(HEADER)
    assert parser.hibernate()
    assert parser.feed(b" ") == []
    assert parser.feed(b"\r\n\t  ") == []
    assert parser.hibernating
    (message,) = parser.feed(b" <message><ext:x/></message>")  # the header's prefix still
    assert message.raw == b"<message><ext:x/></message>"
    assert not parser.hibernating
    assert parser.hibernate()
    (error,) = parser.feed(b" text ")  # not white space: still refused (RFC 6120 §4.9.3.1)
    assert error.condition == "bad-format"


def test_reset_forgets_the_old_header() -> None:
    parser = StreamParser()
    parser.feed(HEADER)
    assert parser.hibernate()
    parser.reset()  # STARTTLS / SASL: a new stream, the old header must not come back
    assert not parser.hibernating
    (header,) = parser.feed(HEADER.replace(b"xmlns:ext='urn:example:ext' ", b""))
    assert header.attrs["to"] == "localhost"
    (message,) = parser.feed(b"<message><ext:x/></message>")
    assert message.condition == "not-well-formed"  # ext: is no longer declared


def test_idle_streams_hibernate_and_keep_working(make_server: Any, ca_file: str) -> None:
    srv: ServerProcess = make_server("[c2s]\nhibernate_after = 0.3\n")
    srv.adduser("alice@localhost")
    srv.adduser("bob@localhost")
    srv.start()
    alice, bob = srv.client(), srv.client()
    alice.login(ca_file, "alice", PASSWORD, "a")
    bob.login(ca_file, "bob", PASSWORD, "b")
    deadline = time.monotonic() + 10
    while sum(map(int, RELEASED.findall(srv.log_text()))) < 2:
        assert time.monotonic() < deadline, "idle streams were never hibernated"
        time.sleep(0.1)
    alice.send("<message to='bob@localhost/b' id='after'><body>still there?</body></message>")
    message = bob.next()
    assert message.get("id") == "after" and message.get("from") == "alice@localhost/a"
    assert message.findtext(f"{{{CLIENT}}}body") == "still there?"
    for c in (alice, bob):
        c.close()
