# The two commands: `make demo` and `make test`. Each sets everything up first (idempotent:
# finished steps are skipped by their stamp files), then runs.
PYTHON ?= python3.11
VENV := .venv
LS_VENV := .venv-labelstudio
LS_VERSION := 1.23.2

.PHONY: setup demo test browser postgresql clean-state lint test-fast lock

setup: $(VENV)/.installed $(LS_VENV)/.installed browser postgresql

$(VENV)/.installed: pyproject.toml requirements/app.lock
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c requirements/app.lock -e '.[dev]'
	touch $@

$(LS_VENV)/.installed: Makefile requirements/labelstudio.lock
	test -d $(LS_VENV) || $(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install -q -c requirements/labelstudio.lock 'label-studio==$(LS_VERSION)'
	touch $@

# Debian's Chromium for the browser test; Playwright drives it (no browser download).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

# Debian's PostgreSQL server binaries (initdb, pg_ctl) for a team deployment (docs/postgres.md) and its
# tests, which start a throwaway cluster of their own; the package's default cluster is not used.
postgresql:
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }

demo: setup
	$(VENV)/bin/bookcounter demo

test: setup lint
	$(VENV)/bin/pytest

clean-state:
	rm -rf var

# Lint: ruff's rules and the layer contract (import-linter, [tool.importlinter] in pyproject.toml).
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	PYTHONPATH=$(CURDIR) $(VENV)/bin/lint-imports

# The inner loop: unit tests that start no server (no Label Studio, nothing marked slow).
test-fast: $(VENV)/.installed
	$(VENV)/bin/pytest -m "not labelstudio and not slow"

# Refresh both lock files: the newest versions pyproject.toml and LS_VERSION allow, resolved in
# throwaway venvs (minutes: it downloads torch). Commit the result; 'make setup' installs from it.
LOCK_VENV := .venv-lock
lock:
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q -e '.[dev]'
	{ echo "# The app venv's versions (pip constraints): written by 'make lock', installed by 'make setup'."; \
	  $(LOCK_VENV)/bin/pip freeze --exclude-editable; } > requirements/app.lock
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q 'label-studio==$(LS_VERSION)'
	{ echo "# The Label Studio venv's versions (pip constraints): written by 'make lock', installed by 'make setup'."; \
	  $(LOCK_VENV)/bin/pip freeze; } > requirements/labelstudio.lock
	rm -rf $(LOCK_VENV)
