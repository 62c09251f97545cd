"""The `fastxmpp` command: run the server, manage accounts, check configuration, make
certificates. Expected failures print one line on stderr and exit non-zero, without a traceback.
"""

from __future__ import annotations

import argparse
import getpass
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import lmdb

from . import __version__
from .certs import generate_self_signed
from .config import Config, ConfigError, check_config, load_config, source_name
from .jid import JIDError, normalize_domain, parse_jid
from .storage.accounts import AccountError, AccountStore
from .storage.backup import BackupError, backup, restore
from .storage.lmdb_store import DataDirLocked, SchemaTooNew, ServerLock, Storage


class CommandError(Exception):
    """An expected failure of a command: its message is all the user needs to see."""


def _config(args: argparse.Namespace, *, check_files: bool = False) -> Config:
    return load_config(args.config, check_files=check_files)


def _account_jid(text: str, config: Config) -> tuple[str, str]:
    """(domain, localpart) of a bare JID on one of the configured hosts."""
    try:
        jid = parse_jid(text)
    except JIDError as exc:
        raise CommandError(str(exc)) from None
    if jid.resource:
        raise CommandError(f"{text}: give a bare JID (user@domain), without a /resource")
    if not jid.local:
        raise CommandError(f"{text}: an account JID needs a user part (user@domain)")
    if jid.domain not in config.hosts:
        hosts = ", ".join(config.hosts)
        raise CommandError(f"{jid.domain} is not a configured host (configured: {hosts})")
    return jid.domain, jid.local


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
    else:
        try:
            password = getpass.getpass("Password: ")
            if getpass.getpass("Repeat password: ") != password:
                raise CommandError("the passwords do not match")
        except (EOFError, KeyboardInterrupt):
            raise CommandError("no password given") from None
    if not password:
        raise CommandError("the password must not be empty")
    return password


def _accounts(config: Config) -> tuple[Storage, AccountStore]:
    try:
        storage = Storage(config.data_dir, config.storage.map_size)
    except (OSError, lmdb.Error) as exc:
        raise CommandError(f"cannot open the data directory {config.data_dir}: {exc}") from None
    return storage, AccountStore(storage, config.storage.scram_iterations)


def cmd_serve(args: argparse.Namespace) -> int:
    config = _config(args, check_files=True)
    # Imported here: the other commands must work without loading the compiled core.
    try:
        from .server import run
    except ImportError as exc:
        # A broken installation (a file missing from the wheel, an extension that does not
        # load): one line naming what is missing, not a traceback.
        raise CommandError(
            f"cannot load the server ({type(exc).__name__}: {exc}); reinstall fastxmpp"
        ) from exc

    return run(config)


def cmd_adduser(args: argparse.Namespace) -> int:
    config = _config(args)
    domain, local = _account_jid(args.jid, config)
    password = _read_password(args)
    storage, accounts = _accounts(config)
    with storage:
        accounts.create(domain, local, password)
    print(f"account {local}@{domain} created")
    return 0


def cmd_passwd(args: argparse.Namespace) -> int:
    config = _config(args)
    domain, local = _account_jid(args.jid, config)
    storage, accounts = _accounts(config)
    with storage:
        # Ask for the new password only for an account that exists.
        if not accounts.exists(domain, local):
            raise CommandError(f"no account {local}@{domain}")
        accounts.set_password(domain, local, _read_password(args))
    print(f"password of {local}@{domain} changed")
    return 0


def cmd_deluser(args: argparse.Namespace) -> int:
    config = _config(args)
    domain, local = _account_jid(args.jid, config)
    storage, accounts = _accounts(config)
    with storage:
        accounts.delete(domain, local)
    print(f"account {local}@{domain} deleted")
    return 0


def cmd_listusers(args: argparse.Namespace) -> int:
    config = _config(args)
    try:
        domain = None if args.domain is None else normalize_domain(args.domain)
    except JIDError as exc:
        raise CommandError(str(exc)) from None
    storage, accounts = _accounts(config)
    with storage:
        for account_domain, local in accounts.list(domain):
            print(f"{local}@{account_domain}")
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    config = _config(args)
    try:
        manifest = backup(config.data_dir, args.destination, __version__)
    except (OSError, lmdb.Error) as exc:
        raise CommandError(f"backup of {config.data_dir} failed: {exc}") from None
    print(
        f"backup of {config.data_dir} written to {args.destination} "
        f"({manifest['bytes']} bytes, {manifest['created']})"
    )
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    config = _config(args)
    try:
        # The server must be stopped: its lock is held for the whole restore, so that no
        # server starts on half-restored data either.
        with ServerLock(config.data_dir):
            aside = restore(args.source, config.data_dir)
    except DataDirLocked as exc:
        raise CommandError(f"{exc}; restore only into a stopped server") from None
    except (OSError, lmdb.Error) as exc:
        raise CommandError(f"restore of {args.source} failed: {exc}") from None
    print(f"restored {args.source} into {config.data_dir}")
    if aside is not None:
        print(f"the data that was there is kept in {aside}")
    return 0


def cmd_quarantine(args: argparse.Namespace) -> int:
    """The records Storage.decode set aside, one line each: when, database, key, size,
    why (the bytes themselves stay in the quarantine database)."""
    config = _config(args)
    storage, _ = _accounts(config)
    with storage:
        records = storage.quarantined()
    for record in records:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.when))
        print(f"{when} {record.database} {record.key!r} {len(record.raw)} bytes: {record.reason}")
    if not records:
        print("no quarantined records")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """XEP-0227 files (another server's export) into a stopped server's data directory."""
    from .portable import Importer, PortableError, users

    config = _config(args)
    try:
        with ServerLock(config.data_dir):
            for path in args.files:  # every file read once before anything is written
                for _ in users(path):
                    pass
            storage, _ = _accounts(config)
            with storage:
                importer = Importer(config, storage)
                for path in args.files:
                    print(f"importing {path}")
                    importer.run(path)
    except DataDirLocked as exc:
        raise CommandError(f"{exc}; import only into a stopped server") from None
    except PortableError as exc:
        raise CommandError(str(exc)) from None
    for line in importer.finish().lines():
        print(line)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Every account of the configured hosts (or those named) into one XEP-0227 file."""
    from .portable import export

    config = _config(args)
    hosts = list(config.hosts) if not args.host else args.host
    unknown = [host for host in hosts if host not in config.hosts]
    if unknown:
        raise CommandError(f"{unknown[0]} is not a configured host")
    if args.destination.exists():
        raise CommandError(f"{args.destination} already exists")
    storage, _ = _accounts(config)
    try:
        with storage:
            report = export(config, storage, args.destination, hosts)
    except OSError as exc:
        raise CommandError(f"cannot write {args.destination}: {exc.strerror}") from None
    print(f"exported to {args.destination} (readable by its owner only)")
    for line in report.lines():
        print(line)
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    problems = check_config(args.config)
    if problems:
        source = source_name(args.config)
        for problem in problems:
            print(problem.format(source), file=sys.stderr)
        return 1
    config = _config(args)
    print(
        f"configuration OK: {_count(len(config.hosts), 'host')}, "
        f"{_count(len(config.listeners), 'listener')}"
    )
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    """Check the configuration, then have the server running on its data directory read it
    again (SIGHUP, which a service manager can send as well: `ExecReload=` in systemd)."""
    problems = check_config(args.config)
    if problems:
        source = source_name(args.config)
        for problem in problems:
            print(problem.format(source), file=sys.stderr)
        raise CommandError("not reloaded: the configuration has problems")
    config = _config(args)
    pid = ServerLock(config.data_dir).holder()
    if pid is None:
        raise CommandError(f"no server is running on {config.data_dir}")
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        raise CommandError(f"cannot signal the server (pid {pid}): {exc.strerror}") from None
    print(f"server (pid {pid}) told to reload; its log says what changed")
    return 0


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def cmd_gencert(args: argparse.Namespace) -> int:
    try:
        domain = normalize_domain(args.domain)
    except JIDError as exc:
        raise CommandError(str(exc)) from None
    if args.days < 1:
        raise CommandError("--days must be at least 1")
    out: Path = args.out if args.out is not None else _config(args).data_dir / "certs"
    cert, key = out / f"{domain}.crt", out / f"{domain}.key"
    existing = [str(path) for path in (cert, key) if path.exists()]
    if existing and not args.force:
        raise CommandError(f"{' and '.join(existing)} already exist (--force replaces them)")
    try:
        generate_self_signed(domain, cert, key, days=args.days)
    except OSError as exc:
        raise CommandError(f"cannot write {exc.filename}: {exc.strerror}") from None
    print(f"certificate: {cert}\nkey:         {key}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastxmpp", description="A fast XMPP server.")
    parser.add_argument("--version", action="version", version=f"fastxmpp {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML configuration file (default: the embedded default configuration)",
    )
    password = argparse.ArgumentParser(add_help=False)
    password.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input instead of prompting",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str,
        handler: Callable[[argparse.Namespace], int],
        help_text: str,
        *parents: argparse.ArgumentParser,
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name, help=help_text, description=help_text, parents=[common, *parents]
        )
        sub.set_defaults(handler=handler)
        return sub

    command("serve", cmd_serve, "run the server until SIGTERM/SIGINT")
    command("adduser", cmd_adduser, "create an account", password).add_argument(
        "jid", metavar="JID", help="user@domain"
    )
    command("passwd", cmd_passwd, "change an account's password", password).add_argument(
        "jid", metavar="JID", help="user@domain"
    )
    command("deluser", cmd_deluser, "delete an account").add_argument(
        "jid", metavar="JID", help="user@domain"
    )
    command("listusers", cmd_listusers, "list accounts").add_argument(
        "domain", metavar="DOMAIN", nargs="?", help="only the accounts of this domain"
    )
    command(
        "backup", cmd_backup, "copy the data of a running or stopped server to a new directory"
    ).add_argument("destination", metavar="DEST", type=Path, help="a directory to create")
    command(
        "restore", cmd_restore, "put a backup in place as the data of a stopped server"
    ).add_argument("source", metavar="SRC", type=Path, help="a directory made by backup")
    command(
        "quarantine", cmd_quarantine, "list the stored records set aside as corrupt"
    ).add_argument("action", choices=["list"], help="list: one line per record")
    command(
        "import",
        cmd_import,
        "add the accounts of XEP-0227 files (Prosody's or ejabberd's export) to a stopped server",
    ).add_argument("files", metavar="FILE", type=Path, nargs="+", help="XEP-0227 XML files")
    export_command = command(
        "export", cmd_export, "write every account's data into one XEP-0227 file"
    )
    export_command.add_argument("destination", metavar="FILE", type=Path, help="a new file")
    export_command.add_argument(
        "--host", action="append", metavar="DOMAIN", help="only this host (repeatable)"
    )
    command("check-config", cmd_check_config, "report every problem in a configuration")
    command(
        "reload",
        cmd_reload,
        "have the running server load its certificates and log level again",
    )
    gencert = command("gencert", cmd_gencert, "write a self-signed certificate and key")
    gencert.add_argument("domain", metavar="DOMAIN")
    gencert.add_argument(
        "--out", type=Path, metavar="DIR", help="output directory (default: data_dir/certs)"
    )
    gencert.add_argument("--days", type=int, default=365, help="validity (default: 365)")
    gencert.add_argument("--force", action="store_true", help="replace existing files")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else 1
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
    except (CommandError, AccountError, BackupError, SchemaTooNew) as exc:
        print(f"fastxmpp {args.command}: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"fastxmpp {args.command}: interrupted", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
