# mailsync developer loop. Every target sets up what it needs (virtualenv, pinned dependencies, generated code).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTOS := $(wildcard protos/mailsync/v1/*.proto)
# Generated code is rebuilt only when a .proto (or the generator) is newer than this file, so `make run` and
# `make cli` do not run protoc every time.
PROTOS_STAMP := $(VENV)/.protos-generated
PYTEST_ARGS ?=
# Most tests wait on processes and sockets, so four workers fit two cores; a file's tests stay on one worker
# (the end-to-end stack is started once per worker that runs it).
PYTEST_PARALLEL ?= -n 4 --dist loadfile

.PHONY: help venv protos test test-chaos test-unit test-integration test-e2e test-deploy chaos run cli sandbox lint fmt bench lock image-venv clean

help:
	@echo "make run        start NATS, the Gmail sandbox and the four services (Ctrl-C stops all)"
	@echo "make test       set up the virtualenv, generate code, run every test tier"
	@echo "make test-unit  the fast, pure tier only"
	@echo "make test-deploy  render and check the Kubernetes overlays, the image and the locks"
	@echo "make test-chaos the chaos tier's reduced profile as tests (~4 min)"
	@echo "make chaos      kill -9 and Gmail faults under load, checked for loss and duplicates (~10 min; CHAOS_ARGS=\"--seed N\")"
	@echo "make protos     regenerate mailsync/v1 from protos/ (only when a .proto changed)"
	@echo "make lint       ruff, and mypy on the shared runtime and domain modules"
	@echo "make fmt        format with ruff"
	@echo "make bench      benchmarks (numbers go to stdout and var/bench/)"
	@echo "make sandbox    run the Gmail sandbox alone"
	@echo "make cli ARGS=\"...\"  the command-line client for a running stack (or .venv/bin/mailsync; docs/demo.md)"
	@echo "make lock       re-pin requirements-runtime.lock and requirements.lock"
	@echo "make image-venv build the production image's virtualenv locally and print its size"

$(STAMP): requirements.lock requirements-runtime.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-runtime.lock -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

venv: $(STAMP)

$(PROTOS_STAMP): $(PROTOS) tools/protogen.py $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m tools.protogen
	@touch $(PROTOS_STAMP)

protos: $(PROTOS_STAMP)

test: protos
	$(PY) -m pytest -p no:cacheprovider $(PYTEST_PARALLEL) $(PYTEST_ARGS)

test-chaos: protos
	$(PY) -m pytest -p no:cacheprovider tests/chaos $(PYTEST_ARGS)

test-unit: protos
	$(PY) -m pytest -p no:cacheprovider tests/unit $(PYTEST_ARGS)

test-integration: protos
	$(PY) -m pytest -p no:cacheprovider $(PYTEST_PARALLEL) tests/integration $(PYTEST_ARGS)

test-e2e: protos
	$(PY) -m pytest -p no:cacheprovider tests/e2e $(PYTEST_ARGS)

test-deploy: protos
	$(PY) -m pytest -p no:cacheprovider tests/deploy $(PYTEST_ARGS)

# The full chaos profile (tests/chaos runs the reduced one under `make test`); the seed it prints replays a run.
chaos: protos
	$(PY) -m tools.chaos --profile full $(CHAOS_ARGS)

run: protos
	$(PY) -m tools.run

cli: protos
	@$(VENV)/bin/mailsync $(ARGS)

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

# The runtime lock is pinned in a fresh virtualenv (only what requirements-runtime.in pulls in); the full lock
# then keeps those pins (-c) and adds the development tools.
lock: $(STAMP)
	rm -rf var/lock-venv && $(PYTHON) -m venv var/lock-venv
	var/lock-venv/bin/pip install --quiet --disable-pip-version-check -r requirements-runtime.in
	(echo "# Pinned by \`make lock\` from requirements-runtime.in; the production image installs exactly these."; \
	 var/lock-venv/bin/pip freeze --exclude-editable) > requirements-runtime.lock
	$(PY) -m pip install --quiet -c requirements-runtime.lock -r requirements.in
	(echo "# Pinned by \`make lock\` from requirements.in; \`make venv\` installs exactly these."; \
	 $(PY) -m pip freeze --exclude-editable) > requirements.lock
	rm -rf var/lock-venv

# What the production image's virtualenv holds, built here the way deploy/Dockerfile builds it (no container
# engine needed): the runtime lock, the product's code, then deploy/image/slim-venv.sh. Prints its size.
image-venv:
	rm -rf var/image-venv && $(PYTHON) -m venv var/image-venv
	var/image-venv/bin/pip install --quiet --disable-pip-version-check --no-cache-dir -r requirements-runtime.lock
	rm -rf var/image-src && mkdir -p var/image-src && cp -r pyproject.toml README.md mailsync services var/image-src/
	var/image-venv/bin/pip install --quiet --disable-pip-version-check --no-cache-dir --no-deps ./var/image-src
	sh deploy/image/slim-venv.sh var/image-venv
	du -sh var/image-venv

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
