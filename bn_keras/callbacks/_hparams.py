"""HParams summaries of a run: its session and the experiment's config.

TensorBoard's HParams dashboard shows one row per *session*: a run folder
holding the session's hyperparameter values, whose metrics are scalar
tags of that run (group `""`) or of its subfolders (a *group*, such as
the `validation` run of `keras.callbacks.TensorBoard`). The *experiment
config* lists the hyperparameters and metrics in the order the dashboard
shows them; TensorBoard reads it from any one run that holds one. So that
no run holds the config alone (an empty run in every dashboard), every
run writes it beside its session, the same in every run of one
comparison or search, through the writer that writes the rest of the
run.

TensorBoard 2.21 shows the first five metrics of the config, and the
first five hyperparameters after sorting them by name (those whose values
differ first). So that they come in the order given, a hyperparameter's
name in TensorBoard starts with its position (`"01.placement"`), and its
display name, what the dashboard shows, is the name alone. Values are
`bool`, `int`, `float` or `str`; a hyperparameter that a session lacks
takes an explicit value (`"none"`), so that the parallel-coordinates
view keeps it.

Written as `Summary` protos, with no TensorFlow needed on the other
backends.
"""

from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import metadata
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.plugins.hparams import summary_v2

from bn_keras.callbacks._event_writer import SummaryWriter

#: The value of a hyperparameter that does not apply to a session.
NONE = "none"

#: Subfolders of a run where `keras.callbacks.TensorBoard` writes.
TRAIN_GROUP = "train"
VALIDATION_GROUP = "validation"


def tensorboard_name(index, name):
    """The name of the `index`-th hyperparameter in TensorBoard:
    `"01.placement"`, so that sorting by name keeps the order given."""
    return f"{index:02d}.{name}"


def words(name):
    """A Keras log name in words: `"val_accuracy"` -> `"validation
    accuracy"`, `"loss"` -> `"training loss"`."""
    if name.startswith("val_"):
        return "validation " + name[len("val_") :].replace("_", " ")
    return "training " + name.replace("_", " ")


def _hparam_info(index, name, value):
    info = api_pb2.HParamInfo(
        name=tensorboard_name(index, name), display_name=name, differs=True
    )
    if isinstance(value, bool):
        info.type = api_pb2.DATA_TYPE_BOOL
        info.domain_discrete.extend([False, True])
    elif isinstance(value, (int, float)):
        info.type = api_pb2.DATA_TYPE_FLOAT64
    else:
        info.type = api_pb2.DATA_TYPE_STRING
    return info


def _summary(tag, plugin_data):
    summary = summary_pb2.Summary()
    summary.value.add(
        tag=tag,
        metadata=metadata.create_summary_metadata(plugin_data),
        tensor=metadata.NULL_TENSOR,
    )
    return summary


def experiment_summary(values, metrics):
    """The experiment config: the hyperparameters of `values` (a dict
    from name to value, in the order to show them) and `metrics` (a list
    of `summary_v2.Metric`, in the order to show them)."""
    experiment = api_pb2.Experiment(
        hparam_infos=[
            _hparam_info(index, name, value)
            for index, (name, value) in enumerate(values.items(), start=1)
        ],
        metric_infos=[metric.as_proto() for metric in metrics],
    )
    return _summary(
        metadata.EXPERIMENT_TAG,
        plugin_data_pb2.HParamsPluginData(experiment=experiment),
    )


def session_summary(values, group_name):
    """The session of a run: `values` (as for `experiment_summary`), in a
    session group named `group_name` (the row's name in the dashboard;
    the sessions of one group, such as the executions of a keras-tuner
    trial, are averaged together)."""
    named = {
        tensorboard_name(index, name): value
        for index, (name, value) in enumerate(values.items(), start=1)
    }
    return summary_v2.hparams_pb(named, trial_id=group_name)


def check_values(argument, values):
    """`values` as a dict of HParams values; a `TypeError` naming
    `argument` for anything else."""
    if not isinstance(values, dict) or not all(
        isinstance(key, str) and isinstance(value, (bool, int, float, str))
        for key, value in values.items()
    ):
        raise TypeError(
            f"Argument `{argument}` must be a dict from hyperparameter names "
            "(strings) to bool, int, float or str values. "
            f"Received: {argument}={values!r}"
        )
    return dict(values)


def epoch_metric(name, keras_logs, display_name=None):
    """The HParams metric of a Keras log name such as `"val_accuracy"`:
    `keras.callbacks.TensorBoard`'s `epoch_accuracy` in its `validation`
    subfolder (`keras_logs`), else the monitor's own `epoch/val_accuracy`
    in the run itself."""
    display_name = display_name or words(name)
    if not keras_logs:
        return summary_v2.Metric(f"epoch/{name}", display_name=display_name)
    if name.startswith("val_"):
        metric, group = name[len("val_") :], VALIDATION_GROUP
        dataset = summary_v2.Metric.VALIDATION
    else:
        metric, group = name, TRAIN_GROUP
        dataset = summary_v2.Metric.TRAINING
    return summary_v2.Metric(
        f"epoch_{metric}",
        group=group,
        display_name=display_name,
        dataset_type=dataset,
    )


def write_run(run_dir, values, group_name, metrics):
    """Writes the session and the experiment config of a run that no
    `BatchNormMonitor` writes (one that holds `keras.callbacks.TensorBoard`'s
    subfolders only) into `run_dir`, in one event file."""
    writer = SummaryWriter(run_dir)
    try:
        writer.write(experiment_summary(values, metrics), step=0)
        writer.write(session_summary(values, group_name), step=0)
    finally:
        writer.close()
