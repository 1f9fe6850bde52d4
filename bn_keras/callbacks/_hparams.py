"""HParams summaries of an experiment and of its sessions, without TensorFlow.

An experiment, for TensorBoard's HParams dashboard, is a folder of runs:
`bn-keras compare` (one run per configuration) or a keras-tuner search
(one run per trial). Its *config*, written once in the folder itself,
lists the hyperparameters with their domains and the metrics, in the
order the dashboard shows them; each *session*, written in a run's
folder, gives that run's values. A metric is a scalar tag in a subfolder
(a *group*) of every session's folder: `validation/epoch_accuracy` of
`keras.callbacks.TensorBoard`, `batchnorm/batchnorm/max_probe_gap` of
`bn_keras.callbacks.BatchNormMonitor`.

Without a config, TensorBoard 2.21 takes every scalar it finds for a metric
and shows the first five alphabetically, the objective often not among
them. With one, it shows the metrics in the config's order, ticks the
first five, and does the same for the hyperparameters after sorting them
by name. So that the placements come first, then the normalizations, then
the rest, a hyperparameter's name in TensorBoard starts with its rank
(`"1.dense/placement"`, `"2.dense/normalization"`, `"3.learning_rate"`) and
its display name, what the dashboard shows, is the name alone.

Shared by `bn-keras compare` and the tuner's `BNHyperModel`; written
through `SummaryWriter`, so it works on every backend.
"""


from tensorboard.plugins.hparams import summary_v2

from bn_keras.callbacks._event_writer import SummaryWriter
from bn_keras.callbacks._layout import MAX_DRIFT
from bn_keras.callbacks._layout import MAX_PROBE_GAP
from bn_keras.callbacks._layout import MIN_VARIANCE
from bn_keras.callbacks._layout import NONFINITE
from bn_keras.callbacks._layout import RUN_NAME

#: Subfolders of a run where `keras.callbacks.TensorBoard` writes.
TRAIN_GROUP = "train"
VALIDATION_GROUP = "validation"

# The monitor's model-wide figures, in the order the dashboard shows
# them (the Overview's): (tag, display name, needs `probe_data`).
_MONITOR_FIGURES = (
    (MAX_PROBE_GAP, "BN max train/inference gap", True),
    (MAX_DRIFT, "BN max drift (std units)", False),
    (MIN_VARIANCE, "BN min moving variance", False),
    (NONFINITE, "BN non-finite layers", False),
)


def keras_metric(name):
    """The HParams metric of a Keras log name such as `"val_accuracy"`: the
    scalar `keras.callbacks.TensorBoard` writes for it at each epoch
    (`epoch_accuracy` in the `validation` subfolder)."""
    if name.startswith("val_"):
        metric = name[len("val_") :]
        group, dataset = VALIDATION_GROUP, summary_v2.Metric.VALIDATION
    else:
        metric, group, dataset = name, TRAIN_GROUP, summary_v2.Metric.TRAINING
    words = metric.replace("_", " ")
    return summary_v2.Metric(
        f"epoch_{metric}",
        group=group,
        display_name=f"{group} {words}",
        dataset_type=dataset,
    )


def monitor_metrics(probe):
    """The model-wide figures of `BatchNormMonitor`, as HParams metrics;
    the train/inference gap only when it has `probe_data` (`probe`)."""
    return [
        summary_v2.Metric(tag, group=RUN_NAME, display_name=display_name)
        for tag, display_name, needs_probe in _MONITOR_FIGURES
        if probe or not needs_probe
    ]


def experiment_metrics(objectives, keras_logs=True, monitor=True, probe=True):
    """The metrics of an experiment, in the order the dashboard shows them.

    The objectives first (Keras log names, such as `"val_accuracy"`), then
    the validation loss (when not one of them), then the monitor's
    model-wide figures; never a per-layer figure.

    Args:
        objectives: Keras log names of the objectives, most important first.
        keras_logs: Whether the runs have `keras.callbacks.TensorBoard`'s
            subfolders. Defaults to `True`.
        monitor: Whether they have a `BatchNormMonitor`'s. Defaults to
            `True`.
        probe: Whether that monitor has `probe_data`. Defaults to `True`.

    Returns:
        A list of `tensorboard.plugins.hparams.summary_v2.Metric`.
    """
    metrics = []
    if keras_logs:
        names = list(dict.fromkeys([*objectives, "val_loss"]))
        metrics.extend(keras_metric(name) for name in names)
    if monitor:
        metrics.extend(monitor_metrics(probe))
    return metrics


def rank(name):
    """Where a hyperparameter goes: 1 for a placement (`"placement"`, or a
    name ending with `"/placement"`), 2 for a normalization, 3 otherwise."""
    last = name.rsplit("/", 1)[-1]
    return {"placement": 1, "normalization": 2}.get(last, 3)


def tensorboard_name(name):
    """The name a hyperparameter has in TensorBoard: its rank, then its
    name (`"1.dense/placement"`), so that sorting by name ranks it."""
    return f"{rank(name)}.{name}"


def hparam(name, domain=None):
    """An `HParam` named for TensorBoard, displayed as `name`."""
    return summary_v2.HParam(
        tensorboard_name(name), domain, display_name=name
    )


def discrete(name, values):
    """An `HParam` over the given values (no domain for mixed types)."""
    try:
        domain = summary_v2.Discrete(values)
    except (TypeError, ValueError):
        domain = None
    return hparam(name, domain)


def write_experiment(log_dir, hparams, metrics):
    """Writes the HParams config of the experiment whose runs are in
    `log_dir` (in `log_dir` itself).

    Args:
        log_dir: The experiment's folder (what `tensorboard --logdir` gets).
        hparams: A list of `summary_v2.HParam` made by `hparam` or
            `discrete`.
        metrics: A list of `summary_v2.Metric`, in the order to show them.
    """
    _write(log_dir, summary_v2.hparams_config_pb(hparams, metrics))


def write_session(run_dir, values, group_name):
    """Writes the HParams session of the run in `run_dir`.

    Args:
        run_dir: The run's folder, the parent of its metric groups.
        values: A dict from hyperparameter name to a `bool`, `int`,
            `float` or `str`.
        group_name: The session group: sessions with the same one (the
            executions of one keras-tuner trial) are averaged together.
    """
    named = {tensorboard_name(name): value for name, value in values.items()}
    _write(run_dir, summary_v2.hparams_pb(named, trial_id=group_name))


def _write(directory, summary):
    writer = SummaryWriter(directory)
    try:
        writer.write(summary, step=0)
    finally:
        writer.close()
