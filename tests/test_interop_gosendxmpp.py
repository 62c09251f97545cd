"""go-sendxmpp (Debian's package, on the go-xmpp library) against the server: it logs in with
PLAIN over STARTTLS, sends a message, listens (-l) for stored and live messages, and joins a
room to write in it (-c). The other side is a raw client (tests/xmpp_raw.py).

go-sendxmpp 0.5 has no option for a CA file; Go's TLS reads the trust store from
SSL_CERT_FILE, so it gets the test CA there and verifies the certificate (no -n)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import PASSWORD, FreshNames, ServerProcess, module_server
from interop_clients import REPO, LineReader, body, raw_login, require_command, run, wait_for
from xmpp_raw import CLIENT, RawClient

POOL = FreshNames("go", 12)
MUC = "http://jabber.org/protocol/muc"
MUC_OWNER = f"{MUC}#owner"
MUC_USER = f"{MUC}#user"
DELAY = "urn:xmpp:delay"
MESSAGE = f"{{{CLIENT}}}message"
PRESENCE = f"{{{CLIENT}}}presence"


@pytest.fixture(scope="module")
def srv(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(ca, tmp_path_factory, POOL)


@pytest.fixture
def names() -> Iterator[str]:
    return POOL.names()


def go_sendxmpp(srv: ServerProcess, user: str, *args: str) -> list[str]:
    return [
        require_command("go-sendxmpp", "go-sendxmpp (Debian package go-sendxmpp)"),
        "--username",
        f"{user}@localhost",
        "--password",
        PASSWORD,
        "--jserver",
        f"localhost:{srv.port}",
        *args,
    ]


def send(srv: ServerProcess, ca_file: str, user: str, text: str, *args: str) -> None:
    """One go-sendxmpp run: connect, send `text` (read from stdin), disconnect."""
    done = run(
        go_sendxmpp(srv, user, *args), env={"SSL_CERT_FILE": ca_file}, timeout=30, stdin=text
    )
    assert done.returncode == 0, done.stderr


class Listener(LineReader):
    """go-sendxmpp -l: prints each message it receives as '<time> <from>: <body>'."""

    def __init__(self, srv: ServerProcess, ca_file: str, user: str) -> None:
        super().__init__(
            go_sendxmpp(srv, user, "--listen"),
            stderr=subprocess.STDOUT,
            env={**os.environ, "SSL_CERT_FILE": ca_file},
            cwd=REPO,
        )

    def wait_lines(self, count: int) -> list[str]:
        deadline = time.monotonic() + 10
        while len(self.lines) < count:
            assert self.proc.poll() is None, f"go-sendxmpp -l exited: {self.lines}"
            assert time.monotonic() < deadline, f"go-sendxmpp -l printed only {self.lines}"
            time.sleep(0.02)
        return self.lines

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.reader.join(5)


def test_send_with_plain_over_verified_tls(
    srv: ServerProcess, ca_file: str, names: Iterator[str], clients: list[RawClient]
) -> None:
    sender, receiver = next(names), next(names)
    inbox = raw_login(srv, ca_file, receiver, clients)
    inbox.send("<presence/>")
    wait_for(inbox, "own presence", lambda el: el.tag == PRESENCE)

    send(srv, ca_file, sender, "hello from go-sendxmpp", f"{receiver}@localhost")
    # go-xmpp's only password mechanism is PLAIN, offered on the encrypted stream (RFC 6120
    # §6.3.3, RFC 4616 §6).
    srv.wait_for_log(f"authenticated {sender}@localhost with PLAIN")
    msg = wait_for(inbox, "go-sendxmpp's message", lambda el: el.tag == MESSAGE)
    assert body(msg) == "hello from go-sendxmpp"
    assert re.fullmatch(rf"{sender}@localhost/go-sendxmpp\.\w+", msg.get("from")), msg.get("from")
    assert msg.get("to") == f"{receiver}@localhost" and msg.get("type") == "chat"


def test_listen_gets_stored_then_live_messages(
    srv: ServerProcess, ca_file: str, names: Iterator[str], clients: list[RawClient]
) -> None:
    listener_name, writer_name = next(names), next(names)
    writer = raw_login(srv, ca_file, writer_name, clients)
    # RFC 6121 §8.5.2.2.1: stored while the account has no available resource ...
    writer.send(
        f"<message to='{listener_name}@localhost' type='chat'><body>while offline</body></message>"
    )
    # the server handles a session's stanzas in order: once the ping is answered, it is stored
    writer.send("<iq type='get' id='stored'><ping xmlns='urn:xmpp:ping'/></iq>")
    wait_for(writer, "the ping's result", lambda el: el.get("id") == "stored")
    listener = Listener(srv, ca_file, listener_name)
    try:
        # ... and delivered once it is (XEP-0160 §3). Then a live one to the full JID.
        bound = re.compile(rf"bound ({listener_name}@localhost/go-sendxmpp\.\w+)")
        srv.wait_for_log(f"bound {listener_name}@localhost/go-sendxmpp")
        match = bound.search(srv.log_text())
        assert match is not None
        listener.wait_lines(1)
        writer.send(
            f"<message to='{match.group(1)}' type='chat'><body>while listening</body></message>"
        )
        lines = listener.wait_lines(2)
    finally:
        listener.stop()
    assert lines[0].endswith(f" {writer_name}@localhost: while offline"), lines
    assert lines[1].endswith(f" {writer_name}@localhost: while listening"), lines


def test_chatroom_message_reaches_occupants_and_history(
    srv: ServerProcess, ca_file: str, names: Iterator[str], clients: list[RawClient]
) -> None:
    room = "go-room@conference.localhost"
    owner_name, sender, late_name = next(names), next(names), next(names)
    owner = raw_login(srv, ca_file, owner_name, clients)
    owner.send(f"<presence to='{room}/owner'><x xmlns='{MUC}'/></presence>")
    created = wait_for(owner, "the room's self-presence", lambda el: el.tag == PRESENCE)
    codes = {s.get("code") for s in created.iter(f"{{{MUC_USER}}}status")}
    assert {"110", "201"} <= codes  # XEP-0045 §10.1.2: a new room
    owner.send(
        f"<iq type='set' id='instant' to='{room}'><query xmlns='{MUC_OWNER}'>"
        "<x xmlns='jabber:x:data' type='submit'/></query></iq>"
    )
    reply = wait_for(owner, "the configuration result", lambda el: el.get("id") == "instant")
    assert reply.get("type") == "result"

    send(srv, ca_file, sender, "hello room", "--chatroom", "--alias", "gopher", room)
    # XEP-0045 §7.2.3 go-sendxmpp enters as 'gopher', §7.4 its message goes to everyone.
    said = wait_for(
        owner, "go-sendxmpp's room message", lambda el: el.tag == MESSAGE and body(el) is not None
    )
    assert said.get("from") == f"{room}/gopher"
    assert said.get("type") == "groupchat" and body(said) == "hello room"

    # §7.2.15: a later occupant gets it as history, with a delay stamp.
    late = raw_login(srv, ca_file, late_name, clients)
    late.send(f"<presence to='{room}/late'><x xmlns='{MUC}'/></presence>")
    history = wait_for(
        late, "the room history", lambda el: el.tag == MESSAGE and body(el) is not None
    )
    assert history.get("from") == f"{room}/gopher" and body(history) == "hello room"
    assert history.find(f"{{{DELAY}}}delay") is not None
