"""Fine-tuning a pretrained CNN with batches of 4: three ways to handle BN.

A small CNN (Conv 16 - BN - ReLU - Conv 32 - BN - ReLU - global average
pooling - Dense) with Keras's own `keras.layers.BatchNormalization` is
pretrained on scikit-learn's digits 0-4 with batches of 128. Its
features are then fine-tuned, under a new head, on a few hundred images
of digits 5-9 with batches of 4, in three ways:

- **BN as is**: the BN layers normalize each batch of 4 with its own mean
  and variance in training, and with their moving statistics in
  inference;
- **`bn_keras.freeze_batchnorm(model)`**: the BN layers keep the
  statistics of pretraining (inference mode, in training too);
- **`bn_keras.convert_batchnorm(model, "renorm", ...)`**: the BN layers
  become batch renormalization layers that start from the pretrained
  statistics, with the paper's final bounds (`rmax = 3`, `dmax = 5`)
  from the first step: training sees the inference transform.

Same pretrained weights, same new head and same batches for all three;
three seeds. It prints, per seed and on average, the validation accuracy
(inference mode) and the train/inference gap
(`bn_keras.models.train_inference_gap`): accuracy on the fine-tuning images
in training mode (each batch of 4 normalized as in training, from the
final state, which it leaves unchanged; frozen BN runs in inference, as in
`fit`) minus the accuracy on the same images in inference mode.

The digits data ships with scikit-learn: nothing is downloaded.

Usage:

    python examples/finetune_small_batches.py [--quick]

`--quick` runs one seed with a few epochs on a part of the data (seconds;
used by CI).
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import bn_keras  # noqa: E402

PRETRAIN_BATCH = 128
FINETUNE_BATCH = 4
SETTINGS = ("BN as is", "freeze_batchnorm", "convert to renorm")
#: Full runs: (pretraining epochs, fine-tuning epochs, fine-tuning images).
FULL = (60, 8, 200)
QUICK = (3, 1, 40)


def load_data(seed, finetune_size):
    """Digits as 8x8x1 images: pretraining set (0-4), fine-tuning and
    validation sets (5-9, labelled 0-4)."""
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target
    first = y < 5
    x_tune, x_val, y_tune, y_val = train_test_split(
        x[~first],
        y[~first] - 5,
        train_size=finetune_size,
        random_state=seed,
        stratify=y[~first],
    )
    return (x[first], y[first]), (x_tune, y_tune), (x_val, y_val)


def build_cnn(seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    x = inputs
    for filters in (16, 32):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(5, name="head")(x)
    return keras.Model(inputs, outputs, name="cnn")


def compile_model(model, learning_rate):
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def pretrain(data, seed, epochs):
    model = compile_model(build_cnn(seed), 1e-2)
    model.fit(*data, batch_size=PRETRAIN_BATCH, epochs=epochs, verbose=0)
    return model


def finetune_model(pretrained, setting, seed):
    """The pretrained features under a new head, with `setting`'s BN."""
    model = build_cnn(seed + 100)  # the same new head for every setting
    for new, old in zip(model.layers[:-1], pretrained.layers[:-1]):
        new.set_weights(old.get_weights())
    if setting == "freeze_batchnorm":
        bn_keras.freeze_batchnorm(model)
    elif setting == "convert to renorm":
        model = bn_keras.convert_batchnorm(
            model, "renorm", renorm_clipping={"rmax": 3.0, "dmax": 5.0}
        )
    return compile_model(model, 1e-3)


def run_seed(seed, epochs):
    """`{setting: {"val_accuracy", "gap", ...}}` for one seed."""
    pretrain_epochs, finetune_epochs, size = epochs
    first, tune, val = load_data(seed, size)
    pretrained = pretrain(first, seed, pretrain_epochs)
    results = {}
    for setting in SETTINGS:
        model = finetune_model(pretrained, setting, seed)
        keras.utils.set_random_seed(seed + 1)  # the same batches for all
        model.fit(
            *tune, batch_size=FINETUNE_BATCH, epochs=finetune_epochs, verbose=0
        )
        # Accuracy on the fine-tuning images in training mode (each batch
        # of 4 normalized as in training) and in inference; the model is
        # left as it was.
        gap = bn_keras.models.train_inference_gap(
            model, tune, batch_size=FINETUNE_BATCH
        )
        results[setting] = {
            "val_accuracy": float(model.evaluate(*val, verbose=0)[1]),
            "train_inference": gap["inference"],
            "train_training_mode": gap["training"],
            "gap": gap["gap"],
        }
    return results, (len(first[0]), len(tune[0]), len(val[0]))


def _signed(value):
    return f"{0.0 if abs(value) < 5e-4 else value:+.3f}"


def print_table(per_seed, seeds):
    """One row per seed and setting, then the means; returns them."""
    print(f"{'seed':>4}  {'setting':<19}{'val acc':>9}{'gap':>8}")
    summary = {}
    for setting in SETTINGS:
        rows = [per_seed[seed][setting] for seed in seeds]
        for seed, row in zip(seeds, rows):
            print(
                f"{seed:>4}  {setting:<19}{row['val_accuracy']:>9.3f}"
                f"{_signed(row['gap']):>8}"
            )
        summary[setting] = {
            "val_accuracy": float(np.mean([r["val_accuracy"] for r in rows])),
            "gap": float(np.mean([r["gap"] for r in rows])),
            "per_seed": rows,
        }
    for setting, result in summary.items():
        print(
            f"mean  {setting:<19}{result['val_accuracy']:>9.3f}"
            f"{_signed(result['gap']):>8}"
        )
    return summary


def run(quick=False, seeds=(0, 1, 2)):
    """Fine-tunes the three settings per seed; returns `{setting: ...}`."""
    epochs = QUICK if quick else FULL
    seeds = seeds[:1] if quick else seeds
    per_seed = {}
    for seed in seeds:
        per_seed[seed], sizes = run_seed(seed, epochs)
    print(
        f"digits: pretrained on {sizes[0]} images of 0-4 (batches of "
        f"{PRETRAIN_BATCH}, {epochs[0]} epochs), fine-tuned on {sizes[1]} "
        f"images of 5-9 (batches of {FINETUNE_BATCH}, {epochs[1]} epochs, "
        f"Adam 1e-3), validated on {sizes[2]} (backend: "
        f"{keras.backend.backend()})"
    )
    return print_table(per_seed, seeds)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one seed, a few epochs, a part of the data (CI)",
    )
    args = parser.parse_args(argv)
    return run(quick=args.quick)


if __name__ == "__main__":
    main()
