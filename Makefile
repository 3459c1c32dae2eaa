# The two commands: `make demo` and `make test`. Both install what is missing first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# make demo KEEP=600: the demo's board stays up that many seconds after the demo (at most 3600).
KEEP ?= $(DEMO_KEEP_BOARD)

.PHONY: setup demo demo-cylc test lint bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	@DEMO_KEEP_BOARD=$(KEEP) $(PY) examples/demo.py

demo-cylc: setup
	@$(PY) examples/demo_cylc.py

test: setup
	$(PY) -m pytest --durations=20 $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check aviso_workflows tests examples dags suites bench
	$(VENV)/bin/mypy aviso_workflows
	$(VENV)/bin/lint-imports --no-logo --no-cache

bench: setup
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .venv-pyaviso .venv-cylc .venv-pyaviso2 .pytest_cache .hypothesis *.egg-info
