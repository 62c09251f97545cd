"""The message archive under load and SIGKILL, alone and as a power cut (tests/power_cut.py)
(issue "Acknowledged means durable", item 8): pairs of online accounts send each other
numbered messages concurrently, with XEP-0198 on and an <r/> after every few; the server is
killed once the <a/> answers have covered a number of messages drawn from a seeded RNG, and
restarted. Every message whose sender got an <a/> covering it is then in the sender's
archive and in the recipient's (XEP-0313 §4 queries over XMPP, all pages), once; nothing is
archived that was not sent. Two kill points per run, on the same data; FASTXMPP_TEST_SEED
replays one run, and the seed is printed and named in every failure message."""

from __future__ import annotations

import os
import random
import signal
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import ServerProcess, add_accounts
from power_cut import CRASHES, power_cut_for
from test_sm_durability import archived_ids
from test_stream_management import SM, Client, login, message
from xmpp_raw import RawClient, StreamClosed

SEED = int(os.environ.get("FASTXMPP_TEST_SEED") or random.SystemRandom().randrange(1 << 32))
PAIRS = 3
ROUNDS = 2
BATCH = 5  # messages between two <r/>
WINDOW = 4  # batches in flight per client


@dataclass
class Talker:
    """One account of a pair: what it sent its partner, and how much of it the server's
    <a/> covered (sent[:acknowledged])."""

    client: Client
    partner: str
    sent: list[str] = field(default_factory=list)
    acknowledged: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)


def talk(talker: Talker, prefix: str, go: threading.Event) -> None:
    """Numbered messages to the partner until the server goes away; the partner's messages
    are read (and acknowledged when the server asks) as they come."""
    go.wait()
    client = talker.client
    base = talker.acknowledged  # 'h' counts from <enable/>, this round's messages from here
    first = len(talker.sent)
    requests = 0
    try:
        while True:
            while requests < WINDOW:
                n = len(talker.sent) - first
                ids = [f"{prefix}{n + i}" for i in range(BATCH)]
                client.send("".join(message(talker.partner, mid) for mid in ids))
                client.send(f"<r xmlns='{SM}'/>")
                talker.sent += ids
                requests += 1
            el = client.next()
            if el.tag == f"{{{SM}}}a":
                requests -= 1
                talker.acknowledged = base + int(el.get("h"))
            elif el.get("type") == "error":
                talker.errors.append(dict(el.attrib))
    except (StreamClosed, TimeoutError, OSError, ssl.SSLError):
        pass


@pytest.mark.parametrize("crash", CRASHES)
def test_sigkill_under_load_archives_every_acknowledged_message_both_ways(
    make_server: Any, ca_file: str, clients: list[RawClient], crash: str, tmp_path: Path
) -> None:
    print(f"seed {SEED}")
    rng = random.Random(SEED)
    power = power_cut_for(crash, tmp_path, rng)
    srv: ServerProcess = make_server()
    if power is not None:
        power.prepare(srv)
    names = [(f"ma{i}", f"mb{i}") for i in range(PAIRS)]
    add_accounts(srv, [name for pair in names for name in pair])
    srv.start()
    talkers: dict[str, Talker] = {}
    summary = []
    for round_ in range(ROUNDS):
        kill_at = rng.randint(20, 400)  # acknowledged messages, all talkers together
        context = f"seed {SEED}, round {round_}, kill after {kill_at} acknowledged"
        for a, b in names:
            for me, partner in ((a, b), (b, a)):
                client = login(srv, ca_file, clients, me, f"r{round_}")
                assert client.enable(resume=False).tag == f"{{{SM}}}enabled", context
                talker = talkers.setdefault(me, Talker(client, f"{partner}@localhost"))
                talker.client = client
                talker.acknowledged = len(talker.sent)  # the last round's are checked
        before = {name: len(t.sent) for name, t in talkers.items()}
        go = threading.Event()
        with ThreadPoolExecutor(len(talkers)) as pool:
            running = [pool.submit(talk, t, f"{name}-{round_}-", go) for name, t in talkers.items()]
            go.set()
            deadline = time.monotonic() + 60
            while sum(t.acknowledged - before[n] for n, t in talkers.items()) < kill_at:
                assert time.monotonic() < deadline, context
                time.sleep(0.001)
            if power is not None:
                power.wait_unflushed()
            assert srv.stop(signal.SIGKILL) == -signal.SIGKILL
            if power is not None:
                power.cut()
            for future in running:
                future.result(timeout=30)
        for t in talkers.values():
            t.client.c.abort()
            assert t.errors == [], f"{context}: {t.errors[:3]}"
        srv.start()

        archives = {}
        for name in talkers:
            reader = login(srv, ca_file, clients, name, "check", available=False)
            archives[name] = archived_ids(reader)
            reader.c.close()
        for name, t in talkers.items():
            partner = t.partner.split("@")[0]
            acknowledged = t.sent[: t.acknowledged]
            mine = [i for i in archives[name] if i.startswith(f"{name}-")]
            theirs = [i for i in archives[partner] if i.startswith(f"{name}-")]
            for where, found in (("sender's", mine), ("recipient's", theirs)):
                assert len(found) == len(set(found)), f"{context}: {name} twice in {where}"
                missing = set(acknowledged) - set(found)
                assert not missing, f"{context}: {name}'s {sorted(missing)[:5]} not in {where}"
                assert set(found) <= set(t.sent), f"{context}: {where} has what {name} never sent"
            # What was lost in flight is forgotten: the next round counts from the archive.
            t.sent = [i for i in t.sent if i in set(mine)]
        summary.append(
            f"kill after {kill_at}: "
            + ", ".join(f"{n} {len(t.sent)}" for n, t in sorted(talkers.items()))
        )
    print("; ".join(summary))
    if power is not None:
        print(f"power cuts (pages put back / pages not flushed): {power.summary()}")
        # The cuts fell on writes in flight: this was more than a SIGKILL.
        assert any(r.unflushed_pages for r in power.results), power.summary()
