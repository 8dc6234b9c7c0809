# Two entry points for a fresh machine: `make run` (the main job) and `make test` (the test suite).
PY ?= python3
RULE ?= dft

.PHONY: install install-dev run test

install:
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt

install-dev: install
	$(PY) -m pip install -q -r requirements-dev.txt

test: install-dev
	$(PY) -m pytest -q tests
