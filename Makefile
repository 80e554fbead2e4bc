# The two commands: `make demo` and `make test`. Each sets everything up first (idempotent:
# finished steps are skipped by their stamp files), then runs.
PYTHON ?= python3.11
VENV := .venv
LS_VENV := .venv-labelstudio
LS_VERSION := 1.23.2

.PHONY: setup demo test browser clean-state lint

setup: $(VENV)/.installed $(LS_VENV)/.installed browser

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

$(LS_VENV)/.installed: Makefile
	test -d $(LS_VENV) || $(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install -q 'label-studio==$(LS_VERSION)'
	touch $@

# Debian's Chromium for the browser test; Playwright drives it (no browser download).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

demo: setup
	$(VENV)/bin/bookcounter demo

test: setup
	$(VENV)/bin/pytest

clean-state:
	rm -rf var

# Lint: ruff's rules and the layer contract (import-linter, [tool.importlinter] in pyproject.toml).
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	# enabled by the lead once the tree is formatted: $(VENV)/bin/ruff format --check .
	PYTHONPATH=$(CURDIR) $(VENV)/bin/lint-imports
