"""The Custom Scalars layout of `BatchNormMonitor`'s run.

An "Overview" category first, the only one open when the dashboard
opens: how many layers have an error or a warning (0: healthy), the
figure the runs are ranked by, the epoch metrics and the model-wide BN
figures, then a chart per alert that has fired, across runs. Then
one closed category per BN layer in forward order, titled with its tag
prefix, opened on a click (each chart loads its data only then). Every
line chart draws one tag, so that each run is one line of its own colour;
two tags of one run share a chart only as a margin chart (a value in a
band). Figures that stay constant unless something is wrong (dead and
constant channels) have no chart: an alert says when they are not zero.
TensorBoard merges the layouts of all runs by category title, keeping
the first run's order, so runs of one architecture share their
categories.
"""

import re

from tensorboard.compat.proto import summary_pb2
from tensorboard.compat.proto import tensor_pb2
from tensorboard.compat.proto import tensor_shape_pb2
from tensorboard.compat.proto import types_pb2
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import metadata as layout_metadata

from bn_keras.callbacks._alerts import ALERTS
from bn_keras.callbacks._alerts import UNHEALTHY
from bn_keras.callbacks._alerts import chart_title
from bn_keras.callbacks._figures import MEAN_DRIFT_IN_STD
from bn_keras.callbacks._figures import PROBE_GAP
from bn_keras.callbacks._hparams import words

OVERVIEW = "Overview"

#: Model-wide tags, written in the monitor's run under this prefix.
RUN_NAME = "batchnorm"
MAX_DRIFT = f"{RUN_NAME}/max_drift_in_std"
MIN_VARIANCE = f"{RUN_NAME}/min_moving_variance"
MAX_PROBE_GAP = f"{RUN_NAME}/max_probe_gap"
NONFINITE = f"{RUN_NAME}/nonfinite_layers"

#: Keras's epoch metrics (`logs` at each epoch end), as the monitor writes
#: them in its own run: `epoch/val_loss`, `epoch/val_accuracy`, ...
EPOCH_METRICS = "epoch"


def best_tag(name):
    """The tag of the best value so far of a Keras log name:
    `epoch/best_val_accuracy`."""
    return f"{EPOCH_METRICS}/best_{name}"


def _exactly(tag):
    return f"^{re.escape(tag)}$"


def _line(title, tag):
    return layout_pb2.Chart(
        title=title,
        multiline=layout_pb2.MultilineChartContent(tag=[_exactly(tag)]),
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


def _epoch_charts(names, validation, keras_logs):
    """Charts of Keras's epoch metrics `names` (accuracies, then loss).

    With `keras.callbacks.TensorBoard` in the same folder (`keras_logs`),
    its `epoch_<name>` tags, drawn by its `train` and `validation` runs:
    training against validation, a line each. Otherwise the monitor's own
    copies in its run, validation curves first (when `validation`), then
    training curves, a chart each."""
    if keras_logs:
        return [
            _line(
                f"{name}: runs train and validation (Keras's TensorBoard; "
                "step = epoch - 1)",
                f"epoch_{name}",
            )
            for name in names
        ]
    logged = [f"val_{name}" for name in names] if validation else []
    logged += names
    return [
        _line(f"{words(name)} per epoch", f"{EPOCH_METRICS}/{name}")
        for name in logged
    ]


def overview_category(
    alerts,
    accuracy_names,
    probe,
    objective=None,
    validation=True,
    keras_logs=False,
):
    """The Overview, the only category open at first.

    Args:
        alerts: `(code, severity)` of the alerts that have fired in this
            run, a chart each, last.
        accuracy_names: The model's accuracy metrics, as Keras logs them.
        probe: Whether the monitor has `probe_data` (the gap's chart).
        objective: Optional Keras log name whose best value so far
            (`best_tag`) the runs are ranked by.
        validation: Whether `fit` has validation data.
        keras_logs: Whether `keras.callbacks.TensorBoard` writes the epoch
            metrics beside the monitor.
    """
    charts = [
        _line(
            "BN layers with an error or a warning alert (0: healthy; the "
            "Text dashboard says which, and what to do)",
            UNHEALTHY,
        )
    ]
    if objective is not None:
        charts.append(
            _line(
                f"best {words(objective)} so far (what the runs are ranked by)",
                best_tag(objective),
            )
        )
    charts += _epoch_charts([*accuracy_names, "loss"], validation, keras_logs)
    if probe:
        charts.append(
            _line(
                "largest train/inference gap on the probe (over layers)",
                MAX_PROBE_GAP,
            )
        )
    charts.append(
        _line("largest moving-mean drift in std units (over layers)", MAX_DRIFT)
    )
    charts.append(
        _line(
            "smallest moving variance (over layers, constant channels left "
            "out)",
            MIN_VARIANCE,
        )
    )
    charts += [
        _line(chart_title(code, severity), f"{ALERTS}/{code}")
        for code, severity in alerts
    ]
    return layout_pb2.Category(title=OVERVIEW, chart=charts)


def _moving_statistics_charts(probe):
    """`(title, tag suffix)` of the line charts of the moving statistics."""
    charts = []
    if probe:
        charts += [
            ("train/inference gap on the probe, mean over channels", PROBE_GAP),
            (
                "train/inference gap on the probe, largest channel",
                "probe/gap_max",
            ),
        ]
    return charts + [
        ("moving_mean drift in std units", MEAN_DRIFT_IN_STD),
        (
            "moving_mean drift since the previous write (L2)",
            "moving_mean/drift",
        ),
        (
            "moving_mean drift since fit began (L2)",
            "moving_mean/drift_from_start",
        ),
        (
            "moving_variance drift since the previous write (L2)",
            "moving_variance/drift",
        ),
        (
            "moving_variance drift since fit began (L2)",
            "moving_variance/drift_from_start",
        ),
        ("moving_variance drift_in_std (log)", "moving_variance/drift_in_std"),
    ]


def _renorm_charts(layer, probe):
    """Renorm's bounds when a schedule moves them, and its clipping."""
    charts = []
    if getattr(layer, "renorm_schedule", None) is not None:
        charts += [
            ("renorm rmax", "renorm/rmax"),
            ("renorm dmax", "renorm/dmax"),
        ]
    charts.append(
        (
            "renorm clipped_fraction (last training batch)",
            "renorm/clipped_fraction",
        )
    )
    if probe:
        charts.append(
            ("renorm clipped_fraction on the probe", "probe/clipped_fraction")
        )
    return charts


def _bands(tag, layer):
    """The moving variance, gamma and beta as bands from min to max.

    TensorBoard 2.21 shows a category's margin charts after its line
    charts, in reverse order: beta's comes first here so that it is shown
    last.
    """
    weights = [
        w
        for w, used in (("gamma", layer.scale), ("beta", layer.center))
        if used
    ]
    bands = [
        _band(
            f"{tag}: {weight} mean, min to max",
            f"{tag}/{weight}/mean",
            f"{tag}/{weight}/min",
            f"{tag}/{weight}/max",
        )
        for weight in reversed(weights)
    ]
    bands.append(
        _band(
            f"{tag}: moving_variance mean, min to max (constant channels "
            "left out of the min)",
            f"{tag}/moving_variance/mean",
            f"{tag}/moving_variance/min",
            f"{tag}/moving_variance/max",
        )
    )
    return weights, bands


def _channels(layer):
    """How many channels the layer normalizes (`None` before it is
    built)."""
    return int(layer.moving_mean.shape[0]) if layer.built else None


def layer_category(tag, layer, probe):
    """One layer's category, closed at first: the probe gap and the drift
    first, then renorm, the spread of gamma and beta, and the bands."""
    titled = _moving_statistics_charts(probe)
    if layer.renorm:
        titled += _renorm_charts(layer, probe)
    weights, bands = _bands(tag, layer)
    if _channels(layer) != 1:  # one channel: a spread of 0 throughout
        titled += [
            (f"{weight} std over channels", f"{weight}/std")
            for weight in weights
        ]
    charts = [
        _line(f"{tag}: {title}", f"{tag}/{suffix}") for title, suffix in titled
    ]
    return layout_pb2.Category(title=tag, chart=charts + bands, closed=True)


def _last_tensor(run_dir, tag):
    """The `TensorProto` last written under `tag` in `run_dir` (the
    event files of that folder only), or `None`."""
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(
        run_dir, size_guidance={event_accumulator.TENSORS: 0}
    )
    accumulator.Reload()
    if tag not in accumulator.Tags()["tensors"]:
        return None
    return accumulator.Tensors(tag)[-1].tensor_proto


def last_value(run_dir, tag):
    """The last scalar written under `tag` in `run_dir`, or `None`."""
    proto = _last_tensor(run_dir, tag)
    return None if proto is None else float(proto.float_val[0])


def read_layout(run_dir):
    """The last Custom Scalars layout written in `run_dir`, or `None`."""
    proto = _last_tensor(run_dir, layout_metadata.CONFIG_SUMMARY_TAG)
    if proto is None:
        return None
    layout = layout_pb2.Layout()
    layout.ParseFromString(proto.string_val[0])
    return layout


def retitle_chart(run_dirs, tag, title):
    """Gives the chart of `tag` the title `title` in the layout of every
    run of `run_dirs`, written anew at step 0 (the layout TensorBoard
    shows is each run's last).

    Every run must get the same title: TensorBoard merges the runs'
    layouts chart by chart, and would show a chart under each title. Used
    once the runs are finished, to say in the Overview which run won.
    """
    from bn_keras.callbacks._event_writer import SummaryWriter

    for run_dir in run_dirs:
        layout = read_layout(run_dir)
        if layout is None:
            continue
        for category in layout.category:
            for chart in category.chart:
                if list(chart.multiline.tag) == [_exactly(tag)]:
                    chart.title = title
        writer = SummaryWriter(run_dir)
        writer.write(layout_summary(list(layout.category)), step=0)
        writer.close()


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
