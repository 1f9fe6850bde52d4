"""Fold batch normalization into the preceding Dense or convolution layer.

Which BN layers fold is decided by `models/_fold_plan.py` (`plan_fold`,
which `bn-keras inspect` reports too); this module applies the plan.
"""

from __future__ import annotations

import logging
from typing import Any

import keras
import numpy as np

from bn_keras._statistics import weight_values
from bn_keras._validation import check_bool
from bn_keras.models._fold_plan import fold_spec
from bn_keras.models._fold_plan import plan_fold
from bn_keras.models._graph import Replacement
from bn_keras.models._graph import copy_layer
from bn_keras.models._graph import rewrite

logger = logging.getLogger("bn_keras")


def _folded_weights(layer, bn):
    """The kernels and bias of `layer` with `bn`'s inference transform."""
    num_kernels, index, axis = fold_spec(layer)
    weights = [np.asarray(w, dtype="float64") for w in weight_values(layer)]
    kernels = weights[:num_kernels]
    mean = np.asarray(bn.moving_mean, dtype="float64")
    variance = np.asarray(bn.moving_variance, dtype="float64")
    scale = 1.0 / np.sqrt(variance + bn.epsilon)
    if bn.scale:
        scale = scale * np.asarray(bn.gamma, dtype="float64")
    offset = -mean * scale
    if bn.center:
        offset = offset + np.asarray(bn.beta, dtype="float64")
    bias = weights[num_kernels] if layer.use_bias else np.zeros_like(mean)

    kernel = kernels[index]
    if axis == "depthwise":
        channels_in, multiplier = kernel.shape[-2:]
        kernel = kernel * scale.reshape(channels_in, multiplier)
    else:
        shape = [1] * kernel.ndim
        shape[axis] = -1
        kernel = kernel * scale.reshape(shape)
    kernels[index] = kernel
    new = [*kernels, bias * scale + offset]
    dtypes = [w.dtype for w in layer.weights[:num_kernels]]
    dtypes.append(layer.weights[0].dtype)
    return [
        np.asarray(w, dtype=keras.backend.standardize_dtype(d))
        for w, d in zip(new, dtypes)
    ]


def _apply(model, plan):
    """The folded copy of `model`, as `plan` (its `FoldPlan`) says:
    uncompiled, as a model for inference has no use for an optimizer."""
    plans = {}

    def index(current, path):
        plans[path] = current
        for name, nested in current.nested.items():
            index(nested, f"{path}{name}/")

    index(plan, "")

    def make_replace(current_model, graph, path):
        current = plans[path]

        def replace(layer):
            if layer.name in current.removed:
                return Replacement(None)
            if layer.name in current.into:
                bn = current.into[layer.name]
                return Replacement(
                    copy_layer(layer, use_bias=True), _folded_weights(layer, bn)
                )
            if layer.name in current.blocks:
                return _folded_block(layer)
            return None  # nested models folded the same way; others copied

        return replace

    return rewrite(model, "fold_batchnorm", make_replace, compiled=False)


def _folded_block(block):
    """The single layer a "layer-bn-act" `BNBlock` becomes (named as it)."""
    activation = (
        "linear"
        if block.activation is None
        else keras.activations.serialize(block.activation)
    )
    layer = copy_layer(
        block.layer, use_bias=True, activation=activation, name=block.name
    )
    return Replacement(layer, _folded_weights(block.layer, block.normalization))


def fold_batchnorm(
    model: keras.Model, return_report: bool = False
) -> keras.Model | tuple[keras.Model, dict[str, Any]]:
    """Returns an inference copy of `model` with BN folded into its layers.

    In inference, batch normalization is the affine map
    `x * gamma / sqrt(moving_variance + epsilon) + (beta - moving_mean *
    gamma / sqrt(moving_variance + epsilon))`, applied per channel. When it
    directly follows a Dense or convolution layer (`Dense`,
    `Conv1D`/`2D`/`3D`, their `Transpose` forms, `SeparableConv`,
    `DepthwiseConv`) with no activation in between, and that layer's output
    goes to the BN only, the map can be merged into the layer's kernel and
    bias: the BN layer disappears, and the layer gets a bias if it had none.
    A `bn_keras.layers.BNBlock` with placement `"layer-bn-act"` becomes a
    single layer with the block's activation (named as the block). Every
    other BN layer stays (for example one after an activation or a
    residual add), and every other layer is copied with its weights.

    The folded model's predictions equal the original model's in
    inference, up to float rounding. It is meant for inference only:
    training it would no longer normalize. So it is returned uncompiled,
    without optimizer state: saved, it is the size of its weights (call
    `compile()` to evaluate it with `evaluate()`). The original model is
    left unchanged. Sub-models are folded too.

    Which BN layers were folded is logged (logger `"bn_keras"`, level
    INFO) and, with `return_report=True`, returned.

    Args:
        model: A Sequential or Functional `keras.Model` (a subclassed model
            raises a `TypeError`).
        return_report: If `True`, return `(folded_model, report)`.
            Defaults to `False`.

    Returns:
        The folded model (of the same kind, not compiled) or, with
        `return_report=True`, a tuple
        `(folded_model, report)`, where `report` is a dict with two lists:
        `"folded"`, of `{"layer": ..., "batchnorm": ...}` (the layer that
        absorbed each folded BN), and `"kept"`, of
        `{"batchnorm": ..., "reason": ...}`. Names of layers inside
        sub-models and blocks are prefixed with their path, as in
        `"block/dense"`.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((4,)),
    ...     keras.layers.Dense(8, use_bias=False, name="dense"),
    ...     bn_keras.layers.BatchNormalization(name="bn"),
    ...     keras.layers.ReLU(name="relu"),
    ... ])
    >>> folded, report = bn_keras.fold_batchnorm(model, return_report=True)
    >>> [layer.name for layer in folded.layers]
    ['dense', 'relu']
    >>> report["folded"]
    [{'layer': 'dense', 'batchnorm': 'bn'}]
    """
    return_report = check_bool("return_report", return_report)
    plan = plan_fold(model)
    folded = _apply(model, plan)
    report = {"folded": plan.folded, "kept": plan.kept}
    for entry in report["folded"]:
        logger.info(
            "fold_batchnorm: folded '%s' into '%s'.",
            entry["batchnorm"],
            entry["layer"],
        )
    for entry in report["kept"]:
        logger.info(
            "fold_batchnorm: kept '%s': %s.",
            entry["batchnorm"],
            entry["reason"],
        )
    if return_report:
        return folded, report
    return folded
