"""Dino (Debian's `dino-im` 0.4.2, a GTK 4 desktop client written in Vala, on its own XMPP
library xmpp-vala) driven as a program, with a fresh profile for each test.

How it runs: Dino has no host or port setting (it looks up the domain's SRV records and falls
back to port 5222 of the domain), so each Dino runs in network and mount namespaces of its own
(`unshare -n -m`, held open by a sleeping process and entered with `nsenter`). There port
5222 of `localhost` is a forwarder of the test's (a socket listening inside the namespace,
made by a thread that joined it with setns(2)) relaying to the module's server on the
machine's loopback: the machine's own port 5222 is never touched, and the test can break
Dino's TCP connection at will. The server's HTTPS port is forwarded the same way, under its
own number, for the XEP-0363 URLs (https://localhost:PORT/...). GLib's TLS trusts the test
CA through a CA bundle (the system's plus the test CA) bind-mounted over
/etc/ssl/certs/ca-certificates.crt in the mount namespace only. The profile is made
beforehand: Dino's SQLite database (dino.db), its schema as Dino itself creates it on a
first start without accounts, with the account's row added. The display is an Xvfb of the
test's and the session bus a dbus-daemon of each Dino's (its socket a file, reachable from
the namespace); conversations are opened with xmpp: URIs (`dino-im xmpp:...?message`, handed
to the running Dino over D-Bus once it holds its name there, as gdbus tells: before that a
second dino-im would become a second Dino), text is typed with xdotool into the conversation
Dino focuses (its /commands too), the join dialog is filled in with it, a file is picked
with Ctrl+U in GTK's file chooser, and subscription requests are answered with Dino's
application actions (org.gtk.Actions on its bus: what the buttons of its notifications
activate). Two Dinos talk OMEMO, each on a display of its own, the conversation made
beforehand in the sender's profile with OMEMO on (Dino 0.4 has no default encryption
setting).

What Dino did is checked on the other side: raw clients (tests/xmpp_raw.py), the server's
debug log (it traces every stanza in and out), and Dino's own databases (messages with their
archive ids, roster, avatars, OMEMO identity). Dino's log (`--print-xmpp`, every stanza)
and the server's are left in each test's directory.

What it showed in the server (the first two fixed on main, the third here):
- Dino never configures a room it creates (xmpp-vala 0.4 reads status 201 into
  JoinResult.newly_created and nothing reads that), so the room stayed locked for others
  (XEP-0045 §10.1.1) until `[muc] lock_timeout` opened it with the default configuration
  (§10.1.1 step 4): test_room_created_by_dino, on a server with a 1 s timeout.
- Dino asks a room occupant's vCard at the occupant JID (XEP-0153 §3.2, for the hash in the
  occupant's presence); the server forwarded that to the occupant's client, which has none to
  give; it now answers from the occupant's account:
  test_avatars_of_a_contact_and_of_a_room_occupant.
- Dino's `/affiliate NICK member` names the occupant by nick only (`<item affiliation=
  'member' nick='...'/>`); the server refused it (bad-request: §9.3 names the user by bare
  JID) where Prosody takes the occupant's account; so does the server now
  (modules/muc/admin.py; test_muc_admin.py::test_affiliation_of_an_occupant_named_by_nick,
  and here test_room_created_by_dino).

Dino 0.4.2's ways and bugs, worked around or accepted here:
- It crashes (SIGSEGV in xmpp_message_archive_management_NS_VER, a NULL MAM flag) when it
  resumes a stream whose login had not yet learned that the account has MAM (dino/dino#1405,
  #1571; fixed in 0.4.3 by commit f011adac): the resumption test breaks the connection once
  Dino's archive query is complete.
- After losing its connection it waits 10 s before connecting again (ConnectionManager.
  check_reconnect), which the resumption test waits for; after resuming it sends its initial
  presence, roster request and carbons request again (harmless).
- It asks the member, admin and owner lists of every room it enters, even as a plain
  participant (xmpp-vala's MUC module: "TODO only query that if we actually have the
  rights"); the server's forbidden (XEP-0045 §9.5, §10.5: admins and owners only) is right,
  and Dino ignores it.
- It has no XEP-0352 client state indication, so there is none to check.
- Without a window manager its join dialog maps under the main window: the test raises it
  and clicks at distances from its right edge (its width follows the room's JID)."""

from __future__ import annotations

import base64
import contextlib
import ctypes
import hashlib
import os
import re
import socket
import sqlite3
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PASSWORD, FreshNames, ServerProcess, module_server
from interop_clients import body, raw_login, require_command, wait_for
from lxml import etree
from test_avatars import User as AvatarUser
from test_avatars import png as avatar_png
from test_client_flows import Client, publish_bookmark
from test_interop_profanity import befriend, settle
from ws_client import HTTP_LISTENER, HTTPS_LISTENING, http_port
from xmpp_raw import CLIENT, RawClient

POOL = FreshNames("dn", 32)
MESSAGE = f"{{{CLIENT}}}message"
PRESENCE = f"{{{CLIENT}}}presence"
STEP = 20.0  # seconds an expected step of Dino's may take (GTK on a loaded 2-core machine)
SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
CLONE_NEWNET = 0x40000000
DINO = "dino-im"
WHAT = "Dino (Debian package dino-im)"


@pytest.fixture(scope="module")
def srv(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # an HTTPS listener: with it the XEP-0363 upload service upload.localhost exists
    for server in module_server(ca, tmp_path_factory, POOL, HTTP_LISTENER + 'tls = "direct"\n'):
        http_port(server, https=True)  # listening before a Dino looks for it
        yield server


@pytest.fixture
def names() -> Iterator[str]:
    return POOL.names()


def wait_until(what: str, check: Callable[[], Any], seconds: float = STEP) -> Any:
    """`check()`'s first true value, polled until `seconds` pass."""
    deadline = time.monotonic() + seconds
    while True:
        if found := check():
            return found
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


class Namespace:
    """Network and mount namespaces held open by a sleeping process: loopback up, and the
    CA bundle given bind-mounted over the system's (the mount namespace's only)."""

    def __init__(self, bundle: Path) -> None:
        unshare = require_command("unshare", "unshare (Debian package util-linux)")
        ip = require_command("ip", "ip (Debian package iproute2)")
        self.nsenter = require_command("nsenter", "nsenter (Debian package util-linux)")
        self.holder = subprocess.Popen(
            [
                unshare,
                "-n",
                "-m",
                "--",
                "sh",
                "-c",
                # without a system bundle (no ca-certificates), a tmpfs holds the test's
                f'"{ip}" link set lo up && if [ -e "$1" ]; then mount --bind "$0" "$1"; '
                'else mount -t tmpfs tmpfs "$(dirname "$1")" && cp "$0" "$1"; fi && '
                "echo ready && exec sleep infinity",
                str(bundle),
                str(SYSTEM_BUNDLE),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.holder.stdout is not None
        ready = self.holder.stdout.readline().strip()
        assert ready == "ready", self.holder.stderr.read() if self.holder.stderr else ready

    def command(self, command: list[str]) -> list[str]:
        """`command` to run inside the namespaces."""
        return [self.nsenter, "-t", str(self.holder.pid), "-n", "-m", "--", *command]

    def listen(self, port: int) -> socket.socket:
        """A TCP socket listening on 127.0.0.1:`port` inside the network namespace: made by
        a thread that joins the namespace (setns(2) moves the calling thread only) and ends
        there; the socket stays in the namespace it was made in."""
        made: list[Any] = []

        def make() -> None:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/proc/{self.holder.pid}/ns/net", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    made.append(OSError(ctypes.get_errno(), "setns"))
                    return
            finally:
                os.close(fd)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen(8)
            made.append(sock)

        thread = threading.Thread(target=make)
        thread.start()
        thread.join()
        if isinstance(made[0], Exception):
            raise made[0]
        return made[0]

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait(5)


class Forwarder:
    """A port inside a namespace (`inside`) relayed to a port of the machine's loopback;
    `cut()` ends every relayed connection at once, as a network failure would (no closing
    tag)."""

    def __init__(self, namespace: Namespace, port: int, inside: int = 5222) -> None:
        self.listener = namespace.listen(inside)
        self.port = port
        self.links: list[socket.socket] = []
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                inside, _ = self.listener.accept()
            except OSError:
                return
            outside = socket.create_connection(("127.0.0.1", self.port))
            self.links += [inside, outside]
            self.accepted += 1
            threading.Thread(target=self._pump, args=(inside, outside), daemon=True).start()
            threading.Thread(target=self._pump, args=(outside, inside), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        for link in self.links:
            with contextlib.suppress(OSError):
                # SO_LINGER 0: a reset, not an orderly close; shutdown first, so that the
                # pump blocked in recv() on it returns (a close alone would not wake it)
                link.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                link.shutdown(socket.SHUT_RDWR)
            link.close()
        self.links.clear()

    def close(self) -> None:
        self.listener.close()
        self.cut()


class Display:
    """An Xvfb of the test's (it picks a free display number itself)."""

    def __init__(self) -> None:
        xvfb = require_command("Xvfb", "Xvfb (Debian package xvfb)")
        read, write = os.pipe()
        self.xvfb = subprocess.Popen(
            [xvfb, "-displayfd", str(write), "-screen", "0", "1280x900x24", "-nolisten", "tcp"],
            pass_fds=(write,),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(write)
        with os.fdopen(read) as displayfd:
            number = displayfd.readline().strip()
        assert number, "Xvfb did not start"
        self.display = f":{number}"

    def close(self) -> None:
        stop(self.xvfb)


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def display() -> Iterator[Display]:
    shown = Display()
    yield shown
    shown.close()


def environment(home: Path, display: Display, bus_address: str) -> dict[str, str]:
    """Dino's environment: its profile in `home`, the test's display and bus; GTK without
    the accessibility bus and with its cairo renderer (no GL on a loaded machine)."""
    return {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_RUNTIME_DIR": str(home / "run"),
        "DISPLAY": display.display,
        "DBUS_SESSION_BUS_ADDRESS": bus_address,
        "GDK_BACKEND": "x11",
        "GSK_RENDERER": "cairo",
        "NO_AT_BRIDGE": "1",
        "GTK_A11Y": "none",
        "GSETTINGS_BACKEND": "memory",
        "LANG": "C.UTF-8",
        "G_MESSAGES_DEBUG": "libdino",  # its connection's steps, in its log
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    }


def start_bus(root: Path) -> tuple[subprocess.Popen[Any], str]:
    """A session bus of Dino's own, its socket a file (reachable from a namespace)."""
    dbus = require_command("dbus-daemon", "dbus-daemon (Debian package dbus-daemon)")
    path = root / "bus"
    proc = subprocess.Popen(
        [dbus, "--session", "--nofork", "--nopidfile", f"--address=unix:path={path}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until("the session bus", path.exists, 10)
    return proc, f"unix:path={path}"


@pytest.fixture(scope="module")
def schema(display: Display, bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Dino's empty database as Dino makes it on a first start without accounts (then
    stopped; in a namespace too, so that nothing of it reaches the network): the profile
    of each test's Dino is a copy with the account's row added."""
    binary = require_command(DINO, WHAT)
    root = tmp_path_factory.mktemp("dino-schema")
    home = root / "home"
    (home / "run").mkdir(parents=True, mode=0o700)
    bus, address = start_bus(root)
    env = environment(home, display, address)
    database = home / ".local" / "share" / "dino" / "dino.db"
    namespace = Namespace(bundle)
    proc = subprocess.Popen(
        namespace.command(["env", "-i", *(f"{k}={v}" for k, v in env.items()), binary]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def made() -> bool:
        if not database.exists():
            return False
        with (
            contextlib.closing(sqlite3.connect(database, timeout=5)) as db,
            contextlib.suppress(sqlite3.Error),
        ):
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
            return {"_meta", "account", "settings"} <= tables and bool(
                db.execute("SELECT int_val FROM _meta WHERE name = 'version'").fetchone()
            )
        return False

    try:
        wait_until("Dino's database", made, 30)
    finally:
        stop(proc)
        stop(bus)
        namespace.close()
    template = root / "dino.db"
    with (
        contextlib.closing(sqlite3.connect(database)) as source,
        contextlib.closing(sqlite3.connect(template)) as copy,
    ):
        source.backup(copy)
    return template


class Dino:
    """One Dino process, its profile (account `user`@localhost, resource "dino") in
    `root`, in a namespace of its own whose port 5222 leads to `srv`."""

    def __init__(
        self,
        root: Path,
        srv: ServerProcess,
        display: Display,
        schema: Path,
        bundle: Path,
        user: str,
        omemo_with: tuple[str, ...] = (),
    ) -> None:
        """`omemo_with`: bare JIDs whose conversations the profile has already, OMEMO on
        (Dino has no default encryption setting; its lock button sets it per conversation)."""
        self.binary = require_command(DINO, WHAT)
        self.xdotool_path = require_command("xdotool", "xdotool (Debian package xdotool)")
        self.gdbus = require_command("gdbus", "gdbus (Debian package libglib2.0-bin)")
        self.user = user
        self.jid = f"{user}@localhost/dino"
        self.root = root
        self.server = srv
        self.home = root / "home"
        (self.home / "run").mkdir(parents=True, mode=0o700)
        self.data = self.home / ".local" / "share" / "dino"
        self.data.mkdir(parents=True)
        with (
            contextlib.closing(sqlite3.connect(schema)) as source,
            contextlib.closing(sqlite3.connect(self.data / "dino.db")) as db,
        ):
            source.backup(db)
            db.execute(
                "INSERT INTO account (bare_jid, resourcepart, password, alias, enabled, "
                "mam_earliest_synced) VALUES (?, 'dino', ?, NULL, 1, 0)",
                (f"{user}@localhost", PASSWORD),
            )
            for bare in omemo_with:
                jid_id = db.execute("INSERT INTO jid (bare_jid) VALUES (?)", (bare,)).lastrowid
                db.execute(
                    "INSERT INTO conversation (account_id, jid_id, active, active_last_changed,"
                    " type, encryption, notification, send_typing, send_marker, pinned) "
                    "VALUES (1, ?, 1, ?, ?, ?, 0, 0, 0, 0)",
                    (jid_id, int(time.time()), CONVERSATION_CHAT, ENCRYPTION_OMEMO),
                )
            db.commit()
        self.namespace = Namespace(bundle)
        self.forwarder = Forwarder(self.namespace, srv.port)
        # XEP-0363 slot URLs name the server's HTTPS listener as https://localhost:PORT: the
        # same port inside
        https = HTTPS_LISTENING.search(srv.log_text())
        self.https = None if https is None else Forwarder(self.namespace, *[int(https[2])] * 2)
        self.bus, address = start_bus(root)
        self.env = environment(self.home, display, address)
        self.log_path = root / "dino.log"
        self.log_file = open(self.log_path, "w")  # noqa: SIM115 (closed in close())
        # --print-xmpp: every stanza Dino sends and reads, on standard error
        self.proc = subprocess.Popen(
            self.namespace.command(
                [
                    "env",
                    "-i",
                    *(f"{k}={v}" for k, v in self.env.items()),
                    self.binary,
                    "--print-xmpp=no-ansi;all",
                ]
            ),
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
        )

        # a second dino-im hands its URI over only once this one holds the application's
        # name on the bus (before that it would become a second Dino itself)
        wait_until("Dino's name on its session bus", self.registered)

    def bus_call(self, dest: str, path: str, method: str, *args: str) -> str:
        """A D-Bus method call on Dino's session bus (gdbus); its printed answer."""
        done = subprocess.run(
            [
                self.gdbus,
                "call",
                "--address",
                self.env["DBUS_SESSION_BUS_ADDRESS"],
                "--dest",
                dest,
                "--object-path",
                path,
                "--method",
                method,
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=STEP,
        )
        assert done.returncode == 0 or "ServiceUnknown" in done.stderr, done.stderr
        return done.stdout.strip()

    def registered(self) -> bool:
        answer = self.bus_call(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.NameHasOwner",
            "im.dino.Dino",
        )
        return answer == "(true,)"

    def action(self, name: str, conversation: int) -> None:
        """One of Dino's application actions on a conversation (GApplication exports them
        on the bus: what the buttons of its notifications activate)."""
        self.bus_call(
            "im.dino.Dino",
            "/im/dino/Dino",
            "org.gtk.Actions.Activate",
            name,
            f"[<int32 {conversation}>]",
            "{}",
        )

    def conversation_with(self, bare: str) -> int:
        """The id of Dino's conversation with `bare`, once it has one."""
        found = wait_until(
            f"Dino's conversation with {bare}",
            lambda: self.rows(
                "SELECT c.id FROM conversation c JOIN jid j ON j.id = c.jid_id "
                "WHERE j.bare_jid = ?",
                bare,
            ),
        )
        return int(found[0]["id"])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rows(self, query: str, *params: Any, database: str = "dino.db") -> list[dict[str, Any]]:
        """Rows of one of Dino's databases (SQLite in WAL mode: read beside the running
        Dino)."""
        with contextlib.closing(sqlite3.connect(self.data / database, timeout=STEP)) as db:
            db.row_factory = sqlite3.Row
            try:
                return [dict(row) for row in db.execute(query, params)]
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return []  # not made yet (Dino makes its plugins' databases as it starts)
                raise

    def messages(self) -> list[dict[str, Any]]:
        """The messages Dino keeps, in order, with the bare JID of their counterpart."""
        return self.rows(
            "SELECT m.body, m.direction, m.stanza_id, m.server_id, m.marked, m.encryption, "
            "m.counterpart_resource, j.bare_jid AS counterpart FROM message m "
            "JOIN jid j ON j.id = m.counterpart_id ORDER BY m.id"
        )

    def wait_message(self, text: str) -> dict[str, Any]:
        """Dino's row of the message whose body is `text`, once it has one."""
        return wait_until(
            f"{text!r} in Dino's database",
            lambda: next((m for m in self.messages() if m["body"] == text), None),
        )

    def join_from_dialog(self, sent: Callable[[], bool], nick: str) -> None:
        """The join dialog (opened by an xmpp:...?join URI) filled in: `nick` typed into its
        nick entry and Join clicked, until `sent()` says the join went out. Without a
        window manager the dialog maps under the main window: it is raised, and clicked
        once its size has settled (its width follows the room's JID; the nick entry and
        the Join button are at fixed distances from its right edge). A click GTK took
        before the dialog was ready is made again."""
        window = self.window("^Join Channel$")

        def geometry() -> str:
            return self.xdotool("getwindowgeometry", window)

        seen = [geometry()]

        def settled() -> bool:
            time.sleep(0.1)
            seen.append(geometry())
            return seen[-1] == seen[-2]

        wait_until("the join dialog laid out", settled)
        width = int(re.findall(r"Geometry: (\d+)x", seen[-1])[0])
        for _attempt in range(3):
            if sent():
                return
            self.xdotool("windowraise", window)
            self.xdotool("mousemove", "--window", window, str(width - 170), "170", "click", "1")
            self.xdotool("key", "ctrl+a")
            self.xdotool("type", nick)
            self.xdotool("mousemove", "--window", window, str(width - 54), "27", "click", "1")
            with contextlib.suppress(AssertionError):
                wait_until("the join sent", sent, 5)
                return
        raise AssertionError("Dino's join dialog sent nothing")

    def window_ids(self, name: str) -> list[str]:
        """Dino's windows shown whose title matches `name` (a regex)."""
        done = subprocess.run(
            [self.xdotool_path, "search", "--onlyvisible", "--name", name],
            capture_output=True,
            text=True,
            timeout=STEP,
            env={**os.environ, "DISPLAY": self.env["DISPLAY"]},
        )
        return done.stdout.split()

    def window(self, name: str, seconds: float = STEP) -> str:
        """The first window whose title matches `name`, once there is one (polled:
        xdotool's own --sync sometimes misses a window that is there)."""
        found: list[str] = wait_until(
            f"a window named {name!r}", lambda: self.window_ids(name), seconds
        )
        return found[0]

    def avatar(self, sha: str) -> bytes | None:
        """The image Dino stored under that SHA-1 (its avatar cache), if any."""
        path = self.data / "avatars" / sha
        return path.read_bytes() if path.exists() else None

    def type(self, line: str) -> None:
        """`line` typed into the focused window (the open conversation's input), then Enter."""
        self.xdotool("type", "--delay", "5", line)
        self.xdotool("key", "Return")

    def open(self, uri: str) -> None:
        """An xmpp: URI (XEP-0147) handed to the running Dino (a second dino-im passes it
        over D-Bus and exits)."""
        done = subprocess.run(
            ["env", "-i", *(f"{k}={v}" for k, v in self.env.items()), self.binary, uri],
            capture_output=True,
            text=True,
            timeout=STEP,
        )
        assert done.returncode == 0, done.stderr

    def xdotool(self, *args: str) -> str:
        done = subprocess.run(
            [self.xdotool_path, *args],
            capture_output=True,
            text=True,
            timeout=STEP,
            env={**os.environ, "DISPLAY": self.env["DISPLAY"]},
        )
        assert done.returncode == 0, f"xdotool {args}: {done.stderr}"
        return done.stdout

    def close(self) -> None:
        stop(self.proc)
        stop(self.bus)
        self.forwarder.close()
        if self.https is not None:
            self.https.close()
        self.namespace.close()
        self.log_file.close()


@pytest.fixture(scope="module")
def bundle(ca_file: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The system's CA bundle with the test CA added: what GLib's TLS trusts in Dino's
    mount namespace."""
    path = tmp_path_factory.mktemp("bundle") / "ca-certificates.crt"
    system = SYSTEM_BUNDLE.read_text() if SYSTEM_BUNDLE.exists() else ""
    path.write_text(system + "\n" + Path(ca_file).read_text())
    return path


@pytest.fixture
def dino(
    tmp_path: Path, srv: ServerProcess, display: Display, schema: Path, bundle: Path
) -> Iterator[Callable[..., Dino]]:
    started: list[Dino] = []

    def start(
        user: str,
        server: ServerProcess = srv,
        shown: Display = display,
        omemo_with: tuple[str, ...] = (),
        trusted: Path = bundle,
    ) -> Dino:
        d = Dino(tmp_path / f"d{len(started)}", server, shown, schema, trusted, user, omemo_with)
        started.append(d)
        return d

    yield start
    for d in started:
        d.close()
        # for whoever reads a failure: the server's log beside each Dino's (its dino.log)
        (d.root / "server.log").write_text(d.server.log_text())


def traced(srv: ServerProcess, jid: str, incoming: bool, pattern: str) -> re.Match[str]:
    """A stanza the server's debug trace shows `jid` sending (`incoming`) or getting."""
    arrow = "<<<" if incoming else ">>>"
    line = re.compile(rf"fastxmpp\.trace: {re.escape(jid)} {arrow} [^\n]*?{pattern}")
    return wait_until(f"{jid} {arrow} {pattern}", lambda: line.search(srv.log_text()))


def test_login_roster_presence_and_chat(
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    dino: Callable[..., Dino],
) -> None:
    user, peer = next(names), next(names)
    other = befriend(srv, ca_file, user, peer, clients)
    mine = raw_login(srv, ca_file, user, clients)  # another resource of the account
    mine.send(f"<iq type='set' id='carbons'><enable xmlns='{CARBONS}'/></iq>")
    wait_for(mine, "carbons enabled", lambda el: el.get("id") == "carbons")
    d = dino(user)
    jid = d.jid
    # RFC 6120 §5 STARTTLS (the test CA trusted through the bundle), §6 SASL (xmpp-vala has
    # SCRAM-SHA-1 and PLAIN: SCRAM), §7 bind of the resource in its profile; XEP-0198 with
    # resumption
    srv.wait_for_log(f"authenticated {user}@localhost with SCRAM-SHA-1", STEP)
    srv.wait_for_log(f"bound {jid}")
    srv.wait_for_log(f"stream management for {jid}, resumable")
    bound = re.search(rf"c2s (127\.0\.0\.1:\d+): bound {re.escape(jid)}", srv.log_text())
    assert bound is not None
    peer_address = re.escape(bound.group(1))
    assert re.search(rf"{peer_address} <<< <starttls xmlns=", srv.log_text())
    assert re.search(rf"c2s {peer_address}: TLS TLSv1\.[23]", srv.log_text())
    # RFC 6121 §2.1.3 the roster (XEP-0237: versioned, none known yet), XEP-0280 carbons
    traced(srv, jid, True, "<query xmlns='jabber:iq:roster' ver=''/>")
    traced(srv, jid, True, f"<enable xmlns='{CARBONS}'/>")
    # XEP-0363 §2: Dino finds the upload service among the domain's items (XEP-0030) and
    # reads its size limit
    traced(srv, jid, True, f"to='upload.localhost'><query xmlns='{DISCO_INFO}'/>")
    traced(
        srv,
        jid,
        False,
        rf"from=\"upload.localhost\"><query xmlns='{DISCO_INFO}'>.*<feature var='{UPLOAD}'/>"
        r".*<field var='max-file-size'",
    )
    # RFC 6121 §4.2: Dino's initial presence reaches the contact, with its caps (XEP-0115)
    presence = wait_for(
        other,
        "Dino's presence",
        lambda el: el.tag == PRESENCE and el.get("from") == jid,
        seconds=STEP,
    )
    assert presence.get("type") is None
    caps = presence.find(f"{{{CAPS}}}c")
    assert caps is not None and caps.get("node") == "https://dino.im"
    # Dino keeps the roster it got: the contact, subscription both
    wait_until(
        "the roster in Dino's database",
        lambda: (
            d.rows("SELECT jid, subscription FROM roster")
            == [{"jid": f"{peer}@localhost", "subscription": "both"}]
        ),
    )

    # a message to Dino asking for a receipt (XEP-0184 §5.2) and markable (XEP-0333): Dino
    # acknowledges it both ways, and keeps it with the archive's id (XEP-0359 stanza-id by
    # the account, XEP-0313 §5.1.2)
    other.send(
        f"<message to='{jid}' type='chat' id='to-dino'><body>hello dino</body>"
        f"<request xmlns='{RECEIPTS}'/><markable xmlns='{MARKERS}'/></message>"
    )
    seen: list[Any] = []

    def acknowledged(el: Any) -> bool:
        seen.append(el)
        return marked(seen, RECEIPTS, "received") and (
            marked(seen, MARKERS, "received") or marked(seen, MARKERS, "displayed")
        )

    wait_for(other, "Dino's receipt and chat marker", acknowledged, seconds=STEP)
    for el in seen:
        if el.find(f"{{{RECEIPTS}}}received") is not None:
            assert el.get("from") == jid
            assert el.find(f"{{{RECEIPTS}}}received").get("id") == "to-dino"
        # "displayed" when Dino shows the conversation as it comes, "received" otherwise
        for kind in ("received", "displayed"):
            if (found := el.find(f"{{{MARKERS}}}{kind}")) is not None:
                assert (el.get("from"), found.get("id")) == (jid, "to-dino")
    kept = d.wait_message("hello dino")
    archived = traced(
        srv, jid, False, r"<body>hello dino</body>.*?<stanza-id [^>]*\bid=[\"']([^\"']+)"
    )
    assert (kept["counterpart"], kept["counterpart_resource"], kept["stanza_id"]) == (
        f"{peer}@localhost",
        "raw",
        "to-dino",
    )
    assert kept["server_id"] == archived.group(1)

    # Dino writes: the conversation opened by an xmpp: URI, the text typed
    d.open(f"xmpp:{peer}@localhost?message")
    d.type("hello from dino")
    got = wait_for(other, "Dino's message", lambda el: body(el) is not None, seconds=STEP)
    assert (got.get("from"), got.get("type"), body(got)) == (jid, "chat", "hello from dino")
    # it asks for a receipt and a marker; and XEP-0085 chat states came before it
    assert got.find(f"{{{RECEIPTS}}}request") is not None
    assert got.find(f"{{{MARKERS}}}markable") is not None
    traced(srv, jid, True, f"<composing xmlns='{CHATSTATES}'/>")
    # XEP-0280 §6: the account's other resource gets a sent carbon of it
    forwarded = f"{{{CARBONS}}}sent/{{{FORWARD}}}forwarded/{MESSAGE}"
    carbon = wait_for(
        mine,
        "the sent carbon",
        lambda el: el.find(forwarded) is not None and body(el.find(forwarded)) == "hello from dino",
        seconds=STEP,
    )
    assert carbon.find(forwarded).get("from") == jid
    # the receipt back marks the message received in Dino
    other.send(
        f"<message to='{jid}' id='ack'><received xmlns='{RECEIPTS}' id='{got.get('id')}'/>"
        "</message>"
    )
    wait_until(
        "Dino's message marked received",
        lambda: d.wait_message("hello from dino")["marked"] == MARKED_RECEIVED,
    )
    # XEP-0308: Up in the empty input edits the last message; the correction names it
    d.xdotool("key", "Up")
    d.xdotool("key", "ctrl+a")
    d.type("hello from dino, corrected")
    fixed = wait_for(
        other,
        "Dino's correction",
        lambda el: body(el) == "hello from dino, corrected",
        seconds=STEP,
    )
    assert fixed.find(f"{{{CORRECT}}}replace").get("id") == got.get("id")


def test_certificate_of_an_unknown_ca_is_refused(
    srv: ServerProcess,
    names: Iterator[str],
    dino: Callable[..., Dino],
    tmp_path: Path,
) -> None:
    user = next(names)
    # the system's CAs only (or none): the test CA that signed the server's certificate is
    # not among them
    untrusted = tmp_path / "system-only.crt"
    untrusted.write_text(SYSTEM_BUNDLE.read_text() if SYSTEM_BUNDLE.exists() else "")
    before = len(srv.log_text())
    d = dino(user, trusted=untrusted)
    # RFC 6120 §5.4.3.1, §13.7.2: Dino ends the connection in the TLS handshake, telling
    # why in its log; nothing reaches SASL
    closed = wait_until(
        "Dino's connection closed",
        lambda: re.search(
            r"c2s connection from (\S+) closed \(unauthenticated\)", srv.log_text()[before:]
        ),
    )
    assert re.search(rf"{re.escape(closed.group(1))} <<< <starttls xmlns=", srv.log_text())
    wait_until("Dino's reason", lambda: "G_TLS_CERTIFICATE_UNKNOWN_CA" in d.log())
    assert f"authenticated {user}@localhost" not in srv.log_text()


def test_subscription_requests_accepted_and_denied(
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    dino: Callable[..., Dino],
) -> None:
    user, friend, stranger = next(names), next(names), next(names)
    d = dino(user)
    srv.wait_for_log(f"stream management for {d.jid}", STEP)
    # RFC 6121 §3.1.3: requests reach Dino, which opens a conversation for each with its
    # Accept and Deny (its notification's buttons activate the actions used here)
    asking = {}
    for name in (friend, stranger):
        asking[name] = raw_login(srv, ca_file, name, clients)
        asking[name].send("<presence/>")
        asking[name].send(f"<presence to='{user}@localhost' type='subscribe'/>")
    # Accept: §3.1.4 approval, then Dino asks back (§3.1.1)
    d.action("accept-subscription", d.conversation_with(f"{friend}@localhost"))
    first = asking[friend]
    wait_for(first, "the approval", lambda el: el.get("type") == "subscribed", seconds=STEP)
    # §3.1.5: Dino's presence follows the approval
    wait_for(
        first,
        "Dino's presence",
        lambda el: el.tag == PRESENCE and el.get("from") == d.jid and el.get("type") is None,
        seconds=STEP,
    )
    wait_for(first, "the request back", lambda el: el.get("type") == "subscribe", seconds=STEP)
    first.send(f"<presence to='{user}@localhost' type='subscribed'/>")
    # Deny: §3.2 unsubscribed
    d.action("deny-subscription", d.conversation_with(f"{stranger}@localhost"))
    wait_for(
        asking[stranger],
        "the refusal",
        lambda el: el.get("type") == "unsubscribed",
        seconds=STEP,
    )
    # Dino's roster (from the server's pushes, §2.1.6): the friend both ways, no stranger
    wait_until(
        "the roster in Dino's database",
        lambda: (
            d.rows("SELECT jid, subscription FROM roster")
            == [{"jid": f"{friend}@localhost", "subscription": "both"}]
        ),
    )


def test_omemo_message_between_two_dinos(
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    dino: Callable[..., Dino],
) -> None:
    user, peer = next(names), next(names)
    befriend(srv, ca_file, user, peer, clients).close()
    # the peer's Dino first, on a display of its own (typing goes to one window only): it
    # publishes its device list and bundle (XEP-0384)
    second_display = Display()
    try:
        theirs = dino(peer, shown=second_display)
        traced(srv, theirs.jid, True, rf"<publish node='{AXOLOTL}.bundles:\d+'>")
        mine = dino(user, omemo_with=(f"{peer}@localhost",))
        # the server tells each of the other's device list (XEP-0163 +notify in their caps)
        traced(srv, mine.jid, False, rf'<items node="{AXOLOTL}.devicelist">')
        mine.open(f"xmpp:{peer}@localhost?message")
        mine.type("only for your eyes")
        # what went through the server is encrypted: a key for the peer's device, the
        # payload, no plain text (the body is Dino's fallback notice)
        sent = traced(
            srv,
            mine.jid,
            True,
            rf"<message [^>]*to='{peer}@localhost'[^>]*>(?:(?!</message>).)*"
            rf"<encrypted xmlns='{AXOLOTL}'>(?:(?!</message>).)*</message>",
        )
        device = theirs.rows("SELECT device_id FROM identity", database="omemo.db")[0]
        assert f"<key rid='{device['device_id']}'" in sent.group(0), sent.group(0)
        assert "only for your eyes" not in srv.log_text()
        # and the peer's Dino reads it
        got = theirs.wait_message("only for your eyes")
        assert (got["counterpart"], got["encryption"]) == (f"{user}@localhost", ENCRYPTION_OMEMO)
    finally:
        second_display.close()


def test_history_from_the_archive_on_first_start(
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    dino: Callable[..., Dino],
) -> None:
    user, peer = next(names), next(names)
    other = befriend(srv, ca_file, user, peer, clients)
    # a conversation held before Dino ever ran, archived by the server (XEP-0313)
    mine = raw_login(srv, ca_file, user, clients)
    mine.send(f"<message to='{peer}@localhost' type='chat'><body>archived one</body></message>")
    wait_for(other, "archived one", lambda el: body(el) == "archived one")
    other.send(
        f"<message to='{user}@localhost/raw' type='chat'><body>archived two</body></message>"
    )
    wait_for(mine, "archived two", lambda el: body(el) == "archived two")
    # the archive's ids of both (XEP-0313 §4.2 results), as a raw client reads them
    mine.send(f"<iq type='set' id='mam'><query xmlns='{MAM}' queryid='all'/></iq>")
    ids = {}

    def result(el: Any) -> bool:
        if (found := el.find(f"{{{MAM}}}result")) is not None:
            inner = found.find(f"{{{FORWARD}}}forwarded/{MESSAGE}")
            ids[body(inner)] = found.get("id")
        return el.get("id") == "mam"

    wait_for(mine, "the archive", result)
    assert set(ids) == {"archived one", "archived two"}, ids
    mine.close()
    clients.remove(mine)

    d = dino(user)
    # XEP-0313 §4: Dino asks its account's archive (the bare JID) for everything since the
    # epoch; the server pages it (XEP-0059) and says when the result is complete
    traced(
        srv,
        d.jid,
        True,
        rf"<iq id='[^']+' type='set' to='{user}@localhost'><query xmlns='{MAM}'.*?"
        r"<field var='start'><value>1970-01-01T00:00:00Z</value>",
    )
    traced(srv, d.jid, False, rf"<fin xmlns='{MAM}' complete='true'")
    # both messages are in Dino's history, in order, with the archive's ids
    wait_until("both archived messages in Dino", lambda: len(d.messages()) == 2)
    kept = d.messages()
    assert [(m["body"], m["direction"], m["counterpart"]) for m in kept] == [
        ("archived one", DIRECTION_SENT, f"{peer}@localhost"),
        ("archived two", DIRECTION_RECEIVED, f"{peer}@localhost"),
    ]
    assert [m["server_id"] for m in kept] == [ids["archived one"], ids["archived two"]]


def test_omemo_device_and_bundle_published(
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    dino: Callable[..., Dino],
) -> None:
    user, stranger = next(names), next(names)
    d = dino(user)
    # XEP-0384 (0.3, the eu.siacs.conversations.axolotl namespace as Dino 0.4 speaks it):
    # on its first login Dino reads its device list (none: item-not-found), publishes one
    # with its device and its bundle, and makes both nodes open (XEP-0060 §8.2 node
    # configuration, pubsub#access_model)
    identity = wait_until(
        "Dino's OMEMO identity",
        lambda: d.rows(
            "SELECT device_id, identity_key_public_base64 AS key FROM identity", database="omemo.db"
        ),
    )[0]
    device = str(identity["device_id"])
    for node in (f"{AXOLOTL}.devicelist", f"{AXOLOTL}.bundles:{device}"):
        traced(
            srv,
            d.jid,
            True,
            rf"<configure node='{re.escape(node)}'><x xmlns='jabber:x:data' type='submit'>"
            r".*?<field var='pubsub#access_model'[^>]*>.*?<value>open</value></field>",
        )
    # what anybody finds (open: not even a contact)
    other = raw_login(srv, ca_file, stranger, clients)

    def items(node: str) -> Any:
        def published(el: Any) -> bool:
            return el.get("id") == node

        other.send(
            f"<iq type='get' id='{node}' to='{user}@localhost'><pubsub xmlns='{PUBSUB}'>"
            f"<items node='{node}'/></pubsub></iq>"
        )
        return wait_for(other, node, published)

    devices = wait_until(
        "the device list", lambda: items(f"{AXOLOTL}.devicelist").findall(f".//{{{AXOLOTL}}}device")
    )
    assert [el.get("id") for el in devices] == [device]
    bundle = wait_until(
        "the bundle",
        lambda: items(f"{AXOLOTL}.bundles:{device}").findall(f".//{{{AXOLOTL}}}bundle"),
    )[0]
    assert bundle.findtext(f"{{{AXOLOTL}}}identityKey") == identity["key"]
    assert bundle.findtext(f"{{{AXOLOTL}}}signedPreKeyPublic")
    assert len(bundle.findall(f"{{{AXOLOTL}}}prekeys/{{{AXOLOTL}}}preKeyPublic")) >= 20


def make_room(owner: RawClient, room: str, nick: str, persistent: bool) -> None:
    """`room` created by `owner` (XEP-0045 §10.1.2), configured (§10.1.3) and so unlocked."""
    owner.send(f"<presence to='{room}/{nick}'><x xmlns='{MUC}'/></presence>")
    created = wait_for(
        owner, "the new room", lambda el: el.tag == PRESENCE and "110" in statuses(el)
    )
    assert "201" in statuses(created)
    fields = (
        f"<field var='FORM_TYPE'><value>{MUC}#roomconfig</value></field>"
        f"<field var='muc#roomconfig_persistentroom'><value>{int(persistent)}</value></field>"
    )
    owner.send(
        f"<iq type='set' id='config' to='{room}'><query xmlns='{MUC}#owner'>"
        f"<x xmlns='jabber:x:data' type='submit'>{fields}</x></query></iq>"
    )
    done = wait_for(owner, "the configuration", lambda el: el.get("id") == "config")
    assert done.get("type") == "result"


def statuses(el: Any) -> set[str]:
    return {s.get("code") for s in el.iterfind(f"{{{MUC_USER}}}x/{{{MUC_USER}}}status")}


def test_room_from_bookmark_history_and_groupchat(
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    dino: Callable[..., Dino],
) -> None:
    user, peer = next(names), next(names)
    room = f"dino-{user}@conference.localhost"
    other = raw_login(srv, ca_file, peer, clients)
    make_room(other, room, peer, persistent=True)
    other.send(f"<message to='{room}' type='groupchat'><body>before dino</body></message>")
    echo = wait_for(other, "the echo", lambda el: body(el) == "before dino")
    before_id = echo.find(f"{{{SID}}}stanza-id").get("id")
    # XEP-0402: a bookmark with autojoin, published by another client of the account
    mine = Client(raw_login(srv, ca_file, user, clients), user, "")
    assert publish_bookmark(mine, room, "Dino room", "bookmark").get("type") == "result"
    mine.c.close()
    clients.remove(mine.c)

    d = dino(user)
    # Dino reads its bookmarks and enters the room with the bookmark's nick (XEP-0045
    # §7.2), asking for no history in presence (§7.2.14) ...
    entered = wait_for(
        other,
        "Dino entering the room",
        lambda el: el.tag == PRESENCE and el.get("from") == f"{room}/{user}",
        seconds=STEP,
    )
    assert entered.get("type") is None
    traced(srv, d.jid, True, rf"to='{room}/{user}'><x xmlns='{MUC}'><history maxchars='0'/>")
    # ... because it reads the room's archive instead (XEP-0313 §5 on a MUC service)
    traced(srv, d.jid, True, rf"type='set' to='{room}'><query xmlns='{MAM}'")
    history = d.wait_message("before dino")
    assert (history["counterpart"], history["counterpart_resource"]) == (room, peer)
    assert history["server_id"] == before_id

    # XEP-0045 §7.4 groupchat both ways: the typed text reaches the room ...
    d.type("hello room")
    said = wait_for(other, "Dino's groupchat", lambda el: body(el) == "hello room", seconds=STEP)
    assert (said.get("from"), said.get("type")) == (f"{room}/{user}", "groupchat")
    # ... Dino knows its echo (the room's archive id kept as the message's server id)
    said_id = said.find(f"{{{SID}}}stanza-id").get("id")
    wait_until(
        "Dino's groupchat matched with its echo",
        lambda: d.wait_message("hello room")["server_id"] == said_id,
    )
    # ... and what the other occupant says reaches Dino
    other.send(f"<message to='{room}' type='groupchat'><body>hello dino</body></message>")
    heard = d.wait_message("hello dino")
    assert (heard["counterpart"], heard["counterpart_resource"]) == (room, peer)


def test_avatars_of_a_contact_and_of_a_room_occupant(
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    dino: Callable[..., Dino],
) -> None:
    user, peer, stranger = next(names), next(names), next(names)
    other = befriend(srv, ca_file, user, peer, clients)
    # the contact's avatar in PEP (XEP-0084 §4: data, then metadata)
    contact_png = avatar_png(8, 8)
    contact_sha = AvatarUser(other, peer).publish_avatar(contact_png)
    # a room occupant (not a contact) with a vCard photo (XEP-0054, XEP-0153), in a room
    # Dino enters from a bookmark
    room = f"faces-{user}@conference.localhost"
    third = raw_login(srv, ca_file, stranger, clients)
    occupant_png = avatar_png(9, 9)
    occupant_sha = hashlib.sha1(occupant_png).hexdigest()
    AvatarUser(third, stranger).set_vcard(
        f"<PHOTO><TYPE>image/png</TYPE><BINVAL>{base64.b64encode(occupant_png).decode()}"
        "</BINVAL></PHOTO>"
    )
    make_room(third, room, stranger, persistent=False)
    mine = Client(raw_login(srv, ca_file, user, clients), user, "")
    assert publish_bookmark(mine, room, "Faces", "bookmark").get("type") == "result"
    mine.c.close()
    clients.remove(mine.c)

    d = dino(user)
    wait_for(
        third,
        "Dino entering the room",
        lambda el: el.tag == PRESENCE and el.get("from") == f"{room}/{user}",
        seconds=STEP,
    )
    # the occupant speaks: Dino shows the message with the occupant's avatar, whose hash
    # its room presence carries (XEP-0153 §4.1), and asks the occupant JID for the vCard
    # (XEP-0153 §3.2): the server answers from the occupant's account
    third.send(f"<message to='{room}' type='groupchat'><body>look at me</body></message>")
    d.wait_message("look at me")
    traced(
        srv,
        d.jid,
        False,
        rf"<presence from=\"{room}/{stranger}\"[^\n]*<photo>{occupant_sha}</photo>",
    )
    traced(srv, d.jid, True, rf"to='{room}/{stranger}'><vCard xmlns='vcard-temp'/>")
    wait_until("the occupant's avatar stored", lambda: d.avatar(occupant_sha) == occupant_png)
    # the contact's: the server notified Dino of the metadata (XEP-0163 §4.3, Dino's caps
    # have +notify); Dino fetches the data (XEP-0084 §4.2), for the conversation it opens
    traced(
        srv,
        d.jid,
        False,
        rf'<message from="{peer}@localhost"[^\n]*<items node="{AVATAR_METADATA}">'
        rf'<item id="{contact_sha}"',
    )
    d.open(f"xmpp:{peer}@localhost?message")
    traced(
        srv,
        d.jid,
        True,
        rf"to='{peer}@localhost'><pubsub xmlns='{PUBSUB}'><items node='{AVATAR_DATA}'/>",
    )
    wait_until("the contact's avatar stored", lambda: d.avatar(contact_sha) == contact_png)
    # Dino keeps the contact's hash from both sources it reads: the PEP metadata and the
    # presence's vCard hash, which the server derives from the same image (XEP-0398 §4)
    kept = d.rows(
        "SELECT j.bare_jid AS jid, a.hash, a.type FROM contact_avatar a "
        "JOIN jid j ON j.id = a.jid_id ORDER BY a.type"
    )
    assert kept == [
        {"jid": f"{peer}@localhost", "hash": contact_sha, "type": source}
        for source in (AVATAR_FROM_PEP, AVATAR_FROM_VCARD)
    ], kept


def test_stream_resumed_after_the_connection_breaks(
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    dino: Callable[..., Dino],
) -> None:
    user, peer = next(names), next(names)
    other = befriend(srv, ca_file, user, peer, clients)
    d = dino(user)
    wait_for(
        other,
        "Dino's presence",
        lambda el: el.tag == PRESENCE and el.get("from") == d.jid,
        seconds=STEP,
    )
    # once its login is over (its history read: module docstring) ...
    traced(srv, d.jid, False, rf"<fin xmlns='{MAM}' complete='true'")
    # the TCP connection breaks (reset, no closing tag): the server keeps the session
    # (XEP-0198 §5, resumable) ...
    d.forwarder.cut()
    srv.wait_for_log(f"{d.jid} lost its connection", STEP)
    # ... and what comes meanwhile waits in it
    other.send(f"<message to='{d.jid}' type='chat'><body>while you were away</body></message>")
    # Dino connects again (10 s later: its ConnectionManager.check_reconnect waits as
    # much) and resumes the stream (§5: <resume/> with the previous id and what it had
    # received): the message is sent again, and comes
    srv.wait_for_log(f"resumed {d.jid}", STEP)
    enabled = traced(srv, d.jid, False, rf"<enabled xmlns='{SM}' id=\"([^\"]+)\"")
    assert re.search(
        rf"<<< <resume xmlns='{SM}' [^>]*previd='{re.escape(enabled.group(1))}'",
        srv.log_text(),
    )
    assert d.forwarder.accepted == 2
    d.wait_message("while you were away")
    # the same session went on: the contact never saw it end (no unavailable presence;
    # Dino sends its presence again after resuming, which changes nothing)
    seen = settle(other)
    assert not [el for el in seen if el.get("type") == "unavailable"], seen
    # and the stream works on: Dino's answer comes
    d.open(f"xmpp:{peer}@localhost?message")
    d.type("back again")
    wait_for(other, "Dino's message", lambda el: body(el) == "back again", seconds=STEP)


def test_file_upload(
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    dino: Callable[..., Dino],
    tmp_path: Path,
) -> None:
    user, peer = next(names), next(names)
    other = befriend(srv, ca_file, user, peer, clients)
    d = dino(user)
    d.open(f"xmpp:{peer}@localhost?message")
    # (Dino's Ctrl+U works once it knows the upload service)
    traced(srv, d.jid, False, rf"from=\"upload.localhost\"><query xmlns='{DISCO_INFO}'>")
    shared = tmp_path / "shared notes.txt"
    content = b"what Dino uploads\n" * 100
    shared.write_bytes(content)
    # Ctrl+U: GTK's file chooser, where a typed path is the location; Enter picks it, and
    # Enter again presses the send button Dino's confirmation focuses
    chooser = ""
    for _attempt in range(4):  # Ctrl+U does nothing until Dino has made the upload usable
        d.xdotool("key", "ctrl+u")
        with contextlib.suppress(AssertionError):
            chooser = d.window("^Select file$", 3)
            break
    assert chooser, "Ctrl+U opened no file chooser"
    d.xdotool("windowraise", chooser)
    d.xdotool("windowfocus", "--sync", chooser)
    d.xdotool("type", str(shared))
    d.xdotool("key", "Return")
    wait_until("the file chooser closed", lambda: not d.window_ids("^Select file$"))
    slot = re.compile(
        rf"{re.escape(d.jid)} <<< <iq [^>]*type='get' to='upload.localhost'>"
        rf"<request xmlns='{UPLOAD}' filename='shared notes.txt' size='{len(content)}' "
        r"content-type='text/plain'/>"
    )
    for _attempt in range(10):  # until the confirmation is there to take it
        d.xdotool("key", "Return")
        with contextlib.suppress(AssertionError):
            wait_until("Dino's slot request", lambda: slot.search(srv.log_text()), 1.5)
            break
    # XEP-0363 §4: a slot for that name, size and type; Dino's HTTPS PUT (the test CA
    # trusted) stores it ...
    srv.wait_for_log(f"{user}@localhost uploaded ", STEP)
    assert re.search(rf"uploaded \S+ \({len(content)} bytes\)", srv.log_text())
    # ... and the contact gets the GET URL, as the body and as XEP-0066 out-of-band data
    got = wait_for(other, "the file's message", lambda el: body(el) is not None, seconds=STEP)
    url = got.findtext(f"{{{OOB}}}x/{{{OOB}}}url")
    assert got.get("from") == d.jid and body(got) == url
    assert url.startswith("https://localhost:") and url.endswith("/shared%20notes.txt"), url
    # which serves the same bytes, over TLS checked against the test CA
    context = ssl.create_default_context(cafile=ca_file)
    with urllib.request.urlopen(url, context=context, timeout=STEP) as response:
        assert response.read() == content
    assert d.rows("SELECT file_name, size FROM file_transfer") == [
        {"file_name": "shared notes.txt", "size": len(content)}
    ]


QUICK_POOL = FreshNames("dnq", 4)


@pytest.fixture(scope="module")
def quick_unlock_srv(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server that opens a new room its owner never configured after 1 s (the default
    300 s would make a test wait as long)."""
    yield from module_server(ca, tmp_path_factory, QUICK_POOL, "[muc]\nlock_timeout = 1\n")


def test_room_created_by_dino(
    quick_unlock_srv: ServerProcess,
    ca_file: str,
    clients: list[RawClient],
    dino: Callable[..., Dino],
) -> None:
    srv = quick_unlock_srv
    names = QUICK_POOL.names()
    user, peer = next(names), next(names)
    room = "made-by-dino@conference.localhost"
    d = dino(user, srv)
    srv.wait_for_log(f"stream management for {d.jid}", STEP)
    # the join dialog (xmpp:...?join, XEP-0147) with the nick typed and Join clicked
    d.open(f"xmpp:{room}?join")
    d.join_from_dialog(lambda: f"to='{room}/creator'" in srv.log_text(), "creator")
    # XEP-0045 §10.1.1: the room is created, Dino its owner, locked (201) until configured
    traced(srv, d.jid, True, rf"<presence id='[^']+' to='{room}/creator'><x xmlns='{MUC}'/>")
    traced(
        srv,
        d.jid,
        False,
        rf"<presence from=\"{room}/creator\"[^\n]*<item affiliation='owner' role='moderator'"
        r"[^\n]*<status code='110'/><status code='201'/>",
    )
    # Dino never configures it (no muc#owner request at all); step 4's timeout opens it
    # with the default configuration ([muc] lock_timeout)
    srv.wait_for_log(f"room {room} opened with the default configuration", STEP)
    assert not re.search(rf"{re.escape(d.jid)} <<< [^\n]*{MUC}#owner", srv.log_text())
    # then others may enter (§7.2.2), and Dino's occupant is there, owner
    other = raw_login(srv, ca_file, peer, clients)
    other.send(f"<presence to='{room}/{peer}'><x xmlns='{MUC}'/></presence>")
    seen: list[Any] = []
    own = wait_for(
        other,
        "its own presence in the room",
        lambda el: seen.append(el) or (el.tag == PRESENCE and "110" in statuses(el)),
    )
    assert own.get("type") is None, etree.tostring(own)
    creator = next(el for el in seen if el.get("from") == f"{room}/creator")
    item = creator.find(f"{{{MUC_USER}}}x/{{{MUC_USER}}}item")
    assert item.get("affiliation") == "owner"
    # Dino shows the room: what the newcomer says reaches it, and what is typed reaches the
    # newcomer
    other.send(f"<message to='{room}' type='groupchat'><body>thanks for the room</body></message>")
    heard = d.wait_message("thanks for the room")
    assert (heard["counterpart"], heard["counterpart_resource"]) == (room, peer)
    d.type("you are welcome")
    said = wait_for(
        other, "Dino's groupchat", lambda el: body(el) == "you are welcome", seconds=STEP
    )
    assert (said.get("from"), said.get("type")) == (f"{room}/creator", "groupchat")

    # Dino's text commands, as its owner: /topic (§8.1) ...
    d.type("/topic Dino's topic")
    subject = wait_for(
        other,
        "the subject",
        lambda el: el.tag == MESSAGE and el.find(f"{{{CLIENT}}}subject") is not None,
        seconds=STEP,
    )
    assert (subject.get("from"), subject.findtext(f"{{{CLIENT}}}subject")) == (
        f"{room}/creator",
        "Dino's topic",
    )
    # ... /nick (§7.6: unavailable with 303 and the new nick, then the new presence) ...
    d.type("/nick renamed")
    gone = wait_for(
        other,
        "the nick change",
        lambda el: el.tag == PRESENCE and "303" in statuses(el),
        seconds=STEP,
    )
    assert gone.get("from") == f"{room}/creator" and gone.get("type") == "unavailable"
    assert gone.find(f"{{{MUC_USER}}}x/{{{MUC_USER}}}item").get("nick") == "renamed"
    back = wait_for(other, "the new presence", lambda el: el.tag == PRESENCE, seconds=STEP)
    assert back.get("from") == f"{room}/renamed" and back.get("type") is None
    # ... /affiliate (§9.3: membership) ...
    d.type(f"/affiliate {peer} member")
    member = wait_for(
        other,
        "the membership",
        lambda el: el.tag == PRESENCE and el.get("from") == f"{room}/{peer}",
        seconds=STEP,
    )
    assert member.find(f"{{{MUC_USER}}}x/{{{MUC_USER}}}item").get("affiliation") == "member"
    # ... and /kick (§8.2)
    d.type(f"/kick {peer}")
    kicked = wait_for(
        other,
        "the kick",
        lambda el: el.tag == PRESENCE and el.get("type") == "unavailable",
        seconds=STEP,
    )
    assert {"307", "110"} <= statuses(kicked)


CAPS = "http://jabber.org/protocol/caps"
OOB = "jabber:x:oob"
CORRECT = "urn:xmpp:message-correct:0"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
UPLOAD = "urn:xmpp:http:upload:0"
MUC = "http://jabber.org/protocol/muc"
MUC_USER = f"{MUC}#user"
SID = "urn:xmpp:sid:0"
MAM = "urn:xmpp:mam:2"
SM = "urn:xmpp:sm:3"
PUBSUB = "http://jabber.org/protocol/pubsub"
AVATAR_DATA = "urn:xmpp:avatar:data"
AVATAR_METADATA = "urn:xmpp:avatar:metadata"
AVATAR_FROM_PEP, AVATAR_FROM_VCARD = 0, 1  # Dino's AvatarManager.Source
AXOLOTL = "eu.siacs.conversations.axolotl"
DIRECTION_RECEIVED, DIRECTION_SENT = 0, 1  # Dino's Message.DIRECTION_*
CONVERSATION_CHAT = 0  # Dino's Conversation.Type.CHAT
ENCRYPTION_OMEMO = 2  # Dino's Encryption.OMEMO
FORWARD = "urn:xmpp:forward:0"
CARBONS = "urn:xmpp:carbons:2"
RECEIPTS = "urn:xmpp:receipts"
MARKERS = "urn:xmpp:chat-markers:0"
CHATSTATES = "http://jabber.org/protocol/chatstates"
MARKED_RECEIVED = 1  # Dino's Message.Marked.RECEIVED


def marked(seen: list[Any], namespace: str, name: str) -> bool:
    return any(el.find(f"{{{namespace}}}{name}") is not None for el in seen)
