"""Which BN layers `fold_batchnorm` folds, decided without rebuilding.

`plan_fold(model)` reads the layer graph and returns a `FoldPlan`: which
BN layer folds into which Dense or convolution layer, and which are kept
and why. `fold_batchnorm` applies the plan; `bn-keras inspect` reports it
and builds nothing. Every decision is a question to `LayerGraph` (how
often a layer is called, what feeds it, what else its output feeds), so
a graph that knows more nodes folds more safely without a change here.
"""

import keras

from bn_keras.layers._layer_kinds import channel_axis
from bn_keras.layers._layer_kinds import is_linear
from bn_keras.layers.bn_block import BNBlock
from bn_keras.models._graph import LayerGraph
from bn_keras.models._graph import model_kind

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


def fold_spec(layer):
    """`(number of kernels, index of the scaled kernel, its channel axis)`
    for a layer that BN can fold into, else None."""
    for cls, num_kernels, index, axis in _FOLDABLE:
        if isinstance(layer, cls):
            return num_kernels, index, axis
    return None


def why_not_foldable(layer, bn):
    """None if `bn` can be folded into `layer`, else the reason."""
    spec = fold_spec(layer)
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
    if len(layer.weights) != expected:
        return f"'{layer.name}' has unexpected weights"
    rank = getattr(bn.input_spec, "ndim", None) if bn.built else None
    if rank is None or not isinstance(bn.axis, int):
        return f"'{bn.name}' is not built"
    if bn.axis % rank != channel_axis(layer) % rank:
        return (
            f"it normalizes axis {bn.axis}, not the features axis of "
            f"'{layer.name}'"
        )
    return None


class FoldPlan:
    """What `fold_batchnorm` does to one model (sub-models have their own).

    Attributes:
        kind: `"sequential"` or `"functional"`.
        into: Dict from a layer's name to the BN layer folded into it.
        removed: Names of the BN layers that disappear.
        blocks: Names of the `BNBlock`s that become a single layer.
        nested: Dict from a sub-model's name to its own `FoldPlan`.
        folded: `{"layer": ..., "batchnorm": ...}` for every BN folded,
            here and in the sub-models, named by path (`"block/dense"`).
        kept: `{"batchnorm": ..., "reason": ...}` for every BN kept.
    """

    def __init__(self, kind):
        self.kind = kind
        self.into = {}
        self.removed = set()
        self.blocks = set()
        self.nested = {}
        self.folded = []
        self.kept = []


def plan_fold(model):
    """Which BN layers `fold_batchnorm` folds, and why it keeps the others.

    Reads the model's graph of layers and its layers' attributes only:
    nothing is copied, built or computed. The rules are `fold_batchnorm`'s
    (see there).

    Args:
        model: A Sequential or Functional `keras.Model`. Any other model
            (a subclassed one, say) raises a `GraphError`, a `TypeError`.

    Returns:
        A `FoldPlan`; its `folded` and `kept` lists are the report that
        `fold_batchnorm(model, return_report=True)` returns.

    >>> model = keras.Sequential([
    ...     keras.Input((4,)),
    ...     keras.layers.Dense(8, use_bias=False, name="dense"),
    ...     keras.layers.BatchNormalization(name="bn"),
    ...     keras.layers.ReLU(name="relu"),
    ...     keras.layers.BatchNormalization(name="bn_after_relu"),
    ... ])
    >>> plan = bn_keras.models._fold_plan.plan_fold(model)
    >>> plan.folded
    [{'layer': 'dense', 'batchnorm': 'bn'}]
    >>> plan.kept
    [{'batchnorm': 'bn_after_relu', 'reason': "it follows 'relu' (ReLU)"}]
    """
    return _plan(model, "")


def _plan(model, prefix):
    kind = model_kind(model, "fold_batchnorm")
    graph = LayerGraph(model, kind)
    plan = FoldPlan(kind)
    for layer in graph.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            _plan_batchnorm(plan, graph, layer, prefix)
    for layer in graph.layers:
        if isinstance(layer, keras.Model):
            nested = _plan(layer, f"{prefix}{layer.name}/")
            plan.nested[layer.name] = nested
            plan.folded += nested.folded
            plan.kept += nested.kept
        elif isinstance(layer, BNBlock):
            _plan_block(plan, layer, prefix)
    return plan


def _plan_batchnorm(plan, graph, bn, prefix):
    reason = _why_kept(graph, bn)
    if reason is not None:
        plan.kept.append({"batchnorm": prefix + bn.name, "reason": reason})
        return
    producer = graph.producers[bn.name][0]
    plan.into[producer] = bn
    plan.removed.add(bn.name)
    plan.folded.append(
        {"layer": prefix + producer, "batchnorm": prefix + bn.name}
    )


def _why_kept(graph, bn):
    """None if `bn` folds into the layer before it, else the reason."""
    producers = graph.producers[bn.name]
    if graph.calls[bn.name] != 1:
        return "it is called more than once"
    if len(producers) != 1:
        return "it does not follow a layer of this model"
    producer = graph.by_name[producers[0]]
    reason = why_not_foldable(producer, bn)
    if reason is None and graph.calls[producer.name] != 1:
        return f"'{producer.name}' is called more than once"
    if reason is None and not graph.single_path(producer.name, bn.name):
        return f"the output of '{producer.name}' is used elsewhere too"
    return reason


def _plan_block(plan, block, prefix):
    """A `BNBlock` with placement "layer-bn-act" becomes a single layer."""
    bn = block.normalization
    if not isinstance(bn, keras.layers.BatchNormalization):
        return
    path = f"{prefix}{block.name}/"
    if block.placement != "layer-bn-act":
        reason = (
            f"placement '{block.placement}' does not put BN directly after "
            "the layer"
        )
    else:
        reason = why_not_foldable(block.layer, bn)
    if reason is not None:
        plan.kept.append({"batchnorm": path + bn.name, "reason": reason})
        return
    plan.blocks.add(block.name)
    plan.folded.append(
        {"layer": path + block.layer.name, "batchnorm": path + bn.name}
    )
