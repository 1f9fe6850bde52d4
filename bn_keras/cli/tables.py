"""The user's own tables for the command line: `.csv` files with a header
row and `.npz` archives of named arrays.

Each reader returns the features as float32 and the target as it is
(numbers, or text for class names); a problem is a `UsageError` that names
the file, the line or array, and what is wrong. An `.npz` archive is read
without unpickling anything.
"""

import csv
import math
import zipfile

import numpy as np

from bn_keras.cli.common import MIN_SAMPLES
from bn_keras.cli.common import UsageError


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
    """`(x, targets)`: the features as float32, the target cells as text
    (every column a feature when `target` is `None`)."""
    t = None if target is None else header.index(target)
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
        if t is not None:
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


def read_inputs(path):
    """A model's inputs alone, without a target (`bn-keras doctor`
    diagnoses without labels): every column of a `.csv` file (with a
    header row), or the one array of an `.npz` file.

    Returns:
        `x`, float32.

    Raises:
        UsageError: naming the file and the problem (an NPZ file of several
            arrays among them).
    """
    if path.lower().endswith(".csv"):
        rows = _csv_rows(path, _read_text(path))
        header = [cell.strip() for cell in rows[0][1]]
        x, _ = _split_columns(path, rows[1:], header, None)
        return x
    arrays = _npz_arrays(path)
    if len(arrays) > 1:
        raise UsageError(
            f"{path}: holds the arrays {', '.join(sorted(arrays))}: name the "
            "labels with --target, or give the inputs alone as the file's "
            "one array"
        )
    (x,) = arrays.values()
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise UsageError(
            f"{path}: the array is of type {x.dtype}; expected numbers"
        )
    return _float32_features(path, x)


def _not_npz(path, error):
    reason = " ".join(str(error).split()) or type(error).__name__
    return UsageError(
        f"{path}: not a valid .npz archive (numpy.savez writes a zip archive "
        f"of .npy arrays): {reason}"
    )


def _pickled(path, what):
    return UsageError(
        f"{path}: {what} pickled Python objects, and unpickling a file can "
        "run any code in it, so bn-keras does not load it; save numeric "
        "arrays instead, e.g. numpy.savez(path, x=x.astype('float32'), y=y)"
    )


def _npz_array(path, archive, name):
    """One array of an open archive; object arrays are refused."""
    try:
        return archive[name]
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise _pickled(path, f"array {name!r} holds") from None
        raise _not_npz(path, error) from None
    except (OSError, zipfile.BadZipFile, EOFError) as error:
        raise _not_npz(path, error) from None


def _check_npz_header(path):
    """An NPZ archive is a zip file; say what the file is otherwise."""
    try:
        with open(path, "rb") as file:
            head = file.read(6)
    except OSError as error:
        raise UsageError(
            f"{path}: cannot read the file: {error.strerror or error}"
        ) from error
    if head.startswith(b"\x93NUMPY"):
        raise UsageError(
            f"{path}: holds a single array (a .npy file), not an NPZ archive "
            "of named arrays; save it with numpy.savez(path, x=..., y=...)"
        )
    if head[:1] == b"\x80":  # pickle protocols 2 and later
        raise _pickled(path, "is a file of")
    if not head.startswith(b"PK"):
        what = "an empty file" if not head else "not a zip archive"
        raise _not_npz(path, what)


def _npz_arrays(path):
    """The named arrays of an NPZ archive, read without pickles."""
    _check_npz_header(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise _not_npz(path, error) from None
    with archive:
        arrays = {
            name: _npz_array(path, archive, name) for name in archive.files
        }
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


def _float32_features(path, x):
    """`x` as float32 of shape `(N, ...)` (a `(N,)` array as one column);
    a `UsageError` if it holds NaN or Inf."""
    x = x.reshape(len(x), -1) if x.ndim == 1 else x
    x = x.astype("float32")
    if not np.all(np.isfinite(x)):
        raise UsageError(f"{path}: the features hold NaN or infinite values")
    return x


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
    x = _float32_features(path, x)
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
