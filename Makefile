# anirank. `make run` and `make test` work on a fresh machine: they create .venv if it is
# missing, install the pinned requirements, then act.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test install clean

run: $(STAMP)
	$(PY) -m pipelines run

test: $(STAMP)
	$(PY) -m pytest -q tests

install: $(STAMP)

# Reinstall only when the requirements change.
$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

clean:
	rm -rf data .pytest_cache
