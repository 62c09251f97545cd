"""Durability of what the server has acknowledged: SIGKILL under load (alone, and as a power
cut: tests/power_cut.py), and a full disk.

The policy these tests establish (docs/CONFIGURATION.md, "Durability"):

- A message to an offline account is acknowledged when its sender has seen no error for it
  and a XEP-0198 <a/> whose 'h' covers it: a stream's stanzas are handled in order, and the
  offline store commits each message to LMDB (fsync'd: the environment is opened with sync
  and metasync on) before the next stanza of that stream is looked at. Acknowledged
  therefore means on disk. The server is killed at points drawn from a seeded RNG.
- After a crash (SIGKILL), every acknowledged message is delivered, exactly once. Of the
  messages in flight (sent, not yet acknowledged) a sender's stored ones are a prefix of what
  it sent: some may be there, none after a gap. Accounts and rosters are unaffected.
- Storing is exactly once; delivery after a crash *during delivery* is at least once: a
  stored message is deleted only after it was handed to the recipient's transport.
- A full disk refuses what cannot be stored with resource-constraint (type wait), logs an
  error naming the disk, and keeps serving; once space is free, storing works again without
  a restart.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import PASSWORD, ServerProcess, add_accounts, assert_still_serving
from power_cut import CRASHES, power_cut_for
from test_roster import ROSTER, items, roster_get, roster_set, sync
from xmpp_raw import CLIENT, RawClient, StreamClosed, stanza_error

from fastxmpp.storage.lmdb_store import Storage
from fastxmpp.storage.offline import OfflineStore

DELAY = "urn:xmpp:delay"
SM = "urn:xmpp:sm:3"
RECIPIENT = "rcpt"
SENDERS = [f"s{i}" for i in range(4)]
CONTACTS = ["c0", "c1", "c2"]
BATCH = 10  # messages between two <r/>
WINDOW = 4  # batches (each closed by an <r/>) in flight per sender
# Kill points are drawn from this seed (FASTXMPP_TEST_SEED replays a run), printed and named
# in failure messages.
SEED = int(os.environ.get("FASTXMPP_TEST_SEED") or random.SystemRandom().randrange(1 << 32))
ROUNDS = 2


@dataclass
class SenderLog:
    """What one sender sent and what the server acknowledged, in sending order."""

    name: str
    sent: list[str] = field(default_factory=list)
    acknowledged: int = 0  # sent[:acknowledged] are acknowledged
    errors: list[Any] = field(default_factory=list)
    ended_by: str = ""


def message(to: str, mid: str) -> str:
    return f"<message to='{to}' type='chat' id='{mid}'><body>{mid}</body></message>"


def send_until_closed(client: RawClient, log: SenderLog, go: threading.Event) -> None:
    """Numbered messages to the offline recipient with XEP-0198 on: an <r/> after every
    BATCH, WINDOW batches in flight; the server's <a/> says how many it has handled (its 'h'
    counts the stanzas received since <enable/>, only these messages here). Runs until the
    server goes away."""
    client.send(f"<enable xmlns='{SM}'/>")
    assert client.next().tag == f"{{{SM}}}enabled"
    go.wait()
    requests = 0  # <r/> without their <a/> yet
    try:
        while True:
            while requests < WINDOW:
                first = len(log.sent)
                ids = [f"{log.name}-{n}" for n in range(first, first + BATCH)]
                client.send(
                    "".join(message(f"{RECIPIENT}@localhost", mid) for mid in ids)
                    + f"<r xmlns='{SM}'/>"
                )
                log.sent += ids
                requests += 1
            el = client.next()
            if el.tag == f"{{{SM}}}a":
                requests -= 1
                log.acknowledged = int(el.get("h"))
            elif el.get("type") == "error":
                log.errors.append(el)
            else:
                raise AssertionError(f"unexpected stanza {el.tag} {dict(el.attrib)}")
    except (StreamClosed, TimeoutError, OSError, ssl.SSLError) as exc:
        log.ended_by = type(exc).__name__


def login(srv: ServerProcess, ca_file: str, user: str, resource: str = "r") -> RawClient:
    c = srv.client()
    c.login(ca_file, user, PASSWORD, resource)
    return c


def roster_view(reply: Any) -> dict[str, tuple[str | None, str | None, list[str]]]:
    return {
        jid: (
            item.get("name"),
            item.get("subscription"),
            sorted(g.text for g in item.iter(f"{{{ROSTER}}}group")),
        )
        for jid, item in items(reply).items()
    }


def collect_offline(srv: ServerProcess, client: RawClient) -> list[Any]:
    """Initial presence, then every message the server delivers until none is stored."""
    client.send("<presence/>")
    got: list[Any] = []
    deadline = time.monotonic() + 60
    while True:
        got += [el for el in sync(client) if el.tag == f"{{{CLIENT}}}message"]
        with Storage(srv.data_dir) as storage:
            left = OfflineStore(storage).count("localhost", RECIPIENT)
        if left == 0:
            # Deleted once handed to our transport: one more round trip reads the rest.
            got += [el for el in sync(client) if el.tag == f"{{{CLIENT}}}message"]
            return got
        assert time.monotonic() < deadline, f"{left} offline messages never delivered"


def test_commits_are_synchronous(tmp_path: Path) -> None:
    """A SIGKILL cannot tell a committed write from an fsync'd one (the page cache survives
    the process): that half of the policy is the environment's flags, checked here."""
    with Storage(tmp_path / "data") as storage:
        flags = storage.env.flags()
    assert flags["sync"] and flags["metasync"]
    assert not flags["map_async"] and not flags["writemap"]


@pytest.mark.slow
@pytest.mark.parametrize("crash", CRASHES)
def test_sigkill_under_load_loses_nothing_acknowledged(
    make_server: Any, ca_file: str, crash: str, tmp_path: Path
) -> None:
    print(f"seed {SEED}")
    rng = random.Random(SEED)
    power = power_cut_for(crash, tmp_path, rng)
    srv: ServerProcess = make_server("[offline]\nmax_messages = 1000000\n")
    if power is not None:
        power.prepare(srv)
    add_accounts(srv, [RECIPIENT, *SENDERS, *CONTACTS])
    srv.start()

    # The recipient's roster, set up before the load and then left offline.
    rcpt = login(srv, ca_file, RECIPIENT)
    for i, contact in enumerate(CONTACTS):
        groups = f"<group>g{i}</group><group>all</group>"
        reply = roster_set(
            rcpt, f"<item jid='{contact}@localhost' name='Contact {i}'>{groups}</item>", f"rs{i}"
        )
        assert reply.get("type") == "result"
    roster_before = roster_view(roster_get(rcpt)[0])
    assert len(roster_before) == len(CONTACTS)
    rcpt.close()

    summary = []
    for round_ in range(ROUNDS):
        # Messages acknowledged by all senders together when the server is killed.
        kill_at = rng.randint(BATCH, 600)
        context = f"seed {SEED}, round {round_}, kill after {kill_at} acknowledged"
        logs = [SenderLog(f"{name}.{round_}") for name in SENDERS]
        clients = [login(srv, ca_file, name) for name in SENDERS]
        go = threading.Event()
        with ThreadPoolExecutor(len(SENDERS)) as pool:
            running = [
                pool.submit(send_until_closed, c, log, go)
                for c, log in zip(clients, logs, strict=True)
            ]
            go.set()
            deadline = time.monotonic() + 60
            while sum(log.acknowledged for log in logs) < kill_at:
                assert time.monotonic() < deadline, context
                assert not any(future.done() for future in running), context
                time.sleep(0.001)
            if power is not None:
                power.wait_unflushed()
            assert srv.stop(signal.SIGKILL) == -signal.SIGKILL
            if power is not None:
                power.cut()
            for future in running:
                future.result(timeout=30)  # a sender's own failure surfaces here
        for c in clients:
            c.abort()
        for log in logs:
            assert log.ended_by, f"{context}: {log.name} still running"
            assert log.errors == [], (context, [dict(e.attrib) for e in log.errors])
            # Messages in flight when the server died: acknowledged is not everything sent.
            assert log.acknowledged < len(log.sent), (context, log.name)

        srv.start()
        # Every account still authenticates (SCRAM over TLS).
        for name in [*SENDERS, *CONTACTS]:
            login(srv, ca_file, name, "after").close()
        rcpt = login(srv, ca_file, RECIPIENT, "after")
        assert roster_view(roster_get(rcpt)[0]) == roster_before, context

        delivered = collect_offline(srv, rcpt)
        ids = [m.get("id") for m in delivered]
        assert len(ids) == len(set(ids)), f"{context}: a message was delivered twice"
        counts = []
        for log in logs:
            mine = [m for m in delivered if m.get("id").startswith(f"{log.name}-")]
            got = [m.get("id") for m in mine]
            # Stored in the order sent, without gaps: a prefix of what was sent that holds
            # everything acknowledged.
            assert got == log.sent[: len(got)], f"{context}: {log.name}: not a prefix"
            assert len(got) >= log.acknowledged, (
                f"{context}: {log.name}: {log.acknowledged} acknowledged, {len(got)} delivered"
            )
            sender = log.name.split(".")[0]
            for m in mine:
                assert m.get("from") == f"{sender}@localhost/r", context
                assert m.findtext(f"{{{CLIENT}}}body") == m.get("id"), context
                assert m.find(f"{{{DELAY}}}delay") is not None, context
            counts.append(f"{log.name} {log.acknowledged}/{len(log.sent)}/{len(got)}")
        assert len(ids) == sum(1 for m in delivered if m.get("id").split(".")[0] in SENDERS), (
            context
        )
        summary.append(f"kill after {kill_at} (acked/sent/got): " + ", ".join(counts))
        rcpt.close()

        # Delivered means gone: the next login gets nothing again.
        rcpt = login(srv, ca_file, RECIPIENT, "again")
        rcpt.send("<presence/>")
        assert [el for el in sync(rcpt) if el.tag == f"{{{CLIENT}}}message"] == [], context
        rcpt.close()
    print("; ".join(summary))
    if power is not None:
        print(f"power cuts (pages put back / pages not flushed): {power.summary()}")
        # The cuts fell on writes in flight: this was more than a SIGKILL.
        assert any(r.unflushed_pages for r in power.results), power.summary()


# --- a full disk -------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[None]:
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.fail(
            f"this test needs to mount a tmpfs (root, or CAP_SYS_ADMIN) to fill a disk: "
            f"mount said {mounted.stderr.strip()!r}"
        )
    try:
        yield
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> None:
    """Write zeros into `path` until the file system has no byte left."""
    chunk = 1 << 20
    with open(path, "wb", buffering=0) as f:
        while chunk:
            try:
                f.write(bytes(chunk))
            except OSError:
                chunk //= 2
    assert os.statvfs(path.parent).f_bavail == 0


def test_full_disk_refuses_offline_messages_and_recovers(make_server: Any, ca_file: str) -> None:
    """The data directory is a tmpfs of its own, filled to the last byte with a file: LMDB's
    commit then fails with the kernel's real ENOSPC, through Storage.write's DiskError path,
    as on a full disk (RLIMIT_FSIZE would give EFBIG instead, an error a real full disk never
    gives). Deleting the file frees the space, with the server still running."""
    srv: ServerProcess = make_server()
    with tmpfs(srv.data_dir, "16m"):
        try:
            add_accounts(srv, ["alice", "bob"])
            srv.start()
            alice = login(srv, ca_file, "alice")
            big = "x" * 100_000  # new pages: LMDB cannot reuse a few freed ones for it
            alice.send(message("bob@localhost", "before"))
            assert sync(alice) == []

            filler = srv.data_dir / "filler"
            fill(filler)
            alice.send(f"<message to='bob@localhost' id='full'><body>{big}</body></message>")
            # The turn's offline messages are committed at its end: the error follows what
            # else that turn wrote (the ping's answer if it came in the same read).
            (error,) = sync(alice) or [alice.next(timeout=30)]
            assert error.get("id") == "full" and error.get("type") == "error"
            assert stanza_error(error) == "resource-constraint"
            assert error.find(f"{{{CLIENT}}}error").get("type") == "wait"
            assert srv.alive()
            srv.wait_for_log("offline message(s): the disk holding")
            assert "No space left on device" in srv.log_text()
            assert sync(alice) == []  # the sender's stream carries on (one error only)

            filler.unlink()
            alice.send(f"<message to='bob@localhost' id='after'><body>{big}</body></message>")
            assert sync(alice) == []
            alice.close()
            bob = login(srv, ca_file, "bob")
            bob.send("<presence/>")
            got = [el for el in sync(bob) if el.tag == f"{{{CLIENT}}}message"]
            assert [m.get("id") for m in got] == ["before", "after"]
            assert len(got[1].findtext(f"{{{CLIENT}}}body")) == len(big)
            bob.close()
            assert_still_serving(srv, ca_file)
        finally:
            srv.stop()
