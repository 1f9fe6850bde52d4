"""Run by test_jax_data_parallel.py in a fresh process: trains the same
models with `keras.distribution.DataParallel` over 2 virtual CPU devices
and on one device, and saves what the test compares.

    python tests/distribute/jax_data_parallel_run.py OUT_DIR

JAX reads `XLA_FLAGS` once, when it starts, so the two devices need a
process of their own. For each case of `CASES` it writes `OUT_DIR/<case>.npz`
(`one/<weight path>`, `two/<weight path>`, `one/predictions`,
`two/predictions`); the monitor case also writes event files under
`OUT_DIR/monitor/{one,two}`; `OUT_DIR/results.json` holds the rest.
"""

import json
import os
import sys

DEVICES = 2
GLOBAL_BATCH = 16
SAMPLES = 64  # 4 steps per epoch
EPOCHS = 3
INPUT_SHAPE = (3, 4)  # per sample; channels last
# A short renorm schedule: bounds move during the 12 steps of training.
SCHEDULE = {
    "rmax": 1.5,
    "dmax": 0.5,
    "warmup_steps": 2,
    "rmax_steps": 8,
    "dmax_steps": 6,
}

# Arguments of bn_keras.layers.BatchNormalization (`schedule` becomes a
# RenormClipping). Ghost batches on JAX are formed over the global batch of
# 16: m = 4 gives 4 equal ghosts, 2 in each device's shard of 8; m = 6 gives
# ghosts of 6, 6 and 4, the second one across the two shards.
CASES = {
    "plain": {},
    "ghost_equal": {"virtual_batch_size": 4},
    "ghost_unequal": {"virtual_batch_size": 6},
    "renorm_schedule": {"renorm": True, "schedule": SCHEDULE},
    "ghost_renorm": {
        "virtual_batch_size": 6,
        "renorm": True,
        "schedule": SCHEDULE,
    },
}
# Trained on one device only: each device's shard normalized on its own
# (ghost batches of the shard size), which DataParallel must not compute.
PER_SHARD = {"virtual_batch_size": GLOBAL_BATCH // DEVICES}


def data():
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, *INPUT_SHAPE)) * 2.0 + 0.5
    # Each sample's own offset, so that shards differ in their statistics.
    x = x + np.linspace(-2.0, 2.0, SAMPLES)[:, None, None]
    y = rng.normal(size=(SAMPLES, INPUT_SHAPE[0], 2))
    return x.astype("float32"), y.astype("float32")


def layer(options, name="bn"):
    import bn_keras

    options = dict(options)
    schedule = options.pop("schedule", None)
    if schedule is not None:
        options["renorm_clipping"] = bn_keras.layers.RenormClipping(**schedule)
    return bn_keras.layers.BatchNormalization(
        momentum=0.5, renorm_momentum=0.5, name=name, **options
    )


def model(bn_layers):
    import keras

    keras.utils.set_random_seed(0)  # the same initial weights every time
    inputs = keras.Input(INPUT_SHAPE)
    x = keras.layers.Dense(INPUT_SHAPE[-1], name="pre")(inputs)
    for bn in bn_layers:
        x = bn(x)
    outputs = keras.layers.Dense(2, name="head")(x)
    return keras.Model(inputs, outputs)


def fit(bn_layers, x, y, distribution=None, callbacks=()):
    """Weights and predictions after `EPOCHS` epochs of `fit`, and the
    number of devices holding the first BN layer's moving mean."""
    import contextlib

    import keras
    import numpy as np

    scope = distribution.scope() if distribution else contextlib.nullcontext()
    with scope:
        net = model(bn_layers)
        net.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
        net.fit(
            x,
            y,
            batch_size=GLOBAL_BATCH,
            epochs=EPOCHS,
            shuffle=False,
            verbose=0,
            callbacks=list(callbacks),
        )
        predictions = net.predict(x, batch_size=GLOBAL_BATCH, verbose=0)
    arrays = {
        w.path: np.asarray(keras.ops.convert_to_numpy(w)) for w in net.weights
    }
    arrays["predictions"] = np.asarray(predictions)
    devices = len(bn_layers[0].moving_mean.value.sharding.device_set)
    return arrays, devices


def save(path, one, two):
    import numpy as np

    np.savez(
        path,
        **{f"one/{k}": v for k, v in one.items()},
        **{f"two/{k}": v for k, v in two.items()},
    )


def main(out_dir):
    import keras

    import bn_keras

    assert keras.backend.backend() == "jax"
    devices = keras.distribution.list_devices("cpu")
    assert len(devices) == DEVICES, devices
    distribution = keras.distribution.DataParallel(devices=devices)
    x, y = data()
    results = {"devices": [str(d) for d in devices], "sharded_over": {}}
    results["data_layout"] = str(
        distribution.get_data_layout((GLOBAL_BATCH, *INPUT_SHAPE)).axes
    )

    for case, options in CASES.items():
        one, _ = fit([layer(options)], x, y)
        two, sharded_over = fit([layer(options)], x, y, distribution)
        save(os.path.join(out_dir, f"{case}.npz"), one, two)
        results["sharded_over"][case] = sharded_over
    per_shard, _ = fit([layer(PER_SHARD)], x, y)
    save(os.path.join(out_dir, "per_shard.npz"), per_shard, per_shard)

    # The monitor on a model with plain, ghost and renorm layers.
    def monitored(where, distribution=None):
        bn_layers = [
            layer({}, "plain"),
            layer(CASES["ghost_unequal"], "ghost"),
            layer(CASES["renorm_schedule"], "renorm"),
        ]
        monitor = bn_keras.callbacks.BatchNormMonitor(
            os.path.join(out_dir, "monitor", where),
            update_freq=2,
            probe_data=x[:GLOBAL_BATCH],
        )
        return fit(bn_layers, x, y, distribution, [monitor])[0]

    save(
        os.path.join(out_dir, "monitor.npz"),
        monitored("one"),
        monitored("two", distribution),
    )

    # A last batch of 3 samples cannot be split over 2 devices.
    try:
        fit([layer({})], x[:35], y[:35], distribution)
    except ValueError as error:  # what Keras (JAX) raises, for the test
        results["partial_batch_error"] = {
            "type": f"{type(error).__module__}.{type(error).__name__}",
            "message": str(error),
        }
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
