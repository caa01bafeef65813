# anirank. `make run` and `make test` work on a fresh machine: they create .venv if it is
# missing, install the pinned requirements, then act.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run evidence test install clean bench

# The main job, then three days of the daily loop over the synthetic world's next days
# (through the real AniList client and the stand-in server of tests/). RUN_ARGS: more
# options of `python -m pipelines run`.
run: $(STAMP)
	$(PY) -m pipelines run $(RUN_ARGS)
	$(PY) -m tests.simulate_days --days 3 --quiet

# The same job with every comparison the report's evidence rests on (the id-only and
# history-less two-towers, one ranker per loss, the ablation rankers): the README's
# tables with ablation or loss rows come from it. About 3x `make run`'s time.
evidence:
	$(MAKE) run RUN_ARGS=--evidence

# The suite on up to four processes (pytest-xdist; two on a two-core machine).
test: $(STAMP)
	$(PY) -m pytest -q -n auto --maxprocesses 4 tests

install: $(STAMP)

# Reinstall only when the requirements change. The project itself goes in editable
# (`anirank` and `anirank-crawl` on .venv/bin), built with the venv's own setuptools.
$(STAMP): requirements.txt requirements-dev.txt requirements-test.txt requirements-scale.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@# The browser tests drive Debian's chromium; install it where we can (root with
	@# apt-get), else they skip and say why. Never a reason for the install to fail.
	@test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || echo "note: no /usr/bin/chromium and it cannot be installed here: the browser tests will skip"
	touch $(STAMP)

clean:
	rm -rf data .pytest_cache

# Benchmarks (not tests, not in CI): each prints a table, last line the headline ratio.
# Needs the default model: run `make run` first. Under 15 minutes on 2 cores.
bench: $(STAMP)
	test -f data/model/config.json || $(PY) -m pipelines run
	$(PY) bench/train_throughput.py --features data/features
	$(PY) bench/train_stream.py --features data/features
	$(PY) bench/batch_vs_naive.py --model data/model
	$(PY) bench/scann_at_scale.py
	$(PY) bench/features_scale.py
	$(PY) bench/compute_floor.py --model data/model
	$(PY) bench/beam_vs_in_process.py --model data/model
	$(PY) bench/serve_load.py --model data/model
