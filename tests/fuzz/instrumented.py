"""Fuzz an instrumented build of the compiled core (tests/fuzz/build_instrumented.py)
instead of the in-place one, so that libFuzzer's coverage feedback reaches inside the
parser's C and not only the Python oracle.

`use_build(path)`, called before anything imports `fastxmpp._parser`:

1. puts libFuzzer in the process before the modules load, since their coverage hooks are
   resolved then (a module built with -fsanitize=fuzzer-no-link does not load without it):
   - coverage-only build: atheris' own libFuzzer (its `core_with_libfuzzer`), loaded with
     RTLD_GLOBAL; the harness then tells `atheris.Setup` to use it (`internal_libfuzzer`);
   - ASan/UBSan build: the process starts again with atheris' `asan_with_fuzzer.so`
     preloaded, as atheris advises for sanitized extensions (libFuzzer linked into the
     sanitizer runtime, so that coverage goes to libFuzzer and not to the sanitizer's weak
     stubs). Python then allocates with malloc, so that AddressSanitizer sees the bounds of
     every bytes object the parser reads;
2. loads the build's `fastxmpp._parser` and `fastxmpp._router` as fastxmpp's own; the
   pure-Python rest of the package stays the working tree's.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

ENV = "FASTXMPP_FUZZ_BUILD"
MODULES = ("_parser", "_router")  # _router cimports _parser's Stanza: _parser first
# detect_leaks=0: CPython keeps some allocations for its lifetime (atheris' advice).
ASAN_OPTIONS = "detect_leaks=0"
_RESTARTED = "_FASTXMPP_FUZZ_RESTARTED"
# Which libFuzzer the instrumented modules were bound to (atheris' built-in one or the
# preloaded one); None: no instrumented build, atheris chooses.
_internal_libfuzzer: bool | None = None


def asan_runtime() -> Path:
    import atheris

    return Path(atheris.path()) / "asan_with_fuzzer.so"


def _asan_runtime_loaded() -> bool:
    process = ctypes.CDLL(None)
    return hasattr(process, "__asan_init") and hasattr(process, "LLVMFuzzerRunDriver")


def preload_asan_runtime() -> None:
    """Start this process again with the sanitizer + libFuzzer runtime preloaded, unless it
    already is."""
    if _asan_runtime_loaded():
        return
    if os.environ.get(_RESTARTED):
        raise SystemExit(f"{asan_runtime()} was preloaded but its symbols are not there")
    env = dict(os.environ, PYTHONMALLOC="malloc")
    env[_RESTARTED] = "1"
    env["LD_PRELOAD"] = f"{asan_runtime()} {os.environ.get('LD_PRELOAD', '')}".strip()
    env["ASAN_OPTIONS"] = ":".join(filter(None, [ASAN_OPTIONS, os.environ.get("ASAN_OPTIONS")]))
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def load_atheris_libfuzzer() -> None:
    """atheris' built-in libFuzzer, with its symbols visible to the modules loaded next."""
    flags = sys.getdlopenflags()
    sys.setdlopenflags(flags | os.RTLD_GLOBAL)
    try:
        import atheris.core_with_libfuzzer  # noqa: F401
    finally:
        sys.setdlopenflags(flags)


def use_build(build: str | os.PathLike[str]) -> list[ModuleType]:
    """Load the instrumented extensions from `build` as fastxmpp's own."""
    from build_instrumented import is_instrumented, uses_asan

    global _internal_libfuzzer
    if uses_asan(build):
        preload_asan_runtime()
        _internal_libfuzzer = False
    else:
        load_atheris_libfuzzer()
        _internal_libfuzzer = True
    import fastxmpp

    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    loaded = []
    for name in MODULES:
        qualified = f"fastxmpp.{name}"
        if qualified in sys.modules:
            raise RuntimeError(f"{qualified} was imported before the instrumented build")
        path = Path(build, "fastxmpp", name + suffix)
        if not path.exists() or not is_instrumented(path):
            raise SystemExit(f"no instrumented {path}: run `make fuzz-build`")
        spec = importlib.util.spec_from_file_location(qualified, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[qualified] = module
        spec.loader.exec_module(module)
        setattr(fastxmpp, name, module)
        loaded.append(module)
        print(f"INFO: instrumented {qualified} from {path}", file=sys.stderr)
    return loaded


def setup_options() -> dict[str, bool]:
    """Keyword arguments for atheris.Setup: the libFuzzer the modules were bound to. (atheris
    takes an explicit None for "preloaded", so the argument is given only when known.)"""
    if _internal_libfuzzer is None:
        return {}
    return {"internal_libfuzzer": _internal_libfuzzer}


def use_build_from_env() -> None:
    """FASTXMPP_FUZZ_BUILD=build/fuzz/coverage (or .../asan): `use_build` on it."""
    build = os.environ.get(ENV)
    if build:
        use_build(build)
