"""Coverage-guided fuzzing of the compiled stream parser (atheris), with the differential
oracle of parser_oracle.py.

    make fuzz-build    # build/fuzz/asan: clang, -fsanitize=fuzzer-no-link,address,undefined
    cd tests/fuzz && FASTXMPP_FUZZ_BUILD=../../build/fuzz/asan \
        ../../.venv/bin/python fuzz_parser.py corpus -max_total_time=3600

(`make fuzz` does both, for an hour; the test suite runs 150 000 inputs on build/fuzz/coverage
through tests/test_fuzz.py). Without FASTXMPP_FUZZ_BUILD it fuzzes the in-place build, with
coverage of the Python oracle only. The dictionary xmpp.dict is used unless -dict=FILE is given
(`-dict=` alone: none).
A crash or a mismatch stops the run and writes the input to crash-*; every finding becomes a
case in tests/test_fuzz.py (FINDINGS) or tests/test_parser.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris
import instrumented

# FASTXMPP_FUZZ_BUILD=build/fuzz/coverage (or .../asan): the compiled parser built with
# libFuzzer's instrumentation (and ASan/UBSan), so that coverage feedback reaches inside it.
# Without it, the in-place build, and only the Python oracle's coverage guides the run.
instrumented.use_build_from_env()

with atheris.instrument_imports():
    from parser_oracle import check


def test_one_input(data: bytes) -> None:
    check(data)


if __name__ == "__main__":
    if "-dict=" in sys.argv:
        sys.argv.remove("-dict=")  # no dictionary at all
    elif not any(arg.startswith("-dict=") for arg in sys.argv):
        sys.argv.append(f"-dict={Path(__file__).with_name('xmpp.dict')}")
    atheris.Setup(sys.argv, test_one_input, **instrumented.setup_options())
    atheris.Fuzz()
