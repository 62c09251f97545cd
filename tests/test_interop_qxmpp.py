"""QXmpp 1.4 (Debian's libqxmpp-dev, the C++/Qt library under Kaidan) against the server,
through tests/interop/qxmpp/client.cpp, compiled here with g++. The harness connects as QXmpp
does by default (STARTTLS required, the certificate verified against the test CA only, the
SASL mechanism QXmpp picks, bind, XEP-0198 with resumption) and prints one line per event;
the other side is a raw client (tests/xmpp_raw.py). QXMPP_HARNESS_DEBUG=1 in the environment
makes the harness write QXmpp's log (every element both ways) to its standard error.

QXmpp 1.4 has no channel binding: it picks SCRAM-SHA-256 of what the server offers. The server
sends no XEP-0059 <count/> with pages of a query filtered by 'with', as Kaidan's are
(docs/COMPLIANCE.md): QXmpp reports a count of 0.
A QXmppResultSetQuery writes <before/> only for a non-null QString: the last page (XEP-0059
§2.5) takes an empty, non-null one.

Server bug found here, fixed: XEP-0363 slot errors came without the <request/> they answer
(RFC 6120 §8.3.1: an error SHOULD include the original XML; XEP-0363 §4's examples do), and
QXmppUploadRequestManager recognizes an error only by it: Kaidan's upload of a file too large
waited for an answer forever.

QXmpp 1.4 bugs, found here (worked around in the tests, not in the server):
- XEP-0198 resumption cannot work against any server: QXmppStreamManagementResume::toXml
  writes <resume h=... previd=.../> without xmlns='urn:xmpp:sm:3' (so it is a jabber:client
  element), and QXmppStreamManagementEnabled::parse never reads the <enabled/> 'id', so the
  previd is always empty. The server ends that stream (RFC 6120 §4.9.3.24
  unsupported-stanza-type) and leaves the detached session alone; QXmpp's next connection
  binds a new session (the stream error reset its resumption state), which replaces the
  detached one with the same resource, and the detached session's unacknowledged stanzas
  come to it (XEP-0198 §4). The test checks that path: nothing lost, nothing twice.
- QXmppUploadRequestManager only listens to disco#info results: it finds the upload service
  only when the application asks the server's items and their info (Kaidan does, in its
  DiscoveryManager); the harness does the same at login.
- QXmppMucRoom counts itself joined at its own presence and ignores status 201: creating an
  instant room (XEP-0045 §10.1.2) is the application's empty submitted form
  (QXmppMucRoom::setConfiguration), as the harness sends it.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from conftest import PASSWORD, FreshNames, ServerProcess, module_server
from interop_clients import (
    REPO,
    Harness,
    body,
    build_harness,
    kill_all,
    raw_login,
    wait_for,
)
from lxml import etree
from test_avatars import png
from test_components import handshake, open_component
from ws_client import HTTP_LISTENER
from xmpp_raw import CLIENT, RawClient

POOL = FreshNames("qx", 32)
HARNESS = REPO / "tests" / "interop" / "qxmpp" / "client.cpp"
MESSAGE = f"{{{CLIENT}}}message"
PUBSUB = "{http://jabber.org/protocol/pubsub}"
DATA = "{jabber:x:data}"
MUC_USER = "{http://jabber.org/protocol/muc#user}"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
PRESENCE = f"{{{CLIENT}}}presence"
STEP = 10.0
# XEP-0363 §4: slots name the HTTPS listener (tls = "direct") when there is one. QXmpp
# acknowledges only when asked (XEP-0198 §4): the server asks soon after a quiet output.
# In-band registration on, for Kaidan's sign-up; a XEP-0357 app server as a component.
PUSH_APP = "push.localhost"
PUSH_SECRET = "the push app server's secret"
CONFIG = (
    HTTP_LISTENER
    + 'tls = "direct"\n'
    + "[stream_management]\nack_request_after = 0.2\n"
    + "[register]\nenabled = true\n"
    + '[[listeners]]\nkind = "component"\naddress = "127.0.0.1"\nport = 0\n'
    + f'[components."{PUSH_APP}"]\nsecret = "{PUSH_SECRET}"\n'
    + "[push]\nmin_interval = 0.2\n"
)


@pytest.fixture(scope="module")
def srv(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(ca, tmp_path_factory, POOL, CONFIG)


@pytest.fixture
def names() -> Iterator[str]:
    return POOL.names()


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> str:
    """client.cpp compiled against the installed QXmpp and Qt 5."""
    return build_harness(
        tmp_path_factory.mktemp("qxmpp"),
        HARNESS,
        ("g++", "a C++ compiler (Debian package g++)"),
        # -fPIC: Qt 5 is built with -reduce-relocations
        ["-std=c++17", "-Wall", "-fPIC"],
        ["qxmpp", "Qt5Core", "Qt5Network", "Qt5Xml"],
        "QXmpp (Debian package libqxmpp-dev)",
    )


class Qxmpp(Harness):
    """One harness process: commands on its stdin, its event lines collected."""

    name = "QXmpp"
    step = STEP

    def __init__(
        self,
        binary: str,
        srv: ServerProcess,
        ca_file: str,
        user: str,
        password: str,
        resource: str = "",
        register: bool = False,
    ):
        super().__init__(
            [binary, f"{user}@localhost", password, ca_file, str(srv.port)]
            + ([resource] if resource else [])
            + (["--register"] if register else [])
        )


@pytest.fixture
def qxmpps() -> Iterator[list[Qxmpp]]:
    started: list[Qxmpp] = []
    yield started
    kill_all(started)


def login(
    binary: str,
    srv: ServerProcess,
    ca_file: str,
    user: str,
    started: list[Qxmpp],
    resource: str = "",
) -> tuple[Qxmpp, str]:
    q = Qxmpp(binary, srv, ca_file, user, PASSWORD, resource)
    started.append(q)
    jid = q.wait(r"connected (\S+) new").group(1)
    return q, jid


def test_login_roster_and_messages(
    harness: str,
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    qxmpps: list[Qxmpp],
) -> None:
    user, peer = next(names), next(names)
    other = raw_login(srv, ca_file, peer, clients)
    # a roster item for QXmpp to fetch: set from another session of the account (RFC 6121 §2.3)
    setup = raw_login(srv, ca_file, user, clients)
    setup.send(
        "<iq type='set' id='r1'><query xmlns='jabber:iq:roster'>"
        f"<item jid='{peer}@localhost' name='Peer'/></query></iq>"
    )
    wait_for(setup, "the roster set's result", lambda el: el.get("id") == "r1")
    setup.close()
    q, jid = login(harness, srv, ca_file, user, qxmpps)
    # RFC 6120 §5 STARTTLS (verified against the test CA), §6 SASL, §7 bind: QXmpp 1.4 has no
    # channel binding and picks SCRAM-SHA-256 over SCRAM-SHA-1 and PLAIN
    assert q.lines[:4] == ["starttls", "auth SCRAM-SHA-256", "sm enabled true", q.lines[3]], q
    assert jid == f"{user}@localhost/QXmpp", q
    srv.wait_for_log(f"authenticated {user}@localhost with SCRAM-SHA-256")
    # RFC 6121 §2.1.3: the roster, fetched at login, then initial presence (its own comes back)
    q.wait("roster-received 1")
    q.wait(rf"presence {jid} available")
    q.do("roster")
    q.wait("roster-end")
    assert f"roster {peer}@localhost none" in q.lines, q

    # RFC 6121 §5: a chat message each way, from and to the full JIDs
    q.do(f"msg {peer}@localhost/raw hello from QXmpp")
    msg = wait_for(other, "QXmpp's message", lambda el: el.tag == MESSAGE)
    assert body(msg) == "hello from QXmpp", msg
    assert (msg.get("from"), msg.get("to")) == (jid, f"{peer}@localhost/raw")
    other.send(f"<message to='{jid}' type='chat'><body>hello QXmpp</body></message>")
    q.wait(rf"message {peer}@localhost/raw {re.escape(jid)} chat hello QXmpp")
    assert q.finish() == 0, q
    assert q.lines[-1] == "disconnected", q


def test_stream_management_after_the_socket_is_cut(
    harness: str,
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    qxmpps: list[Qxmpp],
) -> None:
    user, peer = next(names), next(names)
    other = raw_login(srv, ca_file, peer, clients)
    q, jid = login(harness, srv, ca_file, user, qxmpps)
    q.wait("sm enabled true")
    other.send(f"<message to='{jid}' type='chat'><body>m1</body></message>")
    start = q.lines.index(q.wait(rf"message {peer}@localhost/raw \S+ chat m1").group(0))
    q.do(f"msg {peer}@localhost/raw s1")
    seen: list[str] = []  # what the peer gets of QXmpp's messages
    wait_for(other, "s1", lambda el: el.tag == MESSAGE, seen)
    # asked once the server's output is quiet, QXmpp acknowledges m1 (XEP-0198 §4)
    q.wait(r"sm acked \d+", start)
    q.do("sync sync-before-cut")  # its <a/> was handled before the cut
    q.wait("iq sync-before-cut result")
    q.do("cut")
    q.wait("disconnected")
    srv.wait_for_log(f"{jid} lost its connection")
    # XEP-0198 §5: while detached, kept for the session
    other.send(f"<message to='{jid}' type='chat'><body>m2</body></message>")
    other.send("<iq type='get' id='sync'><ping xmlns='urn:xmpp:ping'/></iq>")
    wait_for(other, "the ping's result", lambda el: el.get("id") == "sync", seen)

    # QXmpp 1.4's <resume/> has no namespace and an empty previd (see the module docstring):
    # a first-level element the server does not know, RFC 6120 §4.9.3.24; the detached
    # session is left as it was
    start = len(q.lines)
    q.do("resume")
    q.wait(r'sm resume <resume h="\d+" previd=""/>', start)
    q.wait(r"error stream \S+", start)
    q.wait("disconnected", start)
    srv.wait_for_log("stream error unsupported-stanza-type")
    assert f"resumed {jid}" not in srv.log_text()

    # QXmpp then gives resumption up and binds a new session with the same resource: it
    # replaces the detached one (RFC 6120 §7.7.2.2), whose unacknowledged m2 goes to the new
    # session once (XEP-0198 §4), and m1, acknowledged, not again
    start = len(q.lines)
    q.do("resume")
    assert q.wait(r"connected (\S+) (\S+)", start).groups() == (jid, "new"), q
    q.wait(rf"message {peer}@localhost/raw \S+ chat m2", start)
    q.do(f"msg {peer}@localhost/raw s2")
    wait_for(other, "s2", lambda el: el.tag == MESSAGE and body(el) == "s2", seen)
    q.do("sync sync-last")
    q.wait("iq sync-last result")
    other.send("<iq type='get' id='sync2'><ping xmlns='urn:xmpp:ping'/></iq>")
    wait_for(other, "the second ping's result", lambda el: el.get("id") == "sync2", seen)
    assert seen == ["s1", "s2"]
    got = [line.rsplit(" ", 1)[1] for line in q.lines if line.startswith("message ")]
    assert got == ["m1", "m2"], q
    assert q.finish() == 0, q


def test_carbons_between_two_resources(
    harness: str,
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    qxmpps: list[Qxmpp],
) -> None:
    user, peer = next(names), next(names)
    other = raw_login(srv, ca_file, peer, clients)
    phone, phone_jid = login(harness, srv, ca_file, user, qxmpps, "phone")
    desk, desk_jid = login(harness, srv, ca_file, user, qxmpps, "desk")
    for q in (phone, desk):
        q.do("carbons")  # XEP-0280 §4
        q.do("sync sync-carbons")
        q.wait("iq sync-carbons result")
    # §6: a message to one resource is carbon-copied to the other
    other.send(f"<message to='{phone_jid}' type='chat'><body>to the phone</body></message>")
    phone.wait(rf"message {peer}@localhost/raw {re.escape(phone_jid)} chat to the phone")
    desk.wait(rf"carbon received {peer}@localhost/raw {re.escape(phone_jid)} to the phone")
    # §7: what one resource sends, the other gets as a sent carbon
    desk.do(f"msg {peer}@localhost/raw from the desk")
    msg = wait_for(other, "the desk's message", lambda el: el.tag == MESSAGE)
    assert body(msg) == "from the desk" and msg.get("from") == desk_jid
    phone.wait(rf"carbon sent {re.escape(desk_jid)} {peer}@localhost/raw from the desk")
    assert not any(line.startswith("carbon") for line in phone.lines if "phone" in line), phone
    assert not any(line.startswith("carbon sent") for line in desk.lines), desk
    for q in (phone, desk):
        assert q.finish() == 0, q


def test_mam_paging(
    harness: str,
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    qxmpps: list[Qxmpp],
) -> None:
    user, peer = next(names), next(names)
    other = raw_login(srv, ca_file, peer, clients)
    q, jid = login(harness, srv, ca_file, user, qxmpps)
    for n in range(3):
        other.send(f"<message to='{jid}' type='chat'><body>a{n}</body></message>")
    q.wait(rf"message {peer}@localhost/raw \S+ chat a2")
    # XEP-0359 §3: each live message carries the archive's id, by the account's bare JID
    ids = {}
    for n in range(3):
        by, sid = q.wait(rf"stanza-id (\S+) (\S+) a{n}").groups()
        assert by == f"{user}@localhost", q
        ids[f"a{n}"] = sid
    q.do(f"msg {peer}@localhost/raw b0")
    wait_for(other, "QXmpp's message", lambda el: el.tag == MESSAGE)
    # XEP-0313 §4.1.1 filtered by 'with', XEP-0059 §2.2 a first page of two: the oldest two,
    # the count of all four, not complete (§4.2)
    q.do(f"mam {peer}@localhost 2")
    first = q.wait(r"mam-query (\S+)").group(1)
    end = q.wait(rf"mam-end {re.escape(first)} (\d+) (\S+) (\S+) (\S+)")
    count, first_id, last, complete = end.groups()
    assert (first_id, last) == (ids["a0"], ids["a1"]), q  # the archive ids are the stanza-ids
    page = [line.split(" ", 3)[3] for line in q.lines if line.startswith(f"mam-message {first} ")]
    # no <count/> for a query filtered by 'with' (docs/COMPLIANCE.md; XEP-0059 §2.2 lets it
    # be omitted where it would take a scan): QXmpp reports 0
    assert (page, count, complete) == (["a0", "a1"], "0", "false"), q
    # the next page, after the last id: the rest, complete
    start = len(q.lines)
    q.do(f"mam {peer}@localhost 2 {last}")
    second = q.wait(r"mam-query (\S+)", start).group(1)
    end = q.wait(rf"mam-end {re.escape(second)} (\d+) (\S+) (\S+) (\S+)", start)
    rest = [line.split(" ", 3) for line in q.lines if line.startswith(f"mam-message {second} ")]
    assert [(m[2], m[3]) for m in rest] == [
        (f"{peer}@localhost/raw", "a2"),
        (jid, "b0"),
    ], q
    assert (end.group(1), end.group(4)) == ("0", "true"), q
    # Kaidan catching up after the last message it saw live: after its stanza-id
    start = len(q.lines)
    q.do(f"mam {peer}@localhost 10 {ids['a1']}")
    catch_up = q.wait(r"mam-query (\S+)", start).group(1)
    q.wait(rf"mam-end {re.escape(catch_up)} .* true", start)
    got = [line.split(" ", 3)[3] for line in q.lines if line.startswith(f"mam-message {catch_up} ")]
    assert got == ["a2", "b0"], q

    # backwards, as Kaidan loads a chat's history: the last page (§2.5: an empty <before/>)
    # up to an 'end' of now with milliseconds (XEP-0082), then the page before its first
    start = len(q.lines)
    q.do(f"mam-back {peer}@localhost 3")
    last_page = q.wait(r"mam-query (\S+)", start).group(1)
    end = q.wait(rf"mam-end {re.escape(last_page)} (\d+) (\S+) (\S+) (\S+)", start)
    got = [
        line.split(" ", 3)[3] for line in q.lines if line.startswith(f"mam-message {last_page} ")
    ]
    assert (got, end.group(4)) == (["a1", "a2", "b0"], "false"), q
    start = len(q.lines)
    q.do(f"mam-back {peer}@localhost 3 {end.group(2)}")
    before = q.wait(r"mam-query (\S+)", start).group(1)
    end = q.wait(rf"mam-end {re.escape(before)} (\d+) (\S+) (\S+) (\S+)", start)
    got = [line.split(" ", 3)[3] for line in q.lines if line.startswith(f"mam-message {before} ")]
    assert (got, end.group(4)) == (["a0"], "true"), q
    assert q.finish() == 0, q


def test_muc_instant_room(
    harness: str,
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    qxmpps: list[Qxmpp],
) -> None:
    user, peer = next(names), next(names)
    room = f"kaidan-{user}@conference.localhost"
    other = raw_login(srv, ca_file, peer, clients)
    q, _ = login(harness, srv, ca_file, user, qxmpps)
    # XEP-0045 §10.1.1: QXmpp enters (it counts itself joined at its own presence), then
    # accepts the default configuration with an empty submitted form (§10.1.2)
    q.do(f"join {room} owner")
    q.wait(f"room-joined {room}")
    q.do(f"instant {room}")
    q.do("sync sync-instant")
    q.wait("iq sync-instant result")
    # unlocked: the raw client enters (a locked room refuses it, §10.1.1)
    other.send(
        f"<presence to='{room}/guest'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
    )
    self_presence = wait_for(
        other,
        "its own presence",
        lambda el: el.tag == PRESENCE and el.get("from") == f"{room}/guest",
    )
    assert self_presence.get("type") is None, self_presence
    q.wait(f"room-participant {room} {room}/guest added")

    # §7.4 groupchat both ways
    q.do(f"groupchat {room} hello room")
    msg = wait_for(other, "QXmpp's groupchat", lambda el: el.tag == MESSAGE and body(el))
    assert (msg.get("from"), msg.get("type"), body(msg)) == (
        f"{room}/owner",
        "groupchat",
        "hello room",
    )
    q.wait(rf"room-message {room} {room}/owner hello room")
    other.send(f"<message to='{room}' type='groupchat'><body>hi from raw</body></message>")
    q.wait(rf"room-message {room} {room}/guest hi from raw")
    # §8.1 the subject, from the moderator
    q.do(f"subject {room} the topic")
    subject = wait_for(
        other, "the subject", lambda el: el.findtext(f"{{{CLIENT}}}subject") is not None
    )
    assert subject.get("from") == f"{room}/owner"
    assert subject.findtext(f"{{{CLIENT}}}subject") == "the topic"
    q.wait(f"room-subject {room} the topic")
    # §7.6 a nickname change: unavailable with 303 and the new nick, then available
    q.do(f"nick {room} boss")
    gone = wait_for(
        other,
        "the old nick's exit",
        lambda el: el.tag == PRESENCE and el.get("from") == f"{room}/owner",
    )
    assert gone.get("type") == "unavailable"
    item = gone.find(
        "{http://jabber.org/protocol/muc#user}x/{http://jabber.org/protocol/muc#user}item"
    )
    assert item is not None and item.get("nick") == "boss"
    status = gone.findall(
        "{http://jabber.org/protocol/muc#user}x/{http://jabber.org/protocol/muc#user}status"
    )
    assert "303" in [s.get("code") for s in status]
    wait_for(
        other, "the new nick", lambda el: el.tag == PRESENCE and el.get("from") == f"{room}/boss"
    )
    q.wait(f"room-nick {room} boss")
    q.wait(f"room-participant {room} {room}/boss added")
    q.do(f"groupchat {room} renamed")
    msg = wait_for(other, "the renamed groupchat", lambda el: el.tag == MESSAGE and body(el))
    assert (msg.get("from"), body(msg)) == (f"{room}/boss", "renamed")
    assert q.finish() == 0, q


def test_vcard_and_upload(
    harness: str,
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    qxmpps: list[Qxmpp],
) -> None:
    user, peer = next(names), next(names)
    q, _ = login(harness, srv, ca_file, user, qxmpps)
    # XEP-0054 §3.2 publish, §3.1 get its own, and another account's view of it (§3.3)
    q.do("vcard-set Kaidan kai")
    q.do("vcard-get")
    q.wait("vcard self Kaidan kai")
    other = raw_login(srv, ca_file, peer, clients)
    other.send(f"<iq type='get' id='vc' to='{user}@localhost'><vCard xmlns='vcard-temp'/></iq>")
    card = wait_for(other, "the vCard", lambda el: el.get("id") == "vc")
    assert card.get("type") == "result"
    assert card.findtext("{vcard-temp}vCard/{vcard-temp}FN") == "Kaidan"
    assert card.findtext("{vcard-temp}vCard/{vcard-temp}NICKNAME") == "kai"

    # XEP-0363: QXmpp finds the service in the info of the server's items (§2, with the
    # max-file-size form), asks for a slot (§4), PUTs over HTTPS checked against the test CA
    # only, and the GET URL serves the bytes back
    limit = int(q.wait(r"upload-services upload\.localhost:(\d+)").group(1))
    # §4: over the max-file-size the service announced, the slot is refused; QXmpp sees the
    # error only because it carries the <request/> (test_upload.py::test_errors_carry_the_request)
    q.do(f"slot huge.bin {limit + 1}")
    q.wait("slot-error not-acceptable")
    q.do("upload notes.txt some file content")
    put_url, get_url = q.wait(r"slot (\S+) (\S+)").groups()
    assert put_url.startswith("https://localhost:") and "/upload/" in put_url, q
    assert get_url.startswith("https://localhost:") and get_url.endswith("/notes.txt"), q
    q.wait("put 201 ok")
    q.wait("get 200 some file content")
    assert q.finish() == 0, q


def test_disco_csi_and_ping(
    harness: str,
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    qxmpps: list[Qxmpp],
) -> None:
    user, peer = next(names), next(names)
    q, jid = login(harness, srv, ca_file, user, qxmpps)
    # XEP-0030 as Kaidan asks at login: the server's items, then the info of each
    q.wait("items localhost conference.localhost upload.localhost push.localhost")
    q.wait("disco conference.localhost conference/text")
    q.do("disco localhost")
    q.wait("disco localhost server/im pubsub/pep")
    q.wait("disco-end localhost")
    features = {line.split(" ", 2)[2] for line in q.lines if line.startswith("feature localhost ")}
    wanted = {"urn:xmpp:carbons:2", "urn:xmpp:ping", "vcard-temp"}
    assert wanted <= features, features

    # XEP-0352 QXmppClient::setActive(false): a presence update waits (§5.2) ...
    other = raw_login(srv, ca_file, peer, clients)
    q.do("inactive")
    q.do("sync sync-inactive")
    q.wait("iq sync-inactive result")
    other.send(f"<presence to='{jid}'><show>away</show></presence>")
    other.send("<iq type='get' id='sync'><ping xmlns='urn:xmpp:ping'/></iq>")
    wait_for(other, "the ping's result", lambda el: el.get("id") == "sync")
    # (no ping of QXmpp's own here: its answer, an iq, would release what waits, §5.2)
    time.sleep(0.3)
    assert not any(line.startswith(f"presence {peer}@") for line in q.lines), q
    # ... until setActive(true)
    q.do("active")
    q.wait(rf"presence {peer}@localhost/raw available")
    # XEP-0199 §4.2: QXmpp answers a ping from a contact
    other.send(f"<iq type='get' id='p1' to='{jid}'><ping xmlns='urn:xmpp:ping'/></iq>")
    pong = wait_for(other, "QXmpp's pong", lambda el: el.get("id") == "p1")
    assert pong.get("type") == "result" and pong.get("from") == jid
    # XEP-0115 its caps, answered for the node QXmpp announced (XEP-0115 §6.2)
    other.send(
        f"<iq type='get' id='d1' to='{jid}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
    )
    info = wait_for(other, "QXmpp's disco#info", lambda el: el.get("id") == "d1")
    assert info.get("type") == "result"
    vars_ = {f.get("var") for f in info.iter("{http://jabber.org/protocol/disco#info}feature")}
    assert {"urn:xmpp:carbons:2", "urn:xmpp:mam:2", "urn:xmpp:ping"} <= vars_, vars_
    assert q.finish() == 0, q


def test_certificate_from_another_ca_is_refused(
    harness: str, srv: ServerProcess, names: Iterator[str], tmp_path: Path
) -> None:
    # QXmppConfiguration::setCaCertificates with another CA, SSL errors not ignored: the
    # handshake after <proceed/> fails and QXmpp never authenticates (RFC 6120 §13.7.2)
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    user = next(names)
    q = Qxmpp(harness, srv, str(other_ca), user, PASSWORD)
    try:
        assert q.proc.wait(STEP) == 1, q
    finally:
        if q.proc.poll() is None:
            q.proc.kill()
    q.reader.join(2)
    assert q.lines[0] == "starttls", q
    assert any(line.startswith("ssl-error ") for line in q.lines), q
    assert not any(line.startswith(("auth", "connected")) for line in q.lines), q
    assert f"authenticated {user}@localhost" not in srv.log_text()


def test_contact_added_as_kaidan_does(
    harness: str,
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    qxmpps: list[Qxmpp],
) -> None:
    user, peer = next(names), next(names)
    contact = f"{peer}@localhost"
    other = raw_login(srv, ca_file, peer, clients)
    other.send("<presence/>")
    q, jid = login(harness, srv, ca_file, user, qxmpps)
    q.wait("roster-received 0")
    # RFC 6121 §2.3 a roster set, §3.1.1 a subscription request (QXmppRosterManager addItem,
    # subscribe); the pushes: the item, then pending out (ask)
    q.do(f"add {contact} Peer")
    q.wait(f"roster-item added {contact} none")
    request = wait_for(other, "the request", lambda el: el.tag == PRESENCE and el.get("type"))
    assert (request.get("type"), request.get("from")) == ("subscribe", f"{user}@localhost")
    q.wait(f"roster-item changed {contact} none ask")
    # §3.1.5 approved: 'to', and the contact's presence (§3.1.6, from its available resource)
    other.send(f"<presence to='{user}@localhost' type='subscribed'/>")
    q.wait(f"roster-item changed {contact} to")
    q.wait(rf"presence {contact}/raw available")
    # §3.1.3 the contact subscribes back: QXmpp sees the request and accepts it
    other.send(f"<presence to='{user}@localhost' type='subscribe'/>")
    q.wait(f"subscription-request {contact}")
    q.do(f"accept {contact}")
    q.wait(f"roster-item changed {contact} both")
    wait_for(
        other,
        "QXmpp's presence",
        lambda el: el.tag == PRESENCE and el.get("from") == jid and el.get("type") is None,
    )
    # §2.5 removal: the item goes, and both subscriptions with it (§2.5.2)
    q.do(f"remove {contact}")
    q.wait(f"roster-item removed {contact}")
    seen: set[str] = set()
    for _ in range(3):
        el = wait_for(other, "the removal's presences", lambda el: el.tag == PRESENCE)
        seen.add(el.get("type") or "available")
        if {"unsubscribe", "unsubscribed"} <= seen:
            break
    assert {"unsubscribe", "unsubscribed"} <= seen, seen
    assert q.finish() == 0, q


def test_sign_up_password_change_and_account_removal(
    harness: str, srv: ServerProcess, ca_file: str, qxmpps: list[Qxmpp]
) -> None:
    # Kaidan's sign-up: XEP-0077 §3.1 in band over TLS, before authentication; QXmpp fills the
    # form and the harness exits after the result
    signup = Qxmpp(harness, srv, ca_file, "qxnew", "first password", register=True)
    qxmpps.append(signup)
    assert signup.proc.wait(STEP) == 0, signup
    signup.reader.join(2)
    assert signup.lines[0] == "starttls", signup
    assert signup.wait(r"register-form (.*)").group(1), signup
    signup.wait("registered")
    assert not any(line.startswith("auth") for line in signup.lines), signup

    q = Qxmpp(harness, srv, ca_file, "qxnew", "first password")
    qxmpps.append(q)
    q.wait(r"connected qxnew@localhost/QXmpp new")
    # XEP-0092 and XEP-0202 of the server, as Kaidan's about page and clients ask
    q.do("version localhost")
    q.wait(r"version localhost fastxmpp \S+")
    q.do("time localhost")
    q.wait(r"time localhost 0 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
    # §3.3 a password change: the new one logs in, the old one no more
    q.do("password second password")
    q.wait("password-changed")
    srv.wait_for_log("password of qxnew@localhost changed")
    assert q.finish() == 0, q
    old = Qxmpp(harness, srv, ca_file, "qxnew", "first password")
    qxmpps.append(old)
    assert old.proc.wait(STEP) == 1, old
    q = Qxmpp(harness, srv, ca_file, "qxnew", "second password")
    qxmpps.append(q)
    q.wait(r"connected qxnew@localhost/QXmpp new")
    # §3.2 removal: the result, then the server ends the session (not-authorized)
    q.do("unregister")
    q.wait("deleted")
    q.wait("error stream not-authorized")
    q.wait("disconnected")
    srv.wait_for_log("account qxnew@localhost removed by its owner")
    gone = Qxmpp(harness, srv, ca_file, "qxnew", "second password")
    qxmpps.append(gone)
    assert gone.proc.wait(STEP) == 1, gone


def fields(form: Any) -> dict[str, str]:
    """A data form's values by field name (XEP-0004)."""
    return {f.get("var"): f.findtext(f"{DATA}value") or "" for f in form.iter(f"{DATA}field")}


def test_vcard_avatar_reaches_contacts(
    harness: str,
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    qxmpps: list[Qxmpp],
) -> None:
    user, peer = next(names), next(names)
    other = raw_login(srv, ca_file, peer, clients)
    other.send("<presence/>")
    q, jid = login(harness, srv, ca_file, user, qxmpps)
    # the peer subscribes, QXmpp accepts (RFC 6121 §3.1.4): the peer gets its presence
    other.send(f"<presence to='{user}@localhost' type='subscribe'/>")
    q.wait(f"subscription-request {peer}@localhost")
    q.do(f"accept {peer}@localhost")

    def photo_of(el: Any) -> str | None:
        return el.findtext("{vcard-temp:x:update}x/{vcard-temp:x:update}photo")

    first = wait_for(
        other,
        "QXmpp's presence",
        lambda el: el.tag == PRESENCE and el.get("from") == jid and el.get("type") is None,
    )
    assert photo_of(first) == "", first  # XEP-0153 §3.2: no photo yet
    # as Kaidan sets an avatar on a server without XEP-0084 use: a vCard with a PHOTO; the
    # server broadcasts the presence again with the photo's SHA-1 (XEP-0153 §4.1, XEP-0398 §5)
    image = png(4, 3)
    q.do(f"vcard-photo {image.hex()}")
    again = wait_for(
        other,
        "the presence with the photo's hash",
        lambda el: el.tag == PRESENCE and el.get("from") == jid and bool(photo_of(el)),
    )
    assert photo_of(again) == hashlib.sha1(image).hexdigest()
    # and the vCard others read has it (XEP-0054 §3.3)
    other.send(f"<iq type='get' id='vc' to='{user}@localhost'><vCard xmlns='vcard-temp'/></iq>")
    card = wait_for(other, "the vCard", lambda el: el.get("id") == "vc")
    binval = card.findtext("{vcard-temp}vCard/{vcard-temp}PHOTO/{vcard-temp}BINVAL")
    assert binval is not None and base64.b64decode(binval) == image
    # XEP-0398 §4.2: and clients that read XEP-0084 avatars find it in PEP
    other.send(
        f"<iq type='get' id='meta' to='{user}@localhost'>"
        "<pubsub xmlns='http://jabber.org/protocol/pubsub'>"
        "<items node='urn:xmpp:avatar:metadata'/></pubsub></iq>"
    )
    meta = wait_for(other, "the avatar metadata", lambda el: el.get("id") == "meta")
    info = next(meta.iter("{urn:xmpp:avatar:metadata}info"), None)
    assert info is not None, meta
    assert dict(info.attrib) == {
        "id": hashlib.sha1(image).hexdigest(),
        "bytes": str(len(image)),
        "type": "image/png",
        "width": "4",
        "height": "3",
    }
    assert q.finish() == 0, q


def test_wrong_password_is_told_as_not_authorized(
    harness: str, srv: ServerProcess, ca_file: str, names: Iterator[str]
) -> None:
    user = next(names)
    q = Qxmpp(harness, srv, ca_file, user, "not the password")
    try:
        # RFC 6120 §6.4.5 <failure><not-authorized/>: QXmpp gives up after one mechanism and
        # reports the condition Kaidan shows as wrong credentials
        assert q.proc.wait(STEP) == 1, q
    finally:
        if q.proc.poll() is None:
            q.proc.kill()
    q.reader.join(2)
    assert q.lines[:3] == ["starttls", "auth SCRAM-SHA-256", "error stream not-authorized"], q
    srv.wait_for_log("SASL failure not-authorized")
    assert f"authenticated {user}@localhost" not in srv.log_text()


def test_push_wakes_kaidan_in_the_background_and_after_a_cut(
    harness: str,
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    qxmpps: list[Qxmpp],
) -> None:
    user, peer = next(names), next(names)
    app = open_component(srv, PUSH_APP)
    clients.append(app)
    assert handshake(app, PUSH_SECRET).tag == "{jabber:component:accept}handshake"
    q, jid = login(harness, srv, ca_file, user, qxmpps)
    other = raw_login(srv, ca_file, peer, clients)
    # XEP-0357 §5 enable, with the secret in publish-options; then the app goes to the
    # background (XEP-0352 inactive), and a message for it is pushed (§6)
    q.do(f"push {PUSH_APP} device-1 s3cr3t")
    q.wait("iq sync-push result")
    q.do("inactive")
    q.do("sync sync-inactive")
    q.wait("iq sync-inactive result")

    def notification() -> dict[str, str]:
        """The next publish to the app server (answered), its summary form (§6); QXmpp's
        disco#info at login, as to every item of the server, goes unanswered."""
        iq = wait_for(app, "a notification", lambda el: el.find(f"{PUBSUB}pubsub") is not None)
        publish = iq.find(f"{PUBSUB}pubsub/{PUBSUB}publish")
        assert publish is not None and publish.get("node") == "device-1", etree.tostring(iq)
        app.send(f"<iq type='result' id='{iq.get('id')}' to='{iq.get('from')}' from='{PUSH_APP}'/>")
        options = iq.find(f"{PUBSUB}pubsub/{PUBSUB}publish-options/{DATA}x")
        summary = publish.find(f"{PUBSUB}item/{{urn:xmpp:push:0}}notification/{DATA}x")
        assert options is not None and summary is not None, etree.tostring(iq)
        assert fields(options)["secret"] == "s3cr3t"
        return fields(summary)

    other.send(f"<message to='{jid}' type='chat'><body>wake up</body></message>")
    summary = notification()
    assert summary["FORM_TYPE"] == "urn:xmpp:push:summary", summary
    assert summary["message-count"] == "1", summary
    assert summary["last-message-sender"] == f"{peer}@localhost/raw", summary
    q.wait(rf"message {peer}@localhost/raw \S+ chat wake up")  # delivered all the same
    # the connection dies (XEP-0198: detached): the next message is pushed too
    q.do("cut")
    q.wait("disconnected")
    srv.wait_for_log(f"{jid} lost its connection")
    other.send(f"<message to='{jid}' type='chat'><body>still there?</body></message>")
    summary = notification()
    assert summary["message-count"] == "1", summary
    assert summary["last-message-sender"] == f"{peer}@localhost/raw", summary


def test_muc_configured_room_and_moderation(
    harness: str,
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    qxmpps: list[Qxmpp],
) -> None:
    user, peer = next(names), next(names)
    room = f"team-{user}@conference.localhost"
    q, _ = login(harness, srv, ca_file, user, qxmpps)
    # XEP-0045 §10.1.3 a reserved room: the owner asks for the form and submits it with a name
    q.do(f"join {room} owner")
    q.wait(f"room-joined {room}")
    q.do(f"room-form {room}")
    form = q.wait(rf"room-form {room} (.*)").group(1).split()
    assert {"FORM_TYPE", "muc#roomconfig_roomname", "muc#roomconfig_persistentroom"} <= set(form)
    q.do(f"room-set {room} muc#roomconfig_roomname Kaidan team")
    q.do("sync sync-configured")
    q.wait("iq sync-configured result")
    other = raw_login(srv, ca_file, peer, clients)

    def enter() -> Any:
        other.send(
            f"<presence to='{room}/guest'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
        )
        return wait_for(
            other,
            "the room's answer",
            lambda el: el.tag == PRESENCE and el.get("from") == f"{room}/guest",
        )

    assert enter().get("type") is None  # unlocked
    other.send(f"<iq type='get' id='info' to='{room}'><query xmlns='{DISCO_INFO}'/></iq>")
    info = wait_for(other, "the room's disco#info", lambda el: el.get("id") == "info")
    identity = info.find(f"{{{DISCO_INFO}}}query/{{{DISCO_INFO}}}identity")
    assert identity is not None and identity.get("name") == "Kaidan team"

    # §9.5, §10.5: the affiliation lists QXmpp asks for (QXmppMucRoom::requestPermissions)
    q.wait(f"room-participant {room} {room}/guest added")
    q.do(f"permissions {room}")
    q.wait(f"room-permissions {room} {user}@localhost:owner")

    def exit_codes(reason: str) -> list[str]:
        gone = wait_for(
            other,
            "its removal",
            lambda el: (
                el.tag == PRESENCE
                and el.get("from") == f"{room}/guest"
                and el.get("type") == "unavailable"
            ),
        )
        x = gone.find(f"{MUC_USER}x")
        assert x is not None and x.findtext(f"{MUC_USER}item/{MUC_USER}reason") == reason
        return [status.get("code") for status in x.iter(f"{MUC_USER}status")]

    # §8.2 a kick by the moderator: 307, with the reason
    q.do(f"kick {room} {room}/guest too loud")
    assert "307" in exit_codes("too loud")
    q.wait(f"room-participant {room} {room}/guest removed")
    # §9.1 a ban by the owner (an admin's right): 301, and no way back in (§7.2.7 forbidden)
    assert enter().get("type") is None
    q.do(f"ban {room} {peer}@localhost spam")
    assert "301" in exit_codes("spam")
    refused = enter()
    assert refused.get("type") == "error"
    assert refused.find(f"{{{CLIENT}}}error/{{{STANZAS}}}forbidden") is not None
    start = len(q.lines)
    q.do(f"permissions {room}")
    lists = q.wait(rf"room-permissions {room} (.*)", start).group(1).split()
    assert sorted(lists) == sorted([f"{user}@localhost:owner", f"{peer}@localhost:outcast"]), q
    q.do(f"leave {room}")
    q.wait(f"room-left {room}")
    assert q.finish() == 0, q
