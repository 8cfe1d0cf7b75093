# The two commands of the README: `make demo` and `make test`. Each does all set-up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
JOBS ?= $(shell nproc)
B ?=
ARGS ?=

.PHONY: all deps venv install demo test lint stubs test-cpp test-cpp-tsan test-python bench clean

all: install

deps:
	@bash scripts/install-deps.sh

$(VENV)/.ready: requirements-dev.txt
	@$(MAKE) --no-print-directory deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

venv: $(VENV)/.ready

# Built without isolation into build/<wheel tag>, so a second `make` only recompiles what changed.
install: venv
	$(PY) -m pip install -q --no-build-isolation --no-deps .

demo: install
	$(PY) -m isthmus.demo

test: install lint test-cpp test-cpp-tsan fuzz-smoke test-python

# ruff over the Python tree and mypy --strict over python/isthmus (settings in pyproject.toml).
lint: venv
	$(VENV)/bin/ruff check
	$(VENV)/bin/mypy

# Regenerates python/isthmus/_core.pyi from the freshly built extension; commit the result.
stubs: install
	$(PY) scripts/stubs.py

# The GoogleTest suite, built and run under AddressSanitizer + UBSan.
test-cpp: deps venv
	PATH=$(abspath $(VENV))/bin:$$PATH cmake --preset asan -DPython_EXECUTABLE=$(abspath $(PY)) >/dev/null
	PATH=$(abspath $(VENV))/bin:$$PATH cmake --build --preset asan -j $(JOBS)
	PATH=$(abspath $(VENV))/bin:$$PATH ctest --preset asan -j $(JOBS)

# The same suite under ThreadSanitizer (its own build: TSan and ASan cannot share objects).
test-cpp-tsan: deps venv
	PATH=$(abspath $(VENV))/bin:$$PATH cmake --preset tsan >/dev/null
	PATH=$(abspath $(VENV))/bin:$$PATH cmake --build --preset tsan -j $(JOBS)
	PATH=$(abspath $(VENV))/bin:$$PATH ctest --preset tsan -j $(JOBS)

test-python: install
	$(PY) -m pytest

# The libFuzzer targets of tests/fuzz (clang, ASan + UBSan): a short seeded run of each, from its
# committed corpus. `make fuzz` (scripts/fuzz.sh) runs each for 1,000,000 executions.
.PHONY: fuzz-smoke fuzz
fuzz-smoke: deps
	JOBS=$(JOBS) bash scripts/fuzz.sh 20000

fuzz: deps
	JOBS=$(JOBS) bash scripts/fuzz.sh

# `make bench` runs every benchmark; `make bench B=http` runs one; ARGS go to it
# (`make bench B=pipeline ARGS=--profile`).
bench: install
	@bash scripts/install-deps.sh bench
	$(PY) -m pip install -q -r requirements-bench.txt
	$(PY) bench/run.py $(B) $(ARGS)

clean:
	rm -rf build
