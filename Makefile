# The README's commands. Each target sets up what it needs on a fresh Debian machine: the
# system packages (python3-venv, python3-dev, a C compiler, the libexpat headers), a virtual
# environment in .venv with the versions pinned in constraints.txt, and fastxmpp installed
# into it the way users get it: built as a wheel and installed, not editable.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
CONSTRAINTS := constraints.txt
TOOLS_STAMP := $(VENV)/.tools-stamp
INSTALL_STAMP := $(VENV)/.wheel-installed-stamp
SOURCES := pyproject.toml setup.py fastxmpp/_expat_random.c $(shell find fastxmpp -name '*.py' -o -name '*.pyx' \
	-o -name '*.pxd' -o -name py.typed)
# -P: the current directory does not go first on sys.path, so the installed package is
# imported, never the source tree (tests/conftest.py refuses to run otherwise).
PYTEST := $(PY) -P -m pytest
REQUIREMENTS := build/requirements.txt
define LIST_REQUIREMENTS
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = project["optional-dependencies"]
print("\n".join(project["dependencies"] + extras["test"] + extras["dev"] + extras["bench"]))
endef
export LIST_REQUIREMENTS

# apt-get update once for all the blocks below that install Debian packages, not once per
# block: skipped when this machine updated its package lists in the last hour.
APT_STAMP := /tmp/.fastxmpp-apt-updated
APT_UPDATE := { [ -n "$$(find $(APT_STAMP) -mmin -60 2>/dev/null)" ] \
	|| { apt-get update -qq && touch $(APT_STAMP); }; }

# A recipe that fails leaves no half-written target behind (an empty requirements file once
# made the next run install nothing).
.DELETE_ON_ERROR:

.PHONY: serve test bench compare lint fuzz fuzz-build fuzz-deps wheel wheel-check lock clean \
	deps install

serve: $(INSTALL_STAMP)
	$(VENV)/bin/fastxmpp serve $(ARGS)

# --durations: the slowest tests are named in every CI log (the run should stay near 15 min).
# -n auto --dist loadfile: one pytest-xdist worker per core, each taking whole test files
# (a file's module-scoped server is started once, in one worker); serially the suite took
# twice as long, most of it waiting on sockets.
test: $(INSTALL_STAMP) | fuzz-deps interop-deps
	$(PYTEST) -q -n auto --dist loadfile --durations=25 $(ARGS)

bench: $(INSTALL_STAMP)
	$(PYTEST) benchmarks -q --benchmark-only $(ARGS)

# Side by side with Prosody and ejabberd (installs them with apt-get when missing).
compare: $(INSTALL_STAMP)
	$(PY) -P -m benchmarks.compare $(ARGS)

# The parser fuzzer for an hour (FUZZ_SECONDS), on the compiled core built with libFuzzer's
# coverage instrumentation + ASan/UBSan (FUZZ_VARIANT=coverage: without sanitizers, about 5
# times faster) into build/fuzz/; the test suite runs 150 000 inputs on the coverage variant.
FUZZ_VARIANT ?= asan

fuzz: fuzz-build
	mkdir -p var/fuzz-corpus
	cd tests/fuzz && FASTXMPP_FUZZ_BUILD=$(CURDIR)/build/fuzz/$(FUZZ_VARIANT) \
		../../$(PY) fuzz_parser.py ../../var/fuzz-corpus corpus \
		-max_total_time=$${FUZZ_SECONDS:-3600} -artifact_prefix=../../var/

fuzz-build: $(INSTALL_STAMP) | fuzz-deps
	$(PY) tests/fuzz/build_instrumented.py $(FUZZ_VARIANT)

fuzz-deps:
	@if ! command -v clang >/dev/null; then \
	  echo "installing clang (the fuzz builds of the compiled core, tests/fuzz/)"; \
	  $(APT_UPDATE) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang; \
	fi

# The independent clients of tests/test_interop_*.py, each pinned: go-sendxmpp, sendxmpp
# (Perl, Net::XMPP), libstrophe (libstrophe-dev: tests/interop/strophe/client.c is compiled
# at test time with cc and pkg-config), QXmpp (libqxmpp-dev: tests/interop/qxmpp/client.cpp
# is compiled at test time with g++ against it and Qt 5) and nbxmpp (Debian; nbxmpp, Gajim's
# library, runs under Debian's /usr/bin/python3 with python3-gi), Profanity (Debian; driven
# in tmux), libpurple (libpurple-dev: tests/interop/purple/client.c compiled at test time),
# mcabber (Debian, on loudmouth; driven in tmux), Poezio (Debian, on slixmpp; driven in tmux),
# xmpp.js and StanzaJS (npm ci from tests/interop/js/ and tests/interop/stanza/'s
# package-lock.json, under node) and aioxmpp in a venv
# of its own (it needs lxml 4, the server lxml 5: tests/interop/aioxmpp/requirements.txt);
# for tests/test_browser.py headless Chromium and its driver (Debian) and Converse.js (npm
# ci from tests/interop/web/package-lock.json).
.PHONY: interop-deps
interop-deps: | deps
	@if ! command -v go-sendxmpp >/dev/null || ! command -v npm >/dev/null \
	    || ! command -v sendxmpp >/dev/null || ! command -v cc >/dev/null \
	    || ! pkg-config --exists libstrophe 2>/dev/null \
	    || ! pkg-config --exists qxmpp Qt5Network Qt5Xml 2>/dev/null || ! command -v g++ >/dev/null \
	    || ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null \
	    || ! /usr/bin/python3 -c 'import gi, nbxmpp' 2>/dev/null \
	    || ! command -v profanity >/dev/null || ! command -v tmux >/dev/null; then \
	  echo "installing go-sendxmpp, sendxmpp, libstrophe-dev, libqxmpp-dev, pkg-config, gcc, g++," \
	    "nodejs, npm," \
	    "chromium, chromium-driver, python3-nbxmpp, python3-gi, profanity, tmux (the interop" \
	    "tests' clients)"; \
	  $(APT_UPDATE) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq go-sendxmpp \
	    sendxmpp libstrophe-dev libqxmpp-dev pkg-config gcc g++ libc6-dev profanity tmux \
	    chromium chromium-driver python3-nbxmpp python3-gi \
	    $$(command -v npm >/dev/null || echo nodejs npm); \
	fi
	@# libpurple (Pidgin's and Finch's library, its XMPP plugin prpl-jabber):
	@# tests/interop/purple/client.c is compiled at test time with cc and pkg-config
	@if ! pkg-config --exists purple 2>/dev/null || ! command -v cc >/dev/null; then \
	  echo "installing libpurple-dev, pkg-config, gcc (libpurple, Pidgin's XMPP library, for" \
	    "test_interop_purple.py)"; \
	  $(APT_UPDATE) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libpurple-dev \
	    pkg-config gcc libc6-dev; \
	fi
	@if ! command -v mcabber >/dev/null || ! command -v tmux >/dev/null; then \
	  echo "installing mcabber, tmux (test_interop_mcabber.py: a console client on loudmouth," \
	    "driven in tmux)"; \
	  $(APT_UPDATE) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mcabber tmux; \
	fi
	@if ! command -v poezio >/dev/null || ! command -v tmux >/dev/null; then \
	  echo "installing poezio, tmux (test_interop_poezio.py: a console client built around" \
	    "multi-user chat, on slixmpp, driven in tmux)"; \
	  $(APT_UPDATE) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq poezio tmux; \
	fi
	@# Gajim, the desktop client of test_interop_gajim.py, with its OMEMO plugin, run on a
	@# virtual screen (Xvfb) with a session bus of its own (dbus-daemon), driven with gdbus
	@# and, in its windows, xdotool.
	@if ! command -v gajim >/dev/null || [ ! -d /usr/share/gajim/plugins/omemo ] \
	    || ! command -v Xvfb >/dev/null || ! command -v dbus-daemon >/dev/null \
	    || ! command -v gdbus >/dev/null || ! command -v xdotool >/dev/null; then \
	  echo "installing gajim, gajim-omemo, xvfb, dbus-daemon, libglib2.0-bin, xdotool (Gajim" \
	    "on a virtual screen, driven over D-Bus and with xdotool: test_interop_gajim.py)"; \
	  $(APT_UPDATE) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gajim \
	    gajim-omemo xvfb dbus-daemon libglib2.0-bin xdotool; \
	fi
	@# Prosody, the other server of test_interop_prosody_s2s.py (run in a network namespace:
	@# iproute2 brings its loopback up), and with ejabberd the servers whose exports
	@# test_migration.py imports; policy-rc.d keeps the packages from starting system-wide
	@# servers on ports 5222/5269 as they install (invoke-rc.d asks it first).
	@if ! command -v prosody >/dev/null || ! command -v ip >/dev/null \
	    || ! command -v ejabberdctl >/dev/null; then \
	  echo "installing prosody, ejabberd, iproute2 (federation and migration tests)"; \
	  created=; if [ ! -e /usr/sbin/policy-rc.d ]; then \
	    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; created=1; \
	  fi; \
	  $(APT_UPDATE) && DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq prosody ejabberd iproute2; \
	  status=$$?; [ -z "$$created" ] || rm -f /usr/sbin/policy-rc.d; exit $$status; \
	fi
	@# Dino, the GTK 4 desktop client of test_interop_dino.py: on a virtual display (xvfb) with
	@# a session bus of its own (dbus-daemon, asked with gdbus), typed into with xdotool.
	@if ! command -v dino-im >/dev/null || ! command -v Xvfb >/dev/null \
	    || ! command -v xdotool >/dev/null || ! command -v dbus-daemon >/dev/null \
	    || ! command -v gdbus >/dev/null; then \
	  echo "installing dino-im, xvfb, xdotool, dbus-daemon, libglib2.0-bin (the Dino interop" \
	    "test's client)"; \
	  $(APT_UPDATE) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dino-im xvfb \
	    xdotool dbus-daemon libglib2.0-bin; \
	fi
	@# Psi, the Qt 5 desktop client of test_interop_psi.py (on its own library, Iris): on a
	@# virtual display (xvfb) with a session bus of its own (dbus-daemon, its D-Bus methods
	@# called with gdbus), typed into with xdotool.
	@if ! command -v psi >/dev/null || ! command -v Xvfb >/dev/null \
	    || ! command -v xdotool >/dev/null || ! command -v dbus-daemon >/dev/null \
	    || ! command -v gdbus >/dev/null; then \
	  echo "installing psi, xvfb, xdotool, dbus-daemon, libglib2.0-bin (the Psi interop" \
	    "test's client)"; \
	  $(APT_UPDATE) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq psi xvfb \
	    xdotool dbus-daemon libglib2.0-bin; \
	fi
	@if [ ! tests/interop/js/node_modules/.package-lock.json -nt tests/interop/js/package-lock.json ]; then \
	  cd tests/interop/js && npm ci --no-audit --no-fund --loglevel=error; \
	fi
	@if [ ! tests/interop/web/node_modules/.package-lock.json -nt tests/interop/web/package-lock.json ]; then \
	  cd tests/interop/web && npm ci --no-audit --no-fund --loglevel=error; \
	fi
	@if [ ! tests/interop/stanza/node_modules/.package-lock.json -nt tests/interop/stanza/package-lock.json ]; then \
	  cd tests/interop/stanza && npm ci --no-audit --no-fund --loglevel=error; \
	fi
	@if [ ! .venv-aioxmpp/.installed-stamp -nt tests/interop/aioxmpp/requirements.txt ]; then \
	  $(PYTHON) -m venv .venv-aioxmpp && \
	  .venv-aioxmpp/bin/python -m pip install -q -r tests/interop/aioxmpp/requirements.txt && \
	  touch .venv-aioxmpp/.installed-stamp; \
	fi

lint: $(INSTALL_STAMP)
	$(VENV)/bin/ruff check fastxmpp tests benchmarks
	$(VENV)/bin/ruff format --check fastxmpp tests benchmarks
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" cython-lint fastxmpp/*.pyx fastxmpp/*.pxd
	$(VENV)/bin/mypy fastxmpp

# A manylinux binary wheel in dist/ (libexpat linked in, see setup.py): `auditwheel repair`
# checks what the compiled modules need of the system and sets the manylinux tag, so that
# pip installs it on any glibc 2.17+ Linux without a compiler or libexpat's headers (README,
# "Install with pip").
wheel: $(TOOLS_STAMP)
	rm -rf build/wheel-raw dist/fastxmpp-*.whl
	@# an sdist first, the wheel built from it: nothing an earlier build left in build/ gets in
	$(PY) -m build --no-isolation --outdir build/wheel-raw .
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m auditwheel repair --wheel-dir dist build/wheel-raw/fastxmpp-*.whl
	$(PY) -m auditwheel show dist/fastxmpp-*.whl

# Installs dist/'s wheel into a fresh virtual environment with build tools out of reach and
# serves a client from it (tests/wheel_check.py; the test suite runs the same check).
wheel-check: wheel
	$(PY) tests/wheel_check.py dist/fastxmpp-*.whl

# The system packages a bare Debian 12 lacks, installed only when missing.
deps:
	@missing=""; \
	command -v $(PYTHON) >/dev/null || missing="$$missing python3"; \
	$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	$(PYTHON) -c 'import os, sys, sysconfig; \
	  sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
	  || missing="$$missing python3-dev"; \
	command -v cc >/dev/null || missing="$$missing gcc libc6-dev"; \
	[ -f /usr/include/expat.h ] || missing="$$missing libexpat1-dev"; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing with apt-get"; \
	  $(APT_UPDATE) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# The virtual environment with the pinned tools and every dependency of the package, its
# tests and its benchmarks (constraints.txt: exact versions, as CI had them).
$(TOOLS_STAMP): $(REQUIREMENTS) $(CONSTRAINTS) | deps
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c $(CONSTRAINTS) pip setuptools wheel Cython
	$(PIP) install -q -c $(CONSTRAINTS) -r $(REQUIREMENTS)
	@# The checkout at the END of sys.path (a .pth line goes after site-packages): the
	@# `benchmarks` package is importable, while `fastxmpp` is the installed one.
	echo "$(CURDIR)" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/fastxmpp-checkout.pth"
	touch $@

# What pyproject.toml asks for (runtime, test, dev and bench extras), as a requirements file:
# the dependencies go into the environment without building fastxmpp itself.
$(REQUIREMENTS): pyproject.toml | deps
	mkdir -p $(dir $@)
	$(PYTHON) -c "$$LIST_REQUIREMENTS" > $@

# fastxmpp itself, installed from a wheel built from the working tree (not editable), again
# whenever a source changes. The Python files of the last build go first, so that a file
# deleted from the tree does not linger in the wheel; compiled modules are reused when their
# sources did not change.
$(INSTALL_STAMP): $(TOOLS_STAMP) $(SOURCES)
	find build -path 'build/lib.*' -type f ! -name '*.so' -delete 2>/dev/null || true
	$(PIP) install -q --no-deps --no-build-isolation --force-reinstall .
	touch $@

install: $(INSTALL_STAMP)

# Regenerate constraints.txt from the newest releases that pyproject.toml admits.
lock: $(REQUIREMENTS) | deps
	rm -rf build/lock-venv
	$(PYTHON) -m venv build/lock-venv
	build/lock-venv/bin/pip install -q --upgrade pip setuptools wheel Cython
	build/lock-venv/bin/pip install -q -r $(REQUIREMENTS)
	{ echo "# Exact versions for the build, the tests and the benchmarks (make lock writes this)."; \
	  echo "# Library users get the lower bounds in pyproject.toml instead."; \
	  build/lock-venv/bin/pip freeze --all --exclude fastxmpp; } > $(CONSTRAINTS)
	rm -rf build/lock-venv

clean:
	rm -rf build dist *.egg-info fastxmpp/*.c fastxmpp/*.so $(INSTALL_STAMP) $(TOOLS_STAMP)
