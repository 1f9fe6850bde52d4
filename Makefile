# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# A second environment for the PyTorch backend, apart from the first (whose
# TensorFlow and JAX it need not share versions with). `+cpu` pins the CPU
# build: PyPI's Linux wheel pulls ~3 GB of CUDA libraries, and with the
# `+cpu` pin pip fails rather than fetching it. Where no wheel lies in pip's
# find-links, point pip at PyTorch's CPU index:
#   make test-torch TORCH_INDEX="--extra-index-url https://download.pytorch.org/whl/cpu"
TORCH_VENV := .venv-torch
TORCH_PY := $(TORCH_VENV)/bin/python
TORCH_STAMP := $(TORCH_VENV)/.installed
TORCH_VERSION ?= 2.13.0+cpu
TORCH_INDEX ?=
# Keep TensorFlow's C++ logging quiet; errors still show.
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install install-torch lint test test-tf test-jax test-torch bench demo \
	screenshots clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

$(TORCH_STAMP): setup.cfg pyproject.toml
	test -x $(TORCH_PY) || $(PYTHON) -m venv $(TORCH_VENV)
	$(TORCH_PY) -m pip install --quiet --upgrade pip
	$(TORCH_PY) -m pip install --quiet $(TORCH_INDEX) \
		"torch==$(TORCH_VERSION)" -e ".[dev]"
	touch $(TORCH_STAMP)

install-torch: $(TORCH_STAMP)

# ruff (pinned in the dev extra, configured in pyproject.toml) over the
# package, the tests, the examples and the benchmarks.
lint: $(STAMP)
	$(VENV)/bin/ruff check bn_keras tests examples benchmarks docs

# Lint first, then the whole suite on the TensorFlow backend, then the layer
# tests again on JAX and on PyTorch so that the layers stay backend-agnostic
# (keras.ops only). JAX's run adds keras.distribution.DataParallel on 2 CPU
# devices; PyTorch's, the monitor without TensorFlow.
test: $(STAMP)
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory test-tf
	$(MAKE) --no-print-directory test-jax
	$(MAKE) --no-print-directory test-torch

test-tf: $(STAMP)
	KERAS_BACKEND=tensorflow $(PY) -m pytest tests

test-jax: $(STAMP)
	KERAS_BACKEND=jax $(PY) -m pytest tests/layers \
		tests/distribute/test_jax_data_parallel.py -m "not tensorflow_only"

test-torch: $(TORCH_STAMP)
	KERAS_BACKEND=torch $(TORCH_PY) -m pytest tests/layers \
		"tests/callbacks/test_other_backends.py::test_monitor_writes_event_files_without_tensorflow[torch]" \
		"tests/benchmarks/test_bench_layers.py::test_backend_option_reports_on_that_backend[torch]" \
		-m "not tensorflow_only"

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
# in the package's, each dashboard as it opens (nothing filtered or
# collapsed by the script); it prints how long the Overview took to draw.
# Needs `apt-get install chromium chromium-driver`; under 2 minutes on two
# busy CPU cores (2026-12-07). Not part of `make test`.
SHOTS_VENV := .venv-screenshots
SHOTS_STAMP := $(SHOTS_VENV)/.installed
$(SHOTS_STAMP):
	test -x $(SHOTS_VENV)/bin/python || $(PYTHON) -m venv $(SHOTS_VENV)
	$(SHOTS_VENV)/bin/python -m pip install --quiet selenium pillow
	touch $(SHOTS_STAMP)

screenshots: $(STAMP) $(SHOTS_STAMP)
	$(SHOTS_VENV)/bin/python docs/screenshots.py --python $(PY)

clean:
	rm -rf $(VENV) $(TORCH_VENV) $(SHOTS_VENV) build *.egg-info .pytest_cache
