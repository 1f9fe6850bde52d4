"""Batch normalization on the inputs, in place of standardizing by hand.

Two features on very different scales, A uniform on [1, 10] and B uniform
on [1, 200], and the target `2*A + 3*B` plus a little noise. The same small
network (Dense 32 - ReLU - Dense 32 - ReLU - Dense 1, same initial weights,
Adam, the same batches in the same order) is trained five times per batch
size (8, 32 and 256):

1. `no normalization`: on the raw features;
2. `by hand`: on features standardized with the training set's mean and
   standard deviation (what the model then needs in production too);
3. `keras Normalization`: `keras.layers.Normalization()` adapted on the
   training set (`adapt` makes a pass over the data before training);
4. `input BN (batch)`: `bn_keras.insert_batchnorm(model, placement=None,
   input_batchnorm="batch")`, plain BN on the input: each training batch
   is standardized by its own mean and variance;
5. `input BN (renorm)`: `input_batchnorm="renorm"`, batch renormalization
   with cumulative statistics (`momentum=None`, `renorm_momentum=None`):
   each training batch is standardized by the mean and variance of all the
   batches before it, which converge to the training set's, with no pass
   over the data beforehand.

It prints, per batch size, each setting's best validation MSE, its ratio
to `by hand`'s, and the first epoch at which the validation MSE falls below
1% of the target's variance (R^2 >= 0.99); it saves a PNG of the
validation curves, one panel per batch size. With several `--seeds`, the
figures are the median over the seeds, the ratio's worst case beside it.

What to expect: `input BN (renorm)` and `keras Normalization` match `by
hand`; `input BN (batch)` levels off two to three orders of magnitude
higher. Plain BN standardizes each batch with its own statistics: for B
(standard deviation 57), the mean of 32 samples is off by about 10, which
is 30 in the target, and a different 30 in every batch; the network
cannot undo noise it does not see, and smaller batches make it worse. At
batch 256, 20 epochs are only 250 steps, too few for any standardized
input to grow the network's output to the target's scale (about 310):
`by hand` itself is still far from the target there, and the raw features
look better only because they start at the target's scale; run
`--batch-sizes 256 --epochs 160` for as many steps as at batch 32.

Usage:

    python examples/input_batchnorm.py [--quick] [--out DIR]
        [--batch-sizes 8 32 256] [--epochs 20] [--seeds 0]

`--quick` trains on less data for a few epochs (seconds; used by CI);
`--out` is the directory of the PNG and of `input_batchnorm.json`, every
validation curve (default: the current directory).
"""

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import bn_keras  # noqa: E402

FIGURE_NAME = "input_batchnorm.png"
RESULTS_NAME = "input_batchnorm.json"
SETTINGS = (
    "no normalization",
    "by hand",
    "keras Normalization",
    "input BN (batch)",
    "input BN (renorm)",
)
BASELINE = "by hand"
LEARNING_RATE = 0.01


def make_data(num_samples, seed=0):
    """Features `[A, B]` and target `2*A + 3*B + noise`, float32."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(1.0, 10.0, num_samples)
    b = rng.uniform(1.0, 200.0, num_samples)
    y = 2.0 * a + 3.0 * b + rng.normal(0.0, 0.5, num_samples)
    x = np.stack([a, b], axis=1).astype("float32")
    return x, y[:, None].astype("float32")


def build_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((2,), name="features"),
            keras.layers.Dense(32, activation="relu", name="hidden_1"),
            keras.layers.Dense(32, activation="relu", name="hidden_2"),
            keras.layers.Dense(1, name="target"),
        ],
        name="regression",
    )


def make_setting(name, initial, x_train):
    """The model of a setting, from `initial`'s weights, and the function
    that turns raw features into its inputs."""
    raw = lambda x: x  # noqa: E731
    if name in ("no normalization", "by hand"):
        model = keras.models.clone_model(initial)
        model.set_weights(initial.get_weights())
        if name == "no normalization":
            return model, raw
        mean, std = x_train.mean(axis=0), x_train.std(axis=0)
        return model, lambda x: (x - mean) / std
    if name == "keras Normalization":
        normalization = keras.layers.Normalization(name="features_norm")
        normalization.adapt(x_train)
        layers = [keras.layers.Input((2,), name="features"), normalization]
        for layer in initial.layers:
            copy = layer.__class__.from_config(layer.get_config())
            layers.append(copy)
        model = keras.Sequential(layers, name="regression")
        for copy, layer in zip(model.layers[1:], initial.layers):
            copy.set_weights(layer.get_weights())
        return model, raw
    kind = "batch" if name == "input BN (batch)" else "renorm"
    model = bn_keras.insert_batchnorm(
        initial, placement=None, input_batchnorm=kind
    )
    return model, raw


def train(model, x, y, validation_data, epochs, batch_size, seed):
    """Trains `model`; returns its validation MSE after each epoch."""
    model.compile(keras.optimizers.Adam(LEARNING_RATE), loss="mse")
    keras.utils.set_random_seed(seed + 1)  # the same batches for all
    history = model.fit(
        x,
        y,
        batch_size=batch_size,
        epochs=epochs,
        validation_data=validation_data,
        shuffle=True,
        verbose=0,
    )
    return [float(v) for v in history.history["val_loss"]]


def first_epoch_below(losses, target):
    """1-based index of the first loss <= target, or None."""
    for epoch, loss in enumerate(losses, start=1):
        if loss <= target:
            return epoch
    return None


def run(num_samples, epochs, batch_sizes, seeds):
    """Trains every setting at every batch size, for every seed.

    Returns `{"target": ..., "curves": {batch: {setting: [losses per
    epoch, one list per seed]}}}`.
    """
    x, y = make_data(num_samples)
    split = int(0.8 * num_samples)
    x_train, y_train = x[:split], y[:split]
    x_val, y_val = x[split:], y[split:]
    curves = {}
    for batch_size in batch_sizes:
        curves[batch_size] = {name: [] for name in SETTINGS}
        for seed in seeds:
            initial = build_model(seed)
            for name in SETTINGS:
                model, inputs = make_setting(name, initial, x_train)
                curves[batch_size][name].append(
                    train(
                        model,
                        inputs(x_train),
                        y_train,
                        (inputs(x_val), y_val),
                        epochs,
                        batch_size,
                        seed,
                    )
                )
    return {
        "target": 0.01 * float(np.var(y_val)),
        "train_samples": split,
        "curves": curves,
    }


def summarize(results):
    """Per batch size and setting: median best MSE over the seeds, the
    median and worst ratio to `by hand`'s (seed by seed), and the epoch
    each seed reaches the target."""
    summary = {}
    for batch_size, settings in results["curves"].items():
        hand = [min(curve) for curve in settings[BASELINE]]
        summary[batch_size] = {}
        for name, curves in settings.items():
            best = [min(curve) for curve in curves]
            ratios = [b / h for b, h in zip(best, hand)]
            summary[batch_size][name] = {
                "best": float(np.median(best)),
                "ratio": float(np.median(ratios)),
                "worst_ratio": float(max(ratios)),
                "epochs": [
                    first_epoch_below(c, results["target"]) for c in curves
                ],
            }
    return summary


def print_summary(summary, results, epochs, seeds):
    print(
        f"Target: validation MSE <= {results['target']:.1f} (1% of the "
        f"target's variance); {epochs} epochs of "
        f"{results['train_samples']} samples; seeds {seeds}."
    )
    for batch_size, settings in summary.items():
        steps = -(-results["train_samples"] // batch_size) * epochs
        print(f"\nbatch {batch_size} ({steps} steps)")
        print(
            f"{'setting':<22}{'best val MSE':>14}{'x by hand':>11}"
            f"{'worst':>8}  epoch reaching the target"
        )
        for name, row in settings.items():
            reached = " ".join(
                "-" if e is None else str(e) for e in row["epochs"]
            )
            print(
                f"{name:<22}{row['best']:>14.3f}{row['ratio']:>11.2f}"
                f"{row['worst_ratio']:>8.2f}  {reached}"
            )


def plot(results, path):
    """Validation MSE per epoch (first seed), one panel per batch size."""
    curves = results["curves"]
    figure, axes = plt.subplots(
        1, len(curves), figsize=(4.2 * len(curves), 4.2), squeeze=False
    )
    styles = {
        "no normalization": dict(color="gray", linestyle=":"),
        "by hand": dict(color="black", linewidth=2.5),
        "keras Normalization": dict(color="tab:green", linestyle="--"),
        "input BN (batch)": dict(color="tab:red"),
        "input BN (renorm)": dict(color="tab:blue", linestyle="-."),
    }
    for ax, (batch_size, settings) in zip(axes[0], curves.items()):
        for name, runs in settings.items():
            losses = runs[0]
            ax.plot(
                range(1, len(losses) + 1), losses, label=name, **styles[name]
            )
        ax.axhline(results["target"], color="gray", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_title(f"batch {batch_size}")
        ax.set_xlabel("epoch")
    axes[0][0].set_ylabel("validation MSE (gray line: 1% of Var(y))")
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(labels))
    figure.suptitle("y = 2A + 3B, A ~ U[1, 10], B ~ U[1, 200]")
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="a few epochs on less data (CI)"
    )
    parser.add_argument(
        "--out", default=".", help="directory of the PNG (default: .)"
    )
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", default=[8, 32, 256]
    )
    parser.add_argument("--epochs", type=int, help="(default: 20, 2 quick)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args(argv)
    num_samples = 400 if args.quick else 4000
    epochs = args.epochs or (2 if args.quick else 20)

    results = run(num_samples, epochs, args.batch_sizes, args.seeds)
    print_summary(summarize(results), results, epochs, args.seeds)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, FIGURE_NAME)
    plot(results, path)
    with open(os.path.join(args.out, RESULTS_NAME), "w") as file:
        json.dump(results, file)
    print(f"\nSaved {path}")


if __name__ == "__main__":
    main()
