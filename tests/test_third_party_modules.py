"""Modules from other packages (docs/MODULES.md): a module shipped in a package of its own
(tests/modules/example_stats), installed with pip the way an operator would, found through
the `fastxmpp.modules` entry-point group, loaded only when the configuration names it; it
hooks a pipeline stage, keeps its data in its own store (surviving a restart, deleted with the
account) and appears in disco."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from conftest import FASTXMPP, PASSWORD, ServerProcess, add_accounts, run_cli
from lxml import etree
from xmpp_raw import CLIENT, RawClient, stanza_error

EXAMPLE = Path(__file__).parent / "modules" / "example_stats"
STATS = "urn:fastxmpp:example:stats"
INFO = "http://jabber.org/protocol/disco#info"
LOADED = '[modules]\nload = ["example_stats"]\n\n[modules.example_stats]\nlabel = "inbox"\n'


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example package installed by pip (its wheel built from a copy of its source, so
    the tree stays clean) into a directory of its own, put on the server's PYTHONPATH: the
    test environment's own site-packages is left as it was."""
    root = tmp_path_factory.mktemp("third-party")
    source = root / "source"
    shutil.copytree(EXAMPLE, source)
    target = root / "site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-deps",
         "--no-build-isolation", "--no-index", "--no-cache-dir", "--target", str(target),
         str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert list(target.glob("fastxmpp_example_stats-1.0.dist-info/entry_points.txt"))
    return target


def environment(site: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(site)
    return env


@pytest.fixture
def start(ca: trustme.CA, tmp_path: Path, site: Path) -> Iterator[Any]:
    started: list[ServerProcess] = []

    def factory(extra_toml: str) -> ServerProcess:
        srv = ServerProcess(
            tmp_path / f"s{len(started)}", ca, ("localhost",), extra_toml, env=environment(site)
        )
        started.append(srv)
        add_accounts(srv, ["alice", "bob"])
        srv.start()
        return srv

    yield factory
    for srv in started:
        srv.stop()


def login(srv: ServerProcess, ca_file: str, user: str) -> RawClient:
    c = srv.client()
    c.login(ca_file, user, PASSWORD, "stats")
    c.send("<presence/>")
    return c


def ask(c: RawClient, payload: str, to: str | None = None) -> Any:
    iq_id = f"q{time.monotonic_ns()}"
    to_attr = f" to='{to}'" if to else ""
    c.send(f"<iq type='get' id='{iq_id}'{to_attr}>{payload}</iq>")
    while True:
        el = c.next()
        if el.tag == f"{{{CLIENT}}}iq" and el.get("id") == iq_id:
            return el


def received(c: RawClient) -> tuple[str | None, int]:
    reply = ask(c, f"<stats xmlns='{STATS}'/>")
    assert reply.get("type") == "result", etree.tostring(reply)
    stats = reply.find(f"{{{STATS}}}stats")
    assert stats is not None, etree.tostring(reply)
    return stats.get("label"), int(stats.get("received"))


def server_features(c: RawClient) -> set[str]:
    reply = ask(c, f"<query xmlns='{INFO}'/>", to="localhost")
    assert reply.get("type") == "result", etree.tostring(reply)
    return {f.get("var") for f in reply.iter(f"{{{INFO}}}feature")}


def messages_until_echo(sender: RawClient, receiver: RawClient, count: int) -> None:
    """`count` chats sender → receiver, then a ping to know the server has handled them."""
    for i in range(count):
        sender.send(f"<message to='bob@localhost' type='chat' id='m{i}'><body>{i}</body></message>")
    got = 0
    while got < count:
        el = receiver.next()
        if el.tag == f"{{{CLIENT}}}message" and el.find(f"{{{CLIENT}}}body") is not None:
            got += 1


def test_installed_and_named_module_hooks_a_stage_stores_and_is_in_disco(
    start: Any, ca_file: str, site: Path
) -> None:
    srv = start(LOADED)
    alice, bob = login(srv, ca_file, "alice"), login(srv, ca_file, "bob")
    try:
        assert STATS in server_features(alice)
        assert received(bob) == ("inbox", 0)
        messages_until_echo(alice, bob, 3)
        assert received(bob) == ("inbox", 3)
        assert received(alice) == ("inbox", 0)
        # Stored offline is "delivered" too at that stage (fastxmpp.pipeline.STAGES).
        bob.close()
        alice.send("<message to='bob@localhost' type='chat'><body>later</body></message>")
        assert received(alice) == ("inbox", 0)  # a round trip: the message was handled
    finally:
        alice.close()
    # Its own store: on disk across a restart.
    srv.stop()
    srv.start()
    bob = login(srv, ca_file, "bob")
    try:
        assert received(bob) == ("inbox", 4)
        # Another account's counts are not for bob.
        reply = ask(bob, f"<stats xmlns='{STATS}'/>", to="alice@localhost")
        assert stanza_error(reply) == "forbidden"
    finally:
        bob.close()
    srv.stop()
    # The account's records go with it, through the CLI that never loads the module (and
    # here could not: no PYTHONPATH).
    result = run_cli("deluser", "bob@localhost", config=srv.config)
    assert result.returncode == 0, result.stderr
    srv.adduser("bob@localhost")
    srv.start()
    bob = login(srv, ca_file, "bob")
    try:
        assert received(bob) == ("inbox", 0)
    finally:
        bob.close()


def test_installed_but_not_named_module_is_not_loaded(start: Any, ca_file: str) -> None:
    srv = start("")
    alice = login(srv, ca_file, "alice")
    try:
        assert STATS not in server_features(alice)
        reply = ask(alice, f"<stats xmlns='{STATS}'/>")
        assert stanza_error(reply) == "service-unavailable"
    finally:
        alice.close()


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('[modules]\nload = ["no_such_module"]\n', "module no_such_module is not installed"),
        (
            LOADED.replace('"inbox"', "5"),
            "[modules.example_stats]: label must be a string",
        ),
        (LOADED + "colour = 'red'\n", "[modules.example_stats]: unknown key colour"),
        ('[modules]\nload = ["roster"]\n', "module roster is not installed"),
        ('[modules.example_stats]\nlabel = "x"\n', "example_stats is not in modules.load"),
    ],
)
def test_a_module_that_cannot_load_stops_the_server_with_one_line(
    ca: trustme.CA, tmp_path: Path, site: Path, ca_file: str, toml: str, expected: str
) -> None:
    srv = ServerProcess(tmp_path, ca, ("localhost",), toml, env=environment(site))
    check = run_cli("check-config", config=srv.config, env=environment(site))
    assert check.returncode != 0
    assert expected in check.stdout + check.stderr
    # The problem names the line of the configuration it is on.
    assert f"{srv.config}:" in check.stdout + check.stderr
    served = subprocess.run(
        [*FASTXMPP, "serve", "--config", str(srv.config)],
        capture_output=True, text=True, timeout=60, env=environment(site), cwd=tmp_path,
    )  # fmt: skip
    assert served.returncode != 0
    assert expected in served.stdout + served.stderr
    assert "Traceback" not in served.stdout + served.stderr
