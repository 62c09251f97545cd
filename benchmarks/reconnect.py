"""What a phone's reconnect costs: round trips and server CPU per reconnect, with a password
(SCRAM-SHA-256; PLAIN once) or a XEP-0484 FAST token, over SASL1 (RFC 6120) or SASL2 (XEP-0388 with
XEP-0386 Bind 2), binding a new session or resuming the old one (XEP-0198).

    .venv/bin/python -P -m benchmarks.reconnect --reconnects 200

Starts the installed fastxmpp on loopback (one account, credentials with the default
10000 PBKDF2 iterations), then for each mode reconnects `reconnects` times over STARTTLS
from a blocking client and reads the server's CPU time (/proc) before and after. A round
trip is a wait for the server's answer after TCP connect (the TLS 1.3 handshake counts as
one). For the resume modes the previous connection is dropped without a closing handshake
before each reconnect, so that there is a detached session to resume. Prints a Markdown
table and writes benchmarks/results/reconnect-<time>.json.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import hmac
import json
import os
import platform
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lxml import etree
from scramp import ScramClient

from .compare import RESULTS, free_port
from .load import procstat

SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
SASL2 = "urn:xmpp:sasl:2"
BIND = "urn:ietf:params:xml:ns:xmpp-bind"
BIND2 = "urn:xmpp:bind:0"
FAST = "urn:xmpp:fast:0"
SM = "urn:xmpp:sm:3"
TLS = "urn:ietf:params:xml:ns:xmpp-tls"
HEADER = (
    "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    "xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>"
)
USER, PASSWORD = "phone", "bench-password"
AGENT = "<user-agent id='7c6f9a52-bench'><software>reconnect</software></user-agent>"


class Client:
    """A blocking client that counts the round trips it waits for."""

    def __init__(self, port: int) -> None:
        self.sock: Any = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.round_trips = 0
        self._parser()

    def _parser(self) -> None:
        self.parser = etree.XMLPullParser(events=("start", "end"))
        self.depth = 0
        self.queue: list[Any] = []

    def send(self, data: str) -> None:
        self.sock.sendall(data.encode())

    def ask(self, data: str, answers: int = 1) -> list[Any]:
        """Send, then wait for `answers` top-level elements: one round trip."""
        self.send(data)
        self.round_trips += 1
        while len(self.queue) < answers:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the server")
            self.parser.feed(chunk)
            for event, el in self.parser.read_events():
                if event == "start":
                    self.depth += 1
                else:
                    self.depth -= 1
                    if self.depth == 1:
                        self.queue.append(el)
        answered, self.queue = self.queue[:answers], self.queue[answers:]
        return answered

    def open(self) -> Any:
        self._parser()
        return self.ask(HEADER)[0]

    def starttls(self) -> None:
        self.open()
        assert self.ask(f"<starttls xmlns='{TLS}'/>")[0].tag == f"{{{TLS}}}proceed"
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self.sock = context.wrap_socket(self.sock, server_hostname="localhost")
        self.round_trips += 1  # the TLS 1.3 handshake
        self.open()

    def drop(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def sasl1_scram(c: Client) -> None:
    scram = ScramClient(["SCRAM-SHA-256"], USER, PASSWORD)
    first = b64(scram.get_client_first().encode())
    challenge = c.ask(f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-256'>{first}</auth>")[0]
    scram.set_server_first(base64.b64decode(challenge.text).decode())
    final = b64(scram.get_client_final().encode())
    assert c.ask(f"<response xmlns='{SASL}'>{final}</response>")[0].tag == f"{{{SASL}}}success"
    c.open()  # RFC 6120 §6.4.6: the stream restarts


def sasl2_scram(c: Client, inline: str) -> Any:
    scram = ScramClient(["SCRAM-SHA-256"], USER, PASSWORD)
    first = b64(scram.get_client_first().encode())
    challenge = c.ask(
        f"<authenticate xmlns='{SASL2}' mechanism='SCRAM-SHA-256'><initial-response>{first}"
        f"</initial-response>{AGENT}{inline}</authenticate>"
    )[0]
    scram.set_server_first(base64.b64decode(challenge.text).decode())
    final = b64(scram.get_client_final().encode())
    success, _features = c.ask(f"<response xmlns='{SASL2}'>{final}</response>", answers=2)
    assert success.tag == f"{{{SASL2}}}success", etree.tostring(success)
    return success


def sasl2_plain(c: Client, inline: str) -> Any:
    blob = b64(bytes(1) + USER.encode() + bytes(1) + PASSWORD.encode())
    success, _features = c.ask(
        f"<authenticate xmlns='{SASL2}' mechanism='PLAIN'><initial-response>{blob}"
        f"</initial-response>{AGENT}{inline}</authenticate>",
        answers=2,
    )
    assert success.tag == f"{{{SASL2}}}success", etree.tostring(success)
    return success


def sasl2_token(c: Client, token: str, inline: str) -> Any:
    initiator = hmac.new(token.encode(), b"Initiator", hashlib.sha256).digest()
    success, _features = c.ask(
        f"<authenticate xmlns='{SASL2}' mechanism='HT-SHA-256-NONE'><initial-response>"
        f"{b64(USER.encode() + bytes(1) + initiator)}</initial-response>{AGENT}"
        f"<fast xmlns='{FAST}'/>{inline}</authenticate>",
        answers=2,
    )
    assert success.tag == f"{{{SASL2}}}success", etree.tostring(success)
    return success


class Phone:
    """The state a client keeps between connections: its SM-ID, its FAST token."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.previous: Client | None = None
        self.sm_id = ""
        self.token = ""

    def connect(self) -> Client:
        if self.previous is not None:
            self.previous.drop()  # the network went away: no closing handshake
        c = Client(self.port)
        c.starttls()
        self.previous = c
        return c

    def bind_sasl1(self, c: Client) -> None:
        c.ask(f"<iq type='set' id='b'><bind xmlns='{BIND}'/></iq>")
        enabled = c.ask(f"<enable xmlns='{SM}' resume='true'/>")[0]
        self.sm_id = enabled.get("id")

    def remember(self, success: Any) -> None:
        enabled = success.find(f"{{{BIND2}}}bound/{{{SM}}}enabled")
        if enabled is not None:
            self.sm_id = enabled.get("id")
        token = success.find(f"{{{FAST}}}token")
        if token is not None:
            self.token = token.get("token")


BIND2_ENABLE = f"<bind xmlns='{BIND2}'><tag>bench</tag><enable xmlns='{SM}' resume='true'/></bind>"


def modes(phone: Phone) -> dict[str, Callable[[], int]]:
    def scram_sasl1_bind() -> int:
        c = phone.connect()
        sasl1_scram(c)
        phone.bind_sasl1(c)
        return c.round_trips

    def scram_sasl1_resume() -> int:
        c = phone.connect()
        sasl1_scram(c)
        resumed = c.ask(f"<resume xmlns='{SM}' previd='{phone.sm_id}' h='0'/>")[0]
        assert resumed.tag == f"{{{SM}}}resumed", etree.tostring(resumed)
        return c.round_trips

    def scram_sasl2_bind2() -> int:
        c = phone.connect()
        phone.remember(sasl2_scram(c, BIND2_ENABLE))
        return c.round_trips

    def plain_sasl2_bind2() -> int:
        c = phone.connect()
        phone.remember(sasl2_plain(c, BIND2_ENABLE))
        return c.round_trips

    def fast_sasl2_bind2() -> int:
        c = phone.connect()
        phone.remember(sasl2_token(c, phone.token, BIND2_ENABLE))
        return c.round_trips

    def scram_sasl2_resume() -> int:
        c = phone.connect()
        resume = f"<resume xmlns='{SM}' previd='{phone.sm_id}' h='0'/>"
        assert sasl2_scram(c, resume).find(f"{{{SM}}}resumed") is not None
        return c.round_trips

    def fast_sasl2_resume() -> int:
        c = phone.connect()
        resume = f"<resume xmlns='{SM}' previd='{phone.sm_id}' h='0'/>"
        assert sasl2_token(c, phone.token, resume).find(f"{{{SM}}}resumed") is not None
        return c.round_trips

    return {
        "password SASL1, bind + SM enable": scram_sasl1_bind,
        "password SASL1, SM resume": scram_sasl1_resume,
        "password SASL2, Bind 2 + SM inline": scram_sasl2_bind2,
        "password SASL2, SM resume inline": scram_sasl2_resume,
        "password (PLAIN) SASL2, Bind 2 + SM inline": plain_sasl2_bind2,
        "FAST token SASL2, Bind 2 + SM inline": fast_sasl2_bind2,
        "FAST token SASL2, SM resume inline": fast_sasl2_resume,
    }


def prepare(phone: Phone, mode: str) -> None:
    """A token, and a resumable session, before the measured reconnects."""
    c = phone.connect()
    request = f"<request-token xmlns='{FAST}' mechanism='HT-SHA-256-NONE'/>"
    phone.remember(sasl2_scram(c, BIND2_ENABLE + request))
    if "SASL1, SM resume" in mode:
        c = phone.connect()
        sasl1_scram(c)
        phone.bind_sasl1(c)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -P -m benchmarks.reconnect", description=__doc__)
    parser.add_argument("--reconnects", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fastxmpp-reconnect-") as tmp:
        root = Path(tmp)
        port = free_port()
        config = root / "fastxmpp.toml"
        config.write_text(
            f'[server]\ndata_dir = "{root / "data"}"\nlog_level = "warning"\n'
            f'[[listeners]]\nkind = "c2s"\naddress = "127.0.0.1"\nport = {port}\n'
            "[hosts.localhost]\n[limits]\nmax_unauthenticated_per_ip = 1000000\n"
            "max_resources_per_account = 1000000\n"
        )
        from fastxmpp.storage.accounts import AccountStore
        from fastxmpp.storage.lmdb_store import Storage

        with Storage(root / "data") as storage:
            AccountStore(storage).create("localhost", USER, PASSWORD)
        with open(root / "server.log", "wb") as log:
            server = subprocess.Popen(
                [sys.executable, "-P", "-m", "fastxmpp.cli", "serve", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=root,
            )
        try:
            deadline = time.monotonic() + 60
            while True:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((root / "server.log").read_text()[-2000:])
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                    break
                time.sleep(0.1)
            phone = Phone(port)
            for mode, reconnect in modes(phone).items():
                prepare(phone, mode)
                round_trips = reconnect()  # warm-up, and the round trips (always the same)
                cpu0 = procstat.cpu_seconds([server.pid])
                t0 = time.perf_counter()
                for _ in range(args.reconnects):
                    reconnect()
                wall = time.perf_counter() - t0
                cpu = procstat.cpu_seconds([server.pid]) - cpu0
                results[mode] = {
                    "round_trips": round_trips,
                    "server_cpu_ms_per_reconnect": cpu * 1000 / args.reconnects,
                    "wall_ms_per_reconnect": wall * 1000 / args.reconnects,
                }
            if phone.previous is not None:
                phone.previous.drop()
        finally:
            server.terminate()
            server.wait(30)
    print("| reconnect | round trips | server CPU ms | wall ms |")
    print("|---|---|---|---|")
    for mode, r in results.items():
        print(
            f"| {mode} | {r['round_trips']} | {r['server_cpu_ms_per_reconnect']:.2f} "
            f"| {r['wall_ms_per_reconnect']:.2f} |"
        )
    record = {
        "started": started,
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs, {platform.machine()}, "
        f"Python {platform.python_version()})",
        "reconnects": args.reconnects,
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"reconnect-{started.replace(':', '')}.json"
    path.write_text(json.dumps(record, indent=2))
    print(f"written: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
