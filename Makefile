# Two entry points, each self-contained on a fresh machine:
#   make run   -- set up .venv and run the main job on the built-in default
#   make test  -- set up .venv and run the test suite
#   make test-fast -- the suite without the slow, emulation and network tests (a few minutes)
# Re-running is fast: the venv is rebuilt only when the dependency files change.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-fast setup clean

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,serve,litert]'
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt --no-deps nvidia-pytriton
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt --no-deps litert-torch litert-converter
	@touch $(STAMP)

run: $(STAMP)
	$(PY) -m online_tsm.apps.quickstart

test: $(STAMP)
	$(PY) -m pytest -q --durations=15

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not emulation and not network and not soak"

clean:
	rm -rf $(VENV) *.egg-info
