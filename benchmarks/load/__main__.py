"""Drive one XMPP server with one scenario and print the result as JSON.

    python -m benchmarks.load msg --port 5222 --pairs 50 --duration 10 --server-pid PID

Accounts bench0..bench{N-1} with password bench-password must exist, or pass --provision to
create them by in-band registration (XEP-0077) first. For a fastxmpp, thousands of accounts
are written faster into its data directory before it starts:

    python -P -m benchmarks.load.accounts DATA_DIR COUNT

The `many` scenario (100 000 connections) is run end to end by `python -P -m benchmarks.many`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import fields

import uvloop

from .client import register
from .scenarios import Spec, run


async def provision(spec: Spec, concurrency: int = 32) -> int:
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> bool:
        async with gate:
            return await register(spec.host, spec.port, spec.account(i), spec.options)

    created = await asyncio.gather(*(one(i) for i in range(spec.users)))
    return sum(created)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__)
    parser.add_argument(
        "scenario",
        choices=["login", "idle", "msg", "presence", "roster_login", "flood", "muc", "many"],
    )
    parser.add_argument("--provision", action="store_true", help="register the accounts first")
    parser.add_argument("--plain-tcp", action="store_true", help="no STARTTLS")
    defaults = Spec(scenario="msg")
    for f in fields(Spec):
        if f.name in ("scenario", "starttls", "server_pids"):
            continue
        default = getattr(defaults, f.name)
        if isinstance(default, bool):  # --shutdown / --no-shutdown
            parser.add_argument(
                "--" + f.name.replace("_", "-"),
                action=argparse.BooleanOptionalAction,
                default=default,
            )
            continue
        parser.add_argument("--" + f.name.replace("_", "-"), type=type(default), default=default)
    parser.add_argument("--server-pid", type=int, action="append", default=[])
    args = parser.parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in fields(Spec) if hasattr(args, f.name)}
    values.update(scenario=args.scenario, starttls=not args.plain_tcp, server_pids=args.server_pid)
    spec = Spec(**values)
    if args.provision:
        created = uvloop.run(provision(spec))
        print(f"provisioned {created} new accounts", file=sys.stderr)
    print(json.dumps(run(spec), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
