"""Gajim (Debian's `gajim` 1.7.3, the GTK 3 desktop client on python3-nbxmpp 4.2, with Debian's
`gajim-omemo` 2.9 plugin) run as the real application, not its library
(test_interop_nbxmpp.py covers nbxmpp): on a virtual screen (Xvfb, a free display number),
with a session bus of its own (dbus-daemon), as the user `nobody` (Gajim refuses to run as
root), HOME and the XDG directories in a temporary directory owned by nobody. No account
wizard: the profile (tests/interop/gajim/profile.py) is Gajim's settings database with one
account that connects to the test server by custom host and port. The server's certificate is
verified the way Gajim always does it (GLib's TLS database, the system CA bundle): Gajim runs
in a mount namespace of its own where the system bundle plus the test CA is bind-mounted over
/etc/ssl/certs/ca-certificates.crt, so nothing disables verification.

Gajim is driven as a user or a script drives it: its D-Bus remote control (the interface
gajim-remote uses: send a chat or groupchat message, change the status, list the contacts),
its application actions on D-Bus (what its menus activate: Accounts > Profile, Add Contact),
the mouse and keyboard in those windows (xdotool), and a profile made beforehand (an autojoin
bookmark for a room). What Gajim did is checked on the server's side: raw clients
(tests/xmpp_raw.py) beside it, the server's stanza trace (its debug log: every stanza Gajim
sent, by its JID); and in Gajim's own message history (logs.db), contact list and avatar
cache for what Gajim took from the server.

What it found in the server: Gajim asks the vCard of a room occupant (for its avatar, from
the hash in the occupant's presence) at the occupant's JID, room@service/nick; the server
forwarded that to the occupant's client, which has no vCard to give (the raw client here
never answers), so Gajim never showed occupants' avatars. The server now answers from the
occupant's account, as Prosody and ejabberd do (the lead's fix on main, 2cd8a91:
test_interop_gajim.py::test_room_autojoin_groupchat_and_occupant_avatar failed before it).

Gajim's ways the test follows (no Gajim bug needed a workaround):
- Its remote control is exported 5 s after it starts (`GLib.timeout_add_seconds(5,
  self._remote_init)` in gajim/common/application.py), when it is online already: a D-Bus
  call is retried until the interface answers; sending answers false (and sends nothing)
  until the account is online or the room joined, and is retried too.
- It enables an account's online actions (Profile, Add Contact) a moment after it is online,
  and a disabled action activated over D-Bus is silently ignored: activated again until the
  window shows. Keys and clicks into a window that is not ready yet do nothing, so they are
  repeated until what they do shows (a window, a stanza the server logged, a file).
- With no window manager on Xvfb, the keyboard goes to the window under the pointer: the
  pointer is moved there first. The buttons without mnemonics (the picture's pencil, Update,
  Add Contact) are clicked where Gajim 1.7's layout puts them in its fixed-size windows.
- It enters a bookmarked room only when the room's disco#info answers (a room that does not
  exist is not created by autojoin), so the room is made by the raw client first.
- Add Contact asks the address's disco#info first and takes service-unavailable (Prosody's
  answer, and this server's to a non-subscriber, XEP-0030 §3.1) or subscription-required
  (ejabberd's) for a contact; any other error stops the dialog.
- The profile sets the account's autoauth ("accept subscription requests automatically"),
  so a subscription request is approved without a dialog.

Gajim 1.7.3 bugs seen in its log, harmless to what is tested (nothing works around them):
in a room it has just created it handles its own occupant presence (which carries the
XEP-0153 hash the server adds, XEP-0398 §5) before it has the room's disco#info, and its
avatar handler's `assert disco_info is not None` (gajim/common/modules/contacts.py
get_config_value, from vcard_avatars._muc_update_received) fails; a message sent by the
remote control with no chat open fails an assertion in MessageInputTextView._on_message_sent
after it is sent; after a resumption the iqs nbxmpp sends again have lost their callbacks
("Received iq error with unknown id")."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.util
import json
import os
import pwd
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PASSWORD, FreshNames, ServerProcess, module_server
from interop_clients import (
    REPO,
    approved_and_present,
    asking_to_subscribe,
    body,
    raw_login,
    refused_before_sasl,
    require,
    require_command,
    wait_for,
)
from test_avatars import User
from test_avatars import png as avatar_png
from test_client_flows import Client, publish_bookmark
from test_interop_profanity import befriend, settle
from xmpp_raw import CLIENT, RawClient


def _profile_module() -> Any:
    """tests/interop/gajim/profile.py (by path: `profile` is also a standard module)."""
    path = REPO / "tests" / "interop" / "gajim" / "profile.py"
    spec = importlib.util.spec_from_file_location("gajim_profile", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


write_profile = _profile_module().write_profile

POOL = FreshNames("gj", 24)
ACCOUNT = "fast"  # the account's name in Gajim (its D-Bus methods take it)
RESOURCE = "gajim"
MESSAGE = f"{{{CLIENT}}}message"
PRESENCE = f"{{{CLIENT}}}presence"
SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
STEP = 15.0  # seconds Gajim may take for one thing on a loaded machine
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
SCREEN = ["-screen", "0", "1280x800x24"]
REMOTE = ("/org/gajim/dbus/RemoteObject", "org.gajim.dbus.RemoteInterface")


@pytest.fixture(scope="module")
def srv(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(ca, tmp_path_factory, POOL)


@pytest.fixture
def names() -> Iterator[str]:
    return POOL.names()


def nobody_dir(prefix: str) -> Path:
    """A directory nobody owns: pytest's temporary directories are root's, mode 0700."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    user = pwd.getpwnam("nobody")
    os.chown(path, user.pw_uid, user.pw_gid)
    return path


def chown_tree(root: Path) -> None:
    user = pwd.getpwnam("nobody")
    for path in [root, *root.rglob("*")]:
        os.chown(path, user.pw_uid, user.pw_gid)


@pytest.fixture(scope="module")
def display() -> Iterator[str]:
    """A virtual screen (Xvfb) on a free display number (it picks one: -displayfd)."""
    if os.geteuid() != 0:  # for unshare --mount and setpriv; `make test` runs as root
        pytest.fail("test_interop_gajim.py runs Gajim as nobody from root: run it as root")
    xvfb = require_command("Xvfb", "Xvfb (Debian package xvfb)")
    require_command("gajim", "Gajim (Debian package gajim)")
    require_command("dbus-daemon", "dbus-daemon (Debian package dbus-daemon)")
    require_command("gdbus", "gdbus (Debian package libglib2.0-bin)")
    require(Path("/usr/share/gajim/plugins/omemo").is_dir(), "Gajim's OMEMO plugin (gajim-omemo)")
    # the sockets' directory, which Xvfb run as nobody cannot make on a fresh machine
    sockets = Path("/tmp/.X11-unix")
    if not sockets.is_dir():
        sockets.mkdir()
        sockets.chmod(0o1777)
    read, write = os.pipe()
    proc = subprocess.Popen(
        [*AS_NOBODY, xvfb, "-displayfd", str(write), "-nolisten", "tcp", *SCREEN],
        pass_fds=[write],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    try:
        with os.fdopen(read) as numbers:
            number = numbers.readline().strip()
        assert number.isdigit(), "Xvfb printed no display number"
        yield f":{number}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def ca_bundle(ca_file: str) -> Iterator[Path]:
    """The system's CA bundle and the test CA, for Gajim's mount namespace."""
    directory = nobody_dir("gajim-ca-")
    bundle = directory / "ca-certificates.crt"
    bundle.write_bytes(SYSTEM_BUNDLE.read_bytes() + Path(ca_file).read_bytes())
    bundle.chmod(0o644)
    yield bundle
    shutil.rmtree(directory, ignore_errors=True)


class Gajim:
    """One Gajim process with a fresh profile, a session bus of its own, on `display`."""

    def __init__(self, srv: ServerProcess, user: str, display: str, ca_bundle: Path) -> None:
        self.srv = srv
        self.user = user
        self.jid = f"{user}@localhost/{RESOURCE}"
        self.root = nobody_dir("gajim-")
        self.home = self.root / "home"
        self.config = self.home / ".config" / "gajim"
        self.data = self.home / ".local" / "share" / "gajim"
        self.cache = self.home / ".cache" / "gajim"
        write_profile(self.config, ACCOUNT, user, "localhost", PASSWORD, srv.port)
        (self.root / "run").mkdir(mode=0o700)
        chown_tree(self.root)
        self.bus = subprocess.Popen(
            [
                *AS_NOBODY,
                "dbus-daemon",
                "--session",
                "--nofork",
                "--print-address=1",
                f"--address=unix:path={self.root / 'bus'}",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.bus.stdout is not None
        self.bus_address = self.bus.stdout.readline().strip()
        assert self.bus_address, "dbus-daemon printed no address"
        self.env = {
            "HOME": str(self.home),
            "XDG_CONFIG_HOME": str(self.home / ".config"),
            "XDG_DATA_HOME": str(self.home / ".local" / "share"),
            "XDG_CACHE_HOME": str(self.home / ".cache"),
            "XDG_RUNTIME_DIR": str(self.root / "run"),
            "DISPLAY": display,
            "DBUS_SESSION_BUS_ADDRESS": self.bus_address,
            "GDK_BACKEND": "x11",
            "NO_AT_BRIDGE": "1",  # no accessibility bus to look for
            "LANG": "C.UTF-8",
            "PATH": "/usr/bin:/bin",
        }
        # the CA bundle mounted in a namespace of Gajim's own, then nobody's privileges
        trust = f'mount --bind "{ca_bundle}" {SYSTEM_BUNDLE} && exec "$@"'
        self.xdotool_path = shutil.which("xdotool") or "xdotool"
        self.log_path = self.root / "gajim.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    *("unshare", "--mount", "sh", "-c", trust, "sh", *AS_NOBODY, "env", "-i"),
                    *(f"{k}={v}" for k, v in self.env.items()),
                    *("gajim", "--verbose"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    # --- driving it -------------------------------------------------------------------

    def gdbus(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                *AS_NOBODY,
                "env",
                f"DBUS_SESSION_BUS_ADDRESS={self.bus_address}",
                "gdbus",
                "call",
                "--session",
                "--dest",
                "org.gajim.Gajim",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=STEP,
        )

    def remote_call(self, method: str, *args: str) -> str | None:
        """A method of Gajim's remote control (strings as GVariant text); its answer."""
        path, interface = REMOTE
        done = self.gdbus(
            "--object-path", path, "--method", f"{interface}.{method}", *map(gvariant, args)
        )
        return done.stdout.strip() if done.returncode == 0 else None

    def remote(self, method: str, *args: str) -> str:
        """As remote_call, once the interface is there: Gajim exports it 5 s after it
        starts (its _remote_init), when it may well be online already."""
        answer: str = self.wait(lambda: self.remote_call(method, *args), f"D-Bus {method}")
        return answer

    def send(self, method: str, to: str, text: str) -> None:
        """send_chat_message or send_groupchat_message: it answers false (and sends
        nothing) until the account is online, or the room joined."""
        self.wait(lambda: self.remote_call(method, to, text, ACCOUNT) == "(true,)", method)

    def retry(self, action: Callable[[], Any], done: Callable[[], Any], what: str) -> Any:
        """`action` again, each second, until `done` (for clicks and keys that do nothing
        while a window is not yet ready for them)."""
        deadline = time.monotonic() + STEP
        while True:
            action()
            try:
                return self.wait(done, what, min(1.0, max(0.1, deadline - time.monotonic())))
            except AssertionError:
                if time.monotonic() >= deadline:
                    raise

    def wait(self, condition: Callable[[], Any], what: str, seconds: float = STEP) -> Any:
        deadline = time.monotonic() + seconds
        while (result := condition()) is None or result is False:
            assert self.proc.poll() is None, f"Gajim exited:\n{self.log_tail()}"
            assert time.monotonic() < deadline, f"never: {what}\n{self.log_tail()}"
            time.sleep(0.1)
        return result

    # --- what it did --------------------------------------------------------------------

    def sent(self, pattern: str, start: int = 0, seconds: float = STEP) -> re.Match[str]:
        """What Gajim sent, as the server's trace logged it (its bound JID, then <<<)."""
        line = re.compile(rf"fastxmpp\.trace: {re.escape(self.jid)} <<< [^\n]*?{pattern}")
        return self.wait(
            lambda: line.search(self.srv.log_text(), start), f"Gajim sent {pattern!r}", seconds
        )

    def has_sent(self, pattern: str) -> re.Match[str] | None:
        line = re.compile(rf"fastxmpp\.trace: {re.escape(self.jid)} <<< [^\n]*?{pattern}")
        return line.search(self.srv.log_text())

    def history(self) -> list[dict[str, Any]]:
        """Gajim's message history (logs.db): each row with the JID it is filed under."""
        path = self.data / "logs.db"
        if not path.exists():
            return []
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            db.row_factory = sqlite3.Row
            rows = db.execute(
                "SELECT jids.jid, logs.* FROM logs JOIN jids USING (jid_id) ORDER BY log_line_id"
            )
            return [dict(row) for row in rows]

    def roster(self) -> dict[str, dict[str, Any]]:
        """The roster as Gajim keeps it (cache.db: the last result and pushes, RFC 6121
        §2.1), by bare JID."""
        path = self.cache / "cache.db"
        if not path.exists():
            return {}
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT roster FROM roster WHERE account = ?", (ACCOUNT,)).fetchone()
        items = json.loads(row[0]) if row else []
        return {(i["jid"]["value"] if isinstance(i["jid"], dict) else i["jid"]): i for i in items}

    def wait_history(self, message: str) -> dict[str, Any]:
        return self.wait(
            lambda: next((r for r in self.history() if r["message"] == message), None),
            f"{message!r} in Gajim's history",
        )

    # --- its windows, as a user's mouse and keyboard reach them (xdotool) ---------------

    def activate(self, action: str, parameter: str) -> None:
        """One of the application's actions (GApplication's org.gtk.Actions on D-Bus, as
        its menus activate them); `parameter` a GVariant text."""
        done = self.gdbus(
            "--object-path",
            "/org/gajim/Gajim",
            "--method",
            "org.gtk.Actions.Activate",
            action,
            f"[<{parameter}>]",
            "{}",
        )
        assert done.returncode == 0, done.stderr

    def open_window(self, action: str, parameter: str, title: str) -> tuple[int, int, int, int]:
        """The window an account's action opens: the action again until it shows (Gajim
        enables its online actions a moment after it is online; a disabled action is
        silently ignored)."""
        self.retry(lambda: self.activate(action, parameter), lambda: self.find_window(title), title)
        return self.window(title)

    def xdotool(self, *args: str) -> str:
        done = subprocess.run(
            [*AS_NOBODY, "env", f"DISPLAY={self.env['DISPLAY']}", self.xdotool_path, *args],
            capture_output=True,
            text=True,
            timeout=STEP,
        )
        assert done.returncode == 0, f"xdotool {args}: {done.stderr}"
        return done.stdout

    def find_window(self, title: str) -> str | None:
        """The id of the shown window titled `title` (None: none shows)."""
        found = subprocess.run(
            [
                *(*AS_NOBODY, "env", f"DISPLAY={self.env['DISPLAY']}", self.xdotool_path),
                *("search", "--onlyvisible", "--name", f"^{re.escape(title)}$"),
            ],
            capture_output=True,
            text=True,
            timeout=STEP,
        )
        ids = found.stdout.split() if found.returncode == 0 else []
        return ids[0] if ids else None

    def window(self, title: str) -> tuple[int, int, int, int]:
        """The position and size of the window titled `title`, once it shows."""
        window = self.wait(lambda: self.find_window(title), f"the window {title!r}")
        shape = self.xdotool("getwindowgeometry", "--shell", window)
        values = dict(line.split("=", 1) for line in shape.split())
        return (int(values["X"]), int(values["Y"]), int(values["WIDTH"]), int(values["HEIGHT"]))

    def log_tail(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(line[:400] for line in text.splitlines()[-40:])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.bus.terminate()
        self.bus.wait(5)
        shutil.rmtree(self.root, ignore_errors=True)


def gvariant(text: str) -> str:
    """A string as GVariant text (gdbus parses its arguments so)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


@pytest.fixture
def gajim(srv: ServerProcess, display: str, ca_bundle: Path) -> Iterator[Callable[[str], Gajim]]:
    started: list[Gajim] = []

    def start(user: str, bundle: Path = ca_bundle) -> Gajim:
        g = Gajim(srv, user, display, bundle)
        started.append(g)
        return g

    yield start
    for g in started:
        g.close()


CAPS = "http://jabber.org/protocol/caps"
RECEIPTS = "urn:xmpp:receipts"


def test_login_roster_presence_and_chat(
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    gajim: Callable[..., Gajim],
) -> None:
    user, peer = next(names), next(names)
    other = befriend(srv, ca_file, user, peer, clients)
    g = gajim(user)
    # RFC 6120 §5 STARTTLS (the certificate verified by GLib against the bundle with the test
    # CA), §6 SASL with the strongest SCRAM nbxmpp takes, §7 bind of the resource set in the
    # profile; XEP-0198 §3 stream management with resumption
    srv.wait_for_log(f"authenticated {user}@localhost with SCRAM-SHA-256", STEP)
    srv.wait_for_log(f"bound {g.jid}", STEP)
    srv.wait_for_log(f"stream management for {g.jid}, resumable", STEP)
    # RFC 6121 §4.2: Gajim's initial presence reaches the contact, with its caps (XEP-0115)
    online = wait_for(
        other,
        "Gajim's presence",
        lambda el: el.tag == PRESENCE and el.get("from") == g.jid,
        seconds=STEP,
    )
    assert online.get("type") is None
    assert online.find(f"{{{CAPS}}}c").get("node") == "https://gajim.org"
    # §2.1.3 the roster and §4.2.3 the contact's presence, as Gajim lists its contacts
    contacts = g.wait(
        lambda: re.search(
            rf"\{{[^{{}}]*'jid': <'{peer}@localhost'>[^{{}}]*\}}", g.remote("list_contacts", "")
        ),
        "the contact in Gajim's roster",
    ).group(0)
    assert "'show': <'online'>" in contacts and "'raw'" in contacts, contacts

    # RFC 6121 §4.2: a status set by D-Bus (gajim-remote's change_status) reaches the contact
    g.remote("change_status", "away", "out for lunch", ACCOUNT)
    away = wait_for(
        other,
        "Gajim's away presence",
        lambda el: el.tag == PRESENCE and el.findtext(f"{{{CLIENT}}}show") == "away",
        seconds=STEP,
    )
    assert away.get("from") == g.jid and away.findtext(f"{{{CLIENT}}}status") == "out for lunch"

    # a chat message each way (RFC 6121 §5); Gajim asks for a receipt (XEP-0184 §5.1) and
    # gives one when asked (§5.2)
    g.send("send_chat_message", f"{peer}@localhost", "hello from gajim")
    msg = wait_for(
        other, "Gajim's message", lambda el: body(el) == "hello from gajim", seconds=STEP
    )
    assert msg.get("from") == g.jid and msg.get("type") == "chat"
    assert msg.find(f"{{{RECEIPTS}}}request") is not None
    other.send(
        f"<message to='{g.jid}' type='chat' id='ask-receipt'><body>hello gajim</body>"
        f"<request xmlns='{RECEIPTS}'/></message>"
    )
    receipt = wait_for(
        other,
        "Gajim's receipt",
        lambda el: el.find(f"{{{RECEIPTS}}}received") is not None,
        seconds=STEP,
    )
    assert receipt.find(f"{{{RECEIPTS}}}received").get("id") == "ask-receipt"
    assert receipt.get("from") == g.jid
    # both in Gajim's history, the incoming one with the id of the account's archive
    # (XEP-0359 stanza-id by the account, XEP-0313 §5.1.2), as the server stamped it
    got = g.wait_history("hello gajim")
    assert got["jid"] == f"{peer}@localhost" and got["stanza_id"], got
    stamped = re.search(
        rf"fastxmpp\.trace: {re.escape(g.jid)} >>> [^\n]*hello gajim[^\n]*"
        rf"<stanza-id (?=[^>]*by=.{user}@localhost.)[^>]*id=.([^'\"]+)",
        srv.log_text(),
    )
    assert stamped and stamped.group(1) == got["stanza_id"]
    assert g.wait_history("hello from gajim")["jid"] == f"{peer}@localhost"

    # RFC 6121 §3.1: a newcomer's subscription request, approved by Gajim (the profile sets
    # the account's autoauth, "accept subscription requests automatically")
    third = asking_to_subscribe(srv, ca_file, next(names), user, clients)
    # §3.1.5: Gajim's presence follows the approval
    approved_and_present(third, user, g.jid, "Gajim", STEP)


def test_certificate_not_signed_by_a_trusted_ca_is_refused(
    srv: ServerProcess, names: Iterator[str], gajim: Callable[..., Gajim]
) -> None:
    # RFC 6125 with the system's CAs only (the test CA not among them): GLib finds the
    # certificate untrusted, Gajim stops before SASL and asks its user (its SSL error
    # window); the same profile with the test CA logs in (test_login_roster_presence_and_chat)
    user = next(names)
    start = len(srv.log_text())
    g = gajim(user, SYSTEM_BUNDLE)
    g.window("SSL Certificate Verification Error")
    # the server saw it ask for TLS (RFC 6120 §5.4.2) and leave without authenticating
    port = refused_before_sasl(srv, start, user)
    srv.wait_for_log(f"c2s connection from 127.0.0.1:{port} closed (unauthenticated)")


CARBONS = "urn:xmpp:carbons:2"
MAM = "urn:xmpp:mam:2"


def test_archive_catch_up_and_carbons(
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    gajim: Callable[..., Gajim],
) -> None:
    user, peer = next(names), next(names)
    other = befriend(srv, ca_file, user, peer, clients)
    # history made before Gajim ever ran, archived by the server (XEP-0313)
    mine = raw_login(srv, ca_file, user, clients)
    mine.send(f"<message to='{peer}@localhost' type='chat'><body>archived one</body></message>")
    wait_for(other, "archived one", lambda el: body(el) == "archived one")
    other.send(
        f"<message to='{user}@localhost/raw' type='chat'><body>archived two</body></message>"
    )
    wait_for(mine, "archived two", lambda el: body(el) == "archived two")

    g = gajim(user)
    # XEP-0313 §4: Gajim's first connect asks the account's archive (a week back) and files
    # what it gets under the contact, with the archive's ids
    g.sent(rf"<iq [^>]*type=.set.[^>]*><query xmlns=.{MAM}.")
    first, second = g.wait_history("archived one"), g.wait_history("archived two")
    assert first["jid"] == second["jid"] == f"{peer}@localhost"
    assert first["stanza_id"] and second["stanza_id"] and first["stanza_id"] != second["stanza_id"]
    # XEP-0280 §4: carbons enabled ...
    g.sent(rf"<enable xmlns=.{CARBONS}.")
    mine.send(f"<iq type='set' id='carbons'><enable xmlns='{CARBONS}'/></iq>")
    assert wait_for(mine, "carbons", lambda el: el.get("id") == "carbons").get("type") == "result"
    # ... §6: what the account's other resource sends comes to Gajim as a sent carbon ...
    mine.send(
        f"<message to='{peer}@localhost' type='chat'><body>from my other resource</body></message>"
    )
    assert g.wait_history("from my other resource")["jid"] == f"{peer}@localhost"
    # ... §5: and what is sent to the other resource as a received carbon
    other.send(
        f"<message to='{user}@localhost/raw' type='chat'><body>to my other resource</body>"
        "</message>"
    )
    assert g.wait_history("to my other resource")["jid"] == f"{peer}@localhost"
    # and what Gajim sends reaches the other resource as a sent carbon
    g.send("send_chat_message", f"{peer}@localhost", "from gajim")
    carbon = wait_for(
        mine,
        "the carbon of Gajim's message",
        lambda el: el.find(f"{{{CARBONS}}}sent") is not None,
        seconds=STEP,
    )
    forwarded = carbon.find(f"{{{CARBONS}}}sent/{{urn:xmpp:forward:0}}forwarded/{MESSAGE}")
    assert forwarded.get("from") == g.jid and body(forwarded) == "from gajim"


MUC = "http://jabber.org/protocol/muc"
MUC_USER = f"{MUC}#user"
VCARD = "vcard-temp"


def test_room_autojoin_groupchat_and_occupant_avatar(
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    gajim: Callable[..., Gajim],
) -> None:
    user, peer = next(names), next(names)
    room = f"room-{user}@conference.localhost"
    # the peer has an avatar in its vCard (XEP-0153) ...
    other = Client(raw_login(srv, ca_file, peer, clients), peer, "")
    image = avatar_png(6, 5)
    sha = hashlib.sha1(image).hexdigest()
    photo = base64.b64encode(image).decode()
    reply = other.iq(
        "set",
        f"<vCard xmlns='{VCARD}'><PHOTO><TYPE>image/png</TYPE><BINVAL>{photo}</BINVAL></PHOTO>"
        "</vCard>",
    )
    assert reply.get("type") == "result"
    # ... and makes a room (XEP-0045 §10.1.2, instant), where the server puts the avatar's
    # hash in its presence (XEP-0398 §5)
    other.send(f"<presence to='{room}/{peer}'><x xmlns='{MUC}'/></presence>")
    reply = other.iq(
        "set", f"<query xmlns='{MUC}#owner'><x xmlns='jabber:x:data' type='submit'/></query>", room
    )
    assert reply.get("type") == "result"
    # the user's bookmark of the room, autojoin (XEP-0402), made by another of its clients
    mine = Client(raw_login(srv, ca_file, user, clients), user, "")
    assert publish_bookmark(mine, room, "Gajim room", "bm").get("type") == "result"
    mine.c.close()
    clients.remove(mine.c)

    g = gajim(user)
    # Gajim reads its bookmarks and enters the room with the bookmark's nick (§7.2.2)
    joined = wait_for(
        other.c,
        "Gajim entering the room",
        lambda el: el.tag == PRESENCE and el.get("from") == f"{room}/{user}",
        seconds=STEP,
    )
    assert joined.get("type") is None
    item = joined.find(f"{{{MUC_USER}}}x/{{{MUC_USER}}}item")
    assert (item.get("affiliation"), item.get("role")) == ("none", "participant")
    # a groupchat message each way (§7.4)
    g.send("send_groupchat_message", room, "hello room from gajim")
    got = wait_for(
        other.c, "Gajim's groupchat", lambda el: body(el) == "hello room from gajim", seconds=STEP
    )
    assert (got.get("from"), got.get("type")) == (f"{room}/{user}", "groupchat")
    other.send(f"<message to='{room}' type='groupchat'><body>hello from the room</body></message>")
    line = g.wait_history("hello from the room")
    assert line["jid"] == room and line["contact_name"] == peer, line
    # the occupant's avatar: Gajim asks the vCard at the occupant's JID (room/nick,
    # XEP-0153 §3.2 by way of XEP-0045 §7.2.4's presence), which the server answers with the
    # occupant's own vCard (as Prosody and ejabberd do); Gajim keeps the image by its hash
    g.sent(rf"<iq [^>]*to=.{re.escape(room)}/{peer}.[^>]*><vCard xmlns=.{VCARD}.")
    avatar = g.wait(lambda: (g.cache / "avatars" / sha).is_file(), "the avatar in Gajim's cache")
    assert avatar and (g.cache / "avatars" / sha).read_bytes() == image


AXOLOTL = "eu.siacs.conversations.axolotl"
PUBSUB = "http://jabber.org/protocol/pubsub"
AVATAR_DATA = "urn:xmpp:avatar:data"
AVATAR_METADATA = "urn:xmpp:avatar:metadata"
VCARD_UPDATE = "vcard-temp:x:update"


def test_avatars_both_ways_and_omemo_keys(
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    gajim: Callable[..., Gajim],
) -> None:
    require_command("xdotool", "xdotool (Debian package xdotool)")
    user, peer = next(names), next(names)
    other = befriend(srv, ca_file, user, peer, clients)
    g = gajim(user)
    # Gajim's caps ask for avatar metadata notifications (XEP-0163 §4: +notify): its
    # answer to the server's caps query (XEP-0115 §6.2; asked once per caps hash, so
    # perhaps of an earlier test's Gajim with the same hash) ...
    online = wait_for(
        other,
        "Gajim's presence",
        lambda el: el.tag == PRESENCE and el.get("from") == g.jid,
        seconds=STEP,
    )
    caps = online.find(f"{{{CAPS}}}c")
    node = re.escape(f"{caps.get('node')}#{caps.get('ver')}")
    answer = re.compile(
        rf"fastxmpp\.trace: \S+ <<< [^\n]*<query [^>]*node=.{node}.[^\n]*"
        rf'<feature var="{AVATAR_METADATA}\+notify"'
    )
    g.wait(lambda: answer.search(srv.log_text()), "Gajim's caps in the server's log")
    # ... so when the contact publishes an avatar (XEP-0084 §4.1 data, §4.2 metadata), the
    # server notifies Gajim, which fetches the data by the id (§4.3) and keeps the image
    theirs = avatar_png(7, 3)
    their_sha = hashlib.sha1(theirs).hexdigest()
    contact = User(other, peer)
    assert contact.publish_avatar(theirs) == their_sha
    g.sent(rf'<items node="{AVATAR_DATA}"><item id="{their_sha}"')
    g.wait(lambda: (g.cache / "avatars" / their_sha).is_file(), "the avatar in Gajim's cache")
    assert (g.cache / "avatars" / their_sha).read_bytes() == theirs

    # Gajim's own avatar, set in its profile window: the picture, alone in Gajim's home
    # (where its file chooser opens) ...
    picture = g.home / "avatar.png"
    picture.write_bytes(avatar_png(64, 64))
    chown_tree(picture)
    # ... as a user does it: Accounts > Profile, Edit, the pencil on the picture, the file,
    # Update under the crop area, Save
    x, y, width, height = g.open_window(f"{ACCOUNT}-profile", gvariant(ACCOUNT), "Profile")
    center = (str(x + width // 2), str(y + height // 2))  # the keyboard's focus follows it
    pencil = (str(x + width // 2 + 82), str(y + 218))  # at the picture's lower right

    def edit_the_picture() -> None:
        # again until the file chooser shows: a key or click too early does nothing
        g.xdotool("mousemove", *center, "key", "alt+e")  # _Edit (then the pencil shows)
        g.xdotool("mousemove", *pencil, "click", "1")

    g.retry(edit_the_picture, lambda: g.find_window("Choose Avatar…"), "the file chooser")
    cx, cy, cw, ch = g.window("Choose Avatar…")
    g.retry(  # _Open: the only file there, selected as the chooser opens
        lambda: g.xdotool("mousemove", str(cx + cw // 2), str(cy + ch // 2), "key", "alt+o"),
        lambda: g.find_window("Choose Avatar…") is None,
        "the file chooser closed",
    )
    avatars = g.cache / "avatars"
    before = set(avatars.iterdir()) if avatars.is_dir() else set()
    # Update, under the crop area (shown once the chooser is gone: its callback shows it),
    # right of the middle at the window's bottom; Gajim keeps the cropped picture (a PNG of
    # its own) by its SHA-1 ...
    g.xdotool("mousemove", str(x + width // 2 + 44), str(y + height - 36), "click", "1")
    made = g.wait(
        lambda: (set(avatars.iterdir()) - before or None) if avatars.is_dir() else None,
        "the cropped picture",
    )
    (path,) = made
    image = path.read_bytes()
    sha = hashlib.sha1(image).hexdigest()
    assert path.name == sha and image.startswith(b"\x89PNG")
    g.xdotool("mousemove", str(x + width // 2), str(y + height // 2), "key", "alt+s")  # _Save
    # ... and publishes it (XEP-0084 §4.1: data, §4.2: metadata, the id the SHA-1)
    g.sent(rf'<publish node="{AVATAR_DATA}"><item id="{sha}">')
    g.sent(rf'<publish node="{AVATAR_METADATA}"><item id="{sha}"><metadata [^>]*><info ')
    # the contact gets the hash in Gajim's presence (the server's XEP-0398 §5: XEP-0153)
    photo = wait_for(
        other,
        "the presence with the new photo",
        lambda el: (
            el.tag == PRESENCE
            and el.findtext(f"{{{VCARD_UPDATE}}}x/{{{VCARD_UPDATE}}}photo") == sha
        ),
        seconds=STEP,
    )
    assert photo.get("from") == g.jid
    # and the picture itself, as data (XEP-0084 §4.3) and in the vCard (XEP-0398 §4)
    item = contact.newest(f"{user}@localhost", AVATAR_DATA)
    assert item.get("id") == sha
    assert base64.b64decode(item.findtext(f"{{{AVATAR_DATA}}}data")) == image
    assert contact.vcard_photo(f"{user}@localhost") == ("image/png", image)

    # OMEMO: gajim-omemo (XEP-0384 0.3, eu.siacs.conversations.axolotl) publishes its bundle, reads
    # its device list (none yet: item-not-found, XEP-0060 §6.5.9.11) and publishes one with
    # its device, both with publish-options access_model open (XEP-0060 §7.1.5)
    device = g.sent(
        rf'<publish node="{AXOLOTL}.devicelist"><item id="current"><list [^>]*>'
        r'<device id="(\d+)"'
    ).group(1)
    g.sent(rf'<publish node="{AXOLOTL}.bundles:{device}">')
    # what any other client finds (open access: not even a contact)
    stranger = raw_login(srv, ca_file, next(names), clients)

    def items(node: str) -> Any:
        stranger.send(
            f"<iq type='get' id='items' to='{user}@localhost'><pubsub xmlns='{PUBSUB}'>"
            f"<items node='{node}'/></pubsub></iq>"
        )
        return wait_for(stranger, node, lambda el: el.get("id") == "items")

    def published() -> Any:
        reply = items(f"{AXOLOTL}.devicelist")
        return reply if reply.get("type") == "result" else None

    listed = g.wait(published, "the device list")
    assert [d.get("id") for d in listed.iter(f"{{{AXOLOTL}}}device")] == [device]
    reply = items(f"{AXOLOTL}.bundles:{device}")
    assert reply.get("type") == "result"
    bundle = reply.find(f".//{{{AXOLOTL}}}bundle")
    assert bundle is not None and bundle.findtext(f"{{{AXOLOTL}}}identityKey")
    assert bundle.findtext(f"{{{AXOLOTL}}}signedPreKeyPublic")
    assert len(bundle.findall(f"{{{AXOLOTL}}}prekeys/{{{AXOLOTL}}}preKeyPublic")) >= 20


def test_contact_added_from_the_add_contact_dialog(
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    gajim: Callable[..., Gajim],
) -> None:
    require_command("xdotool", "xdotool (Debian package xdotool)")
    user, peer = next(names), next(names)
    other = raw_login(srv, ca_file, peer, clients)
    other.send("<presence/>")
    g = gajim(user)
    srv.wait_for_log(f"bound {g.jid}", STEP)
    # Accounts > Add Contact with the address filled in (as an xmpp:...?roster link does)
    address = f"[{gvariant(ACCOUNT)}, {gvariant(peer + '@localhost')}]"
    x, y, width, height = g.open_window(f"{ACCOUNT}-add-contact", address, "Add Contact")
    center = (str(x + width // 2), str(y + height // 2))
    # Next: Gajim asks the address's disco#info; not a subscriber yet, it gets
    # service-unavailable (XEP-0030 §3.1, RFC 6121 §8.5.3: as for an account that does not
    # exist), which Gajim takes for a contact (Prosody's answer; ejabberd's is
    # subscription-required)
    g.retry(
        lambda: g.xdotool("mousemove", *center, "key", "Return"),
        lambda: re.search(
            rf"{re.escape(g.jid)} >>> [^\n]*from=.{peer}@localhost.[^\n]*service-unavailable",
            srv.log_text(),
        ),
        "the disco#info error",
    )
    # Add Contact: RFC 6121 §3.1.1, the roster item, then the subscription request
    add = (str(x + width - 159), str(y + height - 42))  # the button at the lower right
    g.retry(
        lambda: g.xdotool("mousemove", *add, "click", "1"),
        lambda: g.has_sent(rf"<presence (?=[^>]*type=.subscribe.)[^>]*to=.{peer}@localhost."),
        "Gajim's subscription request",
    )
    g.sent(rf'<query xmlns="jabber:iq:roster"><item jid="{peer}@localhost"')
    request = wait_for(other, "the request", lambda el: el.get("type") == "subscribe", seconds=STEP)
    assert request.get("from") == f"{user}@localhost"
    # §3.1.3, §3.1.5: approved: the roster push Gajim keeps (its roster cache), and the
    # contact's presence delivered to it
    other.send(f"<presence to='{user}@localhost' type='subscribed'/>")
    item = g.wait(
        lambda: (i := g.roster().get(f"{peer}@localhost")) and i["subscription"] == "to" and i,
        "the subscription in Gajim's roster",
    )
    assert item["ask"] is None
    delivered = re.compile(
        rf"{re.escape(g.jid)} >>> [^\n]*<presence [^>]*from=.{peer}@localhost/raw."
    )
    g.wait(lambda: delivered.search(srv.log_text()), "the contact's presence to Gajim")


DISCO_INFO = "http://jabber.org/protocol/disco#info"


def test_room_created_from_the_create_group_chat_window(
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    gajim: Callable[..., Gajim],
) -> None:
    require_command("xdotool", "xdotool (Debian package xdotool)")
    user, peer = next(names), next(names)
    g = gajim(user)
    srv.wait_for_log(f"bound {g.jid}", STEP)
    # Gajim > Create Group Chat: a name typed, _Create (the address a random one at the
    # service Gajim found in the server's disco#items)
    x, y, width, height = g.open_window("create-groupchat", gvariant(ACCOUNT), "Create Group Chat")
    g.xdotool("mousemove", str(x + width // 2), str(y + height // 2), "key", "alt+n")
    g.xdotool("type", "--delay", "20", "Gajims room")
    g.retry(
        lambda: g.xdotool("mousemove", str(x + width // 2), str(y + height // 2), "key", "alt+c"),
        lambda: g.has_sent(r"<presence [^>]*to=.[a-z0-9-]+@conference\.localhost/"),
        "Gajim entering its new room",
    )
    room = g.sent(r"<presence [^>]*to=.([a-z0-9-]+@conference\.localhost)/").group(1)
    # XEP-0045 §10.1.2-3: a new room (201), whose form Gajim asks for and submits with its
    # defaults and the name (members-only, persistent, non-anonymous, archived)
    form = g.sent(
        rf"<iq (?=[^>]*to=.{re.escape(room)}.)[^>]*id=.([^\"']+).[^>]*><query "
        rf'xmlns="{MUC}#owner"><x xmlns="jabber:x:data" type="submit">[^\n]*'
    )
    submitted = form.group(0)
    assert re.search(r'var="muc#roomconfig_roomname"[^/]*<value>Gajims room</value>', submitted)
    assert re.search(r'var="muc#roomconfig_membersonly"[^/]*<value>(1|true)</value>', submitted)
    # the server takes the form (§10.2: a result), and the room is what Gajim asked for
    answered = re.compile(
        rf"{re.escape(g.jid)} >>> [^\n]*<iq (?=[^>]*type=.result.)[^>]*id=.{form.group(1)}."
    )
    g.wait(lambda: answered.search(srv.log_text()), "the form's result")
    other = raw_login(srv, ca_file, peer, clients)
    other.send(f"<iq type='get' id='info' to='{room}'><query xmlns='{DISCO_INFO}'/></iq>")
    info = wait_for(other, "the room's disco#info", lambda el: el.get("id") == "info")
    assert info.get("type") == "result"
    query = info.find(f"{{{DISCO_INFO}}}query")
    assert query.find(f"{{{DISCO_INFO}}}identity").get("name") == "Gajims room"
    assert {f.get("var") for f in query.iterfind(f"{{{DISCO_INFO}}}feature")} >= {
        "muc_membersonly",
        "muc_persistent",
        "muc_nonanonymous",
        "muc_hidden",
    }


def test_stream_resumed_after_the_connection_is_cut(
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    gajim: Callable[..., Gajim],
) -> None:
    ss = require_command("ss", "ss (Debian package iproute2)")
    user, peer = next(names), next(names)
    other = befriend(srv, ca_file, user, peer, clients)
    g = gajim(user)
    wait_for(
        other,
        "Gajim's presence",
        lambda el: el.tag == PRESENCE and el.get("from") == g.jid,
        seconds=STEP,
    )
    srv.wait_for_log(f"stream management for {g.jid}, resumable", STEP)
    bound = re.search(rf"c2s 127\.0\.0\.1:(\d+): bound {re.escape(g.jid)}", srv.log_text())
    assert bound
    # the TCP connection cut at both ends (the kernel's sock_destroy), as a network does
    port = bound.group(1)
    cut = subprocess.run(
        [ss, "-K", f"( sport = :{port} or dport = :{port} )"], capture_output=True, text=True
    )
    assert cut.returncode == 0, cut.stderr
    srv.wait_for_log(f"{g.jid} lost its connection", STEP)
    # XEP-0198 §5: what comes meanwhile waits in the detached session ...
    other.send(f"<message to='{g.jid}' type='chat'><body>while you were cut</body></message>")
    # ... Gajim reconnects (3 s later), resumes the session, and gets it once
    srv.wait_for_log(f"resumed {g.jid}", 2 * STEP)
    g.wait_history("while you were cut")
    other.send(f"<message to='{g.jid}' type='chat'><body>after the cut</body></message>")
    g.wait_history("after the cut")
    assert [r["message"] for r in g.history()].count("while you were cut") == 1
    # the session never ended: the contact saw no unavailable presence of Gajim's
    seen = settle(other)
    assert not [el for el in seen if el.get("from") == g.jid and el.get("type") == "unavailable"]
