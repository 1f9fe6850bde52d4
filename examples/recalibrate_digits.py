"""Precise BN on scikit-learn's digits: recalibration after a short training.

A small MLP with batch normalization is trained briefly with a poorly
chosen momentum (0.999): after a few hundred steps the moving statistics
have covered only a fraction of the way from their initial values (mean 0,
variance 1) to the statistics of the data, so the model evaluates badly in
inference even though it fits the training batches well. Recomputing the
exact population statistics with `bn_keras.recalibrate` (or the `PreciseBN`
callback) repairs inference without touching the learned weights.

The digits data ships with scikit-learn: nothing is downloaded.

    python examples/recalibrate_digits.py          # 3 seeds, 10 epochs
    python examples/recalibrate_digits.py --quick  # 1 seed, 3 epochs
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import bn_keras  # noqa: E402


def build_model(momentum):
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(128),
            bn_keras.layers.BatchNormalization(momentum=momentum),
            keras.layers.ReLU(),
            keras.layers.Dense(64),
            bn_keras.layers.BatchNormalization(momentum=momentum),
            keras.layers.ReLU(),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def run(seed, epochs, steps):
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data.astype("float32"),
        digits.target,
        test_size=0.25,
        random_state=seed,
        stratify=digits.target,
    )
    keras.utils.set_random_seed(seed)
    model = build_model(momentum=0.999)
    model.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=0)
    before = model.evaluate(x_test, y_test, verbose=0)[1]
    bn_keras.recalibrate(model, x_train, steps=steps, batch_size=32)
    after = model.evaluate(x_test, y_test, verbose=0)[1]

    # For comparison: the same training with Keras's default momentum.
    keras.utils.set_random_seed(seed)
    reference = build_model(momentum=0.99)
    reference.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=0)
    default = reference.evaluate(x_test, y_test, verbose=0)[1]
    return before, after, default


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="one seed, 3 epochs (a CI check)"
    )
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    seeds = [0] if args.quick else [0, 1, 2]
    epochs = 3 if args.quick else 10
    steps_per_epoch = int(np.ceil(1347 / 32))
    print(
        f"digits: 1347 train / 450 test samples, batch 32, {epochs} epochs "
        f"({epochs * steps_per_epoch} steps), BN momentum 0.999; "
        f"recalibration over at most {args.steps} batches "
        f"(backend: {keras.backend.backend()})"
    )
    print("seed  test accuracy: before  after recalibrate  (momentum 0.99)")
    results = []
    for seed in seeds:
        before, after, default = run(seed, epochs, args.steps)
        results.append((before, after, default))
        print(f"{seed:4d}  {before:21.3f}  {after:16.3f}  {default:15.3f}")
    if len(results) > 1:
        before, after, default = np.mean(results, axis=0)
        print(f"mean  {before:21.3f}  {after:16.3f}  {default:15.3f}")


if __name__ == "__main__":
    main()
