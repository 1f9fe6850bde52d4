"""Searches run in processes of their own by the tuner tests.

    python search_process.py resume   DIR RESULT       # GridSearch, resumable
    python search_process.py grid     DIR RESULT BARRIER WORKERS
        # distributed: chief or worker, by KERASTUNER_TUNER_ID
    python search_process.py mirrored DIR RESULT       # MirroredStrategy
    python search_process.py logs     DIR RESULT       # any backend

Each writes a JSON file of what the test checks to RESULT and exits by
itself after `LIFETIME` seconds at the latest (SIGALRM).
"""

import json
import os
import signal
import sys
import time

LIFETIME = 200

signal.alarm(LIFETIME)
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MODE = sys.argv[1]

if MODE == "mirrored":
    # Two logical CPU devices, set before TensorFlow initializes.
    import tensorflow as tf

    (cpu,) = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpu,
        [tf.config.LogicalDeviceConfiguration()] * 2,
    )

import keras  # noqa: E402
import keras_tuner  # noqa: E402
import numpy as np  # noqa: E402

import bn_keras  # noqa: E402
import bn_keras.tuner  # noqa: E402
from bn_keras.callbacks._tags import batchnorm_tags  # noqa: E402

PLACEMENTS = ["layer-bn-act", "layer-act-bn", "bn-act-layer", "layer-act"]


def data(samples=256):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(samples, 8)).astype("float32") + 2.0
    y = (x[:, 0] + x[:, 1] > 4.0).astype("int32")
    return x, y


def make_model():
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="relu", name="hidden"),
            keras.layers.Dense(2, name="out"),
        ],
        name="user_model",
    )
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def write(path, result):
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, default=float)
    os.replace(path + ".tmp", path)


def resume(directory, result_path):
    """A GridSearch over 5 configurations, 6 epochs each."""
    hypermodel = bn_keras.tuner.BNPlacementHyperModel(
        make_model,
        placements=["layer-bn-act", "layer-act-bn", "layer-act"],
        normalizations=["batch", "ghost"],
        momentum=0.9,
        virtual_batch_size=16,
        input_batchnorm=False,
        per_layer=False,
    )
    tuner = bn_keras.tuner.ResumableGridSearch(
        hypermodel,
        objective="val_loss",
        directory=directory,
        project_name="resume",
        overwrite=False,
    )
    x, y = data()
    tuner.search(
        x, y, validation_split=0.25, epochs=6, batch_size=32, verbose=0
    )
    rows = bn_keras.tuner.placement_report(tuner, print_table=False)
    write(
        result_path,
        {
            "rows": rows,
            "statuses": {
                t.trial_id: t.status for t in tuner.oracle.trials.values()
            },
        },
    )


class _RecordingGridSearch(keras_tuner.GridSearch):
    """Records the trials this process ran."""

    ran = []

    def on_trial_end(self, trial):
        self.ran.append(trial.trial_id)
        super().on_trial_end(trial)


def grid(directory, result_path, barrier, workers):
    tuner_id = os.environ["KERASTUNER_TUNER_ID"]
    hypermodel = bn_keras.tuner.BNPlacementHyperModel(
        make_model,
        placements=PLACEMENTS,
        normalizations=["batch"],
        momentum=0.9,
        input_batchnorm=False,
        per_layer=False,
    )
    tuner = _RecordingGridSearch(
        hypermodel,
        objective="val_loss",
        directory=os.path.join(directory, tuner_id),
        project_name="grid",
        overwrite=True,
    )
    x, y = data()
    if "chief" not in tuner_id:
        # Both workers start searching together, so that both get trials.
        os.makedirs(barrier, exist_ok=True)
        open(os.path.join(barrier, tuner_id), "w").close()
        deadline = time.time() + 120
        while len(os.listdir(barrier)) < workers:
            if time.time() > deadline:
                raise TimeoutError("the other worker did not start")
            time.sleep(0.2)
    tuner.search(
        x, y, validation_split=0.25, epochs=5, batch_size=32, verbose=0
    )
    result = {"tuner_id": tuner_id, "ran": _RecordingGridSearch.ran}
    if "chief" in tuner_id:
        result["rows"] = bn_keras.tuner.placement_report(
            tuner, print_table=False
        )
        result["statuses"] = {
            t.trial_id: t.status for t in tuner.oracle.trials.values()
        }
    write(result_path, result)


def mirrored(directory, result_path):
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    hypermodel = bn_keras.tuner.BNPlacementHyperModel(
        make_model,
        placements=["layer-bn-act", "layer-act-bn"],
        normalizations=["batch"],
        momentum=0.9,
        input_batchnorm=False,
        normalization_kwargs={"synchronized": True},
    )
    tuner = keras_tuner.GridSearch(
        hypermodel,
        objective="val_loss",
        distribution_strategy=strategy,
        directory=directory,
        project_name="mirrored",
        overwrite=True,
    )
    x, y = data()
    tuner.search(
        x, y, validation_split=0.25, epochs=2, batch_size=32, verbose=0
    )
    best = tuner.get_best_models(1)[0]
    layers = bn_keras.find_batchnorm(best)
    write(
        result_path,
        {
            "replicas": strategy.num_replicas_in_sync,
            "statuses": {
                t.trial_id: t.status for t in tuner.oracle.trials.values()
            },
            "synchronized": [layer.synchronized for layer in layers],
            "variable_types": [
                type(layer.moving_mean.value).__name__ for layer in layers
            ],
            "moving_mean": [
                keras.ops.convert_to_numpy(layer.moving_mean).tolist()
                for layer in layers
            ],
            "rows": bn_keras.tuner.placement_report(tuner, print_table=False),
        },
    )


def logs(directory, result_path):
    """Per-trial TensorBoard and monitor folders, on the backend given."""
    hypermodel = bn_keras.tuner.BNPlacementHyperModel(
        make_model,
        placements="layer-bn-act",
        normalizations="batch",
        momentum=0.9,
        per_layer=False,
    )
    tuner = keras_tuner.GridSearch(
        hypermodel,
        objective="val_loss",
        directory=directory,
        project_name="logs",
        overwrite=True,
    )
    log_dir = os.path.join(directory, "tensorboard")
    x, y = data(64)
    tuner.search(
        x,
        y,
        validation_split=0.25,
        epochs=2,
        batch_size=16,
        verbose=0,
        callbacks=[
            keras.callbacks.TensorBoard(log_dir),
            bn_keras.callbacks.BatchNormMonitor(log_dir, histograms=False),
        ],
    )
    trials = {}
    for trial in tuner.oracle.trials.values():
        # Rebuilt as keras-tuner builds it: after `clear_session`, so that
        # the unnamed input gets the same automatic name.
        keras.utils.clear_session()
        model = hypermodel.build(trial.hyperparameters.copy())
        trials[trial.trial_id] = {
            "status": trial.status,
            "values": trial.hyperparameters.values,
            "bn_layers": [bn.name for bn in bn_keras.find_batchnorm(model)],
            # BatchNormMonitor's tag prefixes of those layers.
            "bn_tags": [tag for _, tag in batchnorm_tags(model)],
        }
    write(
        result_path,
        {
            "backend": keras.backend.backend(),
            "log_dir": log_dir,
            "trials": trials,
        },
    )


if __name__ == "__main__":
    directory, result_path = sys.argv[2], sys.argv[3]
    if MODE == "resume":
        resume(directory, result_path)
    elif MODE == "grid":
        grid(directory, result_path, sys.argv[4], int(sys.argv[5]))
    elif MODE == "mirrored":
        mirrored(directory, result_path)
    elif MODE == "logs":
        logs(directory, result_path)
    else:
        raise SystemExit(f"unknown mode {MODE!r}")
