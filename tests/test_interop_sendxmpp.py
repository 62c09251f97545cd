"""sendxmpp (Debian's package: the Perl tool over Net::XMPP and XML::Stream that operators
script alerts with) against the server. It logs in with PLAIN over TLS (Net::XMPP's SASL picks
PLAIN; the server offers it on encrypted streams only, RFC 6120 §6.3.3), binds, sends the RFC
3921 <session/> iq (answered, RFC 6121 Appendix E), sends and closes the stream. The server's
certificate is verified against the test CA (-a, --tls-ca-path: XML::Stream hands a file to
IO::Socket::SSL as SSL_ca_file). The other side is a raw client (tests/xmpp_raw.py).

sendxmpp sleeps a second before it disconnects ("messages may not be received if we log out
too quickly"), so each run takes about 1.2 s."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from conftest import PASSWORD, FreshNames, ServerProcess
from interop_clients import body, direct_tls_server, raw_login, require_command, run, wait_for
from xmpp_raw import CLIENT, RawClient

POOL = FreshNames("sx", 12)
MUC = "http://jabber.org/protocol/muc"
MUC_USER = f"{MUC}#user"
MESSAGE = f"{{{CLIENT}}}message"
PRESENCE = f"{{{CLIENT}}}presence"


@pytest.fixture(scope="module")
def srv(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # `sendxmpp -c` enters rooms as groupchat 1.0 clients did (no MUC <x/>): operators who
    # use it for alerts turn that on (XEP-0045 §7.2.1's kick is the default).
    yield from direct_tls_server(ca, tmp_path_factory, POOL, "[muc]\ngroupchat_1_0 = true\n")


@pytest.fixture
def names() -> Iterator[str]:
    return POOL.names()


def sendxmpp_command(
    srv: ServerProcess, ca_file: str, user: str, *args: str, port: int = 0
) -> list[str]:
    """-j names the host and port (the domain is the host's: localhost)."""
    return [
        require_command("sendxmpp", "sendxmpp (Debian package sendxmpp)"),
        "--username",
        user,
        "--password",
        PASSWORD,
        "--jserver",
        f"localhost:{port or srv.port}",
        "--tls-ca-path",
        ca_file,
        *args,
    ]


def sendxmpp(
    srv: ServerProcess, ca_file: str, user: str, text: str, *args: str, port: int = 0
) -> subprocess.CompletedProcess[str]:
    """One sendxmpp run: connect, send `text` (read from stdin) to the recipients in `args`,
    disconnect."""
    return run(sendxmpp_command(srv, ca_file, user, *args, port=port), timeout=30, stdin=text)


def available(srv: ServerProcess, ca_file: str, user: str, opened: list[RawClient]) -> RawClient:
    """A raw client with initial presence: a message to the bare JID reaches it (RFC 6121
    §8.5.2.1.1)."""
    client = raw_login(srv, ca_file, user, opened)
    client.send("<presence/>")
    wait_for(client, "own presence", lambda el: el.tag == PRESENCE)
    return client


@pytest.mark.parametrize("transport", ["starttls", "direct-tls"])
def test_alert_reaches_the_account(
    transport: str,
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
) -> None:
    sender, receiver = next(names), next(names)
    inbox = available(srv, ca_file, receiver, clients)
    # -t: STARTTLS (RFC 6120 §5); -e: TLS from the first byte (XEP-0368)
    flags, port = (["--tls"], srv.port)
    if transport == "direct-tls":
        flags, port = (["--ssl"], srv.direct_tls_port)
    done = sendxmpp(
        srv, ca_file, sender, f"disk full ({transport})", *flags, f"{receiver}@localhost", port=port
    )
    assert done.returncode == 0, done.stderr
    srv.wait_for_log(f"authenticated {sender}@localhost with PLAIN")
    # Net::XMPP waits for the answer to its RFC 3921 §3 session iq before it sends anything
    srv.wait_for_log(
        f"{sender}@localhost/sendxmpp <<< <iq id='netjabber-1' type='set'>"
        "<session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>"
    )
    msg = wait_for(inbox, "sendxmpp's message", lambda el: el.tag == MESSAGE)
    assert body(msg) == f"disk full ({transport})"
    assert msg.get("from") == f"{sender}@localhost/sendxmpp" and msg.get("type") == "chat"


def test_alert_to_an_offline_account_is_stored(
    srv: ServerProcess, ca_file: str, names: Iterator[str], clients: list[RawClient]
) -> None:
    # the usual alert: the admin is not online. RFC 6121 §8.5.2.2.1 a chat message to an
    # account without available resources is stored, XEP-0160 §3 delivered at the next
    # initial presence with a XEP-0203 delay stamp (sendxmpp's empty <subject/> kept)
    sender, receiver = next(names), next(names)
    done = sendxmpp(srv, ca_file, sender, "raid degraded", "--tls", f"{receiver}@localhost")
    assert done.returncode == 0, done.stderr
    inbox = raw_login(srv, ca_file, receiver, clients)
    inbox.send("<presence/>")
    msg = wait_for(inbox, "the stored alert", lambda el: el.tag == MESSAGE)
    assert body(msg) == "raid degraded" and msg.get("from") == f"{sender}@localhost/sendxmpp"
    delay = msg.find("{urn:xmpp:delay}delay")
    assert delay is not None and delay.get("from") == "localhost"


def test_refuses_a_certificate_it_cannot_verify(
    srv: ServerProcess, names: Iterator[str], tmp_path: Path
) -> None:
    # another CA than the one that issued the server's certificate: IO::Socket::SSL fails the
    # handshake with an unknown_ca alert (RFC 8446 §6.2), so the password never reaches the
    # server. (Net::XMPP then waits 10 s for stream features before it exits non-zero: the
    # test stops it once the server has seen the alert.)
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    sender = next(names)
    proc = subprocess.Popen(
        sendxmpp_command(srv, str(other_ca), sender, "--tls", "nobody@localhost"),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdin is not None
        proc.stdin.write("never sent")
        proc.stdin.close()
        srv.wait_for_log("TLSV1_ALERT_UNKNOWN_CA")
        srv.wait_for_log("closed (unauthenticated)")
    finally:
        proc.kill()
        proc.wait(10)
    assert f"authenticated {sender}@localhost" not in srv.log_text()


def test_without_tls_it_stops_before_authenticating(
    srv: ServerProcess, ca_file: str, names: Iterator[str]
) -> None:
    # RFC 6120 §5.3.1: STARTTLS is mandatory-to-negotiate here, so without -t sendxmpp gives up
    # at the features, before any password goes over the plain socket
    sender = next(names)
    done = sendxmpp(srv, ca_file, sender, "never sent", "nobody@localhost")
    assert done.returncode != 0
    assert "requires us to use TLS" in done.stderr, done.stderr
    assert f"authenticated {sender}@localhost" not in srv.log_text()


def test_chatroom_message_reaches_occupants(
    srv: ServerProcess, ca_file: str, names: Iterator[str], clients: list[RawClient]
) -> None:
    room = "alerts@conference.localhost"
    owner_name, sender = next(names), next(names)
    owner = raw_login(srv, ca_file, owner_name, clients)
    owner.send(f"<presence to='{room}/owner'><x xmlns='{MUC}'/></presence>")
    created = wait_for(owner, "the room's self-presence", lambda el: el.tag == PRESENCE)
    assert {"110", "201"} <= {s.get("code") for s in created.iter(f"{{{MUC_USER}}}status")}
    owner.send(
        f"<iq type='set' id='instant' to='{room}'><query xmlns='{MUC}#owner'>"
        "<x xmlns='jabber:x:data' type='submit'/></query></iq>"
    )
    reply = wait_for(owner, "the configuration result", lambda el: el.get("id") == "instant")
    assert reply.get("type") == "result"

    # -c: Net::XMPP enters with a bare <presence to='room/nick'/> (no MUC <x/>: a groupchat
    # 1.0 entry, [muc] groupchat_1_0 = true), the nick being the resource (-r)
    done = sendxmpp(srv, ca_file, sender, "backup failed", "--tls", "-c", "-r", "monitor", room)
    assert done.returncode == 0, done.stderr
    joined = wait_for(
        owner,
        "sendxmpp's presence in the room",
        lambda el: el.tag == PRESENCE and el.get("from") == f"{room}/monitor",
    )
    assert joined.get("type") is None
    said = wait_for(
        owner, "sendxmpp's room message", lambda el: el.tag == MESSAGE and body(el) is not None
    )
    assert said.get("from") == f"{room}/monitor" and said.get("type") == "groupchat"
    assert body(said) == "backup failed"
    # it closes its stream without leaving: the room says it left (XEP-0045 §7.14)
    left = wait_for(
        owner,
        "sendxmpp leaving the room",
        lambda el: el.tag == PRESENCE and el.get("from") == f"{room}/monitor",
    )
    assert left.get("type") == "unavailable"
