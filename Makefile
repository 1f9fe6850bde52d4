# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Keep TensorFlow's C++ logging quiet; errors still show.
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install test test-tf test-jax bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The whole suite on the TensorFlow backend, then the layer tests again on
# JAX so that the layers stay backend-agnostic (keras.ops only).
test: $(STAMP)
	$(MAKE) --no-print-directory test-tf
	$(MAKE) --no-print-directory test-jax

test-tf: $(STAMP)
	KERAS_BACKEND=tensorflow $(PY) -m pytest tests

test-jax: $(STAMP)
	KERAS_BACKEND=jax $(PY) -m pytest tests/layers -m "not tensorflow_only"

bench: $(STAMP)
	$(PY) benchmarks/bench_layers.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
