"""The message archive's commits on their own (docs/PERFORMANCE.md, "The archive writer and
the GIL" and "Compiling the per-read path": the group-commit writer is a third of the
server's CPU with the archive on, most of it the pages each commit writes).

A store of 2000 accounts grown to 10 records each by commits of 30 rows, as a server grows
it; then each round commits batches of 30 rows for accounts picked at random (what a group
commit holds when 2000 users each send now and then: the unbatched scenario), synced as the
server commits them. Rows wait in the journal (storage/mam.py) as in the server: an account
folds at FOLD_ROWS rows, and the first commit of each round also folds the tails older than
the round before (the server's FOLD_AGE, in rounds), so the folds' pages are counted too.
Reported per row: the time (`benchmark`), and in `extra_info` the process's CPU time,
kernel included (where the page writes are paid), the 4 KiB pages LMDB hands to
`pwrite`/`writev` (`/proc/self/io` wchar), and the bytes the kernel charges as written
(write_bytes: per page-cache folio dirtied, about three times the pages LMDB writes;
compare it between runs of this benchmark only).
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import record_rate
from fastxmpp._router import Session

from fastxmpp.storage.account_data import account_prefix
from fastxmpp.storage.lmdb_store import Storage
from fastxmpp.storage.mam import ArchiveStore, Row

pytestmark = pytest.mark.benchmark(group="archive")

ACCOUNTS = 2000
PREFILL = 10  # records per account before the rounds, written BATCH rows per commit
BATCH = 30  # rows per commit
COMMITS = 20  # commits per round
MESSAGE = (
    b"<message xmlns='jabber:client' from='bench1@localhost/r1' to='bench2@localhost/r2' "
    b"type='chat' id='1764686400123456789'><body>Hello! This is a benchmark message of "
    b"ordinary chat length, about 80 bytes.</body></message>"
)


def io_counter(name: str) -> int:
    with open("/proc/self/io") as io:
        for line in io:
            if line.startswith(f"{name}:"):
                return int(line.split()[1])
    raise AssertionError(f"no {name} in /proc/self/io")


class Archive:
    def __init__(self, data_dir: Path) -> None:
        self.storage = Storage(data_dir)
        self.store = ArchiveStore(self.storage)
        self.prefixes = [account_prefix("localhost", f"bench{i}") for i in range(ACCOUNTS)]
        self.random = random.Random(1)
        for _ in range(PREFILL * ACCOUNTS // BATCH):
            rows = [self.row(self.random.choice(self.prefixes)) for _ in range(BATCH)]
            self.commit(rows)
        self.commit([], frozenset(self.store.unfolded_accounts()))  # the rounds start folded

    def commit(self, rows: list[Row], fold: frozenset[bytes] = frozenset()) -> None:
        commit = self.store.plan(rows, 10000, 0, fold=fold)
        self.storage.write(commit.work)
        commit.committed()

    def row(self, prefix: bytes) -> Row:
        return (prefix, self.store.next_number(), time.time(), "peer@localhost", "in", MESSAGE)

    def batches(self) -> list[list[Row]]:
        return [
            [self.row(self.random.choice(self.prefixes)) for _ in range(BATCH)]
            for _ in range(COMMITS)
        ]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    return Archive(tmp_path_factory.mktemp("archive"))


def test_group_commits_of_rows_for_many_accounts(benchmark: Any, archive: Archive) -> None:
    totals = {"rows": 0, "bytes": 0, "wchar": 0, "cpu": 0.0}
    before = sum(archive.store.count("localhost", f"bench{i}") for i in range(ACCOUNTS))
    rounds = [time.time()]  # when each round began

    def commit_all(batches: list[list[Row]]) -> None:
        aged = frozenset(archive.store.aged(rounds[-2])) if len(rounds) > 1 else frozenset()
        rounds.append(time.time())
        written, wchar = io_counter("write_bytes"), io_counter("wchar")
        cpu = time.process_time()
        for index, batch in enumerate(batches):
            archive.commit(batch, aged if index == 0 else frozenset())
        totals["cpu"] += time.process_time() - cpu
        totals["bytes"] += io_counter("write_bytes") - written
        totals["wchar"] += io_counter("wchar") - wchar
        totals["rows"] += sum(len(batch) for batch in batches)

    benchmark.pedantic(commit_all, setup=lambda: ((archive.batches(),), {}), rounds=8)
    rows = totals["rows"]
    benchmark.extra_info["pages_per_row"] = totals["wchar"] / 4096 / rows
    benchmark.extra_info["written_KiB_per_row"] = totals["bytes"] / 1024 / rows
    benchmark.extra_info["cpu_us_per_row"] = totals["cpu"] * 1e6 / rows
    benchmark.extra_info["unfolded_rows_left"] = archive.store.unfolded
    # Every row was stored (and counted) once.
    after = sum(archive.store.count("localhost", f"bench{i}") for i in range(ACCOUNTS))
    assert after - before == rows
    assert os.path.isdir(archive.storage.data_dir)


# --- the archive's work per message on the event loop -------------------------------------
#
# A real server (its configuration's modules, storage in a temporary directory), started
# without serving anyone: sessions bound straight to its router, chat messages routed between
# them, the turn's end run after each PER_TURN messages. The archive's rows are taken at the
# turn's end instead of going to the writer (its commits are the benchmark above), so what is
# timed is the routing with every module's handlers, the archive's included; with
# `[mam] enabled = false` the same without it. Works with builds from before
# `_router.ArchiveHooks` too, for the A/B in docs/PERFORMANCE.md.

HOOK_PAIRS = 1000
HOOK_MESSAGES = 2000


class HookSession(Session):
    pass


class NullTransport:
    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False


def _take_rows(mam: Any, wait: bool = False) -> None:
    """In place of MamModule.flush: the turn's rows taken, the senders' output let go."""
    if hasattr(mam, "hooks"):
        _rows, _senders, held = mam.hooks.take()
    else:  # (before ArchiveHooks)
        held, mam._held = mam._held, {}
        mam._pending, mam._senders = [], {}
    for session in held.values():
        session.release_writes()


@pytest.fixture(params=["archive-on", "archive-off"])
def hooked_server(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Any:
    import asyncio

    from fastxmpp._parser import StreamParser

    from fastxmpp.config import load_config
    from fastxmpp.modules.mam import MamModule
    from fastxmpp.server import Server

    monkeypatch.setattr(MamModule, "flush", _take_rows)
    config = tmp_path / "fastxmpp.toml"
    config.write_text(
        f'[server]\ndata_dir = "{tmp_path}/data"\nlog_level = "warning"\n'
        '[[listeners]]\nkind = "c2s"\naddress = "127.0.0.1"\nport = 0\n[hosts.localhost]\n'
        + ("[mam]\nenabled = false\n" if request.param == "archive-off" else "")
    )
    loop = asyncio.new_event_loop()
    server = Server(load_config(config))
    loop.run_until_complete(server.start())
    router = server.router
    router.user_exists = lambda domain, local: True
    sessions = []
    for i in range(2 * HOOK_PAIRS):
        session = HookSession()
        session.transport = NullTransport()
        router.bind(session, f"user{i}", "localhost", "phone")
        session.available = True
        session.priority = 0
        sessions.append(session)
    header = (
        b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
        b" to='localhost' version='1.0'>"
    )
    messages = []
    for i in range(HOOK_PAIRS):
        text = (
            f"<message to='user{2 * i + 1}@localhost/phone' type='chat' id='m{i}'><body>"
            f"Running ten minutes late, order without me ({i})</body>"
            "<active xmlns='http://jabber.org/protocol/chatstates'/></message>"
        )
        messages.append((sessions[2 * i], StreamParser().feed(header + text.encode())[-1]))
    yield router, messages, request.param
    loop.run_until_complete(server.stop())
    loop.close()


@pytest.mark.parametrize("per_turn", [1, 10])
def test_routing_with_the_archive_hooks(benchmark: Any, hooked_server: Any, per_turn: int) -> None:
    router, messages, mode = hooked_server
    route = router.route

    def run() -> int:
        routed = 0
        for start in range(0, HOOK_MESSAGES, per_turn):
            for origin, stanza in messages[start % HOOK_PAIRS : start % HOOK_PAIRS + per_turn]:
                route(origin, stanza)
                routed += 1
            router.flush_all()
        return routed

    assert benchmark(run) == HOOK_MESSAGES
    record_rate(benchmark, messages=HOOK_MESSAGES)
    benchmark.extra_info["mode"] = mode
