"""Where should batch normalization go in a small CNN? Let keras-tuner decide.

A small convolutional network for scikit-learn's bundled digits (8x8
grey-scale images of the ten digits; nothing is downloaded) is written
the usual way, without batch normalization. `BNPlacementHyperModel` turns
it into a search space: each convolution and Dense layer gets its own
placement (BN after the layer and before its activation, after the
activation, before the layer with the previous layer's activation moved
after it as in pre-activation ResNets, or none; the first convolution,
which reads the input, gets no BN before it, and the logits none after
them) and normalization (plain or ghost batches), and each trial
trains a copy of the model, rebuilt with `bn_keras.insert_batchnorm`, from
a fresh initialization. The report lists the trials, best first, with the
choices of each layer.

Every trial also writes TensorBoard logs with its hyperparameters
(HParams dashboard) and the `BatchNormMonitor`'s figures to a run named
by its trial id and what it tried, such as
`<out>/logs/trial_2-layer-bn-act.ghost_bn-act-layer.ghost_layer-act-x2`
(`run_name` in `report.json`):

    tensorboard --logdir <out>/logs

Two trials can build one network: a layer's `bn-act-layer` puts BN where
the layer before it would put it with `layer-bn-act`.

Run it:

    python examples/placement_search.py               # 8 trials, ~1 minute
    python examples/placement_search.py --quick       # 2 trials, seconds
    python examples/placement_search.py --out results # keep the results

The search itself (the tuner's files), the logs and `report.json` go to
`--out` (a new temporary folder by default).
"""

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import keras_tuner  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import bn_keras  # noqa: E402
import bn_keras.tuner  # noqa: E402


def build_model():
    """The model as one would write it, without batch normalization."""
    conv = dict(kernel_size=3, padding="same", activation="relu")
    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(16, name="conv_1", **conv)(inputs)
    x = keras.layers.MaxPooling2D(2, name="pool_1")(x)
    x = keras.layers.Conv2D(32, name="conv_2", **conv)(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool_2")(x)
    x = keras.layers.Dense(32, activation="relu", name="dense")(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    model = keras.Model(inputs, outputs, name="digits_cnn")
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def load_data(quick, seed):
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target.astype("int32")
    if quick:
        x, y = x[:480], y[:480]
    return train_test_split(
        x, y, test_size=0.25, random_state=seed, stratify=y
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="2 trials of 1 epoch (for CI)"
    )
    parser.add_argument(
        "--out", default=None, help="results folder (default: a temp one)"
    )
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    trials = args.trials or (2 if args.quick else 8)
    epochs = args.epochs or (1 if args.quick else 6)
    out = args.out or tempfile.mkdtemp(prefix="placement_search_")
    os.makedirs(out, exist_ok=True)
    log_dir = os.path.join(out, "logs")

    keras.utils.set_random_seed(args.seed)
    x_train, x_val, y_train, y_val = load_data(args.quick, args.seed)

    hypermodel = bn_keras.tuner.BNPlacementHyperModel(
        build_model,  # a function: each trial starts from fresh weights
        placements=["layer-bn-act", "layer-act-bn", "bn-act-layer", "none"],
        normalizations=["batch", "ghost"],
        momentum=0.9,  # short trainings: moving averages must keep up
        virtual_batch_size=16,
        input_batchnorm=False,
    )
    tuner = keras_tuner.RandomSearch(
        hypermodel,
        objective="val_accuracy",
        max_trials=trials,
        seed=args.seed,
        directory=out,
        project_name="search",
        overwrite=True,
    )
    print(f"Slots searched: {hypermodel.slots}")
    start = time.time()
    tuner.search(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=epochs,
        batch_size=64,
        verbose=0,
        callbacks=[
            keras.callbacks.TensorBoard(log_dir),
            bn_keras.callbacks.BatchNormMonitor(log_dir, histograms=False),
        ],
    )
    seconds = time.time() - start
    rows = bn_keras.tuner.placement_report(tuner)
    print(
        f"{len(rows)} trials of {epochs} epoch(s) in {seconds:.0f} s. "
        f"Results in {out}; logs: tensorboard --logdir {log_dir}"
    )
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(rows, f, indent=2, default=_plain)
    return rows


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON-serializable: {value!r}")


if __name__ == "__main__":
    main()
