"""The micro-benchmarks of benchmarks/ (parser, router, transport), each run once with timing
off: they measure the installed package through interfaces that change as the server does,
and each checks what it measured (stanza counts, bytes, deliveries), so a benchmark that no
longer works fails here rather than on the day someone wants its numbers. No timing is
asserted."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO


def test_micro_benchmarks_run_and_check_what_they_measure() -> None:
    command = [sys.executable, "-P", "-m", "pytest", "benchmarks", "-q", "--benchmark-disable"]
    result = subprocess.run(
        [*command, "-p", "no:cacheprovider"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    summary = re.search(r"(\d+) passed", result.stdout)
    assert summary is not None, result.stdout[-2000:]
    # parser, router and transport benchmarks, none skipped
    assert int(summary.group(1)) >= 18, result.stdout[-2000:]
    assert "skipped" not in result.stdout.splitlines()[-1], result.stdout[-2000:]
