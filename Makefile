# pushlake: `make run` starts the service, `make test` runs the suite. Both create .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= data
PORT ?= 8080

.PHONY: run test bench bench-quick bench-tools profile-tools install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/pushlake serve --data $(DATA) --port $(PORT)

test: install
	$(BIN)/python -m pytest -q

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
