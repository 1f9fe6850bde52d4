"""Batch normalization on the inputs, in place of standardizing by hand.

Two features on very different scales, A uniform on [1, 10] and B uniform
on [1, 200], and the target `2*A + 3*B` plus a little noise. The same small
network (Dense 32 - ReLU - Dense 32 - ReLU - Dense 1, same initial weights,
Adam) is trained three times:

1. on the raw features;
2. on features standardized by hand with the training set's mean and
   standard deviation;
3. on the raw features, with `bn_keras.insert_batchnorm(model,
   placement=None, input_batchnorm=True)`: a BN layer on the input
   standardizes the features inside the model (batch statistics in
   training, moving statistics in inference), so the model takes raw data
   in production too.

It prints, for each, the first epoch (and the seconds of training until
then) at which the validation MSE falls below 1% of the target's variance
(R^2 >= 0.99), and the best validation MSE; and it saves a PNG of the three
validation-loss curves.

What to expect: input BN reaches the target in about the same number of
epochs as hand standardization. It then levels off higher, because each
training batch is standardized with its own mean and standard deviation
(for B, the batch mean of 32 samples is off by about 10, that is 30 in the
target): larger batches lower that floor. On this problem the raw features
also train well with Adam, whose per-weight step size hides the input
scale; plain SGD on the raw features diverges (try it).

Usage:

    python examples/input_batchnorm.py [--quick] [--out DIR]

`--quick` trains on less data for a few epochs (seconds; used by CI);
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
import numpy as np  # noqa: E402

import bn_keras  # noqa: E402

FIGURE_NAME = "input_batchnorm.png"


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


class _EpochClock(keras.callbacks.Callback):
    """Seconds of training at the end of each epoch."""

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()
        self.seconds = []

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)


def train(model, x, y, validation_data, epochs, batch_size, learning_rate):
    """Trains `model`; returns (validation losses, seconds) per epoch."""
    model.compile(keras.optimizers.Adam(learning_rate), loss="mse")
    clock = _EpochClock()
    history = model.fit(
        x,
        y,
        batch_size=batch_size,
        epochs=epochs,
        validation_data=validation_data,
        callbacks=[clock],
        shuffle=True,
        verbose=0,
    )
    return history.history["val_loss"], clock.seconds


def first_epoch_below(losses, target):
    """1-based index of the first loss <= target, or None."""
    for epoch, loss in enumerate(losses, start=1):
        if loss <= target:
            return epoch
    return None


def run(quick=False, out=".", seed=0):
    """Runs the comparison; returns `{setting: result dict}`."""
    num_samples, epochs = (800, 6) if quick else (4000, 30)
    batch_size, learning_rate = 32, 0.01
    x, y = make_data(num_samples, seed=seed)
    split = int(0.8 * num_samples)
    x_train, y_train = x[:split], y[:split]
    x_val, y_val = x[split:], y[split:]
    target = 0.01 * float(np.var(y_val))

    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    initial = build_model(seed)
    weights = initial.get_weights()

    def raw():
        model = build_model(seed)
        model.set_weights(weights)
        return model, x_train, (x_val, y_val)

    def standardized():
        model = build_model(seed)
        model.set_weights(weights)
        return model, (x_train - mean) / std, ((x_val - mean) / std, y_val)

    def input_batchnorm():
        model = bn_keras.insert_batchnorm(
            initial, placement=None, input_batchnorm=True
        )
        return model, x_train, (x_val, y_val)

    settings = {
        "no normalization": raw,
        "standardized by hand": standardized,
        "input_batchnorm=True": input_batchnorm,
    }
    results = {}
    for name, make in settings.items():
        keras.utils.set_random_seed(seed + 1)  # the same batches for all
        model, inputs, validation = make()
        losses, seconds = train(
            model,
            inputs,
            y_train,
            validation,
            epochs,
            batch_size,
            learning_rate,
        )
        epoch = first_epoch_below(losses, target)
        results[name] = {
            "val_loss": losses,
            "epoch": epoch,
            "seconds": None if epoch is None else seconds[epoch - 1],
            "best": float(np.nanmin(losses)),
        }

    print(
        f"Target: validation MSE <= {target:.1f} (1% of the target's "
        f"variance), {epochs} epochs of {split} samples, batch {batch_size}."
    )
    print(f"{'setting':<24}{'epochs':>8}{'seconds':>10}{'best val MSE':>15}")
    for name, result in results.items():
        if result["epoch"] is None:
            reached = f"{'not in ' + str(epochs):>8}{'-':>10}"
        else:
            reached = f"{result['epoch']:>8}{result['seconds']:>10.1f}"
        print(f"{name:<24}{reached}{result['best']:>15.2f}")

    os.makedirs(out, exist_ok=True)
    figure, axes = plt.subplots(figsize=(6, 4))
    for name, result in results.items():
        axes.plot(
            range(1, epochs + 1), result["val_loss"], marker="o", label=name
        )
    axes.axhline(target, color="gray", linestyle="--", label="target")
    axes.set_yscale("log")
    axes.set_xlabel("epoch")
    axes.set_ylabel("validation MSE")
    axes.set_title("y = 2A + 3B, A ~ U[1, 10], B ~ U[1, 200]")
    axes.legend()
    figure.tight_layout()
    path = os.path.join(out, FIGURE_NAME)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    print(f"Saved {path}")
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="a few epochs on less data (CI)"
    )
    parser.add_argument(
        "--out", default=".", help="directory of the PNG (default: .)"
    )
    args = parser.parse_args(argv)
    run(quick=args.quick, out=args.out)


if __name__ == "__main__":
    main()
