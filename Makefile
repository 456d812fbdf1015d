# NovaCron: `make test` and `make demo` set up everything they need on a fresh
# Debian 12 machine as root (system packages, a virtualenv, the package).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test test-unit suite demo demo-federation lint typecheck deps venv bench clean

# What CI runs (.ci/run), as root: lint, types, and every test, the lab's
# included (a lab test that cannot run fails, it never skips: tests/conftest.py).
test: deps lint typecheck suite

# Three lab hosts with real agents: membership, a failure, a rejoin, a live migration
# (needs root). `make demo DEMO_LAB=NAME` names the lab (default: demo<pid>).
demo: deps
	$(PY) -m novacron.simulations.demo $(if $(DEMO_LAB),--name $(DEMO_LAB))

# Two sites of three agents and a coordinator, on loopback (no root needed).
demo-federation: deps
	$(PY) -m novacron.simulations.federation_demo

deps: $(STAMP)

# System packages (one list, in one script), then the virtualenv and the
# package with its test extras. Re-run when pyproject.toml changes.
$(STAMP): pyproject.toml scripts/install-system-deps.sh
	sh scripts/install-system-deps.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# mypy cannot follow setuptools' editable import hook, so it reads the package
# through a tree of links laid out as the installed names (novacron.agent, ...).
.typecheck/novacron:
	mkdir -p .typecheck/novacron
	for d in agent coordinator protocol simulations; do ln -sfn ../../$$d .typecheck/novacron/$$d; done

lint: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: deps .typecheck/novacron
	MYPYPATH=.typecheck $(VENV)/bin/mypy -p novacron
	MYPYPATH=.typecheck $(VENV)/bin/mypy tests benchmarks

# Every test, with the fuzz tests at full strength (tests/fuzzing.py), on two workers: the
# lab's tests in order on one, the real agents' in order, and the rest wherever a worker is
# free (tests/conftest.py says why); the slowest 25 listed, so a CI log shows where the
# time goes. Every failure fails, a lab guest whose kernel crashed included: the lab's
# QEMU (10, bookworm-backports) does not break migrated TCG guests as Debian 12's 7.2 did.
suite: deps
	NOVACRON_FUZZ=full $(VENV)/bin/pytest -q -n 2 --dist loadgroup --durations=25

# The tests that need neither root nor the lab, in about a minute, as any user.
test-unit: deps
	$(VENV)/bin/pytest -q -m "not lab and not agents"

bench: deps
	$(PY) benchmarks/record_codec.py

clean:
	rm -rf $(VENV) .typecheck .mypy_cache .ruff_cache .pytest_cache .hypothesis
