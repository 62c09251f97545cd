"""Connection, session and input limits (docs: config.example.toml [limits])."""

from __future__ import annotations

import socket
import time
from typing import Any

from conftest import PASSWORD, ServerProcess
from xmpp_raw import CLIENT, stanza_error


def test_connections_per_ip(make_server: Any, ca_file: str) -> None:
    srv: ServerProcess = make_server("[limits]\nmax_connections_per_ip = 3\n")
    srv.adduser("alice@localhost")
    srv.start()
    held = [srv.client() for _ in range(3)]
    for c in held:
        c.open_stream()
    extra = srv.client()
    assert extra.stream_error() == "policy-violation"
    assert extra.wait_closed()
    held.pop().close()
    # A slot is free again once a connection has gone.
    again = srv.client()
    assert again.login(ca_file, "alice", PASSWORD, "back") == "alice@localhost/back"
    for c in [*held, again]:
        c.close()


def test_resources_per_account(make_server: Any, ca_file: str) -> None:
    srv: ServerProcess = make_server("[limits]\nmax_resources_per_account = 2\n")
    srv.adduser("alice@localhost")
    srv.start()
    first, second = srv.client(), srv.client()
    first.login(ca_file, "alice", PASSWORD, "one")
    second.login(ca_file, "alice", PASSWORD, "two")
    third = srv.client()
    third.open_stream()
    third.starttls(ca_file)
    third.sasl_scram("alice", PASSWORD)
    third.open_stream()
    third.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
    reply = third.next()
    assert reply.get("type") == "error" and stanza_error(reply) == "resource-constraint"
    # Taking over an existing resource is not a new session: still allowed (replace policy).
    third.send(
        "<iq type='set' id='c'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
        "<resource>two</resource></bind></iq>"
    )
    assert third.next().get("type") == "result"
    assert second.stream_error() == "conflict"
    for c in (first, second, third):
        c.close()


def test_fast_input_is_paced_not_dropped(make_server: Any, ca_file: str) -> None:
    rate, burst = 20_000, 10_000
    srv: ServerProcess = make_server(
        f"[limits]\nmax_bytes_per_second = {rate}\nburst_bytes = {burst}\n"
    )
    srv.adduser("alice@localhost")
    srv.adduser("bob@localhost")
    srv.start()
    alice, bob = srv.client(), srv.client()
    alice.login(ca_file, "alice", PASSWORD, "fast")
    bob.login(ca_file, "bob", PASSWORD, "slow")
    bob.send("<presence/>")
    body = "x" * 900
    count = 60  # about 60 KB: three seconds of budget after the burst
    started = time.monotonic()
    for i in range(count):
        alice.send(f"<message to='bob@localhost/slow' id='m{i}'><body>{body}</body></message>")
    got = []
    while len(got) < count:
        el = bob.next(timeout=20)
        if el.tag == f"{{{CLIENT}}}message":
            got.append(el.get("id"))
    elapsed = time.monotonic() - started
    assert got == [f"m{i}" for i in range(count)]  # every message, in order
    # Pacing really happened: the server cannot have read 60 KB faster than the budget.
    assert elapsed >= (count * 950 - burst) / rate * 0.8
    alice.close()
    bob.close()


def test_a_client_that_stops_reading_is_closed(make_server: Any, ca_file: str) -> None:
    srv: ServerProcess = make_server(
        "[limits]\nmax_outbound_buffer = 65536\nmax_bytes_per_second = 0\n"
    )
    srv.adduser("alice@localhost")
    srv.adduser("bob@localhost")
    srv.start()
    alice, bob = srv.client(), srv.client()
    bob.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    alice.login(ca_file, "alice", PASSWORD, "flood")
    bob.login(ca_file, "bob", PASSWORD, "asleep")
    # Bob stops reading. Alice sends far more than the kernel buffers and the limit hold.
    chunk = "".join(
        f"<message to='bob@localhost/asleep' id='f{i}'><body>{'y' * 1000}</body></message>"
        for i in range(100)
    )
    deadline = time.monotonic() + 60
    while "output not read" not in srv.log_text():
        assert time.monotonic() < deadline, "the slow reader was never closed"
        alice.send(chunk)
    # Bob's session is gone: a message to it now gets an error (RFC 6121 §8.5.3.2.1 falls
    # back to the bare JID, where nobody is available: stored offline, no error), and an
    # iq to the full JID gets service-unavailable (§8.5.3.2.3).
    deadline = time.monotonic() + 10
    while True:
        alice.send(
            "<iq type='get' id='probe' to='bob@localhost/asleep'><ping xmlns='urn:xmpp:ping'/></iq>"
        )
        reply = alice.next()
        while reply.get("id") != "probe":
            reply = alice.next()
        if stanza_error(reply) == "service-unavailable":
            break
        assert time.monotonic() < deadline, "bob's session stayed bound"
        time.sleep(0.1)
    assert srv.alive()
    alice.close()
    bob.abort()
