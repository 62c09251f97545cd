"""How much the instrumented build adds: the same fuzz run on the in-place build and on
build/fuzz/coverage, then each run's corpus replayed on the instrumented build, so that both
are measured with the same yardstick (the parser's C edges + the oracle's Python ones).

    .venv/bin/python tests/fuzz/compare_coverage.py -seed=1 -runs=150000

Any libFuzzer options may follow (default: the test suite's bounded run). Prints a Markdown
table; docs/PARSER.md ("Fuzzing") has its figures.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from build_instrumented import build
from instrumented import ENV

FUZZ = Path(__file__).resolve().parent
FINDINGS = FUZZ.parents[1] / "var"  # where `make fuzz` puts them too


def fuzz(build_dir: Path | None, *args: str) -> tuple[str, float]:
    """Run the harness (on the in-place build when `build_dir` is None): its libFuzzer log
    and the wall time."""
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if build_dir is not None:
        env[ENV] = str(build_dir)
    start = time.monotonic()
    run = subprocess.run(
        [sys.executable, str(FUZZ / "fuzz_parser.py"), *args],
        capture_output=True, text=True, cwd=FUZZ, env=env,
    )  # fmt: skip
    if run.returncode != 0:
        start = run.stderr.find("=== Uncaught Python exception")  # a mismatch, or a crash:
        report = run.stderr[start:][:4000] if start >= 0 else run.stderr[-4000:]
        raise SystemExit(f"{' '.join(args)}:\n{report}")
    return run.stderr, time.monotonic() - start


def counters(log: str, stage: str) -> dict[str, str]:
    """The status line of a stage (INITED, DONE): runs, cov, ft, corp, exec/s."""
    line = re.search(rf"#(\d+)\s+{stage}\s+(.*)", log)
    if line is None:
        raise SystemExit(f"no {stage} line in:\n{log[-4000:]}")
    fields = dict(re.findall(r"([a-z/]+): (\S+)", line[2]))
    return {"runs": line[1], **fields}


def main(options: list[str]) -> None:
    instrumented = build("coverage")
    FINDINGS.mkdir(exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, build_dir in (("in-place (gcc)", None), ("build/fuzz/coverage", instrumented)):
            corpus = Path(tmp, name.split()[0].replace("/", "-"))
            corpus.mkdir()
            artifacts = f"-artifact_prefix={FINDINGS}/{corpus.name}-"  # a finding stops it
            log, seconds = fuzz(build_dir, str(corpus), "corpus", artifacts, *options)
            done = counters(log, "DONE")
            # the seeds and what the run kept, through the instrumented build, no mutation
            replay = counters(fuzz(instrumented, str(corpus), "corpus", "-runs=0")[0], "INITED")
            rows.append(
                f"| {name} | {seconds:.0f} s | {done['exec/s']} | {done['cov']} | {done['ft']} "
                f"| {done['corp'].split('/')[0]} | {replay['cov']} | {replay['ft']} |"
            )
    print(f"`{' '.join(options)}`\n")
    print("| harness on | wall | exec/s | cov | ft | corpus | replayed: cov | replayed: ft |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main(sys.argv[1:] or ["-seed=1", "-runs=150000"])
