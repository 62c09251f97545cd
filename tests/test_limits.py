"""Connection, session and input limits (docs: config.example.toml [limits])."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from typing import Any

from conftest import PASSWORD, ServerProcess, add_accounts
from xmpp_raw import CLIENT, SASL, stanza_error

from fastxmpp.stream.throttle import AuthThrottle


def test_unauthenticated_connections_per_ip(make_server: Any, ca_file: str) -> None:
    """Connections from one address that have not authenticated are capped; authenticated
    ones are not (an office or carrier NAT, a load test from one host)."""
    srv: ServerProcess = make_server("[limits]\nmax_unauthenticated_per_ip = 3\n")
    users = [f"u{i}" for i in range(8)]
    add_accounts(srv, users)
    srv.start()
    held = [srv.client() for _ in range(3)]
    for c in held:
        c.open_stream()
    extra = srv.client()
    assert extra.stream_error() == "policy-violation"
    assert extra.wait_closed()
    # One slot free again: eight users log in through it one after another, as each frees
    # it by authenticating.
    held.pop().close()
    logged_in = []
    for user in users:
        c = srv.client()
        assert c.login(ca_file, user, PASSWORD, "nat").startswith(f"{user}@localhost/")
        logged_in.append(c)
    # Eight authenticated connections and two anonymous ones: the third anonymous one is
    # let in, a fourth is not.
    held.append(srv.client())
    held[-1].open_stream()
    assert extra_refused(srv)
    for c in [*held, *logged_in]:
        c.close()


def extra_refused(srv: ServerProcess) -> bool:
    c = srv.client()
    try:
        return c.stream_error() == "policy-violation" and c.wait_closed()
    finally:
        c.abort()


def test_the_old_name_of_the_per_address_cap_still_works(make_server: Any) -> None:
    srv: ServerProcess = make_server("[limits]\nmax_connections_per_ip = 1\n")
    srv.start()
    srv.wait_for_log("limits.max_connections_per_ip is deprecated")
    held = srv.client()
    held.open_stream()
    assert extra_refused(srv)
    held.close()


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


def test_throttle_backs_off_then_refuses() -> None:
    now = [0.0]
    throttle = AuthThrottle(2, per_ip=5, per_account=3, window=60, clock=lambda: now[0])
    delays = []
    for _ in range(3):
        throttle.record_failure("10.0.0.1", "alice@example.org")
        delays.append(throttle.delay("10.0.0.1", "alice@example.org"))
    assert delays == [0.0, 1.0, 2.0]  # two free failures, then doubling
    # The account is refused from any address; other accounts from elsewhere are not.
    assert throttle.refused("192.0.2.9", "alice@example.org")
    assert not throttle.refused("192.0.2.9", "bob@example.org")
    for _ in range(2):
        throttle.record_failure("10.0.0.1", None)
    assert throttle.refused("10.0.0.1")  # five failures from the address
    now[0] = 61.0  # the window has passed: everything is forgiven
    assert not throttle.refused("10.0.0.1", "alice@example.org")
    assert throttle.delay("10.0.0.1", "alice@example.org") == 0.0


def test_password_guessing_is_refused_per_account(make_server: Any, ca_file: str) -> None:
    srv: ServerProcess = make_server(
        "[limits]\nauth_free_failures = 10\nauth_failures_per_ip = 100\n"
        "auth_failures_per_account = 4\n[c2s]\nmax_sasl_failures = 100\n"
    )
    srv.adduser("alice@localhost")
    srv.adduser("bob@localhost")
    srv.start()
    c = srv.client()
    c.open_stream()
    c.starttls(ca_file)
    for _ in range(4):
        assert c.sasl_scram("alice", "guess").find(f"{{{SASL}}}not-authorized") is not None
    # Now even the right password is refused for alice, for the rest of the window.
    refused = c.sasl_scram("alice", PASSWORD)
    assert refused.find(f"{{{SASL}}}temporary-auth-failure") is not None
    c.close()
    other = srv.client()
    assert other.login(ca_file, "bob", PASSWORD, "fine") == "bob@localhost/fine"
    other.close()


def test_password_guessing_is_refused_per_address(make_server: Any, ca_file: str) -> None:
    srv: ServerProcess = make_server(
        "[limits]\nauth_free_failures = 1\nauth_failures_per_ip = 3\n"
        "auth_failures_per_account = 100\n"
    )
    srv.adduser("alice@localhost")
    srv.start()
    for user in ("u1", "u2", "u3"):  # different accounts, one address
        c = srv.client()
        c.open_stream()
        c.starttls(ca_file)
        assert c.sasl_scram(user, "guess").find(f"{{{SASL}}}not-authorized") is not None
        c.close()
    c = srv.client()
    c.open_stream()
    c.starttls(ca_file)
    failure = c.sasl_scram("alice", PASSWORD)
    assert failure.find(f"{{{SASL}}}temporary-auth-failure") is not None
    c.close()
    assert srv.alive()


def test_channel_binding_refusals_are_no_password_guesses(make_server: Any, ca_file: str) -> None:
    """slixmpp 1.8 (Poezio 0.14 on Debian 12) binds SCRAM-PLUS to tls-unique, which TLS 1.3
    lacks, then retries without binding but with the GS2 flag 'y', which RFC 5802 §6 makes
    the server refuse: four refusals per login before it falls back to PLAIN. They come
    before any proof of a password, so they neither delay nor lock out the account or the
    address, as wrong passwords do (test_password_guessing_is_refused_per_address)."""
    srv: ServerProcess = make_server(
        "[limits]\nauth_free_failures = 0\nauth_failures_per_ip = 2\n"
        "auth_failures_per_account = 2\n"
    )
    srv.adduser("alice@localhost")
    srv.start()
    for _ in range(3):
        c = srv.client()
        c.open_stream()
        c.starttls(ca_file)
        unique = c.sasl_scram(
            "alice", PASSWORD, "SCRAM-SHA-256-PLUS", channel_binding=("tls-unique", c.sock)
        )
        assert unique.find(f"{{{SASL}}}not-authorized") is not None
        downgraded = c.sasl_scram(
            "alice", PASSWORD, "SCRAM-SHA-256", channel_binding=("tls-server-end-point", c.sock)
        )
        assert downgraded.find(f"{{{SASL}}}not-authorized") is not None
        c.close()
    c = srv.client()
    c.open_stream()
    c.starttls(ca_file)
    # counted, the six would have refused the account and the address (2 each)
    assert c.sasl_scram("alice", PASSWORD).tag == f"{{{SASL}}}success"
    c.close()
    # a wrong password still counts: two lock the account out
    for _ in range(2):
        c = srv.client()
        c.open_stream()
        c.starttls(ca_file)
        assert c.sasl_scram("alice", "guess").find(f"{{{SASL}}}not-authorized") is not None
        c.close()
    c = srv.client()
    c.open_stream()
    c.starttls(ca_file)
    assert c.sasl_scram("alice", PASSWORD).find(f"{{{SASL}}}temporary-auth-failure") is not None
    c.close()


def test_stream_error_survives_input_sent_past_it(server: ServerProcess, ca_file: str) -> None:
    # A client still sending far beyond the stanza limit when the error comes: the server
    # answers policy-violation, then keeps reading (and dropping) until the client closes its
    # side (RFC 6120 §4.4), so the error is not destroyed by a TCP reset for unread input.
    # Before TLS: a TLS close waits for the peer's close_notify anyway.
    c = server.client()
    c.open_stream()
    payload = b"<message><body>" + b"A" * 8_000_000 + b"</body></message>"

    def flood() -> None:
        with contextlib.suppress(OSError):
            c.sock.sendall(payload)

    sender = threading.Thread(target=flood, daemon=True)
    sender.start()
    assert c.stream_error() == "policy-violation"
    sender.join(10)
    assert c.wait_closed()


def test_after_a_stream_error_the_server_waits_for_the_client_to_close(
    server: ServerProcess,
) -> None:
    # RFC 6120 §4.4: after its closing tag the server waits (bounded) for the peer to close
    # its side, reading what still comes, instead of resetting a connection with input unread.
    c = server.client()
    c.open_stream()
    c.send(b"<message><body></message>")
    assert c.stream_error() == "not-well-formed"
    c.sock.sendall(b"<more>input after the error is read and dropped</more>")
    poller = select.poll()
    poller.register(c.sock, select.POLLIN)
    assert poller.poll(500) == []  # no EOF: the server is waiting for us
    assert c.wait_closed(timeout=1.5)  # this closes our side; the server follows at once
    assert c.write_shut


def vm_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_distinct_long_addresses_do_not_grow_the_server(make_server: Any, ca_file: str) -> None:
    """One user names 100,000 distinct JIDs of about 2 KB each (at nonexistent domains and
    at nonexistent local users): the JID caches are bounded by bytes, so the server's
    memory grows by a bounded amount, not by the hundreds of MB the addresses take."""
    # Pacing off: this is about memory, not rate.
    srv: ServerProcess = make_server("[limits]\nmax_bytes_per_second = 0\n")
    # Debug traces would copy every stanza into the log pipe.
    srv.config.write_text(srv.config.read_text().replace('"debug"', '"info"'))
    srv.adduser("alice@localhost")
    srv.start()
    assert srv.proc is not None
    alice = srv.client()
    alice.login(ca_file, "alice", PASSWORD, "many")
    pad = "x" * 1000

    def batch(start: int, count: int) -> str:
        # type='error': never answered (RFC 6120 §8.3.1), so only the addresses cost.
        return "".join(
            f"<message type='error' to='{i}{pad}@"
            + (f"d{i % 8000}.invalid" if i % 2 else "localhost")
            + f"/{pad}{i}'/>"
            for i in range(start, start + count)
        )

    def ping(marker: str) -> None:
        alice.send(f"<iq type='get' id='{marker}'><ping xmlns='urn:xmpp:ping'/></iq>")
        while alice.next(timeout=60).get("id") != marker:
            pass

    total, step = 100_000, 1000
    alice.send(batch(total, 5 * step))  # warm-up: buffers and allocator arenas in use
    ping("warm")
    before = vm_rss_kib(srv.proc.pid)
    for start in range(0, total, step):
        alice.send(batch(start, step))
        if start % (20 * step) == 0:
            ping(f"p{start}")  # keep the server's input from piling up in socket buffers
    ping("done")
    grown_mib = (vm_rss_kib(srv.proc.pid) - before) / 1024
    # The addresses take about 200 MB. Bound: parse_jid's cache (16 MiB, fastxmpp/jid.py)
    # plus the router's (16 MiB, fastxmpp/_router.pyx) plus normalize_domain's (8000 short
    # names here, under 2 MiB), with as much again for allocator slack and fragmentation.
    assert grown_mib < 64, f"the server grew by {grown_mib:.0f} MiB"
    assert srv.alive()
    alice.close()
