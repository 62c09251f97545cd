"""Profanity (Debian's `profanity` 0.13, a terminal client on libstrophe) driven as a person
drives it: in a tmux session of its own (Debian's `tmux`), commands typed with `send-keys`,
the screen read with `capture-pane`, with HOME and the XDG directories in a temporary
directory (a fresh profile each time). The certificate is verified against the test CA only
(`/tls certpath`, a directory hashed with `openssl rehash`); what Profanity sent and got is
checked on the other side (a raw client, tests/xmpp_raw.py), in the server's log and in
Profanity's own debug log (`-l DEBUG`: every stanza, as libstrophe sent or read it) and its
history database; the screen for what only shows there.

What it found in the server: Profanity sends its first presence twice with the same caps, and
the server asked it twice what they stand for, throwing the first answer away (fixed in
modules/pep.py; test_pep.py::test_same_caps_again_while_the_query_is_in_flight, and here
test_connect_roster_and_chat counts the queries).

Profanity 0.13 bugs, worked around here:
- MAM: it decides whether the server has XEP-0313 from the disco#info of the domain and of
  the services the domain lists (its `connection_supports`), never from the account's bare
  JID, where XEP-0313 §7 ("Determining support": "requests made to archiving JIDs (i.e.
  JIDs hosting an archive, such as users' bare JIDs)") has the feature and where the server
  advertises it (as Prosody does; ejabberd also puts it on the domain). Advertising it on
  the domain would claim an archive the domain does not host (§ Business Rules: "MUST
  advertise support only for those JIDs that support it"), so the server stays as it is:
  with `/mam on` Profanity logs "Server doesn't advertise urn:xmpp:mam:2 feature" and
  fetches no history when a chat window opens. Later Profanity also asks the account's bare
  JID (profanity-im/profanity#2176). The test checks the feature where the spec puts it, as
  Profanity's `/disco info` shows it, and the carbons and history Profanity does keep.

- OMEMO: after `/omemo gen` Profanity reads its own device list and, when there is none,
  publishes one with its device; but it takes "none" only from an error with the XEP-0086
  legacy `code="404"` (its `_omemo_receive_devicelist`, unchanged up to its master of 2026).
  The server answers the items request of a node that does not exist with item-not-found
  (XEP-0060 §6.5.9.11, RFC 6120 §8.3 syntax, no `code`: XEP-0086 is deprecated), so a new
  Profanity user's device is never published and nobody can encrypt to it. The server's
  `[legacy] error_codes` switch is for such clients: test_omemo_keys_published runs on a
  server of its own with it on (without it, the device list is never sent).
- OMEMO again: Profanity publishes its bundle with publish-options (access model open) only
  when it already knows that the server supports them (the domain's disco#info); a
  `/omemo gen` typed before that answer arrives publishes without them, and the node is made
  with the default access model (presence, XEP-0163 §4.5). Its next publication, with them,
  gets the precondition conflict (XEP-0060 §7.1.5), on which Profanity configures the node,
  but its `_omemo_bundle_publish_configure` passes the field's var where its form code wants
  the field's tag (`form_set_value(form, "pubsub#access_model", "open")`, since its commit
  2b1ada772 of 2021, unchanged in 0.13.1 and its master), so the form goes back unchanged and
  it publishes, fails and configures again without end: other clients never get the bundle.
  The test types `/omemo gen` once the features are in.

Profanity's ways the test follows:
- Its screen does not announce occupants joining or its own nick change by default: the
  occupants panel is read instead.
- `/status set away text` wants the text quoted when it has more than one word."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PASSWORD, FreshNames, ServerProcess, module_server
from interop_clients import asking_to_subscribe, body, raw_login, require_command, wait_for
from lxml import etree
from test_avatars import png as avatar_png
from test_bookmarks_sync import conferences, native, private_storage
from test_client_flows import Client
from xmpp_raw import CLIENT, RawClient, stanza_error

POOL = FreshNames("pf", 32)
MESSAGE = f"{{{CLIENT}}}message"
PRESENCE = f"{{{CLIENT}}}presence"
STEP = 10.0


@pytest.fixture(scope="module")
def srv(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(ca, tmp_path_factory, POOL)


@pytest.fixture
def names() -> Iterator[str]:
    return POOL.names()


@pytest.fixture(scope="module")
def certpath(ca_file: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The test CA alone in a directory, hashed as OpenSSL's CApath lookup wants it."""
    openssl = require_command("openssl", "openssl (Debian package openssl)")
    directory = tmp_path_factory.mktemp("certpath")
    shutil.copy(ca_file, directory / "ca.pem")
    done = subprocess.run([openssl, "rehash", str(directory)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return str(directory)


class Profanity:
    """One Profanity process in a tmux session of its own (its own server socket)."""

    def __init__(self, root: Path, srv: ServerProcess, certpath: str) -> None:
        self.tmux = require_command("tmux", "tmux (Debian package tmux)")
        binary = require_command("profanity", "Profanity (Debian package profanity)")
        self.srv = srv
        self.certpath = certpath
        self.home = root / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.data = self.home / ".local" / "share" / "profanity"
        self.socket = str(root / "tmux.sock")
        env = {
            "HOME": str(self.home),
            "XDG_CONFIG_HOME": str(self.home / ".config"),
            "XDG_DATA_HOME": str(self.home / ".local" / "share"),
            "XDG_CACHE_HOME": str(self.home / ".cache"),
            "TERM": "xterm-256color",
            "LANG": "C.UTF-8",
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        }
        command = ["env", "-i", *(f"{k}={v}" for k, v in env.items()), binary, "-l", "DEBUG"]
        self._tmux("new-session", "-d", "-s", "prof", "-x", "230", "-y", "60", *command)
        self.wait_screen(r"Type '/help' to show complete help")

    def _tmux(self, *args: str) -> str:
        done = subprocess.run(
            [self.tmux, "-S", self.socket, "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            timeout=STEP,
        )
        assert done.returncode == 0, f"tmux {args[0]}: {done.stderr}"
        return done.stdout

    def type(self, line: str) -> None:
        """`line` typed as is (-l: no key names), then Enter."""
        self._tmux("send-keys", "-t", "prof", "-l", line)
        self._tmux("send-keys", "-t", "prof", "Enter")

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-J", "-t", "prof")

    def wait_screen(self, pattern: str, seconds: float = STEP) -> re.Match[str]:
        deadline = time.monotonic() + seconds
        while True:
            text = self.screen()
            if match := re.search(pattern, text):
                return match
            assert time.monotonic() < deadline, f"never on screen: {pattern!r}\n{text}"
            time.sleep(0.05)

    def log(self) -> str:
        path = self.data / "logs" / "profanity.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_log(self, pattern: str, start: int = 0, seconds: float = STEP) -> re.Match[str]:
        """The first match of `pattern` in Profanity's debug log from offset `start` on."""
        deadline = time.monotonic() + seconds
        while True:
            if match := re.compile(pattern).search(self.log(), start):
                return match
            assert time.monotonic() < deadline, f"never in Profanity's log: {pattern!r}"
            time.sleep(0.05)

    def sent(self, pattern: str, start: int = 0) -> re.Match[str]:
        """A stanza Profanity sent (libstrophe logs it as 'SENT: <...>')."""
        return self.wait_log(r"SENT: [^\n]*" + pattern, start)

    def received(self, pattern: str, start: int = 0) -> re.Match[str]:
        return self.wait_log(r"RECV: [^\n]*" + pattern, start)

    def start_connect(self, user: str) -> None:
        """/connect with the server and port given, the password typed at its prompt."""
        self.type(f"/connect {user}@localhost server 127.0.0.1 port {self.srv.port}")
        self.wait_screen(r"Enter password:")
        self.type(PASSWORD)

    def connect(self, user: str) -> str:
        """Logged in, the test CA trusted: the full JID Profanity bound."""
        self.type(f"/tls certpath set {self.certpath}")
        self.wait_screen("Certificate path set to")
        self.start_connect(user)
        found = self.wait_screen(rf"({user}@localhost/\S+) logged in successfully")
        return found.group(1)

    def window_of(self, room: str) -> int:
        """The number of the window of `room` (/wins lists them in the console)."""
        self.type("/win 1")
        self.type("/wins")
        return int(self.wait_screen(rf" - (\d+): Room {re.escape(room)}\s").group(1))

    def chatlog(self, user: str) -> list[dict[str, Any]]:
        """Profanity's message history (its SQLite database): what it logged, in order."""
        path = self.data / "database" / f"{user}_at_localhost" / "chatlog.db"
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.row_factory = sqlite3.Row
            return [dict(row) for row in db.execute("SELECT * FROM ChatLogs ORDER BY id")]

    def close(self) -> None:
        subprocess.run(
            [self.tmux, "-S", self.socket, "kill-server"], capture_output=True, timeout=STEP
        )


@pytest.fixture
def profanity(
    tmp_path: Path, srv: ServerProcess, certpath: str
) -> Iterator[Callable[[], Profanity]]:
    started: list[Profanity] = []

    def start() -> Profanity:
        p = Profanity(tmp_path / f"p{len(started)}", srv, certpath)
        started.append(p)
        return p

    yield start
    for p in started:
        p.close()


def befriend(
    srv: ServerProcess, ca_file: str, user: str, peer: str, opened: list[Any]
) -> RawClient:
    """A mutual subscription between `user` and `peer` (RFC 6121 §3), made by raw clients
    before Profanity starts; the peer's raw client, online, is returned."""
    mine = raw_login(srv, ca_file, user, opened)
    other = raw_login(srv, ca_file, peer, opened)
    mine.send(f"<presence to='{peer}@localhost' type='subscribe'/>")
    other.send(f"<presence to='{user}@localhost' type='subscribed'/>")
    other.send(f"<presence to='{user}@localhost' type='subscribe'/>")
    mine.send(f"<presence to='{peer}@localhost' type='subscribed'/>")
    settle(mine)
    settle(other)
    mine.close()
    opened.remove(mine)
    other.send("<presence/>")
    return other


def settle(c: RawClient) -> list[Any]:
    """What c got until the answer to a ping: everything the server did for what c sent."""
    c.send("<iq type='get' id='settle'><ping xmlns='urn:xmpp:ping'/></iq>")
    got = []
    while (el := c.next()).get("id") != "settle":
        got.append(el)
    return got


def test_connect_roster_and_chat(
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    profanity: Callable[[], Profanity],
) -> None:
    user, peer = next(names), next(names)
    other = befriend(srv, ca_file, user, peer, clients)
    p = profanity()
    # RFC 6125: without the test CA the certificate does not verify, and Profanity asks
    # (denied here: nothing reaches SASL)
    logins = srv.log_text().count(f"authenticated {user}@localhost")
    p.start_connect(user)
    p.wait_screen(r"TLS certificate verification failed: unable to get local issuer")
    p.type("/tls deny")
    p.wait_screen(r"Login failed")
    assert srv.log_text().count(f"authenticated {user}@localhost") == logins
    # with it (/tls certpath), no question
    jid = p.connect(user)
    assert p.screen().count("TLS certificate verification failed") == 1
    # RFC 6120 §5: STARTTLS (required by the server), then §6 SASL: SCRAM-SHA-256 (libstrophe
    # 0.12 has no -PLUS), §7 bind
    srv.wait_for_log(f"authenticated {user}@localhost with SCRAM-SHA-256")
    p.wait_screen(r"\[TLS\]")
    # RFC 6121 §2.1.3: the roster, shown in the console's roster panel
    p.wait_screen(rf"\b{peer}\b")
    # XEP-0115: Profanity sends its first presence twice with the same caps; the server
    # asks what each ver stands for once (it asked twice, throwing the first answer away)
    asked = re.findall(
        r'RECV: <iq [^\n]*from="localhost"[^\n]*<query xmlns="http://jabber.org/protocol/'
        r'disco#info" node="([^"]+)"',
        p.log(),
    )
    assert asked and len(asked) == len(set(asked)), asked

    # RFC 6121 §3 from Profanity's side: a newcomer asks, /sub allow approves it (§3.1.4),
    # /sub request asks back (§3.1.1); /roster then says both
    newcomer = next(names)
    third = asking_to_subscribe(srv, ca_file, newcomer, user, clients)
    p.wait_screen(rf"Received authorization request from {newcomer}@localhost")
    p.type(f"/sub allow {newcomer}@localhost")
    wait_for(third, "the approval", lambda el: el.get("type") == "subscribed")
    # §3.1.5: the user's presence follows the approval
    wait_for(
        third,
        "Profanity's presence",
        lambda el: el.tag == PRESENCE and el.get("from") == jid and el.get("type") is None,
    )
    p.type(f"/sub request {newcomer}@localhost")
    wait_for(third, "the request back", lambda el: el.get("type") == "subscribe")
    third.send(f"<presence to='{user}@localhost' type='subscribed'/>")
    p.wait_screen(rf"\+\+ {newcomer}@localhost \(raw\) is online")
    p.type("/roster")
    p.wait_screen(rf"{newcomer}@localhost - both")
    assert re.search(rf"{peer}@localhost - both", p.screen())

    p.type(f"/msg {peer}@localhost hello from profanity")
    msg = wait_for(
        other, "Profanity's message", lambda el: el.tag == MESSAGE and body(el) is not None
    )
    assert body(msg) == "hello from profanity" and msg.get("from") == jid
    other.send(f"<message to='{jid}' type='chat'><body>hello profanity</body></message>")
    p.wait_screen(rf"{peer}@localhost/raw: hello profanity")
    # both in its history; the incoming one with the archive's id (XEP-0359 stanza-id by
    # the account, XEP-0313 §5.1.2)
    got = p.received(
        rf'<body>hello profanity</body>[^\n]*<stanza-id (?=[^>]*by="{user}@localhost")'
        r'[^>]*\bid="([^"]+)"'
    )
    log = p.chatlog(user)
    assert [(r["from_jid"], r["to_jid"], r["message"]) for r in log] == [
        (f"{user}@localhost", f"{peer}@localhost", "hello from profanity"),
        (f"{peer}@localhost", f"{user}@localhost", "hello profanity"),
    ], log
    assert log[1]["archive_id"] == got.group(1), log


MUC = "http://jabber.org/protocol/muc"
MUC_USER = f"{MUC}#user"


def statuses(el: Any) -> set[str]:
    return {s.get("code") for s in el.iterfind(f"{{{MUC_USER}}}x/{{{MUC_USER}}}status")}


def test_muc_create_chat_subject_and_nick(
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    profanity: Callable[[], Profanity],
) -> None:
    user, peer = next(names), next(names)
    room = f"room-{user}@conference.localhost"
    p = profanity()
    p.connect(user)
    # XEP-0045 §10.1.1: a new room is locked (status 201) until its owner configures it;
    # Profanity says so and `/room accept` submits the empty form of §10.1.2 (instant room)
    p.type(f"/join {room}")
    p.wait_screen("Room locked, requires configuration")
    start = len(p.log())
    p.type("/room accept")
    p.sent(
        r'<iq [^>]*type="set"[^>]*><query xmlns="http://jabber.org/protocol/muc#owner">'
        r'<x xmlns="jabber:x:data" type="submit"/>',
        start,
    )
    p.wait_screen("Room unlocked")
    # the room is usable: a raw client enters it (§7.2.2) and sees the owner
    other = raw_login(srv, ca_file, peer, clients)
    other.send(f"<presence to='{room}/{peer}'><x xmlns='{MUC}'/></presence>")
    seen = []
    own = wait_for(
        other,
        "its own presence in the room",
        lambda el: seen.append(el) or (el.tag == PRESENCE and "110" in statuses(el)),
    )
    assert own.get("type") is None, own
    assert any(el.get("from") == f"{room}/{user}" for el in seen), seen
    # Profanity lists the newcomer in its occupants panel (it does not announce joins by
    # default)
    p.wait_screen(rf"Participants\s*\n.*\b{peer}\b")
    # groupchat both ways (§7.4)
    p.type("hello room")
    got = wait_for(
        other, "Profanity's groupchat", lambda el: el.tag == MESSAGE and body(el) is not None
    )
    assert (got.get("from"), got.get("type"), body(got)) == (
        f"{room}/{user}",
        "groupchat",
        "hello room",
    )
    other.send(f"<message to='{room}' type='groupchat'><body>hello from raw</body></message>")
    p.wait_screen(rf"{peer}: hello from raw")
    # §8.1: the subject
    p.type("/subject set Profanity's topic")
    subject = wait_for(
        other,
        "the subject",
        lambda el: el.tag == MESSAGE and el.find(f"{{{CLIENT}}}subject") is not None,
    )
    assert subject.findtext(f"{{{CLIENT}}}subject") == "Profanity's topic"
    assert subject.get("from") == f"{room}/{user}"
    p.wait_screen(rf"\*{user} has set the room subject: Profanity's topic")
    # §7.6: a nick change: unavailable with 303 and the new nick, then the new presence
    p.type("/nick renamed")
    gone = wait_for(
        other, "the nick change", lambda el: el.tag == PRESENCE and "303" in statuses(el)
    )
    assert gone.get("type") == "unavailable" and gone.get("from") == f"{room}/{user}"
    item = gone.find(f"{{{MUC_USER}}}x/{{{MUC_USER}}}item")
    assert item is not None and item.get("nick") == "renamed"
    back = wait_for(other, "the new presence", lambda el: el.tag == PRESENCE)
    assert back.get("from") == f"{room}/renamed" and back.get("type") is None
    # Profanity's occupants panel (right) follows
    p.wait_screen(r"Moderators\s*\n.*\brenamed\b")
    assert re.search(rf"Participants\s*\n.*\b{peer}\b", p.screen())

    # §7.5: a private message through the room, each way (occupant JIDs only)
    p.type(f"/msg {peer} just between us")
    pm = wait_for(other, "Profanity's private message", lambda el: body(el) == "just between us")
    assert (pm.get("from"), pm.get("type")) == (f"{room}/renamed", "chat")
    assert pm.find(f"{{{MUC_USER}}}x") is not None
    other.send(
        f"<message to='{room}/renamed' type='chat'><body>back between us</body>"
        f"<x xmlns='{MUC_USER}'/></message>"
    )
    p.wait_screen(rf"{peer}: back between us")
    # §9.3, §8.4, §8.2 as Profanity's owner does them: membership, voice taken (the
    # visitor's groupchat refused, §7.4), a kick with its reason
    p.type(f"/win {p.window_of(room)}")
    p.type(f"/affiliation set member {peer}@localhost")
    member = wait_for(other, "the membership", lambda el: el.tag == PRESENCE)
    item = member.find(f"{{{MUC_USER}}}x/{{{MUC_USER}}}item")
    assert (item.get("affiliation"), item.get("role")) == ("member", "participant")
    p.wait_screen(rf"{peer}'s affiliation has been changed to: member")
    p.type(f"/role set visitor {peer}")
    muted = wait_for(other, "the voice taken", lambda el: el.tag == PRESENCE)
    assert muted.find(f"{{{MUC_USER}}}x/{{{MUC_USER}}}item").get("role") == "visitor"
    other.send(f"<message to='{room}' type='groupchat' id='muted'><body>can I?</body></message>")
    refused = wait_for(other, "the refusal", lambda el: el.get("id") == "muted")
    assert refused.get("type") == "error" and stanza_error(refused) == "forbidden"
    p.type(f"/kick {peer} enough for today")
    kicked = wait_for(other, "the kick", lambda el: el.tag == PRESENCE)
    assert kicked.get("type") == "unavailable" and {"307", "110"} <= statuses(kicked)
    reason = kicked.findtext(f"{{{MUC_USER}}}x/{{{MUC_USER}}}item/{{{MUC_USER}}}reason")
    assert reason == "enough for today"
    p.wait_screen(rf"<- {peer} has been kicked from the room by renamed, reason: enough for today")


CARBONS = "urn:xmpp:carbons:2"
MAM = "urn:xmpp:mam:2"


def test_carbons_history_and_mam_discovery(
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    profanity: Callable[[], Profanity],
) -> None:
    user, peer = next(names), next(names)
    other = befriend(srv, ca_file, user, peer, clients)
    # history made before Profanity ever ran, archived by the server (XEP-0313)
    mine = raw_login(srv, ca_file, user, clients)
    mine.send(f"<message to='{peer}@localhost' type='chat'><body>archived one</body></message>")
    wait_for(other, "archived one", lambda el: body(el) == "archived one")
    other.send(
        f"<message to='{user}@localhost/raw' type='chat'><body>archived two</body></message>"
    )
    wait_for(mine, "archived two", lambda el: body(el) == "archived two")

    p = profanity()
    p.type("/mam on")
    p.wait_screen("Message Archive Management enabled")
    p.connect(user)
    # XEP-0280 §4: Profanity enables carbons by default
    p.sent(rf'<iq [^>]*type="set"[^>]*><enable xmlns="{CARBONS}"/>')
    # §6: what another resource of the account sends comes as a sent carbon ...
    mine.send(
        f"<message to='{peer}@localhost' type='chat'><body>from my other resource</body></message>"
    )
    wait_for(other, "the raw resource's message", lambda el: body(el) == "from my other resource")
    p.received(rf'<sent xmlns="{CARBONS}">.*from my other resource')
    # ... and what is sent to another resource as a received carbon
    other.send(
        f"<message to='{user}@localhost/raw' type='chat'>"
        "<body>to my other resource</body></message>"
    )
    p.received(rf'<received xmlns="{CARBONS}">.*to my other resource')
    # Profanity shows both in the chat window with the peer
    p.type(f"/msg {peer}@localhost")
    p.wait_screen(r"me: from my other resource")
    p.wait_screen(rf"{peer}@localhost(/raw)?: to my other resource")
    assert [r["message"] for r in p.chatlog(user)] == [
        "from my other resource",
        "to my other resource",
    ]
    # XEP-0313 §7: the account's bare JID, its archive, advertises MAM (as Prosody does it);
    # Profanity 0.13 looks for it on the domain only and so never queries (module docstring)
    p.type("/win 1")
    p.type(f"/disco info {user}@localhost")
    p.wait_screen(r"\burn:xmpp:mam:2\b")


RECEIPTS = "urn:xmpp:receipts"
CAPS = "http://jabber.org/protocol/caps"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
RAW_FEATURES = sorted([DISCO_INFO, CAPS, "urn:xmpp:ping", RECEIPTS])


def caps_ver() -> str:
    """XEP-0115 §5.1: the verification string of the raw client's identity and features."""
    text = "client/pc//raw test client<" + "".join(f"{f}<" for f in RAW_FEATURES)
    return base64.b64encode(hashlib.sha1(text.encode()).digest()).decode()


def answer_disco(other: RawClient, el: Any) -> None:
    """The raw client's disco#info answer to a caps query (XEP-0115 §6.2)."""
    query = el.find(f"{{{DISCO_INFO}}}query")
    node = f" node='{query.get('node')}'" if query.get("node") else ""
    features = "".join(f"<feature var='{f}'/>" for f in RAW_FEATURES)
    other.send(
        f"<iq type='result' id='{el.get('id')}' to='{el.get('from')}'>"
        f"<query xmlns='{DISCO_INFO}'{node}><identity category='client' type='pc' "
        f"name='raw test client'/>{features}</query></iq>"
    )


def test_receipts_ping_caps_presence_and_avatar(
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    profanity: Callable[[], Profanity],
    tmp_path: Path,
) -> None:
    user, peer = next(names), next(names)
    other = befriend(srv, ca_file, user, peer, clients)
    p = profanity()
    p.type("/receipts send on")
    p.type("/receipts request on")
    jid = p.connect(user)
    # XEP-0115: the raw contact's presence carries caps; Profanity asks it for the
    # node#ver (through the server) and keeps the answer
    other.send(
        f"<presence><c xmlns='{CAPS}' hash='sha-1' node='urn:test:raw' ver='{caps_ver()}'/>"
        "</presence>"
    )

    # (the server asks too, for XEP-0163 +notify: answered alike)
    def caps_query(el: Any) -> bool:
        if el.get("type") != "get" or el.find(f"{{{DISCO_INFO}}}query") is None:
            return False
        assert el.find(f"{{{DISCO_INFO}}}query").get("node") == f"urn:test:raw#{caps_ver()}"
        answer_disco(other, el)
        return el.get("from") == jid

    wait_for(other, "Profanity's caps query", caps_query)
    p.received(r'<identity [^>]*name="raw test client"')
    p.type(f"/caps {peer}@localhost/raw")
    p.wait_screen(r"raw test client")

    # XEP-0184 §5.1: Profanity asks a contact that supports receipts for one ...
    p.type(f"/msg {peer}@localhost please confirm")
    msg = wait_for(other, "Profanity's message", lambda el: body(el) == "please confirm")
    assert msg.find(f"{{{RECEIPTS}}}request") is not None and msg.get("id")
    other.send(
        f"<message to='{jid}' id='ack-1'><received xmlns='{RECEIPTS}' id='{msg.get('id')}'/>"
        "</message>"
    )
    p.received(rf'<received (?=[^>]*xmlns="{RECEIPTS}")[^>]*id="{re.escape(msg.get("id"))}"')
    # ... and (send on) acknowledges one asked of it, §5.2
    other.send(
        f"<message to='{jid}' type='chat' id='want-receipt'><body>did you get this?</body>"
        f"<request xmlns='{RECEIPTS}'/></message>"
    )
    receipt = wait_for(
        other, "Profanity's receipt", lambda el: el.find(f"{{{RECEIPTS}}}received") is not None
    )
    assert receipt.find(f"{{{RECEIPTS}}}received").get("id") == "want-receipt"
    assert receipt.get("from") == jid

    # XEP-0199 §4.2: /ping the server ...
    p.type("/win 1")
    p.type("/ping")
    p.wait_screen(r"Ping response from server: \d+ms")
    # ... §4.1: and the contact's resource (routed through the server both ways)
    p.type(f"/ping {peer}@localhost/raw")
    ping = wait_for(
        other, "Profanity's ping", lambda el: el.find("{urn:xmpp:ping}ping") is not None
    )
    assert ping.get("from") == jid and ping.get("type") == "get"
    other.send(f"<iq type='result' id='{ping.get('id')}' to='{jid}'/>")
    p.wait_screen(rf"Ping response from {peer}@localhost/raw: \d+ms")
    # XEP-0030: the server's features, as Profanity lists them
    p.type("/disco info localhost")
    p.wait_screen(r"\burn:xmpp:carbons:2\b")

    # RFC 6121 §4.2: /status set away reaches the contact as show and status
    p.type('/status set away "out for lunch"')
    away = wait_for(
        other,
        "Profanity's away presence",
        lambda el: el.tag == PRESENCE and el.findtext(f"{{{CLIENT}}}show") == "away",
    )
    assert away.get("from") == jid and away.findtext(f"{{{CLIENT}}}status") == "out for lunch"

    # XEP-0084: /avatar set publishes data, then metadata (the id the SHA-1 of the image);
    # the server puts the hash in the account's presence (XEP-0153) and the image in its
    # vCard (XEP-0398 §4)
    png = tmp_path / "avatar.png"
    png.write_bytes(avatar_png(8, 8))
    p.type(f"/avatar set {png}")
    p.wait_screen("Avatar updated successfully")
    sha = p.sent(r'<publish node="urn:xmpp:avatar:metadata"><item id="([0-9a-f]{40})"').group(1)
    photo = wait_for(
        other,
        "the presence with the new photo",
        lambda el: (
            el.tag == PRESENCE
            and el.findtext(f"{{{VCARD_UPDATE}}}x/{{{VCARD_UPDATE}}}photo") == sha
        ),
    )
    assert photo.get("from") == jid and photo.findtext(f"{{{CLIENT}}}show") == "away"
    other.send(f"<iq type='get' id='vc' to='{user}@localhost'><vCard xmlns='vcard-temp'/></iq>")
    card = wait_for(other, "the vCard", lambda el: el.get("id") == "vc")
    binval = card.findtext("{vcard-temp}vCard/{vcard-temp}PHOTO/{vcard-temp}BINVAL")
    assert binval and hashlib.sha1(base64.b64decode(binval)).hexdigest() == sha


VCARD_UPDATE = "vcard-temp:x:update"


def test_bookmark_autojoin_on_the_next_connect(
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    profanity: Callable[[], Profanity],
) -> None:
    user, peer = next(names), next(names)
    room = f"bm-{user}@conference.localhost"
    p = profanity()
    p.connect(user)
    # XEP-0045 §10.1.3: a reserved room, configured with the form before it unlocks:
    # /room config shows the form, /fieldN sets a value, /form submit sends it
    p.type(f"/join {room}")
    p.wait_screen("Room locked, requires configuration")
    p.type("/room config")
    form = p.wait_screen(r"\[(field\d+)\] Name:(?s:.*)\[(field\d+)\] Persistent: FALSE")
    p.type(f"/{form.group(1)} Profanity")
    p.type(f"/{form.group(2)} on")
    p.wait_screen(r"Persistent: TRUE")
    p.type("/form submit")
    p.wait_screen("Room configuration successful")
    # the room is unlocked and has what was set: a raw client enters it (no 201: it
    # exists) and its disco#info (§6.4) says persistent, named
    other = raw_login(srv, ca_file, peer, clients)
    other.send(f"<iq type='get' id='info' to='{room}'><query xmlns='{DISCO_INFO}'/></iq>")
    info = wait_for(other, "the room's disco#info", lambda el: el.get("id") == "info")
    query = info.find(f"{{{DISCO_INFO}}}query")
    assert {f.get("var") for f in query.iterfind(f"{{{DISCO_INFO}}}feature")} >= {
        "muc_persistent",
        "muc_unsecured",
    }
    assert query.find(f"{{{DISCO_INFO}}}identity").get("name") == "Profanity"
    other.send(f"<presence to='{room}/{peer}'><x xmlns='{MUC}'/></presence>")
    entered = wait_for(
        other, "its own presence", lambda el: el.tag == PRESENCE and "110" in statuses(el)
    )
    assert entered.get("type") is None and "201" not in statuses(entered)

    p.type("/win 1")
    p.type(f"/bookmark add {room} nick prof autojoin on")
    p.wait_screen(rf"Bookmark added for {re.escape(room)}")
    # Profanity 0.13 keeps bookmarks in XEP-0048 private storage (XEP-0049); the server
    # (XEP-0402 §5.3 #compat) also has it as a XEP-0402 item, autojoin kept
    p.sent(
        r'<query xmlns="jabber:iq:private"><storage xmlns="storage:bookmarks">'
        rf'<conference [^>]*jid="{re.escape(room)}"'
    )
    mine = Client(raw_login(srv, ca_file, user, clients), user, "")
    stored = private_storage(mine)
    assert conferences(stored)[room]["autojoin"] and conferences(stored)[room]["nick"] == "prof"
    assert native(mine)[room]["autojoin"] and native(mine)[room]["nick"] == "prof"

    # the next connect: Profanity reads its bookmarks and enters the room (autojoin)
    p.type("/disconnect")
    p.wait_screen(rf"{user}@localhost logged out successfully")
    other.send(f"<message to='{room}' type='groupchat'><body>while you were away</body></message>")
    wait_for(other, "the echo", lambda el: body(el) == "while you were away")
    p.connect(user)
    joined = wait_for(
        other,
        "Profanity entering the room",
        lambda el: el.tag == PRESENCE and el.get("from") == f"{room}/prof",
    )
    assert joined.get("type") is None
    p.wait_screen(rf"Autojoined {re.escape(room)} as prof")
    p.type("/win 2")
    p.wait_screen(r"You have joined the room as prof, role: moderator, affiliation: owner")
    # §7.2.15: the room's history on entering, delayed (XEP-0203) and shown as such
    p.received(
        rf'<body>while you were away</body>[^\n]*<delay (?=[^>]*from="{re.escape(room)}")'
        r'[^>]*stamp="'
    )
    p.wait_screen(rf"{peer}: while you were away")


AXOLOTL = "eu.siacs.conversations.axolotl"
PUBSUB = "http://jabber.org/protocol/pubsub"
LEGACY_POOL = FreshNames("pfl", 4)


@pytest.fixture(scope="module")
def legacy_srv(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with XEP-0086 error codes on (the module docstring says why)."""
    yield from module_server(ca, tmp_path_factory, LEGACY_POOL, "[legacy]\nerror_codes = true\n")


def test_omemo_keys_published(
    legacy_srv: ServerProcess,
    ca_file: str,
    clients: list[RawClient],
    tmp_path: Path,
    certpath: str,
) -> None:
    names = LEGACY_POOL.names()
    user, peer = next(names), next(names)
    p = Profanity(tmp_path / "p", legacy_srv, certpath)
    try:
        p.connect(user)
        # OMEMO as Profanity does it (XEP-0384 0.3, the eu.siacs.conversations.axolotl
        # namespace): /omemo gen makes the keys, publishes the bundle, reads the device list
        # (none yet: item-not-found, XEP-0060 §6.5.9.11) and publishes one with its device,
        # both with publish-options access_model open (XEP-0060 §7.1.5)
        # Profanity's publish race (module docstring, "OMEMO again"): /omemo gen once it
        # knows that the server has publish-options
        p.received(rf'from="localhost"><query [^\n]*<feature var="{PUBSUB}#publish-options"/>')
        p.type("/omemo gen")
        device = p.wait_screen(r"Your Device ID is (\d+)\.").group(1)
        p.sent(
            rf'<publish node="{AXOLOTL}.devicelist"><item id="current"><list [^\n]*'
            rf'<device id="{device}"/>'
        )
        for node in ("devicelist", f"bundles:{device}"):  # both answered once stored
            p.received(
                r'<iq [^\n]*type="result"[^\n]*><pubsub [^\n]*<publish node="'
                rf'{AXOLOTL}.{node}"'
            )
        # what another client finds (open access: not even a contact)
        other = raw_login(legacy_srv, ca_file, peer, clients)
        other.send(
            f"<iq type='get' id='list' to='{user}@localhost'><pubsub xmlns='{PUBSUB}'>"
            f"<items node='{AXOLOTL}.devicelist'/></pubsub></iq>"
        )
        reply = wait_for(other, "the device list", lambda el: el.get("id") == "list")
        assert reply.get("type") == "result"
        devices = reply.findall(f".//{{{AXOLOTL}}}list/{{{AXOLOTL}}}device")
        assert [d.get("id") for d in devices] == [device]
        other.send(
            f"<iq type='get' id='bundle' to='{user}@localhost'><pubsub xmlns='{PUBSUB}'>"
            f"<items node='{AXOLOTL}.bundles:{device}'/></pubsub></iq>"
        )
        reply = wait_for(other, "the bundle", lambda el: el.get("id") == "bundle")
        assert reply.get("type") == "result", etree.tostring(reply)
        bundle = reply.find(f".//{{{AXOLOTL}}}bundle")
        assert bundle is not None and bundle.findtext(f"{{{AXOLOTL}}}identityKey")
        assert len(bundle.findall(f"{{{AXOLOTL}}}prekeys/{{{AXOLOTL}}}preKeyPublic")) > 0
    finally:
        p.close()
