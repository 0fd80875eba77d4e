# vcl-worker: `make demo` runs the whole VCL cycle on an embedded default, `make test` runs the test suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup host venv test test-faults test-vcld demo lint bench install-units clean

setup: host $(STAMP)

host:
	bash scripts/setup-host.sh

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $(STAMP)

venv: $(STAMP)

test: setup
	$(BIN)/pytest -q

test-faults: setup
	$(BIN)/pytest -q -m faults

# Apache VCL's real vcld + web front end through the bridge (part of `make test` too; a few minutes).
test-vcld: setup
	$(BIN)/pytest -q -m vcld tests/vcld

demo: setup
	$(BIN)/vcl-worker demo

lint: setup
	$(BIN)/ruff check worker tests bench
	$(BIN)/ruff format --check worker tests bench
	$(BIN)/mypy

bench: setup
	$(BIN)/python -m bench.run

# systemd units + /etc/vcl-worker/vcl-worker.env (kept when present); PREFIX=/tmp/x to try it out.
PREFIX ?= /
install-units: venv
	$(BIN)/vcl-worker install-units --prefix $(PREFIX)

clean:
	rm -rf $(VENV) build *.egg-info
