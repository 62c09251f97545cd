"""Running the server: signals, the data-dir lock, several virtual hosts, connection logs."""

from __future__ import annotations

import signal
import subprocess
import time
from typing import Any

import pytest
from conftest import FASTXMPP, PASSWORD, REPO, ServerProcess, add_accounts
from xmpp_raw import CLIENT, RawClient, StreamClosed


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_shuts_down_gracefully(make_server: Any, ca_file: str, sig: int) -> None:
    srv: ServerProcess = make_server()
    srv.adduser("alice@localhost")
    srv.start()
    bound = srv.client()
    bound.login(ca_file, "alice", PASSWORD, "desk")
    fresh = srv.client()
    fresh.open_stream()  # a stream that has not authenticated yet is told too
    assert srv.stop(sig) == 0, srv.log_text()
    assert bound.stream_error() == "system-shutdown"
    assert fresh.stream_error() == "system-shutdown"
    assert "shutting down" in srv.log_text()
    # LMDB was closed cleanly: the account is there after a restart.
    srv.start()
    again = srv.client()
    assert again.login(ca_file, "alice", PASSWORD, "desk") == "alice@localhost/desk"
    again.close()


def test_second_server_on_the_same_data_dir_is_refused(make_server: Any, ca_file: str) -> None:
    srv: ServerProcess = make_server()
    srv.start()
    second = subprocess.run(
        [*FASTXMPP, "serve", "--config", str(srv.config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert second.returncode != 0
    assert "is in use by another fastxmpp server" in second.stderr, second.stderr
    # The first server was not disturbed.
    c = srv.client()
    assert c.open_stream() is not None
    c.close()


def _login_on(srv: ServerProcess, ca_file: str, domain: str, user: str) -> RawClient:
    c = srv.client()
    c.open_stream(domain)
    # The certificate must be the one of the requested host (checked by server_hostname).
    c.starttls(ca_file, server_name=domain)
    outcome = c.sasl_scram(user, PASSWORD)
    assert outcome.tag.endswith("}success")
    c.open_stream(domain)
    c.bind("r")
    return c


def test_virtual_hosts_are_separate_and_route_to_each_other(make_server: Any, ca_file: str) -> None:
    srv: ServerProcess = make_server(hosts=("localhost", "example.test"))
    srv.adduser("alice@localhost")
    srv.adduser("zoe@example.test")
    srv.start()
    alice = _login_on(srv, ca_file, "localhost", "alice")
    zoe = _login_on(srv, ca_file, "example.test", "zoe")
    try:
        # Accounts belong to one host: alice does not exist on example.test.
        wrong = srv.client()
        wrong.open_stream("example.test")
        wrong.starttls(ca_file, server_name="example.test")
        assert (
            wrong.sasl_scram("alice", PASSWORD).find(
                "{urn:ietf:params:xml:ns:xmpp-sasl}not-authorized"
            )
            is not None
        )
        wrong.close()

        alice.send("<message to='zoe@example.test/r' type='chat'><body>cross</body></message>")
        msg = zoe.next()
        assert msg.tag == f"{{{CLIENT}}}message"
        assert msg.get("from") == "alice@localhost/r"
        assert msg.findtext(f"{{{CLIENT}}}body") == "cross"
    finally:
        alice.close()
        zoe.close()


def test_connection_events_are_logged(make_server: Any, ca_file: str) -> None:
    srv: ServerProcess = make_server(extra_toml="")
    srv.adduser("alice@localhost")
    srv.start()
    c = srv.client()
    c.login(ca_file, "alice", PASSWORD, "logged")
    c.close()
    c = srv.client()
    c.send("<not-a-stream/>")
    with pytest.raises(StreamClosed):
        while True:
            c.next()
    c.abort()
    srv.stop()
    text = srv.log_text()
    assert "c2s connection from 127.0.0.1" in text
    assert "bound alice@localhost/logged" in text
    assert "closed (alice@localhost/logged)" in text
    assert "stream error" in text


def test_logouts_of_a_shutdown_are_recorded(make_server: Any, ca_file: str) -> None:
    """Every session a SIGTERM ends has its logout time and status (XEP-0012) on disk when
    the server has exited."""
    from fastxmpp.storage.last import LastActivityStore
    from fastxmpp.storage.lmdb_store import Storage

    srv: ServerProcess = make_server()
    names = [f"u{i}" for i in range(5)]
    add_accounts(srv, names)
    srv.start()
    clients = []
    for name in names:
        c = srv.client()
        c.login(ca_file, name, PASSWORD, "r")
        c.send(f"<presence/><presence type='unavailable'><status>bye {name}</status></presence>")
        clients.append(c)
    for c in clients:
        c.send("<iq type='get' id='s'><ping xmlns='urn:xmpp:ping'/></iq>")
        while c.next().get("id") != "s":
            pass
    before = time.time()
    assert srv.stop() == 0
    for c in clients:
        c.abort()
    with Storage(srv.data_dir) as storage:
        store = LastActivityStore(storage)
        for name in names:
            logout = store.last_logout("localhost", name)
            assert logout is not None, name
            assert logout[0] >= before and logout[1] == f"bye {name}", (name, logout)
