# Two commands do all the set-up on a fresh machine:
#   make run   -> creates .venv, installs, runs the main job on the embedded default input
#   make test  -> creates .venv, installs, runs the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test system-deps clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/cpfs run

# Headless Chromium lets a test open the HTML report as a person would; CI (CI=true, as root) installs
# Debian's package when it is missing. Elsewhere that test skips and says why.
system-deps:
	@if [ "$$CI" = "true" ] && ! command -v chromium >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; fi

test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

clean:
	rm -rf $(VENV) cpfs-data runs .pytest_cache
