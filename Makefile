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

# Three streams (scripts/run-tests.sh): the vcld suite beside the rest, then the fault suite alone.
test: setup
	BIN=$(BIN) bash scripts/run-tests.sh

test-faults: setup
	$(BIN)/pytest -q -m faults

# Apache VCL's real vcld + web front end through the bridge (part of `make test` too; a few minutes).
test-vcld: setup
	$(BIN)/pytest -q -m vcld tests/vcld

# `make demo GUEST=debian`: the same cycle on the Debian 12 test image (systemd, OpenSSH; built with
# mmdebstrap and cached; minutes per boot under TCG) instead of the tiny busybox guest (GUEST=tiny).
GUEST ?= $(or $(VCL_DEMO_GUEST),tiny)
demo: setup
	VCL_DEMO_GUEST=$(GUEST) $(BIN)/vcl-worker demo

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
