"""Federation with Prosody (Debian's 0.12) as the other server, in the suite: the scenarios
of tests/interop/s2s_prosody.py (SASL EXTERNAL with a CA both trust, the same with Prosody's
XEP-0288 bidirectional links, and XEP-0220 dialback; messages, pings, a subscription to
'both' and presence, both ways; a Prosody user in a room of fastxmpp's MUC service) run in
a network namespace of their own (`unshare -n`, its loopback brought up): Prosody finds
fastxmpp's `localhost` through DNS, on port 5269, which a namespace has free whatever else
the machine runs, and no traffic leaves it."""

from __future__ import annotations

import subprocess
import sys

from interop_clients import REPO, require_command

SCRIPT = REPO / "tests" / "interop" / "s2s_prosody.py"


def test_federation_with_prosody() -> None:
    require_command("prosody", "Prosody (Debian package prosody)")
    unshare = require_command("unshare", "unshare (Debian package util-linux)")
    ip = require_command("ip", "ip (Debian package iproute2)")
    result = subprocess.run(
        [
            unshare,
            "-n",
            "--",
            "sh",
            "-c",
            f'"{ip}" link set lo up && exec "$0" -P "$1"',
            sys.executable,
            str(SCRIPT),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-8000:]
    for how in ("SASL EXTERNAL", "SASL EXTERNAL and XEP-0288", "dialback"):
        assert f"Prosody interop with {how}: OK" in result.stdout, result.stdout
