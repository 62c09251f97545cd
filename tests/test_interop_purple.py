"""libpurple 2.14 (Debian's libpurple-dev, the library of Pidgin and Finch) and its XMPP
protocol plugin prpl-jabber against the server, through tests/interop/purple/client.c,
compiled here with cc: a user interface of its own on GLib's main loop that does what
Pidgin's menus and windows do (buddy list, conversation windows, slash commands, the
account's actions) and prints one line per event; every question libpurple asks the user
(its request dialogs, authorization requests) is printed and answered by the test. The
server side is checked with raw clients (tests/xmpp_raw.py) and the server's log.
PURPLE_HARNESS_XML=1 in the environment makes the harness print every element both ways,
PURPLE_HARNESS_DEBUG=1 libpurple's debug log on its standard error.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
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
from xmpp_raw import CLIENT, RawClient

POOL = FreshNames("pu", 40)
HARNESS = REPO / "tests" / "interop" / "purple" / "client.c"
MESSAGE = f"{{{CLIENT}}}message"
PRESENCE = f"{{{CLIENT}}}presence"
STEP = 10.0
CONFIG = "[register]\nenabled = true\n"


@pytest.fixture(scope="module")
def srv(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(ca, tmp_path_factory, POOL, CONFIG)


@pytest.fixture
def names() -> Iterator[str]:
    return POOL.names()


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> str:
    """client.c compiled against the installed libpurple."""
    return build_harness(
        tmp_path_factory.mktemp("purple"),
        HARNESS,
        ("cc", "a C compiler (Debian package gcc)"),
        ["-Wall", "-O1"],
        ["purple"],
        "libpurple (Debian package libpurple-dev)",
    )


class Purple(Harness):
    """One harness process: commands on its stdin, its event lines collected."""

    name = "libpurple"
    step = STEP

    def __init__(
        self,
        binary: str,
        srv: ServerProcess,
        ca_file: str,
        jid: str,
        user_dir: Path,
        password: str = PASSWORD,
        register: bool = False,
    ):
        super().__init__(
            [binary, jid, password, ca_file, str(srv.port), str(user_dir)]
            + (["--register"] if register else [])
        )


@pytest.fixture
def purples() -> Iterator[list[Purple]]:
    started: list[Purple] = []
    yield started
    kill_all(started)


def login(
    binary: str,
    srv: ServerProcess,
    ca_file: str,
    user: str,
    started: list[Purple],
    tmp_path: Path,
    resource: str = "purple",
) -> tuple[Purple, str]:
    p = Purple(binary, srv, ca_file, f"{user}@localhost/{resource}", tmp_path / user)
    started.append(p)
    jid = p.wait(r"signed-on (\S+)").group(1)
    return p, jid


def test_login_and_messages(
    harness: str,
    srv: ServerProcess,
    ca_file: str,
    names: Iterator[str],
    clients: list[RawClient],
    purples: list[Purple],
    tmp_path: Path,
) -> None:
    user, peer = next(names), next(names)
    other = raw_login(srv, ca_file, peer, clients)
    p, jid = login(harness, srv, ca_file, user, purples, tmp_path)
    assert jid == f"{user}@localhost/purple", p
    print(p.lines)
    p.do(f"msg {peer}@localhost/raw hello from libpurple")
    msg = wait_for(other, "libpurple's message", lambda el: el.tag == MESSAGE)
    assert body(msg) == "hello from libpurple" and msg.get("from") == jid
    other.send(f"<message to='{jid}' type='chat'><body>hello libpurple</body></message>")
    p.wait(rf"im {peer}@localhost/raw hello libpurple")
    assert p.finish() == 0, p
    print(p.lines)
    assert re.search("x", "x")
