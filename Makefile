# mailsync developer loop. Every target sets up what it needs (virtualenv, pinned dependencies, generated code).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTOS := $(wildcard protos/mailsync/v1/*.proto)
PYTEST_ARGS ?=
# Most tests wait on processes and sockets, so four workers fit two cores; a file's tests stay on one worker
# (the end-to-end stack is started once per worker that runs it).
PYTEST_PARALLEL ?= -n 4 --dist loadfile

.PHONY: help venv protos test test-unit test-integration test-e2e run cli sandbox lint fmt bench lock clean

help:
	@echo "make run        start NATS, the Gmail sandbox and the four services (Ctrl-C stops all)"
	@echo "make test       set up the virtualenv, generate code, run every test tier"
	@echo "make test-unit  the fast, pure tier only"
	@echo "make protos     regenerate mailsync/v1 from protos/"
	@echo "make lint       ruff, and mypy on the shared runtime and domain modules"
	@echo "make fmt        format with ruff"
	@echo "make bench      benchmarks (numbers go to stdout and var/bench/)"
	@echo "make sandbox    run the Gmail sandbox alone"
	@echo "make cli ARGS=\"...\"  the command-line client for a running stack (docs/demo.md)"

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

venv: $(STAMP)

protos: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m tools.protogen

test: protos
	$(PY) -m pytest -p no:cacheprovider $(PYTEST_PARALLEL) $(PYTEST_ARGS)

test-unit: protos
	$(PY) -m pytest -p no:cacheprovider tests/unit $(PYTEST_ARGS)

test-integration: protos
	$(PY) -m pytest -p no:cacheprovider $(PYTEST_PARALLEL) tests/integration $(PYTEST_ARGS)

test-e2e: protos
	$(PY) -m pytest -p no:cacheprovider tests/e2e $(PYTEST_ARGS)

run: protos
	$(PY) -m tools.run

cli: protos
	$(PY) -m tools.cli $(ARGS)

sandbox: $(STAMP)
	$(PY) -m sandbox

lint: protos
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy services/runtime

fmt: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

bench: protos
	$(PY) -m tools.bench

lock: $(STAMP)
	$(PY) -m pip install --quiet -r requirements.in
	(echo "# Pinned by \`make lock\` from requirements.in; \`make venv\` installs exactly these."; \
	 $(PY) -m pip freeze --exclude-editable) > requirements.lock

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
