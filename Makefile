# pushlake: `make run` starts the service, `make test` runs the suite. Both create .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= data
PORT ?= 8080

.PHONY: run test test-services bench bench-quick bench-tools profile-tools install clean

PIP := $(BIN)/pip --quiet --disable-pip-version-check

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(PIP) install --upgrade pip

# `make run` needs the package alone; `make install` (and `make test`) add the test extras
$(VENV)/.runtime: pyproject.toml setup.py lake/_routes.c | $(BIN)/python
	$(PIP) install -e .
	touch $@

$(VENV)/.installed: pyproject.toml setup.py lake/_routes.c | $(BIN)/python
	$(PIP) install -e '.[test]'
	touch $@ $(VENV)/.runtime

install: $(VENV)/.installed

run: $(VENV)/.runtime
	$(BIN)/pushlake serve --data $(DATA) --port $(PORT)

# two pytest-xdist workers: most tests wait on subprocesses, fsyncs and servers, so two at once
# halve the suite's time on 2 cores (583 s -> 316 s); TEST_WORKERS=0 runs it in one process
TEST_WORKERS ?= 2
test: install test-services
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

# the PostgreSQL server of tests/services.py, from Debian, only when no server binary is found
# (PATH or /usr/lib/postgresql/*/bin). Without root/apt: a message, no failure; the fixtures then
# fail under CI=true and skip otherwise. moto_server (S3) comes with the test extra.
# Debian's chromium too (tests/test_status_page.py drives it with Playwright), same rules.
test-services:
	@if command -v chromium >/dev/null || [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "test-services: installing Debian's chromium"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
	    || echo "test-services: apt-get install chromium failed; the status page's browser test will fail under CI=true, skip otherwise"; \
	else \
	  echo "test-services: no chromium found and apt-get needs root; install Debian's chromium" \
	       "(apt-get install chromium). The status page's browser test will fail under CI=true, skip otherwise"; \
	fi
	@if command -v initdb >/dev/null && (command -v pg_ctl >/dev/null || command -v postgres >/dev/null); then :; \
	elif ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "test-services: installing Debian's postgresql"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) \
	    || echo "test-services: apt-get install postgresql failed; PostgreSQL tests will fail under CI=true, skip otherwise"; \
	else \
	  echo "test-services: no PostgreSQL server found and apt-get needs root; install Debian's postgresql" \
	       "(apt-get install postgresql). PostgreSQL tests will fail under CI=true, skip otherwise"; \
	fi

# the benchmarks, one at a time, then the table in bench/README.md (see bench/README.md)
bench: install bench-tools
	$(BIN)/python -m bench.run_all

# a smoke run of every benchmark (--quick), results in $(BENCH_RESULTS), not bench/results/
BENCH_RESULTS ?= build/bench-results
bench-quick: install bench-tools
	$(BIN)/python -m bench.run_all --quick --results-dir $(BENCH_RESULTS)

# wrk from Debian, the load generator of bench/ingest_bench.py (without it: a slower Python client)
bench-tools:
	command -v wrk >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk)

# py-spy into the venv, perf from Debian (the profiles in bench/README.md)
profile-tools: install
	$(BIN)/pip install --quiet -e '.[profile]'
	command -v perf >/dev/null || (apt-get update -qq && apt-get install -y -qq linux-perf)

clean:
	rm -rf $(VENV) *.egg-info

# a three-node cluster on this machine (PostgreSQL, moto_server, `pushlake serve --node n1..n3`),
# printing the commands to push to each node and to query from a fourth place; Ctrl-C stops it.
# CLUSTER_DIR=path keeps its files (each node's data and log) there. See docs/scale-out.md.
.PHONY: cluster
cluster: install test-services
	$(BIN)/python examples/cluster.py
