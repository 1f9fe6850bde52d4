"""Shared pieces of the callback tests: reading event files back and
snapshotting batch normalization weights independently of the callbacks."""

import os

import keras
import numpy as np
from tensorboard.backend.event_processing.event_accumulator import TENSORS
from tensorboard.backend.event_processing.event_accumulator import (
    EventAccumulator,
)
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.util import tensor_util

LAYOUT_TAG = "custom_scalars__config__"


def read_events(run_dir):
    """Every tensor summary in `run_dir`: `{tag: {step: ndarray}}`."""
    accumulator = EventAccumulator(run_dir, size_guidance={TENSORS: 0})
    accumulator.Reload()
    return {
        tag: {
            event.step: tensor_util.make_ndarray(event.tensor_proto)
            for event in accumulator.Tensors(tag)
        }
        for tag in accumulator.Tags()["tensors"]
    }


def read_scalars(run_dir):
    """Scalar summaries only: `{tag: {step: float}}`."""
    return {
        tag: {step: float(value) for step, value in values.items()}
        for tag, values in read_events(run_dir).items()
        if all(np.ndim(v) == 0 and v.dtype != object for v in values.values())
    }


def read_layout(run_dir):
    events = read_events(run_dir)
    (value,) = events[LAYOUT_TAG].values()
    return layout_pb2.Layout.FromString(value.item())


def weights_of(layer):
    """The layer's weights by name, copied to float64 NumPy arrays."""
    return {
        w.name: np.array(keras.ops.convert_to_numpy(w), dtype=np.float64)
        for w in layer.weights
    }


class Snapshots(keras.callbacks.Callback):
    """Copies the weights of `layers` at the start of training, at every
    epoch end and, with `every`, at every `every`-th batch end; with
    `renorm=True` also the renorm statistics before every batch."""

    def __init__(self, layers, every=None):
        super().__init__()
        self.layers = layers
        self.every = every
        self.start = None
        self.epochs = {}
        self.batches = {}
        self.before_batch = []
        self._seen = 0

    def _take(self):
        _ = self.model  # On JAX, attaches the trainer's state to the variables.
        return {layer.name: weights_of(layer) for layer in self.layers}

    def on_train_begin(self, logs=None):
        self.start = self._take()

    def on_train_batch_begin(self, batch, logs=None):
        self.before_batch.append(self._take())

    def on_train_batch_end(self, batch, logs=None):
        self._seen += 1
        if self.every and self._seen % self.every == 0:
            self.batches[self._seen] = self._take()

    def on_epoch_end(self, epoch, logs=None):
        self.epochs[epoch] = self._take()


class BatchCounter(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.count = 0

    def on_train_batch_end(self, batch, logs=None):
        self.count += 1


def expected_figures(now, previous, start, epsilon):
    """The monitor's figures for one layer, written from the issue's
    definitions, from weight snapshots of a layer without constant
    channels."""
    mean, var = now["moving_mean"], now["moving_variance"]
    prev_mean, prev_var = previous["moving_mean"], previous["moving_variance"]
    figures = {
        "moving_mean/drift": np.sqrt(np.sum((mean - prev_mean) ** 2)),
        "moving_mean/drift_from_start": np.sqrt(
            np.sum((mean - start["moving_mean"]) ** 2)
        ),
        "2_mean_drift_in_std": np.mean(
            np.abs(mean - prev_mean) / np.sqrt(var + epsilon)
        ),
        "moving_variance/drift": np.sqrt(np.sum((var - prev_var) ** 2)),
        "moving_variance/drift_from_start": np.sqrt(
            np.sum((var - start["moving_variance"]) ** 2)
        ),
        "moving_variance/drift_in_std": np.mean(
            np.abs(np.log(var + epsilon) - np.log(prev_var + epsilon))
        ),
        "moving_variance/min": var.min(),
        "moving_variance/mean": var.mean(),
        "moving_variance/max": var.max(),
        # Random data: no channel is constant.
        "moving_variance/constant_channels": 0.0,
    }
    for name in ("gamma", "beta"):
        if name in now:
            figures[f"{name}/mean"] = now[name].mean()
            figures[f"{name}/std"] = now[name].std()
            figures[f"{name}/min"] = now[name].min()
            figures[f"{name}/max"] = now[name].max()
    if "gamma" in now:
        figures["gamma/dead_fraction"] = np.mean(np.abs(now["gamma"]) < 1e-3)
    return figures


def assert_figures_close(scalars, tag_prefix, step, expected):
    for key, value in expected.items():
        tag = f"{tag_prefix}/{key}"
        assert tag in scalars, f"missing tag {tag}"
        assert step in scalars[tag], f"tag {tag} has no step {step}"
        np.testing.assert_allclose(
            scalars[tag][step], value, rtol=2e-5, atol=1e-7, err_msg=tag
        )


def run_dir(log_dir):
    return os.fspath(log_dir)


class Batches(keras.utils.PyDataset):
    """`(x, y)` in whole batches of `batch_size`, as a `PyDataset`."""

    def __init__(self, x, y, batch_size):
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self):
        return len(self.x) // self.batch_size

    def __getitem__(self, index):
        s = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return self.x[s], self.y[s]
