"""Very small batches: plain batch normalization against batch renormalization.

An MLP (Dense 64 - Dense 64 - Dense 10, ReLU) on scikit-learn's digits,
trained with batches of 4 samples, once with
`bn_keras.insert_batchnorm(model)` (plain BN) and once with
`normalization=bn_keras.layers.BatchRenormalization(...)` (batch
renormalization); same initial weights, same batches, three seeds.

With 4 samples, the batch mean and variance that BN normalizes with in
training are noisy estimates of the population statistics it uses in
inference, so the network that training shapes is not quite the one that
evaluation runs. Batch renormalization (Ioffe, 2017) corrects each batch's
statistics towards the moving ones with `r` and `d`, clipped to `[1/rmax,
rmax]` and `[-dmax, dmax]`: training then sees the inference transform.

It prints, per seed and on average:

- the validation accuracy (inference mode: moving statistics);
- the train/inference gap (`bn_keras.models.train_inference_gap`):
  accuracy on the training set computed in training mode (each batch of 4
  normalized with its own statistics, renorm's corrections from the
  trained model's state, which it leaves unchanged) minus the accuracy on
  the same samples in inference mode;

and saves a PNG of the validation accuracy per epoch (mean over seeds).

The renorm schedule is the paper's shape on this run's scale: `rmax = 1`,
`dmax = 0` (plain BN) for the first epoch, then linear ramps reaching
`rmax = 3` and `dmax = 5` at the end of the second epoch.

The digits data ships with scikit-learn: nothing is downloaded.

Usage:

    python examples/renorm_small_batches.py [--quick] [--out DIR]

`--quick` trains one seed for one epoch on a fifth of the data (seconds;
used by CI); `--out` is the directory of the PNG (default: the current
directory).
"""

import argparse
import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import bn_keras  # noqa: E402

FIGURE_NAME = "renorm_small_batches.png"
BATCH_SIZE = 4


def load_data(seed=0, fraction=1.0):
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target
    if fraction < 1.0:
        x, _, y, _ = train_test_split(
            x, y, train_size=fraction, random_state=seed, stratify=y
        )
    return train_test_split(
        x, y, test_size=0.25, random_state=seed, stratify=y
    )


def build_mlp(seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10),
        ],
        name="mlp",
    )


def normalization(setting, steps_per_epoch):
    if setting == "plain BN":
        return bn_keras.layers.BatchNormalization()
    return bn_keras.layers.BatchRenormalization(
        renorm_clipping=bn_keras.layers.RenormClipping(
            rmax=3.0,
            dmax=5.0,
            warmup_steps=steps_per_epoch,
            rmax_steps=2 * steps_per_epoch,
            dmax_steps=2 * steps_per_epoch,
        )
    )


def _signed(value):
    """`+0.123`, and `+0.000` rather than `-0.000` for tiny negatives."""
    return f"{0.0 if abs(value) < 5e-4 else value:+.3f}"


def run_seed(seed, epochs, fraction):
    x_train, x_val, y_train, y_val = load_data(seed, fraction)
    steps_per_epoch = math.ceil(len(x_train) / BATCH_SIZE)
    mlp = build_mlp(seed)
    results = {}
    for setting in ("plain BN", "batch renorm"):
        model = bn_keras.insert_batchnorm(
            mlp, normalization=normalization(setting, steps_per_epoch)
        )
        model.compile(
            optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        keras.utils.set_random_seed(seed + 1)  # the same batches for both
        history = model.fit(
            x_train,
            y_train,
            validation_data=(x_val, y_val),
            epochs=epochs,
            batch_size=BATCH_SIZE,
            verbose=0,
        )
        # Accuracy on the training set in training mode (each batch of 4
        # normalized as in training) and in inference; the model is left
        # as it was.
        gap = bn_keras.models.train_inference_gap(
            model, (x_train, y_train), batch_size=BATCH_SIZE
        )
        results[setting] = {
            "val_accuracy": [float(a) for a in history.history["val_accuracy"]],
            "train_inference": gap["inference"],
            "train_training_mode": gap["training"],
            "gap": gap["gap"],
        }
    return results, len(x_train), len(x_val), steps_per_epoch


def run(quick=False, out=".", seeds=(0, 1, 2)):
    """Trains both settings per seed; returns `{setting: summary}`."""
    epochs = 1 if quick else 4
    seeds = seeds[:1] if quick else seeds
    fraction = 0.2 if quick else 1.0
    per_seed = {}
    for seed in seeds:
        per_seed[seed], num_train, num_val, steps = run_seed(
            seed, epochs, fraction
        )
    print(
        f"digits: {num_train} train / {num_val} validation samples, batches "
        f"of {BATCH_SIZE} ({steps} steps per epoch), {epochs} epochs, SGD "
        f"with momentum 0.9 (backend: {keras.backend.backend()})"
    )
    print(
        f"{'':>4}  {'':<13}{'':>9}{'accuracy on the training set':>33}"
    )
    print(
        f"{'seed':>4}  {'setting':<13}{'val acc':>9}{'inference':>12}"
        f"{'training mode':>15}{'gap':>8}"
    )
    summary = {}
    for setting in ("plain BN", "batch renorm"):
        rows = [per_seed[seed][setting] for seed in seeds]
        for seed, row in zip(seeds, rows):
            print(
                f"{seed:>4}  {setting:<13}{row['val_accuracy'][-1]:>9.3f}"
                f"{row['train_inference']:>12.3f}"
                f"{row['train_training_mode']:>15.3f}{_signed(row['gap']):>8}"
            )
        summary[setting] = {
            "val_accuracy": float(
                np.mean([r["val_accuracy"][-1] for r in rows])
            ),
            "gap": float(np.mean([r["gap"] for r in rows])),
            "abs_gap": float(np.mean([abs(r["gap"]) for r in rows])),
            "curve": np.mean([r["val_accuracy"] for r in rows], axis=0),
            "per_seed": rows,
        }
    for setting, result in summary.items():
        print(
            f"mean  {setting:<13}{result['val_accuracy']:>9.3f}"
            f"{'':>27}{_signed(result['gap']):>8}"
        )

    os.makedirs(out, exist_ok=True)
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for setting, style in (("plain BN", "--"), ("batch renorm", "-")):
        curve = summary[setting]["curve"]
        left.plot(range(1, epochs + 1), curve, style, marker="o", label=setting)
    left.set_xticks(range(1, epochs + 1))
    left.set_xlabel("epoch")
    left.set_ylabel("validation accuracy (mean over seeds)")
    left.set_title(f"Batches of {BATCH_SIZE}")
    left.grid(True, alpha=0.3)
    left.legend()
    settings = list(summary)
    positions = np.arange(len(settings))
    inference = [
        np.mean([r["train_inference"] for r in summary[s]["per_seed"]])
        for s in settings
    ]
    training = [
        np.mean([r["train_training_mode"] for r in summary[s]["per_seed"]])
        for s in settings
    ]
    right.bar(positions - 0.2, training, 0.4, label="training mode")
    right.bar(positions + 0.2, inference, 0.4, label="inference mode")
    right.set_xticks(positions, settings)
    right.set_ylim(min(training + inference) - 0.05, 1.0)
    right.set_ylabel("accuracy on the training set")
    right.set_title("Train/inference gap")
    right.legend()
    figure.tight_layout()
    path = os.path.join(out, FIGURE_NAME)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    print(f"Saved {path}")
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one seed, one epoch, a fifth of the data (CI)",
    )
    parser.add_argument(
        "--out", default=".", help="directory of the PNG (default: .)"
    )
    args = parser.parse_args(argv)
    return run(quick=args.quick, out=args.out)


if __name__ == "__main__":
    main()
