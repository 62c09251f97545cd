"""SIGKILL, alone and as a power cut (tests/power_cut.py), under load for the data a client
changes with an iq (docs/SECURITY.md, "Durability"): roster items, persistent rooms (owner
configuration and affiliations), PEP items, private XML and vCards. One client per kind sends
numbered changes, several in flight, each acknowledged by its iq result; the server is killed
with SIGKILL at a moment drawn from a fixed seed, restarted, and everything acknowledged is
read back over XMPP; then the load goes on and the next kill comes, several rounds on the same
data.

Two shapes of data:
- growing (roster items, room members, PEP items): what is stored after the restart is a
  prefix of what was sent (a stream's stanzas are handled in order, each committed before the
  next is read) holding every acknowledged change;
- replaced (a room's description, private XML, a vCard): the stored value is the last
  acknowledged one or a later one sent after it.
"""

from __future__ import annotations

import os
import random
import signal
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import ServerProcess, add_accounts
from power_cut import CRASHES, power_cut_for
from test_durability import login
from test_muc import ADMIN, OWNER, User, create, iq
from test_muc import field as form_field
from test_pep import options_form
from test_roster import ROSTER, items, roster_get
from xmpp_raw import CLIENT, RawClient, StreamClosed

PUBSUB = "http://jabber.org/protocol/pubsub"
PRIVATE = "jabber:iq:private"
ROOMCONFIG = "http://jabber.org/protocol/muc#roomconfig"
SERVICE = "conference.localhost"
NODE = "urn:example:durable"
WINDOW = 8  # changes in flight per client
SM = "urn:xmpp:sm:3"
# Kill points are drawn from this seed (FASTXMPP_TEST_SEED replays a run), printed and named
# in failure messages.
SEED = int(os.environ.get("FASTXMPP_TEST_SEED") or random.SystemRandom().randrange(1 << 32))
ROUNDS = 3
SETTINGS = "[roster]\nmax_items = 100000\n[pep]\nmax_items = 100000\n"


@dataclass
class Kind:
    """One kind of data: the account that changes it, the n-th change as an iq payload
    (with its 'to'), and whether changes accumulate or replace each other."""

    name: str
    account: str
    change: Callable[[int], tuple[str | None, str]]
    growing: bool
    sent: list[int] = field(default_factory=list)
    acknowledged: list[int] = field(default_factory=list)
    # sent[:covered] are covered by a XEP-0198 <a/> (handled, so committed).
    covered: int = 0
    errors: list[str] = field(default_factory=list)


def room_config(n: int) -> tuple[str, str]:
    form = (
        form_field("FORM_TYPE", ROOMCONFIG)
        + form_field("muc#roomconfig_persistentroom", "1")
        + form_field("muc#roomconfig_roomdesc", f"d{n}")
    )
    return (
        f"conf@{SERVICE}",
        f"<query xmlns='{OWNER}'><x xmlns='jabber:x:data' type='submit'>{form}</x></query>",
    )


def new_kinds() -> list[Kind]:
    """The kinds, with nothing sent yet (a test's own: each run keeps its counts in them)."""
    return [
        Kind(
            "roster",
            "kroster",
            lambda n: (
                None,
                f"<query xmlns='{ROSTER}'><item jid='c{n}@localhost' name='{n}'/></query>",
            ),
            growing=True,
        ),
        Kind(
            "members",
            "kmembers",
            lambda n: (
                f"members@{SERVICE}",
                f"<query xmlns='{ADMIN}'><item affiliation='member' jid='m{n}@localhost'/></query>",
            ),
            growing=True,
        ),
        Kind(
            "pep",
            "kpep",
            lambda n: (
                None,
                f"<pubsub xmlns='{PUBSUB}'><publish node='{NODE}'><item id='{n}'>"
                f"<n xmlns='urn:example:n'>{n}</n></item></publish></pubsub>",
            ),
            growing=True,
        ),
        Kind("roomconfig", "kconfig", room_config, growing=False),
        Kind(
            "private",
            "kprivate",
            lambda n: (None, f"<query xmlns='{PRIVATE}'><n xmlns='urn:example:n'>{n}</n></query>"),
            growing=False,
        ),
        Kind(
            "vcard",
            "kvcard",
            lambda n: (None, f"<vCard xmlns='vcard-temp'><FN>{n}</FN></vCard>"),
            growing=False,
        ),
    ]


def run_changes(client: RawClient, kind: Kind, go: threading.Event) -> None:
    """Send numbered changes, WINDOW in flight, each followed by an XEP-0198 <r/>, until the
    server goes away. Two acknowledgements: the change's iq result, and an <a/> whose 'h'
    (stanzas handled since <enable/>: only these iqs) covers it."""
    client.send(f"<enable xmlns='{SM}'/>")
    assert client.next().tag == f"{{{SM}}}enabled"
    received = 0  # stanzas from the server, for its <r/> (§4)
    first = len(kind.sent)  # sent[first:] are this stream's, counted by 'h'
    go.wait()
    in_flight: list[int] = []
    try:
        while True:
            while len(in_flight) < WINDOW:
                n = kind.sent[-1] + 1 if kind.sent else 0
                to, payload = kind.change(n)
                target = "" if to is None else f" to='{to}'"
                client.send(
                    f"<iq type='set' id='{kind.name}-{n}'{target}>{payload}</iq><r xmlns='{SM}'/>"
                )
                kind.sent.append(n)
                in_flight.append(n)
            el = client.next()
            if el.tag == f"{{{SM}}}a":
                kind.covered = max(kind.covered, first + int(el.get("h")))
                continue
            if el.tag == f"{{{SM}}}r":
                client.send(f"<a xmlns='{SM}' h='{received}'/>")
                continue
            received += 1
            if el.tag != f"{{{CLIENT}}}iq" or el.get("type") not in ("result", "error"):
                continue  # a roster push, a room's presence ...
            n = int(el.get("id").rsplit("-", 1)[1])
            # One stream's iqs are answered in the order sent.
            assert n == in_flight.pop(0), (kind.name, n)
            if el.get("type") == "result":
                kind.acknowledged.append(n)
            else:
                kind.errors.append(el.get("id"))
    except (StreamClosed, TimeoutError, OSError, ssl.SSLError):
        pass


def stored_values(srv: ServerProcess, ca_file: str, kind: Kind) -> list[int]:
    """What the restarted server has of `kind`, read back over XMPP."""
    c = login(srv, ca_file, kind.account, "check")
    user = User(c, kind.account, "check")
    try:
        if kind.name == "roster":
            reply, _ = roster_get(c)
            return sorted(int(item.get("name")) for item in items(reply).values())
        if kind.name == "members":
            reply = iq(
                user,
                f"members@{SERVICE}",
                "get",
                f"<query xmlns='{ADMIN}'><item affiliation='member'/></query>",
            )
            jids = [i.get("jid") for i in reply.iter(f"{{{ADMIN}}}item")]
            return sorted(int(j[1:].split("@")[0]) for j in jids)
        if kind.name == "pep":
            reply = iq(
                user, user.bare, "get", f"<pubsub xmlns='{PUBSUB}'><items node='{NODE}'/></pubsub>"
            )
            if reply.get("type") == "error":  # no node: nothing was published
                return []
            return sorted(int(i.get("id")) for i in reply.iter(f"{{{PUBSUB}}}item"))
        if kind.name == "roomconfig":
            reply = iq(user, f"conf@{SERVICE}", "get", f"<query xmlns='{OWNER}'/>")
            for f in reply.iter("{jabber:x:data}field"):
                if f.get("var") == "muc#roomconfig_roomdesc":
                    text = f.findtext("{jabber:x:data}value") or ""
                    return [int(text[1:])] if text else []
            raise AssertionError("no description field")
        if kind.name == "private":
            reply = iq(
                user,
                user.bare,
                "get",
                f"<query xmlns='{PRIVATE}'><n xmlns='urn:example:n'/></query>",
            )
            text = reply.findtext(f"{{{PRIVATE}}}query/{{urn:example:n}}n")
            return [int(text)] if text else []
        reply = iq(user, user.bare, "get", "<vCard xmlns='vcard-temp'/>")
        text = reply.findtext("{vcard-temp}vCard/{vcard-temp}FN")
        return [int(text)] if text else []
    finally:
        c.close()


def check(kind: Kind, stored: list[int], context: str) -> None:
    if kind.growing:
        # A prefix of what was sent, holding everything acknowledged either way.
        assert stored == kind.sent[: len(stored)], (context, kind.name, stored[-5:])
        assert len(stored) >= len(kind.acknowledged), (
            f"{context}: {kind.name}: {len(kind.acknowledged)} answered, {len(stored)} stored"
        )
        assert len(stored) >= kind.covered, (
            f"{context}: {kind.name}: <a/> covered {kind.covered}, {len(stored)} stored"
        )
    else:
        # The last acknowledged value, or one sent after it.
        last = max(
            kind.acknowledged[-1] if kind.acknowledged else -1,
            kind.sent[kind.covered - 1] if kind.covered else -1,
        )
        if last < 0:
            return
        assert len(stored) == 1 and stored[0] in kind.sent, (context, kind.name, stored)
        assert stored[0] >= last, (context, kind.name, stored, last)


def setup(srv: ServerProcess, ca_file: str) -> None:
    """The rooms, persistent, made by their owners; the PEP node keeps every item."""
    for owner, room in (("kconfig", "conf"), ("kmembers", "members")):
        c = login(srv, ca_file, owner)
        c.send("<presence/>")
        user = User(c, owner, "r")
        create(
            user,
            room=f"{room}@{SERVICE}",
            form=form_field("FORM_TYPE", ROOMCONFIG)
            + form_field("muc#roomconfig_persistentroom", "1"),
        )
        c.close()
    c = login(srv, ca_file, "kpep")
    user = User(c, "kpep", "r")
    form = options_form(PUBSUB + "#node_config", max_items="max")
    reply = iq(
        user,
        user.bare,
        "set",
        f"<pubsub xmlns='{PUBSUB}'><create node='{NODE}'/><configure>{form}</configure></pubsub>",
    )
    assert reply.get("type") == "result", reply.attrib
    c.close()


@pytest.mark.parametrize("crash", CRASHES)
def test_sigkill_under_load_keeps_every_acknowledged_change(
    make_server: Any, ca_file: str, crash: str, tmp_path: Path
) -> None:
    print(f"seed {SEED}")
    rng = random.Random(SEED)
    power = power_cut_for(crash, tmp_path, rng)
    kinds = new_kinds()
    srv: ServerProcess = make_server(SETTINGS)
    if power is not None:
        power.prepare(srv)
    add_accounts(srv, [kind.account for kind in kinds])
    srv.start()
    setup(srv, ca_file)
    summary = []
    for round_ in range(ROUNDS):
        kill_after = rng.uniform(0.5, 2.5)
        context = f"seed {SEED}, round {round_}, killed after {kill_after:.2f} s"
        clients = [login(srv, ca_file, kind.account) for kind in kinds]
        acknowledged_before = [len(kind.acknowledged) for kind in kinds]
        go = threading.Event()
        with ThreadPoolExecutor(len(kinds)) as pool:
            running = [
                pool.submit(run_changes, c, kind, go)
                for c, kind in zip(clients, kinds, strict=True)
            ]
            go.set()
            time.sleep(kill_after)
            if power is not None:
                power.wait_unflushed()
            assert srv.stop(signal.SIGKILL) == -signal.SIGKILL
            if power is not None:
                power.cut()
            for future in running:
                future.result(timeout=30)
        for c in clients:
            c.abort()
        for kind, before in zip(kinds, acknowledged_before, strict=True):
            assert kind.errors == [], (context, kind.name, kind.errors[:5])
            # The load really ran: changes were acknowledged in this round.
            assert len(kind.acknowledged) > before, (context, kind.name, before)
            # Nothing acknowledged is answered for twice or out of order.
            assert kind.acknowledged == sorted(set(kind.acknowledged))

        srv.start()
        for kind in kinds:
            check(kind, stored_values(srv, ca_file, kind), context)
        summary.append(
            f"after {kill_after:.2f} s: "
            + ", ".join(f"{k.name} {len(k.acknowledged)}/{len(k.sent)}" for k in kinds)
        )
        # What was in flight and got lost is forgotten: the next round goes on from what
        # the server has (growing kinds must stay a prefix of what was sent).
        for kind in kinds:
            if kind.growing:
                kept = len(stored_values(srv, ca_file, kind))
                del kind.sent[kept:]
                kind.covered = min(kind.covered, kept)
    print("; ".join(summary))
    if power is not None:
        print(f"power cuts (pages put back / pages not flushed): {power.summary()}")
        # The cuts fell on writes in flight: this was more than a SIGKILL.
        assert any(r.unflushed_pages for r in power.results), power.summary()
