"""LMDB storage, the data-directory lock and the account store, on real files."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import msgpack
import pytest
from conftest import FASTXMPP
from scramp import ScramClient, ScramException, ScramMechanism

from fastxmpp.storage.accounts import (
    AccountExists,
    AccountStore,
    NoSuchAccount,
)
from fastxmpp.storage.lmdb_store import (
    SCHEMA_VERSION,
    DataDirLocked,
    SchemaTooNew,
    ServerLock,
    Storage,
    StorageFailed,
    StorageFull,
)

PASSWORD = "Tr0ub4dor&3-unique-marker"


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    store = Storage(tmp_path / "data", map_size=1 << 24)
    yield store
    store.close()


@pytest.fixture
def accounts(storage: Storage) -> AccountStore:
    return AccountStore(storage, iterations=4096)


def test_storage_layout_and_databases(tmp_path: Path) -> None:
    data_dir = tmp_path / "new" / "data"
    storage = Storage(data_dir, map_size=1 << 24)
    assert (data_dir / "db" / "data.mdb").is_file()
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((data_dir / "db").stat().st_mode) == 0o700
    first = storage.database("things")
    assert storage.database("things") is first  # opened once
    with storage.env.begin(db=first, write=True) as txn:
        txn.put(b"k", b"v")
    storage.close()
    storage.close()  # idempotent
    with pytest.raises(RuntimeError):
        _ = storage.env
    reopened = Storage(data_dir, map_size=1 << 24)
    with reopened.env.begin(db=reopened.database("things")) as txn:
        assert txn.get(b"k") == b"v"
    reopened.close()


def test_account_round_trip(accounts: AccountStore) -> None:
    assert not accounts.exists("example.org", "alice")
    accounts.create("example.org", "alice", PASSWORD)
    assert accounts.exists("example.org", "alice")
    assert not accounts.exists("example.net", "alice")
    with pytest.raises(AccountExists):
        accounts.create("example.org", "alice", "other")
    accounts.create("example.org", "bob", "pw")
    accounts.create("example.net", "zed", "pw")
    accounts.create("a.example", "carol", "pw")
    assert accounts.list() == [
        ("a.example", "carol"),
        ("example.net", "zed"),
        ("example.org", "alice"),
        ("example.org", "bob"),
    ]
    assert accounts.list("example.org") == [("example.org", "alice"), ("example.org", "bob")]
    # A domain that is a prefix of another must not pick up the other's accounts.
    assert accounts.list("example") == []
    accounts.delete("example.org", "alice")
    assert not accounts.exists("example.org", "alice")
    with pytest.raises(NoSuchAccount):
        accounts.delete("example.org", "alice")
    with pytest.raises(NoSuchAccount):
        accounts.set_password("example.org", "alice", "pw")
    assert accounts.list("example.org") == [("example.org", "bob")]


def test_record_shape(storage: Storage, accounts: AccountStore) -> None:
    accounts.create("example.org", "alice", PASSWORD)
    with storage.env.begin(db=storage.database("accounts")) as txn:
        record = msgpack.unpackb(txn.get(b"example.org\0alice"))
    assert isinstance(record["created"], int) and record["created"] > 0
    for mechanism in ("SCRAM-SHA-1", "SCRAM-SHA-256"):
        salt, stored_key, server_key, iterations = record["scram"][mechanism]
        assert len(salt) >= 16 and iterations == 4096
        assert len(stored_key) == len(server_key) == (20 if mechanism.endswith("1") else 32)


def test_no_password_bytes_in_the_database_file(tmp_path: Path, accounts: AccountStore) -> None:
    accounts.create("example.org", "alice", PASSWORD)
    accounts.set_password("example.org", "alice", PASSWORD + "-changed")
    accounts.storage.env.sync(True)
    data = b"".join(p.read_bytes() for p in (tmp_path / "data" / "db").iterdir())
    assert b"example.org\0alice" in data  # the record is really in these files
    for encoding in ("utf-8", "utf-16-le", "utf-16-be"):
        assert PASSWORD.encode(encoding) not in data
    assert b"unique-marker" not in data


def test_check_password(accounts: AccountStore) -> None:
    accounts.create("example.org", "alice", PASSWORD)
    assert accounts.check_password("example.org", "alice", PASSWORD)
    assert not accounts.check_password("example.org", "alice", PASSWORD + "x")
    assert not accounts.check_password("example.org", "alice", "")
    assert not accounts.check_password("example.org", "nobody", PASSWORD)
    accounts.set_password("example.org", "alice", "new secret")
    assert accounts.check_password("example.org", "alice", "new secret")
    assert not accounts.check_password("example.org", "alice", PASSWORD)


def test_check_password_applies_saslprep(accounts: AccountStore) -> None:
    # RFC 4013: a non-ASCII space maps to an ASCII space, in SCRAM and PLAIN alike.
    accounts.create("example.org", "alice", "pass word")
    assert accounts.check_password("example.org", "alice", "pass\u00a0word")


def test_empty_password_is_refused(accounts: AccountStore) -> None:
    with pytest.raises(ValueError):
        accounts.create("example.org", "alice", "")
    assert not accounts.exists("example.org", "alice")
    accounts.create("example.org", "alice", "pw")
    with pytest.raises(ValueError):
        accounts.set_password("example.org", "alice", "")
    assert accounts.check_password("example.org", "alice", "pw")


def test_scram_auth_info_unknown(accounts: AccountStore) -> None:
    assert accounts.scram_auth_info("example.org", "nobody", "SCRAM-SHA-256") is None
    accounts.create("example.org", "alice", "pw")
    assert accounts.scram_auth_info("example.org", "alice", "SCRAM-MD5") is None


def _scram_exchange(accounts: AccountStore, mechanism: str, user: str, password: str) -> None:
    """A full RFC 5802 exchange: scramp client against a scramp server fed by the store."""

    def auth_fn(username: str) -> tuple[bytes, bytes, bytes, int]:
        info = accounts.scram_auth_info("example.org", username, mechanism)
        assert info is not None
        return info

    server = ScramMechanism(mechanism).make_server(auth_fn)
    client = ScramClient([mechanism], user, password)
    server.set_client_first(client.get_client_first())
    client.set_server_first(server.get_server_first())
    server.set_client_final(client.get_client_final())
    client.set_server_final(server.get_server_final())  # verifies the ServerSignature


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-1", "SCRAM-SHA-256"])
def test_scram_exchange(accounts: AccountStore, mechanism: str) -> None:
    accounts.create("example.org", "alice", PASSWORD)
    _scram_exchange(accounts, mechanism, "alice", PASSWORD)
    with pytest.raises(ScramException):
        _scram_exchange(accounts, mechanism, "alice", "wrong password")


def test_scram_exchange_after_password_change(accounts: AccountStore) -> None:
    accounts.create("example.org", "alice", "old")
    accounts.set_password("example.org", "alice", "new")
    _scram_exchange(accounts, "SCRAM-SHA-256", "alice", "new")
    with pytest.raises(ScramException):
        _scram_exchange(accounts, "SCRAM-SHA-256", "alice", "old")


def test_configured_iterations_are_used(storage: Storage) -> None:
    accounts = AccountStore(storage, iterations=5000)
    assert accounts.iterations == 5000
    accounts.create("example.org", "alice", "pw")
    info = accounts.scram_auth_info("example.org", "alice", "SCRAM-SHA-1")
    assert info is not None and info[3] == 5000
    assert accounts.check_password("example.org", "alice", "pw")


def test_second_server_lock_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with ServerLock(data_dir):
        assert (data_dir / "server.lock").read_text().strip() == str(os.getpid())
        with pytest.raises(DataDirLocked) as refused:
            ServerLock(data_dir).acquire()
        message = str(refused.value)
        assert str(data_dir) in message and f"pid {os.getpid()}" in message
    # Released: the next server gets it.
    lock = ServerLock(data_dir)
    lock.acquire()
    lock.release()
    lock.release()  # idempotent


def test_lock_held_by_another_process(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-P",  # the installed package, not the source tree in the current directory
            "-c",
            "import sys, pathlib; from fastxmpp.storage.lmdb_store import ServerLock; "
            "ServerLock(pathlib.Path(sys.argv[1])).acquire(); print('locked', flush=True); "
            "sys.stdin.read()",
            str(data_dir),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(DataDirLocked, match=f"pid {holder.pid}"):
            ServerLock(data_dir).acquire()
    finally:
        holder.communicate("", timeout=20)
    # The holder exited: the kernel dropped its lock.
    with ServerLock(data_dir):
        pass


def test_account_written_by_another_process_is_seen(storage: Storage, tmp_path: Path) -> None:
    # The server keeps the environment open while `fastxmpp adduser` writes from another process.
    accounts = AccountStore(storage)
    assert not accounts.exists("example.org", "alice")
    subprocess.run(
        [
            sys.executable,
            "-P",  # the installed package, not the source tree in the current directory
            "-c",
            "import sys, pathlib; from fastxmpp.storage.lmdb_store import Storage; "
            "from fastxmpp.storage.accounts import AccountStore; "
            "s = Storage(pathlib.Path(sys.argv[1]), 1 << 24); "
            "AccountStore(s).create('example.org', 'alice', 'pw'); s.close()",
            str(tmp_path / "data"),
        ],
        check=True,
        timeout=60,
    )
    assert accounts.check_password("example.org", "alice", "pw")


def test_a_full_map_grows_and_nothing_is_lost(tmp_path: Path) -> None:
    # A map of 64 KiB fills after a few records; writes keep succeeding as the map doubles.
    storage = Storage(tmp_path / "data", map_size=1 << 16)
    db = storage.database("growth")
    value = os.urandom(2000)
    for i in range(500):
        storage.write(lambda txn, i=i: txn.put(f"k{i:04}".encode(), value), db=db)
    assert storage.env.info()["map_size"] > 1 << 16
    with storage.env.begin(db=db) as txn:
        assert sum(1 for _ in txn.cursor()) == 500
        assert txn.get(b"k0000") == value and txn.get(b"k0499") == value
    storage.close()
    # Reopened with the configured (smaller) size, LMDB keeps the grown map.
    reopened = Storage(tmp_path / "data", map_size=1 << 16)
    with reopened.env.begin(db=reopened.database("growth")) as txn:
        assert txn.get(b"k0499") == value
    reopened.close()


def test_write_returns_the_result_and_retries_from_the_start(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "data", map_size=1 << 16)
    db = storage.database("retry")
    attempts = []

    def work(txn: Any) -> int:
        attempts.append(1)
        for i in range(40):  # about 80 KB: more than the first map holds
            txn.put(f"r{i}".encode(), os.urandom(2000))
        return len(attempts)

    assert storage.write(work, db=db) == len(attempts) >= 2
    with storage.env.begin(db=db) as txn:
        assert sum(1 for _ in txn.cursor()) == 40
    storage.close()


def test_an_io_error_at_commit_with_free_space_is_fatal(tmp_path: Path) -> None:
    """LMDB reports EIO as a bare lmdb.Error. On a disk with free space it is the disk
    failing: StorageFailed, the owner told once, every later write refused. (On a full disk,
    where a short page write surfaces as EIO, it is StorageFull: test_durability.py.) Other
    LMDB errors stay what they are."""
    storage = Storage(tmp_path / "data", map_size=1 << 16)
    db = storage.database("eio")
    told: list[str] = []
    storage.on_failure = told.append

    def failing(message: str) -> Any:
        def work(txn: Any) -> None:
            txn.put(b"k", b"v")
            raise lmdb.Error(message)

        return work

    with pytest.raises(lmdb.Error) as other:
        storage.write(failing("mdb_put: something else"), db=db)
    assert not isinstance(other.value, (StorageFull, StorageFailed))
    with pytest.raises(StorageFailed, match="Input/output error"):
        storage.write(failing(f"mdb_txn_commit: {os.strerror(errno.EIO)}"), db=db)
    with pytest.raises(StorageFailed):
        storage.write(lambda txn: txn.put(b"k", b"v"), db=db)
    assert len(told) == 1 and "Input/output error" in told[0]
    with storage.env.begin(db=db) as txn:
        assert txn.get(b"k") is None  # no write happened
    storage.close()


def test_a_schema_version_is_stamped_and_a_newer_one_refused(tmp_path: Path) -> None:
    """New or unversioned data gets this version's schema; data of a newer schema is refused
    by the library, the server and the command line, with a message saying what to do."""
    data = tmp_path / "data"
    with Storage(data) as storage:
        assert storage.schema == SCHEMA_VERSION
        meta = storage.database("meta")
        with storage.env.begin(db=meta) as txn:
            assert bytes(txn.get(b"schema")) == str(SCHEMA_VERSION).encode()
        # As round 1 left it: no version at all. Opening stamps it, changing nothing else.
        storage.write(lambda txn: txn.delete(b"schema"), db=meta)
        storage.write(lambda txn: txn.put(b"k", b"v"), db=storage.database("kept"))
    with Storage(data) as storage:
        meta = storage.database("meta")
        with storage.env.begin(db=meta) as txn:
            assert bytes(txn.get(b"schema")) == str(SCHEMA_VERSION).encode()
        with storage.env.begin(db=storage.database("kept")) as txn:
            assert bytes(txn.get(b"k")) == b"v"
        newer = str(SCHEMA_VERSION + 1).encode()
        storage.write(lambda txn: txn.put(b"schema", newer), db=meta)
    with pytest.raises(SchemaTooNew, match="written by a newer fastxmpp"):
        Storage(data)

    config = tmp_path / "fastxmpp.toml"
    config.write_text(
        f'[server]\ndata_dir = "{data}"\n\n[[listeners]]\nkind = "c2s"\n'
        'address = "127.0.0.1"\nport = 0\n\n[hosts."localhost"]\n'
    )
    for command in (["serve"], ["adduser", "x@localhost", "--password-stdin"]):
        result = subprocess.run(
            [*FASTXMPP, *command, "--config", str(config)],
            input="pw\n",
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode != 0, command
        assert "written by a newer fastxmpp" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
