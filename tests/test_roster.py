"""RFC 6121 §2 rosters over real sockets: get, set, remove, pushes to interested resources,
versioning (§2.6) across a restart, persistence, and every error of §2.3.3 / §2.5.3.

The helpers here (a server with many fresh accounts, login, sync, roster get) are shared with
test_presence.py."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import PASSWORD, FreshNames, ServerProcess, add_accounts, module_server
from lxml import etree
from xmpp_raw import CLIENT, RawClient, stanza_error

from fastxmpp.storage.lmdb_store import Storage

ROSTER = "jabber:iq:roster"
ACCOUNTS = 64


POOL = FreshNames("u", ACCOUNTS)


@pytest.fixture(scope="module")
def srv(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(
        ca,
        tmp_path_factory,
        POOL,
        "[roster]\nmax_items = 5\n[limits]\nmax_unauthenticated_per_ip = 200\n",
    )


@pytest.fixture
def users() -> Iterator[str]:
    """Account names never used before in this module's server."""
    return POOL.names()


def connect(
    srv: ServerProcess, ca_file: str, opened: list[RawClient], user: str, resource: str = "r"
) -> RawClient:
    c = srv.client()
    opened.append(c)
    c.login(ca_file, user, PASSWORD, resource)
    return c


_sync_ids = itertools.count()


def sync(c: RawClient) -> list[Any]:
    """Round-trip a ping: everything sent before it has been processed; what arrived first."""
    marker = f"sync-{next(_sync_ids)}"
    c.send(f"<iq type='get' id='{marker}'><ping xmlns='urn:xmpp:ping'/></iq>")
    seen = []
    while True:
        el = c.next()
        if el.get("id") == marker:
            return seen
        seen.append(el)


def received(c: RawClient, *senders: RawClient) -> list[Any]:
    """What c got from what the senders have sent so far (senders' round trips first)."""
    for sender in senders:
        if sender is not c:
            sync(sender)
    return sync(c)


def reply_to(c: RawClient, iq_id: str) -> Any:
    """The answer to iq `iq_id`; what came before it stays queued for later reads."""
    skipped = []
    reply = c.next()
    while reply.get("id") != iq_id:
        skipped.append(reply)
        reply = c.next()
    c.queue[0:0] = skipped
    return reply


def roster_get(c: RawClient, ver: str | None = None) -> tuple[Any, list[Any]]:
    """(the result, the pushes after it); anything else received before is dropped."""
    sync(c)
    attr = "" if ver is None else f" ver='{ver}'"
    c.send(f"<iq type='get' id='rg'><query xmlns='{ROSTER}'{attr}/></iq>")
    reply = reply_to(c, "rg")
    return reply, [el for el in sync(c) if is_push(el)]


def roster_set(c: RawClient, item: str, iq_id: str = "rs") -> Any:
    """Send a roster set; the reply (pushes before it stay queued)."""
    c.send(f"<iq type='set' id='{iq_id}'><query xmlns='{ROSTER}'>{item}</query></iq>")
    return reply_to(c, iq_id)


def is_push(el: Any) -> bool:
    return (
        el.tag == f"{{{CLIENT}}}iq"
        and el.get("type") == "set"
        and el.find(f"{{{ROSTER}}}query") is not None
    )


def items(el: Any) -> dict[str, Any]:
    """jid -> <item/> of a roster result or push."""
    return {i.get("jid"): i for i in el.iter(f"{{{ROSTER}}}item")}


def groups(item: Any) -> list[str]:
    return [g.text for g in item.findall(f"{{{ROSTER}}}group")]


def ver(el: Any) -> str | None:
    query = el.find(f"{{{ROSTER}}}query")
    return None if query is None else query.get("ver")


def test_features_after_auth(srv: ServerProcess, ca_file: str, clients: list[RawClient]) -> None:
    c = srv.client()
    clients.append(c)
    before = c.open_stream()
    assert before.find("{urn:xmpp:features:rosterver}ver") is None
    c.starttls(ca_file)
    c.sasl_scram("u63", PASSWORD)
    features = c.open_stream()
    assert features.find("{urn:xmpp:features:rosterver}ver") is not None
    assert features.find("{urn:xmpp:features:pre-approval}sub") is not None


def test_empty_roster(
    srv: ServerProcess, ca_file: str, clients: list[RawClient], users: Iterator[str]
) -> None:
    c = connect(srv, ca_file, clients, next(users))
    reply, pushes = roster_get(c)
    assert reply.get("type") == "result"
    assert items(reply) == {} and pushes == []
    assert ver(reply) is not None


def test_set_get_update_remove_with_pushes(
    srv: ServerProcess, ca_file: str, clients: list[RawClient], users: Iterator[str]
) -> None:
    user = next(users)
    a = connect(srv, ca_file, clients, user, "a")
    b = connect(srv, ca_file, clients, user, "b")
    quiet = connect(srv, ca_file, clients, user, "quiet")  # never asks: not interested
    roster_get(a)
    roster_get(b)
    reply = roster_set(a, "<item jid='Nurse@Example.COM' name='Nurse'><group>Ward</group></item>")
    assert reply.get("type") == "result"
    for c in (a, b):
        pushes = [el for el in sync(c) if is_push(el)]
        assert len(pushes) == 1
        pushed = items(pushes[0])["nurse@example.com"]  # stored normalized
        assert pushed.get("name") == "Nurse" and pushed.get("subscription") == "none"
        assert groups(pushed) == ["Ward"]
        assert pushes[0].get("to") == f"{user}@localhost/{'a' if c is a else 'b'}"
        assert pushes[0].get("from") in (None, f"{user}@localhost")
    assert [el for el in sync(quiet) if is_push(el)] == []

    # Update: name and groups replaced; a client's subscription/ask/approved are ignored.
    roster_set(
        a,
        "<item jid='nurse@example.com' subscription='both' ask='subscribe' approved='true'>"
        "<group>A</group><group>B</group></item>",
    )
    assert len([el for el in sync(b) if is_push(el)]) == 1
    reply, _ = roster_get(a)
    item = items(reply)["nurse@example.com"]
    assert item.get("name") is None
    assert item.get("subscription") == "none"
    assert item.get("ask") is None and item.get("approved") is None
    assert groups(item) == ["A", "B"]

    # Remove: a push with subscription='remove' to both interested resources.
    reply = roster_set(b, "<item jid='nurse@example.com' subscription='remove'/>")
    assert reply.get("type") == "result"
    for c in (a, b):
        pushes = [el for el in sync(c) if is_push(el)]
        assert [items(p)["nurse@example.com"].get("subscription") for p in pushes] == ["remove"]
    reply, _ = roster_get(a)
    assert items(reply) == {}


@pytest.mark.parametrize(
    ("query", "condition"),
    [
        ("<item jid='x@example.com'/><item jid='y@example.com'/>", "bad-request"),
        ("", "bad-request"),
        ("<item name='no jid'/>", "bad-request"),
        ("<item jid='x@example.com'><group>G</group><group>G</group></item>", "bad-request"),
        ("<item jid='bad@@example.com'/>", "jid-malformed"),
        ("<item jid='x@example.com'><group></group></item>", "not-acceptable"),
        (f"<item jid='x@example.com' name='{'n' * 1024}'/>", "not-acceptable"),
        (f"<item jid='x@example.com'><group>{'g' * 1024}</group></item>", "not-acceptable"),
        ("<item jid='never@example.com' subscription='remove'/>", "item-not-found"),
    ],
)
def test_set_errors(
    srv: ServerProcess, ca_file: str, clients: list[RawClient], query: str, condition: str
) -> None:
    c = connect(srv, ca_file, clients, "u62", "errors")
    reply = roster_set(c, query)
    assert reply.get("type") == "error"
    assert stanza_error(reply) == condition
    reply, _ = roster_get(c)
    assert "x@example.com" not in items(reply)


def test_other_accounts_roster_is_forbidden(
    srv: ServerProcess, ca_file: str, clients: list[RawClient], users: Iterator[str]
) -> None:
    mallory, victim = next(users), next(users)
    c = connect(srv, ca_file, clients, mallory)
    for kind, body in (("get", ""), ("set", "<item jid='x@example.com'/>")):
        c.send(
            f"<iq type='{kind}' id='f' to='{victim}@localhost'>"
            f"<query xmlns='{ROSTER}'>{body}</query></iq>"
        )
        reply = c.next()
        assert reply.get("id") == "f" and stanza_error(reply) == "forbidden"
    # To the own bare JID is fine (§2.1.5).
    c.send(f"<iq type='get' id='own' to='{mallory}@localhost'><query xmlns='{ROSTER}'/></iq>")
    assert c.next().get("type") == "result"


def test_size_limit(
    srv: ServerProcess, ca_file: str, clients: list[RawClient], users: Iterator[str]
) -> None:
    c = connect(srv, ca_file, clients, next(users))
    for n in range(5):  # max_items = 5 in this module's server
        assert roster_set(c, f"<item jid='c{n}@example.com'/>").get("type") == "result"
    reply = roster_set(c, "<item jid='c5@example.com'/>")
    assert stanza_error(reply) == "not-allowed"
    # Updating an existing item is still fine; so is adding after a removal.
    assert roster_set(c, "<item jid='c0@example.com' name='zero'/>").get("type") == "result"
    roster_set(c, "<item jid='c1@example.com' subscription='remove'/>")
    assert roster_set(c, "<item jid='c5@example.com'/>").get("type") == "result"
    # The server-made item of a subscription request counts too.
    c.send("<presence type='subscribe' to='c6@example.com' id='s6'/>")
    reply = c.next()
    assert reply.get("id") == "s6" and stanza_error(reply) == "not-allowed"


def test_own_jid_may_be_listed(
    srv: ServerProcess, ca_file: str, clients: list[RawClient], users: Iterator[str]
) -> None:
    user = next(users)
    c = connect(srv, ca_file, clients, user)
    assert roster_set(c, f"<item jid='{user}@localhost' name='me'/>").get("type") == "result"
    reply, _ = roster_get(c)
    assert items(reply)[f"{user}@localhost"].get("name") == "me"


def test_versioning_round_trip(
    srv: ServerProcess, ca_file: str, clients: list[RawClient], users: Iterator[str]
) -> None:
    c = connect(srv, ca_file, clients, next(users))
    reply, _ = roster_get(c, ver="")
    v0 = ver(reply)
    assert v0 is not None
    roster_set(c, "<item jid='one@example.com'/>")
    roster_set(c, "<item jid='two@example.com'/>")
    reply, _ = roster_get(c, ver="")
    v2 = ver(reply)
    assert set(items(reply)) == {"one@example.com", "two@example.com"}
    # Current version: empty result, nothing else (§2.6.3).
    reply, pushes = roster_get(c, ver=v2)
    assert reply.get("type") == "result" and reply.find(f"{{{ROSTER}}}query") is None
    assert pushes == []
    # Changes since v2: only them, as pushes after an empty result, the last one with the
    # current version.
    roster_set(c, "<item jid='one@example.com' name='One'/>")
    roster_set(c, "<item jid='two@example.com' subscription='remove'/>")
    roster_set(c, "<item jid='three@example.com'/>")
    sync(c)
    reply, pushes = roster_get(c, ver=v2)
    assert reply.find(f"{{{ROSTER}}}query") is None
    changed = {jid: el.get("subscription") for p in pushes for jid, el in items(p).items()}
    assert changed == {
        "one@example.com": "none",
        "two@example.com": "remove",
        "three@example.com": "none",
    }
    full, _ = roster_get(c, ver="")
    assert ver(pushes[-1]) == ver(full)
    # From the first version: 'two' was added and removed: still told to remove it.
    reply, pushes = roster_get(c, ver=v0)
    assert len(pushes) == 3
    # A version this server never gave: the whole roster.
    reply, pushes = roster_get(c, ver="999999")
    assert set(items(reply)) == {"one@example.com", "three@example.com"} and pushes == []
    reply, _ = roster_get(c, ver="garbage")
    assert set(items(reply)) == {"one@example.com", "three@example.com"}


def test_persists_and_versions_across_restart(make_server: Any, ca_file: str) -> None:
    srv = make_server()
    add_accounts(srv, ["alice"])
    srv.start()
    opened: list[RawClient] = []
    try:
        c = connect(srv, ca_file, opened, "alice")
        roster_set(c, "<item jid='keep@example.com' name='Keep'><group>G</group></item>")
        roster_set(c, "<item jid='gone@example.com'/>")
        reply, _ = roster_get(c, ver="")
        before = ver(reply)
        c.close()
        srv.stop()
        srv.start()
        c = connect(srv, ca_file, opened, "alice")
        reply, pushes = roster_get(c, ver=before)
        assert reply.find(f"{{{ROSTER}}}query") is None and pushes == []
        roster_set(c, "<item jid='gone@example.com' subscription='remove'/>")
        c.close()
        srv.stop()
        srv.start()
        c = connect(srv, ca_file, opened, "alice")
        reply, pushes = roster_get(c, ver=before)
        assert [items(p)["gone@example.com"].get("subscription") for p in pushes] == ["remove"]
        reply, _ = roster_get(c)
        kept = items(reply)
        assert list(kept) == ["keep@example.com"]
        assert kept["keep@example.com"].get("name") == "Keep"
        assert groups(kept["keep@example.com"]) == ["G"]
    finally:
        for c in opened:
            c.close()


def test_removed_account_loses_its_roster(make_server: Any, ca_file: str) -> None:
    from fastxmpp.storage.account_data import purge_account
    from fastxmpp.storage.roster import RosterStore

    srv = make_server()
    add_accounts(srv, ["alice", "alice2"])
    srv.start()
    opened: list[RawClient] = []
    try:
        for user in ("alice", "alice2"):
            c = connect(srv, ca_file, opened, user)
            roster_set(c, "<item jid='x@example.com'/>")
            c.close()
    finally:
        srv.stop()
        for c in opened:
            c.close()
    with Storage(srv.data_dir) as storage:
        storage.write(lambda txn: purge_account(storage, txn, "localhost", "alice"))
        store = RosterStore(storage)
        assert store.load("localhost", "alice").items == {}
        assert list(store.load("localhost", "alice2").items) == ["x@example.com"]


def test_roster_get_result_shape(
    srv: ServerProcess, ca_file: str, clients: list[RawClient], users: Iterator[str]
) -> None:
    c = connect(srv, ca_file, clients, next(users))
    roster_set(c, "<item jid='q@example.com' name='Q &amp; A'/>")
    reply, _ = roster_get(c)
    assert reply.get("to", "").endswith("/r")
    assert items(reply)["q@example.com"].get("name") == "Q & A"
    assert etree.QName(reply.find(f"{{{ROSTER}}}query")).namespace == ROSTER


def test_old_tombstones_fall_back_to_the_whole_roster(
    srv: ServerProcess, ca_file: str, clients: list[RawClient], users: Iterator[str]
) -> None:
    from fastxmpp.modules.roster import MAX_TOMBSTONES

    c = connect(srv, ca_file, clients, next(users))
    roster_set(c, "<item jid='stays@example.com'/>")
    reply, _ = roster_get(c, ver="")
    first = ver(reply)
    for n in range(MAX_TOMBSTONES + 1):
        roster_set(c, f"<item jid='t{n}@example.com'/>")
        roster_set(c, f"<item jid='t{n}@example.com' subscription='remove'/>")
    sync(c)
    # Each cycle takes two versions: this one is just before t199 was removed.
    recent = str(int(ver(reply) or 0) + 2 * (MAX_TOMBSTONES - 1))
    # The oldest half of the tombstones is gone: a version from before them gets it all ...
    reply, pushes = roster_get(c, ver=first)
    assert set(items(reply)) == {"stays@example.com"} and pushes == []
    # ... a recent one still gets just the changes since.
    reply, pushes = roster_get(c, ver=recent)
    assert reply.find(f"{{{ROSTER}}}query") is None
    removed = [jid for p in pushes for jid in items(p)]
    assert removed == [f"t{n}@example.com" for n in range(MAX_TOMBSTONES - 1, MAX_TOMBSTONES + 1)]
