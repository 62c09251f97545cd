"""Federation with ejabberd (Debian's 23.01) as the other server, in the suite: the scenarios
of tests/interop/s2s_ejabberd.py (SASL EXTERNAL with a CA both trust, XEP-0220 dialback;
messages, pings, a subscription to 'both' and presence, both ways; an ejabberd user in a
room of fastxmpp's MUC service) run in network and mount namespaces of their own
(`unshare -n -m`): ejabberd finds fastxmpp's `localhost` on port 5269, which the network
namespace has free, and `conference.localhost` through an /etc/hosts of the test's (bind-
mounted in the namespace only: ejabberd resolves names under .localhost through DNS, and the
machine's file does not list that one)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from interop_clients import REPO, require_command

SCRIPT = REPO / "tests" / "interop" / "s2s_ejabberd.py"


def test_federation_with_ejabberd(tmp_path: Path) -> None:
    require_command("ejabberdctl", "ejabberd (Debian package ejabberd)")
    unshare = require_command("unshare", "unshare (Debian package util-linux)")
    ip = require_command("ip", "ip (Debian package iproute2)")
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost conference.localhost\n::1 localhost\n")
    result = subprocess.run(
        [
            unshare,
            "-n",
            "-m",
            "--",
            "sh",
            "-c",
            f'"{ip}" link set lo up && mount --bind "$2" /etc/hosts && exec "$0" -P "$1"',
            sys.executable,
            str(SCRIPT),
            str(hosts),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-8000:]
    for how in ("SASL EXTERNAL", "dialback"):
        assert f"ejabberd interop with {how}: OK" in result.stdout, result.stdout
