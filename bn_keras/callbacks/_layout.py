"""The Custom Scalars layout of `BatchNormMonitor`'s run.

An "Overview" category first (Keras's validation curves and the
model-wide BN figures, across runs), then one category per BN layer in
forward order, titled with its tag prefix. TensorBoard merges the layouts
of all runs by category title, keeping the first run's order, so runs of
one architecture share their categories.
"""

import re

from tensorboard.compat.proto import summary_pb2
from tensorboard.compat.proto import tensor_pb2
from tensorboard.compat.proto import tensor_shape_pb2
from tensorboard.compat.proto import types_pb2
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import metadata as layout_metadata

from bn_keras.callbacks._figures import MEAN_DRIFT_IN_STD
from bn_keras.callbacks._figures import PROBE_GAP

OVERVIEW = "Overview"

#: Model-wide tags, written in the monitor's run under this prefix.
RUN_NAME = "batchnorm"
MAX_DRIFT = f"{RUN_NAME}/max_drift_in_std"
MIN_VARIANCE = f"{RUN_NAME}/min_moving_variance"
MAX_PROBE_GAP = f"{RUN_NAME}/max_probe_gap"
NONFINITE = f"{RUN_NAME}/nonfinite_layers"


def _exactly(tag):
    return f"^{re.escape(tag)}$"


def _lines(title, tags):
    return layout_pb2.Chart(
        title=title,
        multiline=layout_pb2.MultilineChartContent(
            tag=[_exactly(tag) for tag in tags]
        ),
    )


def _band(title, value, lower, upper):
    """A margin chart: `value` with the band from `lower` to `upper`."""
    return layout_pb2.Chart(
        title=title,
        margin=layout_pb2.MarginChartContent(
            series=[
                layout_pb2.MarginChartContent.Series(
                    value=value, lower=lower, upper=upper
                )
            ]
        ),
    )


def overview_category(accuracy_names, probe):
    """The Overview: Keras's per-epoch accuracy (for each name in
    `accuracy_names`) and loss, written by `keras.callbacks.TensorBoard`
    in the `train` and `validation` runs, then the model-wide figures."""
    charts = [
        _lines(
            f"{name} per epoch (train and validation runs)", [f"epoch_{name}"]
        )
        for name in accuracy_names
    ]
    charts.append(
        _lines("loss per epoch (train and validation runs)", ["epoch_loss"])
    )
    if probe:
        charts.append(
            _lines(
                "largest train/inference gap on the probe (over layers)",
                [MAX_PROBE_GAP],
            )
        )
    charts.append(
        _lines(
            "largest moving-mean drift in std units (over layers)", [MAX_DRIFT]
        )
    )
    charts.append(
        _lines(
            "smallest moving variance (over layers, constant channels left "
            "out)",
            [MIN_VARIANCE],
        )
    )
    return layout_pb2.Category(title=OVERVIEW, chart=charts)


def _moving_statistics_charts(probe):
    """`(title, [tag suffixes])` of the moving statistics' charts."""
    constant = ["moving_variance/constant_channels"]
    if probe:
        constant.append("probe/constant_channels")
    return [
        ("moving_mean drift in std units", [MEAN_DRIFT_IN_STD]),
        (
            "moving_mean drift",
            ["moving_mean/drift", "moving_mean/drift_from_start"],
        ),
        (
            "moving_variance drift",
            ["moving_variance/drift", "moving_variance/drift_from_start"],
        ),
        (
            "moving_variance drift_in_std (log)",
            ["moving_variance/drift_in_std"],
        ),
        (
            "moving_variance min (constant channels left out) and mean",
            ["moving_variance/min", "moving_variance/mean"],
        ),
        ("constant channels", constant),
    ]


def _affine_charts(tag, layer):
    """gamma's and beta's std, gamma's dead fraction, then gamma and beta
    as bands from min to max around the mean.

    TensorBoard 2.21 shows a category's margin charts after its line
    charts, in reverse order: the bands come last, beta's first, so that
    gamma's is shown first.
    """
    on = (("gamma", layer.scale), ("beta", layer.center))
    weights = [weight for weight, used in on if used]
    charts = []
    if weights:
        charts.append(
            _lines(
                f"{tag}: {' and '.join(weights)} std",
                [f"{tag}/{weight}/std" for weight in weights],
            )
        )
    if layer.scale:
        charts.append(
            _lines(
                f"{tag}: gamma dead_fraction", [f"{tag}/gamma/dead_fraction"]
            )
        )
    return charts + [
        _band(
            f"{tag}: {weight} mean, min to max",
            f"{tag}/{weight}/mean",
            f"{tag}/{weight}/min",
            f"{tag}/{weight}/max",
        )
        for weight in reversed(weights)
    ]


def layer_category(tag, layer, probe):
    """One layer's category: the probe gap and the drift in std units
    first, then the moving statistics, renorm, gamma and beta."""
    first, last = [], []
    if probe:
        first.append(
            ("train/inference gap (probe)", [PROBE_GAP, "probe/gap_max"])
        )
    first += _moving_statistics_charts(probe)
    if layer.renorm:
        clipped = ["renorm/clipped_fraction"]
        if probe:
            clipped.append("probe/clipped_fraction")
        last.append(("renorm bounds", ["renorm/rmax", "renorm/dmax"]))
        last.append(("renorm clipped_fraction", clipped))

    def charts(titled):
        return [
            _lines(f"{tag}: {title}", [f"{tag}/{suffix}" for suffix in tags])
            for title, tags in titled
        ]

    return layout_pb2.Category(
        title=tag,
        chart=charts(first) + charts(last) + _affine_charts(tag, layer),
    )


def layout_summary(categories):
    """The `Summary` that carries a layout of `categories`."""
    layout = layout_pb2.Layout(category=categories)
    tensor = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(),
        string_val=[layout.SerializeToString()],
    )
    summary = summary_pb2.Summary()
    summary.value.add(
        tag=layout_metadata.CONFIG_SUMMARY_TAG,
        metadata=layout_metadata.create_summary_metadata(),
        tensor=tensor,
    )
    return summary
