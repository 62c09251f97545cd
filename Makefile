# The README's commands. Each target sets up what it needs: system headers for libexpat,
# a virtual environment in .venv, the package with its compiled core.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
EXT_SOURCES := $(wildcard fastxmpp/*.pyx fastxmpp/*.pxd)
BUILD_STAMP := $(VENV)/.built-stamp

.PHONY: serve test bench compare lint fuzz fuzz-build fuzz-deps wheel clean deps

serve: $(BUILD_STAMP)
	$(VENV)/bin/fastxmpp serve $(ARGS)

test: $(BUILD_STAMP) | fuzz-deps interop-deps
	$(PY) -m pytest -q $(ARGS)

bench: $(BUILD_STAMP)
	$(PY) -m pytest benchmarks -q --benchmark-only $(ARGS)

# Side by side with Prosody and ejabberd (installs them with apt-get when missing).
compare: $(BUILD_STAMP)
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) -m benchmarks.compare $(ARGS)

# The parser fuzzer for an hour (FUZZ_SECONDS), on the compiled core built with libFuzzer's
# coverage instrumentation + ASan/UBSan (FUZZ_VARIANT=coverage: without sanitizers, about 5
# times faster) into build/fuzz/; the test suite runs 150 000 inputs on the coverage variant.
FUZZ_VARIANT ?= asan

fuzz: fuzz-build
	mkdir -p var/fuzz-corpus
	cd tests/fuzz && FASTXMPP_FUZZ_BUILD=$(CURDIR)/build/fuzz/$(FUZZ_VARIANT) \
		../../$(PY) fuzz_parser.py ../../var/fuzz-corpus corpus \
		-max_total_time=$${FUZZ_SECONDS:-3600} -artifact_prefix=../../var/

fuzz-build: $(BUILD_STAMP) | fuzz-deps
	$(PY) tests/fuzz/build_instrumented.py $(FUZZ_VARIANT)

fuzz-deps:
	@if ! command -v clang >/dev/null; then \
	  echo "installing clang (the fuzz builds of the compiled core, tests/fuzz/)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang; \
	fi

# The independent clients of tests/test_interop_*.py, each pinned: go-sendxmpp (Debian),
# xmpp.js (npm ci from tests/interop/js/package-lock.json, under node) and aioxmpp in a venv
# of its own (it needs lxml 4, the server lxml 5: tests/interop/aioxmpp/requirements.txt).
.PHONY: interop-deps
interop-deps:
	@if ! command -v go-sendxmpp >/dev/null || ! command -v npm >/dev/null; then \
	  echo "installing go-sendxmpp, nodejs, npm (the interop tests' clients)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq go-sendxmpp \
	    $$(command -v npm >/dev/null || echo nodejs npm); \
	fi
	@if [ ! tests/interop/js/node_modules/.package-lock.json -nt tests/interop/js/package-lock.json ]; then \
	  cd tests/interop/js && npm ci --no-audit --no-fund --loglevel=error; \
	fi
	@if [ ! .venv-aioxmpp/.installed-stamp -nt tests/interop/aioxmpp/requirements.txt ]; then \
	  $(PYTHON) -m venv .venv-aioxmpp && \
	  .venv-aioxmpp/bin/python -m pip install -q -r tests/interop/aioxmpp/requirements.txt && \
	  touch .venv-aioxmpp/.installed-stamp; \
	fi

lint: $(BUILD_STAMP)
	$(VENV)/bin/ruff check fastxmpp tests benchmarks
	$(VENV)/bin/ruff format --check fastxmpp tests benchmarks
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" cython-lint fastxmpp/*.pyx fastxmpp/*.pxd
	$(VENV)/bin/mypy fastxmpp

wheel: $(BUILD_STAMP)
	$(PY) -m build --wheel

deps:
	@if [ ! -f /usr/include/expat.h ]; then \
	  echo "installing libexpat1-dev (the compiled parser links libexpat)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libexpat1-dev; \
	fi

$(STAMP): pyproject.toml setup.py | deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,dev]"
	touch $@

$(BUILD_STAMP): $(STAMP) $(EXT_SOURCES)
	$(PY) setup.py -q build_ext --inplace
	touch $@

clean:
	rm -rf build dist *.egg-info fastxmpp/*.c fastxmpp/*.so $(BUILD_STAMP)
