"""Runs the independent client implementations of tests/test_interop_*.py: aioxmpp (in its own
virtual environment), go-sendxmpp, sendxmpp, libstrophe and QXmpp (Debian; libstrophe and
QXmpp through a C and a C++ harness compiled at test time), xmpp.js (under node) and nbxmpp
(Debian, under Debian's own Python). `make test` installs them all (`make interop-deps`); a
test whose client is missing fails and says how to install it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

CLIENT = "jabber:client"
REPO = Path(__file__).resolve().parent.parent
AIOXMPP_PYTHON = REPO / ".venv-aioxmpp" / "bin" / "python"
AIOXMPP_SCENARIOS = REPO / "tests" / "interop" / "aioxmpp" / "scenarios.py"
JS_DIR = REPO / "tests" / "interop" / "js"
JS_SCENARIOS = JS_DIR / "scenarios.mjs"
# nbxmpp (Gajim's library) is packaged for Debian's Python, with PyGObject and GLib.
SYSTEM_PYTHON = Path("/usr/bin/python3")
NBXMPP_SCENARIOS = REPO / "tests" / "interop" / "nbxmpp" / "scenarios.py"
INSTALL = "`make interop-deps` installs it (`make test` runs that first)"


def require(present: bool, what: str) -> None:
    if not present:
        pytest.fail(f"{what} is missing: {INSTALL}", pytrace=False)


def require_command(name: str, what: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"{what} (command `{name}`)")
    assert path is not None
    return path


def require_aioxmpp() -> str:
    require(AIOXMPP_PYTHON.exists(), f"aioxmpp's virtual environment ({AIOXMPP_PYTHON})")
    return str(AIOXMPP_PYTHON)


def require_xmppjs() -> str:
    node = require_command("node", "node (nodejs)")
    require(
        (JS_DIR / "node_modules" / "@xmpp" / "client").is_dir(),
        f"xmpp.js ({JS_DIR / 'node_modules'})",
    )
    return node


def require_nbxmpp() -> str:
    present = SYSTEM_PYTHON.exists() and (
        subprocess.run(
            [str(SYSTEM_PYTHON), "-c", "import gi, nbxmpp"], capture_output=True
        ).returncode
        == 0
    )
    require(present, f"nbxmpp (Debian packages python3-nbxmpp, python3-gi for {SYSTEM_PYTHON})")
    return str(SYSTEM_PYTHON)


def run(
    command: list[str],
    env: dict[str, str] | None = None,
    timeout: float = 60,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


def run_json(command: list[str], env: dict[str, str] | None = None, timeout: float = 60) -> Any:
    """Run a scenario; what it prints last on stdout is its JSON report."""
    done = run(command, env, timeout)
    if done.returncode != 0:
        pytest.fail(
            f"{command[0]} {' '.join(command[1:3])} failed (exit {done.returncode}):\n"
            f"{done.stderr}\n{done.stdout}",
            pytrace=False,
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- what the tests of command-line clients share: a raw client beside them -----------------

# XEP-0368 direct TLS beside the STARTTLS listener (sendxmpp -e, libstrophe's legacy SSL).
DIRECT_TLS_LISTENER = (
    '[[listeners]]\nkind = "c2s"\naddress = "127.0.0.1"\nport = 0\ntls = "direct"\n'
)


def direct_tls_server(
    ca: Any, tmp_path_factory: Any, pool: Any, extra_toml: str = ""
) -> Iterator[Any]:
    """For a module-scoped fixture: conftest's `module_server` with a direct TLS listener
    beside the STARTTLS one, yielded once both listen."""
    from conftest import module_server

    for server in module_server(ca, tmp_path_factory, pool, DIRECT_TLS_LISTENER + extra_toml):
        server.wait_for_log("c2s (direct TLS) listening on")
        yield server


def raw_login(srv: Any, ca_file: str, user: str, opened: list[Any]) -> Any:
    """A RawClient (tests/xmpp_raw.py) logged in as `user`, resource "raw"; added to
    `opened` (conftest's `clients`, closed after the test)."""
    from conftest import PASSWORD

    client = srv.client()
    opened.append(client)
    client.login(ca_file, user, PASSWORD, "raw")
    return client


def asking_to_subscribe(srv: Any, ca_file: str, asker: str, user: str, opened: list[Any]) -> Any:
    """`asker` logged in, available, and asking `user`@localhost for its presence (RFC 6121
    §3.1.1): the client under test gets the request; the asker's RawClient."""
    client = raw_login(srv, ca_file, asker, opened)
    client.send("<presence/>")
    client.send(f"<presence to='{user}@localhost' type='subscribe'/>")
    return client


def approved_and_present(
    asker: Any, user: str, client_jid: str, who: str, seconds: float = 10.0
) -> None:
    """The request `asking_to_subscribe` made approved by `user`@localhost (§3.1.4), and
    the presence of its client `client_jid` following it (§3.1.5), as `asker` sees them."""
    approved = wait_for(
        asker, "the approval", lambda el: el.get("type") == "subscribed", seconds=seconds
    )
    assert approved.get("from") == f"{user}@localhost"
    wait_for(
        asker,
        f"{who}'s presence",
        lambda el: el.tag == f"{{{CLIENT}}}presence" and el.get("from") == client_jid,
        seconds=seconds,
    )


def refused_before_sasl(srv: Any, start: int, user: str) -> str:
    """The first connection opened after `start` (an offset in the server's log) asked for
    TLS (RFC 6120 §5.4.2) and `user` never authenticated: a client that refused the
    server's certificate. The connection's port."""
    log = srv.log_text()[start:]
    # its opening line (a line of its own: "... closed (...)" lines of other tests' clients
    # may come first)
    port = re.search(r"c2s connection from 127\.0\.0\.1:(\d+)\n", log)
    assert port, log
    assert re.search(rf"127\.0\.0\.1:{port.group(1)} <<< <starttls ", log), log
    assert f"authenticated {user}@localhost" not in srv.log_text()
    return port.group(1)


def wait_for(
    client: Any,
    what: str,
    match: Callable[[Any], bool],
    bodies: list[str] | None = None,
    seconds: float = 10.0,
) -> Any:
    """The first stanza `client` gets that matches `match`, within `seconds`; the bodies of
    messages on the way go to `bodies`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        el = client.next(timeout=max(0.1, deadline - time.monotonic()))
        if bodies is not None and el.tag == f"{{{CLIENT}}}message" and body(el) is not None:
            bodies.append(body(el) or "")
        if match(el):
            return el
    raise AssertionError(f"never got {what}")


def body(el: Any) -> str | None:
    return el.findtext(f"{{{CLIENT}}}body")


class LineReader:
    """A client process whose standard output is collected line by line (`lines`) by a
    thread of its own, as it prints."""

    def __init__(self, command: list[str], **popen: Any) -> None:
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, **popen)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))


def build_harness(
    directory: Path,
    source: Path,
    compiler: tuple[str, str],
    options: list[str],
    libraries: list[str],
    what: str,
) -> str:
    """`source` compiled into `directory` with `compiler` (command, what installs it) and
    `options`, against the pkg-config `libraries` (`what` installs them); the binary's path."""
    command = require_command(compiler[0], compiler[1])
    pkg_config = require_command("pkg-config", "pkg-config (Debian package pkg-config)")
    flags = subprocess.run(
        [pkg_config, "--cflags", "--libs", *libraries], capture_output=True, text=True
    )
    require(flags.returncode == 0, what)
    out = directory / "client"
    built = subprocess.run(
        [command, *options, "-o", str(out), str(source), *flags.stdout.split()],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    return str(out)


class Harness(LineReader):
    """A compiled client harness (tests/interop/*/client.*): commands on its standard input,
    one event line per event on its standard output, its errors on standard error."""

    name = "the harness"  # in failure messages
    step = 10.0  # seconds an expected event may take

    def __init__(self, command: list[str]) -> None:
        super().__init__(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE)

    def do(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def wait(self, pattern: str, start: int = 0) -> re.Match[str]:
        """The first event line from index `start` on matching `pattern` (a regex)."""
        deadline = time.monotonic() + self.step
        while True:
            for line in self.lines[start:]:
                if match := re.fullmatch(pattern, line):
                    return match
            assert time.monotonic() < deadline, f"{self.name} never printed {pattern!r}: {self}"
            if self.proc.poll() is not None:
                self.reader.join(2)
                if not any(re.fullmatch(pattern, line) for line in self.lines[start:]):
                    raise AssertionError(f"the harness exited before {pattern!r}: {self}")
            time.sleep(0.01)

    def finish(self) -> int:
        if self.proc.poll() is None:
            self.do("quit")
        code = self.proc.wait(self.step)
        self.reader.join(2)
        return code

    def __repr__(self) -> str:
        stderr = ""
        if self.proc.poll() is not None and self.proc.stderr is not None:
            stderr = self.proc.stderr.read()
        return f"{self.lines}\n{stderr}"


def kill_all(started: list[Any]) -> None:
    """After a test: the harness processes still running, killed."""
    for harness in started:
        if harness.proc.poll() is None:
            harness.proc.kill()
            harness.proc.wait(5)


def process_running(pid: int) -> bool:
    """The process `pid` is there and not a zombie (one nobody reaps counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def end_process(pid: int) -> None:
    """SIGTERM, then SIGKILL, to a client that outlives its terminal: Poezio and mcabber may
    stay on after tmux's SIGHUP, reconnecting for ever (a test leaves nothing running)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if process_running(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 3
        while process_running(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
