"""`/metrics` on the http listeners (`[http] metrics`): the server's figures in the Prometheus
text format, read here with prometheus_client's own parser (what scrapers use), after real
logins, messages, a room and a wrong password; refused to clients outside `metrics_allow`
(a trusted proxy's X-Forwarded-For names the client), absent unless switched on."""

from __future__ import annotations

import importlib.metadata
import time
import urllib.error
import urllib.request
from typing import Any

from conftest import PASSWORD, ServerProcess, add_accounts, run_cli
from prometheus_client.parser import text_string_to_metric_families
from ws_client import HTTP_LISTENER, http_port
from xmpp_raw import SASL, RawClient

METRICS = HTTP_LISTENER + "\n[http]\nmetrics = true\n"


def scrape(
    srv: ServerProcess, headers: dict[str, str] | None = None
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of one scrape."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{http_port(srv)}/metrics", headers=headers or {}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain; version=")
        text = answer.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def status(srv: ServerProcess, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{http_port(srv)}/metrics", headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_figures_follow_what_clients_do(
    make_server: Any, ca_file: str, clients: list[RawClient]
) -> None:
    srv = make_server(METRICS)
    add_accounts(srv, ["alice", "bob", "carol"])
    srv.start()
    before = scrape(srv)
    assert value(before, "fastxmpp_info", version=importlib.metadata.version("fastxmpp")) == 1
    assert value(before, "fastxmpp_accounts") == 3
    assert value(before, "fastxmpp_c2s_connections") == 0
    assert value(before, "fastxmpp_sessions", host="localhost") == 0
    assert value(before, "fastxmpp_logins_total", result="success") == 0
    assert value(before, "process_resident_memory_bytes") > 1 << 20
    assert value(before, "process_open_fds") > 0
    assert value(before, "fastxmpp_storage_used_bytes") > 0

    alice, bob = srv.client(), srv.client()
    clients += [alice, bob]
    alice.login(ca_file, "alice", PASSWORD, "a")
    bob.login(ca_file, "bob", PASSWORD, "b")
    wrong = srv.client()
    clients.append(wrong)
    wrong.open_stream()
    wrong.starttls(ca_file)
    assert wrong.sasl_scram("carol", "not the password").tag == f"{{{SASL}}}failure"
    for n in range(3):
        alice.send(
            f"<message to='bob@localhost/b' type='chat' id='m{n}'><body>{n}</body></message>"
        )
    for n in range(3):
        assert bob.next().findtext("{jabber:client}body") == str(n)
    alice.send("<presence/>")
    alice.send(
        "<presence to='room@conference.localhost/alice'>"
        "<x xmlns='http://jabber.org/protocol/muc'/></presence>"
    )
    while alice.next().get("from") != "room@conference.localhost/alice":
        pass
    unauthenticated = srv.client()
    clients.append(unauthenticated)
    unauthenticated.open_stream()

    after = scrape(srv)
    assert value(after, "fastxmpp_c2s_connections") == 4
    assert value(after, "fastxmpp_c2s_unauthenticated_connections") == 2
    assert value(after, "fastxmpp_sessions", host="localhost") == 2
    assert value(after, "fastxmpp_sessions_detached") == 0
    assert value(after, "fastxmpp_logins_total", result="success") == 2
    assert value(after, "fastxmpp_logins_total", result="failure") == 1
    routed = "fastxmpp_stanzas_routed_total"
    assert value(after, routed, kind="message") - value(before, routed, kind="message") == 3
    assert value(after, routed, kind="presence") - value(before, routed, kind="presence") == 2
    assert value(after, "fastxmpp_muc_rooms", service="conference.localhost") == 1
    assert value(after, "fastxmpp_muc_occupants", service="conference.localhost") == 1
    # The archive (XEP-0313, on by default) committed the three messages.
    assert value(after, "fastxmpp_archive_commits_total", result="committed") >= 1
    assert value(after, "fastxmpp_archive_commits_total", result="failed") == 0
    assert value(after, "fastxmpp_http_connections") >= 1  # this scrape's own

    bob.close()
    deadline = time.monotonic() + 10
    while value(scrape(srv), "fastxmpp_sessions", host="localhost") != 1:
        assert time.monotonic() < deadline, "bob's session is still counted"
        time.sleep(0.05)


def test_only_the_allowed_networks_may_read(make_server: Any) -> None:
    srv = make_server(METRICS + 'metrics_allow = ["10.0.0.0/8"]\n')
    srv.start()
    assert status(srv) == 403
    # Through the local reverse proxy (trusted by default), for a client it names.
    assert status(srv, {"X-Forwarded-For": "10.1.2.3"}) == 200
    assert status(srv, {"X-Forwarded-For": "192.0.2.1"}) == 403


def test_off_unless_switched_on(make_server: Any) -> None:
    srv = make_server(HTTP_LISTENER)
    srv.start()
    assert status(srv) == 404


def test_the_allowed_list_is_checked(make_server: Any) -> None:
    srv = make_server(METRICS + 'metrics_allow = ["10.0.0.0/33"]\n')
    result = run_cli("check-config", config=srv.config)
    assert result.returncode == 1
    assert "'10.0.0.0/33' is not an IP address or network" in result.stderr
