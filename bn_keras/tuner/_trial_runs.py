"""What a search's TensorBoard shows of its trials: runs, names and HParams.

A trial's run is named by what it tried, such as
`trial_03-layer-bn-act.batch` (one shared choice) or
`trial_07-input-bn_layer-act-bn.renorm-x2_layer-act` (per layer: two
layers after another with the same choice count once, `-x2`): its
trial id (unique in the search, and what keras-tuner names its own
`trial_03` folder after), then each slot's placement and, with BN, its
normalization. Names depend only on the trial id and the trial's values,
so a resumed search names its trials as the first process did.
`placement_report` shows the same names. In the HParams dashboard a
trial's row is `trial_<id>` (`group_name`), short enough to read, and its
columns are the hyperparameters that can vary (`trial_hparams`).

keras-tuner itself moves only a callback named exactly `TensorBoard`, and
only on TensorFlow, to `<log_dir>/<trial_id>/execution<N>`, and opens an
HParams writer of its own there. `BNHyperModel.fit` moves every
TensorBoard-like callback to the trial's named run instead, with the
helpers at the end of this module, and removes the folder keras-tuner
opened when nothing was written in it.
"""

import contextlib
import os
import re

import keras
from keras_tuner.engine import hyperparameters as hp_types

from bn_keras import registry
from bn_keras.callbacks._hparams import NONE
from bn_keras.callbacks.batch_norm_monitor import BatchNormMonitor
from bn_keras.tuner.bn_hyperparameters import DMAX
from bn_keras.tuner.bn_hyperparameters import INPUT_BATCHNORM
from bn_keras.tuner.bn_hyperparameters import MOMENTUM
from bn_keras.tuner.bn_hyperparameters import NORMALIZATION
from bn_keras.tuner.bn_hyperparameters import PLACEMENT
from bn_keras.tuner.bn_hyperparameters import RAMP_STEPS
from bn_keras.tuner.bn_hyperparameters import RMAX
from bn_keras.tuner.bn_hyperparameters import SETTINGS
from bn_keras.tuner.bn_hyperparameters import VIRTUAL_BATCH_SIZE
from bn_keras.tuner.bn_hyperparameters import WARMUP_STEPS

#: Longest configuration part of a run name, in characters; a longer one
#: is summarized (`mix_...`: how many slots made each choice).
MAX_CONFIGURATION_CHARS = 100

_SLOT_SEPARATOR = "_"


def slot_names(names):
    """The slots among hyperparameter names: each `name` with a
    `"{name}/placement"`, in the order of `names`."""
    suffix = f"/{PLACEMENT}"
    return list(
        dict.fromkeys(n[: -len(suffix)] for n in names if n.endswith(suffix))
    )


def _safe(value):
    """A value as it may appear in a folder name: letters, digits, `.`,
    `-` and `+` kept, anything else (a `/`, a space) a `-`."""
    return re.sub(r"[^A-Za-z0-9.+-]", "-", str(value))


def _choice(values, slot):
    """`placement` or `placement.normalization` of one slot (a value that
    is not a placement name, from a hypermodel of your own, as it is)."""
    placement = values[f"{slot}/{PLACEMENT}"]
    normalization = values.get(f"{slot}/{NORMALIZATION}")
    try:
        placement = registry.get_placement(placement)
    except (TypeError, ValueError):
        return _safe(placement)
    if registry.has_batchnorm(placement) and normalization is not None:
        return f"{placement}.{_safe(normalization)}"
    return placement


def _runs(choices):
    """`[(choice, count)]` of consecutive equal choices."""
    runs = []
    for choice in choices:
        if runs and runs[-1][0] == choice:
            runs[-1][1] += 1
        else:
            runs.append([choice, 1])
    return runs


def _joined(runs):
    return _SLOT_SEPARATOR.join(
        choice if count == 1 else f"{choice}-x{count}" for choice, count in runs
    )


def _summary(choices):
    """`mix_` and the choices by how many slots made them, most first, as
    many as fit in `MAX_CONFIGURATION_CHARS` (then `_more`)."""
    counts = {}
    for choice in choices:
        counts[choice] = counts.get(choice, 0) + 1
    ranked = sorted(counts.items(), key=lambda item: -item[1])
    text = "mix"
    for choice, count in ranked:
        part = f"{_SLOT_SEPARATOR}{choice}-x{count}"
        if len(text) + len(part) > MAX_CONFIGURATION_CHARS - len("_more"):
            return f"{text}{_SLOT_SEPARATOR}more"
        text += part
    return text


def _input_part(input_batchnorm):
    """`["input-bn"]` for `True` (the hypermodel's own input BN),
    `["input-<name>"]` for an input normalization name other than
    `"none"`, else `[]`."""
    if input_batchnorm is True:
        return ["input-bn"]
    if isinstance(input_batchnorm, str) and input_batchnorm != "none":
        return [f"input-{_safe(input_batchnorm)}"]
    return []


def configuration_name(values):
    """The configuration part of a trial's run name: its slots' choices in
    the order of `values` (`""` when it has no slot)."""
    choices = [_choice(values, slot) for slot in slot_names(values)]
    parts = _input_part(values.get(INPUT_BATCHNORM, False))
    if choices:
        joined = _joined(_runs(choices))
        if len(joined) > MAX_CONFIGURATION_CHARS:
            joined = _summary(choices)
        parts.append(joined)
    return _SLOT_SEPARATOR.join(parts)


def run_name(trial_id, values, execution=0):
    """The name of a trial's run: `trial_<id>-<configuration>`, and
    `-execution<N>` for the executions after the first of a trial
    (keras-tuner's `executions_per_trial`).

    Args:
        trial_id: The keras-tuner trial id.
        values: The trial's hyperparameter values
            (`trial.hyperparameters.values`).
        execution: Which execution of the trial, from 0. Defaults to 0.
    """
    name = f"trial_{trial_id}"
    configuration = configuration_name(values)
    if configuration:
        name += f"-{configuration}"
    if execution:
        name += f"-execution{execution}"
    return name


#: Short names of a slot's settings, in the report and in HParams.
SHORT_SETTINGS = {
    MOMENTUM: "m",
    VIRTUAL_BATCH_SIZE: "vbs",
    RMAX: "rmax",
    DMAX: "dmax",
    WARMUP_STEPS: "warmup",
    RAMP_STEPS: "ramp",
}


def group_name(trial_id):
    """A trial's row in the HParams dashboard: `trial_<id>`, short enough
    to read in the table (its run's name, the text summary and
    `placement_report` say what it tried)."""
    return f"trial_{trial_id}"


def _number(value):
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _slot_text(values, slot, varied):
    """A slot's choice in one HParams column: `"layer-bn-act.ghost vbs=16
    m=0.9"` (the settings among `varied` only), `"none"` when the slot is
    not in the trial (a block beyond its depth)."""
    if f"{slot}/{PLACEMENT}" not in values:
        return NONE
    text = _choice(values, slot)
    for key in SETTINGS:
        name = f"{slot}/{key}"
        if name in varied and name in values:
            text += f" {SHORT_SETTINGS[key]}={_number(values[name])}"
    return text


def _plain(value):
    """A NumPy scalar as the Python value the HParams plugin takes."""
    return value.item() if hasattr(value, "item") else value


def _column(hp, values):
    """The HParams value of a hyperparameter that is not a slot's: as it
    is when it is always active, else as a string (`"none"` when
    inactive), so that its type is the same in every session."""
    value = _plain(values.get(hp.name))
    if value is not None and not isinstance(value, (bool, int, float, str)):
        value = str(value)
    if not getattr(hp, "conditions", None) and value is not None:
        return value
    return NONE if value is None else str(value)


def trial_hparams(space, values):
    """The HParams values of a trial: the hyperparameters of `space` that
    can vary, in order: the input normalization, one column per slot (its
    placement, normalization and the settings that vary: `_slot_text`),
    then the others. Hyperparameters fixed by the space are left out (the
    caption of `placement_report` lists them). Every trial has every
    column, `"none"` where a hyperparameter is inactive.

    Args:
        space: The search space (`hp.space`).
        values: The trial's values (`hp.values`).

    Returns:
        A dict from column name to value, in the order to show them.
    """
    varied = {hp.name for hp in space if not isinstance(hp, hp_types.Fixed)}
    slots = slot_names([hp.name for hp in space])
    in_slot = {
        f"{slot}/{key}"
        for slot in slots
        for key in (PLACEMENT, NORMALIZATION, *SETTINGS)
    }
    result = {}
    for hp in space:
        if hp.name == INPUT_BATCHNORM and hp.name in varied:
            result[hp.name] = _column(hp, values)
    for slot in slots:
        if any(
            name in varied for name in in_slot if name.startswith(f"{slot}/")
        ):
            result[slot] = _slot_text(values, slot, varied)
    for hp in space:
        if (
            hp.name in varied
            and hp.name not in in_slot
            and hp.name != INPUT_BATCHNORM
        ):
            result[hp.name] = _column(hp, values)
    return result


# -- where the callbacks of a trial write ------------------------------------


def redirected_by_keras_tuner(callback):
    """keras-tuner moves only a `TensorBoard` named exactly so, on TF."""
    return (
        type(callback).__name__ == "TensorBoard"
        and keras.backend.backend() == "tensorflow"
    )


def is_keras_tuner_hparams(callback):
    """The HParams callback (TensorBoard's `KerasCallback`) keras-tuner
    adds beside each `TensorBoard` it moves."""
    return type(callback).__module__ == "tensorboard.plugins.hparams._keras"


def execution_of(log_dir, trial_id):
    """`N` for a log dir `.../<trial_id>/execution<N>`, else `None`."""
    head, tail = os.path.split(os.path.normpath(str(log_dir)))
    if os.path.basename(head) == str(trial_id) and tail.startswith("execution"):
        number = tail[len("execution") :]
        if number.isdigit():
            return int(number)
    return None


def log_root(callback, trial_id):
    """The folder a TensorBoard-like callback was given in `search`, the
    parent of the trials' runs; `None` for any other callback."""
    if isinstance(callback, BatchNormMonitor):
        return callback.log_dir
    if not isinstance(callback, keras.callbacks.TensorBoard):
        return None
    log_dir = os.path.normpath(str(callback.log_dir))
    if redirected_by_keras_tuner(callback) and (
        execution_of(log_dir, trial_id) is not None
    ):
        return os.path.dirname(os.path.dirname(log_dir))
    return str(callback.log_dir)


def close_writer(callback):
    """Closes the summary writer keras-tuner's HParams callback opened
    (and so the event file it began) when it was made."""
    writer = getattr(callback, "_writer", None)
    if writer is not None and hasattr(writer, "close"):
        writer.close()


def _holds_only_headers(path):
    """Whether an event file holds nothing but its header."""
    from tensorboard.backend.event_processing.event_file_loader import (
        EventFileLoader,
    )

    return not any(
        event.HasField("summary") for event in EventFileLoader(path).Load()
    )


def remove_unused_run(run_dir):
    """Removes `run_dir` if it holds only event files with nothing in them
    (what keras-tuner's HParams callback leaves when it is not used), and
    its parent folder if that leaves it empty."""
    if "://" in run_dir or not os.path.isdir(run_dir):
        return
    paths = [os.path.join(run_dir, name) for name in os.listdir(run_dir)]
    if not all(
        os.path.basename(p).startswith("events.out.tfevents.")
        and os.path.isfile(p)
        and _holds_only_headers(p)
        for p in paths
    ):
        return
    for path in paths:
        os.remove(path)
    os.rmdir(run_dir)
    with contextlib.suppress(OSError):  # not empty: other executions
        os.rmdir(os.path.dirname(run_dir))
