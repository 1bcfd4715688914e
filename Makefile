# Veil — one Makefile for setup, tests, demo and benchmarks.
# `make test` and `make demo` work on a fresh clone: they create .venv first.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
# A pinned torch, installed first: an unpinned torch (or one pulled in as a dependency of the
# packages below) is the multi-GB CUDA build. Where PyPI's torch is the CUDA build, use PyTorch's
# CPU wheel index: make TORCH_INDEX=--index-url=https://download.pytorch.org/whl/cpu
TORCH  := torch==2.13.0
TORCH_INDEX ?=
# The five distributions, editable, into one `veil` namespace (dependencies before dependents).
DISTS  := protos sdk privacy watermark enclave

# postgres: Debian's PostgreSQL server, which the replica tests start (tests/postgres_support.py)
.PHONY: setup postgres test test-node soak fuzz demo bench bench-privacy bench-watermark protos lint typecheck check clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(addsuffix /pyproject.toml,$(DISTS))
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade 'pip>=25.1'
	$(PIP) install -q $(TORCH_INDEX) $(TORCH)
	$(PIP) install -q --group dev $(addprefix -e ./,$(DISTS))
	$(PY) scripts/fetch_helm.py
	touch $(STAMP)

# Installed from Debian only when missing (the tests run its initdb/postgres as an unprivileged
# user on a free loopback port; docs/SCALE-OUT.md).
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql)

test: $(STAMP) postgres test-node
	$(PY) -m pytest -q

# The Node.js client (node/): install from the lock file, type-check and build, run its tests
# (unit, protocol vectors, and end to end against a real enclave started with this venv's Python).
test-node: $(STAMP)
	cd node && npm ci --no-audit --no-fund --loglevel=error && VEIL_PYTHON=$(abspath $(PY)) npm test

# Reliability suite (docs/RELIABILITY.md): real servers on loopback under load, hostile models,
# idle streams, a full disk, SIGKILL; 3-4 minutes on two cores. Needs root for its tmpfs.
soak: $(STAMP)
	$(PY) -m pytest -q -m soak tests/soak

# Property and fuzz tests with fresh random examples (make test replays fixed ones).
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=explore $(PY) -m pytest -q -p no:cacheprovider \
		$$(grep -l '^from hypothesis' tests/test_*.py)

demo: $(STAMP)
	$(PY) -m veil.enclave.demo

# BENCH_FLAGS=--quick: fewer clients and shorter runs (bench/bench_inference.py --help)
bench: $(STAMP)
	$(PY) bench/bench_inference.py $(BENCH_FLAGS)
	$(PY) bench/bench_load.py $(BENCH_FLAGS)
	$(PY) bench/bench_audit.py
	$(PY) -W ignore bench/bench_privacy.py --modes

bench-privacy: $(STAMP)
	$(PY) -W ignore bench/bench_privacy.py --modes --accuracy

bench-watermark: $(STAMP)
	$(PY) bench/bench_watermark.py

protos: $(STAMP)
	$(PY) scripts/gen_protos.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff format --check sdk enclave privacy watermark protos tests bench scripts

typecheck: $(STAMP)
	$(VENV)/bin/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
