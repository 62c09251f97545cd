"""What users install: the wheel, repaired into a manylinux wheel, installed into a fresh
virtual environment without a compiler, and run from outside the source tree as a server
that real clients use (tests/wheel_check.py says how)."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest
from wheel_check import TAG, build_manylinux_wheel, check_wheel, source_modules


@pytest.mark.timeout(900)
def test_manylinux_wheel_installs_without_a_compiler_and_serves(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    wheel, show = build_manylinux_wheel(tmp_path_factory.mktemp("wheel"))
    # A binary wheel with a manylinux platform tag that pip on another glibc Linux accepts.
    assert TAG.search(wheel.name), wheel.name
    # glibc 2.17 or newer (manylinux2014): what libexpat needed of 2.36 is in the module
    # (fastxmpp/_expat_random.c), so Ubuntu 22.04 and RHEL 8 take it too.
    assert "manylinux_2_17_" in wheel.name, wheel.name
    assert re.search(r"cp3\d+-cp3\d+", wheel.name), wheel.name
    assert "is consistent with the following platform tag" in show, show
    # Only Python sources, the Cython interfaces (.pxd, and .pyi for type checkers) and the
    # compiled modules: no generated C.
    with zipfile.ZipFile(wheel) as archive:
        names = [name for name in archive.namelist() if name.startswith("fastxmpp/")]
    suffixes = {Path(name).suffix for name in names}
    assert suffixes == {"", ".py", ".pyx", ".pxd", ".pyi", ".so", ".typed"}, suffixes
    check_wheel(wheel, tmp_path_factory.mktemp("operator"))


def test_source_modules_cover_every_package() -> None:
    # The list the installed package is compared with: every subpackage, compiled modules too.
    names = source_modules()
    compiled = {"fastxmpp._parser", "fastxmpp._router", "fastxmpp._transport", "fastxmpp._archive"}
    assert compiled | {"fastxmpp.modules.muc.room"} <= names
    assert all(name == "fastxmpp" or name.startswith("fastxmpp.") for name in names)
    assert len(names) == len({Path(*name.split(".")) for name in names})
