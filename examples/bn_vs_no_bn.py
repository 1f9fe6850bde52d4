"""The classic comparison: the same CNN with and without batch normalization.

A small CNN (Conv 32 - Conv 32 - max pool - Conv 64 - global average pool -
Dense 10, ReLU) on scikit-learn's 8x8 digits, trained with SGD (momentum
0.9) at two learning rates, once as it is and once with
`bn_keras.insert_batchnorm(model)`: BN between every convolution and its
ReLU ("layer-bn-act", the paper's placement). Both start from the same
initial weights and see the same batches. It prints, per run, the
validation accuracy after epochs 1, 3 and 5 and at the end, the best one
and the first epoch that reaches 95%, and saves a PNG of the validation
accuracy curves.

What to expect (Ioffe and Szegedy, 2015): with BN the network trains in a
fraction of the epochs, and the larger learning rate helps it rather than
hurting it.

BN's momentum is 0.9 rather than Keras's 0.99: one epoch of digits is only
43 steps, and with 0.99 the moving statistics (used for validation) lag
behind the weights for the first epochs.

The digits data ships with scikit-learn: nothing is downloaded.

Usage:

    python examples/bn_vs_no_bn.py [--quick] [--out DIR]

`--quick` trains 2 epochs at one learning rate (seconds; used by CI);
`--out` is the directory of the PNG (default: the current directory).
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import bn_keras  # noqa: E402

FIGURE_NAME = "bn_vs_no_bn.png"
TARGET_ACCURACY = 0.95


def load_data(seed=0):
    """Digits as 8x8x1 images scaled to [0, 1], split 75/25."""
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32").reshape(-1, 8, 8, 1)
    return train_test_split(
        x, digits.target, test_size=0.25, random_state=seed,
        stratify=digits.target,
    )


def build_cnn(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10),
        ],
        name="cnn",
    )


def first_epoch_at(accuracies, target):
    """1-based index of the first accuracy >= target, or None."""
    for epoch, accuracy in enumerate(accuracies, start=1):
        if accuracy >= target:
            return epoch
    return None


def train(model, data, learning_rate, epochs, seed):
    x_train, x_val, y_train, y_val = data
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    keras.utils.set_random_seed(seed + 1)  # the same batches for every run
    start = time.perf_counter()
    history = model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=epochs,
        batch_size=32,
        verbose=0,
    )
    seconds = time.perf_counter() - start
    return history.history["val_accuracy"], seconds


def run(quick=False, out=".", seed=0):
    """Trains the four runs; returns `{(learning_rate, setting): result}`."""
    epochs = 2 if quick else 15
    learning_rates = (0.01,) if quick else (0.01, 0.1)
    data = load_data(seed)
    cnn = build_cnn(seed)
    results = {}
    for learning_rate in learning_rates:
        for setting in ("no BN", "BN"):
            if setting == "BN":
                model = bn_keras.insert_batchnorm(
                    cnn, normalization={"momentum": 0.9}
                )
            else:
                model = keras.models.clone_model(cnn)
                model.set_weights(cnn.get_weights())
            accuracies, seconds = train(
                model, data, learning_rate, epochs, seed
            )
            results[(learning_rate, setting)] = {
                "val_accuracy": [float(a) for a in accuracies],
                "best": float(max(accuracies)),
                "epoch_to_target": first_epoch_at(
                    accuracies, TARGET_ACCURACY
                ),
                "seconds": seconds,
            }

    x_train, x_val = data[0], data[1]
    print(
        f"digits: {len(x_train)} train / {len(x_val)} validation images, "
        f"SGD with momentum 0.9, batch 32, {epochs} epochs "
        f"(backend: {keras.backend.backend()})"
    )
    shown = [e for e in (1, 3, 5) if e < epochs] + [epochs]
    header = "".join(f"{'ep ' + str(e):>8}" for e in shown)
    print(
        f"{'lr':>5}  {'setting':<7}{header}{'best':>8}"
        f"{'to ' + str(round(TARGET_ACCURACY * 100)) + '%':>8}{'seconds':>9}"
    )
    for (learning_rate, setting), result in results.items():
        accuracies = result["val_accuracy"]
        cells = "".join(f"{accuracies[e - 1]:>8.3f}" for e in shown)
        reached = result["epoch_to_target"] or "-"
        print(
            f"{learning_rate:>5g}  {setting:<7}{cells}{result['best']:>8.3f}"
            f"{reached:>8}{result['seconds']:>9.1f}"
        )

    os.makedirs(out, exist_ok=True)
    figure, all_axes = plt.subplots(
        1, len(learning_rates), figsize=(5 * len(learning_rates), 4),
        sharey=True, squeeze=False,
    )
    for axes, learning_rate in zip(all_axes[0], learning_rates):
        for setting, style in (("no BN", "--"), ("BN", "-")):
            accuracies = results[(learning_rate, setting)]["val_accuracy"]
            axes.plot(
                range(1, epochs + 1), accuracies, style, marker="o",
                label=setting,
            )
        axes.set_title(f"SGD, learning rate {learning_rate:g}")
        axes.set_xlabel("epoch")
        axes.grid(True, alpha=0.3)
        axes.legend()
    all_axes[0][0].set_ylabel("validation accuracy")
    figure.suptitle("Same CNN on digits, with and without batch normalization")
    figure.tight_layout()
    path = os.path.join(out, FIGURE_NAME)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    print(f"Saved {path}")
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="2 epochs, one learning rate (CI)"
    )
    parser.add_argument(
        "--out", default=".", help="directory of the PNG (default: .)"
    )
    args = parser.parse_args(argv)
    return run(quick=args.quick, out=args.out)


if __name__ == "__main__":
    main()
