"""Run by test_other_backends.py in a subprocess with KERAS_BACKEND=jax or
torch and TensorFlow made unimportable: fits a model with BatchNormMonitor
and PreciseBN and saves weight snapshots and results for the test to check.

    KERAS_BACKEND=torch python tests/callbacks/monitor_run.py LOG_DIR OUT_JSON
"""

import sys

sys.modules["tensorflow"] = None  # `import tensorflow` now raises ImportError

import json  # noqa: E402
import os  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

import bn_keras  # noqa: E402


def weights(layers):
    return {
        layer.name: {
            w.name: np.asarray(
                keras.ops.convert_to_numpy(w), np.float64
            ).tolist()
            for w in layer.weights
        }
        for layer in layers
    }


class Snapshots(keras.callbacks.Callback):
    def __init__(self, layers):
        super().__init__()
        self.layers = layers
        self.taken = {}
        self.seen = 0

    def on_train_begin(self, logs=None):
        self.taken[0] = weights(self.layers)

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        _ = self.model  # On JAX, attaches the trainer's state to the variables.
        self.taken[self.seen] = weights(self.layers)


def main(log_dir, results_path):
    assert keras.backend.backend() == os.environ["KERAS_BACKEND"]
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(64, 4)) * 2 + 1).astype("float32")
    y = rng.normal(size=(64, 1)).astype("float32")
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.BatchNormalization(momentum=0.8, name="keras_bn"),
            keras.layers.Dense(6),
            bn_keras.layers.BatchNormalization(
                virtual_batch_size=4, momentum=0.8, name="ghost"
            ),
            bn_keras.layers.BatchRenormalization(momentum=0.8, name="renorm"),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    layers = bn_keras.find_batchnorm(model)
    snapshots = Snapshots(layers)
    history = model.fit(
        x,
        y,
        batch_size=16,
        epochs=2,
        verbose=0,
        callbacks=[
            snapshots,
            bn_keras.callbacks.BatchNormMonitor(
                log_dir, update_freq=2, probe_data=x[:16]
            ),
        ],
    )
    # Precise BN: recalibrate the first layer's inputs (the raw x).
    bn_keras.recalibrate(model, x, steps=2, batch_size=32)
    results = {
        "snapshots": snapshots.taken,
        "epsilon": {layer.name: layer.epsilon for layer in layers},
        "history": history.history,
        "recalibrated_mean": keras.ops.convert_to_numpy(
            layers[0].moving_mean
        ).tolist(),
        "recalibrated_variance": keras.ops.convert_to_numpy(
            layers[0].moving_variance
        ).tolist(),
        "backend": keras.backend.backend(),
        "tensorflow_imported": sys.modules.get("tensorflow") is not None,
    }
    with open(results_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
