"""Build the compiled core: the XML stream parser (over libexpat) and the stanza router."""

from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    # libexpat is the system library (Debian: libexpat1-dev); see docs/PARSER.md for why
    # expat and not libxml2.
    Extension("fastxmpp._parser", ["fastxmpp/_parser.pyx"], libraries=["expat"]),
    Extension("fastxmpp._router", ["fastxmpp/_router.pyx"]),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    )
)
