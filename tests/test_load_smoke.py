"""Every scenario of benchmarks/load, at a tiny size, against a real fastxmpp: the load
generator must keep working (and keep checking what it measures) as the server changes.

No timing is asserted (benchmarks report numbers, tests do not): each test checks the
scenario's own correctness figures from its JSON result (every message delivered, every
handshake completed, no errors). `benchmarks` comes from the checkout, which `make install`
puts at the end of sys.path (a .pth file), so that `python -P -m pytest` still imports the
installed fastxmpp.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trustme
from conftest import REPO, ServerProcess

try:
    import benchmarks.load
    from benchmarks.load.accounts import write_accounts
    from benchmarks.load.scenarios import Spec, run
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError(
        "benchmarks/ is not importable: `make install` writes a .pth file that puts the "
        f"checkout at the end of sys.path ({exc})"
    ) from exc

# (benchmarks/ is a namespace package: its subpackage says where it was found)
if Path(benchmarks.load.__file__).resolve().parent != REPO / "benchmarks" / "load":
    raise ImportError(
        f"benchmarks imported from {benchmarks.load.__file__}, not from this checkout ({REPO}): "
        "re-run `make install` here"
    )

PASSWORD = "bench-password"
# Accounts per scenario (a prefix each, so that no scenario sees another's roster)
ACCOUNTS = {
    "login": 8,
    "idle": 20,
    "msg": 8,
    "mamq": 8,
    "mds": 8,
    "pres": 11,
    "rost": 11,
    "flood": 10,
    "muc": 6,
}
PING_EVERY = 0.3  # [ping] idle_interval of the `many` server: its sessions get pinged


def _server(root: Path, ca: trustme.CA, prefixes: dict[str, int], extra: str) -> ServerProcess:
    srv = ServerProcess(root, ca, ("localhost",), extra)
    for prefix, count in prefixes.items():
        write_accounts(srv.data_dir, "localhost", prefix, count, PASSWORD)
    srv.start()
    return srv


@pytest.fixture(scope="module")
def load_server(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    srv = _server(tmp_path_factory.mktemp("load"), ca, ACCOUNTS, "")
    yield srv
    srv.stop()


def _spec(srv: ServerProcess, scenario: str, prefix: str, **values: Any) -> Spec:
    assert srv.proc is not None
    base = Spec(
        scenario=scenario,
        port=srv.port,
        user_prefix=prefix,
        users=ACCOUNTS.get(prefix, 0),
        password=PASSWORD,
        workers=2,
        duration=1.0,
        # Late is not lost here: wait for everything (a scenario stops as soon as all has
        # arrived), so that a slow shared machine cannot fail the test.
        drain=60.0,
        settle_before=0.0,
        settle=0.0,
        server_pids=[srv.proc.pid],
    )
    return replace(base, **values)


def _run(spec: Spec) -> dict[str, Any]:
    result = run(spec)
    json.dumps(result)  # what `python -m benchmarks.load` prints
    return result


def test_benchmarks_import_from_this_checkout_under_safe_path() -> None:
    # The way `make test` runs: -P, so the checkout is only on sys.path through the .pth.
    probe = subprocess.run(
        [sys.executable, "-P", "-c", "import benchmarks.load, fastxmpp; "
         "print(benchmarks.load.__file__); print(fastxmpp.__file__)"],
        capture_output=True, text=True, cwd="/", timeout=60,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    bench_file, server_file = probe.stdout.split()
    assert Path(bench_file).resolve().parent == REPO / "benchmarks" / "load"
    # fastxmpp is still the installed package, not the source tree next to benchmarks/
    assert not Path(server_file).resolve().is_relative_to(REPO / "fastxmpp")


def test_login(load_server: ServerProcess) -> None:
    result = _run(_spec(load_server, "login", "login", concurrency=2))
    assert result["count"] > 0 and result["errors"] == 0
    assert result["server_cpu_s"] > 0


def test_idle(load_server: ServerProcess) -> None:
    result = _run(_spec(load_server, "idle", "idle", connections=20))
    assert result["connections"] == 20
    assert result["rss_per_connection_bytes"] is not None


@pytest.mark.parametrize("rate", [0.0, 200.0], ids=["closed-loop", "fixed-rate"])
def test_msg(load_server: ServerProcess, rate: float) -> None:
    result = _run(_spec(load_server, "msg", "msg", pairs=4, window=2, rate=rate))
    assert result["sent"] > 0
    assert result["lost"] == 0 and result["count"] == result["sent"]
    assert result["p99_ms"] is not None


def test_msg_with_stream_management(load_server: ServerProcess) -> None:
    # XEP-0198 as mobile clients use it: an <r/> after each message, the server's <r/>s
    # answered; the senders' last <a/> counts every message they sent.
    spec = _spec(load_server, "msg", "msg", pairs=4, window=1, stream_management=True)
    result = _run(spec)
    assert result["sent"] > 0
    assert result["lost"] == 0 and result["count"] == result["sent"]
    assert result["sm_unacked"] == 0


# While the pairs chat, the senders query their own archives (XEP-0313, as phones do at
# login) or mark their chats displayed (XEP-0490 publishes, with publish-options): every
# request is answered with a result and no message is lost.
@pytest.mark.parametrize(
    ("prefix", "option", "singular"),
    [("mamq", "archive_queries", "archive_query"), ("mds", "pep_publishes", "pep_publish")],
)
def test_msg_with_side_requests(
    load_server: ServerProcess, prefix: str, option: str, singular: str
) -> None:
    # `option` (requests/s) names the result's count too: `<option>_answered`
    spec = _spec(load_server, "msg", prefix, pairs=4, rate=200.0, **{option: 20.0})
    result = _run(spec)
    assert result["lost"] == 0 and result["count"] == result["sent"] > 0
    assert result[f"{option}_answered"] > 0
    assert result[f"{singular}_p99_ms"] is not None


def test_presence(load_server: ServerProcess) -> None:
    result = _run(_spec(load_server, "presence", "pres", contacts=10, changes_per_s=10.0))
    assert result["setup_incomplete"] == 0
    # every status change of the hub reaches each of its 10 contacts once
    assert result["count"] == 10 * 10


def test_roster_login(load_server: ServerProcess) -> None:
    result = _run(_spec(load_server, "roster_login", "rost", contacts=10))
    assert result["setup_incomplete"] == 0
    assert result["count"] > 0 and result["errors"] == 0


@pytest.mark.parametrize("target", ["online", "offline"])
def test_flood(load_server: ServerProcess, target: str) -> None:
    result = _run(
        _spec(load_server, "flood", "flood", pairs=4, flood_target=target, flood_drain=1.0)
    )
    for phase in ("baseline", "flood"):
        assert result["phases"][phase]["sent"] > 0
        assert result["phases"][phase]["lost"] == 0, result["phases"]
    flood = result["phases"]["flood"]
    assert flood["flood_written"] > 0
    if target == "online":
        assert flood["flood_delivered"] > 0


def test_muc(load_server: ServerProcess) -> None:
    result = _run(_spec(load_server, "muc", "muc", rooms=2, occupants=3, rate=30.0))
    assert result["setup_incomplete"] == 0
    assert result["sent"] > 0
    assert result["lost"] == 0 and result["count"] == 3 * result["sent"]


def test_many(ca: trustme.CA, tmp_path: Path) -> None:
    """A server of its own: the scenario ends it with SIGTERM."""
    srv = _server(
        tmp_path,
        ca,
        {"many": 40},
        f"[ping]\nidle_interval = {PING_EVERY}\ntimeout = 30.0\n",
    )
    try:
        spec = _spec(
            srv, "many", "many", users=40, connections=40, hold=1.5, keepalive=1.0,
            sample=10, shutdown=True,
        )  # fmt: skip
        result = _run(spec)
    finally:
        code = srv.stop()
    assert result["connections"] == 40 and result["login_failures"] == 0
    # bound to the 8 source addresses before connecting: 5 connections each
    assert result["connections_per_source"] == {f"127.0.0.{n}": 5 for n in range(2, 10)}
    assert result["keepalives_sent"] > 0
    assert result["pings_answered"] > 0  # silent longer than PING_EVERY between keepalives
    assert result["lost_during_hold"] == 0
    assert result["sample_sent"] == 10 and result["sample_delivered"] == 10
    assert result["sample_bounced"] == 0
    assert result["shutdown_s"] is not None
    # RFC 6120 §4.4: every stream ended by the server with <system-shutdown/> and its tag
    assert result["closed_by_server"] == 40
    assert result["closed_with_system_shutdown"] == 40
    assert result["closed_with_stream_end"] == 40
    assert code == 0
    assert result["rss_per_connection_bytes"] is not None
