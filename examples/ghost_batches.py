"""Large batches with ghost batch normalization against plain BN.

An MLP (Dense 256 - Dense 256 - Dense 10, ReLU) on scikit-learn's digits,
trained with batches of 512 samples, once with plain BN
(`bn_keras.insert_batchnorm(model)`) and once with ghost batches of 32
(`normalization=bn_keras.layers.GhostBatchNormalization(
virtual_batch_size=32)`): each batch of 512 is normalized as 16 separate
chunks of 32, as if it were 16 small batches, while the moving statistics
and inference stay those of plain BN. For reference, plain BN with batches
of 32 is trained too. Same initial weights, three seeds, SGD with momentum
0.9 at learning rate 0.1, BN momentum 0.9 (a batch of 512 leaves only 3
steps per epoch).

Ghost batches (Hoffer et al., 2017) bring back the noise of small-batch
statistics, a regularizer that large batches lose. It prints, per setting
(mean over seeds): the best and final validation accuracy, the final
validation loss, the final training loss (ghost batches' noise keeps it
higher) and the seconds per epoch; it saves a PNG of the validation loss
per epoch.

What to expect: digits is small and easy, and batches of 512 cost it no
accuracy here, so there is no large-batch gap for ghost batches to close:
accuracies agree within the seed-to-seed spread. What ghost batches do
change shows in the losses: a higher training loss (the noise of 32-sample
statistics) and a validation loss a little lower than plain BN's at the
same batch size.

The digits data ships with scikit-learn: nothing is downloaded.

Usage:

    python examples/ghost_batches.py [--quick] [--out DIR]

`--quick` trains one seed for 2 epochs (seconds; used by CI); `--out` is
the directory of the PNG (default: the current directory).
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import bn_keras  # noqa: E402

FIGURE_NAME = "ghost_batches.png"
LARGE_BATCH = 512
GHOST_BATCH = 32

#: setting -> (batch size, normalization template)
SETTINGS = {
    f"plain BN, batch {LARGE_BATCH}": (LARGE_BATCH, None),
    f"ghost {GHOST_BATCH}, batch {LARGE_BATCH}": (LARGE_BATCH, GHOST_BATCH),
    f"plain BN, batch {GHOST_BATCH}": (GHOST_BATCH, None),
}


def load_data(seed):
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    return train_test_split(
        x, digits.target, test_size=0.25, random_state=seed,
        stratify=digits.target,
    )


def build_mlp(seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(10),
        ],
        name="mlp",
    )


def normalization(ghost_batch):
    if ghost_batch is None:
        return bn_keras.layers.BatchNormalization(momentum=0.9)
    return bn_keras.layers.GhostBatchNormalization(
        virtual_batch_size=ghost_batch, momentum=0.9
    )


class _EpochSeconds(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def run_seed(seed, epochs):
    x_train, x_val, y_train, y_val = load_data(seed)
    mlp = build_mlp(seed)
    results = {}
    for setting, (batch_size, ghost_batch) in SETTINGS.items():
        model = bn_keras.insert_batchnorm(
            mlp, normalization=normalization(ghost_batch)
        )
        model.compile(
            optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        clock = _EpochSeconds()
        keras.utils.set_random_seed(seed + 1)
        history = model.fit(
            x_train,
            y_train,
            validation_data=(x_val, y_val),
            epochs=epochs,
            batch_size=batch_size,
            callbacks=[clock],
            verbose=0,
        )
        results[setting] = {
            "val_accuracy": history.history["val_accuracy"],
            "val_loss": history.history["val_loss"],
            "loss": history.history["loss"],
            # The median leaves out the first epoch's tracing.
            "seconds_per_epoch": float(np.median(clock.seconds)),
        }
    return results, len(x_train), len(x_val)


def run(quick=False, out=".", seeds=(0, 1, 2)):
    """Trains every setting per seed; returns `{setting: summary}`."""
    epochs = 2 if quick else 30
    seeds = seeds[:1] if quick else seeds
    per_seed = {}
    for seed in seeds:
        per_seed[seed], num_train, num_val = run_seed(seed, epochs)
    summary = {}
    for setting in SETTINGS:
        rows = [per_seed[seed][setting] for seed in seeds]
        summary[setting] = {
            "best_val_accuracy": float(
                np.mean([max(r["val_accuracy"]) for r in rows])
            ),
            "val_accuracy": float(
                np.mean([r["val_accuracy"][-1] for r in rows])
            ),
            "val_loss": float(np.mean([r["val_loss"][-1] for r in rows])),
            "loss": float(np.mean([r["loss"][-1] for r in rows])),
            "seconds_per_epoch": float(
                np.mean([r["seconds_per_epoch"] for r in rows])
            ),
            "val_loss_curve": np.mean([r["val_loss"] for r in rows], axis=0),
        }
    print(
        f"digits: {num_train} train / {num_val} validation samples, {epochs} "
        f"epochs, SGD 0.1 with momentum 0.9, mean over {len(seeds)} seed(s) "
        f"(backend: {keras.backend.backend()})"
    )
    print(
        f"{'setting':<24}{'best val acc':>13}{'final val acc':>14}"
        f"{'val loss':>10}{'train loss':>12}{'s/epoch':>9}"
    )
    for setting, result in summary.items():
        print(
            f"{setting:<24}{result['best_val_accuracy']:>13.4f}"
            f"{result['val_accuracy']:>14.4f}{result['val_loss']:>10.4f}"
            f"{result['loss']:>12.5f}{result['seconds_per_epoch']:>9.2f}"
        )

    os.makedirs(out, exist_ok=True)
    figure, axes = plt.subplots(figsize=(6, 4))
    for setting, result in summary.items():
        axes.plot(
            range(1, epochs + 1), result["val_loss_curve"], marker=".",
            label=setting,
        )
    axes.set_yscale("log")
    axes.set_xlabel("epoch")
    axes.set_ylabel("validation loss (mean over seeds)")
    axes.set_title("Ghost batch normalization on digits")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path = os.path.join(out, FIGURE_NAME)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    print(f"Saved {path}")
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="one seed, 2 epochs (CI)"
    )
    parser.add_argument(
        "--out", default=".", help="directory of the PNG (default: .)"
    )
    args = parser.parse_args(argv)
    return run(quick=args.quick, out=args.out)


if __name__ == "__main__":
    main()
