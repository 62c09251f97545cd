"""Psi (Debian's `psi` 1.5, the Qt 5 desktop client on its own XMPP library Iris; not
libstrophe, nbxmpp, QXmpp or libpurple) run as the real program, with a fresh profile for each
test, on the test's virtual screen (Xvfb on a free display number, test_interop_dino.Display)
with a session bus of its own (dbus-daemon). Psi runs as root here: it does not refuse to.

The profile is written beforehand, so no wizard shows: profiles/default/accounts.xml under
$XDG_CONFIG_HOME/psi (one account: its JID, the password as Psi obfuscates it, XORed with
the JID, src/common.cpp encodePassword; a manual host and port, STARTTLS required, a fixed
resource, automatic login, reconnection on) and options.xml (no tip of the day, subscription
requests approved automatically, no vCard editor over the other windows). The server's
certificate is verified as Psi always does it, against the system's CAs plus the PEM files of
its data directory's certs/ (CertificateHelpers::allCertificates), where the test CA is put;
nothing turns verification off. Psi connects through a forwarder of the test's on loopback
(test_interop_dino.Forwarder), so the test can cut its TCP connection.

Psi is driven as a user's desktop would drive it: its D-Bus interface (org.psi_im.Psi.Main
on /Main, src/dbus.cpp: setStatus, and openURI, which hands it xmpp: URIs as a click on a
link would: ?message;type=chat;body=... opens a chat with the text in its input, ?join the
join dialog filled in, ?vcard the contact's information), and keys into its windows (xdotool:
Enter sends the chat's text and joins from the join dialog; text typed into a room's window).
What it did is checked on the server's side: raw clients (tests/xmpp_raw.py) beside it and
the server's stanza trace (its debug log); and in Psi's own files: its history of each
contact (text files, one event a line) and its vCard cache.

What it showed (no server bug; Psi's ways the tests follow):
- It takes SCRAM-SHA-256 though the server offers SCRAM-SHA-256-PLUS first (Iris 1.5 has no
  channel binding), enables XEP-0198 asking for resumption, carbons, and a privacy list of
  its own (XEP-0016, "blocked", made default and active at each login).
- It accepts the default configuration of a room it creates at once (its option
  options.muc.accept-defaults, on by default: the instant room of XEP-0045 §10.1.2), so the
  room is open to others right away (Dino leaves it locked: test_interop_dino.py).
- After its connection is cut it waits 15 s (the first step of reconnectData() in
  src/psiaccount.cpp) and logs in afresh: it asked for resumption but never resumes. The
  new session's bind of the same resource ends the detached one (RFC 6120 §7.7.2.2), whose
  unacknowledged message the server stores offline and delivers to the new session.
- Iris writes attributes in no fixed order (QDom's, varying between runs): the patterns
  matching what it sent use lookaheads for them; it puts newlines between elements, so the
  server logs one stanza over several lines.
- With no window manager on Xvfb, windows stack as they map and the keyboard goes to the
  window under the pointer: the test raises the window and moves the pointer there before
  its keys. Own vCard empty, Psi 1.5 opens its vCard editor over the other windows at
  login (PsiAccount::slotCheckVCard) unless options.vcard.query-own-vcard-on-login is off;
  with the option off it still asks its vCard at login, which the vCard test checks.
- Psi 1.5's bug: an xmpp:?roster URI without group= leaves the Add Contact dialog's group
  box empty instead of "<None>", and AddUserDlg::ok (src/adduserdlg.cpp) then sends the
  contact's roster item with an empty <group></group>, which RFC 6121 §2.3.3 requires the
  server to refuse (not-acceptable; Prosody keeps a group named ""): the contact is still
  asked for its presence, but its name is lost. The test gives a group in the URI, as a
  user would pick one in the dialog.
- It keeps no history of rooms (only of contacts), so a groupchat it got is checked on its
  stream, then by a ping it answers after it (Iris handles stanzas in order).
- Its keepalive is a whitespace ping every 55 s (setNoopTime(55000)), too slow for a test;
  it answers XEP-0199 pings (checked).
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PASSWORD, FreshNames, ServerProcess, module_server
from interop_clients import (
    approved_and_present,
    asking_to_subscribe,
    body,
    raw_login,
    refused_before_sasl,
    require_command,
    wait_for,
)
from lxml import etree
from test_client_flows import Client
from test_interop_dino import MUC, Display, Forwarder, make_room, start_bus, statuses, stop
from test_interop_profanity import befriend
from xmpp_raw import CLIENT, RawClient

POOL = FreshNames("ps", 24)
RESOURCE = "psi"
MESSAGE = f"{{{CLIENT}}}message"
PRESENCE = f"{{{CLIENT}}}presence"
STEP = 20.0  # seconds one step of Psi's may take on a loaded 2-core machine
PSI_BUS_NAME = "org.psi-im.Psi"


@pytest.fixture(scope="module")
def srv(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(ca, tmp_path_factory, POOL)


@pytest.fixture
def names() -> Iterator[str]:
    return POOL.names()


@pytest.fixture(scope="module")
def display() -> Iterator[Display]:
    require_command("psi", "Psi (Debian package psi)")
    require_command("gdbus", "gdbus (Debian package libglib2.0-bin)")
    require_command("xdotool", "xdotool (Debian package xdotool)")
    shown = Display()
    yield shown
    shown.close()


def encode_password(password: str, key: str) -> str:
    """Psi's obfuscation of a stored password (encodePassword in src/common.cpp): each UTF-16
    unit XORed with the key's (the account's JID), as 4 hex digits."""
    return "".join(f"{ord(char) ^ ord(key[i % len(key)]):04x}" for i, char in enumerate(password))


def option(name: str, kind: str, value: str) -> str:
    return f'<{name} type="{kind}">{value}</{name}>'


def write_profile(config: Path, jid: str, port: int) -> None:
    """Psi's profile `default` with one account, connecting at start to 127.0.0.1:`port`
    (its manual host), TLS required (STARTTLS), the resource fixed."""
    profile = config / "profiles" / "default"
    profile.mkdir(parents=True)
    account = "".join(
        [
            option("id", "QString", "{00000000-0000-4000-8000-000000000001}"),
            option("name", "QString", "fast"),
            option("jid", "QString", jid),
            option("password", "QString", encode_password(PASSWORD, jid)),
            option("enabled", "bool", "true"),
            option("auto", "bool", "true"),
            option("use-host", "bool", "true"),
            option("host", "QString", "127.0.0.1"),
            option("port", "int", str(port)),
            option("ssl", "QString", "yes"),
            option("automatic-resource", "bool", "false"),
            option("resource", "QString", RESOURCE),
            option("priority", "int", "5"),
            option("keep-alive", "bool", "true"),
            option("enable-sm", "bool", "true"),
            option("reconn", "bool", "true"),
            option("log", "bool", "true"),
            option("allow-plain", "QString", "over encryped"),
        ]
    )
    (profile / "accounts.xml").write_text(
        '<!DOCTYPE accounts><accounts version="1.5" xmlns="http://psi-im.org/options">'
        f"<accounts><a0>{account}</a0></accounts></accounts>\n"
    )
    (profile / "options.xml").write_text(
        '<!DOCTYPE options><options version="1.5" xmlns="http://psi-im.org/options">'
        "<options>"
        "<ui><tip>" + option("show", "bool", "false") + "</tip></ui>"
        "<subscriptions>"
        + option("automatically-allow-authorization", "bool", "true")
        + "</subscriptions>"
        # Psi still asks its own vCard at login when it has none cached (PsiAccount::
        # cs_authenticated); without this it also opens its vCard editor when the vCard is
        # empty (slotCheckVCard), a window over the others
        "<vcard>" + option("query-own-vcard-on-login", "bool", "false") + "</vcard>"
        "</options></options>\n"
    )


class Psi:
    """One Psi with a fresh profile and a session bus of its own, on the test's display,
    connecting through a forwarder of the test's (which can cut the connection)."""

    def __init__(
        self, root: Path, srv: ServerProcess, display: Display, user: str, ca: str | None
    ) -> None:
        self.root = root
        self.srv = srv
        self.jid = f"{user}@localhost/{RESOURCE}"
        home = root / "home"
        self.config = home / ".config" / "psi"
        self.data = home / ".local" / "share" / "psi"
        self.cache = home / ".cache" / "psi"
        self.forwarder = Forwarder(Loopback(), srv.port, 0)
        write_profile(self.config, f"{user}@localhost", self.forwarder.listener.getsockname()[1])
        # Psi adds the certificates of its data directory's certs/ to the system's
        # (CertificateHelpers::allCertificates, ApplicationInfo::getCertificateStoreDirs)
        (self.data / "certs").mkdir(parents=True)
        if ca is not None:
            shutil.copy(ca, self.data / "certs" / "test-ca.crt")
        (home / "run").mkdir(mode=0o700)
        self.bus, self.bus_address = start_bus(root)
        self.env = {
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_DATA_HOME": str(home / ".local" / "share"),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "XDG_RUNTIME_DIR": str(home / "run"),
            "DISPLAY": display.display,
            "DBUS_SESSION_BUS_ADDRESS": self.bus_address,
            "QT_QPA_PLATFORM": "xcb",
            "NO_AT_BRIDGE": "1",
            "LANG": "C.UTF-8",
            "PATH": "/usr/bin:/bin",
        }
        self.xdotool_path = require_command("xdotool", "xdotool (Debian package xdotool)")
        self.log_path = root / "psi.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                ["psi"], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    # --- driving it -------------------------------------------------------------------

    def call(self, method: str, *args: str) -> None:
        """A method of Psi's D-Bus interface (org.psi_im.Psi.Main on /Main, src/dbus.cpp),
        retried until Psi holds its name on the bus."""

        def once() -> bool:
            done = subprocess.run(
                [
                    *("gdbus", "call", "--session", "--dest", PSI_BUS_NAME),
                    *("--object-path", "/Main", "--method", f"org.psi_im.Psi.Main.{method}"),
                    *args,
                ],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=STEP,
            )
            return done.returncode == 0

        self.wait(once, f"D-Bus {method}")

    def open_uri(self, uri: str) -> None:
        """An xmpp: URI (RFC 5122) as a click on a link would hand it to Psi
        (PsiAccount::openUri: ?message;type=chat opens a chat, ?join the join dialog,
        ?vcard the contact's information)."""
        self.call("openURI", uri)

    def xdotool(self, *args: str) -> str:
        done = subprocess.run(
            [self.xdotool_path, *args], env=self.env, capture_output=True, text=True, timeout=STEP
        )
        assert done.returncode == 0, f"xdotool {args}: {done.stderr}"
        return done.stdout

    def find_window(self, title: str) -> str | None:
        found = subprocess.run(
            [self.xdotool_path, "search", "--onlyvisible", "--name", f"^{re.escape(title)}$"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=STEP,
        )
        ids = found.stdout.split() if found.returncode == 0 else []
        return ids[0] if ids else None

    def keys(self, title: str, *keys: str) -> None:
        """Keys pressed in the window titled `title` once it shows. With no window manager
        on Xvfb the keyboard goes to the window under the pointer: the pointer goes there
        first (to its lower part, Psi's message input in a chat window), the window raised
        over Psi's others (no window manager stacks them)."""
        window = self.wait(lambda: self.find_window(title), f"the window {title!r}")
        shape = dict(
            line.split("=", 1)
            for line in self.xdotool("getwindowgeometry", "--shell", window).split()
        )
        self.xdotool("windowraise", window)
        self.xdotool(
            "mousemove",
            "--window",
            window,
            str(int(shape["WIDTH"]) // 2),
            str(int(shape["HEIGHT"]) - 30),
        )
        if keys:
            self.xdotool("key", "--delay", "50", *keys)

    def type(self, title: str, text: str) -> None:
        """`text` typed into the window titled `title` (its focused input), then Enter."""
        self.keys(title)
        self.xdotool("type", "--delay", "20", text)
        self.xdotool("key", "Return")

    def wait(self, condition: Callable[[], Any], what: str, seconds: float = STEP) -> Any:
        deadline = time.monotonic() + seconds
        while (result := condition()) is None or result is False:
            assert self.proc.poll() is None, f"Psi exited:\n{self.log_tail()}"
            assert time.monotonic() < deadline, f"never: {what}\n{self.log_tail()}"
            time.sleep(0.1)
        return result

    # --- what it did --------------------------------------------------------------------

    def sent(self, pattern: str, start: int = 0) -> re.Match[str]:
        """What Psi sent, as the server's trace logged it (by its bound JID, then <<<; Iris
        puts newlines between elements, so an entry goes on until the next log line's date)."""
        line = re.compile(rf"fastxmpp\.trace: {re.escape(self.jid)} <<< {WITHIN_ENTRY}*?{pattern}")
        return self.wait(lambda: line.search(self.srv.log_text(), start), f"Psi sent {pattern!r}")

    def received(self, pattern: str, start: int = 0) -> re.Match[str]:
        """What the server sent Psi, as its trace logged it."""
        line = re.compile(rf"fastxmpp\.trace: {re.escape(self.jid)} >>> {WITHIN_ENTRY}*?{pattern}")
        return self.wait(lambda: line.search(self.srv.log_text(), start), f"Psi got {pattern!r}")

    def history(self, contact: str) -> list[tuple[str, str]]:
        """Psi's history of `contact` (its text files, one event a line:
        |time|type|from or to|flags|text), as (direction, text) pairs."""
        name = contact.replace("@", "_at_")
        path = self.data / "profiles" / "default" / "history" / f"{name}.history"
        if not path.exists():
            return []
        lines = path.read_text(errors="replace").splitlines()
        return [(fields[3], fields[5]) for line in lines if len(fields := line.split("|")) >= 6]

    def wait_history(self, contact: str, entry: tuple[str, str]) -> None:
        self.wait(lambda: entry in self.history(contact), f"{entry} in Psi's history")

    def log_tail(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(line[:400] for line in text.splitlines()[-40:])

    def close(self) -> None:
        stop(self.proc)
        stop(self.bus)
        self.forwarder.close()


class Loopback:
    """What test_interop_dino.Forwarder listens with: here the machine's own loopback."""

    @staticmethod
    def listen(port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", port))
        sock.listen(8)
        return sock


@pytest.fixture
def psi(
    srv: ServerProcess, display: Display, ca_file: str, tmp_path: Path
) -> Iterator[Callable[..., Psi]]:
    started: list[Psi] = []

    def start(user: str, trusted: bool = True) -> Psi:
        ca = ca_file if trusted else None
        p = Psi(tmp_path / f"p{len(started)}", srv, display, user, ca)
        started.append(p)
        return p

    yield start
    for p in started:
        p.close()
        (p.root / "server.log").write_text(p.srv.log_text())


CAPS = "http://jabber.org/protocol/caps"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
SM = "urn:xmpp:sm:3"
RECEIPTS = "urn:xmpp:receipts"
WITHIN_ENTRY = r"(?:(?!\n\d{4}-\d\d-\d\d )[\s\S])"  # a character of the same log entry


def iq_to(kind: str, to: str) -> str:
    """A pattern of an iq's start tag of type `kind` to `to` (Iris orders the attributes
    as it likes) and the whitespace after it."""
    return rf"<iq (?=[^>]*type=.{kind}.)(?=[^>]*to=.{re.escape(to)}.)[^>]*>\s*"


def test_login_roster_presence_and_chat(
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    psi: Callable[..., Psi],
) -> None:
    user, peer = next(names), next(names)
    other = befriend(srv, ca_file, user, peer, clients)
    start = len(srv.log_text())
    p = psi(user)
    # RFC 6120 §5 STARTTLS required by the profile, the certificate verified against the
    # test CA from Psi's certs/; §6 SASL, the strongest SCRAM Iris offers; §7 the fixed
    # resource; XEP-0198 §3 stream management, resumable
    srv.wait_for_log(f"bound {p.jid}", STEP)
    log = srv.log_text()[start:]
    peer_address = re.search(rf"c2s (127\.0\.0\.1:\d+): bound {re.escape(p.jid)}", log)
    assert peer_address, log
    connection = re.escape(peer_address.group(1))
    assert re.search(rf"{connection} <<< <starttls xmlns=.urn:ietf:params:xml:ns:xmpp-tls.", log)
    mechanism = re.search(rf"{connection}: authenticated {user}@localhost with (\S+)", log)
    assert mechanism and mechanism.group(1) == "SCRAM-SHA-256", mechanism
    srv.wait_for_log(f"stream management for {p.jid}, resumable", STEP)
    # ... and acknowledges what it gets when asked (XEP-0198 §4)
    p.sent(rf"<a (?=[^>]*xmlns=.{SM}.)[^>]*h=.\d+.")
    # RFC 6121 §2.1.3 the roster asked, §4.2 the initial presence with caps (XEP-0115)
    # reaching the contact
    p.sent("<query xmlns=.jabber:iq:roster.")
    online = wait_for(
        other,
        "Psi's presence",
        lambda el: el.tag == PRESENCE and el.get("from") == p.jid,
        seconds=STEP,
    )
    assert online.get("type") is None
    assert online.find(f"{{{CAPS}}}c").get("node") == "https://psi-im.org"
    # XEP-0030: Psi asks the server's features, and answers a disco#info at its caps node
    # (XEP-0115 §6.2) with the features its hash covers
    p.sent(iq_to("get", "localhost") + f"<query xmlns=.{re.escape(DISCO_INFO)}.")
    node = online.find(f"{{{CAPS}}}c")
    other.send(
        f"<iq type='get' to='{p.jid}' id='caps'><query xmlns='{DISCO_INFO}' "
        f"node='{node.get('node')}#{node.get('ver')}'/></iq>"
    )
    features = wait_for(other, "Psi's features", lambda el: el.get("id") == "caps", seconds=STEP)
    assert features.get("type") == "result"
    offered = {f.get("var") for f in features.iter(f"{{{DISCO_INFO}}}feature")}
    assert {DISCO_INFO, "urn:xmpp:ping", "http://jabber.org/protocol/muc"} <= offered, offered

    # a message from the contact (RFC 6121 §5.2.2), in Psi's history of the contact; it asks
    # for a receipt, which Psi gives (XEP-0184 §5.2)
    other.send(
        f"<message to='{p.jid}' type='chat' id='m1'><body>hello psi</body>"
        f"<request xmlns='{RECEIPTS}'/></message>"
    )
    p.wait_history(f"{peer}@localhost", ("from", "hello psi"))
    receipt = wait_for(
        other,
        "Psi's receipt",
        lambda el: el.find(f"{{{RECEIPTS}}}received") is not None,
        seconds=STEP,
    )
    assert receipt.find(f"{{{RECEIPTS}}}received").get("id") == "m1"
    assert receipt.get("from") == p.jid
    # one from Psi: a chat opened by an xmpp: URI with the text in its input, sent with Enter
    p.open_uri(f"xmpp:{peer}@localhost?message;type=chat;body=hello%20from%20psi")
    p.keys(f"{peer}@localhost", "Return")
    msg = wait_for(other, "Psi's message", lambda el: body(el) == "hello from psi", seconds=STEP)
    assert msg.get("from") == p.jid and msg.get("type") == "chat"
    # with a receipt request (XEP-0184 §5.1) and its chat state (XEP-0085 §5.1)
    assert msg.find(f"{{{RECEIPTS}}}request") is not None
    assert msg.find("{http://jabber.org/protocol/chatstates}active") is not None
    p.wait_history(f"{peer}@localhost", ("to", "hello from psi"))

    # XEP-0280: Psi enables carbons (§4); what the account's other resource sends comes
    # to Psi as a sent carbon (§6), and Psi files it under the contact
    p.sent(r"<enable xmlns=.urn:xmpp:carbons:2./>")
    mine = raw_login(srv, ca_file, user, clients)
    mine.send(
        f"<message to='{peer}@localhost' type='chat'><body>from my other resource</body></message>"
    )
    wait_for(other, "the other resource's message", lambda el: body(el) == "from my other resource")
    p.wait_history(f"{peer}@localhost", ("to", "from my other resource"))

    # RFC 6121 §4.2: a status set over D-Bus reaches the contact
    p.call("setStatus", "away", "out for lunch")
    away = wait_for(
        other,
        "Psi's away presence",
        lambda el: el.tag == PRESENCE and el.findtext(f"{{{CLIENT}}}show") == "away",
        seconds=STEP,
    )
    assert away.get("from") == p.jid and away.findtext(f"{{{CLIENT}}}status") == "out for lunch"

    # RFC 6121 §3.1: a newcomer's subscription request, approved by Psi (the profile sets
    # "automatically allow authorization"), and Psi's presence follows (§3.1.5)
    third = asking_to_subscribe(srv, ca_file, next(names), user, clients)
    approved_and_present(third, user, p.jid, "Psi", STEP)


def test_certificate_of_an_unknown_ca_is_refused(
    srv: ServerProcess, names: Iterator[str], psi: Callable[..., Psi]
) -> None:
    # RFC 6125 against the system's CAs only (the test CA not in Psi's certs/): Psi stops
    # after STARTTLS, before SASL, and asks its user (its "Server Authentication" dialog)
    user = next(names)
    start = len(srv.log_text())
    p = psi(user, trusted=False)
    p.wait(lambda: p.find_window("Server Authentication"), "Psi's certificate dialog")
    refused_before_sasl(srv, start, user)


def test_room_joined_by_uri_and_groupchat(
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    psi: Callable[..., Psi],
) -> None:
    user, peer = next(names), next(names)
    room = f"psi-{user}@conference.localhost"
    other = raw_login(srv, ca_file, peer, clients)
    make_room(other, room, peer, persistent=True)
    other.send(f"<message to='{room}' type='groupchat'><body>before psi</body></message>")
    wait_for(other, "the echo", lambda el: body(el) == "before psi")
    p = psi(user)
    srv.wait_for_log(f"bound {p.jid}", STEP)
    # an xmpp: URI with ?join (RFC 5122 §2.5, XEP-0147) opens Psi's join dialog, the room
    # and the nick (the account's name) filled in: Enter joins (XEP-0045 §7.2)
    p.open_uri(f"xmpp:{room}?join")
    p.keys("Psi: Join Groupchat", "Return")
    entered = wait_for(
        other,
        "Psi entering the room",
        lambda el: el.tag == PRESENCE and el.get("from") == f"{room}/{user}",
        seconds=STEP,
    )
    assert entered.get("type") is None
    p.sent(rf"to=.{re.escape(room)}/{user}.{WITHIN_ENTRY}*?<x xmlns=.{re.escape(MUC)}.")
    # Psi has its own presence from the room (status 110, §7.2.2): the room's window is
    # ready for text
    p.received(rf"from=.{re.escape(room)}/{user}.{WITHIN_ENTRY}*?<status code=.110.")
    # XEP-0045 §7.4 groupchat both ways: typed text reaches the room ...
    p.type(room.split("@")[0], "hello room")
    said = wait_for(other, "Psi's groupchat", lambda el: body(el) == "hello room", seconds=STEP)
    assert (said.get("from"), said.get("type")) == (f"{room}/{user}", "groupchat")
    # ... and the other occupant's reaches Psi (Psi 1.5 keeps no groupchat history to
    # look in: its stream took it, and Psi answers a ping sent after it, XEP-0199 §4.2)
    other.send(f"<message to='{room}' type='groupchat'><body>hello psi</body></message>")
    p.received(rf"type=.groupchat.{WITHIN_ENTRY}*?<body>hello psi</body>")
    other.send(f"<iq to='{p.jid}' type='get' id='ping'><ping xmlns='urn:xmpp:ping'/></iq>")
    pong = wait_for(other, "Psi's pong", lambda el: el.get("id") == "ping", seconds=STEP)
    assert (pong.get("type"), pong.get("from")) == ("result", p.jid)


def test_room_created_by_psi_is_configured(
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    psi: Callable[..., Psi],
) -> None:
    user, peer = next(names), next(names)
    room = f"new-{user}@conference.localhost"
    p = psi(user)
    srv.wait_for_log(f"bound {p.jid}", STEP)
    # a room that does not exist is created by Psi's join (XEP-0045 §10.1.1: status 201,
    # the room locked) ...
    p.open_uri(f"xmpp:{room}?join")
    p.keys("Psi: Join Groupchat", "Return")
    p.received(rf"from=.{re.escape(room)}/{user}.{WITHIN_ENTRY}*?<status code=.201.")
    # ... and Psi accepts the default configuration at once (its option
    # options.muc.accept-defaults, on by default: the instant room of §10.1.2, an empty
    # submitted form) ...
    configured = p.sent(
        r"(?=<iq [^>]*id=.([^'\"]+).)"
        + iq_to("set", room)
        + rf"<query xmlns=.{re.escape(MUC)}#owner.>\s*<x (?=[^>]*type=.submit.)[^>]*/>"
    )
    p.received(rf"<iq (?=[^>]*type=.result.)[^>]*id=.{configured.group(1)}.")
    # ... so the room is open to others: an occupant enters, and sees Psi as its owner
    other = raw_login(srv, ca_file, peer, clients)
    other.send(f"<presence to='{room}/{peer}'><x xmlns='{MUC}'/></presence>")
    owner = wait_for(
        other,
        "Psi's presence in the room",
        lambda el: el.tag == PRESENCE and el.get("from") == f"{room}/{user}",
        seconds=STEP,
    )
    item = owner.find(f"{{{MUC}#user}}x/{{{MUC}#user}}item")
    assert item.get("affiliation") == "owner", etree.tostring(owner)
    mine = wait_for(
        other,
        "the room's presence of the newcomer",
        lambda el: el.tag == PRESENCE and "110" in statuses(el),
        seconds=STEP,
    )
    assert mine.get("type") is None


def test_contact_vcard_fetched(
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    psi: Callable[..., Psi],
) -> None:
    user, peer = next(names), next(names)
    other = befriend(srv, ca_file, user, peer, clients)
    # the contact's vCard (XEP-0054 §3.2), published by its own client
    other.send(
        "<iq type='set' id='vcard'><vCard xmlns='vcard-temp'><FN>Peer Person</FN>"
        "<NICKNAME>peerie</NICKNAME></vCard></iq>"
    )
    assert (
        wait_for(other, "the vCard stored", lambda el: el.get("id") == "vcard").get("type")
        == "result"
    )
    p = psi(user)
    srv.wait_for_log(f"bound {p.jid}", STEP)
    # Psi asks its own vCard at login (XEP-0054 §3.1; at its bare JID) ...
    p.sent(iq_to("get", f"{user}@localhost") + "<vCard xmlns=.vcard-temp./>")
    # ... and the contact's when an xmpp:?vcard URI opens its information (§3.2, at the
    # bare JID; with its software version, XEP-0092, and time, XEP-0202, at its resource);
    # the answer is kept in Psi's vCard cache
    start = len(srv.log_text())
    p.open_uri(f"xmpp:{peer}@localhost?vcard")
    p.sent(
        iq_to("get", f"{peer}@localhost") + "<vCard xmlns=.vcard-temp./>",
        start,
    )
    version = wait_for(
        other, "Psi's version request", lambda el: el.find("{jabber:iq:version}query") is not None
    )
    assert version.get("from") == p.jid
    card = p.cache / "profiles" / "default" / "vcard" / f"{peer}_at_localhost.xml"
    text = p.wait(lambda: card.exists() and card.read_text(), "the contact's vCard in Psi's cache")
    assert "Peer Person" in text and "peerie" in text, text


def test_reconnection_after_the_connection_is_cut(
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    psi: Callable[..., Psi],
) -> None:
    user, peer = next(names), next(names)
    other = befriend(srv, ca_file, user, peer, clients)
    p = psi(user)
    wait_for(
        other,
        "Psi's presence",
        lambda el: el.tag == PRESENCE and el.get("from") == p.jid,
        seconds=STEP,
    )
    srv.wait_for_log(f"stream management for {p.jid}, resumable", STEP)
    start = len(srv.log_text())
    # the TCP connection breaks (a reset, no closing tag): the server keeps the session
    # for resumption (XEP-0198 §5) ...
    p.forwarder.cut()
    srv.wait_for_log(f"{p.jid} lost its connection", STEP)
    other.send(f"<message to='{p.jid}' type='chat'><body>while you were away</body></message>")
    # ... Psi connects again 15 s later (its first reconnection delay, reconnectData() in
    # src/psiaccount.cpp; the profile's "reconn") with a new login, not a resumption
    # (module docstring): binding the same resource ends the detached session (RFC 6120
    # §7.7.2.2), whose unacknowledged message the server keeps offline (XEP-0198 §5) ...
    p.wait(lambda: f"bound {p.jid}" in srv.log_text()[start:], "Psi's new login", 15 + STEP)
    log = srv.log_text()[start:]
    assert f"resumed {p.jid}" not in log and "<resume " not in log
    assert re.search(
        rf"{re.escape(p.jid)} ended with \d+ unacknowledged stanzas: .*1 stored offline", log
    )
    # ... and delivers it to the new session: Psi has it in its history (RFC 6121 §8.5.2)
    p.wait_history(f"{peer}@localhost", ("from", "while you were away"))
    # the contact sees Psi online again, and Psi's messages go out as before
    wait_for(
        other,
        "Psi's presence again",
        lambda el: el.tag == PRESENCE and el.get("from") == p.jid and el.get("type") is None,
        seconds=STEP,
    )
    p.open_uri(f"xmpp:{peer}@localhost?message;type=chat;body=back%20again")
    p.keys(f"{peer}@localhost", "Return")
    wait_for(other, "Psi's message", lambda el: body(el) == "back again", seconds=STEP)


def test_subscription_asked_by_psi(
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    psi: Callable[..., Psi],
) -> None:
    user, peer = next(names), next(names)
    other = raw_login(srv, ca_file, peer, clients)
    other.send("<presence/>")
    p = psi(user)
    srv.wait_for_log(f"bound {p.jid}", STEP)
    # an xmpp:?roster URI (XEP-0147) opens Psi's Add Contact dialog with the address, the
    # name and the group filled in (with no group= Psi sends an empty <group/>, which the
    # server refuses: module docstring); Enter (its Add button) adds the contact to the
    # roster (RFC 6121 §2.3) and asks for its presence (§3.1.1)
    p.open_uri(f"xmpp:{peer}@localhost?roster;name=Peer;group=Friends")
    p.keys("Psi: Add Contact", "Return")
    request = wait_for(
        other, "Psi's subscription request", lambda el: el.get("type") == "subscribe", seconds=STEP
    )
    assert request.get("from") == f"{user}@localhost"
    added = p.sent(
        rf"(?=<iq [^>]*id=.([^'\"]+).)<iq [^>]*>\s*<query xmlns=.jabber:iq:roster.>\s*"
        rf"<item (?=[^>]*jid=.{peer}@localhost.)"
    )
    p.received(rf"<iq (?=[^>]*type=.result.)[^>]*id=.{added.group(1)}.")
    # approved (§3.1.5): Psi gets the contact's presence, and files the contact with its
    # name in the roster
    other.send(f"<presence to='{user}@localhost' type='subscribed'/>")
    p.received(rf"<presence [^>]*from=.{peer}@localhost/raw.")
    mine = Client(raw_login(srv, ca_file, user, clients), user, "")
    roster = mine.iq("get", "<query xmlns='jabber:iq:roster'/>")
    item = roster.find(
        f"{{jabber:iq:roster}}query/{{jabber:iq:roster}}item[@jid='{peer}@localhost']"
    )
    assert item is not None and item.get("subscription") == "to", etree.tostring(roster)
    assert item.get("name") == "Peer" and item.findtext("{jabber:iq:roster}group") == "Friends"
