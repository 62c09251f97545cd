"""A disk that fails under a running server (EIO with free space) is fatal: the server logs
it, ends every stream with system-shutdown, acknowledges nothing more and exits with
EX_IOERR (74) for its supervisor; what it acknowledged before is intact after a restart.
A full disk is not fatal (tests/test_durability.py). The failure is injected at the system
call boundary: tests/faults/disk_faults.c, preloaded into the real server process."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import ServerProcess, add_accounts
from test_durability import login, message
from test_roster import sync
from xmpp_raw import CLIENT, STREAMS, StreamClosed

FAULTS = Path(__file__).resolve().parent / "faults"


def build_disk_faults(out_dir: Path) -> Path:
    """tests/faults/disk_faults.c as a library to preload."""
    out = out_dir / "disk_faults.so"
    source = FAULTS / "disk_faults.c"
    subprocess.run(
        ["cc", "-shared", "-fPIC", "-O1", "-o", str(out), str(source), "-ldl"],
        check=True,
        timeout=120,
    )
    return out


@pytest.fixture(scope="module")
def eio_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_disk_faults(tmp_path_factory.mktemp("faults"))


def test_io_error_at_commit_stops_the_server(
    make_server: Any, ca_file: str, eio_library: Path, tmp_path: Path
) -> None:
    trigger = tmp_path / "disk-fails-now"
    srv: ServerProcess = make_server()
    srv.env = dict(os.environ, LD_PRELOAD=str(eio_library), FASTXMPP_EIO_TRIGGER=str(trigger))
    add_accounts(srv, ["alice", "bob", "carol"])
    srv.start()
    alice = login(srv, ca_file, "alice")
    carol = login(srv, ca_file, "carol")
    alice.send(message("bob@localhost", "stored"))
    assert sync(alice) == []  # acknowledged: on disk

    trigger.touch()
    alice.send(message("bob@localhost", "lost-disk"))
    seen = []
    with pytest.raises(StreamClosed):
        while True:
            seen.append(alice.next())
    # Never acknowledged, and the stream ended with a stream error; so did everyone else's.
    assert not any(el.tag == f"{{{CLIENT}}}iq" for el in seen)
    errors = [el for el in seen if el.tag == f"{{{STREAMS}}}error"]
    assert len(errors) == 1, seen
    with pytest.raises(StreamClosed):
        while True:
            el = carol.next()
            if el.tag == f"{{{STREAMS}}}error":
                assert el[0].tag.endswith("system-shutdown"), el[0].tag
    assert srv.proc is not None
    assert srv.proc.wait(20) == 74  # EX_IOERR: a failure, for the supervisor
    log = srv.log_text()
    assert "CRITICAL fastxmpp.storage: storage failed in" in log, log
    assert "Input/output error" in log
    srv.stop()

    trigger.unlink()
    srv.env = None
    srv.start()
    bob = login(srv, ca_file, "bob")
    bob.send("<presence/>")
    got = [el.get("id") for el in sync(bob) if el.tag == f"{{{CLIENT}}}message"]
    assert got == ["stored"]
    bob.close()
