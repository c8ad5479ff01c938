# pushlake: `make run` starts the service, `make test` runs the suite. Both create .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= data
PORT ?= 8080

.PHONY: run test bench profile-tools install clean

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

bench: install
	$(BIN)/python bench/run_all.py

# py-spy into the venv, perf from Debian (the profiles in bench/README.md)
profile-tools: install
	$(BIN)/pip install --quiet -e '.[profile]'
	command -v perf >/dev/null || (apt-get update -qq && apt-get install -y -qq linux-perf)

clean:
	rm -rf $(VENV) *.egg-info
