"""Side-by-side benchmark: the same load against fastxmpp, Prosody and ejabberd, in one run.

    make compare                      # or: .venv/bin/python -m benchmarks.compare
    make compare ARGS="--smoke"       # a few seconds per server, for CI-style checks

Installs the Debian packages prosody and ejabberd when missing, starts every server on
loopback from the configurations in benchmarks/anchors/ (Prosody and ejabberd each in a
"minimal" configuration, the features fastxmpp has today, and a "full" one, what a real
deployment loads), provisions the accounts by in-band registration, runs the scenarios of
benchmarks/load against each server in turn, and stops the processes it started, by PID.
Writes benchmarks/results/compare-<time>.json and .md, and a PNG chart when matplotlib is
installed (pip install -e ".[bench]").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import pwd
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import uvloop

from .load import procstat
from .load.__main__ import provision
from .load.scenarios import Spec, run

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ANCHORS = HERE / "anchors"
RESULTS = HERE / "results"

PROSODY_MINIMAL = [
    "roster", "saslauth", "tls", "disco", "ping", "register", "time", "version", "uptime",
    "lastactivity", "private", "posix",
]  # fmt: skip
PROSODY_FULL = [
    *PROSODY_MINIMAL, "carbons", "blocklist", "pep", "smacks", "vcard_legacy", "vcard4",
    "bookmarks", "csi_simple",
]  # fmt: skip
EJABBERD_MINIMAL = [
    "mod_roster: {}", "mod_disco: {}", "mod_ping: {}", "mod_register:\n    ip_access: all",
    "mod_offline: {}", "mod_time: {}", "mod_version: {}", "mod_last: {}", "mod_private: {}",
    "mod_muc:\n    host: conference.localhost",
]  # fmt: skip
EJABBERD_FULL = [
    *EJABBERD_MINIMAL, "mod_carboncopy: {}", "mod_blocking: {}", "mod_privacy: {}",
    "mod_caps: {}", "mod_pubsub:\n    plugins: [flat, pep]", "mod_stream_mgmt: {}",
    "mod_vcard: {}", "mod_client_state: {}",
]  # fmt: skip
# Message archiving (MAM) is left out of both "full" profiles: fastxmpp has none yet, and
# with the default file/mnesia storage it dominates the cost of every message (Prosody's
# per-message CPU rose about 6x with mod_mam on internal storage in a trial run).

ROOM_ARCHIVES = '[muc]\narchive_rooms = "all"\n'


@dataclass(frozen=True)
class Target:
    name: str  # e.g. "prosody-full"
    software: str  # fastxmpp | prosody | ejabberd
    profile: str  # minimal | full for the anchors; fastxmpp runs every module it has
    config: str = ""  # TOML added to fastxmpp's configuration (--room-archives)


TARGETS = [
    Target("fastxmpp", "fastxmpp", "all it has"),
    Target("prosody-minimal", "prosody", "minimal"),
    Target("prosody-full", "prosody", "full"),
    Target("ejabberd-minimal", "ejabberd", "minimal"),
    Target("ejabberd-full", "ejabberd", "full"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_packages() -> None:
    missing = [p for p, exe in (("prosody", "prosody"), ("ejabberd", "ejabberdctl")) if
               shutil.which(exe) is None and not Path(f"/usr/sbin/{exe}").exists()]  # fmt: skip
    if not missing:
        return
    print(f"installing Debian packages: {' '.join(missing)}", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "RUNLEVEL": "1"}
    # policy-rc.d stops the packages' init scripts from starting system-wide servers that
    # would hold port 5222 (invoke-rc.d asks it before starting anything).
    policy = Path("/usr/sbin/policy-rc.d")
    created = not policy.exists()
    if created:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)
    finally:
        if created:
            policy.unlink()


class Running:
    """A server process this runner started; stopped by its PID (and its process group)."""

    def __init__(self, target: Target, proc: subprocess.Popen[bytes], port: int) -> None:
        self.target = target
        self.proc = proc
        self.port = port

    def server_pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        # The started process and its descendants only (ejabberdctl runs beam.smp through su,
        # which gives it a session of its own, so a process-group kill would miss it).
        tree = procstat.process_tree(self.proc.pid) if self.proc.poll() is None else []
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in tree:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and any(_alive(p) for p in tree):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(0.1)
            if not any(_alive(p) for p in tree):
                break
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _certificate(run_dir: Path) -> tuple[Path, Path]:
    if (run_dir / "localhost.key").exists():  # a restart
        return run_dir / "localhost.crt", run_dir / "localhost.key"
    subprocess.run(
        [sys.executable, "-m", "fastxmpp.cli", "gencert", "localhost", "--out", str(run_dir)],
        check=True,
        capture_output=True,
    )
    return run_dir / "localhost.crt", run_dir / "localhost.key"


def start(target: Target, run_dir: Path) -> Running:
    """Start `target` with its data in `run_dir` (kept across restarts of the same target)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = open(run_dir / "stdout.log", "ab")  # noqa: SIM115 - lives as long as the process
    if target.software == "fastxmpp":
        config = run_dir / "fastxmpp.toml"
        config.write_text(
            f'[server]\ndata_dir = "{run_dir / "data"}"\nlog_level = "warning"\n'
            f'[[listeners]]\nkind = "c2s"\naddress = "127.0.0.1"\nport = {port}\n'
            "[hosts.localhost]\n"
            "[register]\nenabled = true\nmax_per_ip_per_hour = 1000000\n"
            # Limits off, as for the anchors: the load comes from one address at full speed.
            "[limits]\nmax_bytes_per_second = 0\nmax_unauthenticated_per_ip = 1000000\n"
            "max_resources_per_account = 1000000\n" + target.config
        )
        command = [sys.executable, "-m", "fastxmpp.cli", "serve", "--config", str(config)]
    elif target.software == "prosody":
        cert, key = _certificate(run_dir)
        (run_dir / "data").mkdir(exist_ok=True)
        modules = PROSODY_MINIMAL if target.profile == "minimal" else PROSODY_FULL
        text = (ANCHORS / "prosody.cfg.lua.in").read_text().format(
            run=run_dir, port=port, cert=cert, key=key,
            modules=" ".join(f'"{m}";' for m in modules),
        )  # fmt: skip
        config = run_dir / "prosody.cfg.lua"
        config.write_text(text)
        command = ["prosody", "--config", str(config), "-F"]
    else:
        cert, key = _certificate(run_dir)
        pem = run_dir / "localhost.pem"
        pem.write_text(cert.read_text() + key.read_text())
        modules = EJABBERD_MINIMAL if target.profile == "minimal" else EJABBERD_FULL
        text = (
            (ANCHORS / "ejabberd.yml.in")
            .read_text()
            .format(pem=pem, port=port, modules="\n".join("  " + m for m in modules))
        )
        config = run_dir / "ejabberd.yml"
        config.write_text(text)
        for sub in ("spool", "logs"):
            (run_dir / sub).mkdir(exist_ok=True)
        user = pwd.getpwnam("ejabberd")
        for path in [run_dir, *run_dir.iterdir(), run_dir / "spool", run_dir / "logs"]:
            os.chown(path, user.pw_uid, user.pw_gid)
        # Our own ejabberdctl.cfg: Debian's would point EJABBERD_CONFIG_PATH back to /etc.
        ctl = run_dir / "ejabberdctl.cfg"
        ctl.write_text(f'EJABBERD_PID_PATH="{run_dir / "spool" / "ejabberd.pid"}"\n')
        # Mnesia keeps its data under the node name: the same name for every restart.
        node = f"bench-{target.name}@localhost"
        command = [
            "ejabberdctl", "--ctl-config", str(ctl), "--config", str(config),
            "--spool", str(run_dir / "spool"),
            "--logs", str(run_dir / "logs"), "--node", node, "foreground",
        ]  # fmt: skip
    # ejabberdctl started by root switches to the ejabberd user with su, whose PAM session
    # resets the open-files limit to 1024: beam then stops accepting connections near 1000
    # clients. Started as the ejabberd user it runs directly and keeps ours, as the others do.
    as_user = pwd.getpwnam("ejabberd") if target.software == "ejabberd" else None
    proc = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=run_dir,
        user=as_user.pw_uid if as_user else None,
        group=as_user.pw_gid if as_user else None,
        extra_groups=[] if as_user else None,
        env={**os.environ, "HOME": as_user.pw_dir} if as_user else None,
    )
    running = Running(target, proc, port)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{target.name} exited: {(run_dir / 'stdout.log').read_text()[-2000:]}"
            )
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return running
        time.sleep(0.2)
    running.stop()
    raise RuntimeError(f"{target.name} did not open port {port}")


def server_process_pid(running: Running) -> int:
    """The PID to measure: the process itself (fastxmpp, Prosody), or for ejabberd the
    process group leader, whose tree includes beam.smp."""
    return running.server_pid()


def scenarios(smoke: bool, idle_connections: list[int]) -> list[tuple[str, dict[str, Any]]]:
    d = 3.0 if smoke else 15.0
    plans: list[tuple[str, dict[str, Any]]] = [
        ("login", {"scenario": "login", "duration": d, "concurrency": 4 if smoke else 16}),
        ("msg", {"scenario": "msg", "duration": d, "pairs": 10 if smoke else 50, "window": 8}),
        (
            "msg@10k",
            {"scenario": "msg", "duration": d, "pairs": 10 if smoke else 50, "rate": 10000.0},
        ),
        # Traffic as it usually is: each message alone on its connection (one in flight per
        # pair), so nothing is batched per read or per write (issue 13's first figure).
        (
            "msg-unbatched",
            {"scenario": "msg", "duration": d, "pairs": 20 if smoke else 1000, "window": 1},
        ),
    ]
    contacts = 50 if smoke else 1000
    plans.append(
        (f"presence@{contacts}", {"scenario": "presence", "duration": d, "contacts": contacts})
    )
    roster = 50 if smoke else 500
    plans.append(
        (
            f"roster_login@{roster}",
            {"scenario": "roster_login", "duration": d, "contacts": roster},
        )
    )
    plans.append(
        (
            "muc",
            {
                "scenario": "muc",
                "duration": d,
                "rooms": 2 if smoke else 10,
                "occupants": 5 if smoke else 20,
                "rate": 50.0 if smoke else 250.0,
            },
        )
    )
    for n in idle_connections:
        plans.append((f"idle@{n}", {"scenario": "idle", "connections": 100 if smoke else n}))
    return plans


def measure(
    target: Target, base: Spec, plans: list[tuple[str, dict[str, Any]]], root: Path
) -> dict[str, Any]:
    run_dir = root / target.name
    running = start(target, run_dir)
    try:
        spec = replace(base, port=running.port, server_pids=[server_process_pid(running)])
        uvloop.run(provision(spec))
        results: dict[str, Any] = {}
        for label, overrides in plans:
            print(f"  {target.name}: {label}", file=sys.stderr, flush=True)
            try:
                if overrides["scenario"] == "idle":
                    # Memory per idle connection is measured on a freshly started server:
                    # what earlier scenarios left in its heap would be reused by the new
                    # connections and hide part of their cost (or, for a server that
                    # returns memory late, add to it).
                    running.stop()
                    running = start(target, run_dir)
                    spec = replace(
                        spec, port=running.port, server_pids=[server_process_pid(running)]
                    )
                results[label] = run(replace(spec, **overrides))
            except Exception as exc:  # one failed scenario must not lose the others
                results[label] = {"error": repr(exc)}
        return results
    finally:
        running.stop()


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def _first(results: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The first scenario result whose label starts with `prefix` (e.g. "idle@")."""
    return next((v for k, v in results.items() if k.startswith(prefix)), {})


def markdown(report: dict[str, Any]) -> str:
    idle_labels = [label for label in report["scenarios"] if label.startswith("idle@")]
    lines = [
        f"Run {report['started']} on {report['machine']}; {report['note']}",
        "",
        "| server | config | msgs/s | server CPU µs/msg | p50 ms | p99 ms | p99 ms @10k/s "
        "| lost | unbatched msgs/s | unbatched CPU µs/msg | unbatched p99 ms "
        "| logins/s | login CPU ms | "
        + "".join(f"{label} RSS KiB/conn | " for label in idle_labels)
        + "presence CPU µs/delivery | roster login CPU ms | muc deliveries/s "
        "| muc CPU µs/delivery | muc p99 ms |",
        "|---|---|" + "---:|" * (17 + len(idle_labels)),
    ]
    notes: list[str] = []
    for name, r in report["servers"].items():
        msg, fixed, login = r.get("msg", {}), r.get("msg@10k", {}), r.get("login", {})
        unbatched = r.get("msg-unbatched", {})
        presence, roster = _first(r, "presence@"), _first(r, "roster_login@")
        muc = r.get("muc", {})
        roster_cpu = roster.get("server_cpu_us_per_item")
        login_cpu = login.get("server_cpu_us_per_item")
        idle_cells = ""
        for label in idle_labels:
            rss = r.get(label, {}).get("rss_per_connection_bytes")
            idle_cells += f"{_fmt(rss / 1024 if rss else None)} | "
        lines.append(
            f"| {name} | {report['profiles'][name]} | {_fmt(msg.get('rate_per_s'), 0)} "
            f"| {_fmt(msg.get('server_cpu_us_per_item'))} | {_fmt(msg.get('p50_ms'), 2)} "
            f"| {_fmt(msg.get('p99_ms'), 2)} | {_fmt(fixed.get('p99_ms'), 2)} "
            f"| {_fmt(msg.get('lost'))} | {_fmt(unbatched.get('rate_per_s'), 0)} "
            f"| {_fmt(unbatched.get('server_cpu_us_per_item'))} "
            f"| {_fmt(unbatched.get('p99_ms'), 2)} | {_fmt(login.get('rate_per_s'), 0)} "
            f"| {_fmt(login_cpu / 1000 if login_cpu else None, 2)} | {idle_cells}"
            f"{_fmt(presence.get('server_cpu_us_per_item'))} "
            f"| {_fmt(roster_cpu / 1000 if roster_cpu else None, 2)} "
            f"| {_fmt(muc.get('rate_per_s'), 0)} | {_fmt(muc.get('server_cpu_us_per_item'))} "
            f"| {_fmt(muc.get('p99_ms'), 2)} |"
        )
        for label, result in r.items():
            if "error" in result:
                notes.append(f"{name} {label}: failed: {result['error']}")
            if result.get("setup_incomplete"):
                what = "room joins" if label == "muc" else "subscription handshakes"
                notes.append(
                    f"{name} {label}: {result['setup_incomplete']} {what} "
                    "did not complete during setup"
                )
            if result.get("lost"):
                notes.append(
                    f"{name} {label}: {result['lost']} deliveries missing when the drain ended "
                    "(not delivered within the measured time plus 5 s)"
                )
            if "setup_quiet_after_s" in result and result["setup_quiet_after_s"] is None:
                notes.append(f"{name} {label}: the server was still busy when measuring began")
    lines += ["", "Errors: " + (", ".join(report["errors"]) or "none")]
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def chart(report: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = list(report["servers"])
    metrics = [
        ("server CPU µs per message", lambda r: r.get("msg", {}).get("server_cpu_us_per_item")),
        (
            "server CPU µs per unbatched message",
            lambda r: r.get("msg-unbatched", {}).get("server_cpu_us_per_item"),
        ),
        ("p99 latency ms at 10k msgs/s", lambda r: r.get("msg@10k", {}).get("p99_ms")),
        ("logins/s (SCRAM-SHA-1, TLS)", lambda r: r.get("login", {}).get("rate_per_s")),
        (
            "idle RSS KiB per connection",
            lambda r: (_first(r, "idle@").get("rss_per_connection_bytes") or 0) / 1024,
        ),
        (
            "server CPU µs per presence delivered",
            lambda r: _first(r, "presence@").get("server_cpu_us_per_item"),
        ),
        (
            "server CPU µs per groupchat delivery",
            lambda r: r.get("muc", {}).get("server_cpu_us_per_item"),
        ),
    ]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 4))
    for ax, (title, get) in zip(axes, metrics, strict=True):
        values = [get(report["servers"][n]) or 0 for n in names]
        colors = ["#2a7" if n == "fastxmpp" else "#888" for n in names]
        ax.bar(range(len(names)), values, color=colors)
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="a few seconds per server")
    parser.add_argument(
        "--only", action="append", choices=[t.name for t in TARGETS], help="run these only"
    )
    parser.add_argument("--idle", type=int, action="append", help="idle connection counts")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=["login", "msg", "presence", "roster_login", "idle", "muc"],
        help="run these scenarios only (default: all)",
    )
    parser.add_argument(
        "--room-archives",
        action="store_true",
        help='fastxmpp\'s rooms keep XEP-0313 archives ([muc] archive_rooms = "all": the '
        "scenario's rooms are instant, temporary ones, which archive nothing by default)",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    # Every server started here inherits this limit: 10k idle connections need 10k files.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    targets = [t for t in TARGETS if not args.only or t.name in args.only]
    if args.room_archives:
        targets = [
            replace(t, profile=f"{t.profile}, rooms archived", config=ROOM_ARCHIVES)
            if t.software == "fastxmpp"
            else t
            for t in targets
        ]
    if any(t.software != "fastxmpp" for t in targets):
        ensure_packages()
    idle = args.idle or [1000]
    plans = [
        (label, overrides)
        for label, overrides in scenarios(args.smoke, idle)
        if not args.scenario or overrides["scenario"] in args.scenario
    ]
    # 2 per pair of the unbatched scenario; the presence scenario's hub and 1000 contacts
    users = 60 if args.smoke else 2000
    base = Spec(scenario="msg", users=users, workers=args.workers)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    report: dict[str, Any] = {
        "started": started,
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs, {platform.machine()}, "
        f"Python {platform.python_version()})",
        "note": "smoke run (short)" if args.smoke else "full run",
        "scenarios": {label: overrides for label, overrides in plans},
        "profiles": {t.name: t.profile for t in targets},
        "servers": {},
        "errors": [],
    }
    with tempfile.TemporaryDirectory(prefix="fastxmpp-compare-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o755)  # ejabberd runs as its own user inside
        for target in targets:
            print(f"{target.name}: starting", file=sys.stderr, flush=True)
            try:
                report["servers"][target.name] = measure(target, base, plans, root)
            except Exception as exc:
                report["errors"].append(f"{target.name}: {exc!r}")
                report["servers"][target.name] = {}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"compare-{started.replace(':', '')}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    table = markdown(report)
    stem.with_suffix(".md").write_text(table)
    drew = chart(report, stem.with_suffix(".png"))
    print(table)
    print(f"written: {stem}.json, .md" + (", .png" if drew else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
