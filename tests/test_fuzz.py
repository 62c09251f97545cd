"""The parser fuzz harness (tests/fuzz/): its findings as regression cases, and a bounded
coverage-guided run with the differential oracle (150 000 inputs from a fixed seed) on the
compiled core built with libFuzzer's instrumentation (build/fuzz/coverage); `make fuzz` runs
longer, with random seeds and ASan/UBSan."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Any

import pytest

FUZZ = Path(__file__).resolve().parent / "fuzz"
ADDR_NO_RANDOMIZE = 0x0040000  # linux/personality.h
sys.path.insert(0, str(FUZZ))

from build_instrumented import build, is_instrumented  # noqa: E402
from instrumented import ENV  # noqa: E402
from parser_oracle import FOOTER, HEADER, Mismatch, check  # noqa: E402

# Every input the fuzzer ever reported, kept so that the oracle's verdict on it stays fixed.
FINDINGS = [
    # An unclosed CDATA section swallows the closing tag: a stream parser waits for more
    # where a document parser sees a premature end (oracle rule, not a parser bug).
    b"<stream:features/><message><![CDATA[x<y]]turmessage>",
    # A namespace name that is not a URI: libxml2 refuses, XML + Namespaces do not require it.
    b"<iq type='set' id='r1'><query xmlns=':ajrbebiq:roster'><item jid='a@b'/></query></iq>",
    b"<iq type='set' id='r1'><query xmlns='jabber=iq:roster'><group>G</group></query></iq>",
    # U+01CC in an element name: a name character in XML 1.0 5th edition (libxml2), not in
    # the 4th (expat): refused by fastxmpp, a documented difference.
    "UUUU<stree/>////<str/><U\u01ccUtmQ/><mUe/>U".encode(),
    # U+FEFF as a processing instruction's target, U+1F600 in a namespace prefix: the same
    # difference (name characters of the 5th edition only).
    b"<?\xef\xbb\xbf?>>",
    "iqresnc><a xmlns:CCCBCCC='u' xmlns:C\U0001f600CCC='u'/>r%nce>".encode(),
    # A namespace name with "}": lxml lists the attribute but cannot look it up by its
    # "{namespace}name" key (the oracle broke, not the parser). Once the oracle compared
    # with_attrs(): the rebuilt start tag split "{}r@n:x}a" at the first "}" and wrote the
    # attribute as "x:r@n:x}a", not XML (fixed: a local name never holds "}").
    b"<x:data xmlns:x='}r@n:x' x:a='4'/>",
    # A stanza using the stream's own prefix must be written anew for another stream
    # (needs_reserialize); lxml's default ASCII output turned the non-ASCII element name
    # into broken markup: with_attrs() now writes UTF-8.
    "<presence><stream:feature\u00e9/></presence>".encode(),
    # The stream ends inside the data: what follows is never read (oracle rule, not a parser
    # bug). An unterminated literal after the end: libxml2 refuses, fastxmpp waits ...
    b"M'0</stream:stream>'_",
    # ... and a second closing tag: expat refuses, libxml2, after its namespace error, does
    # not report content after the root.
    b"<presence><status></status><c xmlns='\t'/></presence></stream:stream>",
    # A stanza that undeclares the default namespace: lxml lists xmlns='' as None: '' in the
    # element's nsmap, the oracle read it as no default namespace (the oracle broke, not the
    # parser; found by a CI run of test_bounded_fuzz_run).
    b"<i xmlns='' xquery=''/>",
]


@pytest.mark.parametrize("data", FINDINGS + [p.read_bytes() for p in (FUZZ / "corpus").iterdir()])
def test_oracle_agrees(data: bytes) -> None:
    check(data)


def test_oracle_catches_a_mis_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    # The oracle must be able to fail: a parser that drops an attribute is caught.
    import parser_oracle

    real = parser_oracle._describe

    def lossy(st):  # type: ignore[no-untyped-def]
        described = list(real(st))
        described[2] = {k: v for k, v in described[2].items() if k != "id"}  # attrs
        return tuple(described)

    monkeypatch.setattr(parser_oracle, "_describe", lossy)
    with pytest.raises(Mismatch, match="stanza differs"):
        check(b"<message id='x'/>")
    assert HEADER and FOOTER


def test_oracle_catches_a_wrong_with_attrs(monkeypatch: pytest.MonkeyPatch) -> None:
    # ... and so is a with_attrs() that forgets to remove an attribute.
    import parser_oracle

    class Forgetful:
        def __init__(self, st: Any) -> None:
            self.st = st

        def __getattr__(self, name: str) -> Any:
            return getattr(self.st, name)

        def with_attrs(self, changes: dict[str, Any]) -> bytes:
            return bytes(self.st.with_attrs({k: v for k, v in changes.items() if v is not None}))

    real = parser_oracle._ours

    def forgetful(chunks: list[bytes]) -> tuple[list[Any], str | None]:
        stanzas, error = real(chunks)
        return [Forgetful(st) for st in stanzas], error

    monkeypatch.setattr(parser_oracle, "_ours", forgetful)
    with pytest.raises(Mismatch, match="with_attrs"):
        check(b"<message to='romeo@localhost' id='x'/>")


def _without_address_randomization() -> None:
    """In the child, before exec: personality(2) ADDR_NO_RANDOMIZE (what setarch -R does)."""
    libc = ctypes.CDLL(None, use_errno=True)
    current = libc.personality(0xFFFFFFFF)
    if current == -1 or libc.personality(current | ADDR_NO_RANDOMIZE) == -1:
        raise OSError(ctypes.get_errno(), "personality(ADDR_NO_RANDOMIZE) failed")


def _fuzz(build: Path | None, *args: str, timeout: float = 300) -> str:
    """Run the harness (on the in-place build when `build` is None); its libFuzzer log."""
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if build is not None:
        env[ENV] = str(build)
    # The same inputs on every run (with -seed): libFuzzer also learns from the values the
    # harness compares, which include addresses and string hashes, so both are fixed.
    env["PYTHONHASHSEED"] = "0"
    run = subprocess.run(
        [sys.executable, str(FUZZ / "fuzz_parser.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=FUZZ,
        env=env,
        preexec_fn=_without_address_randomization,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return run.stderr


def _coverage(log: str, stage: str) -> tuple[int, int]:
    """libFuzzer's `cov:` (edges) and `ft:` (features) at a stage (INITED, DONE)."""
    found = re.search(rf"#\d+\s+{stage}\s+cov: (\d+) ft: (\d+)", log)
    assert found, log[-4000:]
    return int(found[1]), int(found[2])


def _build(variant: str) -> Path:
    if shutil.which("clang") is None:
        message = "clang is missing (`make fuzz-deps` installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)  # `make test` installs it: CI must have it
        pytest.skip(message)
    return build(variant)


@pytest.fixture(scope="module")
def coverage_build() -> Path:
    return _build("coverage")


def test_the_instrumented_build_guides_the_fuzzer_inside_the_parser(coverage_build: Path) -> None:
    # The same replay of the seed corpus: on the in-place build libFuzzer sees only the
    # Python oracle's edges; on the instrumented one, those of the parser's C as well.
    parser = coverage_build / "fastxmpp" / f"_parser{EXTENSION_SUFFIXES[0]}"
    assert is_instrumented(parser)
    plain = _coverage(_fuzz(None, "corpus", "-runs=0"), "INITED")
    log = _fuzz(coverage_build, "corpus", "-runs=0")
    assert f"INFO: instrumented fastxmpp._parser from {parser}" in log
    instrumented = _coverage(log, "INITED")
    assert instrumented[0] > plain[0] + 300, (plain, instrumented)


def test_bounded_fuzz_run(tmp_path: Path, coverage_build: Path) -> None:
    log = _fuzz(
        coverage_build,
        str(tmp_path),  # new inputs go here, the committed seed corpus stays as it is
        str(FUZZ / "corpus"),
        # A fixed seed and run count: the same inputs on every machine, so CI never
        # fails on a new random finding (`make fuzz` explores with random seeds).
        "-seed=1",
        "-runs=150000",
        "-max_total_time=240",
        f"-artifact_prefix={tmp_path}/",
    )
    assert "Done" in log
    assert _coverage(log, "DONE")[0] > 400, log[-2000:]


def test_sanitized_build_runs(tmp_path: Path) -> None:
    # `make fuzz`'s build: ASan and UBSan in the compiled core, their runtime (with
    # libFuzzer) preloaded by the harness. A short run, that it keeps working.
    log = _fuzz(
        _build("asan"),
        str(tmp_path),
        str(FUZZ / "corpus"),
        "-seed=1",
        "-runs=3000",
        f"-artifact_prefix={tmp_path}/",
    )
    assert "Using preloaded libfuzzer" in log
    assert _coverage(log, "DONE")[0] > 400, log[-2000:]
