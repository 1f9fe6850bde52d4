"""Image data: a folder of images per class, and Keras's classic datasets
(from a fabricated Keras cache: nothing is downloaded)."""

import gzip

import keras
import numpy as np
import pytest
from PIL import Image

from bn_keras.cli import datasets
from bn_keras.cli import images
from bn_keras.cli.common import UsageError
from tests.cli.helpers import TF_STARTUP_NOISE
from tests.cli.helpers import read_csv
from tests.cli.helpers import run_cli
from tests.cli.helpers import run_entry_point
from tests.cli.helpers import session_dirs

#: Each class's colour: its images are that channel at 255 on a dark noise.
CLASSES = ("blue_things", "green_things", "red_things")
CHANNEL = {"blue_things": 2, "green_things": 1, "red_things": 0}


def make_folder(root, per_class=8, size=(20, 30), classes=CLASSES):
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 40, size=(*size, 3)).astype("uint8")
            pixels[..., CHANNEL[name]] = 255
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_folder_of_images(tmp_path):
    folder = make_folder(tmp_path / "photos")
    data = datasets.load(data=str(folder), image_size=(12, 16), seed=0)
    assert data.name == "photos"
    assert data.task == "classification"
    assert data.class_names == CLASSES
    assert data.image_shape == (12, 16, 3)
    assert (len(data.x_train), len(data.x_val)) == (18, 6)
    x = np.concatenate([data.x_train, data.x_val])
    y = np.concatenate([data.y_train, data.y_val])
    assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() == 1.0
    # Each image's label is its folder: the bright channel says which.
    bright = x.mean(axis=(1, 2)).argmax(axis=1)
    expected = [CHANNEL[CLASSES[label]] for label in y]
    np.testing.assert_array_equal(bright, expected)
    # Stratified: every class in the validation split.
    assert sorted(set(data.y_val.tolist())) == [0, 1, 2]


def test_default_image_size(tmp_path):
    folder = make_folder(tmp_path / "photos", per_class=4, classes=CLASSES[:2])
    data = datasets.load(data=str(folder))
    assert data.image_shape == (*images.DEFAULT_IMAGE_SIZE, 3)


@pytest.mark.parametrize(
    "text, size",
    [("32", (32, 32)), ("48x64", (48, 64)), ("20X8", (20, 8))],
)
def test_image_size(text, size):
    assert images.parse_image_size(text) == size


@pytest.mark.parametrize("text", ["7", "0x64", "big", "32x32x3", ""])
def test_bad_image_size(text):
    with pytest.raises(UsageError, match=f"--image-size {text}: expected"):
        images.parse_image_size(text)


def _one_class(root):
    make_folder(root, classes=CLASSES[:1])


def _empty_class(root):
    make_folder(root, classes=CLASSES[:2])
    (root / "zebras").mkdir()
    (root / "zebras" / "notes.txt").write_text("no image here")


def _unreadable(root):
    make_folder(root, classes=CLASSES[:2])
    (root / "green_things" / "3.png").write_text("not an image")


def _loose(root):
    root.mkdir()
    Image.new("RGB", (8, 8)).save(root / "a.png")


@pytest.mark.parametrize(
    "build, message",
    [
        (
            _one_class,
            "{root}: a folder of images needs one subfolder per class, at "
            "least two; it has 1 subfolder",
        ),
        (
            _empty_class,
            "{root}: class folder 'zebras' holds no images (.bmp .gif .jpeg "
            ".jpg .png); remove it or add images",
        ),
        (
            _unreadable,
            "{root}: cannot read the image green_things/3.png: Unknown image "
            "file format",
        ),
        (_loose, "it has 0 subfolders (and images directly in it)"),
    ],
)
def test_bad_folders(tmp_path, capsys, build, message):
    root = tmp_path / "photos"
    build(root)
    status, _, err = run_cli(
        capsys,
        "compare",
        "--data",
        root,
        "--quick",
        "--logdir",
        tmp_path / "runs",
    )
    assert status == 2
    assert err.startswith(f"bn-keras compare: error: --data {root}"), err
    assert message.format(root=root) in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_folder_options(tmp_path, capsys):
    root = make_folder(tmp_path / "photos", per_class=4)
    status, _, err = run_cli(
        capsys,
        "compare",
        "--data",
        root,
        "--target",
        "label",
    )
    assert status == 2
    assert f"--data {root} is a folder of images: its classes are its " in err
    status, _, err = run_cli(
        capsys,
        "search",
        "--data",
        root,
        "--task",
        "regression",
        "--quick",
        "--logdir",
        tmp_path / "runs",
    )
    assert status == 2
    assert "--task regression: the folder" in err


@pytest.mark.slow
def test_compare_and_search_on_a_folder(tmp_path, capsys):
    root = make_folder(tmp_path / "photos")
    status, out, err = run_cli(
        capsys,
        "compare",
        "--data",
        root,
        "--model",
        "cnn",
        "--quick",
        "--epochs",
        "1",
        "--image-size",
        "16",
        "--batch-size",
        "6",
        "--placements",
        "layer-bn-act",
        "--logdir",
        tmp_path / "runs",
    )
    assert status == 0, err
    assert (
        "photos: 18 train / 6 validation samples, 16x16x3 images, 3 classes"
        in out
    )
    (session,) = session_dirs(tmp_path / "runs", "compare-photos")
    rows = read_csv(tmp_path / "runs" / session / "leaderboard.csv")
    assert sorted(row["run_dir"] for row in rows) == [
        "layer-bn-act_batch",
        "no-bn",
    ]
    status, out, err = run_cli(
        capsys,
        "search",
        "--data",
        root,
        "--hypermodel",
        "cnn",
        "--quick",
        "--trials",
        "1",
        "--epochs",
        "1",
        "--image-size",
        "16",
        "--batch-size",
        "6",
        "--logdir",
        tmp_path / "runs",
    )
    assert status == 0, err
    (session,) = session_dirs(tmp_path / "runs", "search-photos")
    best = keras.saving.load_model(
        tmp_path / "runs" / session / "best_model.keras", compile=False
    )
    assert best.input_shape == (None, 16, 16, 3)
    assert best.output_shape == (None, 3)


# -- keras.datasets -----------------------------------------------------------


def _fake_load_data(train, test):
    def load_data():
        return train, test

    return load_data


def test_keras_dataset_scaled_split_and_limited(monkeypatch):
    rng = np.random.default_rng(0)
    train = (
        rng.integers(0, 256, (200, 32, 32, 3)).astype("uint8"),
        (np.arange(200) % 10).reshape(-1, 1).astype("uint8"),
    )
    test = (
        rng.integers(0, 256, (50, 32, 32, 3)).astype("uint8"),
        (np.arange(50) % 10).reshape(-1, 1).astype("uint8"),
    )
    monkeypatch.setattr(
        keras.datasets.cifar10, "load_data", _fake_load_data(train, test)
    )
    data = datasets.load("CIFAR10")
    assert data.name == "cifar10" and data.num_classes == 10
    assert data.class_names[:3] == ("airplane", "automobile", "bird")
    # Keras's split as it is: the test images validate.
    assert (len(data.x_train), len(data.x_val)) == (200, 50)
    np.testing.assert_allclose(data.x_val, test[0] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(data.y_val, test[1][:, 0])
    assert data.y_train.dtype == np.int32

    limited = datasets.load("cifar10", limit=40, seed=2)
    assert (len(limited.x_train), len(limited.x_val)) == (30, 10)
    # A stratified subset of each split: all ten classes in validation.
    assert sorted(set(limited.y_val.tolist())) == list(range(10))
    # Each kept image is one of the originals, with its own label.
    originals = {image.tobytes(): label for image, label in zip(*train)}
    for image, label in zip(limited.x_train, limited.y_train):
        key = np.round(image * 255).astype("uint8").tobytes()
        assert originals[key] == label


def test_grayscale_keras_dataset_gets_a_channel(monkeypatch):
    train = (np.zeros((30, 28, 28), "uint8"), np.arange(30) % 10)
    test = (np.full((10, 28, 28), 255, "uint8"), np.arange(10))
    monkeypatch.setattr(
        keras.datasets.mnist, "load_data", _fake_load_data(train, test)
    )
    data = datasets.load("mnist")
    assert data.image_shape == (28, 28, 1)
    assert data.x_val.max() == 1.0


def test_failed_download_says_where_keras_caches(monkeypatch):
    def offline():
        raise Exception(
            "URL fetch failure on https://example/mnist.npz: None -- [Errno "
            "-2] Name or service not known"
        )

    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline)
    with pytest.raises(UsageError) as info:
        datasets.load("mnist")
    message = str(info.value)
    assert message.startswith("--dataset mnist: not in the Keras cache (")
    assert "datasets) and the download failed: URL fetch failure" in message
    assert "Name or service not known" in message


def _idx(path, array, magic):
    header = magic.to_bytes(4, "big") + b"".join(
        d.to_bytes(4, "big") for d in array.shape
    )
    with gzip.open(path, "wb") as file:
        file.write(header + array.astype("uint8").tobytes())


def fabricate_fashion_mnist(keras_home, train=120, test=40):
    """The four gzip IDX files of Fashion-MNIST (no hash checked), with a
    bright square whose place gives the class."""
    folder = keras_home / "datasets" / "fashion-mnist"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", train), ("t10k", test)):
        labels = np.arange(count) % 10
        pixels = rng.integers(0, 60, size=(count, 28, 28))
        for label in range(10):
            row, column = divmod(label, 4)
            pixels[
                labels == label,
                7 * row : 7 * row + 7,
                7 * column : 7 * column + 7,
            ] = 250
        _idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels, 2049)
        _idx(folder / f"{prefix}-images-idx3-ubyte.gz", pixels, 2051)


@pytest.mark.slow
def test_fashion_mnist_from_the_keras_cache(tmp_path):
    """Through the installed entry point, with a fabricated cache in a
    temporary KERAS_HOME."""
    fabricate_fashion_mnist(tmp_path / "keras_home")
    completed = run_entry_point(
        "compare",
        "--dataset",
        "fashion_mnist",
        "--model",
        "cnn",
        "--quick",
        "--epochs",
        "1",
        "--limit",
        "80",
        "--placements",
        "layer-bn-act",
        "--logdir",
        tmp_path / "runs",
        KERAS_HOME=tmp_path / "keras_home",
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    out = completed.stdout
    assert "Downloading" not in out
    assert (
        "fashion_mnist: 60 train / 20 validation samples, 28x28x1 images, "
        "10 classes" in out
    )
    (session,) = session_dirs(tmp_path / "runs", "compare-fashion_mnist")
    rows = read_csv(tmp_path / "runs" / session / "leaderboard.csv")
    assert len(rows) == 2
    assert not any(noise in completed.stderr for noise in TF_STARTUP_NOISE)
