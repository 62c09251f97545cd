"""A detached XEP-0198 session's queue outlives the server (issue "Acknowledged means
durable", item 4): what a session holds while it waits to be resumed (§5) is on disk before the
<a/> that tells its sender the server has it (§4), so a SIGKILL in that window loses nothing;
without a crash nothing arrives twice: resumed, the session gets its queue and the next login
no offline copy; expired with another resource online, each message reaches it once.

Kill points come from a seeded RNG (FASTXMPP_TEST_SEED to replay one); the seed is printed and
named in every failure message."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ServerProcess, add_accounts
from power_cut import CRASHES, power_cut_for
from test_stream_management import SM, Client, bodies, login, message, resume
from xmpp_raw import CLIENT, RawClient

from fastxmpp.storage.lmdb_store import Storage
from fastxmpp.storage.offline import OfflineStore

DELAY = "urn:xmpp:delay"
MAM = "urn:xmpp:mam:2"
SEED = int(os.environ.get("FASTXMPP_TEST_SEED") or random.SystemRandom().randrange(1 << 32))
ROUNDS = 3  # kill points per run
BATCH = 5  # messages between two <r/>
WINDOW = 4  # batches in flight
SETTINGS = "[offline]\nmax_messages = 100000\n"


def stored_count(srv: ServerProcess, local: str) -> int:
    with Storage(srv.data_dir) as storage:
        return OfflineStore(storage).count("localhost", local)


def detach(srv: ServerProcess, client: Client) -> None:
    """Drop the socket without closing the stream (§5), and wait until the server knows."""
    client.c.abort()
    srv.wait_for_log(f"{client.full} lost its connection")


def send_until_acknowledged(
    sender: Client, to: str, prefix: str, enough: int
) -> tuple[list[str], int]:
    """Numbered messages to `to`, an <r/> after every BATCH, WINDOW batches in flight, until
    the server's <a/> says it has handled at least `enough` stanzas since <enable/>: the ids
    sent, in order, and that 'h'."""
    sent: list[str] = []
    requests: list[int] = []  # messages sent before each <r/> in flight
    while True:
        while len(requests) < WINDOW:
            ids = [f"{prefix}{n}" for n in range(len(sent), len(sent) + BATCH)]
            sender.send("".join(message(to, mid) for mid in ids) + f"<r xmlns='{SM}'/>")
            sent += ids
            requests.append(len(sent))
        el = sender.next()
        if el.tag == f"{{{SM}}}a":
            requests.pop(0)
            h = int(el.get("h"))
            if h >= enough:
                return sent, h
        else:
            assert el.get("type") != "error", f"seed {SEED}: {dict(el.attrib)}"


def offline_messages(srv: ServerProcess, client: RawClient | Client, local: str) -> list[Any]:
    """Initial presence, then every message delivered until the account has none stored (SM
    off: each leaves storage when written), and one round trip more."""
    raw = client.c if isinstance(client, Client) else client
    raw.send("<presence/>")
    got: list[Any] = []
    deadline = time.monotonic() + 60
    while True:
        marker = f"sync{len(got)}-{time.monotonic()}"
        raw.send(f"<iq type='get' id='{marker}'><ping xmlns='urn:xmpp:ping'/></iq>")
        while (el := raw.next()).get("id") != marker:
            if el.tag == f"{{{CLIENT}}}message":
                got.append(el)
        if stored_count(srv, local) == 0:
            if marker.endswith("last"):
                return got
            raw.send(f"<iq type='get' id='{marker}last'><ping xmlns='urn:xmpp:ping'/></iq>")
            while (el := raw.next()).get("id") != f"{marker}last":
                if el.tag == f"{{{CLIENT}}}message":
                    got.append(el)
            return got
        assert time.monotonic() < deadline, f"{stored_count(srv, local)} never delivered"


def archived_ids(client: Client) -> list[str]:
    """The ids of every message in the account's archive (XEP-0313 §4), all pages."""
    found: list[str] = []
    after = ""
    while True:
        rsm = f"<set xmlns='http://jabber.org/protocol/rsm'><max>250</max>{after}</set>"
        client.send(f"<iq type='set' id='mam'><query xmlns='{MAM}' queryid='q'>{rsm}</query></iq>")
        while True:
            el = client.next()
            if el.tag == f"{{{CLIENT}}}iq" and el.get("id") == "mam":
                break
            for forwarded in el.iter("{urn:xmpp:forward:0}forwarded"):
                found += [m.get("id") for m in forwarded.iter(f"{{{CLIENT}}}message")]
        assert el.get("type") == "result", f"seed {SEED}: {dict(el.attrib)}"
        fin = el.find(f"{{{MAM}}}fin")
        if fin is None or fin.get("complete") == "true":
            return found
        last = fin.findtext(
            "{http://jabber.org/protocol/rsm}set/{http://jabber.org/protocol/rsm}last"
        )
        after = f"<after>{last}</after>"


@pytest.mark.parametrize("crash", CRASHES)
def test_sigkill_loses_nothing_a_detached_session_holds(
    make_server: Any, ca_file: str, clients: list[RawClient], crash: str, tmp_path: Path
) -> None:
    print(f"seed {SEED}")
    rng = random.Random(SEED)
    # A power cut the moment the last <a/> arrived: whatever the server had not flushed
    # then is put back (nothing it acknowledged may be among it).
    power = power_cut_for(crash, tmp_path, rng)
    srv: ServerProcess = make_server(SETTINGS)
    if power is not None:
        power.prepare(srv)
    add_accounts(srv, [f"{who}{n}" for n in range(ROUNDS) for who in ("rcpt", "sender")])
    srv.start()
    summary = []
    for n in range(ROUNDS):
        kill_at = rng.randint(1, 120)
        rcpt = login(srv, ca_file, clients, f"rcpt{n}")
        sender = login(srv, ca_file, clients, f"sender{n}")
        assert rcpt.enable().tag == f"{{{SM}}}enabled"
        assert sender.enable(resume=False).tag == f"{{{SM}}}enabled"
        rcpt.auto_ack = False
        # Two the session was written and never acknowledged (kept at detach), the rest
        # routed to it while detached.
        pre = [f"pre{n}-{i}" for i in range(2)]
        sender.send("".join(message(rcpt.full, mid) for mid in pre))
        assert bodies([rcpt.next(), rcpt.next()]) == pre
        detach(srv, rcpt)
        more, h = send_until_acknowledged(sender, rcpt.full, f"m{n}-", kill_at)
        sent = pre + more
        acknowledged = sent[:h]  # 'h' counts the stanzas handled since <enable/>
        assert srv.stop(signal.SIGKILL) == -signal.SIGKILL
        if power is not None:
            power.cut()
        srv.start()

        back = login(srv, ca_file, clients, f"rcpt{n}", "after", available=False)
        got = offline_messages(srv, back, f"rcpt{n}")
        ids = [el.get("id") for el in got]
        context = f"seed {SEED}, kill after {kill_at}: {len(acknowledged)}/{len(sent)} acked"
        assert len(ids) == len(set(ids)), f"{context}: delivered twice"
        # In the order sent, a prefix holding everything acknowledged.
        assert ids == sent[: len(ids)], f"{context}: {ids[:5]} ..."
        assert len(ids) >= len(acknowledged), f"{context}: only {len(ids)} delivered"
        for el in got:
            assert el.get("from") == sender.full, context
            assert el.find(f"{{{DELAY}}}delay") is not None, context
        # Delivered from storage only: the archive has each message once.
        archive = archived_ids(back)
        assert sorted(archive) == sorted(set(archive)), f"{context}: archived twice"
        assert set(acknowledged) <= set(archive), context
        summary.append(f"kill after {kill_at}: {len(acknowledged)} acked, {len(ids)} delivered")
        back.c.close()
    print("; ".join(summary))
    if power is not None:
        print(f"power cuts (pages put back / pages not flushed): {power.summary()}")


def test_resumed_after_detach_each_once(
    make_server: Any, ca_file: str, clients: list[RawClient]
) -> None:
    """The stored copies of a detached session's queue stay out of another resource's
    offline delivery while it may be resumed, leave storage with the client's <a/>, and
    nothing comes again at the next login."""
    srv: ServerProcess = make_server(SETTINGS)
    add_accounts(srv, ["rcpt", "sender"])
    srv.start()
    rcpt = login(srv, ca_file, clients, "rcpt")
    sender = login(srv, ca_file, clients, "sender")
    rcpt.enable()
    rcpt.auto_ack = False
    sender.send(message(rcpt.bare, "pre"))
    sender.sync()
    assert bodies([rcpt.next()]) == ["pre"]
    handled = rcpt.received - 1  # "pre" arrived, never handled
    detach(srv, rcpt)
    during = [f"during{i}" for i in range(5)]
    sender.send("".join(message(rcpt.bare, body) for body in during))
    assert sender.sync() == []
    assert stored_count(srv, "rcpt") == 6  # on disk, as well as in the session's queue

    # Another resource comes online: the held copies are not offline messages for it.
    other = login(srv, ca_file, clients, "rcpt", "other", available=False)
    other.send("<presence/>")
    assert bodies(other.sync()) == []

    new, answer = resume(srv, ca_file, clients, rcpt, handled)
    assert answer.tag == f"{{{SM}}}resumed"
    again: list[Any] = []
    while len(bodies(again)) < 6:
        again.append(new.next())
    assert bodies(again) == ["pre", *during]
    new.send(f"<a xmlns='{SM}' h='{new.received}'/>")
    new.sync()
    assert stored_count(srv, "rcpt") == 0  # acknowledged: gone from storage
    new.c.close()
    other.c.close()

    third = login(srv, ca_file, clients, "rcpt", "third", available=False)
    third.send("<presence/>")
    assert bodies(third.sync()) == []


def test_expired_with_another_resource_online_each_once(
    make_server: Any, ca_file: str, clients: list[RawClient]
) -> None:
    """Expired while another resource is available: the messages addressed to the detached
    session's full JID go to it (with their <delay/>) and leave storage; those it got for
    itself (to the bare JID) are not sent again; nothing is left for the next login."""
    srv: ServerProcess = make_server(SETTINGS)
    add_accounts(srv, ["rcpt", "sender"])
    srv.start()
    rcpt = login(srv, ca_file, clients, "rcpt")
    other = login(srv, ca_file, clients, "rcpt", "other")
    sender = login(srv, ca_file, clients, "sender")
    rcpt.enable(max_seconds=2)
    rcpt.auto_ack = False
    detach(srv, rcpt)
    full = [f"full{i}" for i in range(3)]
    sender.send("".join(message(rcpt.full, body) for body in full))
    sender.send(message(rcpt.bare, "bare"))
    assert sender.sync() == []
    assert stored_count(srv, "rcpt") == 3  # only what the other resource did not get
    got = [el for el in other.sync() if el.tag == f"{{{CLIENT}}}message"]
    assert bodies(got) == ["bare"]
    srv.wait_for_log(f"{rcpt.full} was not resumed in time")
    deadline = time.monotonic() + 10
    while len(got) < 4:
        assert time.monotonic() < deadline, bodies(got)
        got += [el for el in other.sync() if el.tag == f"{{{CLIENT}}}message"]
    assert bodies(got) == ["bare", *full]
    assert all(el.find(f"{{{DELAY}}}delay") is not None for el in got[1:])
    assert stored_count(srv, "rcpt") == 0
    other.c.close()
    third = login(srv, ca_file, clients, "rcpt", "third", available=False)
    third.send("<presence/>")
    assert bodies(third.sync()) == []


def test_expired_after_another_resource_came_online(
    make_server: Any, ca_file: str, clients: list[RawClient]
) -> None:
    """A message to the bare JID while the detached session was the account's only
    available resource reached nobody else: a resource that comes online later gets it
    when the session expires (RFC 6121 §8.5.2.1.1 was applied when it was sent), once."""
    srv: ServerProcess = make_server(SETTINGS)
    add_accounts(srv, ["rcpt", "sender"])
    srv.start()
    rcpt = login(srv, ca_file, clients, "rcpt")
    sender = login(srv, ca_file, clients, "sender")
    rcpt.enable(max_seconds=2)
    rcpt.auto_ack = False
    detach(srv, rcpt)
    sender.send(message(rcpt.bare, "alone"))
    assert sender.sync() == []
    other = login(srv, ca_file, clients, "rcpt", "other")
    got = [el for el in other.sync() if el.tag == f"{{{CLIENT}}}message"]
    assert got == []  # held for a resumption
    srv.wait_for_log(f"{rcpt.full} was not resumed in time")
    deadline = time.monotonic() + 10
    while not got:
        assert time.monotonic() < deadline
        got += [el for el in other.sync() if el.tag == f"{{{CLIENT}}}message"]
    assert bodies(got) == ["alone"]
    assert got[0].find(f"{{{DELAY}}}delay") is not None
    assert bodies(other.sync()) == []
    other.c.close()
    third = login(srv, ca_file, clients, "rcpt", "third", available=False)
    third.send("<presence/>")
    assert bodies(third.sync()) == []
