"""Build the compiled core for fuzzing: clang with libFuzzer's coverage instrumentation
(`-fsanitize=fuzzer-no-link`), with or without AddressSanitizer and UBSan, into a directory of
its own so that the normal in-place build stays as it is.

    .venv/bin/python tests/fuzz/build_instrumented.py [coverage|asan]   # -> build/fuzz/VARIANT

`make fuzz-build` runs it (and installs clang first when it is missing); the harness loads the
result when FASTXMPP_FUZZ_BUILD names the directory (tests/fuzz/instrumented.py). libexpat is
the system library, not instrumented: coverage is that of fastxmpp's own C (see
docs/PARSER.md, "Fuzzing"). Rebuilds only what changed, like `build_ext`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build" / "fuzz"
# -fsanitize=fuzzer-no-link: the coverage counters, PC tables and comparison hooks libFuzzer
# feeds on, without linking libFuzzer itself (atheris brings it at run time).
VARIANTS = {
    # as fast as the plain build: the bounded run in the test suite
    "coverage": ["fuzzer-no-link"],
    # + AddressSanitizer and UBSan, whose runtime is in the library atheris preloads
    # (asan_with_fuzzer.so); about 5 times slower: `make fuzz`
    "asan": ["fuzzer-no-link", "address", "undefined"],
}


def flags(variant: str) -> tuple[str, str]:
    """CFLAGS and LDFLAGS of a variant."""
    sanitize = "-fsanitize=" + ",".join(VARIANTS[variant])
    # -fwrapv as CPython builds every extension (sysconfig's CFLAGS): setuptools >= 72 drops
    # those flags when CFLAGS is set, and without it UBSan reports Cython's `args + 0` on a
    # NULL vectorcall argument array, which is defined behaviour under -fwrapv.
    cflags = f"{sanitize} -fwrapv -fno-omit-frame-pointer -g -O1"
    if "undefined" in VARIANTS[variant]:
        cflags += " -fno-sanitize-recover=undefined"  # undefined behaviour is a crash
    return cflags, sanitize


def build(variant: str = "coverage", out: Path | None = None) -> Path:
    """Build fastxmpp's extensions into `out` (build/fuzz/VARIANT by default), check that
    each one carries the coverage instrumentation, and return the directory."""
    out = out or BUILD / variant
    clang = shutil.which("clang")
    if clang is None:
        raise SystemExit("clang is not installed: `make fuzz-deps` installs it (apt-get)")
    cflags, ldflags = flags(variant)
    stamp = out / "FLAGS"
    recorded = f"{clang}\n{cflags}\n{ldflags}\n"
    # -j: the extensions compile side by side (a third of the time on two cores).
    jobs = str(os.cpu_count() or 1)
    command = [sys.executable, "setup.py", "-q", "build_ext", "-j", jobs, "--build-lib", str(out)]
    command += ["--build-temp", str(out.parent / f"{out.name}-tmp")]
    if not stamp.exists() or stamp.read_text() != recorded:
        command.append("--force")  # other flags than last time: every object again
    env = dict(os.environ, CC=clang, CFLAGS=cflags, LDFLAGS=ldflags)
    env.pop("LDSHARED", None)  # setuptools derives it from CC
    subprocess.run(command, cwd=ROOT, env=env, check=True)
    stamp.write_text(recorded)
    modules = sorted((out / "fastxmpp").glob("_*.so"))
    if not modules:
        raise SystemExit(f"nothing was built in {out}")
    for module in modules:
        if not is_instrumented(module):
            raise SystemExit(f"{module} has no coverage counters: was it built by clang?")
    return out


def uses_asan(build_dir: str | os.PathLike[str]) -> bool:
    """Whether a build needs the AddressSanitizer runtime in the process."""
    return "address" in (Path(build_dir) / "FLAGS").read_text()


def elf_sections(path: Path) -> set[str]:
    """The section names of a 64-bit little-endian ELF file (enough for what we build)."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError(f"{path}: not a 64-bit little-endian ELF file")
    shoff = int.from_bytes(data[0x28:0x30], "little")
    shentsize = int.from_bytes(data[0x3A:0x3C], "little")
    shnum = int.from_bytes(data[0x3C:0x3E], "little")
    shstrndx = int.from_bytes(data[0x3E:0x40], "little")

    def header(i: int) -> tuple[int, int]:  # (name offset, file offset of the contents)
        base = shoff + i * shentsize
        return (int.from_bytes(data[base : base + 4], "little"),
                int.from_bytes(data[base + 0x18 : base + 0x20], "little"))  # fmt: skip

    strtab = header(shstrndx)[1]
    names = set()
    for i in range(shnum):
        start = strtab + header(i)[0]
        names.add(data[start : data.index(b"\0", start)].decode())
    return names


def is_instrumented(path: Path) -> bool:
    """Whether a module carries libFuzzer's inline 8-bit counters (clang puts them in the
    `__sancov_cntrs` section; gcc has no such section)."""
    return "__sancov_cntrs" in elf_sections(path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variant", choices=VARIANTS, nargs="?", default="coverage")
    parser.add_argument("--out", type=Path, help="default: build/fuzz/VARIANT")
    args = parser.parse_args()
    print(build(args.variant, args.out and args.out.resolve()))
