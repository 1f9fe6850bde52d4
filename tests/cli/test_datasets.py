"""The command line's data: built-in datasets, CSV and NPZ files."""

import numpy as np
import pytest

from bn_keras.cli import datasets
from bn_keras.cli import tables
from bn_keras.cli.common import UsageError


def test_scales_is_the_documented_regression():
    x, y = datasets.scales_data(5000)
    a, b = x[:, 0], x[:, 1]
    assert 1.0 <= a.min() and a.max() <= 10.0
    assert 1.0 <= b.min() and b.max() <= 200.0
    assert b.max() - b.min() > 190 and a.max() - a.min() > 8.5
    noise = y - (2 * a + 3 * b)
    assert abs(noise.mean()) < 0.05
    assert noise.std() == pytest.approx(0.5, rel=0.05)


@pytest.mark.parametrize(
    "name, shape, task, classes",
    [
        ("digits", (8, 8, 1), "classification", 10),
        ("wine", (13,), "classification", 3),
        ("breast_cancer", (30,), "classification", 2),
        ("scales", (2,), "regression", 0),
    ],
)
def test_builtin_datasets(name, shape, task, classes):
    data = datasets.load(name.upper(), seed=3)
    assert data.x_train.shape[1:] == shape
    assert data.task == task and data.num_classes == classes
    total = len(data.x_train) + len(data.x_val)
    assert len(data.x_val) == int(np.ceil(0.25 * total))
    if task == "classification":
        # Stratified: every class in both parts, in proportion.
        assert set(np.unique(data.y_val)) == set(range(classes))
        assert data.y_train.dtype == np.int32
    # The split depends on the seed only.
    again = datasets.load(name, seed=3)
    np.testing.assert_array_equal(again.x_val, data.x_val)
    other = datasets.load(name, seed=4)
    assert not np.array_equal(other.x_val, data.x_val)


def test_csv_semicolons_text_labels_and_column_order(tmp_path):
    path = tmp_path / "d.csv"
    rows = [f"{i};{'cat' if i % 2 else 'dog'};{2 * i}" for i in range(20)]
    path.write_text("a;animal;b\n" + "\n".join(rows) + "\n")
    x, y, names = tables.read_csv(str(path), "animal")
    assert names == ["a", "b"]
    np.testing.assert_array_equal(x[:, 0] * 2, x[:, 1])
    assert list(y[:3]) == ["dog", "cat", "dog"]
    data = datasets.load(data=str(path), target="animal")
    assert data.task == "classification"
    assert data.class_names == ("cat", "dog")


# 40 classes of one sample each: no split holds them all (warned about).
@pytest.mark.filterwarnings("ignore:the (training|validation) split has no")
@pytest.mark.parametrize(
    "values, task, expected",
    [
        (np.arange(40) % 3, "auto", "classification"),
        (np.arange(40) * 0.5, "auto", "regression"),
        (np.arange(40), "auto", "regression"),  # 40 distinct integers
        (np.arange(40), "classification", "classification"),
        (np.arange(40) % 3, "regression", "regression"),
    ],
)
def test_task_of_a_numeric_target(tmp_path, values, task, expected):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.ones((40, 3)), y=values)
    data = datasets.load(data=str(path), target="y", task=task)
    assert data.task == expected


def test_npz_images_and_columns(tmp_path):
    images = tmp_path / "images.npz"
    np.savez(images, pixels=np.zeros((30, 6, 5)), label=np.arange(30) % 2)
    data = datasets.load(data=str(images), target="label")
    assert data.image_shape == (6, 5, 1)
    assert data.x_train.shape[1:] == (6, 5, 1)

    columns = tmp_path / "columns.npz"
    np.savez(
        columns, b=np.full(30, 2.0), a=np.ones((30, 2)), t=np.arange(30.0)
    )
    x, _, shape = tables.read_npz(str(columns), "t")
    assert shape is None
    np.testing.assert_array_equal(x[0], [1.0, 1.0, 2.0])  # name order


@pytest.mark.parametrize(
    "arrays, message",
    [
        (
            {"x": np.ones((20, 2)), "y": np.ones((20, 2))},
            "must have shape (N,)",
        ),
        ({"x": np.ones((19, 2)), "y": np.ones(20)}, "has shape (19, 2)"),
        ({"y": np.ones(20)}, "no feature arrays"),
        ({"x": np.full((20, 2), np.nan), "y": np.ones(20)}, "NaN or infinite"),
    ],
)
def test_npz_errors_name_the_file(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(UsageError, match=r"^.*bad\.npz: ") as info:
        datasets.load(data=str(path), target="y")
    assert message in str(info.value)


def test_npy_file_is_not_an_archive(tmp_path):
    path = tmp_path / "x.npz"
    with open(path, "wb") as file:
        np.save(file, np.ones(3))
    with pytest.raises(UsageError, match="holds a single array"):
        datasets.load(data=str(path), target="y")
