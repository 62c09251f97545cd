"""Out of file descriptors: the server says so in its log (at most once a minute per kind of
warning) and keeps serving the connections it has, and new ones once descriptors are free.
A real server under a low RLIMIT_NOFILE, real sockets."""

from __future__ import annotations

import contextlib
import socket
import sys
from pathlib import Path
from typing import Any

import trustme
from conftest import ServerProcess, assert_still_serving

LIMIT = 64
# The fastxmpp command line, started under soft = hard = LIMIT open files: the server cannot
# raise it (raise_open_files_limit only goes up to the hard limit).
LIMITED = (
    sys.executable,
    "-c",
    "import os, resource, sys; "
    f"resource.setrlimit(resource.RLIMIT_NOFILE, ({LIMIT}, {LIMIT})); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])",
    "-P",
    "-m",
    "fastxmpp.cli",
)


def test_running_out_of_descriptors_is_logged_and_serving_goes_on(
    ca: trustme.CA, ca_file: str, tmp_path: Path
) -> None:
    srv = ServerProcess(
        tmp_path / "srv",
        ca,
        ("localhost",),
        "[limits]\nmax_unauthenticated_per_ip = 1000\nmax_connections_per_ip = 1000\n",
        command=LIMITED,
    )
    srv.adduser("alice@localhost")
    srv.start()
    held: list[Any] = []
    try:
        srv.wait_for_log(f"open files limit: {LIMIT}")
        for _ in range(LIMIT + 10):  # more than the server has descriptors for
            held.append(socket.create_connection(("127.0.0.1", srv.port), timeout=10))
        srv.wait_for_log(f"of {LIMIT} (RLIMIT_NOFILE) taken by a new connection")
        srv.wait_for_log("out of file descriptors (EMFILE")
        assert srv.alive(), srv.log_text()
    finally:
        for sock in held:
            with contextlib.suppress(OSError):
                sock.close()
    srv.wait_for_log("file descriptors free again", timeout=30)
    assert_still_serving(srv, ca_file)
    assert srv.stop() == 0
