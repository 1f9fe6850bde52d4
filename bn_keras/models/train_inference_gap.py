"""How differently a model predicts in training mode and in inference."""

from __future__ import annotations

from typing import Any

import keras

from bn_keras._validation import check_positive_int
from bn_keras.models import _predictions
from bn_keras.models._passes import BatchNormRunner
from bn_keras.models._tracing import batch_source
from bn_keras.models.find_batchnorm import find_batchnorm


def gap_figures(training, inference, targets=None):
    """The figures of `train_inference_gap` from the first outputs of both
    modes (arrays) and the targets (or `None`)."""
    kind = _predictions.prediction_kind(inference, targets)
    probabilities = None
    if kind == "binary":
        probabilities = _predictions.classes_are_probabilities(inference)
    figures = {
        "samples": int(len(inference)),
        "agreement": None,
        "metric": None,
        "training": None,
        "inference": None,
        "gap": None,
    }
    change = _predictions.changed_share(
        inference, training, kind, probabilities
    )
    if kind == "values":
        figures["relative_change"] = change
    else:
        figures["agreement"] = 1.0 - change
    if targets is not None:
        name, _ = _predictions.METRICS[kind]
        figures["metric"] = name
        for mode, outputs in (("training", training), ("inference", inference)):
            figures[mode] = _predictions.metric(
                outputs, targets, kind, probabilities
            )
        figures["gap"] = figures["training"] - figures["inference"]
    return figures


def train_inference_gap(
    model: keras.Model,
    data: Any,
    batch_size: int | None = None,
    steps: int | None = None,
) -> dict[str, Any]:
    """Compares a model's predictions in training mode and in inference.

    Runs the model over the batches of `data` twice, without changing it:
    once with every batch normalization layer in its training transform
    (each batch normalized by its own statistics, ghost batches and renorm
    corrections included, as `fit` normalizes it; layers with
    `trainable=False` run in inference, as in `fit`) and once in
    inference (moving statistics). Everything else runs in inference both
    times (dropout off), so the difference is batch normalization's alone.
    Training mode at the training batch size is what the model learned
    on; a large gap means the moving statistics, or the batches
    themselves (too small, not shuffled), make inference differ from it.

    The state is left as it was: no moving statistic, counter or weight
    changes. Only the model's first output is compared: as classes (the
    argmax of a last axis of several units; a single unit thresholded at
    0.5 for probabilities, at 0 for logits) or, for other outputs, as
    values.

    Args:
        model: A Keras model.
        data: Arrays (a NumPy array or tensor, a dict or list of them, or a
            tuple `(x, y)`) split into batches of `batch_size`; or a
            `tf.data.Dataset`, a `keras.utils.PyDataset` or an iterable of
            batches, each `x`, `(x, y)` or `(x, y, sample_weight)`.
            Targets `y` are optional: class ids or one-hot rows for
            classes, values otherwise.
        batch_size: The training batch size, for array data. Defaults to
            `32`.
        steps: Optional positive integer: the number of batches to use.
            Defaults to all of them.

    Returns:
        A dict: `samples`; `agreement`, the share of samples whose
        predicted class is the same in both modes (`relative_change`,
        `rms(training - inference) / std(inference)`, for values instead);
        and, with targets, `metric` (`"accuracy"`, or `"mean squared
        error"` for values), `training` and `inference`, the metric in
        each mode, and `gap`, training minus inference (`None` without
        targets).

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((4,)),
    ...     keras.layers.Dense(8),
    ...     keras.layers.BatchNormalization(),
    ...     keras.layers.Dense(3),
    ... ])
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(64, 4)).astype("float32")
    >>> y = rng.integers(0, 3, size=64)
    >>> gap = bn_keras.models.train_inference_gap(model, (x, y), batch_size=16)
    >>> sorted(gap)
    ['agreement', 'gap', 'inference', 'metric', 'samples', 'training']
    >>> gap["metric"], gap["samples"]
    ('accuracy', 64)
    """
    steps = check_positive_int("steps", steps, allow_none=True)
    start = batch_source(data, batch_size, targets=True)
    targets = []

    def inputs(keep_targets):
        for x, y in start():
            if keep_targets:
                targets.append(y)
            yield x

    runner = BatchNormRunner(model, find_batchnorm(model))
    outputs = {}
    for mode in ("training", "inference"):
        result = runner.run(
            inputs(mode == "training"), mode, steps, keep=("outputs",)
        )
        if result.num_batches == 0:
            raise ValueError(
                "Argument `data` yielded no batch; `train_inference_gap` "
                "needs at least one. Received: data of type "
                f"{type(data).__name__}"
            )
        outputs[mode] = _predictions.concatenate(result.outputs)
    return gap_figures(
        outputs["training"],
        outputs["inference"],
        _predictions.concatenate(targets),
    )
