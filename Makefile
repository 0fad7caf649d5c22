# vterm: `make run` starts the whole stack, `make test` runs the whole suite.
# Both install what they need first: a .venv with the project, tmux and redis-server.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Waits for another apt run (another checkout's make, unattended upgrades) rather than failing.
APT := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600
APT_INSTALL := $(APT) update -qq && $(APT) install -y -qq

.PHONY: run test test-faults bench venv venv-dev venv-bench system-deps test-deps vendor lint clean kill-shells

run: venv system-deps vendor
	$(PY) -m vterm_project.devstack

test: venv-bench system-deps test-deps vendor
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-faults: venv-dev system-deps
	$(PY) -m pytest tests/faults -m slow $(PYTEST_ARGS)

# The load run, then vterm beside SWE-ReX and terminado (the bench extra) on this machine.
bench: venv-bench system-deps
	$(PY) manage.py vterm_bench --peers $(BENCH_ARGS)

# `make run` needs only the project; the tests also need the dev extras (browser driver, Helm renderer...).
venv: $(RUN_STAMP)
venv-dev: $(DEV_STAMP)
venv-bench: $(BENCH_STAMP)

$(RUN_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(DEV_STAMP): $(RUN_STAMP)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

$(BENCH_STAMP): $(DEV_STAMP)
	$(PY) -m pip install -q -e ".[dev,bench]"
	touch $@

# Debian/Ubuntu packages, installed only when a command is missing.
system-deps:
	@missing=""; \
	command -v tmux >/dev/null || missing="$$missing tmux"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v bwrap >/dev/null || missing="$$missing bubblewrap"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(APT_INSTALL) $$missing; \
	fi

test-deps:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	command -v haproxy >/dev/null || missing="$$missing haproxy"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	{ docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null; } || missing="$$missing docker-compose"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(APT_INSTALL) $$missing; \
	fi

# xterm.js and its fit addon from the npm registry (package.json, package-lock.json), copied
# where Django's static files are looked for; the copies are build output, not committed.
VENDOR := sessions/static/vendor
vendor: $(VENDOR)/.built

$(VENDOR)/.built: package.json package-lock.json
	@command -v npm >/dev/null || { $(APT_INSTALL) npm; }
	npm ci --no-audit --no-fund --loglevel=error
	npm run --silent vendor
	touch $@

lint: venv-dev
	$(VENV)/bin/ruff check .

# Shells outlive the web and worker processes on purpose; this ends them.
kill-shells:
	@for s in var/tmux/*/tmux*.sock; do [ -S "$$s" ] && tmux -S "$$s" kill-server || true; done
	@[ ! -x $(PY) ] || $(PY) -m workers.sandbox.cleanup var

clean: kill-shells
	rm -rf var .pytest_cache
