"""`fastxmpp backup` of a server under message load and `fastxmpp restore` into a new one:
every message acknowledged before the backup began is in the copy, the copy is one
consistent moment (each sender's stored messages a prefix of what it sent), and the server
being copied keeps serving. Restore refuses a running server and keeps what it replaces."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from conftest import ServerProcess, add_accounts, run_cli
from test_durability import (
    RECIPIENT,
    SENDERS,
    SenderLog,
    collect_offline,
    login,
    send_until_closed,
)

from fastxmpp.storage.accounts import AccountStore
from fastxmpp.storage.lmdb_store import Storage


def test_backup_under_load_restores_everything_acknowledged(
    make_server: Any, ca_file: str, tmp_path: Path
) -> None:
    source: ServerProcess = make_server("[offline]\nmax_messages = 1000000\n")
    add_accounts(source, [RECIPIENT, *SENDERS])
    source.start()
    logs = [SenderLog(name) for name in SENDERS]
    clients = [login(source, ca_file, name) for name in SENDERS]
    go = threading.Event()
    destination = tmp_path / "backup-1"
    with ThreadPoolExecutor(len(SENDERS)) as pool:
        running = [
            pool.submit(send_until_closed, c, log, go) for c, log in zip(clients, logs, strict=True)
        ]
        try:
            go.set()
            while min(log.acknowledged for log in logs) < 100:
                time.sleep(0.05)
            # What the server has acknowledged now must be in the backup.
            acknowledged_before = {log.name: log.acknowledged for log in logs}
            made = run_cli("backup", str(destination), config=source.config)
            assert made.returncode == 0, made.stderr
            # The server kept serving the load through the copy: every sender goes on being
            # acknowledged (not timed: a loaded machine may pause anyone for a while).
            after = {log.name: log.acknowledged for log in logs}
            deadline = time.monotonic() + 30
            while any(log.acknowledged <= after[log.name] for log in logs):
                assert time.monotonic() < deadline, [
                    (log.name, log.acknowledged, log.ended_by, log.errors) for log in logs
                ]
                time.sleep(0.05)
        finally:
            for c in clients:
                c.abort()  # the senders stop at their next read
            for future in running:
                future.result(timeout=30)
    assert source.stop() == 0
    for log in logs:
        assert log.errors == [], [dict(e.attrib) for e in log.errors]
    manifest = json.loads((destination / "BACKUP.json").read_text())
    assert manifest["format"] == 1 and manifest["bytes"] > 0
    assert f"written to {destination}" in made.stdout

    # A new server, a new data directory: the backup goes in, the server starts on it.
    target: ServerProcess = make_server("[offline]\nmax_messages = 1000000\n")
    restored = run_cli("restore", str(destination), config=target.config)
    assert restored.returncode == 0, restored.stderr
    target.start()
    rcpt = login(target, ca_file, RECIPIENT, "after")  # the account came with the backup
    delivered = collect_offline(target, rcpt)
    rcpt.close()
    for log in logs:
        got = [m.get("id") for m in delivered if m.get("id").startswith(f"{log.name}-")]
        # One moment of the server: in sending order without gaps, and nothing acknowledged
        # before the backup began is missing.
        assert got == log.sent[: len(got)], f"{log.name}: not a prefix of what was sent"
        assert len(got) >= acknowledged_before[log.name], (log.name, len(got))


def test_restore_refuses_a_running_server_and_keeps_what_it_replaces(
    make_server: Any, ca_file: str, tmp_path: Path
) -> None:
    srv: ServerProcess = make_server()
    add_accounts(srv, ["before"])
    made = run_cli("backup", str(tmp_path / "copy"), config=srv.config)
    assert made.returncode == 0, made.stderr
    # Never over an existing directory.
    again = run_cli("backup", str(tmp_path / "copy"), config=srv.config)
    assert again.returncode != 0 and "never overwrites" in again.stderr
    add_accounts(srv, ["after"])

    srv.start()
    refused = run_cli("restore", str(tmp_path / "copy"), config=srv.config)
    assert refused.returncode != 0
    assert "restore only into a stopped server" in refused.stderr, refused.stderr
    login(srv, ca_file, "after").close()  # untouched, still serving
    srv.stop()

    not_a_backup = run_cli("restore", str(tmp_path), config=srv.config)
    assert not_a_backup.returncode != 0 and "not a fastxmpp backup" in not_a_backup.stderr

    restored = run_cli("restore", str(tmp_path / "copy"), config=srv.config)
    assert restored.returncode == 0, restored.stderr
    [aside] = srv.data_dir.glob("replaced-*")
    assert f"kept in {aside}" in restored.stdout
    srv.start()
    login(srv, ca_file, "before").close()
    listed = run_cli("listusers", config=srv.config)
    assert listed.stdout.split() == ["before@localhost"], listed.stdout
    srv.stop()
    # The replaced data is whole, with the account made after the backup.
    with Storage(aside) as storage:
        assert AccountStore(storage).exists("localhost", "after")
