"""Poezio (Debian's `poezio` 0.14, a console client built around multi-user chat, on slixmpp
1.8.3 but with its own MUC, bookmark, history and command logic) driven as a person drives it:
in a tmux session of its own (Debian's `tmux`; typing and reading the screen are
test_interop_profanity.py's, with Poezio's own way of taking keys, below), a fresh HOME and XDG
directories per Poezio whose ~/.config/poezio/poezio.cfg the test writes: jid, password,
custom_host/custom_port (the test server), ca_cert_path (the test CA alone: verification stays
on). What it sent and read is in its debug log (`poezio -d FILE`: slixmpp logs every stanza as
"SEND:"/"RECV:"); what it did is checked on the server's side, with raw clients
(tests/xmpp_raw.py) and the server's log.

Poezio refuses to run as root (its poezio.py main()): as root, the test runs it as nobody
(`setpriv`), in a directory of its own under /tmp (pytest's is root's alone).

What it found in the server: no bug. A race in the test itself, seen under load: a raw
client reading the account's bookmarks right after Poezio's private XML write may come
between the write and its XEP-0402 sync (done once the write is stored, before Poezio's
result); the test reads once Poezio has its result.

Poezio 0.14 / slixmpp 1.8.3 bugs, worked around here:
- SASL: slixmpp ignores XEP-0440's <sasl-channel-binding/> and binds SCRAM-*-PLUS to
  tls-unique only (slixmpp/util/sasl/mechanisms.py, `p=tls-unique`), which TLS 1.3 does
  not have (RFC 9266 §3); the server, offering tls-exporter and tls-server-end-point,
  refuses it. slixmpp then tries SCRAM without binding and the GS2 flag "y" (it supports
  binding, thinks the server does not), which RFC 5802 §6 makes the server refuse since it
  offers -PLUS (a downgrade). After three failures the server closes the stream
  (policy-violation, RFC 6120 §6.4.5 allows it), slixmpp reconnects, fails SCRAM-SHA-1 the
  same way and logs in with PLAIN (inside TLS): about a second late, four failed
  authentications a login; the server counts none of them against the account or the address
  (they test no password), which would otherwise soon refuse its logins.
- MUC private messages: Poezio's private tab sends them with 'from' set to its own
  occupant JID (poezio/tabs/privatetab.py command_say, `mfrom=our_jid`, also in its
  upstream source). RFC 6120 §8.1.2.1 lets a client name only itself there, and the server
  closes the stream with <invalid-from/> (§4.9.3.9), as ejabberd does
  (conversejs/converse.js#3585 hit the same with a client setting 'from'); Prosody
  overwrites the address. Poezio reconnects and enters its rooms again; the message is
  lost. The test checks that, and receives private messages only.
- Bookmarks: Poezio learns where it may keep them from the domain's disco#info, then
  fetches them (poezio/core/core.py check_bookmark_storage); a room joined before that is
  bookmarked locally only (bookmarks.py save_remote returns when no storage is known yet),
  and a later /remove_bookmark writes the list without it (seen once under load). The
  test waits for the fetch before anything else.
- Keys: Poezio takes the keys that arrive in one read as pasted text (an Enter among them
  is a newline, not Enter), and in the roster tab a "/" followed by more keys in one read
  opens the command line and drops them: the test types a command's "/", the rest and
  Enter each once the input line shows the previous one, and a form field's text one key
  at a time.
- /last_activity JID (roster and chat tabs) calls the core's async command without
  awaiting it (poezio/tabs/rostertab.py command_last_activity, conversationtab.py: the
  coroutine is dropped, Python warns "never awaited"), so no query leaves; without a JID,
  in a chat tab, it asks the contact (its older callback code), as the test does.

Poezio's ways the test follows:
- A room it creates stays locked (XEP-0045 §10.1.1) until the user configures it:
  `/configure` opens the form in a tab (arrows move, Ctrl-Y sends); no instant room.
- It bookmarks each room it joins, in XEP-0049 private XML (its `use_bookmarks_method`
  default), and enters rooms with `<history seconds='0'/>`, reading the room's XEP-0313
  archive instead; a chat's tab fetches the chat's archive when it opens.
- While away it sends no chat states (its tabs' `inactive` check): the chat comes first.
- XEP-0198 only with `enable_smacks` (off by default); no XEP-0352 CSI at all (slixmpp's
  plugin is loaded, never used).
- Its ping command is a plugin (`plugins_autoload = ping`)."""

from __future__ import annotations

import base64
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PASSWORD, FreshNames, ServerProcess, module_server
from interop_clients import (
    asking_to_subscribe,
    body,
    end_process,
    raw_login,
    require_command,
    wait_for,
)
from test_bookmarks_sync import conferences, native, pep_storage, private_storage
from test_client_flows import Client
from test_interop_profanity import Profanity, befriend
from xmpp_raw import CLIENT, RawClient, stanza_error

POOL = FreshNames("pz", 40)
MESSAGE = f"{{{CLIENT}}}message"
PRESENCE = f"{{{CLIENT}}}presence"
STEP = 15.0
NOBODY = 65534


@pytest.fixture(scope="module")
def srv(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # the default limits: Poezio's four refused SCRAM tries per login (module docstring)
    # are no password guesses, so they slow no later login down (test_limits.py::
    # test_channel_binding_refusals_are_no_password_guesses)
    yield from module_server(ca, tmp_path_factory, POOL)


@pytest.fixture
def names() -> Iterator[str]:
    return POOL.names()


class Poezio(Profanity):
    """One Poezio process in a tmux session of its own; typing and reading the screen are
    Profanity's (test_interop_profanity.py), whose tmux session is named "prof"."""

    def __init__(
        self,
        root: Path,
        srv: ServerProcess,
        ca_file: str,
        user: str,
        more: dict[str, str] | None = None,
    ) -> None:
        self.tmux = require_command("tmux", "tmux (Debian package tmux)")
        binary = require_command("poezio", "Poezio (Debian package poezio)")
        self.srv = srv
        self.user = user
        root.mkdir(parents=True)
        self.socket = str(root / "tmux.sock")
        # Poezio refuses to run as root (its poezio.py main()): as root, the test runs it as
        # nobody, in a directory of its own outside pytest's (which only root may enter)
        self.as_root = os.geteuid() == 0
        if self.as_root:
            root = Path(tempfile.mkdtemp(prefix="poezio-"))
        self.root = root
        self.home = root / "home"
        config_dir = self.home / ".config" / "poezio"
        config_dir.mkdir(parents=True)
        self.debug = root / "debug.log"
        self.log_dir = root / "logs"
        shutil.copy(ca_file, root / "ca.pem")
        ca_file = str(root / "ca.pem")
        settings = {
            "jid": f"{user}@localhost/poezio",
            "password": PASSWORD,
            "custom_host": "127.0.0.1",
            "custom_port": str(srv.port),
            "ca_cert_path": ca_file,
            "log_dir": str(self.log_dir),
            "device_id": "dev",
            "plugins_autoload": "ping",
        }
        settings.update(more or {})
        (config_dir / "poezio.cfg").write_text(
            "[Poezio]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items())
        )
        env = {
            "HOME": str(self.home),
            "XDG_CONFIG_HOME": str(self.home / ".config"),
            "XDG_DATA_HOME": str(self.home / ".local" / "share"),
            "XDG_CACHE_HOME": str(self.home / ".cache"),
            "TERM": "xterm-256color",
            "LANG": "C.UTF-8",
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        }
        if self.as_root:
            for path in [root, *root.rglob("*")]:
                os.chown(path, NOBODY, NOBODY)
        drop = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        command = [
            *(drop if self.as_root else []),
            "env",
            "-i",
            *(f"{k}={v}" for k, v in env.items()),
            binary,
            "-d",
            str(self.debug),
        ]
        self._tmux("new-session", "-d", "-s", "prof", "-x", "200", "-y", "50", *command)
        # (setpriv and env exec: the pane's process is Poezio's)
        self.pid = int(self._tmux("display-message", "-p", "-t", "prof", "#{pane_pid}"))

    def close(self) -> None:
        # Poezio takes tmux's SIGHUP for a clean exit and sometimes stays on after it (its
        # logout waiting on a stream that is gone): ended by its process id
        end_process(self.pid)
        super().close()
        if self.as_root and self.root.exists():  # (a test may close it before the fixture)
            # its debug log kept beside the tmux socket, in pytest's directory of the test
            shutil.copy(self.debug, Path(self.socket).parent / "debug.log")
            shutil.rmtree(self.root, ignore_errors=True)

    def type(self, line: str) -> None:
        """`line` typed, then Enter, each step once Poezio shows the last: keys that come
        in one read are taken as pasted text (an Enter among them is no Enter), and in the
        roster tab a "/" with keys after it in one read opens the command line and loses
        them."""
        if line.startswith("/"):
            self._tmux("send-keys", "-t", "prof", "-l", "/")
            self.wait_input(lambda shown: shown.endswith("/"))
            line = line[1:]
        self._tmux("send-keys", "-t", "prof", "-l", line)
        tail = line[-20:].rstrip()
        self.wait_input(lambda shown: shown.endswith(tail))
        self._tmux("send-keys", "-t", "prof", "Enter")
        self.wait_input(lambda shown: not shown.endswith(tail))

    def wait_input(self, done: Callable[[str], bool]) -> None:
        """Until the input line (the screen's last) is `done`."""
        deadline = time.monotonic() + STEP
        while not done(shown := self.screen().rstrip().rsplit("\n", 1)[-1].rstrip()):
            assert time.monotonic() < deadline, f"the input line stayed {shown!r}"
            time.sleep(0.02)

    def key(self, name: str) -> None:
        """One key by its tmux name (Enter, Down, C-y)."""
        self._tmux("send-keys", "-t", "prof", name)

    def slowly(self, text: str) -> None:
        """`text` typed one key at a time (a form's text field takes no pasted text)."""
        for key in text:
            self._tmux("send-keys", "-t", "prof", "-l", key)
            time.sleep(0.05)

    def logged_in(self) -> str:
        """The full JID Poezio bound, once its session started and it has fetched its
        bookmarks (module docstring: a room joined before that is never bookmarked)."""
        self.wait_log(r"Event triggered: session_start", seconds=30)
        jid = f"{self.user}@localhost/poezio-dev"
        self.srv.wait_for_log(f"bound {jid}")
        fetch = r'<iq [^>]*type="get"><query xmlns="jabber:iq:private"><storage xmlns="storage:'
        self.answered(self.sent(fetch + 'bookmarks" /></query>'))
        return jid

    def sent(self, pattern: str, start: int = 0) -> re.Match[str]:
        """A stanza Poezio sent (slixmpp's debug log: 'SEND: <...>'), from offset `start`."""
        return self.wait_log(r"SEND: [^\n]*" + pattern, start)

    def received(self, pattern: str) -> re.Match[str]:
        return self.wait_log(r"RECV: [^\n]*" + pattern)

    def answered(self, request: re.Match[str]) -> re.Match[str]:
        """The result of the iq `request` (a `sent` match): once Poezio has it, the server
        has done all the request asked."""
        line = request.string[request.start() :].split("\n", 1)[0]
        found = re.match(r'SEND: <iq [^>]*id="([^"]+)"', line)
        assert found, line
        return self.received(rf'<iq (?=[^>]*id="{found.group(1)}")[^>]*type="result"')

    def log(self) -> str:
        return self.debug.read_text(errors="replace") if self.debug.exists() else ""


@pytest.fixture
def poezio(tmp_path: Path, srv: ServerProcess, ca_file: str) -> Iterator[Callable[..., Poezio]]:
    started: list[Poezio] = []

    def start(user: str, **more: str) -> Poezio:
        p = Poezio(tmp_path / f"p{len(started)}", srv, ca_file, user, more)
        started.append(p)
        return p

    yield start
    for p in started:
        p.close()


RECEIPTS = "urn:xmpp:receipts"
CHAT_STATES = "http://jabber.org/protocol/chatstates"
CORRECTION = "urn:xmpp:message-correct:0"


def test_login_roster_status_and_chat(
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    poezio: Callable[..., Poezio],
) -> None:
    user, peer = next(names), next(names)
    other = befriend(srv, ca_file, user, peer, clients)
    p = poezio(user)
    jid = p.logged_in()
    # RFC 6120 §5: STARTTLS, the certificate checked against the test CA alone; §6 SASL:
    # slixmpp's SCRAM tries are refused (module docstring), PLAIN inside TLS succeeds
    p.sent(r"<starttls xmlns=\"urn:ietf:params:xml:ns:xmpp-tls\"")
    p.sent(
        r'<auth [^>]*mechanism="SCRAM-SHA-256-PLUS">'
        + base64.b64encode(b"p=tls-unique").decode()[:12]
    )
    p.received(r"no &apos;tls-unique&apos; channel binding on this connection")
    p.received(r"the server supports channel binding")
    srv.wait_for_log(f"authenticated {user}@localhost with PLAIN")
    # XEP-0280 §4: carbons enabled
    p.answered(p.sent(r'<iq [^>]*type="set"[^>]*><enable xmlns="urn:xmpp:carbons:2"'))
    # RFC 6121 §2.1.3: the roster, in the roster tab
    p.wait_screen(rf"\[\+\] {peer}@localhost")
    # a chat: /message opens the tab (and fetches its history, XEP-0313: empty) and sends
    p.type(f"/message {peer}@localhost hello from poezio")
    p.sent(r'<query xmlns="urn:xmpp:mam:2"[^\n]*<field var="with"><value>' + f"{peer}@localhost<")
    msg = wait_for(other, "Poezio's message", lambda el: el.tag == MESSAGE and body(el) is not None)
    assert body(msg) == "hello from poezio" and msg.get("from") == jid
    # XEP-0085 active state and XEP-0184 §5.1 a receipt request, with each message
    assert msg.find(f"{{{CHAT_STATES}}}active") is not None
    assert msg.find(f"{{{RECEIPTS}}}request") is not None
    other.send(
        f"<message to='{jid}' type='chat' id='want-receipt'><body>hello poezio</body>"
        f"<request xmlns='{RECEIPTS}'/></message>"
    )
    p.wait_screen(rf"{peer}> hello poezio")
    receipt = wait_for(
        other, "Poezio's receipt", lambda el: el.find(f"{{{RECEIPTS}}}received") is not None
    )
    assert receipt.find(f"{{{RECEIPTS}}}received").get("id") == "want-receipt"
    # XEP-0308: /correct replaces the last message
    p.type("/correct hello again from poezio")
    fixed = wait_for(other, "Poezio's correction", lambda el: body(el) is not None)
    assert body(fixed) == "hello again from poezio"
    assert fixed.find(f"{{{CORRECTION}}}replace").get("id") == msg.get("id")
    p.wait_screen(r"pz\d+> hello again from poezio")

    # RFC 6121 §3 from Poezio's side: a newcomer asks; /accept approves (§3.1.4) and asks
    # back (§3.1.1)
    newcomer = next(names)
    third = asking_to_subscribe(srv, ca_file, newcomer, user, clients)
    p.wait_screen(rf"{newcomer}@localhost wants to subscribe to your presence")
    p.type(f"/accept {newcomer}@localhost")
    wait_for(third, "the approval", lambda el: el.get("type") == "subscribed")
    wait_for(third, "the request back", lambda el: el.get("type") == "subscribe")
    third.send(f"<presence to='{user}@localhost' type='subscribed'/>")
    # Poezio is told of the approval (a roster push, §3.1.6); the account's roster has both
    p.received(rf'<item [^>]*jid="{newcomer}@localhost" subscription="both"')
    mine = Client(raw_login(srv, ca_file, user, clients), user, "")
    roster = mine.iq("get", "<query xmlns='jabber:iq:roster'/>")
    items = {i.get("jid"): i.get("subscription") for i in roster.iter("{jabber:iq:roster}item")}
    assert items == {f"{peer}@localhost": "both", f"{newcomer}@localhost": "both"}
    # RFC 6121 §4.2: /status reaches the contact as show and status (away, Poezio sends
    # no more chat states)
    p.type("/status away out for lunch")
    away = wait_for(
        other,
        "Poezio's away presence",
        lambda el: el.tag == PRESENCE and el.findtext(f"{{{CLIENT}}}show") == "away",
    )
    assert away.get("from") == jid and away.findtext(f"{{{CLIENT}}}status") == "out for lunch"

    # XEP-0092, XEP-0199 (Poezio's ping plugin), XEP-0012 of the server, shown in the
    # roster tab's information buffer
    p.type("/win 0")
    p.type("/version localhost")
    p.wait_screen(r"localhost is running fastxmpp version \d")
    p.type("/ping localhost")
    p.wait_screen(r"localhost responded to ping after [\d.]+s")
    # XEP-0012 §4: /last_activity with a JID never sends its query (module docstring);
    # without one, in the chat's tab, it asks the contact's bare JID, and the server answers
    # for the account: online, so 0 seconds
    p.type("/win 1")
    p.type("/last_activity")
    p.sent(rf'<iq [^\n]*to="{peer}@localhost"><query xmlns="jabber:iq:last" />')
    p.received(rf'from="{peer}@localhost"><query xmlns="jabber:iq:last" seconds="0" />')
    p.wait_screen(rf"The last activity of {peer}@localhost was 0s ago")
    # (module docstring: no XEP-0352 client state indication)
    assert not re.search(r"SEND: <(in)?active xmlns=\"urn:xmpp:csi:0\"", p.log())


MUC = "http://jabber.org/protocol/muc"
MUC_USER = f"{MUC}#user"
MAM = "urn:xmpp:mam:2"
DISCO_INFO = "http://jabber.org/protocol/disco#info"


def statuses(el: Any) -> set[str]:
    return {s.get("code") for s in el.iterfind(f"{{{MUC_USER}}}x/{{{MUC_USER}}}status")}


def test_room(
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    poezio: Callable[..., Poezio],
) -> None:
    user, peer, guest = next(names), next(names), next(names)
    room = f"pz-{user}@conference.localhost"
    p = poezio(user)
    jid = p.logged_in()
    p.wait_screen(r"Your JID is")
    other = raw_login(srv, ca_file, peer, clients)
    mine = Client(raw_login(srv, ca_file, user, clients), user, "")
    # XEP-0045 §10.1.1: /join of a new room: created (201), locked until configured
    p.type(f"/join {room}/poe")
    p.wait_screen("Info: The room has been created")
    p.sent(rf'<presence to="{re.escape(room)}/poe" [^\n]*<x xmlns="{MUC}" />')
    other.send(f"<presence to='{room}/{peer}'><x xmlns='{MUC}'/></presence>")
    refused = wait_for(other, "the refusal", lambda el: el.tag == PRESENCE)
    assert refused.get("type") == "error" and stanza_error(refused) == "item-not-found"
    # Poezio bookmarks the room it joins (XEP-0048 in private storage, XEP-0049, autojoin);
    # the server has it as XEP-0402 and XEP-0048-in-PEP items too (XEP-0402 §5.3)
    saved = p.sent(
        r'<query xmlns="jabber:iq:private"><storage xmlns="storage:bookmarks">'
        rf'<conference [^>]*jid="{re.escape(room)}"'
    )
    p.answered(saved)
    stored = conferences(private_storage(mine))
    assert stored[room]["autojoin"] and stored[room]["nick"] == "poe"
    assert native(mine)[room]["autojoin"] and native(mine)[room]["nick"] == "poe"
    assert conferences(pep_storage(mine))[room]["nick"] == "poe"

    # §10.1.3: /configure opens the room's form in a tab: a name typed into the first
    # field, Persistent (two fields down) switched on, Ctrl-Y sends it
    p.type("/configure")
    p.wait_screen(r"Room configuration(?s:.*)Persistent\s+← False →")
    p.slowly("Poezio room")
    p.wait_screen(r"Name\s+Poezio room")
    for key in ("Down", "Down", "Right"):
        p.key(key)
    p.wait_screen(r"Persistent\s+← True\s+→")
    p.key("C-y")
    p.answered(p.sent(rf'to="{re.escape(room)}"><query xmlns="{MUC}#owner"><x [^>]*type="submit"'))
    # the room is open and has what was set (§6.4)
    other.send(f"<iq type='get' id='info' to='{room}'><query xmlns='{DISCO_INFO}'/></iq>")
    info = wait_for(other, "the room's disco#info", lambda el: el.get("id") == "info")
    query = info.find(f"{{{DISCO_INFO}}}query")
    assert "muc_persistent" in {f.get("var") for f in query.iterfind(f"{{{DISCO_INFO}}}feature")}
    assert query.find(f"{{{DISCO_INFO}}}identity").get("name") == "Poezio room"

    other.send(f"<presence to='{room}/{peer}'><x xmlns='{MUC}'/></presence>")
    wait_for(other, "its own presence", lambda el: el.tag == PRESENCE and "110" in statuses(el))
    p.wait_screen(rf"---> {peer} \({peer}@localhost/raw\) joined the room")
    # §7.4 and §7.2.2: groupchat both ways
    other.send(f"<message to='{room}' type='groupchat'><body>hi room</body></message>")
    p.wait_screen(rf"{peer}> hi room")
    p.type("hello room")
    said = wait_for(other, "Poezio's groupchat", lambda el: body(el) == "hello room")
    assert said.get("from") == f"{room}/poe" and said.get("type") == "groupchat"
    # §8.1: /topic, a subject without a body
    p.type("/topic a new topic")
    subject = wait_for(other, "the subject", lambda el: el.find(f"{{{CLIENT}}}subject") is not None)
    assert subject.findtext(f"{{{CLIENT}}}subject") == "a new topic" and body(subject) is None
    assert subject.get("from") == f"{room}/poe"
    # §7.6: /nick: unavailable with 303 and the new nick, then the new presence
    p.type("/nick renamed")
    gone = wait_for(other, "the nick change", lambda el: el.tag == PRESENCE)
    assert gone.get("type") == "unavailable" and "303" in statuses(gone)
    assert gone.find(f"{{{MUC_USER}}}x/{{{MUC_USER}}}item").get("nick") == "renamed"
    back = wait_for(other, "the new nick", lambda el: el.tag == PRESENCE)
    assert back.get("from") == f"{room}/renamed" and back.get("type") is None
    # §7.5: /query opens a private chat with an occupant; what comes in shows there
    p.type(f"/query {peer}")
    other.send(
        f"<message to='{room}/renamed' type='chat'><body>privately</body>"
        f"<x xmlns='{MUC_USER}'/></message>"
    )
    p.wait_screen(rf"{peer}> privately")
    # what Poezio sends there names the occupant JID as its 'from' (module docstring): the
    # server closes the stream, RFC 6120 §4.9.3.9 invalid-from, and nothing reaches the peer
    p.type("privately back")
    p.received(r"<invalid-from [^\n]*the &apos;from&apos; address is not yours")
    # Poezio reconnects and enters the room again, as renamed
    rejoined = wait_for(
        other,
        "Poezio again",
        lambda el: el.tag == PRESENCE and el.get("type") is None,
        bodies := [],
    )
    assert rejoined.get("from") == f"{room}/renamed" and "privately back" not in bodies
    p.type("/close")
    # §8.4 /role, §9.3 /affiliation: the occupant's presence says the change
    p.type(f"/role {peer} visitor")
    changed = wait_for(other, "the role change", lambda el: el.tag == PRESENCE)
    assert changed.find(f"{{{MUC_USER}}}x/{{{MUC_USER}}}item").get("role") == "visitor"
    p.type(f"/affiliation {peer} member")
    changed = wait_for(other, "the affiliation change", lambda el: el.tag == PRESENCE)
    assert changed.find(f"{{{MUC_USER}}}x/{{{MUC_USER}}}item").get("affiliation") == "member"
    # §7.8.2: /invite (in the room's tab: JID and reason); the guest's bare JID does not
    # list XEP-0249 direct invitations, so Poezio sends a mediated one through the room
    third = raw_login(srv, ca_file, guest, clients)
    third.send("<presence/>")
    p.type(f"/invite {guest}@localhost come along")
    invitation = wait_for(third, "the invitation", lambda el: el.tag == MESSAGE)
    invite = invitation.find(f"{{{MUC_USER}}}x/{{{MUC_USER}}}invite")
    assert invitation.get("from") == room and invite.get("from") == jid
    assert invite.findtext(f"{{{MUC_USER}}}reason") == "come along"
    # §8.2 /kick, §9.1 /ban with a reason
    p.type(f"/kick {peer} enough for today")
    kicked = wait_for(other, "the kick", lambda el: el.tag == PRESENCE)
    assert kicked.get("type") == "unavailable" and {"307", "110"} <= statuses(kicked)
    assert kicked.findtext(f"{{{MUC_USER}}}x/{{{MUC_USER}}}item/{{{MUC_USER}}}reason") == (
        "enough for today"
    )
    p.wait_screen(rf"{peer} has been kicked by renamed Reason: enough for today")
    other.send(f"<presence to='{room}/{peer}'><x xmlns='{MUC}'/></presence>")
    wait_for(other, "its own presence", lambda el: el.tag == PRESENCE and "110" in statuses(el))
    p.type(f"/ban {peer} go away")
    banned = wait_for(other, "the ban", lambda el: el.tag == PRESENCE)
    assert banned.get("type") == "unavailable" and {"301", "110"} <= statuses(banned)
    item = banned.find(f"{{{MUC_USER}}}x/{{{MUC_USER}}}item")
    assert item.get("affiliation") == "outcast" and item.findtext(f"{{{MUC_USER}}}reason") == (
        "go away"
    )
    other.send(f"<presence to='{room}/{peer}'><x xmlns='{MUC}'/></presence>")
    refused = wait_for(other, "the refusal", lambda el: el.tag == PRESENCE)
    assert refused.get("type") == "error" and stanza_error(refused) == "forbidden"

    # §10.9: /destroy_room with a reason and another room to go to: the guest inside is told
    third.send(f"<presence to='{room}/{guest}'><x xmlns='{MUC}'/></presence>")
    wait_for(third, "its own presence", lambda el: el.tag == PRESENCE and "110" in statuses(el))
    p.type(f'/destroy_room {room} "the end" lobby@conference.localhost')
    gone = wait_for(
        third, "the room's end", lambda el: el.tag == PRESENCE and el.get("type") == "unavailable"
    )
    destroy = gone.find(f"{{{MUC_USER}}}x/{{{MUC_USER}}}destroy")
    assert destroy is not None and destroy.findtext(f"{{{MUC_USER}}}reason") == "the end"
    assert destroy.get("jid") == "lobby@conference.localhost"
    p.wait_screen(rf"Room {re.escape(room)} was destroyed")
    third.send(f"<iq type='get' id='info' to='{room}'><query xmlns='{DISCO_INFO}'/></iq>")
    info = wait_for(third, "the disco#info", lambda el: el.get("id") == "info")
    assert stanza_error(info) == "item-not-found"


def test_history_and_bookmarks(
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    poezio: Callable[..., Poezio],
) -> None:
    user, peer = next(names), next(names)
    room = f"hist-{user}@conference.localhost"
    other = befriend(srv, ca_file, user, peer, clients)
    # history made before Poezio ever ran: a chat, archived by the server (XEP-0313) ...
    mine = raw_login(srv, ca_file, user, clients)
    mine.send(f"<message to='{peer}@localhost' type='chat'><body>archived one</body></message>")
    wait_for(other, "archived one", lambda el: body(el) == "archived one")
    other.send(
        f"<message to='{user}@localhost/raw' type='chat'><body>archived two</body></message>"
    )
    wait_for(mine, "archived two", lambda el: body(el) == "archived two")
    # ... and a room the peer made, archiving (XEP-0045 §10.1.3, muc#roomconfig_enablearchiving)
    other.send(f"<presence to='{room}/{peer}'><x xmlns='{MUC}'/></presence>")
    wait_for(other, "the new room", lambda el: el.tag == PRESENCE and "201" in statuses(el))
    other.send(
        f"<iq type='set' id='cfg' to='{room}'><query xmlns='{MUC}#owner'>"
        "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'>"
        f"<value>{MUC}#roomconfig</value></field>"
        "<field var='muc#roomconfig_enablearchiving'><value>1</value></field>"
        "<field var='muc#roomconfig_persistentroom'><value>1</value></field>"
        "</x></query></iq>"
    )
    assert (
        wait_for(other, "the configuration", lambda el: el.get("id") == "cfg").get("type")
        == "result"
    )
    for text in ("room one", "room two"):
        other.send(f"<message to='{room}' type='groupchat'><body>{text}</body></message>")
        wait_for(other, text, lambda el, text=text: body(el) == text)

    p = poezio(user)
    p.logged_in()
    p.wait_screen(r"Your JID is")
    # a room's history as Poezio gets it (XEP-0313 §3.2 on the room's archive): no
    # discussion history on entering (XEP-0045 §7.2.15, seconds 0), the archive's latest
    p.type(f"/join {room}/poe")
    p.sent(rf'<presence to="{re.escape(room)}/poe" [^\n]*<history seconds="0" />')
    p.received(
        rf'<message from="{re.escape(room)}" [^\n]*<result xmlns="{MAM}" [^\n]*'
        rf'from="{re.escape(room)}/{peer}"[^\n]*<body>room two</body>'
    )
    p.wait_screen(rf"{peer}> room one\s[^\n]*\n.*{peer}> room two")
    assert len(re.findall(r"RECV: [^\n]*<body>room one</body>", p.log())) == 1
    # a chat's: /message opens the tab and asks the account's archive for it (§4.1.1 'with')
    p.type(f"/message {peer}@localhost")
    p.sent(rf'<query xmlns="{MAM}"[^\n]*<field var="with"><value>{peer}@localhost<')
    p.wait_screen(rf"{user}> archived one\s[^\n]*\n.*{peer}> archived two")

    # bookmarks: /join made one (XEP-0048 in private storage, autojoin); in the room's tab
    # /remove_bookmark takes it away, /bookmark with a nick and autojoin puts it back; the
    # server keeps the XEP-0402 and XEP-0048-in-PEP forms alike (XEP-0402 §5.3)
    account = Client(mine, user, "")
    p.answered(
        p.sent(r'<storage xmlns="storage:bookmarks"><conference [^>]*jid="' + re.escape(room))
    )
    assert native(account)[room]["nick"] == "poe"
    p.type("/win 1")
    p.type("/remove_bookmark")
    p.wait_screen("Bookmark deleted")
    assert room not in conferences(private_storage(account))
    assert room not in native(account)
    before = len(p.log())
    p.type(f"/bookmark {room}/keeper true")
    p.answered(
        p.sent(
            r'<storage xmlns="storage:bookmarks"><conference [^>]*jid="' + re.escape(room), before
        )
    )
    stored = conferences(private_storage(account))[room]
    assert stored["autojoin"] and stored["nick"] == "keeper"
    assert native(account)[room]["autojoin"] and native(account)[room]["nick"] == "keeper"
    assert conferences(pep_storage(account))[room]["nick"] == "keeper"
    # the next start: Poezio reads its bookmarks and enters the room as keeper (autojoin)
    p.close()
    # (XEP-0198 on, which Poezio leaves off by default: enabled with resumption)
    again = poezio(user, enable_smacks="true")
    again.logged_in()
    again.sent(r'<enable xmlns="urn:xmpp:sm:3" resume="true"')
    again.received(r'<enabled xmlns="urn:xmpp:sm:3" [^>]*resume="true"')
    entered = wait_for(
        other,
        "Poezio entering by its bookmark",
        lambda el: el.tag == PRESENCE and el.get("from") == f"{room}/keeper",
    )
    assert entered.get("type") is None
