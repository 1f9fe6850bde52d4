"""Run by test_batch_norm_monitor.py in a subprocess: logical devices must
be configured before TensorFlow initializes them. Trains the same model
under a MirroredStrategy on 2 logical CPUs with and without a
`BatchNormMonitor(probe_data=...)` and writes what each run ends with.

    python tests/callbacks/mirrored_probe_run.py RESULTS_JSON
"""

import json
import sys
import tempfile

import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2
)

import keras  # noqa: E402

import bn_keras  # noqa: E402


def replica_values(variable):
    """The variable's value on each replica."""
    value = variable.value
    parts = getattr(value, "values", (value,))
    return [np.asarray(part, np.float64).tolist() for part in parts]


def train(probe):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = rng.normal(size=(64, 1)).astype("float32")
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = keras.Sequential(
            [
                keras.Input((4,)),
                bn_keras.layers.BatchNormalization(renorm=True, name="own"),
                keras.layers.Dense(3),
                keras.layers.BatchNormalization(name="keras_bn"),
                keras.layers.Dense(1),
            ]
        )
        model.compile("sgd", "mse")
    monitor = bn_keras.callbacks.BatchNormMonitor(
        tempfile.mkdtemp(), probe_data=x[:16] if probe else None
    )
    history = model.fit(
        x, y, batch_size=16, epochs=3, verbose=0, callbacks=[monitor]
    )
    return {
        "loss": history.history["loss"],
        "probe_gap": history.history.get("bn_max_probe_gap"),
        "variables": {
            f"{layer.name}/{v.name}": replica_values(v)
            for layer in bn_keras.find_batchnorm(model)
            for v in layer.weights
        },
    }


if __name__ == "__main__":
    results = {"with_probe": train(True), "without_probe": train(False)}
    with open(sys.argv[1], "w") as f:
        json.dump(results, f)
