"""The batch normalization doctor on three broken models, and their fixes.

A small CNN on scikit-learn's digits (Conv - BN - ReLU - Dense - BN - ReLU
- Dense), broken three ways that people meet:

1. **Stale statistics after a short fine-tune.** Trained on the digits,
   then fine-tuned for two epochs on inverted scans (white on black). The
   weights adapt within a few steps; the moving statistics, exponential
   averages with Keras's momentum 0.99, still hold part of the old
   domain's. `bn_keras.diagnose` finds `statistics-mismatch`, and
   `report.fix()` gives a model with precise statistics.
2. **Pixels on the wrong scale.** The trained model fed pixels in 0-255
   while it was trained on 0-1. The doctor finds `preprocessing-mismatch`
   and says by how much; the remedy is the input pipeline (`x / 255`), not
   the model.
3. **Training at batch 2.** Batch statistics of two samples are noise: the
   model predicts differently in training mode and in inference
   (`noisy-batch-statistics`). The remedy needs training: here, two more
   epochs at batch 32.

For each it prints the doctor's report, then a table of accuracy on the
test set before and after the remedy. The digits ship with scikit-learn:
nothing is downloaded.

Usage:

    python examples/doctor.py [--quick]

`--quick` trains on a third of the data for fewer epochs (seconds; CI).
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import bn_keras  # noqa: E402

L = keras.layers


def load_data(quick):
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32").reshape(-1, 8, 8, 1)
    y = digits.target
    if quick:
        x, _, y, _ = train_test_split(
            x, y, train_size=600, random_state=0, stratify=y
        )
    return train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)


def build_cnn():
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Conv2D(16, 3, padding="same", use_bias=False),
            L.BatchNormalization(),
            L.ReLU(),
            L.Flatten(),
            L.Dense(64, use_bias=False),
            L.BatchNormalization(),
            L.ReLU(),
            L.Dense(10),
        ],
        name="digits_cnn",
    )


def compile_model(model, learning_rate):
    model.compile(
        keras.optimizers.Adam(learning_rate),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def accuracy(model, x, y):
    return float(np.mean(model.predict(x, verbose=0).argmax(-1) == y))


def copy_of(model):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def show(title, report):
    print(f"\n=== {title} ===\n")
    print(report)
    return report


def stale_after_fine_tune(trained, data, epochs):
    x_train, x_test, y_train, y_test = data
    model = compile_model(copy_of(trained), 1e-3)
    model.fit(1.0 - x_train, y_train, batch_size=32, epochs=epochs, verbose=0)
    report = show(
        "1. fine-tuned briefly on inverted scans",
        bn_keras.diagnose(model, (1.0 - x_test, y_test)),
    )
    fixed = report.fix()
    return {
        "model": f"fine-tuned {epochs} epoch{'s' * (epochs > 1)} on inverted "
        "scans",
        "code": "statistics-mismatch",
        "report": report,
        "before": accuracy(model, 1.0 - x_test, y_test),
        "after": accuracy(fixed, 1.0 - x_test, y_test),
        "remedy": "report.fix()",
        "recheck": bn_keras.diagnose(fixed, (1.0 - x_test, y_test)),
    }


def wrong_scale(trained, data):
    _, x_test, _, y_test = data
    pixels = x_test * 255.0
    report = show(
        "2. pixels in 0-255, trained on 0-1",
        bn_keras.diagnose(trained, (pixels, y_test)),
    )
    return {
        "model": "pixels 0-255 (trained on 0-1)",
        "code": "preprocessing-mismatch",
        "report": report,
        "before": accuracy(trained, pixels, y_test),
        "after": accuracy(trained, pixels / 255.0, y_test),
        "remedy": "inputs / 255",
        "recheck": bn_keras.diagnose(trained, (pixels / 255.0, y_test)),
    }


def small_batches(data, epochs):
    x_train, x_test, y_train, y_test = data
    keras.utils.set_random_seed(2)
    model = compile_model(build_cnn(), 1e-3)
    model.fit(x_train, y_train, batch_size=2, epochs=epochs, verbose=0)
    report = show(
        "3. trained at batch 2",
        bn_keras.diagnose(model, (x_test, y_test), batch_size=2),
    )
    before = accuracy(model, x_test, y_test)
    model.fit(x_train, y_train, batch_size=32, epochs=2, verbose=0)
    return {
        "model": "trained at batch 2",
        "code": "noisy-batch-statistics",
        "report": report,
        "before": before,
        "after": accuracy(model, x_test, y_test),
        "remedy": "2 more epochs at batch 32",
        "recheck": bn_keras.diagnose(model, (x_test, y_test), batch_size=32),
    }


def severity_of(report, code):
    """The severity of the finding `code` in `report`, or `-`."""
    for finding in report.findings:
        if finding.code == code:
            return finding.severity
    return "-"


def print_table(rows):
    print("\nTest accuracy before and after the remedy (the doctor's finding")
    print("before, and the doctor's verdict on the remedied model):\n")
    print(
        f"{'model':<39}{'finding':<24}{'severity':<10}{'as is':>6}"
        f"{'after':>7}  {'remedy':<27}doctor after"
    )
    for row in rows:
        verdict = "ok" if row["recheck"].ok else "findings remain"
        print(
            f"{row['model']:<39}{row['code']:<24}"
            f"{severity_of(row['report'], row['code']):<10}"
            f"{row['before']:>6.3f}{row['after']:>7.3f}  {row['remedy']:<27}"
            f"{verdict}"
        )


def run(quick=False):
    data = load_data(quick)
    x_train, _, y_train, _ = data
    keras.utils.set_random_seed(0)
    trained = compile_model(build_cnn(), 3e-3)
    trained.fit(
        x_train, y_train, batch_size=32, epochs=4 if quick else 10, verbose=0
    )
    rows = [
        stale_after_fine_tune(trained, data, epochs=1 if quick else 2),
        wrong_scale(trained, data),
        small_batches(data, epochs=1 if quick else 2),
    ]
    print_table(rows)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a third of the data, fewer epochs (a CI check)",
    )
    args = parser.parse_args(argv)
    return run(quick=args.quick)


if __name__ == "__main__":
    main()
