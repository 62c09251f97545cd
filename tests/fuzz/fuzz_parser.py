"""Coverage-guided fuzzing of the compiled stream parser (atheris), with the differential
oracle of parser_oracle.py.

    .venv/bin/python tests/fuzz/fuzz_parser.py tests/fuzz/corpus -max_total_time=3600

(`make fuzz` runs it for an hour; CI runs a bounded minute through tests/test_fuzz.py). A
crash or a mismatch stops the run and writes the input to crash-*/; every finding becomes a
case in tests/test_parser.py.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from parser_oracle import check


def test_one_input(data: bytes) -> None:
    check(data)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
