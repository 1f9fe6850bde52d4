"""Small models, tiny data and readers shared by the tuner tests."""

import glob
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np

SCRIPT = Path(__file__).with_name("search_process.py")
REPO = SCRIPT.parents[2]


def tiny_data(samples=48, features=8, classes=3, shift=0.0, seed=0):
    """Features with a non-zero mean (`shift`) and integer labels."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(samples, features)).astype("float32") + shift
    y = rng.integers(0, classes, size=samples).astype("int32")
    return x, y


def user_model(compiled=True):
    """A user's Sequential model without BN: two hidden layers, logits."""
    model = keras.Sequential(
        [
            keras.Input((8,), name="x"),
            keras.layers.Dense(8, activation="relu", name="hidden_1"),
            keras.layers.Dense(8, activation="relu", name="hidden_2"),
            keras.layers.Dense(3, name="out"),
        ],
        name="user_model",
    )
    if compiled:
        model.compile(
            optimizer="adam",
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
    return model


def user_functional_model():
    """A Functional model with a nested Sequential block and a stand-alone
    activation layer."""
    block = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(6, name="inner")],
        name="block",
    )
    inputs = keras.Input((4, 4, 2), name="image")
    x = keras.layers.Conv2D(3, 2, name="conv")(inputs)
    x = keras.layers.ReLU(name="conv_relu")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(6, activation="tanh", name="dense")(x)
    x = block(x)
    outputs = keras.layers.Dense(2, name="logits")(x)
    model = keras.Model(inputs, outputs, name="functional")
    model.compile("sgd", "mse")
    return model


def layer_names(model):
    return [layer.name for layer in model.layers]


def weights_of(model):
    return [np.array(w) for w in model.get_weights()]


def trial_files(project_dir):
    """`{trial_id: trial.json contents}` of a keras-tuner project."""
    trials = {}
    for path in glob.glob(os.path.join(project_dir, "trial_*", "trial.json")):
        try:
            with open(path) as f:
                state = json.load(f)
        except (OSError, ValueError):  # being written
            continue
        trials[state["trial_id"]] = state
    return trials


def event_files(directory):
    return sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*")))


def _hparams_data(directory):
    """The HParams plugin data written in `directory` itself, read back
    without TensorFlow."""
    from tensorboard.backend.event_processing.event_file_loader import (
        EventFileLoader,
    )
    from tensorboard.plugins.hparams import plugin_data_pb2

    for path in event_files(directory):
        for event in EventFileLoader(path).Load():
            for value in event.summary.value:
                plugin = value.metadata.plugin_data
                if plugin.plugin_name == "hparams":
                    yield plugin_data_pb2.HParamsPluginData.FromString(
                        plugin.content
                    )


def hparams_sessions(directory):
    """The HParams sessions started in `directory` itself: a list of
    `(group name, {hyperparameter name in TensorBoard: plain value})`."""
    sessions = []
    for data in _hparams_data(directory):
        if not data.HasField("session_start_info"):
            continue
        info = data.session_start_info
        hparams = {}
        for name, v in info.hparams.items():
            hparams[name] = getattr(v, v.WhichOneof("kind"))
        sessions.append((info.group_name, hparams))
    return sessions


def hparams_experiments(directory):
    """The HParams experiment configs written in `directory` itself: a
    list of dicts with `"hparams"` (names in TensorBoard, in order),
    `"display_names"`, `"domains"` (name to its discrete values, or to
    `(min, max)`) and `"metrics"` (`(group, tag)` pairs, in order)."""
    experiments = []
    for data in _hparams_data(directory):
        if not data.HasField("experiment"):
            continue
        infos = data.experiment.hparam_infos
        domains = {}
        for info in infos:
            if info.HasField("domain_interval"):
                interval = info.domain_interval
                domains[info.name] = (interval.min_value, interval.max_value)
            else:
                domains[info.name] = [
                    getattr(v, v.WhichOneof("kind"))
                    for v in info.domain_discrete.values
                ]
        experiments.append(
            {
                "hparams": [info.name for info in infos],
                "display_names": [info.display_name for info in infos],
                "domains": domains,
                "metrics": [
                    (info.name.group, info.name.tag)
                    for info in data.experiment.metric_infos
                ],
            }
        )
    return experiments


def in_tensorboard(values):
    """Hyperparameter values keyed by their names in TensorBoard (their
    position, from 1, then their name)."""
    from bn_keras.callbacks._hparams import tensorboard_name

    return {
        tensorboard_name(index, name): value
        for index, (name, value) in enumerate(values.items(), start=1)
    }


def scalar_tags(run_dir):
    """The tags of the scalars written in a run folder."""
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(
        str(run_dir), size_guidance={event_accumulator.TENSORS: 0}
    )
    accumulator.Reload()
    return set(accumulator.Tags()["tensors"])


def start(args, log_path, env=None):
    """Starts `search_process.py` in a new session (own process group)."""
    full_env = dict(os.environ)
    full_env["KERAS_BACKEND"] = "tensorflow"
    full_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    full_env.update(env or {})
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in [str(REPO), full_env.get("PYTHONPATH", "")] if p
    )
    log = open(log_path, "w")
    try:
        return subprocess.Popen(
            [sys.executable, str(SCRIPT), *map(str, args)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=REPO,
            start_new_session=True,
        )
    finally:
        log.close()


def kill(process):
    """Kills a process started by `start` and what it spawned."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=30)


def tail(log_path, lines=40):
    text = Path(log_path).read_text(errors="replace").splitlines()
    kept = [
        line
        for line in text
        if line[:5] not in ("I0000", "W0000", "E0000")
        and line.strip() not in ("layer-bn-act",)
    ]
    return "\n".join(kept[-lines:])
