# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Keep TensorFlow's C++ logging quiet; errors still show.
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install lint test test-tf test-jax bench demo screenshots clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# ruff (pinned in the dev extra, configured in pyproject.toml) over the
# package, the tests, the examples and the benchmarks.
lint: $(STAMP)
	$(VENV)/bin/ruff check bn_keras tests examples benchmarks docs

# Lint first, then the whole suite on the TensorFlow backend, then the layer
# tests again on JAX so that the layers stay backend-agnostic (keras.ops
# only).
test: $(STAMP)
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory test-tf
	$(MAKE) --no-print-directory test-jax

test-tf: $(STAMP)
	KERAS_BACKEND=tensorflow $(PY) -m pytest tests

test-jax: $(STAMP)
	KERAS_BACKEND=jax $(PY) -m pytest tests/layers -m "not tensorflow_only"

bench: $(STAMP)
	$(PY) benchmarks/bench_layers.py

# `bn-keras compare` on scikit-learn's digits (nothing to download): a small
# CNN without BN, and with plain BN and batch renormalization at each of
# three placements; 140 s measured on two busy CPU cores (2026-11-30). Results
# go to a new folder runs/compare-digits-<time>; earlier runs are kept; Ctrl-C
# keeps the configurations finished so far.
demo: $(STAMP)
	$(PY) -m bn_keras compare --dataset digits --model cnn --epochs 12 \
		--normalizations batch renorm --logdir runs
	@latest=$$(ls -dt runs/compare-digits-* | head -n 1); \
	echo; \
	echo "Results in $$latest: leaderboard.csv, validation_curves.png and"; \
	echo "one TensorBoard run per configuration; open the dashboard with"; \
	echo "  $(VENV)/bin/tensorboard --logdir $$latest"

# The README's pictures (docs/images): the demo's comparison, served by
# TensorBoard on 127.0.0.1 and photographed by Debian's headless Chromium
# through selenium, which lives in its own environment, $(SHOTS_VENV), not
# in the package's. Needs `apt-get install chromium chromium-driver`; 4
# minutes on two busy CPU cores. Not part of `make test`.
SHOTS_VENV := .venv-screenshots
screenshots: $(STAMP)
	test -x $(SHOTS_VENV)/bin/python || $(PYTHON) -m venv $(SHOTS_VENV)
	$(SHOTS_VENV)/bin/python -m pip install --quiet selenium pillow
	$(SHOTS_VENV)/bin/python docs/screenshots.py --python $(PY)

clean:
	rm -rf $(VENV) $(SHOTS_VENV) build *.egg-info .pytest_cache
