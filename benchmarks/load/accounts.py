"""Benchmark accounts written straight into a stopped fastxmpp's data directory.

In-band registration (what `--provision` does) and `fastxmpp adduser` both derive SCRAM
credentials (PBKDF2, a few ms) and commit once per account: minutes for 100 000 accounts.
Here the accounts are created through fastxmpp's own AccountStore, so that the records are
exactly what the server reads, but their credentials are derived once (every benchmark
account has the same password) and all of them go into one LMDB transaction.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from fastxmpp.storage.accounts import DATABASE, AccountExists, AccountStore
from fastxmpp.storage.lmdb_store import Storage


class _OneTransaction:
    """The part of Storage that AccountStore uses (database, write, env), with every write
    going into the one open transaction `txn`."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.txn: Any = None

    def database(self, name: str, txn: Any = None) -> Any:
        return self.storage.database(name, txn)

    @property
    def env(self) -> Any:
        return self.storage.env

    def write(self, work: Any, db: Any = None) -> Any:
        assert self.txn is not None, "write outside the batch transaction"
        return work(self.txn)


class _SamePassword(AccountStore):
    """Derives the credentials of a password once (same salt for every account: fine for
    load accounts, never for real ones)."""

    @functools.cache  # noqa: B019 - one store per provisioning run, then dropped
    def _credentials(self, password: str) -> dict[str, list[Any]]:
        return super()._credentials(password)


def write_accounts(data_dir: Path, domain: str, prefix: str, count: int, password: str) -> int:
    """Accounts prefix0..prefix{count-1}@domain; the number newly created (existing ones are
    kept). The server must not be running (it caches nothing about absent accounts today,
    but a running server is not what this is for)."""
    with Storage(data_dir) as storage:
        batch = _OneTransaction(storage)
        accounts = _SamePassword(batch, iterations=4096)  # type: ignore[arg-type]
        created = 0
        with storage.env.begin(db=storage.database(DATABASE), write=True) as txn:
            batch.txn = txn
            for i in range(count):
                try:
                    accounts.create(domain, f"{prefix}{i}", password)
                except AccountExists:
                    continue
                created += 1
    return created


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -P -m benchmarks.load.accounts",
        description="Write benchmark accounts into a stopped fastxmpp's data directory.",
    )
    parser.add_argument("data_dir", type=Path, help="the server's [server] data_dir")
    parser.add_argument("count", type=int)
    parser.add_argument("--domain", default="localhost")
    parser.add_argument("--prefix", default="bench")
    parser.add_argument("--password", default="bench-password")
    args = parser.parse_args(argv)
    created = write_accounts(args.data_dir, args.domain, args.prefix, args.count, args.password)
    print(f"{created} accounts created ({args.count - created} existed)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
