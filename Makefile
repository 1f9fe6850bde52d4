# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# A second environment for the PyTorch backend, apart from the first (whose
# TensorFlow and JAX it need not share versions with). tools/install_torch.py
# installs torch's CPU build where pip finds one (a wheel in pip's
# find-links, or PyTorch's CPU index given in TORCH_INDEX, e.g.
#   make test-torch TORCH_INDEX="--extra-index-url https://download.pytorch.org/whl/cpu"
# ), else the package index's default build, and prints which.
TORCH_VENV := .venv-torch
TORCH_PY := $(TORCH_VENV)/bin/python
TORCH_STAMP := $(TORCH_VENV)/.installed
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
# The oldest versions the package declares (setup.cfg), for test-oldest.
OLDEST_VENV := .venv-oldest
OLDEST_PY := $(OLDEST_VENV)/bin/python
OLDEST_STAMP := $(OLDEST_VENV)/.installed
# Keep TensorFlow's C++ logging quiet; errors still show.
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install install-torch lint docs test test-tf test-jax test-torch \
	test-oldest bench demo screenshots clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

$(TORCH_STAMP): setup.cfg pyproject.toml tools/install_torch.py
	test -x $(TORCH_PY) || $(PYTHON) -m venv $(TORCH_VENV)
	$(TORCH_PY) -m pip install --quiet --upgrade pip
	$(TORCH_PY) tools/install_torch.py $(TORCH_VERSION) $(TORCH_INDEX)
	$(TORCH_PY) -m pip install --quiet -e ".[tensorflow,test]"
	touch $(TORCH_STAMP)

install-torch: $(TORCH_STAMP)

$(OLDEST_STAMP): setup.cfg pyproject.toml tools/oldest.txt
	test -x $(OLDEST_PY) || $(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_PY) -m pip install --quiet --upgrade pip
	$(OLDEST_PY) -m pip install --quiet -c tools/oldest.txt \
		-e ".[tensorflow,tuner,test]"
	touch $(OLDEST_STAMP)

# ruff (pinned in the dev extra, configured in pyproject.toml) over the
# package, the tests, the examples, the benchmarks, the docs and the tools;
# then mypy (pinned too) over the package's type annotations.
lint: $(STAMP)
	$(VENV)/bin/ruff check bn_keras tests examples benchmarks docs tools
	$(VENV)/bin/mypy

# The docs site (mkdocs.yml, docs/*.md, the API reference from the
# docstrings) into site/; any warning (a broken link, a missing page or
# object) fails the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

# Lint and the docs first, then the whole suite on the TensorFlow backend,
# then the layer tests again on JAX and on PyTorch so that the layers stay
# backend-agnostic (keras.ops only). JAX's run adds
# keras.distribution.DataParallel on 2 CPU devices; PyTorch's, the monitor
# without TensorFlow.
test: $(STAMP)
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory docs
	$(MAKE) --no-print-directory test-tf
	$(MAKE) --no-print-directory test-jax
	$(MAKE) --no-print-directory test-torch

test-tf: $(STAMP)
	KERAS_BACKEND=tensorflow $(PY) -m pytest tests --durations=15

test-jax: $(STAMP)
	KERAS_BACKEND=jax $(PY) -m pytest tests/layers \
		tests/distribute/test_jax_data_parallel.py -m "not tensorflow_only"

test-torch: $(TORCH_STAMP)
	KERAS_BACKEND=torch $(TORCH_PY) -m pytest tests/layers \
		"tests/callbacks/test_other_backends.py::test_monitor_writes_event_files_without_tensorflow[torch]" \
		"tests/benchmarks/test_bench_layers.py::test_backend_option_reports_on_that_backend[torch]" \
		-m "not tensorflow_only"

# The layer, model and tuner tests on the oldest versions of Keras,
# TensorFlow and keras-tuner that setup.cfg declares (tools/oldest.txt), in
# their own environment. Not part of `make test`.
test-oldest: $(OLDEST_STAMP)
	KERAS_BACKEND=tensorflow $(OLDEST_PY) -m pytest tests/layers tests/models \
		tests/tuner

bench: $(STAMP)
	$(PY) benchmarks/bench_layers.py

# `bn-keras compare` on scikit-learn's digits (nothing to download): a small
# CNN without BN, and with plain BN and batch renormalization at each of
# three placements (on this chain bn-act-layer builds layer-bn-act's network:
# 5 networks trained for 7 configurations); 104 s measured on two busy CPU
# cores (2026-12-07). Results go to a new folder runs/compare-digits-<time>;
# earlier runs are kept; Ctrl-C keeps the configurations finished so far.
# The demo's comparison, written here only: `make screenshots` trains it too.
DEMO_ARGS := --dataset digits --model cnn --epochs 12 \
	--normalizations batch renorm
demo: $(STAMP)
	$(PY) -m bn_keras compare $(DEMO_ARGS) --logdir runs
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
	$(SHOTS_VENV)/bin/python docs/screenshots.py --python $(PY) \
		--demo-args "$(DEMO_ARGS)"

clean:
	rm -rf $(VENV) $(TORCH_VENV) $(OLDEST_VENV) $(SHOTS_VENV) build dist \
		site *.egg-info .pytest_cache
