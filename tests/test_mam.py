"""XEP-0313 Message Archive Management over real sockets: archiving both ways with XEP-0359
stanza-ids (§6), queries with forms and XEP-0059 paging (§4), preferences (§5), what is not
archived, retention, account removal, restarts, and slixmpp's xep_0313 plugin."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
import xmpp_raw
from conftest import PASSWORD, FreshNames, ServerProcess, module_server, run_cli
from lxml import etree
from slixmpp import ClientXMPP
from xmpp_raw import CLIENT, RawClient, stanza_error

logging.getLogger("slixmpp").setLevel(logging.WARNING)

NS = "urn:xmpp:mam:2"
SID = "urn:xmpp:sid:0"
RSM = "http://jabber.org/protocol/rsm"
FORWARD = "urn:xmpp:forward:0"
DELAY = "urn:xmpp:delay"
DATA = "jabber:x:data"
MESSAGE = f"{{{CLIENT}}}message"

POOL = FreshNames("mam", 60)


@pytest.fixture(scope="module")
def srv(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(ca, tmp_path_factory, POOL)


@pytest.fixture
def names() -> Iterator[str]:
    return POOL.names()


class Session:
    def __init__(self, c: RawClient, name: str, resource: str) -> None:
        self.c = c
        self.local = name
        self.bare = f"{name}@localhost"
        self.full = f"{self.bare}/{resource}"
        self._ids = 0

    def send(self, data: str) -> None:
        self.c.send(data)

    def _collect(self, data_for_id: Any) -> tuple[list[Any], Any]:
        self._ids += 1
        iq_id = f"iq{self._ids}"
        self.c.send(data_for_id(iq_id))
        seen = []
        while True:
            el = self.c.next()
            if el.get("id") == iq_id:
                return seen, el
            seen.append(el)

    def iq(self, itype: str, payload: str, to: str | None = None) -> Any:
        to_attr = f" to='{to}'" if to else ""
        return self._collect(lambda i: f"<iq type='{itype}' id='{i}'{to_attr}>{payload}</iq>")[1]

    def inbox(self) -> list[Any]:
        return self._collect(
            lambda i: f"<iq type='get' id='{i}'><ping xmlns='urn:xmpp:ping'/></iq>"
        )[0]

    def messages(self) -> list[Any]:
        return [el for el in self.inbox() if el.tag == MESSAGE]

    def query(
        self,
        fields: dict[str, str] | None = None,
        rsm: str = "",
        to: str | None = None,
        queryid: str = "q1",
        extra: str = "",
    ) -> tuple[list[Any], Any]:
        """(the <result/>s for this query, the answering iq)."""
        form = ""
        if fields is not None:
            form = f"<x xmlns='{DATA}' type='submit'><field var='FORM_TYPE' type='hidden'>"
            form += f"<value>{NS}</value></field>"
            form += "".join(
                f"<field var='{k}'><value>{v}</value></field>" for k, v in fields.items()
            )
            form += extra + "</x>"
        rset = f"<set xmlns='{RSM}'>{rsm}</set>" if rsm else ""
        to_attr = f" to='{to}'" if to else ""
        payload = f"<query xmlns='{NS}' queryid='{queryid}'>{form}{rset}</query>"
        seen, reply = self._collect(lambda i: f"<iq type='set' id='{i}'{to_attr}>{payload}</iq>")
        results = []
        for el in seen:
            result = el.find(f"{{{NS}}}result")
            if result is not None:
                assert el.get("from") == self.bare and result.get("queryid") == queryid
                results.append(result)
        return results, reply


def bodies(results: list[Any]) -> list[str]:
    out = []
    for result in results:
        inner = result.find(f"{{{FORWARD}}}forwarded/{MESSAGE}")
        assert inner is not None, etree.tostring(result)
        assert result.find(f"{{{FORWARD}}}forwarded/{{{DELAY}}}delay").get("stamp")
        out.append(inner.findtext(f"{{{CLIENT}}}body"))
    return out


def fin(reply: Any) -> tuple[bool, str | None, str | None]:
    assert reply.get("type") == "result", etree.tostring(reply)
    el = reply.find(f"{{{NS}}}fin")
    assert el is not None
    return (
        el.get("complete") == "true",
        el.findtext(f"{{{RSM}}}set/{{{RSM}}}first"),
        el.findtext(f"{{{RSM}}}set/{{{RSM}}}last"),
    )


def chat(to: str, body: str, mtype: str = "chat", extra: str = "") -> str:
    return f"<message to='{to}' type='{mtype}' id='{body}'><body>{body}</body>{extra}</message>"


def connect(srv: ServerProcess, ca_file: str, clients: list[RawClient], name: str) -> Session:
    c = srv.client()
    clients.append(c)
    c.login(ca_file, name, PASSWORD, "r")
    session = Session(c, name, "r")
    c.send("<presence/>")
    session.inbox()
    return session


@pytest.fixture
def login(srv: ServerProcess, ca_file: str, clients: list[RawClient]) -> Any:
    return lambda name: connect(srv, ca_file, clients, name)


def send_all(sender: Session, to: str, texts: list[str]) -> None:
    for text in texts:
        sender.send(chat(to, text))
    sender.inbox()


# --- disco, archiving, stanza-id ---------------------------------------------------------


def test_disco_features(login: Any, names: Iterator[str]) -> None:
    a = login(next(names))
    reply = a.iq("get", "<query xmlns='http://jabber.org/protocol/disco#info'/>", a.bare)
    features = {f.get("var") for f in reply.iter("{http://jabber.org/protocol/disco#info}feature")}
    assert {NS, SID} <= features


def test_both_directions_and_stanza_id(login: Any, names: Iterator[str]) -> None:
    a, b = login(next(names)), login(next(names))
    a.send(chat(b.bare, "hello"))
    a.inbox()
    (got,) = b.messages()
    sids = got.findall(f"{{{SID}}}stanza-id")
    assert len(sids) == 1 and sids[0].get("by") == b.bare
    results, reply = b.query()
    assert bodies(results) == ["hello"]
    assert results[0].get("id") == sids[0].get("id")
    inner = results[0].find(f"{{{FORWARD}}}forwarded/{MESSAGE}")
    assert inner.get("from") == a.full and inner.get("to") == b.bare
    assert fin(reply) == (True, sids[0].get("id"), sids[0].get("id"))
    results, reply = a.query()
    assert bodies(results) == ["hello"]
    inner = results[0].find(f"{{{FORWARD}}}forwarded/{MESSAGE}")
    assert inner.get("from") == a.full and inner.get("to") == b.bare
    assert fin(reply)[0] is True


def test_a_prefix_declared_on_the_stream_root(
    login: Any, names: Iterator[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sender whose stream root declares a prefix its message uses (legal XML, RFC 6120
    §4.8.3): the server writes that message anew, and its archived copy is well-formed,
    in jabber:client, with the prefixed child intact (it once got a second xmlns, which
    broke every archive query that returned it)."""
    ext = "urn:example:ext"
    root = xmpp_raw.HEADER.replace(" version='1.0'>", f" xmlns:ext='{ext}' version='1.0'>")
    monkeypatch.setattr(xmpp_raw, "HEADER", root)
    a = login(next(names))
    monkeypatch.undo()
    b = login(next(names))
    a.send(f"<message to='{b.bare}' type='chat'><body>rooted</body><ext:mark/></message>")
    a.inbox()
    (got,) = b.messages()
    assert got.find(f"{{{ext}}}mark") is not None
    for owner in (a, b):
        results, reply = owner.query()
        assert bodies(results) == ["rooted"]
        inner = results[0].find(f"{{{FORWARD}}}forwarded/{MESSAGE}")
        assert inner.find(f"{{{ext}}}mark") is not None
        assert fin(reply)[0] is True


def test_blocked_sender_not_archived(login: Any, names: Iterator[str]) -> None:
    """A message the recipient's blocklist refuses bounces (XEP-0191 §3.5) and enters
    neither archive; once unblocked, messages are archived again."""
    a, b = login(next(names)), login(next(names))
    block = f"<block xmlns='urn:xmpp:blocking'><item jid='{a.bare}'/></block>"
    assert b.iq("set", block, b.bare).get("type") == "result"
    a.send(chat(b.bare, "let me in"))
    bounced = [el for el in a.inbox() if el.get("id") == "let me in"]
    assert [el.get("type") for el in bounced] == ["error"]
    assert b.messages() == []
    assert bodies(b.query()[0]) == [] and bodies(a.query()[0]) == []
    unblock = f"<unblock xmlns='urn:xmpp:blocking'><item jid='{a.bare}'/></unblock>"
    assert b.iq("set", unblock, b.bare).get("type") == "result"
    a.send(chat(b.bare, "friends again"))
    a.inbox()
    assert [m.findtext(f"{{{CLIENT}}}body") for m in b.messages()] == ["friends again"]
    assert bodies(b.query()[0]) == ["friends again"]


def test_refused_by_active_privacy_list_not_archived(login: Any, names: Iterator[str]) -> None:
    """A message to the bare JID that the only available session's active list (XEP-0016
    §2.13, not the account's default) refuses bounces, so it is in no archive: the archive
    holds what was delivered or stored, decided after delivery (docs/ARCHITECTURE.md)."""
    a, b = login(next(names)), login(next(names))
    privacy = "jabber:iq:privacy"
    items = f"<item type='jid' value='{a.bare}' action='deny' order='1'><message/></item>"
    listed = f"<query xmlns='{privacy}'><list name='quiet'>{items}</list></query>"
    assert b.iq("set", listed).get("type") == "result"
    assert (
        b.iq("set", f"<query xmlns='{privacy}'><active name='quiet'/></query>").get("type")
        == "result"
    )
    a.send(chat(b.bare, "shh"))
    bounced = [el for el in a.inbox() if el.get("id") == "shh"]
    assert [el.get("type") for el in bounced] == ["error"]
    assert b.messages() == []
    assert bodies(b.query()[0]) == [] and bodies(a.query()[0]) == []


def test_offline_quota_refusal_not_archived(make_server: Any, ca_file: str) -> None:
    """A message that finds the recipient offline and its offline storage full bounces
    (XEP-0160 §2): it is in neither archive, while the one stored before it is in both."""
    srv = make_server("[offline]\nmax_messages = 1\n")
    srv.adduser("alice@localhost")
    srv.adduser("bob@localhost")
    srv.start()
    opened: list[RawClient] = []
    try:
        alice = connect(srv, ca_file, opened, "alice")
        alice.send(chat("bob@localhost", "stored"))
        alice.send(chat("bob@localhost", "refused"))
        refused = [el for el in alice.inbox() if el.get("id") == "refused"]
        assert [el.get("type") for el in refused] == ["error"]
        assert bodies(alice.query()[0]) == ["stored"]
        bob = connect(srv, ca_file, opened, "bob")
        assert bodies(bob.query()[0]) == ["stored"]
    finally:
        for c in opened:
            c.close()


def test_forged_stanza_id_stripped(login: Any, names: Iterator[str]) -> None:
    a, b = login(next(names)), login(next(names))
    forged = (
        f"<stanza-id xmlns='{SID}' by='{b.bare}' id='forged'/>"
        f"<stanza-id xmlns='{SID}' by='room@elsewhere' id='kept'/>"
    )
    a.send(chat(b.bare, "sneaky", extra=forged))
    a.inbox()
    (got,) = b.messages()
    sids = {(s.get("by"), s.get("id")) for s in got.findall(f"{{{SID}}}stanza-id")}
    (archived,) = b.query()[0]
    assert sids == {("room@elsewhere", "kept"), (b.bare, archived.get("id"))}


def test_offline_message_archived(
    srv: ServerProcess, ca_file: str, clients: list[RawClient], names: Iterator[str]
) -> None:
    a = connect(srv, ca_file, clients, next(names))
    b_name = next(names)
    b_bare = f"{b_name}@localhost"
    a.send(chat(b_bare, "later", extra=f"<stanza-id xmlns='{SID}' by='{b_bare}' id='forged'/>"))
    a.inbox()
    c = srv.client()
    clients.append(c)
    c.login(ca_file, b_name, PASSWORD, "r")
    b = Session(c, b_name, "r")
    c.send("<presence/>")
    (stored,) = b.messages()
    assert stored.findtext(f"{{{CLIENT}}}body") == "later"
    assert stored.find(f"{{{DELAY}}}delay") is not None
    (sid,) = stored.findall(f"{{{SID}}}stanza-id")
    (archived,) = b.query()[0]
    assert bodies([archived]) == ["later"]
    assert sid.get("by") == b_bare and sid.get("id") == archived.get("id") != "forged"


# --- paging, filters ----------------------------------------------------------------------


def test_rsm_paging_forwards_and_backwards(login: Any, names: Iterator[str]) -> None:
    a, b = login(next(names)), login(next(names))
    send_all(a, b.bare, ["1", "2", "3", "4", "5"])
    results, reply = a.query(rsm="<max>2</max>")
    assert bodies(results) == ["1", "2"]
    complete, first, last = fin(reply)
    assert not complete and first == results[0].get("id") and last == results[1].get("id")
    results, reply = a.query(rsm=f"<max>2</max><after>{last}</after>")
    assert bodies(results) == ["3", "4"] and not fin(reply)[0]
    results, reply = a.query(rsm=f"<max>2</max><after>{fin(reply)[2]}</after>")
    assert bodies(results) == ["5"] and fin(reply)[0]
    results, reply = a.query(rsm="<max>2</max><before/>")
    assert bodies(results) == ["4", "5"]
    complete, first, _ = fin(reply)
    assert not complete
    results, reply = a.query(rsm=f"<max>2</max><before>{first}</before>")
    assert bodies(results) == ["2", "3"] and not fin(reply)[0]
    results, reply = a.query(rsm=f"<max>2</max><before>{fin(reply)[1]}</before>")
    assert bodies(results) == ["1"] and fin(reply)[0]
    results, reply = a.query(rsm="<max>0</max>")
    assert results == [] and not fin(reply)[0]


def count(reply: Any) -> str | None:
    return reply.findtext(f"{{{NS}}}fin/{{{RSM}}}set/{{{RSM}}}count")


def test_count_of_the_whole_archive(login: Any, names: Iterator[str]) -> None:
    """XEP-0059 §2.2: the size of the whole result set, whatever the page, for a query
    without filters (QXmpp shows it as the total); a filtered query has none (a scan)."""
    a, b = login(next(names)), login(next(names))
    _, reply = a.query()
    assert count(reply) == "0"
    send_all(a, b.bare, ["1", "2", "3"])
    results, reply = a.query(rsm="<max>2</max>")
    assert bodies(results) == ["1", "2"] and count(reply) == "3"
    _, reply = a.query(rsm=f"<max>2</max><after>{fin(reply)[2]}</after>")
    assert count(reply) == "3"
    _, reply = a.query(rsm="<max>0</max>")
    assert count(reply) == "3"
    assert count(b.query(rsm="<max>1</max><before/>")[1]) == "3"
    assert count(a.query({"with": b.bare})[1]) is None
    assert count(a.query({"start": "2000-01-01T00:00:00Z"})[1]) is None


def test_with_start_end(login: Any, names: Iterator[str]) -> None:
    a, b, c = login(next(names)), login(next(names)), login(next(names))
    a.send(chat(b.bare, "from a"))
    a.inbox()
    c.send(chat(b.bare, "from c"))
    c.inbox()
    assert bodies(b.query({"with": a.bare})[0]) == ["from a"]
    assert bodies(b.query({"with": c.full})[0]) == ["from c"]
    assert bodies(b.query({"with": "nobody@localhost"})[0]) == []
    past, future = "2000-01-01T00:00:00Z", "2100-01-01T00:00:00Z"
    assert bodies(b.query({"start": past, "end": future})[0]) == ["from a", "from c"]
    results, reply = b.query({"start": future})
    assert results == [] and fin(reply) == (True, None, None)
    assert b.query({"end": past})[0] == []
    assert bodies(b.query({"with": c.bare, "start": past})[0]) == ["from c"]
    bad = b.query({"start": "yesterday"})[1]
    assert stanza_error(bad) == "bad-request"


def test_after_id_before_id(login: Any, names: Iterator[str]) -> None:
    a, b = login(next(names)), login(next(names))
    send_all(a, b.bare, ["1", "2", "3", "4"])
    ids = [r.get("id") for r in a.query()[0]]
    assert bodies(a.query({"after-id": ids[1]})[0]) == ["3", "4"]
    assert bodies(a.query({"before-id": ids[2]})[0]) == ["1", "2"]
    assert bodies(a.query({"after-id": ids[0], "before-id": ids[3]})[0]) == ["2", "3"]


def test_errors(login: Any, names: Iterator[str]) -> None:
    a, b = login(next(names)), login(next(names))
    send_all(a, b.bare, ["x"])
    assert stanza_error(a.query({"after-id": "ffffffffffffffff"})[1]) == "item-not-found"
    assert stanza_error(a.query({"before-id": "nonsense"})[1]) == "item-not-found"
    assert stanza_error(a.query(rsm="<after>0000000000000001</after>")[1]) == "item-not-found"
    assert stanza_error(a.query({"colour": "red"})[1]) == "feature-not-implemented"
    assert stanza_error(a.query(rsm="<index>1</index>")[1]) == "feature-not-implemented"
    results, reply = a.query(to=b.bare)
    assert results == [] and stanza_error(reply) == "forbidden"
    results, reply = a.query(to=a.bare)
    assert bodies(results) == ["x"] and reply.get("from") == a.bare
    form = a.iq("get", f"<query xmlns='{NS}'/>")
    fields = {f.get("var") for f in form.iter(f"{{{DATA}}}field")}
    assert fields == {"FORM_TYPE", "with", "start", "end", "before-id", "after-id"}


# --- what is archived (§5, §6) -----------------------------------------------------------


def test_prefs(login: Any, names: Iterator[str]) -> None:
    a, b, c = login(next(names)), login(next(names)), login(next(names))
    reply = a.iq("get", f"<prefs xmlns='{NS}'/>")
    prefs = reply.find(f"{{{NS}}}prefs")
    assert prefs.get("default") == "always"
    reply = a.iq(
        "set",
        f"<prefs xmlns='{NS}' default='never'><always><jid>{c.bare}</jid></always><never/></prefs>",
    )
    prefs = reply.find(f"{{{NS}}}prefs")
    assert prefs.get("default") == "never"
    assert [j.text for j in prefs.iter(f"{{{NS}}}jid")] == [c.bare]
    a.send(chat(b.bare, "not kept"))
    a.send(chat(c.bare, "kept"))
    a.inbox()
    b.send(chat(a.bare, "not kept either"))
    b.inbox()
    (got,) = a.messages()
    assert got.find(f"{{{SID}}}stanza-id") is None
    assert bodies(a.query()[0]) == ["kept"]
    assert bodies(b.query()[0]) == ["not kept", "not kept either"]
    again = a.iq("get", f"<prefs xmlns='{NS}'/>").find(f"{{{NS}}}prefs")
    assert again.get("default") == "never"
    bad = a.iq("set", f"<prefs xmlns='{NS}' default='sometimes'/>")
    assert stanza_error(bad) == "bad-request"


def test_prefs_jids_are_prepared(login: Any, names: Iterator[str]) -> None:
    """§5: the JIDs of the preferences are JIDs (RFC 7622): stored and returned prepared,
    so that they match the conversation partners they name; a string that is no JID is
    refused with jid-malformed and changes nothing."""
    a, b = login(next(names)), login(next(names))
    shouting = b.bare.upper()
    reply = a.iq(
        "set",
        f"<prefs xmlns='{NS}' default='always'><always/>"
        f"<never><jid>{shouting}</jid><jid>X@Example.TEST/Res</jid></never></prefs>",
    )
    prefs = reply.find(f"{{{NS}}}prefs")
    assert [j.text for j in prefs.iter(f"{{{NS}}}jid")] == [b.bare, "x@example.test"]
    again = a.iq("get", f"<prefs xmlns='{NS}'/>").find(f"{{{NS}}}prefs")
    assert [j.text for j in again.iter(f"{{{NS}}}jid")] == [b.bare, "x@example.test"]
    a.send(chat(b.bare, "never kept"))
    a.inbox()
    assert bodies(a.query()[0]) == []
    for bad in ("a@b@c", "@localhost", "x" * 1100 + "@localhost", " "):
        reply = a.iq(
            "set",
            f"<prefs xmlns='{NS}' default='never'><always><jid>{bad}</jid></always></prefs>",
        )
        assert stanza_error(reply) == "jid-malformed", bad
    kept = a.iq("get", f"<prefs xmlns='{NS}'/>").find(f"{{{NS}}}prefs")
    assert kept.get("default") == "always"
    # the 'with' filter of a query names a JID too
    c = login(next(names))
    c.send(chat(a.bare, "to a"))
    c.inbox()
    assert bodies(a.query({"with": c.bare.upper()})[0]) == ["to a"]
    assert stanza_error(a.query({"with": "a@b@c"})[1]) == "jid-malformed"


def test_not_archived(srv: ServerProcess, login: Any, names: Iterator[str]) -> None:
    a, b = login(next(names)), login(next(names))
    a.send(chat(b.bare, "hinted", extra="<no-store xmlns='urn:xmpp:hints'/>"))
    a.send(chat(b.bare, "perm", extra="<no-permanent-store xmlns='urn:xmpp:hints'/>"))
    a.send(chat(b.bare, "news", mtype="headline"))
    a.send(chat(b.full, "err", mtype="error"))
    a.send(chat(b.full, "room", mtype="groupchat"))
    a.send(f"<message to='{b.bare}' type='chat'><active xmlns='{CHATSTATES}'/></message>")
    a.send(chat(b.bare, "normal", mtype="normal"))
    a.inbox()
    b.inbox()
    assert bodies(b.query()[0]) == ["normal"]
    assert bodies(a.query()[0]) == ["normal"]


CHATSTATES = "http://jabber.org/protocol/chatstates"


def test_metadata(login: Any, names: Iterator[str]) -> None:
    """§7 (archive metadata): empty for an empty archive; else <start/> and <end/> with the
    id and XEP-0082 timestamp of the first and last message, asked right after they were
    archived, without 'to' or to the account's bare JID."""
    a, b = login(next(names)), login(next(names))
    empty = a.iq("get", f"<metadata xmlns='{NS}'/>").find(f"{{{NS}}}metadata")
    assert len(empty) == 0
    a.send(chat(b.bare, "1"))
    b.send(chat(a.bare, "2"))
    b.inbox()
    a.send(chat(b.bare, "3"))
    for to in (None, a.bare):
        meta = a.iq("get", f"<metadata xmlns='{NS}'/>", to).find(f"{{{NS}}}metadata")
        assert [child.tag for child in meta] == [f"{{{NS}}}start", f"{{{NS}}}end"]
        results = a.query()[0]
        assert bodies(results) == ["1", "2", "3"]
        for element, result in zip(meta, (results[0], results[-1]), strict=True):
            assert element.get("id") == result.get("id")
            delay = result.find(f"{{{FORWARD}}}forwarded/{{{DELAY}}}delay")
            assert element.get("timestamp") == delay.get("stamp")


# --- storage: retention, removal, restarts --------------------------------------------------


def archive_count(srv: ServerProcess, name: str) -> int:
    from fastxmpp.storage.lmdb_store import Storage
    from fastxmpp.storage.mam import ArchiveStore

    with Storage(srv.data_dir) as storage:
        return ArchiveStore(storage).count("localhost", name)


def test_account_removal_purges(srv: ServerProcess, login: Any, names: Iterator[str]) -> None:
    a, b_name = login(next(names)), next(names)
    send_all(a, f"{b_name}@localhost", ["gone", "soon"])
    assert bodies(a.query()[0]) == ["gone", "soon"]  # and every pending record is written
    assert archive_count(srv, b_name) == 2
    result = run_cli("deluser", f"{b_name}@localhost", config=srv.config)
    assert result.returncode == 0, result.stderr
    assert archive_count(srv, b_name) == 0
    assert archive_count(srv, a.local) == 2


def test_retention_and_restart(make_server: Any, ca_file: str) -> None:
    srv = make_server("[mam]\nmax_messages_per_account = 3\nmax_page = 2\n")
    srv.adduser("alice@localhost")
    srv.adduser("bob@localhost")
    srv.start()
    opened: list[RawClient] = []
    try:
        alice = connect(srv, ca_file, opened, "alice")
        send_all(alice, "bob@localhost", ["1", "2", "3", "4", "5"])
        results, reply = alice.query()
        assert bodies(results) == ["3", "4"] and not fin(reply)[0]
        results, reply = alice.query(rsm="<max>50</max><before/>")
        assert bodies(results) == ["4", "5"]
        for c in opened:
            c.close()
        srv.stop()
        assert archive_count(srv, "bob") == 3
        srv.start()
        bob = connect(srv, ca_file, opened, "bob")
        results, reply = bob.query()
        assert bodies(results) == ["3", "4"] and not fin(reply)[0]
        results, reply = bob.query(rsm=f"<after>{fin(reply)[2]}</after>")
        assert bodies(results) == ["5"] and fin(reply)[0]
    finally:
        for c in opened:
            c.close()


def test_max_age(make_server: Any, ca_file: str) -> None:
    srv = make_server("[mam]\nmax_age_days = 0.00001\n")  # under a second
    srv.adduser("alice@localhost")
    srv.adduser("bob@localhost")
    srv.start()
    opened: list[RawClient] = []
    try:
        alice = connect(srv, ca_file, opened, "alice")
        send_all(alice, "bob@localhost", ["old"])
        time.sleep(1.2)
        send_all(alice, "bob@localhost", ["new"])
        assert bodies(alice.query()[0]) == ["new"]
    finally:
        for c in opened:
            c.close()


def test_disabled(make_server: Any, ca_file: str) -> None:
    srv = make_server("[mam]\nenabled = false\n")
    srv.adduser("alice@localhost")
    srv.adduser("bob@localhost")
    srv.start()
    opened: list[RawClient] = []
    try:
        alice = connect(srv, ca_file, opened, "alice")
        bob = connect(srv, ca_file, opened, "bob")
        send_all(alice, bob.bare, ["plain"])
        (got,) = bob.messages()
        assert got.find(f"{{{SID}}}stanza-id") is None
        results, reply = bob.query()
        assert results == [] and fin(reply) == (True, None, None)
    finally:
        for c in opened:
            c.close()


# --- a real client library ----------------------------------------------------------------


class SlixClient(ClientXMPP):
    def __init__(self, jid: str, ca_file: str) -> None:
        super().__init__(jid, PASSWORD)
        self.ca_certs = ca_file
        self.enable_direct_tls = False
        self.enable_plaintext = False
        self.register_plugin("xep_0313")
        self.ready = asyncio.get_running_loop().create_future()
        self.add_event_handler("session_start", self._started)

    async def _started(self, _event: Any) -> None:
        self.send_presence()
        if not self.ready.done():
            self.ready.set_result(True)


async def test_slixmpp_mam(srv: ServerProcess, ca_file: str, names: Iterator[str]) -> None:
    name, peer = next(names), next(names)
    alice = SlixClient(f"{name}@localhost/s", ca_file)
    bob = SlixClient(f"{peer}@localhost/s", ca_file)
    for client in (alice, bob):
        client.connect("127.0.0.1", srv.port)
    try:
        await asyncio.wait_for(asyncio.gather(alice.ready, bob.ready), 20)
        for text in ("one", "two", "three"):
            alice.send_message(mto=f"{peer}@localhost", mbody=text, mtype="chat")
        await asyncio.sleep(0.5)
        got, ids = [], []
        async for msg in alice.plugin["xep_0313"].iterate(rsm={"max": 2}):
            got.append(msg["mam_result"]["forwarded"]["stanza"]["body"])
            ids.append(msg["mam_result"]["id"])
        assert got == ["one", "two", "three"]
        # §7 metadata, as the plugin asks for it (no 'to') and reads it
        meta = (await alice.plugin["xep_0313"].get_archive_metadata(timeout=10))["mam_metadata"]
        assert (meta["start"]["id"], meta["end"]["id"]) == (ids[0], ids[-1])
        assert meta["start"]["timestamp"] <= meta["end"]["timestamp"]
    finally:
        for client in (alice, bob):
            client.disconnect()
        await asyncio.sleep(0.1)
