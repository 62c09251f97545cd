"""Build the compiled core: the XML stream parser (over libexpat), the stanza router, and a
connection's per-read path with its TLS layer, and the archive writer's work per row."""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup


def parser_build() -> dict[str, list[str]]:
    """libexpat linked statically when its archive is there (Debian's libexpat1-dev has it):
    the wheel then carries its own expat and installs where no libexpat1-dev is, with the
    parser's behaviour fixed by what we tested (docs/PARSER.md says why expat). Its symbols
    stay private to the module (--exclude-libs), so they never clash with pyexpat's copy;
    _expat_random.c keeps it from needing a newer glibc than manylinux2014's.
    Without the archive, the shared system library."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    for directory in (f"/usr/lib/{multiarch}", "/usr/lib64", "/usr/lib", "/usr/local/lib"):
        archive = Path(directory) / "libexpat.a"
        if archive.is_file():
            return {
                "sources": ["fastxmpp/_parser.pyx", "fastxmpp/_expat_random.c"],
                "extra_objects": [str(archive)],
                "extra_link_args": ["-Wl,--exclude-libs,libexpat.a"],
            }
    return {"sources": ["fastxmpp/_parser.pyx"], "libraries": ["expat"]}


extensions = [
    Extension("fastxmpp._parser", **parser_build()),
    Extension("fastxmpp._router", ["fastxmpp/_router.pyx"]),
    Extension("fastxmpp._transport", ["fastxmpp/_transport.pyx"]),
    Extension("fastxmpp._archive", ["fastxmpp/_archive.pyx"]),
]

setup(
    # The extensions compile side by side (every wheel build, `make install` included).
    options={"build_ext": {"parallel": os.cpu_count() or 1}},
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    )
)
