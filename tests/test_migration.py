"""Moving to fastxmpp from another server, and away again: XEP-0227 files through
`fastxmpp import` and `fastxmpp export` (fastxmpp/portable.py).

The import is tried on what an operator really has: a Prosody 0.12 (Debian's `prosody`,
installed by `make interop-deps`) that users filled over XMPP (a roster with a group, a
vCard, private XML, PEP nodes, archived chats and a subscription request waiting), stopped,
and exported with its own `prosody-migrator` to its `xep0227` store: a file per account,
SCRAM-SHA-1 credentials only. The users then log in to fastxmpp with their passwords and
find their data, as clients ask for it. The same with ejabberd 23.01 (Debian's `ejabberd`),
whose `ejabberdctl export_piefxis` writes a main file that XIncludes a file per host, with
offline messages and privacy lists, which Prosody's export has no part for, and its SCRAM
credentials base64-encoded twice (it keeps them as base64 text and encodes that again)."""

from __future__ import annotations

import contextlib
import datetime
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from conftest import FASTXMPP, PASSWORD, ServerProcess, run_cli
from interop_clients import require_command, wait_for
from lxml import etree
from xmpp_raw import CLIENT, SASL, RawClient

ROSTER = "jabber:iq:roster"
VCARD = "vcard-temp"
PRIVATE = "jabber:iq:private"
PUBSUB = "http://jabber.org/protocol/pubsub"
NICK = "http://jabber.org/protocol/nick"
DEVICES = "eu.siacs.conversations.axolotl.devicelist"
MAM = "urn:xmpp:mam:2"
FORWARD = "urn:xmpp:forward:0"
DATA = "jabber:x:data"
PRIVACY = "jabber:iq:privacy"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-4000:]
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"Prosody never listened on {port}:\n{log.read_text()[-4000:]}")


def _login(port: int, ca_file: str, user: str, mechanism: str, resource: str = "r") -> RawClient:
    c = RawClient(port)
    c.open_stream()
    c.starttls(ca_file)
    outcome = c.sasl_scram(user, PASSWORD, mechanism)
    assert outcome.tag == f"{{{SASL}}}success", etree.tostring(outcome)
    c.open_stream()
    c.bind(resource)
    return c


def _iq(c: RawClient, kind: str, payload: str, to: str | None = None) -> Any:
    target = f" to='{to}'" if to else ""
    iq_id = f"q{time.monotonic_ns()}"
    c.send(f"<iq type='{kind}' id='{iq_id}'{target}>{payload}</iq>")
    reply = wait_for(
        c, "the iq's answer", lambda el: el.tag == f"{{{CLIENT}}}iq" and el.get("id") == iq_id
    )
    assert reply.get("type") == "result", etree.tostring(reply)
    return reply


def _chat(sender: RawClient, to: str, text: str) -> None:
    sender.send(
        f"<message to='{to}' type='chat' id='m{time.monotonic_ns()}'><body>{text}</body></message>"
    )


def _publish(c: RawClient, node: str, payload: str, access: str | None = None) -> None:
    options = ""
    if access is not None:
        options = (
            f"<publish-options><x xmlns='{DATA}' type='submit'>"
            "<field var='FORM_TYPE' type='hidden'>"
            "<value>http://jabber.org/protocol/pubsub#publish-options</value></field>"
            f"<field var='pubsub#access_model'><value>{access}</value></field></x>"
            "</publish-options>"
        )
    _iq(
        c,
        "set",
        f"<pubsub xmlns='{PUBSUB}'><publish node='{node}'><item id='current'>{payload}</item>"
        f"</publish>{options}</pubsub>",
    )


@pytest.fixture(scope="module")
def prosody_export(ca: trustme.CA, ca_file: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory of the files Prosody's migrator wrote, one per account."""
    require_command("prosody", "Prosody (Debian package prosody)")
    require_command("prosodyctl", "prosodyctl (Debian package prosody)")
    migrator = require_command("prosody-migrator", "prosody-migrator (Debian package prosody)")
    root = tmp_path_factory.mktemp("prosody")
    cert = ca.issue_cert("localhost")
    cert.cert_chain_pems[0].write_to_path(str(root / "localhost.crt"))
    cert.private_key_pem.write_to_path(str(root / "localhost.key"))
    port = _free_port()
    config = root / "prosody.cfg.lua"
    config.write_text(f"""
run_as_root = true
daemonize = false
pidfile = "{root}/prosody.pid"
data_path = "{root}/data"
log = {{ debug = "{root}/prosody.log" }}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {port} }}
s2s_ports = {{}}
http_ports = {{}}
https_ports = {{}}
modules_enabled = {{ "roster", "saslauth", "tls", "disco", "presence", "posix", "vcard",
                    "pep", "private", "offline", "mam", "ping" }}
authentication = "internal_hashed"
c2s_require_encryption = true
archive_expires_after = "never"
default_archive_policy = true
VirtualHost "localhost"
  ssl = {{ certificate = "{root}/localhost.crt", key = "{root}/localhost.key" }}
""")
    (root / "data").mkdir()
    for user in ("juliet", "romeo", "nurse"):
        subprocess.run(
            ["prosodyctl", "--config", str(config), "register", user, "localhost", PASSWORD],
            check=True,
            capture_output=True,
        )
    log = root / "prosody.log"
    proc = subprocess.Popen(["prosody", "--config", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        _wait_port(port, proc, log)
        _fill_prosody(port, ca_file)
    finally:
        proc.terminate()
        proc.wait(10)
    out = root / "export"
    out.mkdir()
    (root / "migrator.cfg.lua").write_text(f"""
input {{ type = "internal"; path = "{root}/data";
        hosts = {{ ["localhost"] = {{ "accounts", "roster", "vcard", "private", "pep-pubsub",
                                     "archive-archive" }} }} }}
output {{ type = "xep0227"; }}
""")
    # The migrator writes xep0227 files into its compiled-in data directory, whatever its
    # configuration says: /var/lib/prosody, replaced by ours in a mount namespace of its own.
    unshare = require_command("unshare", "unshare (Debian package util-linux)")
    result = subprocess.run(
        [
            unshare,
            "-m",
            "--",
            "sh",
            "-c",
            f'mount --bind "{out}" /var/lib/prosody && exec "$0" --root --config "$1" input output',
            migrator,
            str(root / "migrator.cfg.lua"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    files = sorted(out.glob("*@localhost.xml"))
    assert [f.name for f in files] == [
        "juliet@localhost.xml",
        "nurse@localhost.xml",
        "romeo@localhost.xml",
    ], result.stderr
    return out


def _fill_prosody(port: int, ca_file: str) -> None:
    """What juliet's clients stored on Prosody, and messages her contacts sent her."""
    juliet = _login(port, ca_file, "juliet", "SCRAM-SHA-1")
    romeo = _login(port, ca_file, "romeo", "SCRAM-SHA-1")
    try:
        _iq(
            juliet,
            "set",
            f"<query xmlns='{ROSTER}'><item jid='romeo@localhost' name='Romeo'>"
            "<group>Friends</group></item></query>",
        )
        _iq(juliet, "set", f"<vCard xmlns='{VCARD}'><FN>Juliet Capulet</FN></vCard>")
        _iq(
            juliet,
            "set",
            f"<query xmlns='{PRIVATE}'><prefs xmlns='exodus:prefs'><nick>Jule</nick></prefs>"
            "</query>",
        )
        _publish(juliet, NICK, f"<nick xmlns='{NICK}'>Jule</nick>")
        _publish(
            juliet,
            DEVICES,
            f"<list xmlns='{DEVICES}'><device id='4223'/></list>",
            access="open",
        )
        juliet.send("<presence/>")
        romeo.send("<presence/>")
        _chat(romeo, "juliet@localhost", "wherefore art thou")
        wait_for(
            juliet,
            "romeo's message",
            lambda el: el.findtext(f"{{{CLIENT}}}body") == "wherefore art thou",
        )
        _chat(juliet, "romeo@localhost", "deny thy father")
        wait_for(
            romeo,
            "juliet's message",
            lambda el: el.findtext(f"{{{CLIENT}}}body") == "deny thy father",
        )
    finally:
        juliet.close()
        romeo.close()
    nurse = _login(port, ca_file, "nurse", "SCRAM-SHA-1")
    nurse.send("<presence to='juliet@localhost' type='subscribe'/>")
    # Prosody has stored the request once it answers a ping that followed it.
    _iq(nurse, "get", "<ping xmlns='urn:xmpp:ping'/>", to="localhost")
    nurse.close()


@pytest.fixture(scope="module")
def imported(
    prosody_export: Path, ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, str]]:
    """A fastxmpp server with Prosody's accounts imported, started; and what import said."""
    srv = ServerProcess(tmp_path_factory.mktemp("imported"), ca, ("localhost",))
    files = [str(p) for p in sorted(prosody_export.glob("*.xml"))]
    result = run_cli("import", *files, config=srv.config)
    assert result.returncode == 0, result.stderr
    srv.start()
    yield srv, result.stdout
    srv.stop()


def test_import_reports_what_it_did(imported: tuple[ServerProcess, str]) -> None:
    _, said = imported
    assert "3 accounts" in said, said
    # juliet's contact, and the nurse's item for juliet (asked, not yet answered).
    assert "2 roster items" in said and "1 vCards" in said and "2 PEP items" in said, said
    # Each archived message twice: in the sender's archive and in the recipient's.
    assert "1 subscription requests" in said and "4 archived messages" in said, said
    assert "1 private XML namespaces" in said and "left out" not in said, said
    # Prosody keeps SCRAM-SHA-1 only: the operator is told what that means for logins.
    assert "3 account(s) came with SCRAM-SHA-1 credentials only" in said, said


def test_users_find_their_data(imported: tuple[ServerProcess, str], ca_file: str) -> None:
    srv, _ = imported
    juliet = _login(srv.port, ca_file, "juliet", "SCRAM-SHA-1")
    try:
        roster = _iq(juliet, "get", f"<query xmlns='{ROSTER}'/>")
        items = roster.findall(f"{{{ROSTER}}}query/{{{ROSTER}}}item")
        assert [(i.get("jid"), i.get("name"), i.findtext(f"{{{ROSTER}}}group")) for i in items] == [
            ("romeo@localhost", "Romeo", "Friends")
        ]
        vcard = _iq(juliet, "get", f"<vCard xmlns='{VCARD}'/>")
        assert vcard.findtext(f"{{{VCARD}}}vCard/{{{VCARD}}}FN") == "Juliet Capulet"
        private = _iq(
            juliet, "get", f"<query xmlns='{PRIVATE}'><prefs xmlns='exodus:prefs'/></query>"
        )
        assert (
            private.findtext(f"{{{PRIVATE}}}query/{{exodus:prefs}}prefs/{{exodus:prefs}}nick")
            == "Jule"
        )
        nick = _iq(juliet, "get", f"<pubsub xmlns='{PUBSUB}'><items node='{NICK}'/></pubsub>")
        assert nick.findtext(f".//{{{NICK}}}nick") == "Jule"
        # The device list was published with access model open: anyone may read it.
        romeo = _login(srv.port, ca_file, "romeo", "SCRAM-SHA-1")
        devices = _iq(romeo, "get", f"<pubsub xmlns='{PUBSUB}'><items node='{DEVICES}'/></pubsub>",
                      to="juliet@localhost")  # fmt: skip
        assert devices.find(f".//{{{DEVICES}}}device").get("id") == "4223"
        romeo.close()
        # The archive, in order, both directions (XEP-0313 §4).
        juliet.send(f"<iq type='set' id='mam'><query xmlns='{MAM}' queryid='all'/></iq>")
        bodies = []
        while True:
            el = juliet.next()
            if el.tag == f"{{{CLIENT}}}iq":
                assert el.get("type") == "result", etree.tostring(el)
                break
            forwarded = el.find(f"{{{MAM}}}result/{{{FORWARD}}}forwarded/{{{CLIENT}}}message")
            bodies.append(
                (forwarded.get("from").split("/")[0], forwarded.findtext(f"{{{CLIENT}}}body"))
            )
        assert bodies == [
            ("romeo@localhost", "wherefore art thou"),
            ("juliet@localhost", "deny thy father"),
        ]
        # The nurse's request, still waiting for an answer, comes at initial presence.
        juliet.send("<presence/>")
        wait_for(
            juliet,
            "the waiting subscription request",
            lambda el: (
                el.tag == f"{{{CLIENT}}}presence"
                and el.get("type") == "subscribe"
                and el.get("from") == "nurse@localhost"
            ),
        )
    finally:
        juliet.close()


def test_sha1_only_accounts_get_sha256_at_a_plain_login(
    imported: tuple[ServerProcess, str], ca_file: str
) -> None:
    srv, _ = imported
    c = RawClient(srv.port)
    c.open_stream()
    c.starttls(ca_file)
    # Prosody gave no SCRAM-SHA-256 credentials: that mechanism cannot work for romeo yet.
    failure = c.sasl_scram("romeo", PASSWORD, "SCRAM-SHA-256")
    assert failure.tag == f"{{{SASL}}}failure", etree.tostring(failure)
    c.close()
    # PLAIN (over TLS) checks the password against the SCRAM-SHA-1 credentials...
    c = RawClient(srv.port)
    c.open_stream()
    c.starttls(ca_file)
    assert c.sasl_plain("romeo", PASSWORD).tag == f"{{{SASL}}}success"
    c.close()
    # ...and, the password at hand, makes the credentials of every mechanism.
    deadline = time.monotonic() + 10
    while True:
        c = RawClient(srv.port)
        c.open_stream()
        c.starttls(ca_file)
        outcome = c.sasl_scram("romeo", PASSWORD, "SCRAM-SHA-256")
        c.close()
        if outcome.tag == f"{{{SASL}}}success" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert outcome.tag == f"{{{SASL}}}success", etree.tostring(outcome)


def test_export_then_import_elsewhere(
    imported: tuple[ServerProcess, str], ca: trustme.CA, ca_file: str, tmp_path: Path
) -> None:
    """fastxmpp's own export (while it runs) read by another fastxmpp: nothing lost, with
    what Prosody's export had no part for (offline messages, privacy lists) added first."""
    srv, _ = imported
    juliet = _login(srv.port, ca_file, "juliet", "SCRAM-SHA-1")
    _iq(
        juliet,
        "set",
        f"<query xmlns='{PRIVACY}'><list name='quiet'><item type='jid' value='tybalt@localhost'"
        " action='deny' order='1'><message/></item><item action='allow' order='2'/></list>"
        "</query>",
    )
    _iq(juliet, "set", f"<query xmlns='{PRIVACY}'><default name='quiet'/></query>")
    _chat(juliet, "nurse@localhost", "bring word tomorrow")  # the nurse is offline
    _iq(juliet, "get", "<ping xmlns='urn:xmpp:ping'/>", to="localhost")  # (stored by now)
    juliet.close()
    out = tmp_path / "export.xml"
    result = run_cli("export", str(out), config=srv.config)
    assert result.returncode == 0, result.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    assert not out.with_name("export.xml.partial").exists()  # written aside, then renamed
    text = out.read_text()
    assert "password=" not in text  # credentials as SCRAM only (XEP-0227 §4.2, 1.1)
    second = ServerProcess(tmp_path / "second", ca, ("localhost",))
    result = run_cli("import", str(out), config=second.config)
    assert result.returncode == 0, result.stderr
    said = result.stdout
    assert "3 accounts" in said and "6 archived messages" in said, said
    assert "1 offline messages" in said and "1 privacy lists" in said, said
    second.start()
    try:
        juliet = _login(second.port, ca_file, "juliet", "SCRAM-SHA-1")
        roster = _iq(juliet, "get", f"<query xmlns='{ROSTER}'/>")
        assert roster.find(f"{{{ROSTER}}}query/{{{ROSTER}}}item").get("name") == "Romeo"
        nick = _iq(juliet, "get", f"<pubsub xmlns='{PUBSUB}'><items node='{NICK}'/></pubsub>")
        assert nick.findtext(f".//{{{NICK}}}nick") == "Jule"
        names = _iq(juliet, "get", f"<query xmlns='{PRIVACY}'/>")
        assert names.find(f"{{{PRIVACY}}}query/{{{PRIVACY}}}default").get("name") == "quiet"
        lists = _iq(juliet, "get", f"<query xmlns='{PRIVACY}'><list name='quiet'/></query>")
        items = lists.findall(f"{{{PRIVACY}}}query/{{{PRIVACY}}}list/{{{PRIVACY}}}item")
        assert [(i.get("value"), i.get("action")) for i in items] == [
            ("tybalt@localhost", "deny"),
            (None, "allow"),
        ]
        assert items[0].find(f"{{{PRIVACY}}}message") is not None
        juliet.close()
        # The offline message, with the time it was first stored (XEP-0203).
        nurse = _login(second.port, ca_file, "nurse", "SCRAM-SHA-1")
        nurse.send("<presence/>")
        message = wait_for(
            nurse,
            "the offline message",
            lambda el: el.findtext(f"{{{CLIENT}}}body") == "bring word tomorrow",
        )
        assert message.get("from").startswith("juliet@localhost/")
        assert message.find("{urn:xmpp:delay}delay") is not None
        nurse.close()
    finally:
        second.stop()


def test_refusals(imported: tuple[ServerProcess, str], ca: trustme.CA, tmp_path: Path) -> None:
    srv, _ = imported
    target = ServerProcess(tmp_path / "t", ca, ("localhost",))
    pie = "urn:xmpp:pie:0"
    cases = {
        # §5: only relative XIncludes are followed, nothing over the network.
        "url.xml": f"<server-data xmlns='{pie}' xmlns:xi='http://www.w3.org/2001/XInclude'>"
        "<xi:include href='http://example.com/x.xml'/></server-data>",
        "abs.xml": f"<server-data xmlns='{pie}' xmlns:xi='http://www.w3.org/2001/XInclude'>"
        "<xi:include href='/etc/passwd'/></server-data>",
        "other.xml": "<server-data xmlns='urn:example'/>",
        # No DTD: nothing for entity expansion (XEP-0227 files never have one).
        "dtd.xml": "<!DOCTYPE d [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;&a;&a;'>]>"
        f"<server-data xmlns='{pie}'><host jid='localhost'><user name='ann' password='&b;'/>"
        "</host></server-data>",
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        result = run_cli("import", str(tmp_path / name), config=target.config)
        assert result.returncode == 1 and result.stderr.startswith("fastxmpp import: "), (
            name,
            result.stderr,
        )
    # Unknown hosts and existing accounts are reported and skipped, the rest imported.
    (tmp_path / "lol.xml").write_text(
        f"<server-data xmlns='{pie}'><host jid='elsewhere.test'><user name='x' password='p'/>"
        "</host><host jid='LocalHost'><user name='juliet' password='p'/>"
        "<user name='bob' password='a&#x85;b'/><user name='ann' password='p'/></host>"
        "</server-data>"
    )
    target_with_juliet = ServerProcess(tmp_path / "u", ca, ("localhost",))
    target_with_juliet.adduser("juliet@localhost")
    result = run_cli("import", str(tmp_path / "lol.xml"), config=target_with_juliet.config)
    assert result.returncode == 0, result.stderr
    assert "host elsewhere.test with 1 account(s): not a configured host" in result.stdout
    assert "juliet@localhost: the account exists already" in result.stdout
    # A password SASLprep refuses (RFC 4013: a control character) cannot become credentials.
    assert "bob@localhost: unusable password" in result.stdout, result.stdout
    assert "\n1 account\n" in result.stdout, result.stdout
    # The server's own lock: no import into a running server.
    running = run_cli("import", str(tmp_path / "lol.xml"), config=srv.config)
    assert running.returncode == 1 and "stopped server" in running.stderr, running.stderr


# --- ejabberd -------------------------------------------------------------------------

EJABBERD_CONFIG = """
hosts:
  - localhost
loglevel: info
certfiles:
  - "{pem}"
auth_method: internal
auth_password_format: scram
acl:
  local:
    user_regexp: ""
access_rules:
  local:
    allow: local
listen:
  - port: {port}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    starttls_required: true
modules:
  mod_roster: {{}}
  mod_disco: {{}}
  mod_ping: {{}}
  mod_offline: {{}}
  mod_private: {{}}
  mod_privacy: {{}}
  mod_vcard: {{}}
"""


@pytest.fixture(scope="module")
def ejabberd_export(ca: trustme.CA, ca_file: str) -> Iterator[Path]:
    """The main file `ejabberdctl export_piefxis` wrote (its hosts' files XIncluded)."""
    ctl = require_command("ejabberdctl", "ejabberd (Debian package ejabberd)")
    user = pwd.getpwnam("ejabberd")
    # ejabberd runs as its own user: a directory of its own, outside pytest's (mode 0700).
    root = Path(tempfile.mkdtemp(prefix="fastxmpp-ejabberd-"))
    try:
        # A validity Erlang's certificate code reads (trustme's default ends in year 3000).
        now = datetime.datetime.now(datetime.UTC)
        cert = ca.issue_cert(
            "localhost",
            not_before=now - datetime.timedelta(days=1),
            not_after=now + datetime.timedelta(days=30),
        )
        pem = root / "localhost.pem"
        pem.write_bytes(cert.cert_chain_pems[0].bytes() + cert.private_key_pem.bytes())
        port = _free_port()
        config = root / "ejabberd.yml"
        config.write_text(EJABBERD_CONFIG.format(pem=pem, port=port))
        ctl_config = root / "ejabberdctl.cfg"
        ctl_config.write_text(f'EJABBERD_PID_PATH="{root}/spool/ejabberd.pid"\n')
        for sub in ("spool", "logs", "export"):
            (root / sub).mkdir()
        for path in [root, *root.iterdir()]:
            os.chown(path, user.pw_uid, user.pw_gid)
        node = f"migration{os.getpid()}@localhost"
        base = [
            *(ctl, "--ctl-config", str(ctl_config), "--config", str(config)),
            *("--spool", str(root / "spool"), "--logs", str(root / "logs"), "--node", node),
        ]
        as_user: dict[str, Any] = {
            "user": user.pw_uid,
            "group": user.pw_gid,
            "extra_groups": [],
            "env": {**os.environ, "HOME": user.pw_dir},
        }
        log = root / "logs" / "ejabberd.log"
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        proc = subprocess.Popen([*base, "foreground"], start_new_session=True, **quiet, **as_user)
        try:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, log.read_text()[-4000:] if log.exists() else ""
                with contextlib.suppress(OSError):
                    socket.create_connection(("127.0.0.1", port), 0.5).close()
                    break
                assert time.monotonic() < deadline, "ejabberd never listened"
                time.sleep(0.2)
            for name in ("juliet", "romeo", "nurse"):
                subprocess.run([*base, "register", name, "localhost", PASSWORD], check=True,
                               capture_output=True, timeout=60, **as_user)  # fmt: skip
            _fill_ejabberd(port, ca_file)
            subprocess.run([*base, "export_piefxis", str(root / "export")], check=True,
                           capture_output=True, timeout=60, **as_user)  # fmt: skip
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        mains = [p for p in (root / "export").glob("*.xml") if "xi:include" in p.read_text()]
        assert len(mains) == 1, sorted(p.name for p in (root / "export").iterdir())
        yield mains[0]
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _fill_ejabberd(port: int, ca_file: str) -> None:
    juliet = _login(port, ca_file, "juliet", "SCRAM-SHA-1")
    try:
        _iq(
            juliet,
            "set",
            f"<query xmlns='{ROSTER}'><item jid='romeo@localhost' name='Romeo'>"
            "<group>Friends</group></item></query>",
        )
        _iq(juliet, "set", f"<vCard xmlns='{VCARD}'><FN>Juliet Capulet</FN></vCard>")
        _iq(
            juliet,
            "set",
            f"<query xmlns='{PRIVATE}'><prefs xmlns='exodus:prefs'><nick>Jule</nick></prefs>"
            "</query>",
        )
        _iq(
            juliet,
            "set",
            f"<query xmlns='{PRIVACY}'><list name='quiet'><item type='jid' "
            "value='tybalt@localhost' action='deny' order='1'/></list></query>",
        )
    finally:
        juliet.close()
    romeo = _login(port, ca_file, "romeo", "SCRAM-SHA-1")
    _chat(romeo, "juliet@localhost", "wherefore art thou")  # juliet is offline
    _iq(romeo, "get", "<ping xmlns='urn:xmpp:ping'/>", to="localhost")
    romeo.close()
    nurse = _login(port, ca_file, "nurse", "SCRAM-SHA-1")
    nurse.send("<presence to='juliet@localhost' type='subscribe'/>")
    _iq(nurse, "get", "<ping xmlns='urn:xmpp:ping'/>", to="localhost")
    nurse.close()


def test_ejabberd_export_imports(
    ejabberd_export: Path, ca: trustme.CA, ca_file: str, tmp_path: Path
) -> None:
    srv = ServerProcess(tmp_path / "from-ejabberd", ca, ("localhost",))
    result = run_cli("import", str(ejabberd_export), config=srv.config)
    assert result.returncode == 0, result.stderr
    said = result.stdout
    assert "3 accounts" in said and "1 offline messages" in said, said
    assert "1 privacy lists" in said and "1 vCards" in said, said
    srv.start()
    try:
        juliet = _login(srv.port, ca_file, "juliet", "SCRAM-SHA-1")
        roster = _iq(juliet, "get", f"<query xmlns='{ROSTER}'/>")
        items = roster.findall(f"{{{ROSTER}}}query/{{{ROSTER}}}item")
        assert [(i.get("jid"), i.get("name"), i.findtext(f"{{{ROSTER}}}group")) for i in items] == [
            ("romeo@localhost", "Romeo", "Friends")
        ]
        vcard = _iq(juliet, "get", f"<vCard xmlns='{VCARD}'/>")
        assert vcard.findtext(f"{{{VCARD}}}vCard/{{{VCARD}}}FN") == "Juliet Capulet"
        private = _iq(
            juliet, "get", f"<query xmlns='{PRIVATE}'><prefs xmlns='exodus:prefs'/></query>"
        )
        assert private.find(".//{exodus:prefs}nick").text == "Jule"
        lists = _iq(juliet, "get", f"<query xmlns='{PRIVACY}'><list name='quiet'/></query>")
        item = lists.find(f".//{{{PRIVACY}}}item")
        assert (item.get("value"), item.get("action")) == ("tybalt@localhost", "deny")
        juliet.send("<presence/>")
        # The waiting subscription request and the offline message, in either order.
        got = {"request": False, "message": False}
        while not all(got.values()):
            el = juliet.next()
            if el.tag == f"{{{CLIENT}}}presence" and el.get("type") == "subscribe":
                got["request"] = el.get("from") == "nurse@localhost"
            elif el.findtext(f"{{{CLIENT}}}body") == "wherefore art thou":
                got["message"] = el.find("{urn:xmpp:delay}delay") is not None
        juliet.close()
    finally:
        srv.stop()


def _big_export(path: Path, accounts: int, archived: int, offline: int) -> None:
    """A file as another server writes it: `accounts` users with rosters, vCards, offline
    messages and archives."""
    users = []
    for n in range(accounts):
        name = f"user{n}"
        roster = "".join(
            f"<item jid='friend{k}@elsewhere.test' subscription='both'><group>G</group></item>"
            for k in range(5)
        )
        stored = "".join(
            f"<message xmlns='jabber:client' from='friend0@elsewhere.test/x' to='{name}@localhost'"
            f" type='chat'><body>offline {k}</body><delay xmlns='urn:xmpp:delay'"
            " stamp='2026-01-01T00:00:00Z'/></message>"
            for k in range(offline)
        )
        archive = "".join(
            f"<result xmlns='{MAM}' id='a{k}'><forwarded xmlns='{FORWARD}'>"
            f"<delay xmlns='urn:xmpp:delay' stamp='2026-01-01T00:{k // 60:02d}:{k % 60:02d}Z'/>"
            f"<message xmlns='jabber:client' from='friend1@elsewhere.test/x' to='{name}@localhost'"
            f" type='chat'><body>archived {k}</body></message></forwarded></result>"
            for k in range(archived)
        )
        users.append(
            f"<user name='{name}' password='{PASSWORD}'>"
            f"<query xmlns='{ROSTER}'>{roster}</query>"
            f"<vCard xmlns='{VCARD}'><FN>User {n}</FN></vCard>"
            f"<offline-messages>{stored}</offline-messages>"
            f"<archive xmlns='urn:xmpp:pie:0#mam'>{archive}</archive></user>"
        )
    path.write_text(
        f"<server-data xmlns='urn:xmpp:pie:0'><host jid='localhost'>{''.join(users)}</host>"
        "</server-data>"
    )


def test_an_import_stopped_anywhere_completes_on_the_next_run(
    ca: trustme.CA, tmp_path: Path
) -> None:
    """SIGKILL in the middle of an import, then the same import again: every account whole,
    nothing twice (an account is written last, and what an interrupted run left of it is
    purged first)."""
    from fastxmpp.storage.accounts import AccountStore
    from fastxmpp.storage.lmdb_store import Storage
    from fastxmpp.storage.mam import ArchiveStore
    from fastxmpp.storage.offline import OfflineStore
    from fastxmpp.storage.roster import RosterStore

    accounts, archived, offline = 120, 40, 3
    export = tmp_path / "export.xml"
    _big_export(export, accounts, archived, offline)
    srv = ServerProcess(tmp_path / "target", ca, ("localhost",))
    srv.data_dir.mkdir(parents=True)
    with Storage(srv.data_dir) as storage:
        AccountStore(storage).count()  # the database made before the importer writes
    command = [*FASTXMPP, "import", str(export), "--config", str(srv.config)]
    interrupted = 0
    for _ in range(3):  # three stops, each somewhere in an account's writes, or between two
        run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while True:  # until a few more accounts are in, then stop it where it is
                with Storage(srv.data_dir) as storage:
                    done = AccountStore(storage).count()
                if done >= interrupted + 5:
                    break
                assert run.poll() is None, run.stdout.read() if run.stdout else ""
                assert time.monotonic() < deadline, "the import made no progress"
                time.sleep(0.01)
            run.send_signal(signal.SIGKILL)
        finally:
            run.wait(10)
            if run.stdout:
                run.stdout.close()
        with Storage(srv.data_dir) as storage:
            interrupted = AccountStore(storage).count()
    assert 15 <= interrupted < accounts, "a kill came after the import had finished"
    result = run_cli("import", str(export), config=srv.config)
    assert result.returncode == 0, result.stderr
    assert f"\n{accounts - interrupted} accounts," in result.stdout, result.stdout
    with Storage(srv.data_dir) as storage:
        account_store = AccountStore(storage)
        assert account_store.count() == accounts
        archive, queue, rosters = ArchiveStore(storage), OfflineStore(storage), RosterStore(storage)
        for n in range(accounts):
            local = f"user{n}"
            assert archive.count("localhost", local) + len(
                archive.journaled("localhost", local)
            ) == archived, local  # fmt: skip
            assert queue.count("localhost", local) == offline, local
            assert rosters.load("localhost", local).listed_count() == 5, local
