"""Fold batch normalization into the preceding Dense or convolution layer."""

import logging

import keras
import numpy as np

from bn_keras._validation import check_bool
from bn_keras.layers._layer_kinds import is_linear
from bn_keras.layers.bn_block import BNBlock
from bn_keras.models._graph import LayerGraph
from bn_keras.models._graph import Replacement
from bn_keras.models._graph import copy_layer
from bn_keras.models._graph import model_kind
from bn_keras.models._graph import rebuild

logger = logging.getLogger("bn_keras")

# Layer class -> (number of kernels in `get_weights()`, index of the kernel
# whose output channels BN scales, axis of that kernel's output channels).
# A depthwise kernel `(..., C_in, multiplier)` has output channel
# `c * multiplier + m`, so it is scaled through a reshape.
_FOLDABLE = (
    (keras.layers.SeparableConv1D, 2, 1, -1),
    (keras.layers.SeparableConv2D, 2, 1, -1),
    (keras.layers.DepthwiseConv1D, 1, 0, "depthwise"),
    (keras.layers.DepthwiseConv2D, 1, 0, "depthwise"),
    (keras.layers.Conv1DTranspose, 1, 0, -2),
    (keras.layers.Conv2DTranspose, 1, 0, -2),
    (keras.layers.Conv3DTranspose, 1, 0, -2),
    (keras.layers.Conv1D, 1, 0, -1),
    (keras.layers.Conv2D, 1, 0, -1),
    (keras.layers.Conv3D, 1, 0, -1),
    (keras.layers.Dense, 1, 0, -1),
)


def _fold_spec(layer):
    for cls, num_kernels, index, axis in _FOLDABLE:
        if isinstance(layer, cls):
            return num_kernels, index, axis
    return None


def _why_not_foldable(layer, bn):
    """None if `bn` can be folded into `layer`, else the reason."""
    spec = _fold_spec(layer)
    if spec is None:
        return f"it follows '{layer.name}' ({type(layer).__name__})"
    if not is_linear(layer):
        return f"'{layer.name}' has a non-linear activation before it"
    if getattr(layer, "lora_enabled", False):
        return f"'{layer.name}' uses LoRA"
    if getattr(layer.dtype_policy, "quantization_mode", None):
        return f"'{layer.name}' is quantized"
    num_kernels = spec[0]
    expected = num_kernels + (1 if layer.use_bias else 0)
    if len(layer.get_weights()) != expected:
        return f"'{layer.name}' has unexpected weights"
    rank = getattr(bn.input_spec, "ndim", None) if bn.built else None
    if rank is None or not isinstance(bn.axis, int):
        return f"'{bn.name}' is not built"
    data_format = getattr(layer, "data_format", None)  # None for Dense
    channels = 1 if data_format == "channels_first" else rank - 1
    if bn.axis % rank != channels:
        return (
            f"it normalizes axis {bn.axis}, not the features axis of "
            f"'{layer.name}'"
        )
    return None


def _folded_weights(layer, bn):
    """The kernels and bias of `layer` with `bn`'s inference transform."""
    num_kernels, index, axis = _fold_spec(layer)
    weights = [np.asarray(w, dtype="float64") for w in layer.get_weights()]
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


def _fold(model, prefix, report):
    kind = model_kind(model, "fold_batchnorm")
    graph = LayerGraph(model, kind)
    into = {}  # producer layer name -> the BN folded into it
    folded = set()  # names of the BN layers that disappear
    for bn in graph.layers:
        if not isinstance(bn, keras.layers.BatchNormalization):
            continue
        producers = graph.producers[bn.name]
        reason = None
        if graph.calls[bn.name] != 1:
            reason = "it is called more than once"
        elif len(producers) != 1:
            reason = "it does not follow a layer of this model"
        else:
            producer = graph.by_name[producers[0]]
            reason = _why_not_foldable(producer, bn)
            if reason is None and not graph.single_path(producer.name, bn.name):
                reason = (
                    f"the output of '{producer.name}' is used elsewhere too"
                )
        if reason is None:
            into[producer.name] = bn
            folded.add(bn.name)
            report["folded"].append(
                {"layer": prefix + producer.name, "batchnorm": prefix + bn.name}
            )
        else:
            report["kept"].append(
                {"batchnorm": prefix + bn.name, "reason": reason}
            )

    def replace(layer):
        if layer.name in folded:
            return Replacement(None)
        if layer.name in into:
            bn = into[layer.name]
            return Replacement(
                copy_layer(layer, use_bias=True), _folded_weights(layer, bn)
            )
        if isinstance(layer, keras.Model):
            return Replacement(_fold(layer, f"{prefix}{layer.name}/", report))
        block = _fold_block(layer, prefix, report)
        if block is not None:
            return block
        return Replacement(copy_layer(layer), layer.get_weights())

    return rebuild(model, kind, replace)


def _fold_block(block, prefix, report):
    """A `BNBlock` with placement "layer-bn-act" becomes a single layer."""
    if not isinstance(block, BNBlock) or not isinstance(
        block.normalization, keras.layers.BatchNormalization
    ):
        return None
    bn = block.normalization
    if block.placement != "layer-bn-act":
        reason = (
            f"placement '{block.placement}' does not put BN directly after "
            "the layer"
        )
    else:
        reason = _why_not_foldable(block.layer, bn)
    if reason is not None:
        report["kept"].append(
            {"batchnorm": f"{prefix}{block.name}/{bn.name}", "reason": reason}
        )
        return None
    activation = (
        "linear"
        if block.activation is None
        else keras.activations.serialize(block.activation)
    )
    layer = copy_layer(
        block.layer, use_bias=True, activation=activation, name=block.name
    )
    report["folded"].append(
        {
            "layer": f"{prefix}{block.name}/{block.layer.name}",
            "batchnorm": f"{prefix}{block.name}/{bn.name}",
        }
    )
    return Replacement(layer, _folded_weights(block.layer, bn))


def fold_batchnorm(model, return_report=False):
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
    training it would no longer normalize. The original model is left
    unchanged. Sub-models are folded too.

    Which BN layers were folded is logged (logger `"bn_keras"`, level
    INFO) and, with `return_report=True`, returned.

    Args:
        model: A Sequential or Functional `keras.Model` (a subclassed model
            raises a `TypeError`).
        return_report: If `True`, return `(folded_model, report)`.
            Defaults to `False`.

    Returns:
        The folded model or, with `return_report=True`, a tuple
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
    report = {"folded": [], "kept": []}
    folded = _fold(model, "", report)
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
