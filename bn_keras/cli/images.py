"""Image data for the command line: Keras's classic datasets, and the
user's own folder of images with one subfolder per class.

`--dataset mnist | fashion_mnist | cifar10` read `keras.datasets`, which
downloads each once into the Keras cache (`$KERAS_HOME/datasets`,
`~/.keras/datasets` by default) and reads it from there afterwards; their
test split is the validation set. `--data FOLDER` reads the images with
`keras.utils.image_dataset_from_directory`, resized to `--image-size`.
Pixel values are scaled to [0, 1], as every Keras image example does.

Keras is imported by the functions that need it (the command has started
it by then: `bn_keras.cli.runtime.start_keras`).
"""

import os

import numpy as np

from bn_keras.cli.common import UsageError

#: The datasets of `keras.datasets` that `--dataset` reads, and their
#: class names.
KERAS_DATASETS = {
    "mnist": tuple(str(digit) for digit in range(10)),
    "fashion_mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    "cifar10": (
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ),
}

#: The file types `image_dataset_from_directory` reads (others are
#: skipped).
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")

#: `--image-size` by default: small enough for the CNN on a CPU.
DEFAULT_IMAGE_SIZE = (64, 64)
MIN_IMAGE_SIZE = 8


def _scaled(images):
    """uint8 pixels as float32 in [0, 1], with a channel axis."""
    images = images.astype("float32") / 255.0
    return images[..., None] if images.ndim == 3 else images


def _cache_folder():
    """Where `keras.utils.get_file` keeps the datasets, as its docs say."""
    home = os.environ.get("KERAS_HOME") or os.path.expanduser("~/.keras")
    return os.path.join(home, "datasets")


def load_keras_dataset(name):
    """A dataset of `keras.datasets`, downloaded once into the Keras cache.

    Returns:
        `(x_train, y_train, x_val, y_val, class_names)`; images as float32
        in [0, 1] with a channel axis, labels as int32.

    Raises:
        UsageError: if the download fails (no internet); it says where
            Keras looks for the files.
    """
    import keras

    module = getattr(keras.datasets, name)
    try:
        (x_train, y_train), (x_val, y_val) = module.load_data()
    except Exception as error:  # get_file raises a bare Exception
        reason = " ".join(str(error).split())
        raise UsageError(
            f"--dataset {name}: not in the Keras cache ({_cache_folder()}) "
            f"and the download failed: {reason}. Keras downloads it there "
            "once on a machine with internet access (or copy the files "
            "there from one)"
        ) from None
    return (
        _scaled(x_train),
        y_train.reshape(-1).astype("int32"),
        _scaled(x_val),
        y_val.reshape(-1).astype("int32"),
        KERAS_DATASETS[name],
    )


def parse_image_size(text):
    """`--image-size`: `N` (square) or `HxW`, each at least 8 pixels."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        size = tuple(int(part) for part in parts)
    except ValueError:
        size = ()
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) < MIN_IMAGE_SIZE:
        raise UsageError(
            f"--image-size {text}: expected N or HxW (pixels, at least "
            f"{MIN_IMAGE_SIZE}), e.g. 64 or 48x64"
        )
    return size


def _class_folders(path):
    """The class subfolders of an image folder, sorted, and how many
    images each holds (any depth, as Keras counts them)."""
    names = sorted(
        entry.name
        for entry in os.scandir(path)
        if entry.is_dir() and not entry.name.startswith(".")
    )
    counts = {}
    for name in names:
        counts[name] = sum(
            file.lower().endswith(IMAGE_EXTENSIONS)
            for _, _, files in os.walk(os.path.join(path, name))
            for file in files
        )
    return counts


def _check_folder(path, counts):
    """At least two class folders, none without images."""
    extensions = " ".join(IMAGE_EXTENSIONS)
    if len(counts) < 2:
        loose = any(
            entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS)
            for entry in os.scandir(path)
        )
        found = f"{len(counts)} subfolder{'' if len(counts) == 1 else 's'}" + (
            " (and images directly in it)" if loose else ""
        )
        raise UsageError(
            f"--data {path}: a folder of images needs one subfolder per "
            f"class, at least two; it has {found}"
        )
    empty = [name for name, count in counts.items() if count == 0]
    if empty:
        raise UsageError(
            f"--data {path}: class folder{'s' if len(empty) > 1 else ''} "
            f"{', '.join(repr(name) for name in empty)} "
            f"{'hold' if len(empty) > 1 else 'holds'} no images "
            f"({extensions}); remove {'them' if len(empty) > 1 else 'it'} "
            "or add images"
        )


def _decode_all(folder, dataset, paths):
    """Every image of `dataset` as one array; an unreadable file is a
    `UsageError` that names it."""
    images, labels = [], []
    try:
        for image, label in dataset.as_numpy_iterator():
            images.append(image)
            labels.append(label)
    except Exception as error:  # TensorFlow's error for a bad file
        # The files come in order: the bad one is the next to read.
        bad = paths[len(images)] if len(images) < len(paths) else "?"
        reason = str(error).split("[[")[0].split(": ")[-1].strip().rstrip(".")
        raise UsageError(
            f"--data {folder}: cannot read the image "
            f"{os.path.relpath(bad, folder)}: {reason}; remove it or save it "
            f"as one of {' '.join(IMAGE_EXTENSIONS)}"
        ) from None
    return np.stack(images), np.asarray(labels, dtype="int32")


def read_folder(path, image_size=None):
    """The images of a folder with one subfolder per class.

    Args:
        path: The folder; each subfolder is a class (named after it) and
            holds its images (.bmp, .gif, .jpeg, .jpg, .png, at any depth).
        image_size: `(height, width)` every image is resized to. Defaults
            to `DEFAULT_IMAGE_SIZE`.

    Returns:
        `(x, y, class_names)`: float32 RGB images in [0, 1] of shape
        `(N, height, width, 3)`, int32 class ids, and the class names.

    Raises:
        UsageError: for fewer than two class folders, a class folder
            without images, or an image that cannot be read (named).
    """
    import keras

    counts = _class_folders(path)
    _check_folder(path, counts)
    dataset = keras.utils.image_dataset_from_directory(
        path,
        labels="inferred",
        label_mode="int",
        image_size=image_size or DEFAULT_IMAGE_SIZE,
        batch_size=None,
        shuffle=False,
        verbose=False,
    )
    x, y = _decode_all(path, dataset, list(dataset.file_paths))
    return x / np.float32(255.0), y, tuple(counts)
