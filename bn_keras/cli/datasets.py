"""Data for the command line: where it comes from, how it is split, and
what a command should know about it.

Sources:

- `--dataset NAME`: scikit-learn's bundled `digits`, `wine` and
  `breast_cancer`, the generated `scales` (nothing to download), or Keras's
  `mnist`, `fashion_mnist` and `cifar10` (downloaded once into the Keras
  cache; `bn_keras.cli.images`);
- `--data FILE.csv|FILE.npz --target NAME`: the user's own table;
- `--data FOLDER`: the user's own images, one subfolder per class
  (`bn_keras.cli.images`).

Features are used as they are (no standardization), so that a comparison
shows what batch normalization does with raw data: `digits`' 8x8 images
keep scikit-learn's pixel values, 0 to 16; the images of `keras.datasets`
and of a folder are scaled to [0, 1], as Keras's examples scale them. A
regression target is standardized for training (the leaderboard
and plot convert back to its units: `Dataset.loss_scale`). `--limit N`
keeps a seeded random subset of N samples.
"""

import dataclasses
import os
import warnings

import numpy as np

from bn_keras.cli import images
from bn_keras.cli import tables
from bn_keras.cli.common import MIN_SAMPLES
from bn_keras.cli.common import UsageError

#: The built-in datasets, in the order `--help` lists them.
SKLEARN_DATASETS = ("digits", "wine", "breast_cancer", "scales")
DATASETS = (*SKLEARN_DATASETS, *images.KERAS_DATASETS)

TASKS = ("auto", "classification", "regression")

#: `--task auto`: a numeric target with at most this many distinct integer
#: values is a class label; any other numeric target is regressed.
MAX_AUTO_CLASSES = 20

VALIDATION_FRACTION = 0.25
SCALES_SAMPLES = 2000


@dataclasses.dataclass
class Dataset:
    """A train/validation split and what the model needs to know about it.

    `x_*` have shape `(N, features)`, or `(N, H, W, C)` for images (then
    `image_shape` is `(H, W, C)`); `y_*` are integer class ids for
    classification and float32 values for regression, standardized with
    the training split's `target_mean` and `target_scale` (its standard
    deviation).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    task: str
    num_classes: int = 0
    class_names: tuple = ()
    image_shape: tuple = None
    target_mean: float = 0.0
    target_scale: float = 1.0

    @property
    def num_features(self):
        return int(np.prod(self.x_train.shape[1:]))

    @property
    def loss_scale(self):
        """What a mean squared error on the standardized target is
        multiplied by to be in the target's units (1 for classes)."""
        return self.target_scale**2

    def flatten_images(self):
        """Turns images into rows of features, in place (for an MLP)."""
        if self.image_shape is None:
            return
        self.x_train = self.x_train.reshape(len(self.x_train), -1)
        self.x_val = self.x_val.reshape(len(self.x_val), -1)
        self.image_shape = None

    def describe(self):
        """One line: name, sizes and task."""
        shape = (
            "x".join(str(d) for d in self.image_shape) + " images"
            if self.image_shape
            else f"{self.num_features} features"
        )
        task = (
            f"{self.num_classes} classes"
            if self.task == "classification"
            else f"regression (target standardized for training: mean "
            f"{self.target_mean:.4g}, std {self.target_scale:.4g}; losses "
            "shown in the target's units)"
        )
        return (
            f"{self.name}: {len(self.x_train)} train / {len(self.x_val)} "
            f"validation samples, {shape}, {task}"
        )

    def missing_classes(self):
        """`{"training": [...], "validation": [...]}`: the class names
        absent from each split (empty lists for regression)."""
        missing = {"training": [], "validation": []}
        if self.task != "classification":
            return missing
        splits = {"training": self.y_train, "validation": self.y_val}
        for split, y in splits.items():
            present = set(np.unique(y).tolist())
            missing[split] = [
                name
                for index, name in enumerate(self.class_names)
                if index not in present
            ]
        return missing


def add_data_arguments(parser, training=True):
    """Adds the data-source options shared by `compare`, `search` and
    `doctor`; `training=False` (doctor) for a command that uses every
    sample as it is and needs the data named (no default dataset)."""
    data = parser.add_argument_group("data")
    default = "(default: digits)" if training else "(no default)"
    data.add_argument(
        "--dataset",
        metavar="NAME",
        help=f"built-in dataset: {valid_datasets()} {default}; digits are "
        "8x8 images with scikit-learn's pixel values, 0 to 16, used as they "
        f"are; {', '.join(images.KERAS_DATASETS)} come from keras.datasets, "
        "are downloaded once into the Keras cache and scaled to [0, 1]",
    )
    data.add_argument(
        "--data",
        metavar="PATH",
        help="your own data instead: a .csv file with a header row, a .npz "
        "file of named arrays, or a folder of images with one subfolder "
        "per class",
    )
    data.add_argument(
        "--target",
        metavar="COLUMN",
        help="with --data FILE: the column (CSV) or array (NPZ) holding the "
        "target"
        + (
            ""
            if training
            else "; without it the file holds the model's inputs alone "
            "(every column, or the NPZ's one array), diagnosed without labels"
        ),
    )
    data.add_argument(
        "--task",
        choices=TASKS,
        default="auto",
        help="with --data FILE: 'auto' treats text targets and numeric "
        f"targets with at most {MAX_AUTO_CLASSES} distinct integer values "
        "as classes, other numeric targets as regression (default: auto)",
    )
    data.add_argument(
        "--image-size",
        metavar="N|HxW",
        help="with --data FOLDER: the size every image is resized to "
        + (
            "(default: {}x{})".format(*images.DEFAULT_IMAGE_SIZE)
            if training
            else "(default: the model's input size)"
        ),
    )
    data.add_argument(
        "--limit",
        type=int,
        metavar="N",
        help="use a random subset of N samples (seeded; 75%% for training, "
        "25%% for validation) for a quick run"
        if training
        else "use a random subset of N samples (seeded) for a quick run",
    )
    return data


def valid_datasets():
    return ", ".join(DATASETS)


def check_source(args):
    """Checks that the data options go together, before any data is read.

    Raises:
        UsageError: naming the options that conflict or the value that is
            out of range.
    """
    dataset, data, target = args.dataset, args.data, args.target
    if data is not None and dataset is not None:
        raise UsageError("give either --dataset or --data, not both")
    if target is not None and data is None:
        raise UsageError("--target goes with --data FILE")
    folder = data is not None and os.path.isdir(data)
    if folder and target is not None:
        raise UsageError(
            f"--data {data} is a folder of images: its classes are its "
            "subfolders, there is no --target"
        )
    if args.limit is not None and args.limit < MIN_SAMPLES:
        raise UsageError(
            f"--limit must be at least {MIN_SAMPLES} (enough to split off a "
            f"validation set); got {args.limit}"
        )
    if args.image_size is not None:
        if not folder:
            raise UsageError(
                "--image-size goes with --data FOLDER (a folder of images)"
            )
        images.parse_image_size(args.image_size)


def scales_data(num_samples=SCALES_SAMPLES, seed=0):
    """Two features on very different scales and a linear target.

    Feature A is uniform on [1, 10], feature B uniform on [1, 200], and the
    target is `2*A + 3*B` plus Gaussian noise of standard deviation 0.5.
    """
    rng = np.random.default_rng(seed)
    a = rng.uniform(1.0, 10.0, num_samples)
    b = rng.uniform(1.0, 200.0, num_samples)
    y = 2.0 * a + 3.0 * b + rng.normal(0.0, 0.5, num_samples)
    return np.stack([a, b], axis=1).astype("float32"), y.astype("float32")


def _builtin(name):
    """`(x, y, image_shape)` of a dataset of `SKLEARN_DATASETS`."""
    from sklearn import datasets

    if name == "scales":
        x, y = scales_data()
        return x, y, None
    loader = {
        "digits": datasets.load_digits,
        "wine": datasets.load_wine,
        "breast_cancer": datasets.load_breast_cancer,
    }[name]
    bunch = loader()
    image_shape = (8, 8, 1) if name == "digits" else None
    return bunch.data.astype("float32"), bunch.target, image_shape


def _resolve_task(y, task, source):
    """'classification' or 'regression' for target `y` and `--task`."""
    numeric = np.issubdtype(y.dtype, np.number) or y.dtype == bool
    if task == "regression":
        if not numeric:
            raise UsageError(
                f"{source}: --task regression needs a numeric target; it "
                f"holds text such as {str(y[0])!r}"
            )
        return task
    if task == "classification" or not numeric:
        return "classification"
    values = np.unique(y)
    integral = np.all(np.equal(np.mod(values.astype("float64"), 1), 0))
    if integral and len(values) <= MAX_AUTO_CLASSES:
        return "classification"
    return "regression"


@dataclasses.dataclass
class _Source:
    """What a source yields before the split: all samples (`x`, `y`), or
    a given split (`validation` is then `(x_val, y_val)`)."""

    name: str
    x: np.ndarray
    y: np.ndarray
    task: str
    image_shape: tuple = None
    class_names: tuple = None  # set when `y` holds class ids already
    validation: tuple = None


def _from_file(path, target, task):
    """A `.csv` or `.npz` file."""
    extension = os.path.splitext(path)[1].lower()
    if extension not in (".csv", ".npz"):
        kind = (
            f"unknown file type {extension!r}"
            if extension
            else "a file without an extension"
        )
        raise UsageError(
            f"--data {path}: {kind}; expected a .csv or .npz file, or a "
            "folder of images with one subfolder per class"
        )
    if target is None:
        raise UsageError(
            f"--data {path} needs --target, the column (CSV) or array "
            "(NPZ) that holds the target"
        )
    if extension == ".csv":
        x, y, _ = tables.read_csv(path, target)
        image_shape = None
    else:
        x, y, image_shape = tables.read_npz(path, target)
    task = _resolve_task(y, task, path)
    return _Source(os.path.basename(path), x, y, task, image_shape)


def _from_folder(path, task, image_size):
    """A folder of images, one subfolder per class."""
    if task == "regression":
        raise UsageError(
            f"--task regression: the folder {path} holds classes of images"
        )
    x, y, class_names = images.read_folder(path, image_size)
    name = os.path.basename(os.path.normpath(path))
    return _Source(name, x, y, "classification", x.shape[1:], class_names)


def _from_path(data, target, task, image_size):
    """`--data`: a file or a folder."""
    path = os.fspath(data)
    if os.path.isdir(path):
        return _from_folder(path, task, image_size)
    if not os.path.exists(path):
        raise UsageError(f"--data {path}: no such file or folder")
    return _from_file(path, target, task)


def _from_name(dataset, task):
    """`--dataset`: a built-in dataset."""
    name = (dataset or "digits").strip().lower().replace("-", "_")
    if name not in DATASETS:
        raise UsageError(
            f"unknown dataset {dataset!r}. Valid datasets: "
            f"{valid_datasets()} (or --data FILE.csv|FILE.npz "
            "--target COLUMN, or --data FOLDER of images)"
        )
    builtin_task = "regression" if name == "scales" else "classification"
    if task not in ("auto", builtin_task):
        raise UsageError(
            f"--task {task}: dataset {name!r} is a {builtin_task} task"
        )
    if name in images.KERAS_DATASETS:
        x, y, x_val, y_val, class_names = images.load_keras_dataset(name)
        return _Source(
            name, x, y, builtin_task, x.shape[1:], class_names, (x_val, y_val)
        )
    x, y, image_shape = _builtin(name)
    return _Source(name, x, y, builtin_task, image_shape)


def _encode_classes(name, y):
    """`(class ids as int32, class names)`; at least two classes."""
    class_names, y = np.unique(y, return_inverse=True)
    class_names = tuple(str(c) for c in class_names)
    if len(class_names) < 2:
        raise UsageError(
            f"{name}: the target has a single class "
            f"({class_names[0]!r}); classification needs at least two"
        )
    return y.astype("int32"), class_names


def _stratified(x, y, seed, classes, **sizes):
    """sklearn's `train_test_split`, stratified by class where it can be
    (every class twice at least, room for each in both parts)."""
    from sklearn.model_selection import train_test_split

    if classes:
        try:
            return train_test_split(
                x, y, random_state=seed, stratify=y, **sizes
            )
        except ValueError:  # too few samples of a class to stratify
            pass
    return train_test_split(x, y, random_state=seed, **sizes)


def _subset(x, y, size, seed, classes):
    """A seeded random subset of `size` samples (all if fewer)."""
    if size >= len(x):
        return x, y
    x, _, y, _ = _stratified(x, y, seed, classes, train_size=size)
    return x, y


def _split(source, seed, limit):
    """`Dataset`'s `x_train`, `y_train`, `x_val` and `y_val`, as a dict:
    the source's own split, or 25% of the samples for validation; with
    `limit`, a random subset of `limit` samples in all."""
    classes = source.task == "classification"
    if source.validation is None:
        x, y = source.x, source.y
        if limit is not None:
            x, y = _subset(x, y, limit, seed, classes)
        x_train, x_val, y_train, y_val = _stratified(
            x, y, seed, classes, test_size=VALIDATION_FRACTION
        )
    else:
        x_train, y_train = source.x, source.y
        x_val, y_val = source.validation
        if limit is not None:
            val_size = max(1, round(limit * VALIDATION_FRACTION))
            x_train, y_train = _subset(
                x_train, y_train, limit - val_size, seed, classes
            )
            x_val, y_val = _subset(x_val, y_val, val_size, seed, classes)
    return dict(x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val)


def _standardize(name, parts):
    """Standardizes a regression target with the training split's mean and
    standard deviation, in place; returns them."""
    y_train = parts["y_train"].astype("float64")
    mean, scale = float(y_train.mean()), float(y_train.std())
    if not scale > 0:
        raise UsageError(
            f"{name}: the target is constant ({mean:g}) in the training "
            "split: there is nothing to regress"
        )
    for key in ("y_train", "y_val"):
        y = parts[key].astype("float64")
        parts[key] = ((y - mean) / scale).astype("float32")
    return {"target_mean": mean, "target_scale": scale}


def _warn_missing_classes(dataset):
    """A warning for each split that lacks a class."""
    total = len(dataset.y_train) + len(dataset.y_val)
    for split, names in dataset.missing_classes().items():
        if not names:
            continue
        shown = ", ".join(repr(name) for name in names[:5])
        if len(names) > 5:
            shown += f" and {len(names) - 5} more"
        them = "them" if len(names) > 1 else "it"
        if split == "validation":
            effect = f"validation accuracy says nothing about {them}"
        else:
            effect = f"the models never see {them}"
        warnings.warn(
            f"the {split} split has no sample of class"
            f"{'es' if len(names) > 1 else ''} {shown} ({total} "
            f"samples in all): {effect}; give more samples of each class"
            + (" or a larger --limit" if split == "validation" else ""),
            stacklevel=3,
        )


def load(
    dataset=None,
    data=None,
    target=None,
    task="auto",
    seed=0,
    limit=None,
    image_size=None,
):
    """Loads a dataset and splits it into training and validation sets.

    Args:
        dataset: A name from `DATASETS` (case-insensitive), or `None` with
            `data`.
        data: Path of a `.csv` or `.npz` file or of a folder of images
            (one subfolder per class), or `None`.
        target: Column (CSV) or array (NPZ) holding the target; required
            with a file.
        task: `"auto"`, `"classification"` or `"regression"`. `"auto"`:
            text targets and numeric targets with at most 20 distinct
            integer values are classes; other numeric targets are regressed.
            The built-in datasets and image folders have their own task.
        seed: Seed of the split (25% validation, stratified for
            classification; Keras's datasets keep their own test split as
            validation) and of `limit`'s subset.
        limit: Optional number of samples to keep, a seeded random subset
            (75% for training, 25% for validation).
        image_size: `(height, width)` of the images of a folder. Defaults
            to `bn_keras.cli.images.DEFAULT_IMAGE_SIZE`.

    Returns:
        A `Dataset`. A regression target is standardized (see
        `Dataset.target_scale`). A split that lacks a class is warned about.

    Raises:
        UsageError: for an unknown dataset or a bad file or folder.
    """
    if data is not None:
        source = _from_path(data, target, task, image_size)
    else:
        source = _from_name(dataset, task)
    class_names = source.class_names
    if source.task == "classification" and class_names is None:
        source.y, class_names = _encode_classes(source.name, source.y)
    if source.image_shape is not None:
        source.x = source.x.reshape((len(source.x), *source.image_shape))
    parts = _split(source, seed, limit)
    scaling = {}
    if source.task == "regression":
        scaling = _standardize(source.name, parts)
    result = Dataset(
        name=source.name,
        task=source.task,
        num_classes=len(class_names or ()),
        class_names=tuple(class_names or ()),
        image_shape=source.image_shape and tuple(source.image_shape),
        **parts,
        **scaling,
    )
    _warn_missing_classes(result)
    return result


def load_from_args(args):
    """`load` of the data options of `compare` and `search` (checked with
    `check_source`)."""
    image_size = None
    if args.image_size is not None:
        image_size = images.parse_image_size(args.image_size)
    return load(
        args.dataset,
        args.data,
        args.target,
        args.task,
        args.seed,
        limit=args.limit,
        image_size=image_size,
    )
