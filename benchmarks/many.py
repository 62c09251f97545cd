"""Many connections to one fastxmpp: the `many` scenario of benchmarks/load, end to end.

    .venv/bin/python -P -m benchmarks.many --connections 10000
    .venv/bin/python -P -m benchmarks.many --connections 100000 --hold 60

Writes `connections` accounts straight into a new data directory (benchmarks/load/accounts.py:
one transaction, credentials derived once), starts the installed fastxmpp on loopback with
the per-address limits raised (every connection comes from 127.0.0.2-9), runs the scenario
(logins, `hold` seconds idle, `sample` deliveries, SIGTERM and the time to exit), and writes
benchmarks/results/many-<time>.json. Raises its own open-files limit to the hard limit;
the server and the load workers inherit it. See docs/CONFIGURATION.md, "Many connections",
for the kernel settings.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from .compare import RESULTS, free_port
from .load.accounts import write_accounts
from .load.scenarios import Spec, run


def server_config(data_dir: Path, port: int, extra: str) -> str:
    return (
        f'[server]\ndata_dir = "{data_dir}"\nlog_level = "warning"\n'
        f'[[listeners]]\nkind = "c2s"\naddress = "127.0.0.1"\nport = {port}\n'
        "[hosts.localhost]\n"
        # One load generator holds every connection, from eight addresses: the per-address
        # limits (connections, failed logins) are for the public internet, not for this.
        "[limits]\nmax_unauthenticated_per_ip = 1000000\nauth_free_failures = 1000000\n"
        "auth_failures_per_ip = 1000000\nauth_failures_per_account = 1000000\n" + extra
    )


def open_files_limit(pid: int) -> str:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return f"{soft} (hard {hard})"
    return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -P -m benchmarks.many", description=__doc__)
    defaults = Spec(scenario="many")
    parser.add_argument("--connections", type=int, default=10000)
    parser.add_argument("--hold", type=float, default=defaults.hold)
    parser.add_argument("--keepalive", type=float, default=defaults.keepalive)
    parser.add_argument("--sample", type=int, default=defaults.sample)
    parser.add_argument("--workers", type=int, default=2, help="at least this many")
    parser.add_argument("--sources", default=defaults.sources)
    parser.add_argument("--settle", type=float, default=defaults.settle)
    parser.add_argument("--config", default="", help="TOML appended to the server's configuration")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="fastxmpp-many-") as tmp:
        root = Path(tmp)
        port = free_port()
        config = root / "fastxmpp.toml"
        config.write_text(server_config(root / "data", port, args.config))
        t0 = time.perf_counter()
        created = write_accounts(
            root / "data", "localhost", "bench", args.connections, "bench-password"
        )
        provision_s = time.perf_counter() - t0
        print(f"{created} accounts written in {provision_s:.1f} s", file=sys.stderr)
        log_path = root / "server.log"
        with open(log_path, "wb") as log:
            server = subprocess.Popen(
                [sys.executable, "-P", "-m", "fastxmpp.cli", "serve", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=root,
            )
        try:
            deadline = time.monotonic() + 60
            while True:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the server did not start: " + log_path.read_text()[-2000:])
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                    break
                time.sleep(0.1)
            limit = open_files_limit(server.pid)
            spec = replace(
                defaults,
                port=port,
                users=args.connections,
                connections=args.connections,
                hold=args.hold,
                keepalive=args.keepalive,
                sample=min(args.sample, args.connections),
                workers=args.workers,
                sources=args.sources,
                settle=args.settle,
                shutdown=True,
                server_pids=[server.pid],
            )
            result: dict[str, Any] = run(spec)
            result["server_exit_code"] = server.wait(60)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
        log_text = log_path.read_text(errors="replace")
    result.update(
        started=started,
        machine=f"{platform.node()} ({os.cpu_count()} CPUs, {platform.machine()}, "
        f"Python {platform.python_version()})",
        accounts_written_s=provision_s,
        server_open_files_limit=limit,
        extra_config=args.config,
        server_log_tail=log_text.splitlines()[-20:],
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"many-{started.replace(':', '')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"written: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
