"""`bn-keras doctor`: `bn_keras.diagnose` on a saved model and data.

Loads the model (without its optimizer) and the data the way `compare`
does (`bn_keras.cli.datasets`), prints the report (or its JSON), writes
`--fix`. The options are `bn_keras.cli.doctor_command`'s.
"""

import os
import sys
import textwrap
import warnings

import numpy as np

from bn_keras.cli import datasets
from bn_keras.cli import tables
from bn_keras.cli.common import UsageError
from bn_keras.cli.common import save_model
from bn_keras.cli.inspect import load
from bn_keras.diagnosis import diagnose
from bn_keras.diagnosis.diagnosis_report import WIDTH


def _input_shape(model):
    """The shape of the model's one input without the batch axis, or
    `None` (several inputs, or unknown)."""
    inputs = getattr(model, "inputs", None)
    if not inputs or len(inputs) != 1:
        return None
    return tuple(inputs[0].shape[1:])


def _image_size(args, model):
    """`--image-size` for a folder of images: the model's own size unless
    given."""
    shape = _input_shape(model)
    if args.image_size is None and shape is not None and len(shape) == 3:
        height, width = shape[:2]
        if height is not None and width is not None:
            return f"{height}x{width}"
    return args.image_size


def _fitted(x, model):
    """`x` reshaped to the model's input shape when only the layout
    differs (the digits as 8x8 images for a model of 64 features)."""
    shape = _input_shape(model)
    if shape is None or None in shape or x.shape[1:] == shape:
        return x
    if int(np.prod(x.shape[1:])) == int(np.prod(shape)):
        return x.reshape((len(x), *shape))
    return x


def _source(args):
    return f"--data {args.data}" if args.data else f"--dataset {args.dataset}"


def _check_fits(args, x, model):
    """A `UsageError` for data that cannot go through the model."""
    shape = _input_shape(model)
    if shape is not None and (
        len(shape) != x.ndim - 1
        or any(a is not None and a != b for a, b in zip(shape, x.shape[1:]))
    ):
        raise UsageError(
            f"{_source(args)} does not fit {args.model}: the model expects "
            f"inputs of shape {(None, *shape)}, the data has samples of shape "
            f"{x.shape[1:]}"
        )
    if len(x) <= args.batch_size:
        raise UsageError(
            f"{_source(args)}: {len(x)} samples make one batch of "
            f"--batch-size {args.batch_size}; the doctor compares batches and "
            "needs at least two: give more samples or a smaller --batch-size"
        )


def _unlabeled(args):
    """`--data FILE` (a CSV or NPZ file) without `--target`: the model's
    inputs without labels (`--limit`: a seeded random subset), or `None`
    for any other data options."""
    path = args.data
    if args.target is not None or path is None or not os.path.isfile(path):
        return None
    if os.path.splitext(path)[1].lower() not in (".csv", ".npz"):
        return None  # the data loader says what is wrong with it
    x = tables.read_inputs(path)
    if args.limit is not None and args.limit < len(x):
        rng = np.random.default_rng(args.seed)
        x = x[np.sort(rng.permutation(len(x))[: args.limit])]
    return x


def load_data(args, model):
    """All samples of the data options: `(x, y)`, targets in their units;
    `y` is `None` for a file given without `--target`.

    The data's split into training and validation sets does not matter
    here: its warnings (a class missing from one split) are left out.
    """
    x = _unlabeled(args)
    if x is not None:
        x = _fitted(x, model)
        _check_fits(args, x, model)
        return x, None
    args.image_size = _image_size(args, model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dataset = datasets.load_from_args(args)
    x = np.concatenate([dataset.x_train, dataset.x_val])
    y = np.concatenate([dataset.y_train, dataset.y_val])
    if dataset.task == "regression":
        y = y * dataset.target_scale + dataset.target_mean
    x = _fitted(x, model)
    _check_fits(args, x, model)
    return x, y


def _write_fix(report, path):
    """Writes `--fix`; returns the line that says what it holds."""
    if report.summary.get("layers", 0) == 0:
        return f"nothing to fix: {path} not written"
    save_model(report.fix(), path, option="--fix")
    if report.fixes:
        return textwrap.fill(f"wrote {path}: " + "; ".join(report.fixes), WIDTH)
    return textwrap.fill(
        f"wrote {path}: an unchanged copy (nothing found that a fix without "
        "training repairs)",
        WIDTH,
    )


def run(args):
    model = load(args.model)
    x, y = load_data(args, model)
    try:
        data = x if y is None else (x, y)
        report = diagnose(model, data, batch_size=args.batch_size)
    except (TypeError, ValueError) as error:
        message = " ".join(str(error).split("Received:")[0].split())
        raise UsageError(f"{args.model}: {message}") from None
    if args.json:
        print(report.to_json(indent=2))
    else:
        # With --fix, the line saying what it wrote replaces the hint.
        print(report.text(fix=None if args.fix else "--fix OUT.keras"))
    if args.fix is not None:
        # With --json, standard output holds the JSON only.
        print(
            _write_fix(report, args.fix), file=sys.stderr if args.json else None
        )
    return 0 if report.ok else 1
