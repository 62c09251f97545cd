"""Two or more real fastxmpp servers federated over loopback (static s2s routes), and what
tests of federation do with them: sign in, subscribe across, wait for what arrives
(tests/test_s2s.py, tests/test_pep_federation.py)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trustme
from conftest import PASSWORD, ServerProcess
from xmpp_raw import CLIENT, SASL, RawClient

from fastxmpp.storage.accounts import AccountStore
from fastxmpp.storage.lmdb_store import Storage

ROSTER = "jabber:iq:roster"
MUC_LABEL = "conference"  # the multi-user chat service of a host is conference.<host>
USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(srv: ServerProcess, port: int) -> None:
    """The test harness returns once the c2s listener is up; the s2s one follows it."""
    deadline = time.monotonic() + 10
    while f"s2s listening on 127.0.0.1:{port}" not in srv.log_text():
        assert time.monotonic() < deadline, srv.log_text()
        time.sleep(0.02)


class Federation:
    """Servers that know each other's s2s ports (static routes), with accounts."""

    def __init__(
        self,
        ca: trustme.CA,
        root: Path,
        ca_file: str,
        trusted: bool,
        names: tuple[str, str],
        s2s_extra: str = "",
        users: tuple[str, ...] = USERS,
        extra_toml: str = "",
    ) -> None:
        """`s2s_extra`: more lines of [s2s]; `extra_toml`: more sections, for every server."""
        self.ports = {name: free_port() for name in names}
        self.closed_port = free_port()  # nothing listens there: an unreachable server
        # a server that accepts connections and never says a word
        self.silent = socket.create_server(("127.0.0.1", 0))
        # each server's multi-user chat service (XEP-0045) at the same port as its host
        routes = ", ".join(
            f'"{prefix}{d}" = "127.0.0.1:{p}"'
            for d, p in self.ports.items()
            for prefix in ("", f"{MUC_LABEL}.")
        )
        routes += f', "nowhere.test" = "127.0.0.1:{self.closed_port}"'
        routes += f', "silent.test" = "127.0.0.1:{self.silent.getsockname()[1]}"'
        self.servers: dict[str, ServerProcess] = {}
        for name in names:
            extra = (
                f'[[listeners]]\nkind = "s2s"\naddress = "127.0.0.1"\nport = {self.ports[name]}\n\n'
                f"[s2s]\nenabled = true\nconnect_timeout = 1.5\nroutes = {{ {routes} }}\n"
                + (f'ca_file = "{ca_file}"\n' if trusted else "")
                + s2s_extra
                + "[limits]\nauth_free_failures = 100000\nauth_failures_per_ip = 100000\n"
                "auth_failures_per_account = 100000\n" + extra_toml
            )
            srv = ServerProcess(
                root / name, ca, (name, "localhost"), extra, subdomains=(MUC_LABEL,)
            )
            with Storage(srv.data_dir) as storage:
                accounts = AccountStore(storage, iterations=4096)
                for user in users:
                    accounts.create(name, user, PASSWORD)
                accounts.create("localhost", "alice", PASSWORD)
            srv.start()
            wait_listening(srv, self.ports[name])
            self.servers[name] = srv

    def stop(self) -> None:
        self.silent.close()
        for srv in self.servers.values():
            srv.stop()


def sign_in(
    srv: ServerProcess,
    ca_file: str,
    clients: list[RawClient],
    jid: str,
    resource: str = "r",
    available: bool = True,
) -> RawClient:
    """A client of account `jid` at `srv`, bound to `resource` (closed with `clients`);
    available unless told otherwise."""
    user, _, host = jid.partition("@")
    c = srv.client()
    clients.append(c)
    c.open_stream(host)
    c.starttls(ca_file, host)
    assert c.sasl_scram(user, PASSWORD).tag == f"{{{SASL}}}success"
    c.open_stream(host)
    assert c.bind(resource) == f"{jid}/{resource}"
    if available:
        c.send("<presence/>")
        sync(c)
    return c


_ids = iter(range(10**9))


def sync(c: RawClient) -> list[Any]:
    marker = f"sync-{next(_ids)}"
    c.send(f"<iq type='get' id='{marker}'><ping xmlns='urn:xmpp:ping'/></iq>")
    seen = []
    while True:
        el = c.next()
        if el.get("id") == marker:
            return seen
        seen.append(el)


def wait_for(c: RawClient, match: Callable[[Any], bool], timeout: float = 10) -> Any:
    """The first element matching; what comes before it is dropped."""
    deadline = time.monotonic() + timeout
    while True:
        el = c.next(timeout=max(0.1, deadline - time.monotonic()))
        if match(el):
            return el


def tag(name: str) -> Callable[[Any], bool]:
    return lambda el: el.tag == f"{{{CLIENT}}}{name}"


def roster_state(c: RawClient, contact: str) -> tuple[str | None, str | None] | None:
    c.send(f"<iq type='get' id='rg'><query xmlns='{ROSTER}'/></iq>")
    reply = wait_for(c, lambda el: el.get("id") == "rg")
    for item in reply.iter(f"{{{ROSTER}}}item"):
        if item.get("jid") == contact:
            return item.get("subscription"), item.get("ask")
    return None


def befriend_across(x: RawClient, x_jid: str, y: RawClient, y_jid: str) -> None:
    """Mutual subscription by protocol between accounts of two servers."""
    for a, a_jid, b, b_jid in ((x, x_jid, y, y_jid), (y, y_jid, x, x_jid)):
        a.send(f"<presence type='subscribe' to='{b_jid}'/>")
        wait_for(b, lambda el: tag("presence")(el) and el.get("type") == "subscribe")
        b.send(f"<presence type='subscribed' to='{a_jid}'/>")
        wait_for(a, lambda el: tag("presence")(el) and el.get("type") == "subscribed")
    assert roster_state(x, y_jid) == ("both", None)
    assert roster_state(y, x_jid) == ("both", None)
