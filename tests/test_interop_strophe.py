"""libstrophe (Debian's libstrophe-dev, the C library under Profanity) against the server,
through tests/interop/strophe/client.c, compiled here with cc. The harness connects as
Profanity does (STARTTLS required, the certificate verified against the test CA only, the
SASL mechanism libstrophe picks, bind, XEP-0198 with resumption) and prints one line per
event; the other side is a raw client (tests/xmpp_raw.py).

libstrophe 0.12 has no channel binding: of the offered SCRAM-SHA-256-PLUS, SCRAM-SHA-1-PLUS,
SCRAM-SHA-256, SCRAM-SHA-1 and PLAIN it picks SCRAM-SHA-256 (its order: SHA-512, SHA-256,
SHA-1, then PLAIN), with the gs2 header 'n' (RFC 5802 §6: the client does not support
channel binding)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from conftest import PASSWORD, FreshNames, ServerProcess, add_accounts
from interop_clients import (
    REPO,
    Harness,
    body,
    build_harness,
    direct_tls_server,
    kill_all,
    raw_login,
    wait_for,
)
from xmpp_raw import CLIENT, RawClient

POOL = FreshNames("st", 16)
HARNESS = REPO / "tests" / "interop" / "strophe" / "client.c"
MESSAGE = f"{{{CLIENT}}}message"
PRESENCE = f"{{{CLIENT}}}presence"
STEP = 10.0


@pytest.fixture(scope="module")
def srv(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from direct_tls_server(ca, tmp_path_factory, POOL)


@pytest.fixture
def names() -> Iterator[str]:
    return POOL.names()


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> str:
    """client.c compiled against the installed libstrophe."""
    return build_harness(
        tmp_path_factory.mktemp("strophe"),
        HARNESS,
        ("cc", "a C compiler (Debian package gcc)"),
        ["-Wall", "-O1"],
        ["libstrophe"],
        "libstrophe (Debian package libstrophe-dev)",
    )


class Strophe(Harness):
    """One harness process: commands on its stdin, its event lines collected."""

    name = "libstrophe"
    step = STEP

    def __init__(
        self,
        binary: str,
        srv: ServerProcess,
        ca_file: str,
        user: str,
        password: str,
        direct_tls: bool = False,
    ):
        port, flags = (srv.direct_tls_port, ["--direct-tls"]) if direct_tls else (srv.port, [])
        super().__init__([binary, f"{user}@localhost", password, ca_file, str(port), *flags])


@pytest.fixture
def strophes() -> Iterator[list[Strophe]]:
    started: list[Strophe] = []
    yield started
    kill_all(started)


def login(
    binary: str, srv: ServerProcess, ca_file: str, user: str, started: list[Strophe]
) -> tuple[Strophe, str]:
    s = Strophe(binary, srv, ca_file, user, PASSWORD)
    started.append(s)
    jid = s.wait(r"connected (\S+)").group(1)
    return s, jid


def wait_all(client: RawClient, wanted: dict[str, Callable[[Any], bool]]) -> None:
    """Until each of `wanted` matched a stanza, in any order."""
    missing = dict(wanted)
    deadline = time.monotonic() + STEP
    while missing:
        assert time.monotonic() < deadline, f"never got {sorted(missing)}"
        el = client.next(timeout=max(0.1, deadline - time.monotonic()))
        for what, match in list(missing.items()):
            if match(el):
                del missing[what]


def test_login_roster_presence_and_messages(
    harness: str,
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    strophes: list[Strophe],
) -> None:
    user, peer = next(names), next(names)
    other = raw_login(srv, ca_file, peer, clients)
    # RFC 6121 §3: a mutual subscription, so presence flows both ways and both see the item
    other.send(f"<presence to='{user}@localhost' type='subscribe'/>")
    other.send("<presence/>")
    s, jid = login(harness, srv, ca_file, user, strophes)
    # RFC 6120 §5 STARTTLS (verified), §6 SASL, §7 bind; §13.8: SCRAM-SHA-256 is the best
    # libstrophe and the server share (no -PLUS in libstrophe 0.12)
    assert s.lines[:2] == ["auth SCRAM-SHA-256", "secured"], s
    assert re.fullmatch(rf"{user}@localhost/\S+", jid), jid
    srv.wait_for_log(f"authenticated {user}@localhost with SCRAM-SHA-256")
    s.wait("sm enabled true")  # XEP-0198 §3 with resumption offered

    # as Profanity starts: the roster (RFC 6121 §2.1.3; empty: a pending inbound request is
    # no item, §3.1.3), which makes this resource an interested one for pushes (§2.1.6) ...
    s.do("roster")
    s.wait("roster-end")
    assert not any(line.startswith("roster ") for line in s.lines), s
    # ... then initial presence, which brings the stored subscription request (§3.1.3)
    s.do("presence")
    s.wait(rf"presence {peer}@localhost subscribe")
    # answer it the way a client does: subscribed, then subscribe back
    s.do(f"sub {peer}@localhost subscribed")
    s.do(f"sub {peer}@localhost subscribe")
    # RFC 6121 §3.1.5: libstrophe's presence reaches the peer once it may see it; then the
    # subscribe back
    wait_all(
        other,
        {
            "libstrophe's presence": lambda el: (
                el.tag == PRESENCE and el.get("from") == jid and el.get("type") is None
            ),
            "the subscribe back": lambda el: el.tag == PRESENCE and el.get("type") == "subscribe",
        },
    )
    other.send(f"<presence to='{user}@localhost' type='subscribed'/>")
    s.wait(rf"presence {peer}@localhost/raw available")  # §3.1.6: the peer's presence
    # RFC 6121 §3.1.5, §3.1.2, §3.1.6: the roster pushes of each step, in order, each
    # answered by the harness with a result
    pushes = [line for line in s.lines if line.startswith("roster-push ")]
    assert pushes == [
        f"roster-push {peer}@localhost from",
        f"roster-push {peer}@localhost from ask",
        f"roster-push {peer}@localhost both",
    ], s

    # RFC 6121 §2.1.3 roster get: the peer, subscription both
    start = len(s.lines)
    s.do("roster")
    s.wait("roster-end", start)
    assert f"roster {peer}@localhost both" in s.lines[start:], s

    # RFC 6121 §5: a chat message each way
    s.do(f"msg {peer}@localhost hello from libstrophe")
    msg = wait_for(other, "libstrophe's message", lambda el: el.tag == MESSAGE)
    assert body(msg) == "hello from libstrophe" and msg.get("from") == jid
    other.send(f"<message to='{jid}' type='chat'><body>hello libstrophe</body></message>")
    s.wait(rf"message {peer}@localhost/raw chat hello libstrophe")
    assert s.finish() == 0, s
    assert s.lines[-1] == "closed", s


def test_direct_tls_login_and_message(
    harness: str,
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    strophes: list[Strophe],
) -> None:
    user, peer = next(names), next(names)
    other = raw_login(srv, ca_file, peer, clients)
    # XEP-0368: TLS from the first byte (SNI 'localhost'), then the same SASL and bind
    s = Strophe(harness, srv, ca_file, user, PASSWORD, direct_tls=True)
    strophes.append(s)
    jid = s.wait(r"connected (\S+)").group(1)
    assert s.lines[:2] == ["auth SCRAM-SHA-256", "secured"], s
    s.wait("sm enabled true")
    s.do(f"msg {peer}@localhost/raw over direct TLS")
    msg = wait_for(other, "libstrophe's message", lambda el: el.tag == MESSAGE)
    assert body(msg) == "over direct TLS" and msg.get("from") == jid
    assert s.finish() == 0, s


def test_resumption_after_the_socket_is_cut(
    harness: str,
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    strophes: list[Strophe],
) -> None:
    user, peer = next(names), next(names)
    other = raw_login(srv, ca_file, peer, clients)
    s, jid = login(harness, srv, ca_file, user, strophes)
    s.wait("sm enabled true")
    # Both ways before the cut. libstrophe acknowledges only when asked (XEP-0198 §4), so
    # the server's copies of m1, m2 are unacknowledged when the socket goes; libstrophe's
    # last message may be too (its <a/> not read yet).
    other.send(f"<message to='{jid}' type='chat'><body>m1</body></message>")
    other.send(f"<message to='{jid}' type='chat'><body>m2</body></message>")
    s.wait(rf"message {peer}@localhost/raw chat m2")
    s.do(f"msg {peer}@localhost/raw s1")
    s.do(f"msg {peer}@localhost/raw s2")
    s.do("cut")
    s.wait(r"disconnected \d+ none")
    srv.wait_for_log(f"{jid} lost its connection")
    # while detached: kept for the session (§5)
    other.send(f"<message to='{jid}' type='chat'><body>m3</body></message>")
    other.send("<iq type='get' id='sync'><ping xmlns='urn:xmpp:ping'/></iq>")
    seen: list[str] = []  # what the peer gets of libstrophe's messages
    wait_for(other, "the ping's result", lambda el: el.get("id") == "sync", seen)

    start = len(s.lines)
    s.do("resume")
    # §5: <resumed h=.../> counts what the server handled of libstrophe's stanzas: here all
    # (its presence-less session sent s1, s2 only)
    assert s.wait(r"sm resumed (\d+)", start).group(1) == "2", s
    assert s.wait(r"connected (\S+)", start).group(1) == jid  # the same full JID
    srv.wait_for_log(f"resumed {jid}")
    s.do(f"msg {peer}@localhost/raw s3")
    s.wait(rf"message {peer}@localhost/raw chat m3", start)
    # nothing lost, nothing twice: each side gets each of the other's messages once
    wait_for(other, "s3", lambda el: el.tag == MESSAGE and body(el) == "s3", seen)
    other.send("<iq type='get' id='sync2'><ping xmlns='urn:xmpp:ping'/></iq>")
    wait_for(other, "the second ping's result", lambda el: el.get("id") == "sync2", seen)
    assert seen == ["s1", "s2", "s3"]
    s.do(f"ping {jid} last")  # its own full JID: the answer comes after any resent stanza
    s.wait(r"iq last .*")
    got = [line.rsplit(" ", 1)[1] for line in s.lines if line.startswith("message ")]
    assert got == ["m1", "m2", "m3"], s
    assert s.finish() == 0, s


def test_resumption_while_the_old_connection_looks_alive(
    harness: str,
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    strophes: list[Strophe],
) -> None:
    """A network switch: the old TCP connection is neither closed nor read, so the server
    still writes to it when libstrophe resumes from a new one."""
    user, peer = next(names), next(names)
    other = raw_login(srv, ca_file, peer, clients)
    s, jid = login(harness, srv, ca_file, user, strophes)
    s.wait("sm enabled true")
    other.send(f"<message to='{jid}' type='chat'><body>m1</body></message>")
    s.wait(rf"message {peer}@localhost/raw chat m1")
    s.do("vanish")
    s.wait(r"disconnected \d+ none")
    # written to the old connection, which nobody reads: unacknowledged (XEP-0198 §4)
    other.send(f"<message to='{jid}' type='chat'><body>m2</body></message>")
    other.send("<iq type='get' id='sync'><ping xmlns='urn:xmpp:ping'/></iq>")
    wait_for(other, "the ping's result", lambda el: el.get("id") == "sync")
    assert f"{jid} lost its connection" not in srv.log_text()

    start = len(s.lines)
    s.do("resume")
    # §5: the new stream takes the session over and the old one is closed (RFC 6120
    # §4.9.3.3 conflict); libstrophe's <resume h='1'/> counts m1, so m2 alone is sent again
    # (the server's h is 0: libstrophe sent nothing before)
    assert s.wait(r"sm resumed (\d+)", start).group(1) == "0", s
    assert s.wait(r"connected (\S+)", start).group(1) == jid
    s.wait(rf"message {peer}@localhost/raw chat m2", start)
    srv.wait_for_log("stream error conflict (the session was resumed on another connection)")
    s.do(f"msg {peer}@localhost/raw after")
    seen: list[str] = []
    wait_for(other, "libstrophe's message", lambda el: el.tag == MESSAGE, seen)
    assert seen == ["after"]
    s.do(f"ping {jid} last")
    s.wait(r"iq last .*")
    got = [line.rsplit(" ", 1)[1] for line in s.lines if line.startswith("message ")]
    assert got == ["m1", "m2"], s
    assert s.finish() == 0, s


def test_expired_session_falls_back_to_a_new_one(
    harness: str, make_server: Any, ca_file: str, strophes: list[Strophe]
) -> None:
    # libstrophe acknowledges only when asked, and a message it handled but never
    # acknowledged would come back from offline storage once the session ends (XEP-0198 §4:
    # "resending them might result in duplicates"): one message is fewer than the server's
    # ack_request_every, so its <r/> comes once the output has been quiet for
    # ack_request_after (5 s by default, shortened here)
    srv = make_server("[stream_management]\nresume_timeout = 0.5\nack_request_after = 0.2\n")
    add_accounts(srv, ["ex0", "ex1"])
    srv.start()
    other = srv.client()
    try:
        other.login(ca_file, "ex1", PASSWORD, "raw")
        s, jid = login(harness, srv, ca_file, "ex0", strophes)
        s.wait("sm enabled true")
        other.send(f"<message to='{jid}' type='chat'><body>m1</body></message>")
        s.wait(r"message ex1@localhost/raw chat m1")
        s.wait("sm acked 1")
        s.do("cut")
        s.wait(r"disconnected \d+ none")
        # while detached, then kept no longer: XEP-0198 §4, an unacknowledged message to the
        # ended session is handled as to an unavailable resource (RFC 6121 §8.5.3.2.1: a chat
        # message to the bare JID's offline storage)
        other.send(f"<message to='{jid}' type='chat'><body>m2</body></message>")
        srv.wait_for_log(f"{jid} was not resumed in time")

        start = len(s.lines)
        s.do("resume")
        # §5 <failed><item-not-found/></failed>: libstrophe binds a new resource, enables
        # again, and its initial presence brings the stored message (XEP-0160 §3)
        s.wait("sm failed", start)
        new_jid = s.wait(r"connected (\S+)", start).group(1)
        assert new_jid != jid and new_jid.startswith("ex0@localhost/"), s
        s.wait("sm enabled true", start)
        s.do("presence")
        s.wait(r"message ex1@localhost/raw chat m2", start)
        got = [line.rsplit(" ", 1)[1] for line in s.lines if line.startswith("message ")]
        assert got == ["m1", "m2"], s
        assert s.finish() == 0, s
    finally:
        other.close()


def test_wrong_password_fails_cleanly(
    harness: str, srv: ServerProcess, ca_file: str, names: Iterator[str]
) -> None:
    user = next(names)
    s = Strophe(harness, srv, ca_file, user, "not the password")
    try:
        # RFC 6120 §6.4.5 <failure><not-authorized/>; §6.4.3 lets a client retry on the
        # same stream: libstrophe tries each SCRAM it shares with the server (it drops PLAIN
        # whenever a stronger mechanism is offered), then closes the stream itself
        assert s.proc.wait(STEP) == 1, s
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
    s.reader.join(2)
    assert s.lines == [
        "auth SCRAM-SHA-256",
        "auth SCRAM-SHA-1",
        "disconnected 0 none",
    ], s
    srv.wait_for_log("SASL failure not-authorized (2)")
    srv.wait_for_log("closed (unauthenticated)")
    assert f"authenticated {user}@localhost" not in srv.log_text()


def test_certificate_from_another_ca_is_refused(
    harness: str, srv: ServerProcess, names: Iterator[str], tmp_path: Path
) -> None:
    # the harness trusts only the CA file it is given (no certificate-failure handler): a
    # server certificate from another CA ends the connection at the TLS handshake, before SASL
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    user = next(names)
    s = Strophe(harness, srv, str(other_ca), user, PASSWORD)
    try:
        assert s.proc.wait(STEP) == 1, s
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
    s.reader.join(2)
    assert not any(line.startswith(("auth", "connected")) for line in s.lines), s
    srv.wait_for_log("TLSV1_ALERT_UNKNOWN_CA")
    assert f"authenticated {user}@localhost" not in srv.log_text()


def test_iq_errors_as_libstrophe_sees_them(
    harness: str,
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    strophes: list[Strophe],
) -> None:
    user, peer = next(names), next(names)
    s, jid = login(harness, srv, ca_file, user, strophes)
    # RFC 6121 §8.5.1: an iq to an account that does not exist, §8.5.3.2.3: to a resource an
    # existing account does not have: service-unavailable, type cancel
    s.do("ping nobody-here@localhost/res missing-account")
    s.wait("iq missing-account error cancel service-unavailable")
    s.do(f"ping {peer}@localhost/gone missing-resource")
    s.wait("iq missing-resource error cancel service-unavailable")
    # the server's own answer: XEP-0199 §4.2, a result
    s.do("ping localhost server-ping")
    s.wait("iq server-ping result")
    # and an error libstrophe's side returns reaches the requester intact (RFC 6120 §8.3)
    other = raw_login(srv, ca_file, peer, clients)
    other.send(f"<iq type='get' id='q1' to='{jid}'><query xmlns='jabber:iq:version'/></iq>")
    reply = wait_for(other, "libstrophe's error", lambda el: el.get("id") == "q1")
    assert reply.get("type") == "error" and reply.get("from") == jid
    error = reply.find(f"{{{CLIENT}}}error")
    assert error is not None and error.get("type") == "cancel"
    assert error.find("{urn:ietf:params:xml:ns:xmpp-stanzas}service-unavailable") is not None
    assert s.finish() == 0, s
