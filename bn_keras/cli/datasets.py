"""Data for the command line: scikit-learn's bundled datasets, a generated
regression with features on very different scales, and the user's own CSV
or NPZ files.

Nothing is downloaded: `digits`, `wine` and `breast_cancer` ship with
scikit-learn, and `scales` is generated. Features are used as they are (no
standardization), so that a comparison shows what batch normalization does
with raw data.
"""

import csv
import dataclasses
import math
import os
import zipfile

import numpy as np

from bn_keras.cli.common import UsageError

#: The built-in datasets, in the order `--help` lists them.
DATASETS = ("digits", "wine", "breast_cancer", "scales")

TASKS = ("auto", "classification", "regression")

#: `--task auto`: a numeric target with at most this many distinct integer
#: values is a class label; any other numeric target is regressed.
MAX_AUTO_CLASSES = 20

MIN_SAMPLES = 10
VALIDATION_FRACTION = 0.25
SCALES_SAMPLES = 2000


@dataclasses.dataclass
class Dataset:
    """A train/validation split and what the model needs to know about it.

    `x_*` have shape `(N, features)`, or `(N, H, W, C)` for images (then
    `image_shape` is `(H, W, C)`); `y_*` are integer class ids for
    classification and float32 values for regression.
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

    @property
    def num_features(self):
        return int(np.prod(self.x_train.shape[1:]))

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
            else "regression"
        )
        return (
            f"{self.name}: {len(self.x_train)} train / {len(self.x_val)} "
            f"validation samples, {shape}, {task}"
        )


def add_data_arguments(parser):
    """Adds the data-source options shared by `compare` and `search`."""
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset",
        metavar="NAME",
        help=f"built-in dataset: {valid_datasets()} (default: digits)",
    )
    data.add_argument(
        "--data",
        metavar="FILE",
        help="your own data instead: a .csv file with a header row, or a .npz "
        "file of named arrays",
    )
    data.add_argument(
        "--target",
        metavar="COLUMN",
        help="with --data: the column (CSV) or array (NPZ) holding the target",
    )
    data.add_argument(
        "--task",
        choices=TASKS,
        default="auto",
        help="with --data: 'auto' treats text targets and numeric targets "
        f"with at most {MAX_AUTO_CLASSES} distinct integer values "
        "as classes, other numeric targets as regression (default: auto)",
    )
    return data


def valid_datasets():
    return ", ".join(DATASETS)


def check_source(dataset, data, target):
    """Checks that `--dataset`, `--data` and `--target` go together."""
    if data is not None and dataset is not None:
        raise UsageError("give either --dataset or --data, not both")
    if target is not None and data is None:
        raise UsageError("--target goes with --data FILE")


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
    """`(x, y, task, image_shape)` of a built-in dataset."""
    from sklearn import datasets

    if name == "scales":
        x, y = scales_data()
        return x, y, "regression", None
    loader = {
        "digits": datasets.load_digits,
        "wine": datasets.load_wine,
        "breast_cancer": datasets.load_breast_cancer,
    }[name]
    bunch = loader()
    image_shape = (8, 8, 1) if name == "digits" else None
    return bunch.data.astype("float32"), bunch.target, "classification", (
        image_shape
    )


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_text(path):
    """The text of a UTF-8 file (a byte-order mark is dropped)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            text = file.read()
    except OSError as error:
        raise UsageError(
            f"{path}: cannot read the file: {error.strerror or error}"
        ) from error
    except UnicodeDecodeError as error:
        raise UsageError(
            f"{path}: not a text CSV file (not UTF-8: {error.reason} at byte "
            f"{error.start})"
        ) from error
    if not text.strip():
        raise UsageError(f"{path}: the file is empty")
    return text


def _csv_rows(path, text):
    """`(line number, cells)` of the non-blank rows, in the sniffed
    dialect (comma, semicolon or tab)."""
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    try:
        return [
            (number, row)
            for number, row in enumerate(
                csv.reader(text.splitlines(), dialect), start=1
            )
            if any(cell.strip() for cell in row)
        ]
    except csv.Error as error:
        raise UsageError(f"{path}: malformed CSV: {error}") from error


def _check_header(path, header, target):
    """A header names the columns, once each, the target among them."""
    if all(_is_number(cell) for cell in header):
        raise UsageError(
            f"{path}: the first line must be a header naming the columns; "
            f"found only numbers: {','.join(header[:5])}"
            + (",..." if len(header) > 5 else "")
        )
    duplicates = sorted({c for c in header if header.count(c) > 1})
    if duplicates:
        raise UsageError(
            f"{path}: duplicate column names in the header: "
            f"{', '.join(duplicates)}"
        )
    if target not in header:
        raise UsageError(
            f"{path}: no column {target!r} for --target; the columns are: "
            f"{', '.join(header)}"
        )
    if len(header) < 2:
        raise UsageError(
            f"{path}: no feature columns: the only column is the target "
            f"{target!r}"
        )


def _feature_value(path, number, column, value):
    """A feature cell as a finite float."""
    try:
        result = float(value)
    except ValueError:
        problem = "is empty" if not value else "is not a number"
        raise UsageError(
            f"{path}: line {number}, column {column!r}: {value!r} {problem} "
            "(feature columns must be numeric)"
        ) from None
    if not math.isfinite(result):
        raise UsageError(
            f"{path}: line {number}, column {column!r}: {value!r} is not a "
            "finite number"
        )
    return result


def _split_columns(path, data, header, target):
    """`(x, targets)`: the features as float32, the target cells as text."""
    t = header.index(target)
    names = [name for i, name in enumerate(header) if i != t]
    x = np.empty((len(data), len(names)), dtype="float32")
    targets = []
    for i, (number, row) in enumerate(data):
        if len(row) != len(header):
            raise UsageError(
                f"{path}: line {number} has {len(row)} fields, the header "
                f"has {len(header)}"
            )
        values = [cell.strip() for cell in row]
        targets.append(values[t])
        features = (v for k, v in enumerate(values) if k != t)
        for j, value in enumerate(features):
            x[i, j] = _feature_value(path, number, names[j], value)
    return x, targets


def _csv_target(path, data, targets, target):
    """The target column: floats if every value is a number, else text."""
    if not all(targets):
        number = data[targets.index("")][0]
        raise UsageError(
            f"{path}: line {number}, target column {target!r} is empty"
        )
    if not all(_is_number(value) for value in targets):
        return np.asarray(targets)
    y = np.asarray([float(value) for value in targets])
    if not np.all(np.isfinite(y)):
        raise UsageError(
            f"{path}: target column {target!r} holds non-finite values"
        )
    return y


def read_csv(path, target):
    """Features and target column of a CSV file with a header row.

    Returns:
        `(x, y, feature_names)`: `x` float32 `(N, F)`; `y` a float64 array
        if every target value is a number, else an array of strings.

    Raises:
        UsageError: naming the file and the problem (unreadable, empty, no
            header, ragged rows, a value that is not a number, no column
            `target`).
    """
    rows = _csv_rows(path, _read_text(path))
    header = [cell.strip() for cell in rows[0][1]]
    _check_header(path, header, target)
    data = rows[1:]
    if len(data) < MIN_SAMPLES:
        raise UsageError(
            f"{path}: {len(data)} data rows; at least {MIN_SAMPLES} are "
            "needed to split off a validation set"
        )
    x, targets = _split_columns(path, data, header, target)
    names = [name for name in header if name != target]
    return x, _csv_target(path, data, targets, target), names


def _npz_arrays(path):
    """The named arrays of an NPZ archive, read without pickles."""
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError as error:
        raise UsageError(
            f"{path}: cannot read the file: {error.strerror}"
        ) from error
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise UsageError(
            f"{path}: not a readable NPZ file ({error})"
        ) from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise UsageError(
            f"{path}: holds a single array (a .npy file), not an NPZ archive "
            "of named arrays; save it with numpy.savez(path, x=..., y=...)"
        )
    try:
        with archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise UsageError(
            f"{path}: not a readable NPZ file ({error})"
        ) from error
    if not arrays:
        raise UsageError(f"{path}: the NPZ file holds no arrays")
    return arrays


def _npz_target(path, arrays, target):
    """Takes the target array out of `arrays`, as shape `(N,)`."""
    if target not in arrays:
        raise UsageError(
            f"{path}: no array {target!r} for --target; the arrays are: "
            f"{', '.join(sorted(arrays))}"
        )
    y = arrays.pop(target)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise UsageError(
            f"{path}: the target array {target!r} must have shape (N,) or "
            f"(N, 1); it has shape {y.shape}"
        )
    if not arrays:
        raise UsageError(
            f"{path}: no feature arrays: the only array is the target "
            f"{target!r}"
        )
    return y


def _check_feature_arrays(path, arrays, target, num_samples):
    """Every feature array is numeric, with one row per sample."""
    for name, array in arrays.items():
        if array.ndim == 0 or len(array) != num_samples:
            raise UsageError(
                f"{path}: array {name!r} has shape {array.shape}; the target "
                f"{target!r} has {num_samples} samples"
            )
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
            raise UsageError(
                f"{path}: array {name!r} is of type {array.dtype}; features "
                "must be numeric"
            )


def _npz_features(path, arrays):
    """`(x, image_shape)`: one array as it is (rank 3 or 4: images), or
    several `(N,)` / `(N, k)` arrays side by side, in name order."""
    if len(arrays) == 1:
        (x,) = arrays.values()
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim == 4:
            return x, tuple(int(d) for d in x.shape[1:])
        if x.ndim not in (1, 2):
            raise UsageError(
                f"{path}: the feature array has shape {x.shape}; expected "
                "(N, features), (N, H, W) or (N, H, W, C)"
            )
        return x, None
    columns = []
    for name in sorted(arrays):
        array = arrays[name]
        if array.ndim > 2:
            raise UsageError(
                f"{path}: array {name!r} has shape {array.shape}; with "
                "several feature arrays each must be (N,) or (N, k)"
            )
        columns.append(array.reshape(len(array), -1))
    return np.concatenate(columns, axis=1), None


def read_npz(path, target):
    """Features and target arrays of a NumPy `.npz` file.

    The array named `target` is the target (shape `(N,)` or `(N, 1)`). The
    features are the one other array (shape `(N, ...)`; rank 3 or 4 is an
    image: `(N, H, W)` or `(N, H, W, C)`), or, if there are several, the
    other arrays of shape `(N,)` or `(N, k)` side by side as columns, in
    name order.

    Returns:
        `(x, y, image_shape)`.

    Raises:
        UsageError: naming the file and the problem.
    """
    arrays = _npz_arrays(path)
    y = _npz_target(path, arrays, target)
    _check_feature_arrays(path, arrays, target, len(y))
    x, image_shape = _npz_features(path, arrays)
    x = x.reshape(len(x), -1) if x.ndim == 1 else x
    x = x.astype("float32")
    if not np.all(np.isfinite(x)):
        raise UsageError(f"{path}: the features hold NaN or infinite values")
    if len(y) < MIN_SAMPLES:
        raise UsageError(
            f"{path}: {len(y)} samples; at least {MIN_SAMPLES} are needed to "
            "split off a validation set"
        )
    if np.issubdtype(y.dtype, np.number) and not np.all(
        np.isfinite(y.astype("float64"))
    ):
        raise UsageError(f"{path}: the target {target!r} holds NaN or Inf")
    return x, y, image_shape


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


def _from_file(data, target, task):
    """`(name, x, y, task, image_shape)` of a `.csv` or `.npz` file."""
    source = os.fspath(data)
    if target is None:
        raise UsageError(
            f"--data {source} needs --target, the column (CSV) or array "
            "(NPZ) that holds the target"
        )
    extension = os.path.splitext(source)[1].lower()
    if extension == ".csv":
        x, y, _ = read_csv(source, target)
        image_shape = None
    elif extension == ".npz":
        x, y, image_shape = read_npz(source, target)
    else:
        raise UsageError(
            f"--data {source}: unknown file type {extension or '(none)'!r}"
            "; expected a .csv or .npz file"
        )
    task = _resolve_task(y, task, source)
    return os.path.basename(source), x, y, task, image_shape


def _from_builtin(dataset, task):
    """`(name, x, y, task, image_shape)` of a built-in dataset."""
    name = (dataset or "digits").strip().lower()
    if name not in DATASETS:
        raise UsageError(
            f"unknown dataset {dataset!r}. Valid datasets: "
            f"{valid_datasets()} (or --data FILE.csv|FILE.npz "
            "--target COLUMN)"
        )
    x, y, builtin_task, image_shape = _builtin(name)
    if task not in ("auto", builtin_task):
        raise UsageError(
            f"--task {task}: dataset {name!r} is a {builtin_task} task"
        )
    return name, x, y, builtin_task, image_shape


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


def _split(x, y, stratify, seed):
    """`Dataset`'s `x_train`, `y_train`, `x_val` and `y_val`, as a dict;
    stratified where it can be."""
    from sklearn.model_selection import train_test_split

    try:
        parts = train_test_split(
            x,
            y,
            test_size=VALIDATION_FRACTION,
            random_state=seed,
            stratify=stratify,
        )
    except ValueError:  # too few samples per class to stratify
        parts = train_test_split(
            x, y, test_size=VALIDATION_FRACTION, random_state=seed
        )
    return dict(zip(("x_train", "x_val", "y_train", "y_val"), parts))


def load(dataset=None, data=None, target=None, task="auto", seed=0):
    """Loads a dataset and splits it into training and validation sets.

    Args:
        dataset: A name from `DATASETS` (case-insensitive), or `None` with
            `data`.
        data: Path of a `.csv` or `.npz` file, or `None`.
        target: Column (CSV) or array (NPZ) holding the target; required
            with `data`.
        task: `"auto"`, `"classification"` or `"regression"`. `"auto"`:
            text targets and numeric targets with at most 20 distinct
            integer values are classes; other numeric targets are regressed.
            The built-in datasets have their own task.
        seed: Seed of the split (25% validation, stratified for
            classification).

    Raises:
        UsageError: for an unknown dataset or a bad file.
    """
    if data is not None:
        name, x, y, task, image_shape = _from_file(data, target, task)
    else:
        name, x, y, task, image_shape = _from_builtin(dataset, task)
    class_names = ()
    stratify = None
    if task == "classification":
        y, class_names = _encode_classes(name, y)
        if np.bincount(y).min() >= 2:
            stratify = y
    else:
        y = y.astype("float32")
    if image_shape is not None:
        x = x.reshape((len(x), *image_shape))
    return Dataset(
        name=name,
        task=task,
        num_classes=len(class_names),
        class_names=class_names,
        image_shape=image_shape,
        **_split(x, y, stratify, seed),
    )
