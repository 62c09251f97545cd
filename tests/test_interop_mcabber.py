"""mcabber (Debian's `mcabber` 1.1.2, a console client on libloudmouth 1.5.4, an XMPP library
of its own, neither libstrophe nor nbxmpp; loudmouth on GnuTLS) driven as a person drives it:
in a tmux session of its own (Debian's `tmux`), a fresh HOME per test whose
~/.mcabber/mcabberrc the test writes (mode 600: mcabber refuses a config others can read).
Commands go through mcabber's command FIFO (`set fifo_name`, `module load fifo`: no screen
timing), what it sent and read is in its tracelog (`set tracelog_level = 3`: every stanza
loudmouth wrote, and what it read, in chunks of at most 1023 bytes), the messages in its
history files (`set logging = 1`), and the screen (`capture-pane`) for what only shows there.
What it did is checked on the server's side: raw clients (tests/xmpp_raw.py) and the server's
log.

TLS: `set tls = 1` (STARTTLS; the server requires it), the certificate checked against the
test CA alone with `set ssl_ca` (loudmouth gives the file to GnuTLS as its trust list, and
checks the certificate's name against the JID's domain); without it mcabber says "Certificate
is not trusted!" and goes no further (checked first).

SASL: loudmouth knows PLAIN and DIGEST-MD5 only (it logs the SCRAM mechanisms the server
offers as unknown), so mcabber logs in with PLAIN, inside TLS.

What it found in the server: mcabber 1.1.2 (its latest release) sends `/room topic` as a
groupchat message with the subject and an empty <body/> (its xmpp_send_msg always added a
body; fixed after 1.1.2 by its commit d906077, "MUC: Don't send empty body when setting room
topic", 2021, never released). XEP-0045 §8.1 takes only a message without a body as a subject
change, so the room relayed it as a message and kept no subject: an mcabber user's topic never
reached those who entered later, and clients that follow §8.1 showed an empty message (Prosody
takes any message with a subject as a subject change). The room now takes an empty <body/>
beside a <subject/> as no body and relays the change without it (modules/muc/room.py;
test_muc.py::test_subject_change_with_an_empty_body).

mcabber's ways the test follows:
- When the room it enters is new (status 201, XEP-0045 §10.1.1), mcabber submits the empty
  form of an instant room (§10.1.2) by itself: the room is open at once.
- XEP-0184: it asks a contact for a receipt only when the contact's caps (XEP-0115) list
  urn:xmpp:receipts; the raw contact's presence carries caps that do, and answers the query.
- XEP-0085: it sends <active/> with each message, and <composing/> while one types only to a
  contact it has seen send chat states, in chat mode (after a first message).
- After the server drops it (a restart: <system-shutdown/>), mcabber reconnects on its own
  only after 60 to 150 s (its RECONNECTION_TIMEOUT plus a random delay): the test types
  `/connect`, as an impatient user would, and mcabber logs in again with the status it had."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import PASSWORD, FreshNames, ServerProcess, add_accounts, module_server
from federation import free_port
from interop_clients import body, end_process, raw_login, require_command, wait_for
from test_bookmarks_sync import conferences, native, private_storage
from test_client_flows import Client
from xmpp_raw import CLIENT, RawClient

POOL = FreshNames("mc", 32)
MESSAGE = f"{{{CLIENT}}}message"
PRESENCE = f"{{{CLIENT}}}presence"
STEP = 15.0


@pytest.fixture(scope="module")
def srv(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(ca, tmp_path_factory, POOL)


@pytest.fixture
def names() -> Iterator[str]:
    return POOL.names()


class Mcabber:
    """One mcabber process logged in as `user`, in a tmux session of its own (its own server
    socket), with a fresh HOME; `ca_file` None: no CA given (the system's trust only)."""

    def __init__(
        self,
        root: Path,
        srv: ServerProcess,
        ca_file: str | None,
        user: str,
        more: dict[str, str] | None = None,
    ) -> None:
        self.tmux = require_command("tmux", "tmux (Debian package tmux)")
        binary = require_command("mcabber", "mcabber (Debian package mcabber)")
        self.user = user
        self.jid = f"{user}@localhost/mcabber"
        home = root / "home"
        config_dir = home / ".mcabber"
        config_dir.mkdir(parents=True)
        config_dir.chmod(0o700)
        self.trace = root / "trace.log"
        self.histo = root / "histo"
        self.fifo = root / "mcabber.fifo"
        self.socket = str(root / "tmux.sock")
        self.pid = 0  # mcabber's, once started
        settings = {
            "jid": f"{user}@localhost",
            "password": PASSWORD,
            "server": "127.0.0.1",
            "port": str(srv.port),
            "resource": "mcabber",
            "disable_random_resource": "1",
            "tls": "1",
            "tracelog_level": "3",
            "tracelog_file": str(self.trace),
            "logging": "1",
            "log_muc_conf": "1",
            "logging_dir": str(self.histo),
            "fifo_name": str(self.fifo),
        }
        if ca_file is not None:
            settings["ssl_ca"] = ca_file
        settings.update(more or {})
        config = config_dir / "mcabberrc"
        config.write_text(
            "".join(f"set {k} = {v}\n" for k, v in settings.items()) + "module load fifo\n"
        )
        config.chmod(0o600)
        env = {
            "HOME": str(home),
            "TERM": "xterm-256color",
            "LANG": "C.UTF-8",
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        }
        command = ["env", "-i", *(f"{k}={v}" for k, v in env.items()), binary]
        self._tmux("new-session", "-d", "-s", "mc", "-x", "200", "-y", "50", *command)
        self.pid = int(self._tmux("display-message", "-p", "-t", "mc", "#{pane_pid}"))
        self.wait_trace(r"FIFO initialized")

    def _tmux(self, *args: str) -> str:
        done = subprocess.run(
            [self.tmux, "-S", self.socket, "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            timeout=STEP,
        )
        assert done.returncode == 0, f"tmux {args[0]}: {done.stderr}"
        return done.stdout

    def do(self, command: str) -> int:
        """`command` through mcabber's FIFO, as if typed; the tracelog's length before it
        (mcabber logs "Executing FIFO command" as it takes it)."""
        start = len(self.tracelog())
        with open(self.fifo, "w") as pipe:
            pipe.write(command + "\n")
        self.wait_trace(r"Executing FIFO command: " + re.escape(command), start)
        return start

    def type(self, text: str, enter: bool = True) -> None:
        """Keys typed on its screen (-l: no key names), then Enter."""
        self._tmux("send-keys", "-t", "mc", "-l", text)
        if enter:
            self._tmux("send-keys", "-t", "mc", "Enter")

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-J", "-t", "mc")

    def wait_screen(self, pattern: str) -> re.Match[str]:
        deadline = time.monotonic() + STEP
        while True:
            text = self.screen()
            if match := re.search(pattern, text):
                return match
            assert time.monotonic() < deadline, f"never on screen: {pattern!r}\n{text}"
            time.sleep(0.05)

    def tracelog(self) -> str:
        return self.trace.read_text(errors="replace") if self.trace.exists() else ""

    def wait_trace(self, pattern: str, start: int = 0) -> re.Match[str]:
        """The first match of `pattern` in the tracelog from offset `start` on."""
        deadline = time.monotonic() + STEP
        while True:
            if match := re.compile(pattern).search(self.tracelog(), start):
                return match
            assert time.monotonic() < deadline, f"never in mcabber's tracelog: {pattern!r}"
            time.sleep(0.05)

    def received(self, pattern: str) -> re.Match[str]:
        """What loudmouth read, its chunks (one quoted line each) joined again: the stream
        from the server."""
        deadline = time.monotonic() + STEP
        while True:
            chunks = re.findall(r"^\[[^]]*\] LM-NET: '(.*)'$", self.tracelog(), re.M)
            if match := re.search(pattern, "".join(chunks)):
                return match
            assert time.monotonic() < deadline, f"mcabber never read {pattern!r}"
            time.sleep(0.05)

    def sent(self, pattern: str, start: int = 0) -> re.Match[str]:
        """A stanza loudmouth wrote (one line of the tracelog each)."""
        return self.wait_trace(r"LM-NET: (?=<)[^\n]*" + pattern, start)

    def history(self, jid: str) -> list[tuple[str, str]]:
        """mcabber's history file of `jid`: (kind, text) per entry (MS sent, MR received,
        MI information; S* a status)."""
        path = self.histo / jid
        if not path.exists():
            return []
        return re.findall(r"^(\w\w) \d{8}T\d\d:\d\d:\d\dZ \d{3} (.*)$", path.read_text(), re.M)

    def wait_history(self, jid: str, entry: tuple[str, str]) -> None:
        deadline = time.monotonic() + STEP
        while entry not in self.history(jid):
            assert time.monotonic() < deadline, f"{entry} never in {self.history(jid)}"
            time.sleep(0.05)

    def close(self) -> None:
        # mcabber may outlive tmux's SIGHUP (processes of it were found running an hour on)
        if self.pid:
            end_process(self.pid)
        subprocess.run(
            [self.tmux, "-S", self.socket, "kill-server"], capture_output=True, timeout=STEP
        )


@pytest.fixture
def mcabber(tmp_path: Path, srv: ServerProcess, ca_file: str) -> Iterator[Callable[..., Mcabber]]:
    started: list[Mcabber] = []

    def start(user: str, ca: str | None = ca_file, **more: str) -> Mcabber:
        m = Mcabber(tmp_path / f"m{len(started)}", srv, ca, user, more)
        started.append(m)
        return m

    yield start
    for m in started:
        m.close()


def connected(m: Mcabber, srv: ServerProcess) -> None:
    """Logged in, its first presence sent (mcabber says "Your status has been set")."""
    srv.wait_for_log(f"authenticated {m.user}@localhost with PLAIN", STEP)
    m.wait_trace(r"Your status has been set")


# The raw contact's identity and features (XEP-0115 §5.1), what mcabber looks for in them.
RECEIPTS = "urn:xmpp:receipts"
CHATSTATES = "http://jabber.org/protocol/chatstates"
CAPS = "http://jabber.org/protocol/caps"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
PEER_FEATURES = sorted([DISCO_INFO, CAPS, CHATSTATES, RECEIPTS])
PEER_IDENTITY = ("client", "pc", "raw mcabber peer")


def caps_ver() -> str:
    category, kind, name = PEER_IDENTITY
    text = f"{category}/{kind}//{name}<" + "".join(f"{f}<" for f in PEER_FEATURES)
    return base64.b64encode(hashlib.sha1(text.encode()).digest()).decode()


def answer_caps_query(other: RawClient, el: Any) -> bool:
    """A disco#info query for the raw contact's caps node answered (XEP-0115 §6.2); whether
    `el` was one."""
    query = el.find(f"{{{DISCO_INFO}}}query")
    if el.get("type") != "get" or query is None:
        return False
    category, kind, name = PEER_IDENTITY
    features = "".join(f"<feature var='{f}'/>" for f in PEER_FEATURES)
    node = f" node='{query.get('node')}'" if query.get("node") else ""
    other.send(
        f"<iq type='result' id='{el.get('id')}' to='{el.get('from')}'>"
        f"<query xmlns='{DISCO_INFO}'{node}><identity category='{category}' "
        f"type='{kind}' name='{name}'/>{features}</query></iq>"
    )
    return True


def wait_answering(
    other: RawClient, what: str, match: Callable[[Any], bool], asked: list[str]
) -> Any:
    """wait_for, the raw contact answering the caps queries on the way (their senders go to
    `asked`)."""

    def answered_or_match(el: Any) -> bool:
        if answer_caps_query(other, el):
            asked.append(el.get("from"))
            return False
        return match(el)

    return wait_for(other, what, answered_or_match)


def test_tls_login_roster_presence_and_chat(
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    mcabber: Callable[..., Mcabber],
) -> None:
    user, peer = next(names), next(names)
    # RFC 6125: without the test CA the certificate does not verify; mcabber stops there
    untrusting = mcabber(user, ca=None)
    untrusting.wait_trace(r"Certificate is not trusted!")
    untrusting.wait_screen(r"Disconnected, reason")
    assert f"authenticated {user}@localhost" not in srv.log_text()
    untrusting.close()

    other = raw_login(srv, ca_file, peer, clients)
    other.send(
        f"<presence><c xmlns='{CAPS}' hash='sha-1' node='urn:test:peer' ver='{caps_ver()}'/>"
        "</presence>"
    )
    m = mcabber(user)
    asked: list[str] = []  # who asked the raw contact what its caps stand for
    connected(m, srv)
    # RFC 6120 §5: STARTTLS first (required by the server), then §6 SASL PLAIN inside TLS
    trace = m.tracelog()
    assert (
        trace.index("<starttls ")
        < trace.index("<proceed ")
        < trace.index('<auth mechanism="PLAIN"')
    )

    # RFC 6121 §3.1.1: /add puts the contact in the roster (§2.4) and asks for its presence
    m.do(f"/add {peer}@localhost Peer")
    request = wait_answering(
        other, "mcabber's subscription request", lambda el: el.get("type") == "subscribe", asked
    )
    assert request.get("from") == f"{user}@localhost"
    other.send(f"<presence to='{user}@localhost' type='subscribed'/>")
    # §3.1.3 the other way: the contact asks, mcabber approves with /authorization allow
    other.send(f"<presence to='{user}@localhost' type='subscribe'/>")
    m.wait_trace(rf"<{peer}@localhost> wants to subscribe to your presence updates")
    m.do(f"/authorization allow {peer}@localhost")
    wait_answering(other, "the approval", lambda el: el.get("type") == "subscribed", asked)
    # the roster on the server (§2.1.3): both ways, with the name given
    mine = raw_login(srv, ca_file, user, clients)
    mine.send("<iq type='get' id='roster'><query xmlns='jabber:iq:roster'/></iq>")
    roster = wait_for(mine, "the roster", lambda el: el.get("id") == "roster")
    items = roster.findall("{jabber:iq:roster}query/{jabber:iq:roster}item")
    assert [(i.get("jid"), i.get("name"), i.get("subscription")) for i in items] == [
        (f"{peer}@localhost", "Peer", "both")
    ]
    mine.close()
    clients.remove(mine)
    # and as mcabber shows it (/info on the contact)
    m.do("/roster search Peer")
    m.do("/info")
    m.wait_screen(r"Subscription: both")
    # /roster note: an annotation of the contact, kept in private XML storage (XEP-0145 over
    # XEP-0049), which the account's other clients read
    start = m.do("/roster note met at the conference")
    saved = m.sent(
        r'<iq [^>]*id="(\d+)"[^>]*><query xmlns="jabber:iq:private">'
        r'<storage xmlns="storage:rosternotes">',
        start,
    )
    srv.wait_for_log(f"{m.jid} >>> <iq type='result' id=\"{saved.group(1)}\"", STEP)
    mine = raw_login(srv, ca_file, user, clients)
    mine.send(
        "<iq type='get' id='notes'><query xmlns='jabber:iq:private'>"
        "<storage xmlns='storage:rosternotes'/></query></iq>"
    )
    notes = wait_for(mine, "the roster notes", lambda el: el.get("id") == "notes")
    note = notes.find(
        "{jabber:iq:private}query/{storage:rosternotes}storage/{storage:rosternotes}note"
    )
    assert note is not None and note.get("jid") == f"{peer}@localhost"
    assert note.text == "met at the conference"

    # XEP-0115: mcabber asks what the contact's caps stand for (the server may ask too)
    if m.jid not in asked:
        wait_answering(other, "mcabber's caps query", lambda el: m.jid in asked, asked)
    m.received(r"<iq [^>]*><query [^>]*><identity [^>]*name='raw mcabber peer'")

    # RFC 6121 §4.2: /status with a message reaches the contact as show and status
    m.do("/status away out for lunch")
    away = wait_answering(
        other,
        "mcabber's away presence",
        lambda el: el.tag == PRESENCE and el.findtext(f"{{{CLIENT}}}show") == "away",
        asked,
    )
    assert away.get("from") == m.jid and away.findtext(f"{{{CLIENT}}}status") == "out for lunch"

    # §5: /say_to, a chat message with XEP-0085 <active/> and (the contact's caps list
    # receipts) a XEP-0184 request; the receipt comes back
    m.do(f"/say_to {peer}@localhost hello from mcabber")
    msg = wait_answering(
        other, "mcabber's message", lambda el: body(el) == "hello from mcabber", asked
    )
    assert (msg.get("from"), msg.get("type")) == (m.jid, "chat")
    assert msg.find(f"{{{CHATSTATES}}}active") is not None
    assert msg.find(f"{{{RECEIPTS}}}request") is not None and msg.get("id")
    other.send(
        f"<message to='{m.jid}' id='ack'><received xmlns='{RECEIPTS}' id='{msg.get('id')}'/>"
        "</message>"
    )
    m.received(rf"<received xmlns='{RECEIPTS}' id='{re.escape(msg.get('id'))}'/>")
    # an incoming one, a receipt asked of mcabber (§5.2): given; its history has both
    other.send(
        f"<message to='{m.jid}' type='chat' id='want-receipt'><body>hello mcabber</body>"
        f"<request xmlns='{RECEIPTS}'/><active xmlns='{CHATSTATES}'/></message>"
    )
    receipt = wait_answering(
        other,
        "mcabber's receipt",
        lambda el: el.find(f"{{{RECEIPTS}}}received") is not None,
        asked,
    )
    assert receipt.find(f"{{{RECEIPTS}}}received").get("id") == "want-receipt"
    assert receipt.get("from") == m.jid
    m.wait_history(f"{peer}@localhost", ("MR", "hello mcabber"))
    assert ("MS", "hello from mcabber") in m.history(f"{peer}@localhost")

    # XEP-0085 §5.1: typing in the contact's window, now in chat mode (a first message
    # typed there) and the contact known to send chat states: <composing/>, then the message
    m.type("typed here")
    wait_answering(other, "the typed message", lambda el: body(el) == "typed here", asked)
    m.type("still typing", enter=False)
    composing = wait_answering(
        other,
        "mcabber's composing",
        lambda el: el.find(f"{{{CHATSTATES}}}composing") is not None,
        asked,
    )
    assert composing.get("from") == m.jid and body(composing) is None


VCARD = "vcard-temp"
PING = "urn:xmpp:ping"


def test_carbons_vcard_version_time_ping_and_disco(
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    mcabber: Callable[..., Mcabber],
) -> None:
    user, peer = next(names), next(names)
    other = raw_login(srv, ca_file, peer, clients)
    # XEP-0054 §3.2: the contact's vCard, stored by the server
    other.send(
        f"<iq type='set' id='vcard'><vCard xmlns='{VCARD}'><FN>Peer Person</FN>"
        "<NICKNAME>peery</NICKNAME></vCard></iq>"
    )
    assert (
        wait_for(other, "the vCard stored", lambda el: el.get("id") == "vcard").get("type")
        == "result"
    )
    other.send("<presence/>")
    m = mcabber(user, pinginterval="1", carbons="1")
    connected(m, srv)
    # XEP-0280 §4: `set carbons = 1`: enabled once the server's disco#info lists them
    m.sent(r'<iq type="set" id="\d+"><enable xmlns="urn:xmpp:carbons:2">')
    # §3.1: /request vcard asks the contact's bare JID; the server answers for the account,
    # and mcabber shows it in the contact's window
    m.do(f"/add {peer}@localhost Peer")
    m.wait_screen(r"[\]}] Peer\s")  # in its roster panel
    m.do("/roster search Peer")
    m.do("/info")  # opens the contact's window
    m.wait_screen(r"Name: Peer")
    start = m.do("/request vcard")
    asked = m.sent(
        rf'<iq type="get" to="{peer}@localhost" id="(\d+)"><vCard xmlns="{VCARD}">', start
    )
    m.wait_screen(r"Received IQ:vCard result from <" + peer)
    m.wait_screen(r"Name: Peer Person")
    m.wait_screen(r"Nickname: peery")
    srv.wait_for_log(f"{m.jid} >>> <iq type='result' id=\"{asked.group(1)}\"", STEP)

    # §6: what another resource of the account sends comes as a sent carbon, and what is
    # sent to it as a received one; mcabber keeps both in its history of the contact
    mine = raw_login(srv, ca_file, user, clients)
    mine.send(f"<message to='{peer}@localhost' type='chat'><body>from my phone</body></message>")
    other.send(
        f"<message to='{user}@localhost/raw' type='chat'><body>to your phone</body></message>"
    )
    m.wait_history(f"{peer}@localhost", ("MS", "from my phone"))
    m.wait_history(f"{peer}@localhost", ("MR", "to your phone"))
    m.received(
        r"<sent xmlns='urn:xmpp:carbons:2'><forwarded [^>]*><message [^>]*>"
        r"<body>from my phone</body>"
    )

    # XEP-0092 and XEP-0202 of the server, shown in the server's window
    m.do("/request version localhost")
    m.do("/request time localhost")
    m.wait_trace(r"Received IQ:time result from <localhost>")
    m.do("/roster search localhost")
    m.wait_screen(r"Name:\s+fastxmpp")
    m.wait_screen(r"Version:\s+\d")
    utc = m.wait_screen(r"UTC:\s+(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)").group(1)
    stamp = datetime.strptime(utc, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 60
    m.wait_screen(r"TZ:\s+[+-]\d\d:\d\d")
    # XEP-0199 §4.2: /request ping of the server; §4.1: the contact pings mcabber
    m.do("/request ping localhost")
    m.wait_screen(r"Pong from <localhost>: \d+ seconds? \d+ ms")
    other.send(f"<iq type='get' id='ping' to='{m.jid}'><ping xmlns='{PING}'/></iq>")
    pong = wait_for(other, "mcabber's pong", lambda el: el.get("id") == "ping")
    assert (pong.get("type"), pong.get("from")) == ("result", m.jid)
    # XEP-0030: what mcabber says it does
    other.send(f"<iq type='get' id='disco' to='{m.jid}'><query xmlns='{DISCO_INFO}'/></iq>")
    info = wait_for(other, "mcabber's disco#info", lambda el: el.get("id") == "disco")
    query = info.find(f"{{{DISCO_INFO}}}query")
    assert query.find(f"{{{DISCO_INFO}}}identity").get("name").startswith("mcabber")
    features = {f.get("var") for f in query.iterfind(f"{{{DISCO_INFO}}}feature")}
    assert {PING, RECEIPTS, CHATSTATES, "http://jabber.org/protocol/muc"} <= features
    # its keepalive (`pinginterval`, here 1 s): loudmouth pings the server (XEP-0199 §4.2),
    # answered each time
    keepalive = re.compile(
        rf'{re.escape(m.jid)} <<< <iq type="get" to="localhost" id="(\d+)"><ping xmlns="{PING}">'
    )
    deadline = time.monotonic() + STEP
    while len(pings := keepalive.findall(srv.log_text())) < 3:
        assert time.monotonic() < deadline, pings
        time.sleep(0.1)
    for ping_id in pings:
        srv.wait_for_log(f"{m.jid} >>> <iq type='result' id=\"{ping_id}\"", STEP)


MUC = "http://jabber.org/protocol/muc"
MUC_USER = f"{MUC}#user"
MUC_OWNER = f"{MUC}#owner"


def statuses(el: Any) -> set[str]:
    return {s.get("code") for s in el.iterfind(f"{{{MUC_USER}}}x/{{{MUC_USER}}}status")}


def enter(
    srv: ServerProcess, ca_file: str, user: str, room: str, clients: list[RawClient]
) -> tuple[RawClient, list[Any]]:
    """A raw client of `user` in `room` (XEP-0045 §7.2.2) under its own name; what it got
    up to the subject, which ends the entry (§7.2.15)."""
    c = raw_login(srv, ca_file, user, clients)
    c.send(f"<presence to='{room}/{user}'><x xmlns='{MUC}'/></presence>")
    seen: list[Any] = []
    wait_for(
        c,
        "the room's subject",
        lambda el: seen.append(el) or el.find(f"{{{CLIENT}}}subject") is not None,
    )
    return c, seen


def test_room_create_chat_topic_nick_invite_kick_and_leave(
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    mcabber: Callable[..., Mcabber],
) -> None:
    user, peer, late = next(names), next(names), next(names)
    room = f"room-{user}@conference.localhost"
    m = mcabber(user)
    connected(m, srv)
    # XEP-0045 §10.1.1: a new room, locked (201) until its owner configures it; mcabber
    # submits the empty form of an instant room (§10.1.2) by itself
    start = m.do(f"/room join {room} mcnick")
    m.sent(rf'<presence to="{room}/mcnick"[^\n]*<x xmlns="{MUC}">', start)
    m.sent(
        rf'<iq type="set" to="{room}" id="\d+"><query xmlns="{MUC_OWNER}">'
        r'<x type="submit" xmlns="jabber:x:data"></x>',
        start,
    )
    m.wait_history(room, ("MI", 'You have joined as "mcnick"'))
    # open: a raw client enters (no 201: the room exists) and sees the owner
    other, seen = enter(srv, ca_file, peer, room, clients)
    own = next(el for el in seen if el.tag == PRESENCE and "110" in statuses(el))
    assert own.get("type") is None and "201" not in statuses(own)
    owner = next(el for el in seen if el.get("from") == f"{room}/mcnick")
    item = owner.find(f"{{{MUC_USER}}}x/{{{MUC_USER}}}item")
    assert (item.get("affiliation"), item.get("role")) == ("owner", "moderator")
    m.wait_history(room, ("MI", f"{peer} has joined"))

    # groupchat both ways (§7.4): /say_to the room, and in the room's window /say
    m.do(f"/say_to {room} hello room")
    got = wait_for(other, "mcabber's groupchat", lambda el: body(el) == "hello room")
    assert (got.get("from"), got.get("type")) == (f"{room}/mcnick", "groupchat")
    m.do(f"/roster search {room}")
    m.do("/say from the window")
    got = wait_for(other, "the second groupchat", lambda el: body(el) == "from the window")
    assert got.get("from") == f"{room}/mcnick"
    other.send(f"<message to='{room}' type='groupchat'><body>hello from raw</body></message>")
    m.wait_history(room, ("MR", f"<{peer}> hello from raw"))

    # §8.1: /room topic; the room keeps it: a newcomer gets it on entering (§7.2.15)
    m.do("/room topic mcabber's topic")
    subject = wait_for(
        other,
        "the subject change",
        lambda el: el.tag == MESSAGE and el.find(f"{{{CLIENT}}}subject") is not None,
    )
    assert subject.get("from") == f"{room}/mcnick"
    assert subject.findtext(f"{{{CLIENT}}}subject") == "mcabber's topic"
    assert body(subject) is None  # a subject change for every client (module docstring)
    late_client, seen = enter(srv, ca_file, late, room, clients)
    assert seen[-1].findtext(f"{{{CLIENT}}}subject") == "mcabber's topic"
    assert seen[-1].get("from") == f"{room}/mcnick"

    # §7.6: /room nick: unavailable with 303 and the new nick, then the new presence
    m.do("/room nick renamed")
    gone = wait_for(
        other, "the nick change", lambda el: el.tag == PRESENCE and "303" in statuses(el)
    )
    assert gone.get("type") == "unavailable" and gone.get("from") == f"{room}/mcnick"
    assert gone.find(f"{{{MUC_USER}}}x/{{{MUC_USER}}}item").get("nick") == "renamed"
    back = wait_for(other, "the new presence", lambda el: el.tag == PRESENCE)
    assert back.get("from") == f"{room}/renamed" and back.get("type") is None
    m.wait_history(room, ("MI", "mcnick is now known as renamed"))

    # §7.5: /room privmsg, a private message through the room, from the occupant JID
    m.do(f"/room privmsg {peer} just between us")
    private = wait_for(other, "the private message", lambda el: body(el) == "just between us")
    assert (private.get("from"), private.get("type")) == (f"{room}/renamed", "chat")

    # §7.8.2: /room invite, a mediated invitation: the room sends it on, from the room
    invited = next(names)
    guest = raw_login(srv, ca_file, invited, clients)
    guest.send("<presence/>")  # available: a message to the bare JID reaches it live
    m.do(f"/room invite {invited}@localhost come and see")
    invitation = wait_for(guest, "the invitation", lambda el: el.tag == MESSAGE)
    invite = invitation.find(f"{{{MUC_USER}}}x/{{{MUC_USER}}}invite")
    assert invitation.get("from") == room and invite is not None
    assert invite.get("from", "").split("/")[0] == f"{user}@localhost"
    assert invite.findtext(f"{{{MUC_USER}}}reason") == "come and see"

    # /room bookmark: mcabber keeps bookmarks in XEP-0049 private storage (XEP-0048); the
    # server has them as XEP-0402 items too (§5.3 #compat), autojoin and nick kept
    start = m.do("/room bookmark add +autojoin")
    stored = m.sent(
        r'<iq [^>]*id="(\d+)"[^>]*><query xmlns="jabber:iq:private">'
        r'<storage xmlns="storage:bookmarks">',
        start,
    )
    srv.wait_for_log(f"{m.jid} >>> <iq type='result' id=\"{stored.group(1)}\"", STEP)
    mine = Client(raw_login(srv, ca_file, user, clients), user, "")
    bookmark = native(mine)[room]
    assert bookmark["autojoin"] and bookmark["nick"] == "renamed"
    assert conferences(private_storage(mine))[room]["autojoin"]

    # §8.2: /room kick with a reason (mcabber, the owner, is a moderator)
    m.do(f"/room kick {peer} enough for today")
    kicked = wait_for(
        other,
        "the kick",
        lambda el: el.tag == PRESENCE and el.get("from") == f"{room}/{peer}",
    )
    assert kicked.get("type") == "unavailable" and {"307", "110"} <= statuses(kicked)
    reason = kicked.findtext(f"{{{MUC_USER}}}x/{{{MUC_USER}}}item/{{{MUC_USER}}}reason")
    assert reason == "enough for today"

    # §7.14: /room leave with a message
    m.do("/room leave bye all")
    left = wait_for(
        late_client,
        "mcabber leaving",
        lambda el: (
            el.tag == PRESENCE
            and el.get("from") == f"{room}/renamed"
            and el.get("type") == "unavailable"
        ),
    )
    assert left.findtext(f"{{{CLIENT}}}status") == "bye all"
    m.wait_history(room, ("MI", f"You have left {room}"))


def test_connect_again_after_the_server_restarts(
    make_server: Callable[..., ServerProcess],
    ca_file: str,
    clients: list[RawClient],
    tmp_path: Path,
) -> None:
    """A server of its own on a fixed port: it stops (SIGTERM) and starts again; mcabber
    would reconnect by itself 60 to 150 s later (module docstring), `/connect` does it now."""
    restarted = make_server()
    port = free_port()
    restarted.config.write_text(
        restarted.config.read_text().replace("port = 0", f"port = {port}", 1)
    )
    add_accounts(restarted, ["restart0"])
    restarted.start()
    assert restarted.port == port
    m = Mcabber(tmp_path / "m", restarted, ca_file, "restart0")
    try:
        connected(m, restarted)
        m.do("/status dnd back soon")
        # RFC 6120 §4.9.3.20: the server says why it closes the stream; mcabber sees it
        restarted.stop()
        m.received(r"<stream:error><system-shutdown ")
        m.wait_screen(r"Disconnected, reason")
        restarted.start()
        mine = raw_login(restarted, ca_file, "restart0", clients)
        mine.send("<presence/>")
        start = m.do("/connect")
        restarted.wait_for_log("authenticated restart0@localhost with PLAIN", STEP)
        # logged in again, with the status it had (RFC 6121 §4.2.2: the account's other
        # resource gets its presence)
        back = wait_for(
            mine,
            "mcabber's presence",
            lambda el: el.tag == PRESENCE and el.get("from") == m.jid,
        )
        assert back.get("type") is None
        assert back.findtext(f"{{{CLIENT}}}show") == "dnd"
        assert back.findtext(f"{{{CLIENT}}}status") == "back soon"
        m.sent(r"<starttls ", start)
    finally:
        m.close()
