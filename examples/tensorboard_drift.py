"""Watch batch normalization in TensorBoard while a model trains.

A small CNN with batch normalization (built with
`bn_keras.layers.BNBlock`) trains on scikit-learn's digits with two
callbacks writing to the same log folder:

- `keras.callbacks.TensorBoard`: loss and accuracy (runs `train` and
  `validation`);
- `bn_keras.callbacks.BatchNormMonitor`: for every BN layer, the drift of
  its moving mean and variance, gamma and beta, dead channels, histograms,
  and, on a fixed probe batch, the gap between its training output (batch
  statistics) and its inference output (moving statistics) (in the log
  folder itself, with a Custom Scalars layout: an Overview, then one
  chart group per layer).

The monitor also adds its headline figures to the training logs, so they
can be printed (or used by `EarlyStopping`): per epoch, the largest drift
of a moving mean (in standard deviations), the largest train/inference gap
on the probe batch and the smallest moving variance. The model is trained
twice, with Keras's default BN momentum, 0.99, and with 0.9, each into its
own log folder; the script prints the figures side by side, saves a PNG of
them, and prints the command that opens the dashboard.

What to expect: an epoch of digits is only 43 steps. With momentum 0.99
the moving variance, which starts at 1, needs several epochs to come down
to the real variance of the activations (about 0.01 here), so inference
normalizes with the wrong statistics: the probe gap stays near 1 and the
validation accuracy near chance until they catch up. With 0.9 they follow
within an epoch. The monitor shows the problem, and the fix, directly.

The digits data ships with scikit-learn: nothing is downloaded.

Usage:

    python examples/tensorboard_drift.py [--quick] [--out DIR]

`--quick` trains 2 epochs (seconds; used by CI); `--out` is the directory
of the logs (`DIR/logs`) and the PNG (default: the current directory).
"""

import argparse
import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import bn_keras  # noqa: E402

FIGURE_NAME = "tensorboard_drift.png"
MOMENTA = (0.99, 0.9)
FIGURES = {
    "bn_max_drift_in_std": "max drift of a moving mean (std)",
    "bn_max_probe_gap": "max train/inference gap (probe batch)",
    "bn_min_moving_variance": "min moving variance",
}


def build_cnn(momentum, seed=0):
    keras.utils.set_random_seed(seed)

    def block(filters, name):
        return bn_keras.layers.BNBlock(
            keras.layers.Conv2D(filters, 3, padding="same"),
            activation="relu",
            placement="layer-bn-act",
            normalization={"momentum": momentum},
            name=name,
        )

    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            block(16, "block_1"),
            keras.layers.MaxPooling2D(),
            block(32, "block_2"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10),
        ],
        name="cnn",
    )


def train(momentum, data, log_dir, epochs, seed):
    """Fits one model with both callbacks; returns its history dict."""
    x_train, x_val, y_train, y_val = data
    model = build_cnn(momentum, seed)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    keras.utils.set_random_seed(seed + 1)  # the same batches for both
    history = model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=epochs,
        batch_size=32,
        verbose=0,
        callbacks=[
            keras.callbacks.TensorBoard(log_dir, write_graph=False),
            bn_keras.callbacks.BatchNormMonitor(
                log_dir, probe_data=x_val[:64]
            ),
        ],
    )
    return history.history


def run(quick=False, out=".", seed=0):
    """Trains with the monitor; returns `{momentum: figures per epoch}`."""
    epochs = 2 if quick else 12
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32").reshape(-1, 8, 8, 1)
    data = train_test_split(
        x, digits.target, test_size=0.25, random_state=seed,
        stratify=digits.target,
    )
    log_root = os.path.join(out, "logs")
    results = {}
    for momentum in MOMENTA:
        log_dir = os.path.join(log_root, f"momentum_{momentum}")
        logs = train(momentum, data, log_dir, epochs, seed)
        results[momentum] = {
            key: [float(v) for v in logs[key]]
            for key in (*FIGURES, "val_accuracy")
        }
    print(
        f"digits: {len(data[0])} train / {len(data[1])} validation images, "
        f"{epochs} epochs of {math.ceil(len(data[0]) / 32)} steps, CNN with "
        f"2 BN layers (backend: {keras.backend.backend()})"
    )
    print(
        f"{'':>5}"
        + "".join(f"{'BN momentum ' + str(m):^36}" for m in MOMENTA)
    )
    print(
        f"{'epoch':>5}"
        + f"{'val acc':>10}{'max drift':>12}{'probe gap':>14}" * len(MOMENTA)
    )
    for epoch in range(epochs):
        cells = "".join(
            f"{results[m]['val_accuracy'][epoch]:>10.3f}"
            f"{results[m]['bn_max_drift_in_std'][epoch]:>12.4f}"
            f"{results[m]['bn_max_probe_gap'][epoch]:>14.4f}"
            for m in MOMENTA
        )
        print(f"{epoch + 1:>5}{cells}")

    os.makedirs(out, exist_ok=True)
    figure, all_axes = plt.subplots(1, len(FIGURES), figsize=(13, 3.5))
    for axes, (key, title) in zip(all_axes, FIGURES.items()):
        for momentum in MOMENTA:
            axes.plot(
                range(1, epochs + 1), results[momentum][key], marker="o",
                label=f"momentum {momentum}",
            )
        axes.set_title(title)
        axes.set_xlabel("epoch")
        axes.grid(True, alpha=0.3)
        axes.legend()
    figure.tight_layout()
    path = os.path.join(out, FIGURE_NAME)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    print(f"Saved {path}")
    print(
        f"TensorBoard logs in {log_root}, one folder per momentum (the "
        "monitor's run, with Keras's train and validation runs inside). "
        "Open the dashboard with\n\n"
        f"    tensorboard --logdir {log_root}\n\n"
        "then http://localhost:6006: 'Scalars' for every figure per layer "
        "(filter on probe_gap or drift_in_std), 'Custom Scalars' for an "
        "overview and one group of charts per BN layer, 'Histograms' for "
        "gamma, beta and the moving statistics, 'Text' for a table of the "
        "BN layers."
    )
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 epochs (CI)")
    parser.add_argument(
        "--out",
        default=".",
        help="directory of the logs and the PNG (default: .)",
    )
    args = parser.parse_args(argv)
    return run(quick=args.quick, out=args.out)


if __name__ == "__main__":
    main()
