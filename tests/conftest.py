"""Fixtures: a test CA (trustme) and real fastxmpp servers started as child processes on an
ephemeral loopback port with a temporary data directory."""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from xmpp_raw import RawClient

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery staple"
# The installed fastxmpp's command line. -P: the current directory does not go first on
# sys.path, so the source tree cannot shadow the installed package.
FASTXMPP = (sys.executable, "-P", "-m", "fastxmpp.cli")
# Set to test an in-place build of the source tree (quick iteration); `make test`, and so CI,
# never sets it: the suite runs against the package as pip installed it.
SOURCE_TREE_ALLOWED = "FASTXMPP_TEST_SOURCE_TREE"


def pytest_configure(config: pytest.Config) -> None:
    import fastxmpp

    location = Path(fastxmpp.__file__).resolve()
    if location.is_relative_to(REPO / "fastxmpp") and not os.environ.get(SOURCE_TREE_ALLOWED):
        raise pytest.UsageError(
            f"fastxmpp was imported from the source tree ({location}), not from an installed "
            "package: run `make test` (it installs the package, then runs "
            "`python -P -m pytest`), or set FASTXMPP_TEST_SOURCE_TREE=1 to test an in-place "
            "or editable build on purpose"
        )


def pytest_report_header(config: pytest.Config) -> str:
    import fastxmpp

    return f"fastxmpp under test: {Path(fastxmpp.__file__).parent}"


LISTENING = re.compile(r"c2s listening on ([\d.]+):(\d+)")
DIRECT_TLS_LISTENING = re.compile(r"c2s \(direct TLS\) listening on ([\d.]+):(\d+)")


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def run_cli(
    *args: str,
    config: Path,
    stdin: str | None = None,
    command: tuple[str, ...] = FASTXMPP,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command, *args, "--config", str(config)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=config.parent,
        env=env,
    )


class ServerProcess:
    """One fastxmpp server: config file, data dir, child process, its log."""

    def __init__(
        self,
        root: Path,
        ca: trustme.CA,
        hosts: tuple[str, ...],
        extra_toml: str = "",
        command: tuple[str, ...] = FASTXMPP,
        env: dict[str, str] | None = None,
        subdomains: tuple[str, ...] = (),
    ) -> None:
        """`subdomains`: labels of service domains (e.g. "conference") each host's
        certificate names too, as <label>.<host>."""
        self.root = root
        self.command = command  # the fastxmpp command line to run (an installed wheel's)
        self.env = env
        root.mkdir(parents=True, exist_ok=True)
        self.data_dir = root / "data"
        self.config = root / "fastxmpp.toml"
        self.hosts = hosts
        lines = [
            "[server]",
            f'data_dir = "{self.data_dir}"',
            'log_level = "debug"',
            "",
            "[[listeners]]",
            'kind = "c2s"',
            'address = "127.0.0.1"',
            "port = 0",
            "",
        ]
        for host in hosts:
            cert = ca.issue_cert(host, *(f"{label}.{host}" for label in subdomains))
            cert_path, key_path = root / f"{host}.crt", root / f"{host}.key"
            cert.cert_chain_pems[0].write_to_path(str(cert_path))
            for extra in cert.cert_chain_pems[1:]:
                extra.write_to_path(str(cert_path), append=True)
            cert.private_key_pem.write_to_path(str(key_path))
            lines += [f'[hosts."{host}"]', f'cert = "{cert_path}"', f'key = "{key_path}"', ""]
        self.config.write_text("\n".join(lines) + "\n" + extra_toml)
        self.proc: subprocess.Popen[str] | None = None
        self.reader: threading.Thread | None = None
        self.port = 0
        self.direct_tls_port = 0  # a `tls = "direct"` listener's (XEP-0368), if configured
        self.log: list[str] = []

    def adduser(self, jid: str, password: str = PASSWORD) -> None:
        result = run_cli(
            "adduser",
            jid,
            "--password-stdin",
            config=self.config,
            stdin=password,
            command=self.command,
            env=self.env,
        )
        assert result.returncode == 0, result.stderr

    def start(self) -> None:
        self.log = []
        self.proc = subprocess.Popen(
            [*self.command, "serve", "--config", str(self.config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=self.root,
            env=self.env,
        )
        found = threading.Event()

        def reader() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.log.append(line)
                if direct := DIRECT_TLS_LISTENING.search(line):
                    self.direct_tls_port = int(direct.group(2))
                match = LISTENING.search(line)
                if match and not found.is_set():
                    self.port = int(match.group(2))
                    found.set()
            found.set()

        self.reader = threading.Thread(target=reader, daemon=True)
        self.reader.start()
        if not found.wait(30) or not self.port:
            self.stop()
            raise RuntimeError("server did not start:\n" + "".join(self.log))

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(5)
        self.proc = None
        if self.reader is not None:
            self.reader.join(5)  # everything the server wrote is in the log now
        return code

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self) -> RawClient:
        return RawClient(self.port)

    def log_text(self) -> str:
        return "".join(self.log)

    def wait_for_log(self, text: str, timeout: float = 10.0) -> None:
        """Until `text` is in the log: a thread reads the server's output, so a line the
        server wrote before answering may reach us after the answer does."""
        deadline = time.monotonic() + timeout
        while text not in self.log_text():
            assert time.monotonic() < deadline, f"{text!r} not logged:\n{self.log_text()}"
            time.sleep(0.02)


@pytest.fixture(scope="module")
def server(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A shared server for a test module: hosts localhost and example.test."""
    # Many tests of a module fail logins on purpose from one address: the password-guessing
    # back-off (tested on its own in test_limits.py) would slow them all down.
    relaxed = (
        "[limits]\nauth_free_failures = 100000\nauth_failures_per_ip = 100000\n"
        "auth_failures_per_account = 100000\n"
    )
    srv = ServerProcess(
        tmp_path_factory.mktemp("server"), ca, ("localhost", "example.test"), relaxed
    )
    for user in ("alice", "bob", "carol", "dave"):
        srv.adduser(f"{user}@localhost")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def make_server(ca: trustme.CA, tmp_path: Path) -> Iterator[Any]:
    """Start a server of one's own (for configuration variants, restarts, signals)."""
    started: list[ServerProcess] = []

    def factory(extra_toml: str = "", hosts: tuple[str, ...] = ("localhost",)) -> ServerProcess:
        srv = ServerProcess(tmp_path / f"s{len(started)}", ca, hosts, extra_toml)
        started.append(srv)
        return srv

    yield factory
    for srv in started:
        srv.stop()


def add_accounts(srv: ServerProcess, names: list[str]) -> None:
    """Create accounts in-process (the CLI's adduser is a process per account)."""
    from fastxmpp.storage.accounts import AccountStore
    from fastxmpp.storage.lmdb_store import Storage

    with Storage(srv.data_dir) as storage:
        accounts = AccountStore(storage, iterations=4096)
        for name in names:
            accounts.create("localhost", name, PASSWORD)


def module_server(
    ca: trustme.CA,
    tmp_path_factory: pytest.TempPathFactory,
    pool: FreshNames,
    extra_toml: str = "",
) -> Iterator[ServerProcess]:
    """For a module-scoped fixture: a server of the module's own, host localhost, with the
    accounts of `pool`, started, and stopped when the module is done."""
    srv = ServerProcess(tmp_path_factory.mktemp(pool.prefix), ca, ("localhost",), extra_toml)
    add_accounts(srv, [f"{pool.prefix}{i}" for i in range(pool.count)])
    srv.start()
    yield srv
    srv.stop()


class FreshNames:
    """Account names prefix0..prefix{count-1}, each handed out once per test session, so that
    no test sees what an earlier one left in an account."""

    def __init__(self, prefix: str, count: int) -> None:
        self.prefix = prefix
        self.count = count
        self._next = itertools.count()

    def names(self) -> Iterator[str]:
        while True:
            n = next(self._next)
            assert n < self.count, f"more than {self.count} {self.prefix}* accounts: raise it"
            yield f"{self.prefix}{n}"


@pytest.fixture
def clients() -> Iterator[list[RawClient]]:
    """Raw clients a test opens; closed after it."""
    opened: list[RawClient] = []
    yield opened
    for c in opened:
        c.close()


def assert_still_serving(srv: ServerProcess, ca_file: str, user: str = "alice") -> None:
    """After hostile input: the process is alive and a fresh client logs in and gets a ping."""
    assert srv.alive(), srv.log_text()
    c = srv.client()
    try:
        jid = c.login(ca_file, user, PASSWORD)
        assert jid.startswith(f"{user}@localhost/")
        c.send("<iq type='get' id='still'><ping xmlns='urn:xmpp:ping'/></iq>")
        reply = c.next()
        # XEP-0199: the server answers its pings with an empty result.
        assert reply.get("id") == "still" and reply.get("type") == "result"
    finally:
        c.close()


os.environ.setdefault("PYTHONUNBUFFERED", "1")
