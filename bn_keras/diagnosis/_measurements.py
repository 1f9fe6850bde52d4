"""What `bn_keras.diagnose` measures on a model and data.

The passes share one compiled runner (`bn_keras.models._passes`), run
over batches read once:

1. training mode at the training batch size (each batch normalization
   layer in its training transform, state updates dropped): the
   predictions the model learned to make, each layer's batch means;
2. inference as the model is: its predictions;
3. precise statistics, as `bn_keras.recalibrate` computes them
   (`precise_method`: two passes where that is exact, else one; the first
   is pass 1 when that is the same computation): the population
   statistics of each layer's input;
4. inference with the precise statistics: what they would change.

The model's statistics are set for pass 4 and put back afterwards, in
every case: the model is left as it was.
"""

import dataclasses

import keras
import numpy as np

from bn_keras._statistics import read_statistics
from bn_keras._statistics import set_statistics
from bn_keras.models import _predictions
from bn_keras.models._depth import batchnorm_depths
from bn_keras.models._passes import BatchNormRunner
from bn_keras.models._passes import recalibration_passes
from bn_keras.models._tracing import DEFAULT_BATCH_SIZE
from bn_keras.models._tracing import batch_source
from bn_keras.models._tracing import is_array_like
from bn_keras.models._tracing import model_inputs

#: The fewest batches a diagnosis needs: the spread of batch statistics
#: and training-mode predictions are measured between batches.
MIN_BATCHES = 2


@dataclasses.dataclass
class Measurements:
    """Everything `diagnose` measured; see the module docstring."""

    paths: list
    layers: list
    depths: list
    statistics: list  # `read_statistics` of each layer, as it is
    targets: object  # first targets, concatenated, or None
    outputs: dict  # "training", "inference", "precise": first outputs
    training_inputs: list  # PooledMoments (or None) per layer, pass 1
    batch_means: list  # (batches, channels) per layer, pass 1
    precise: list  # (mean, variance) per layer, or None if never called
    precise_method: str  # the `recalibrate` method that computed them
    batch_size: int
    num_batches: int
    runner: object
    inputs: list  # the batches' inputs of passes 2 to 4

    @property
    def num_samples(self):
        return int(len(self.outputs["inference"]))


def _take(start, steps):
    batches = []
    for batch in start():
        batches.append(batch)
        if steps is not None and len(batches) >= steps:
            break
    return batches


def _num_samples(x):
    return int(keras.tree.flatten(x)[0].shape[0])


def read_batches(data, batch_size, steps):
    """`(training batches, calibration batches)`, lists of `(x, y)`.

    Arrays are cut into batches of `batch_size` for training mode and of
    at least `DEFAULT_BATCH_SIZE` for the rest (inference does not depend
    on the batch size, and the first estimate of precise statistics is
    better with larger batches); other sources give their own batches,
    read once and kept for every pass.
    """
    if is_array_like(model_inputs(data)):
        size = batch_size or DEFAULT_BATCH_SIZE
        if steps is not None:
            data = keras.tree.map_structure(lambda a: a[: steps * size], data)
        training = _take(batch_source(data, size, targets=True), None)
        calibration_size = max(size, DEFAULT_BATCH_SIZE)
        if calibration_size == size:
            return training, training
        calibration = batch_source(data, calibration_size, targets=True)
        return training, _take(calibration, None)
    batches = _take(batch_source(data, batch_size, targets=True), steps)
    return batches, batches


def check_batches(model, batches, data):
    """Enough batches, and inputs of the shapes the model expects."""
    if len(batches) < MIN_BATCHES:
        samples = sum(_num_samples(x) for x, _ in batches)
        raise ValueError(
            f"Argument `data` gives {len(batches)} batch(es) ({samples} "
            f"samples); `diagnose` needs at least {MIN_BATCHES} batches of the "
            "training batch size (batch statistics are compared between "
            "batches). Give more samples or a smaller `batch_size`. "
            f"Received: data of type {type(data).__name__} with {samples} "
            "samples"
        )
    given = keras.tree.flatten(batches[0][0])
    expected = getattr(model, "inputs", None)
    if not expected or len(expected) != 1 or len(given) != 1:
        return  # several inputs: Keras matches them itself
    shape, array = tuple(expected[0].shape[1:]), given[0]
    if len(shape) != len(array.shape) - 1 or any(
        want is not None and want != got
        for want, got in zip(shape, tuple(array.shape)[1:])
    ):
        raise ValueError(
            "Argument `data` does not fit the model: it expects inputs of "
            f"shape {(None, *shape)}, the data's batches have shape "
            f"{tuple(array.shape)}. Received: data of type "
            f"{type(data).__name__}"
        )


def _snapshot(layers):
    return [[v.numpy() for v in layer.variables] for layer in layers]


def _restore(layers, snapshot):
    for layer, values in zip(layers, snapshot):
        for variable, value in zip(layer.variables, values):
            variable.assign(value)


def _same_as_batch_transform(layers, training, calibration):
    """Whether pass 1 computed what recalibration's first pass does."""
    return training is calibration and all(
        layer.trainable
        and not layer.renorm
        and not getattr(layer, "virtual_batch_size", None)
        for layer in layers
    )


def precise_method(depths):
    """How `diagnose` computes precise statistics (a `method` of
    `bn_keras.recalibrate`): `"two-pass"` when it is exact, no layer being
    deeper than 2 (see `bn_keras.models._depth`); `"one-pass"` otherwise,
    one pass over the data less. Deeper, the second pass was not measured
    to come closer to the exact statistics (on a MobileNetV2 trained on
    digits both came within 0.05 standard deviations of them and predicted
    as they do on 97.5% of the images; see the diagnosis page of the
    documentation)."""
    known = [depth for depth in depths if depth is not None]
    if known and len(known) == len(depths) and max(known) <= 2:
        return "two-pass"
    return "one-pass"


def _precise(model, layers, runner, inputs, training_pass, reuse, method):
    """Sets the precise statistics on the layers; returns them, `(mean,
    variance)` per layer (`None` for a layer never called)."""
    precise = [None] * len(layers)
    passes = recalibration_passes(model, layers, method)
    for number, transforms in enumerate(passes):
        pooled = training_pass.pooled
        if number > 0 or not reuse:
            pooled = runner.run(inputs, transforms).pooled
        for index, (layer, moments) in enumerate(zip(layers, pooled)):
            if moments is not None:
                set_statistics(layer, moments.mean, moments.variance)
                precise[index] = (moments.mean, moments.variance)
    return precise


def measure(model, entries, data, batch_size, steps):
    """Runs the passes over `data`; `entries` are the
    `(path, layer, before, after)` of `batchnorm_neighbours(model)`.
    Returns `Measurements`; the model is left as it was."""
    training, calibration = read_batches(data, batch_size, steps)
    check_batches(model, training, data)
    paths = [entry[0] for entry in entries]
    layers = [entry[1] for entry in entries]
    depth_of = batchnorm_depths(model)
    depths = [depth_of.get(id(layer)) for layer in layers]
    method = precise_method(depths)
    runner = BatchNormRunner(model, layers)
    inputs = [x for x, _ in calibration]
    snapshot = _snapshot(layers)
    try:
        first = runner.run(
            [x for x, _ in training], "training", keep=("outputs", "means")
        )
        now = runner.run(inputs, "inference", keep=("outputs",))
        reuse = _same_as_batch_transform(layers, training, calibration)
        precise = _precise(
            model, layers, runner, inputs, first, reuse, method
        )
        after = runner.run(inputs, "inference", keep=("outputs",))
    finally:
        _restore(layers, snapshot)
    return Measurements(
        paths=paths,
        layers=layers,
        depths=depths,
        statistics=[read_statistics(layer) for layer in layers],
        targets=_predictions.concatenate([y for _, y in calibration]),
        outputs={
            "training": _predictions.concatenate(first.outputs),
            "inference": _predictions.concatenate(now.outputs),
            "precise": _predictions.concatenate(after.outputs),
        },
        training_inputs=first.pooled,
        batch_means=_full_batches(first.batch_means, training),
        precise=precise,
        precise_method=method,
        batch_size=_num_samples(training[0][0]),
        num_batches=len(training),
        runner=runner,
        inputs=inputs,
    )


def _full_batches(batch_means, training):
    """The batch means without a last, smaller batch's (noisier)."""
    sizes = [_num_samples(x) for x, _ in training]
    if len(sizes) > MIN_BATCHES and sizes[-1] < sizes[0]:
        return [
            None if means is None else means[: len(sizes) - 1]
            for means in batch_means
        ]
    return batch_means


def rescaled_outputs(measurements, factor):
    """Inference outputs with every input divided by `factor`, or `None`
    when the inputs are not one array."""
    if any(len(keras.tree.flatten(x)) != 1 for x in measurements.inputs):
        return None
    scaled = [
        np.asarray(keras.tree.flatten(x)[0], dtype="float32") / factor
        for x in measurements.inputs
    ]
    result = measurements.runner.run(scaled, "inference", keep=("outputs",))
    return _predictions.concatenate(result.outputs)


def partly_precise_outputs(measurements, indices):
    """Inference outputs with the precise statistics in the layers at
    `indices` only (the others as they are); the model is left as it
    was."""
    layers = [measurements.layers[i] for i in indices]
    snapshot = _snapshot(layers)
    try:
        for layer, index in zip(layers, indices):
            if measurements.precise[index] is not None:
                set_statistics(layer, *measurements.precise[index])
        result = measurements.runner.run(
            measurements.inputs, "inference", keep=("outputs",)
        )
    finally:
        _restore(layers, snapshot)
    return _predictions.concatenate(result.outputs)
